//! Attention of one token's query heads over cached keys and values (stored as f16), for the
//! query heads that share one key/value head (grouped-query attention): each cached row is
//! read and converted once for the whole group.

use super::Features;
use half::f16;

/// Consecutive cached positions: rows of `stride` halves, this head's slice at `offset`.
#[derive(Clone, Copy, Debug)]
pub struct KvRun<'a> {
    pub keys: &'a [f16],   // (n, stride)
    pub values: &'a [f16], // (n, stride)
    pub n: usize,
}

/// `out[g] = softmax(q[g] . K^T * scale) V` for each of the `group` query heads in `q`.
///
/// `q` and `out` are (group, head_dim); each run's rows hold this head's `head_dim` values at
/// `offset` within rows of `stride`. `scores` is scratch, resized as needed.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    runs: &[KvRun],
    offset: usize,
    stride: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let group = q.len() / head_dim;
    let n_pos: usize = runs.iter().map(|r| r.n).sum();
    scores.clear();
    scores.resize(group * n_pos, 0.0); // (group, n_pos)
    #[cfg(target_arch = "x86_64")]
    if Features::get().avx2_fma && head_dim.is_multiple_of(8) {
        // SAFETY: the CPU has AVX2, FMA and F16C; shapes checked by the caller's layout.
        unsafe {
            simd::attend(
                q, runs, offset, stride, head_dim, scale, group, n_pos, scores, out,
            )
        };
        return;
    }
    portable(
        q, runs, offset, stride, head_dim, scale, group, n_pos, scores, out,
    );
}

/// Softmax of each of the `group` rows of `scores` (length n_pos each).
fn softmax_rows(scores: &mut [f32], n_pos: usize) {
    for row in scores.chunks_exact_mut(n_pos) {
        super::ops::softmax(row);
    }
}

#[allow(clippy::too_many_arguments)]
fn portable(
    q: &[f32],
    runs: &[KvRun],
    offset: usize,
    stride: usize,
    hd: usize,
    scale: f32,
    group: usize,
    n_pos: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let mut p = 0;
    for run in runs {
        for r in 0..run.n {
            let k = &run.keys[r * stride + offset..][..hd];
            for g in 0..group {
                let qg = &q[g * hd..(g + 1) * hd];
                scores[g * n_pos + p] =
                    qg.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
            }
            p += 1;
        }
    }
    softmax_rows(scores, n_pos);
    out.fill(0.0);
    let mut p = 0;
    for run in runs {
        for r in 0..run.n {
            let v = &run.values[r * stride + offset..][..hd];
            for g in 0..group {
                let w = scores[g * n_pos + p];
                for (o, x) in out[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                    *o += w * x.to_f32();
                }
            }
            p += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over registers read best here
mod simd {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Query heads handled per pass over the cache: a Llama group (8 for 70B, 3 for SmolLM2)
    /// fits, and their accumulators stay in registers for head_dim up to 128.
    const MAX_GROUP: usize = 8;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend(
        q: &[f32],
        runs: &[KvRun],
        offset: usize,
        stride: usize,
        hd: usize,
        scale: f32,
        group: usize,
        n_pos: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        for g0 in (0..group).step_by(MAX_GROUP) {
            let gn = (group - g0).min(MAX_GROUP);
            // ---- scores = q K^T ----
            let mut p = 0;
            for run in runs {
                for r in 0..run.n {
                    let k = run.keys.as_ptr().add(r * stride + offset);
                    let mut acc = [_mm256_setzero_ps(); MAX_GROUP];
                    for d in (0..hd).step_by(8) {
                        let kv = load8(k.add(d));
                        for g in 0..gn {
                            let qv = _mm256_loadu_ps(q.as_ptr().add((g0 + g) * hd + d));
                            acc[g] = _mm256_fmadd_ps(qv, kv, acc[g]);
                        }
                    }
                    for g in 0..gn {
                        *scores.get_unchecked_mut((g0 + g) * n_pos + p) = hsum(acc[g]) * scale;
                    }
                    p += 1;
                }
            }
        }
        softmax_rows(scores, n_pos);
        // ---- out = softmax(scores) V ----
        out.fill(0.0);
        for g0 in (0..group).step_by(MAX_GROUP) {
            let gn = (group - g0).min(MAX_GROUP);
            for d0 in (0..hd).step_by(32) {
                // 32 output dims x up to 8 heads of accumulators.
                let dn = (hd - d0).min(32) / 8;
                let mut acc = [[_mm256_setzero_ps(); 4]; MAX_GROUP];
                let mut p = 0;
                for run in runs {
                    for r in 0..run.n {
                        let v = run.values.as_ptr().add(r * stride + offset + d0);
                        let mut vv = [_mm256_setzero_ps(); 4];
                        for (j, x) in vv.iter_mut().enumerate().take(dn) {
                            *x = load8(v.add(j * 8));
                        }
                        for g in 0..gn {
                            let w = _mm256_set1_ps(*scores.get_unchecked((g0 + g) * n_pos + p));
                            for j in 0..dn {
                                acc[g][j] = _mm256_fmadd_ps(w, vv[j], acc[g][j]);
                            }
                        }
                        p += 1;
                    }
                }
                for g in 0..gn {
                    for j in 0..dn {
                        _mm256_storeu_ps(
                            out.as_mut_ptr().add((g0 + g) * hd + d0 + j * 8),
                            acc[g][j],
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::Rng;

    #[test]
    fn simd_matches_portable_over_several_runs() {
        let mut rng = Rng::new(9);
        for (group, hd, stride, offset) in [
            (3usize, 64usize, 192usize, 64usize),
            (8, 128, 1024, 896),
            (1, 16, 16, 0),
            (9, 32, 64, 32),
        ] {
            let lens = [16usize, 16, 5];
            let data: Vec<(Vec<f16>, Vec<f16>)> = lens
                .iter()
                .map(|&n| {
                    let mk = |rng: &mut Rng| {
                        (0..n * stride)
                            .map(|_| f16::from_f32(rng.f32()))
                            .collect::<Vec<_>>()
                    };
                    (mk(&mut rng), mk(&mut rng))
                })
                .collect();
            let runs: Vec<KvRun> = data
                .iter()
                .zip(lens)
                .map(|((k, v), n)| KvRun {
                    keys: k,
                    values: v,
                    n,
                })
                .collect();
            let q: Vec<f32> = (0..group * hd).map(|_| rng.f32() * 2.0).collect();
            let n_pos = lens.iter().sum();
            let scale = 1.0 / (hd as f32).sqrt();
            let mut want = vec![0f32; group * hd];
            let mut s = vec![0f32; group * n_pos];
            portable(
                &q, &runs, offset, stride, hd, scale, group, n_pos, &mut s, &mut want,
            );
            let mut got = vec![f32::NAN; group * hd];
            attend(
                &q,
                &runs,
                offset,
                stride,
                hd,
                scale,
                &mut Vec::new(),
                &mut got,
            );
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b} (group {group}, hd {hd})");
            }
            // Each output is a convex combination of values in [-1, 1].
            assert!(want.iter().all(|v| v.abs() <= 1.0 + 1e-5));
        }
    }
}
