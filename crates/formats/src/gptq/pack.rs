//! Bit packing of GPTQ integer codes into int32 words, as AutoGPTQ, GPTQModel and
//! transformers/optimum write them (spec: ../shared/specs/gptq.md, "Bit packing").
//!
//! Every supported width (2, 3, 4, 8 bits) packs the same way: the values along the packed
//! axis form one little-endian bit stream cut into 32-bit words, value `e` in bits
//! `[b*e, b*e + b)` of the stream. For 2/4/8 bits a value never straddles two words; for 3 bits
//! 32 values fill exactly 3 words and values 10 and 21 straddle. So:
//! - `qweight` `[K*b/32, N]` packs along the input axis K; each output column is its own
//!   stream of words.
//! - `qzeros` `[G, N*b/32]` packs along the output axis N; each group row is one stream.
//!
//! Codes are `u8` (one per element, `0..2^b`), words are `i32` (the safetensors dtype).

use std::fmt;

/// Bit widths GPTQ checkpoints use and this program reads and writes.
pub const SUPPORTED_BITS: [u32; 4] = [2, 3, 4, 8];

/// A packing request that cannot be honoured; the message says which argument is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackError(pub String);

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackError {}

/// Fails unless `bits` is one of [`SUPPORTED_BITS`].
pub fn check_bits(bits: u32) -> Result<(), PackError> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(PackError(format!(
            "bits = {bits} is not supported (GPTQ packing supports {SUPPORTED_BITS:?})"
        )))
    }
}

/// Words that hold `len` values of `bits` bits: `len * bits / 32`, rounded up.
pub fn packed_len(len: usize, bits: u32) -> usize {
    (len * bits as usize).div_ceil(32)
}

/// Reads value `e` (of `bits` bits) from a stream of words given by `word(i)`.
#[inline]
fn get(word: impl Fn(usize) -> u32, e: usize, bits: u32) -> u8 {
    let bit = e * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    let mut v = word(w) >> off;
    if off + bits > 32 {
        v |= word(w + 1) << (32 - off);
    }
    (v & ((1u32 << bits) - 1)) as u8
}

/// ORs value `v` (already checked to fit) into position `e` of a word stream.
#[inline]
fn put(words: &mut [u32], stride: usize, base: usize, e: usize, bits: u32, v: u8) {
    let bit = e * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    let v = v as u32;
    words[base + w * stride] |= v << off;
    if off + bits > 32 {
        words[base + (w + 1) * stride] |= v >> (32 - off);
    }
}

fn check_codes(
    codes: &[u8],
    rows: usize,
    cols: usize,
    bits: u32,
    what: &str,
) -> Result<(), PackError> {
    check_bits(bits)?;
    if Some(codes.len()) != rows.checked_mul(cols) {
        return Err(PackError(format!(
            "{what}: {} codes given for a {rows} x {cols} matrix",
            codes.len()
        )));
    }
    let max = (1u32 << bits) - 1;
    if let Some(i) = codes.iter().position(|&c| c as u32 > max) {
        return Err(PackError(format!(
            "{what}: code {} at [{}, {}] does not fit in {bits} bits",
            codes[i],
            i / cols.max(1),
            i % cols.max(1)
        )));
    }
    Ok(())
}

fn check_words(words: &[i32], rows: usize, cols: usize, what: &str) -> Result<(), PackError> {
    if Some(words.len()) != rows.checked_mul(cols) {
        return Err(PackError(format!(
            "{what}: {} words given, expected {rows} x {cols}",
            words.len()
        )));
    }
    Ok(())
}

/// Packs a `qweight`: `codes` is `[k, n]` row-major (input row `i`, output column `j` at
/// `codes[i * n + j]`, i.e. the transpose of the nn.Linear weight); returns
/// `[packed_len(k, bits), n]` row-major words.
pub fn pack_qweight(codes: &[u8], k: usize, n: usize, bits: u32) -> Result<Vec<i32>, PackError> {
    check_codes(codes, k, n, bits, "qweight")?;
    let mut words = vec![0u32; packed_len(k, bits) * n];
    for i in 0..k {
        for j in 0..n {
            put(&mut words, n, j, i, bits, codes[i * n + j]);
        }
    }
    Ok(words.into_iter().map(|w| w as i32).collect())
}

/// The inverse of [`pack_qweight`]: `[packed_len(k, bits), n]` words to `[k, n]` codes.
pub fn unpack_qweight(words: &[i32], k: usize, n: usize, bits: u32) -> Result<Vec<u8>, PackError> {
    check_bits(bits)?;
    check_words(words, packed_len(k, bits), n, "qweight")?;
    let mut codes = vec![0u8; k * n];
    for j in 0..n {
        let word = |w: usize| words[w * n + j] as u32;
        for i in 0..k {
            codes[i * n + j] = get(word, i, bits);
        }
    }
    Ok(codes)
}

/// Packs `qzeros`: `stored` is `[g, n]` row-major stored zero codes (for v1 checkpoints
/// that is the zero point minus one: see [`super::ZeroFormat`]); returns
/// `[g, packed_len(n, bits)]` words.
pub fn pack_qzeros(stored: &[u8], g: usize, n: usize, bits: u32) -> Result<Vec<i32>, PackError> {
    check_codes(stored, g, n, bits, "qzeros")?;
    let wn = packed_len(n, bits);
    let mut words = vec![0u32; g * wn];
    for r in 0..g {
        for j in 0..n {
            put(&mut words, 1, r * wn, j, bits, stored[r * n + j]);
        }
    }
    Ok(words.into_iter().map(|w| w as i32).collect())
}

/// The inverse of [`pack_qzeros`]: `[g, packed_len(n, bits)]` words to `[g, n]` stored codes.
pub fn unpack_qzeros(words: &[i32], g: usize, n: usize, bits: u32) -> Result<Vec<u8>, PackError> {
    check_bits(bits)?;
    let wn = packed_len(n, bits);
    check_words(words, g, wn, "qzeros")?;
    let mut stored = vec![0u8; g * n];
    for r in 0..g {
        let word = |w: usize| words[r * wn + w] as u32;
        for j in 0..n {
            stored[r * n + j] = get(word, j, bits);
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn four_bit_words_hold_rows_least_significant_first() {
        // Input rows 0..8 of one column, codes 1..=8: word = 0x87654321.
        let codes: Vec<u8> = (1..=8).collect();
        assert_eq!(
            pack_qweight(&codes, 8, 1, 4).unwrap(),
            [0x8765_4321u32 as i32]
        );
        // Symmetric v1 4-bit zeros (stored 7) are the well-known 0x77777777.
        assert_eq!(pack_qzeros(&[7; 8], 1, 8, 4).unwrap(), [0x7777_7777]);
        // 2 and 8 bits.
        assert_eq!(pack_qweight(&[1, 2, 3, 4], 4, 1, 8).unwrap(), [0x0403_0201]);
        let two: Vec<u8> = (0..16).map(|i| (i % 4) as u8).collect();
        assert_eq!(
            pack_qweight(&two, 16, 1, 2).unwrap(),
            [0xE4E4_E4E4u32 as i32]
        );
    }

    #[test]
    fn three_bit_values_straddle_words_10_and_21() {
        let mut codes = vec![0u8; 32];
        codes[10] = 0b111; // bits 30..33: two in word 0, one in word 1
        codes[21] = 0b101; // bits 63..66: one in word 1, two in word 2
        let w = pack_qweight(&codes, 32, 1, 3).unwrap();
        assert_eq!(w, [0xC000_0000u32 as i32, 0x8000_0001u32 as i32, 0b10]);
        assert_eq!(unpack_qweight(&w, 32, 1, 3).unwrap(), codes);
    }

    #[test]
    fn round_trips_every_width() {
        let mut seed = 9;
        for bits in SUPPORTED_BITS {
            for (k, n) in [(32, 1), (64, 3), (96, 5), (256, 7)] {
                let codes: Vec<u8> = (0..k * n)
                    .map(|_| (lcg(&mut seed) % (1 << bits)) as u8)
                    .collect();
                let w = pack_qweight(&codes, k, n, bits).unwrap();
                assert_eq!(w.len(), k * bits as usize / 32 * n);
                assert_eq!(
                    unpack_qweight(&w, k, n, bits).unwrap(),
                    codes,
                    "{bits} bits {k}x{n}"
                );
                let z = pack_qzeros(&codes, n, k, bits).unwrap();
                assert_eq!(
                    unpack_qzeros(&z, n, k, bits).unwrap(),
                    codes,
                    "zeros {bits} bits"
                );
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(check_bits(5).unwrap_err().0.contains("bits = 5"));
        assert!(pack_qweight(&[16], 1, 1, 4)
            .unwrap_err()
            .0
            .contains("does not fit"));
        assert!(pack_qweight(&[1, 2], 3, 1, 4)
            .unwrap_err()
            .0
            .contains("3 x 1"));
        assert!(unpack_qweight(&[0; 3], 32, 1, 4).is_err());
        assert!(unpack_qzeros(&[0; 2], 1, 8, 4).is_err());
    }
}
