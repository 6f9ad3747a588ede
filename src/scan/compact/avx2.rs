//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 32 bytes at a time with AVX2, on CPUs that have it (found at run time;
//! the crate is built for the x86-64 baseline). The escapes of a block are found and checked
//! at once, each byte of them compared where a backslash may stand; a `\u` escape becomes its
//! symbol where its backslash stood, the `/` of `\/` stays, and the rest is squeezed out with
//! a byte shuffle from a table, without a branch for each escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m256i;

use pulp::bytemuck::cast;
use pulp::x86::V3;

use super::escape_tables::{CODED_SYMBOLS, MARKS, SYMBOL_AND_CASE};
use super::Tally;
use crate::simd::Avx2;

/// Bytes of the block one step takes.
const STEP: usize = 32;

/// Bytes looked at for one step: the block, and the rest of an escape that starts at its end
/// (five bytes, rounded up).
const WINDOW: usize = STEP + 8;

/// What one step made of a block.
pub(super) struct Unescaped {
    /// The symbols of each quarter of the block, at the start of its word.
    words: [u64; 4],
    /// Where each word goes among the symbols made (at most 24).
    starts: [usize; 4],
    /// The bytes kept, past the stop too.
    kept: u32,
    /// Where something stands that the step does not take: the lowest bit set (0 for
    /// nothing).
    stop: u32,
    /// The bytes at the start of the next block that belong to an escape taken here (0 to
    /// 5, one bit each), when nothing stops the step.
    carry: u32,
}

impl super::Step for Avx2 {
    const STEP: usize = STEP;
    const WINDOW: usize = WINDOW;
    const CHECKS: bool = false;
    type Found = Found;
    type Made = Unescaped;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        self
    }

    #[inline(always)]
    fn find<const CODES: bool, const CHECK: bool>(self, window: &[u8]) -> Found {
        found::<CODES>(self, window.try_into().unwrap_or(&[0; WINDOW]))
    }

    #[inline(always)]
    fn make(self, found: Found, carry: u64) -> Unescaped {
        unescape(self, found, carry as u32)
    }
}

impl super::Made for Unescaped {
    #[inline(always)]
    fn place(&self, buffer: &mut [u8], at: usize) {
        let window = &mut buffer[at..at + STEP + 8];
        let Ok(place) = <&mut [u8; STEP + 8]>::try_from(window) else {
            return;
        };
        // The words overlap: each is written whole, the next one over its unused end. One
        // bounds check for the window; the masked starts need none.
        for (word, start) in self.words.iter().zip(self.starts) {
            place[start & 31..][..8].copy_from_slice(&word.to_le_bytes());
        }
    }

    #[inline(always)]
    fn tally(&self) -> Tally {
        Tally {
            kept: u64::from(self.kept),
            stop: u64::from(self.stop),
            carry: u64::from(self.carry),
        }
    }
}

/// What a block holds, as [`found`] finds it: nothing that waits for the block before.
#[derive(Clone, Copy)]
pub(super) struct Found {
    /// Each escape's symbol where it stands, the other bytes as they are.
    made: __m256i,
    /// Where `\u` escapes start.
    codes: u32,
    /// Where `\/` escapes start.
    slashes: u32,
    /// Where something stands that the step does not take, if it is not the rest of the last
    /// block's escape.
    ends: u32,
}

/// The escapes of the block at the start of `window` and what they stand for: with `CODES`
/// `\u` escapes and `\/`, else `\/` only.
#[inline(always)]
fn found<const CODES: bool>(simd: Avx2, window: &[u8; WINDOW]) -> Found {
    let s = simd.v3();
    let avx2 = s.avx2;
    let x = load(window, 0);
    let bits = |a: __m256i| avx2._mm256_movemask_epi8(a) as u32;
    let backslash = eq(s, x, b'\\');
    let slashes = bits(avx2._mm256_and_si256(backslash, eq(s, load(window, 1), b'/')));
    // Each escape's symbol where it stands (past a stop too: nothing there is kept), the rest
    // of it left out: the `/` of `\/`, and of a `\u` escape its backslash made the symbol.
    let (made, codes) = if CODES {
        // `\u002B`, `\u002F` and their lowercase; of the last digit, the two bits that tell
        // the four apart are left out.
        let last = load(window, 5);
        let last_bits = avx2._mm256_andnot_si256(splat(s, SYMBOL_AND_CASE), last);
        let codes = avx2._mm256_and_si256(
            avx2._mm256_and_si256(
                avx2._mm256_and_si256(backslash, eq(s, load(window, 1), b'u')),
                avx2._mm256_and_si256(eq(s, load(window, 2), b'0'), eq(s, load(window, 3), b'0')),
            ),
            avx2._mm256_and_si256(
                eq(s, load(window, 4), b'2'),
                eq(s, last_bits, b'B' & !SYMBOL_AND_CASE),
            ),
        );
        // `B` and `b` make `+` (2B), `F` and `f` make `/` (2F): looked up by the lower half.
        let symbol = avx2._mm256_shuffle_epi8(table(s, CODED_SYMBOLS), last);
        (avx2._mm256_blendv_epi8(x, symbol, codes), bits(codes))
    } else {
        (x, 0)
    };
    // A backslash, `"`, `=` or a space: each the byte of its lower half in a table.
    let marks = bits(avx2._mm256_cmpeq_epi8(avx2._mm256_shuffle_epi8(table(s, MARKS), x), x));
    Found {
        made,
        codes,
        slashes,
        ends: marks & !codes & !slashes,
    }
}

/// Makes a block into symbols, up to the first byte that is neither a symbol nor an escape
/// of one. `carry`: the bytes at its start taken with the last block's escape, one bit each.
#[inline(always)]
fn unescape(simd: Avx2, found: Found, carry: u32) -> Unescaped {
    let (avx, avx2) = (simd.v3().avx, simd.v3().avx2);
    // `\u` escapes do not overlap: the product adds shifted copies without carries. Its upper
    // half is the rest of one that the block ends in. The bytes at the start that the last
    // block's escape took are left out too.
    let escaped = u64::from(found.codes) * 0b11_1110;
    let dropped = escaped as u32 | found.slashes | carry;
    // Squeezed whatever stands past a stop (nothing past it is taken): the shuffle need not
    // wait for the stop to be found.
    let kept = !dropped;
    let quarter = |q: u32| SQUEEZE[((kept >> (8 * q)) & 0xFF) as usize] as i64;
    // Indices within each 128-bit lane: the second quarter of a lane starts at 8.
    let indices = avx._mm256_setr_epi64x(
        quarter(0),
        quarter(1) + 0x0808_0808_0808_0808,
        quarter(2),
        quarter(3) + 0x0808_0808_0808_0808,
    );
    let words: [u64; 4] = cast(avx2._mm256_shuffle_epi8(found.made, indices));
    // The bytes of the last block's escape are none of the ends.
    let stop = found.ends & !carry;
    // Below the stop (all for none).
    let head = stop.wrapping_sub(1) & !stop;
    let keep = kept & head;
    let below = |bits: u32| (keep & bits).count_ones() as usize;
    Unescaped {
        words,
        starts: [0, below(0xFF), below(0xFFFF), below(0xFF_FFFF)],
        kept,
        stop,
        carry: (escaped >> 32) as u32,
    }
}

/// A table of sixteen in each 128-bit lane, for byte shuffles.
#[inline(always)]
fn table(_: V3, t: [u8; 16]) -> __m256i {
    cast([t, t])
}

#[inline(always)]
fn load(window: &[u8; WINDOW], at: usize) -> __m256i {
    let mut block = [0u8; STEP];
    block.copy_from_slice(&window[at..at + STEP]);
    cast(block)
}

#[inline(always)]
fn splat(s: V3, b: u8) -> __m256i {
    s.avx._mm256_set1_epi8(b as i8)
}

#[inline(always)]
fn eq(s: V3, a: __m256i, b: u8) -> __m256i {
    s.avx2._mm256_cmpeq_epi8(a, splat(s, b))
}

/// For each set of bytes kept out of 8 (one bit each), the shuffle indices that bring them
/// together at the start.
static SQUEEZE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut kept = 0;
    while kept < 256 {
        let mut indices = 0u64;
        let mut n = 0;
        let mut i = 0;
        while i < 8 {
            if kept & (1 << i) != 0 {
                indices |= (i as u64) << (8 * n);
                n += 1;
            }
            i += 1;
        }
        table[kept] = indices;
        kept += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::super::tests::{
        assert_step_takes_exactly_the_escapes_of_plus_and_slash, made_symbols,
    };
    use super::super::Step;
    use super::*;

    #[test]
    fn every_two_bytes_after_u00_are_taken_exactly_when_they_code_plus_or_slash_and_codes_are_looked_for(
    ) {
        let Some(simd) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to check");
            return;
        };
        // Inside the block, and across its end.
        assert_step_takes_exactly_the_escapes_of_plus_and_slash(simd, &[0, 9, 26, 29, 31]);
    }

    #[test]
    fn a_block_of_slashes_and_codes_is_squeezed_and_its_last_escape_carried() {
        let Some(simd) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to check");
            return;
        };
        // Escapes back to back, the last one cut by the end of the block.
        let mut window = [b'B'; WINDOW];
        let text = b"\\/\\u002Bx\\u002b\\/\\/yz\\u002F\\u002f";
        window[..text.len()].copy_from_slice(text);
        let step = simd.unescape::<true, false>(&window, 0);
        assert_eq!(step.stop, 0);
        assert_eq!(made_symbols(&step), b"/+x+//yz//");
        assert_eq!(step.carry, 0b1);
        // A block after one that ended in a backslash: the rest of its escape is left out.
        let mut window = [b'B'; WINDOW];
        window[..5].copy_from_slice(b"u002F");
        let step = simd.unescape::<true, false>(&window, 0b1_1111);
        assert_eq!(step.stop, 0);
        assert_eq!(made_symbols(&step), [b'B'; STEP - 5]);
        assert_eq!(step.carry, 0);
    }
}
