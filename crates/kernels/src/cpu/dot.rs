//! Dot products of one weight row (raw GGUF block bytes) with one row of 8-bit activations,
//! each in a portable version and an AVX2 version that the matmul picks at run time.
//!
//! Block layouts (ggml): Q4_0 = f16 d, 16 bytes of nibbles, value (q - 8) * d;
//! Q4_1 = f16 d, f16 m, 16 bytes of nibbles, value q * d + m; Q8_0 = f16 d, 32 i8, value q * d.
//! In the nibble formats the low nibbles are elements 0..16 and the high nibbles 16..32.

use super::q8::{BlockQ8, QK};
use half::f16;

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q8_0_BYTES: usize = 34;

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The weight formats with an integer dot product against [`BlockQ8`] activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QuantKind {
    pub fn ggml_type(self) -> formats::GgmlType {
        match self {
            QuantKind::Q4_0 => formats::GgmlType::Q4_0,
            QuantKind::Q4_1 => formats::GgmlType::Q4_1,
            QuantKind::Q8_0 => formats::GgmlType::Q8_0,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_0 => Q4_0_BYTES,
            QuantKind::Q4_1 => Q4_1_BYTES,
            QuantKind::Q8_0 => Q8_0_BYTES,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Portable versions: the same integer arithmetic as the SIMD ones, one element at a time.

pub fn dot_q4_0_portable(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in row.chunks_exact(Q4_0_BYTES).zip(x) {
        let qs = &b[2..18];
        let mut acc = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            acc += (q & 0x0F) as i32 * xb.qs[j] as i32;
            acc += (q >> 4) as i32 * xb.qs[j + QK / 2] as i32;
        }
        sum += f16_at(b, 0) * xb.d * (acc - 8 * xb.isum) as f32;
    }
    sum
}

pub fn dot_q4_1_portable(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in row.chunks_exact(Q4_1_BYTES).zip(x) {
        let qs = &b[4..20];
        let mut acc = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            acc += (q & 0x0F) as i32 * xb.qs[j] as i32;
            acc += (q >> 4) as i32 * xb.qs[j + QK / 2] as i32;
        }
        sum += f16_at(b, 0) * xb.d * acc as f32 + f16_at(b, 2) * xb.d * xb.isum as f32;
    }
    sum
}

pub fn dot_q8_0_portable(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in row.chunks_exact(Q8_0_BYTES).zip(x) {
        let acc: i32 = b[2..34]
            .iter()
            .zip(&xb.qs)
            .map(|(&w, &v)| w as i8 as i32 * v as i32)
            .sum();
        sum += f16_at(b, 0) * xb.d * acc as f32;
    }
    sum
}

pub fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the result does not depend on the SIMD width chosen.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for k in 0..8 {
            acc[k] += a[i * 8 + k] * b[i * 8 + k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

// ---------------------------------------------------------------------------------------------
// SIMD versions: one weight row against N activation rows at once, so each weight block is
// unpacked once per N tokens (N = 1 for decode, 4 for prefill). Generated twice: with AVX2
// (u8 x i8 products through maddubs + madd) and with AVX-512 VNNI (one dpbusd).

/// Generates the N-token kernels for one instruction set; `$dot` turns (unsigned weights,
/// signed activations) into eight i32 lane sums.
#[cfg(target_arch = "x86_64")]
macro_rules! quant_kernels {
    ($features:literal, $dot:path) => {
        use crate::cpu::dot::{Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES};
        use crate::cpu::q8::BlockQ8;
        use std::arch::x86_64::*;

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }

        /// The 16 packed bytes as 32 unsigned nibbles in element order.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
            let raw = _mm_loadu_si128(p as *const __m128i);
            let mask = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            _mm256_set_m128i(hi, lo)
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load_x(b: &BlockQ8) -> __m256i {
            _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i)
        }

        /// An f16 at `p` to f32 with F16C, in registers (no call, no feature test).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn h2f(p: *const u8) -> f32 {
            let bits = u16::from_le_bytes([*p, *p.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }

        /// R weight rows times N activation rows: `out[r][n] = row_r . x_n`. Each weight block
        /// is unpacked once for the N tokens, each activation block loaded once for R rows,
        /// and the R x N accumulators are independent chains the CPU can overlap.
        /// # Safety
        /// The CPU has the enabled features; every row holds `xs[n].len()` Q4_0 blocks.
        #[target_feature(enable = $features)]
        pub unsafe fn dot_q4_0<const R: usize, const N: usize>(
            rows: [&[u8]; R],
            xs: [&[BlockQ8]; N],
        ) -> [[f32; N]; R] {
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut offs = [[0f32; N]; R];
            for i in 0..xs[0].len() {
                for r in 0..R {
                    let b = rows[r].as_ptr().add(i * Q4_0_BYTES);
                    let d = h2f(b);
                    let w = unpack_nibbles(b.add(2));
                    for n in 0..N {
                        let xb = xs[n].get_unchecked(i);
                        let s = _mm256_cvtepi32_ps($dot(w, load_x(xb)));
                        acc[r][n] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), s, acc[r][n]);
                        offs[r][n] += d * xb.d * (8 * xb.isum) as f32;
                    }
                }
            }
            std::array::from_fn(|r| std::array::from_fn(|n| hsum(acc[r][n]) - offs[r][n]))
        }

        /// As [`dot_q4_0`], for Q4_1 rows.
        /// # Safety
        /// The CPU has the enabled features; every row holds `xs[n].len()` Q4_1 blocks.
        #[target_feature(enable = $features)]
        pub unsafe fn dot_q4_1<const R: usize, const N: usize>(
            rows: [&[u8]; R],
            xs: [&[BlockQ8]; N],
        ) -> [[f32; N]; R] {
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut offs = [[0f32; N]; R];
            for i in 0..xs[0].len() {
                for r in 0..R {
                    let b = rows[r].as_ptr().add(i * Q4_1_BYTES);
                    let (d, m) = (h2f(b), h2f(b.add(2)));
                    let w = unpack_nibbles(b.add(4));
                    for n in 0..N {
                        let xb = xs[n].get_unchecked(i);
                        let s = _mm256_cvtepi32_ps($dot(w, load_x(xb)));
                        acc[r][n] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), s, acc[r][n]);
                        offs[r][n] += m * xb.d * xb.isum as f32;
                    }
                }
            }
            std::array::from_fn(|r| std::array::from_fn(|n| hsum(acc[r][n]) + offs[r][n]))
        }

        /// As [`dot_q4_0`], for Q8_0 rows.
        /// # Safety
        /// The CPU has the enabled features; every row holds `xs[n].len()` Q8_0 blocks.
        #[target_feature(enable = $features)]
        pub unsafe fn dot_q8_0<const R: usize, const N: usize>(
            rows: [&[u8]; R],
            xs: [&[BlockQ8]; N],
        ) -> [[f32; N]; R] {
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            for i in 0..xs[0].len() {
                for r in 0..R {
                    let b = rows[r].as_ptr().add(i * Q8_0_BYTES);
                    let d = h2f(b);
                    let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
                    // The integer products want one unsigned operand: move the weight's sign
                    // onto the activation.
                    let w_abs = _mm256_sign_epi8(w, w);
                    for n in 0..N {
                        let xb = xs[n].get_unchecked(i);
                        let s = _mm256_cvtepi32_ps($dot(w_abs, _mm256_sign_epi8(load_x(xb), w)));
                        acc[r][n] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), s, acc[r][n]);
                    }
                }
            }
            std::array::from_fn(|r| std::array::from_fn(|n| hsum(acc[r][n])))
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// u8 x i8 products summed in groups of four into eight i32 lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }

    mod kernels {
        use super::dot_u8_i8;
        quant_kernels!("avx2,fma,f16c", dot_u8_i8);
    }
    pub use kernels::{dot_q4_0, dot_q4_1, dot_q8_0};

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let chunks = n / 8;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = _mm256_setzero_ps();
        for i in 0..chunks {
            acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i * 8)),
                _mm256_loadu_ps(pb.add(i * 8)),
                acc,
            );
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut s = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
        for i in chunks * 8..n {
            s += a[i] * b[i];
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
pub mod f16c {
    use std::arch::x86_64::*;

    /// `R` rows of little-endian f16 weights against one f32 row, converted in registers
    /// (no f32 copy of the row): the decode path of an f16 lm_head, read once per token.
    /// Each row sums in the order of [`super::avx2::dot_f32`] on the converted row, so the
    /// results are the same bit for bit.
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; each row holds `2 * x.len()` bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_rows<const R: usize>(rows: [&[u8]; R], x: &[f32]) -> [f32; R] {
        let n = x.len();
        let chunks = n / 8;
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..chunks {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i * 8));
            for r in 0..R {
                let h = _mm_loadu_si128(rows[r].as_ptr().add(i * 16) as *const __m128i);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), xv, acc[r]);
            }
        }
        std::array::from_fn(|r| {
            let a = acc[r];
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut s = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
            for i in chunks * 8..n {
                let h = half::f16::from_le_bytes([rows[r][2 * i], rows[r][2 * i + 1]]);
                s += h.to_f32() * x[i];
            }
            s
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub mod vnni {
    use std::arch::x86_64::*;

    /// u8 x i8 products summed in groups of four into eight i32 lanes, in one instruction.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }

    mod kernels {
        use super::dot_u8_i8;
        quant_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_u8_i8);
    }
    pub use kernels::{dot_q4_0, dot_q4_1, dot_q8_0};
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::q8::quantize_row;

    /// A tiny deterministic generator: tests need fresh-looking values, not a dependency.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        /// Uniform in [-1, 1).
        pub(crate) fn f32(&mut self) -> f32 {
            (self.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0
        }
    }

    pub(crate) fn random_blocks(kind: QuantKind, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n_blocks {
            let d = f16::from_f32(0.01 + 0.05 * rng.f32().abs()).to_le_bytes();
            out.extend_from_slice(&d);
            if kind == QuantKind::Q4_1 {
                out.extend_from_slice(&f16::from_f32(-0.2 * rng.f32().abs()).to_le_bytes());
            }
            let payload = if kind == QuantKind::Q8_0 { 32 } else { 16 };
            out.extend((0..payload).map(|_| rng.next_u32() as u8));
        }
        out
    }

    /// The plain reference: the formats crate's dequantizer (bit-exact against gguf-py).
    pub(crate) fn dequantize(kind: QuantKind, row: &[u8]) -> Vec<f32> {
        let n = row.len() / kind.block_bytes() * QK;
        formats::ggml::dequantize_to_vec(kind.ggml_type(), row, n).expect("whole blocks")
    }

    fn check(kind: QuantKind, portable: fn(&[u8], &[BlockQ8]) -> f32) {
        let mut rng = Rng::new(kind as u64 + 7);
        for n_blocks in [1usize, 2, 7, 18, 48] {
            let row = random_blocks(kind, n_blocks, &mut rng);
            let x: Vec<f32> = (0..n_blocks * QK).map(|_| rng.f32()).collect();
            let mut xq = vec![BlockQ8::default(); n_blocks];
            quantize_row(&x, &mut xq);
            let w = dequantize(kind, &row);
            let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let abs_sum: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            let got = portable(&row, &xq);
            // Activation rounding moves each product by at most |w| * d_x / 2 (~0.4% of |x|).
            let bound = 0.01 * abs_sum + 1e-4;
            assert!(
                (got - exact).abs() <= bound,
                "{kind:?} portable {got} vs {exact}"
            );
            #[cfg(target_arch = "x86_64")]
            for v in simd_results(kind, &row, &xq) {
                // Same integer sums; only the order of float additions differs.
                assert!(
                    (v - got).abs() <= 1e-4 * abs_sum + 1e-5,
                    "{kind:?} simd {v} vs portable {got}"
                );
            }
        }
    }

    /// Every SIMD path this CPU has, with one token and with four at once.
    #[cfg(target_arch = "x86_64")]
    fn simd_results(kind: QuantKind, row: &[u8], xq: &[BlockQ8]) -> Vec<f32> {
        let f = crate::cpu::Features::get();
        let mut out = Vec::new();
        macro_rules! all_n {
            ($m:ident) => {
                // SAFETY: called only when the CPU has the module's features.
                unsafe {
                    match kind {
                        QuantKind::Q4_0 => {
                            out.extend($m::dot_q4_0([row], [xq]).concat());
                            out.extend($m::dot_q4_0([row], [xq; 4]).concat());
                            out.extend($m::dot_q4_0([row; 4], [xq]).concat());
                            out.extend($m::dot_q4_0([row; 4], [xq; 4]).concat());
                        }
                        QuantKind::Q4_1 => {
                            out.extend($m::dot_q4_1([row], [xq]).concat());
                            out.extend($m::dot_q4_1([row], [xq; 4]).concat());
                            out.extend($m::dot_q4_1([row; 4], [xq]).concat());
                            out.extend($m::dot_q4_1([row; 4], [xq; 4]).concat());
                        }
                        QuantKind::Q8_0 => {
                            out.extend($m::dot_q8_0([row], [xq]).concat());
                            out.extend($m::dot_q8_0([row], [xq; 4]).concat());
                            out.extend($m::dot_q8_0([row; 4], [xq]).concat());
                            out.extend($m::dot_q8_0([row; 4], [xq; 4]).concat());
                        }
                    }
                }
            };
        }
        if f.avx2_fma {
            all_n!(avx2);
        }
        if f.avx512_vnni {
            all_n!(vnni);
        }
        out
    }

    #[test]
    fn q4_0_matches_reference() {
        check(QuantKind::Q4_0, dot_q4_0_portable);
    }

    #[test]
    fn q4_1_matches_reference() {
        check(QuantKind::Q4_1, dot_q4_1_portable);
    }

    #[test]
    fn q8_0_matches_reference() {
        check(QuantKind::Q8_0, dot_q8_0_portable);
    }

    #[test]
    fn f32_dot_matches_naive_sum() {
        let mut rng = Rng::new(3);
        for n in [1usize, 8, 13, 576, 1000] {
            let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot_f32_portable(&a, &b) as f64 - naive).abs() < 1e-4);
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::Features::get().avx2_fma {
                assert!((unsafe { avx2::dot_f32(&a, &b) } as f64 - naive).abs() < 1e-4);
            }
        }
    }
}
