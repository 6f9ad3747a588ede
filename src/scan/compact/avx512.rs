//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 64 bytes at a time with AVX-512, on CPUs that have it (found at run
//! time). The escapes of a block are found and checked at once, each byte of them compared
//! where a backslash may stand; a `\u` escape becomes its symbol where its backslash stood,
//! the `/` of `\/` stays, and the rest is squeezed out: with VBMI2's byte compress where the
//! CPU has it (Ice Lake and later, Zen 4), else with one byte shuffle whose indices come from
//! small tables in registers (compressing 32-bit lanes took many more instructions). No branch
//! for each escape. For FHIR XML, the VBMI step stops at any byte outside the alphabet (found
//! with one byte permute, marks among them): all it makes is then checked.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m512i;

use pulp::bytemuck::cast;
use pulp::x86::V4;

use super::escape_tables::{CODED_SYMBOLS, MARKS, SYMBOL_AND_CASE};
use super::Tally;
use crate::alphabet::outside_vbmi;
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
    type Found = Found;
    type Made = Unescaped;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        Avx512::avx2(self)
    }

    #[inline(always)]
    fn find<const CODES: bool, const CHECK: bool>(self, window: &[u8]) -> Found {
        let (s, window) = (self.v4(), window.try_into().unwrap_or(&[0; WINDOW]));
        let x = load(window, 0);
        // A backslash, `"`, `=` or a space: each the byte of its lower half in a table.
        let marks = s.avx512bw._mm512_cmpeq_epi8_mask(
            s.avx512bw
                ._mm512_shuffle_epi8(s.avx512f._mm512_broadcast_i32x4(cast(MARKS)), x),
            x,
        );
        found::<CODES>(s, window, marks)
    }

    #[inline(always)]
    fn make(self, found: Found, carry: u64) -> Unescaped {
        unescape(self, found, carry)
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
    type Found = Found;
    type Made = Compressed;

    #[inline(always)]
    fn avx2(self) -> Avx2 {
        self.avx512().avx2()
    }

    #[inline(always)]
    fn find<const CODES: bool, const CHECK: bool>(self, window: &[u8]) -> Found {
        if !CHECK {
            return self.avx512().find::<CODES, false>(window);
        }
        let (s, window) = (
            self.avx512().v4(),
            window.try_into().unwrap_or(&[0; WINDOW]),
        );
        // The marks are outside the alphabet too.
        let stops = outside_vbmi(self.token(), load(window, 0));
        found::<CODES>(s, window, stops)
    }

    #[inline(always)]
    fn make(self, found: Found, carry: u64) -> Compressed {
        let kept = found.kept(carry);
        Compressed {
            symbols: cast(compress(self.token(), kept.kept, found.made)),
            tally: kept.tally(),
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

/// The bytes of `bytes` that `keep` keeps, together at the start (VBMI2's byte compress).
#[archmage::arcane(import_intrinsics)]
fn compress(_token: archmage::X64V4xToken, keep: u64, bytes: __m512i) -> __m512i {
    _mm512_maskz_compress_epi8(keep, bytes)
}

/// What a block holds, as [`found`] finds it: nothing that waits for the block before.
#[derive(Clone, Copy)]
pub(super) struct Found {
    /// Each escape's symbol where it stands, the other bytes as they are.
    made: __m512i,
    /// Where `\u` escapes start.
    codes: u64,
    /// Where `\/` escapes start.
    slashes: u64,
    /// Where something stands that the step does not take, if it is not the rest of the last
    /// block's escape.
    ends: u64,
}

/// What a step keeps of a block, once the rest of the last block's escape is known.
struct Kept {
    /// The bytes of `made` to keep, in order: up to the stop, without the rest of each escape.
    keep: u64,
    /// The same past the stop too (a squeeze by it need not wait for the stop to be found).
    kept: u64,
    /// Where something stands that the step does not take: the lowest bit set (0 for none).
    stop: u64,
    /// The bytes at the start of the next block that belong to an escape taken here.
    carry: u64,
}

impl Found {
    /// What to keep, `carry` being the bytes at the start taken with the last block's escape
    /// (one bit each).
    #[inline(always)]
    fn kept(&self, carry: u64) -> Kept {
        // `\u` escapes do not overlap: the product adds shifted copies without carries. Its
        // upper half is the rest of one that the block ends in, which starts the next block.
        // The bytes at the start that the last block's escape took are left out too.
        let escaped = u128::from(self.codes) * 0b11_1110;
        let dropped = escaped as u64 | self.slashes | carry;
        // The bytes of the last block's escape are none of the ends.
        let stop = self.ends & !carry;
        // Below the stop (all for none).
        let head = stop.wrapping_sub(1) & !stop;
        Kept {
            keep: !dropped & head,
            kept: !dropped,
            stop,
            carry: (escaped >> 64) as u64,
        }
    }
}

impl Kept {
    /// What a step that keeps [`Kept::keep`] made.
    #[inline(always)]
    fn tally(&self) -> Tally {
        Tally {
            kept: self.kept,
            stop: self.stop,
            carry: self.carry,
        }
    }
}

/// Makes a block into symbols with a byte shuffle, up to the first byte that is neither a
/// symbol nor an escape of one. `carry`: the bytes at its start taken with the last block's
/// escape, one bit each.
#[inline(always)]
fn unescape(simd: Avx512, found: Found, carry: u64) -> Unescaped {
    let s = simd.v4();
    let kept = found.kept(carry);
    let chunks = cast(
        s.avx512bw
            ._mm512_shuffle_epi8(found.made, squeeze(s, kept.kept)),
    );
    let below = |bits: u64| (kept.keep & bits).count_ones() as usize;
    Unescaped {
        chunks,
        starts: [
            0,
            below(0xFFFF),
            below(0xFFFF_FFFF),
            below(0xFFFF_FFFF_FFFF),
        ],
        tally: kept.tally(),
    }
}

/// The escapes of the block at the start of `window` and what they stand for: with `CODES`
/// `\u` escapes and `\/`, else `\/` only. `stops`: where a backslash, `"`, `=` or a space
/// stands, and whatever else the step is not to take.
#[inline(always)]
fn found<const CODES: bool>(s: V4, window: &[u8; WINDOW], stops: u64) -> Found {
    let (bw, f) = (s.avx512bw, s.avx512f);
    let splat = |b: u8| f._mm512_set1_epi8(b as i8);
    let x = load(window, 0);
    let backslash = bw._mm512_cmpeq_epi8_mask(x, splat(b'\\'));
    let slashes = bw._mm512_mask_cmpeq_epi8_mask(backslash, load(window, 1), splat(b'/'));
    // Each escape's symbol where it stands (past a stop too: nothing there is kept), the rest
    // of it left out: the `/` of `\/`, and of a `\u` escape its backslash made the symbol.
    let (made, codes) = if CODES {
        // `\u002B`, `\u002F` and their lowercase after a backslash: zero where one starts.
        // Each byte is told apart from the one it should be by `a | (b ^ c)`; of the last
        // digit, the two bits that tell the four apart are left out.
        let or_differs = |acc: __m512i, byte: __m512i, b: u8| {
            f._mm512_ternarylogic_epi64::<0xF6>(acc, byte, splat(b))
        };
        let last = load(window, 5);
        let differs = f._mm512_xor_si512(load(window, 1), splat(b'u'));
        let differs = or_differs(differs, load(window, 2), b'0');
        let differs = or_differs(differs, load(window, 3), b'0');
        let differs = or_differs(differs, load(window, 4), b'2');
        let differs = or_differs(
            differs,
            f._mm512_and_si512(last, splat(!SYMBOL_AND_CASE)),
            b'B' & !SYMBOL_AND_CASE,
        );
        let codes = bw._mm512_mask_testn_epi8_mask(backslash, differs, differs);
        // `B` and `b` make `+` (2B), `F` and `f` make `/` (2F): looked up by the lower half.
        let symbols = bw._mm512_mask_shuffle_epi8(
            x,
            codes,
            f._mm512_broadcast_i32x4(cast(CODED_SYMBOLS)),
            last,
        );
        (symbols, codes)
    } else {
        (x, 0)
    };
    Found {
        made,
        codes,
        slashes,
        ends: stops & !codes & !slashes,
    }
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

#[cfg(test)]
mod tests {
    use super::super::tests::assert_step_takes_exactly_the_escapes_of_plus_and_slash;
    use super::*;

    #[test]
    fn every_two_bytes_after_u00_are_taken_exactly_when_they_code_plus_or_slash_and_codes_are_looked_for(
    ) {
        let Some(simd) = Avx512::detect() else {
            eprintln!("no AVX-512 on this CPU: nothing to check");
            return;
        };
        // Inside the block, and across its end; with the byte shuffle, and with VBMI2's
        // compress where the CPU has it.
        assert_step_takes_exactly_the_escapes_of_plus_and_slash(
            simd.without_vbmi(),
            &[0, 9, 58, 61],
        );
        match simd.vbmi() {
            Some(vbmi) => {
                assert_step_takes_exactly_the_escapes_of_plus_and_slash(vbmi, &[0, 9, 58, 61])
            }
            None => eprintln!("no VBMI2 on this CPU: not checked with it"),
        }
    }
}
