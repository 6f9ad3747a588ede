//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 32 bytes at a time with AVX2, on CPUs that have it (found at run time;
//! the crate is built for the x86-64 baseline). The escapes of a block are found and checked
//! at once (the hex digits of `\u` escapes with tables of sixteen, a byte shuffle each); each
//! becomes its symbol where its backslash stood, and the rest of it is squeezed out with a
//! byte shuffle from a table, without a branch for each escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m256i;

use pulp::bytemuck::cast;
use pulp::x86::V3;

use super::escape_tables::{LETTER, MARKS, WITH_HIGH, WITH_LOW, WITH_LOW_HALF};
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
    /// Symbols made.
    made: usize,
    /// Where something stands that the step does not take: the lowest bit set (0 for
    /// nothing).
    stop: u32,
    /// The bytes at the start of the next block that belong to an escape taken here (0 to
    /// 5, one bit each), when nothing stops the step.
    carry: u32,
    /// Where `\u` escapes were taken.
    codes: u32,
}

impl super::Step for Avx2 {
    const STEP: usize = STEP;
    const WINDOW: usize = WINDOW;
    const CHECKS: bool = false;
    type Made = Unescaped;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        self
    }

    #[inline(always)]
    fn unescape<const CODES: bool, const CHECK: bool>(
        self,
        window: &[u8],
        carry: u64,
    ) -> Unescaped {
        unescape::<CODES>(
            self,
            window.try_into().unwrap_or(&[0; WINDOW]),
            carry as u32,
        )
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
            made: self.made,
            stop: u64::from(self.stop),
            carry: u64::from(self.carry),
            codes: u64::from(self.codes),
            outside: 0,
        }
    }
}

/// Makes the block at the start of `window` into symbols, up to the first byte that is
/// neither a symbol nor an escape of one (with `CODES`; else neither a symbol nor `\/`).
/// `carry`: the bytes at its start taken with the last block's escape, one bit each. The
/// next block starts [`STEP`] bytes on whatever this one holds, so that its loads do not wait
/// for this one.
#[inline(always)]
fn unescape<const CODES: bool>(simd: Avx2, window: &[u8; WINDOW], carry: u32) -> Unescaped {
    let s = simd.v3();
    let (avx, avx2) = (s.avx, s.avx2);
    let x = load(window, 0);
    let bits = |a: __m256i| avx2._mm256_movemask_epi8(a) as u32;
    let backslash = eq(s, x, b'\\');
    let slashes = avx2._mm256_and_si256(backslash, eq(s, load(window, 1), b'/'));
    // Each escape's symbol where its backslash stood (past a stop too: nothing there is
    // kept); the rest of it is left out.
    let (made, codes) = if CODES {
        // `\u00` and two hex digits that make a symbol's code.
        let (code, code_ok) = code(s, load(window, 4), load(window, 5));
        let prefix = avx2._mm256_and_si256(
            avx2._mm256_and_si256(backslash, eq(s, load(window, 1), b'u')),
            avx2._mm256_and_si256(eq(s, load(window, 2), b'0'), eq(s, load(window, 3), b'0')),
        );
        // The prefix where the digits make no symbol's code: left out.
        let codes = avx2._mm256_andnot_si256(eq(s, code_ok, 0), prefix);
        (avx2._mm256_blendv_epi8(x, code, codes), bits(codes))
    } else {
        (x, 0)
    };
    let made = avx2._mm256_blendv_epi8(made, splat(s, b'/'), slashes);
    let slashes = bits(slashes);
    // A backslash, `"`, `=` or a space: each the byte of its lower half in a table.
    let marks = bits(avx2._mm256_cmpeq_epi8(avx2._mm256_shuffle_epi8(table(s, MARKS), x), x));
    let ends = marks & !codes & !slashes;
    // Escapes do not overlap: the product adds shifted copies without carries. Its upper half
    // is the rest of an escape that the block ends in. The bytes at the start that the last
    // block's escape took are left out too.
    let escaped = (u64::from(codes) * 0b11_1110) | (u64::from(slashes) << 1);
    let dropped = escaped as u32 | carry;
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
    let words: [u64; 4] = cast(avx2._mm256_shuffle_epi8(made, indices));
    // The bytes of the last block's escape are none of the ends.
    let stop = ends & !carry;
    // Below the stop (all for none).
    let head = stop.wrapping_sub(1) & !stop;
    let keep = kept & head;
    let below = |bits: u32| (keep & bits).count_ones() as usize;
    Unescaped {
        words,
        starts: [0, below(0xFF), below(0xFFFF), below(0xFF_FFFF)],
        made: keep.count_ones() as usize,
        stop,
        carry: (escaped >> 32) as u32,
        codes: codes & head,
    }
}

/// The symbol whose code the hex digits `high` and `low` (at each byte) make, and where they
/// make one: a nonzero byte. Three tables of sixteen (a byte shuffle each) say, for the low
/// digit's two halves and the high digit, which high digits go with it; for the low digit
/// as a number (0 to 9) and as a letter, apart.
#[inline(always)]
fn code(s: V3, high: __m256i, low: __m256i) -> (__m256i, __m256i) {
    let avx2 = s.avx2;
    let shuffle = |t: [u8; 16], at: __m256i| avx2._mm256_shuffle_epi8(table(s, t), at);
    let upper = splat(s, 0xF0);
    let low_half = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(low), splat(s, 0x0F));
    // High digits `2` to `7` as 10 to 15, anything else with bit 7 set (which makes the
    // shuffle give 0).
    let high_digit =
        avx2._mm256_adds_epu8(avx2._mm256_sub_epi8(high, splat(s, b'2')), splat(s, 0x7A));
    let ok = avx2._mm256_and_si256(
        avx2._mm256_and_si256(shuffle(WITH_LOW, low), shuffle(WITH_LOW_HALF, low_half)),
        shuffle(WITH_HIGH, high_digit),
    );
    // The high digit's value in the upper half, the low one's in the lower (a letter's plus
    // nine).
    let digits = avx2._mm256_or_si256(
        avx2._mm256_and_si256(avx2._mm256_slli_epi16::<4>(high), upper),
        avx2._mm256_andnot_si256(upper, low),
    );
    let code = avx2._mm256_add_epi8(digits, shuffle(LETTER, low_half));
    (code, ok)
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
    use super::super::tests::{assert_step_takes_exactly_the_codes_of_symbols, made_symbols};
    use super::*;

    #[test]
    fn every_two_bytes_after_u00_are_taken_exactly_when_they_code_a_symbol_and_codes_are_looked_for(
    ) {
        let Some(simd) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to check");
            return;
        };
        // Inside the block, and across its end.
        assert_step_takes_exactly_the_codes_of_symbols(simd, &[0, 9, 26, 29, 31]);
    }

    #[test]
    fn a_block_of_slashes_and_codes_is_squeezed_and_its_last_escape_carried() {
        let Some(simd) = Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: nothing to check");
            return;
        };
        // Escapes back to back, the last one cut by the end of the block.
        let mut window = [b'B'; WINDOW];
        let text = b"\\/\\u002Bx\\u0061\\/\\/yz\\u0030\\u002f";
        window[..text.len()].copy_from_slice(text);
        let step = unescape::<true>(simd, &window, 0);
        assert_eq!(step.stop, 0);
        assert_eq!(made_symbols(&step), b"/+xa//yz0/");
        assert_eq!(step.codes, 1 << 2 | 1 << 9 | 1 << 21 | 1 << 27);
        assert_eq!(step.carry, 0b1);
        // A block after one that ended in a backslash: the rest of its escape is left out.
        let mut window = [b'B'; WINDOW];
        window[..5].copy_from_slice(b"u002F");
        let step = unescape::<true>(simd, &window, 0b1_1111);
        assert_eq!(step.stop, 0);
        assert_eq!(made_symbols(&step), [b'B'; STEP - 5]);
        assert_eq!(step.carry, 0);
    }
}
