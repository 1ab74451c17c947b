//! The small per-token operations of a transformer layer: RMSNorm, RoPE, SwiGLU, softmax.

/// Returns the widest build of `op` (see `simd_build!` below) that the CPU can run, if any.
macro_rules! simd_dispatch {
    ($op:ident($($arg:expr),*)) => {
        #[cfg(target_arch = "x86_64")]
        {
            let f = super::Features::get();
            // SAFETY: each build runs only where the CPU has its instruction sets.
            if f.avx512_vnni {
                return unsafe { avx512::$op($($arg),*) };
            }
            if f.avx2_fma {
                return unsafe { avx2::$op($($arg),*) };
            }
        }
    };
}

/// `out = x / rms(x) * weight`, with the mean of squares taken in f64 against cancellation.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    simd_dispatch!(rms_norm(x, weight, eps, out));
    rms_norm_body(x, weight, eps, out)
}

#[inline(always)]
fn rms_norm_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // Squares summed in f64 in 16 interleaved partial sums: one sequential sum is a chain of
    // dependent additions that cannot vectorize (~4 cycles an element, 2% of a batched
    // decode step); the order changes the f64 sum by a few of its ulps, far below f32's.
    let mut part = [0f64; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (p, v) in part.iter_mut().zip(c) {
            *p += (*v as f64) * (*v as f64);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum();
    let ms = (part.iter().sum::<f64>() + tail) / x.len() as f64;
    let scale = (1.0 / (ms + eps as f64).sqrt()) as f32;
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// How a rotary embedding pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face: dimension i rotates with i + d/2.
    Halves,
    /// GGUF files (llama.cpp's converter permuted Q and K rows): 2i rotates with 2i + 1.
    Adjacent,
}

/// The cos/sin table of one position: `inv_freq[i] = theta^(-2i/rot_dims)`.
pub fn rope_inv_freq(theta: f32, rot_dims: usize) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / rot_dims as f64) as f32)
        .collect()
}

/// Rotates each head of `x` (n_heads * head_dim values) for position `pos` in place.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], style: RopeStyle) {
    // The angles are the same for every head: compute them once per call.
    let mut table = [(0f32, 0f32); 128];
    let mut heap = Vec::new();
    let sc: &mut [(f32, f32)] = if inv_freq.len() <= table.len() {
        &mut table[..inv_freq.len()]
    } else {
        heap.resize(inv_freq.len(), (0f32, 0f32));
        &mut heap
    };
    rope_angles(pos, inv_freq, sc);
    rope_rotate(x, head_dim, sc, style);
}

/// `(sin, cos)` of `pos * inv_freq[i]` for each frequency: one position's rotation, the same for
/// every head and layer.
pub fn rope_angles(pos: usize, inv_freq: &[f32], out: &mut [(f32, f32)]) {
    for (t, f) in out.iter_mut().zip(inv_freq) {
        // Angles in f64: positions up to 1e5 times frequencies near 1 lose digits in f32.
        let (sin, cos) = (pos as f64 * *f as f64).sin_cos();
        *t = (sin as f32, cos as f32);
    }
}

/// Rotates each head of `x` by the angles of [`rope_angles`] (one pair per frequency).
pub fn rope_rotate(x: &mut [f32], head_dim: usize, sc: &[(f32, f32)], style: RopeStyle) {
    simd_dispatch!(rope_rotate(x, head_dim, sc, style));
    rope_rotate_body(x, head_dim, sc, style)
}

/// One loop per style, so that each vectorizes (a style chosen per element did not).
#[inline(always)]
fn rope_rotate_body(x: &mut [f32], head_dim: usize, sc: &[(f32, f32)], style: RopeStyle) {
    let half = sc.len();
    let rotate = |x0: &mut f32, x1: &mut f32, &(sin, cos): &(f32, f32)| {
        let (a, b) = (*x0, *x1);
        *x0 = a * cos - b * sin;
        *x1 = a * sin + b * cos;
    };
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Halves => {
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for ((x0, x1), a) in lo.iter_mut().zip(hi).zip(sc) {
                    rotate(x0, x1, a);
                }
            }
            RopeStyle::Adjacent => {
                for (pair, a) in head[..2 * half].chunks_exact_mut(2).zip(sc) {
                    let (x0, x1) = pair.split_at_mut(1);
                    rotate(&mut x0[0], &mut x1[0], a);
                }
            }
        }
    }
}

/// `gate = silu(gate) * up`, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    simd_dispatch!(swiglu(gate, up));
    swiglu_body(gate, up);
}

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// Softmax in place; returns nothing useful for an empty slice.
pub fn softmax(x: &mut [f32]) {
    simd_dispatch!(softmax(x));
    softmax_body(x);
}

#[inline(always)]
fn softmax_body(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    // Sixteen partial sums: a reduction the compiler may vectorize (one AVX-512 vector)
    // without reordering doubts.
    let mut part = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (p, v) in part.iter_mut().zip(c) {
            *p += v;
        }
    }
    let sum = part.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `ln(sum(e^x))`, the normalizer of a log-softmax (a token's log-probability is its logit
/// minus this), in one vectorized pass over the row after the max; -inf for an empty row.
pub fn log_sum_exp(x: &[f32]) -> f32 {
    simd_dispatch!(log_sum_exp(x));
    log_sum_exp_body(x)
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    if !max.is_finite() {
        return max;
    }
    let mut part = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (p, v) in part.iter_mut().zip(c) {
            *p += exp(v - max);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| exp(v - max)).sum();
    max + (part.iter().sum::<f32>() + tail).ln()
}

/// The bodies above compiled for wider vectors, so that their loops (with [`exp`] inlined)
/// become 8-wide (AVX2) or 16-wide (AVX-512). Rust keeps the order of float operations, so
/// every build gives the same bits.
macro_rules! simd_build {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
                super::swiglu_body(gate, up)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn softmax(x: &mut [f32]) {
                super::softmax_body(x)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
                super::rms_norm_body(x, weight, eps, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn log_sum_exp(x: &[f32]) -> f32 {
                super::log_sum_exp_body(x)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn rope_rotate(
                x: &mut [f32],
                head_dim: usize,
                sc: &[(f32, f32)],
                style: super::RopeStyle,
            ) {
                super::rope_rotate_body(x, head_dim, sc, style)
            }
        }
    };
}

simd_build!(avx2, "avx2,fma");
simd_build!(avx512, "avx512f,avx512bw,avx512vl,avx2,fma");

/// `e^x` without a libm call, so that loops over slices vectorize (libm's `expf` was 7% of a
/// prefill): `x = n ln 2 + y` with an integer `n`, built directly in the exponent bits, and
/// `|y| <= ln 2 / 2`, whose `e^y` is a degree-6 Taylor polynomial; `ln 2` is split in two
/// constants (Cody-Waite) so that `y` is exact to ~1 ulp (relative error of the result below
/// 4e-7). Below -87 the result is 0 (as `f32::exp` underflows); above 88 it saturates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: few mantissa bits, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let r = xc * std::f32::consts::LOG2_E + ROUND;
    let n = r - ROUND;
    let y = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0))))));
    let int = r.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let v = f32::from_bits(((int + 127) as u32) << 23) * p;
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_is_weight() {
        let mut out = [0f32; 4];
        rms_norm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
    }

    /// The dispatched kernel against one sequential f64 sum (the order differs; the f32
    /// results agree to an ulp or two). `simd_builds_equal_the_portable_bodies` checks the
    /// builds against the body bit for bit.
    #[test]
    fn rms_norm_is_within_two_ulps_of_the_f64_formula() {
        for len in [1usize, 15, 16, 17, 576, 1000] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let w: Vec<f32> = (0..len).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let mut fast = vec![0f32; len];
            rms_norm(&x, &w, 1e-5, &mut fast);
            let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / len as f64;
            let scale = (1.0 / (ms + 1e-5f64).sqrt()) as f32;
            for ((o, v), w) in fast.iter().zip(&x).zip(&w) {
                let want = v * scale * w;
                assert!(
                    (o - want).abs() <= want.abs() * 2.0 * f32::EPSILON,
                    "len {len}: {o} vs {want}"
                );
            }
        }
    }

    /// Every build of the small ops gives the portable body's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_builds_equal_the_portable_bodies() {
        let f = super::super::Features::get();
        for len in [1usize, 7, 16, 17, 100, 576, 1537] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17)
                .collect();
            let w: Vec<f32> = (0..len).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let want_norm = {
                let mut o = vec![0f32; len];
                rms_norm_body(&x, &w, 1e-5, &mut o);
                o
            };
            let want_glu = {
                let mut g = x.clone();
                swiglu_body(&mut g, &w);
                g
            };
            let want_soft = {
                let mut v = x.clone();
                softmax_body(&mut v);
                v
            };
            let want_lse = log_sum_exp_body(&x);
            let angles: Vec<(f32, f32)> = (0..len.min(64) / 2)
                .map(|i| ((i as f32 * 0.3).sin(), (i as f32 * 0.3).cos()))
                .collect();
            let head_dim = 2 * angles.len().max(1);
            let rope_in = &x[..len / head_dim * head_dim];
            let want_rope = [RopeStyle::Halves, RopeStyle::Adjacent].map(|style| {
                let mut r = rope_in.to_vec();
                rope_rotate_body(&mut r, head_dim, &angles, style);
                r
            });
            type Rope = unsafe fn(&mut [f32], usize, &[(f32, f32)], RopeStyle);
            type Build = (
                unsafe fn(&[f32], &[f32], f32, &mut [f32]),
                unsafe fn(&mut [f32], &[f32]),
                unsafe fn(&mut [f32]),
                unsafe fn(&[f32]) -> f32,
            );
            let mut builds: Vec<(&str, Build, Rope)> = Vec::new();
            if f.avx2_fma {
                builds.push((
                    "avx2",
                    (
                        avx2::rms_norm,
                        avx2::swiglu,
                        avx2::softmax,
                        avx2::log_sum_exp,
                    ),
                    avx2::rope_rotate,
                ));
            }
            if f.avx512_vnni {
                builds.push((
                    "avx512",
                    (
                        avx512::rms_norm,
                        avx512::swiglu,
                        avx512::softmax,
                        avx512::log_sum_exp,
                    ),
                    avx512::rope_rotate,
                ));
            }
            for (name, (norm, glu, soft, lse), rope) in builds {
                // SAFETY: each build is called only where the CPU has its instruction sets.
                unsafe {
                    let mut o = vec![0f32; len];
                    norm(&x, &w, 1e-5, &mut o);
                    assert_eq!(o, want_norm, "{name} rms_norm, len {len}");
                    let mut g = x.clone();
                    glu(&mut g, &w);
                    assert_eq!(g, want_glu, "{name} swiglu, len {len}");
                    let mut v = x.clone();
                    soft(&mut v);
                    assert_eq!(v, want_soft, "{name} softmax, len {len}");
                    assert_eq!(
                        lse(&x).to_bits(),
                        want_lse.to_bits(),
                        "{name} lse, len {len}"
                    );
                    for (style, want) in [RopeStyle::Halves, RopeStyle::Adjacent]
                        .iter()
                        .zip(&want_rope)
                    {
                        let mut r = rope_in.to_vec();
                        rope(&mut r, head_dim, &angles, *style);
                        assert_eq!(&r, want, "{name} rope {style:?}, len {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn rope_styles_agree_after_the_gguf_row_permutation() {
        // GGUF row h*d + 2i holds HF row h*d + i, and 2i + 1 holds d/2 + i.
        let d = 8;
        let hf: Vec<f32> = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut gg = vec![0f32; d];
        for i in 0..d / 2 {
            gg[2 * i] = hf[i];
            gg[2 * i + 1] = hf[d / 2 + i];
        }
        let f = rope_inv_freq(10000.0, d);
        let mut a = hf.clone();
        rope(&mut a, d, 17, &f, RopeStyle::Halves);
        rope(&mut gg, d, 17, &f, RopeStyle::Adjacent);
        for i in 0..d / 2 {
            assert!((gg[2 * i] - a[i]).abs() < 1e-6 && (gg[2 * i + 1] - a[d / 2 + i]).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let f = rope_inv_freq(10000.0, 4);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, 0, &f, RopeStyle::Halves);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        rope(&mut x, 4, 12345, &f, RopeStyle::Halves);
        let n: f32 = x.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-3);
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in -100_000..=100_000 {
            let x = i as f32 * 8.7e-4;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(100.0) > 1e38 && exp(100.0).is_finite());
    }

    #[test]
    fn swiglu_and_softmax_match_their_definitions() {
        let g: Vec<f32> = (0..37).map(|i| i as f32 * 0.7 - 12.0).collect();
        let u: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut got = g.clone();
        swiglu(&mut got, &u);
        for ((o, g), u) in got.iter().zip(&g).zip(&u) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{o} vs {want}"
            );
        }
        let mut p = g.clone();
        softmax(&mut p);
        let m = g.iter().fold(f32::MIN, |a, b| a.max(*b));
        let z: f32 = g.iter().map(|v| (v - m).exp()).sum();
        for (p, g) in p.iter().zip(&g) {
            let want = (g - m).exp() / z;
            assert!(
                (p - want).abs() <= 1e-6 * want.max(1e-30) + 1e-12,
                "{p} vs {want}"
            );
        }
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        for n in [1usize, 7, 8, 49152] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.03 - 12.0)
                .collect();
            let m = x.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let want = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&x) as f64;
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{n}: {got} vs {want}"
            );
        }
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] == 0.0 && x[2] > x[1]);
    }
}
