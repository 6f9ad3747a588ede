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
//!   `_name` is an array with `null` for the items without, held (within `max_side`) until the
//!   array ends, and the value array has `null` for items with no `value`.
//! - Resource-typed elements (`contained`, `Bundle.entry.resource`, ...) are unwrapped: the
//!   inner element's name becomes `resourceType`.
//! - The narrative `div` becomes a JSON string of its XHTML, copied as written (entities
//!   and all, which is what FHIR JSON carries). It streams, and is checked by the rules the
//!   response path renders narratives by (`xml::xhtml`): well-formed, only the elements and
//!   attributes of FHIR's XHTML, the predefined entities and `&nbsp;`. Links are kept as
//!   written (a `mailto:` too), but active content (`javascript:`, `vbscript:`, a `data:` URL
//!   other than an image's) is refused. Its tokens are checked as the converter finds them;
//!   it is also held as written (within `max_div`), for a general XML reader to read again
//!   when it ends in the rare case the check of tokens leaves it to one (comments, prefixes,
//!   a refusal's reason). A `div` refused is an error before its string ends.
//! - Entities and character references in attribute values are resolved, XML's attribute
//!   whitespace normalisation applied, and the text JSON-escaped.
//! - Memory is bounded whatever the document's size. The `value` of a string primitive (the
//!   base64 of a Binary, an attachment's data, any long text) streams: once its element is
//!   known, its JSON goes out as its text arrives, holding at most a reference, a line end or
//!   a character cut by the end of a piece. Everything else that is cut by the end of a piece
//!   (a tag without that text, a number or boolean, a comment, a tag or character of the
//!   `div`) is held whole, within `max_held`; text of the `div` streams (and is held within
//!   `max_div` to be checked); the nesting depth is bounded by `max_depth`.
//! - XML that is not FHIR for the release (an unknown or misplaced element, another
//!   namespace, a DTD, text where FHIR has none, a value not of its kind, an empty element)
//!   is an [`XmlError`] naming the element path; after one, nothing more is written, so the
//!   JSON is never ended as if complete. Where a document has several faults, the one
//!   reported is the same whatever the pieces it comes in.

use std::fmt;

use memchr::{memchr, memchr3};
use wide::u8x16;

use crate::model::{ElementMatch, ElementRef, JsonKind, Model, TypeKind, TypeRef};
use crate::xml::xhtml;
use crate::FhirVersion;

const FHIR_NS: &[u8] = b"http://hl7.org/fhir";
const XHTML_NS: &[u8] = b"http://www.w3.org/1999/xhtml";

/// The longest entity or character reference read (`&#x0000000000041;` with its zeros).
const MAX_REFERENCE: usize = 32;

/// The bounds of a conversion's memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct XmlLimits {
    /// The most bytes held whole: a tag (without the text of a streamed `value`), a comment,
    /// a tag or comment of the `div`.
    pub(crate) max_held: usize,
    /// The largest `_name` array of an array of primitives (their ids and extensions), which
    /// waits for the array's end.
    pub(crate) max_side: usize,
    /// The deepest element nesting accepted.
    pub(crate) max_depth: usize,
    /// The largest narrative `div`, from its start tag to its end tag as written: it streams
    /// into its JSON string, and is held to be checked as FHIR XHTML when it ends.
    pub(crate) max_div: usize,
}

impl Default for XmlLimits {
    fn default() -> XmlLimits {
        XmlLimits {
            max_held: 64 << 10,
            max_side: 1 << 20,
            max_depth: 128,
            // As large as a `div` the response path holds whole (its reorder limit).
            max_div: 4 << 20,
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
    /// The start of a token that a piece ended in, until it is complete; for a start tag
    /// whose `value` streams, the tag without the value's text.
    held: Vec<u8>,
    /// When `held` is a start tag: the quote it ends in, if any.
    held_quote: Option<u8>,
    /// The `value` attribute whose text is streaming.
    value: Option<ValueStream>,
    /// The primitive whose `value` has been written, until its tag ends.
    streamed: Option<Primitive>,
    /// The attributes of the tag being read.
    attributes: Vec<Attribute>,
    elements: ElementCache,
    /// The open elements.
    stack: Vec<Frame>,
    /// The names of the open elements, one after the other (`Frame::tag` indexes it).
    tags: Vec<u8>,
    /// The `_name` array of the open array of primitives, without its brackets.
    side: Vec<u8>,
    /// Whether `side` has an item other than `null`.
    side_used: bool,
    /// The narrative `div` being read, as written so far.
    div: Vec<u8>,
    /// The check of the `div` being read, fed its tokens as they are found.
    div_check: xhtml::DivCheck,
    started: bool,
    done: bool,
    failed: Option<XmlError>,
    scratch: Vec<u8>,
}

/// An attribute of the tag being read: where its name and its value (between the quotes,
/// still escaped) are in the tag's buffer.
#[derive(Clone, Copy)]
struct Attribute {
    name: (usize, usize),
    value: (usize, usize),
}

impl Attribute {
    fn name(self, buf: &[u8]) -> &[u8] {
        &buf[self.name.0..self.name.1]
    }

    fn value(self, buf: &[u8]) -> &[u8] {
        &buf[self.value.0..self.value.1]
    }
}

/// The text of a `value` attribute being streamed.
struct ValueStream {
    quote: u8,
    /// A reference, a line end or a character cut by the end of a piece (a few bytes).
    carry: Vec<u8>,
    /// Whether the value has a character yet (an empty value is an error).
    written: bool,
    to_side: bool,
}

/// A primitive element being read: what its `_name` part needs once its tag ends.
#[derive(Clone, Copy)]
struct Primitive {
    ty: TypeRef,
    kind: JsonKind,
    is_array: bool,
    continuing: bool,
    had_members: bool,
    to_side: bool,
}

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

/// What a start tag is, as far as its buffer goes.
enum Tag {
    Complete {
        end: usize,
        empty: bool,
    },
    /// It goes on past the buffer, in the text of its `value` attribute when that is given.
    Open(Option<OpenValue>),
    Malformed,
}

/// The text of a `value` attribute that goes on past the buffer.
#[derive(Clone, Copy)]
struct OpenValue {
    content: usize,
    quote: u8,
}

/// How much of a start tag the buffer has, for [`XmlToJson::start`].
#[derive(Clone, Copy)]
enum Form {
    Complete {
        end: usize,
        empty: bool,
    },
    Open(OpenValue),
    /// The tag goes on past the buffer after a complete `value`.
    Cut,
    Malformed,
}

/// Where reading a buffer stopped.
enum Stop {
    /// At an incomplete token (or the end).
    At(usize),
    /// In the text of the `value` of the start tag at `at`, which now streams.
    Value { at: usize, open: OpenValue },
    /// In the start tag at `at`, after its `value` (between these offsets), which streamed.
    Cut { at: usize, value: (usize, usize) },
}

impl XmlToJson {
    pub(crate) fn new(version: FhirVersion, limits: XmlLimits) -> XmlToJson {
        XmlToJson {
            model: Model::of(version),
            limits,
            held: Vec::new(),
            held_quote: None,
            value: None,
            streamed: None,
            attributes: Vec::new(),
            elements: ElementCache::new(),
            stack: Vec::new(),
            tags: Vec::new(),
            side: Vec::new(),
            side_used: false,
            div: Vec::new(),
            div_check: xhtml::DivCheck::new(),
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
        let result = self.consume(input, false, out);
        self.check(result)
    }

    /// Ends the document: checks that it was complete and writes its last `}`.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), XmlError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.consume(&[], true, out).and_then(|()| {
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

    fn held_whole(&self) -> XmlError {
        self.error(format!(
            "a tag or comment longer than the {} bytes held whole",
            self.limits.max_held
        ))
    }

    /// Reads `input`: straight from it, except for a token cut by the end of the last piece,
    /// which is completed with as little of `input` as it needs.
    fn consume(
        &mut self,
        mut input: &[u8],
        ended: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        loop {
            if self.value.is_some() {
                match self.stream_value(input, ended, out)? {
                    Some(close) => input = &input[close..],
                    None => return Ok(()),
                }
            }
            if self.held.is_empty() {
                let stop = self.run(input, ended, out)?;
                return self.hold(input, stop, ended, out);
            }
            if input.is_empty() && !ended {
                return Ok(());
            }
            let room = (self.limits.max_held + 1).saturating_sub(self.held.len());
            let take = self.held_end(input).unwrap_or(input.len()).min(room);
            self.held.extend_from_slice(&input[..take]);
            input = &input[take..];
            let last = ended && input.is_empty();
            let held = std::mem::take(&mut self.held);
            let result = self
                .run(&held, last, out)
                .and_then(|stop| self.hold(&held, stop, last, out));
            if self.held.is_empty() {
                // Its allocation serves the next cut token.
                self.held = held;
                self.held.clear();
            }
            result?;
            if last {
                return Ok(());
            }
        }
    }

    /// Where the token in `held` ends in `input`, when that is known without reading it.
    fn held_end(&self, input: &[u8]) -> Option<usize> {
        if self.held.first() != Some(&b'<') {
            return None;
        }
        match self.held.get(1) {
            Some(b'/') => memchr(b'>', input).map(|n| n + 1),
            Some(b'!' | b'?') | None => None,
            Some(_) => tag_end(input, self.held_quote).ok(),
        }
    }

    /// Keeps what `run` left of `buf`: the incomplete token, or a streaming tag without the
    /// text of its value.
    fn hold(
        &mut self,
        buf: &[u8],
        stop: Stop,
        ended: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        match stop {
            Stop::At(at) => {
                self.held.clear();
                if at == buf.len() {
                    return Ok(());
                }
                if ended {
                    return Err(self.error("the document ends inside a tag"));
                }
                self.held.extend_from_slice(&buf[at..]);
                let rest = &self.held;
                self.held_quote = match rest.get(1) {
                    Some(b'/' | b'!' | b'?') | None => None,
                    Some(_) if rest[0] == b'<' => tag_end(&rest[1..], None).err().flatten(),
                    Some(_) => None,
                };
                if self.held.len() > self.limits.max_held {
                    return Err(self.held_whole());
                }
                Ok(())
            }
            Stop::Value { at, open } => {
                self.held.clear();
                self.held.extend_from_slice(&buf[at..open.content]);
                self.held_quote = Some(open.quote);
                if self.held.len() > self.limits.max_held {
                    return Err(self.held_whole());
                }
                let close = self.stream_value(&buf[open.content..], ended, out)?;
                debug_assert!(close.is_none(), "the tag was open");
                Ok(())
            }
            Stop::Cut { at, value } => {
                if ended {
                    return Err(self.error("the document ends inside a tag"));
                }
                self.held.clear();
                self.held.extend_from_slice(&buf[at..value.0]);
                self.held.extend_from_slice(&buf[value.1..]);
                self.held_quote = tag_end(&self.held[1..], None).err().flatten();
                if self.held.len() > self.limits.max_held {
                    return Err(self.held_whole());
                }
                Ok(())
            }
        }
    }

    /// Consumes every complete token of `buf`.
    fn run(&mut self, buf: &[u8], ended: bool, out: &mut Vec<u8>) -> Result<Stop, XmlError> {
        let mut at = 0;
        while at < buf.len() {
            if self.side.len() > self.limits.max_side {
                return Err(self.side_too_large());
            }
            if self.in_div() {
                match self.div_step(buf, at, ended, out)? {
                    Some(next) => at = next,
                    None => return Ok(Stop::At(at)),
                }
                continue;
            }
            if buf[at] != b'<' {
                // Only whitespace, up to the next tag.
                let spaces = buf[at..].iter().position(|&b| !is_space(b));
                match spaces {
                    Some(n) if buf[at + n] != b'<' => {
                        return Err(self.error("text where FHIR XML has only elements"));
                    }
                    Some(n) => at += n,
                    None => at = buf.len(),
                }
                continue;
            }
            let Some(&second) = buf.get(at + 1) else {
                return Ok(Stop::At(at));
            };
            match second {
                b'/' => {
                    // Most often the name of the open element and `>`.
                    let expected = self.stack.last().map_or(&[][..], |f| &self.tags[f.tag..]);
                    let quick = at + 2 + expected.len();
                    let n = if buf.get(quick) == Some(&b'>') && buf[at + 2..quick] == *expected {
                        expected.len()
                    } else {
                        match memchr(b'>', &buf[at + 2..]) {
                            Some(n) => n,
                            None => return Ok(Stop::At(at)),
                        }
                    };
                    let end = at + 2 + n + 1;
                    if end - at > self.limits.max_held {
                        return Err(self.held_whole());
                    }
                    self.end(&buf[at + 2..end - 1], out)?;
                    at = end;
                }
                b'!' | b'?' => match self.markup(buf, at, ended)? {
                    Some(end) => at = end,
                    None => return Ok(Stop::At(at)),
                },
                _ => {
                    let mut attributes = std::mem::take(&mut self.attributes);
                    let step = self.start_tag(buf, at, &mut attributes, out);
                    self.attributes = attributes;
                    match step? {
                        Ok(end) => at = end,
                        Err(stop) => return Ok(stop),
                    }
                }
            }
        }
        if self.side.len() > self.limits.max_side {
            return Err(self.side_too_large());
        }
        Ok(Stop::At(at))
    }

    /// A comment, processing instruction, CDATA section or declaration outside the `div`:
    /// its end, or `None` when it goes on past `buf`.
    fn markup(&mut self, buf: &[u8], at: usize, ended: bool) -> Result<Option<usize>, XmlError> {
        let rest = &buf[at..];
        if rest[1] == b'!' && rest.len() < 9 && !ended {
            return Ok(None);
        }
        if is_declaration(rest) {
            return Err(self.error("a DTD or declaration, which FHIR XML does not allow"));
        }
        let Some((end, cdata)) = markup_end(rest) else {
            return Ok(None);
        };
        if end > self.limits.max_held {
            return Err(self.held_whole());
        }
        let token = &rest[..end];
        if cdata {
            return Err(self.error("a CDATA section where FHIR XML has only elements"));
        }
        if !self.started && token.starts_with(b"<?xml ") {
            // The XML declaration: only UTF-8 is read.
            let decl = String::from_utf8_lossy(token).to_lowercase();
            if decl.contains("encoding") && !decl.contains("utf-8") {
                return Err(self.error("an encoding other than UTF-8"));
            }
        }
        Ok(Some(at + end))
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

    /// The tokens inside the `div` from `at` on, copied as written into its JSON string,
    /// until the `div` ends or a token goes on past `buf`: where reading stopped, or `None`
    /// when it could not start. Text streams, cut before a character that is.
    fn div_step(
        &mut self,
        buf: &[u8],
        at: usize,
        ended: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, XmlError> {
        let Some(Frame {
            kind: FrameKind::Div { depth },
            to_side,
            ..
        }) = self.stack.last()
        else {
            unreachable!("called in the div");
        };
        let (mut depth, to_side) = (*depth, *to_side);
        let mut pos = at;
        let result = loop {
            let rest = &buf[pos..];
            let Some(&first) = rest.first() else {
                break Ok(());
            };
            let (end, depth_change) = if first != b'<' {
                match find_near(b'<', rest) {
                    Some(n) => (n, 0),
                    None if ended => (rest.len(), 0),
                    None => match utf8_cut(rest) {
                        0 => break Ok(()),
                        n => (n, 0),
                    },
                }
            } else {
                let Some(&second) = rest.get(1) else {
                    break Ok(());
                };
                match second {
                    b'/' => match find_near(b'>', rest) {
                        Some(n) => (n + 1, -1),
                        None => break Ok(()),
                    },
                    b'!' | b'?' => {
                        if rest.len() < 9 && !ended && second == b'!' {
                            break Ok(());
                        }
                        if is_declaration(rest) {
                            break Err(
                                self.error("a DTD or declaration, which FHIR XML does not allow")
                            );
                        }
                        match markup_end(rest) {
                            Some((end, _)) => (end, 0),
                            None => break Ok(()),
                        }
                    }
                    _ => match tag_end(&rest[1..], None) {
                        Ok(n) => {
                            let end = n + 1;
                            (end, if rest[end - 2] == b'/' { 0 } else { 1 })
                        }
                        Err(_) => break Ok(()),
                    },
                }
            };
            if first == b'<' && end > self.limits.max_held {
                break Err(self.held_whole());
            }
            let token = &rest[..end];
            pos += end;
            if depth_change > 0 {
                depth += 1;
                if depth > self.limits.max_depth {
                    break Err(self.error("XHTML nested too deep"));
                }
                self.div_check.start_tag(token);
            } else if depth_change < 0 {
                self.div_check.end_tag(token);
                depth -= 1;
                if depth == 0 {
                    break Ok(());
                }
            } else if first != b'<' {
                self.div_check.text(token);
            } else if token[1] == b'!' || token[1] == b'?' {
                self.div_check.markup();
            } else {
                self.div_check.start_tag(token);
            }
        };
        let sink = sink_of(out, &mut self.side, to_side);
        if escape_json_utf8(&buf[at..pos], sink).is_err() {
            return Err(self.error("XHTML that is not UTF-8"));
        }
        if to_side && self.side.len() > self.limits.max_side {
            return Err(self.side_too_large());
        }
        self.hold_div(&buf[at..pos])?;
        result?;
        if let Some(Frame {
            kind: FrameKind::Div { depth: d },
            ..
        }) = self.stack.last_mut()
        {
            *d = depth;
        }
        if depth == 0 {
            // The `div`'s own end tag: checked whole before its string ends.
            self.check_div()?;
            sink_of(out, &mut self.side, to_side).push(b'"');
            self.pop();
        }
        Ok((pos > at).then_some(pos))
    }

    /// Adds the next part of the `div` as written to what is held of it.
    fn hold_div(&mut self, part: &[u8]) -> Result<(), XmlError> {
        if self.div.len() + part.len() > self.limits.max_div {
            return Err(self.error(format!(
                "a narrative longer than the {} bytes held to check it",
                self.limits.max_div
            )));
        }
        self.div.extend_from_slice(part);
        Ok(())
    }

    /// The verdict on the whole `div` by the rules of the response path (`xml::xhtml`), and
    /// lets go of what was held of it.
    fn check_div(&mut self) -> Result<(), XmlError> {
        let checked = self.div_check.finish(&self.div);
        self.div.clear();
        // A large narrative's allocation is not kept for the rest of the document.
        self.div.shrink_to(self.limits.max_held);
        checked.map_err(|reason| self.error(format!("the narrative is not FHIR XHTML: {reason}")))
    }

    fn side_too_large(&self) -> XmlError {
        self.error(format!(
            "ids and extensions of an array of primitives longer than the {} bytes held until its end",
            self.limits.max_side
        ))
    }

    fn pop(&mut self) {
        if let Some(frame) = self.stack.pop() {
            self.tags.truncate(frame.tag);
        }
    }

    /// The start tag at `at`: its end, or where reading stops when it goes on past `buf`.
    fn start_tag(
        &mut self,
        buf: &[u8],
        at: usize,
        attributes: &mut Vec<Attribute>,
        out: &mut Vec<u8>,
    ) -> Result<Result<usize, Stop>, XmlError> {
        let (name_end, tag) = parse_start(buf, at, attributes);
        match tag {
            Tag::Complete { end, empty } => {
                match self.streamed.take() {
                    Some(primitive) => {
                        self.primitive_rest(buf, primitive, attributes, empty, out)?
                    }
                    None => {
                        self.start(
                            buf,
                            at,
                            name_end,
                            attributes,
                            Form::Complete { end, empty },
                            out,
                        )?;
                    }
                }
                Ok(Ok(end))
            }
            Tag::Open(Some(open)) if self.streamed.is_none() => {
                let streams = self.start(buf, at, name_end, attributes, Form::Open(open), out)?;
                Ok(Err(if streams {
                    Stop::Value { at, open }
                } else {
                    Stop::At(at)
                }))
            }
            Tag::Open(None) if self.streamed.is_none() => {
                let value = attributes.iter().find(|a| matches!(a.name(buf), b"value"));
                let streams = match value {
                    Some(_) => self.start(buf, at, name_end, attributes, Form::Cut, out)?,
                    None => false,
                };
                Ok(Err(match value {
                    Some(value) if streams => Stop::Cut {
                        at,
                        value: value.value,
                    },
                    _ => Stop::At(at),
                }))
            }
            Tag::Open(_) => Ok(Err(Stop::At(at))),
            Tag::Malformed => {
                if self.streamed.is_none() {
                    self.start(buf, at, name_end, attributes, Form::Malformed, out)?;
                }
                Err(self.malformed(&buf[at + 1..name_end]))
            }
        }
    }

    fn malformed(&self, name: &[u8]) -> XmlError {
        self.error(format!(
            "a malformed tag <{}>",
            String::from_utf8_lossy(name)
        ))
    }

    /// A start tag. With `Form::Open` (the tag goes on in its `value`) it only starts the
    /// element when that value streams, and says whether it did; with `Form::Malformed`, only
    /// what comes before the fault: a streaming value.
    fn start(
        &mut self,
        buf: &[u8],
        at: usize,
        name_end: usize,
        attributes: &[Attribute],
        form: Form,
        out: &mut Vec<u8>,
    ) -> Result<bool, XmlError> {
        let name_bytes = &buf[at + 1..name_end];
        let value_index = attributes
            .iter()
            .position(|a| matches!(a.name(buf), b"value"));
        // A string primitive's `value` streams.
        let found = match self.stack.last() {
            Some(Frame {
                kind: FrameKind::Object { ty, .. },
                ..
            }) => self.elements.find(*ty, buf, at + 1..name_end),
            _ => None,
        };
        let (is_attribute, is_xhtml) = found.map_or((false, false), |f| {
            (f.element.is_attribute(), f.element.is_xhtml())
        });
        let streams = (matches!(form, Form::Open(_)) || value_index.is_some())
            && found.is_some_and(|f| {
                !is_attribute && !is_xhtml && f.ty.json_kind() == Some(JsonKind::String)
            });
        match form {
            Form::Open(_) | Form::Cut if !streams => return Ok(false),
            Form::Malformed if !streams => return Err(self.malformed(name_bytes)),
            Form::Complete { end, .. } => {
                let streamed_len = match value_index {
                    Some(i) if streams => attributes[i].value.1 - attributes[i].value.0,
                    _ => 0,
                };
                if end - at - streamed_len > self.limits.max_held {
                    return Err(self.held_whole());
                }
            }
            _ => {}
        }
        let name = name_bytes;
        if !name.is_ascii() && std::str::from_utf8(name).is_err() {
            return Err(self.error("an element name that is not UTF-8"));
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.error("elements nested too deep"));
        }
        if self.done {
            return Err(self.error(format!("<{}> after the root element", shown(name))));
        }
        // A prefixed name (`x:active`) is found neither in the tables nor among the resources:
        // it is told apart there, where it costs nothing on the way of the names found.
        // The namespace: FHIR everywhere, XHTML on the `div`. A streaming value's element
        // checks the attributes after the value once its tag ends.
        let before = match value_index {
            Some(i) if streams => &attributes[..i],
            _ => attributes,
        };
        let namespace = before
            .iter()
            .find(|a| matches!(a.name(buf), b"xmlns"))
            .map(|a| a.value(buf));
        let element_ns_ok = |expected: &[u8]| namespace.is_none_or(|ns| ns == expected);
        let empty = matches!(form, Form::Complete { empty: true, .. });
        let Some(top) = self.stack.last() else {
            // The root: a resource of the release in the FHIR namespace.
            if self.started {
                return Err(self.error(format!("<{}> after the root element", shown(name))));
            }
            if namespace != Some(FHIR_NS) {
                return Err(self.error(format!("<{}> is not in the FHIR namespace", shown(name))));
            }
            let ty = self.resource(name)?;
            self.started = true;
            out.extend_from_slice(b"{\"resourceType\":\"");
            out.extend_from_slice(name);
            out.push(b'"');
            self.push_object(name, ty, true, None, false);
            self.object_attributes(buf, ty, attributes, empty, out)?;
            return Ok(false);
        };
        let to_side = top.to_side;
        match top.kind {
            FrameKind::Div { .. } => unreachable!("handled by div_step"),
            FrameKind::Wrapper { filled } => {
                if filled {
                    return Err(self.error(format!("<{}>: a second resource", shown(name))));
                }
                if !element_ns_ok(FHIR_NS) {
                    return Err(
                        self.error(format!("<{}> is not in the FHIR namespace", shown(name)))
                    );
                }
                let ty = self.resource(name)?;
                if let Some(Frame {
                    kind: FrameKind::Wrapper { filled },
                    ..
                }) = self.stack.last_mut()
                {
                    *filled = true;
                }
                let sink = sink_of(out, &mut self.side, to_side);
                sink.extend_from_slice(b"{\"resourceType\":\"");
                sink.extend_from_slice(name);
                sink.push(b'"');
                self.push_object(name, ty, true, None, to_side);
                self.object_attributes(buf, ty, attributes, empty, out)?;
                Ok(false)
            }
            FrameKind::Object { .. } => {
                let Some(found) = found else {
                    return Err(self.not_fhir(name, "is not an element here"));
                };
                if is_attribute {
                    return Err(
                        self.error(format!("<{}> is an attribute in FHIR XML", shown(name)))
                    );
                }
                if !element_ns_ok(if is_xhtml { XHTML_NS } else { FHIR_NS }) {
                    return Err(self.error(format!("<{}> is in the wrong namespace", shown(name))));
                }
                if is_xhtml && namespace.is_none() {
                    return Err(self.error("the div is not in the XHTML namespace"));
                }
                let value = if streams {
                    Some((value_index.unwrap_or(attributes.len()), form))
                } else {
                    None
                };
                self.element_start(buf, name, found, attributes, value, at, form, out)?;
                Ok(streams)
            }
        }
    }

    fn resource(&self, name: &[u8]) -> Result<TypeRef, XmlError> {
        std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.model.resource(name))
            .ok_or_else(|| {
                let what = format!("is not a resource of FHIR {}", self.model.version());
                self.not_fhir(name, &what)
            })
    }

    /// An element name that is not FHIR here: one with a prefix is in another namespace.
    fn not_fhir(&self, name: &[u8], what: &str) -> XmlError {
        if name.contains(&b':') {
            self.error(format!("<{}> is not in the FHIR namespace", shown(name)))
        } else {
            self.error(format!("<{}> {what}", shown(name)))
        }
    }

    fn push_object(
        &mut self,
        name: &[u8],
        ty: TypeRef,
        members: bool,
        pending_open: Option<&'static str>,
        to_side: bool,
    ) {
        let tag = self.tags.len();
        self.tags.extend_from_slice(name);
        self.push_object_at(tag, ty, members, pending_open, to_side);
    }

    /// Opens an object whose name is the end of `tags`, from `tag` on.
    fn push_object_at(
        &mut self,
        tag: usize,
        ty: TypeRef,
        members: bool,
        pending_open: Option<&'static str>,
        to_side: bool,
    ) {
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

    /// A child element of the object on top of the stack. `value` is the index of the
    /// streaming `value` attribute (`attributes.len()` when it is open) and the tag's form.
    #[allow(clippy::too_many_arguments)]
    fn element_start(
        &mut self,
        buf: &[u8],
        name: &[u8],
        found: ElementMatch,
        attributes: &[Attribute],
        value: Option<(usize, Form)>,
        at: usize,
        form: Form,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let ElementMatch { element, ty } = found;
        let empty = matches!(form, Form::Complete { empty: true, .. });
        let partner_key = self.stack.last().and_then(|top| match top.kind {
            FrameKind::Object {
                pending_open: Some(prefix),
                ..
            } => Some((prefix, top.tag)),
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
                    return Err(self.error(format!(
                        "<{}> repeated or out of the definition order",
                        shown(name)
                    )));
                }
                if open {
                    close_array(previous, out, &mut self.side, &mut self.side_used, to_side);
                }
            }
        }
        if let Some((prefix, tag)) = partner_key {
            // A primitive's `_name`, opened by its first member: `,"_name":{`.
            let sink = sink_of(out, &mut self.side, to_side);
            sink.extend_from_slice(prefix.as_bytes());
            sink.extend_from_slice(b"\"_");
            sink.extend_from_slice(&self.tags[tag..]);
            sink.extend_from_slice(b"\":{");
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
        *pending_open = None;
        let sink = sink_of(out, &mut self.side, to_side);
        if !continuing && primitive.is_none() {
            // Complex members are written now; primitives write their own keys.
            if *members {
                sink.push(b',');
            }
            push_key(sink, name);
            if is_array {
                sink.push(b'[');
            }
        } else if continuing && primitive.is_none() {
            sink.push(b',');
        }
        let had_members = *members;
        *members = true;
        if let Some(kind) = primitive {
            let primitive = Primitive {
                ty,
                kind,
                is_array,
                continuing,
                had_members,
                to_side,
            };
            return self.primitive_start(buf, name, primitive, attributes, value, empty, out);
        }
        if element.is_resource_typed() {
            let tag = self.tags.len();
            self.tags.extend_from_slice(name);
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
            if attributes
                .iter()
                .any(|a| memchr(b'<', a.value(buf)).is_some())
            {
                return Err(self.malformed(name));
            }
            let tag = self.tags.len();
            self.tags.extend_from_slice(name);
            self.stack.push(Frame {
                tag,
                to_side,
                kind: FrameKind::Div { depth: 0 },
            });
            // Its start tag as written; the `div` written `<div .../>` ends there.
            let Form::Complete { end, empty } = form else {
                unreachable!("only string primitives stream");
            };
            let sink = sink_of(out, &mut self.side, to_side);
            sink.push(b'"');
            if escape_json_utf8(&buf[at..end], sink).is_err() {
                return Err(self.error("XHTML that is not UTF-8"));
            }
            self.div.clear();
            self.hold_div(&buf[at..end])?;
            self.div_check.start_tag(&buf[at..end]);
            if empty {
                self.check_div()?;
                sink_of(out, &mut self.side, to_side).push(b'"');
                self.pop();
            } else if let Some(Frame {
                kind: FrameKind::Div { depth },
                ..
            }) = self.stack.last_mut()
            {
                *depth = 1;
            }
            return Ok(());
        }
        if to_side && matches!(ty.kind(), TypeKind::Resource) {
            return Err(self.error("a resource inside a primitive's extension"));
        }
        sink_of(out, &mut self.side, to_side).push(b'{');
        self.push_object(name, ty, false, None, to_side);
        self.object_attributes(buf, ty, attributes, empty, out)
    }

    /// A primitive element: its value in the value array or member, its `id` and
    /// extensions in `_name`. A string's `value` (`value`: its index among `attributes`, or
    /// `attributes.len()` when the tag goes on in it) streams: the attributes before it are
    /// read, its text written as it comes, and those after it read when the tag ends.
    #[allow(clippy::too_many_arguments)]
    fn primitive_start(
        &mut self,
        buf: &[u8],
        name: &[u8],
        p: Primitive,
        attributes: &[Attribute],
        value: Option<(usize, Form)>,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let tag = self.tags.len();
        self.tags.extend_from_slice(name);
        // Pushed now so that errors name the element.
        self.stack.push(Frame {
            tag,
            to_side: p.to_side,
            kind: FrameKind::Wrapper { filled: true },
        });
        let Some((index, form)) = value else {
            return self.primitive_whole(buf, name, p, attributes, empty, out);
        };
        self.primitive_attributes(buf, &attributes[..index])?;
        if p.is_array && p.to_side {
            return Err(self.error("an array of primitives inside a primitive's extension"));
        }
        self.value_key(name, p, out);
        let sink = sink_of(out, &mut self.side, p.to_side);
        sink.push(b'"');
        if let Form::Complete { empty, .. } = form {
            self.whole_value(buf, attributes[index], p.to_side, out)?;
            if attributes.len() == 1 {
                // Only the value (the most common primitive): no id, nothing after it.
                return self.primitive_end(buf, p, None, true, empty, out);
            }
            return self.primitive_rest(buf, p, attributes, empty, out);
        }
        self.streamed = Some(p);
        match form {
            Form::Open(open) => {
                self.value = Some(ValueStream {
                    quote: open.quote,
                    carry: Vec::new(),
                    written: false,
                    to_side: p.to_side,
                });
                Ok(())
            }
            Form::Complete { .. } => unreachable!("written above"),
            Form::Cut | Form::Malformed => self.whole_value(buf, attributes[index], p.to_side, out),
        }
    }

    /// The text of a `value` attribute that is all in `buf`, written as a stream would be.
    fn whole_value(
        &mut self,
        buf: &[u8],
        value: Attribute,
        to_side: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let text = value.value(buf);
        let sink = sink_of(out, &mut self.side, to_side);
        let (used, _) = decode_value(text, 0, sink, false).map_err(|e| self.value_error(e))?;
        debug_assert_eq!(used, text.len());
        self.end_value(!text.is_empty(), to_side, out)
    }

    fn value_error(&self, error: ValueError) -> XmlError {
        match error {
            ValueError::Tag => {
                let top = self.stack.last().map_or(0, |f| f.tag);
                self.malformed(&self.tags[top..])
            }
            ValueError::Other(message) => self.error(message),
        }
    }

    /// Ends a string value: its closing quote, or an error when it had no character.
    fn end_value(
        &mut self,
        written: bool,
        to_side: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        if !written {
            return Err(self.error("an empty value"));
        }
        sink_of(out, &mut self.side, to_side).push(b'"');
        if to_side && self.side.len() > self.limits.max_side {
            return Err(self.side_too_large());
        }
        Ok(())
    }

    /// Streams the text of the open `value` attribute from `input`: where its closing quote
    /// ends, or `None` when all of `input` was its text.
    fn stream_value(
        &mut self,
        mut input: &[u8],
        ended: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, XmlError> {
        let Some(mut stream) = self.value.take() else {
            return Ok(Some(0));
        };
        let start_len = input.len();
        let result = loop {
            let sink = sink_of(out, &mut self.side, stream.to_side);
            if !stream.carry.is_empty() {
                // Complete the cut reference, line end or character with a few more bytes.
                let old = stream.carry.len();
                let more = input.len().min(MAX_REFERENCE);
                stream.carry.extend_from_slice(&input[..more]);
                match decode_value(
                    &stream.carry,
                    stream.quote,
                    sink,
                    !ended || more < input.len(),
                ) {
                    Err(e) => break Err(e),
                    Ok((used, closed)) => {
                        stream.written |= used > 0;
                        if used >= old {
                            input = &input[used - old..];
                            stream.carry.clear();
                            if closed {
                                break Ok(true);
                            }
                        } else {
                            stream.carry.drain(..used);
                            input = &input[more..];
                            if input.is_empty() {
                                break Ok(false);
                            }
                        }
                    }
                }
                continue;
            }
            match decode_value(input, stream.quote, sink, !ended) {
                Err(e) => break Err(e),
                Ok((used, closed)) => {
                    stream.written |= used > 0;
                    if closed {
                        input = &input[used..];
                        break Ok(true);
                    }
                    stream.carry.extend_from_slice(&input[used..]);
                    input = &[];
                    break Ok(false);
                }
            }
        };
        if stream.to_side && self.side.len() > self.limits.max_side {
            return Err(self.side_too_large());
        }
        match result {
            Err(e) => Err(self.value_error(e)),
            Ok(false) if ended => Err(self.error("the document ends inside a tag")),
            Ok(false) => {
                self.value = Some(stream);
                Ok(None)
            }
            Ok(true) => {
                self.end_value(stream.written, stream.to_side, out)?;
                // The tag without the value's text: `value=""`, then the rest.
                self.held.push(stream.quote);
                self.held_quote = None;
                Ok(Some(start_len - input.len() + 1))
            }
        }
    }

    /// The key of a primitive's value: `"name":`, or the next item of its array.
    fn value_key(&mut self, name: &[u8], p: Primitive, out: &mut Vec<u8>) {
        if p.is_array {
            // Never in `side` (refused before).
            if p.continuing {
                out.push(b',');
            } else {
                if p.had_members {
                    out.push(b',');
                }
                push_key(out, name);
                out.push(b'[');
                self.side.clear();
                self.side_used = false;
            }
        } else {
            let sink = sink_of(out, &mut self.side, p.to_side);
            if p.had_members {
                sink.push(b',');
            }
            push_key(sink, name);
        }
    }

    /// The attributes of a primitive other than its `value`: its `id`, if any.
    fn primitive_attributes(
        &self,
        buf: &[u8],
        attributes: &[Attribute],
    ) -> Result<Option<Attribute>, XmlError> {
        let mut id = None;
        for &attribute in attributes {
            match attribute.name(buf) {
                b"value" => {}
                b"id" => id = Some(attribute),
                b"xmlns" if attribute.value(buf) != FHIR_NS => {
                    let top = self.stack.last().map_or(0, |f| f.tag);
                    return Err(self.error(format!(
                        "<{}> is in the wrong namespace",
                        String::from_utf8_lossy(&self.tags[top..])
                    )));
                }
                other if is_ignored_attribute(other) => {}
                other => {
                    return Err(self.error(format!(
                        "the attribute {:?} is not FHIR",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        Ok(id)
    }

    /// A primitive without a streaming value: a number, a boolean, or no `value`.
    fn primitive_whole(
        &mut self,
        buf: &[u8],
        name: &[u8],
        p: Primitive,
        attributes: &[Attribute],
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let id = self.primitive_attributes(buf, attributes)?;
        let value = attributes
            .iter()
            .find(|a| matches!(a.name(buf), b"value"))
            .map(|a| a.value(buf));
        if p.is_array && p.to_side {
            return Err(self.error("an array of primitives inside a primitive's extension"));
        }
        if value.is_none() && id.is_none() && empty {
            return Err(self.error("an element with neither a value nor children"));
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let written = self.write_value(value, p.kind, p.ty.name(), &mut scratch);
        self.scratch = scratch;
        written?;
        match value {
            Some(_) => {
                self.value_key(name, p, out);
                sink_of(out, &mut self.side, p.to_side).extend_from_slice(&self.scratch);
            }
            None if p.is_array => {
                let bare = Primitive {
                    to_side: false,
                    ..p
                };
                self.value_key(name, bare, out);
                out.extend_from_slice(b"null");
            }
            None => {}
        }
        self.primitive_end(buf, p, id, value.is_some(), empty, out)
    }

    /// The rest of a primitive whose `value` streamed, once its tag has ended.
    fn primitive_rest(
        &mut self,
        buf: &[u8],
        p: Primitive,
        attributes: &[Attribute],
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let index = attributes
            .iter()
            .position(|a| matches!(a.name(buf), b"value"))
            .unwrap_or(attributes.len());
        let after = self.primitive_attributes(buf, &attributes[index..])?;
        let before = attributes[..index]
            .iter()
            .rev()
            .find(|a| matches!(a.name(buf), b"id"))
            .copied();
        self.primitive_end(buf, p, before.or(after), true, empty, out)
    }

    /// A primitive's `_name` part: an object in `side` (arrays) or after the value.
    fn primitive_end(
        &mut self,
        buf: &[u8],
        p: Primitive,
        id: Option<Attribute>,
        has_value: bool,
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let mut id_json = Vec::new();
        if let Some(id) = id {
            let mut scratch = std::mem::take(&mut self.scratch);
            let written = self.write_value(
                Some(id.value(buf)),
                JsonKind::String,
                "string",
                &mut scratch,
            );
            id_json.extend_from_slice(&scratch);
            self.scratch = scratch;
            written?;
        }
        // The element's frame goes; its name stays in `tags` for the `_name` object's.
        let tag = self.stack.pop().map_or(0, |f| f.tag);
        if p.is_array {
            if p.continuing {
                self.side.push(b',');
            }
            if id.is_none() && empty {
                self.tags.truncate(tag);
                self.side.extend_from_slice(b"null");
                return self.check_side();
            }
            self.side.push(b'{');
            if id.is_some() {
                self.side.extend_from_slice(b"\"id\":");
                self.side.extend_from_slice(&id_json);
            }
            self.push_object_at(tag, p.ty, id.is_some(), None, true);
            if let Some(Frame {
                kind: FrameKind::Object { item_partner, .. },
                ..
            }) = self.stack.last_mut()
            {
                *item_partner = true;
            }
        } else {
            let sink = sink_of(out, &mut self.side, p.to_side);
            let separated = p.had_members || has_value;
            // The key is static for the pending form: keep the name in `tags` instead.
            if id.is_some() {
                if separated {
                    sink.push(b',');
                }
                sink.extend_from_slice(b"\"_");
                sink.extend_from_slice(&self.tags[tag..]);
                sink.extend_from_slice(b"\":{\"id\":");
                sink.extend_from_slice(&id_json);
                if empty {
                    sink.push(b'}');
                    self.tags.truncate(tag);
                    return self.check_side();
                }
                self.push_object_at(tag, p.ty, true, None, p.to_side);
            } else {
                if empty {
                    self.tags.truncate(tag);
                    return Ok(());
                }
                // Opened by its first member: `,"_name":{`.
                let key: &'static str = if separated { "," } else { "" };
                self.push_object_at(tag, p.ty, false, Some(key), p.to_side);
            }
        }
        if let Some(Frame {
            kind: FrameKind::Object { has_value: h, .. },
            ..
        }) = self.stack.last_mut()
        {
            *h = has_value;
        }
        if empty {
            return self.end_object(out);
        }
        self.check_side()
    }

    fn check_side(&self) -> Result<(), XmlError> {
        if self.side.len() > self.limits.max_side {
            return Err(self.side_too_large());
        }
        Ok(())
    }

    /// The attributes of a resource or complex element: `id` and `url` become members.
    fn object_attributes(
        &mut self,
        buf: &[u8],
        ty: TypeRef,
        attributes: &[Attribute],
        empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), XmlError> {
        let to_side = self.stack.last().is_some_and(|f| f.to_side);
        for &attribute in attributes {
            let attribute_name = attribute.name(buf);
            if is_ignored_attribute(attribute_name) {
                continue;
            }
            let name = String::from_utf8_lossy(attribute_name);
            let found = ty
                .element(&name)
                .filter(|found| found.element.is_attribute());
            let Some(found) = found else {
                return Err(self.error(format!("the attribute {name:?} is not FHIR")));
            };
            let kind = found.ty.json_kind().unwrap_or(JsonKind::String);
            let mut scratch = std::mem::take(&mut self.scratch);
            let written = self.write_value(
                Some(attribute.value(buf)),
                kind,
                found.ty.name(),
                &mut scratch,
            );
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
            push_key(sink, attribute_name);
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
        if kind == JsonKind::String {
            if text.is_empty() {
                return Err(self.error("an empty value"));
            }
            json.push(b'"');
            decode_value(text, 0, json, false).map_err(|e| self.value_error(e))?;
            json.push(b'"');
            return Ok(());
        }
        // Numbers and booleans are short: decoded first (when they need it), then checked.
        let mut owned = Vec::new();
        let plain = text.iter().all(|&b| b > b' ' && b != b'&' && b != b'<');
        if !plain {
            decode_attribute(text, &mut owned).map_err(|e| self.value_error(e))?;
        }
        let Ok(decoded) = std::str::from_utf8(if plain { text } else { &owned }) else {
            return Err(self.error("a value that is not UTF-8"));
        };
        match kind {
            JsonKind::String => unreachable!("written above"),
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

    fn end(&mut self, name: &[u8], out: &mut Vec<u8>) -> Result<(), XmlError> {
        let name = name.trim_ascii_end();
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
            FrameKind::Div { .. } => unreachable!("handled by div_step"),
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
    out.reserve(name.len() + 3);
    out.push(b'"');
    out.extend_from_slice(name);
    out.push(b'"');
    out.push(b':');
}

/// Where the first `byte` of `bytes` is: by one comparison of sixteen bytes when it is
/// among them, as it mostly is in the short tokens of a narrative, else by `memchr`.
#[inline(always)]
fn find_near(byte: u8, bytes: &[u8]) -> Option<usize> {
    let Some(block) = bytes.get(..16) else {
        return memchr(byte, bytes);
    };
    let x = u8x16::new(block.try_into().unwrap_or([0; 16]));
    match x.simd_eq(u8x16::splat(byte)).to_bitmask() {
        0 => memchr(byte, &bytes[16..]).map(|n| n + 16),
        found => Some(found.trailing_zeros() as usize),
    }
}

/// Namespace declarations and schema locations, which have no JSON form.
fn is_ignored_attribute(name: &[u8]) -> bool {
    name == b"xmlns" || name.starts_with(b"xmlns:") || name.ends_with(b":schemaLocation")
}

/// A name as error messages show it.
fn shown(name: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(name)
}

/// The elements found by name in each type, remembered: a document names the same
/// elements of the same types over and over, and a table's lookup is a binary search.
struct ElementCache {
    slots: Vec<Option<CachedElement>>,
    /// Misses since `slots` was last made larger.
    misses: usize,
}

/// An element found, with what tells its name and parent apart from others.
#[derive(Clone, Copy)]
struct CachedElement {
    parent: TypeRef,
    /// The first and last eight bytes of the name (zero-padded), and its length: the whole
    /// name when it is no longer than sixteen bytes.
    head: u64,
    tail: u64,
    len: usize,
    found: ElementMatch,
}

/// The slots of a cache when it is made, on the first lookup (a power of two), and the most
/// it grows to (72 bytes each): a document with more elements of more types than the slots
/// hold misses more often, and doubles them.
const CACHE_SLOTS: usize = 256;
const MAX_CACHE_SLOTS: usize = 8192;

impl ElementCache {
    fn new() -> ElementCache {
        ElementCache {
            slots: Vec::new(),
            misses: 0,
        }
    }

    /// The element of `parent` named in XML by `buf[name]`.
    fn find(
        &mut self,
        parent: TypeRef,
        buf: &[u8],
        name: std::ops::Range<usize>,
    ) -> Option<ElementMatch> {
        // The first and last eight bytes of the name (zero-padded), its length and the type.
        // Eight bytes are read from the buffer at once, the bytes after a short name masked
        // off (a tag goes on after its name).
        let eight = |at: usize| {
            buf.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let (start, end) = (name.start, name.end);
        let name = &buf[name];
        let (head, tail) = match eight(start) {
            Some(head) if name.len() >= 8 => (head, eight(end - 8).unwrap_or(0)),
            Some(head) => {
                let head = head & ((1 << (8 * name.len())) - 1);
                (head, head)
            }
            None => {
                let whole = name.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b));
                (whole, whole)
            }
        };
        let hash = (head ^ tail.rotate_left(29))
            .wrapping_add((parent.name().as_ptr() as usize as u64) ^ name.len() as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Two slots for each hash, the one found last first.
        let slot = (hash >> 40) as usize & self.slots.len().wrapping_sub(2);
        let hit = |cached: &Option<CachedElement>| {
            cached.filter(|c| {
                c.head == head
                    && c.tail == tail
                    && c.len == name.len()
                    && c.parent == parent
                    && (name.len() <= 16 || is_xml_name(c.found, name))
            })
        };
        if let Some(pair) = self.slots.get(slot..slot + 2) {
            if let Some(c) = hit(&pair[0]).or_else(|| hit(&pair[1])) {
                return Some(c.found);
            }
        }
        let found = parent.element(std::str::from_utf8(name).ok()?)?;
        self.misses += 1;
        if self.misses > self.slots.len() / 2 && self.slots.len() < MAX_CACHE_SLOTS {
            self.slots = vec![None; (self.slots.len() * 2).max(CACHE_SLOTS)];
            self.misses = 0;
        }
        let slot = (hash >> 40) as usize & (self.slots.len() - 2);
        self.slots[slot + 1] = self.slots[slot];
        self.slots[slot] = Some(CachedElement {
            parent,
            head,
            tail,
            len: name.len(),
            found,
        });
        Some(found)
    }
}

/// Whether `name` is the XML name of `found`: its name, or for a choice its stem and type
/// (`valueQuantity`, `valueString` for `string`).
fn is_xml_name(found: ElementMatch, name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(found.element.name().as_bytes()) else {
        return false;
    };
    if !found.element.is_choice() {
        return rest.is_empty();
    }
    let ty = found.ty.name().as_bytes();
    rest.len() == ty.len()
        && !rest.is_empty()
        && rest[0] == ty[0].to_ascii_uppercase()
        && rest[1..] == ty[1..]
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Reads the start tag at `buf[at]` (`<` and a name): where its name ends, and how far the
/// tag goes. `attributes` gets its complete attributes. A `<` in an attribute value is
/// malformed, except in `value`, whose text is checked as it is written (it may stream).
fn parse_start(buf: &[u8], at: usize, attributes: &mut Vec<Attribute>) -> (usize, Tag) {
    attributes.clear();
    let len = buf.len();
    let mut i = at + 1;
    i += name_length(&buf[i..]);
    let name_end = i;
    loop {
        while i < len && is_space(buf[i]) {
            i += 1;
        }
        let Some(&b) = buf.get(i) else {
            return (name_end, Tag::Open(None));
        };
        match b {
            b'>' => {
                return (
                    name_end,
                    Tag::Complete {
                        end: i + 1,
                        empty: false,
                    },
                )
            }
            b'/' => {
                let tag = match buf.get(i + 1) {
                    None => Tag::Open(None),
                    Some(b'>') => Tag::Complete {
                        end: i + 2,
                        empty: true,
                    },
                    Some(_) => Tag::Malformed,
                };
                return (name_end, tag);
            }
            _ => {}
        }
        let name_start = i;
        if buf[i..].starts_with(b"value=") {
            i += 5;
        } else {
            while i < len && !ATTRIBUTE_NAME_STOPS[usize::from(buf[i])] {
                i += 1;
            }
        }
        if i >= len {
            return (name_end, Tag::Open(None));
        }
        let name = (name_start, i);
        if name_start == i {
            return (name_end, Tag::Malformed);
        }
        while i < len && is_space(buf[i]) {
            i += 1;
        }
        match buf.get(i) {
            None => return (name_end, Tag::Open(None)),
            Some(b'=') => i += 1,
            Some(_) => return (name_end, Tag::Malformed),
        }
        while i < len && is_space(buf[i]) {
            i += 1;
        }
        let Some(&quote) = buf.get(i) else {
            return (name_end, Tag::Open(None));
        };
        if quote != b'"' && quote != b'\'' {
            return (name_end, Tag::Malformed);
        }
        let attribute_name = &buf[name.0..name.1];
        if attributes.iter().any(|a| a.name(buf) == attribute_name) {
            return (name_end, Tag::Malformed);
        }
        let content = i + 1;
        let is_value = matches!(attribute_name, b"value");
        let Some((n, lt)) = find_quote(quote, &buf[content..]) else {
            let open = is_value.then_some(OpenValue { content, quote });
            return (name_end, Tag::Open(open));
        };
        let close = content + n;
        if !is_value && lt {
            return (name_end, Tag::Malformed);
        }
        attributes.push(Attribute {
            name,
            value: (content, close),
        });
        i = close + 1;
        if let Some(&next) = buf.get(i) {
            if !is_space(next) && next != b'/' && next != b'>' {
                return (name_end, Tag::Malformed);
            }
        }
    }
}

/// Where `quote` first is in `bytes`, and whether a `<` comes before it. Values are mostly
/// short: the first bytes are searched eight at a time, the rest with `memchr`.
fn find_quote(quote: u8, bytes: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    let mut lt = false;
    while i < 32 {
        let Some(chunk) = bytes.get(i..i + 8) else {
            break;
        };
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quotes = bytes_equal(w, quote);
        let before = if quotes == 0 {
            u64::MAX
        } else {
            // The bits below the first quote.
            (quotes & quotes.wrapping_neg()) - 1
        };
        lt |= bytes_equal(w, b'<') & before != 0;
        if quotes != 0 {
            return Some((i + (quotes.trailing_zeros() / 8) as usize, lt));
        }
        i += 8;
    }
    let n = i + memchr(quote, &bytes[i..])?;
    Some((n, lt || memchr(b'<', &bytes[i..n]).is_some()))
}

/// Where the tag whose rest starts `bytes` ends (after its `>`), starting inside `quote`;
/// the quote it is in at the end of `bytes` when it goes on.
fn tag_end(bytes: &[u8], mut quote: Option<u8>) -> Result<usize, Option<u8>> {
    let mut i = 0;
    loop {
        match quote {
            Some(q) => match memchr(q, &bytes[i..]) {
                Some(n) => {
                    i += n + 1;
                    quote = None;
                }
                None => return Err(quote),
            },
            None => match memchr3(b'>', b'"', b'\'', &bytes[i..]) {
                Some(n) => {
                    let b = bytes[i + n];
                    i += n + 1;
                    if b == b'>' {
                        return Ok(i);
                    }
                    quote = Some(b);
                }
                None => return Err(None),
            },
        }
    }
}

/// The end of the comment, processing instruction or CDATA section that `rest` starts with,
/// and whether it is CDATA; `None` when it goes on past `rest`, or is none of them.
fn markup_end(rest: &[u8]) -> Option<(usize, bool)> {
    let (from, close, cdata): (usize, &[u8], bool) = if rest[1] == b'?' {
        (2, b"?>", false)
    } else if rest.starts_with(b"<!--") {
        (4, b"-->", false)
    } else if rest.starts_with(b"<![CDATA[") {
        (9, b"]]>", true)
    } else {
        return None;
    };
    memchr::memmem::find(rest.get(from..)?, close).map(|n| (from + n + close.len(), cdata))
}

/// Whether `rest` (a `<!` not yet known complete) is a declaration FHIR XML does not allow.
fn is_declaration(rest: &[u8]) -> bool {
    rest[1] == b'!' && !rest.starts_with(b"<!--") && !rest.starts_with(b"<![CDATA[")
}

/// The length of `bytes` without a UTF-8 sequence cut by its end.
fn utf8_cut(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(3) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        if b >= 0xC0 {
            let needs = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else {
                2
            };
            return if back < needs { n - back } else { n };
        }
        return n;
    }
    n
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` below `n` (< 0x80); above the lowest, there may be
/// false ones.
#[inline(always)]
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// The high bit of each byte of `w` equal to `b`; above the lowest, there may be false ones.
#[inline(always)]
fn bytes_equal(w: u64, b: u8) -> u64 {
    bytes_below(w ^ (ONES * u64::from(b)), 1)
}

/// The length of the element name that starts `bytes`, found eight bytes at a time: up to
/// whitespace, `/` or `>` (controls stop it too: they are never in a name).
fn name_length(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stops = bytes_below(w, 0x21) | bytes_equal(w, b'/') | bytes_equal(w, b'>');
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| b <= b' ' || b == b'/' || b == b'>')
        .unwrap_or(bytes.len() - i)
}
/// The bytes that end an attribute name.
const ATTRIBUTE_NAME_STOPS: [bool; 256] = byte_set(b"= \t\r\n>/\"'<");

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

/// The bytes that end a run of an attribute value copied as it is.
const VALUE_STOPS: [bool; 256] = stops(b"\"&<\\");
/// The same inside `'`.
const QUOTED_VALUE_STOPS: [bool; 256] = stops(b"\"'&<\\");
/// The bytes that end a run of XHTML copied as it is into a JSON string.
const ESCAPE_STOPS: [bool; 256] = stops(b"\"\\");

/// Every control character and non-ASCII byte, and `others`.
const fn stops(others: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20 || b >= 0x80;
        b += 1;
    }
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
}

/// The length of the run at the start of `text` without a byte of `table`, found eight
/// bytes at a time (the bytes of `table` beyond controls and non-ASCII are `specials`).
#[inline(always)]
fn run_length(text: &[u8], specials: &[u8], table: &[bool; 256]) -> usize {
    let mut i = 0;
    while let Some(chunk) = text.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let mut stops = (w & HIGHS) | bytes_below(w, 0x20);
        for &special in specials {
            stops |= bytes_equal(w, special);
        }
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + text[i..]
        .iter()
        .position(|&b| table[usize::from(b)])
        .unwrap_or(text.len() - i)
}

/// How many bytes from the first byte of `text` (not ASCII) are valid UTF-8, up to the next
/// ASCII byte; `Err` with the valid length when the text ends inside a character, `None`
/// when it is not UTF-8.
fn utf8_run(text: &[u8]) -> Result<usize, Option<usize>> {
    let end = text.iter().position(|&b| b < 0x80).unwrap_or(text.len());
    match std::str::from_utf8(&text[..end]) {
        Ok(_) => Ok(end),
        Err(e) if e.error_len().is_none() => Err(Some(e.valid_up_to())),
        Err(_) => Err(None),
    }
}

/// Why the text of a value cannot be written.
enum ValueError {
    /// A `<`: the tag is malformed.
    Tag,
    Other(String),
}

/// Writes the text of an attribute value up to `quote` (0 for none) onto `sink` as the
/// content of a JSON string: references resolved, XML's attribute whitespace normalisation
/// applied, JSON escapes written. Returns how much of `text` it used and whether `quote`
/// comes there. With `more` (the value goes on in the next piece), a reference, line end or
/// character cut by the end of `text` is left unused.
fn decode_value(
    text: &[u8],
    quote: u8,
    sink: &mut Vec<u8>,
    more: bool,
) -> Result<(usize, bool), ValueError> {
    let mut i = 0;
    let mut plain = 0;
    loop {
        // `'` ends a run only as the quote.
        i += if quote == b'\'' {
            run_length(&text[i..], b"\"'&<\\", &QUOTED_VALUE_STOPS)
        } else {
            run_length(&text[i..], b"\"&<\\", &VALUE_STOPS)
        };
        let Some(&b) = text.get(i) else {
            sink.extend_from_slice(&text[plain..]);
            return Ok((text.len(), false));
        };
        if b >= 0x80 {
            match utf8_run(&text[i..]) {
                Ok(n) => i += n,
                Err(Some(n)) if more && i + utf8_run_end(&text[i..]) == text.len() => {
                    sink.extend_from_slice(&text[plain..i + n]);
                    return Ok((i + n, false));
                }
                Err(_) => return Err(ValueError::Other("a value that is not UTF-8".into())),
            }
            continue;
        }
        sink.extend_from_slice(&text[plain..i]);
        match b {
            b'\t' | b'\n' => {
                sink.push(b' ');
                i += 1;
            }
            b'\r' => {
                match text.get(i + 1) {
                    Some(b'\n') => i += 2,
                    None if more => return Ok((i, false)),
                    _ => i += 1,
                }
                sink.push(b' ');
            }
            0..=0x1f => return Err(ValueError::Other("a control character in a value".into())),
            _ if b == quote => return Ok((i, true)),
            b'"' => {
                sink.extend_from_slice(b"\\\"");
                i += 1;
            }
            b'\\' => {
                sink.extend_from_slice(b"\\\\");
                i += 1;
            }
            b'<' => return Err(ValueError::Tag),
            b'&' => match reference(&text[i + 1..]) {
                Ok((c, n)) => {
                    escape_char(c, sink);
                    i += 1 + n;
                }
                Err(None) if more => return Ok((i, false)),
                Err(None) => return Err(ValueError::Other("a bare & in a value".into())),
                Err(Some(message)) => return Err(ValueError::Other(message)),
            },
            _ => {
                // `'` inside `"`.
                sink.push(b);
                i += 1;
            }
        }
        plain = i;
    }
}

/// Where the run of non-ASCII bytes at the start of `text` ends.
fn utf8_run_end(text: &[u8]) -> usize {
    text.iter().position(|&b| b < 0x80).unwrap_or(text.len())
}

/// Appends `c` to a JSON string.
fn escape_char(c: char, sink: &mut Vec<u8>) {
    match c {
        '"' => sink.extend_from_slice(b"\\\""),
        '\\' => sink.extend_from_slice(b"\\\\"),
        '\n' => sink.extend_from_slice(b"\\n"),
        '\r' => sink.extend_from_slice(b"\\r"),
        '\t' => sink.extend_from_slice(b"\\t"),
        c => {
            let mut buf = [0; 4];
            sink.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// The entity or character reference after a `&` at the start of `rest`: its character and
/// length with the `;`. `Err(None)` when no `;` comes within the reference's longest length
/// and `rest` is shorter than that (it may go on).
fn reference(rest: &[u8]) -> Result<(char, usize), Option<String>> {
    let window = &rest[..rest.len().min(MAX_REFERENCE)];
    let Some(end) = memchr(b';', window) else {
        return Err((rest.len() >= MAX_REFERENCE).then(|| "a bare & in a value".to_owned()));
    };
    let c = match &rest[..end] {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"quot" => '"',
        b"apos" => '\'',
        [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
        [b'#', decimal @ ..] => char_ref(decimal, 10)?,
        other => {
            return Err(Some(format!(
                "the entity &{}; is not XML's",
                String::from_utf8_lossy(other)
            )))
        }
    };
    Ok((c, end + 1))
}

/// Resolves the references of a (short) attribute value and normalises its whitespace as
/// XML does, into `out`.
fn decode_attribute(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'&' => {
                let (c, n) = reference(&text[i + 1..]).map_err(|e| {
                    ValueError::Other(e.unwrap_or_else(|| "a bare & in a value".into()))
                })?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 1 + n;
            }
            // Attribute-value normalisation; a CR LF pair is one line end.
            b'\r' if text.get(i + 1) == Some(&b'\n') => i += 1,
            b'\t' | b'\n' | b'\r' => {
                out.push(b' ');
                i += 1;
            }
            b if b < 0x20 => {
                return Err(ValueError::Other("a control character in a value".into()))
            }
            b'<' => return Err(ValueError::Tag),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Appends `bytes` (XHTML as written) escaped for a JSON string, checking that it is UTF-8.
fn escape_json_utf8(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let mut i = 0;
    let mut plain = 0;
    loop {
        i += run_length(&bytes[i..], b"\"\\", &ESCAPE_STOPS);
        let Some(&b) = bytes.get(i) else {
            out.extend_from_slice(&bytes[plain..]);
            return Ok(());
        };
        if b >= 0x80 {
            i += utf8_run(&bytes[i..]).map_err(|_| ())?;
            continue;
        }
        out.extend_from_slice(&bytes[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        i += 1;
        plain = i;
    }
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
            assert_eq!(result.as_ref().err(), Some(&error), "{xml}: cut at {cut}");
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
            // Faults in and around a streaming value: the same whatever the cuts.
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a<b"/></name></Patient>"#,
                "Patient.name.family",
                "malformed tag <family>",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><active value="a<b"/></Patient>"#,
                "Patient",
                "out of the definition order",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><birthDate value="a<b"/><active value="true"/></Patient>"#,
                "Patient.birthDate",
                "malformed tag <birthDate>",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male" id="x"y="z"/></Patient>"#,
                "Patient.gender",
                "malformed tag <gender>",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="ma&le;" bad="1"/></Patient>"#,
                "Patient.gender",
                "the entity &le; is not XML's",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male" bad="1"/></Patient>"#,
                "Patient.gender",
                "the attribute \"bad\" is not FHIR",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male" xmlns="urn:x"/></Patient>"#,
                "Patient.gender",
                "wrong namespace",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender xmlns="urn:x" value="male"/></Patient>"#,
                "Patient",
                "wrong namespace",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="m&ale" id="1"/></Patient>"#,
                "Patient.gender",
                "a bare &",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="m&#xD800;"/></Patient>"#,
                "Patient.gender",
                "malformed character reference",
            ),
            (
                "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"m\u{1}\"/></Patient>",
                "Patient.gender",
                "control character",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value='' id="g"/></Patient>"#,
                "Patient.gender",
                "an empty value",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male" value="female"/></Patient>"#,
                "Patient.gender",
                "malformed tag <gender>",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"#,
                "Patient.gender",
                "ends inside a tag",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male" "#,
                "Patient.gender",
                "ends inside a tag",
            ),
        ] {
            let e = error(r4, xml);
            assert_eq!(e.path(), path, "{xml}: {e}");
            assert!(e.to_string().contains(message), "{xml}: {e}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_wherever_it_is_cut() {
        let xml =
            b"<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"m\xc3\xa9\xc3\"/></Patient>";
        for cut in 0..=xml.len() {
            let e = convert_split(FhirVersion::R4, XmlLimits::default(), xml, &[cut]).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Patient.gender: a value that is not UTF-8",
                "{cut}"
            );
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
            ..XmlLimits::default()
        };
        // A tag without its streamed value, a number, a comment and a `div` tag are held
        // whole; the `div`'s text and a string's `value` stream (below).
        for (xml, message) in [
            (
                format!(
                    r#"<Binary xmlns="http://hl7.org/fhir"><contentType id="{}" value="a/b"/></Binary>"#,
                    "i".repeat(200)
                ),
                "held whole",
            ),
            (
                format!(
                    r#"<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="{}"/></Patient>"#,
                    "1".repeat(200)
                ),
                "held whole",
            ),
            (
                format!(
                    r#"<Patient xmlns="http://hl7.org/fhir"><!--{}--><active value="true"/></Patient>"#,
                    "c".repeat(200)
                ),
                "held whole",
            ),
            (
                format!(
                    r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p title="{}">x</p></div></text></Patient>"#,
                    "t".repeat(200)
                ),
                "held whole",
            ),
        ] {
            for cut in [30, 60, 90, 130, 160] {
                let e = convert_split(FhirVersion::R4, limits, xml.as_bytes(), &[cut]).unwrap_err();
                assert!(e.to_string().contains(message), "{cut} {e}");
            }
        }
        let limits = XmlLimits {
            max_side: 100,
            ..XmlLimits::default()
        };
        let mut xml = String::from(r#"<Patient xmlns="http://hl7.org/fhir"><name>"#);
        for i in 0..10 {
            xml.push_str(&format!(r#"<given id="g{i}" value="x"/>"#));
        }
        xml.push_str("</name></Patient>");
        let e = convert_split(FhirVersion::R4, limits, xml.as_bytes(), &[]).unwrap_err();
        assert!(e.to_string().contains("held until its end"), "{e}");
    }

    const NARRATIVE_HEAD: &str =
        r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>"#;
    const NARRATIVE_TAIL: &str = r#"</text><active value="true"/></Patient>"#;

    /// The narrative check, fed the tokens the converter finds, gives the verdict of
    /// `xhtml::check_div` on the whole `div` (debug builds also assert it for every `div`
    /// converted): the official examples' narratives and variations of them, cut anywhere.
    #[test]
    fn narratives_are_checked_as_whole_divs_are_wherever_they_are_cut() {
        let mut rng = Rng(0xD1C);
        let (mut accepted, mut refused, mut before_check) = (0, 0, 0);
        for example in xhtml::example_divs() {
            let variants = [
                example.clone(),
                xhtml::mutated(&example, &mut rng),
                xhtml::mutated(&example, &mut rng),
                xhtml::mutated(&example, &mut rng),
                xhtml::mutated(&example, &mut rng),
            ];
            for div in variants {
                if !div.starts_with('<') || div.starts_with("<!") || div.starts_with("<?") {
                    // Cut before its start tag: no `div` to check.
                    continue;
                }
                let xml = format!("{NARRATIVE_HEAD}{div}{NARRATIVE_TAIL}");
                let whole = convert(FhirVersion::R4, xml.as_bytes());
                for _ in 0..3 {
                    let mut cuts: Vec<usize> = (0..1 + rng.below(8))
                        .map(|_| rng.below(xml.len() + 1))
                        .collect();
                    cuts.sort_unstable();
                    let split =
                        convert_split(FhirVersion::R4, XmlLimits::default(), xml.as_bytes(), &cuts);
                    assert_eq!(split, whole, "{div:?} cut at {cuts:?}");
                }
                // The `div` the converter holds: `div` itself when its tags end it, else
                // one that goes on into the tail, or to the end of the document.
                let full = format!("{div}{NARRATIVE_TAIL}");
                let held = div_extent(full.as_bytes()).map(|n| &full[..n]);
                match (held.map(xhtml::check_div), whole) {
                    (Some(Ok(())), Ok(json)) => {
                        let value: Value = serde_json::from_slice(&json).unwrap();
                        assert_eq!(value["text"]["div"], held.unwrap());
                        accepted += 1;
                    }
                    (Some(Err(reason)), Err(e)) if e.to_string().contains("not FHIR XHTML") => {
                        assert_eq!(
                            e.to_string(),
                            format!("Patient.text.div: the narrative is not FHIR XHTML: {reason}"),
                            "{div:?}"
                        );
                        refused += 1;
                    }
                    // Refused before its check: the start tag of the `div`, read as a FHIR
                    // tag, is not one (a changed name, no space between attributes); the
                    // document ends in the `div`; after a `div` that ends early, the rest
                    // is not FHIR.
                    (_, Err(e)) if !e.to_string().contains("not FHIR XHTML") => {
                        if held == Some(&div) {
                            assert_eq!(e.path(), "Patient.text", "{div:?}: {e}");
                        }
                        before_check += 1;
                    }
                    (expected, got) => panic!("{div:?}: {expected:?}, {got:?}"),
                }
            }
        }
        assert!(
            accepted > 1000 && refused > 800,
            "{accepted} accepted, {refused} refused, {before_check} refused before the check"
        );
    }

    /// The length of the `div` that starts `xml` as the converter reads it: up to the tag
    /// that brings its depth back to 0.
    fn div_extent(xml: &[u8]) -> Option<usize> {
        let (mut depth, mut at) = (0usize, 0);
        loop {
            let rest = xml.get(at..)?;
            if rest.first()? != &b'<' {
                at += memchr(b'<', rest)?;
                continue;
            }
            let (end, change) = match rest.get(1)? {
                b'/' => (memchr(b'>', rest)? + 1, -1),
                b'!' | b'?' => (markup_end(rest)?.0, 0),
                _ => {
                    let end = tag_end(&rest[1..], None).ok()? + 1;
                    (end, if rest[end - 2] == b'/' { 0 } else { 1 })
                }
            };
            at += end;
            depth = depth.checked_add_signed(change)?;
            if depth == 0 {
                return Some(at);
            }
        }
    }

    /// A `div` the response path would refuse is refused when it ends, by the same rules
    /// and with the same reason, before its JSON string ends, wherever the pieces are cut.
    #[test]
    fn a_narrative_that_is_not_fhir_xhtml_is_refused() {
        const OPEN: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml">"#;
        for (div, reason) in [
            (format!("{OPEN}<p>a</b></div>"), "not well-formed XML"),
            (
                format!("{OPEN}<p>a<b>b</p></b></div>"),
                "not well-formed XML",
            ),
            (
                format!("{OPEN}<script>alert(1)</script></div>"),
                "element not allowed",
            ),
            (
                format!("{OPEN}<p onclick=\"alert(1)\">a</p></div>"),
                "attribute not allowed",
            ),
            (format!("{OPEN}a &bogus; b</div>"), "undefined entity"),
            (
                format!("{OPEN}<a href=\"javascript:alert(1)\">a</a></div>"),
                "active content in a link",
            ),
            (
                format!("{OPEN}<a href=\" &#x6A;ava&#9;script:alert(1)\">a</a></div>"),
                "active content in a link",
            ),
            (
                format!("{OPEN}<p><a href=\"data:text/html,x\">a</a></p></div>"),
                "active content in a link",
            ),
            (
                format!("{OPEN}<li>a</li></div>"),
                "element not allowed here",
            ),
            (
                format!("{OPEN}<x:p xmlns:x=\"urn:x\">a</x:p></div>"),
                "element not in the XHTML namespace",
            ),
            (
                format!("{OPEN}<p id=\"a\">a</p><p id=\"a\">b</p></div>"),
                "duplicate id",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml" onclick="x"/>"#.to_owned(),
                "attribute not allowed",
            ),
        ] {
            let xml = format!("{NARRATIVE_HEAD}{div}{NARRATIVE_TAIL}");
            let e = error(FhirVersion::R4, &xml);
            assert_eq!(
                e.to_string(),
                format!("Patient.text.div: the narrative is not FHIR XHTML: {reason}"),
                "{div}"
            );
            // The JSON the response path would have been given: it refuses it too, for the
            // same reason, but for an active link, which it drops.
            let json =
                json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
            let mut converter = JsonToXml::new(FhirVersion::R4, ConvertLimits::default());
            let mut rendered = Vec::new();
            let result = converter
                .feed(json.to_string().as_bytes(), &mut rendered)
                .and_then(|()| converter.finish(&mut rendered));
            match result {
                Ok(()) => assert_eq!(reason, "active content in a link", "{div}"),
                Err(e) => assert_eq!(
                    e.to_string(),
                    format!("Patient.text.div: the narrative is not FHIR XHTML: {reason}"),
                    "{div}"
                ),
            }
        }
        // In a contained resource, the path names it.
        let xml = format!(
            r#"<Patient xmlns="http://hl7.org/fhir"><contained><Organization>{}{OPEN}<script/></div></text></Organization></contained></Patient>"#,
            r#"<text><status value="generated"/>"#
        );
        assert_eq!(
            error(FhirVersion::R4, &xml).to_string(),
            "Patient.contained.Organization.text.div: the narrative is not FHIR XHTML: element not allowed"
        );
    }

    /// A `div` that is FHIR XHTML goes out as written, links that are not active content
    /// included, whatever the cuts.
    #[test]
    fn a_narrative_that_is_fhir_xhtml_is_kept_as_written() {
        let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\">\r\n<!-- c --><p>a&nbsp;&amp;&#65;<![CDATA[<b>]]></p >\
            <p><a href=\"mailto:a@example.org\">m</a> <a href=\"urn:oid:1.2\">u</a> <a href=\"#x\">f</a>\
            <img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"i\"/> \u{e9}</p><table><tr><td>1</td></tr></table></div>";
        let xml = format!("{NARRATIVE_HEAD}{div}{NARRATIVE_TAIL}");
        let value = json_every_split(FhirVersion::R4, &xml);
        assert_eq!(
            value,
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}, "active": true})
        );
        let empty = r#"<div xmlns="http://www.w3.org/1999/xhtml"/>"#;
        let value = json_every_split(
            FhirVersion::R4,
            &format!("{NARRATIVE_HEAD}{empty}{NARRATIVE_TAIL}"),
        );
        assert_eq!(value["text"]["div"], empty);
    }

    /// The `div` is held within `max_div`: one longer is refused, at every cut, and one of
    /// the limit's length passes.
    #[test]
    fn a_narrative_is_held_within_its_limit() {
        let open = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>"#;
        let close = "</p></div>";
        let limits = XmlLimits {
            max_div: 200,
            ..XmlLimits::default()
        };
        let fits = format!(
            "{open}{}{close}",
            "x".repeat(200 - open.len() - close.len())
        );
        let longer = format!(
            "{open}{}{close}",
            "x".repeat(201 - open.len() - close.len())
        );
        for (div, ok) in [(fits, true), (longer, false)] {
            let xml = format!("{NARRATIVE_HEAD}{div}{NARRATIVE_TAIL}");
            for cut in 0..=xml.len() {
                let result = convert_split(FhirVersion::R4, limits, xml.as_bytes(), &[cut]);
                if ok {
                    assert!(result.is_ok(), "cut at {cut}: {result:?}");
                } else {
                    assert_eq!(
                        result.unwrap_err().to_string(),
                        "Patient.text.div: a narrative longer than the 200 bytes held to check it",
                        "cut at {cut}"
                    );
                }
            }
        }
    }

    /// A string's `value` streams: whatever the pieces, the JSON is that of the whole
    /// document, and nothing but a few bytes of it is held.
    #[test]
    fn values_stream_with_every_escape_cut_anywhere() {
        let xml = "<Patient xmlns=\"http://hl7.org/fhir\"><id value='p&apos;1'/>\
            <name id=\"n\"><family xmlns=\"http://hl7.org/fhir\" value=\"a&amp;b&#x2014;c\r\nd\te\rf'g&quot;h&#10;i\u{20ac}\u{e9}\u{1F600}&lt;&gt;&#9;\\z\" id=\"f\"/>\
            <given value='say \"hi\"'/><given id=\"g\" value=\"&#65;&#x42;\"/></name></Patient>";
        let value = json_every_split(FhirVersion::R4, xml);
        assert_eq!(
            value,
            json!({
                "resourceType": "Patient",
                "id": "p'1",
                "name": [{
                    "id": "n",
                    "family": "a&b\u{2014}c d e f'g\"h\ni\u{20ac}\u{e9}\u{1F600}<>\t\\z",
                    "_family": {"id": "f"},
                    "given": ["say \"hi\"", "AB"],
                    "_given": [null, {"id": "g"}]
                }]
            })
        );
        // Every cut of every pair around the value's escapes, with a small bound.
        let limits = XmlLimits {
            max_held: 100,
            ..XmlLimits::default()
        };
        let whole = convert(FhirVersion::R4, xml.as_bytes()).unwrap();
        for a in 0..xml.len() {
            for b in (a..xml.len()).step_by(3) {
                let split = convert_split(FhirVersion::R4, limits, xml.as_bytes(), &[a, b]);
                assert_eq!(split.as_ref(), Ok(&whole), "cuts at {a}, {b}");
            }
        }
    }

    /// A 2 MiB value with references, line ends and multi-byte characters, in random pieces
    /// (some of one byte): the same JSON as whole, and at most `max_held` held at any time.
    #[test]
    fn a_long_value_is_never_held() {
        let mut rng = Rng(0x5eed_0bad);
        let pieces = [
            "QUJD",
            "&amp;",
            "&#x2014;",
            "&#233;",
            "\r\n",
            "\t",
            "\u{e9}",
            "\u{1F600}",
            "\"",
            "\\",
            "&quot;",
            " ",
            "\r",
        ];
        let mut text = String::new();
        while text.len() < 2 << 20 {
            text.push_str(rng.pick(&pieces));
        }
        let xml = format!(
            "<DocumentReference xmlns=\"http://hl7.org/fhir\"><status value=\"current\"/><content><attachment><contentType value=\"text/plain\"/><data value=\"{}\"/><title value='{text}' id=\"t\"/></attachment></content></DocumentReference>",
            "QUJD".repeat(1 << 18)
        );
        let whole = convert(FhirVersion::R4, xml.as_bytes()).unwrap();
        let value: Value = serde_json::from_slice(&whole).unwrap();
        let title = value["content"][0]["attachment"]["title"].as_str().unwrap();
        let expected = text
            .replace("&amp;", "&")
            .replace("&#x2014;", "\u{2014}")
            .replace("&#233;", "\u{e9}")
            .replace("&quot;", "\"")
            .replace("\r\n", " ")
            .replace(['\r', '\t'], " ");
        assert!(title == expected, "the title differs");
        let limits = XmlLimits {
            max_held: 1024,
            ..XmlLimits::default()
        };
        for round in 0..8 {
            let mut converter = XmlToJson::new(FhirVersion::R4, limits);
            let mut out = Vec::new();
            let mut at = 0;
            while at < xml.len() {
                let n = if round % 2 == 0 {
                    1 + rng.below(5)
                } else {
                    1 + rng.below(200_000)
                };
                let end = (at + n).min(xml.len());
                converter.feed(&xml.as_bytes()[at..end], &mut out).unwrap();
                assert!(
                    converter.held.len() <= limits.max_held,
                    "{}",
                    converter.held.len()
                );
                assert!(converter
                    .value
                    .as_ref()
                    .is_none_or(|v| v.carry.len() <= MAX_REFERENCE + 4));
                at = end;
                if round % 2 == 0 && at > 100_000 {
                    // Bytes at a time is slow: the rest in large pieces.
                    converter.feed(&xml.as_bytes()[at..], &mut out).unwrap();
                    at = xml.len();
                }
            }
            converter.finish(&mut out).unwrap();
            assert!(out == whole, "round {round}");
        }
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
