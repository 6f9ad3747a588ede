//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 64 bytes at a time with AVX-512, on CPUs that have it (found at run
//! time). The escapes of a block are found and checked at once; each becomes its symbol where
//! its backslash stood, and the rest of it is squeezed out with one byte shuffle, whose
//! indices come from a small table in a register (the byte compress of VBMI2 has no safe
//! wrapper, and compressing 32-bit lanes took many more instructions). No branch for each
//! escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m512i;

use pulp::bytemuck::cast;
use pulp::x86::V4;

use crate::simd::Avx512;

/// Bytes of the block one step takes.
pub(super) const STEP: usize = 64;

/// Bytes looked at for one step: the block, and the rest of an escape that starts at its end
/// (five bytes, rounded up).
pub(super) const WINDOW: usize = STEP + 8;

/// What one step made of a block.
pub(super) struct Unescaped {
    /// The symbols of each quarter of the block, at the start of its chunk.
    pub(super) chunks: [[u8; 16]; 4],
    /// Where each chunk goes among the symbols made (at most 48).
    pub(super) starts: [usize; 4],
    /// Symbols made.
    pub(super) made: usize,
    /// Something the step does not take stands in the block, at `consumed`.
    pub(super) stopped: bool,
    /// Input bytes taken when stopped.
    pub(super) consumed: usize,
    /// Bytes at the start of the next block that belong to an escape taken here (0 to 5).
    pub(super) carry: u32,
    /// Input bytes of the escapes taken past the first of each.
    pub(super) extra: usize,
    /// A `\u` escape was taken.
    pub(super) codes: bool,
}

/// Makes the block at the start of `window` into symbols, up to the first byte that is
/// neither a symbol nor an escape of one. `carry`: bytes at its start taken with the last
/// block's escape. The next block starts [`STEP`] bytes on whatever this one holds, so that
/// its loads do not wait for this one.
#[inline(always)]
pub(super) fn unescape(simd: Avx512, window: &[u8; WINDOW], carry: u32) -> Unescaped {
    let s = simd.v4();
    let x = load(window, 0);
    let at = |k: usize, b: u8| eq(s, load(window, k), b);
    let backslash = eq(s, x, b'\\');
    // `\u00` and two hex digits that make a symbol's code; `\/`.
    let (high, high_ok) = hex(s, load(window, 4));
    let (low, low_ok) = hex(s, load(window, 5));
    let code = s
        .avx512f
        ._mm512_or_si512(s.avx512bw._mm512_slli_epi16::<4>(high), low);
    let codes =
        backslash & at(1, b'u') & at(2, b'0') & at(3, b'0') & high_ok & low_ok & symbol(s, code);
    let slashes = backslash & at(1, b'/');
    // Each escape's symbol where its backslash stood (past a stop too: nothing there is
    // kept); the rest of it is left out.
    let made = s.avx512bw._mm512_mask_blend_epi8(codes, x, code);
    let made =
        s.avx512bw
            ._mm512_mask_blend_epi8(slashes, made, s.avx512f._mm512_set1_epi8(b'/' as i8));
    let ends = eq(s, x, b'"') | eq(s, x, b'=') | eq(s, x, b' ') | (backslash & !codes & !slashes);
    // Escapes do not overlap: the product adds shifted copies without carries. The bytes at
    // the start that the last block's escape took are left out too.
    let dropped = codes.wrapping_mul(0b11_1110) | slashes << 1 | low_bits(carry);
    // Squeezed whatever stands past a stop (nothing past it is taken): the shuffle need not
    // wait for the stop to be found.
    let chunks = cast(s.avx512bw._mm512_shuffle_epi8(made, squeeze(s, !dropped)));
    // The bytes of the last block's escape are none of the ends.
    let stop = ends & !low_bits(carry);
    let head = if stop == 0 {
        u64::MAX
    } else {
        low_bits(stop.trailing_zeros())
    };
    let (codes, slashes) = (codes & head, slashes & head);
    let keep = !dropped & head;
    let below = |k: u32| (keep & low_bits(16 * k)).count_ones() as usize;
    Unescaped {
        chunks,
        starts: core::array::from_fn(|k| below(k as u32)),
        made: keep.count_ones() as usize,
        stopped: stop != 0,
        consumed: stop.trailing_zeros() as usize,
        // The escape that the block ends in, if any: a code in the last five bytes (at most
        // one), or a slash in the last.
        carry: (u64::BITS - (codes >> 59).leading_zeros()) + (slashes >> 63) as u32,
        extra: 5 * codes.count_ones() as usize + slashes.count_ones() as usize,
        codes: codes != 0,
    }
}

/// The byte shuffle that brings the bytes of each eighth of a block that `keep` keeps
/// together at the start of it. Each half of each eighth is looked up in a table of sixteen
/// (as 32-bit lanes); the second half then goes where the first one's kept bytes end.
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
    // The second eighth of each quarter goes where the first one's kept bytes end: their
    // number from the leading zeros of its indices (each nonzero), as a shift for both.
    let unkept = f._mm512_and_si512(
        s.avx512cd._mm512_lzcnt_epi64(eighths),
        f._mm512_set1_epi64(0x78),
    );
    let unkept = f._mm512_shuffle_epi32::<0x44>(unkept);
    let to_first = f._mm512_sllv_epi64(
        f._mm512_shuffle_epi32::<0x4E>(eighths),
        f._mm512_or_si512(
            f._mm512_sub_epi64(f._mm512_set1_epi64(64), unkept),
            lanes(core::array::from_fn(|k| odd(k, 64))),
        ),
    );
    let rest = f._mm512_srlv_epi64(
        eighths,
        f._mm512_and_si512(unkept, lanes(core::array::from_fn(|k| odd(k, u64::MAX)))),
    );
    f._mm512_or_si512(to_first, rest)
}

/// `value` for odd `k`, else 0.
const fn odd(k: usize, value: u64) -> u64 {
    if k % 2 == 1 {
        value
    } else {
        0
    }
}

/// For each set of bytes kept out of four (one bit each), their indices together at the
/// start, with bit 4 set (which the byte shuffle does not read); `OFFSET` added to each.
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

/// The first halves of eighths: indices 0 to 3, marked with bit 4 so that each is nonzero.
static FIRST_HALVES: [u32; 16] = halves::<0, 0x10>();

/// The second halves: indices 4 to 7.
static SECOND_HALVES: [u32; 16] = halves::<4, 0>();

/// The `n` lowest bits (`n` up to 64).
#[inline(always)]
fn low_bits(n: u32) -> u64 {
    u64::MAX.checked_shr(64 - n).unwrap_or(0)
}

/// The value of each byte as a hex digit (garbage where it is none), and which are.
#[inline(always)]
fn hex(s: V4, x: __m512i) -> (__m512i, u64) {
    let (bw, f) = (s.avx512bw, s.avx512f);
    let digit = bw._mm512_sub_epi8(x, f._mm512_set1_epi8(b'0' as i8));
    let letter = bw._mm512_sub_epi8(
        f._mm512_or_si512(x, f._mm512_set1_epi8(0x20)),
        f._mm512_set1_epi8(b'a' as i8 - 10),
    );
    let is_digit = bw._mm512_cmplt_epu8_mask(digit, f._mm512_set1_epi8(10));
    let is_letter = bw._mm512_cmplt_epu8_mask(
        bw._mm512_sub_epi8(letter, f._mm512_set1_epi8(10)),
        f._mm512_set1_epi8(6),
    );
    // Four bits each, so that shifting the 16-bit lanes keeps each in its byte.
    let value = f._mm512_and_si512(
        bw._mm512_mask_blend_epi8(is_digit, letter, digit),
        f._mm512_set1_epi8(0x0F),
    );
    (value, is_digit | is_letter)
}

/// Which bytes are base64 symbols (not `=`).
#[inline(always)]
fn symbol(s: V4, x: __m512i) -> u64 {
    let (bw, f) = (s.avx512bw, s.avx512f);
    let within = |from: u8, len: u8| {
        bw._mm512_cmplt_epu8_mask(
            bw._mm512_sub_epi8(x, f._mm512_set1_epi8(from as i8)),
            f._mm512_set1_epi8(len as i8),
        )
    };
    within(b'A', 26) | within(b'a', 26) | within(b'0', 10) | eq(s, x, b'+') | eq(s, x, b'/')
}

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
