//! Base64 with `\/` escapes (PHP's `json_encode`) made into bare symbols 32 bytes at a time
//! with AVX2, on CPUs that have it (found at run time; the crate is built for the x86-64
//! baseline). The escapes of a block are found at once, and their backslashes squeezed out
//! with a byte shuffle from a table, without a branch for each escape.
//!
//! A block stops at anything else (whitespace, any other escape, `"`, `=`), for the portable
//! path.

use core::arch::x86_64::__m256i;

use pulp::bytemuck::cast;
use pulp::x86::V3;

use crate::simd::Avx2;

/// Bytes looked at for one step: the block, and the byte after it (the rest of an escape that
/// starts at its end).
pub(super) const WINDOW: usize = STEP + 1;

/// Bytes of the block one step takes.
pub(super) const STEP: usize = 32;

/// What one step made of a block.
pub(super) struct Unescaped {
    /// The symbols of each quarter of the block, at the start of its word.
    pub(super) words: [u64; 4],
    /// Where each word goes among the symbols made (at most 24).
    pub(super) starts: [usize; 4],
    /// Symbols made.
    pub(super) made: usize,
    /// Something the step does not take stands in the block, at `consumed`.
    pub(super) stopped: bool,
    /// Input bytes taken when stopped.
    pub(super) consumed: usize,
    /// The first byte of the next block belongs to an escape taken here (the block ends with
    /// its backslash), and is taken with it: 1, else 0.
    pub(super) carry: u32,
    /// Escapes taken.
    pub(super) escapes: usize,
}

/// Makes the block at the start of `window` into symbols, up to the first byte that is
/// neither a symbol nor a `\/`. `carry`: the first byte was taken with the last block's
/// escape. The next block starts [`STEP`] bytes on whatever this one holds, so that its
/// loads do not wait for this one.
#[inline(always)]
pub(super) fn unescape(simd: Avx2, window: &[u8; WINDOW], carry: u32) -> Unescaped {
    let s = simd.v3();
    let (x, next) = (load(window, 0), load(window, 1));
    let backslash = eq(s, x, b'\\');
    let ends = or(s, or(s, eq(s, x, b'"'), eq(s, x, b'=')), eq(s, x, b' '));
    let slash = s.avx2._mm256_and_si256(backslash, eq(s, next, b'/'));
    // Each escape's `/` where its backslash stood; the `/` after it is left out below.
    let made = s.avx2._mm256_blendv_epi8(x, splat(s, b'/'), slash);

    let bits = |a: __m256i| s.avx2._mm256_movemask_epi8(a) as u32;
    let slash = bits(slash);
    let stop = bits(ends) | (bits(backslash) & !slash);
    let head = if stop == 0 {
        u32::MAX
    } else {
        (1u32 << stop.trailing_zeros()) - 1
    };
    let slash = slash & head;
    let keep = !(slash << 1) & !carry & head;
    let quarter = |q: u32| SQUEEZE[((keep >> (8 * q)) & 0xFF) as usize] as i64;
    // Indices within each 128-bit lane: the second quarter of a lane starts at 8.
    let indices = s.avx._mm256_setr_epi64x(
        quarter(0),
        quarter(1) + 0x0808_0808_0808_0808,
        quarter(2),
        quarter(3) + 0x0808_0808_0808_0808,
    );
    let words: [u64; 4] = cast(s.avx2._mm256_shuffle_epi8(made, indices));
    let below = |bits: u32| (keep & bits).count_ones() as usize;
    Unescaped {
        words,
        starts: [0, below(0xFF), below(0xFFFF), below(0xFF_FFFF)],
        made: keep.count_ones() as usize,
        stopped: stop != 0,
        consumed: stop.trailing_zeros() as usize,
        carry: slash >> 31,
        escapes: slash.count_ones() as usize,
    }
}

#[inline(always)]
fn load(window: &[u8; WINDOW], at: usize) -> __m256i {
    let mut block = [0u8; 32];
    block.copy_from_slice(&window[at..at + 32]);
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

#[inline(always)]
fn or(s: V3, a: __m256i, b: __m256i) -> __m256i {
    s.avx2._mm256_or_si256(a, b)
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
