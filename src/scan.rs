//! The streaming Binary reader: an incremental JSON scanner specialised for one FHIR Binary.
//!
//! The scanner is fed the inner body's frames as they come, split anywhere, and walks the
//! top-level object. Every member except the payload (`data` in R4+, `content` in DSTU2/STU3) is
//! either captured (the Binary's own elements, bounded by a cap, kept as their JSON text; see
//! [`Members`]) or skipped after full validation. The payload string is never held: its text
//! goes, piece by piece, to the streaming base64 decoder, to an output buffer as unescaped text
//! (for FHIR XML), or is skipped. The caller chooses which when the scanner pauses at the start
//! of the payload.
//!
//! The scanner is a full JSON validator for what it reads (strings, escapes, surrogates, UTF-8,
//! numbers, literals, nesting with a depth cap) so that an invalid body never yields a valid-
//! looking document. It keeps no recursion: nesting is an explicit, capped stack.

use std::fmt;

use bytes::BytesMut;
use memchr::memchr2;

use crate::decode::Base64Decoder;
use crate::FhirVersion;

mod compact;
mod members;
mod nesting;
mod plain;

use compact::Compactor;
use members::CAPTURED;
pub(crate) use members::{Field, Member, Members};
use nesting::Nesting;
use plain::{plain_ascii_prefix, plain_prefix, Gathered};

/// Which element carries the payload.
///
/// The XML element name is the JSON key the payload came from: `data` (R4 and later) or
/// `content` (DSTU2, STU3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadElement {
    /// `Binary.data`, R4 and later.
    Data,
    /// `Binary.content`, DSTU2 and STU3.
    Content,
}

impl PayloadElement {
    /// The element name, which is also the JSON key.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Content => "content",
        }
    }

    /// The JSON key of the payload's primitive extension (`_data` / `_content`).
    pub(crate) fn extension_key(self) -> &'static str {
        match self {
            Self::Data => "_data",
            Self::Content => "_content",
        }
    }

    /// The element the schema of `version` names the payload with.
    pub(crate) fn for_version(version: FhirVersion) -> Self {
        match version {
            FhirVersion::Dstu2 | FhirVersion::Stu3 => Self::Content,
            FhirVersion::R4 | FhirVersion::R4B | FhirVersion::R5 => Self::Data,
        }
    }
}

/// What the scanner does with the payload string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadMode {
    /// Stop at the start of the payload and report [`Event::PayloadStart`]; the caller then picks
    /// another mode.
    Pause,
    /// Find the end of the string without looking at its content (probing before a decision; the
    /// content is validated when the held frames are read again).
    Skip,
    /// Decode the base64 into the output buffer.
    Decode,
    /// Validate the base64 and count the decoded bytes, writing nothing.
    Validate,
    /// Write the base64 text, JSON escapes undone, into the output buffer as it may stand in an
    /// XML attribute value, and validate it.
    Text,
}

/// What a call to [`Scanner::feed`] stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The whole input was consumed; more is needed.
    NeedMore,
    /// A top-level member was completed (its value is now available).
    Member,
    /// The payload string starts right after the consumed input, and the mode is
    /// [`PayloadMode::Pause`].
    PayloadStart,
    /// The top-level object is closed. Only whitespace may follow.
    End,
}

/// Bounds on what the scanner keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanLimits {
    /// Deepest nesting of objects and arrays, the top-level object included.
    pub(crate) max_depth: usize,
    /// Largest total size, in bytes of JSON text, of the captured members (id, meta, ...).
    pub(crate) max_metadata: usize,
}

/// The body is not a valid FHIR Binary JSON document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanError(
    /// Boxed, so that the scanner's results fit in two registers: the scanner returns one for
    /// every member, and errors are rare.
    Box<Located>,
);

/// What was wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Located {
    message: String,
    offset: u64,
}

impl ScanError {
    /// An error found at `offset` of the body.
    pub(crate) fn new(message: impl Into<String>, offset: u64) -> Self {
        ScanError(Box::new(Located {
            message: message.into(),
            offset,
        }))
    }

    /// What was wrong, without the position.
    pub(crate) fn message(&self) -> &str {
        &self.0.message
    }

    /// Offset in the body of the byte where the problem was found.
    pub(crate) fn offset(&self) -> u64 {
        self.0.offset
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (at byte {} of the body)",
            self.message(),
            self.offset()
        )
    }
}

impl std::error::Error for ScanError {}

/// Gathered payload text is decoded once it reaches this size.
const UNESCAPED_FLUSH: usize = 16 * 1024;

/// Captured texts longer than this are parsed once to check their numbers' range.
const LONG_CAPTURE: usize = 300;

/// Captured texts nested deeper than this are parsed once to check serde_json's recursion
/// limit.
const DEEP_CAPTURE: usize = 64;

/// Longest member name worth collecting; longer names are none of the captured ones.
const MAX_KEY: usize = 32;

/// The bit of `resourceType` in `Scanner::seen`: it is first in [`CAPTURED`].
const RESOURCE_TYPE_SEEN: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Skip,
    Capture,
    Payload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Start,
    KeyOrEnd,
    Key,
    InKey,
    Colon,
    Value,
    Nested,
    Payload,
    AfterMember,
    End,
}

/// The state of the generic value machine used for captured and skipped values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum G {
    Value,
    ArrValueOrEnd,
    Str { key: bool },
    Num(Num),
    Lit { word: &'static [u8], at: u8 },
    AfterValue,
    ObjKeyOrEnd,
    ObjKey,
    Colon,
}

/// Where a number stands in the JSON number grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn is_complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }

    /// The state after `b`, or None when `b` does not continue the number.
    fn next(self, b: u8) -> Option<Num> {
        let digit = b.is_ascii_digit();
        match (self, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int),
            (Num::Int, _) if digit => Some(Num::Int),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
            (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
            (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Some(Num::ExpDigits),
            _ => None,
        }
    }
}

/// Escape-sequence state inside a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex { n: u8, cp: u32 },
}

/// Incremental UTF-8 validation across frame boundaries.
#[derive(Clone, Copy, Debug, Default)]
struct Utf8Carry {
    buf: [u8; 4],
    len: u8,
}

impl Utf8Carry {
    fn feed(&mut self, mut seg: &[u8]) -> Result<(), ()> {
        if self.len > 0 {
            let need = match self.buf[0] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Err(()),
            };
            while usize::from(self.len) < need && !seg.is_empty() {
                self.buf[usize::from(self.len)] = seg[0];
                self.len += 1;
                seg = &seg[1..];
            }
            match std::str::from_utf8(&self.buf[..usize::from(self.len)]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() && seg.is_empty() => return Ok(()),
                Err(_) => return Err(()),
            }
        }
        match std::str::from_utf8(seg) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &seg[e.valid_up_to()..];
                self.buf[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The incremental scanner. See the module docs.
#[derive(Debug)]
pub(crate) struct Scanner {
    limits: ScanLimits,
    st: St,
    /// Offset of the next byte to be consumed, for error messages.
    pos: u64,

    // Strings (keys, captured and skipped values).
    esc: Esc,
    high_surrogate: Option<u32>,
    utf8: Utf8Carry,

    // The member being read.
    key: [u8; MAX_KEY],
    key_len: usize,
    key_too_long: bool,
    route: Route,
    /// Where the captured member goes in [`Members`].
    slot: usize,
    /// Where its text starts in [`Members`].
    capture_start: usize,
    /// Whether its text holds what the scanner does not check but `serde_json` refuses: a
    /// number out of range, nesting past its recursion limit. Such a member is parsed once.
    capture_unchecked: bool,
    captured_total: usize,

    // The generic value machine.
    g: G,
    stack: Nesting,
    /// The [`Field`] whose name was just read in the captured member, its value to come.
    field: Option<Field>,

    // What was found.
    members: Members,
    /// The captured and payload members met so far, by their place in [`CAPTURED`] (the
    /// payload members `data` and `content` after them), to find duplicates.
    seen: u32,
    payload_key: Option<PayloadElement>,
    /// A `data` or `content` member that was not a string, met before `resourceType`: another
    /// resource's element (a DocumentReference's `content` array), or an invalid Binary.
    mistyped_payload: Option<PayloadElement>,
    payload_done: bool,
    mode: PayloadMode,
    decoder: Base64Decoder,
    /// The first error; every later call returns it again.
    failed: Option<ScanError>,
    /// Offset of the payload string's opening quote: base64 errors are reported there, with
    /// their position inside the string in the message.
    payload_start: u64,
    /// Payload text gathered across escapes, for the decoder (bounded by [`UNESCAPED_FLUSH`]
    /// and by one call's input).
    unescaped: Gathered,
    /// The payload has shown nothing but plain base64 so far: hand the input to the decoder
    /// whole, without searching it for the end of the string first.
    plain_run: bool,
    /// Text mode: base64 symbols (and `=`) written so far in the current group of four. FHIR's
    /// base64Binary pattern, which the XML schemas check, allows whitespace only between
    /// groups; the decoder takes it anywhere, so whitespace inside a group is left out of the
    /// text. A document has one payload, so this starts at 0 with the scanner.
    text_group: u8,
    /// Payload text made into bare symbols (and XML text) for the decoder, a batch at a time.
    compactor: Compactor,
    /// Body offset before which the payload goes the general way: the decoder refused a
    /// compacted batch there, and the general path finds out why.
    compact_from: u64,
}

impl Scanner {
    /// A scanner at the start of a body.
    ///
    /// Inlined, so that the scanner is built where it is kept rather than built and then moved.
    #[inline]
    pub(crate) fn new(limits: ScanLimits) -> Self {
        Scanner {
            limits,
            st: St::Start,
            pos: 0,
            esc: Esc::None,
            high_surrogate: None,
            utf8: Utf8Carry::default(),
            key: [0; MAX_KEY],
            key_len: 0,
            key_too_long: false,
            route: Route::Skip,
            slot: 0,
            capture_start: 0,
            capture_unchecked: false,
            captured_total: 0,
            g: G::Value,
            stack: Nesting::default(),
            field: None,
            members: Members::default(),
            seen: 0,
            payload_key: None,
            mistyped_payload: None,
            payload_done: false,
            mode: PayloadMode::Pause,
            decoder: Base64Decoder::new(),
            failed: None,
            payload_start: 0,
            unescaped: Gathered::default(),
            plain_run: true,
            text_group: 0,
            compactor: Compactor::default(),
            compact_from: 0,
        }
    }

    /// Reads the payload the general way only, as the reference for the compacted way.
    #[cfg(test)]
    fn without_compaction(&mut self) {
        self.compact_from = u64::MAX;
    }

    /// Chooses what happens to the payload from here on.
    pub(crate) fn set_payload_mode(&mut self, mode: PayloadMode) {
        self.mode = mode;
    }

    /// Every captured member, parsed.
    pub(crate) fn members(&self) -> &Members {
        &self.members
    }

    /// Takes the members captured so far; members read after this are captured anew.
    pub(crate) fn take_members(&mut self) -> Members {
        std::mem::take(&mut self.members)
    }

    /// Which payload member was met, if any.
    pub(crate) fn payload_key(&self) -> Option<PayloadElement> {
        self.payload_key
    }

    /// The `data` or `content` member read before `resourceType` whose value was not a
    /// string: if the resource turns out to be a Binary, it is invalid.
    pub(crate) fn mistyped_payload(&self) -> Option<PayloadElement> {
        self.mistyped_payload
    }

    /// Whether the scanner is past the end of the payload string.
    pub(crate) fn payload_done(&self) -> bool {
        self.payload_done
    }

    /// Decoded (or validated) payload bytes so far.
    pub(crate) fn decoded_len(&self) -> u64 {
        self.decoder.decoded_len()
    }

    /// How much output feeding `input` can make, for reserving the output at once. Exact for
    /// the usual payload (plain base64 that ends in `input`), so that the buffer holds nothing
    /// unused and is handed on without a separate shared header; an upper bound otherwise,
    /// except for XML text, whose few escapes may grow it.
    pub(crate) fn output_room(&self, input: &[u8]) -> usize {
        match self.mode {
            PayloadMode::Text => return input.len(),
            PayloadMode::Pause | PayloadMode::Skip | PayloadMode::Validate => return 0,
            PayloadMode::Decode if self.payload_done => return 0,
            PayloadMode::Decode => {}
        }
        let plain = self.st == St::Payload
            && self.esc == Esc::None
            && self.plain_run
            && self.unescaped.is_empty()
            && self.decoder.at_group_start();
        if plain {
            if let Some(q) = closing_quote_near_end(input) {
                let text = &input[..q];
                if text.len().is_multiple_of(4) {
                    let pads = text.iter().rev().take(2).filter(|&&b| b == b'=').count();
                    return (text.len() / 4 * 3).saturating_sub(pads);
                }
            }
        }
        // Three bytes for every four characters, and a group begun in an earlier input.
        input.len() / 4 * 3 + 3
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    fn err(&self, at: usize, message: impl Into<String>) -> ScanError {
        ScanError::new(message, self.pos + at as u64)
    }

    /// Consumes a prefix of `input` and says why it stopped. Payload output (decoded bytes or
    /// text, depending on the mode) is appended to `out`. Call again with the rest of the input
    /// after any event other than [`Event::NeedMore`].
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
    ) -> Result<(usize, Event), ScanError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_inner(input, out);
        match &result {
            Ok((n, _)) => self.pos += *n as u64,
            // A failed scanner stays failed: nothing after an error is read.
            Err(e) => self.failed = Some(e.clone()),
        }
        result
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
    ) -> Result<(usize, Event), ScanError> {
        let mut i = 0;
        while i < input.len() {
            match self.st {
                St::Nested => {
                    let (n, done) = self.nested_step(&input[i..], i)?;
                    if self.route == Route::Capture {
                        self.capture_bytes(&input[i..i + n], i)?;
                    }
                    i += n;
                    if done {
                        self.finish_member(i)?;
                        return Ok((i, Event::Member));
                    }
                    continue;
                }
                St::Payload => {
                    let (n, done) = self.payload_step(&input[i..], i, out)?;
                    i += n;
                    if done {
                        self.payload_done = true;
                        self.st = St::AfterMember;
                        return Ok((i, Event::Member));
                    }
                    continue;
                }
                St::InKey => {
                    let (n, done) = self.string_step(&input[i..], i, true)?;
                    i += n;
                    if done {
                        self.route_member(i)?;
                        self.st = St::Colon;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            if is_ws(b) {
                i += 1;
                continue;
            }
            match (self.st, b) {
                (St::Start, b'{') => {
                    self.st = St::KeyOrEnd;
                    i += 1;
                }
                (St::Start, _) => {
                    return Err(self.err(i, "the body is not a JSON object"));
                }
                (St::KeyOrEnd | St::Key, b'"') => {
                    i += 1;
                    // The usual name, whole in this input and plain ASCII, is routed as it
                    // stands; anything else is read by the string machine.
                    if let Some(len) = plain_ascii_string(&input[i..]) {
                        let name = &input[i..i + len];
                        i += len + 1;
                        self.route_name(name, i)?;
                        self.st = St::Colon;
                        if let Some(end) = self.plain_string_member(input, i)? {
                            return Ok((end, Event::Member));
                        }
                        continue;
                    }
                    self.key_len = 0;
                    self.key_too_long = false;
                    self.st = St::InKey;
                }
                (St::KeyOrEnd | St::AfterMember, b'}') => {
                    self.st = St::End;
                    return Ok((i + 1, Event::End));
                }
                (St::Colon, b':') => {
                    self.st = St::Value;
                    i += 1;
                }
                (St::Value, _) if self.route == Route::Payload && b != b'"' => {
                    // Before `resourceType` it may be another resource's element: read it as
                    // any other value, and let the resource type decide.
                    if self.seen & RESOURCE_TYPE_SEEN != 0 {
                        let name = self.payload_key.map_or("data", PayloadElement::name);
                        return Err(self.err(i, format!("`{name}` is not a JSON string")));
                    }
                    self.mistyped_payload = self.mistyped_payload.or(self.payload_key.take());
                    self.route = Route::Skip;
                    self.st = St::Nested;
                    self.g = G::Value;
                    self.start_value();
                }
                (St::Value, _) if self.route == Route::Payload => {
                    self.st = St::Payload;
                    self.payload_start = self.pos + i as u64;
                    i += 1;
                    if self.mode == PayloadMode::Pause {
                        return Ok((i, Event::PayloadStart));
                    }
                }
                (St::Value, _) => {
                    self.st = St::Nested;
                    self.g = G::Value;
                    self.start_value();
                }
                (St::AfterMember, b',') => {
                    self.st = St::Key;
                    i += 1;
                }
                (St::End, _) => {
                    return Err(self.err(i, "data after the end of the JSON object"));
                }
                (st, _) => {
                    let expected = match st {
                        St::KeyOrEnd => "a member name or '}'",
                        St::Key => "a member name",
                        St::Colon => "':'",
                        _ => "',' or '}'",
                    };
                    return Err(self.err(
                        i,
                        format!("invalid JSON: expected {expected}, found {}", show(b)),
                    ));
                }
            }
        }
        Ok((i, Event::NeedMore))
    }

    /// Checks, at the end of the body, that the document was complete.
    pub(crate) fn finish(&mut self) -> Result<(), ScanError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.st == St::End {
            return Ok(());
        }
        let message = match self.st {
            St::Start => "the body is empty".to_string(),
            St::Payload => {
                let name = self.payload_key.map_or("data", PayloadElement::name);
                format!("the body ends inside `{name}`")
            }
            _ => "the body ends before the JSON object is closed".to_string(),
        };
        let e = ScanError::new(message, self.pos);
        self.failed = Some(e.clone());
        Err(e)
    }

    /// Reads, in one step, the colon and value of the member whose name ends just before
    /// `from` in `input` when the value is a plain ASCII string whole in the input (the usual
    /// `resourceType`, `id`, `contentType`), and returns where the member ends. None when the
    /// member goes on some other way (the payload, an object, an escape, the end of the
    /// input), left to the state machine.
    fn plain_string_member(
        &mut self,
        input: &[u8],
        from: usize,
    ) -> Result<Option<usize>, ScanError> {
        if self.route == Route::Payload {
            return Ok(None);
        }
        let colon = from + ws_len(&input[from..]);
        if input.get(colon) != Some(&b':') {
            return Ok(None);
        }
        let Some((quote, len)) = plain_ascii_string_after_ws(&input[colon + 1..]) else {
            return Ok(None);
        };
        let i = colon + 1 + quote;
        let end = i + len + 2;
        self.start_value();
        if self.route == Route::Capture {
            self.capture_bytes(&input[i..end], i)?;
        }
        self.finish_member(end)?;
        Ok(Some(end))
    }

    /// Sets up the capture of a member's value, which starts here.
    #[inline]
    fn start_value(&mut self) {
        self.capture_start = self.members.len();
        self.capture_unchecked = false;
        if self.route == Route::Capture {
            self.members.track_fields(self.slot);
        }
    }

    /// Appends captured text. Inlined at both of its few callers: a call costs more than the
    /// usual short member's copy.
    #[inline(always)]
    fn capture_bytes(&mut self, bytes: &[u8], at: usize) -> Result<(), ScanError> {
        self.captured_total += bytes.len();
        if self.captured_total > self.limits.max_metadata {
            return Err(self.too_much_captured(at));
        }
        self.members.extend(bytes);
        Ok(())
    }

    #[cold]
    fn too_much_captured(&self, at: usize) -> ScanError {
        self.err(
            at,
            format!(
                "the Binary's elements other than its payload exceed the limit of {} bytes",
                self.limits.max_metadata
            ),
        )
    }

    /// Decides what to do with the member whose name was just read into `key`.
    fn route_member(&mut self, at: usize) -> Result<(), ScanError> {
        // A copy: routing changes the scanner.
        let key = self.key;
        let name: &[u8] = if self.key_too_long {
            &[]
        } else {
            &key[..self.key_len]
        };
        self.route_name(name, at)
    }

    /// Decides what to do with the member named `name`.
    fn route_name(&mut self, name: &[u8], at: usize) -> Result<(), ScanError> {
        let known = match name {
            b"data" => Some(("data", CAPTURED.len(), Route::Payload)),
            b"content" => Some(("content", CAPTURED.len() + 1, Route::Payload)),
            name => CAPTURED
                .iter()
                .position(|k| k.as_bytes() == name)
                .map(|i| (CAPTURED[i], i, Route::Capture)),
        };
        let Some((name, slot, route)) = known else {
            self.route = Route::Skip;
            return Ok(());
        };
        if self.seen & (1 << slot) != 0 {
            return Err(self.err(at, format!("duplicate member `{name}`")));
        }
        self.seen |= 1 << slot;
        self.slot = slot;
        if route == Route::Payload {
            let key = if name == "data" {
                PayloadElement::Data
            } else {
                PayloadElement::Content
            };
            if self.payload_key.is_some() {
                return Err(self.err(at, "the Binary has both `data` and `content`"));
            }
            self.payload_key = Some(key);
        }
        self.route = route;
        Ok(())
    }

    /// Closes the member just read. Inlined, like [`Self::capture_bytes`]: it is a few stores
    /// in the usual case.
    #[inline(always)]
    fn finish_member(&mut self, at: usize) -> Result<(), ScanError> {
        self.st = St::AfterMember;
        if self.route != Route::Capture {
            return Ok(());
        }
        let start = self.capture_start;
        // Longer texts may hold a number with hundreds of digits.
        if self.capture_unchecked || self.members.len() - start > LONG_CAPTURE {
            self.parse_capture(start, at)?;
        }
        self.members.close(self.slot, start);
        Ok(())
    }

    /// Parses the captured text from `start` on, for what `serde_json` refuses and the scanner
    /// does not check.
    #[cold]
    fn parse_capture(&self, start: usize, at: usize) -> Result<(), ScanError> {
        let text = self.members.text_from(start);
        match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(at, format!("invalid JSON: {e}"))),
        }
    }

    /// Advances through the content of a string that is not the payload. Returns how much was
    /// consumed and whether the closing quote was reached.
    fn string_step(
        &mut self,
        input: &[u8],
        base: usize,
        collect_key: bool,
    ) -> Result<(usize, bool), ScanError> {
        let mut i = 0;
        while i < input.len() {
            match self.esc {
                Esc::None => {
                    if self.high_surrogate.is_some() && input[i] != b'\\' {
                        return Err(
                            self.err(base + i, "invalid JSON: lone surrogate in \\u escape")
                        );
                    }
                    let rest = &input[i..];
                    // One pass finds the quote, the backslash or a control character.
                    let end = plain_prefix(rest);
                    let seg = &rest[..end];
                    if let Some(&b) = rest.get(end).filter(|&&b| b < 0x20) {
                        return Err(self.err(
                            base + i + end,
                            format!("invalid JSON: control character 0x{b:02x} inside a string"),
                        ));
                    }
                    // Most strings are ASCII, which needs no further check.
                    if !(self.utf8.is_empty() && seg.is_ascii()) && self.utf8.feed(seg).is_err() {
                        return Err(self.err(base + i, "invalid UTF-8 inside a JSON string"));
                    }
                    if collect_key {
                        self.push_key(seg);
                    }
                    i += end;
                    if end == rest.len() {
                        break;
                    }
                    if !self.utf8.is_empty() {
                        return Err(self.err(base + i, "invalid UTF-8 inside a JSON string"));
                    }
                    i += 1;
                    if rest[end] == b'"' {
                        return Ok((i, true));
                    }
                    self.esc = Esc::Backslash;
                }
                Esc::Backslash => {
                    let b = input[i];
                    i += 1;
                    if b == b'u' {
                        self.esc = Esc::Hex { n: 0, cp: 0 };
                        continue;
                    }
                    let Some(ch) = simple_escape(b) else {
                        return Err(self.err(
                            base + i - 1,
                            format!("invalid JSON: invalid escape \\{}", show(b)),
                        ));
                    };
                    if self.high_surrogate.is_some() {
                        return Err(
                            self.err(base + i, "invalid JSON: lone surrogate in \\u escape")
                        );
                    }
                    self.esc = Esc::None;
                    if collect_key {
                        self.push_key_char(ch);
                    }
                }
                Esc::Hex { n, cp } => {
                    let Some(d) = (input[i] as char).to_digit(16) else {
                        return Err(self.err(
                            base + i,
                            format!("invalid JSON: {} in a \\u escape", show(input[i])),
                        ));
                    };
                    i += 1;
                    let cp = cp * 16 + d;
                    if n < 3 {
                        self.esc = Esc::Hex { n: n + 1, cp };
                        continue;
                    }
                    self.esc = Esc::None;
                    let ch = match (self.high_surrogate.take(), cp) {
                        (None, 0xD800..=0xDBFF) => {
                            self.high_surrogate = Some(cp);
                            continue;
                        }
                        (Some(high), 0xDC00..=0xDFFF) => {
                            char::from_u32(0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00))
                        }
                        (Some(_), _) | (None, 0xDC00..=0xDFFF) => None,
                        (None, cp) => char::from_u32(cp),
                    };
                    let Some(ch) = ch else {
                        return Err(
                            self.err(base + i, "invalid JSON: lone surrogate in \\u escape")
                        );
                    };
                    if collect_key {
                        self.push_key_char(ch);
                    }
                }
            }
        }
        Ok((i, false))
    }

    fn push_key(&mut self, seg: &[u8]) {
        let end = self.key_len + seg.len();
        if end > MAX_KEY {
            self.key_too_long = true;
        } else {
            self.key[self.key_len..end].copy_from_slice(seg);
            self.key_len = end;
        }
    }

    fn push_key_char(&mut self, ch: char) {
        let mut buf = [0; 4];
        self.push_key(ch.encode_utf8(&mut buf).as_bytes());
    }

    /// Advances the generic value machine (a captured or skipped member value). Returns how much
    /// was consumed and whether the value is complete.
    fn nested_step(&mut self, input: &[u8], base: usize) -> Result<(usize, bool), ScanError> {
        let mut i = 0;
        while i < input.len() {
            if let G::Str { key } = self.g {
                let (n, closed) = self.string_step(&input[i..], base + i, false)?;
                i += n;
                if closed {
                    if key {
                        self.g = G::Colon;
                    } else if self.after_value() {
                        return Ok((i, true));
                    }
                }
                continue;
            }
            let b = input[i];
            match self.g {
                G::Num(num) => {
                    if let Some(next) = num.next(b) {
                        // Only an exponent (or hundreds of digits) can leave f64's range.
                        if next == Num::Exp {
                            self.capture_unchecked = true;
                        }
                        self.g = G::Num(next);
                        i += 1;
                        continue;
                    }
                    if !num.is_complete() {
                        return Err(self.err(
                            base + i,
                            format!("invalid JSON: {} inside a number", show(b)),
                        ));
                    }
                    // The byte that ends a number belongs to what follows it.
                    if self.after_value() {
                        return Ok((i, true));
                    }
                    continue;
                }
                G::Lit { word, at } => {
                    if b != word[usize::from(at)] {
                        return Err(
                            self.err(base + i, format!("invalid JSON: unexpected {}", show(b)))
                        );
                    }
                    i += 1;
                    if usize::from(at) + 1 < word.len() {
                        self.g = G::Lit { word, at: at + 1 };
                    } else if self.after_value() {
                        return Ok((i, true));
                    }
                    continue;
                }
                _ => {}
            }
            if is_ws(b) {
                i += 1;
                continue;
            }
            i += 1;
            match (self.g, b) {
                (G::Value | G::ArrValueOrEnd, b'{') => {
                    self.push(true, base + i)?;
                    self.g = G::ObjKeyOrEnd;
                }
                (G::Value | G::ArrValueOrEnd, b'[') => {
                    self.push(false, base + i)?;
                    self.g = G::ArrValueOrEnd;
                }
                (G::Value | G::ArrValueOrEnd, b'"') => {
                    // A plain string whole in this input needs no string machine.
                    if let Some(len) = plain_ascii_string(&input[i..]) {
                        i += len + 1;
                        if self.after_value() {
                            return Ok((i, true));
                        }
                        continue;
                    }
                    self.g = G::Str { key: false };
                }
                (G::Value | G::ArrValueOrEnd, b'-') => self.g = G::Num(Num::Minus),
                (G::Value | G::ArrValueOrEnd, b'0') => self.g = G::Num(Num::Zero),
                (G::Value | G::ArrValueOrEnd, b'1'..=b'9') => self.g = G::Num(Num::Int),
                (G::Value | G::ArrValueOrEnd, b't') => {
                    self.g = G::Lit {
                        word: b"true",
                        at: 1,
                    }
                }
                (G::Value | G::ArrValueOrEnd, b'f') => {
                    self.g = G::Lit {
                        word: b"false",
                        at: 1,
                    }
                }
                (G::Value | G::ArrValueOrEnd, b'n') => {
                    self.g = G::Lit {
                        word: b"null",
                        at: 1,
                    }
                }
                (G::ArrValueOrEnd, b']') | (G::ObjKeyOrEnd, b'}') => {
                    self.stack.pop();
                    if self.after_value() {
                        return Ok((i, true));
                    }
                }
                (G::ObjKeyOrEnd | G::ObjKey, b'"') => {
                    if let Some(len) = plain_ascii_string(&input[i..]) {
                        self.note_name(Some(&input[i..i + len]));
                        i += len + 1;
                        self.g = G::Colon;
                        continue;
                    }
                    self.note_name(None);
                    self.g = G::Str { key: true };
                }
                (G::Colon, b':') => {
                    self.g = G::Value;
                    if let Some(field) = self.field.take() {
                        i += self.field_value(field, input, i);
                    }
                }
                (G::AfterValue, b',') => {
                    self.g = if self.stack.innermost_is_object() == Some(true) {
                        G::ObjKey
                    } else {
                        G::Value
                    };
                }
                (G::AfterValue, b'}' | b']') => {
                    if self.stack.innermost_is_object() != Some(b == b'}') {
                        return Err(self.err(
                            base + i - 1,
                            format!("invalid JSON: unexpected {}", show(b)),
                        ));
                    }
                    self.stack.pop();
                    if self.after_value() {
                        return Ok((i, true));
                    }
                }
                _ => {
                    return Err(self.err(
                        base + i - 1,
                        format!("invalid JSON: unexpected {}", show(b)),
                    ));
                }
            }
        }
        Ok((i, false))
    }

    /// Notes the name of a member of a captured object (None: one not read on the way, being
    /// escaped or split), when it may be one of the [`Field`]s the layer reads.
    fn note_name(&mut self, name: Option<&[u8]>) {
        if self.route != Route::Capture || self.stack.depth() != 1 {
            return;
        }
        match name {
            Some(name) => self.field = Field::of(self.slot, name),
            None => self.members.untrack_fields(self.slot),
        }
    }

    /// Reads the value of `field` at `from` in `input` (just after its colon) when it is a
    /// plain ASCII string whole in the input, and records where its content lies in the
    /// captured text; returns how much was consumed. Anything else is left to the value
    /// machine, and the field to be read from the text when asked for.
    ///
    /// `input` is what the value machine was given: it is appended to the captured text, from
    /// its first byte, once the machine returns.
    fn field_value(&mut self, field: Field, input: &[u8], from: usize) -> usize {
        let Some((start, len)) = plain_ascii_string_after_ws(&input[from..]) else {
            self.members.unknown_field(field);
            return 0;
        };
        let at = self.members.len() + from + start + 1;
        self.members.plain_field(field, at, at + len);
        // Inside the member's object: a value is never the whole member.
        self.g = G::AfterValue;
        start + len + 2
    }

    fn push(&mut self, object: bool, at: usize) -> Result<(), ScanError> {
        // The top-level object counts as one level.
        if self.stack.depth() + 1 >= self.limits.max_depth {
            return Err(self.err(
                at,
                format!(
                    "JSON nested deeper than the limit of {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        // serde_json stops at 128 levels.
        if self.stack.depth() >= DEEP_CAPTURE {
            self.capture_unchecked = true;
        }
        self.stack.push(object);
        Ok(())
    }

    /// Moves past a complete value; true when it was the member's whole value.
    fn after_value(&mut self) -> bool {
        if self.stack.is_empty() {
            true
        } else {
            self.g = G::AfterValue;
            false
        }
    }

    /// Advances through the payload string according to the mode.
    fn payload_step(
        &mut self,
        input: &[u8],
        base: usize,
        out: &mut BytesMut,
    ) -> Result<(usize, bool), ScanError> {
        let mode = self.mode;
        let mut i = 0;
        while i < input.len() {
            match self.esc {
                Esc::None => {
                    if self.plain_run
                        && self.unescaped.is_empty()
                        && !matches!(mode, PayloadMode::Skip | PayloadMode::Pause)
                    {
                        i += self.plain_payload(&input[i..], mode, out);
                        if i == input.len() {
                            break;
                        }
                    }
                    if !matches!(mode, PayloadMode::Skip | PayloadMode::Pause)
                        && self.decoder.in_data()
                        && self.pos + (base + i) as u64 >= self.compact_from
                    {
                        // What was gathered the general way goes first.
                        self.flush_unescaped(mode, out)?;
                        i += self.compact_payload(&input[i..], base + i, mode, out);
                        if i == input.len() {
                            break;
                        }
                    }
                    if !self.unescaped.is_empty()
                        && matches!(mode, PayloadMode::Decode | PayloadMode::Validate)
                    {
                        i += self.gather(&input[i..], mode, out)?;
                        if i == input.len() {
                            break;
                        }
                    }
                    let rest = &input[i..];
                    let end = if self.unescaped.is_empty() {
                        memchr2(b'"', b'\\', rest).unwrap_or(rest.len())
                    } else {
                        // Runs between escapes are short: the block search of `plain` finds
                        // their ends for less than a general search costs to start.
                        let n = plain_prefix(rest);
                        self.unescaped.extend(&rest[..n]);
                        if rest.get(n).is_some_and(|&b| b < 0x20) {
                            // A raw control character: the decoder reports it.
                            self.flush_unescaped(mode, out)?;
                            self.payload_raw(&rest[n..=n], false, mode, out)?;
                        }
                        n
                    };
                    let before_escape = rest.get(end) == Some(&b'\\');
                    self.payload_raw(&rest[..end], before_escape, mode, out)?;
                    i += end;
                    if end == rest.len() {
                        break;
                    }
                    i += 1;
                    if rest[end] == b'"' {
                        if mode != PayloadMode::Skip && mode != PayloadMode::Pause {
                            self.flush_unescaped(mode, out)?;
                            let sink = if mode == PayloadMode::Decode {
                                Some(&mut *out)
                            } else {
                                None
                            };
                            let start = self.payload_start;
                            self.decoder
                                .finish(sink)
                                .map_err(|e| payload_error(self.payload_key, e, start))?;
                        }
                        return Ok((i, true));
                    }
                    self.esc = Esc::Backslash;
                }
                Esc::Backslash => {
                    let b = input[i];
                    i += 1;
                    if b == b'u' {
                        self.esc = Esc::Hex { n: 0, cp: 0 };
                        continue;
                    }
                    self.esc = Esc::None;
                    if matches!(mode, PayloadMode::Skip | PayloadMode::Pause) {
                        continue;
                    }
                    let Some(ch) = simple_escape(b) else {
                        // The text before the escape is checked first, however the input
                        // was split.
                        self.flush_unescaped(mode, out)?;
                        return Err(self.err(
                            base + i - 1,
                            format!("invalid JSON: invalid escape \\{}", show(b)),
                        ));
                    };
                    self.payload_char(ch, mode, out)?;
                }
                Esc::Hex { n, cp } => {
                    let digit = (input[i] as char).to_digit(16);
                    i += 1;
                    if matches!(mode, PayloadMode::Skip | PayloadMode::Pause) {
                        // A \u escape holds no quote or backslash; the string end is found all
                        // the same, and the content is checked when read again.
                        self.esc = if n < 3 {
                            Esc::Hex { n: n + 1, cp }
                        } else {
                            Esc::None
                        };
                        continue;
                    }
                    let Some(d) = digit else {
                        self.flush_unescaped(mode, out)?;
                        return Err(self.err(
                            base + i - 1,
                            format!("invalid JSON: {} in a \\u escape", show(input[i - 1])),
                        ));
                    };
                    let cp = cp * 16 + d;
                    if n < 3 {
                        self.esc = Esc::Hex { n: n + 1, cp };
                        continue;
                    }
                    self.esc = Esc::None;
                    let Some(ch) = char::from_u32(cp) else {
                        return Err(self.err(
                            base + i,
                            format!(
                                "the escape \\u{cp:04x} in `{}` is not a base64 character",
                                self.payload_key.map_or("data", PayloadElement::name)
                            ),
                        ));
                    };
                    self.payload_char(ch, mode, out)?;
                }
            }
        }
        // Everything consumed is decoded before returning: output never lags the input.
        self.flush_unescaped(mode, out)?;
        Ok((i, false))
    }

    /// Hands the decoder as much of `input` as it takes as plain base64 (see
    /// [`Base64Decoder::feed_plain`]), up to the last quote near the end of the input, which
    /// usually closes the string; returns how much was taken. What is left (the closing quote,
    /// an escape, whitespace, an error) goes the general way, and so does the rest of the
    /// string once the decoder has stopped short of the end.
    fn plain_payload(&mut self, input: &[u8], mode: PayloadMode, out: &mut BytesMut) -> usize {
        let candidate = &input[..closing_quote_near_end(input).unwrap_or(input.len())];
        if candidate.is_empty() {
            return 0;
        }
        let taken = match mode {
            PayloadMode::Decode => self.decoder.feed_plain(candidate, Some(out)),
            PayloadMode::Validate => self.decoder.feed_plain(candidate, None),
            PayloadMode::Text => {
                let taken = self.decoder.feed_plain(candidate, None);
                // Plain symbols only: no whitespace to look for.
                out.extend_from_slice(&candidate[..taken]);
                self.count_text_symbols(taken);
                taken
            }
            PayloadMode::Skip | PayloadMode::Pause => 0,
        };
        if taken < candidate.len() {
            self.plain_run = false;
        }
        taken
    }

    /// Hands the decoder the payload text at the start of `input`, made into bare symbols (see
    /// [`compact`]), a batch at a time, and in text mode writes its XML text; returns how much
    /// was taken. Stops before anything else (the closing quote, padding, another escape), for
    /// the general path to handle. When the decoder refuses a batch, nothing of it is taken,
    /// and the general path reads it again.
    fn compact_payload(
        &mut self,
        input: &[u8],
        base: usize,
        mode: PayloadMode,
        out: &mut BytesMut,
    ) -> usize {
        let text = mode == PayloadMode::Text;
        let mut i = 0;
        loop {
            let made = if text {
                self.compactor.compact::<true>(&input[i..], self.text_group)
            } else {
                self.compactor.compact::<false>(&input[i..], 0)
            };
            if made.consumed == 0 {
                return i;
            }
            let sink = if mode == PayloadMode::Decode {
                Some(&mut *out)
            } else {
                None
            };
            let symbols = self.compactor.symbols(&made);
            if !self.decoder.feed_symbols(
                symbols,
                made.checked,
                made.symbols_checked,
                made.chars,
                made.trailing,
                sink,
            ) {
                self.compact_from = self.pos + (base + i + made.consumed) as u64;
                self.compactor.forget_lines();
                return i;
            }
            if text {
                out.extend_from_slice(self.compactor.text(&made));
                self.count_text_symbols(made.symbols + made.checked);
            }
            i += made.consumed;
            if !made.full {
                return i;
            }
        }
    }

    /// Gathers payload text broken up by escapes that stand for base64 characters or
    /// whitespace (`\/` from PHP, `\u002B` from .NET, `\n` line wrapping) in one pass over the
    /// input, without going back to the state machine for each escape. Stops before anything
    /// else (the closing quote, another escape, an escape cut off by the end of the input), for
    /// the general path to handle; a raw control character is gathered, for the decoder to
    /// report. Decode and Validate modes only.
    fn gather(
        &mut self,
        input: &[u8],
        mode: PayloadMode,
        out: &mut BytesMut,
    ) -> Result<usize, ScanError> {
        let mut i = 0;
        loop {
            // Plain text and PHP's `\/`, the most common escape, in one pass.
            i += self.unescaped.extend_payload(&input[i..], UNESCAPED_FLUSH);
            if self.unescaped.len() >= UNESCAPED_FLUSH {
                self.flush_unescaped(mode, out)?;
                continue;
            }
            let (len, ch) = match input[i..] {
                [b'\\', b'u', a, b, c, d, ..] => match hex4([a, b, c, d]) {
                    Some(cp) => (6, cp),
                    None => break,
                },
                [b'\\', e, ..] => match simple_escape(e) {
                    Some(ch) => (2, u32::from(ch)),
                    None => break,
                },
                _ => break,
            };
            let Some(byte) = stand_in(ch) else {
                break;
            };
            self.unescaped.push(byte);
            i += len;
        }
        Ok(i)
    }

    /// Text mode: appends raw payload text the decoder has taken (symbols, `=` and spaces),
    /// leaving out the spaces that stand inside a group (see `text_group`).
    fn push_text(&mut self, text: &[u8], out: &mut BytesMut) {
        let mut rest = text;
        while let Some(space) = memchr::memchr(b' ', rest) {
            out.extend_from_slice(&rest[..space]);
            self.count_text_symbols(space);
            if self.text_group == 0 {
                out.extend_from_slice(b" ");
            }
            rest = &rest[space + 1..];
        }
        out.extend_from_slice(rest);
        self.count_text_symbols(rest.len());
    }

    /// Text mode: `n` more base64 symbols (or `=`) written.
    fn count_text_symbols(&mut self, n: usize) {
        self.text_group = ((usize::from(self.text_group) + n) % 4) as u8;
    }

    /// Decodes the text gathered from runs broken up by escapes.
    fn flush_unescaped(&mut self, mode: PayloadMode, out: &mut BytesMut) -> Result<(), ScanError> {
        if self.unescaped.is_empty() {
            return Ok(());
        }
        let result = match mode {
            PayloadMode::Decode => self.decoder.feed_raw(self.unescaped.as_slice(), Some(out)),
            _ => self.decoder.feed_raw(self.unescaped.as_slice(), None),
        };
        self.unescaped.clear();
        result.map_err(|e| payload_error(self.payload_key, e, self.payload_start))
    }

    fn payload_raw(
        &mut self,
        seg: &[u8],
        before_escape: bool,
        mode: PayloadMode,
        out: &mut BytesMut,
    ) -> Result<(), ScanError> {
        if seg.is_empty() {
            return Ok(());
        }
        if matches!(mode, PayloadMode::Decode | PayloadMode::Validate) && !self.unescaped.is_empty()
        {
            // Already gathered by `plain_prefix`.
            if self.unescaped.len() >= UNESCAPED_FLUSH {
                self.flush_unescaped(mode, out)?;
            }
            return Ok(());
        }
        if matches!(mode, PayloadMode::Decode | PayloadMode::Validate) && before_escape {
            // Runs between escapes (`\/` from PHP every 64 characters or so, `\n` line
            // wrapping) are gathered with the escaped characters into one buffer, so that the
            // decoder sees long inputs. A raw control character goes to the decoder as it is,
            // to be reported as such.
            if seg.iter().fold(false, |any, &b| any | (b < 0x20)) {
                self.flush_unescaped(mode, out)?;
            } else {
                self.unescaped.extend(seg);
                if self.unescaped.len() >= UNESCAPED_FLUSH {
                    self.flush_unescaped(mode, out)?;
                }
                return Ok(());
            }
        }
        let result = match mode {
            PayloadMode::Skip | PayloadMode::Pause => Ok(()),
            PayloadMode::Decode => self.decoder.feed_raw(seg, Some(out)),
            PayloadMode::Validate => self.decoder.feed_raw(seg, None),
            PayloadMode::Text => {
                let r = self.decoder.feed_raw(seg, None);
                if r.is_ok() {
                    self.push_text(seg, out);
                }
                r
            }
        };
        result.map_err(|e| payload_error(self.payload_key, e, self.payload_start))
    }

    fn payload_char(
        &mut self,
        ch: char,
        mode: PayloadMode,
        out: &mut BytesMut,
    ) -> Result<(), ScanError> {
        if matches!(mode, PayloadMode::Decode | PayloadMode::Validate) {
            // An escaped base64 character stands in the text like a raw one; escaped whitespace
            // like a raw space (one character either way, so positions in messages hold).
            // Anything else goes to the decoder as an escape, to be reported as one.
            if let Some(byte) = stand_in(u32::from(ch)) {
                self.unescaped.push(byte);
                if self.unescaped.len() >= UNESCAPED_FLUSH {
                    self.flush_unescaped(mode, out)?;
                }
                return Ok(());
            }
            self.flush_unescaped(mode, out)?;
        }
        let result = match mode {
            PayloadMode::Skip | PayloadMode::Pause => Ok(()),
            PayloadMode::Decode => self.decoder.feed_escaped(ch, Some(out)),
            PayloadMode::Validate => self.decoder.feed_escaped(ch, None),
            PayloadMode::Text => {
                let r = self.decoder.feed_escaped(ch, None);
                if r.is_ok() {
                    // The decoder only lets base64 characters and whitespace through. Tab, LF
                    // and CR become character references, so that XML attribute-value
                    // normalization keeps them; raw segments never hold them (JSON forbids it).
                    match ch {
                        ' ' | '\t' | '\n' | '\r' if self.text_group != 0 => {}
                        ' ' => out.extend_from_slice(b" "),
                        '\t' => out.extend_from_slice(b"&#9;"),
                        '\n' => out.extend_from_slice(b"&#10;"),
                        '\r' => out.extend_from_slice(b"&#13;"),
                        _ => {
                            let mut buf = [0; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            self.count_text_symbols(1);
                        }
                    }
                }
                r
            }
        };
        result.map_err(|e| payload_error(self.payload_key, e, self.payload_start))
    }
}

/// Where the last quote in the final [`QUOTE_TAIL`] bytes of `input` is: in a payload string,
/// usually the one that closes it.
fn closing_quote_near_end(input: &[u8]) -> Option<usize> {
    let tail_start = input.len().saturating_sub(QUOTE_TAIL);
    memchr::memrchr(b'"', &input[tail_start..]).map(|q| tail_start + q)
}

/// How far from the end of an input the closing quote of a payload is looked for: a payload
/// that is not the last member costs one attempt that stops at its end.
const QUOTE_TAIL: usize = 64;

fn payload_error(
    key: Option<PayloadElement>,
    e: crate::decode::Base64Error,
    pos: u64,
) -> ScanError {
    let name = key.map_or("data", PayloadElement::name);
    ScanError::new(format!("`{name}` is not valid base64: {e}"), pos)
}

/// The raw byte that an escaped character stands for in base64 text: a base64 character
/// itself, a space for escaped whitespace (one character either way, so that positions in
/// messages hold); None for anything else, which the decoder reports as an escape.
fn stand_in(ch: u32) -> Option<u8> {
    let byte = u8::try_from(ch).ok()?;
    match byte {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => Some(byte),
        b' ' | b'\t' | b'\n' | b'\r' => Some(b' '),
        _ => None,
    }
}

/// The code point of four hex digits, as in a `\u` escape.
fn hex4(digits: [u8; 4]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |cp, &d| Some(cp * 16 + char::from(d).to_digit(16)?))
}

/// The length of the string content at the start of `input` (just after its opening quote)
/// when the closing quote is in `input` and the content is ASCII without escapes or control
/// characters: such a string is valid JSON as it stands.
fn plain_ascii_string(input: &[u8]) -> Option<usize> {
    let len = plain_ascii_prefix(input);
    (input.get(len) == Some(&b'"')).then_some(len)
}

/// A [`plain_ascii_string`] after optional whitespace at the start of `input`: where its
/// opening quote is, and the length of its content.
fn plain_ascii_string_after_ws(input: &[u8]) -> Option<(usize, usize)> {
    let quote = ws_len(input);
    match input.get(quote..) {
        Some([b'"', content @ ..]) => Some((quote, plain_ascii_string(content)?)),
        _ => None,
    }
}

/// The length of the whitespace at the start of `input`.
fn ws_len(input: &[u8]) -> usize {
    input.iter().take_while(|&&b| is_ws(b)).count()
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn simple_escape(b: u8) -> Option<char> {
    Some(match b {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// A byte, shown for an error message.
fn show(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const LIMITS: ScanLimits = ScanLimits {
        max_depth: 128,
        max_metadata: 64 * 1024,
    };

    /// What a whole scan found.
    #[derive(Debug, PartialEq)]
    struct Scan {
        events: Vec<Event>,
        members: Members,
        payload: Option<PayloadElement>,
        output: Vec<u8>,
    }

    /// Scans `input` cut into pieces of `piece` bytes, choosing `mode` at the payload.
    fn scan(input: &[u8], piece: usize, mode: PayloadMode) -> Result<Scan, ScanError> {
        let mut scanner = Scanner::new(LIMITS);
        let mut out = BytesMut::new();
        let mut events = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (n, event) = scanner.feed(rest, &mut out)?;
                rest = &rest[n..];
                if event == Event::PayloadStart {
                    scanner.set_payload_mode(mode);
                }
                if event != Event::NeedMore {
                    events.push(event);
                }
            }
        }
        scanner.finish()?;
        Ok(Scan {
            events,
            members: scanner.members().clone(),
            payload: scanner.payload_key(),
            output: out.to_vec(),
        })
    }

    /// Scans at every piece size and checks every one finds the same.
    fn scan_all_ways(input: &[u8], mode: PayloadMode) -> Result<Scan, ScanError> {
        let whole = scan(input, input.len(), mode);
        for piece in 1..input.len().min(40) {
            let pieces = scan(input, piece, mode);
            match (&whole, &pieces) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "pieces of {piece}"),
                (Err(a), Err(b)) => assert_eq!(a, b, "pieces of {piece}"),
                _ => panic!("pieces of {piece}: {whole:?} but {pieces:?}"),
            }
        }
        whole
    }

    fn error(input: &str) -> ScanError {
        scan_all_ways(input.as_bytes(), PayloadMode::Decode).expect_err(input)
    }

    #[test]
    fn captures_the_binary_and_decodes_its_payload() {
        let input = br#" { "resourceType" : "Binary", "id":"a\u00e9", "meta":{"versionId":"1","tag":[{"code":"x"}]},
            "contentType":"text/plain", "unknown":[1,-2.5e+3,true,false,null,{"k":"v"}], "data":"SGVs bG8=" } "#;
        let found = scan_all_ways(input, PayloadMode::Decode).unwrap();
        assert_eq!(found.output, b"Hello");
        assert_eq!(found.payload, Some(PayloadElement::Data));
        assert_eq!(found.members.value("id").unwrap(), "a\u{e9}");
        assert_eq!(found.members.value("meta").unwrap()["tag"][0]["code"], "x");
        assert_eq!(found.members.value("contentType").unwrap(), "text/plain");
        assert!(!found.members.contains_key("unknown"));
        assert_eq!(
            found.events,
            [
                Event::Member,
                Event::Member,
                Event::Member,
                Event::Member,
                Event::Member,
                Event::PayloadStart,
                Event::Member,
                Event::End
            ]
        );
    }

    /// Feeds `input` in pieces cut at `cuts`, the payload decoded; returns, for each call
    /// that reached the payload, the room asked for and the output made.
    fn rooms(input: &[u8], cuts: &[usize]) -> Vec<(usize, usize)> {
        let mut scanner = Scanner::new(LIMITS);
        let mut out = BytesMut::new();
        let mut seen = Vec::new();
        let bounds: Vec<usize> = [0]
            .iter()
            .chain(cuts)
            .chain([&input.len()])
            .copied()
            .collect();
        for piece in bounds.windows(2).map(|w| &input[w[0]..w[1]]) {
            let mut rest = piece;
            while !rest.is_empty() {
                let room = scanner.output_room(rest);
                let before = out.len();
                let (n, event) = scanner.feed(rest, &mut out).unwrap();
                rest = &rest[n..];
                if event == Event::PayloadStart {
                    scanner.set_payload_mode(PayloadMode::Decode);
                } else if scanner.mode == PayloadMode::Decode {
                    seen.push((room, out.len() - before));
                }
            }
        }
        scanner.finish().unwrap();
        seen
    }

    #[test]
    fn output_room_is_none_where_nothing_is_written() {
        let input = br#"{"contentType":"a/b","data":"QUJDREVG"}"#;
        for mode in [PayloadMode::Pause, PayloadMode::Skip, PayloadMode::Validate] {
            let mut scanner = Scanner::new(LIMITS);
            scanner.set_payload_mode(mode);
            let mut out = BytesMut::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                assert_eq!(scanner.output_room(rest), 0, "{mode:?}");
                let (n, _) = scanner.feed(rest, &mut out).unwrap();
                rest = &rest[n..];
            }
            assert!(out.is_empty(), "{mode:?}");
        }
    }

    #[test]
    fn output_room_is_exact_for_a_plain_payload_and_a_bound_otherwise() {
        // Whole in the input after the opening quote: exact, with and without padding.
        for payload in ["", "QUJD", "QUJDRA==", "QUJDREU=", "QUJDREVG"] {
            let input = format!(r#"{{"contentType":"a/b","data":"{payload}"}}"#);
            let start = input.find("data").unwrap() + 7;
            let decoded =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, payload)
                    .unwrap()
                    .len();
            assert_eq!(
                rooms(input.as_bytes(), &[start])[0],
                (decoded, decoded),
                "{payload}"
            );
        }
        // Split anywhere, escaped, spaced, not last, or followed by padding-like text: never
        // less than what is made.
        for input in [
            r#"{"contentType":"a/b","data":"QUJDREVG\/\/8\/","id":"=="}"#,
            r#"{"contentType":"a/b","data":"QUJD REVG\nQUJD","id":"x"}"#,
            r#"{"contentType":"a/b","data":"QUJDREVGRw==","id":"aa=="}"#,
            r#"{"contentType":"a/b","data":"QUJDREVGRw=="}"#,
        ] {
            for cut in 1..input.len() {
                for (room, made) in rooms(input.as_bytes(), &[cut]) {
                    assert!(made <= room, "{input} cut at {cut}: {made} > {room}");
                }
            }
        }
    }

    #[test]
    fn fields_seen_on_the_way_agree_with_the_text_however_it_is_split() {
        let metas = [
            r#"{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}"#,
            r#"{ "versionId" : "2" , "tag":[{"versionId":"x"}] }"#,
            r#"{"versionId":"1","versionId":3}"#,
            r#"{"versionId":3,"versionId":"1"}"#,
            r#"{"versionId":"1","v\u0065rsionId":"x"}"#,
            r#"{"v\u0065rsionId":"x","versionId":"1","lastUpdated":"y"}"#,
            r#"{"versionId":"\u00e9","lastUpdated":null}"#,
            "{\"versionId\":\"\u{e9}\",\"lastUpdated\":\"\u{1F600}\"}",
            r#"{"lastUpdated":{"versionId":"1"},"reference":"r"}"#,
            r#"[{"versionId":"1"}]"#,
            r#""versionId""#,
            "{}",
        ];
        for meta in metas {
            let input = format!(
                r#"{{"meta":{meta},"securityContext":{{"reference":"a/1","versionId":"2"}},"data":""}}"#
            );
            let parsed: serde_json::Value = serde_json::from_str(meta).unwrap();
            let expect = |name: &str| parsed.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            for piece in 1..=input.len() {
                let found = scan(input.as_bytes(), piece, PayloadMode::Decode).unwrap();
                let members = &found.members;
                let [version, updated] =
                    members.fields(Member::Meta, [Field::VersionId, Field::LastUpdated]);
                let [reference] = members.fields(Member::SecurityContext, [Field::Reference]);
                let context = format!("{input}, pieces of {piece}");
                assert_eq!(
                    version.map(Cow::into_owned),
                    expect("versionId"),
                    "{context}"
                );
                assert_eq!(
                    updated.map(Cow::into_owned),
                    expect("lastUpdated"),
                    "{context}"
                );
                assert_eq!(reference.as_deref(), Some("a/1"), "{context}");
            }
        }
    }

    #[test]
    fn member_names_are_compared_after_unescaping() {
        let input = br#"{"resourceType":"Binary","cont\u0065nt":"QQ==","\u0063ontentType":"a/b"}"#;
        let found = scan_all_ways(input, PayloadMode::Decode).unwrap();
        assert_eq!(found.payload, Some(PayloadElement::Content));
        assert_eq!(found.output, b"A");
        assert_eq!(found.members.value("contentType").unwrap(), "a/b");
    }

    #[test]
    fn payload_escapes_are_undone() {
        let input = br#"{"data":"\/w\u003d\u003D"}"#;
        assert_eq!(
            scan_all_ways(input, PayloadMode::Decode).unwrap().output,
            [0xff]
        );
        let text = scan_all_ways(br#"{"data":"\/w==\n\r\t QQ=="}"#, PayloadMode::Text);
        // Only whole groups before the padding are base64: this one has data after padding.
        assert!(text.is_err());
        let text =
            scan_all_ways(br#"{"data":"\/w\u002B\n\r\tA Q Q =="}"#, PayloadMode::Text).unwrap();
        // Whitespace inside a group is left out of the text, between groups it stays.
        assert_eq!(text.output, b"/w+A QQ==");
    }

    #[test]
    fn text_keeps_whitespace_only_between_groups_of_four() {
        for (input, text) in [
            (
                &br#"{"data":" QUJD QUJD\nQUJD "}"#[..],
                &b" QUJD QUJD&#10;QUJD "[..],
            ),
            (
                br#"{"data":"QU JD Q\u0020UJ\tD\r\nQQ =="}"#,
                b"QUJD QUJD&#13;&#10;QQ==",
            ),
            (br#"{"data":"Q Q = = \n"}"#, b"QQ== &#10;"),
            (br#"{"data":"  "}"#, b"  "),
        ] {
            let found = scan_all_ways(input, PayloadMode::Text).unwrap();
            assert_eq!(
                found.output,
                text,
                "{}: {}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&found.output)
            );
        }
    }

    #[test]
    fn a_payload_name_that_is_not_a_string_before_the_resource_type_is_read_as_any_value() {
        // A DocumentReference's `content` array, before its resourceType (sorted members).
        let input =
            br#"{"content":[{"attachment":{"data":"aGk="}}],"resourceType":"DocumentReference"}"#;
        for piece in 1..=input.len() {
            let mut scanner = Scanner::new(LIMITS);
            let mut out = BytesMut::new();
            for chunk in input.chunks(piece) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let (n, event) = scanner.feed(rest, &mut out).unwrap();
                    assert_ne!(event, Event::PayloadStart);
                    rest = &rest[n..];
                }
            }
            scanner.finish().unwrap();
            assert_eq!(scanner.payload_key(), None);
            assert_eq!(scanner.mistyped_payload(), Some(PayloadElement::Content));
            assert_eq!(
                scanner.members().value("resourceType").unwrap(),
                "DocumentReference"
            );
        }
        // Once the resource is known to be something, the payload's type is checked at once.
        let e = error(r#"{"resourceType":"Patient","data":{"a":1}}"#);
        assert!(e.message().contains("`data` is not a JSON string"), "{e}");
    }

    #[test]
    fn skip_and_validate_find_the_end_of_the_payload() {
        let input = br#"{"data":"AA\"\\\u0022A=","id":"x"}"#;
        let found = scan_all_ways(input, PayloadMode::Skip).unwrap();
        assert!(found.output.is_empty());
        assert_eq!(found.members.value("id").unwrap(), "x");
        assert!(scan_all_ways(input, PayloadMode::Validate).is_err());
        let found = scan_all_ways(br#"{"data":"QUJD","id":"x"}"#, PayloadMode::Validate).unwrap();
        assert!(found.output.is_empty());
    }

    #[test]
    fn invalid_json_is_reported_where_it_is() {
        let cases = [
            ("", "the body is empty", 0),
            ("[]", "not a JSON object", 0),
            ("{\"a\" 1}", "expected ':'", 5),
            ("{\"a\":1 \"b\":2}", "expected ',' or '}'", 7),
            ("{\"a\":01}", "expected ',' or '}', found '1'", 6),
            ("{\"a\":-}", "'}' inside a number", 6),
            ("{\"a\":1.}", "'}' inside a number", 7),
            ("{\"a\":1e}", "'}' inside a number", 7),
            ("{\"a\":tru}", "unexpected '}'", 8),
            ("{\"a\":[1,]}", "unexpected ']'", 8),
            ("{\"a\":{\"b\":1,}}", "unexpected '}'", 12),
            ("{\"a\":[}", "unexpected '}'", 6),
            ("{\"a\":\"\\x\"}", "invalid escape \\'x'", 7),
            ("{\"a\":\"\\u12g4\"}", "'g' in a \\u escape", 10),
            ("{\"a\":\"\\ud800\"}", "lone surrogate", 12),
            ("{\"a\":\"\\ud800\\u0041\"}", "lone surrogate", 18),
            ("{\"a\":\"\\udc00\"}", "lone surrogate", 12),
            ("{\"a\":\"x\ny\"}", "control character 0x0a", 7),
            ("{\"a\":1} x", "after the end", 8),
            ("{\"a\":1", "ends before the JSON object is closed", 6),
            ("{\"data\":\"QQ==", "ends inside `data`", 13),
            (
                "{\"resourceType\":\"Binary\",\"data\":1}",
                "`data` is not a JSON string",
                32,
            ),
            ("{\"id\":\"a\",\"id\":\"b\"}", "duplicate member `id`", 14),
            (
                "{\"data\":\"\",\"content\":\"\"}",
                "both `data` and `content`",
                20,
            ),
        ];
        for (input, message, offset) in cases {
            let e = error(input);
            assert!(e.message().contains(message), "{input}: {e}");
            assert_eq!(e.offset(), offset, "{input}: {e}");
        }
        let e = scan(b"{\"a\":\"\xff\"}", 100, PayloadMode::Decode).unwrap_err();
        assert!(e.message().contains("invalid UTF-8"), "{e}");
        let e = scan(b"{\"a\":\"\xe2\x82\"}", 1, PayloadMode::Decode).unwrap_err();
        assert!(e.message().contains("invalid UTF-8"), "{e}");
    }

    #[test]
    fn unknown_members_may_repeat_and_hold_anything_valid() {
        let input = "{\"x\":1,\"x\":{\"data\":\"@@\"},\"x\":\"\u{1F600}\\ud83d\\ude00\"}";
        assert!(scan_all_ways(input.as_bytes(), PayloadMode::Decode).is_ok());
    }

    #[test]
    fn nesting_is_capped_without_recursion() {
        let nested = |depth: usize| {
            // The top-level object is one level; `depth - 1` arrays inside it.
            format!(
                "{{\"x\":{}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(scan(nested(128).as_bytes(), 7, PayloadMode::Decode).is_ok());
        let e = scan(nested(129).as_bytes(), 7, PayloadMode::Decode).unwrap_err();
        assert!(e.message().contains("deeper than the limit of 128"), "{e}");
        assert!(scan(nested(1_000_000).as_bytes(), 4096, PayloadMode::Decode).is_err());
    }

    #[test]
    fn captured_members_are_checked_like_serde_json_parses_them() {
        // What the scanner accepts but serde_json refuses in a captured member: a number out
        // of f64's range, nesting past serde_json's recursion limit.
        let huge = format!("{{\"meta\":{{\"n\":{}}}}}", "9".repeat(400));
        let e = scan(huge.as_bytes(), 7, PayloadMode::Decode).unwrap_err();
        assert!(e.message().contains("number out of range"), "{e}");
        let e = error(r#"{"meta":{"n":-1.5e309}}"#);
        assert!(e.message().contains("number out of range"), "{e}");
        let deep = format!("{{\"meta\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let mut scanner = Scanner::new(ScanLimits {
            max_depth: 1000,
            max_metadata: 64 * 1024,
        });
        let e = scanner
            .feed(deep.as_bytes(), &mut BytesMut::new())
            .unwrap_err();
        assert!(e.message().contains("recursion limit"), "{e}");
        // In range, and in a skipped member, all is well.
        let fine = format!(
            r#"{{"meta":{{"n":1e308,"m":"{}"}},"x":1e400,"y":{}{}}}"#,
            "a".repeat(400),
            "[".repeat(200),
            "]".repeat(200)
        );
        let mut scanner = Scanner::new(ScanLimits {
            max_depth: 1000,
            max_metadata: 64 * 1024,
        });
        let mut rest = fine.as_bytes();
        while !rest.is_empty() {
            let (n, _) = scanner.feed(rest, &mut BytesMut::new()).unwrap();
            rest = &rest[n..];
        }
        assert!(scanner.finish().is_ok());
        assert_eq!(
            scanner.members().value("meta").unwrap()["n"],
            serde_json::json!(1e308)
        );
    }

    #[test]
    fn captured_members_are_capped() {
        let limits = ScanLimits {
            max_depth: 128,
            max_metadata: 40,
        };
        let mut scanner = Scanner::new(limits);
        let mut out = BytesMut::new();
        let input =
            br#"{"id":"0123456789","meta":{"versionId":"0123456789012345678901234567890"}}"#;
        let mut rest = &input[..];
        let e = loop {
            match scanner.feed(rest, &mut out) {
                Ok((n, _)) => rest = &rest[n..],
                Err(e) => break e,
            }
        };
        assert!(e.message().contains("exceed the limit of 40 bytes"), "{e}");
        // Skipped members do not count.
        let mut scanner = Scanner::new(limits);
        let big = format!("{{\"x\":\"{}\",\"id\":\"a\"}}", "y".repeat(1000));
        let mut rest = big.as_bytes();
        while !rest.is_empty() {
            let (n, _) = scanner.feed(rest, &mut out).unwrap();
            rest = &rest[n..];
        }
        assert!(scanner.finish().is_ok());
    }

    #[test]
    fn an_error_sticks() {
        let mut scanner = Scanner::new(LIMITS);
        let mut out = BytesMut::new();
        let first = scanner.feed(b"{\"a\":x", &mut out).unwrap_err();
        assert_eq!(scanner.feed(b"}", &mut out).unwrap_err(), first);
        assert_eq!(scanner.finish().unwrap_err(), first);
    }

    #[test]
    fn a_raw_control_character_among_escapes_is_reported_where_it_stands() {
        // Gathered with PHP's escapes in blocks; the decoder reports it, counting the escape as
        // one character: 4 + 1 + 40.
        let text = format!("QUJD\\/{}\u{1}AAA", "A".repeat(40));
        for mode in [PayloadMode::Decode, PayloadMode::Validate] {
            let input = format!("{{\"data\":\"{text}\"}}");
            let e = scan_all_ways(input.as_bytes(), mode).unwrap_err();
            assert!(
                e.message()
                    .contains("control character 0x01 inside a JSON string at position 45"),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_come_in_the_order_of_the_text_however_it_is_split() {
        for input in [
            &b"{\"data\":\"\\/!\\q\"}"[..],
            b"{\"data\":\"QUJD!\\/AAA\\uZZZZ\"}",
            b"{\"data\":\"\\/\\/AA\x01\\/\\x\"}",
        ] {
            let e = scan_all_ways(input, PayloadMode::Decode).unwrap_err();
            assert!(e.message().contains("not valid base64"), "{e}");
            let e = scan_all_ways(input, PayloadMode::Validate).unwrap_err();
            assert!(e.message().contains("not valid base64"), "{e}");
        }
    }

    #[test]
    fn escaped_payloads_decode_like_plain_ones() {
        use base64::Engine as _;
        let mut rng = crate::test_rng::Rng(0x2545_F491_4F6C_DD1D);
        let bytes: Vec<u8> = (0..40_000).map(|_| rng.next() as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for escaped in [
            text.replace('/', "\\/"),
            text.replace('+', "\\u002B").replace('/', "\\/"),
            text.replace('A', "\\u0041\\n"),
        ] {
            let input = format!("{{\"data\":\"{escaped}\",\"id\":\"x\"}}");
            for piece in [7, 64, 1000, 65536, input.len()] {
                let found = scan(input.as_bytes(), piece, PayloadMode::Decode).unwrap();
                assert_eq!(found.output, bytes, "pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_raw_control_character_between_escapes_is_reported() {
        let e = scan_all_ways(b"{\"data\":\"QU\\/J\x01D\"}", PayloadMode::Decode).unwrap_err();
        assert!(e.message().contains("control character 0x01"), "{e}");
        let ok = scan_all_ways(
            b"{\"data\":\"\\/\\/\\/\\/ Q\\u0055\\u004a\\u0044\"}",
            PayloadMode::Decode,
        )
        .unwrap();
        assert_eq!(ok.output, [0xff, 0xff, 0xff, b'A', b'B', b'C']);
    }

    /// Scans `input` cut at `cuts`, choosing `mode` at the payload, with or without
    /// compaction; the error, if any, as its message and offset.
    fn scan_cut(
        input: &[u8],
        cuts: &[usize],
        mode: PayloadMode,
        compact: bool,
    ) -> Result<Vec<u8>, (String, u64)> {
        let mut scanner = Scanner::new(LIMITS);
        if !compact {
            scanner.without_compaction();
        }
        let mut out = BytesMut::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&input.len()]) {
            let mut rest = &input[at..end.max(at)];
            at = end.max(at);
            while !rest.is_empty() {
                let (n, event) = scanner
                    .feed(rest, &mut out)
                    .map_err(|e| (e.message().to_owned(), e.offset()))?;
                rest = &rest[n..];
                if event == Event::PayloadStart {
                    scanner.set_payload_mode(mode);
                }
            }
        }
        scanner
            .finish()
            .map_err(|e| (e.message().to_owned(), e.offset()))?;
        Ok(out.to_vec())
    }

    /// The payloads of the benchmark's forms, and broken ones: each byte and escape that the
    /// compacted way takes and the decoder refuses, or that it leaves to the general path.
    fn forms(rng: &mut crate::test_rng::Rng, len: usize) -> Vec<String> {
        use base64::Engine as _;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let wrap = |separator: &str, trailing: bool| {
            let lines: Vec<&str> = text
                .as_bytes()
                .chunks(76)
                .map(|line| std::str::from_utf8(line).unwrap())
                .collect();
            lines.join(separator) + if trailing { separator } else { "" }
        };
        let mut forms = vec![
            text.clone(),
            wrap(" ", false),
            wrap("\\r\\n", false),
            wrap("\\n", true),
            wrap("\\u000a", false),
            text.replace('/', "\\/"),
            text.replace('+', "\\u002B"),
            text.replace('+', "\\u002b").replace('/', "\\u002f"),
            text.replace('=', "\\u003d"),
            wrap(" ", false).replace('/', "\\/"),
        ];
        let broken: Vec<String> = forms
            .iter()
            .flat_map(|form| {
                [
                    "!", "\\u0001", "\u{1}", "=", "\"", "\\b", "\\ud800", "-", "\u{e9}", "  ",
                    "\\n\\n",
                ]
                .iter()
                .map(move |bad| {
                    let mut at = form.len() / 3;
                    while !form.is_char_boundary(at) || form[..at].ends_with('\\') {
                        at += 1;
                    }
                    format!("{}{bad}{}", &form[..at], &form[at..])
                })
            })
            .collect();
        forms.extend(broken);
        forms
    }

    #[test]
    fn compacted_payloads_read_like_the_general_path_split_at_every_byte() {
        let mut rng = crate::test_rng::Rng(0x6469_6666_6572);
        for len in [0, 2, 40, 100] {
            for payload in forms(&mut rng, len) {
                let input = format!(r#"{{"contentType":"a/b","data":"{payload}","id":"x"}}"#);
                let input = input.as_bytes();
                for mode in [
                    PayloadMode::Decode,
                    PayloadMode::Validate,
                    PayloadMode::Text,
                ] {
                    let expect = scan_cut(input, &[], mode, false);
                    for cut in 0..input.len() {
                        let found = scan_cut(input, &[cut], mode, true);
                        assert_eq!(found, expect, "{mode:?} {payload} cut at {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn compacted_large_payloads_read_like_the_general_path_split_anywhere() {
        let mut rng = crate::test_rng::Rng(0x006c_6172_6765);
        for payload in forms(&mut rng, 60_000) {
            let input = format!(r#"{{"contentType":"a/b","data":"{payload}","id":"x"}}"#);
            let input = input.as_bytes();
            for mode in [
                PayloadMode::Decode,
                PayloadMode::Validate,
                PayloadMode::Text,
            ] {
                let expect = scan_cut(input, &[], mode, false);
                for _ in 0..4 {
                    let mut cuts: Vec<usize> = (0..8).map(|_| rng.below(input.len())).collect();
                    cuts.sort_unstable();
                    let found = scan_cut(input, &cuts, mode, true);
                    assert_eq!(found, expect, "{mode:?} {} cut at {cuts:?}", &payload[..80]);
                }
            }
        }
    }
}
