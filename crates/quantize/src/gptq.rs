//! GPTQ on one linear layer (spec: ../shared/specs/gptq.md, "The GPTQ algorithm"), and
//! round-to-nearest with the same grid for comparison.
//!
//! Layout: the weight comes in as nn.Linear stores it, `w[n, k]` (n outputs, k inputs). The
//! column walk works on its transpose split into column chunks of outputs: every output row
//! is quantized independently of the others (the Hessian couples inputs, not outputs), so each
//! rayon task owns `k x chunk` values and walks all blocks without synchronizing, and every
//! rank-1 update is a contiguous axpy over the chunk.

use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use half::f16;
use rayon::prelude::*;

/// Columns walked between two lazy updates of the rest of the matrix (AutoGPTQ's blocksize).
pub const BLOCK: usize = 128;

/// How one matrix is quantized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    pub bits: u32,
    /// Inputs per group; `None` = one group per output row (group_size -1).
    pub group_size: Option<usize>,
    pub sym: bool,
    pub act_order: bool,
    pub static_groups: bool,
    /// Fraction of the mean Hessian diagonal added to the diagonal.
    pub damp: f64,
    /// Each group's range shrunk to the grid with the least squared rounding error
    /// (AutoGPTQ's `mse` option) instead of the full min..max.
    pub mse: bool,
}

/// Codes and grid of one quantized matrix, in checkpoint order (rows = inputs, unpermuted).
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    pub n: usize,
    pub k: usize,
    /// `[k, n]`: code of input `i`, output `j` at `i * n + j` (qweight's unpacked layout).
    pub codes: Vec<u8>,
    /// `[groups, n]`, already rounded to f16 (what the file holds).
    pub scales: Vec<f16>,
    /// `[groups, n]`: the real zero point (v1 files store it minus one).
    pub zeros: Vec<u8>,
    /// `[k]`: the group of each input.
    pub g_idx: Vec<i32>,
    /// `[n, k]` f32: `scale * (code - zero)`, what the next layers' calibration runs on.
    pub dequant: Vec<f32>,
}

impl QuantizedLinear {
    pub fn groups(&self) -> usize {
        self.scales.len() / self.n.max(1)
    }
}

/// What the algorithm reports besides the codes.
#[derive(Clone, Debug, Default)]
pub struct GptqStats {
    /// AutoGPTQ's reported error: sum over columns of `(w - q)^2 / U[c, c]^2 / 2`, which equals
    /// `tr(dW H' dW^T) / 2` for the damped Hessian `H'` (see the tests).
    pub loss: f64,
    /// Damping fraction finally used (more than asked when a Cholesky failed).
    pub damp_used: f64,
    /// Cholesky failures before one succeeded.
    pub retries: u32,
    /// Inputs that never fired (zero Hessian diagonal).
    pub dead: usize,
}

/// Per-output scale and zero of one group, from the values `x` of each output over the group.
#[derive(Clone, Copy, Debug)]
struct Grid {
    scale: f32,
    zero: f32,
}

fn grid(xmin: f32, xmax: f32, p: &QuantParams) -> Grid {
    let maxq = ((1u32 << p.bits) - 1) as f32;
    let (mut lo, mut hi) = (xmin.min(0.0), xmax.max(0.0));
    if p.sym {
        hi = hi.max(-lo);
        lo = -hi;
    }
    if lo == 0.0 && hi == 0.0 {
        lo = -1.0;
        hi = 1.0;
    }
    // The file stores scales in f16: quantize against exactly that value, so the written
    // checkpoint dequantizes to what the error compensation assumed.
    let mut scale = f16::from_f32((hi - lo) / maxq);
    if scale.to_f32() <= 0.0 || !scale.is_finite() {
        scale = if scale.is_finite() {
            f16::from_bits(1)
        } else {
            f16::MAX
        };
    }
    let scale = scale.to_f32();
    let zero = if p.sym {
        ((maxq + 1.0) / 2.0).floor()
    } else {
        (-lo / scale).round_ties_even().clamp(0.0, maxq)
    };
    Grid { scale, zero }
}

#[inline]
fn quant(w: f32, g: Grid, maxq: f32) -> (u8, f32) {
    let q = (round_ties_even(w / g.scale) + g.zero).clamp(0.0, maxq);
    (q as u8, g.scale * (q - g.zero))
}

/// `x.round_ties_even()` wherever it matters here (|x| < 2^22; beyond, `x` itself, which the
/// clamp to the codes maps to the same end) without a libm call: without SSE4.1 in the
/// baseline target that call is per element and keeps the loops scalar. Adding and
/// subtracting 1.5 * 2^23 rounds to an integer in the default (nearest-even) mode.
#[inline]
fn round_ties_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let r = (x + SHIFT) - SHIFT;
    if x.abs() < 4_194_304.0 {
        r
    } else {
        x
    }
}

/// Grids of the `rows` rows starting at `r0` of a `[k, n]` row-major matrix, one per output.
fn fit_rows(wt: &[f32], n: usize, r0: usize, rows: usize, p: &QuantParams, out: &mut [Grid]) {
    fit_rows_weighted(wt, n, r0, rows, p, None, out)
}

/// [`fit_rows`] whose range search weighs row `r` (an input) by `weight[r - r0]`.
fn fit_rows_weighted(
    wt: &[f32],
    n: usize,
    r0: usize,
    rows: usize,
    p: &QuantParams,
    weight: Option<&[f32]>,
    out: &mut [Grid],
) {
    let mut lo = vec![f32::INFINITY; n];
    let mut hi = vec![f32::NEG_INFINITY; n];
    for r in r0..r0 + rows {
        let row = &wt[r * n..(r + 1) * n];
        for j in 0..n {
            lo[j] = lo[j].min(row[j]);
            hi[j] = hi[j].max(row[j]);
        }
    }
    for j in 0..n {
        out[j] = grid(lo[j], hi[j], p);
    }
    if p.mse {
        shrink_to_least_squares(wt, n, r0, rows, p, weight, &lo, &hi, out);
    }
}

/// Per output, the range shrunk by 1.00, 0.99, ... 0.21 whose grid rounds the group's weights
/// with the least squared error (AutoGPTQ's `mse` search, with norm 2), each input's error
/// weighted by `weight` when given: GPTQ passes the Hessian diagonal, so that the grid fits
/// the inputs whose errors cost the most output error (perplexity 18.39 -> 18.25 on the
/// quality table's 4-bit g128 act-order run; NOTES).
#[allow(clippy::too_many_arguments)]
fn shrink_to_least_squares(
    wt: &[f32],
    n: usize,
    r0: usize,
    rows: usize,
    p: &QuantParams,
    weight: Option<&[f32]>,
    lo: &[f32],
    hi: &[f32],
    out: &mut [Grid],
) {
    let maxq = ((1u32 << p.bits) - 1) as f32;
    let mut best = vec![f32::INFINITY; n];
    let mut err = vec![0f32; n];
    let mut cand = out.to_vec();
    for i in 0..80 {
        let f = 1.0 - i as f32 / 100.0;
        for j in 0..n {
            cand[j] = grid(lo[j] * f, hi[j] * f, p);
        }
        err.fill(0.0);
        for r in r0..r0 + rows {
            let row = &wt[r * n..(r + 1) * n];
            let wr = weight.map_or(1.0, |w| w[r - r0]);
            for j in 0..n {
                let d = quant(row[j], cand[j], maxq).1 - row[j];
                err[j] += wr * d * d;
            }
        }
        for j in 0..n {
            if err[j] < best[j] {
                best[j] = err[j];
                out[j] = cand[j];
            }
        }
    }
}

/// `a[k, n]` row-major of `w[n, k]`.
fn transpose(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * k];
    for (j, row) in w.chunks_exact(k).enumerate() {
        for (i, v) in row.iter().enumerate() {
            t[i * n + j] = *v;
        }
    }
    t
}

fn check(w: &[f32], n: usize, k: usize, p: &QuantParams) -> Result<()> {
    formats::gptq::check_bits(p.bits).map_err(anyhow::Error::msg)?;
    if w.len() != n * k || n == 0 || k == 0 {
        bail!("weight has {} values, expected {n} x {k}", w.len());
    }
    if p.group_size == Some(0) {
        bail!("group size must be positive");
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        bail!(
            "weight value {} at [{}, {}] is not finite",
            w[i],
            i / k,
            i % k
        );
    }
    Ok(())
}

/// Groups of `k` inputs: the last one is shorter when the size does not divide `k` (as
/// AutoGPTQ and the loaders count them: `ceil(k / group_size)`).
fn n_groups(k: usize, p: &QuantParams) -> usize {
    p.group_size.map_or(1, |g| k.div_ceil(g))
}

/// Round-to-nearest on the same grid as GPTQ (groups in the original input order).
pub fn rtn(w: &[f32], n: usize, k: usize, p: &QuantParams) -> Result<QuantizedLinear> {
    check(w, n, k, p)?;
    let maxq = ((1u32 << p.bits) - 1) as f32;
    let wt = transpose(w, n, k);
    let gs = p.group_size.unwrap_or(k);
    let groups = n_groups(k, p);
    let mut out = empty(n, k, groups);
    let mut grids = vec![
        Grid {
            scale: 1.0,
            zero: 0.0
        };
        n
    ];
    for g in 0..groups {
        let end = ((g + 1) * gs).min(k);
        fit_rows(&wt, n, g * gs, end - g * gs, p, &mut grids);
        store_grids(&mut out, g, &grids);
        for i in g * gs..end {
            out.g_idx[i] = g as i32;
            for j in 0..n {
                let (q, v) = quant(wt[i * n + j], grids[j], maxq);
                out.codes[i * n + j] = q;
                out.dequant[j * k + i] = v;
            }
        }
    }
    Ok(out)
}

fn empty(n: usize, k: usize, groups: usize) -> QuantizedLinear {
    QuantizedLinear {
        n,
        k,
        codes: vec![0; k * n],
        scales: vec![f16::ZERO; groups * n],
        zeros: vec![0; groups * n],
        g_idx: vec![0; k],
        dequant: vec![0.0; n * k],
    }
}

fn store_grids(out: &mut QuantizedLinear, g: usize, grids: &[Grid]) {
    let n = out.n;
    for (j, gr) in grids.iter().enumerate() {
        out.scales[g * n + j] = f16::from_f32(gr.scale);
        out.zeros[g * n + j] = gr.zero as u8;
    }
}

/// The upper Cholesky factor `U` of `(H + damp*mean(diag)*I)^-1` (f64), retrying with 0.01
/// more damping each time a factorization fails.
fn inverse_factor(h: &Mat<f64>, p: &QuantParams, stats: &mut GptqStats) -> Result<Mat<f64>> {
    let k = h.nrows();
    let mean_diag = (0..k).map(|i| h[(i, i)]).sum::<f64>() / k as f64;
    let mut damp = p.damp;
    loop {
        let mut hd = h.clone();
        for i in 0..k {
            hd[(i, i)] += damp * mean_diag;
        }
        let attempt = hd.llt(Side::Lower).ok().and_then(|llt| {
            use faer::linalg::solvers::DenseSolveCore;
            let inv = llt.inverse();
            inv.llt(Side::Lower)
                .ok()
                .map(|l| l.L().transpose().to_owned())
        });
        if let Some(u) = attempt {
            if (0..k).all(|i| u[(i, i)].is_finite() && u[(i, i)] > 0.0) {
                stats.damp_used = damp;
                return Ok(u);
            }
        }
        stats.retries += 1;
        damp += 0.01;
        if stats.retries > 100 {
            bail!("the Hessian is not positive definite even with damping {damp:.2}");
        }
    }
}

/// The weight that, applied to the quantized model's inputs `x`, reproduces the original
/// weight applied to the full-precision model's inputs `x_fp` (GPTAQ's asymmetric
/// calibration): `w + w (C - H) (H + damp*mean(diag H) I)^-1`, with `C = 2/T sum x_fp^T x`
/// (`c`, row-major) and the Hessian `H = 2/T sum x^T x`. Undamped, that is the least-squares
/// `argmin_V sum |w x_fp - V x|^2`, and GPTQ of it on `H` minimizes `sum |w x_fp - q x|^2` (the
/// cross term vanishes: the target's residual is orthogonal to the inputs). Only the correction
/// is damped, so that where the inputs agree (`C = H`) the target is `w` itself rather than a
/// ridge-shrunk copy. Undoes, layer by layer, the drift that the earlier quantized layers put
/// into the inputs.
pub fn fp_target(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    c: &[f64],
    damp: f64,
) -> Result<Vec<f32>> {
    if h.len() != k * k || c.len() != k * k || w.len() != n * k {
        bail!("fp target: sizes do not match a {n} x {k} weight");
    }
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    if mean_diag.is_nan() || mean_diag <= 0.0 {
        // No input ever fired: nothing to fit (GPTQ zeroes the dead inputs).
        return Ok(w.to_vec());
    }
    let lambda = damp.max(1e-6) * mean_diag;
    let hd = Mat::<f64>::from_fn(k, k, |i, j| {
        h[i * k + j] + if i == j { lambda } else { 0.0 }
    });
    let llt = hd
        .llt(Side::Lower)
        .map_err(|_| anyhow::anyhow!("fp target: the damped Hessian is not positive definite"))?;
    use faer::linalg::solvers::Solve;
    // M^T = Hd^-1 (C - H)^T, so that the target is w + w M.
    let mt = llt.solve(Mat::<f64>::from_fn(k, k, |i, j| {
        c[j * k + i] - h[j * k + i]
    }));
    let m = Mat::<f32>::from_fn(k, k, |i, j| mt[(j, i)] as f32);
    let mut out = w.to_vec();
    matmul(
        MatMut::from_row_major_slice_mut(&mut out, n, k),
        Accum::Add,
        MatRef::from_row_major_slice(w, n, k),
        m.as_ref(),
        1.0f32,
        Par::rayon(0),
    );
    if out.iter().any(|v| !v.is_finite()) {
        bail!("fp target: not finite (the Hessian is too ill-conditioned)");
    }
    Ok(out)
}

/// GPTQ of `w[n, k]` (nn.Linear layout) against the Hessian `h[k, k]` (row-major, symmetric,
/// any positive scale: `2/tokens * sum x x^T` here).
pub fn gptq(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    p: &QuantParams,
) -> Result<(QuantizedLinear, GptqStats)> {
    check(w, n, k, p)?;
    if h.len() != k * k {
        bail!("Hessian has {} values, expected {k} x {k}", h.len());
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        bail!("Hessian value at [{}, {}] is not finite", i / k, i % k);
    }
    let mut stats = GptqStats::default();
    let mut wt = transpose(w, n, k);
    let mut hm = Mat::<f64>::from_fn(k, k, |i, j| h[i * k + j]);
    // Dead inputs: nothing to compensate with; their weights cannot matter on this data.
    for d in 0..k {
        if hm[(d, d)] == 0.0 {
            hm[(d, d)] = 1.0;
            wt[d * n..(d + 1) * n].fill(0.0);
            stats.dead += 1;
        }
    }
    let gs = p.group_size;
    let groups = n_groups(k, p);
    let mut out = empty(n, k, groups);

    // Static groups: grids fixed up front from the original weights, in the original order.
    let static_grids: Option<Vec<Vec<Grid>>> = match gs {
        Some(g) if p.static_groups => Some(
            (0..groups)
                .map(|gi| {
                    let mut gr = vec![
                        Grid {
                            scale: 1.0,
                            zero: 0.0
                        };
                        n
                    ];
                    fit_rows(&wt, n, gi * g, g.min(k - gi * g), p, &mut gr);
                    gr
                })
                .collect(),
        ),
        _ => None,
    };

    // Act-order: inputs by decreasing Hessian diagonal (ties keep the original order).
    let perm: Vec<usize> = if p.act_order {
        let mut idx: Vec<usize> = (0..k).collect();
        idx.sort_by(|&a, &b| hm[(b, b)].total_cmp(&hm[(a, a)]));
        idx
    } else {
        (0..k).collect()
    };
    let hp = Mat::<f64>::from_fn(k, k, |i, j| hm[(perm[i], perm[j])]);
    let wp: Vec<f32> = {
        let mut v = vec![0f32; k * n];
        for (i, &src) in perm.iter().enumerate() {
            v[i * n..(i + 1) * n].copy_from_slice(&wt[src * n..(src + 1) * n]);
        }
        v
    };
    drop(wt);
    // The range search weighs each input's rounding error by its Hessian diagonal.
    let hw: Option<Vec<f32>> = p.mse.then(|| (0..k).map(|i| hp[(i, i)] as f32).collect());
    let u64 = inverse_factor(&hp, p, &mut stats)?;
    let u: Vec<f32> = (0..k * k).map(|x| u64[(x / k, x % k)] as f32).collect();
    drop(u64);

    // Per-row grids when there is one group per row: from all (error-free) weights up front.
    let whole_grids: Option<Vec<Grid>> = gs.is_none().then(|| {
        let mut gr = vec![
            Grid {
                scale: 1.0,
                zero: 0.0
            };
            n
        ];
        fit_rows(&wp, n, 0, k, p, &mut gr);
        gr
    });

    // Chunks of outputs, one rayon task each; width a multiple of 16 for the vector units.
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads).next_multiple_of(16).min(n).max(1);
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    struct ChunkOut {
        codes: Vec<u8>,   // [k, c] permuted order
        vals: Vec<f32>,   // [k, c] permuted order
        grids: Vec<Grid>, // [groups, c] in g_idx order
        loss: f64,
    }
    let results: Vec<ChunkOut> = starts
        .par_iter()
        .map(|&c0| {
            let c = chunk.min(n - c0);
            let mut w: Vec<f32> = (0..k)
                .flat_map(|i| wp[i * n + c0..i * n + c0 + c].iter().copied())
                .collect();
            let mut codes = vec![0u8; k * c];
            let mut vals = vec![0f32; k * c];
            let mut grids = vec![
                Grid {
                    scale: 1.0,
                    zero: 0.0
                };
                groups * c
            ];
            let mut cur = vec![
                Grid {
                    scale: 1.0,
                    zero: 0.0
                };
                c
            ];
            if let Some(wg) = &whole_grids {
                cur.copy_from_slice(&wg[c0..c0 + c]);
                grids.copy_from_slice(&cur);
            }
            let mut err = vec![0f32; BLOCK * c];
            let mut loss = 0f64;
            let maxq = ((1u32 << p.bits) - 1) as f32;
            for i1 in (0..k).step_by(BLOCK) {
                let i2 = (i1 + BLOCK).min(k);
                for i in i1..i2 {
                    if let Some(g) = gs {
                        if let Some(sg) = &static_grids {
                            let gi = perm[i] / g;
                            cur.copy_from_slice(&sg[gi][c0..c0 + c]);
                        } else if i % g == 0 {
                            // From the error-updated weights of the group's columns.
                            let rows = g.min(k - i);
                            fit_rows_weighted(
                                &w,
                                c,
                                i,
                                rows,
                                p,
                                hw.as_ref().map(|h| &h[i..i + rows]),
                                &mut cur,
                            );
                            grids[(i / g) * c..(i / g + 1) * c].copy_from_slice(&cur);
                        }
                    }
                    let d = u[i * k + i];
                    let (row, rest) = w[i * c..i2 * c].split_at_mut(c);
                    let e = &mut err[(i - i1) * c..(i - i1 + 1) * c];
                    let mut l = 0f32;
                    for j in 0..c {
                        let (q, v) = quant(row[j], cur[j], maxq);
                        codes[i * c + j] = q;
                        vals[i * c + j] = v;
                        let ej = (row[j] - v) / d;
                        e[j] = ej;
                        l += ej * ej;
                        row[j] = v;
                    }
                    loss += l as f64 / 2.0;
                    // Rank-1 update of the rest of the block.
                    for (jj, next) in rest.chunks_exact_mut(c).enumerate() {
                        let uij = u[i * k + i + 1 + jj];
                        for (x, ej) in next.iter_mut().zip(e.iter()) {
                            *x -= uij * ej;
                        }
                    }
                }
                // Lazy update of every later column: w[i2.., :] -= U[i1..i2, i2..]^T err.
                if i2 < k {
                    let ublk = MatRef::from_row_major_slice_with_stride(
                        &u[i1 * k + i2..],
                        i2 - i1,
                        k - i2,
                        k,
                    );
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut w[i2 * c..], k - i2, c),
                        Accum::Add,
                        ublk.transpose(),
                        MatRef::from_row_major_slice(&err[..(i2 - i1) * c], i2 - i1, c),
                        -1.0f32,
                        Par::Seq,
                    );
                }
            }
            ChunkOut {
                codes,
                vals,
                grids,
                loss,
            }
        })
        .collect();

    for (&c0, r) in starts.iter().zip(&results) {
        let c = chunk.min(n - c0);
        stats.loss += r.loss;
        for (i, &src) in perm.iter().enumerate() {
            for j in 0..c {
                out.codes[src * n + c0 + j] = r.codes[i * c + j];
                out.dequant[(c0 + j) * k + src] = r.vals[i * c + j];
            }
        }
        match &static_grids {
            Some(sg) => {
                for (gi, gr) in sg.iter().enumerate() {
                    for j in 0..c {
                        out.scales[gi * n + c0 + j] = f16::from_f32(gr[c0 + j].scale);
                        out.zeros[gi * n + c0 + j] = gr[c0 + j].zero as u8;
                    }
                }
            }
            None => {
                for gi in 0..groups {
                    for j in 0..c {
                        let gr = r.grids[gi * c + j];
                        out.scales[gi * n + c0 + j] = f16::from_f32(gr.scale);
                        out.zeros[gi * n + c0 + j] = gr.zero as u8;
                    }
                }
            }
        }
    }
    for (i, &src) in perm.iter().enumerate() {
        out.g_idx[src] = match gs {
            None => 0,
            Some(g) if p.static_groups => (src / g) as i32,
            Some(g) => (i / g) as i32,
        };
    }
    Ok((out, stats))
}

/// `tr(dW H dW^T) / 2` with `dW = w - q` (`[n, k]` each), `h[k, k]` row-major: the
/// second-order output error GPTQ minimizes (with `H = 2/tokens * sum x x^T`, the mean
/// squared output error per token).
pub fn quadratic_error(w: &[f32], q: &[f32], n: usize, k: usize, h: &[f64]) -> f64 {
    let dw: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
    let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    let mut dh = vec![0f32; n * k];
    crate::linalg::linear(&mut dh, &dw, &hf, n, k, k, false);
    dh.iter()
        .zip(&dw)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum::<f64>()
        / 2.0
}

/// Matrices with more multiply-adds than this in [`quadratic_error`] get
/// [`quadratic_error_estimate`]'s row sample instead (every SmolLM2-135M projection is exact;
/// on a 70B model the two exact figures per projection would cost four times its GPTQ walk).
pub const EXACT_ERROR_MACS: usize = 1 << 33;
/// Output rows of that sample.
pub const ERROR_SAMPLE_ROWS: usize = 512;

/// [`quadratic_error`] for the loss table: exact up to [`EXACT_ERROR_MACS`], above it from
/// [`ERROR_SAMPLE_ROWS`] evenly spaced output rows scaled to all `n` (the error is a sum over
/// rows; GPTQ and round-to-nearest see the same rows, so their ratio stays comparable).
pub fn quadratic_error_estimate(w: &[f32], q: &[f32], n: usize, k: usize, h: &[f64]) -> f64 {
    sampled_error(w, q, n, k, h, EXACT_ERROR_MACS, ERROR_SAMPLE_ROWS)
}

fn sampled_error(
    w: &[f32],
    q: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    exact_macs: usize,
    sample: usize,
) -> f64 {
    if n * k * k <= exact_macs || n <= sample {
        return quadratic_error(w, q, n, k, h);
    }
    let stride = n.div_ceil(sample);
    let rows: Vec<usize> = (0..n).step_by(stride).collect();
    let pick = |m: &[f32]| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| m[r * k..(r + 1) * k].iter().copied())
            .collect()
    };
    quadratic_error(&pick(w), &pick(q), rows.len(), k, h) * n as f64 / rows.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_the_standard_library_where_codes_come_from() {
        let mut x = 1u32;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            let v = f32::from_bits(x);
            if v.is_finite() && v.abs() < 4_194_304.0 {
                // Equal as values (-0.0 may come out as 0.0; the zero point is added next).
                assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
            }
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 4_194_303.5, -7.49999] {
            assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
        }
        let g = Grid {
            scale: 1e-30,
            zero: 8.0,
        };
        assert_eq!(quant(1.0, g, 15.0).0, 15);
        assert_eq!(quant(-1.0, g, 15.0).0, 0);
    }

    #[test]
    fn mse_search_picks_the_shrunk_grid_with_the_least_squared_error() {
        // Two outputs over a group of 128 inputs: bell-shaped values (sums of uniforms), the
        // range set by a few tails, where shrinking it rounds the bulk more finely.
        let (n, rows) = (2, 128);
        let mut x = 12345u32;
        let mut uniform = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let wt: Vec<f32> = (0..rows * n)
            .map(|_| (0..4).map(|_| uniform()).sum::<f32>())
            .collect();
        let mut p = QuantParams {
            bits: 4,
            group_size: Some(rows),
            sym: true,
            act_order: false,
            static_groups: false,
            damp: 0.01,
            mse: false,
        };
        let err = |g: Grid, j: usize| -> f32 {
            (0..rows)
                .map(|r| (quant(wt[r * n + j], g, 15.0).1 - wt[r * n + j]).powi(2))
                .sum()
        };
        let zero = Grid {
            scale: 0.0,
            zero: 0.0,
        };
        let mut plain = [zero; 2];
        fit_rows(&wt, n, 0, rows, &p, &mut plain);
        p.mse = true;
        let mut shrunk = [zero; 2];
        fit_rows(&wt, n, 0, rows, &p, &mut shrunk);
        for j in 0..n {
            assert!(shrunk[j].scale < plain[j].scale, "output {j}: not shrunk");
            assert!(err(shrunk[j], j) < 0.9 * err(plain[j], j), "output {j}");
            let (lo, hi) = (0..rows).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), r| {
                (a.min(wt[r * n + j]), b.max(wt[r * n + j]))
            });
            for i in 0..80 {
                let f = 1.0 - i as f32 / 100.0;
                assert!(err(grid(lo * f, hi * f, &p), j) >= err(shrunk[j], j));
            }
        }
        // Weighted (GPTQ passes the Hessian diagonal): the least weighted error wins, which
        // here, with the tails' inputs weighing 100 times more, is a wider grid.
        let weight: Vec<f32> = (0..rows)
            .map(|r| if wt[r * n].abs() > 1.0 { 100.0 } else { 1.0 })
            .collect();
        let werr = |g: Grid| -> f32 {
            (0..rows)
                .map(|r| weight[r] * (quant(wt[r * n], g, 15.0).1 - wt[r * n]).powi(2))
                .sum()
        };
        let mut weighted = [zero; 2];
        fit_rows_weighted(&wt, n, 0, rows, &p, Some(&weight), &mut weighted);
        assert!(weighted[0].scale > shrunk[0].scale);
        let (lo, hi) = (0..rows).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), r| {
            (a.min(wt[r * n]), b.max(wt[r * n]))
        });
        for i in 0..80 {
            let f = 1.0 - i as f32 / 100.0;
            assert!(werr(grid(lo * f, hi * f, &p)) >= werr(weighted[0]));
        }
    }

    #[test]
    fn sampled_error_is_exact_below_the_threshold_and_scales_a_row_sample() {
        let (n, k) = (40, 6);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7) % 11) as f32 * 0.1).collect();
        // Every row off by the same pattern: any row sample, scaled, gives the exact figure.
        let q: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v + [0.01, -0.02, 0.0, 0.03, 0.01, -0.01][i % k])
            .collect();
        let h: Vec<f64> = (0..k * k)
            .map(|i| if i / k == i % k { 2.0 } else { 0.3 })
            .collect();
        let exact = quadratic_error(&w, &q, n, k, &h);
        assert_eq!(sampled_error(&w, &q, n, k, &h, n * k * k, 8), exact);
        let est = sampled_error(&w, &q, n, k, &h, 0, 8);
        assert!((est - exact).abs() < 1e-6 * exact, "{est} vs {exact}");
    }
}
