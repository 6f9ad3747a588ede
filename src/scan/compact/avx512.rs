//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 64 bytes at a time with AVX-512, on CPUs that have it (found at run
//! time). The escapes of a block are found and checked at once (the hex digits of `\u`
//! escapes with tables of sixteen, a byte shuffle each); each becomes its symbol where its
//! backslash stood, and the rest of it is squeezed out: with VBMI2's byte compress where the
//! CPU has it (Ice Lake and later, Zen 4), else with one byte shuffle whose indices come from
//! small tables in registers (compressing 32-bit lanes took many more instructions). No branch
//! for each escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m512i;

use pulp::bytemuck::cast;
use pulp::x86::V4;

use super::escape_tables::{LETTER, MARKS, WITH_HIGH, WITH_LOW, WITH_LOW_HALF};
use super::Tally;
use crate::alphabet::VALUES_BY_BYTE;
use crate::simd::{Avx2, Avx512, Vbmi};

/// Bytes of the block one step takes.
const STEP: usize = 64;

/// Bytes looked at for one step: the block, and the rest of an escape that starts at its end
/// (five bytes, rounded up).
const WINDOW: usize = STEP + 8;

/// What one step made of a block.
pub(super) struct Unescaped {
    /// The symbols of each quarter of the block, at the start of its chunk.
    chunks: [[u8; 16]; 4],
    /// Where each chunk goes among the symbols made (at most 48).
    starts: [usize; 4],
    tally: Tally,
}

impl super::Step for Avx512 {
    const STEP: usize = STEP;
    const WINDOW: usize = WINDOW;
    const CHECKS: bool = false;
    type Made = Unescaped;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        Avx512::avx2(self)
    }

    #[inline(always)]
    fn unescape<const CODES: bool, const CHECK: bool>(
        self,
        window: &[u8],
        carry: u64,
    ) -> Unescaped {
        unescape::<CODES>(self, window.try_into().unwrap_or(&[0; WINDOW]), carry)
    }
}

impl super::Made for Unescaped {
    #[inline(always)]
    fn place(&self, buffer: &mut [u8], at: usize) {
        let window = &mut buffer[at..at + STEP + 16];
        let Ok(place) = <&mut [u8; STEP + 16]>::try_from(window) else {
            return;
        };
        // The chunks overlap: each is written whole, the next one over its unused end. One
        // bounds check for the window; the masked starts need none.
        for (chunk, start) in self.chunks.iter().zip(self.starts) {
            place[start & 63..][..16].copy_from_slice(chunk);
        }
    }

    #[inline(always)]
    fn tally(&self) -> Tally {
        self.tally
    }
}

impl super::Step for Vbmi {
    const STEP: usize = STEP;
    const WINDOW: usize = WINDOW;
    const CHECKS: bool = true;
    type Made = Compressed;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        self.avx512().avx2()
    }

    #[inline(always)]
    fn unescape<const CODES: bool, const CHECK: bool>(
        self,
        window: &[u8],
        carry: u64,
    ) -> Compressed {
        let window = window.try_into().unwrap_or(&[0; WINDOW]);
        let found = found::<CODES>(self.avx512().v4(), window, carry);
        let mut tally = found.tally();
        if CHECK {
            tally.outside = outside_alphabet(self.token(), found.made) & found.keep;
        }
        Compressed {
            symbols: cast(compress(self.token(), found.kept, found.made)),
            tally,
        }
    }
}

/// What one step made of a block with VBMI2: its symbols together at the start.
pub(super) struct Compressed {
    symbols: [u8; STEP],
    tally: Tally,
}

impl super::Made for Compressed {
    #[inline(always)]
    fn place(&self, buffer: &mut [u8], at: usize) {
        if let Some(place) = buffer.get_mut(at..at + STEP) {
            place.copy_from_slice(&self.symbols);
        }
    }

    #[inline(always)]
    fn tally(&self) -> Tally {
        self.tally
    }
}

/// The bytes of `bytes` that are not symbols of the alphabet (`=` included), one bit each: a
/// byte permute of the table of values, as the alphabet check does.
#[archmage::arcane(import_intrinsics)]
fn outside_alphabet(_token: archmage::X64V4xToken, bytes: __m512i) -> u64 {
    let values = _mm512_permutex2var_epi8(
        _mm512_loadu_si512(&VALUES_BY_BYTE[0]),
        bytes,
        _mm512_loadu_si512(&VALUES_BY_BYTE[1]),
    );
    _mm512_movepi8_mask(_mm512_or_si512(values, bytes))
}

/// The bytes of `bytes` that `keep` keeps, together at the start (VBMI2's byte compress).
#[archmage::arcane(import_intrinsics)]
fn compress(_token: archmage::X64V4xToken, keep: u64, bytes: __m512i) -> __m512i {
    _mm512_maskz_compress_epi8(keep, bytes)
}

/// What a block holds, as [`found`] finds it.
struct Found {
    /// Each escape's symbol where its backslash stood, the other bytes as they are.
    made: __m512i,
    /// The bytes of `made` to keep, in order: up to the stop, without the rest of each escape.
    keep: u64,
    /// The same past the stop too (a squeeze by it need not wait for the stop to be found).
    kept: u64,
    /// Where something stands that the step does not take: the lowest bit set (0 for none).
    stop: u64,
    /// The bytes at the start of the next block that belong to an escape taken here.
    carry: u64,
    /// Where `\u` escapes were taken.
    codes: u64,
}

impl Found {
    /// What a step that keeps [`Found::keep`] made.
    #[inline(always)]
    fn tally(&self) -> Tally {
        Tally {
            made: self.keep.count_ones() as usize,
            stop: self.stop,
            carry: self.carry,
            codes: self.codes,
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
fn unescape<const CODES: bool>(simd: Avx512, window: &[u8; WINDOW], carry: u64) -> Unescaped {
    let s = simd.v4();
    let found = found::<CODES>(s, window, carry);
    let chunks = cast(
        s.avx512bw
            ._mm512_shuffle_epi8(found.made, squeeze(s, found.kept)),
    );
    let below = |bits: u64| (found.keep & bits).count_ones() as usize;
    Unescaped {
        chunks,
        starts: [
            0,
            below(0xFFFF),
            below(0xFFFF_FFFF),
            below(0xFFFF_FFFF_FFFF),
        ],
        tally: found.tally(),
    }
}

/// The escapes of the block at the start of `window` and what they stand for (see
/// [`unescape`]).
#[inline(always)]
fn found<const CODES: bool>(s: V4, window: &[u8; WINDOW], carry: u64) -> Found {
    let x = load(window, 0);
    // Where the byte `k` on is `b`, among `among`.
    let at = |among: u64, k: usize, b: u8| {
        s.avx512bw._mm512_mask_cmpeq_epi8_mask(
            among,
            load(window, k),
            s.avx512f._mm512_set1_epi8(b as i8),
        )
    };
    let backslash = eq(s, x, b'\\');
    // `\u00` and two hex digits that make a symbol's code; `\/`.
    let (code, code_ok) = code(s, load(window, 4), load(window, 5));
    let codes = if CODES {
        let prefix = at(at(at(backslash, 1, b'u'), 2, b'0'), 3, b'0');
        s.avx512bw
            ._mm512_mask_test_epi8_mask(prefix, code_ok, code_ok)
    } else {
        0
    };
    let slashes = at(backslash, 1, b'/');
    // Each escape's symbol where its backslash stood (past a stop too: nothing there is
    // kept); the rest of it is left out.
    let made = s.avx512bw._mm512_mask_blend_epi8(codes, x, code);
    let made =
        s.avx512bw
            ._mm512_mask_blend_epi8(slashes, made, s.avx512f._mm512_set1_epi8(b'/' as i8));
    // A backslash, `"`, `=` or a space: each the byte of its lower half in a table.
    let marks = s.avx512bw._mm512_cmpeq_epi8_mask(
        s.avx512bw
            ._mm512_shuffle_epi8(s.avx512f._mm512_broadcast_i32x4(cast(MARKS)), x),
        x,
    );
    let ends = marks & !codes & !slashes;
    // Escapes do not overlap: the product adds shifted copies without carries. Its upper half
    // is the rest of an escape that the block ends in. The bytes at the start that the last
    // block's escape took are left out too.
    let escaped = (u128::from(codes) * 0b11_1110) | (u128::from(slashes) << 1);
    let dropped = escaped as u64 | carry;
    // The bytes of the last block's escape are none of the ends.
    let stop = ends & !carry;
    // Below the stop (all for none).
    let head = stop.wrapping_sub(1) & !stop;
    Found {
        made,
        keep: !dropped & head,
        kept: !dropped,
        stop,
        carry: (escaped >> 64) as u64,
        codes: codes & head,
    }
}

/// The symbol whose code the hex digits `high` and `low` (at each byte) make, and where they
/// make one: a nonzero byte. Three tables of sixteen (a byte shuffle each) say, for the low
/// digit's two halves and the high digit, which high digits go with it; for the low digit
/// as a number (0 to 9) and as a letter, apart.
#[inline(always)]
fn code(s: V4, high: __m512i, low: __m512i) -> (__m512i, __m512i) {
    let (bw, f) = (s.avx512bw, s.avx512f);
    let table = |t: [u8; 16]| f._mm512_broadcast_i32x4(cast(t));
    let low_half = f._mm512_and_si512(bw._mm512_srli_epi16::<4>(low), f._mm512_set1_epi8(0x0F));
    // High digits `2` to `7` as 10 to 15, anything else with bit 7 set (which makes the
    // shuffle give 0).
    let high_digit = bw._mm512_adds_epu8(
        bw._mm512_sub_epi8(high, f._mm512_set1_epi8(b'2' as i8)),
        f._mm512_set1_epi8(0x7A),
    );
    let ok = f._mm512_ternarylogic_epi64::<0x80>(
        bw._mm512_shuffle_epi8(table(WITH_LOW), low),
        bw._mm512_shuffle_epi8(table(WITH_LOW_HALF), low_half),
        bw._mm512_shuffle_epi8(table(WITH_HIGH), high_digit),
    );
    // The high digit's value in the upper half, the low one's in the lower (a letter's plus
    // nine).
    let code = bw._mm512_add_epi8(
        f._mm512_ternarylogic_epi64::<0xE4>(
            bw._mm512_slli_epi16::<4>(high),
            low,
            f._mm512_set1_epi8(0xF0u8 as i8),
        ),
        bw._mm512_shuffle_epi8(table(LETTER), low_half),
    );
    (code, ok)
}

/// The byte shuffle that brings the bytes of each quarter of a block that `keep` keeps
/// together at the start of it. Each half of each eighth is looked up in a table of sixteen
/// (as 32-bit lanes); the second half then goes where the first one's kept bytes end, and
/// so does the second eighth of each quarter.
#[inline(always)]
fn squeeze(s: V4, keep: u64) -> __m512i {
    let f = s.avx512f;
    let lanes = |v: [u64; 8]| cast::<[u64; 8], __m512i>(v);
    // Eighth k in 64-bit lane k; its second half in the upper 32 bits, and bit 4 set in the
    // lower ones, which picks the table of first halves.
    let eighths = f._mm512_and_si512(
        f._mm512_srlv_epi64(
            f._mm512_set1_epi64(keep as i64),
            lanes(core::array::from_fn(|k| 8 * k as u64)),
        ),
        f._mm512_set1_epi64(0xFF),
    );
    let halves = f._mm512_ternarylogic_epi64::<0xFE>(
        eighths,
        f._mm512_slli_epi64::<28>(eighths),
        f._mm512_set1_epi64(0x10),
    );
    let indices = f._mm512_permutex2var_epi32(cast(SECOND_HALVES), halves, cast(FIRST_HALVES));
    // Bytes of the first half kept: from the leading zeros of its indices (each has bit 4).
    let shift = f._mm512_and_si512(
        s.avx512cd._mm512_lzcnt_epi32(indices),
        f._mm512_set1_epi64(0x38),
    );
    let second = f._mm512_srlv_epi64(
        f._mm512_and_si512(indices, f._mm512_set1_epi64(!0xFFFF_FFFF)),
        shift,
    );
    let joined =
        f._mm512_ternarylogic_epi64::<0xEC>(indices, second, f._mm512_set1_epi64(0xFFFF_FFFF));
    // Each odd eighth is the upper half of its 128-bit lane.
    let eighths = f._mm512_or_si512(
        joined,
        lanes(core::array::from_fn(|k| odd(k, 0x0808_0808_0808_0808))),
    );
    // The second eighth of each quarter goes where the first one's kept bytes end: the
    // indices of each quarter shuffled by a pattern for their number (from the leading zeros
    // of the first eighth's indices, each nonzero), looked up for each half of the quarter.
    let unkept = f._mm512_srli_epi64::<3>(s.avx512cd._mm512_lzcnt_epi64(eighths));
    let patterns = f._mm512_add_epi64(
        f._mm512_shuffle_epi32::<0x44>(unkept),
        lanes(core::array::from_fn(|k| odd(k, 8))),
    );
    let (first, second): ([u64; 8], [u64; 8]) = JOINS;
    let pattern = f._mm512_permutex2var_epi64(lanes(first), patterns, lanes(second));
    s.avx512bw._mm512_shuffle_epi8(eighths, pattern)
}

/// The byte shuffles that join the two eighths of a quarter, by the bytes of the first one
/// not kept (`u`, 0 to 8): for the lower half of the quarter at `u`, for its upper half at
/// `u + 8` (at 0 for 8, which holds nothing kept).
const JOINS: ([u64; 8], [u64; 8]) = {
    let mut table = [0u64; 16];
    let mut unkept = 0;
    while unkept <= 8 {
        let kept = 8 - unkept;
        let (mut lower, mut upper) = (0u64, 0u64);
        let mut b = 0;
        while b < 8 {
            let from = if b < kept { b } else { b - kept + 8 };
            lower |= (from as u64) << (8 * b);
            // Past the second eighth: garbage, past what is kept.
            upper |= (((b + 16 - kept) & 15) as u64) << (8 * b);
            b += 1;
        }
        table[unkept] = lower;
        if unkept < 8 {
            table[unkept + 8] = upper;
        }
        unkept += 1;
    }
    let (mut first, mut second) = ([0u64; 8], [0u64; 8]);
    let mut k = 0;
    while k < 8 {
        first[k] = table[k];
        second[k] = table[k + 8];
        k += 1;
    }
    (first, second)
};

/// `value` for odd `k`, else 0.
const fn odd(k: usize, value: u64) -> u64 {
    if k % 2 == 1 {
        value
    } else {
        0
    }
}

/// For each set of bytes kept out of four (one bit each), their indices together at the
/// start, `OFFSET` added to each and `MARK` set in each; 0 past them.
const fn halves<const OFFSET: u8, const MARK: u8>() -> [u32; 16] {
    let mut table = [0u32; 16];
    let mut kept = 0;
    while kept < 16 {
        let (mut indices, mut n, mut i) = (0u32, 0, 0);
        while i < 4 {
            if kept & (1 << i) != 0 {
                indices |= ((OFFSET + i as u8) as u32 | MARK as u32) << (8 * n);
                n += 1;
            }
            i += 1;
        }
        table[kept] = indices;
        kept += 1;
    }
    table
}

/// The first halves of eighths: indices 0 to 3, marked with bit 4 (which the byte shuffle
/// does not read) so that each is nonzero.
static FIRST_HALVES: [u32; 16] = halves::<0, 0x10>();

/// The second halves: indices 4 to 7.
static SECOND_HALVES: [u32; 16] = halves::<4, 0>();

#[inline(always)]
fn load(window: &[u8; WINDOW], at: usize) -> __m512i {
    let mut block = [0u8; STEP];
    block.copy_from_slice(&window[at..at + STEP]);
    cast(block)
}

#[inline(always)]
fn eq(s: V4, a: __m512i, b: u8) -> u64 {
    s.avx512bw
        ._mm512_cmpeq_epi8_mask(a, s.avx512f._mm512_set1_epi8(b as i8))
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_step_takes_exactly_the_codes_of_symbols;
    use super::*;

    #[test]
    fn every_two_bytes_after_u00_are_taken_exactly_when_they_code_a_symbol_and_codes_are_looked_for(
    ) {
        let Some(simd) = Avx512::detect() else {
            eprintln!("no AVX-512 on this CPU: nothing to check");
            return;
        };
        // Inside the block, and across its end; with the byte shuffle, and with VBMI2's
        // compress where the CPU has it.
        assert_step_takes_exactly_the_codes_of_symbols(simd.without_vbmi(), &[0, 9, 58, 61]);
        match simd.vbmi() {
            Some(vbmi) => assert_step_takes_exactly_the_codes_of_symbols(vbmi, &[0, 9, 58, 61]),
            None => eprintln!("no VBMI2 on this CPU: not checked with it"),
        }
    }
}
