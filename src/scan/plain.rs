//! Plain runs of string content (no `"`, `\`, or control character) and of payload text (no
//! `"` or `\`), found 32 bytes at a time, and the buffer that gathers payload text across
//! escapes.
//!
//! Runs between escapes are short (PHP escapes a `/` about every 64 base64 characters): a
//! general search costs more to start than it saves on them, so a loop over blocks of 32 bytes,
//! compared in SIMD registers by `wide` (SSE2 on x86_64, NEON on aarch64, plain code elsewhere),
//! finds their ends.

use wide::{i8x16, u8x16, u8x32};

/// The block the search looks at in one step.
const BLOCK: usize = 32;

/// The block the search of short strings looks at in one step.
const SHORT_BLOCK: usize = 16;

/// Payload text gathered across escapes, to be handed to the decoder in large pieces.
///
/// A buffer whose bytes are all initialised, with a separate length: the gathering loop writes
/// whole blocks into it and keeps the length in a register, where a `Vec`'s length would be
/// stored and loaded again for every block.
#[derive(Debug, Default)]
pub(super) struct Gathered {
    buf: Vec<u8>,
    len: usize,
}

impl Gathered {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    pub(super) fn push(&mut self, byte: u8) {
        self.extend(&[byte]);
    }

    pub(super) fn extend(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.room(end);
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Appends payload text from `input` up to the first `"` or `\`, except that `\/` (PHP
    /// escapes every `/`) is taken as the `/` it stands for; stops early once the buffer holds
    /// `limit` bytes or more. Returns how much of `input` it took.
    ///
    /// Control characters are taken like any other byte: the base64 decoder rejects them, with
    /// their position, as raw control characters, so looking for them here would only cost.
    /// The search and the copy are one pass: each block is written before it is looked at, and
    /// the length moves only past the bytes taken.
    pub(super) fn extend_payload(&mut self, input: &[u8], limit: usize) -> usize {
        self.room(limit + BLOCK);
        let buf = &mut self.buf[..];
        let mut len = self.len;
        let mut i = 0;
        while let Some(block) = input.get(i..i + BLOCK) {
            if len >= limit {
                self.len = len;
                return i;
            }
            let block: [u8; BLOCK] = block.try_into().unwrap_or([0; BLOCK]);
            buf[len..len + BLOCK].copy_from_slice(&block);
            let marks = quotes_and_backslashes(block);
            if marks != 0 {
                let n = marks.trailing_zeros() as usize;
                if input.get(i + n..i + n + 2) == Some(b"\\/") {
                    // Over the backslash, already written.
                    buf[len + n] = b'/';
                    len += n + 1;
                    i += n + 2;
                    continue;
                }
                self.len = len + n;
                return i + n;
            }
            len += BLOCK;
            i += BLOCK;
        }
        self.len = len;
        loop {
            let rest = &input[i..];
            let n = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .unwrap_or(rest.len());
            self.extend(&rest[..n]);
            i += n;
            if input.get(i..i + 2) != Some(b"\\/") {
                return i;
            }
            self.push(b'/');
            i += 2;
        }
    }

    /// Makes the buffer at least `size` bytes long.
    fn room(&mut self, size: usize) {
        if self.buf.len() < size {
            // Grown in steps, so that byte-by-byte pushes do not resize each time.
            self.buf.resize(size.max(2 * self.buf.len()).max(256), 0);
        }
    }
}

/// The length of the prefix of `input` that holds no `"`, `\`, control character or non-ASCII
/// byte: string content that is valid JSON and UTF-8 as it stands, found in one pass.
///
/// Member names and the strings around them are short: blocks of 16 bytes cost half as much
/// to look at, and leave less to the byte loop at the end.
pub(super) fn plain_ascii_prefix(input: &[u8]) -> usize {
    first_marked(input, special_or_non_ascii_bytes, |b| {
        is_special(b) || !b.is_ascii()
    })
    .unwrap_or(input.len())
}

/// Where the first `"` or `\` of `input` is.
///
/// For the captured members' text, mostly a few short strings: blocks of 16 bytes and a byte
/// loop for the rest cost less there than a general search costs to start.
pub(super) fn quote_or_backslash(input: &[u8]) -> Option<usize> {
    first_marked(input, short_quotes_and_backslashes, |b| {
        b == b'"' || b == b'\\'
    })
}

/// The length of the prefix of `input` that holds no `"`, `\`, or control character.
pub(super) fn plain_prefix(input: &[u8]) -> usize {
    first_marked(input, special_bytes, is_special).unwrap_or(input.len())
}

/// Where the first byte of `input` that `marks` flags is: `marks` gives one bit for each
/// flagged byte of a block of `N`, and `marked` tells the same of a byte after the last whole
/// block.
#[inline(always)]
fn first_marked<const N: usize>(
    input: &[u8],
    marks: impl Fn([u8; N]) -> u32,
    marked: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut i = 0;
    while let Some(block) = input.get(i..i + N) {
        let found = marks(block.try_into().unwrap_or([0; N]));
        if found != 0 {
            return Some(i + found.trailing_zeros() as usize);
        }
        i += N;
    }
    Some(i + input[i..].iter().position(|&b| marked(b))?)
}

/// One bit for each byte of `block` that ends a plain run: `"`, `\`, or a control character.
fn special_bytes(block: [u8; BLOCK]) -> u32 {
    let x = u8x32::new(block);
    let quote = x.simd_eq(u8x32::splat(b'"'));
    let backslash = x.simd_eq(u8x32::splat(b'\\'));
    let control = x.min(u8x32::splat(0x1f)).simd_eq(x);
    (quote | backslash | control).to_bitmask()
}

/// One bit for each byte of `block` that ends a plain ASCII run: `"`, `\`, a control character,
/// or a non-ASCII byte.
fn special_or_non_ascii_bytes(block: [u8; SHORT_BLOCK]) -> u32 {
    let x = u8x16::new(block);
    let quote = x.simd_eq(u8x16::splat(b'"'));
    let backslash = x.simd_eq(u8x16::splat(b'\\'));
    // Taken as signed, non-ASCII bytes are negative: one comparison finds them and the
    // control characters.
    let control_or_non_ascii = x.cast_signed().simd_lt(i8x16::splat(0x20)).cast_unsigned();
    (quote | backslash | control_or_non_ascii).to_bitmask()
}

/// One bit for each `"` or `\` in `block`.
fn quotes_and_backslashes(block: [u8; BLOCK]) -> u32 {
    let x = u8x32::new(block);
    (x.simd_eq(u8x32::splat(b'"')) | x.simd_eq(u8x32::splat(b'\\'))).to_bitmask()
}

/// [`quotes_and_backslashes`] of a block of 16 bytes.
fn short_quotes_and_backslashes(block: [u8; SHORT_BLOCK]) -> u32 {
    let x = u8x16::new(block);
    (x.simd_eq(u8x16::splat(b'"')) | x.simd_eq(u8x16::splat(b'\\'))).to_bitmask()
}

/// Whether `b` ends a plain run: `"`, `\`, or a control character.
fn is_special(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | 0..=0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn naive(input: &[u8]) -> usize {
        input
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(input.len())
    }

    /// Mostly plain text, sometimes a special or a high byte.
    fn inputs() -> impl Iterator<Item = Vec<u8>> {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        (0..200).flat_map(move |len| {
            (0..50)
                .map(|_| {
                    (0..len)
                        .map(|_| {
                            let state = rng.next();
                            match state % 97 {
                                0 => b'"',
                                1 => b'\\',
                                2 => (state >> 8) as u8 % 0x20,
                                3 => 0x80 | (state >> 8) as u8,
                                _ => b'A' + (state >> 8) as u8 % 26,
                            }
                        })
                        .collect()
                })
                .collect::<Vec<Vec<u8>>>()
        })
    }

    #[test]
    fn plain_prefix_stops_at_the_first_special_byte() {
        for input in inputs() {
            assert_eq!(plain_prefix(&input), naive(&input), "{input:?}");
        }
        for b in 0..=255u8 {
            let mut input = vec![b'x'; 20];
            input[11] = b;
            assert_eq!(plain_prefix(&input), naive(&input), "byte {b}");
        }
    }

    #[test]
    fn plain_ascii_prefix_also_stops_at_non_ascii() {
        for input in inputs() {
            let expect = input
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
                .unwrap_or(input.len());
            assert_eq!(plain_ascii_prefix(&input), expect, "{input:?}");
        }
    }

    #[test]
    fn quote_or_backslash_finds_the_first_of_either() {
        for input in inputs() {
            let expect = input.iter().position(|&b| b == b'"' || b == b'\\');
            assert_eq!(quote_or_backslash(&input), expect, "{input:?}");
        }
    }

    #[test]
    fn extend_payload_appends_up_to_a_quote_or_backslash_and_the_limit() {
        for (n, input) in inputs().enumerate() {
            let mut gathered = Gathered::default();
            gathered.extend(b"ab");
            let limit = n % 40;
            let taken = gathered.extend_payload(&input, limit);
            let whole = input
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .unwrap_or(input.len());
            // Whole blocks are taken until the limit is reached, then nothing more.
            assert!(taken <= whole, "{input:?}");
            assert!(taken == whole || gathered.len() >= limit, "{input:?}");
            assert!(
                gathered.len() < limit + BLOCK || taken == whole,
                "{input:?}"
            );
            assert_eq!(gathered.as_slice()[..2], *b"ab");
            assert_eq!(gathered.as_slice()[2..], input[..taken], "{input:?}");
        }
    }

    #[test]
    fn extend_payload_takes_php_escapes_as_slashes() {
        let text = "QUJD\\/RE\\/\\/Rk".repeat(40);
        // Every cut but those inside an escape.
        let cuts = (0..=text.len()).filter(|&cut| !text[..cut].ends_with('\\'));
        for cut in cuts {
            let input = format!("{}\\\"{}\"", &text[..cut], &text[cut..]);
            let mut gathered = Gathered::default();
            let taken = gathered.extend_payload(input.as_bytes(), 1 << 20);
            // Up to the escaped quote, which is not PHP's.
            assert_eq!(taken, cut, "{input}");
            let expect = text[..cut].replace("\\/", "/");
            assert_eq!(gathered.as_slice(), expect.as_bytes(), "{input}");
        }
        // A backslash at the end of the input, its escape cut off: left for the caller.
        let mut gathered = Gathered::default();
        let input = format!("{}\\", "A".repeat(40));
        assert_eq!(gathered.extend_payload(input.as_bytes(), 1 << 20), 40);
        assert_eq!(gathered.len(), 40);
    }

    #[test]
    fn pushes_and_extends_keep_everything() {
        let mut gathered = Gathered::default();
        let mut expect = Vec::new();
        for i in 0..2000u32 {
            let byte = b'A' + (i % 26) as u8;
            if i % 7 == 0 {
                gathered.extend(&[byte; 300]);
                expect.extend_from_slice(&[byte; 300]);
            } else {
                gathered.push(byte);
                expect.push(byte);
            }
        }
        assert_eq!(gathered.as_slice(), expect);
        gathered.clear();
        assert!(gathered.is_empty());
        assert_eq!(gathered.as_slice(), b"");
    }
}
