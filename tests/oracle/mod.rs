//! A reference for what a client must get from the layer, for tests and the fuzz target.
//!
//! [`reference`] reads the whole inner body with serde_json, member by member, takes the
//! Binary's fields and decodes the payload with the base64 crate after removing whitespace. It
//! knows nothing of the streaming scanner; it only knows the contract:
//!
//! - The body is one JSON object (RFC 8259), UTF-8, nothing but whitespace after it.
//! - The known members (`resourceType`, `id`, `meta`, `implicitRules`, `language`,
//!   `contentType`, `securityContext`, their `_x` extensions, `data`, `content`) appear at most
//!   once, and not both `data` and `content`. serde_json's `Value` map keeps the last of
//!   duplicate keys, so the reference walks the top-level members itself and never builds that
//!   map.
//! - Nesting is at most `max_depth` levels, the top-level object counting as one. serde_json's
//!   own recursion limit (128) is not relied on: values are first read as `RawValue` (which
//!   serde_json skips without recursing) and their depth is counted before they are parsed.
//! - The JSON text of the captured members (all known members but the payload) adds up to at
//!   most `max_metadata` bytes; captured values are parsed into serde_json `Value`s, so a number
//!   out of f64 range there is refused, as serde_json refuses it. Members the layer skips are
//!   only checked for JSON validity: serde_json's `RawValue` skips strings without looking at
//!   `\u` escapes, so the reference checks surrogate pairs in them itself.
//! - The payload is a JSON string; after unescaping, the whitespace FHIR allows (space, tab,
//!   CR, LF) is removed anywhere and the rest must be canonical padded base64 (the base64
//!   crate's STANDARD engine: padding required, no stray trailing bits, nothing after `=`).
//! - `contentType` is a string that is an RFC 9110 media type (`token "/" token`, then
//!   `;`-separated `token "=" (token / quoted-string)` parameters, optional whitespace around
//!   it) with no control characters; only a quoted-string may hold non-ASCII ones (obs-text).
//!
//! It also models *when* the layer decides, since the layer streams: a response whose head has
//! gone out as the untouched inner body (a resource that is not a Binary, a Binary without a
//! payload, FHIR JSON chosen by the client) is not taken back by a fault later in the body. So
//! the reference records the point where the decision falls (after the member that completes
//! it, one byte later if that member is a number, or at the opening quote of the payload) and
//! lets a pass-through decided there stand whatever follows. The reorder buffer is modelled the
//! same way: the layer gives up when it has received more than `reorder_limit` bytes without
//! having decided, which depends on where the frames end.

#![allow(dead_code)]

pub mod gen;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde_json::value::RawValue;
use serde_json::Value;
use tower_fhir_binary::{BinaryNegotiationLayer, InvalidBinary, NegotiatedBody};
use tower_layer::Layer;
use tower_service::Service;

/// The layer's caps, as the reference must know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
    pub max_metadata: usize,
    pub reorder_limit: usize,
    pub read_whole_limit: usize,
    pub frame_size: usize,
}

impl Limits {
    /// The layer's defaults.
    pub const DEFAULT: Limits = Limits {
        max_depth: 128,
        max_metadata: 64 * 1024,
        reorder_limit: 4 * 1024 * 1024,
        read_whole_limit: 256 * 1024,
        frame_size: 64 * 1024,
    };

    /// Small caps, so that generated documents hit them.
    pub const SMALL: Limits = Limits {
        max_depth: 6,
        max_metadata: 300,
        reorder_limit: 700,
        read_whole_limit: 200,
        frame_size: 13,
    };

    pub fn layer(&self) -> BinaryNegotiationLayer {
        BinaryNegotiationLayer::new()
            .max_depth(self.max_depth)
            .max_metadata_size(self.max_metadata)
            .reorder_buffer_limit(self.reorder_limit)
            .read_whole_limit(self.read_whole_limit)
            .frame_size(self.frame_size)
    }
}

/// What the client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `GET`, no `Accept`: the document.
    Native,
    /// `HEAD`, no `Accept`: the document's head.
    Head,
    /// `GET ?_format=json`: FHIR JSON whatever the body.
    Json,
    /// `GET` with `Accept: application/fhir+json;q=0.5, image/*;q=0.8`: the document for
    /// images, FHIR JSON for anything else, decided on the Binary's contentType.
    Mixed,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Native, Mode::Head, Mode::Json, Mode::Mixed];

    pub fn request(self) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let builder = match self {
            Mode::Native => Request::get("/Binary/1"),
            Mode::Head => Request::head("/Binary/1"),
            Mode::Json => Request::get("/Binary/1?_format=json"),
            Mode::Mixed => Request::get("/Binary/1")
                .header("accept", "application/fhir+json;q=0.5, image/*;q=0.8"),
        };
        builder.body(http_body_util::Empty::new()).unwrap()
    }

    /// Whether a Binary with this (valid) content type is served as the document.
    fn native_for(self, content_type: &str) -> bool {
        match self {
            Mode::Native | Mode::Head => true,
            Mode::Json => false,
            Mode::Mixed => {
                let essence = content_type.split(';').next().unwrap_or_default().trim();
                let ty = essence.split('/').next().unwrap_or_default();
                ty.eq_ignore_ascii_case("image")
            }
        }
    }
}

/// What the client must get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The decoded document with this Content-Type (for `HEAD`: its length, no body).
    Native {
        content_type: String,
        bytes: Vec<u8>,
    },
    /// The inner response untouched: its Content-Type and exactly its bytes (none for `HEAD`).
    PassThrough,
    /// A 502 with an OperationOutcome, or a broken transfer.
    Reject(String),
}

/// The members whose duplicates the layer refuses; all but the payload are captured.
const CAPTURED: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "contentType",
    "securityContext",
    "_id",
    "_implicitRules",
    "_language",
    "_contentType",
    "_data",
    "_content",
];

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(body: &[u8], mut at: usize) -> usize {
    while at < body.len() && is_ws(body[at]) {
        at += 1;
    }
    at
}

/// One JSON value at the start of `rest` with serde_json: the value and the bytes it took.
fn one<'a, T: serde::Deserialize<'a>>(rest: &'a [u8]) -> Result<(T, usize), String> {
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
    match stream.next() {
        Some(Ok(value)) => Ok((value, stream.byte_offset())),
        Some(Err(e)) => Err(format!("invalid JSON: {e}")),
        None => Err("the body ends early".into()),
    }
}

/// Deepest nesting of a valid JSON text (a scalar is 0).
fn depth(raw: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in raw.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    max
}

/// Whether every `\u` escape of a surrogate in a valid JSON text is part of a pair.
fn surrogates_paired(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let hex = |at: usize| {
        std::str::from_utf8(&bytes[at..at + 4])
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if !in_string {
            in_string = b == b'"';
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                i += 1;
            }
            b'\\' if bytes[i + 1] == b'u' => {
                let cp = hex(i + 2);
                i += 6;
                if (0xDC00..0xE000).contains(&cp) {
                    return false;
                }
                if (0xD800..0xDC00).contains(&cp) {
                    let low = bytes.get(i..i + 2) == Some(b"\\u") && {
                        let next = hex(i + 2);
                        (0xDC00..0xE000).contains(&next)
                    };
                    if !low {
                        return false;
                    }
                    i += 6;
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    true
}

/// The length of the JSON number at the start of `text`, read greedily as JSON's grammar reads
/// it (a number ends at the first byte that cannot continue it); None when it stops half-way
/// (`1.`, `-`, `2e+`).
fn number_end(text: &[u8]) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let mut i = usize::from(text.first() == Some(&b'-'));
    i = match text.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i)?,
        _ => return None,
    };
    if text.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// The end of a string whose opening quote is at `open`, found as the layer finds it before it
/// has decided (a backslash takes the next byte, `\u` the next five, nothing else is looked at);
/// None when the body ends first.
fn skip_string(body: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < body.len() {
        match body[i] {
            b'"' => return Some(i + 1),
            b'\\' if body.get(i + 1) == Some(&b'u') => i += 6,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// FHIR base64Binary: whitespace anywhere, then canonical padded base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("invalid base64: {e}"))
}

/// RFC 6838 `restricted-name-chars`.
fn is_restricted(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b)
}

/// A media type a document can have: RFC 6838 names (`type "/" subtype`, parameter names; an
/// alphanumeric first, at most 127 characters), parameters as RFC 9110 has them (`;` with optional whitespace, `name=`
/// then a non-empty value of RFC 6838 characters or a quoted-string, which may hold tabs and
/// obs-text but no other control character), one trailing `;` tolerated, optional whitespace
/// around it all. A `+suffix` is not empty.
pub fn is_media_type(text: &str) -> bool {
    let b = text.as_bytes();
    let ows = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let name = |i: usize| {
        if !b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut j = i + 1;
        while j < b.len() && is_restricted(b[j]) {
            j += 1;
        }
        Some(j)
    };
    let start = ows(0);
    let Some(i) = name(start).filter(|&end| end - start <= 127) else {
        return false;
    };
    if b.get(i) != Some(&b'/') {
        return false;
    }
    let Some(mut i) = name(i + 1) else {
        return false;
    };
    let subtype = &b[text[..i].rfind('/').unwrap_or(0) + 1..i];
    let (before, suffix) = match subtype.iter().rposition(|&c| c == b'+') {
        Some(plus) => (&subtype[..plus], Some(&subtype[plus + 1..])),
        None => (subtype, None),
    };
    // RFC 6838: names of at most 127 characters; a structured-syntax suffix (`+xml`) is a name
    // of its own.
    if before.len() > 127
        || suffix
            .is_some_and(|s| s.len() > 127 || !s.first().is_some_and(u8::is_ascii_alphanumeric))
    {
        return false;
    }
    loop {
        let k = ows(i);
        if k == b.len() {
            return true;
        }
        if b[k] != b';' {
            return false;
        }
        let k = ows(k + 1);
        if k == b.len() {
            return true;
        }
        let Some(k) = name(k).filter(|&end| end - k <= 127) else {
            return false;
        };
        if b.get(k) != Some(&b'=') {
            return false;
        }
        let k = k + 1;
        if b.get(k) == Some(&b'"') {
            let mut m = k + 1;
            loop {
                match b.get(m) {
                    None => return false,
                    Some(b'"') => break,
                    Some(b'\\') => match b.get(m + 1) {
                        Some(&c) if c == b'\t' || c >= 0x20 && c != 0x7f => m += 2,
                        _ => return false,
                    },
                    Some(&c) if c == b'\t' || c >= 0x20 && c != 0x7f => m += 1,
                    Some(_) => return false,
                }
            }
            i = m + 1;
        } else {
            let mut m = k;
            while m < b.len() && is_restricted(b[m]) {
                m += 1;
            }
            if m == k {
                return false;
            }
            i = m;
        }
    }
}

/// Why a contentType value cannot be served, if it cannot.
fn content_type_fault(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if text.trim_matches([' ', '\t']).is_empty() => {
            Some("empty contentType".into())
        }
        Value::String(text) if !is_media_type(text) => Some("invalid contentType".into()),
        Value::String(_) => None,
        _ => Some("contentType is not a string".into()),
    }
}

/// What the layer decided, and at which offset of the body.
#[derive(Clone, Debug)]
enum Decided {
    PassThrough,
    Native(String),
    Reject(String),
}

/// The reference. `ends` are the offsets where the inner body's frames end.
pub fn reference(body: &[u8], mode: Mode, limits: &Limits, ends: &[usize]) -> Expect {
    if mode == Mode::Json {
        return Expect::PassThrough;
    }
    let mut walk = Walk {
        body,
        mode,
        limits,
        seen: Vec::new(),
        resource_type: None,
        content_type: None,
        payload_key: None,
        mistyped: None,
        payload: None,
        payload_done: false,
        captured: 0,
        decided: None,
    };
    let fault = walk.run().err();
    let decided = walk.decided.clone();
    match decided {
        Some((at, decision)) => {
            // The layer gives up once it holds more than the reorder limit undecided.
            if ends
                .iter()
                .any(|&end| end > limits.reorder_limit && end < at)
            {
                return Expect::Reject("reorder buffer exceeded".into());
            }
            match decision {
                Decided::PassThrough => Expect::PassThrough,
                Decided::Reject(why) => Expect::Reject(why),
                Decided::Native(content_type) => match (fault, walk.payload) {
                    (Some(why), _) => Expect::Reject(why),
                    (None, Some(Ok(bytes))) => Expect::Native {
                        content_type,
                        bytes,
                    },
                    (None, Some(Err(why))) => Expect::Reject(why),
                    (None, None) => Expect::Reject("no payload".into()),
                },
            }
        }
        None => {
            if ends.iter().any(|&end| end > limits.reorder_limit) {
                return Expect::Reject("reorder buffer exceeded".into());
            }
            Expect::Reject(fault.unwrap_or_else(|| "undecided".into()))
        }
    }
}

struct Walk<'a> {
    body: &'a [u8],
    mode: Mode,
    limits: &'a Limits,
    seen: Vec<String>,
    resource_type: Option<Value>,
    content_type: Option<Value>,
    /// The payload member met (a string).
    payload_key: Option<String>,
    /// A `data` or `content` that was not a string, met before `resourceType`.
    mistyped: Option<String>,
    /// The payload, decoded or why not (checked only when the document is served).
    payload: Option<Result<Vec<u8>, String>>,
    payload_done: bool,
    captured: usize,
    decided: Option<(usize, Decided)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    PayloadStart,
    Member,
    End,
}

impl Walk<'_> {
    fn run(&mut self) -> Result<(), String> {
        let body = self.body;
        let mut at = skip_ws(body, 0);
        match body.get(at) {
            None => return Err("the body is empty".into()),
            Some(b'{') => at += 1,
            Some(_) => return Err("not a JSON object".into()),
        }
        at = skip_ws(body, at);
        let mut first = true;
        loop {
            match body.get(at) {
                None => return Err("the body ends early".into()),
                Some(b'}') if first => break,
                Some(b'"') => {}
                Some(_) => return Err("invalid JSON: expected a member name".into()),
            }
            first = false;
            let (key, n) = one::<String>(&body[at..])?;
            at = skip_ws(body, at + n);
            match body.get(at) {
                Some(b':') => at = skip_ws(body, at + 1),
                Some(_) => return Err("invalid JSON: expected ':'".into()),
                None => return Err("the body ends early".into()),
            }
            let known = key == "data" || key == "content" || CAPTURED.contains(&key.as_str());
            if known {
                if self.seen.contains(&key) {
                    return Err(format!("duplicate member `{key}`"));
                }
                self.seen.push(key.clone());
            }
            at = if key == "data" || key == "content" {
                self.payload_member(&key, at)?
            } else {
                self.other_member(&key, known, at)?
            };
            at = skip_ws(body, at);
            match body.get(at) {
                Some(b',') => at = skip_ws(body, at + 1),
                Some(b'}') => break,
                Some(_) => return Err("invalid JSON: expected ',' or '}'".into()),
                None => return Err("the body ends early".into()),
            }
        }
        at += 1;
        self.decide(Event::End, at);
        if skip_ws(body, at) != body.len() {
            return Err("data after the end of the JSON object".into());
        }
        Ok(())
    }

    fn payload_member(&mut self, key: &str, at: usize) -> Result<usize, String> {
        let body = self.body;
        let other = if key == "data" { "content" } else { "data" };
        if self.payload_key.as_deref() == Some(other) {
            return Err("both `data` and `content`".into());
        }
        match body.get(at) {
            Some(b'"') => {}
            // Before `resourceType`: maybe another resource's element (a DocumentReference's
            // `content` array), read as any value; a Binary is refused once it says so.
            Some(_) if self.resource_type.is_none() => {
                self.mistyped.get_or_insert_with(|| key.to_owned());
                return self.other_member(key, false, at);
            }
            Some(_) => return Err(format!("`{key}` is not a JSON string")),
            None => return Err("the body ends early".into()),
        }
        self.payload_key = Some(key.to_owned());
        self.payload = Some(Err("not read".into()));
        self.decide(Event::PayloadStart, at + 1);
        let end = skip_string(body, at).ok_or("the body ends inside the payload")?;
        let payload = match serde_json::from_slice::<String>(&body[at..end]) {
            Ok(text) => decode_base64(&text),
            Err(e) => Err(format!("invalid JSON in the payload: {e}")),
        };
        if let (Err(why), Some((_, Decided::Native(_)))) = (&payload, &self.decided) {
            // Decided at the opening quote: the payload is decoded as it streams.
            return Err(why.clone());
        }
        self.payload = Some(payload);
        self.payload_done = true;
        self.decide(Event::Member, end);
        Ok(end)
    }

    fn other_member(&mut self, key: &str, known: bool, at: usize) -> Result<usize, String> {
        let body = self.body;
        let is_number = body
            .get(at)
            .is_some_and(|&b| b == b'-' || b.is_ascii_digit());
        let (raw, n) = if is_number {
            // A number ends at the first byte that cannot continue it (`-06` is the number
            // `-0` and then `6`); the layer has read the member and may decide before it looks
            // at that byte, where serde_json refuses the whole token.
            let n = number_end(&body[at..]).ok_or("invalid JSON: invalid number")?;
            if at + n == body.len() {
                // A number is complete only once the byte after it shows.
                return Err("the body ends early".into());
            }
            (std::str::from_utf8(&body[at..at + n]).unwrap_or("0"), n)
        } else {
            // Not `one`: serde_json's stream checks the byte after a literal, which the layer
            // reads only with the next member, after it may have decided.
            let mut de = serde_json::Deserializer::from_slice(&body[at..]);
            let raw = <&RawValue as serde::Deserialize>::deserialize(&mut de)
                .map_err(|e| format!("invalid JSON: {e}"))?
                .get();
            (raw, raw.len())
        };
        if 1 + depth(raw) > self.limits.max_depth {
            return Err("nested deeper than the limit".into());
        }
        if known {
            self.captured += raw.len();
            if self.captured > self.limits.max_metadata {
                return Err("metadata over the cap".into());
            }
            let value: Value =
                serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
            match key {
                "resourceType" => self.resource_type = Some(value),
                "contentType" => self.content_type = Some(value),
                _ => {}
            }
        } else if !surrogates_paired(raw) {
            return Err("invalid JSON: lone surrogate".into());
        }
        // The layer knows a number has ended only when it has seen the byte after it, so
        // that byte counts towards the reorder limit.
        let decided_at = if is_number { at + n + 1 } else { at + n };
        self.decide(Event::Member, decided_at);
        Ok(at + n)
    }

    /// The layer's decision rule, applied at each event until it has decided.
    fn decide(&mut self, event: Event, at: usize) {
        if self.decided.is_some() {
            return;
        }
        let decision = match &self.resource_type {
            Some(Value::String(rt)) if rt == "Binary" => {
                if let Some(key) = &self.mistyped {
                    Some(Decided::Reject(format!("`{key}` is not a JSON string")))
                } else if event == Event::End && self.payload.is_none() {
                    Some(Decided::PassThrough)
                } else if event != Event::PayloadStart && !self.payload_done {
                    None
                } else {
                    match &self.content_type {
                        None if event == Event::End => {
                            Some(Decided::Reject("no contentType".into()))
                        }
                        None => None,
                        Some(value) => Some(match content_type_fault(value) {
                            Some(why) => Decided::Reject(why),
                            None => {
                                let text = value.as_str().unwrap_or_default().to_owned();
                                if self.mode.native_for(&text) {
                                    Decided::Native(text)
                                } else {
                                    Decided::PassThrough
                                }
                            }
                        }),
                    }
                }
            }
            Some(_) => Some(Decided::PassThrough),
            None if event == Event::End => Some(Decided::PassThrough),
            None => None,
        };
        if let Some(decision) = decision {
            self.decided = Some((at, decision));
        }
    }
}

pub use gen::Case;

impl Case {
    /// A case from a fuzz input: the first byte chooses the mode, the caps and whether the size
    /// is announced, the second seeds the frame cuts, the rest is the body.
    pub fn from_fuzz_input(data: &[u8]) -> Option<Case> {
        let (&header, rest) = data.split_first()?;
        let (&cut_seed, body) = rest.split_first()?;
        let mut rng = gen::Rng::new(u64::from(cut_seed));
        Some(Case {
            body: body.to_vec(),
            ends: gen::cuts(&mut rng, body.len()),
            exact: header & 0x10 != 0,
            mode: Mode::ALL[usize::from(header & 0x03)],
            limits: if header & 0x04 != 0 {
                Limits::SMALL
            } else {
                Limits::DEFAULT
            },
        })
    }

    /// The fuzz input for this case's body, mode, caps and size announcement (the cuts are
    /// drawn again from `cut_seed`).
    pub fn to_fuzz_input(&self, cut_seed: u8) -> Vec<u8> {
        let mode = Mode::ALL.iter().position(|m| *m == self.mode).unwrap_or(0) as u8;
        let small = if self.limits == Limits::SMALL {
            0x04
        } else {
            0
        };
        let exact = if self.exact { 0x10 } else { 0 };
        let mut input = vec![mode | small | exact, cut_seed];
        input.extend_from_slice(&self.body);
        input
    }
}

/// A body that yields the given frames; its size is announced only when asked.
pub struct Frames {
    frames: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl Frames {
    pub fn new(body: &[u8], ends: &[usize], exact: bool) -> Self {
        let body = Bytes::copy_from_slice(body);
        let mut frames = VecDeque::new();
        let mut start = 0;
        for &end in ends {
            if end > start {
                frames.push_back(body.slice(start..end));
                start = end;
            }
        }
        Frames {
            frames,
            exact: exact.then_some(body.len() as u64),
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|f| Ok(Frame::data(f))))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// What the client got.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The body failed (a broken transfer), after `body` had come.
    pub error: Option<String>,
}

/// Drives a future that never waits (the inner service and its body are always ready).
pub fn now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the layer waited on an inner service that never waits"),
    }
}

/// Runs one request through the layer in front of an inner service answering `body`, cut at
/// `ends`, as `200 application/fhir+json`.
pub fn run_layer(body: &[u8], ends: &[usize], exact: bool, mode: Mode, limits: &Limits) -> Got {
    let frames = Frames::new(body, ends, exact);
    respond(limits, StatusCode::OK, frames, mode.request())
}

/// Runs `request` through the layer over an inner service that answers with `status`, FHIR
/// JSON and `frames`, and reads the whole response.
pub fn respond(
    limits: &Limits,
    status: StatusCode,
    frames: Frames,
    request: Request<http_body_util::Empty<bytes::Bytes>>,
) -> Got {
    // Shared, so that the inner service is `Clone` as the layer asks.
    let frames = std::sync::Arc::new(std::sync::Mutex::new(Some(frames)));
    let inner = tower::service_fn(
        move |_request: Request<
            tower_fhir_binary::RequestBody<http_body_util::Empty<bytes::Bytes>>,
        >| {
            let body = frames.lock().unwrap().take().expect("one request");
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/fhir+json")
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        },
    );
    let mut service = limits.layer().layer(inner);
    let response: Response<NegotiatedBody<Frames>> = match now(service.call(request)) {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, mut body) = response.into_parts();
    let mut got = Got {
        status: parts.status,
        headers: parts.headers,
        body: Vec::new(),
        error: None,
    };
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    assert!(
                        !data.is_empty() || got.body.is_empty(),
                        "an empty data frame"
                    );
                    got.body.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let message = match e.downcast_ref::<InvalidBinary>() {
                    Some(invalid) => invalid.to_string(),
                    None => format!("not an InvalidBinary: {e}"),
                };
                got.error = Some(message);
                break;
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("the body waited on an inner body that never waits"),
        }
    }
    got
}

/// Checks what the layer gave against the reference; Err says how they differ.
pub fn compare(body: &[u8], mode: Mode, expect: &Expect, got: &Got) -> Result<(), String> {
    let header = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = header("content-type");
    let is_head = mode == Mode::Head;
    if got.status == StatusCode::BAD_GATEWAY && !is_head {
        let outcome: Value = serde_json::from_slice(&got.body)
            .map_err(|e| format!("a 502 whose body is not JSON: {e}"))?;
        if outcome["resourceType"] != "OperationOutcome" {
            return Err(format!("a 502 without an OperationOutcome: {outcome}"));
        }
    }
    let rejected = got.status == StatusCode::BAD_GATEWAY || got.error.is_some();
    if let Some(error) = &got.error {
        if !error.contains("invalid FHIR Binary") {
            return Err(format!("a body error that is not InvalidBinary: {error}"));
        }
        if got.status != StatusCode::OK {
            return Err(format!("a body error after status {}", got.status));
        }
    }
    match expect {
        Expect::Reject(_) if rejected => Ok(()),
        Expect::Reject(why) => Err(format!(
            "the reference rejects ({why}) but the layer answered {} {:?} with {} bytes",
            got.status,
            content_type,
            got.body.len()
        )),
        _ if rejected => Err(format!(
            "the layer rejected ({} {:?}: {}) but the reference expects {}",
            got.status,
            got.error,
            String::from_utf8_lossy(&got.body[..got.body.len().min(300)]),
            describe(expect)
        )),
        _ if got.status != StatusCode::OK => Err(format!("status {}", got.status)),
        Expect::PassThrough => {
            if content_type != Some("application/fhir+json") {
                return Err(format!("pass-through with content-type {content_type:?}"));
            }
            let want: &[u8] = if is_head { b"" } else { body };
            if got.body != want {
                return Err(format!(
                    "pass-through body differs: {} bytes, want {}",
                    got.body.len(),
                    want.len()
                ));
            }
            Ok(())
        }
        Expect::Native {
            content_type: want_type,
            bytes,
        } => {
            // As octets: a quoted parameter value may hold obs-text (UTF-8 here), which
            // `to_str` refuses.
            let sent = got.headers.get("content-type").map(|v| v.as_bytes());
            if sent != Some(want_type.as_bytes()) {
                return Err(format!(
                    "content-type {:?}, want {want_type:?}",
                    sent.map(String::from_utf8_lossy)
                ));
            }
            if header("x-content-type-options") != Some("nosniff") {
                return Err("no nosniff".into());
            }
            if is_head {
                if !got.body.is_empty() {
                    return Err("a HEAD with a body".into());
                }
                if header("content-length") != Some(bytes.len().to_string().as_str()) {
                    return Err(format!(
                        "HEAD content-length {:?}, want {}",
                        header("content-length"),
                        bytes.len()
                    ));
                }
            } else if got.body != *bytes {
                return Err(format!(
                    "document differs: {} bytes, want {}",
                    got.body.len(),
                    bytes.len()
                ));
            }
            if let Some(length) = header("content-length") {
                if length != bytes.len().to_string() {
                    return Err(format!("content-length {length}, want {}", bytes.len()));
                }
            }
            Ok(())
        }
    }
}

fn describe(expect: &Expect) -> String {
    match expect {
        Expect::Native {
            content_type,
            bytes,
        } => format!("the document ({content_type}, {} bytes)", bytes.len()),
        Expect::PassThrough => "the body passed through".into(),
        Expect::Reject(why) => format!("a rejection ({why})"),
    }
}

/// Runs one case and compares; Err describes the difference.
pub fn check(
    body: &[u8],
    ends: &[usize],
    exact: bool,
    mode: Mode,
    limits: &Limits,
) -> Result<Expect, String> {
    let expect = reference(body, mode, limits, ends);
    let got = run_layer(body, ends, exact, mode, limits);
    compare(body, mode, &expect, &got).map(|()| expect)
}
