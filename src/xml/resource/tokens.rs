//! A push tokenizer for JSON: fed bytes in pieces split anywhere, it checks the JSON grammar
//! (RFC 8259) and hands out tokens: keys and strings unescaped, numbers as their exact text.
//!
//! A token is handed out whole, so one token (a string, a number) may take at most
//! `max_token` bytes of memory; a token that is whole inside one piece and has no escapes is
//! lent straight from the input, without copying.

use std::fmt;

use wide::u8x16;

const TOO_LARGE: &str = "a single value is larger than the reorder limit";

/// A JSON token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Token<'a> {
    BeginObject,
    EndObject,
    BeginArray,
    EndArray,
    /// An object member's name.
    Key(&'a str),
    String(&'a str),
    /// A number's text, exactly as it stands in the input (`1.10`, `1E-22`).
    Number(&'a str),
    Bool(bool),
    Null,
    /// A string value larger than the token limit comes in pieces: `StringStart`, then
    /// `StringPart`s (unescaped, split between characters), then `StringEnd`.
    StringStart,
    StringPart(&'a str),
    StringEnd,
}

/// Why the input is not JSON (or a token too large), with the byte offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenError {
    pub(crate) message: &'static str,
    pub(crate) offset: u64,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message == TOO_LARGE {
            write!(f, "{} (at byte {})", self.message, self.offset)
        } else {
            write!(f, "invalid JSON at byte {}: {}", self.offset, self.message)
        }
    }
}

/// What the grammar allows next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// A value (the document's, an array item after a comma, a member's after the colon).
    Value,
    /// A value or `]` (just after `[`).
    ValueOrEnd,
    /// A key or `}` (just after `{`).
    KeyOrEnd,
    /// A key (after a comma in an object).
    Key,
    Colon,
    /// `,` or the end of the container.
    CommaOrEnd,
    /// The document's value is complete: only whitespace.
    Done,
}

/// A token that a piece ended in the middle of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Partial {
    None,
    /// A string or key: the raw bytes after the opening quote are in `partial`; `escape`
    /// says the last of them is an unpaired backslash.
    String {
        key: bool,
        escape: bool,
    },
    /// A number or a literal (`true`, `false`, `null`): its bytes are in `partial`.
    Bare,
}

pub(crate) struct Tokenizer {
    expect: Expect,
    /// One bit a level: set for an object, clear for an array.
    stack: Vec<bool>,
    max_depth: usize,
    max_token: usize,
    partial: Partial,
    partial_bytes: Vec<u8>,
    /// Unescaped string text.
    scratch: Vec<u8>,
    /// Bytes consumed before the current piece.
    offset: u64,
    /// A string value larger than `max_token` is being handed out in pieces; `scratch`
    /// holds the start of a character split between pieces.
    streaming: bool,
}

/// The handler's error or the tokenizer's.
pub(crate) enum FeedError<E> {
    Json(TokenError),
    Handler(E),
}

impl Tokenizer {
    pub(crate) fn new(max_depth: usize, max_token: usize) -> Tokenizer {
        Tokenizer {
            expect: Expect::Value,
            stack: Vec::new(),
            max_depth,
            max_token,
            partial: Partial::None,
            partial_bytes: Vec::new(),
            scratch: Vec::new(),
            offset: 0,
            streaming: false,
        }
    }

    /// Bytes held for a token split across pieces.
    pub(crate) fn held(&self) -> usize {
        self.partial_bytes.len() + self.scratch.len()
    }

    /// Tokenizes `input`, handing each complete token to `handler`.
    pub(crate) fn feed<E>(
        &mut self,
        input: &[u8],
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        let result = self.feed_inner(input, handler);
        self.offset += input.len() as u64;
        result
    }

    /// Checks that the document is complete.
    pub(crate) fn finish<E>(
        &mut self,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if self.partial == Partial::Bare {
            // A number at the very end of the document.
            let bytes = std::mem::take(&mut self.partial_bytes);
            let result = self.bare(&bytes, self.offset, handler);
            self.partial_bytes = bytes;
            self.partial_bytes.clear();
            self.partial = Partial::None;
            result?;
        }
        if self.partial != Partial::None || self.expect != Expect::Done {
            return Err(self.error("unexpected end of input", self.offset));
        }
        Ok(())
    }

    fn error<E>(&self, message: &'static str, offset: u64) -> FeedError<E> {
        FeedError::Json(TokenError { message, offset })
    }

    fn feed_inner<E>(
        &mut self,
        input: &[u8],
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        // The piece's valid UTF-8 prefix, checked once: strings without escapes inside it are
        // lent from it. Strings past it (a character split between pieces, bad UTF-8) are
        // checked one by one, and their errors reported as before.
        let text = match std::str::from_utf8(input) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&input[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut i = 0;
        // Finish a token the previous piece ended in.
        match self.partial {
            Partial::None => {}
            Partial::String { key, escape } => match find_string_end(&input[i..], escape) {
                StringEnd::At(end, _) => {
                    self.partial_bytes.extend_from_slice(&input[..end]);
                    if !key && (self.streaming || self.partial_bytes.len() > self.max_token) {
                        self.stream(true, handler)?;
                        self.partial = Partial::None;
                        i = end + 1;
                    } else {
                        self.check_token_size(0)?;
                        let raw = std::mem::take(&mut self.partial_bytes);
                        let at = self.offset;
                        let result = self.string(&raw, key, at, handler);
                        self.partial_bytes = raw;
                        self.partial_bytes.clear();
                        self.partial = Partial::None;
                        result?;
                        i = end + 1;
                    }
                }
                StringEnd::Open { escape } => {
                    self.partial_bytes.extend_from_slice(input);
                    self.partial = Partial::String { key, escape };
                    return self.string_piece(key, handler);
                }
            },
            Partial::Bare => {
                let end = bare_len(input);
                self.partial_bytes.extend_from_slice(&input[..end]);
                self.check_token_size(0)?;
                if end == input.len() {
                    return Ok(());
                }
                let raw = std::mem::take(&mut self.partial_bytes);
                let at = self.offset;
                let result = self.bare(&raw, at, handler);
                self.partial_bytes = raw;
                self.partial_bytes.clear();
                self.partial = Partial::None;
                result?;
                i = end;
            }
        }
        while i < input.len() {
            let b = input[i];
            let at = self.offset + i as u64;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    // Indentation comes in runs: spaces are counted sixteen at a time.
                    i += 1;
                    while let Some(block) = input.get(i..i + 16) {
                        let x = u8x16::new(block.try_into().unwrap_or_default());
                        let spaces = !x.simd_eq(u8x16::splat(b' ')).to_bitmask();
                        let spaces = spaces.trailing_zeros() as usize;
                        i += spaces;
                        if spaces < 16 {
                            break;
                        }
                    }
                    while i < input.len() && matches!(input[i], b' ' | b'\t' | b'\n' | b'\r') {
                        i += 1;
                    }
                    continue;
                }
                b'"' => {
                    let key = match self.expect {
                        Expect::Key | Expect::KeyOrEnd => true,
                        Expect::Value | Expect::ValueOrEnd => false,
                        _ => return Err(self.error("unexpected string", at)),
                    };
                    // Most strings are short: found in one look at each byte for the closing
                    // quote, a backslash and control characters.
                    let rest = &input[i + 1..];
                    if let Some(len) = string_stop(&rest[..rest.len().min(SHORT)]) {
                        if rest[len] == b'"'
                            && i + 1 + len <= text.len()
                            && (key || len <= self.max_token)
                        {
                            self.plain_string(&text[i + 1..i + 1 + len], key, false, at, handler)?;
                            i += len + 2;
                            // A key's colon, and a space after it, most often follow at once.
                            if key && input.get(i) == Some(&b':') {
                                self.expect = Expect::Value;
                                i += 1;
                                if input.get(i) == Some(&b' ') {
                                    i += 1;
                                }
                            }
                            continue;
                        }
                    }
                    match find_string_end(rest, false) {
                        StringEnd::At(len, _) if !key && len > self.max_token => {
                            self.partial_bytes.clear();
                            self.partial_bytes
                                .extend_from_slice(&input[i + 1..i + 1 + len]);
                            self.stream(true, handler)?;
                            i += len + 2;
                        }
                        StringEnd::At(len, false) if i + 1 + len <= text.len() => {
                            self.plain_string(&text[i + 1..i + 1 + len], key, true, at, handler)?;
                            i += len + 2;
                        }
                        StringEnd::At(len, _) => {
                            self.string(&input[i + 1..i + 1 + len], key, at, handler)?;
                            i += len + 2;
                        }
                        StringEnd::Open { escape } => {
                            self.partial_bytes.clear();
                            self.partial_bytes.extend_from_slice(&input[i + 1..]);
                            self.partial = Partial::String { key, escape };
                            return self.string_piece(key, handler);
                        }
                    }
                }
                b'{' | b'[' => {
                    if !matches!(self.expect, Expect::Value | Expect::ValueOrEnd) {
                        return Err(self.error("unexpected start of a container", at));
                    }
                    if self.stack.len() >= self.max_depth {
                        return Err(self.error("nested too deeply", at));
                    }
                    let object = b == b'{';
                    self.stack.push(object);
                    self.expect = if object {
                        Expect::KeyOrEnd
                    } else {
                        Expect::ValueOrEnd
                    };
                    let token = if object {
                        Token::BeginObject
                    } else {
                        Token::BeginArray
                    };
                    handler(token).map_err(FeedError::Handler)?;
                    i += 1;
                }
                b'}' | b']' => {
                    let object = b == b'}';
                    let ok = match self.expect {
                        Expect::CommaOrEnd => true,
                        Expect::KeyOrEnd => object,
                        Expect::ValueOrEnd => !object,
                        _ => false,
                    };
                    if !ok || self.stack.last() != Some(&object) {
                        return Err(self.error("unexpected end of a container", at));
                    }
                    self.stack.pop();
                    self.after_value();
                    let token = if object {
                        Token::EndObject
                    } else {
                        Token::EndArray
                    };
                    handler(token).map_err(FeedError::Handler)?;
                    i += 1;
                }
                b',' => {
                    if self.expect != Expect::CommaOrEnd {
                        return Err(self.error("unexpected comma", at));
                    }
                    self.expect = if self.stack.last() == Some(&true) {
                        Expect::Key
                    } else {
                        Expect::Value
                    };
                    i += 1;
                }
                b':' => {
                    if self.expect != Expect::Colon {
                        return Err(self.error("unexpected colon", at));
                    }
                    self.expect = Expect::Value;
                    i += 1;
                }
                _ => {
                    let len = bare_len(&input[i..]);
                    if len == 0 {
                        return Err(self.error("unexpected character", at));
                    }
                    if i + len == input.len() {
                        // The piece may end inside the number or literal.
                        self.partial_bytes.clear();
                        self.partial_bytes.extend_from_slice(&input[i..]);
                        self.partial = Partial::Bare;
                        return self.check_token_size(0);
                    }
                    self.bare(&input[i..i + len], at, handler)?;
                    i += len;
                }
            }
        }
        Ok(())
    }

    /// After a piece of a string that goes on in the next piece: a value past the token limit
    /// is handed out as far as it goes.
    fn string_piece<E>(
        &mut self,
        key: bool,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if !key && (self.streaming || self.partial_bytes.len() > self.max_token) {
            return self.stream(false, handler);
        }
        self.check_token_size(0)
    }

    /// Hands out the raw string bytes in `partial_bytes` as a `StringPart` (after a
    /// `StringStart` for the first), keeping an escape or a character that is not complete
    /// yet; `last`: the closing quote follows them, so `StringEnd` too.
    fn stream<E>(
        &mut self,
        last: bool,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        let at = self.offset;
        if !self.streaming {
            self.streaming = true;
            // `scratch` may still hold the last escaped string handed out whole.
            self.scratch.clear();
            handler(Token::StringStart).map_err(FeedError::Handler)?;
        }
        let consumed = match unescape_prefix(&self.partial_bytes, &mut self.scratch) {
            Ok(consumed) => consumed,
            Err(message) => return Err(self.error(message, at)),
        };
        if last && consumed != self.partial_bytes.len() {
            return Err(self.error("unfinished escape", at));
        }
        self.partial_bytes.drain(..consumed);
        let valid = match std::str::from_utf8(&self.scratch) {
            Ok(_) => self.scratch.len(),
            Err(e) if e.error_len().is_none() && !last => e.valid_up_to(),
            Err(_) => return Err(self.error("invalid UTF-8 in a string", at)),
        };
        if valid > 0 {
            let text = std::str::from_utf8(&self.scratch[..valid]).unwrap_or_default();
            handler(Token::StringPart(text)).map_err(FeedError::Handler)?;
        }
        self.scratch.drain(..valid);
        if last {
            self.streaming = false;
            self.partial_bytes.clear();
            self.after_value();
            handler(Token::StringEnd).map_err(FeedError::Handler)?;
        }
        Ok(())
    }

    fn check_token_size<E>(&self, extra: usize) -> Result<(), FeedError<E>> {
        if self.partial_bytes.len() + extra > self.max_token {
            return Err(self.error(TOO_LARGE, self.offset));
        }
        Ok(())
    }

    fn after_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        };
    }

    /// A complete string or key without escapes, already checked as UTF-8 (and, unless
    /// `check_control`, for control characters).
    fn plain_string<E>(
        &mut self,
        text: &str,
        key: bool,
        check_control: bool,
        at: u64,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if text.len() > self.max_token {
            return Err(self.error(TOO_LARGE, at));
        }
        if key {
            self.expect = Expect::Colon;
        } else {
            self.after_value();
        }
        if check_control && has_control(text.as_bytes()) {
            return Err(self.error("control character in a string", at));
        }
        let token = if key {
            Token::Key(text)
        } else {
            Token::String(text)
        };
        handler(token).map_err(FeedError::Handler)
    }

    /// A complete string or key: `raw` is what stands between the quotes.
    fn string<E>(
        &mut self,
        raw: &[u8],
        key: bool,
        at: u64,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if raw.len() > self.max_token {
            return Err(self.error(TOO_LARGE, at));
        }
        if key {
            self.expect = Expect::Colon;
        } else {
            self.after_value();
        }
        let text: &str = if memchr::memchr(b'\\', raw).is_none() {
            if has_control(raw) {
                return Err(self.error("control character in a string", at));
            }
            std::str::from_utf8(raw).map_err(|_| self.error("invalid UTF-8 in a string", at))?
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            let result = unescape(raw, &mut scratch);
            self.scratch = scratch;
            if let Err(message) = result {
                return Err(self.error(message, at));
            }
            std::str::from_utf8(&self.scratch).map_err(|_| {
                FeedError::Json(TokenError {
                    message: "invalid UTF-8 in a string",
                    offset: at,
                })
            })?
        };
        let token = if key {
            Token::Key(text)
        } else {
            Token::String(text)
        };
        handler(token).map_err(FeedError::Handler)
    }

    /// A complete number or literal.
    fn bare<E>(
        &mut self,
        raw: &[u8],
        at: u64,
        handler: &mut impl FnMut(Token<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if !matches!(self.expect, Expect::Value | Expect::ValueOrEnd) {
            return Err(self.error("unexpected value", at));
        }
        let token = match raw {
            b"true" => Token::Bool(true),
            b"false" => Token::Bool(false),
            b"null" => Token::Null,
            _ if is_json_number(raw) => {
                // Only ASCII digits, signs, dots and exponents: UTF-8.
                Token::Number(std::str::from_utf8(raw).unwrap_or_default())
            }
            _ => return Err(self.error("invalid number or literal", at)),
        };
        self.after_value();
        handler(token).map_err(FeedError::Handler)
    }
}

/// How many bytes of a string are looked at one by one before searching with `memchr`.
const SHORT: usize = 32;

/// The bytes that end the plain run of a string: the closing quote, a backslash, and control
/// characters (an error unless escaped).
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the first byte of [`STRING_STOP`] is in `bytes`, looking at sixteen bytes at a time,
/// then eight.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(block) = bytes.get(at..at + 16) {
        let x = u8x16::new(block.try_into().unwrap_or_default());
        let stops = x.simd_eq(u8x16::splat(b'"'))
            | x.simd_eq(u8x16::splat(b'\\'))
            | x.min(u8x16::splat(0x1f)).simd_eq(x);
        let stops = stops.to_bitmask();
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize);
        }
        at += 16;
    }
    // The high bit of each byte below `ONES * n`: exact up to the first such byte, the only
    // one used (a borrow only reaches the bytes above it).
    let below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGH;
    while let Some(eight) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        let found = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| STRING_STOP[usize::from(b)])
        .map(|p| at + p)
}

enum StringEnd {
    /// The closing quote is at this offset; `escaped`: a backslash comes before it.
    At(usize, bool),
    /// No closing quote; `escape`: the input ends in an unpaired backslash.
    Open { escape: bool },
}

/// Finds the closing quote of a string whose raw bytes continue in `input`; `escape` says the
/// byte before `input` was an unpaired backslash.
fn find_string_end(input: &[u8], mut escape: bool) -> StringEnd {
    let mut i = 0;
    let mut escaped = escape;
    if escape {
        if input.is_empty() {
            return StringEnd::Open { escape: true };
        }
        i = 1;
        escape = false;
    }
    while let Some(found) = memchr::memchr2(b'"', b'\\', &input[i..]) {
        let at = i + found;
        if input[at] == b'"' {
            return StringEnd::At(at, escaped);
        }
        escaped = true;
        if at + 1 == input.len() {
            return StringEnd::Open { escape: true };
        }
        i = at + 2;
    }
    StringEnd::Open { escape }
}

/// Whether `bytes` holds a control character, which a JSON string must escape; without an
/// early exit, so that it runs on whole vectors.
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| found | (b < 0x20))
}

/// The length of the number or literal at the start of `input`.
fn bare_len(input: &[u8]) -> usize {
    input
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z'))
        .unwrap_or(input.len())
}

/// The JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub(crate) fn is_json_number(s: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && s[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if s.first() == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == s.len()
}

/// Unescapes the raw bytes of a JSON string into `out` (bytes, checked as UTF-8 later).
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut i = 0;
    while i < raw.len() {
        // The plain run up to the next backslash or control character, found in one pass.
        let plain = string_stop(&raw[i..]).unwrap_or(raw.len() - i);
        out.extend_from_slice(&raw[i..i + plain]);
        i += plain;
        match raw.get(i) {
            None => break,
            Some(b'\\') => i += 1,
            // A quote cannot stand unescaped in a string: as any other byte, were it to.
            Some(b'"') => {
                out.push(b'"');
                i += 1;
                continue;
            }
            Some(_) => return Err("control character in a string"),
        }
        let Some(&escape) = raw.get(i) else {
            return Err("unfinished escape");
        };
        i += 1;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(raw.get(i..i + 4)).ok_or("bad \\u escape")?;
                i += 4;
                if (0xD800..0xDC00).contains(&high) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return Err("lone surrogate in \\u escape");
                    }
                    let low = hex4(raw.get(i + 2..i + 6)).ok_or("bad \\u escape")?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err("lone surrogate in \\u escape");
                    }
                    i += 6;
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                        .ok_or("bad \\u escape")?
                } else {
                    char::from_u32(high).ok_or("lone surrogate in \\u escape")?
                }
            }
            _ => return Err("invalid escape"),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Ok(())
}

/// Unescapes the raw bytes of a string value into `out`, up to an escape that `raw` ends in
/// the middle of; returns how many raw bytes were used.
fn unescape_prefix(raw: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
    // An escape is at most 12 bytes (a surrogate pair): the last one may be unfinished.
    let mut end = raw.len();
    let mut i = 0;
    while let Some(found) = memchr::memchr(b'\\', &raw[i..]) {
        let at = i + found;
        let needed = match raw.get(at + 1) {
            None => 2,
            Some(b'u') => match hex4(raw.get(at + 2..at + 6)) {
                Some(high) if (0xD800..0xDC00).contains(&high) => 12,
                _ => 6,
            },
            Some(_) => 2,
        };
        if at + needed > raw.len() {
            end = at;
            break;
        }
        i = at + needed;
    }
    unescape(&raw[..end], out)?;
    Ok(end)
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let digits = digits?;
    let mut value = 0;
    for &d in digits {
        value = value * 16 + char::from(d).to_digit(16)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Eight bytes at a time find what one byte at a time finds, whatever the bytes.
    #[test]
    fn string_stop_finds_the_first_stop() {
        let mut rng = Rng(5);
        let pool = [
            b'a', b' ', b'"', b'\\', 0x00, 0x1F, 0x20, 0x7F, 0x80, 0x9F, 0xA0, 0xE9, 0xFF,
        ];
        for _ in 0..20_000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(3) {
                    0 => pool[rng.below(pool.len())],
                    _ => rng.below(256) as u8,
                })
                .collect();
            let expected = bytes.iter().position(|&b| STRING_STOP[usize::from(b)]);
            assert_eq!(string_stop(&bytes), expected, "{bytes:?}");
        }
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        BeginObject,
        EndObject,
        BeginArray,
        EndArray,
        Key(String),
        String(String),
        Number(String),
        Bool(bool),
        Null,
        StringStart,
        StringPart(String),
        StringEnd,
    }

    fn own(token: Token<'_>) -> Owned {
        match token {
            Token::BeginObject => Owned::BeginObject,
            Token::EndObject => Owned::EndObject,
            Token::BeginArray => Owned::BeginArray,
            Token::EndArray => Owned::EndArray,
            Token::Key(k) => Owned::Key(k.into()),
            Token::String(s) => Owned::String(s.into()),
            Token::Number(n) => Owned::Number(n.into()),
            Token::Bool(b) => Owned::Bool(b),
            Token::Null => Owned::Null,
            Token::StringStart => Owned::StringStart,
            Token::StringPart(s) => Owned::StringPart(s.into()),
            Token::StringEnd => Owned::StringEnd,
        }
    }

    fn tokens(pieces: &[&[u8]]) -> Result<Vec<Owned>, TokenError> {
        let mut tokenizer = Tokenizer::new(64, 1 << 20);
        let mut all = Vec::new();
        let mut handler = |t: Token<'_>| {
            all.push(own(t));
            Ok::<_, ()>(())
        };
        for piece in pieces {
            match tokenizer.feed(piece, &mut handler) {
                Ok(()) => {}
                Err(FeedError::Json(e)) => return Err(e),
                Err(FeedError::Handler(())) => unreachable!(),
            }
        }
        match tokenizer.finish(&mut handler) {
            Ok(()) => Ok(all),
            Err(FeedError::Json(e)) => Err(e),
            Err(FeedError::Handler(())) => unreachable!(),
        }
    }

    const DOC: &[u8] = br#" {"a" : [1, -0.5e+3, true, false, null, "x\"y\\\u00e9\ud83d\ude00\n"], "b\/": {}, "c": [], "d": 1.10} "#;

    fn expected() -> Vec<Owned> {
        use Owned::*;
        vec![
            BeginObject,
            Key("a".into()),
            BeginArray,
            Number("1".into()),
            Number("-0.5e+3".into()),
            Bool(true),
            Bool(false),
            Null,
            String("x\"y\\\u{e9}\u{1F600}\n".into()),
            EndArray,
            Key("b/".into()),
            BeginObject,
            EndObject,
            Key("c".into()),
            BeginArray,
            EndArray,
            Key("d".into()),
            Number("1.10".into()),
            EndObject,
        ]
    }

    #[test]
    fn tokens_whole_and_split_at_every_byte() {
        assert_eq!(tokens(&[DOC]).unwrap(), expected());
        for split in 0..=DOC.len() {
            let (a, b) = DOC.split_at(split);
            assert_eq!(tokens(&[a, b]).unwrap(), expected(), "split at {split}");
        }
        let mut rng = Rng(7);
        for _ in 0..200 {
            let mut pieces = Vec::new();
            let mut rest = DOC;
            while !rest.is_empty() {
                let n = 1 + rng.below(6).min(rest.len() - 1);
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            assert_eq!(tokens(&pieces).unwrap(), expected());
        }
    }

    /// Tokens of `pieces` with strings larger than `max_token` joined back from their parts.
    fn joined_tokens(pieces: &[&[u8]], max_token: usize) -> Result<Vec<Owned>, TokenError> {
        let mut tokenizer = Tokenizer::new(64, max_token);
        let mut all = Vec::new();
        let mut handler = |t: Token<'_>| {
            match (t, all.last_mut()) {
                (Token::StringPart(part), Some(Owned::StringPart(text))) => text.push_str(part),
                (Token::StringPart(part), Some(Owned::StringStart)) => {
                    all.pop();
                    all.push(Owned::StringPart(part.into()));
                }
                (Token::StringEnd, Some(Owned::StringPart(text))) => {
                    let text = std::mem::take(text);
                    all.pop();
                    all.push(Owned::String(text));
                }
                (t, _) => all.push(own(t)),
            }
            Ok::<_, ()>(())
        };
        for piece in pieces {
            match tokenizer.feed(piece, &mut handler) {
                Ok(()) => {}
                Err(FeedError::Json(e)) => return Err(e),
                Err(FeedError::Handler(())) => unreachable!(),
            }
        }
        match tokenizer.finish(&mut handler) {
            Ok(()) => Ok(all),
            Err(FeedError::Json(e)) => Err(e),
            Err(FeedError::Handler(())) => unreachable!(),
        }
    }

    /// Found by the `resource_xml` fuzz target: a long string after a short one with an
    /// escape began with the short one's text.
    #[test]
    fn a_long_string_after_an_escaped_one_is_only_itself() {
        let doc = br#"["a\u0026b", "0123456789\u003c"]"#;
        let expected = vec![
            Owned::BeginArray,
            Owned::String("a&b".into()),
            Owned::String("0123456789<".into()),
            Owned::EndArray,
        ];
        for split in 0..=doc.len() {
            let (a, b) = doc.split_at(split);
            assert_eq!(
                joined_tokens(&[a, b], 8).unwrap(),
                expected,
                "split at {split}"
            );
        }
    }

    #[test]
    fn long_string_values_come_in_parts_split_anywhere() {
        let doc = br#"{"key-longer-than-8": ["abc\/def\\\"\u00e9\ud83d\ude00ghi\u0041\n\u00e9\u00e9\u00e9", "short", "\u00e9t\u00e9\u00e9t\u00e9 and more"]}"#;
        let expected = vec![
            Owned::BeginObject,
            Owned::Key("key-longer-than-8".into()),
            Owned::BeginArray,
            Owned::String("abc/def\\\"\u{e9}\u{1F600}ghiA\n\u{e9}\u{e9}\u{e9}".into()),
            Owned::String("short".into()),
            Owned::String("\u{e9}t\u{e9}\u{e9}t\u{e9} and more".into()),
            Owned::EndArray,
            Owned::EndObject,
        ];
        // Keys are never streamed: a key longer than the limit is an error.
        assert!(joined_tokens(&[doc], 8).is_err());
        let limit = 18;
        assert_eq!(joined_tokens(&[doc], limit).unwrap(), expected);
        for split in 0..=doc.len() {
            let (a, b) = doc.split_at(split);
            assert_eq!(
                joined_tokens(&[a, b], limit).unwrap(),
                expected,
                "split at {split}"
            );
        }
        let mut rng = Rng(5);
        for _ in 0..300 {
            let mut pieces = Vec::new();
            let mut rest = &doc[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(5).min(rest.len() - 1);
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            assert_eq!(joined_tokens(&pieces, limit).unwrap(), expected);
        }
        // Bad escapes, UTF-8 and surrogates in a streamed string are errors too.
        for bad in [
            &br#"["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x"]"#[..],
            b"[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xff\"]",
            br#"["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\ud800"]"#,
            br#"["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u00"]"#,
        ] {
            assert!(
                joined_tokens(&[bad], limit).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_number_at_the_end_of_the_document() {
        assert_eq!(
            tokens(&[b"12", b"3"]).unwrap(),
            [Owned::Number("123".into())]
        );
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in [
            &b"{"[..],
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"[1,]",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"[tru]",
            b"[\"\x01\"]",
            b"[\"\\x\"]",
            b"[\"\\ud800\"]",
            b"[\"\xff\"]",
            b"{} {}",
            b"{]",
            b"[}",
            b"{\"a\":1 \"b\":2}",
            b"\"a\" :",
            b"",
        ] {
            assert!(
                tokens(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds_depth_and_token_size() {
        let mut tokenizer = Tokenizer::new(2, 8);
        let mut handler = |_: Token<'_>| Ok::<_, ()>(());
        assert!(matches!(
            tokenizer.feed(b"[[[", &mut handler),
            Err(FeedError::Json(_))
        ));
        let mut tokenizer = Tokenizer::new(2, 8);
        // Keys are held whole; string values past the limit come in parts.
        assert!(tokenizer.feed(b"{\"12345", &mut handler).is_ok());
        assert!(matches!(
            tokenizer.feed(b"6789", &mut handler),
            Err(FeedError::Json(_))
        ));
    }
}
