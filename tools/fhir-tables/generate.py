#!/usr/bin/env python3
"""Generate the FHIR model tables (src/model/{dstu2,stu3,r4,r4b,r5}.rs) from the official
StructureDefinitions.

Usage: tools/fhir-tables/generate.py [DEFINITIONS_DIR] [OUTPUT_DIR]

DEFINITIONS_DIR holds one archive a release (dstu2.tar.gz, stu3.tar.gz, r4.tar.gz, r4b.tar.gz,
r5.tar.gz), each the base StructureDefinitions of that release, one JSON file each (see its
SOURCES.txt); default ../shared/definitions relative to the repository root. OUTPUT_DIR
defaults to src/model of the repository. Python 3 standard library only.

For every resource, complex type, primitive type and backbone element (named by its path,
`Bundle.entry`) the tables list its elements in snapshot order, the order FHIR XML writes them,
with their JSON name, type or choice of types, whether they repeat, whether they are XML
attributes, and the resolved contentReference/nameReference. A type whose snapshot starts with
exactly the elements of its base (Patient: DomainResource; Patient.contact: BackboneElement)
stores only the elements it adds and points to its base, which keeps the tables small.
"""

import json
import os
import sys
import tarfile

RELEASES = [
    # (module, archive, package, version)
    ("dstu2", "dstu2.tar.gz", "hl7.fhir.r2.core", "1.0.2"),
    ("stu3", "stu3.tar.gz", "hl7.fhir.r3.core", "3.0.1"),
    ("r4", "r4.tar.gz", "hl7.fhir.r4.core", "4.0.1"),
    ("r4b", "r4b.tar.gz", "hl7.fhir.r4b.core", "4.3.0"),
    ("r5", "r5.tar.gz", "hl7.fhir.r5.core", "5.0.0"),
]

# Type kinds, as in src/model.rs.
KIND_STRING, KIND_NUMBER, KIND_BOOLEAN, KIND_COMPLEX, KIND_BACKBONE, KIND_RESOURCE = range(6)
KIND_ABSTRACT = 0x80

# Element flags, as in src/model.rs.
FLAG_ARRAY = 1
FLAG_ATTRIBUTE = 2
FLAG_CHOICE = 4
FLAG_RESOURCE = 8
FLAG_XHTML = 16

NUMBER_PRIMITIVES = {"integer", "decimal", "positiveInt", "unsignedInt"}
BOOLEAN_PRIMITIVES = {"boolean"}
FHIRPATH_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
JSON_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-json-type"


class GenerationError(Exception):
    pass


def read_definitions(archive):
    """The StructureDefinitions of one archive, by file name order."""
    definitions = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # in archive order: a gzip stream only reads forward quickly
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            resource = json.load(tar.extractfile(member))
            if resource.get("resourceType") != "StructureDefinition":
                continue
            if resource.get("derivation") == "constraint":
                continue
            definitions.append((member.name, resource))
    return [resource for _, resource in sorted(definitions, key=lambda d: d[0])]


def primitive_json_kind(name):
    if name in NUMBER_PRIMITIVES:
        return KIND_NUMBER
    if name in BOOLEAN_PRIMITIVES:
        return KIND_BOOLEAN
    return KIND_STRING  # R5 integer64 included: JSON carries it as a string.


def declared_json_kind(value_element):
    """The JSON kind the definition itself states for a primitive's value, if it does."""
    for type_ in value_element.get("type", []):
        for extension in type_.get("_code", {}).get("extension", []):
            if extension.get("url") == JSON_TYPE_EXTENSION:
                declared = extension["valueString"]
                if declared in ("boolean", "true | false"):
                    return KIND_BOOLEAN
                return KIND_NUMBER if declared == "number" else KIND_STRING
    return None


def last_segment(url):
    return url.rsplit("/", 1)[-1] if url else None


class Release:
    def __init__(self, module, definitions):
        self.module = module
        self.types = {}  # name -> dict(kind, abstract, base, elements=[...])
        self.order = []
        for definition in definitions:
            self.add_definition(definition)
        self.resolve_bases()

    def type_name_of(self, definition):
        if self.module == "dstu2":
            return definition["id"]
        return definition["type"] if definition.get("derivation") != "constraint" else definition["id"]

    def is_primitive(self, definition, name):
        if self.module == "dstu2":
            return definition.get("kind") == "datatype" and name[0].islower()
        return definition.get("kind") == "primitive-type"

    def add_definition(self, definition):
        name = self.type_name_of(definition)
        snapshot = definition["snapshot"]["element"]
        root_path = snapshot[0]["path"]  # DSTU2 constrained types keep their base's paths
        primitive = self.is_primitive(definition, name)
        if primitive:
            kind = primitive_json_kind(name)
        elif definition.get("kind") == "resource":
            kind = KIND_RESOURCE
        else:
            kind = KIND_COMPLEX
        base = last_segment(definition.get("baseDefinition") or definition.get("base"))
        by_path = {}
        by_name = {}  # DSTU2 nameReference
        for element in snapshot:
            by_path[element["path"]] = element
            if "name" in element and self.module == "dstu2":
                by_name[element["name"]] = element["path"]
        children = {}
        for element in snapshot[1:]:
            if element.get("max") == "0":
                continue  # prohibited here (SimpleQuantity.comparator, xhtml.extension)
            parent = element["path"].rsplit(".", 1)[0]
            children.setdefault(parent, []).append(element)

        def type_path(path):
            return name + path[len(root_path):]

        def add(path, kind, base, abstract):
            type_name = type_path(path)
            if type_name in self.types:
                raise GenerationError(f"{self.module}: type {type_name} defined twice")
            elements = []
            for element in children.get(path, []):
                elements.append(self.element(name, type_name, element, children, by_name, root_path))
            self.types[type_name] = {
                "kind": kind,
                "abstract": abstract,
                "base": base,
                "elements": elements,
            }
            self.order.append(type_name)
            for element in children.get(path, []):
                if element["path"] in children:
                    codes = [t.get("code") for t in element.get("type", [])]
                    if len(codes) != 1 or codes[0] not in ("BackboneElement", "Element"):
                        raise GenerationError(f"{self.module}: {element['path']} has children and type {codes}")
                    add(element["path"], KIND_BACKBONE, codes[0], False)

        add(root_path, kind, base, bool(definition.get("abstract")))
        if primitive:
            value = by_path.get(root_path + ".value")
            declared = declared_json_kind(value) if value else None
            if declared is not None and declared != kind and not (name == "integer64"):
                raise GenerationError(f"{self.module}: {name} JSON kind {declared} != {kind}")

    def element(self, owner, type_name, element, children, by_name, root_path):
        path = element["path"]
        json_name = path.rsplit(".", 1)[1]
        flags = 0
        if element.get("max") != "1":
            flags |= FLAG_ARRAY
        if "xmlAttr" in element.get("representation", []):
            flags |= FLAG_ATTRIBUTE
        types = []
        reference = element.get("contentReference")
        if reference is None and "nameReference" in element:
            reference = "#" + by_name[element["nameReference"]]
        if reference is not None:
            target = reference.split("#", 1)[1]
            types = [owner + target[len(root_path):]]
        elif path in children:
            types = [type_name + "." + json_name]
        else:
            for type_ in element.get("type", []):
                code = self.type_code(owner, type_name, json_name, type_)
                if code not in types:
                    types.append(code)
        if json_name == "id" and flags & FLAG_ATTRIBUTE:
            types = ["string"]  # Element.id: R5 says `id` in some places, `string` in others
        if json_name.endswith("[x]"):
            json_name = json_name[:-3]
            flags |= FLAG_CHOICE
        elif len(types) != 1:
            raise GenerationError(f"{self.module}: {path} has types {types}")
        if not flags & FLAG_CHOICE:
            if types[0] in ("Resource", "DomainResource"):
                flags |= FLAG_RESOURCE
            if types[0] == "xhtml":
                flags |= FLAG_XHTML
        return {"name": json_name, "types": types, "flags": flags}

    def type_code(self, owner, type_name, json_name, type_):
        code = type_.get("code")
        if code is None or code.startswith("http://hl7.org/fhirpath/System."):
            if json_name == "value" and type_name == owner and owner[0].islower():
                return owner  # a primitive's own value
            for extension in type_.get("extension", []):
                if extension.get("url") == FHIR_TYPE_EXTENSION:
                    return extension.get("valueUrl") or extension.get("valueUri")
            if code is None:
                raise GenerationError(f"{self.module}: {type_name}.{json_name} has no type")
            return FHIRPATH_TYPES[code.rsplit(".", 1)[1]]
        return code

    def resolve_bases(self):
        """Keep a base only when the type's elements start with exactly the base's elements."""
        resolved = {}

        def flattened(name):
            if name not in resolved:
                type_ = self.types[name]
                own = type_["elements"]
                base = type_["base"]
                while base is not None:
                    if base not in self.types:
                        raise GenerationError(f"{self.module}: {name} has unknown base {base}")
                    inherited = flattened(base)
                    if own[: len(inherited)] == inherited:
                        type_["elements"] = own[len(inherited):]
                        break
                    base = self.types[base]["base"]
                type_["base"] = base
                resolved[name] = own
            return resolved[name]

        for name in self.order:
            flattened(name)
        for name in self.order:
            for element in self.types[name]["elements"]:
                for code in element["types"]:
                    if code not in self.types:
                        raise GenerationError(f"{self.module}: {name}.{element['name']} has unknown type {code}")


def generate(module, package, version, archive_name, definitions):
    release = Release(module, definitions)
    # Named types (resources, data types) sorted by name for binary search, then backbone
    # elements, which are reached through their parent's element and keep only their last name.
    named = sorted((n for n in release.types if "." not in n), key=lambda n: n.encode())
    type_names = named + [n for n in release.order if "." in n]
    type_index = {name: i for i, name in enumerate(type_names)}
    strings = {}
    string_list = []

    def intern(text):
        if not text.isascii():
            raise GenerationError(f"{module}: non-ASCII name {text!r}")
        if text not in strings:
            strings[text] = len(string_list)
            string_list.append(text)
        return strings[text]

    for name in named:
        intern(name)
    type_name = [intern(name.rsplit(".", 1)[-1]) for name in type_names]
    type_kind = []
    type_base = []
    type_first = []
    element_name, element_type, element_flags, element_by_name = [], [], [], []
    choices = []
    choice_at = {}
    for name in type_names:
        type_ = release.types[name]
        type_kind.append(type_["kind"] | (KIND_ABSTRACT if type_["abstract"] else 0))
        type_base.append(0xFFFF if type_["base"] is None else type_index[type_["base"]])
        type_first.append(len(element_name))
        elements = type_["elements"]
        for element in elements:
            element_name.append(intern(element["name"]))
            if element["flags"] & FLAG_CHOICE:
                key = tuple(element["types"])
                if key not in choice_at:
                    choice_at[key] = len(choices)
                    choices.append(len(key))
                    choices.extend(type_index[code] for code in key)
                element_type.append(choice_at[key])
            else:
                element_type.append(type_index[element["types"][0]])
            element_flags.append(element["flags"])
        order = sorted(range(len(elements)), key=lambda i: elements[i]["name"].encode())
        names = [elements[i]["name"] for i in order]
        if len(set(names)) != len(names):
            raise GenerationError(f"{module}: {name} has duplicate element names")
        if len(elements) > 255:
            raise GenerationError(f"{module}: {name} has more than 255 own elements")
        element_by_name.extend(order)
    type_first.append(len(element_name))
    for table, what in ((string_list, "names"), (type_names, "types"), (element_name, "elements"), (choices, "choices")):
        if len(table) >= 0xFFFF:
            raise GenerationError(f"{module}: too many {what} for u16 indexes")

    out = []
    out.append(
        f"// @generated by tools/fhir-tables/generate.py from {package} {version} "
        f"({archive_name}); do not edit.\n"
    )
    out.append(f"//! The FHIR {version} model tables, see `super`.\n\n")
    out.append("use super::Tables;\n\n")
    out.append("pub(super) static TABLES: Tables = Tables {\n")
    out.append(f'    version: "{version}",\n')
    out.append(f"    named_types: {len(named)},\n")
    out.append(array("names", "&str", ['"' + s + '"' for s in string_list]))
    out.append(array("type_name", "u16", type_name))
    out.append(array("type_kind", "u8", type_kind))
    out.append(array("type_base", "u16", type_base))
    out.append(array("type_first", "u16", type_first))
    out.append(array("element_name", "u16", element_name))
    out.append(array("element_type", "u16", element_type))
    out.append(array("element_flags", "u8", element_flags))
    out.append(array("element_by_name", "u8", element_by_name))
    out.append(array("choices", "u16", choices))
    out.append("};\n")
    return "".join(out)


def array(field, item_type, values):
    lines = [f"    {field}: &[\n"]
    line = "        "
    for value in values:
        text = f"{value},"
        if len(line) + len(text) > 100:
            lines.append(line + "\n")
            line = "        "
        line += text
    if line.strip():
        lines.append(line + "\n")
    lines.append("    ],\n")
    return "".join(lines)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    definitions_dir = argv[1] if len(argv) > 1 else os.path.join(root, "..", "shared", "definitions")
    output_dir = argv[2] if len(argv) > 2 else os.path.join(root, "src", "model")
    os.makedirs(output_dir, exist_ok=True)
    for module, archive_name, package, version in RELEASES:
        archive = os.path.join(definitions_dir, archive_name)
        source = generate(module, package, version, archive_name, read_definitions(archive))
        with open(os.path.join(output_dir, module + ".rs"), "w", encoding="utf-8", newline="\n") as f:
            f.write(source)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except GenerationError as error:
        sys.exit(f"generate.py: {error}")
