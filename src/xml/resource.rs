//! Streaming FHIR JSON -> FHIR XML for any resource of a release, driven by the model tables
//! (`crate::model`), following the release's json.html and xml.html.
//!
//! [`JsonToXml`] is fed the JSON in pieces split anywhere and appends XML to the caller's
//! buffer as soon as it can:
//!
//! - Elements are written in definition order whatever the JSON order. While an object's
//!   members come in definition order (the usual case), its XML goes at once into one stream
//!   of XML not yet handed out, where its parent and its own objects write too: nothing is
//!   copied from level to level. The first member out of order moves what its object wrote
//!   there back into held pieces, and the object then holds its members (converted to XML)
//!   until it ends, so any order works within the reorder limit. When what is held (the
//!   stream included) would pass the limit, it is handed out in order, from the document's
//!   root down to the member being read, and from then on an element that XML puts before one
//!   already handed out is an error, never silently moved or dropped. Items of an array
//!   already being handed out (the entries of a large `Bundle`) then go out one by one as
//!   each is complete.
//! - `resourceType` names the element (the root in the FHIR namespace, a resource inside
//!   `contained`, `Bundle.entry.resource`, `Parameters.parameter.resource` wrapped in that
//!   element). Members that come before it are kept as tokens, within the reorder limit, and
//!   converted when it arrives.
//! - Primitives are `value` attributes; `_name` (id and extensions of a primitive) is merged
//!   with `name`, arrays item by item (`null` fillers on either side); `Element.id` and
//!   `Extension.url` are attributes; choice elements keep their JSON name (`valueQuantity`).
//! - Numbers are written with exactly the JSON text (`1.10`, R4+ `1E-22`); DSTU2 and STU3
//!   decimals, which have no exponent in XML, are spelled out positionally with the same
//!   digits. Integers must be integers.
//! - The narrative `div` is checked and rewritten by the XHTML rewriter (`super::xhtml`).
//! - A string value larger than the reorder limit (the base64 of a large Binary, in a Bundle
//!   or not) streams into its `value` attribute: what comes before it in XML order is written
//!   out first, and a later member that XML puts before it is an error. Where it cannot
//!   stream (before `resourceType`, in an array, the `div`) it is an error.
//! - `fhir_comments` (DSTU2, STU3) are dropped.
//! - Not FHIR for the release is a [`ConvertError`] naming the element path: an unknown
//!   element or resource type, the wrong JSON kind, an array for a single element or the
//!   reverse, an empty string, array or object, a `null` outside a primitive array, a
//!   character XML cannot carry, a `div` that is not FHIR XHTML.

use std::fmt;

use crate::model::{ElementRef, JsonKind, Model, TypeKind, TypeRef};
use crate::FhirVersion;

use wide::u8x16;

use super::{xhtml, FHIR_NS, XML_DECL};

mod lookups;
mod tokens;

use lookups::{Lookups, Traits};
use tokens::{FeedError, Token, Tokenizer};

/// The bounds of a conversion's memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvertLimits {
    /// The most bytes held to put elements in definition order: what is held, the largest
    /// key, and the largest value that is not streamed (at most 1 GiB).
    pub(crate) reorder_limit: usize,
    /// The deepest JSON nesting accepted.
    pub(crate) max_depth: usize,
}

impl Default for ConvertLimits {
    fn default() -> ConvertLimits {
        ConvertLimits {
            reorder_limit: 4 << 20,
            max_depth: 128,
        }
    }
}

/// Why the JSON could not be converted: it is not FHIR JSON of the release, or needs more
/// than the reorder limit. The message names the element path (`Bundle.entry[2].resource`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConvertError {
    path: String,
    message: String,
}

impl ConvertError {
    /// The element path, such as `Patient.name[0].given`.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConvertError {}

/// A streaming FHIR JSON -> FHIR XML converter for one document.
pub(crate) struct JsonToXml {
    tokenizer: Tokenizer,
    converter: Converter,
    failed: Option<ConvertError>,
}

impl JsonToXml {
    pub(crate) fn new(version: FhirVersion, limits: ConvertLimits) -> JsonToXml {
        // Held pieces are addressed by `u32` offsets.
        let limits = ConvertLimits {
            reorder_limit: limits.reorder_limit.min(1 << 30),
            ..limits
        };
        JsonToXml {
            tokenizer: Tokenizer::new(limits.max_depth, limits.reorder_limit),
            converter: Converter {
                model: Model::of(version),
                positional_decimals: matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3),
                comments: matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3),
                limit: limits.reorder_limit,
                stack: Vec::new(),
                pool: Vec::new(),
                done: false,
                scratch: Vec::new(),
                unchecked: 0,
                stream_tail: None,
                stream: Vec::new(),
                stream_base: 0,
                lookups: Lookups::new(),
                divs: xhtml::DivWriter::new(),
            },
            failed: None,
        }
    }

    /// Converts the next piece of JSON, appending the XML that can be written to `out`. After
    /// an error, every call returns it again.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ConvertError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let converter = &mut self.converter;
        let tokenizer_held = self.tokenizer.held();
        let result = self.tokenizer.feed(input, &mut |token| {
            converter.dispatch(token, tokenizer_held, out)
        });
        self.check(result)
    }

    /// Ends the document: checks that it was complete and writes what remains.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let converter = &mut self.converter;
        let result = self
            .tokenizer
            .finish(&mut |token| converter.token(token, 0, out));
        self.check(result)?;
        if !self.converter.done {
            return self.check(Err(FeedError::Handler(
                self.converter.error("incomplete document"),
            )));
        }
        Ok(())
    }

    fn check(&mut self, result: Result<(), FeedError<ConvertError>>) -> Result<(), ConvertError> {
        let error = match result {
            Ok(()) => return Ok(()),
            Err(FeedError::Handler(error)) => error,
            Err(FeedError::Json(error)) => self.converter.error(&error.to_string()),
        };
        self.failed = Some(error.clone());
        Err(error)
    }
}

/// A member of an object being read: which element, which type, and whether it is the
/// `_name` part of a primitive.
#[derive(Clone, Copy)]
struct Member {
    element: ElementRef,
    ty: TypeRef,
    partner: bool,
    traits: Traits,
}

/// What a converted object becomes.
#[derive(Clone, Copy)]
enum Role {
    /// The document's resource.
    Root,
    /// An element of the object below it.
    Element { member: Member },
    /// The `_name` object of item `item` of the primitive slot `slot` of the object below.
    Extras { slot: u32, item: u32 },
}

/// A held piece of an object's content: complete XML, or a primitive waiting for its
/// partner.
struct Part {
    position: u16,
    seq: u32,
    body: Body,
}

#[derive(Clone, Copy)]
enum Body {
    Xml(u32, u32),
    Slot(u32),
}

/// A primitive element (or array of them): its values and its `_name` parts, by item.
struct Slot {
    member: Member,
    values: Vec<Option<(u32, u32)>>,
    extras: Vec<Option<Extras>>,
    written: bool,
}

#[derive(Clone, Copy)]
struct Extras {
    id: Option<(u32, u32)>,
    children: (u32, u32),
}

/// An object being converted.
struct Frame {
    ty: TypeRef,
    role: Role,
    /// The start tag has been written to the output.
    started: bool,
    /// Content has been written to the output: nothing before `cursor` can be added.
    live: bool,
    cursor: usize,
    /// Elements seen, and `_name` parts seen, by position.
    seen: [u64; 4],
    seen_partner: [u64; 4],
    arena: Vec<u8>,
    attributes: Vec<(&'static str, u32, u32)>,
    parts: Vec<Part>,
    /// The primitive slots in use are `slots[..slots_used]`.
    slots: Vec<Slot>,
    slots_used: usize,
    /// The member whose key was read and whose value comes next.
    pending: Option<Member>,
    /// The member whose value is being read (an array, an object).
    open: Option<Member>,
    seq: u32,
    /// Writes its content straight to the stream (`Converter::stream`) while its members
    /// come in order; cleared when one comes out of order (its content is then held in
    /// `parts` again) and for every object inside one that is not.
    direct: bool,
    /// Where its start tag goes, or went, in the stream (a position in the whole output).
    start: usize,
    /// Where its content after the start tag begins in the stream.
    content_start: usize,
    /// What was written to the stream after the start tag, in order: enough to hold it in
    /// `parts` again when a member comes out of order.
    written: Vec<Written>,
    /// One more than the largest position written to the stream: a member placed before it
    /// comes out of order.
    next_free: usize,
    /// How much of the stream was handed out when it became live.
    committed: usize,
}

/// A piece of a direct frame's content in the stream: an element (or consecutive items of
/// one), ending at `end`.
#[derive(Clone, Copy)]
struct Written {
    position: u16,
    piece: Piece,
    end: usize,
}

impl Frame {
    /// Records `piece`, written for the element at `position` and ending at `end` of the
    /// stream; the next element written must come after it.
    #[inline(always)]
    fn wrote(&mut self, position: usize, piece: Piece, end: usize) {
        self.written.push(Written {
            position: position as u16,
            piece,
            end,
        });
        self.next_free = self.next_free.max(position + 1);
    }
}

#[derive(Clone, Copy)]
enum Piece {
    /// Complete XML.
    Xml,
    /// A primitive slot.
    Slot(u32),
    /// A primitive without `_name` part, written as it came: `<name value="..."/>`, its
    /// value starting at this position of the stream.
    Value(Member, usize),
}

/// The members of a resource read before its `resourceType`, kept as tokens.
struct Record {
    role: Role,
    tokens: Vec<u8>,
    depth: usize,
    type_next: bool,
}

struct ArrayState {
    member: Member,
    index: u32,
}

enum Ctx {
    /// Boxed to keep the stack small; boxes are reused through `Converter::pool`.
    Frame(Box<Frame>),
    Array(ArrayState),
    Record(Record),
    /// Skipping a value (`fhir_comments`); the nesting depth inside it.
    Skip(usize),
}

struct Converter {
    model: Model,
    positional_decimals: bool,
    comments: bool,
    limit: usize,
    stack: Vec<Ctx>,
    /// Frames kept for reuse, boxed as the stack holds them.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Frame>>,
    done: bool,
    scratch: Vec<u8>,
    /// About how many bytes were added since the limit was last checked.
    unchecked: usize,
    /// A string value being streamed: what closes its element.
    stream_tail: Option<Vec<u8>>,
    /// XML in order and not handed out yet: what the frames from the root down write while
    /// their members come in order. Handed out when more than the reorder limit is held or
    /// the document ends.
    stream: Vec<u8>,
    /// The position in the whole output of `stream[0]`.
    stream_base: usize,
    lookups: Lookups,
    divs: xhtml::DivWriter,
}

/// The largest buffer a frame keeps for reuse.
const POOLED_ARENA: usize = 64 << 10;

/// How often the reorder limit is checked, in bytes of input (about).
const CHECK_EVERY: usize = 4096;

fn bit(set: &[u64; 4], position: usize) -> bool {
    position < 256 && set[position / 64] & (1 << (position % 64)) != 0
}

fn set_bit(set: &mut [u64; 4], position: usize) {
    if position < 256 {
        set[position / 64] |= 1 << (position % 64);
    }
}

fn range(start: usize, end: usize) -> (u32, u32) {
    // Bounded by the reorder limit, at most 1 GiB.
    (start as u32, end as u32)
}

fn slice(arena: &[u8], (start, end): (u32, u32)) -> &[u8] {
    &arena[start as usize..end as usize]
}

/// Writes an element's XML name: its JSON name, for a choice with the type's name.
#[inline(always)]
fn write_name(out: &mut Vec<u8>, member: &Member) {
    out.extend_from_slice(member.element.name().as_bytes());
    if member.traits.is_choice() {
        let name = member.ty.name().as_bytes();
        out.push(name[0].to_ascii_uppercase());
        out.extend_from_slice(&name[1..]);
    }
}

impl Converter {
    fn error(&self, message: &str) -> ConvertError {
        ConvertError {
            path: self.path(),
            message: message.to_string(),
        }
    }

    /// The element path of the current position, for errors.
    fn path(&self) -> String {
        let mut path = String::new();
        let push = |path: &mut String, part: &str| {
            if !path.is_empty() && !part.starts_with('[') {
                path.push('.');
            }
            path.push_str(part);
        };
        for ctx in &self.stack {
            match ctx {
                Ctx::Frame(frame) => {
                    if frame.ty.kind() == TypeKind::Resource {
                        push(&mut path, frame.ty.name());
                    }
                    if let Some(member) = frame.open.or(frame.pending) {
                        let mut name = Vec::new();
                        write_name(&mut name, &member);
                        let name = String::from_utf8(name).unwrap_or_default();
                        push(
                            &mut path,
                            &format!("{}{name}", if member.partner { "_" } else { "" }),
                        );
                    }
                }
                // `index` counts the items begun: the current one is the last of them.
                Ctx::Array(array) if array.index > 0 => {
                    push(&mut path, &format!("[{}]", array.index - 1));
                }
                Ctx::Array(_) => {}
                Ctx::Record(_) | Ctx::Skip(_) => {}
            }
        }
        path
    }

    fn frame(&mut self) -> &mut Frame {
        for ctx in self.stack.iter_mut().rev() {
            if let Ctx::Frame(frame) = ctx {
                return frame;
            }
        }
        unreachable!("values are read inside an object")
    }

    #[inline(always)]
    fn new_frame(&mut self, ty: TypeRef, role: Role) -> Box<Frame> {
        let direct = match role {
            Role::Root => true,
            Role::Element { .. } => self
                .stack
                .iter()
                .rev()
                .find_map(|ctx| match ctx {
                    Ctx::Frame(frame) => Some(frame.direct),
                    _ => None,
                })
                .unwrap_or(false),
            Role::Extras { .. } => false,
        };
        self.new_frame_direct(ty, role, direct)
    }

    /// [`Converter::new_frame`] when whether it writes to the stream is known: its parent
    /// does.
    #[inline(always)]
    fn new_frame_direct(&mut self, ty: TypeRef, role: Role, direct: bool) -> Box<Frame> {
        let start = self.stream_end();
        let mut frame = self.pool.pop().unwrap_or_else(|| {
            Box::new(Frame {
                ty,
                role,
                started: false,
                live: false,
                cursor: 0,
                seen: [0; 4],
                seen_partner: [0; 4],
                arena: Vec::new(),
                attributes: Vec::new(),
                parts: Vec::new(),
                slots: Vec::new(),
                slots_used: 0,
                pending: None,
                open: None,
                seq: 0,
                direct: false,
                start: 0,
                content_start: 0,
                written: Vec::new(),
                next_free: 0,
                committed: 0,
            })
        });
        frame.ty = ty;
        frame.role = role;
        frame.direct = direct;
        frame.start = start;
        frame.content_start = start;
        frame
    }

    /// The position in the whole output of the end of the stream.
    fn stream_end(&self) -> usize {
        self.stream_base + self.stream.len()
    }

    /// Hands out the stream up to `upto` (a position in the whole output).
    fn commit(&mut self, upto: usize, out: &mut Vec<u8>) {
        let n = upto - self.stream_base;
        if n == 0 {
            return;
        }
        if n == self.stream.len() && out.is_empty() {
            std::mem::swap(out, &mut self.stream);
        } else if out.is_empty() && n >= self.stream.len() / 2 {
            // Most of it goes: the buffer itself goes out, what stays is moved to a new one
            // (a copy of all that goes out would also touch as much fresh memory).
            let mut rest = std::mem::take(out);
            rest.extend_from_slice(&self.stream[n..]);
            self.stream.truncate(n);
            std::mem::swap(out, &mut self.stream);
            self.stream = rest;
        } else {
            out.extend_from_slice(&self.stream[..n]);
            self.stream.drain(..n);
        }
        self.stream_base = upto;
    }

    #[inline(always)]
    fn recycle(&mut self, mut frame: Box<Frame>) {
        frame.started = false;
        frame.live = false;
        frame.cursor = 0;
        frame.seen = [0; 4];
        frame.seen_partner = [0; 4];
        frame.arena.clear();
        if frame.arena.capacity() > POOLED_ARENA {
            // Reused frames keep small buffers only: the reorder limit bounds what is held.
            frame.arena = Vec::new();
        }
        frame.attributes.clear();
        frame.parts.clear();
        frame.slots_used = 0;
        frame.pending = None;
        frame.open = None;
        frame.seq = 0;
        frame.written.clear();
        frame.next_free = 0;
        frame.committed = 0;
        if self.pool.len() < 64 {
            self.pool.push(frame);
        }
    }

    /// Bytes held by the conversion.
    fn held(&self) -> usize {
        held_in(&self.stack) + self.stream.len()
    }

    /// [`Converter::token`], with a key in an object (the most common token) handed to
    /// [`Converter::key`] at once.
    #[inline(always)]
    fn dispatch(
        &mut self,
        token: Token<'_>,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        if let Token::Key(key) = token {
            if self.stream_tail.is_none() {
                if let Some(Ctx::Frame(frame)) = self.stack.last() {
                    if frame.pending.is_none() {
                        return self.key(key, out);
                    }
                }
            }
        }
        self.token(token, tokenizer_held, out)
    }

    fn token(
        &mut self,
        token: Token<'_>,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        if self.stream_tail.is_some() {
            return self.stream_part(token, out);
        }
        if matches!(token, Token::StringStart) && !matches!(self.stack.last(), Some(Ctx::Skip(_))) {
            return self.stream_start(tokenizer_held, out);
        }
        match self.stack.last_mut() {
            None | Some(Ctx::Skip(_)) => self.first_or_skipped(token),
            Some(Ctx::Record(_)) => self.record(token, out),
            Some(Ctx::Array(array)) => {
                let member = array.member;
                let index = array.index;
                match token {
                    Token::EndArray => self.end_array(),
                    Token::BeginArray => Err(self.error("an array inside an array")),
                    _ => {
                        if let Some(Ctx::Array(array)) = self.stack.last_mut() {
                            array.index += 1;
                        }
                        self.value(member, token, Some(index))?;
                        self.check_limit_now_and_then(&token, tokenizer_held, out)
                    }
                }
            }
            Some(Ctx::Frame(frame)) => match frame.pending {
                None => match token {
                    Token::Key(key) => self.key(key, out),
                    Token::EndObject => {
                        self.end_frame(out)?;
                        self.check_limit_now_and_then(&token, tokenizer_held, out)
                    }
                    _ => Err(self.error("unexpected JSON token")),
                },
                Some(member) => {
                    // `pending` names the member in errors until its value is complete, or
                    // `open` once it is an array or an object being read.
                    if let Token::String(text) = token {
                        if member.traits.is_single_string()
                            && !member.partner
                            && frame.direct
                            && !bit(&frame.seen_partner, member.element.position())
                        {
                            // The most common member, written here as `direct_primitive`
                            // would.
                            let base = self.stream_base;
                            let written =
                                write_direct_string(frame, member, text, &mut self.stream, base);
                            if let Err(error) = written {
                                return Err(self.direct_error(error));
                            }
                            frame.pending = None;
                            return self.check_limit_now_and_then(&token, tokenizer_held, out);
                        }
                    }
                    if matches!(token, Token::BeginArray) {
                        if !member.traits.is_array() {
                            return Err(self.error("an array for an element that does not repeat"));
                        }
                        frame.pending = None;
                        frame.open = Some(member);
                        self.stack.push(Ctx::Array(ArrayState { member, index: 0 }));
                        return Ok(());
                    }
                    if member.traits.is_array() {
                        return Err(self.error("a repeating element must be a JSON array"));
                    }
                    if matches!(token, Token::BeginObject) {
                        frame.pending = None;
                        frame.open = Some(member);
                        self.value(member, token, None)?;
                    } else {
                        // A primitive, complete with this token.
                        self.value(member, token, None)?;
                        nearest_frame(&mut self.stack).pending = None;
                    }
                    self.check_limit_now_and_then(&token, tokenizer_held, out)
                }
            },
        }
    }

    /// A piece of a string value being streamed, or what follows its last piece.
    #[inline(never)]
    fn stream_part(&mut self, token: Token<'_>, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        let Some(tail) = &self.stream_tail else {
            return Ok(());
        };
        match token {
            Token::StringPart(text) => {
                escape_attribute(text, out).map_err(|message| self.error(message))?;
            }
            _ => {
                // The tokenizer ends a string in pieces with `StringEnd`.
                out.extend_from_slice(tail);
                self.stream_tail = None;
                self.frame().open = None;
            }
        }
        Ok(())
    }

    /// The document's first token, or one inside a value being skipped.
    #[inline(never)]
    fn first_or_skipped(&mut self, token: Token<'_>) -> Result<(), ConvertError> {
        match self.stack.last_mut() {
            None => {
                if !matches!(token, Token::BeginObject) {
                    return Err(self.error("a FHIR resource is a JSON object"));
                }
                self.stack.push(Ctx::Record(Record {
                    role: Role::Root,
                    tokens: Vec::new(),
                    depth: 0,
                    type_next: false,
                }));
            }
            Some(Ctx::Skip(depth)) => {
                match token {
                    Token::BeginObject | Token::BeginArray | Token::StringStart => *depth += 1,
                    Token::EndObject | Token::EndArray | Token::StringEnd => *depth -= 1,
                    _ => {}
                }
                if *depth == 0 {
                    self.stack.pop();
                }
            }
            _ => unreachable!("called with no context or a skipped value on top"),
        }
        Ok(())
    }

    /// A string value larger than the reorder limit: written out as it comes, when it is a
    /// primitive that does not repeat and everything before it can be written out first.
    #[inline(never)]
    fn stream_start(
        &mut self,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        const TOO_LARGE: &str = "a value larger than the reorder limit where it cannot be streamed";
        let Some(Ctx::Frame(frame)) = self.stack.last_mut() else {
            return Err(self.error(TOO_LARGE));
        };
        let Some(member) = frame.pending.take() else {
            return Err(self.error(TOO_LARGE));
        };
        frame.open = Some(member);
        if member.partner
            || member.traits.is_array()
            || member.traits.is_attribute()
            || member.traits.is_xhtml()
            || member.ty.json_kind() != Some(JsonKind::String)
        {
            return Err(self.error(TOO_LARGE));
        }
        self.write_out(true, tokenizer_held, out)?;
        let frame = self.frame();
        if !frame.live {
            // A member before resourceType, or inside a `_name`: not in order yet.
            return Err(self.error(TOO_LARGE));
        }
        debug_assert!(self.stream.is_empty());
        let frame = nearest_frame(&mut self.stack);
        frame.next_free = frame.next_free.max(member.element.position() + 1);
        // A `_name` part read before: its id and extensions.
        let mut id = None;
        let mut children = None;
        if let Some(slot) = frame.slots[..frame.slots_used]
            .iter_mut()
            .position(|s| s.member.element == member.element)
        {
            frame.slots[slot].written = true;
            if let Some(Some(extras)) = frame.slots[slot].extras.first() {
                id = extras.id;
                children = Some(extras.children);
            }
            frame
                .parts
                .retain(|p| !matches!(p.body, Body::Slot(s) if s as usize == slot));
        }
        out.push(b'<');
        write_name(out, &member);
        if let Some(id) = id {
            out.extend_from_slice(b" id=\"");
            out.extend_from_slice(slice(&frame.arena, id));
            out.push(b'"');
        }
        out.extend_from_slice(b" value=\"");
        let mut tail = Vec::new();
        match children {
            Some(children) if children.1 > children.0 => {
                tail.extend_from_slice(b"\">");
                tail.extend_from_slice(slice(&frame.arena, children));
                tail.extend_from_slice(b"</");
                write_name(&mut tail, &member);
                tail.push(b'>');
            }
            _ => tail.extend_from_slice(b"\"/>"),
        }
        self.stream_tail = Some(tail);
        Ok(())
    }

    /// A member's name in an object.
    fn key(&mut self, key: &str, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        let comments = self.comments;
        let mut frame = nearest_frame(&mut self.stack);
        let ty = frame.ty;
        if key == "resourceType" && ty.kind() == TypeKind::Resource {
            return Err(self.error("resourceType twice"));
        }
        if key == "fhir_comments" && comments {
            self.stack.push(Ctx::Skip(0));
            return Ok(());
        }
        let (partner, name) = match key.strip_prefix('_') {
            Some(name) => (true, name),
            None => (false, key),
        };
        let Some((found, traits)) = self.lookups.element(ty, name) else {
            return Err(self.error(&format!("unknown element `{key}` in {}", ty.name())));
        };
        let member = Member {
            element: found.element,
            ty: found.ty,
            partner,
            traits,
        };
        let primitive = matches!(traits.kind, TypeKind::Primitive(_));
        if partner && (!primitive || traits.is_attribute() || traits.is_xhtml()) {
            return Err(self.error(&format!("unknown element `{key}` in {}", ty.name())));
        }
        let position = found.element.position();
        frame.pending = Some(member);
        let seen = if partner {
            &mut frame.seen_partner
        } else {
            &mut frame.seen
        };
        if bit(seen, position) {
            return Err(self.error(&format!("`{key}` twice, or two types of a choice")));
        }
        set_bit(seen, position);
        if frame.live && position <= frame.cursor {
            let held_slot = frame.slots[..frame.slots_used]
                .iter()
                .any(|slot| !slot.written && slot.member.element.position() == position);
            if !(position == frame.cursor && held_slot) {
                return Err(self.error(
                    "comes after elements that XML puts after it, beyond the reorder limit",
                ));
            }
        }
        let attribute = traits.is_attribute();
        if frame.live && frame.started && attribute {
            return Err(
                self.error("comes after elements that XML puts after it, beyond the reorder limit")
            );
        }
        if frame.direct && (position < frame.next_free || (frame.started && attribute)) {
            self.lift(out);
            frame = nearest_frame(&mut self.stack);
        }
        // The two parts of a primitive must agree on the choice type (a slot exists when the
        // other part came first).
        let other = if partner {
            &frame.seen
        } else {
            &frame.seen_partner
        };
        if position >= 256 || bit(other, position) {
            if let Some(slot) = frame.slots[..frame.slots_used]
                .iter()
                .find(|s| s.member.element == found.element)
            {
                if slot.member.ty != found.ty {
                    return Err(self.error("`_name` and `name` of different choice types"));
                }
            }
        }
        Ok(())
    }

    /// A member's value, or an item of its array.
    fn value(
        &mut self,
        member: Member,
        token: Token<'_>,
        index: Option<u32>,
    ) -> Result<(), ConvertError> {
        if member.partner {
            return match token {
                Token::BeginObject => {
                    let slot = self.slot(member);
                    let item = index.unwrap_or(0);
                    let frame = self.new_frame(member.ty, Role::Extras { slot, item });
                    self.stack.push(Ctx::Frame(frame));
                    Ok(())
                }
                Token::Null if index.is_some() => {
                    let slot = self.slot(member) as usize;
                    let extras = &mut self.frame().slots[slot].extras;
                    extras.push(None);
                    Ok(())
                }
                _ => Err(self.error("`_name` must be an object (or null in an array)")),
            };
        }
        match member.traits.kind {
            TypeKind::Primitive(kind) => self.primitive(member, kind, token, index),
            _ if member.traits.is_resource_typed() => {
                if !matches!(token, Token::BeginObject) {
                    return Err(self.error("a resource must be a JSON object"));
                }
                self.prepare_child(member)?;
                self.stack.push(Ctx::Record(Record {
                    role: Role::Element { member },
                    tokens: Vec::new(),
                    depth: 0,
                    type_next: false,
                }));
                Ok(())
            }
            _ => {
                if !matches!(token, Token::BeginObject) {
                    return Err(
                        self.error(&format!("expected a JSON object ({})", member.ty.name()))
                    );
                }
                let direct = self.prepare_child(member)?;
                let frame = self.new_frame_direct(member.ty, Role::Element { member }, direct);
                self.stack.push(Ctx::Frame(frame));
                Ok(())
            }
        }
    }

    /// Before an object is read into the current object: if that writes to the stream, what
    /// XML puts before the object is written first. Whether it writes to the stream.
    #[inline(always)]
    fn prepare_child(&mut self, member: Member) -> Result<bool, ConvertError> {
        let frame = nearest_frame(&mut self.stack);
        if !frame.direct {
            return Ok(false);
        }
        let position = member.element.position();
        if let Err((message, name)) =
            write_direct(frame, position, &mut self.stream, self.stream_base)
        {
            return Err(ConvertError {
                path: format!("{}.{name}", self.path()),
                message: message.to_string(),
            });
        }
        frame.next_free = frame.next_free.max(position + 1);
        Ok(true)
    }

    /// A member came out of order in the object on top, which writes to the stream: what it
    /// wrote there (what was not handed out) is held in its parts again, and from now on it
    /// holds its members until it ends.
    fn lift(&mut self, out: &mut Vec<u8>) {
        let base = self.stream_base;
        let frame = nearest_frame(&mut self.stack);
        let from = if frame.live {
            // What is handed out, or placed at or before the cursor, stays.
            let cursor = frame.cursor;
            frame
                .written
                .iter()
                .filter(|w| usize::from(w.position) <= cursor)
                .fold(frame.committed, |from, w| from.max(w.end))
                .max(base)
        } else {
            frame.start
        };
        debug_assert!(from >= base);
        let mut start = frame.content_start;
        for i in 0..frame.written.len() {
            let w = frame.written[i];
            let s = start.max(from);
            start = w.end;
            if w.end <= from {
                continue;
            }
            let seq = frame.seq;
            frame.seq += 1;
            let body = match w.piece {
                Piece::Xml => {
                    let at = frame.arena.len();
                    frame
                        .arena
                        .extend_from_slice(&self.stream[s - base..w.end - base]);
                    let (a, e) = range(at, frame.arena.len());
                    Body::Xml(a, e)
                }
                Piece::Slot(slot) => {
                    frame.slots[slot as usize].written = false;
                    Body::Slot(slot)
                }
                Piece::Value(member, value_start) => {
                    // The value between `value="` and `"/>`.
                    let at = frame.arena.len();
                    frame
                        .arena
                        .extend_from_slice(&self.stream[value_start - base..w.end - 3 - base]);
                    let value = range(at, frame.arena.len());
                    let slot = add_slot(frame, member);
                    frame.slots[slot as usize].values.push(Some(value));
                    Body::Slot(slot)
                }
            };
            frame.parts.push(Part {
                position: w.position,
                seq,
                body,
            });
        }
        frame.written.clear();
        frame.direct = false;
        let live = frame.live;
        if !live {
            frame.started = false;
        }
        self.stream.truncate(from - base);
        if live {
            // Its objects are written out as they end from now on: the stream goes first.
            let end = self.stream_end();
            self.commit(end, out);
        }
    }

    /// The slot of a primitive member in the current object, made on first use.
    fn slot(&mut self, member: Member) -> u32 {
        let frame = self.frame();
        if let Some(at) = frame.slots[..frame.slots_used]
            .iter()
            .position(|s| s.member.element == member.element)
        {
            return at as u32;
        }
        let at = add_slot(frame, member);
        let seq = frame.seq;
        frame.seq += 1;
        frame.parts.push(Part {
            position: member.element.position() as u16,
            seq,
            body: Body::Slot(at),
        });
        at
    }

    fn primitive(
        &mut self,
        member: Member,
        kind: JsonKind,
        token: Token<'_>,
        index: Option<u32>,
    ) -> Result<(), ConvertError> {
        if index.is_none() && !member.traits.is_attribute() && !member.traits.is_xhtml() {
            let frame = nearest_frame(&mut self.stack);
            if frame.direct && !bit(&frame.seen_partner, member.element.position()) {
                return self.direct_primitive(member, kind, token);
            }
        }
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        let result = self.primitive_text(member, kind, token, index, &mut text);
        if let Ok(true) = result {
            let frame = self.frame();
            if member.traits.is_xhtml() {
                let start = frame.arena.len();
                frame.arena.extend_from_slice(&text);
                let seq = frame.seq;
                frame.seq += 1;
                let (s, e) = range(start, frame.arena.len());
                frame.parts.push(Part {
                    position: member.element.position() as u16,
                    seq,
                    body: Body::Xml(s, e),
                });
            } else if member.traits.is_attribute() {
                let start = frame.arena.len();
                frame.arena.extend_from_slice(&text);
                let (s, e) = range(start, frame.arena.len());
                frame.attributes.push((member.element.name(), s, e));
            } else {
                let slot = self.slot(member) as usize;
                let frame = self.frame();
                let start = frame.arena.len();
                frame.arena.extend_from_slice(&text);
                let value = range(start, frame.arena.len());
                frame.slots[slot].values.push(Some(value));
            }
        }
        self.scratch = text;
        result.map(|_| ())
    }

    /// A primitive that does not repeat, without a `_name` part so far, in an object that
    /// writes to the stream: written there at once (a `_name` part after it moves it back into
    /// a slot).
    fn direct_primitive(
        &mut self,
        member: Member,
        kind: JsonKind,
        token: Token<'_>,
    ) -> Result<(), ConvertError> {
        let position = member.element.position();
        let base = self.stream_base;
        let frame = nearest_frame(&mut self.stack);
        if let (JsonKind::String, Token::String(text)) = (kind, token) {
            // Most primitives: a string, written straight after its name.
            return match write_direct_string(frame, member, text, &mut self.stream, base) {
                Ok(()) => Ok(()),
                Err(error) => Err(self.direct_error(error)),
            };
        }
        if let Err((message, name)) = write_direct(frame, position, &mut self.stream, base) {
            return Err(ConvertError {
                path: format!("{}.{name}", self.path()),
                message: message.to_string(),
            });
        }
        let mut stream = std::mem::take(&mut self.stream);
        stream.push(b'<');
        write_name(&mut stream, &member);
        stream.extend_from_slice(b" value=\"");
        let value_start = base + stream.len();
        let result = self.primitive_text(member, kind, token, None, &mut stream);
        stream.extend_from_slice(b"\"/>");
        self.stream = stream;
        result?;
        let end = self.stream_end();
        nearest_frame(&mut self.stack).wrote(position, Piece::Value(member, value_start), end);
        Ok(())
    }

    /// Writes a primitive's value, escaped for an attribute (the `div`: its XHTML) to `text`;
    /// `false` for a `null` filler, which is recorded here.
    fn primitive_text(
        &mut self,
        member: Member,
        kind: JsonKind,
        token: Token<'_>,
        index: Option<u32>,
        text: &mut Vec<u8>,
    ) -> Result<bool, ConvertError> {
        match (kind, token) {
            (_, Token::Null)
                if index.is_some()
                    && !member.traits.is_attribute()
                    && !member.traits.is_xhtml() =>
            {
                let slot = self.slot(member) as usize;
                self.frame().slots[slot].values.push(None);
                Ok(false)
            }
            (JsonKind::String, Token::String(s)) => {
                if s.is_empty() {
                    return Err(self.error("an empty string (FHIR JSON leaves the element out)"));
                }
                if member.traits.is_xhtml() {
                    if let Err(reason) = self.divs.write(s, text) {
                        return Err(
                            self.error(&format!("the narrative is not FHIR XHTML: {reason}"))
                        );
                    }
                    return Ok(true);
                }
                escape_attribute(s, text).map_err(|message| self.error(message))?;
                Ok(true)
            }
            (JsonKind::Number, Token::Number(n)) => {
                let integer = member.ty.name() != "decimal";
                if integer
                    && !n
                        .bytes()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
                {
                    return Err(self.error(&format!("`{n}` is not an integer")));
                }
                if !integer
                    && self.positional_decimals
                    && n.bytes().any(|b| matches!(b, b'e' | b'E'))
                {
                    positional(n, text).map_err(|message| self.error(message))?;
                } else {
                    text.extend_from_slice(n.as_bytes());
                }
                Ok(true)
            }
            (JsonKind::Boolean, Token::Bool(b)) => {
                text.extend_from_slice(if b { b"true" } else { b"false" });
                Ok(true)
            }
            _ => Err(self.error(&format!(
                "expected a JSON {} for {}",
                match kind {
                    JsonKind::String => "string",
                    JsonKind::Number => "number",
                    JsonKind::Boolean => "boolean",
                },
                member.ty.name()
            ))),
        }
    }

    fn end_array(&mut self) -> Result<(), ConvertError> {
        let Some(Ctx::Array(array)) = self.stack.pop() else {
            unreachable!("called with an array on top");
        };
        if array.index == 0 {
            self.stack.push(Ctx::Array(array));
            return Err(self.error("an empty array (FHIR JSON leaves the element out)"));
        }
        let frame = self.frame();
        frame.open = None;
        Ok(())
    }

    /// The members of a resource before its `resourceType`, kept as tokens.
    #[inline(never)]
    fn record(&mut self, token: Token<'_>, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        let Some(Ctx::Record(record)) = self.stack.last_mut() else {
            unreachable!("called with a record on top");
        };
        if record.type_next {
            let Token::String(name) = token else {
                return Err(self.error("resourceType must be a string"));
            };
            let Some(ty) = self.model.resource(name) else {
                return Err(self.error(&format!(
                    "unknown resource type `{name}` in FHIR {}",
                    self.model.version()
                )));
            };
            let Some(Ctx::Record(record)) = self.stack.pop() else {
                unreachable!("checked above");
            };
            let frame = self.new_frame(ty, record.role);
            self.stack.push(Ctx::Frame(frame));
            // Replay what came before `resourceType`.
            let mut at = 0;
            while let Some((token, next)) = decode_token(&record.tokens, at) {
                at = next;
                self.token(token, 0, out)?;
            }
            return Ok(());
        }
        if matches!(token, Token::StringStart) {
            return Err(self.error("the members before resourceType pass the reorder limit"));
        }
        if record.depth == 0 {
            match token {
                Token::Key("resourceType") => {
                    record.type_next = true;
                    return Ok(());
                }
                Token::EndObject => return Err(self.error("a resource without resourceType")),
                _ => {}
            }
        }
        match token {
            Token::BeginObject | Token::BeginArray => record.depth += 1,
            Token::EndObject | Token::EndArray => record.depth -= 1,
            _ => {}
        }
        encode_token(token, &mut record.tokens);
        if record.tokens.len() > self.limit {
            return Err(self.error("the members before resourceType pass the reorder limit"));
        }
        Ok(())
    }

    /// The end of an object: write it out or hold it in its parent.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        let Some(Ctx::Frame(mut frame)) = self.stack.pop() else {
            unreachable!("called with a frame on top");
        };
        if !frame.started
            && frame.parts.is_empty()
            && frame.attributes.is_empty()
            && frame.ty.kind() != TypeKind::Resource
        {
            self.stack.push(Ctx::Frame(frame));
            return Err(self.error("an empty object"));
        }
        match frame.role {
            Role::Root => {
                let mut stream = std::mem::take(&mut self.stream);
                let result = self.write_all(&mut frame, &mut stream);
                self.stream = stream;
                let end = self.stream_end();
                self.commit(end, out);
                self.done = true;
                self.recycle(frame);
                result
            }
            Role::Element { member, .. } if frame.direct || self.frame().direct => {
                // Its parent writes to the stream: so does it, the rest of it or all of it.
                let position = member.element.position();
                let mut stream = std::mem::take(&mut self.stream);
                let result = self.write_all(&mut frame, &mut stream);
                self.stream = stream;
                let end = self.stream_end();
                let parent = self.frame();
                match parent.written.last_mut() {
                    Some(w)
                        if matches!(w.piece, Piece::Xml) && usize::from(w.position) == position =>
                    {
                        w.end = end;
                    }
                    _ => parent.written.push(Written {
                        position: position as u16,
                        piece: Piece::Xml,
                        end,
                    }),
                }
                parent.next_free = parent.next_free.max(position + 1);
                // An item of the array a live object was reading when it went live (the entries
                // of a large Bundle) is handed out as it ends, all that comes before it being.
                let hand_out = parent.live && position == parent.cursor;
                self.close_member();
                self.recycle(frame);
                if hand_out {
                    let end = self.stream_end();
                    self.commit(end, out);
                }
                result
            }
            Role::Element { member, .. } => {
                let position = member.element.position();
                // Written out as they end: the stream (of the objects above) is handed out.
                let result = if frame.live {
                    debug_assert!(self.stream.is_empty());
                    self.write_all(&mut frame, out)
                } else {
                    let parent = self.frame();
                    if parent.live && position == parent.cursor {
                        debug_assert!(self.stream.is_empty());
                        self.write_all(&mut frame, out)
                    } else {
                        let mut arena = std::mem::take(&mut self.frame().arena);
                        let start = arena.len();
                        let result = self.write_all(&mut frame, &mut arena);
                        let parent = self.frame();
                        parent.arena = arena;
                        let (s, e) = range(start, parent.arena.len());
                        let seq = parent.seq;
                        parent.seq += 1;
                        parent.parts.push(Part {
                            position: position as u16,
                            seq,
                            body: Body::Xml(s, e),
                        });
                        result
                    }
                };
                self.close_member();
                self.recycle(frame);
                result
            }
            Role::Extras { slot, item } => {
                let parent = self.frame();
                let mut id = None;
                for &(name, s, e) in &frame.attributes {
                    if name == "id" {
                        let start = parent.arena.len();
                        parent.arena.extend_from_slice(slice(&frame.arena, (s, e)));
                        id = Some(range(start, parent.arena.len()));
                    }
                }
                let mut children = Vec::new();
                let result = self.write_parts(&mut frame, usize::MAX, &mut children);
                let parent = self.frame();
                let start = parent.arena.len();
                parent.arena.extend_from_slice(&children);
                let children = range(start, parent.arena.len());
                let extras = &mut parent.slots[slot as usize].extras;
                while extras.len() < item as usize {
                    extras.push(None);
                }
                extras.push(Some(Extras { id, children }));
                self.close_member();
                self.recycle(frame);
                result
            }
        }
    }

    /// After an object value: its member is complete, unless it is an item of an array.
    fn close_member(&mut self) {
        if let Some(Ctx::Frame(frame)) = self.stack.last_mut() {
            frame.open = None;
        }
    }

    /// Writes a whole object: its start tag if not yet written, what it holds, its end tag
    /// (for an object that writes to the stream, `out` is the stream).
    #[inline(always)]
    fn write_all(&mut self, frame: &mut Frame, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        if frame.direct {
            if let Err((message, name)) = write_direct(frame, usize::MAX, out, self.stream_base) {
                return Err(ConvertError {
                    path: format!("{}.{name}", self.path()),
                    message: message.to_string(),
                });
            }
        } else {
            start_tag(frame, out);
            self.write_parts(frame, usize::MAX, out)?;
        }
        out.extend_from_slice(b"</");
        match frame.role {
            Role::Element { member, .. } if !member.traits.is_resource_typed() => {
                write_name(out, &member);
            }
            Role::Element { member, .. } => {
                out.extend_from_slice(frame.ty.name().as_bytes());
                out.extend_from_slice(b"></");
                write_name(out, &member);
            }
            _ => out.extend_from_slice(frame.ty.name().as_bytes()),
        }
        out.push(b'>');
        Ok(())
    }
}

/// Why [`write_direct_string`] failed.
enum DirectError {
    /// A held element before the string, named, could not be written.
    Held(&'static str, &'static str),
    /// The string itself.
    Value(&'static str),
}

impl Converter {
    #[cold]
    fn direct_error(&self, error: DirectError) -> ConvertError {
        match error {
            DirectError::Held(message, name) => ConvertError {
                path: format!("{}.{name}", self.path()),
                message: message.to_string(),
            },
            DirectError::Value(message) => self.error(message),
        }
    }
}

/// A string primitive that does not repeat, without a `_name` part so far, in an object that
/// writes to the stream (`base` the position of `stream[0]` in the output): what XML puts
/// before it is written first, then `<name value=".."/>`.
#[inline(always)]
fn write_direct_string(
    frame: &mut Frame,
    member: Member,
    text: &str,
    stream: &mut Vec<u8>,
    base: usize,
) -> Result<(), DirectError> {
    let position = member.element.position();
    if let Err((message, name)) = write_direct(frame, position, stream, base) {
        return Err(DirectError::Held(message, name));
    }
    stream.push(b'<');
    write_name(stream, &member);
    stream.extend_from_slice(b" value=\"");
    let value_start = base + stream.len();
    let escaped = if text.is_empty() {
        Err("an empty string (FHIR JSON leaves the element out)")
    } else {
        escape_attribute(text, stream)
    };
    stream.extend_from_slice(b"\"/>");
    let end = base + stream.len();
    escaped.map_err(DirectError::Value)?;
    frame.wrote(position, Piece::Value(member, value_start), end);
    Ok(())
}

/// A new primitive slot in `frame`, without a part.
fn add_slot(frame: &mut Frame, member: Member) -> u32 {
    let at = frame.slots_used as u32;
    let member = Member {
        partner: false,
        ..member
    };
    // Slots, and their vectors, are reused from object to object.
    if let Some(slot) = frame.slots.get_mut(frame.slots_used) {
        slot.member = member;
        slot.values.clear();
        slot.extras.clear();
        slot.written = false;
    } else {
        frame.slots.push(Slot {
            member,
            values: Vec::new(),
            extras: Vec::new(),
            written: false,
        });
    }
    frame.slots_used += 1;
    at
}

/// The nearest object below the top of the stack.
fn nearest_frame(stack: &mut [Ctx]) -> &mut Frame {
    for ctx in stack.iter_mut().rev() {
        if let Ctx::Frame(frame) = ctx {
            return frame;
        }
    }
    unreachable!("values are read inside an object")
}

/// For an object that writes to the stream: writes its start tag if not yet written, then
/// what it holds that is placed before `before` (all with `usize::MAX`), in definition order,
/// recording each piece in `written`. `base` is the position of `stream[0]` in the output.
/// An error names the element.
#[inline]
fn write_direct(
    frame: &mut Frame,
    before: usize,
    stream: &mut Vec<u8>,
    base: usize,
) -> Result<(), (&'static str, &'static str)> {
    // Most often there is nothing to do.
    if frame.started && frame.parts.is_empty() {
        return Ok(());
    }
    write_direct_held(frame, before, stream, base)
}

/// [`write_direct`] when there is something to write.
fn write_direct_held(
    frame: &mut Frame,
    before: usize,
    stream: &mut Vec<u8>,
    base: usize,
) -> Result<(), (&'static str, &'static str)> {
    if !frame.started {
        start_tag(frame, stream);
        frame.content_start = base + stream.len();
    }
    if frame.parts.is_empty() {
        return Ok(());
    }
    if !frame.parts.is_sorted_by_key(|p| (p.position, p.seq)) {
        frame.parts.sort_by_key(|p| (p.position, p.seq));
    }
    let mut n = 0;
    for part in &frame.parts {
        let position = usize::from(part.position);
        if position >= before {
            break;
        }
        n += 1;
        let piece = match part.body {
            Body::Xml(s, e) => {
                stream.extend_from_slice(slice(&frame.arena, (s, e)));
                Piece::Xml
            }
            Body::Slot(i) => {
                let slot = &mut frame.slots[i as usize];
                slot.written = true;
                write_slot(slot, &frame.arena, stream)
                    .map_err(|message| (message, slot.member.element.name()))?;
                Piece::Slot(i)
            }
        };
        frame.written.push(Written {
            position: part.position,
            piece,
            end: base + stream.len(),
        });
        frame.next_free = frame.next_free.max(position + 1);
    }
    frame.parts.drain(..n);
    Ok(())
}

/// Writes an object's start tag, with its attributes, unless written.
#[inline(always)]
fn start_tag(frame: &mut Frame, out: &mut Vec<u8>) {
    {
        if frame.started {
            return;
        }
        frame.started = true;
        // The type's name only where it is written: most elements are named by their member.
        match frame.role {
            Role::Root => {
                out.extend_from_slice(XML_DECL);
                out.push(b'<');
                out.extend_from_slice(frame.ty.name().as_bytes());
                out.extend_from_slice(b" xmlns=\"");
                out.extend_from_slice(FHIR_NS.as_bytes());
                out.push(b'"');
            }
            Role::Element { member, .. } => {
                out.push(b'<');
                write_name(out, &member);
                if member.traits.is_resource_typed() {
                    out.extend_from_slice(b"><");
                    out.extend_from_slice(frame.ty.name().as_bytes());
                }
            }
            Role::Extras { .. } => unreachable!("extras are never written whole"),
        }
        for &(attribute, s, e) in &frame.attributes {
            out.push(b' ');
            out.extend_from_slice(attribute.as_bytes());
            out.extend_from_slice(b"=\"");
            out.extend_from_slice(slice(&frame.arena, (s, e)));
            out.push(b'"');
        }
        out.push(b'>');
    }
}

impl Converter {
    /// Writes the held parts placed before `before` (all with `usize::MAX`), in definition
    /// order, and drops them. At `before` itself only complete XML (earlier items of the
    /// array being read) is written.
    fn write_parts(
        &mut self,
        frame: &mut Frame,
        before: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        if !frame.parts.is_sorted_by_key(|p| (p.position, p.seq)) {
            frame.parts.sort_by_key(|p| (p.position, p.seq));
        }
        let mut kept = 0;
        let mut last = None;
        for i in 0..frame.parts.len() {
            let part = &frame.parts[i];
            let position = usize::from(part.position);
            let write = match part.body {
                Body::Xml(..) => position <= before,
                Body::Slot(_) => position < before || before == usize::MAX,
            };
            if !write {
                frame.parts.swap(kept, i);
                kept += 1;
                continue;
            }
            last = Some(position);
            match part.body {
                Body::Xml(s, e) => out.extend_from_slice(slice(&frame.arena, (s, e))),
                Body::Slot(slot) => {
                    let slot = &mut frame.slots[slot as usize];
                    slot.written = true;
                    if let Err(message) = write_slot(slot, &frame.arena, out) {
                        return Err(ConvertError {
                            path: format!("{}.{}", self.path(), slot.member.element.name()),
                            message: message.to_string(),
                        });
                    }
                }
            }
        }
        frame.parts.truncate(kept);
        if let Some(last) = last {
            frame.cursor = frame.cursor.max(last);
        }
        if frame.parts.is_empty() {
            frame.arena.clear();
            frame.slots_used = 0;
        } else if kept > 0 && frame.arena.len() > 4096 {
            compact(frame);
        }
        Ok(())
    }

    /// Checks the limit every few KiB of input: what is held grows with the input read.
    #[inline(always)]
    fn check_limit_now_and_then(
        &mut self,
        token: &Token<'_>,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        self.unchecked += match token {
            Token::String(s) | Token::Number(s) => s.len() + 16,
            _ => 16,
        };
        if self.unchecked < CHECK_EVERY {
            return Ok(());
        }
        self.unchecked = 0;
        self.check_limit(tokenizer_held, out)
    }

    /// When more than the reorder limit is held, writes out what is held, in order, from the
    /// root down towards the member being read, until less than the limit is held.
    fn check_limit(
        &mut self,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        if self.held() + tokenizer_held <= self.limit {
            return Ok(());
        }
        self.write_out(false, tokenizer_held, out)?;
        if self.held() + tokenizer_held > self.limit {
            return Err(
                self.error("the document needs more than the reorder limit to be put in XML order")
            );
        }
        Ok(())
    }

    /// Writes out what is held, in order, from the root down towards the member being read:
    /// all the way with `all`, else until less than the limit is held.
    fn write_out(
        &mut self,
        all: bool,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        let mut stack = std::mem::take(&mut self.stack);
        let result = match self.write_out_stream(&mut stack, all, tokenizer_held, out) {
            Ok(Some(first_held)) => {
                self.write_out_held(&mut stack, first_held, all, tokenizer_held, out)
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        self.stack = stack;
        result
    }

    /// Hands out the stream: all of it with `all`, else no more than needed, up to the start
    /// of an object being read (that object keeps its freedom of order); the objects whose
    /// content is handed out become live. Returns where to go on with `write_out_held`: the
    /// first object that holds its members, when the whole stream was not enough.
    fn write_out_stream(
        &mut self,
        stack: &mut [Ctx],
        all: bool,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, ConvertError> {
        let base = self.stream_base;
        let first_held = stack
            .iter()
            .position(|ctx| matches!(ctx, Ctx::Frame(frame) if !frame.direct));
        let direct_end = first_held.unwrap_or(stack.len());
        let held = held_in(stack) + self.stream.len() + tokenizer_held;
        let mut cut = None;
        if !all {
            for ctx in &stack[..(direct_end + 1).min(stack.len())] {
                let Ctx::Frame(frame) = ctx else {
                    continue;
                };
                if frame.start > base && held - (frame.start - base) <= self.limit {
                    cut = Some(frame.start);
                    break;
                }
            }
        }
        let cut = match cut {
            Some(cut) => cut,
            None => {
                if first_held.is_none() {
                    // The object on top writes what it holds, up to the member being read.
                    if let Some(Ctx::Frame(frame)) =
                        stack.iter_mut().rev().find(|c| matches!(c, Ctx::Frame(_)))
                    {
                        if all || !frame.parts.is_empty() {
                            let before = frame.open.map_or(usize::MAX, |m| m.element.position());
                            if let Err((message, name)) =
                                write_direct(frame, before, &mut self.stream, base)
                            {
                                return Err(ConvertError {
                                    path: name.to_string(),
                                    message: message.to_string(),
                                });
                            }
                        }
                    }
                }
                self.stream_end()
            }
        };
        self.commit(cut, out);
        for i in 0..direct_end {
            let has_child = stack[i + 1..]
                .iter()
                .any(|c| matches!(c, Ctx::Frame(_) | Ctx::Record(_)));
            let Ctx::Frame(frame) = &mut stack[i] else {
                continue;
            };
            if frame.start >= cut {
                break;
            }
            frame.live = true;
            frame.committed = cut;
            // What it wrote is handed out: it can no longer be held again.
            frame.written.clear();
            if frame.parts.is_empty() {
                frame.arena.clear();
                frame.attributes.clear();
                frame.slots_used = 0;
            }
            let open = if has_child || all { frame.open } else { None };
            let cursor = open.map_or(frame.next_free.saturating_sub(1), |m| m.element.position());
            frame.cursor = frame.cursor.max(cursor);
        }
        let held = held_in(stack) + self.stream.len() + tokenizer_held;
        Ok(match first_held {
            Some(first) if cut == self.stream_end() && (all || held > self.limit) => Some(first),
            _ => None,
        })
    }

    /// Writes out what objects that hold their members hold, in order, from `first` down
    /// towards the member being read: all the way with `all`, else until less than the limit
    /// is held. The stream is empty.
    fn write_out_held(
        &mut self,
        stack: &mut [Ctx],
        first: usize,
        all: bool,
        tokenizer_held: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        debug_assert!(self.stream.is_empty());
        let mut result = Ok(());
        for i in first..stack.len() {
            let connected = i == 0
                || match &stack[i - 1] {
                    Ctx::Frame(parent) => parent.live,
                    Ctx::Array(_) => {
                        matches!(stack.get(i.wrapping_sub(2)), Some(Ctx::Frame(p)) if p.live)
                    }
                    _ => false,
                };
            let Ctx::Frame(frame) = &mut stack[i] else {
                if matches!(stack[i], Ctx::Array(_)) {
                    continue;
                }
                break;
            };
            if !connected || matches!(frame.role, Role::Extras { .. }) {
                break;
            }
            let before = frame.open.map_or(usize::MAX, |m| m.element.position());
            start_tag(frame, out);
            if let Err(error) = self.write_parts(frame, before, out) {
                result = Err(error);
                break;
            }
            frame.live = true;
            if before != usize::MAX {
                frame.cursor = frame.cursor.max(before);
            }
            // Write out no more than needed: deeper objects keep their freedom of order.
            if !all && held_in(stack) + tokenizer_held <= self.limit {
                break;
            }
        }
        result
    }
}

/// Bytes held by the contexts of a conversion.
fn held_in(stack: &[Ctx]) -> usize {
    stack
        .iter()
        .map(|ctx| match ctx {
            Ctx::Frame(frame) => frame.arena.len() + frame.slots_used * 64 + frame.parts.len() * 12,
            Ctx::Record(record) => record.tokens.len(),
            _ => 0,
        })
        .sum()
}

/// Writes a primitive element (each item of an array): `<name id=".." value="..">` with
/// the extensions of its `_name` part.
fn write_slot(slot: &Slot, arena: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let member = &slot.member;
    let items = if member.traits.is_array() {
        if !slot.values.is_empty()
            && !slot.extras.is_empty()
            && slot.values.len() != slot.extras.len()
        {
            return Err("`name` and `_name` arrays of different lengths");
        }
        slot.values.len().max(slot.extras.len())
    } else {
        1
    };
    for i in 0..items {
        let value = slot.values.get(i).copied().flatten();
        let extras = slot.extras.get(i).copied().flatten();
        if value.is_none() && extras.is_none() {
            return Err("an item null in both `name` and `_name`");
        }
        out.push(b'<');
        write_name(out, member);
        if let Some(Extras { id: Some(id), .. }) = extras {
            out.extend_from_slice(b" id=\"");
            out.extend_from_slice(slice(arena, id));
            out.push(b'"');
        }
        if let Some(value) = value {
            out.extend_from_slice(b" value=\"");
            out.extend_from_slice(slice(arena, value));
            out.push(b'"');
        }
        match extras {
            Some(Extras { children, .. }) if children.1 > children.0 => {
                out.push(b'>');
                out.extend_from_slice(slice(arena, children));
                out.extend_from_slice(b"</");
                write_name(out, member);
                out.push(b'>');
            }
            _ => out.extend_from_slice(b"/>"),
        }
    }
    Ok(())
}

/// Moves what is still held to the front of a frame's arena.
fn compact(frame: &mut Frame) {
    let mut arena = Vec::with_capacity(frame.arena.len() / 2);
    let copy = |arena: &mut Vec<u8>, r: (u32, u32)| {
        let start = arena.len();
        arena.extend_from_slice(slice(&frame.arena, r));
        range(start, arena.len())
    };
    for (_, s, e) in frame.attributes.iter_mut() {
        (*s, *e) = copy(&mut arena, (*s, *e));
    }
    for part in &mut frame.parts {
        match &mut part.body {
            Body::Xml(s, e) => (*s, *e) = copy(&mut arena, (*s, *e)),
            Body::Slot(slot) => {
                let slot = &mut frame.slots[*slot as usize];
                for value in slot.values.iter_mut().flatten() {
                    *value = copy(&mut arena, *value);
                }
                for extras in slot.extras.iter_mut().flatten() {
                    if let Some(id) = &mut extras.id {
                        *id = copy(&mut arena, *id);
                    }
                    extras.children = copy(&mut arena, extras.children);
                }
            }
        }
    }
    frame.arena = arena;
}

/// Escapes a string for an XML attribute value; tab, LF and CR as character references so
/// that attribute-value normalization keeps them. Characters XML 1.0 cannot carry are an
/// error.
#[inline(always)]
fn escape_attribute(s: &str, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    // Most values need nothing: one pass without an early exit, sixteen bytes at a time (the
    // last sixteen again over the ones before), a short value through the table.
    let care = match bytes.len().checked_sub(16) {
        None => bytes
            .iter()
            .fold(false, |care, &b| care | NEEDS_CARE[usize::from(b)]),
        Some(last) => {
            let mut care = u8x16::ZERO;
            let mut at = 0;
            while let Some(block) = bytes.get(at..at + 16) {
                care |= care_block(block);
                at += 16;
            }
            if at < bytes.len() {
                care |= care_block(&bytes[last..]);
            }
            care.to_bitmask() != 0
        }
    };
    if !care {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    escape_attribute_slowly(bytes, out)
}

/// [`escape_attribute`] for a value with something to escape or refuse.
#[inline(never)]
fn escape_attribute_slowly(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = bytes[i..].iter().position(|&b| NEEDS_CARE[usize::from(b)]) {
        i += found;
        let replacement: &[u8] = match bytes[i] {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            0x00..=0x1F => return Err("a control character XML cannot carry"),
            // 0xEF: U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            _ if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return Err("U+FFFE or U+FFFF, which XML cannot carry");
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(replacement);
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
    Ok(())
}

/// The bytes of a block of sixteen that [`escape_attribute`] must look at: all ones there.
#[inline(always)]
fn care_block(block: &[u8]) -> u8x16 {
    let x = u8x16::new(block.try_into().unwrap_or([0; 16]));
    x.min(u8x16::splat(0x1f)).simd_eq(x)
        | x.simd_eq(u8x16::splat(b'&'))
        | x.simd_eq(u8x16::splat(b'<'))
        | x.simd_eq(u8x16::splat(b'>'))
        | x.simd_eq(u8x16::splat(b'"'))
        | x.simd_eq(u8x16::splat(0xEF))
}

/// The bytes [`escape_attribute`] must look at: markup, controls, and the lead byte of
/// U+FFFE and U+FFFF.
static NEEDS_CARE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'&' as usize] = true;
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'"' as usize] = true;
    table[0xEF] = true;
    table
};

/// Spells a JSON number with an exponent positionally, with the same digits: `1.5E-3` ->
/// `0.0015`, `2E2` -> `200`.
fn positional(n: &str, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let (mantissa, exponent) = n.split_once(['e', 'E']).unwrap_or((n, "0"));
    let exponent: i32 = exponent
        .trim_start_matches('+')
        .parse()
        .map_err(|_| "a decimal exponent out of range")?;
    if exponent.abs() > 1000 {
        return Err("a decimal exponent out of range");
    }
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    // The decimal point sits after `point` digits.
    let point = int.len() as i32 + exponent;
    let mut text = String::new();
    if point <= 0 {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', (-point) as usize));
        text.push_str(&digits);
    } else if point as usize >= digits.len() {
        text.push_str(&digits);
        text.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        let (a, b) = digits.split_at(point as usize);
        text.push_str(a);
        text.push('.');
        text.push_str(b);
    }
    let trimmed = text.trim_start_matches('0');
    let text = if trimmed.is_empty() || trimmed.starts_with('.') {
        &text[text.len() - trimmed.len() - 1..]
    } else {
        trimmed
    };
    out.extend_from_slice(sign.as_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

const T_BEGIN_OBJECT: u8 = 0;
const T_END_OBJECT: u8 = 1;
const T_BEGIN_ARRAY: u8 = 2;
const T_END_ARRAY: u8 = 3;
const T_KEY: u8 = 4;
const T_STRING: u8 = 5;
const T_NUMBER: u8 = 6;
const T_TRUE: u8 = 7;
const T_FALSE: u8 = 8;
const T_NULL: u8 = 9;

fn encode_token(token: Token<'_>, out: &mut Vec<u8>) {
    let (tag, text) = match token {
        Token::BeginObject => (T_BEGIN_OBJECT, None),
        Token::EndObject => (T_END_OBJECT, None),
        Token::BeginArray => (T_BEGIN_ARRAY, None),
        Token::EndArray => (T_END_ARRAY, None),
        Token::Key(s) => (T_KEY, Some(s)),
        Token::String(s) => (T_STRING, Some(s)),
        Token::Number(s) => (T_NUMBER, Some(s)),
        Token::Bool(true) => (T_TRUE, None),
        Token::Bool(false) => (T_FALSE, None),
        Token::Null => (T_NULL, None),
        // Values larger than the reorder limit are not kept (`Converter::record`).
        Token::StringStart | Token::StringPart(_) | Token::StringEnd => return,
    };
    out.push(tag);
    if let Some(text) = text {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

fn decode_token(tokens: &[u8], at: usize) -> Option<(Token<'_>, usize)> {
    let tag = *tokens.get(at)?;
    let text = |at: usize| {
        let len =
            u32::from_le_bytes(tokens[at + 1..at + 5].try_into().unwrap_or_default()) as usize;
        let text = std::str::from_utf8(&tokens[at + 5..at + 5 + len]).unwrap_or_default();
        (text, at + 5 + len)
    };
    Some(match tag {
        T_BEGIN_OBJECT => (Token::BeginObject, at + 1),
        T_END_OBJECT => (Token::EndObject, at + 1),
        T_BEGIN_ARRAY => (Token::BeginArray, at + 1),
        T_END_ARRAY => (Token::EndArray, at + 1),
        T_TRUE => (Token::Bool(true), at + 1),
        T_FALSE => (Token::Bool(false), at + 1),
        T_NULL => (Token::Null, at + 1),
        T_KEY => {
            let (text, next) = text(at);
            (Token::Key(text), next)
        }
        T_STRING => {
            let (text, next) = text(at);
            (Token::String(text), next)
        }
        _ => {
            let (text, next) = text(at);
            (Token::Number(text), next)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn convert_with(
        version: FhirVersion,
        json: &str,
        limits: ConvertLimits,
        seed: u64,
    ) -> Result<String, ConvertError> {
        let mut converter = JsonToXml::new(version, limits);
        let mut out = Vec::new();
        let bytes = json.as_bytes();
        let mut rng = Rng(seed);
        let mut at = 0;
        while at < bytes.len() {
            let n = if seed == 0 {
                bytes.len()
            } else {
                1 + rng.below(16)
            };
            let end = (at + n).min(bytes.len());
            converter.feed(&bytes[at..end], &mut out)?;
            at = end;
        }
        converter.finish(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// Converts whole and split at random points; all must agree.
    fn convert(version: FhirVersion, json: &str) -> Result<String, ConvertError> {
        let whole = convert_with(version, json, ConvertLimits::default(), 0);
        for seed in 1..20 {
            assert_eq!(
                convert_with(version, json, ConvertLimits::default(), seed),
                whole,
                "seed {seed}"
            );
        }
        whole
    }

    const DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

    #[test]
    fn a_patient_in_definition_order() {
        let json = r#"{"resourceType":"Patient","name":[{"given":["Peter","James"],"family":"Chalmers"}],
            "active":true,"id":"example","gender":"male","contact":[{"name":{"text":"A & B"},"relationship":[{"text":"x"}]}],
            "multipleBirthInteger":2,"birthDate":"1974-12-25","_birthDate":{"extension":[{"url":"http://x","valueDateTime":"1974-12-25T14:35:45-05:00"}]}}"#;
        let xml = convert(FhirVersion::R4, json).unwrap();
        assert_eq!(
            xml,
            format!(
                "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"example\"/><active value=\"true\"/>\
                 <name><family value=\"Chalmers\"/><given value=\"Peter\"/><given value=\"James\"/></name>\
                 <gender value=\"male\"/><birthDate value=\"1974-12-25\"><extension url=\"http://x\">\
                 <valueDateTime value=\"1974-12-25T14:35:45-05:00\"/></extension></birthDate>\
                 <multipleBirthInteger value=\"2\"/><contact><relationship><text value=\"x\"/></relationship>\
                 <name><text value=\"A &amp; B\"/></name></contact></Patient>"
            )
        );
    }

    #[test]
    fn primitive_arrays_with_nulls_and_extensions() {
        let json = r#"{"resourceType":"Patient","name":[{"_given":[null,{"id":"g2","extension":[{"url":"u","valueCode":"c"}]},{"id":"g3"}],
            "given":["A",null,"C"]}]}"#;
        let xml = convert(FhirVersion::R4, json).unwrap();
        assert!(xml.contains(
            "<name><given value=\"A\"/><given id=\"g2\"><extension url=\"u\"><valueCode value=\"c\"/></extension></given>\
             <given id=\"g3\" value=\"C\"/></name>"
        ), "{xml}");
        let bad =
            r#"{"resourceType":"Patient","name":[{"given":["A",null],"_given":[null,null]}]}"#;
        assert!(convert(FhirVersion::R4, bad)
            .unwrap_err()
            .to_string()
            .contains("null in both"));
        let bad = r#"{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[null]}]}"#;
        assert!(convert(FhirVersion::R4, bad)
            .unwrap_err()
            .to_string()
            .contains("different lengths"));
    }

    #[test]
    fn late_resource_type_and_contained() {
        let json = r#"{"id":"1","contained":[{"id":"p","resourceType":"Practitioner","active":false}],"status":"final",
            "code":{"text":"t"},"valueQuantity":{"value":1.10,"unit":"mg"},"resourceType":"Observation"}"#;
        let xml = convert(FhirVersion::R4, json).unwrap();
        assert_eq!(
            xml,
            format!(
                "{DECL}<Observation xmlns=\"http://hl7.org/fhir\"><id value=\"1\"/><contained><Practitioner>\
                 <id value=\"p\"/><active value=\"false\"/></Practitioner></contained><status value=\"final\"/>\
                 <code><text value=\"t\"/></code><valueQuantity><value value=\"1.10\"/><unit value=\"mg\"/></valueQuantity>\
                 </Observation>"
            )
        );
    }

    #[test]
    fn decimals_keep_their_digits() {
        let json = r#"{"resourceType":"Observation","status":"final","code":{"text":"t"},"valueQuantity":{"value":1E-22}}"#;
        assert!(convert(FhirVersion::R4, json)
            .unwrap()
            .contains("<value value=\"1E-22\"/>"));
        assert!(convert(FhirVersion::Stu3, json)
            .unwrap()
            .contains("<value value=\"0.0000000000000000000001\"/>"));
        for (json, xml) in [
            ("1.5E-3", "0.0015"),
            ("2E2", "200"),
            ("-1.25e1", "-12.5"),
            ("0.5e-1", "0.05"),
            ("0E2", "0"),
        ] {
            let mut out = Vec::new();
            positional(json, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), xml, "{json}");
        }
    }

    #[test]
    fn attributes_and_escaping() {
        let json = "{\"resourceType\":\"Patient\",\"extension\":[{\"valueString\":\"a\\tb\\nc\\r\\\"<\",\"url\":\"http://e\",\"id\":\"x\"}]}";
        let xml = convert(FhirVersion::R4, json).unwrap();
        assert!(xml.contains("<extension url=\"http://e\" id=\"x\"><valueString value=\"a&#9;b&#10;c&#13;&quot;&lt;\"/></extension>"), "{xml}");
        let bad = "{\"resourceType\":\"Patient\",\"id\":\"a\\u0001\"}";
        let error = convert(FhirVersion::R4, bad).unwrap_err();
        assert!(error.to_string().contains("control character"), "{error}");
        assert_eq!(error.path(), "Patient.id");
    }

    #[test]
    fn narrative_div() {
        let json = r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>a &amp; b&nbsp;</p></div>"}}"#;
        let xml = convert(FhirVersion::R4, json).unwrap();
        assert!(xml.contains("<text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\"><p>a &amp; b\u{a0}</p></div></text>"), "{xml}");
        let bad =
            r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div><p>a</div>"}}"#;
        let error = convert(FhirVersion::R4, bad).unwrap_err();
        assert!(error.to_string().contains("not FHIR XHTML"), "{error}");
        assert_eq!(error.path(), "Patient.text.div");
    }

    #[test]
    fn errors_name_the_element() {
        for (json, path, message) in [
            (
                r#"{"resourceType":"Patient","foo":1}"#,
                "Patient",
                "unknown element `foo`",
            ),
            (
                r#"{"resourceType":"Patient","active":"yes"}"#,
                "Patient.active",
                "expected a JSON boolean",
            ),
            (
                r#"{"resourceType":"Patient","name":{"text":"x"}}"#,
                "Patient.name",
                "must be a JSON array",
            ),
            (
                r#"{"resourceType":"Patient","gender":["male"]}"#,
                "Patient.gender",
                "does not repeat",
            ),
            (
                r#"{"resourceType":"Nobody"}"#,
                "",
                "unknown resource type `Nobody`",
            ),
            (
                r#"{"resourceType":"Patient","name":[]}"#,
                "Patient.name",
                "empty array",
            ),
            (
                r#"{"resourceType":"Patient","gender":""}"#,
                "Patient.gender",
                "empty string",
            ),
            (
                r#"{"resourceType":"Patient","gender":null}"#,
                "Patient.gender",
                "expected a JSON string",
            ),
            (
                r#"{"resourceType":"Patient","id":"a","id":"b"}"#,
                "Patient.id",
                "twice",
            ),
            (r#"{"id":"a"}"#, "", "without resourceType"),
            (
                r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
                "Patient.multipleBirthInteger",
                "not an integer",
            ),
            (
                r#"{"resourceType":"Patient","_gender":"x"}"#,
                "Patient._gender",
                "must be an object",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"t"},"valueString":"x","_valueBoolean":{"id":"a"}}"#,
                "Observation._valueBoolean",
                "different choice types",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"t"},"_valueBoolean":{"id":"a"},"valueString":"x"}"#,
                "Observation.valueString",
                "different choice types",
            ),
        ] {
            let error = convert(FhirVersion::R4, json).unwrap_err();
            assert!(error.to_string().contains(message), "{json}: {error}");
            assert_eq!(error.path(), path, "{json}: {error}");
        }
    }

    #[test]
    fn a_bundle_streams_entry_by_entry_past_the_limit() {
        let entry = r#"{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","id":"p","active":true}}"#;
        let entries = vec![entry; 200].join(",");
        let json = format!(
            r#"{{"resourceType":"Bundle","type":"searchset","total":200,"entry":[{entries}]}}"#
        );
        let limits = ConvertLimits {
            reorder_limit: 1024,
            max_depth: 64,
        };
        let small = convert_with(FhirVersion::R4, &json, limits, 3).unwrap();
        assert_eq!(small, convert(FhirVersion::R4, &json).unwrap());
        assert_eq!(
            small
                .matches(
                    "<entry><fullUrl value=\"urn:uuid:1\"/><resource><Patient><id value=\"p\"/>"
                )
                .count(),
            200
        );
        // Output comes while the input is read, not at the end.
        let mut converter = JsonToXml::new(FhirVersion::R4, limits);
        let mut out = Vec::new();
        converter
            .feed(&json.as_bytes()[..json.len() / 2], &mut out)
            .unwrap();
        assert!(out.len() > small.len() / 4, "{}", out.len());
        // An element that XML puts before the entries, after the limit: an error, not a
        // document without it.
        let late = format!(
            r#"{{"resourceType":"Bundle","type":"searchset","entry":[{entries}],"total":200}}"#
        );
        let error = convert_with(FhirVersion::R4, &late, limits, 3).unwrap_err();
        assert!(error.to_string().contains("reorder limit"), "{error}");
        assert_eq!(convert(FhirVersion::R4, &late).unwrap(), small);
    }

    /// Converts every `*.json` of `$FHIR_EXAMPLES_DIR` (FHIR release `$FHIR_RELEASE`: dstu2,
    /// stu3, r4, r4b, r5) into `$FHIR_XML_OUT/<name>.xml`, split at random points, and prints
    /// what could not be converted; `scripts/fhir-examples.sh` runs it on the official example
    /// packages and validates the output with xmllint.
    #[test]
    #[ignore = "needs the official example packages (scripts/fhir-examples.sh)"]
    fn convert_example_directory() {
        let dir = std::env::var("FHIR_EXAMPLES_DIR").expect("FHIR_EXAMPLES_DIR");
        let out_dir = std::env::var("FHIR_XML_OUT").expect("FHIR_XML_OUT");
        let version = release(&std::env::var("FHIR_RELEASE").expect("FHIR_RELEASE"));
        let mut failures = Vec::new();
        let mut count = 0;
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let json = std::fs::read(&path).unwrap();
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else {
                continue;
            };
            if value.get("resourceType").is_none() {
                continue; // package.json, .index.json
            }
            count += 1;
            let json = String::from_utf8(json).unwrap();
            let limits = match std::env::var("FHIR_REORDER_LIMIT") {
                Ok(limit) => ConvertLimits {
                    reorder_limit: limit.parse().unwrap(),
                    ..ConvertLimits::default()
                },
                Err(_) => ConvertLimits::default(),
            };
            match convert_with(version, &json, limits, count) {
                Ok(xml) => {
                    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                    std::fs::write(format!("{out_dir}/{name}.xml"), xml).unwrap();
                }
                Err(error) => failures.push(format!("{}: {error}", path.display())),
            }
        }
        for failure in &failures {
            println!("not converted: {failure}");
        }
        println!("{count} examples, {} not converted", failures.len());
    }

    pub(super) fn release(name: &str) -> FhirVersion {
        match name {
            "dstu2" => FhirVersion::Dstu2,
            "stu3" => FhirVersion::Stu3,
            "r4" => FhirVersion::R4,
            "r4b" => FhirVersion::R4B,
            "r5" => FhirVersion::R5,
            _ => panic!("unknown release {name}"),
        }
    }

    /// Converts every official example committed for a release, whole and split at random
    /// points (which must give the same bytes), and validates the XML with xmllint against
    /// the release's official schema (R4B, which has none, is checked to be well-formed).
    fn official_examples(release_dir: &str, version: FhirVersion, schema: Option<&str>) {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let dir = format!("{fixtures}/examples/{release_dir}");
        let out_dir =
            std::env::temp_dir().join(format!("fhir-xml-{release_dir}-{}", std::process::id()));
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        let mut files = Vec::new();
        for (seed, path) in paths.iter().enumerate() {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let json = std::fs::read_to_string(path).unwrap();
            let whole = convert_with(version, &json, ConvertLimits::default(), 0)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for round in 0..3 {
                let split = convert_with(
                    version,
                    &json,
                    ConvertLimits::default(),
                    1 + seed as u64 * 3 + round,
                );
                assert_eq!(split.as_ref(), Ok(&whole), "{}", path.display());
            }
            let mut reader = quick_xml::Reader::from_str(&whole);
            loop {
                match reader.read_event() {
                    Ok(quick_xml::events::Event::Eof) => break,
                    Ok(_) => {}
                    Err(e) => panic!("{}: not well-formed: {e}", path.display()),
                }
            }
            let xml_path = out_dir.join(path.with_extension("xml").file_name().unwrap());
            std::fs::write(&xml_path, whole).unwrap();
            files.push(xml_path);
        }
        assert!(files.len() > 100, "{}", files.len());
        if let Some(schema) = schema {
            assert_schema_valid(schema, &files);
        }
        std::fs::remove_dir_all(&out_dir).unwrap();
    }

    /// Validates `files` with xmllint against the official schema of a release.
    fn assert_schema_valid(schema: &str, files: &[std::path::PathBuf]) {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let output = std::process::Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(format!("{fixtures}/xsd/{schema}/fhir-single.xsd"))
            .args(files)
            .output()
            .expect("xmllint (Debian/Ubuntu: apt-get install libxml2-utils)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.ends_with(" validates"))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        assert_eq!(stderr.lines().count(), files.len());
    }

    #[test]
    fn official_examples_stu3() {
        official_examples("stu3", FhirVersion::Stu3, Some("stu3"));
    }

    #[test]
    fn official_examples_r4() {
        official_examples("r4", FhirVersion::R4, Some("r4"));
    }

    #[test]
    fn official_examples_r4b() {
        official_examples("r4b", FhirVersion::R4B, None);
    }

    #[test]
    fn official_examples_r5() {
        official_examples("r5", FhirVersion::R5, Some("r5"));
    }

    #[test]
    fn memory_stays_bounded_on_a_large_bundle() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
        let mut resources = Vec::new();
        for name in [
            "Patient-ihe-pcd.json",
            "Observation-eye-color.json",
            "Binary-f006.json",
        ] {
            resources.push(std::fs::read_to_string(format!("{dir}/{name}")).unwrap());
        }
        let mut json = String::from(r#"{"resourceType":"Bundle","type":"searchset","entry":["#);
        let mut i = 0;
        while json.len() < 8 << 20 {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!(
                r#"{{"fullUrl":"urn:x:{i}","resource":{}}}"#,
                resources[i % resources.len()]
            ));
            i += 1;
        }
        json.push_str("]}");
        let limit = 64 << 10;
        let mut converter = JsonToXml::new(
            FhirVersion::R4,
            ConvertLimits {
                reorder_limit: limit,
                max_depth: 64,
            },
        );
        let mut out = Vec::new();
        let mut xml = Vec::new();
        let mut most = 0;
        for chunk in json.as_bytes().chunks(8 << 10) {
            converter.feed(chunk, &mut out).unwrap();
            most = most.max(converter.converter.held() + converter.tokenizer.held());
            xml.extend_from_slice(&out);
            out.clear();
        }
        converter.finish(&mut xml).unwrap();
        assert!(
            most <= limit + 2 * CHECK_EVERY,
            "held {most} bytes with a limit of {limit}"
        );
        let whole = convert_with(
            FhirVersion::R4,
            &json,
            ConvertLimits {
                reorder_limit: 64 << 20,
                max_depth: 64,
            },
            0,
        )
        .unwrap();
        assert_eq!(String::from_utf8(xml).unwrap(), whole);
        assert_eq!(whole.matches("<entry>").count(), i);
    }

    #[test]
    fn dstu2_binary_and_comments() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dstu2");
        let json = std::fs::read_to_string(format!("{fixtures}/binary-f006.json")).unwrap();
        let xml = convert(FhirVersion::Dstu2, &json).unwrap();
        assert!(
            xml.contains("<contentType value=\"image/jpeg\"/><content value=\"/9j/"),
            "{}",
            &xml[..200]
        );
        let path = std::env::temp_dir().join(format!("fhir-xml-dstu2-{}.xml", std::process::id()));
        std::fs::write(&path, &xml).unwrap();
        assert_schema_valid("dstu2", std::slice::from_ref(&path));
        std::fs::remove_file(&path).unwrap();
        let json = r#"{"resourceType":"Patient","fhir_comments":["a comment"],"id":"1","name":[{"fhir_comments":["x"],"family":["F"]}]}"#;
        assert_eq!(
            convert(FhirVersion::Dstu2, json).unwrap(),
            format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"1\"/><name><family value=\"F\"/></name></Patient>")
        );
        assert!(convert(FhirVersion::R4, json)
            .unwrap_err()
            .to_string()
            .contains("unknown element `fhir_comments`"));
        // DSTU2 `Binary.content` is R4's `data`.
        let r4 = r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGk="}"#;
        assert!(convert(FhirVersion::Dstu2, r4)
            .unwrap_err()
            .to_string()
            .contains("unknown element `data`"));
    }

    /// Mangled FHIR JSON (bytes changed, dropped, repeated; split anywhere): errors, never a
    /// panic, and never XML after an error.
    #[test]
    fn mangled_json_gives_errors_not_panics() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
        let sources: Vec<Vec<u8>> = [
            "Patient-ihe-pcd.json",
            "Observation-eye-color.json",
            "QuestionnaireResponse-gcs.json",
        ]
        .iter()
        .map(|name| std::fs::read(format!("{dir}/{name}")).unwrap())
        .collect();
        let noise = b"{}[]\",:0-1.5e9truefalsenull_ \\u00\n<&>valueString";
        let mut rng = Rng(11);
        let mut errors = 0;
        for round in 0..3000 {
            let mut json = sources[round % sources.len()].clone();
            for _ in 0..1 + rng.below(4) {
                if json.is_empty() {
                    break;
                }
                let at = rng.below(json.len());
                match rng.below(4) {
                    0 => json[at] = noise[rng.below(noise.len())],
                    1 => {
                        json.remove(at);
                    }
                    2 => json.insert(at, noise[rng.below(noise.len())]),
                    _ => json.truncate(at),
                }
            }
            let limits = ConvertLimits {
                reorder_limit: 256 + rng.below(4096),
                max_depth: 4 + rng.below(40),
            };
            let mut converter = JsonToXml::new(FhirVersion::R4, limits);
            let mut out = Vec::new();
            let mut result = Ok(());
            let mut at = 0;
            while at < json.len() && result.is_ok() {
                let end = (at + 1 + rng.below(64)).min(json.len());
                result = converter.feed(&json[at..end], &mut out);
                at = end;
            }
            if result.is_ok() {
                result = converter.finish(&mut out);
            }
            if let Err(error) = result {
                errors += 1;
                assert!(!error.to_string().is_empty());
                let before = out.len();
                assert!(converter.feed(b"{}", &mut out).is_err());
                assert!(converter.finish(&mut out).is_err());
                assert_eq!(out.len(), before);
            }
        }
        assert!(errors > 1000, "{errors}");
    }

    #[test]
    fn a_value_larger_than_the_limit_streams() {
        // Base64 with JSON-escaped slashes and a non-ASCII string, both larger than the limit.
        let data: String = (0..3000)
            .map(|i| ["QUJD", "ZA\\/+", "\\u00e9t\\u00e9"][i % 3])
            .collect();
        let expected_data: String = (0..3000)
            .map(|i| ["QUJD", "ZA/+", "\u{e9}t\u{e9}"][i % 3])
            .collect();
        for (partner, tail) in [
            ("", "/>".to_string()),
            (
                r#""_data":{"id":"d","extension":[{"url":"u","valueBoolean":true}]},"#,
                "><extension url=\"u\"><valueBoolean value=\"true\"/></extension></data>"
                    .to_string(),
            ),
        ] {
            let binary = format!(
                r#"{{"resourceType":"Binary","id":"b","contentType":"text/plain",{partner}"data":"{data}","meta":{{"versionId":"1"}}}}"#
            );
            let json = format!(
                r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{binary}}},{{"fullUrl":"urn:x","resource":{binary}}}],"total":2}}"#
            );
            let whole = convert_with(
                FhirVersion::R4,
                &json,
                ConvertLimits {
                    reorder_limit: 1 << 20,
                    max_depth: 64,
                },
                0,
            )
            .unwrap();
            let id = if partner.is_empty() { "" } else { " id=\"d\"" };
            assert!(
                whole.contains(&format!(
                    "<contentType value=\"text/plain\"/><data{id} value=\"{expected_data}\"{tail}"
                )),
                "{}",
                &whole[..300]
            );
            // `total` comes after the entries and `meta` after `data`, past the limit: errors,
            // not documents without them.
            let small = ConvertLimits {
                reorder_limit: 4096,
                max_depth: 64,
            };
            let error = convert_with(FhirVersion::R4, &json, small, 1).unwrap_err();
            assert_eq!(
                error.path(),
                "Bundle.entry[0].resource.Binary.meta",
                "{error}"
            );
            let in_order = json
                .replace(r#","meta":{"versionId":"1"}"#, "")
                .replace(r#","total":2"#, "")
                .replace(r#""id":"b","#, r#""id":"b","meta":{"versionId":"1"},"#)
                .replace(r#""type":"searchset","#, r#""type":"searchset","total":2,"#);
            let whole = convert_with(
                FhirVersion::R4,
                &in_order,
                ConvertLimits {
                    reorder_limit: 1 << 20,
                    max_depth: 64,
                },
                0,
            )
            .unwrap();
            for seed in 1..30 {
                assert_eq!(
                    convert_with(FhirVersion::R4, &in_order, small, seed).as_ref(),
                    Ok(&whole),
                    "seed {seed}"
                );
            }
        }
        // Where it cannot stream: before resourceType, in an array, in an attribute.
        let late =
            format!(r#"{{"contentType":"text/plain","data":"{data}","resourceType":"Binary"}}"#);
        let small = ConvertLimits {
            reorder_limit: 4096,
            max_depth: 64,
        };
        assert!(convert_with(FhirVersion::R4, &late, small, 0)
            .unwrap_err()
            .to_string()
            .contains("reorder limit"));
        let array = format!(r#"{{"resourceType":"Patient","name":[{{"given":["{data}"]}}]}}"#);
        assert!(convert_with(FhirVersion::R4, &array, small, 0)
            .unwrap_err()
            .to_string()
            .contains("cannot be streamed"));
    }

    /// Writes `value` as JSON with the members of each object in a random order.
    fn shuffled(value: &serde_json::Value, rng: &mut Rng, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                for i in (1..members.len()).rev() {
                    members.swap(i, rng.below(i + 1));
                }
                out.push('{');
                for (i, (key, value)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(key).unwrap());
                    out.push(':');
                    shuffled(value, rng, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    shuffled(item, rng, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    /// Members in any order give the same XML: within the reorder limit always, with a small
    /// limit the same XML or an error, never other XML. The official examples, their members
    /// shuffled at every level, in a Bundle too, split at random points.
    #[test]
    fn any_member_order_gives_the_same_xml() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut rng = Rng(29);
        let mut checked = 0;
        let mut limited = 0;
        for (n, path) in paths.iter().enumerate() {
            let mut value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            if n % 4 == 0 {
                value = serde_json::json!({
                    "resourceType": "Bundle", "type": "searchset", "total": 3,
                    "entry": [{"fullUrl": "urn:x:1", "resource": value.clone()},
                              {"resource": value.clone(), "search": {"mode": "match"}},
                              {"resource": value}]
                });
            }
            let mut reference = None;
            for round in 0..4 {
                let mut json = String::new();
                shuffled(&value, &mut rng, &mut json);
                let xml = convert_with(FhirVersion::R4, &json, ConvertLimits::default(), round)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let reference = reference.get_or_insert_with(|| xml.clone());
                assert_eq!(&xml, reference, "{} round {round}", path.display());
                checked += 1;
                let limits = ConvertLimits {
                    reorder_limit: 512 + rng.below(4096),
                    max_depth: 64,
                };
                match convert_with(FhirVersion::R4, &json, limits, round + 7) {
                    Ok(xml) => assert_eq!(&xml, reference, "{} round {round}", path.display()),
                    Err(error) => {
                        assert!(
                            error.to_string().contains("reorder limit"),
                            "{}: {error}",
                            path.display()
                        );
                        limited += 1;
                    }
                }
            }
        }
        assert!(checked > 400 && limited > 50, "{checked} {limited}");
    }

    /// The Binary and OperationOutcome writers of `super` and this converter write the same
    /// bytes for the official Binary and OperationOutcome examples.
    #[test]
    fn same_xml_as_the_binary_and_operation_outcome_writers() {
        use crate::scan::PayloadElement;
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        for (dir, version) in [
            ("dstu2", FhirVersion::Dstu2),
            ("stu3", FhirVersion::Stu3),
            ("r4", FhirVersion::R4),
            ("r4b", FhirVersion::R4B),
            ("r5", FhirVersion::R5),
        ] {
            for name in ["binary-example.json", "binary-f006.json"] {
                let json = std::fs::read_to_string(format!("{fixtures}/{dir}/{name}")).unwrap();
                let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                let mut map = value.as_object().unwrap().clone();
                let payload = [PayloadElement::Data, PayloadElement::Content]
                    .into_iter()
                    .find(|p| map.contains_key(p.name()))
                    .unwrap();
                let text = map.remove(payload.name()).unwrap();
                let mut old = Vec::new();
                super::super::binary_prefix(&map, Some(payload), version, &mut old).unwrap();
                super::super::escape_payload_text(text.as_str().unwrap().as_bytes(), &mut old);
                super::super::binary_suffix(&map, payload, version, &mut old).unwrap();
                let new = convert(version, &json).unwrap();
                assert_eq!(new, String::from_utf8(old).unwrap(), "{dir}/{name}");
            }
        }
        let mut compared = 0;
        for (dir, version) in [
            ("stu3", FhirVersion::Stu3),
            ("r4", FhirVersion::R4),
            ("r4b", FhirVersion::R4B),
            ("r5", FhirVersion::R5),
        ] {
            for entry in std::fs::read_dir(format!("{fixtures}/examples/{dir}")).unwrap() {
                let path = entry.unwrap().path();
                let json = std::fs::read_to_string(&path).unwrap();
                let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                if value["resourceType"] != "OperationOutcome" {
                    continue;
                }
                let mut old = Vec::new();
                super::super::operation_outcome(&value, version, &mut old).unwrap();
                assert_eq!(
                    convert(version, &json).unwrap(),
                    String::from_utf8(old).unwrap(),
                    "{}",
                    path.display()
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 4);
    }
}

#[cfg(test)]
mod memory {
    use super::*;

    /// Converts a generated searchset Bundle of `$BUNDLE_MIB` MiB (default 64) of official
    /// examples, fed in 16 KiB pieces without ever holding it, for measuring the resident
    /// memory from outside: `/usr/bin/time -f %M <test binary> memory --ignored`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn generated_bundle() {
        let mib: usize = std::env::var("BUNDLE_MIB").map_or(64, |m| m.parse().unwrap());
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
        let mut entries = Vec::new();
        for name in [
            "Patient-ihe-pcd.json",
            "Observation-eye-color.json",
            "Binary-f006.json",
            "Questionnaire-f201.json",
        ] {
            let r = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
            entries.push(format!(
                r#"{{"fullUrl":"urn:x","resource":{r},"search":{{"mode":"match"}}}},"#
            ));
        }
        let mut c = JsonToXml::new(FhirVersion::R4, ConvertLimits::default());
        let mut out = Vec::new();
        c.feed(
            br#"{"resourceType":"Bundle","type":"searchset","entry":["#,
            &mut out,
        )
        .unwrap();
        let mut fed = 0;
        let mut xml = 0usize;
        let mut i = 0;
        while fed < mib << 20 {
            let e = entries[i % entries.len()].as_bytes();
            for chunk in e.chunks(16 << 10) {
                c.feed(chunk, &mut out).unwrap();
                xml += out.len();
                out.clear();
            }
            fed += e.len();
            i += 1;
        }
        let last = entries[0].trim_end_matches(',');
        c.feed(last.as_bytes(), &mut out).unwrap();
        c.feed(b"]}", &mut out).unwrap();
        c.finish(&mut out).unwrap();
        xml += out.len();
        println!(
            "{} MiB JSON, {} entries -> {} MiB XML",
            fed >> 20,
            i + 1,
            xml >> 20
        );
    }
}
