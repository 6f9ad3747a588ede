//! FHIR XML rendering of a Binary (whose base64 payload is streamed by the caller) and of an
//! OperationOutcome, from their FHIR JSON.
//!
//! The output follows the FHIR XML format (<https://hl7.org/fhir/R4/xml.html>) and is meant to
//! validate against the official schema of the target version (`fhir-single.xsd` of DSTU2, STU3
//! or R4; R4B and R5 keep R4's shape for everything written here). Choices made to that end:
//!
//! - Elements are written in schema order, whatever order the JSON keys came in.
//! - Members the target version has no place for are dropped: `Meta.source`, `Reference.type`
//!   before R4; `Binary.securityContext`, `Reference.identifier` and
//!   `OperationOutcome.issue.expression` in DSTU2; unknown members everywhere; `contained`
//!   resources of an OperationOutcome.
//! - An extension whose `value[x]` is of a type this module does not model (Address, Timing,
//!   ...) or that the version lacks (`valueCanonical`/`valueUrl` before R4, `valueUuid` in STU3,
//!   `valueInteger64` before R5) is dropped whole, because its element order is unknown here.
//! - In DSTU2 an element `id` attribute must be a FHIR id (`[A-Za-z0-9\-\.]{1,64}`); other
//!   values are dropped there. Empty strings are treated as absent, as FHIR JSON forbids them.
//! - A narrative whose `div` is not well-formed XHTML of the FHIR subset (elements, nesting,
//!   attributes and their values as `fhir-xhtml.xsd` allows), whose `status` is not a
//!   NarrativeStatus code, or that is malformed in any other way is dropped whole: it only
//!   restates the issues, which are kept.
//! - JSON of the wrong shape (an object where a string belongs, an array for a single element,
//!   an extension without `url`, an issue without `severity`) is an [`XmlError`]: such a
//!   resource is not valid FHIR, and guessing would hide an upstream fault.
//! - Primitive values are copied, not checked against their datatype; a resource valid for the
//!   target version gives a document valid for it. The payload's text is the exception: the
//!   scanner leaves out whitespace inside a group of four, which its decoder accepts and the
//!   base64Binary pattern does not. Numbers are written as serde_json prints them, but never
//!   in exponent notation (STU3 and DSTU2 decimals have none).
//! - The Binary payload element is named after the JSON key it came from (`data` or
//!   `content`), as the caller says, even if the target version's schema names it otherwise.
//!
//! Characters XML 1.0 cannot carry at all (C0 controls other than tab, LF and CR; U+FFFE,
//! U+FFFF) are written as U+FFFD. Tab, LF and CR in attribute values are written as character
//! references, so that attribute-value normalization keeps them.

use std::fmt;
use std::io::Write as _;

use serde_json::{Map, Value};

use crate::scan::PayloadElement;
use crate::FhirVersion;

const XML_DECL: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
const FHIR_NS: &str = "http://hl7.org/fhir";
const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
/// Deepest nesting of complex elements and extensions accepted; FHIR needs far less, and the
/// renderer recurses.
const MAX_DEPTH: usize = 32;
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Why a resource could not be rendered as FHIR XML.
///
/// The message names the offending element (`Binary.meta.tag[0]`) and reads as the
/// diagnostics of an OperationOutcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct XmlError(String);

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XmlError {}

/// Writes `<?xml version="1.0" encoding="UTF-8"?><Binary xmlns="http://hl7.org/fhir">` and
/// every element that precedes the payload in schema order (id, meta, implicitRules, language,
/// contentType, securityContext: whatever of these `resource` has).
///
/// When `payload` is `Some`, it then opens the payload element up to and including `value="`,
/// so that the caller can stream the base64 text next (tab, LF and CR as character references) and
/// finish with [`binary_suffix`]. A payload key still present in `resource` is then ignored.
///
/// When `payload` is `None`, it writes the whole document, closing tag included; the payload
/// element is written only if `resource` still carries `data`/`content` or its primitive
/// extension `_data`/`_content`. DSTU2 and STU3 require `content`, so its absence is an error
/// there.
///
/// `resource` is the top-level JSON object without the payload key, but possibly with its
/// primitive extension `_data`/`_content`. A missing `contentType` is an error (the schema
/// requires it). On error nothing is appended to `out`.
pub(crate) fn binary_prefix(
    resource: &Map<String, Value>,
    payload: Option<PayloadElement>,
    version: FhirVersion,
    out: &mut Vec<u8>,
) -> Result<(), XmlError> {
    let start = out.len();
    let mut w = Renderer { out, version };
    let result = w.binary_prefix(resource, payload);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

// The streaming path writes the payload text itself (the scanner's text mode); this
// whole-piece form serves the tests that build documents.
#[cfg(test)]
/// Escapes a piece of base64 text for the payload's `value` attribute and appends it to `out`.
///
/// Base64 needs no escaping; whitespace (which FHIR base64Binary allows between quads) is kept:
/// spaces as they are, tab, LF and CR as character references so that the XML parser keeps them.
/// Anything else that would break the document is neutralized (`&`, `<`, `>`, `"` escaped; bytes
/// that are not ASCII or that XML cannot carry written as U+FFFD), so the document stays
/// well-formed even if the caller passes text that is not base64. Pieces may be split anywhere.
pub(crate) fn escape_payload_text(text: &[u8], out: &mut Vec<u8>) {
    escape_bytes(text, out, true, true);
}

/// Closes the payload element opened by [`binary_prefix`]: `"/>`, or, when `resource` has a
/// `_data`/`_content` with extensions, `">` followed by the `extension` children and the closing
/// tag; then `</Binary>`. On error nothing is appended to `out`.
pub(crate) fn binary_suffix(
    resource: &Map<String, Value>,
    payload: PayloadElement,
    version: FhirVersion,
    out: &mut Vec<u8>,
) -> Result<(), XmlError> {
    let start = out.len();
    let mut w = Renderer { out, version };
    let result = w.binary_suffix(resource, payload);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Writes a whole OperationOutcome as FHIR XML (declaration included) from its FHIR JSON: the
/// one a FHIR server returns with a 404, or one the layer makes for its own errors.
///
/// Elements: id, meta, implicitRules, language, text (dropped whole if anything in it is
/// wrong, such as a `div` that is not valid FHIR XHTML), extension, modifierExtension, issue
/// (severity, code, details, diagnostics, location, expression). `contained` is skipped. At least one issue, each with severity and
/// code, is required. Issue codes `multiple-matches` and `deleted` exist only from R4 on; every
/// other R4 IssueType code is valid in all versions. On error nothing is appended to `out`.
pub(crate) fn operation_outcome(
    resource: &Value,
    version: FhirVersion,
    out: &mut Vec<u8>,
) -> Result<(), XmlError> {
    let start = out.len();
    let mut w = Renderer { out, version };
    let result = w.operation_outcome(resource);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Schema tables

/// Position of a version in release order, to say "from STU3 on".
const fn rank(version: FhirVersion) -> u8 {
    match version {
        FhirVersion::Dstu2 => 0,
        FhirVersion::Stu3 => 1,
        FhirVersion::R4 => 2,
        FhirVersion::R4B => 3,
        FhirVersion::R5 => 4,
    }
}

const STU3: u8 = rank(FhirVersion::Stu3);
const R4: u8 = rank(FhirVersion::R4);
const R5: u8 = rank(FhirVersion::R5);

/// Complex datatypes (and backbone elements) rendered from the schema tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Meta,
    Reference,
    Identifier,
    Coding,
    CodeableConcept,
    Period,
    Quantity,
    Issue,
}

#[derive(Clone, Copy)]
enum Kind {
    Primitive,
    Complex(Ty),
}

/// One child element in schema order.
#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    /// JSON key of the primitive extension (`_name`), for primitives.
    ext: &'static str,
    kind: Kind,
    many: bool,
    required: bool,
    /// First version whose schema has this element.
    since: u8,
}

impl Field {
    const fn many(mut self) -> Self {
        self.many = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn since(mut self, since: u8) -> Self {
        self.since = since;
        self
    }
}

macro_rules! prim {
    ($name:literal) => {
        Field {
            name: $name,
            ext: concat!("_", $name),
            kind: Kind::Primitive,
            many: false,
            required: false,
            since: 0,
        }
    };
}

macro_rules! cx {
    ($name:literal, $ty:ident) => {
        Field {
            name: $name,
            ext: "",
            kind: Kind::Complex(Ty::$ty),
            many: false,
            required: false,
            since: 0,
        }
    };
}

static RESOURCE: &[Field] = &[
    prim!("id"),
    cx!("meta", Meta),
    prim!("implicitRules"),
    prim!("language"),
];
static BINARY: &[Field] = &[
    prim!("contentType").required(),
    cx!("securityContext", Reference).since(STU3),
];
static OPERATION_OUTCOME: &[Field] = &[cx!("issue", Issue).many().required()];
static META: &[Field] = &[
    prim!("versionId"),
    prim!("lastUpdated"),
    prim!("source").since(R4),
    prim!("profile").many(),
    cx!("security", Coding).many(),
    cx!("tag", Coding).many(),
];
static REFERENCE: &[Field] = &[
    prim!("reference"),
    prim!("type").since(R4),
    cx!("identifier", Identifier).since(STU3),
    prim!("display"),
];
static IDENTIFIER: &[Field] = &[
    prim!("use"),
    cx!("type", CodeableConcept),
    prim!("system"),
    prim!("value"),
    cx!("period", Period),
    cx!("assigner", Reference),
];
static CODING: &[Field] = &[
    prim!("system"),
    prim!("version"),
    prim!("code"),
    prim!("display"),
    prim!("userSelected"),
];
static CODEABLE_CONCEPT: &[Field] = &[cx!("coding", Coding).many(), prim!("text")];
static PERIOD: &[Field] = &[prim!("start"), prim!("end")];
static QUANTITY: &[Field] = &[
    prim!("value"),
    prim!("comparator"),
    prim!("unit"),
    prim!("system"),
    prim!("code"),
];
static ISSUE: &[Field] = &[
    prim!("severity").required(),
    prim!("code").required(),
    cx!("details", CodeableConcept),
    prim!("diagnostics"),
    prim!("location").many(),
    prim!("expression").many().since(STU3),
];

impl Ty {
    fn fields(self) -> &'static [Field] {
        match self {
            Ty::Meta => META,
            Ty::Reference => REFERENCE,
            Ty::Identifier => IDENTIFIER,
            Ty::Coding => CODING,
            Ty::CodeableConcept => CODEABLE_CONCEPT,
            Ty::Period => PERIOD,
            Ty::Quantity => QUANTITY,
            Ty::Issue => ISSUE,
        }
    }

    /// Backbone elements also carry `modifierExtension`.
    fn is_backbone(self) -> bool {
        self == Ty::Issue
    }
}

/// How an extension's `value[x]` is written, given the type suffix of its key, or `None` when
/// the version's schema has no such choice or this module does not model the type.
fn extension_value_kind(suffix: &str, version: FhirVersion) -> Option<Kind> {
    let v = rank(version);
    let primitive = match suffix {
        "Base64Binary" | "Boolean" | "Code" | "Date" | "DateTime" | "Decimal" | "Id"
        | "Instant" | "Integer" | "Markdown" | "Oid" | "PositiveInt" | "String" | "Time"
        | "UnsignedInt" | "Uri" => true,
        "Uuid" => version != FhirVersion::Stu3,
        "Canonical" | "Url" => v >= R4,
        "Integer64" => v >= R5,
        _ => false,
    };
    if primitive {
        return Some(Kind::Primitive);
    }
    let ty = match suffix {
        "CodeableConcept" => Ty::CodeableConcept,
        "Coding" => Ty::Coding,
        "Identifier" => Ty::Identifier,
        "Period" => Ty::Period,
        "Reference" => Ty::Reference,
        "Meta" => Ty::Meta,
        "Quantity" => Ty::Quantity,
        "Age" | "Count" | "Distance" | "Duration" if v >= STU3 => Ty::Quantity,
        _ => return None,
    };
    Some(Kind::Complex(ty))
}

fn version_label(version: FhirVersion) -> &'static str {
    match version {
        FhirVersion::Dstu2 => "DSTU2",
        FhirVersion::Stu3 => "STU3",
        FhirVersion::R4 => "R4",
        FhirVersion::R4B => "R4B",
        FhirVersion::R5 => "R5",
    }
}

// ---------------------------------------------------------------------------------------------
// Error paths, built only when an error is reported

#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> Path<'a> {
    fn root(name: &'a str) -> Self {
        Path {
            parent: None,
            name,
            index: None,
        }
    }

    fn child(&'a self, name: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            name,
            index: None,
        }
    }

    fn at(self, index: usize) -> Path<'a> {
        Path {
            index: Some(index),
            ..self
        }
    }

    fn error(&self, what: impl fmt::Display) -> XmlError {
        XmlError(format!("cannot render FHIR XML: {self} {what}"))
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'v>(value: &'v Value, path: &Path<'_>) -> Result<&'v Map<String, Value>, XmlError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(path.error(format_args!(
            "must be a JSON object, not {}",
            json_kind(other)
        ))),
    }
}

/// The entries of a repeating element; a lone value counts as one entry, as some servers write.
fn entries(value: Option<&Value>) -> &[Value] {
    match value {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(other) => std::slice::from_ref(other),
    }
}

/// The `_name` object of a primitive, if any.
fn primitive_extension<'v>(
    ext: Option<&'v Value>,
    path: &Path<'_>,
) -> Result<Option<&'v Map<String, Value>>, XmlError> {
    match ext {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(path.error(format_args!(
            "has a primitive extension that is {}, not a JSON object",
            json_kind(other)
        ))),
    }
}

fn check_resource_type(obj: &Map<String, Value>, expected: &str) -> Result<(), XmlError> {
    match obj.get("resourceType") {
        None => Ok(()),
        Some(Value::String(s)) if s == expected => Ok(()),
        Some(other) => Err(XmlError(format!(
            "cannot render FHIR XML: expected resourceType {expected}, found {other}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Renderer

struct Renderer<'o> {
    out: &'o mut Vec<u8>,
    version: FhirVersion,
}

impl Renderer<'_> {
    fn binary_prefix(
        &mut self,
        resource: &Map<String, Value>,
        payload: Option<PayloadElement>,
    ) -> Result<(), XmlError> {
        let path = Path::root("Binary");
        check_resource_type(resource, "Binary")?;
        self.out.extend_from_slice(XML_DECL);
        self.out.extend_from_slice(b"<Binary xmlns=\"");
        self.out.extend_from_slice(FHIR_NS.as_bytes());
        self.out.extend_from_slice(b"\">");
        self.fields(resource, RESOURCE, &path, 0)?;
        self.fields(resource, BINARY, &path, 0)?;
        match payload {
            Some(element) => {
                let name = element.name();
                let payload_path = path.child(name);
                let ext =
                    primitive_extension(resource.get(element.extension_key()), &payload_path)?;
                self.out.push(b'<');
                self.out.extend_from_slice(name.as_bytes());
                if let Some(ext) = ext {
                    self.id_attribute(ext, &payload_path)?;
                }
                self.out.extend_from_slice(b" value=\"");
            }
            None => {
                let preferred = PayloadElement::for_version(self.version);
                let other = match preferred {
                    PayloadElement::Data => PayloadElement::Content,
                    PayloadElement::Content => PayloadElement::Data,
                };
                let present = |e: PayloadElement| {
                    resource.contains_key(e.name()) || resource.contains_key(e.extension_key())
                };
                let element = if present(preferred) || !present(other) {
                    preferred
                } else {
                    other
                };
                let written = self.primitive(
                    element.name(),
                    resource.get(element.name()),
                    resource.get(element.extension_key()),
                    &path.child(element.name()),
                    0,
                )?;
                if !written && preferred == PayloadElement::Content {
                    return Err(path.child("content").error(format_args!(
                        "is missing, which FHIR {} requires",
                        version_label(self.version)
                    )));
                }
                self.out.extend_from_slice(b"</Binary>");
            }
        }
        Ok(())
    }

    fn binary_suffix(
        &mut self,
        resource: &Map<String, Value>,
        payload: PayloadElement,
    ) -> Result<(), XmlError> {
        let path = Path::root("Binary");
        let payload_path = path.child(payload.name());
        let ext = primitive_extension(resource.get(payload.extension_key()), &payload_path)?;
        self.out.push(b'"');
        let before = self.out.len();
        self.out.push(b'>');
        let body = self.out.len();
        if let Some(ext) = ext {
            self.extensions("extension", ext.get("extension"), &payload_path, 0)?;
        }
        if self.out.len() == body {
            self.out.truncate(before);
            self.out.extend_from_slice(b"/>");
        } else {
            self.out.extend_from_slice(b"</");
            self.out.extend_from_slice(payload.name().as_bytes());
            self.out.push(b'>');
        }
        self.out.extend_from_slice(b"</Binary>");
        Ok(())
    }

    fn operation_outcome(&mut self, resource: &Value) -> Result<(), XmlError> {
        let path = Path::root("OperationOutcome");
        let obj = as_object(resource, &path)?;
        // Required here, unlike for Binary, so that arbitrary JSON is never dressed up as one.
        if !obj.contains_key("resourceType") {
            return Err(XmlError(
                "cannot render FHIR XML: expected resourceType OperationOutcome, found none".into(),
            ));
        }
        check_resource_type(obj, "OperationOutcome")?;
        self.out.extend_from_slice(XML_DECL);
        self.out.extend_from_slice(b"<OperationOutcome xmlns=\"");
        self.out.extend_from_slice(FHIR_NS.as_bytes());
        self.out.extend_from_slice(b"\">");
        self.fields(obj, RESOURCE, &path, 0)?;
        if let Some(text) = obj.get("text") {
            self.narrative(text, &path);
        }
        self.extensions("extension", obj.get("extension"), &path, 0)?;
        self.extensions("modifierExtension", obj.get("modifierExtension"), &path, 0)?;
        self.fields(obj, OPERATION_OUTCOME, &path, 0)?;
        self.out.extend_from_slice(b"</OperationOutcome>");
        Ok(())
    }

    /// Writes the members of `obj` listed in `fields`, in that order, skipping those the
    /// version lacks.
    fn fields(
        &mut self,
        obj: &Map<String, Value>,
        fields: &[Field],
        parent: &Path<'_>,
        depth: usize,
    ) -> Result<(), XmlError> {
        let version = rank(self.version);
        for field in fields.iter().filter(|f| f.since <= version) {
            let path = parent.child(field.name);
            let value = obj.get(field.name);
            let mut written = false;
            match field.kind {
                Kind::Primitive => {
                    let ext = obj.get(field.ext);
                    if field.many {
                        let values = entries(value);
                        let exts = entries(ext);
                        for i in 0..values.len().max(exts.len()) {
                            written |= self.primitive(
                                field.name,
                                values.get(i),
                                exts.get(i),
                                &path.at(i),
                                depth,
                            )?;
                        }
                    } else {
                        written = self.primitive(field.name, value, ext, &path, depth)?;
                    }
                }
                Kind::Complex(ty) => {
                    if field.many {
                        for (i, item) in entries(value).iter().enumerate() {
                            if !item.is_null() {
                                written |=
                                    self.complex(field.name, ty, item, &path.at(i), depth)?;
                            }
                        }
                    } else if let Some(item) = value.filter(|v| !v.is_null()) {
                        written = self.complex(field.name, ty, item, &path, depth)?;
                    }
                }
            }
            if field.required && !written {
                return Err(path.error("is required"));
            }
        }
        Ok(())
    }

    /// Writes `<name id=".." value="..">extensions</name>`, or nothing when there is neither a
    /// value nor an id nor an extension. Returns whether an element was written.
    fn primitive(
        &mut self,
        name: &str,
        value: Option<&Value>,
        ext: Option<&Value>,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<bool, XmlError> {
        let ext = primitive_extension(ext, path)?;
        let start = self.out.len();
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        let mut has_attributes = match ext {
            Some(ext) => self.id_attribute(ext, path)?,
            None => false,
        };
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => {
                self.out.extend_from_slice(b" value=\"");
                escape_str(s, self.out, true);
                self.out.push(b'"');
                has_attributes = true;
            }
            Some(Value::Bool(b)) => {
                self.out.extend_from_slice(if *b {
                    b" value=\"true\""
                } else {
                    b" value=\"false\""
                });
                has_attributes = true;
            }
            Some(Value::Number(n)) => {
                self.out.extend_from_slice(b" value=\"");
                write_number(n, self.out);
                self.out.push(b'"');
                has_attributes = true;
            }
            Some(other) => {
                return Err(path.error(format_args!(
                    "must be a JSON string, number or boolean, not {}",
                    json_kind(other)
                )))
            }
        }
        self.out.push(b'>');
        let body = self.out.len();
        if let Some(ext) = ext {
            self.extensions("extension", ext.get("extension"), path, depth)?;
        }
        Ok(self.close(name, start, body, has_attributes))
    }

    /// Writes ` id=".."` from the element id in `obj`; returns whether it did.
    fn id_attribute(
        &mut self,
        obj: &Map<String, Value>,
        path: &Path<'_>,
    ) -> Result<bool, XmlError> {
        match obj.get("id") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::String(id)) => {
                // DSTU2 types element ids as FHIR ids; elsewhere any non-empty string is fine.
                if id.is_empty() || (self.version == FhirVersion::Dstu2 && !is_fhir_id(id)) {
                    return Ok(false);
                }
                self.out.extend_from_slice(b" id=\"");
                escape_str(id, self.out, true);
                self.out.push(b'"');
                Ok(true)
            }
            Some(other) => Err(path.error(format_args!(
                "has an element id that is {}, not a string",
                json_kind(other)
            ))),
        }
    }

    /// Ends an element opened at `start` whose start tag ended at `body` (just after `>`):
    /// with an end tag if it got children, self-closed if it only has attributes, removed if it
    /// has neither. Returns whether the element was kept.
    fn close(&mut self, name: &str, start: usize, body: usize, has_attributes: bool) -> bool {
        if self.out.len() > body {
            self.out.extend_from_slice(b"</");
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'>');
            true
        } else if has_attributes {
            self.out.truncate(body - 1);
            self.out.extend_from_slice(b"/>");
            true
        } else {
            self.out.truncate(start);
            false
        }
    }

    /// Writes a complex datatype or backbone element; returns whether it had any content.
    fn complex(
        &mut self,
        name: &str,
        ty: Ty,
        value: &Value,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<bool, XmlError> {
        if depth >= MAX_DEPTH {
            return Err(path.error("is nested too deeply"));
        }
        let obj = as_object(value, path)?;
        let start = self.out.len();
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        let has_attributes = self.id_attribute(obj, path)?;
        self.out.push(b'>');
        let body = self.out.len();
        self.extensions("extension", obj.get("extension"), path, depth + 1)?;
        if ty.is_backbone() {
            self.extensions(
                "modifierExtension",
                obj.get("modifierExtension"),
                path,
                depth + 1,
            )?;
        }
        self.fields(obj, ty.fields(), path, depth + 1)?;
        Ok(self.close(name, start, body, has_attributes))
    }

    /// Writes the `extension` (or `modifierExtension`) array found in a JSON object.
    fn extensions(
        &mut self,
        name: &str,
        value: Option<&Value>,
        parent: &Path<'_>,
        depth: usize,
    ) -> Result<(), XmlError> {
        let path = parent.child(name);
        for (i, item) in entries(value).iter().enumerate() {
            if !item.is_null() {
                self.extension(name, item, &path.at(i), depth)?;
            }
        }
        Ok(())
    }

    /// Writes `<extension id=".." url="..">extension* value[x]</extension>`, or nothing when
    /// its value cannot be written for this version.
    fn extension(
        &mut self,
        name: &str,
        value: &Value,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<(), XmlError> {
        if depth >= MAX_DEPTH {
            return Err(path.error("is nested too deeply"));
        }
        let obj = as_object(value, path)?;
        let url = match obj.get("url") {
            Some(Value::String(url)) => url,
            _ => return Err(path.error("has no url")),
        };
        // value[x] and its primitive extension _value[x]; FHIR allows one choice only.
        let mut choice: Option<&str> = None;
        for key in obj.keys() {
            let base = key.strip_prefix('_').unwrap_or(key);
            let is_choice = base
                .strip_prefix("value")
                .and_then(|suffix| suffix.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase());
            if !is_choice {
                continue;
            }
            match choice {
                Some(seen) if seen != base => {
                    return Err(path.error("has more than one value[x]"));
                }
                _ => choice = Some(base),
            }
        }
        let kind = match choice {
            Some(key) => match extension_value_kind(&key["value".len()..], self.version) {
                Some(kind) => Some((key, kind)),
                None => return Ok(()),
            },
            None => None,
        };

        let start = self.out.len();
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.id_attribute(obj, path)?;
        self.out.extend_from_slice(b" url=\"");
        escape_str(url, self.out, true);
        self.out.extend_from_slice(b"\">");
        let body = self.out.len();
        self.extensions("extension", obj.get("extension"), path, depth + 1)?;
        if let Some((key, kind)) = kind {
            let value = obj.get(key);
            let value_path = path.child(key);
            match kind {
                Kind::Primitive => {
                    let ext = obj
                        .iter()
                        .find(|(k, _)| k.strip_prefix('_') == Some(key))
                        .map(|(_, v)| v);
                    self.primitive(key, value, ext, &value_path, depth + 1)?;
                }
                Kind::Complex(ty) => {
                    if let Some(value) = value.filter(|v| !v.is_null()) {
                        self.complex(key, ty, value, &value_path, depth + 1)?;
                    }
                }
            }
        }
        // The url attribute keeps the element even when it has no children.
        self.close(name, start, body, true);
        Ok(())
    }

    /// Writes an OperationOutcome's `text`, or nothing when it cannot be written validly.
    fn narrative(&mut self, value: &Value, parent: &Path<'_>) {
        let start = self.out.len();
        if !matches!(self.try_narrative(value, parent), Ok(true)) {
            self.out.truncate(start);
        }
    }

    fn try_narrative(&mut self, value: &Value, parent: &Path<'_>) -> Result<bool, XmlError> {
        let path = parent.child("text");
        let Value::Object(obj) = value else {
            return Ok(false);
        };
        let status = obj.get("status").and_then(Value::as_str);
        let is_status =
            |s: &&str| matches!(*s, "generated" | "extensions" | "additional" | "empty");
        let (Some(_), Some(div)) = (
            status.filter(is_status),
            obj.get("div").and_then(Value::as_str),
        ) else {
            return Ok(false);
        };
        self.out.extend_from_slice(b"<text");
        self.id_attribute(obj, &path)?;
        self.out.push(b'>');
        self.extensions("extension", obj.get("extension"), &path, 1)?;
        self.primitive(
            "status",
            obj.get("status"),
            obj.get("_status"),
            &path.child("status"),
            1,
        )?;
        if xhtml::write_div(div, self.out).is_err() {
            return Ok(false);
        }
        self.out.extend_from_slice(b"</text>");
        Ok(true)
    }
}

/// Writes a JSON number as serde_json prints it, except that exponent notation (which
/// serde_json uses for very small or large floats) is spelled out: STU3 and DSTU2 decimals
/// have no exponent.
fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
    if out[start..].iter().any(|b| matches!(b, b'e' | b'E')) {
        if let Some(f) = n.as_f64() {
            out.truncate(start);
            // Rust prints floats in positional notation.
            let _ = write!(out, "{f}");
        }
    }
}

/// `[A-Za-z0-9\-\.]{1,64}`, the FHIR id pattern.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

// ---------------------------------------------------------------------------------------------
// Escaping

/// Appends `s` escaped for an attribute value (`attribute`) or for text content.
fn escape_str(s: &str, out: &mut Vec<u8>, attribute: bool) {
    escape_bytes(s.as_bytes(), out, attribute, false);
}

/// Escapes markup characters, and replaces what XML 1.0 cannot carry with U+FFFD. With
/// `ascii_only`, every non-ASCII byte is replaced too (for text that must be ASCII and may be
/// split inside a character). Runs of plain bytes are copied in one go.
fn escape_bytes(bytes: &[u8], out: &mut Vec<u8>, attribute: bool, ascii_only: bool) {
    // Most text needs nothing: one pass without an early exit, on whole vectors.
    let care = bytes.iter().fold(false, |care, &b| {
        care | (b < 0x20)
            | (b == b'&')
            | (b == b'<')
            | (b == b'>')
            | (b == b'"')
            | (b == 0xEF)
            | (ascii_only & (b >= 0x80))
    });
    if !care {
        out.extend_from_slice(bytes);
        return;
    }
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let mut width = 1;
        let replacement: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            // `>` only matters after `]]`, but escaping it always is simpler.
            b'>' => b"&gt;",
            b'"' if attribute => b"&quot;",
            b'\r' => b"&#13;",
            b'\n' if attribute => b"&#10;",
            b'\t' if attribute => b"&#9;",
            b'\n' | b'\t' => {
                i += 1;
                continue;
            }
            0x00..=0x1F => REPLACEMENT,
            0x80.. if ascii_only => REPLACEMENT,
            // U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters.
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                width = 3;
                REPLACEMENT
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(replacement);
        i += width;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
}

// Narrative XHTML, checked and written back (see the module's docs).
pub(crate) mod xhtml;
// Any resource as FHIR XML, streamed from its FHIR JSON.
pub(crate) mod resource;

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::reader::Reader;
    use quick_xml::XmlVersion;
    use serde_json::json;
    use std::path::PathBuf;
    use std::process::Command;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const XSD_R4: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/xsd/r4/fhir-single.xsd"
    );
    const XSD_STU3: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/xsd/stu3/fhir-single.xsd"
    );
    const XSD_DSTU2: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/xsd/dstu2/fhir-single.xsd"
    );

    const ALL: [FhirVersion; 5] = [
        FhirVersion::Dstu2,
        FhirVersion::Stu3,
        FhirVersion::R4,
        FhirVersion::R4B,
        FhirVersion::R5,
    ];

    fn xsd(version: FhirVersion) -> &'static str {
        match version {
            FhirVersion::Dstu2 => XSD_DSTU2,
            FhirVersion::Stu3 => XSD_STU3,
            FhirVersion::R4 | FhirVersion::R4B | FhirVersion::R5 => XSD_R4,
        }
    }

    fn payload_key(version: FhirVersion) -> &'static str {
        PayloadElement::for_version(version).name()
    }

    /// Renders a Binary as the streaming driver does: payload key removed, its text streamed
    /// through `escape_payload_text` in pieces of `chunk` bytes.
    fn render_binary(
        resource: &Value,
        version: FhirVersion,
        chunk: usize,
    ) -> Result<String, XmlError> {
        let mut map = resource.as_object().expect("object").clone();
        let payload = [PayloadElement::Data, PayloadElement::Content]
            .into_iter()
            .find(|p| map.contains_key(p.name()));
        let mut out = Vec::new();
        match payload {
            Some(p) => {
                let text = map.remove(p.name()).unwrap();
                binary_prefix(&map, Some(p), version, &mut out)?;
                for piece in text
                    .as_str()
                    .expect("base64 string")
                    .as_bytes()
                    .chunks(chunk)
                {
                    escape_payload_text(piece, &mut out);
                }
                binary_suffix(&map, p, version, &mut out)?;
            }
            None => binary_prefix(&map, None, version, &mut out)?,
        }
        Ok(String::from_utf8(out).expect("UTF-8 output"))
    }

    fn render_oo(resource: &Value, version: FhirVersion) -> Result<String, XmlError> {
        let mut out = Vec::new();
        operation_outcome(resource, version, &mut out)?;
        Ok(String::from_utf8(out).expect("UTF-8 output"))
    }

    fn fixture(path: &str) -> String {
        let full = format!("{FIXTURES}/{path}");
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    fn fixture_json(path: &str) -> Value {
        serde_json::from_str(&fixture(path)).expect("fixture JSON")
    }

    /// The element/attribute/text sequence of a document, ignoring whitespace between
    /// elements, comments and the declaration. Attributes are sorted and unescaped. With
    /// `security_as_tag`, `meta.security` is read as `meta.tag`.
    fn tokens(xml: &str, security_as_tag: bool) -> Vec<String> {
        let mut reader = Reader::from_str(xml);
        let mut names: Vec<String> = Vec::new();
        let mut out = Vec::new();
        loop {
            let event = reader.read_event().expect("well-formed XML");
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let mut name = e.name().as_ref().to_string();
                    if security_as_tag
                        && name == "security"
                        && names.last().map(String::as_str) == Some("meta")
                    {
                        name = "tag".into();
                    }
                    let mut attrs: Vec<String> = e
                        .attributes()
                        .map(|a| {
                            let a = a.expect("attribute");
                            let value = a.normalized_value(XmlVersion::Implicit1_0).expect("value");
                            format!("{}={value}", a.key.as_ref())
                        })
                        .collect();
                    attrs.sort();
                    out.push(format!("<{name} {}>", attrs.join(" ")));
                    if matches!(event, Event::Empty(_)) {
                        out.push(format!("</{name}>"));
                    } else {
                        names.push(name);
                    }
                }
                Event::End(_) => out.push(format!("</{}>", names.pop().expect("open element"))),
                Event::Text(t) => {
                    let text = t.xml10_content();
                    if !text.trim().is_empty() {
                        out.push(text.into_owned());
                    }
                }
                Event::GeneralRef(r) => out.push(format!("&{};", &*r)),
                Event::CData(t) => out.push(t.xml10_content().into_owned()),
                Event::Eof => break,
                _ => {}
            }
        }
        out
    }

    /// Names of the elements in document order.
    fn element_names(xml: &str) -> Vec<String> {
        tokens(xml, false)
            .into_iter()
            .filter(|t| t.starts_with('<') && !t.starts_with("</"))
            .map(|t| t[1..t.find(' ').unwrap()].to_string())
            .collect()
    }

    // ---- sample resources --------------------------------------------------------------------

    /// A Binary using every member this module writes; keys come in anything but schema order.
    fn rich_binary(version: FhirVersion) -> Value {
        let mut v = json!({
            "unknownMember": {"x": 1},
            "securityContext": {
                "display": "Pat \"P\" & <co>\nline 2",
                "identifier": {
                    "assigner": {"display": "Acme & Co"},
                    "period": {"end": "2024-12-31", "start": "2024-01-01"},
                    "value": "123",
                    "system": "urn:oid:1.2.3",
                    "type": {
                        "text": "Medical record number",
                        "coding": [{
                            "userSelected": true,
                            "display": "Medical record number",
                            "code": "MR",
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203"
                        }]
                    },
                    "use": "official"
                },
                "type": "DocumentReference",
                "reference": "DocumentReference/example",
                "extension": [{"valueBoolean": true, "url": "http://example.org/sc"}],
                "id": "sc1"
            },
            "_data": {
                "extension": [
                    {"valueString": "a & b", "url": "http://example.org/d"},
                    {"valueReference": {"display": "x", "reference": "Patient/1", "type": "Patient"},
                     "url": "http://example.org/ref"}
                ],
                "id": "d1"
            },
            "data": "SGVs bG8s\nIHdv\r\ncmxk\tIQ==",
            "_contentType": {
                "extension": [{"valueCode": "pdf", "url": "http://example.org/ct"}],
                "id": "ct1"
            },
            "contentType": "application/pdf",
            "language": "en",
            "implicitRules": "http://example.org/rules",
            "meta": {
                "tag": [
                    {"display": "test health data", "code": "HTEST",
                     "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason"},
                    {"code": "t2", "system": "http://example.org/tags"}
                ],
                "security": [{"code": "R", "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"}],
                "_profile": [null, {"extension": [{"valueString": "second", "url": "http://example.org/pe"}], "id": "p2"}],
                "profile": ["http://example.org/p1", "http://example.org/p2"],
                "source": "#src",
                "lastUpdated": "2024-05-01T10:00:00Z",
                "versionId": "3",
                "extension": [{"valueInteger": 7, "url": "http://example.org/meta"}],
                "id": "m1"
            },
            "_id": {"extension": [{"valueDecimal": 1.5, "url": "http://example.org/id-ext"}]},
            "id": "rich",
            "resourceType": "Binary"
        });
        rename_payload(&mut v, version);
        v
    }

    /// Moves `data`/`_data` to `content`/`_content` for DSTU2 and STU3.
    fn rename_payload(v: &mut Value, version: FhirVersion) {
        if PayloadElement::for_version(version) == PayloadElement::Content {
            let map = v.as_object_mut().unwrap();
            for (from, to) in [("data", "content"), ("_data", "_content")] {
                if let Some(x) = map.remove(from) {
                    map.insert(to.into(), x);
                }
            }
        }
    }

    /// A Binary whose `_data` carries extensions of many value types.
    fn extension_zoo(version: FhirVersion) -> Value {
        let mut v = json!({
            "resourceType": "Binary",
            "contentType": "text/plain",
            "data": "QQ==",
            "_data": {"extension": [
                {"url": "http://e/boolean", "valueBoolean": false},
                {"url": "http://e/integer", "valueInteger": -3},
                {"url": "http://e/decimal", "valueDecimal": 2.25},
                {"url": "http://e/small", "valueDecimal": 1e-7},
                {"url": "http://e/uri", "valueUri": "urn:x"},
                {"url": "http://e/uuid", "valueUuid": "urn:uuid:6e1a1b8e-4c9a-4b2b-8d6e-2d0b1f7f4a10"},
                {"url": "http://e/canonical", "valueCanonical": "http://example.org/sd"},
                {"url": "http://e/url", "valueUrl": "http://example.org"},
                {"url": "http://e/date", "valueDate": "2024-02-29", "_valueDate": {"id": "vd"}},
                {"url": "http://e/coding", "valueCoding": {"system": "http://s", "code": "c"}},
                {"url": "http://e/cc", "valueCodeableConcept": {"text": "t"}},
                {"url": "http://e/identifier", "valueIdentifier": {"value": "v", "system": "http://s"}},
                {"url": "http://e/period", "valuePeriod": {"start": "2024-01-01"}},
                {"url": "http://e/quantity", "valueQuantity": {"unit": "mg", "value": 5, "comparator": "<"}},
                {"url": "http://e/age", "valueAge": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}},
                {"url": "http://e/meta", "valueMeta": {"versionId": "1"}},
                {"url": "http://e/address", "valueAddress": {"city": "Paris"}},
                {"url": "http://e/complex", "extension": [
                    {"url": "part", "valueString": "one"},
                    {"url": "other", "valueReference": {"reference": "Patient/2", "identifier": {"value": "p2"}}}
                ]}
            ]}
        });
        rename_payload(&mut v, version);
        v
    }

    fn layer_outcome() -> Value {
        json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"x < y & \"z\""}]})
    }

    fn hapi_404() -> Value {
        json!({
            "resourceType": "OperationOutcome",
            "text": {
                "status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><h1>Operation Outcome</h1><table border=\"0\"><tr><td style=\"font-weight: bold;\">ERROR</td><td>[]</td><td><pre>HAPI-2001: Resource Binary/123 is not known</pre></td></tr></table></div>"
            },
            "issue": [{
                "severity": "error",
                "code": "processing",
                "details": {"coding": [{"system": "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-errors", "code": "HAPI-2001"}]},
                "diagnostics": "HAPI-2001: Resource Binary/123 is not known"
            }]
        })
    }

    fn rich_outcome() -> Value {
        json!({
            "issue": [{
                "expression": ["Binary.data"],
                "location": ["/f:Binary/f:data", "line 1"],
                "_diagnostics": {"extension": [{"url": "http://example.org/d", "valueString": "more"}]},
                "diagnostics": "bad base64\nat byte 12",
                "details": {"text": "Bad data", "coding": [{"code": "MSG_PARAM_INVALID",
                    "system": "http://terminology.hl7.org/CodeSystem/operation-outcome"}]},
                "code": "invalid",
                "severity": "error",
                "modifierExtension": [{"url": "http://example.org/m", "valueCode": "x"}],
                "extension": [{"url": "http://example.org/e", "valueInteger": 1}],
                "id": "i1"
            }, {"code": "informational", "severity": "information"}],
            "modifierExtension": [{"url": "http://example.org/om", "valueBoolean": true}],
            "extension": [{"url": "http://example.org/oe", "valueString": "s"}],
            "contained": [{"resourceType": "Basic", "id": "b"}],
            "text": {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Bad <b>data</b></p></div>",
                     "status": "generated", "id": "t1"},
            "language": "en",
            "implicitRules": "http://example.org/rules",
            "meta": {"versionId": "1", "source": "#layer"},
            "id": "oo1",
            "resourceType": "OperationOutcome"
        })
    }

    fn with_div(div: &str) -> Value {
        let mut oo = layer_outcome();
        oo["text"] = json!({"status": "generated", "div": div});
        oo
    }

    /// Narratives the check accepts; each must also satisfy the XSD.
    const GOOD_DIVS: &[&str] = &[
        r#"<div xmlns="http://www.w3.org/1999/xhtml"/>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml">plain &amp; simple &lt;3 &#x41;&#66; &nbsp;</div>"#,
        r#"<x:div xmlns:x="http://www.w3.org/1999/xhtml"><x:p class="a b" id="p1">prefixed</x:p></x:div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en-US" dir="ltr"><!-- note --><p>a<br/>b</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><ul><li>one</li><li><p>two</p></li></ul><ol><li>x</li></ol><dl><dt>t</dt><dd>d</dd></dl></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><table border="1" width="50%" cellpadding="2"><caption>c</caption><colgroup span="2"><col width="2*"/></colgroup><thead><tr><th scope="col" colspan="2">h</th></tr></thead><tfoot><tr><td>f</td></tr></tfoot><tbody valign="top"><tr><td align="left" rowspan="1">b</td></tr></tbody><tbody><tr><td/></tr></tbody></table></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><pre xml:space="preserve">  code
  more</pre><blockquote cite="http://x"><p>q</p></blockquote><a href="http://example.org/?a=1&amp;b=2" name="n" tabindex="3">link</a><img src="x.png" alt="x" height="10"/></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p class=" ">empty class is left out</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><![CDATA[a < b]]><span style="color: red" title="t">s</span><bdo dir="rtl">r</bdo><hr/><h2>h</h2><address>addr</address><q>q</q></div>"#,
    ];

    /// Narratives the check rejects; the XSD (or the XML parser) rejects them too.
    const BAD_DIVS: &[&str] = &[
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>"#,
        r#"<div><p>no namespace</p></div>"#,
        r#"<p xmlns="http://www.w3.org/1999/xhtml">not a div</p>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml" onclick="x()">events</div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml">&copy; 2024</div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><ul>text in a list</ul></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><ul/></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><table></table></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><table><tr><td>a</td></tr><caption>late</caption></table></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><tr><td>a</td></tr></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p><p>nested p</p></p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><a href="x"><a href="y">nested</a></a></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p id="a">1</p><p id="a">2</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><img src="x.png"/></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p dir="up">d</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><td colspan="two">c</td></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><svg xmlns="http://www.w3.org/2000/svg"/></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p xmlns:f="urn:f" f:x="1">foreign attribute</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml">a</div><div xmlns="http://www.w3.org/1999/xhtml">b</div>"#,
        r#"<?xml version="1.0"?><div xmlns="http://www.w3.org/1999/xhtml">decl</div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml">bare & ampersand</div>"#,
        r#"not xml at all"#,
    ];

    /// Every document the schema test validates: (name, version, xml, should validate).
    fn schema_cases() -> Vec<(String, FhirVersion, String, bool)> {
        let mut cases = Vec::new();
        let mut add = |name: String, version: FhirVersion, xml: String| {
            cases.push((name, version, xml, true));
        };
        for (dir, version) in [
            ("r4", FhirVersion::R4),
            ("r4b", FhirVersion::R4B),
            ("r5", FhirVersion::R5),
            ("stu3", FhirVersion::Stu3),
            ("dstu2", FhirVersion::Dstu2),
        ] {
            for file in ["binary-example", "binary-f006"] {
                let json = fixture_json(&format!("{dir}/{file}.json"));
                let xml = render_binary(&json, version, 4093).expect("fixture renders");
                add(format!("fixture-{dir}-{file}"), version, xml);
            }
        }
        for version in ALL {
            let v = format!("{version:?}");
            add(
                format!("rich-binary-{v}"),
                version,
                render_binary(&rich_binary(version), version, 3).unwrap(),
            );
            add(
                format!("extension-zoo-{v}"),
                version,
                render_binary(&extension_zoo(version), version, 64).unwrap(),
            );
            let mut only_ext = json!({"resourceType": "Binary", "contentType": "text/plain",
                "_data": {"id": "d", "extension": [{"url": "http://e/absent", "valueCode": "masked"}]}});
            rename_payload(&mut only_ext, version);
            add(
                format!("payload-extension-only-{v}"),
                version,
                render_binary(&only_ext, version, 1).unwrap(),
            );
            add(
                format!("layer-outcome-{v}"),
                version,
                render_oo(&layer_outcome(), version).unwrap(),
            );
            add(
                format!("hapi-404-{v}"),
                version,
                render_oo(&hapi_404(), version).unwrap(),
            );
            add(
                format!("rich-outcome-{v}"),
                version,
                render_oo(&rich_outcome(), version).unwrap(),
            );
        }
        for version in [FhirVersion::R4, FhirVersion::R4B, FhirVersion::R5] {
            let none =
                json!({"resourceType": "Binary", "id": "empty", "contentType": "application/pdf"});
            add(
                format!("no-payload-{version:?}"),
                version,
                render_binary(&none, version, 1).unwrap(),
            );
        }
        for (i, div) in GOOD_DIVS.iter().enumerate() {
            for version in [FhirVersion::Dstu2, FhirVersion::Stu3, FhirVersion::R4] {
                add(
                    format!("good-div-{i}-{version:?}"),
                    version,
                    render_oo(&with_div(div), version).unwrap(),
                );
            }
        }
        for (i, div) in BAD_DIVS.iter().enumerate() {
            cases.push((
                format!("bad-div-dropped-{i}"),
                FhirVersion::R4,
                render_oo(&with_div(div), FhirVersion::R4).unwrap(),
                true,
            ));
            // The same narrative inserted as is: the schema or the parser must refuse it, which
            // shows the check drops nothing the schema would have taken.
            let raw = render_oo(&layer_outcome(), FhirVersion::R4)
                .unwrap()
                .replacen(
                    "<issue>",
                    &format!("<text><status value=\"generated\"/>{div}</text><issue>"),
                    1,
                );
            cases.push((format!("bad-div-raw-{i}"), FhirVersion::R4, raw, false));
        }
        cases
    }

    /// Runs xmllint on `files` against `schema`; returns which files validated.
    fn xmllint(schema: &str, files: &[PathBuf]) -> Vec<bool> {
        let output = match Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(schema)
            .args(files)
            .output()
        {
            Ok(output) => output,
            Err(e) => panic!(
                "cannot run xmllint ({e}); install it (Debian/Ubuntu: apt-get install libxml2-utils) \
                 so that the FHIR XML output can be checked against the official schemas"
            ),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        files
            .iter()
            .map(|f| {
                stderr
                    .lines()
                    .any(|l| l == format!("{} validates", f.display()))
            })
            .collect()
    }

    #[test]
    fn outputs_validate_against_the_official_schemas() {
        let dir = std::env::temp_dir().join(format!("fhir-xml-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = schema_cases();
        let mut failures = Vec::new();
        for schema in [XSD_R4, XSD_STU3, XSD_DSTU2] {
            let mine: Vec<_> = cases.iter().filter(|c| xsd(c.1) == schema).collect();
            let files: Vec<PathBuf> = mine
                .iter()
                .map(|(name, _, xml, _)| {
                    let path = dir.join(format!("{name}.xml"));
                    std::fs::write(&path, xml).unwrap();
                    path
                })
                .collect();
            for ((name, _, xml, expected), valid) in mine.iter().zip(xmllint(schema, &files)) {
                if valid != *expected {
                    let head: String = xml.chars().take(3000).collect();
                    failures.push(format!(
                        "{name}: expected {}, xmllint said {}\n{head}",
                        if *expected { "valid" } else { "invalid" },
                        if valid { "valid" } else { "invalid" },
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "files kept in {}:\n{}",
            dir.display(),
            failures.join("\n\n")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- Binary ------------------------------------------------------------------------------

    #[test]
    fn minimal_binary() {
        let xml = render_binary(
            &json!({"resourceType": "Binary", "contentType": "text/plain", "data": "SGVsbG8="}),
            FhirVersion::R4,
            3,
        )
        .unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Binary xmlns=\"http://hl7.org/fhir\">\
             <contentType value=\"text/plain\"/><data value=\"SGVsbG8=\"/></Binary>"
        );
    }

    #[test]
    fn official_fixtures_match_official_xml() {
        for (json, xml, version, security_as_tag) in [
            (
                "r4/binary-example.json",
                "r4/binary-example.xml",
                FhirVersion::R4,
                true,
            ),
            (
                "r4/binary-f006.json",
                "r4/binary-f006.xml",
                FhirVersion::R4,
                true,
            ),
            (
                "stu3/binary-example.json",
                "stu3/binary-example.xml",
                FhirVersion::Stu3,
                false,
            ),
            (
                "dstu2/binary-f006.json",
                "dstu2/binary-f006.xml",
                FhirVersion::Dstu2,
                false,
            ),
        ] {
            let ours = render_binary(&fixture_json(json), version, 1000).unwrap();
            // The r4 JSON carries meta.tag where the r4 XML carries meta.security: ours follows
            // the JSON, so the official XML is read with security as tag.
            assert_eq!(
                tokens(&ours, false),
                tokens(&fixture(xml), security_as_tag),
                "{json} vs {xml}"
            );
            if security_as_tag {
                assert!(ours.contains("<meta><tag><system value=\"http://terminology.hl7.org/CodeSystem/v3-ActReason\"/>"));
            }
        }
    }

    #[test]
    fn every_official_json_fixture_renders_with_its_payload_intact() {
        for (dir, version) in [
            ("r4", FhirVersion::R4),
            ("r4b", FhirVersion::R4B),
            ("r5", FhirVersion::R5),
            ("stu3", FhirVersion::Stu3),
            ("dstu2", FhirVersion::Dstu2),
        ] {
            for file in ["binary-example", "binary-f006"] {
                let json = fixture_json(&format!("{dir}/{file}.json"));
                let key = payload_key(version);
                let xml = render_binary(&json, version, 777).unwrap();
                let toks = tokens(&xml, false);
                let payload = toks
                    .iter()
                    .find(|t| t.starts_with(&format!("<{key} ")))
                    .unwrap_or_else(|| panic!("{dir}/{file}: no {key}"));
                assert_eq!(
                    payload,
                    &format!("<{key} value={}>", json[key].as_str().unwrap())
                );
                assert!(xml.contains(&format!(
                    "<contentType value=\"{}\"/>",
                    json["contentType"].as_str().unwrap()
                )));
            }
        }
    }

    #[test]
    fn elements_follow_schema_order_whatever_the_key_order() {
        let xml = render_binary(&rich_binary(FhirVersion::R4), FhirVersion::R4, 5).unwrap();
        let names = element_names(&xml);
        let expected = [
            "Binary",
            "id",
            "extension",
            "valueDecimal",
            "meta",
            "extension",
            "valueInteger",
            "versionId",
            "lastUpdated",
            "source",
            "profile",
            "profile",
            "extension",
            "valueString",
            "security",
            "system",
            "code",
            "tag",
            "system",
            "code",
            "display",
            "tag",
            "system",
            "code",
            "implicitRules",
            "language",
            "contentType",
            "extension",
            "valueCode",
            "securityContext",
            "extension",
            "valueBoolean",
            "reference",
            "type",
            "identifier",
            "use",
            "type",
            "coding",
            "system",
            "code",
            "display",
            "userSelected",
            "text",
            "system",
            "value",
            "period",
            "start",
            "end",
            "assigner",
            "display",
            "display",
            "data",
            "extension",
            "valueString",
            "extension",
            "valueReference",
            "reference",
            "type",
            "display",
        ];
        assert_eq!(names, expected);
        assert!(!xml.contains("unknownMember"));
    }

    #[test]
    fn primitive_extensions_merge_into_their_elements() {
        let xml = render_binary(&rich_binary(FhirVersion::R4), FhirVersion::R4, 5).unwrap();
        assert!(xml.contains(
            "<id value=\"rich\"><extension url=\"http://example.org/id-ext\"><valueDecimal value=\"1.5\"/></extension></id>"
        ));
        assert!(xml.contains(
            "<profile value=\"http://example.org/p1\"/><profile id=\"p2\" value=\"http://example.org/p2\">\
             <extension url=\"http://example.org/pe\"><valueString value=\"second\"/></extension></profile>"
        ));
        assert!(xml.contains(
            "<contentType id=\"ct1\" value=\"application/pdf\"><extension url=\"http://example.org/ct\">\
             <valueCode value=\"pdf\"/></extension></contentType>"
        ));
        assert!(xml.contains("<meta id=\"m1\"><extension url=\"http://example.org/meta\"><valueInteger value=\"7\"/>"));
        assert!(xml.contains("<securityContext id=\"sc1\"><extension"));
    }

    #[test]
    fn payload_extension_goes_into_prefix_and_suffix() {
        let mut map = rich_binary(FhirVersion::R4).as_object().unwrap().clone();
        map.remove("data");
        let mut prefix = Vec::new();
        binary_prefix(
            &map,
            Some(PayloadElement::Data),
            FhirVersion::R4,
            &mut prefix,
        )
        .unwrap();
        assert!(prefix.ends_with(b"<data id=\"d1\" value=\""));
        let mut suffix = Vec::new();
        binary_suffix(&map, PayloadElement::Data, FhirVersion::R4, &mut suffix).unwrap();
        assert_eq!(
            String::from_utf8(suffix).unwrap(),
            "\"><extension url=\"http://example.org/d\"><valueString value=\"a &amp; b\"/></extension>\
             <extension url=\"http://example.org/ref\"><valueReference><reference value=\"Patient/1\"/>\
             <type value=\"Patient\"/><display value=\"x\"/></valueReference></extension></data></Binary>"
        );
        // Without extensions the element self-closes.
        map.remove("_data");
        let mut suffix = Vec::new();
        binary_suffix(&map, PayloadElement::Data, FhirVersion::R4, &mut suffix).unwrap();
        assert_eq!(suffix, b"\"/></Binary>");
    }

    #[test]
    fn values_are_escaped_and_round_trip() {
        let xml = render_binary(&rich_binary(FhirVersion::R4), FhirVersion::R4, 5).unwrap();
        assert!(xml.contains("<display value=\"Pat &quot;P&quot; &amp; &lt;co&gt;&#10;line 2\"/>"));
        let toks = tokens(&xml, false);
        assert!(toks.contains(&"<display value=Pat \"P\" & <co>\nline 2>".to_string()));
        // The payload keeps its whitespace through attribute-value normalization.
        assert!(xml.contains("<data id=\"d1\" value=\"SGVs bG8s&#10;IHdv&#13;&#10;cmxk&#9;IQ==\">"));
        assert!(toks.contains(&"<data id=d1 value=SGVs bG8s\nIHdv\r\ncmxk\tIQ==>".to_string()));
    }

    #[test]
    fn payload_text_escaping() {
        let mut out = Vec::new();
        escape_payload_text(b"QUJD\nREVG\r\n\tR0hJ ==", &mut out);
        assert_eq!(out, b"QUJD&#10;REVG&#13;&#10;&#9;R0hJ ==");
        out.clear();
        escape_payload_text(b"a\"b&c<d>e\x00f\x7f", &mut out);
        assert_eq!(out, b"a&quot;b&amp;c&lt;d&gt;e\xEF\xBF\xBDf\x7f");
        out.clear();
        escape_payload_text("é".as_bytes(), &mut out);
        assert_eq!(out, "\u{FFFD}\u{FFFD}".as_bytes());
        // Splitting the text anywhere gives the same output.
        let text = b"QUJD\nREVG \"&\r\n==";
        let mut whole = Vec::new();
        escape_payload_text(text, &mut whole);
        for size in 1..text.len() {
            let mut pieces = Vec::new();
            for piece in text.chunks(size) {
                escape_payload_text(piece, &mut pieces);
            }
            assert_eq!(pieces, whole, "pieces of {size}");
        }
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let mut out = Vec::new();
        escape_str("a\u{1}b\u{FFFE}c\u{FFFF}d\u{FFFD}é\t", &mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}é&#9;"
        );
        let mut out = Vec::new();
        escape_str("l1\nl2\tx\r", &mut out, false);
        assert_eq!(out, b"l1\nl2\tx&#13;");
    }

    #[test]
    fn numbers_and_booleans_are_written_as_json_text() {
        let json = json!({"contentType": "a/b", "meta": {"extension": [
            {"url": "u", "valueDecimal": 2.50},
            {"url": "u", "valueDecimal": 1e-7},
            {"url": "u", "valueDecimal": -12},
            {"url": "u", "valueInteger": 18446744073709551615u64},
            {"url": "u", "valueBoolean": true}
        ]}});
        let mut out = Vec::new();
        binary_prefix(json.as_object().unwrap(), None, FhirVersion::Stu3, &mut out).unwrap_err();
        binary_prefix(json.as_object().unwrap(), None, FhirVersion::R4, &mut out).unwrap();
        let xml = String::from_utf8(out).unwrap();
        for value in ["2.5", "0.0000001", "-12", "18446744073709551615", "true"] {
            assert!(
                xml.contains(&format!(" value=\"{value}\"/>")),
                "{value} in {xml}"
            );
        }
    }

    #[test]
    fn binary_without_payload() {
        let none = json!({"resourceType": "Binary", "id": "e", "contentType": "application/pdf"});
        assert_eq!(
            render_binary(&none, FhirVersion::R4, 1).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Binary xmlns=\"http://hl7.org/fhir\">\
             <id value=\"e\"/><contentType value=\"application/pdf\"/></Binary>"
        );
        // A payload with only its primitive extension gets an element without value.
        let ext_only = json!({"resourceType": "Binary", "contentType": "text/plain",
            "_data": {"extension": [{"url": "http://e/x", "valueCode": "masked"}]}});
        assert!(render_binary(&ext_only, FhirVersion::R4, 1).unwrap().ends_with(
            "<contentType value=\"text/plain\"/><data><extension url=\"http://e/x\"><valueCode value=\"masked\"/>\
             </extension></data></Binary>"
        ));
        // Given the whole resource, `None` renders the payload too.
        let map = json!({"resourceType": "Binary", "contentType": "text/plain", "content": "QQ=="});
        let mut out = Vec::new();
        binary_prefix(map.as_object().unwrap(), None, FhirVersion::Stu3, &mut out).unwrap();
        assert!(
            out.ends_with(b"<contentType value=\"text/plain\"/><content value=\"QQ==\"/></Binary>")
        );
        // STU3 and DSTU2 require content.
        for version in [FhirVersion::Stu3, FhirVersion::Dstu2] {
            let err = render_binary(&none, version, 1).unwrap_err();
            assert!(
                err.to_string().contains("Binary.content is missing"),
                "{err}"
            );
        }
    }

    #[test]
    fn payload_element_keeps_its_json_name() {
        let json =
            json!({"resourceType": "Binary", "contentType": "text/plain", "content": "QQ=="});
        let xml = render_binary(&json, FhirVersion::R4, 2).unwrap();
        assert!(xml.ends_with("<content value=\"QQ==\"/></Binary>"));
    }

    #[test]
    fn older_versions_drop_what_their_schema_lacks() {
        let stu3 = render_binary(&rich_binary(FhirVersion::Stu3), FhirVersion::Stu3, 5).unwrap();
        assert!(!stu3.contains("<source"));
        assert!(!stu3.contains("<type value"), "Reference.type is R4+");
        assert!(stu3.contains("<securityContext id=\"sc1\">"));
        assert!(stu3.contains("<identifier><use value=\"official\"/>"));
        assert!(stu3.contains("<content id=\"d1\" value=\""));

        let dstu2 = render_binary(&rich_binary(FhirVersion::Dstu2), FhirVersion::Dstu2, 5).unwrap();
        assert!(!dstu2.contains("securityContext"));
        assert!(!dstu2.contains("<source"));
        assert!(dstu2.contains("<profile id=\"p2\" value=\"http://example.org/p2\">"));
        assert!(
            !dstu2.contains("<identifier>"),
            "the zoo's Reference.identifier is STU3+"
        );

        let r5 = render_binary(&rich_binary(FhirVersion::R5), FhirVersion::R5, 5).unwrap();
        let r4 = render_binary(&rich_binary(FhirVersion::R4), FhirVersion::R4, 5).unwrap();
        assert_eq!(r4, r5);
    }

    #[test]
    fn dstu2_element_ids_must_be_fhir_ids() {
        let json = json!({"resourceType": "Binary", "contentType": "text/plain", "content": "QQ==",
            "_contentType": {"id": "not an id!", "extension": [{"url": "http://e", "valueBoolean": true}]},
            "meta": {"id": "ok.id-1", "versionId": "1"}});
        let xml = render_binary(&json, FhirVersion::Dstu2, 2).unwrap();
        assert!(xml.contains("<contentType value=\"text/plain\"><extension"));
        assert!(xml.contains("<meta id=\"ok.id-1\">"));
        let xml = render_binary(&json, FhirVersion::Stu3, 2).unwrap();
        assert!(xml.contains("<contentType id=\"not an id!\" value=\"text/plain\">"));
    }

    #[test]
    fn extension_values_by_type_and_version() {
        let r4 = render_binary(&extension_zoo(FhirVersion::R4), FhirVersion::R4, 64).unwrap();
        let stu3 = render_binary(&extension_zoo(FhirVersion::Stu3), FhirVersion::Stu3, 64).unwrap();
        let dstu2 =
            render_binary(&extension_zoo(FhirVersion::Dstu2), FhirVersion::Dstu2, 64).unwrap();
        // integer64 is R5's; the R4 schema that R5 output is checked with here lacks it.
        let int64 = |version| {
            let mut zoo = extension_zoo(version);
            zoo["_data"]["extension"]
                .as_array_mut()
                .unwrap()
                .push(json!({"url": "http://e/int64", "valueInteger64": "9007199254740993"}));
            render_binary(&zoo, version, 64).unwrap()
        };
        let r5 = int64(FhirVersion::R5);
        let r4_int64 = int64(FhirVersion::R4);
        let has = |xml: &str, url: &str| xml.contains(&format!("url=\"http://e/{url}\""));
        for url in [
            "boolean",
            "integer",
            "decimal",
            "uri",
            "date",
            "coding",
            "cc",
            "identifier",
            "period",
            "quantity",
            "meta",
            "complex",
        ] {
            assert!(
                has(&r4, url) && has(&stu3, url) && has(&dstu2, url),
                "{url}"
            );
        }
        assert!(has(&r4, "canonical") && has(&r4, "url") && has(&r4, "uuid") && has(&r4, "age"));
        assert!(
            !has(&stu3, "canonical")
                && !has(&stu3, "url")
                && !has(&stu3, "uuid")
                && has(&stu3, "age")
        );
        assert!(!has(&dstu2, "canonical") && has(&dstu2, "uuid") && !has(&dstu2, "age"));
        assert!(!has(&r4_int64, "int64") && has(&r5, "int64"));
        assert!(r5.contains("<valueInteger64 value=\"9007199254740993\"/>"));
        assert!(!has(&r4, "address"), "unmodelled types are dropped");
        assert!(r4.contains("<valueDate id=\"vd\" value=\"2024-02-29\"/>"));
        assert!(r4.contains("<valueQuantity><value value=\"5\"/><comparator value=\"&lt;\"/><unit value=\"mg\"/></valueQuantity>"));
        assert!(r4.contains(
            "<extension url=\"http://e/complex\"><extension url=\"part\"><valueString value=\"one\"/></extension>\
             <extension url=\"other\"><valueReference><reference value=\"Patient/2\"/><identifier><value value=\"p2\"/>\
             </identifier></valueReference></extension></extension>"
        ));
        assert!(dstu2.contains("<extension url=\"other\"><valueReference><reference value=\"Patient/2\"/></valueReference></extension>"));
    }

    #[test]
    fn malformed_json_is_an_error_and_writes_nothing() {
        let cases = [
            (
                json!({"contentType": "a/b", "meta": "x"}),
                "Binary.meta must be a JSON object, not a string",
            ),
            (
                json!({"contentType": ["a/b"]}),
                "Binary.contentType must be a JSON string",
            ),
            (
                json!({"resourceType": "Patient", "contentType": "a/b"}),
                "expected resourceType Binary",
            ),
            (json!({"id": "x"}), "Binary.contentType is required"),
            (
                json!({"contentType": "a/b", "_id": "x"}),
                "Binary.id has a primitive extension",
            ),
            (
                json!({"contentType": "a/b", "meta": {"tag": [{"code": {"x": 1}}]}}),
                "Binary.meta.tag[0].code must be",
            ),
            (
                json!({"contentType": "a/b", "meta": {"extension": [{"valueString": "x"}]}}),
                "Binary.meta.extension[0] has no url",
            ),
            (
                json!({"contentType": "a/b", "meta": {"extension": [{"url": "u", "valueString": "x", "valueCode": "y"}]}}),
                "more than one value[x]",
            ),
            (
                json!({"contentType": "a/b", "meta": {"id": 3}}),
                "Binary.meta has an element id that is a number",
            ),
        ];
        for (json, message) in cases {
            let mut out = b"kept".to_vec();
            let err = binary_prefix(
                json.as_object().unwrap(),
                Some(PayloadElement::Data),
                FhirVersion::R4,
                &mut out,
            )
            .unwrap_err();
            assert!(err.to_string().contains(message), "{err} / {message}");
            assert_eq!(out, b"kept");
        }
        let mut out = b"kept".to_vec();
        let bad = json!({"contentType": "a/b", "_data": [1]});
        assert!(binary_suffix(
            bad.as_object().unwrap(),
            PayloadElement::Data,
            FhirVersion::R4,
            &mut out
        )
        .is_err());
        assert_eq!(out, b"kept");
        // Deep nesting is refused rather than recursed into without bound.
        let mut deep = json!({"reference": "r"});
        for _ in 0..40 {
            deep = json!({"identifier": {"assigner": deep}});
        }
        let json = json!({"contentType": "a/b", "securityContext": deep});
        let err = binary_prefix(
            json.as_object().unwrap(),
            None,
            FhirVersion::R4,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    // ---- OperationOutcome --------------------------------------------------------------------

    #[test]
    fn layer_outcome_is_escaped() {
        for version in ALL {
            assert_eq!(
                render_oo(&layer_outcome(), version).unwrap(),
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><OperationOutcome xmlns=\"http://hl7.org/fhir\">\
                 <issue><severity value=\"error\"/><code value=\"not-supported\"/>\
                 <diagnostics value=\"x &lt; y &amp; &quot;z&quot;\"/></issue></OperationOutcome>"
            );
        }
    }

    #[test]
    fn hapi_404_keeps_its_narrative() {
        let xml = render_oo(&hapi_404(), FhirVersion::R4).unwrap();
        assert!(xml.contains(
            "<text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\"><h1>Operation Outcome</h1>\
             <table border=\"0\"><tr><td style=\"font-weight: bold;\">ERROR</td><td>[]</td><td><pre>HAPI-2001: \
             Resource Binary/123 is not known</pre></td></tr></table></div></text><issue><severity value=\"error\"/>\
             <code value=\"processing\"/><details><coding><system value=\"https://hapifhir.io/fhir/CodeSystem/hapi-fhir-errors\"/>\
             <code value=\"HAPI-2001\"/></coding></details><diagnostics value=\"HAPI-2001: Resource Binary/123 is not known\"/></issue>"
        ), "{xml}");
    }

    #[test]
    fn rich_outcome_in_schema_order() {
        let xml = render_oo(&rich_outcome(), FhirVersion::R4).unwrap();
        let names = element_names(&xml);
        let expected = [
            "OperationOutcome",
            "id",
            "meta",
            "versionId",
            "source",
            "implicitRules",
            "language",
            "text",
            "status",
            "div",
            "p",
            "b",
            "extension",
            "valueString",
            "modifierExtension",
            "valueBoolean",
            "issue",
            "extension",
            "valueInteger",
            "modifierExtension",
            "valueCode",
            "severity",
            "code",
            "details",
            "coding",
            "system",
            "code",
            "text",
            "diagnostics",
            "extension",
            "valueString",
            "location",
            "location",
            "expression",
            "issue",
            "severity",
            "code",
        ];
        assert_eq!(names, expected);
        assert!(xml.contains("<text id=\"t1\">"));
        assert!(xml.contains("<diagnostics value=\"bad base64&#10;at byte 12\">"));
        assert!(!xml.contains("Basic"), "contained is skipped");
        let dstu2 = render_oo(&rich_outcome(), FhirVersion::Dstu2).unwrap();
        assert!(!dstu2.contains("<expression") && !dstu2.contains("<source"));
        let stu3 = render_oo(&rich_outcome(), FhirVersion::Stu3).unwrap();
        assert!(stu3.contains("<expression value=\"Binary.data\"/>") && !stu3.contains("<source"));
    }

    #[test]
    fn narratives_accepted() {
        for div in GOOD_DIVS {
            let xml = render_oo(&with_div(div), FhirVersion::R4).unwrap();
            assert!(xml.contains("<text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\""), "{div}");
        }
    }

    #[test]
    fn narratives_rejected_are_dropped_whole() {
        let plain = render_oo(&layer_outcome(), FhirVersion::R4).unwrap();
        for div in BAD_DIVS {
            assert_eq!(
                render_oo(&with_div(div), FhirVersion::R4).unwrap(),
                plain,
                "{div}"
            );
        }
        for text in [
            json!({"status": "bogus", "div": GOOD_DIVS[1]}),
            json!({"div": GOOD_DIVS[1]}),
            json!({"status": "generated"}),
            json!({"status": "generated", "div": 3}),
            json!("text"),
            json!({"status": "generated", "div": GOOD_DIVS[1], "extension": [{"valueString": "no url"}]}),
        ] {
            let mut oo = layer_outcome();
            oo["text"] = text.clone();
            assert_eq!(render_oo(&oo, FhirVersion::R4).unwrap(), plain, "{text}");
        }
    }

    #[test]
    fn narrative_is_rewritten_in_normal_form() {
        let div = "<x:div xmlns:x=\"http://www.w3.org/1999/xhtml\" xmlns:y=\"urn:unused\"><!-- c --><x:p \
                   class='a'>A&#x42;&#67;&nbsp;&lt;&amp;&gt;&quot;&apos;<![CDATA[<&>]]>\r\nz</x:p></x:div>";
        let xml = render_oo(&with_div(div), FhirVersion::R4).unwrap();
        assert!(xml.contains(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p class=\"a\">ABC\u{A0}&lt;&amp;&gt;\"'&lt;&amp;&gt;\nz</p></div>"
        ), "{xml}");
    }

    #[test]
    fn empty_token_lists_are_left_out() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p class="" id="x">a</p><a rel=" " href="h">b</a></div>"#;
        let xml = render_oo(&with_div(div), FhirVersion::R4).unwrap();
        assert!(xml.contains(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p id="x">a</p><a href="h">b</a></div>"#), "{xml}");
    }

    #[test]
    fn malformed_outcomes_are_errors() {
        for (json, message) in [
            (
                json!({"resourceType": "OperationOutcome"}),
                "OperationOutcome.issue is required",
            ),
            (
                json!({"resourceType": "OperationOutcome", "issue": []}),
                "OperationOutcome.issue is required",
            ),
            (
                json!({"resourceType": "OperationOutcome", "issue": [{"code": "x"}]}),
                "OperationOutcome.issue[0].severity is required",
            ),
            (
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}),
                "OperationOutcome.issue[0].code is required",
            ),
            (
                json!({"resourceType": "Binary", "issue": []}),
                "expected resourceType OperationOutcome",
            ),
            (
                json!({"issue": [{"severity": "error", "code": "x"}]}),
                "expected resourceType OperationOutcome",
            ),
            (
                json!([1]),
                "OperationOutcome must be a JSON object, not an array",
            ),
            (
                json!({"resourceType": "OperationOutcome", "issue": {"severity": "error", "code": "x", "details": []}}),
                "OperationOutcome.issue[0].details must be a JSON object",
            ),
        ] {
            let mut out = b"kept".to_vec();
            let err = operation_outcome(&json, FhirVersion::R4, &mut out).unwrap_err();
            assert!(err.to_string().contains(message), "{err} / {message}");
            assert_eq!(out, b"kept");
        }
    }

    #[test]
    fn xml_error_is_an_error() {
        let err: Box<dyn std::error::Error> = Box::new(XmlError("m".into()));
        assert_eq!(err.to_string(), "m");
    }
}
