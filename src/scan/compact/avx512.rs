//! Base64 with escaped symbols (`\/` from PHP, `\u002B` from .NET, `\u002b` `\u002f`) made
//! into bare symbols 64 bytes at a time with AVX-512, on CPUs that have it (found at run
//! time). The escapes of a block are found and checked at once; each becomes its symbol where
//! its backslash stood, and the rest of it is squeezed out by compressing each quarter of the
//! block as sixteen lanes of 32 bits (AVX-512F; the byte compress of VBMI2 has no safe
//! wrapper). No branch for each escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::{__m128i, __m512i};

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
    let ends = eq(s, x, b'"') | eq(s, x, b'=') | eq(s, x, b' ') | (backslash & !codes & !slashes);
    // The bytes of the last block's escape are none of those.
    let stop = ends & !low_bits(carry);
    let head = if stop == 0 {
        u64::MAX
    } else {
        low_bits(stop.trailing_zeros())
    };
    let (codes, slashes) = (codes & head, slashes & head);
    // Each escape's symbol where its backslash stood; the rest of it is left out.
    let made = s.avx512bw._mm512_mask_blend_epi8(codes, x, code);
    let made =
        s.avx512bw
            ._mm512_mask_blend_epi8(slashes, made, s.avx512f._mm512_set1_epi8(b'/' as i8));
    let escaped =
        |escapes: u64, len: u32| (1..len).fold(0u128, |d, k| d | u128::from(escapes) << k);
    let dropped = escaped(codes, 6) | escaped(slashes, 2);
    let keep = !(dropped as u64) & !low_bits(carry) & head;
    let lanes = [
        s.avx512f._mm512_castsi512_si128(made),
        s.avx512f._mm512_extracti32x4_epi32::<1>(made),
        s.avx512f._mm512_extracti32x4_epi32::<2>(made),
        s.avx512f._mm512_extracti32x4_epi32::<3>(made),
    ];
    let chunks = core::array::from_fn(|q| {
        let wide = s.avx512f._mm512_cvtepu8_epi32(lanes[q]);
        let kept = s
            .avx512f
            ._mm512_maskz_compress_epi32((keep >> (16 * q)) as u16, wide);
        cast::<__m128i, [u8; 16]>(s.avx512f._mm512_cvtepi32_epi8(kept))
    });
    let below = |bits: u32| (keep & low_bits(bits)).count_ones() as usize;
    Unescaped {
        chunks,
        starts: [0, below(16), below(32), below(48)],
        made: keep.count_ones() as usize,
        stopped: stop != 0,
        consumed: stop.trailing_zeros() as usize,
        carry: ((dropped >> 64) as u64).count_ones(),
        extra: 5 * codes.count_ones() as usize + slashes.count_ones() as usize,
        codes: codes != 0,
    }
}

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
