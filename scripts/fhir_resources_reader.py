#!/usr/bin/env python3
"""An independent reader of the FHIR XML the layer writes: Python `fhir.resources`.

Usage: fhir_resources_reader.py MANIFEST

MANIFEST is a JSON list of {"release": "STU3" | "R4B" | "R5", "name": ..., "json": PATH,
"xml": PATH}: an official example in FHIR JSON and the FHIR XML the layer made of it. Each is
parsed with fhir.resources' model of its release, the JSON with `model_validate`, the XML with
`model_validate_xml` (lxml), and the two models compared as JSON (`model_dump(mode="json")`),
with two allowances for what fhir.resources does, not what the XML says:
- each narrative `div` is compared as canonical XML (C14N 2.0): fhir.resources keeps the XHTML
  as a string, and `&quot;` in JSON's text is `"` in the layer's XML, the same XHTML;
- the `id` of elements (not of resources) is left out on both sides: fhir.resources writes an
  element's id as an `<id value>` child and reads only that, while FHIR XML (xml.html, and the
  official schemas) has it as an attribute, `<content id="a1">`, which it ignores. The layer's
  ids are checked by its own round-trip and schema tests.

Prints one JSON object: {"fhir.resources": VERSION, "results": [{"name", "release", "outcome",
"detail"}]}, where outcome is
  "same"            both parsed, equal;
  "differs"         both parsed, not equal (detail: the first path that differs);
  "xml-unreadable"  the JSON parsed, the XML did not (detail: the error);
  "json-unreadable" fhir.resources cannot read the official JSON itself (detail: the error).
Exits 2 when fhir.resources or lxml cannot be imported.
"""

import json
import sys

try:
    from lxml import etree  # fhir.resources reads XML with it
    import fhir.resources
    from fhir.resources import get_fhir_model_class as r5_model
    from fhir.resources.R4B import get_fhir_model_class as r4b_model
    from fhir.resources.STU3 import get_fhir_model_class as stu3_model
except ImportError as e:
    print(f"fhir.resources with lxml is not installed: {e}", file=sys.stderr)
    sys.exit(2)

MODELS = {"R5": r5_model, "R4B": r4b_model, "STU3": stu3_model}


def first_difference(a, b, path="$"):
    """The first path where two JSON values differ, with both sides."""
    if type(a) is not type(b):
        return f"{path}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, str) and a != b:
        # Around the first character that differs.
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        start = max(0, at - 40)
        return f"{path} at {at}: {a[start:at + 60]!r} vs {b[start:at + 60]!r}"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def comparable(value, resource=True):
    """`value` with each `div` canonical and the ids of elements (not resources) left out."""
    if isinstance(value, dict):
        is_resource = resource or "resourceType" in value
        out = {}
        for key, item in value.items():
            if key == "id" and not is_resource:
                continue
            if key == "div" and isinstance(item, str):
                out[key] = etree.tostring(etree.fromstring(item), method="c14n2").decode()
            else:
                item = comparable(item, resource=False)
                # A primitive's `_name` left with nothing once its id is out.
                if item in ({}, []) or (isinstance(item, list) and all(i in ({}, None) for i in item)):
                    continue
                out[key] = item
        return out
    if isinstance(value, list):
        return [comparable(item, resource=False) for item in value]
    return value


def short(error):
    return " ".join(str(error).split())[:600]


def check(case):
    model = MODELS[case["release"]]
    with open(case["json"], "rb") as f:
        resource = json.load(f)
    cls = model(resource["resourceType"])
    try:
        from_json = cls.model_validate(resource)
    except Exception as e:  # fhir.resources' own validation of the official JSON
        return "json-unreadable", short(e)
    with open(case["xml"], "rb") as f:
        xml = f.read()
    try:
        from_xml = cls.model_validate_xml(xml)
    except Exception as e:
        return "xml-unreadable", short(e)
    a = comparable(from_json.model_dump(mode="json"))
    b = comparable(from_xml.model_dump(mode="json"))
    if a == b:
        return "same", ""
    return "differs", short(first_difference(a, b))


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = []
    for case in cases:
        outcome, detail = check(case)
        results.append(
            {"name": case["name"], "release": case["release"], "outcome": outcome, "detail": detail}
        )
    json.dump({"fhir.resources": fhir.resources.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
