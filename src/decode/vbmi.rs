//! Whole groups of base64 decoded 64 symbols at a time with AVX-512 VBMI, on CPUs that have it
//! (found at run time): each symbol's value looked up in a table of 128 bytes (one byte
//! permute of two registers), four values made into three bytes with two multiply-adds, and
//! the 48 bytes gathered with another permute (Wojciech Muła's method). A byte outside the
//! alphabet marks the whole call as failed, for the base64 crate's engine to decode the same
//! input again and report it.

use archmage::prelude::*;

use crate::alphabet::VALUES_BY_BYTE;
use crate::simd::Vbmi;

/// Symbols decoded in one step.
const BLOCK: usize = 64;

/// Bytes a step writes past the 48 it decodes (what follows overwrites them).
const SLACK: usize = BLOCK - BLOCK / 4 * 3;

/// Decodes the whole blocks of 64 symbols at the start of `src` into `dst`, as many as `dst`
/// has room for with the [`SLACK`] the last one writes past its bytes. Returns the symbols
/// taken (a multiple of 64), or None when one of them is not a symbol of the alphabet (`=`
/// included).
pub(super) fn decode_blocks(vbmi: Vbmi, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    decode_blocks_with(vbmi.token(), src, dst)
}

#[arcane(import_intrinsics)]
fn decode_blocks_with(_token: X64V4xToken, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let blocks = (src.len() / BLOCK).min(dst.len().saturating_sub(SLACK) / (BLOCK / 4 * 3));
    // By the low seven bits of each byte: its value, or bit 7 for a byte outside the alphabet.
    let (low, high) = (
        _mm512_loadu_si512(&VALUES_BY_BYTE[0]),
        _mm512_loadu_si512(&VALUES_BY_BYTE[1]),
    );
    let gather = _mm512_loadu_si512(&GATHER);
    let pairs = _mm512_set1_epi32(0x0140_0140);
    let words = _mm512_set1_epi32(0x0001_1000);
    // Bit 7 of any byte that is not a symbol, or whose value is none.
    let mut outside = _mm512_setzero_si512();
    for (b, block) in src[..blocks * BLOCK].chunks_exact(BLOCK).enumerate() {
        let Ok(block) = <&[u8; BLOCK]>::try_from(block) else {
            return None;
        };
        let x = _mm512_loadu_si512(block);
        let values = _mm512_permutex2var_epi8(low, x, high);
        outside = _mm512_ternarylogic_epi32::<0xFE>(outside, values, x);
        let bytes = _mm512_madd_epi16(_mm512_maddubs_epi16(values, pairs), words);
        let o = b * (BLOCK / 4 * 3);
        let Some(Ok(place)) = dst.get_mut(o..o + BLOCK).map(<&mut [u8; BLOCK]>::try_from) else {
            return None;
        };
        _mm512_storeu_si512(place, _mm512_permutexvar_epi8(gather, bytes));
    }
    (_mm512_movepi8_mask(outside) == 0).then_some(blocks * BLOCK)
}

/// Where each of the 48 decoded bytes stands after the multiply-adds: the three low bytes of
/// each 32-bit lane, highest first.
const GATHER: [u8; 64] = {
    let mut gather = [0; 64];
    let mut lane = 0;
    while lane < 16 {
        gather[3 * lane] = 4 * lane as u8 + 2;
        gather[3 * lane + 1] = 4 * lane as u8 + 1;
        gather[3 * lane + 2] = 4 * lane as u8;
        lane += 1;
    }
    gather
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use base64::Engine as _;

    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fn decode(vbmi: Vbmi, src: &[u8]) -> Option<Vec<u8>> {
        let mut dst = vec![0; src.len() / 4 * 3 + SLACK];
        let taken = decode_blocks(vbmi, src, &mut dst)?;
        dst.truncate(taken / 4 * 3);
        Some(dst)
    }

    #[test]
    fn blocks_decode_as_the_base64_crate_decodes_them() {
        let Some(vbmi) = Vbmi::detect() else {
            return;
        };
        let mut rng = Rng(0x7662_6d69);
        for len in [0, 63, 64, 65, 127, 128, 640, 4096 + 17] {
            let src: Vec<u8> = (0..len).map(|_| SYMBOLS[rng.below(64)]).collect();
            let whole = len / 64 * 64;
            let expected = base64::engine::general_purpose::STANDARD
                .decode(&src[..whole])
                .unwrap();
            assert_eq!(decode(vbmi, &src), Some(expected), "{len}");
        }
        // Every symbol at every place of a block.
        for shift in 0..64 {
            let src: Vec<u8> = (0..128).map(|i| SYMBOLS[(i + shift) % 64]).collect();
            let expected = base64::engine::general_purpose::STANDARD
                .decode(&src)
                .unwrap();
            assert_eq!(decode(vbmi, &src), Some(expected));
        }
    }

    #[test]
    fn any_byte_outside_the_alphabet_anywhere_fails_the_call() {
        let Some(vbmi) = Vbmi::detect() else {
            return;
        };
        let mut rng = Rng(0x7662_6d6a);
        for byte in (0..=255u8).filter(|&b| !crate::alphabet::is_symbol(b)) {
            for at in [0, 1, 31, 63, 64, 100, 191] {
                let mut src: Vec<u8> = (0..192).map(|_| SYMBOLS[rng.below(64)]).collect();
                src[at] = byte;
                assert_eq!(decode(vbmi, &src), None, "{byte:#04x} at {at}");
            }
        }
    }

    #[test]
    fn blocks_stop_where_the_room_does() {
        let Some(vbmi) = Vbmi::detect() else {
            return;
        };
        let src = [b'A'; 256];
        for (room, taken) in [
            (0, 0),
            (63, 0),
            (64, 64),
            (48 * 3 + SLACK - 1, 128),
            (1000, 256),
        ] {
            let mut dst = vec![1; room];
            assert_eq!(decode_blocks(vbmi, &src, &mut dst), Some(taken), "{room}");
            assert!(dst[..taken / 4 * 3].iter().all(|&b| b == 0), "{room}");
        }
    }
}
