//! The standard base64 alphabet without `=` (`A-Z a-z 0-9 + /`): whether bytes are its
//! symbols, a byte at a time or 32 at a time, with AVX2 when the CPU has it (found at run
//! time) and in SSE2 (NEON) registers else.
//!
//! [`Check`] is the same test kept across blocks, for loops that copy symbols and check them
//! in one pass; [`all_symbols`] runs it over a slice, or a table of 128 values 64 bytes at a
//! time with AVX-512 VBMI where the CPU has it.

use wide::u8x32;

use crate::simd::Avx2;

/// Whether `b` is a symbol of the standard alphabet (not `=`).
pub(crate) fn is_symbol(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Whether every byte of `symbols` is a symbol of the standard alphabet (not `=`): 64 at a
/// time with AVX-512 VBMI where the CPU has it.
pub(crate) fn all_symbols(symbols: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(vbmi) = crate::simd::Vbmi::detect() {
        return all_symbols_vbmi(vbmi.token(), symbols);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = Avx2::detect() {
        return simd.vectorize(AllSymbols(symbols));
    }
    all_symbols_in(Check::new(None), symbols)
}

/// [`all_symbols`] with VBMI: each byte's value looked up by its low seven bits in a table of
/// 128 (one byte permute of two registers), bit 7 marking a byte outside the alphabet.
#[cfg(target_arch = "x86_64")]
#[archmage::arcane(import_intrinsics)]
fn all_symbols_vbmi(_token: archmage::X64V4xToken, symbols: &[u8]) -> bool {
    let (low, high) = (
        _mm512_loadu_si512(&VALUES_BY_BYTE[0]),
        _mm512_loadu_si512(&VALUES_BY_BYTE[1]),
    );
    let mut outside = _mm512_setzero_si512();
    let mut blocks = symbols.chunks_exact(64);
    for block in &mut blocks {
        let Ok(block) = <&[u8; 64]>::try_from(block) else {
            return false;
        };
        let x = _mm512_loadu_si512(block);
        let values = _mm512_permutex2var_epi8(low, x, high);
        outside = _mm512_ternarylogic_epi32::<0xFE>(outside, values, x);
    }
    _mm512_movepi8_mask(outside) == 0 && blocks.remainder().iter().all(|&b| is_symbol(b))
}

/// The bytes of a block of 64 that are not symbols of the alphabet (`=` included), one bit
/// each: the lookup of [`all_symbols_vbmi`] for one block, as a mask.
#[cfg(target_arch = "x86_64")]
#[archmage::arcane(import_intrinsics)]
pub(crate) fn outside_vbmi(
    _token: archmage::X64V4xToken,
    block: core::arch::x86_64::__m512i,
) -> u64 {
    let values = _mm512_permutex2var_epi8(
        _mm512_loadu_si512(&VALUES_BY_BYTE[0]),
        block,
        _mm512_loadu_si512(&VALUES_BY_BYTE[1]),
    );
    _mm512_movepi8_mask(_mm512_or_si512(values, block))
}

/// The table of values by byte, bytes 0 to 63 and 64 to 127: a symbol's value (0 to 63), 0x80
/// for any other byte (the byte permute of two registers reads the low seven bits).
#[cfg(target_arch = "x86_64")]
pub(crate) static VALUES_BY_BYTE: [[u8; 64]; 2] = [values_by_byte::<0>(), values_by_byte::<64>()];

/// Half of [`VALUES_BY_BYTE`] (`FROM` 0 or 64).
#[cfg(target_arch = "x86_64")]
const fn values_by_byte<const FROM: usize>() -> [u8; 64] {
    const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut table = [0x80; 64];
    let mut value = 0;
    while value < 64 {
        let byte = SYMBOLS[value] as usize;
        if byte >= FROM && byte < FROM + 64 {
            table[byte - FROM] = value as u8;
        }
        value += 1;
    }
    table
}

/// [`all_symbols`] with `check`, as it is compiled where it is inlined.
#[inline(always)]
fn all_symbols_in(mut check: Check, symbols: &[u8]) -> bool {
    let mut blocks = symbols.chunks_exact(32);
    for block in &mut blocks {
        check.block(block.try_into().unwrap_or([0; 32]));
    }
    check.passed() && blocks.remainder().iter().all(|&b| is_symbol(b))
}

/// [`all_symbols`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
struct AllSymbols<'a>(&'a [u8]);

#[cfg(target_arch = "x86_64")]
impl crate::simd::Vectorized for AllSymbols<'_> {
    type Output = bool;

    #[inline(always)]
    fn run(self, simd: Avx2) -> bool {
        all_symbols_in(Check::new(Some(simd)), self.0)
    }
}

/// Blocks of 32 bytes checked against the alphabet, one after another: whether all were
/// symbols is known at the end ([`Self::passed`]), without a branch for each block.
#[derive(Clone, Copy)]
pub(crate) struct Check {
    /// With AVX2: the least class seen (0 for a byte outside the alphabet).
    #[cfg(target_arch = "x86_64")]
    least: Option<(Avx2, core::arch::x86_64::__m256i)>,
    /// Without: a bit set for each byte outside the alphabet.
    outside: u8x32,
}

impl Check {
    /// A check of no block yet, with AVX2 when given (compiled for it where it is inlined).
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub(crate) fn new(simd: Option<Avx2>) -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            least: simd.map(|simd| (simd, simd.v3().avx._mm256_set1_epi8(-1))),
            outside: u8x32::splat(0),
        }
    }

    /// Checks a block.
    #[inline(always)]
    pub(crate) fn block(&mut self, block: [u8; 32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some((simd, least)) = &mut self.least {
            *least = simd
                .v3()
                .avx2
                ._mm256_min_epu8(*least, classes(*simd, block));
            return;
        }
        let splat = u8x32::splat;
        let x = u8x32::new(block);
        let letter = ((x | splat(0x20)) - splat(b'a')).simd_lt(splat(26));
        let digit = (x - splat(b'0')).simd_lt(splat(10));
        let other = x.simd_eq(splat(b'+')) | x.simd_eq(splat(b'/'));
        self.outside |= !(letter | digit | other);
    }

    /// Whether every byte of every block checked was a symbol.
    #[inline(always)]
    pub(crate) fn passed(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some((simd, least)) = self.least {
            let s = simd.v3();
            let none = s
                .avx2
                ._mm256_cmpeq_epi8(least, s.avx._mm256_setzero_si256());
            return s.avx2._mm256_movemask_epi8(none) == 0;
        }
        self.outside.to_bitmask() == 0
    }
}

/// The classes each byte of `block` may be in, by its high and its low four bits looked up in
/// two tables: non-zero for a symbol, where the two lookups share a bit.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classes(simd: Avx2, block: [u8; 32]) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::__m256i;
    use pulp::bytemuck::cast;
    // `+` `/` (bit 0), digits (bit 1), `A`-`O` `a`-`o` (bit 2), `P`-`Z` `p`-`z` (bit 3).
    const HIGH: [u8; 32] = both_lanes([0, 0, 1, 2, 4, 8, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    const LOW: [u8; 32] = both_lanes([10, 14, 14, 14, 14, 14, 14, 14, 14, 14, 12, 5, 4, 4, 4, 5]);
    /// A 16-byte table in both 128-bit lanes, as the lane-wise shuffle reads it.
    const fn both_lanes(table: [u8; 16]) -> [u8; 32] {
        let mut both = [0; 32];
        let mut i = 0;
        while i < 32 {
            both[i] = table[i % 16];
            i += 1;
        }
        both
    }
    let s = simd.v3();
    let x: __m256i = cast(block);
    let nibble = s.avx._mm256_set1_epi8(0x0F);
    let high = s.avx2._mm256_shuffle_epi8(
        cast(HIGH),
        s.avx2
            ._mm256_and_si256(s.avx2._mm256_srli_epi16::<4>(x), nibble),
    );
    let low = s
        .avx2
        ._mm256_shuffle_epi8(cast(LOW), s.avx2._mm256_and_si256(x, nibble));
    s.avx2._mm256_and_si256(high, low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// Each way the check runs: AVX2 where the CPU has it, and the portable way.
    fn checks() -> Vec<Option<Avx2>> {
        let mut checks = vec![None];
        if let Some(simd) = Avx2::detect() {
            checks.push(Some(simd));
        }
        checks
    }

    #[test]
    fn every_byte_is_classed_as_the_engine_decodes_it() {
        for simd in checks() {
            for b in 0..=255u8 {
                for at in [0, 5, 15, 16, 31] {
                    let mut block = *b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
                    block[at] = b;
                    let mut check = Check::new(simd);
                    check.block(block);
                    // `=` decodes as padding at the end: it is not a symbol here.
                    let decodes = b != b'='
                        && base64::engine::general_purpose::STANDARD
                            .decode_slice(block, &mut [0; 24])
                            .is_ok();
                    assert_eq!(check.passed(), decodes, "{b:#04x} at {at}, {simd:?}");
                    // VBMI where the CPU has it (in two blocks, the byte in the second).
                    let twice: Vec<u8> = [block, block].concat();
                    assert_eq!(all_symbols(&twice), decodes, "{b:#04x} at {at}");
                    assert_eq!(is_symbol(b), decodes, "{b:#04x}");
                    #[cfg(target_arch = "x86_64")]
                    if let Some(vbmi) = crate::simd::Vbmi::detect() {
                        let bytes: [u8; 64] = twice.try_into().unwrap();
                        let outside = outside_vbmi(vbmi.token(), pulp::bytemuck::cast(bytes));
                        let expected = if decodes { 0 } else { 1 << at | 1 << (at + 32) };
                        assert_eq!(outside, expected, "{b:#04x} at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn one_bad_byte_in_any_block_fails_the_whole_check() {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = crate::test_rng::Rng(0x0061_6c70_6861);
        for case in 0..2000 {
            let len = rng.below(300);
            let mut symbols: Vec<u8> = (0..len).map(|_| SYMBOLS[rng.below(64)]).collect();
            let bad = len > 0 && case % 2 == 0;
            if bad {
                let bytes: Vec<u8> = (0..=255u8).filter(|&b| !is_symbol(b)).collect();
                symbols[rng.below(len)] = bytes[rng.below(bytes.len())];
            }
            assert_eq!(all_symbols(&symbols), !bad, "{symbols:?}");
            for simd in checks() {
                assert_eq!(all_symbols_in(Check::new(simd), &symbols), !bad);
            }
        }
    }
}
