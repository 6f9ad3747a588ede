//! Streaming FHIR XML -> FHIR JSON for any resource of a release, driven by the model tables
//! (`crate::model`), following the release's json.html and xml.html.
//!
//! [`XmlToJson`] is fed the XML in pieces split anywhere and appends JSON to the caller's
//! buffer as soon as it can:
//!
//! - The root element names the resource: `{"resourceType":"Patient",...`. Elements must come
//!   in definition order (as FHIR XML requires); repeated elements are next to each other in
//!   XML and go out as one JSON array (arrays by the tables' cardinality, even of one item).
//! - `value` attributes become values of the primitive's JSON kind: numbers and booleans
//!   unquoted (a decimal with exactly the XML text, which must be a JSON number), R5
//!   `integer64` a string. `Element.id` and `Extension.url` attributes become members.
//! - A primitive's `id` and extensions become its `_name` object; in an array of primitives,
//!   `_name` is an array with `null` for the items without, held (within `max_held`) until the
//!   array ends, and the value array has `null` for items with no `value`.
//! - Resource-typed elements (`contained`, `Bundle.entry.resource`, ...) are unwrapped: the
//!   inner element's name becomes `resourceType`.
//! - The narrative `div` becomes a JSON string of its XHTML, copied as written (entities
//!   and all, which is what FHIR JSON carries).
//! - Entities and character references in attribute values are resolved, XML's attribute
//!   whitespace normalisation applied, and the text JSON-escaped.
//! - Memory is bounded: a tag or a piece of `div` text is held whole, within `max_held` (so
//!   the base64 `value` of a large Binary is read whole, within that limit, before its JSON
//!   goes out); the nesting depth is bounded by `max_depth`.
//! - XML that is not FHIR for the release (an unknown or misplaced element, another
//!   namespace, a DTD, text where FHIR has none, a value not of its kind, an empty element)
//!   is an [`XmlError`] naming the element path; after one, nothing more is written, so the
//!   JSON is never ended as if complete.

use std::fmt;

use crate::model::{ElementRef, JsonKind, Model, TypeKind, TypeRef};
use crate::FhirVersion;

const FHIR_NS: &[u8] = b"http://hl7.org/fhir";
const XHTML_NS: &[u8] = b"http://www.w3.org/1999/xhtml";

/// The bounds of a conversion's memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct XmlLimits {
    /// The largest tag, attribute value or run of `div` text held whole, in bytes.
    pub(crate) max_held: usize,
    /// The deepest element nesting accepted.
    pub(crate) max_depth: usize,
}

impl Default for XmlLimits {
    fn default() -> XmlLimits {
        XmlLimits {
            max_held: 64 << 20,
            max_depth: 128,
        }
    }
}

/// Why the XML could not be converted: it is not FHIR XML of the release, or needs more than
/// the limits. The message names the element path (`Patient.name.given`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XmlError {
    path: String,
    message: String,
}

impl XmlError {
    /// The element path, such as `Patient.name.given`; empty before the root.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for XmlError {}

/// A streaming FHIR XML -> FHIR JSON converter for one document.
pub(crate) struct XmlToJson {
    model: Model,
    limits: XmlLimits,
    /// Received and not yet consumed.
    input: Vec<u8>,
    /// Where the search for the end of the current token resumes, and the quote it is in.
    scan: usize,
    quote: Option<u8>,
    /// The open elements.
    stack: Vec<Frame>,
    /// The names of the open elements, one after the other (`Frame::tag` indexes it).
    tags: Vec<u8>,
    /// The `_name` array of the open array of primitives, without its brackets.
    side: Vec<u8>,
    /// Whether `side` has an item other than `null`.
    side_used: bool,
    started: bool,
    done: bool,
    failed: Option<XmlError>,
    scratch: Vec<u8>,
}

/// A tag's attributes: names and values as written.
type Attributes = Vec<(Vec<u8>, Vec<u8>)>;

/// An open element.
struct Frame {
    /// Where its name starts in `tags`.
    tag: usize,
    kind: FrameKind,
    /// Whether its JSON goes to `side` (the `_name` of an item of a primitive array).
    to_side: bool,
}

enum FrameKind {
    /// A resource, data type, backbone element or a primitive's `_name` object.
    Object {
        ty: TypeRef,
        /// The last element read and whether its array is still open.
        last: Option<(ElementRef, bool)>,
        /// Whether a member has been written (`,` before the next).
        members: bool,
        /// A primitive's `_name` opened only when it gets a member: its key.
        pending_open: Option<&'static str>,
        /// A primitive whose `value` was written: an element with nothing is an error.
        has_value: bool,
        /// The `_name` object of an item of a primitive array (`null` when it gets nothing).
        item_partner: bool,
    },
    /// An element holding one resource (`contained`, `Bundle.entry.resource`).
    Wrapper { filled: bool },
    /// The narrative `div`, at this depth of XHTML.
    Div { depth: usize },
}

/// A piece of XML.
enum Token {
    Start {
        end: usize,
        empty: bool,
    },
    End {
        end: usize,
    },
    /// Text up to `end` (not including the next `<`, or all there is).
    Text {
        end: usize,
    },
    /// A comment, CDATA section or processing instruction.
    Other {
        end: usize,
        cdata: bool,
        pi: bool,
    },
}

impl XmlToJson {
    pub(crate) fn new(version: FhirVersion, limits: XmlLimits) -> XmlToJson {
        XmlToJson {
            model: Model::of(version),
            limits,
            input: Vec::new(),
            scan: 0,
            quote: None,
            stack: Vec::new(),
            tags: Vec::new(),
            side: Vec::new(),
            side_used: false,
            started: false,
            done: false,
            failed: None,
            scratch: Vec::new(),
        }
    }

    /// Converts the next piece of XML, appending the JSON that can be written to `out`.
    /// After an error, every call returns it again and nothing more is written.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), XmlError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.input.extend_from_slice(input);
        let result = self.run(out, false);
        self.check(result)
    }

    /// Ends the document: checks that it was complete and writes its last `}`.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), XmlError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.run(out, true).and_then(|()| {
            if self.done {
                out.push(b'}');
                Ok(())
            } else {
                Err(self.error("the document ends before its root element does"))
            }
        });
        self.check(result)
    }

    fn check(&mut self, result: Result<(), XmlError>) -> Result<(), XmlError> {
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn error(&self, message: impl Into<String>) -> XmlError {
        let mut path = String::new();
        for (i, frame) in self.stack.iter().enumerate() {
            let end = self.stack.get(i + 1).map_or(self.tags.len(), |f| f.tag);
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&String::from_utf8_lossy(&self.tags[frame.tag..end]));
        }
        XmlError {
            path,
            message: message.into(),
        }
    }

    /// Consumes every complete token of `input`.
    fn run(&mut self, out: &mut Vec<u8>, ended: bool) -> Result<(), XmlError> {
        let mut at = 0;
        let result = loop {
            match self.next_token(at, ended) {
                Ok(None) => break Ok(()),
                Ok(Some(token)) => {
                    let end = match &token {
                        Token::Start { end, .. }
                        | Token::End { end }
                        | Token::Text { end }
                        | Token::Other { end, .. } => *end,
                    };
                    let held = matches!(token, Token::Start { .. })
                        || (self.in_div() && matches!(token, Token::Text { .. }));
                    if held && end - at > self.limits.max_held {
                        break Err(self.error(format!(
                            "a tag or text longer than the {} bytes held whole",
                            self.limits.max_held
                        )));
                    }
                    if let Err(e) = self.token(&token, at, out) {
                        break Err(e);
                    }
                    at = end;
                    self.scan = at;
                    self.quote = None;
                }
                Err(e) => break Err(e),
            }
        };
        self.input.drain(..at);
        self.scan -= at;
        if result.is_ok() && self.input.len() > self.limits.max_held {
            return Err(self.error(format!(
                "a tag or text longer than the {} bytes held whole",
                self.limits.max_held
            )));
        }
        if result.is_ok() && ended && !self.input.is_empty() {
            return Err(self.error("the document ends inside a tag"));
        }
        result
    }

    /// The token starting at `at`, if it is complete.
    fn next_token(&mut self, at: usize, ended: bool) -> Result<Option<Token>, XmlError> {
        let input = &self.input;
        if at >= input.len() {
            return Ok(None);
        }
        if input[at] != b'<' {
            return Ok(match memchr(b'<', &input[at..]) {
                Some(n) => Some(Token::Text { end: at + n }),
                // Text outside the `div` is checked as it comes; in the `div` it is held
                // until its end so that no character is split.
                None if ended || !self.in_div() => Some(Token::Text { end: input.len() }),
                None => None,
            });
        }
        let rest = &input[at..];
        if rest.len() < 2 || (rest[1] == b'!' && rest.len() < 9 && !ended) {
            return Ok(None);
        }
        let find = |what: &[u8], from: usize| -> Option<usize> {
            rest.get(from..)?
                .windows(what.len())
                .position(|w| w == what)
                .map(|n| at + from + n + what.len())
        };
        match rest[1] {
            b'?' => Ok(find(b"?>", 2).map(|end| Token::Other {
                end,
                cdata: false,
                pi: true,
            })),
            b'!' if rest.starts_with(b"<!--") => Ok(find(b"-->", 4).map(|end| Token::Other {
                end,
                cdata: false,
                pi: false,
            })),
            b'!' if rest.starts_with(b"<![CDATA[") => Ok(find(b"]]>", 9).map(|end| Token::Other {
                end,
                cdata: true,
                pi: false,
            })),
            b'!' => Err(self.error("a DTD or declaration, which FHIR XML does not allow")),
            _ => {
                // Find the `>` that is not inside a quoted attribute value.
                let mut i = self.scan.max(at + 1);
                let mut quote = self.quote;
                while i < input.len() {
                    let b = input[i];
                    match quote {
                        Some(q) if b == q => quote = None,
                        Some(_) => {}
                        None if b == b'"' || b == b'\'' => quote = Some(b),
                        None if b == b'>' => {
                            let end = i + 1;
                            return Ok(Some(if rest[1] == b'/' {
                                Token::End { end }
                            } else {
                                Token::Start {
                                    end,
                                    empty: input[i - 1] == b'/',
                                }
                            }));
                        }
                        None => {}
                    }
                    i += 1;
                }
                self.scan = i;
                self.quote = quote;
                Ok(None)
            }
        }
    }

    fn in_div(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                kind: FrameKind::Div { .. },
                ..
            })
        )
    }

    fn token(&mut self, token: &Token, at: usize, out: &mut Vec<u8>) -> Result<(), XmlError> {
        if let Some(Frame {
            kind: FrameKind::Div { .. },
            ..
        }) = self.stack.last()
        {
            return self.div_token(token, at, out);
        }
        match *token {
            Token::Text { end } => {
                if self.input[at..end]
                    .iter()
                    .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    Ok(())
                } else {
                    Err(self.error("text where FHIR XML has only elements"))
                }
            }
            Token::Other { cdata: true, .. } => {
                Err(self.error("a CDATA section where FHIR XML has only elements"))
            }
            Token::Other { pi, end, .. } => {
                if pi && !self.started && at == 0 && self.input[at..end].starts_with(b"<?xml ") {
                    // The XML declaration: only UTF-8 is read.
                    let decl = String::from_utf8_lossy(&self.input[at..end]).to_lowercase();
                    if decl.contains("encoding") && !decl.contains("utf-8") {
                        return Err(self.error("an encoding other than UTF-8"));
                    }
                }
                Ok(())
            }
            Token::Start { end, empty } => self.start(at, end, empty, out),
            Token::End { end } => self.end(at, end, out),
        }
    }

    /// Everything inside the `div`, copied as written into its JSON string.
    fn div_token(&mut self, token: &Token, at: usize, out: &mut Vec<u8>) -> Result<(), XmlError> {
        let (end, depth_change) = match *token {
            Token::Start { end, empty } => (end, if empty { 0 } else { 1 }),
            Token::End { end } => (end, -1),
            Token::Text { end } | Token::Other { end, .. } => (end, 0),
        };
        let raw = &self.input[at..end];
        if std::str::from_utf8(raw).is_err() {
            return Err(self.error("XHTML that is not UTF-8"));
        }
        let to_side = self.stack.last().is_some_and(|f| f.to_side);
        let sink = if to_side { &mut self.side } else { &mut *out };
        escape_json(raw, sink);
        let Some(Frame {
            kind: FrameKind::Div { depth },
            ..
        }) = self.stack.last_mut()
        else {
            unreachable!("called in the div");
        };
        if depth_change > 0 {
            *depth += 1;
            if *depth > self.limits.max_depth {
                return Err(self.error("XHTML nested too deep"));
            }
        } else if depth_change < 0 {
            *depth -= 1;
            if *depth == 0 {
                sink_of(out, &mut self.side, to_side).push(b'"');
                self.pop();
            }
        }
        Ok(())
    }

    fn pop(&mut self) {
        if let Some(frame) = self.stack.pop() {
            self.tags.truncate(frame.tag);
        }
    }

    fn start(
        &mut self,
        at: usize,
        end: usize,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let tag = &self.input[at + 1..end - if empty { 2 } else { 1 }];
        let name_len = tag
            .iter()
            .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(tag.len());
        let name = std::str::from_utf8(&tag[..name_len])
            .map_err(|_| self.error("an element name that is not UTF-8"))?
            .to_owned();
        let attributes: Attributes = parse_attributes(&tag[name_len..])
            .ok_or_else(|| self.error(format!("a malformed tag <{name}>")))?
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.error("elements nested too deep"));
        }
        if self.done {
            return Err(self.error(format!("<{name}> after the root element")));
        }
        if name.contains(':') {
            return Err(self.error(format!("<{name}> is not in the FHIR namespace")));
        }
        // The namespace: FHIR everywhere, XHTML on the `div`.
        let namespace = attributes
            .iter()
            .find(|a| a.0 == b"xmlns")
            .map(|a| a.1.as_slice());
        let element_ns_ok = |expected: &[u8]| namespace.is_none_or(|ns| ns == expected);
        let Some(top) = self.stack.last() else {
            // The root: a resource of the release in the FHIR namespace.
            if self.started {
                return Err(self.error(format!("<{name}> after the root element")));
            }
            if namespace != Some(FHIR_NS) {
                return Err(self.error(format!("<{name}> is not in the FHIR namespace")));
            }
            let ty = self.resource(&name)?;
            self.started = true;
            out.extend_from_slice(b"{\"resourceType\":\"");
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
            self.push_object(&name, ty, true, None, false);
            return self.object_attributes(ty, &attributes, empty, out);
        };
        let to_side = top.to_side;
        match top.kind {
            FrameKind::Div { .. } => unreachable!("handled by div_token"),
            FrameKind::Wrapper { filled } => {
                if filled {
                    return Err(self.error(format!("<{name}>: a second resource")));
                }
                if !element_ns_ok(FHIR_NS) {
                    return Err(self.error(format!("<{name}> is not in the FHIR namespace")));
                }
                let ty = self.resource(&name)?;
                if let Some(Frame {
                    kind: FrameKind::Wrapper { filled },
                    ..
                }) = self.stack.last_mut()
                {
                    *filled = true;
                }
                let sink = sink_of(out, &mut self.side, to_side);
                sink.extend_from_slice(b"{\"resourceType\":\"");
                sink.extend_from_slice(name.as_bytes());
                sink.push(b'"');
                self.push_object(&name, ty, true, None, to_side);
                self.object_attributes(ty, &attributes, empty, out)
            }
            FrameKind::Object { ty: parent, .. } => {
                let Some(found) = parent.element(&name) else {
                    return Err(self.error(format!("<{name}> is not an element here")));
                };
                if found.element.is_attribute() {
                    return Err(self.error(format!("<{name}> is an attribute in FHIR XML")));
                }
                let is_xhtml = found.element.is_xhtml();
                if !element_ns_ok(if is_xhtml { XHTML_NS } else { FHIR_NS }) {
                    return Err(self.error(format!("<{name}> is in the wrong namespace")));
                }
                if is_xhtml && namespace.is_none() {
                    return Err(self.error("the div is not in the XHTML namespace"));
                }
                self.element_start(
                    &name,
                    found.element,
                    found.ty,
                    &attributes,
                    at,
                    end,
                    empty,
                    out,
                )
            }
        }
    }

    fn resource(&self, name: &str) -> Result<TypeRef, XmlError> {
        self.model.resource(name).ok_or_else(|| {
            self.error(format!(
                "<{name}> is not a resource of FHIR {}",
                self.model.version()
            ))
        })
    }

    fn push_object(
        &mut self,
        name: &str,
        ty: TypeRef,
        members: bool,
        pending_open: Option<&'static str>,
        to_side: bool,
    ) {
        let tag = self.tags.len();
        self.tags.extend_from_slice(name.as_bytes());
        self.stack.push(Frame {
            tag,
            to_side,
            kind: FrameKind::Object {
                ty,
                last: None,
                members,
                pending_open,
                has_value: false,
                item_partner: false,
            },
        });
    }

    /// A child element of the object on top of the stack.
    #[allow(clippy::too_many_arguments)]
    fn element_start(
        &mut self,
        name: &str,
        element: ElementRef,
        ty: TypeRef,
        attributes: &Attributes,
        at: usize,
        end: usize,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let partner_key = self.stack.last().and_then(|top| match top.kind {
            FrameKind::Object {
                pending_open: Some(prefix),
                ..
            } => {
                let mut key = prefix.as_bytes().to_vec();
                key.push(b'"');
                key.push(b'_');
                key.extend_from_slice(&self.tags[top.tag..]);
                key.extend_from_slice(b"\":{");
                Some(key)
            }
            _ => None,
        });
        let Some(Frame {
            kind: FrameKind::Object { last, .. },
            to_side,
            ..
        }) = self.stack.last_mut()
        else {
            unreachable!("called in an object");
        };
        let to_side = *to_side;
        let is_array = element.is_array();
        // The `div` is of the primitive type `xhtml`, but a string of XHTML elements.
        let primitive = ty.json_kind().filter(|_| !element.is_xhtml());
        // Continuing the open array, or a new member after the last one.
        let continuing = matches!(*last, Some((previous, true)) if previous == element);
        let previous = *last;
        if !continuing {
            if let Some((previous, open)) = previous {
                if previous.position() >= element.position() {
                    return Err(
                        self.error(format!("<{name}> repeated or out of the definition order"))
                    );
                }
                if open {
                    close_array(previous, out, &mut self.side, &mut self.side_used, to_side);
                }
            }
        }
        let Some(Frame {
            kind:
                FrameKind::Object {
                    last,
                    members,
                    pending_open,
                    ..
                },
            ..
        }) = self.stack.last_mut()
        else {
            unreachable!("called in an object");
        };
        *last = Some((element, is_array));
        let sink = sink_of(out, &mut self.side, to_side);
        if pending_open.take().is_some() {
            sink.extend_from_slice(&partner_key.unwrap_or_default());
        }
        if !continuing && primitive.is_none() {
            // Complex members are written now; primitives write their own keys.
            if *members {
                sink.push(b',');
            }
            push_key(sink, name.as_bytes());
            if is_array {
                sink.push(b'[');
            }
        } else if continuing && primitive.is_none() {
            sink.push(b',');
        }
        let had_members = *members;
        *members = true;
        if let Some(kind) = primitive {
            return self.primitive_start(
                name,
                element,
                ty,
                kind,
                continuing,
                had_members,
                attributes,
                empty,
                out,
            );
        }
        if element.is_resource_typed() {
            let tag = self.tags.len();
            self.tags.extend_from_slice(name.as_bytes());
            self.stack.push(Frame {
                tag,
                to_side,
                kind: FrameKind::Wrapper { filled: false },
            });
            if empty {
                return Err(self.error("an element without its resource"));
            }
            return Ok(());
        }
        if element.is_xhtml() {
            let tag = self.tags.len();
            self.tags.extend_from_slice(name.as_bytes());
            self.stack.push(Frame {
                tag,
                to_side,
                kind: FrameKind::Div { depth: 0 },
            });
            sink_of(out, &mut self.side, to_side).push(b'"');
            let token = Token::Start { end, empty };
            return self.div_token(&token, at, out);
        }
        if to_side && matches!(ty.kind(), TypeKind::Resource) {
            return Err(self.error("a resource inside a primitive's extension"));
        }
        sink_of(out, &mut self.side, to_side).push(b'{');
        self.push_object(name, ty, false, None, to_side);
        self.object_attributes(ty, attributes, empty, out)
    }

    /// A primitive element: its value in the value array or member, its `id` and
    /// extensions in `_name`.
    #[allow(clippy::too_many_arguments)]
    fn primitive_start(
        &mut self,
        name: &str,
        element: ElementRef,
        ty: TypeRef,
        kind: JsonKind,
        continuing: bool,
        had_members: bool,
        attributes: &Attributes,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let to_side = self.stack.last().is_some_and(|f| f.to_side);
        let tag = self.tags.len();
        self.tags.extend_from_slice(name.as_bytes());
        // Pushed now so that errors name the element.
        self.stack.push(Frame {
            tag,
            to_side,
            kind: FrameKind::Wrapper { filled: true },
        });
        let mut value = None;
        let mut id = None;
        for (attribute, text) in attributes {
            match attribute.as_slice() {
                b"value" => value = Some(text.as_slice()),
                b"id" => id = Some(text.as_slice()),
                other if is_ignored_attribute(other) => {}
                other => {
                    return Err(self.error(format!(
                        "the attribute {:?} is not FHIR",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        let is_array = element.is_array();
        if is_array && to_side {
            return Err(self.error("an array of primitives inside a primitive's extension"));
        }
        if value.is_none() && id.is_none() && empty {
            return Err(self.error("an element with neither a value nor children"));
        }
        // The value.
        let mut scratch = std::mem::take(&mut self.scratch);
        let written = self.write_value(value, kind, ty.name(), &mut scratch);
        self.scratch = scratch;
        written?;
        if is_array {
            // Never in `side` (refused above).
            if continuing {
                out.push(b',');
            } else {
                if had_members {
                    out.push(b',');
                }
                push_key(out, name.as_bytes());
                out.push(b'[');
                self.side.clear();
                self.side_used = false;
            }
            match value {
                Some(_) => out.extend_from_slice(&self.scratch),
                None => out.extend_from_slice(b"null"),
            }
        } else if value.is_some() {
            let sink = sink_of(out, &mut self.side, to_side);
            if had_members {
                sink.push(b',');
            }
            push_key(sink, name.as_bytes());
            sink.extend_from_slice(&self.scratch);
        }
        // The `_name` part: an object in `side` (arrays) or after the value.
        let mut id_json = Vec::new();
        if let Some(id) = id {
            let mut scratch = std::mem::take(&mut self.scratch);
            let written = self.write_value(Some(id), JsonKind::String, "string", &mut scratch);
            id_json.extend_from_slice(&scratch);
            self.scratch = scratch;
            written?;
        }
        self.pop();
        let mut partner = Vec::with_capacity(name.len() + 1);
        partner.push(b'_');
        partner.extend_from_slice(name.as_bytes());
        if is_array {
            if continuing {
                self.side.push(b',');
            }
            if id.is_none() && empty {
                self.side.extend_from_slice(b"null");
                return Ok(());
            }
            self.side.push(b'{');
            if id.is_some() {
                self.side.extend_from_slice(b"\"id\":");
                self.side.extend_from_slice(&id_json);
            }
            self.push_object(name, ty, id.is_some(), None, true);
            if let Some(Frame {
                kind: FrameKind::Object { item_partner, .. },
                ..
            }) = self.stack.last_mut()
            {
                *item_partner = true;
            }
        } else {
            let sink = sink_of(out, &mut self.side, to_side);
            let separated = had_members || value.is_some();
            // The key is static for the pending form: keep the name in `tags` instead.
            if id.is_some() {
                if separated {
                    sink.push(b',');
                }
                push_key(sink, &partner);
                sink.extend_from_slice(b"{\"id\":");
                sink.extend_from_slice(&id_json);
                if empty {
                    sink.push(b'}');
                    return Ok(());
                }
                self.push_object(name, ty, true, None, to_side);
            } else {
                if empty {
                    return Ok(());
                }
                // Opened by its first member: `,"_name":{`.
                let key: &'static str = if separated { "," } else { "" };
                self.push_object(name, ty, false, Some(key), to_side);
            }
        }
        if let Some(Frame {
            kind: FrameKind::Object { has_value, .. },
            ..
        }) = self.stack.last_mut()
        {
            *has_value = value.is_some();
        }
        if empty {
            return self.end_object(out);
        }
        Ok(())
    }

    /// The attributes of a resource or complex element: `id` and `url` become members.
    fn object_attributes(
        &mut self,
        ty: TypeRef,
        attributes: &Attributes,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let to_side = self.stack.last().is_some_and(|f| f.to_side);
        for (attribute, text) in attributes {
            if is_ignored_attribute(attribute) {
                continue;
            }
            let name = String::from_utf8_lossy(attribute);
            let found = ty
                .element(&name)
                .filter(|found| found.element.is_attribute());
            let Some(found) = found else {
                return Err(self.error(format!("the attribute {name:?} is not FHIR")));
            };
            let kind = found.ty.json_kind().unwrap_or(JsonKind::String);
            let mut scratch = std::mem::take(&mut self.scratch);
            let written = self.write_value(Some(text), kind, found.ty.name(), &mut scratch);
            self.scratch = scratch;
            written?;
            let Some(Frame {
                kind: FrameKind::Object { members, .. },
                ..
            }) = self.stack.last_mut()
            else {
                unreachable!("called on an object");
            };
            let sink = sink_of(out, &mut self.side, to_side);
            if *members {
                sink.push(b',');
            }
            *members = true;
            push_key(sink, attribute);
            sink.extend_from_slice(&self.scratch);
        }
        if empty {
            return self.end_object(out);
        }
        Ok(())
    }

    /// Writes a value of `kind` from an attribute's text into `json` (cleared first).
    fn write_value(
        &self,
        text: Option<&[u8]>,
        kind: JsonKind,
        type_name: &str,
        json: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        json.clear();
        let Some(text) = text else {
            return Ok(());
        };
        // Most values (a Binary's base64 always) have nothing to resolve: no copy then.
        let plain = !text.iter().any(|&b| b == b'&' || b < 0x20);
        let mut owned = Vec::new();
        let decoded = if plain {
            text
        } else {
            owned.reserve(text.len());
            decode_attribute(text, &mut owned).map_err(|m| self.error(m))?;
            &owned
        };
        let Ok(decoded) = std::str::from_utf8(decoded) else {
            return Err(self.error("a value that is not UTF-8"));
        };
        match kind {
            JsonKind::String => {
                if decoded.is_empty() {
                    return Err(self.error("an empty value"));
                }
                json.push(b'"');
                escape_json(decoded.as_bytes(), json);
                json.push(b'"');
            }
            JsonKind::Number => {
                let integer = !matches!(type_name, "decimal");
                if !is_json_number(decoded.as_bytes())
                    || (integer && decoded.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')))
                {
                    return Err(self.error(format!("{decoded:?} is not a number")));
                }
                json.extend_from_slice(decoded.as_bytes());
            }
            JsonKind::Boolean => {
                if decoded != "true" && decoded != "false" {
                    return Err(self.error(format!("{decoded:?} is not a boolean")));
                }
                json.extend_from_slice(decoded.as_bytes());
            }
        }
        Ok(())
    }

    fn end(&mut self, at: usize, end: usize, out: &mut Vec<u8>) -> Result<(), XmlError> {
        let name = self.input[at + 2..end - 1].trim_ascii_end();
        let Some(top) = self.stack.last() else {
            return Err(self.error("an end tag without its start"));
        };
        if self.tags[top.tag..] != *name {
            return Err(self.error(format!(
                "</{}> ends another element",
                String::from_utf8_lossy(name)
            )));
        }
        match top.kind {
            FrameKind::Div { .. } => unreachable!("handled by div_token"),
            FrameKind::Wrapper { filled } => {
                if !filled {
                    return Err(self.error("an element without its resource"));
                }
                self.pop();
                Ok(())
            }
            FrameKind::Object { .. } => self.end_object(out),
        }
    }

    /// Ends the object on top of the stack.
    fn end_object(&mut self, out: &mut Vec<u8>) -> Result<(), XmlError> {
        let Some(Frame {
            kind:
                FrameKind::Object {
                    last,
                    members,
                    pending_open,
                    has_value,
                    item_partner,
                    ..
                },
            to_side,
            ..
        }) = self.stack.last()
        else {
            unreachable!("called on an object");
        };
        let (last, members, pending_open, has_value, item_partner, to_side) = (
            *last,
            *members,
            *pending_open,
            *has_value,
            *item_partner,
            *to_side,
        );
        if item_partner {
            if members {
                self.side_used = true;
            } else if has_value {
                // Nothing but the value: `null` in `_name`.
                self.side.pop();
                self.side.extend_from_slice(b"null");
                self.pop();
                return Ok(());
            }
        }
        if pending_open.is_some() {
            // A primitive's `_name` that got no member.
            if !has_value {
                return Err(self.error("an element with neither a value nor children"));
            }
            self.pop();
            return Ok(());
        }
        if !members {
            return Err(self.error("an element with neither a value nor children"));
        }
        if let Some((previous, true)) = last {
            close_array(previous, out, &mut self.side, &mut self.side_used, to_side);
        }
        self.pop();
        if self.stack.is_empty() {
            // The last `}` waits for `finish`: until the input has ended, nothing after the
            // root may make the document invalid, and the JSON must not look complete.
            self.done = true;
        } else {
            sink_of(out, &mut self.side, to_side).push(b'}');
        }
        Ok(())
    }
}

fn sink_of<'a>(out: &'a mut Vec<u8>, side: &'a mut Vec<u8>, to_side: bool) -> &'a mut Vec<u8> {
    if to_side {
        side
    } else {
        out
    }
}

/// Closes an open array: `]`, and for primitives the `_name` array if any item had one.
fn close_array(
    element: ElementRef,
    out: &mut Vec<u8>,
    side: &mut Vec<u8>,
    side_used: &mut bool,
    to_side: bool,
) {
    let primitive = element.ty().is_some_and(|ty| ty.json_kind().is_some());
    let sink = sink_of(out, side, to_side);
    sink.push(b']');
    if primitive {
        if *side_used {
            out.extend_from_slice(b",\"_");
            out.extend_from_slice(element.name().as_bytes());
            out.extend_from_slice(b"\":[");
            out.extend_from_slice(side);
            out.push(b']');
        }
        side.clear();
        *side_used = false;
    }
}

fn push_key(out: &mut Vec<u8>, name: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
}

/// Namespace declarations and schema locations, which have no JSON form.
fn is_ignored_attribute(name: &[u8]) -> bool {
    name == b"xmlns" || name.starts_with(b"xmlns:") || name.ends_with(b":schemaLocation")
}

fn memchr(byte: u8, bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == byte)
}

/// The attributes of a start tag after its name, values still escaped.
fn parse_attributes(mut rest: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut attributes = Vec::new();
    loop {
        rest = rest.trim_ascii_start();
        if rest.is_empty() {
            return Some(attributes);
        }
        let eq = memchr(b'=', rest)?;
        let name = rest[..eq].trim_ascii_end();
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        rest = rest[eq + 1..].trim_ascii_start();
        let quote = *rest.first()?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let close = memchr(quote, &rest[1..])?;
        let value = &rest[1..1 + close];
        if memchr(b'<', value).is_some() {
            return None;
        }
        if attributes.iter().any(|(n, _)| *n == name) {
            return None;
        }
        attributes.push((name, value));
        rest = &rest[close + 2..];
        if !rest.is_empty() && !rest[0].is_ascii_whitespace() {
            return None;
        }
    }
}

/// Resolves the references of an attribute value and normalises its whitespace as XML does.
fn decode_attribute(text: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'&' => {
                let end = memchr(b';', &text[i..]).ok_or("a bare & in a value")?;
                let reference = &text[i + 1..i + end];
                let c = match reference {
                    b"lt" => '<',
                    b"gt" => '>',
                    b"amp" => '&',
                    b"quot" => '"',
                    b"apos" => '\'',
                    [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
                    [b'#', decimal @ ..] => char_ref(decimal, 10)?,
                    other => {
                        return Err(format!(
                            "the entity &{}; is not XML's",
                            String::from_utf8_lossy(other)
                        ))
                    }
                };
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += end + 1;
            }
            // Attribute-value normalisation; a CR LF pair is one line end.
            b'\r' if text.get(i + 1) == Some(&b'\n') => i += 1,
            b'\t' | b'\n' | b'\r' => {
                out.push(b' ');
                i += 1;
            }
            b if b < 0x20 => return Err("a control character in a value".into()),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

fn char_ref(digits: &[u8], radix: u32) -> Result<char, String> {
    let text = std::str::from_utf8(digits).map_err(|_| "a malformed character reference")?;
    let c = u32::from_str_radix(text, radix)
        .ok()
        .filter(|_| !text.is_empty() && !text.starts_with('+'))
        .and_then(char::from_u32)
        .ok_or_else(|| format!("a malformed character reference &#{text};"))?;
    let allowed =
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && !matches!(c, '\u{FFFE}' | '\u{FFFF}'));
    if !allowed {
        return Err(format!(
            "the character reference &#{text}; is not an XML character"
        ));
    }
    Ok(c)
}

/// Appends `bytes` escaped for a JSON string (without the quotes).
fn escape_json(bytes: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            b if b < 0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < text.len() && text[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if text.first() == Some(&b'-') {
        i += 1;
    }
    match text.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if text.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == text.len()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::test_rng::Rng;
    use crate::xml::resource::{ConvertLimits, JsonToXml};

    /// Converts `xml` fed in the pieces that `cuts` (increasing offsets) make.
    fn convert_split(
        version: FhirVersion,
        limits: XmlLimits,
        xml: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<u8>, XmlError> {
        let mut converter = XmlToJson::new(version, limits);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&xml.len())) {
            converter.feed(&xml[from..cut], &mut out)?;
            from = cut;
        }
        converter.finish(&mut out)?;
        Ok(out)
    }

    fn convert(version: FhirVersion, xml: &[u8]) -> Result<Vec<u8>, XmlError> {
        convert_split(version, XmlLimits::default(), xml, &[])
    }

    /// The JSON of `xml`, the same whatever byte it is split at.
    fn json_every_split(version: FhirVersion, xml: &str) -> Value {
        let whole = convert(version, xml.as_bytes()).unwrap();
        for cut in 0..=xml.len() {
            let split = convert_split(version, XmlLimits::default(), xml.as_bytes(), &[cut]);
            assert_eq!(split.as_ref(), Ok(&whole), "cut at {cut}");
        }
        for a in (0..xml.len()).step_by(7) {
            for b in (a..xml.len()).step_by(5) {
                let split = convert_split(version, XmlLimits::default(), xml.as_bytes(), &[a, b]);
                assert_eq!(split.as_ref(), Ok(&whole), "cuts at {a}, {b}");
            }
        }
        serde_json::from_slice(&whole)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&whole)))
    }

    fn error(version: FhirVersion, xml: &str) -> XmlError {
        let error = convert(version, xml.as_bytes()).unwrap_err();
        // Split at every byte, the error is the same and nothing complete comes out.
        for cut in 0..=xml.len() {
            let mut converter = XmlToJson::new(version, XmlLimits::default());
            let mut out = Vec::new();
            let result = converter
                .feed(&xml.as_bytes()[..cut], &mut out)
                .and_then(|()| converter.feed(&xml.as_bytes()[cut..], &mut out))
                .and_then(|()| converter.finish(&mut out));
            assert!(result.is_err(), "{xml}: cut at {cut}");
            assert!(
                serde_json::from_slice::<Value>(&out).is_err(),
                "{xml}: cut at {cut}"
            );
        }
        error
    }

    const PATIENT: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir patient.xsd">
  <id value="p1"/>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p class="x">A &amp; B &lt;"q"&gt;</p><br/>
	tab</div>
  </text>
  <contained>
    <Organization>
      <id value="o1"/>
      <name value="Org"/>
    </Organization>
  </contained>
  <extension url="http://e/x">
    <valueDecimal value="1.10"/>
  </extension>
  <extension url="http://e/y"><valueBoolean value="true"/></extension>
  <active value="false"/>
  <name id="n1">
    <family value="Chalmers &#38; Co&#x2014;&#10;x	y"/>
    <given value="Peter"/>
    <given id="g2">
      <extension url="http://e/z"><valueInteger value="-3"/></extension>
    </given>
    <given value="James"><extension url="http://e/w"><valueString value="w"/></extension></given>
  </name>
  <gender value="male"/>
  <birthDate id="b">
    <extension url="http://e/t"><valueDateTime value="1974-12-25T14:35:45-05:00"/></extension>
  </birthDate>
  <deceasedBoolean value="false"/>
  <managingOrganization><reference value="#o1"/></managingOrganization>
</Patient>
"##;

    #[test]
    fn a_patient_with_every_shape() {
        let value = json_every_split(FhirVersion::R4, PATIENT);
        assert_eq!(
            value,
            json!({
                "resourceType": "Patient",
                "id": "p1",
                "text": {
                    "status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p class=\"x\">A &amp; B &lt;\"q\"&gt;</p><br/>\n\ttab</div>"
                },
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
                "extension": [
                    {"url": "http://e/x", "valueDecimal": 1.10},
                    {"url": "http://e/y", "valueBoolean": true}
                ],
                "active": false,
                "name": [{
                    "id": "n1",
                    "family": "Chalmers & Co\u{2014}\nx y",
                    "given": ["Peter", null, "James"],
                    "_given": [
                        null,
                        {"id": "g2", "extension": [{"url": "http://e/z", "valueInteger": -3}]},
                        {"extension": [{"url": "http://e/w", "valueString": "w"}]}
                    ]
                }],
                "gender": "male",
                "_birthDate": {
                    "id": "b",
                    "extension": [{"url": "http://e/t", "valueDateTime": "1974-12-25T14:35:45-05:00"}]
                },
                "deceasedBoolean": false,
                "managingOrganization": {"reference": "#o1"}
            })
        );
        // Decimals keep their text; `resourceType` comes first.
        let text =
            String::from_utf8(convert(FhirVersion::R4, PATIENT.as_bytes()).unwrap()).unwrap();
        assert!(text.starts_with(r#"{"resourceType":"Patient","#), "{text}");
        assert!(text.contains(r#""valueDecimal":1.10}"#), "{text}");
    }

    #[test]
    fn numbers_keep_their_text_and_integer64_is_a_string() {
        let xml = r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="1E-22"/></valueQuantity></Observation>"#;
        let json = convert(FhirVersion::R4, xml.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1E-22}}"#
        );
        let xml = r#"<Basic xmlns="http://hl7.org/fhir"><extension url="u"><valueInteger64 value="9007199254740993"/></extension><code><text value="x"/></code></Basic>"#;
        let json = convert(FhirVersion::R5, xml.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"resourceType":"Basic","extension":[{"url":"u","valueInteger64":"9007199254740993"}],"code":{"text":"x"}}"#
        );
    }

    #[test]
    fn a_bundle_unwraps_its_resources() {
        let xml = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry><fullUrl value="urn:uuid:1"/><resource><Binary><contentType value="text/plain"/><data value="SGVsbG8="/></Binary></resource><request><method value="POST"/><url value="Binary"/></request></entry><entry><resource><Patient><active value="true"/></Patient></resource></entry></Bundle>"#;
        assert_eq!(
            json_every_split(FhirVersion::R4, xml),
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:1",
                 "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "SGVsbG8="},
                 "request": {"method": "POST", "url": "Binary"}},
                {"resource": {"resourceType": "Patient", "active": true}}
            ]})
        );
    }

    #[test]
    fn xml_that_is_not_fhir_is_an_error_naming_the_path() {
        let r4 = FhirVersion::R4;
        for (xml, path, message) in [
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><nickname value="x"/></Patient>"#,
                "Patient",
                "<nickname> is not an element here",
            ),
            (
                r#"<Patient><active value="true"/></Patient>"#,
                "",
                "not in the FHIR namespace",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>"#,
                "Patient.active",
                "not a boolean",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="1.5"/></Patient>"#,
                "Patient.multipleBirthInteger",
                "not a number",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><active value="true"/></Patient>"#,
                "Patient",
                "out of the definition order",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><active value="true"/></Patient>"#,
                "Patient",
                "repeated",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><given value=""/></name></Patient>"#,
                "Patient.name.given",
                "empty value",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name/></Patient>"#,
                "Patient.name",
                "neither a value nor children",
            ),
            (
                r#"<Nothing xmlns="http://hl7.org/fhir"/>"#,
                "",
                "not a resource",
            ),
            (
                r#"<!DOCTYPE x [<!ENTITY a "b">]><Patient xmlns="http://hl7.org/fhir"/>"#,
                "",
                "DTD",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir">text<active value="true"/></Patient>"#,
                "Patient",
                "text where",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Observation>"#,
                "Patient",
                "ends another element",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="&nbsp;"/></name></Patient>"#,
                "Patient.name.family",
                "entity",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><contained><Quantity/></contained></Patient>"#,
                "Patient.contained",
                "not a resource",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div><p/></div></text></Patient>"#,
                "Patient.text",
                "XHTML namespace",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/>"#,
                "Patient",
                "ends before",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient><Patient xmlns="http://hl7.org/fhir"/>"#,
                "",
                "after the root",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><x:active xmlns:x="urn:x" value="true"/></Patient>"#,
                "Patient",
                "namespace",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true" other="1"/></Patient>"#,
                "Patient.active",
                "not FHIR",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="&#0;"/></name></Patient>"#,
                "Patient.name.family",
                "not an XML character",
            ),
        ] {
            let e = error(r4, xml);
            assert_eq!(e.path(), path, "{xml}: {e}");
            assert!(e.to_string().contains(message), "{xml}: {e}");
        }
    }

    #[test]
    fn nesting_and_held_bytes_are_bounded() {
        let mut xml =
            String::from(r#"<Questionnaire xmlns="http://hl7.org/fhir"><status value="draft"/>"#);
        for _ in 0..200 {
            xml.push_str(r#"<item><linkId value="a"/><type value="group"/>"#);
        }
        let e = convert(FhirVersion::R4, xml.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("nested too deep"), "{e}");
        let limits = XmlLimits {
            max_held: 100,
            max_depth: 16,
        };
        let xml = format!(
            r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="a/b"/><data value="{}"/></Binary>"#,
            "A".repeat(200)
        );
        let e = convert_split(FhirVersion::R4, limits, xml.as_bytes(), &[50, 120]).unwrap_err();
        assert!(e.to_string().contains("held whole"), "{e}");
    }

    #[test]
    fn a_large_binary_split_at_random_points() {
        let mut rng = Rng(0x5eed_0019);
        for version in [
            FhirVersion::Dstu2,
            FhirVersion::Stu3,
            FhirVersion::R4,
            FhirVersion::R5,
        ] {
            let payload = if matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3) {
                "content"
            } else {
                "data"
            };
            let base64: String = (0..300_000)
                .map(|_| rng.pick(&["QUJD", "ZGVm", "+/+/", "MTIz"]))
                .collect();
            let xml = format!(
                "<Binary xmlns=\"http://hl7.org/fhir\">\n <id value=\"b1\"/>\n <contentType value=\"application/pdf\"/>\n <{payload} value=\"{base64}\"/>\n</Binary>"
            );
            let expected = format!(
                r#"{{"resourceType":"Binary","id":"b1","contentType":"application/pdf","{payload}":"{base64}"}}"#
            );
            for _ in 0..20 {
                let mut cuts: Vec<usize> =
                    (0..rng.below(40)).map(|_| rng.below(xml.len())).collect();
                cuts.sort_unstable();
                let json =
                    convert_split(version, XmlLimits::default(), xml.as_bytes(), &cuts).unwrap();
                assert!(json == expected.as_bytes(), "{version:?} {cuts:?}");
            }
        }
    }

    /// Official JSON -> XML (the crate's converter) -> JSON (this one) is the original.
    #[test]
    fn official_examples_round_trip() {
        let mut rng = Rng(0x0ff1_c1a1);
        let mut count = 0;
        for (dir, version) in [
            ("stu3", FhirVersion::Stu3),
            ("r4", FhirVersion::R4),
            ("r4b", FhirVersion::R4B),
            ("r5", FhirVersion::R5),
        ] {
            let path = format!(
                "{}/tests/fixtures/examples/{dir}",
                env!("CARGO_MANIFEST_DIR")
            );
            let mut entries: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            entries.sort();
            for file in entries {
                let json = std::fs::read(&file).unwrap();
                let mut to_xml = JsonToXml::new(version, ConvertLimits::default());
                let mut xml = Vec::new();
                to_xml.feed(&json, &mut xml).unwrap();
                to_xml.finish(&mut xml).unwrap();
                let mut cuts: Vec<usize> =
                    (0..rng.below(20)).map(|_| rng.below(xml.len())).collect();
                cuts.sort_unstable();
                let back = convert_split(version, XmlLimits::default(), &xml, &cuts)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let back: Value = serde_json::from_slice(&back).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}: {}",
                        file.display(),
                        String::from_utf8_lossy(&back)
                    )
                });
                let mut original: Value = serde_json::from_slice(&json).unwrap();
                if matches!(version, FhirVersion::Stu3) {
                    strip_comments(&mut original);
                }
                // The XML side rewrites the XHTML (`&quot;` as `"`): compare the `div`s as
                // XHTML text with the references that need none resolved.
                let mut back = back;
                normalise_divs(&mut original);
                normalise_divs(&mut back);
                assert_json_eq(&original, &back, &file.display().to_string());
                count += 1;
            }
        }
        assert!(count > 400, "{count}");
    }

    /// `fhir_comments` (DSTU2, STU3) are dropped in XML.
    fn strip_comments(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("fhir_comments");
                // A `_name` left with nothing.
                map.retain(|_, v| {
                    strip_comments(v);
                    !matches!(v, Value::Object(m) if m.is_empty())
                });
            }
            Value::Array(items) => items.iter_mut().for_each(strip_comments),
            _ => {}
        }
    }

    fn normalise_divs(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v {
                        Value::String(div) if key == "div" => *div = normalise_xhtml(div),
                        _ => normalise_divs(v),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(normalise_divs),
            _ => {}
        }
    }

    /// XHTML with the references that XML does not need resolved, without URL attributes, and
    /// line ends in tags as spaces.
    fn normalise_xhtml(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            out.push_str(&rest[..at]);
            let end = rest[at..].find(';').map_or(rest.len(), |e| at + e + 1);
            let reference = &rest[at + 1..end.saturating_sub(1).max(at + 1)];
            let c = match reference {
                "quot" => Some('"'),
                "apos" => Some('\''),
                "gt" => Some('>'),
                r if r.starts_with("#x") => u32::from_str_radix(&r[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                r if r.starts_with('#') => r[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            match c {
                Some(c) if c != '<' && c != '&' => out.push(c),
                Some('<') => out.push_str("&lt;"),
                Some(_) => out.push_str("&amp;"),
                None => out.push_str(&rest[at..end]),
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        // The XML side keeps only passive links (http, https, relative, fragment): the URL
        // attributes are its policy, not the conversion's.
        for name in [" href=\"", " src=\"", " cite=\"", " longdesc=\""] {
            while let Some(at) = out.find(name) {
                let value = at + name.len();
                let end = out[value..].find('"').map_or(out.len(), |e| value + e + 1);
                out.replace_range(at..end, "");
            }
        }
        // Line ends in attribute values are spaces to an XML reader.
        let (mut in_tag, mut quoted) = (false, false);
        out.chars()
            .map(|c| {
                match c {
                    '<' if !quoted => in_tag = true,
                    '>' if !quoted => in_tag = false,
                    '"' if in_tag => quoted = !quoted,
                    '\n' | '\t' | '\r' if in_tag => return ' ',
                    _ => {}
                }
                c
            })
            .collect()
    }

    fn assert_json_eq(expected: &Value, got: &Value, what: &str) {
        if expected != got {
            panic!(
                "{what}:\nexpected {}\n     got {}",
                serde_json::to_string(expected).unwrap(),
                serde_json::to_string(got).unwrap()
            );
        }
    }
}
