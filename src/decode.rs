//! Streaming base64 decoding of a FHIR `base64Binary` JSON string value.
//!
//! The JSON scanner walks the string value of `data` (R4+) or `content` (DSTU2/STU3) and hands
//! [`Base64Decoder`] its content piece by piece, split at arbitrary points: raw runs of bytes as
//! they stand between the quotes ([`Base64Decoder::feed_raw`], never a `"` or `\`), and single
//! characters that came from JSON escapes ([`Base64Decoder::feed_escaped`], already unescaped:
//! `\/`, `\u002B`, `\u003d`, `\n`...). Wrapped or escaped content comes in batches of bare
//! symbols instead, whitespace left out and escapes undone by the scanner
//! ([`Base64Decoder::feed_symbols`]), which the decoder refuses whole if they hold anything else.
//! [`Base64Decoder::finish`] marks the closing quote.
//!
//! What is accepted:
//!
//! - the standard alphabet (`A-Z a-z 0-9 + /`) with canonical `=` padding: a whole number of
//!   4-character groups, `=` only as the last one or two characters of the last group, nothing
//!   but whitespace after it, and no non-zero bits left over in the last symbol before the
//!   padding. The URL-safe `-` and `_` are rejected. Empty content decodes to zero bytes.
//! - whitespace anywhere, skipped without changing the decoded bytes (FHIR allows it between
//!   groups and the HL7 examples wrap lines; being lenient about where costs nothing). In raw
//!   input only the space counts, because JSON forbids raw control characters inside a string;
//!   from escapes, space, tab, line feed and carriage return count.
//!
//! Every violation is a [`Base64Error`] carrying a position: the index of the offending character
//! in the string content, counting each raw byte as one and each escaped character as one (an
//! escape such as `\u002B` counts once, not six times). Once a decoder has failed it keeps
//! returning the same error.
//!
//! # Fast path
//!
//! Raw input at a group boundary goes to the base64 crate's SIMD engine in one call per piece,
//! decoded straight into the caller's buffer (validate-only decodes into a small fixed buffer and
//! discards it):
//!
//! - Until a string shows whitespace, a piece is handed to the engine without any scan: the
//!   engine rejects a space, and a `=` anywhere but in the last group (which is checked first),
//!   so success means every byte was a plain symbol. The first failure turns this off for the
//!   rest of the string.
//! - Otherwise `memchr2` finds the next space or `=`. A long run before it is decoded in place;
//!   short runs separated by spaces (a space every 76 characters) are packed into a bounded
//!   scratch buffer first, so the engine still sees large inputs.
//! - Runs shorter than the engine's SIMD threshold (those between JSON escapes, say) are decoded
//!   by a small table loop, and partial groups are completed without the general slow path.
//!
//! Control characters, non-ASCII bytes and other invalid bytes need no scan of their own: the
//! engine rejects them, and the rejected batch is then replayed through the character-by-character
//! path, which finds the first problem and reports it with its exact position. So the output, and
//! the error, never depend on how the input was split.

use std::fmt;

use base64::engine::{DecodePaddingMode, Engine as _, GeneralPurposeConfig};
use bytes::BytesMut;

use crate::alphabet::{all_symbols, is_symbol};

#[cfg(target_arch = "x86_64")]
mod vbmi;

/// Canonical padding and no stray trailing bits, as FHIR base64Binary (RFC 4648) requires;
/// padded output for the encoder, which shares the engine.
const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
    .with_decode_allow_trailing_bits(false);

#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
))]
pub(crate) fn engine() -> &'static base64::engine::Simd {
    // CPU detection happens in the constructor, which is not const: build it once.
    static ENGINE: std::sync::LazyLock<base64::engine::Simd> =
        std::sync::LazyLock::new(|| base64::engine::Simd::standard(CONFIG));
    &ENGINE
}

#[cfg(not(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_feature = "neon")
)))]
pub(crate) fn engine() -> &'static base64::engine::GeneralPurpose {
    static ENGINE: base64::engine::GeneralPurpose =
        base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    &ENGINE
}

/// A clean run at least this long is decoded in place even when a space follows it: packing it
/// into the scratch buffer would only add a copy.
const DIRECT_MIN_RUN: usize = 2048;

/// Capacity of the buffer that packs space-separated runs together (a multiple of 4). Small
/// enough to stay in cache, large enough that the engine's per-call cost is negligible.
const COMPACT_CAP: usize = 16 * 1024;

/// Size of the buffer that validate-only decoding writes into and throws away (a multiple of 3).
const SINK_LEN: usize = 12 * 1024;

/// Input bytes that fill [`SINK_LEN`] output bytes.
const SINK_INPUT: usize = SINK_LEN / 3 * 4;

/// Batches shorter than this are decoded by [`decode_small`]: the engine's SIMD kernel only
/// starts at 64 bytes and its fixed costs show on short runs.
const SMALL_BATCH: usize = 64;

/// Marks a byte outside the alphabet in [`DECODE_TABLE`].
const INVALID: u8 = 0xFF;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Byte -> 6-bit value, or [`INVALID`].
static DECODE_TABLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The character a [`Base64Error::InvalidCharacter`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offending {
    /// A raw byte of the string content (for non-ASCII text, the first byte of its UTF-8 form).
    Byte(u8),
    /// A character that came from a JSON escape.
    Escaped(char),
}

impl fmt::Display for Offending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Offending::Byte(b) if b.is_ascii_graphic() => write!(f, "'{}' (0x{b:02x})", b as char),
            Offending::Byte(b) if b.is_ascii() => write!(f, "0x{b:02x}"),
            Offending::Byte(b) => write!(f, "0x{b:02x} (not ASCII)"),
            Offending::Escaped(c) if c.is_ascii_graphic() => {
                write!(
                    f,
                    "'{c}' (0x{:02x}, written as a JSON escape)",
                    u32::from(c)
                )
            }
            Offending::Escaped(c) => {
                write!(f, "U+{:04X} (written as a JSON escape)", u32::from(c))
            }
        }
    }
}

/// Why the content of a base64Binary string is not valid base64.
///
/// Positions index the string content: one per raw byte, one per escaped character. `Display`
/// gives a sentence fit for an OperationOutcome's diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Base64Error {
    /// A character outside the standard base64 alphabet (including URL-safe `-` and `_`).
    InvalidCharacter {
        /// The character.
        character: Offending,
        /// Where it is.
        position: u64,
    },
    /// A raw control character, which JSON does not allow unescaped inside a string.
    ControlCharacter {
        /// The byte (below 0x20).
        byte: u8,
        /// Where it is.
        position: u64,
    },
    /// `=` where a group still needs data characters: in the first two places of a group.
    MisplacedPadding {
        /// Where the `=` is.
        position: u64,
    },
    /// A data character follows `=` inside the same group.
    PaddingBeforeEnd {
        /// Where the first `=` of the group is.
        position: u64,
    },
    /// A data character after the padded (and so final) group.
    DataAfterPadding {
        /// Where the data character is.
        position: u64,
    },
    /// A `=` after the padded group was already complete.
    ExtraPadding {
        /// Where the extra `=` is.
        position: u64,
    },
    /// The content ended inside a group.
    Incomplete {
        /// How many characters (data and `=`) the unfinished group has, 1 to 3.
        characters: u8,
    },
    /// The last symbol before the padding has bits set that no decoded byte uses.
    NonCanonical {
        /// The symbol.
        symbol: u8,
        /// Where it is.
        position: u64,
    },
}

impl Base64Error {
    /// Where in the string content the problem is, when it is at one character.
    #[allow(dead_code)]
    pub(crate) fn position(&self) -> Option<u64> {
        match *self {
            Base64Error::InvalidCharacter { position, .. }
            | Base64Error::ControlCharacter { position, .. }
            | Base64Error::MisplacedPadding { position }
            | Base64Error::PaddingBeforeEnd { position }
            | Base64Error::DataAfterPadding { position }
            | Base64Error::ExtraPadding { position }
            | Base64Error::NonCanonical { position, .. } => Some(position),
            Base64Error::Incomplete { .. } => None,
        }
    }
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Base64Error::InvalidCharacter {
                character,
                position,
            } => write!(
                f,
                "invalid base64 character {character} at position {position}"
            ),
            Base64Error::ControlCharacter { byte, position } => write!(
                f,
                "control character 0x{byte:02x} inside a JSON string at position {position} \
                 (JSON requires control characters to be escaped)"
            ),
            Base64Error::MisplacedPadding { position } => write!(
                f,
                "misplaced base64 padding '=' at position {position} \
                 (padding may only be the last one or two characters of the final group)"
            ),
            Base64Error::PaddingBeforeEnd { position } => write!(
                f,
                "base64 padding '=' before the end of the data at position {position}"
            ),
            Base64Error::DataAfterPadding { position } => {
                write!(f, "data after base64 padding at position {position}")
            }
            Base64Error::ExtraPadding { position } => {
                write!(
                    f,
                    "too much base64 padding: extra '=' at position {position}"
                )
            }
            Base64Error::Incomplete { characters } => write!(
                f,
                "base64 length is not a multiple of 4 (ends with {characters} character{} \
                 of an incomplete group)",
                if characters == 1 { "" } else { "s" }
            ),
            Base64Error::NonCanonical { symbol, position } => write!(
                f,
                "non-canonical base64: non-zero trailing bits in '{}' at position {position}",
                symbol as char
            ),
        }
    }
}

impl std::error::Error for Base64Error {}

/// Where the decoder is in the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Data characters, with `quad_len` of the current group held.
    Data,
    /// Inside the final group, after its first `=`.
    Padding,
    /// The padded group is complete: only whitespace may follow.
    Done,
    /// An error was reported; it is reported again on every call.
    Failed(Base64Error),
}

/// Incremental decoder for the content of one base64Binary JSON string.
///
/// Holds at most three carried symbols between calls, a few counters, and two scratch buffers of
/// fixed maximum size ([`COMPACT_CAP`] and [`SINK_LEN`] bytes) allocated on first need; nothing
/// grows with the input.
pub(crate) struct Base64Decoder {
    /// 6-bit values of the current group's data symbols; `quad_len` of them are valid.
    quad: [u8; 4],
    quad_len: u8,
    /// `=` seen in the final group.
    pads: u8,
    phase: Phase,
    /// Position of the next character.
    pos: u64,
    /// Position of the most recent data symbol, for the trailing-bits error.
    last_symbol_pos: u64,
    /// Position of the final group's first `=`.
    first_pad_pos: u64,
    decoded: u64,
    /// The engine has not rejected an unscanned piece yet: keep skipping the scan for spaces.
    optimistic: bool,
    /// Space-separated runs packed together for the engine.
    compact: Vec<u8>,
    /// Output of validate-only decoding, overwritten and discarded.
    sink: Vec<u8>,
}

impl Default for Base64Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Base64Decoder {
    /// Clones the decoding state; the scratch buffers hold nothing between calls, so the clone
    /// starts without them.
    fn clone(&self) -> Self {
        Self {
            quad: self.quad,
            quad_len: self.quad_len,
            pads: self.pads,
            phase: self.phase,
            pos: self.pos,
            last_symbol_pos: self.last_symbol_pos,
            first_pad_pos: self.first_pad_pos,
            decoded: self.decoded,
            optimistic: self.optimistic,
            compact: Vec::new(),
            sink: Vec::new(),
        }
    }
}

impl fmt::Debug for Base64Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The scratch contents are meaningless between calls; show only the state.
        f.debug_struct("Base64Decoder")
            .field("phase", &self.phase)
            .field("carried", &(self.quad_len + self.pads))
            .field("position", &self.pos)
            .field("decoded_len", &self.decoded)
            .finish_non_exhaustive()
    }
}

impl Base64Decoder {
    /// A decoder at the start of a string.
    pub(crate) fn new() -> Self {
        Self {
            quad: [0; 4],
            quad_len: 0,
            pads: 0,
            phase: Phase::Data,
            pos: 0,
            last_symbol_pos: 0,
            first_pad_pos: 0,
            decoded: 0,
            optimistic: true,
            compact: Vec::new(),
            sink: Vec::new(),
        }
    }

    /// Feeds raw string content (bytes as they stand between the quotes; never `"` or `\`).
    ///
    /// Appends the decoded bytes of every group completed so far to `out`; with `None` the input
    /// is only validated and nothing is written (HEAD requests, XML rendering). At most three
    /// bytes per four input bytes, plus three, are appended. On error `out` may hold part
    /// of this call's output; the caller is expected to abandon the document.
    pub(crate) fn feed_raw(
        &mut self,
        input: &[u8],
        mut out: Option<&mut BytesMut>,
    ) -> Result<(), Base64Error> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        let mut i = 0;
        while i < input.len() {
            if self.phase == Phase::Data {
                if self.quad_len > 0 {
                    i += self.fill(&input[i..], out.as_deref_mut());
                }
                if self.quad_len == 0 && input.len() - i >= 4 {
                    i += self.fast(&input[i..], out.as_deref_mut())?;
                    // Load the symbols of a trailing partial group.
                    i += self.fill(&input[i..], out.as_deref_mut());
                }
                if i == input.len() {
                    break;
                }
            }
            // One byte the slow way: a space, padding, an error, or anything after the padding.
            let pos = self.pos;
            self.pos += 1;
            if let Err(e) = self.raw_byte(input[i], pos, out.as_deref_mut()) {
                return Err(self.fail(e));
            }
            i += 1;
        }
        Ok(())
    }

    /// Feeds the longest prefix of `input` that the engine accepts as plain base64 symbols, when
    /// the input is likely to be nothing else (no whitespace met in this string so far); returns
    /// how many bytes it took, possibly none.
    ///
    /// Unlike [`Self::feed_raw`], `input` may hold anything (`"`, `\`, control characters...):
    /// the bytes taken are plain symbols, and so string content, and the rest is left for the
    /// caller to look at, with nothing reported. This lets the scanner hand a whole frame over
    /// without first searching it for the end of the string. `out` as for [`Self::feed_raw`].
    pub(crate) fn feed_plain(&mut self, input: &[u8], mut out: Option<&mut BytesMut>) -> usize {
        if self.phase != Phase::Data || !self.optimistic {
            return 0;
        }
        let mut taken = 0;
        if self.quad_len > 0 {
            taken = self.fill(input, out.as_deref_mut());
            if self.quad_len > 0 {
                return taken;
            }
        }
        let rest = &input[taken..];
        let whole = plain_groups(rest);
        if whole > 0 {
            match decode_batch(&rest[..whole], out.as_deref_mut(), &mut self.sink) {
                Ok(n) => {
                    self.pos += whole as u64;
                    self.decoded += n as u64;
                    taken += whole;
                }
                // Something else is in there: the caller's general path finds where.
                Err(_) => return taken,
            }
        }
        taken + self.fill(&input[taken..], out)
    }

    /// Feeds base64 symbols that the scanner took out of string content, leaving out its
    /// whitespace and undoing its escapes: `chars` characters of content (an escape counts as
    /// one), of which `trailing` come after the last symbol. Data phase only. When only
    /// validating (no `out`), `checked` more symbols came among them that the scanner checked
    /// against the alphabet itself, in whole groups of four (0 when decoding); and with
    /// `symbols_checked` it checked `symbols` too.
    ///
    /// Returns false, with the decoder and `out` as they were, when `symbols` holds anything but
    /// symbols (`=` included): the caller then feeds the same content the general way, which
    /// finds the problem and reports it where it stands. `out` as for [`Self::feed_raw`].
    pub(crate) fn feed_symbols(
        &mut self,
        symbols: &[u8],
        checked: usize,
        symbols_checked: bool,
        chars: u64,
        trailing: u64,
        mut out: Option<&mut BytesMut>,
    ) -> bool {
        if self.phase != Phase::Data
            || (checked > 0 && (out.is_some() || !checked.is_multiple_of(4)))
        {
            return false;
        }
        let (quad, quad_len, pos, last_symbol_pos, decoded) = (
            self.quad,
            self.quad_len,
            self.pos,
            self.last_symbol_pos,
            self.decoded,
        );
        let out_len = out.as_ref().map(|out| out.len());
        let mut taken = 0;
        if self.quad_len > 0 {
            taken = self.fill(symbols, out.as_deref_mut());
        }
        let accepted = if self.quad_len > 0 {
            // The group is still open: every symbol went into it, or a non-symbol stopped it.
            taken == symbols.len()
        } else {
            let rest = &symbols[taken..];
            let whole = rest.len() & !3;
            let batch = &rest[..whole];
            // The engine takes `=` in the last group as padding: that one is not for here.
            let batch_ok = whole == 0
                || (!batch[whole - 4..].contains(&b'=')
                    && match out.as_deref_mut() {
                        // Only validated: that every byte is a symbol is all the engine
                        // would check of whole groups without padding.
                        None => {
                            let valid = symbols_checked || all_symbols(batch);
                            if valid {
                                self.decoded += (whole / 4 * 3) as u64;
                            }
                            valid
                        }
                        Some(out) => match decode_batch(batch, Some(out), &mut self.sink) {
                            Ok(n) => {
                                self.decoded += n as u64;
                                true
                            }
                            Err(_) => false,
                        },
                    });
            batch_ok && self.fill(&rest[whole..], out.as_deref_mut()) == rest.len() - whole
        };
        if !accepted {
            (
                self.quad,
                self.quad_len,
                self.pos,
                self.last_symbol_pos,
                self.decoded,
            ) = (quad, quad_len, pos, last_symbol_pos, decoded);
            if let (Some(out), Some(len)) = (out, out_len) {
                out.truncate(len);
            }
            return false;
        }
        self.decoded += (checked / 4 * 3) as u64;
        self.pos = pos + chars;
        if !symbols.is_empty() || checked > 0 {
            self.last_symbol_pos = self.pos - trailing - 1;
        }
        true
    }

    /// Whether the decoder takes data symbols: no padding seen, no error.
    pub(crate) fn in_data(&self) -> bool {
        self.phase == Phase::Data
    }

    /// Feeds one character that came from a JSON escape (already unescaped).
    ///
    /// Space, tab, line feed and carriage return are skipped; base64 characters and `=` count as
    /// if they had been raw; anything else is an invalid character. `out` as for
    /// [`Self::feed_raw`]; at most 3 bytes are appended.
    pub(crate) fn feed_escaped(
        &mut self,
        ch: char,
        out: Option<&mut BytesMut>,
    ) -> Result<(), Base64Error> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        let pos = self.pos;
        self.pos += 1;
        let result = match ch {
            ' ' | '\t' | '\n' | '\r' => Ok(()),
            _ => match u8::try_from(ch) {
                Ok(byte) if byte.is_ascii() => self.symbol(byte, Offending::Escaped(ch), pos, out),
                _ => Err(Base64Error::InvalidCharacter {
                    character: Offending::Escaped(ch),
                    position: pos,
                }),
            },
        };
        result.map_err(|e| self.fail(e))
    }

    /// Ends the string: checks that the last group is complete.
    ///
    /// The final group's bytes are already written when its last character arrives (its padding
    /// is checked then), so `finish` never writes to `out`; the parameter keeps the calls
    /// uniform. Calling it again returns the same result.
    pub(crate) fn finish(&mut self, out: Option<&mut BytesMut>) -> Result<(), Base64Error> {
        let _ = out;
        match self.phase {
            Phase::Failed(e) => Err(e),
            Phase::Done => Ok(()),
            Phase::Data if self.quad_len == 0 => Ok(()),
            Phase::Data | Phase::Padding => Err(self.fail(Base64Error::Incomplete {
                characters: self.quad_len + self.pads,
            })),
        }
    }

    /// Whether the next character starts a group of data symbols: no symbols carried, no
    /// padding seen.
    pub(crate) fn at_group_start(&self) -> bool {
        self.phase == Phase::Data && self.quad_len == 0
    }

    /// Number of decoded bytes produced (or, validating, checked) so far. Unspecified after an
    /// error.
    pub(crate) fn decoded_len(&self) -> u64 {
        self.decoded
    }

    #[cfg(test)]
    /// An upper bound on the bytes one [`Self::feed_raw`] call with `len` input bytes can append
    /// (up to three carried symbols may complete a group with it), for reserving.
    pub(crate) fn max_decoded_len(len: usize) -> usize {
        (len / 4 + 1).saturating_mul(3)
    }

    /// Capacity of the scratch buffers, to check that it stays bounded.
    #[cfg(test)]
    fn scratch_capacity(&self) -> usize {
        self.compact.capacity() + self.sink.capacity()
    }

    fn fail(&mut self, e: Base64Error) -> Base64Error {
        self.phase = Phase::Failed(e);
        e
    }

    /// Takes plain symbols from the start of `input` into the current group until it is
    /// complete (writing its bytes) or a byte that is not a symbol comes. Data phase only.
    /// Returns how many bytes it took. Runs between JSON escapes are short, so this spares each
    /// of them a few trips through the general slow path.
    #[inline]
    fn fill(&mut self, input: &[u8], out: Option<&mut BytesMut>) -> usize {
        debug_assert!(self.phase == Phase::Data);
        let want = usize::from(4 - self.quad_len).min(input.len());
        let mut taken = 0;
        while taken < want {
            let value = DECODE_TABLE[usize::from(input[taken])];
            if value == INVALID {
                break;
            }
            self.quad[usize::from(self.quad_len)] = value;
            self.quad_len += 1;
            taken += 1;
        }
        if taken > 0 {
            self.pos += taken as u64;
            self.last_symbol_pos = self.pos - 1;
            if self.quad_len == 4 {
                self.quad_len = 0;
                let [a, b, c, d] = self.quad;
                emit(out, &[a << 2 | b >> 4, b << 4 | c >> 2, c << 6 | d]);
                self.decoded += 3;
            }
        }
        taken
    }

    /// Decodes a prefix of `input` made of whole groups, spaces between them, and no `=`, at a
    /// group boundary in the data phase. Returns how many input bytes it consumed (possibly 0);
    /// what remains starts with something the slow path must see.
    fn fast(&mut self, input: &[u8], mut out: Option<&mut BytesMut>) -> Result<usize, Base64Error> {
        if self.optimistic {
            // Most documents have no whitespace at all: try the engine on everything and skip
            // the scan. It rejects any space or `=` (outside the last group, left out), so
            // success means every byte was a plain symbol.
            let whole = plain_groups(input);
            if whole > 0 {
                if let Ok(n) = decode_batch(&input[..whole], out.as_deref_mut(), &mut self.sink) {
                    self.pos += whole as u64;
                    self.decoded += n as u64;
                    return Ok(whole);
                }
                // Whitespace (or an error) is here; this string is not worth a second guess.
                self.optimistic = false;
            }
        }
        let run = memchr::memchr2(b' ', b'=', input).unwrap_or(input.len());
        let compacted = run < DIRECT_MIN_RUN && run < input.len() && input[run] == b' ';
        let consumed = if compacted {
            self.pack(input)
        } else {
            run & !3
        };
        let src: &[u8] = if compacted {
            &self.compact
        } else {
            &input[..consumed]
        };
        if src.is_empty() {
            // Only spaces (or nothing) went by.
            self.pos += consumed as u64;
            return Ok(consumed);
        }
        match decode_batch(src, out, &mut self.sink) {
            Ok(n) => {
                self.pos += consumed as u64;
                self.decoded += n as u64;
                Ok(consumed)
            }
            Err(engine_error) => Err(self.replay(&input[..consumed], engine_error)),
        }
    }

    /// Packs the space-separated runs at the start of `input` into `self.compact`, stopping at
    /// `=`, the end of input or a full buffer, and keeping whole groups only. Returns the input
    /// bytes that the packed groups (and the spaces among them) span.
    fn pack(&mut self, input: &[u8]) -> usize {
        let buf = &mut self.compact;
        buf.clear();
        // Exact, once: later batches reuse the allocation and never exceed it.
        buf.reserve_exact(COMPACT_CAP);
        let mut stops = memchr::memchr2_iter(b' ', b'=', input);
        let mut run_start = 0;
        let end = loop {
            let stop = stops.next();
            let run_end = stop.unwrap_or(input.len());
            let take = (run_end - run_start).min(COMPACT_CAP - buf.len());
            buf.extend_from_slice(&input[run_start..run_start + take]);
            if run_start + take < run_end {
                break run_start + take;
            }
            match stop {
                Some(p) if input[p] == b' ' => run_start = p + 1,
                _ => break run_end,
            }
        };
        // Hand the partial group back to the slow path: walk back over its symbols.
        let extra = buf.len() % 4;
        buf.truncate(buf.len() - extra);
        let mut cut = end;
        let mut need = extra;
        while need > 0 {
            cut -= 1;
            if input[cut] != b' ' {
                need -= 1;
            }
        }
        cut
    }

    /// The engine rejected a batch: run it through the slow path, which stops at the first
    /// offending character with its exact position and message.
    #[cold]
    fn replay(&mut self, batch: &[u8], engine_error: base64::DecodeSliceError) -> Base64Error {
        let start = self.pos;
        for (i, &b) in batch.iter().enumerate() {
            let pos = start + i as u64;
            if let Err(e) = self.raw_byte(b, pos, None) {
                return self.fail(e);
            }
        }
        // Unreachable if the engine and the slow path agree; report what the engine said (its
        // offset is only approximate for a packed batch).
        debug_assert!(false, "engine rejected a batch the slow path accepts");
        let position = match engine_error {
            base64::DecodeSliceError::DecodeError(
                base64::DecodeError::InvalidByte(offset, _)
                | base64::DecodeError::InvalidLastSymbol { offset, .. },
            ) => start + offset as u64,
            _ => start,
        };
        let byte = batch.get(position.saturating_sub(start) as usize).copied();
        self.fail(Base64Error::InvalidCharacter {
            character: Offending::Byte(byte.unwrap_or(0)),
            position,
        })
    }

    /// The slow path for one raw byte at `pos`.
    #[inline]
    fn raw_byte(
        &mut self,
        byte: u8,
        pos: u64,
        out: Option<&mut BytesMut>,
    ) -> Result<(), Base64Error> {
        match byte {
            b' ' => Ok(()),
            0..=0x1F => Err(Base64Error::ControlCharacter {
                byte,
                position: pos,
            }),
            _ => self.symbol(byte, Offending::Byte(byte), pos, out),
        }
    }

    /// One non-whitespace ASCII character (or raw byte) at `pos`; `what` names it in errors.
    fn symbol(
        &mut self,
        byte: u8,
        what: Offending,
        pos: u64,
        out: Option<&mut BytesMut>,
    ) -> Result<(), Base64Error> {
        if byte == b'=' {
            return self.padding(pos, out);
        }
        let value = DECODE_TABLE[usize::from(byte)];
        if value == INVALID {
            return Err(Base64Error::InvalidCharacter {
                character: what,
                position: pos,
            });
        }
        match self.phase {
            Phase::Data => {
                self.quad[usize::from(self.quad_len)] = value;
                self.quad_len += 1;
                self.last_symbol_pos = pos;
                if self.quad_len == 4 {
                    self.quad_len = 0;
                    let [a, b, c, d] = self.quad;
                    emit(out, &[a << 2 | b >> 4, b << 4 | c >> 2, c << 6 | d]);
                    self.decoded += 3;
                }
                Ok(())
            }
            Phase::Padding => Err(Base64Error::PaddingBeforeEnd {
                position: self.first_pad_pos,
            }),
            Phase::Done => Err(Base64Error::DataAfterPadding { position: pos }),
            Phase::Failed(e) => Err(e),
        }
    }

    /// A `=` at `pos`.
    fn padding(&mut self, pos: u64, out: Option<&mut BytesMut>) -> Result<(), Base64Error> {
        match self.phase {
            Phase::Data if self.quad_len < 2 => {
                return Err(Base64Error::MisplacedPadding { position: pos })
            }
            Phase::Data => {
                self.phase = Phase::Padding;
                self.first_pad_pos = pos;
                self.pads = 1;
            }
            Phase::Padding => self.pads += 1,
            Phase::Done => return Err(Base64Error::ExtraPadding { position: pos }),
            Phase::Failed(e) => return Err(e),
        }
        if self.quad_len + self.pads == 4 {
            self.final_group(out)?;
        }
        Ok(())
    }

    /// The padded group is complete: check its last symbol and write its bytes.
    fn final_group(&mut self, out: Option<&mut BytesMut>) -> Result<(), Base64Error> {
        let [a, b, c, _] = self.quad;
        let (bytes, last, unused_bits) = if self.quad_len == 2 {
            ([a << 2 | b >> 4, 0], b, 0x0F)
        } else {
            ([a << 2 | b >> 4, b << 4 | c >> 2], c, 0x03)
        };
        if last & unused_bits != 0 {
            return Err(Base64Error::NonCanonical {
                symbol: ALPHABET[usize::from(last)],
                position: self.last_symbol_pos,
            });
        }
        let n = usize::from(self.quad_len) - 1;
        emit(out, &bytes[..n]);
        self.decoded += n as u64;
        self.quad_len = 0;
        self.pads = 0;
        self.phase = Phase::Done;
        Ok(())
    }
}

/// The length of the whole groups at the start of `input` that the engine may decode as plain
/// symbols: all of them but a last one holding `=`, which is padding for the slow path to see.
fn plain_groups(input: &[u8]) -> usize {
    let whole = input.len() & !3;
    if whole > 0 && input[whole - 4..whole].contains(&b'=') {
        whole - 4
    } else {
        whole
    }
}

fn emit(out: Option<&mut BytesMut>, bytes: &[u8]) {
    if let Some(out) = out {
        out.extend_from_slice(bytes);
    }
}

/// Decodes `src` (whole groups, no padding) into `out`, or without `out` only checks it (in
/// `sink` when its last group holds `=`). Returns the number of decoded bytes; on error `out`
/// is left as it was.
fn decode_batch(
    src: &[u8],
    out: Option<&mut BytesMut>,
    sink: &mut Vec<u8>,
) -> Result<usize, base64::DecodeSliceError> {
    debug_assert!(src.len().is_multiple_of(4));
    match out {
        Some(out) => {
            // Decode in place, no intermediate copy: whole blocks with AVX-512 VBMI where the
            // CPU has it, the rest (and any error) with the engine.
            let start = out.len();
            out.resize(start + src.len() / 4 * 3, 0);
            let result = if src.len() < SMALL_BATCH {
                decode_small(src, Some(&mut out[start..]))
            } else {
                decode_large(src, &mut out[start..])
            };
            match result {
                Ok(n) => {
                    out.truncate(start + n);
                    Ok(n)
                }
                Err(e) => {
                    out.truncate(start);
                    Err(e)
                }
            }
        }
        None if src.len() < SMALL_BATCH => decode_small(src, None),
        // Whole groups without padding: the engine would only check that each byte is a
        // symbol, which the table check does in a fraction of the time.
        None if !src[src.len() - 4..].contains(&b'=') => {
            if all_symbols(src) {
                Ok(src.len() / 4 * 3)
            } else {
                let offset = src.iter().position(|&b| !is_symbol(b)).unwrap_or(0);
                Err(base64::DecodeError::InvalidByte(offset, src[offset]).into())
            }
        }
        None => {
            if sink.len() != SINK_LEN {
                sink.resize(SINK_LEN, 0);
            }
            let mut total = 0;
            for piece in src.chunks(SINK_INPUT) {
                total += engine().decode_slice(piece, &mut sink[..])?;
            }
            Ok(total)
        }
    }
}

/// Decodes `src` (whole groups, no padding) into `dst`: whole blocks with AVX-512 VBMI where
/// the CPU has it, as far as their writes past what they decode fit in `dst`, the rest as
/// other batches are; all of it with the engine elsewhere, or when VBMI finds a byte outside
/// the alphabet (so that the error is the engine's).
fn decode_large(src: &[u8], dst: &mut [u8]) -> Result<usize, base64::DecodeSliceError> {
    #[cfg(target_arch = "x86_64")]
    if let Some(vbmi) = crate::simd::Vbmi::detect() {
        if let Some(taken) = vbmi::decode_blocks(vbmi, src, dst) {
            let made = taken / 4 * 3;
            // Less than two blocks.
            let (rest, room) = (&src[taken..], &mut dst[made..]);
            let rest = if rest.len() < SMALL_BATCH {
                decode_small(rest, Some(room))
            } else {
                engine().decode_slice(rest, room)
            };
            if let Ok(n) = rest {
                return Ok(made + n);
            }
        }
    }
    engine().decode_slice(src, dst)
}

/// Decodes (or, without `dst`, validates) a short `src` of whole groups without padding, where
/// the engine's per-call work would dominate: runs between JSON escapes are often this short.
/// Accepts exactly what the engine accepts.
fn decode_small(src: &[u8], dst: Option<&mut [u8]>) -> Result<usize, base64::DecodeSliceError> {
    // Valid values are below 64; INVALID has the top bit set, so one OR over all tells.
    let mut seen = 0u8;
    match dst {
        Some(dst) => {
            for (group, bytes) in src.chunks_exact(4).zip(dst.chunks_exact_mut(3)) {
                let a = DECODE_TABLE[usize::from(group[0])];
                let b = DECODE_TABLE[usize::from(group[1])];
                let c = DECODE_TABLE[usize::from(group[2])];
                let d = DECODE_TABLE[usize::from(group[3])];
                seen |= a | b | c | d;
                bytes.copy_from_slice(&[a << 2 | b >> 4, b << 4 | c >> 2, c << 6 | d]);
            }
        }
        None => {
            for &byte in src {
                seen |= DECODE_TABLE[usize::from(byte)];
            }
        }
    }
    if seen & 0x80 == 0 {
        return Ok(src.len() / 4 * 3);
    }
    let offset = src
        .iter()
        .position(|&b| DECODE_TABLE[usize::from(b)] == INVALID)
        .unwrap_or(0);
    Err(base64::DecodeError::InvalidByte(offset, src.get(offset).copied().unwrap_or(0)).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn symbols_are_validated_as_the_engine_decodes_them() {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = crate::test_rng::Rng(0x0076_616c_6964);
        let mut refused = 0;
        for case in 0..4000 {
            let len = rng.below(300) / 4 * 4;
            let mut batch: Vec<u8> = (0..len).map(|_| SYMBOLS[rng.below(64)]).collect();
            if len > 0 && case % 2 == 0 {
                // Any byte at any place, near the edges of the blocks most often.
                let at = if case % 4 == 0 {
                    rng.below(len)
                } else {
                    (rng.below(len / 32 + 1) * 32 + rng.below(3)).saturating_sub(1) % len
                };
                batch[at] = rng.below(256) as u8;
            }
            if batch.len() >= 4 && batch[len - 4..].contains(&b'=') {
                continue; // padding: never handed over as a batch
            }
            let mut out = vec![0; len / 4 * 3];
            let decodes = engine().decode_slice(&batch, &mut out).is_ok();
            assert_eq!(all_symbols(&batch), decodes, "{batch:?}");
            refused += usize::from(!decodes);
        }
        assert!(refused > 1000, "{refused}");
    }

    /// splitmix64: small, deterministic, good enough to pick split points.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// One character of string content as the scanner hands it over.
    #[derive(Clone, Copy, Debug)]
    enum Item {
        Raw(u8),
        Esc(char),
    }

    fn raw(text: &[u8]) -> Vec<Item> {
        text.iter().map(|&b| Item::Raw(b)).collect()
    }

    type Outcome = (Result<(), Base64Error>, Vec<u8>, u64);

    /// Feeds `items`, cutting raw runs into pieces no longer than what `piece` says, then
    /// finishes. Checks along the way that an error sticks and that `max_decoded_len` holds.
    fn feed(items: &[Item], piece: &mut dyn FnMut() -> usize, validate_only: bool) -> Outcome {
        let mut d = Base64Decoder::new();
        let mut out = BytesMut::new();
        let result = feed_into(&mut d, &mut out, items, piece, validate_only);
        if let Err(e) = result {
            assert_eq!(d.feed_raw(b"QUJD", Some(&mut out)), Err(e));
            assert_eq!(d.feed_raw(b" ", None), Err(e));
            assert_eq!(d.feed_escaped('A', Some(&mut out)), Err(e));
            assert_eq!(d.finish(None), Err(e));
        } else {
            assert_eq!(d.finish(None), Ok(()), "finish is idempotent");
        }
        if validate_only {
            assert!(out.is_empty());
        }
        (result, out.to_vec(), d.decoded_len())
    }

    fn feed_into(
        d: &mut Base64Decoder,
        out: &mut BytesMut,
        items: &[Item],
        piece: &mut dyn FnMut() -> usize,
        validate_only: bool,
    ) -> Result<(), Base64Error> {
        let mut i = 0;
        let mut buf = Vec::new();
        while i < items.len() {
            match items[i] {
                Item::Esc(c) => {
                    d.feed_escaped(c, (!validate_only).then_some(&mut *out))?;
                    i += 1;
                }
                Item::Raw(_) => {
                    let max = piece().max(1);
                    buf.clear();
                    while let Some(&Item::Raw(b)) = items.get(i) {
                        if buf.len() == max {
                            break;
                        }
                        buf.push(b);
                        i += 1;
                    }
                    let before = out.len();
                    d.feed_raw(&buf, (!validate_only).then_some(&mut *out))?;
                    assert!(out.len() - before <= Base64Decoder::max_decoded_len(buf.len()));
                }
            }
        }
        d.finish((!validate_only).then_some(out))
    }

    /// Every way of feeding the items that the checks below use: whole, a byte at a time, and
    /// `random` runs of random splits (half of them into tiny pieces).
    fn strategies(rng: &mut Rng, random: usize) -> Vec<Vec<usize>> {
        let mut all = vec![vec![usize::MAX], vec![1]];
        for k in 0..random {
            let scale = if k % 2 == 0 { 8 } else { 4096 };
            all.push((0..64).map(|_| 1 + rng.below(scale)).collect());
        }
        all
    }

    fn run_strategy(items: &[Item], sizes: &[usize], validate_only: bool) -> Outcome {
        let mut k = 0;
        let mut next = || {
            let n = sizes[k % sizes.len()];
            k += 1;
            n
        };
        feed(items, &mut next, validate_only)
    }

    fn assert_decodes(items: &[Item], expected: &[u8], rng: &mut Rng, random: usize) {
        for sizes in strategies(rng, random) {
            for validate_only in [false, true] {
                let (result, out, len) = run_strategy(items, &sizes, validate_only);
                assert_eq!(result, Ok(()), "sizes {sizes:?}");
                if !validate_only {
                    assert!(out == expected, "output differs, sizes {sizes:?}");
                }
                assert_eq!(len, expected.len() as u64);
            }
        }
    }

    fn assert_fails(items: &[Item], expected: Base64Error, rng: &mut Rng) {
        let mut all = strategies(rng, 6);
        // Every single split point.
        all.extend((1..items.len()).map(|k| vec![k, usize::MAX]));
        for sizes in all {
            for validate_only in [false, true] {
                let (result, _, _) = run_strategy(items, &sizes, validate_only);
                assert_eq!(result, Err(expected), "sizes {sizes:?}");
            }
        }
    }

    fn with_spaces(text: &[u8], every: usize, rng: &mut Rng, random: usize) -> Vec<u8> {
        let mut spaced = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if i > 0 && i % every == 0 {
                spaced.push(b' ');
            }
            if random > 0 && rng.below(random) == 0 {
                spaced.extend(std::iter::repeat_n(b' ', 1 + rng.below(3)));
            }
            spaced.push(b);
        }
        spaced
    }

    /// Characters PHP, .NET and Gson escape always, others at random.
    fn with_escapes(text: &[u8], rng: &mut Rng) -> Vec<Item> {
        text.iter()
            .map(|&b| match b {
                b'/' | b'+' | b'=' => Item::Esc(b as char),
                _ if rng.below(10) == 0 => Item::Esc(b as char),
                _ => Item::Raw(b),
            })
            .collect()
    }

    fn with_escaped_newlines(text: &[u8], crlf: bool) -> Vec<Item> {
        let mut items = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if i > 0 && i % 76 == 0 {
                if crlf {
                    items.push(Item::Esc('\r'));
                }
                items.push(Item::Esc('\n'));
            }
            items.push(Item::Raw(b));
        }
        items
    }

    fn round_trip(data: &[u8], rng: &mut Rng, random: usize) {
        let text = STANDARD.encode(data);
        let text = text.as_bytes();
        assert_decodes(&raw(text), data, rng, random);
        assert_decodes(&raw(&with_spaces(text, 76, rng, 0)), data, rng, random);
        let spaced = with_spaces(text, 76, rng, 50);
        assert_decodes(&raw(&spaced), data, rng, random);
        assert_decodes(&with_escapes(text, rng), data, rng, random);
        assert_decodes(&with_escapes(&spaced, rng), data, rng, random);
        assert_decodes(&with_escaped_newlines(text, false), data, rng, random);
        assert_decodes(&with_escaped_newlines(text, true), data, rng, random);
    }

    #[test]
    fn round_trips_short_lengths() {
        let mut rng = Rng(0x5EED);
        for len in 0..=300 {
            let data = rng.bytes(len);
            round_trip(&data, &mut rng, 4);
        }
    }

    #[test]
    fn round_trips_large() {
        let mut rng = Rng(0xB16);
        for len in [65_536 * 3 + 1, 1 << 20] {
            let data = rng.bytes(len);
            round_trip(&data, &mut rng, 2);
        }
    }

    #[test]
    fn long_runs_between_spaces() {
        // Runs longer than the direct threshold, then runs that straddle the scratch capacity.
        let mut rng = Rng(7);
        let data = rng.bytes(200_000);
        let text = STANDARD.encode(&data);
        for every in [
            DIRECT_MIN_RUN - 1,
            DIRECT_MIN_RUN,
            DIRECT_MIN_RUN + 3,
            10_001,
            40_000,
        ] {
            let spaced = with_spaces(text.as_bytes(), every, &mut rng, 0);
            assert_decodes(&raw(&spaced), &data, &mut rng, 2);
        }
        // Whitespace that only starts late, after the engine had pieces without any scan.
        let half = text.len() / 2;
        let mut late = text.as_bytes()[..half].to_vec();
        late.extend(with_spaces(&text.as_bytes()[half..], 76, &mut rng, 0));
        assert_decodes(&raw(&late), &data, &mut rng, 2);
        assert_decodes(&raw(&late), &data, &mut rng, 0);
        let frames: Vec<usize> = vec![64 * 1024];
        let (result, out, _) = run_strategy(&raw(&late), &frames, false);
        assert_eq!(result, Ok(()));
        assert!(out == data);
        // Long runs of spaces, too.
        let mut spaced = Vec::new();
        for chunk in text.as_bytes().chunks(1001) {
            spaced.extend_from_slice(chunk);
            spaced.extend(std::iter::repeat_n(b' ', 3000));
        }
        assert_decodes(&raw(&spaced), &data, &mut rng, 2);
    }

    #[test]
    fn small_valid_inputs() {
        let mut rng = Rng(1);
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"   ", b""),
            (b"QQ==", b"A"),
            (b"QUI=", b"AB"),
            (b"QUJD", b"ABC"),
            (b" Q U J D Q Q = = ", b"ABCA"),
            (b"QUJDQQ==   ", b"ABCA"),
            (b"////", &[0xFF, 0xFF, 0xFF]),
            (b"+/+/", &[0xFB, 0xFF, 0xBF]),
        ];
        for &(text, expected) in cases {
            assert_decodes(&raw(text), expected, &mut rng, 6);
        }
        let escaped_ws = [
            Item::Esc('\t'),
            Item::Raw(b'Q'),
            Item::Esc('\r'),
            Item::Esc('\n'),
            Item::Raw(b'Q'),
            Item::Esc('='),
            Item::Esc(' '),
            Item::Esc('\u{3d}'),
            Item::Esc('\n'),
        ];
        assert_decodes(&escaped_ws, b"A", &mut rng, 6);
    }

    #[test]
    fn errors_have_positions() {
        use Base64Error::*;
        let mut rng = Rng(2);
        let invalid = |b: u8, position| InvalidCharacter {
            character: Offending::Byte(b),
            position,
        };
        let cases: &[(&[u8], Base64Error)] = &[
            (b"QUJD-EFG", invalid(b'-', 4)),
            (b"QUJD_EFG", invalid(b'_', 4)),
            (b"QU*D", invalid(b'*', 2)),
            (b"QUJD\xC3\xA9UJD", invalid(0xC3, 4)),
            (b"QUJD\x7fUJD", invalid(0x7F, 4)),
            (b"QUJ\"", invalid(b'"', 3)),
            (b"QQ==QUJD", DataAfterPadding { position: 4 }),
            (b"QQ= =  Q", DataAfterPadding { position: 7 }),
            (b"QQ=AQUJD", PaddingBeforeEnd { position: 2 }),
            (b"QQ = A", PaddingBeforeEnd { position: 3 }),
            (b"QUJDQ===", MisplacedPadding { position: 5 }),
            (b"QUJD====", MisplacedPadding { position: 4 }),
            (b"=", MisplacedPadding { position: 0 }),
            (b"QQ===", ExtraPadding { position: 4 }),
            (b"QUI==", ExtraPadding { position: 4 }),
            (b"QUI=QUJD", DataAfterPadding { position: 4 }),
            (b"QUI= x", DataAfterPadding { position: 5 }),
            (b"QUJDQ", Incomplete { characters: 1 }),
            (b"QUJDQU", Incomplete { characters: 2 }),
            (b"QUJDQUJ  ", Incomplete { characters: 3 }),
            (b"QQ=", Incomplete { characters: 3 }),
            (
                b"QR==",
                NonCanonical {
                    symbol: b'R',
                    position: 1,
                },
            ),
            (
                b"QUJ=",
                NonCanonical {
                    symbol: b'J',
                    position: 2,
                },
            ),
            (
                b"QUJDQ R = =",
                NonCanonical {
                    symbol: b'R',
                    position: 6,
                },
            ),
            (
                b"QUJD\nQUJD",
                ControlCharacter {
                    byte: b'\n',
                    position: 4,
                },
            ),
            (
                b"QUJD QUJD\t",
                ControlCharacter {
                    byte: b'\t',
                    position: 9,
                },
            ),
            (
                b"Q\rUJD",
                ControlCharacter {
                    byte: b'\r',
                    position: 1,
                },
            ),
            (
                b"\x00",
                ControlCharacter {
                    byte: 0,
                    position: 0,
                },
            ),
            // The first problem wins, wherever the input is split.
            (b"QUJD-\n", invalid(b'-', 4)),
            (
                b"QUJD\n-",
                ControlCharacter {
                    byte: b'\n',
                    position: 4,
                },
            ),
        ];
        for &(text, expected) in cases {
            assert_fails(&raw(text), expected, &mut rng);
        }

        let escaped = |c: char, position| InvalidCharacter {
            character: Offending::Escaped(c),
            position,
        };
        let q = Item::Raw(b'Q');
        let cases: &[(Vec<Item>, Base64Error)] = &[
            (vec![q, q, Item::Esc('"'), q], escaped('"', 2)),
            (vec![q, Item::Esc('\u{0}')], escaped('\u{0}', 1)),
            (vec![q, Item::Esc('-')], escaped('-', 1)),
            (vec![q, Item::Esc('\u{0b}')], escaped('\u{0b}', 1)),
            (vec![q, Item::Esc('é')], escaped('é', 1)),
            (vec![q, Item::Esc('\u{1F600}')], escaped('\u{1F600}', 1)),
            (
                vec![q, q, Item::Esc('='), Item::Esc('='), Item::Esc('=')],
                ExtraPadding { position: 4 },
            ),
            (
                vec![q, Item::Esc('\n'), Item::Esc('='), q],
                MisplacedPadding { position: 2 },
            ),
        ];
        for (items, expected) in cases {
            assert_fails(items, *expected, &mut rng);
        }
    }

    #[test]
    fn errors_deep_inside_large_input() {
        let mut rng = Rng(3);
        let data = rng.bytes(300_000);
        let text = STANDARD.encode(&data).into_bytes();
        for (at, bad) in [(0, b'-'), (1, b'_'), (200_001, b'*'), (399_999, 0xC3)] {
            let mut broken = text.clone();
            broken[at] = bad;
            let expected = Base64Error::InvalidCharacter {
                character: Offending::Byte(bad),
                position: at as u64,
            };
            for sizes in strategies(&mut rng, 4) {
                let (result, _, _) = run_strategy(&raw(&broken), &sizes, false);
                assert_eq!(result, Err(expected));
            }
        }
        // Through the packing path: spaces every 76, a raw line feed far in.
        let mut spaced = with_spaces(&text, 76, &mut rng, 0);
        let at = 250_003;
        spaced[at] = b'\n';
        let expected = Base64Error::ControlCharacter {
            byte: b'\n',
            position: at as u64,
        };
        for sizes in strategies(&mut rng, 4) {
            for validate_only in [false, true] {
                let (result, _, _) = run_strategy(&raw(&spaced), &sizes, validate_only);
                assert_eq!(result, Err(expected));
            }
        }
    }

    #[test]
    fn final_groups_agree_with_the_base64_crate() {
        let mut rng = Rng(4);
        for &a in ALPHABET {
            for &b in ALPHABET {
                let text = [b'Q', b'U', b'J', b'D', a, b, b'=', b'='];
                let expected = STANDARD.decode(text);
                let (result, out, _) = run_strategy(&raw(&text), &[usize::MAX], false);
                assert_eq!(result.is_ok(), expected.is_ok(), "{text:?}");
                if let Ok(expected) = expected {
                    assert_eq!(out, expected);
                }
            }
            let text = [b'Q', b'U', a, b'='];
            let expected = STANDARD.decode(text);
            let (result, out, _) = run_strategy(&raw(&text), &[1], false);
            assert_eq!(result.is_ok(), expected.is_ok(), "{text:?}");
            if let Ok(expected) = expected {
                assert_eq!(out, expected);
            }
        }
        // Random short strings over a small, troublesome alphabet: whatever the base64 crate
        // accepts once spaces are removed, we accept with the same bytes, and nothing else.
        let symbols = b"AQgw/+=  R-";
        for _ in 0..30_000 {
            let len = rng.below(14);
            let text: Vec<u8> = (0..len)
                .map(|_| symbols[rng.below(symbols.len())])
                .collect();
            let stripped: Vec<u8> = text.iter().copied().filter(|&b| b != b' ').collect();
            let expected = STANDARD.decode(&stripped);
            let sizes = [1 + rng.below(5)];
            let (result, out, _) = run_strategy(&raw(&text), &sizes, false);
            assert_eq!(
                result.is_ok(),
                expected.is_ok(),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            if let Ok(expected) = expected {
                assert_eq!(out, expected);
            }
        }
    }

    #[test]
    fn messages() {
        let cases = [
            (
                Base64Error::InvalidCharacter {
                    character: Offending::Byte(b'-'),
                    position: 1234,
                },
                "invalid base64 character '-' (0x2d) at position 1234",
            ),
            (
                Base64Error::InvalidCharacter {
                    character: Offending::Byte(0xC3),
                    position: 5,
                },
                "invalid base64 character 0xc3 (not ASCII) at position 5",
            ),
            (
                Base64Error::InvalidCharacter {
                    character: Offending::Escaped('\u{0}'),
                    position: 6,
                },
                "invalid base64 character U+0000 (written as a JSON escape) at position 6",
            ),
            (
                Base64Error::InvalidCharacter {
                    character: Offending::Escaped('"'),
                    position: 6,
                },
                "invalid base64 character '\"' (0x22, written as a JSON escape) at position 6",
            ),
            (
                Base64Error::PaddingBeforeEnd { position: 12 },
                "base64 padding '=' before the end of the data at position 12",
            ),
            (
                Base64Error::DataAfterPadding { position: 20 },
                "data after base64 padding at position 20",
            ),
            (
                Base64Error::Incomplete { characters: 2 },
                "base64 length is not a multiple of 4 (ends with 2 characters of an incomplete group)",
            ),
            (
                Base64Error::Incomplete { characters: 1 },
                "base64 length is not a multiple of 4 (ends with 1 character of an incomplete group)",
            ),
            (
                Base64Error::NonCanonical {
                    symbol: b'R',
                    position: 1,
                },
                "non-canonical base64: non-zero trailing bits in 'R' at position 1",
            ),
            (
                Base64Error::ControlCharacter {
                    byte: b'\n',
                    position: 76,
                },
                "control character 0x0a inside a JSON string at position 76 \
                 (JSON requires control characters to be escaped)",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        fn assert_error<E: std::error::Error + Clone + PartialEq + Send + Sync + 'static>() {}
        assert_error::<Base64Error>();
        fn assert_decoder<D: Clone + fmt::Debug + Default + Send + Sync>() {}
        assert_decoder::<Base64Decoder>();
    }

    #[test]
    fn symbols_decode_like_raw_input_in_batches_cut_anywhere() {
        let mut rng = Rng(0x5359_4d42);
        for len in [0, 1, 2, 3, 50, 3000] {
            let data = rng.bytes(len);
            let text = STANDARD.encode(&data);
            let symbols = text.trim_end_matches('=').as_bytes();
            let cuts: Vec<Vec<usize>> = if len < 100 {
                (0..=symbols.len()).map(|cut| vec![cut]).collect()
            } else {
                (0..50)
                    .map(|_| {
                        let mut cuts: Vec<usize> =
                            (0..20).map(|_| rng.below(symbols.len())).collect();
                        cuts.sort_unstable();
                        cuts
                    })
                    .collect()
            };
            for cuts in cuts {
                for validate_only in [false, true] {
                    let mut d = Base64Decoder::new();
                    let mut out = BytesMut::new();
                    let mut at = 0;
                    for end in cuts.iter().copied().chain([symbols.len()]) {
                        let batch = &symbols[at..end.max(at)];
                        let sink = (!validate_only).then_some(&mut out);
                        assert!(d.feed_symbols(batch, 0, false, batch.len() as u64, 0, sink));
                        at = end.max(at);
                    }
                    let padding = &text.as_bytes()[symbols.len()..];
                    let sink = (!validate_only).then_some(&mut out);
                    d.feed_raw(padding, sink).unwrap();
                    d.finish(None).unwrap();
                    assert_eq!(d.decoded_len(), data.len() as u64);
                    if !validate_only {
                        assert_eq!(out, data, "cut at {cuts:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_with_anything_but_symbols_is_refused_whole() {
        let symbols = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5eg";
        for bad in [b'=', b' ', b'!', b'\n', b'-', 0xC3] {
            for at in 0..symbols.len() {
                let mut batch = symbols.to_vec();
                batch[at] = bad;
                let mut d = Base64Decoder::new();
                let mut out = BytesMut::new();
                // A partial group carried in, completed by the batch's first symbols.
                d.feed_raw(b"QU", Some(&mut out)).unwrap();
                let before = format!("{d:?}");
                assert!(!d.feed_symbols(&batch, 0, false, batch.len() as u64, 0, Some(&mut out)));
                assert_eq!(format!("{d:?}"), before, "{bad} at {at}");
                assert!(out.is_empty(), "{bad} at {at}");
                // It reads on as if the batch had not come.
                d.feed_raw(b"JD", Some(&mut out)).unwrap();
                d.finish(None).unwrap();
                assert_eq!(&out[..], b"ABC");
            }
        }
    }

    #[test]
    fn positions_after_symbols_count_the_characters_they_stood_for() {
        // Six symbols out of nine characters, the last two of them whitespace: the next
        // character is at 9, the last symbol at 6.
        let mut d = Base64Decoder::new();
        assert!(d.feed_symbols(b"QUJDRA", 0, false, 9, 2, None));
        assert_eq!(
            d.feed_raw(b"=!", None),
            Err(Base64Error::InvalidCharacter {
                character: Offending::Byte(b'!'),
                position: 10
            })
        );
        let mut d = Base64Decoder::new();
        assert!(d.feed_symbols(b"QUJDRB", 0, false, 9, 2, None));
        assert_eq!(
            d.feed_raw(b"==", None),
            Err(Base64Error::NonCanonical {
                symbol: b'B',
                position: 6
            })
        );
    }

    #[test]
    fn large_batches_decode_as_the_engine_decodes_them() {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = crate::test_rng::Rng(0x006c_6172_6765);
        for case in 0..3000 {
            let len = (SMALL_BATCH + rng.below(400)) / 4 * 4;
            let mut batch: Vec<u8> = (0..len).map(|_| SYMBOLS[rng.below(64)]).collect();
            if case % 2 == 0 {
                batch[rng.below(len)] = rng.below(256) as u8;
            }
            let mut expected = vec![0; len / 4 * 3];
            let expected = engine()
                .decode_slice(&batch, &mut expected)
                .map(|n| expected[..n].to_vec());
            let mut made = vec![0; len / 4 * 3];
            let made = decode_large(&batch, &mut made).map(|n| made[..n].to_vec());
            assert_eq!(made, expected, "{batch:?}");
        }
    }

    #[test]
    fn groups_checked_by_the_scanner_count_as_fed() {
        // "QUJD" "RA" with two groups checked elsewhere between them: 8 + 6 symbols in 16
        // characters, the last two whitespace.
        let mut d = Base64Decoder::new();
        assert!(d.feed_symbols(b"QUJDRA", 8, false, 16, 2, None));
        assert_eq!(d.decoded_len(), 9);
        assert_eq!(
            d.feed_raw(b"==", None),
            Ok(()),
            "padding closes the open group"
        );
        assert_eq!(d.decoded_len(), 10);
        assert_eq!(
            d.feed_raw(b"!", None),
            Err(Base64Error::InvalidCharacter {
                character: Offending::Byte(b'!'),
                position: 18
            })
        );
        // Only whole groups, and only when nothing is decoded: refused, nothing taken.
        let mut d = Base64Decoder::new();
        assert!(!d.feed_symbols(b"QUJD", 3, false, 7, 0, None));
        assert!(!d.feed_symbols(b"QUJD", 4, false, 8, 0, Some(&mut BytesMut::new())));
        assert_eq!(d.decoded_len(), 0);
        assert!(d.feed_symbols(b"QUJD", 0, false, 4, 0, None));
        assert_eq!(d.decoded_len(), 3);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut rng = Rng(5);
        let data = rng.bytes(6 << 20);
        let text = STANDARD.encode(&data).into_bytes();
        for spaced in [false, true] {
            let text = if spaced {
                with_spaces(&text, 76, &mut rng, 0)
            } else {
                text.clone()
            };
            for validate_only in [false, true] {
                let mut d = Base64Decoder::new();
                let mut out = BytesMut::new();
                for frame in text.chunks(64 * 1024) {
                    out.clear();
                    d.feed_raw(frame, (!validate_only).then_some(&mut out))
                        .unwrap();
                    assert!(d.scratch_capacity() <= COMPACT_CAP + SINK_LEN);
                }
                d.finish(None).unwrap();
                assert_eq!(d.decoded_len(), data.len() as u64);
                let clone = d.clone();
                assert_eq!(clone.scratch_capacity(), 0);
                assert_eq!(clone.decoded_len(), d.decoded_len());
            }
        }
    }
}
