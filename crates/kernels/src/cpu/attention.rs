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

/// `out[g] = softmax(q[g] . K^T * scale) V` for each query head in `q`, over `kv_heads`
/// consecutive key/value heads.
///
/// `q` and `out` are (kv_heads * group, head_dim): query heads `h * group..(h + 1) * group`
/// read key/value head `h`, whose `head_dim` values sit at `offset + h * head_dim` within each
/// run's rows of `stride` halves. `scores` is scratch, resized as needed.
///
/// Several key/value heads in one call let the AVX-512 kernel walk the cache once, row after
/// row, instead of once per head picking a slice of every row: in a batched decode step the
/// caches come from memory, and the hardware prefetchers follow the one sequential walk.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    runs: &[KvRun],
    offset: usize,
    stride: usize,
    head_dim: usize,
    kv_heads: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let group = q.len() / head_dim / kv_heads.max(1);
    let n_pos: usize = runs.iter().map(|r| r.n).sum();
    #[cfg(target_arch = "x86_64")]
    if Features::get().avx512_vnni && head_dim.is_multiple_of(64) {
        // SAFETY: the CPU has AVX-512 (F, BW, VL), FMA and F16C; shapes checked by the
        // caller's layout.
        unsafe {
            avx512::attend(
                q, runs, offset, stride, head_dim, kv_heads, scale, group, n_pos, scores, out,
            )
        };
        return;
    }
    let len = group * head_dim;
    for h in 0..kv_heads {
        let (q, out, offset) = (
            &q[h * len..][..len],
            &mut out[h * len..][..len],
            offset + h * head_dim,
        );
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
            continue;
        }
        portable(
            q, runs, offset, stride, head_dim, scale, group, n_pos, scores, out,
        );
    }
}

/// Scratch buffers of [`attend_causal`], kept by the caller between calls.
#[derive(Default)]
pub struct CausalScratch {
    /// Keys in f32, transposed: (head_dim, positions rounded up to 16).
    kt: Vec<f32>,
    /// Values in f32: (positions, head_dim).
    v: Vec<f32>,
    /// (t * group, positions rounded up to 16).
    scores: Vec<f32>,
}

/// Causal attention of `t` consecutive positions `first..first + t` of one sequence (a prefill
/// tile), for the `group` query heads that share one key/value head: token i's queries are
/// `q[i * q_stride..][..group * head_dim]`, it sees cached positions `0..=first + i`, and its
/// outputs go to `out[i * group * head_dim..][..group * head_dim]`. `runs` covers at least
/// `first + t` positions. The cache is read and converted once for all `t * group` query rows
/// instead of once per token, and scores come out of a small matrix product (keys transposed),
/// so no horizontal sums.
#[allow(clippy::too_many_arguments)]
pub fn attend_causal(
    q: &[f32],
    q_stride: usize,
    t: usize,
    runs: &[KvRun],
    offset: usize,
    stride: usize,
    head_dim: usize,
    scale: f32,
    first: usize,
    scratch: &mut CausalScratch,
    out: &mut [f32],
) {
    let group_len = out.len() / t.max(1);
    let group = group_len / head_dim;
    assert!(
        t > 0 && group > 0 && q.len() >= (t - 1) * q_stride + group_len,
        "attend_causal: query rows out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if Features::get().avx512_vnni && head_dim.is_multiple_of(16) {
        // SAFETY: the CPU has AVX-512 (F, BW, VL), FMA and F16C; bounds asserted above and
        // the runs' lengths are checked while converting.
        unsafe {
            avx512::attend_causal(
                q, q_stride, t, runs, offset, stride, head_dim, scale, first, group, scratch, out,
            )
        };
        return;
    }
    for i in 0..t {
        let runs = prefix(runs, first + i + 1);
        attend(
            &q[i * q_stride..][..group_len],
            &runs,
            offset,
            stride,
            head_dim,
            1,
            scale,
            &mut scratch.scores,
            &mut out[i * group_len..][..group_len],
        );
    }
}

/// The first `n` positions of `runs`.
fn prefix<'a>(runs: &[KvRun<'a>], n: usize) -> Vec<KvRun<'a>> {
    let mut left = n;
    let mut out = Vec::new();
    for r in runs {
        if left == 0 {
            break;
        }
        let take = r.n.min(left);
        out.push(KvRun { n: take, ..*r });
        left -= take;
    }
    assert_eq!(left, 0, "the cache holds fewer than {n} positions");
    out
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

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over registers read best here
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// One token's attention, bit for bit the AVX2 kernel ([`super::simd::attend`]) at about
    /// a third of its instructions (it is most of a batched decode step at a few hundred
    /// positions). Scores: one vector holds two positions' 8 lane sums (dims l, l + 8, ...),
    /// so a 256-bit load per position feeds 16 lanes and the group's heads share it; the
    /// 8-lane sums are then reduced 16 positions at a time with shuffles, in the AVX2
    /// kernel's order ((0+4) + (2+6)) + ((1+5) + (3+7)), instead of one horizontal sum per
    /// position and head. Values: 16 dims per vector, the weight broadcast from memory.
    /// The `kv_heads` heads are interleaved position by position (scores) and run by run
    /// (values), each head's sums in the one-head order. `hd` is a multiple of 64.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn attend(
        q: &[f32],
        runs: &[KvRun],
        offset: usize,
        stride: usize,
        hd: usize,
        kv_heads: usize,
        scale: f32,
        group: usize,
        n_pos: usize,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let np = n_pos.next_multiple_of(16);
        let steps = hd / 8;
        let rows = kv_heads * group;
        // scratch: scores (rows, n_pos) | 8-lane sums (rows, np, 8) | q pairs (rows, steps, 16)
        let (s_len, p_len) = (rows * n_pos, rows * np * 8);
        scratch.resize(s_len + p_len + rows * steps * 16, 0.0);
        let (scores, rest) = scratch.split_at_mut(s_len);
        let (partial, qdup) = rest.split_at_mut(p_len);
        for g in 0..rows {
            for j in 0..steps {
                let v = _mm256_loadu_ps(q.as_ptr().add(g * hd + 8 * j));
                let at = qdup.as_mut_ptr().add((g * steps + j) * 16);
                _mm256_storeu_ps(at, v);
                _mm256_storeu_ps(at.add(8), v);
            }
        }
        // ---- 8-lane sums, two positions per vector, two vectors per pass ----
        // (two pairs give each head two independent FMA chains: one alone is latency-bound)
        let mut keys = [std::ptr::null::<f16>(); 4];
        let mut held = 0;
        let mut quad = 0;
        let mut lane_sums = |keys: &[*const f16; 4], quad: usize| {
            for h in 0..kv_heads {
                let keys = keys.map(|k| k.add(h * hd));
                for g0 in (0..group).step_by(8) {
                    let args = (
                        &keys,
                        &*qdup,
                        h * group + g0,
                        steps,
                        &mut *partial,
                        np,
                        quad,
                    );
                    match group - g0 {
                        1 => quad_sums::<1>(args),
                        2 => quad_sums::<2>(args),
                        3 => quad_sums::<3>(args),
                        4 => quad_sums::<4>(args),
                        5 => quad_sums::<5>(args),
                        6 => quad_sums::<6>(args),
                        7 => quad_sums::<7>(args),
                        _ => quad_sums::<8>(args),
                    }
                }
            }
        };
        // Decode steps read every cache from memory: while a run's keys are scored, the next
        // run's keys and this run's values are asked for in L2 (a run is one cache block,
        // scattered in memory, which the hardware prefetchers do not see coming).
        let prefetch_l2 = |p: *const f16, halves: usize| {
            for line in (0..halves * 2).step_by(64) {
                _mm_prefetch((p as *const i8).add(line), _MM_HINT_T1);
            }
        };
        for (ri, run) in runs.iter().enumerate() {
            if let Some(next) = runs.get(ri + 1) {
                prefetch_l2(next.keys.as_ptr().add(offset), next.n * stride - offset);
            }
            prefetch_l2(run.values.as_ptr().add(offset), run.n * stride - offset);
            for r in 0..run.n {
                keys[held] = run.keys.as_ptr().add(r * stride + offset);
                held += 1;
                if held == 4 {
                    lane_sums(&keys, quad);
                    quad += 1;
                    held = 0;
                }
            }
        }
        if held > 0 {
            // The missing positions repeat the last one; their sums are never read.
            for i in held..4 {
                keys[i] = keys[held - 1];
            }
            lane_sums(&keys, quad);
        }
        // ---- reduce 16 positions at a time ----
        // After the shuffles lane 4k + m holds position 4m + k.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let vscale = _mm512_set1_ps(scale);
        for g in 0..rows {
            for p0 in (0..n_pos).step_by(16) {
                let v: [__m512; 8] = std::array::from_fn(|i| {
                    _mm512_loadu_ps(partial.as_ptr().add((g * np + p0) * 8 + 16 * i))
                });
                // (l) + (l + 4): quarters of positions 4w..4w + 4.
                let w: [__m512; 4] = std::array::from_fn(|i| {
                    let (a, b) = (v[2 * i], v[2 * i + 1]);
                    _mm512_add_ps(
                        _mm512_shuffle_f32x4(a, b, 0b10_00_10_00),
                        _mm512_shuffle_f32x4(a, b, 0b11_01_11_01),
                    )
                });
                // (0+4) + (2+6) and (1+5) + (3+7).
                let x: [__m512; 2] = std::array::from_fn(|i| {
                    let (a, b) = (w[2 * i], w[2 * i + 1]);
                    _mm512_add_ps(
                        _mm512_shuffle_ps(a, b, 0b01_00_01_00),
                        _mm512_shuffle_ps(a, b, 0b11_10_11_10),
                    )
                });
                let y = _mm512_add_ps(
                    _mm512_shuffle_ps(x[0], x[1], 0b10_00_10_00),
                    _mm512_shuffle_ps(x[0], x[1], 0b11_01_11_01),
                );
                let s = _mm512_mul_ps(_mm512_permutexvar_ps(order, y), vscale);
                let keep = (n_pos - p0).min(16);
                let at = scores.as_mut_ptr().add(g * n_pos + p0);
                _mm512_mask_storeu_ps(at, ((1u32 << keep) - 1) as u16, s);
            }
        }
        softmax_rows(scores, n_pos);
        // ---- out = softmax(scores) V: run by run, up to 4 heads x 64 dims per pass ----
        if runs.is_empty() {
            out.fill(0.0);
        }
        let mut p0 = 0;
        for (i, run) in runs.iter().enumerate() {
            for h in 0..kv_heads {
                for g0 in (0..group).step_by(4) {
                    for d0 in (0..hd).step_by(64) {
                        let args = ValueArgs {
                            scores,
                            run,
                            offset: offset + h * hd + d0,
                            stride,
                            n_pos,
                            p0,
                            g0: h * group + g0,
                            hd,
                            d0,
                            first: i == 0,
                        };
                        match group - g0 {
                            1 => weighted_values::<1>(args, out),
                            2 => weighted_values::<2>(args, out),
                            3 => weighted_values::<3>(args, out),
                            _ => weighted_values::<4>(args, out),
                        }
                    }
                }
            }
            p0 += run.n;
        }
    }

    type QuadArgs<'a> = (
        &'a [*const f16; 4],
        &'a [f32],
        usize,
        usize,
        &'a mut [f32],
        usize,
        usize,
    );

    /// Heads `g0..g0 + G`, positions `4 quad..4 quad + 4` (keys at `keys`): the 8-lane sums of
    /// two positions per vector (lanes 0-7 and 8-15), each lane an FMA chain over dims
    /// l, l + 8, ... as in the AVX2 kernel.
    #[inline(always)]
    unsafe fn quad_sums<const G: usize>(args: QuadArgs) {
        let (keys, qdup, g0, steps, partial, np, quad) = args;
        let mut acc = [[_mm512_setzero_ps(); 2]; G];
        for j in 0..steps {
            let k: [__m512; 2] = std::array::from_fn(|h| {
                let lo = _mm_loadu_si128(keys[2 * h].add(8 * j) as *const __m128i);
                let hi = _mm_loadu_si128(keys[2 * h + 1].add(8 * j) as *const __m128i);
                _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
            });
            for g in 0..G {
                let qv = _mm512_loadu_ps(qdup.as_ptr().add(((g0 + g) * steps + j) * 16));
                for h in 0..2 {
                    acc[g][h] = _mm512_fmadd_ps(qv, k[h], acc[g][h]);
                }
            }
        }
        for g in 0..G {
            for h in 0..2 {
                let at = partial
                    .as_mut_ptr()
                    .add((g0 + g) * np * 8 + quad * 32 + h * 16);
                _mm512_storeu_ps(at, acc[g][h]);
            }
        }
    }

    struct ValueArgs<'a> {
        scores: &'a [f32],
        run: &'a KvRun<'a>,
        offset: usize,
        stride: usize,
        n_pos: usize,
        /// Position of the run's first row.
        p0: usize,
        g0: usize,
        hd: usize,
        d0: usize,
        /// The first run: the sums start at zero rather than from `out`.
        first: bool,
    }

    /// Heads `g0..g0 + G`, dims `d0..d0 + 64`: sum over the run's positions of weight x value
    /// added to `out`, in position order (one FMA chain per output, as the AVX2 kernel;
    /// storing and reloading the sums between runs does not change them).
    #[inline(always)]
    unsafe fn weighted_values<const G: usize>(a: ValueArgs, out: &mut [f32]) {
        let at = |g: usize, k: usize| (a.g0 + g) * a.hd + a.d0 + 16 * k;
        let mut acc = [[_mm512_setzero_ps(); 4]; G];
        if !a.first {
            for g in 0..G {
                for k in 0..4 {
                    acc[g][k] = _mm512_loadu_ps(out.as_ptr().add(at(g, k)));
                }
            }
        }
        for r in 0..a.run.n {
            let v = a.run.values.as_ptr().add(r * a.stride + a.offset);
            let vv: [__m512; 4] = std::array::from_fn(|k| {
                _mm512_cvtph_ps(_mm256_loadu_si256(v.add(16 * k) as *const __m256i))
            });
            for g in 0..G {
                let w = _mm512_set1_ps(*a.scores.get_unchecked((a.g0 + g) * a.n_pos + a.p0 + r));
                for k in 0..4 {
                    acc[g][k] = _mm512_fmadd_ps(w, vv[k], acc[g][k]);
                }
            }
        }
        for g in 0..G {
            for k in 0..4 {
                _mm512_storeu_ps(out.as_mut_ptr().add(at(g, k)), acc[g][k]);
            }
        }
    }

    /// Query rows per pass: 4 rows x 4 vectors of 16 dims = 16 accumulators.
    const ROWS: usize = 4;
    /// Query rows per pass of the scores: 2 rows x 8 lane sums = 16 accumulators.
    const SCORE_ROWS: usize = 2;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn attend_causal(
        q: &[f32],
        q_stride: usize,
        t: usize,
        runs: &[KvRun],
        offset: usize,
        stride: usize,
        hd: usize,
        scale: f32,
        first: usize,
        group: usize,
        scratch: &mut CausalScratch,
        out: &mut [f32],
    ) {
        let n = first + t;
        let np = n.next_multiple_of(16);
        let rows = t * group;
        let CausalScratch { kt, v, scores } = scratch;
        // Keys transposed (padding keys are zero) and values, converted once.
        kt.clear();
        kt.resize(hd * np, 0.0);
        v.clear();
        v.resize(n * hd, 0.0);
        let mut p = 0;
        for run in runs {
            for r in 0..run.n {
                if p == n {
                    break;
                }
                let (k, vs) = (
                    &run.keys[r * stride + offset..][..hd],
                    &run.values[r * stride + offset..][..hd],
                );
                for d in (0..hd).step_by(16) {
                    let kv = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(d) as *const _));
                    let mut tmp = [0f32; 16];
                    _mm512_storeu_ps(tmp.as_mut_ptr(), kv);
                    for (j, x) in tmp.iter().enumerate() {
                        *kt.get_unchecked_mut((d + j) * np + p) = *x;
                    }
                    let vv = _mm512_cvtph_ps(_mm256_loadu_si256(vs.as_ptr().add(d) as *const _));
                    _mm512_storeu_ps(v.as_mut_ptr().add(p * hd + d), vv);
                }
                p += 1;
            }
        }
        assert_eq!(p, n, "the cache holds fewer than {n} positions");
        // Row r is query head r % group of token r / group, which sees len(r) positions.
        let len = |r: usize| first + r / group + 1;
        let q_row = |r: usize| q.as_ptr().add((r / group) * q_stride + (r % group) * hd);
        scores.clear();
        scores.resize(rows * np, 0.0);
        let vscale = _mm512_set1_ps(scale);
        // ---- scores = Q K^T, 2 rows x 16 positions per block ----
        // Bit for bit what the one-token kernel computes, so that a token's result does not
        // depend on how a prompt was cut into tiles: there, lane l of an 8-wide accumulator
        // sums dimensions l, l + 8, ... in order, then the lanes are added as
        // ((0+4) + (2+6)) + ((1+5) + (3+7)). Here accumulator l holds that lane's sum for 16
        // positions at once.
        for r0 in (0..rows).step_by(SCORE_ROWS) {
            let rn = (rows - r0).min(SCORE_ROWS);
            let qp: [*const f32; SCORE_ROWS] = std::array::from_fn(|j| q_row(r0 + j.min(rn - 1)));
            for b in 0..len(r0 + rn - 1).div_ceil(16) {
                let mut acc = [[_mm512_setzero_ps(); 8]; SCORE_ROWS];
                for d0 in (0..hd).step_by(8) {
                    for l in 0..8 {
                        let kv = _mm512_loadu_ps(kt.as_ptr().add((d0 + l) * np + b * 16));
                        for j in 0..SCORE_ROWS {
                            let qv = _mm512_set1_ps(*qp[j].add(d0 + l));
                            acc[j][l] = _mm512_fmadd_ps(qv, kv, acc[j][l]);
                        }
                    }
                }
                for j in 0..rn {
                    let a = &acc[j];
                    let even = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
                    let odd = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
                    let at = scores.as_mut_ptr().add((r0 + j) * np + b * 16);
                    _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_add_ps(even, odd), vscale));
                }
            }
        }
        // ---- causal softmax: positions past a row's length weigh 0 ----
        for r in 0..rows {
            let row = &mut scores[r * np..(r + 1) * np];
            let (seen, masked) = row.split_at_mut(len(r));
            super::super::ops::softmax(seen);
            masked.fill(0.0);
        }
        // ---- out = P V, 4 rows x 64 dims per pass ----
        for r0 in (0..rows).step_by(ROWS) {
            let rn = (rows - r0).min(ROWS);
            let sp: [*const f32; ROWS] =
                std::array::from_fn(|j| scores.as_ptr().add((r0 + j.min(rn - 1)) * np));
            let reach = len(r0 + rn - 1);
            for d0 in (0..hd).step_by(64) {
                let dn = (hd - d0).min(64) / 16;
                let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
                for p in 0..reach {
                    let vr = v.as_ptr().add(p * hd + d0);
                    let mut vv = [_mm512_setzero_ps(); 4];
                    for k in 0..dn {
                        vv[k] = _mm512_loadu_ps(vr.add(k * 16));
                    }
                    for j in 0..ROWS {
                        let w = _mm512_set1_ps(*sp[j].add(p));
                        for k in 0..dn {
                            acc[j][k] = _mm512_fmadd_ps(w, vv[k], acc[j][k]);
                        }
                    }
                }
                for j in 0..rn {
                    for k in 0..dn {
                        let at = out.as_mut_ptr().add((r0 + j) * hd + d0 + k * 16);
                        _mm512_storeu_ps(at, acc[j][k]);
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

    /// Random keys and values for runs of `lens` rows of `stride` halves.
    fn random_cache(rng: &mut Rng, lens: &[usize], stride: usize) -> Vec<(Vec<f16>, Vec<f16>)> {
        lens.iter()
            .map(|&n| {
                let mut mk = || (0..n * stride).map(|_| f16::from_f32(rng.f32())).collect();
                (mk(), mk())
            })
            .collect()
    }

    fn runs_of<'a>(data: &'a [(Vec<f16>, Vec<f16>)], lens: &[usize]) -> Vec<KvRun<'a>> {
        data.iter()
            .zip(lens)
            .map(|((k, v), &n)| KvRun {
                keys: k,
                values: v,
                n,
            })
            .collect()
    }

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
                1,
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

    /// The AVX-512 one-token kernel reproduces the AVX2 one bit for bit (the tile kernel and
    /// every decode must agree), over odd lengths, runs of odd sizes and groups past 8.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_one_token_is_the_avx2_kernel_bit_for_bit() {
        let f = Features::get();
        if !(f.avx512_vnni && f.avx2_fma) {
            eprintln!("skipped: no AVX-512 here");
            return;
        }
        let mut rng = Rng::new(33);
        for (group, hd, lens) in [
            (3usize, 64usize, vec![16usize, 16, 5]),
            (1, 64, vec![1]),
            (8, 128, vec![7, 16, 16, 3]),
            (9, 64, vec![33]),
            (5, 128, vec![2, 1, 16, 13]),
            (3, 64, vec![16; 12]),
        ] {
            let (stride, offset) = (hd * 2 + 64, hd);
            let data = random_cache(&mut rng, &lens, stride);
            let runs = runs_of(&data, &lens);
            let q: Vec<f32> = (0..group * hd).map(|_| rng.f32() * 4.0).collect();
            let n_pos: usize = lens.iter().sum();
            let scale = 1.0 / (hd as f32).sqrt();
            let mut want = vec![0f32; group * hd];
            let mut got = vec![f32::NAN; group * hd];
            let mut scratch = vec![f32::NAN; 7];
            // SAFETY: both feature sets checked above.
            unsafe {
                simd::attend(
                    &q,
                    &runs,
                    offset,
                    stride,
                    hd,
                    scale,
                    group,
                    n_pos,
                    &mut vec![0.0; group * n_pos],
                    &mut want,
                );
                avx512::attend(
                    &q,
                    &runs,
                    offset,
                    stride,
                    hd,
                    1,
                    scale,
                    group,
                    n_pos,
                    &mut scratch,
                    &mut got,
                );
            }
            assert_eq!(got, want, "group {group}, hd {hd}, lens {lens:?}");
        }
    }

    /// All key/value heads in one call give each head's one-head result bit for bit (with
    /// whichever kernel this CPU dispatches to), over runs of odd sizes.
    #[test]
    fn several_kv_heads_in_one_call_equal_one_call_per_head() {
        let mut rng = Rng::new(71);
        for (kv_heads, group, hd, lens) in [
            (3usize, 3usize, 64usize, vec![16usize, 16, 5]),
            (2, 1, 64, vec![1]),
            (8, 8, 128, vec![16, 16, 3]),
            (4, 5, 64, vec![7, 2, 16, 13]),
        ] {
            let stride = kv_heads * hd + 32;
            let data = random_cache(&mut rng, &lens, stride);
            let runs = runs_of(&data, &lens);
            let len = group * hd;
            let q: Vec<f32> = (0..kv_heads * len).map(|_| rng.f32() * 4.0).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let mut got = vec![f32::NAN; kv_heads * len];
            attend(
                &q,
                &runs,
                32,
                stride,
                hd,
                kv_heads,
                scale,
                &mut Vec::new(),
                &mut got,
            );
            for h in 0..kv_heads {
                let mut want = vec![f32::NAN; len];
                attend(
                    &q[h * len..][..len],
                    &runs,
                    32 + h * hd,
                    stride,
                    hd,
                    1,
                    scale,
                    &mut Vec::new(),
                    &mut want,
                );
                assert_eq!(
                    got[h * len..][..len],
                    want[..],
                    "head {h} of {kv_heads}, lens {lens:?}"
                );
            }
        }
    }

    /// Speed of the one-token kernels at a serving-sized context (SmolLM2 shapes):
    /// `cargo test --release -p kernels one_token_speed -- --ignored --nocapture`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore]
    fn one_token_speed() {
        // 512 caches of 160 positions, all 3 heads of each (63 MB), laid out as the model's
        // paged cache lays them out: blocks of 16 positions, a block's keys then its values,
        // the blocks of one cache scattered. Read from memory, as in a serving step.
        let (hd, group, heads, n, caches) = (64usize, 3usize, 3usize, 160usize, 512usize);
        let (stride, per_cache) = (heads * hd, n / 16);
        let block = 2 * 16 * stride;
        let mut rng = Rng::new(5);
        let data: Vec<f16> = (0..caches * per_cache * block)
            .map(|_| f16::from_f32(rng.f32()))
            .collect();
        let mut order: Vec<usize> = (0..caches * per_cache).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.next_u32() as usize % (i + 1));
        }
        let all_runs: Vec<Vec<KvRun>> = order
            .chunks_exact(per_cache)
            .map(|blocks| {
                let run = |b: usize| KvRun {
                    keys: &data[b * block..][..block / 2],
                    values: &data[b * block + block / 2..][..block / 2],
                    n: 16,
                };
                blocks.iter().map(|&b| run(b)).collect()
            })
            .collect();
        let q: Vec<f32> = (0..heads * group * hd)
            .map(|i| (i % 13) as f32 / 13.0 - 0.5)
            .collect();
        let (mut scratch, mut out) = (Vec::new(), vec![0f32; heads * group * hd]);
        let iters = 6000;
        for round in 0..4 {
            for (name, hot) in [("L2", 1), ("memory", caches)] {
                let t = std::time::Instant::now();
                for i in 0..iters {
                    let runs = &all_runs[i % hot];
                    attend(
                        &q,
                        runs,
                        0,
                        stride,
                        hd,
                        heads,
                        0.125,
                        &mut scratch,
                        &mut out,
                    );
                }
                let per_call = t.elapsed().as_secs_f64() / iters as f64;
                println!(
                    "round {round}: ctx {n} x {heads} heads from {name} ({}): {:.2} us, {:.1} GB/s",
                    Features::get().describe(),
                    per_call * 1e6,
                    (2 * n * stride * 2) as f64 / per_call / 1e9
                );
            }
        }
    }

    #[test]
    fn causal_tiles_match_one_token_at_a_time() {
        let mut rng = Rng::new(21);
        for (group, hd, n_kv, first, t) in [
            (3usize, 64usize, 3usize, 0usize, 16usize),
            (3, 64, 3, 37, 16),
            (8, 128, 2, 5, 7),
            (1, 32, 1, 100, 3),
            (2, 16, 4, 15, 1),
            (3, 24, 2, 9, 5), // head_dim not a multiple of 16: the per-token path
        ] {
            let stride = n_kv * hd;
            let n = first + t;
            // The cache split in runs of 16 positions, as pages.
            let data: Vec<(Vec<f16>, Vec<f16>, usize)> = (0..n.div_ceil(16))
                .map(|b| {
                    let len = (n - b * 16).min(16);
                    let mut mk = || {
                        (0..len * stride)
                            .map(|_| f16::from_f32(rng.f32()))
                            .collect()
                    };
                    (mk(), mk(), len)
                })
                .collect();
            let runs: Vec<KvRun> = data
                .iter()
                .map(|(k, v, n)| KvRun {
                    keys: k,
                    values: v,
                    n: *n,
                })
                .collect();
            let q_stride = group * hd * n_kv + 5;
            let q: Vec<f32> = (0..t * q_stride).map(|_| rng.f32() * 3.0).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            for kvh in 0..n_kv {
                let q0 = kvh * group * hd;
                let mut got = vec![f32::NAN; t * group * hd];
                let mut scratch = CausalScratch::default();
                attend_causal(
                    &q[q0..],
                    q_stride,
                    t,
                    &runs,
                    kvh * hd,
                    stride,
                    hd,
                    scale,
                    first,
                    &mut scratch,
                    &mut got,
                );
                for i in 0..t {
                    let rows = &q[q0 + i * q_stride..][..group * hd];
                    let seen = prefix(&runs, first + i + 1);
                    let mut want = vec![0f32; group * hd];
                    let mut s = vec![0f32; group * (first + i + 1)];
                    portable(
                        rows,
                        &seen,
                        kvh * hd,
                        stride,
                        hd,
                        scale,
                        group,
                        first + i + 1,
                        &mut s,
                        &mut want,
                    );
                    for (a, b) in got[i * group * hd..][..group * hd].iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 2e-5,
                            "{a} vs {b} (token {i}, group {group}, hd {hd})"
                        );
                    }
                    // Bit for bit the one-token kernel: a token's output must not depend on
                    // the tile it was computed in (greedy serving is deterministic).
                    let mut single = vec![0f32; group * hd];
                    attend(
                        rows,
                        &seen,
                        kvh * hd,
                        stride,
                        hd,
                        1,
                        scale,
                        &mut Vec::new(),
                        &mut single,
                    );
                    assert_eq!(
                        got[i * group * hd..][..group * hd],
                        single[..],
                        "token {i}, group {group}, hd {hd}"
                    );
                }
            }
        }
    }
}
