//! Streaming base64 encoding: the upload arrives in frames split anywhere, the base64 goes out
//! in bounded frames, and the text is the same as encoding the whole upload at once.
//!
//! Between frames the encoder keeps the 0 to 2 bytes that do not make a full group of three;
//! everything else is encoded by the `base64` crate's engine the decoder uses (SIMD where the
//! CPU has it).

use base64::engine::Engine as _;
use bytes::{Buf, Bytes, BytesMut};

use crate::decode::engine;

/// The encoder's state between frames.
#[derive(Clone, Debug, Default)]
pub(crate) struct Base64Encoder {
    /// Bytes that do not make a full group yet.
    carry: [u8; 2],
    /// How many of `carry` are used (0 to 2).
    carry_len: u8,
}

impl Base64Encoder {
    /// Encodes the front of `input` onto `out`, adding at most `max_output` bytes of base64
    /// (at least one group of 4, rounded down to whole groups). What it encodes is taken off
    /// `input`; the last 1 or 2 bytes of an input that does not end on a group are kept in the
    /// encoder, so `input` is empty afterwards unless the output was full.
    pub(crate) fn encode(&mut self, input: &mut Bytes, out: &mut BytesMut, max_output: usize) {
        let mut groups = (max_output / 4).max(1);
        if self.carry_len > 0 {
            let need = 3 - usize::from(self.carry_len);
            if input.len() < need {
                self.take_carry(input);
                return;
            }
            let mut group = [0u8; 3];
            group[..usize::from(self.carry_len)]
                .copy_from_slice(&self.carry[..usize::from(self.carry_len)]);
            group[usize::from(self.carry_len)..].copy_from_slice(&input[..need]);
            input.advance(need);
            self.carry_len = 0;
            append(out, &group);
            groups -= 1;
        }
        let whole = (input.len() / 3).min(groups) * 3;
        if whole > 0 {
            append(out, &input[..whole]);
            input.advance(whole);
        }
        if input.len() < 3 {
            self.take_carry(input);
        }
    }

    /// Writes the last group, padded, when bytes are left over.
    pub(crate) fn finish(&mut self, out: &mut BytesMut) {
        let carry = self.carry;
        let len = usize::from(std::mem::take(&mut self.carry_len));
        if len > 0 {
            append(out, &carry[..len]);
        }
    }

    /// How many bytes the encoder holds back (0 to 2).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        usize::from(self.carry_len)
    }

    fn take_carry(&mut self, input: &mut Bytes) {
        let at = usize::from(self.carry_len);
        self.carry[at..at + input.len()].copy_from_slice(input);
        self.carry_len += input.len() as u8;
        input.clear();
    }
}

/// Appends the padded base64 of `bytes` to `out`.
fn append(out: &mut BytesMut, bytes: &[u8]) {
    let start = out.len();
    let length = bytes.len().div_ceil(3) * 4;
    out.resize(start + length, 0);
    // The slice was just sized for the padded output.
    let _ = engine().encode_slice(bytes, &mut out[start..]);
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::test_rng::Rng;

    /// Encodes `frames` in output frames of at most `max_output` bytes, as a body would.
    fn encode_frames(frames: &[&[u8]], max_output: usize) -> Vec<u8> {
        let mut encoder = Base64Encoder::default();
        let mut text = Vec::new();
        for frame in frames {
            let mut input = Bytes::copy_from_slice(frame);
            loop {
                let mut out = BytesMut::new();
                encoder.encode(&mut input, &mut out, max_output);
                assert!(
                    out.len() <= max_output.max(4),
                    "an output frame over its bound"
                );
                assert_eq!(out.len() % 4, 0);
                text.extend_from_slice(&out);
                if input.is_empty() {
                    break;
                }
                assert!(!out.is_empty(), "no progress");
            }
            assert!(encoder.held() <= 2);
        }
        let mut out = BytesMut::new();
        encoder.finish(&mut out);
        text.extend_from_slice(&out);
        text
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn every_split_of_small_inputs_encodes_as_a_whole() {
        for n in 0..300 {
            let bytes = sample(n);
            let expected = STANDARD.encode(&bytes);
            for at in 0..=n {
                for max_output in [4, 1024] {
                    let got = encode_frames(&[&bytes[..at], &bytes[at..]], max_output);
                    assert_eq!(got, expected.as_bytes(), "n={n} at={at} max={max_output}");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_and_three_way_splits() {
        let bytes = sample(50);
        let expected = STANDARD.encode(&bytes);
        let frames: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(encode_frames(&frames, 4), expected.as_bytes());
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let got = encode_frames(&[&bytes[..a], &bytes[a..b], &bytes[b..]], 12);
                assert_eq!(got, expected.as_bytes(), "{a} {b}");
            }
        }
    }

    #[test]
    fn random_splits_of_large_inputs_encode_as_a_whole() {
        let mut rng = Rng(0x5eed_b64e);
        for round in 0..40 {
            let n = 1 + rng.below(3 * 1024 * 1024);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let expected = STANDARD.encode(&bytes);
            let mut cuts: Vec<usize> = (0..rng.below(64)).map(|_| rng.below(n + 1)).collect();
            cuts.push(0);
            cuts.push(n);
            cuts.sort_unstable();
            let frames: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let max_output = [4096, 64 * 1024, 1 + rng.below(200_000)][round % 3];
            assert_eq!(
                encode_frames(&frames, max_output),
                expected.as_bytes(),
                "round {round}"
            );
        }
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(encode_frames(&[], 64).is_empty());
        assert!(encode_frames(&[b"", b""], 64).is_empty());
    }
}
