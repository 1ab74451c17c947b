//! GPTQ on single matrices against the published formulas: the reported loss is the
//! Hessian-weighted error of the result, GPTQ beats round-to-nearest on the calibration data,
//! and the codes, grids and g_idx decode to the weights the algorithm used.

use quantize::gptq::{fp_target, gptq, quadratic_error, rtn, QuantParams, QuantizedLinear};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Roughly Gaussian (sum of four uniforms).
    fn gauss(&mut self) -> f32 {
        (self.next() + self.next() + self.next() + self.next()) * 0.866
    }
}

/// Correlated inputs with uneven scales (what makes GPTQ and act-order matter), their
/// Hessian `2/t * X^T X`, and a weight with a few outliers.
fn problem(n: usize, k: usize, t: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
    let mut r = Lcg(seed);
    let mix: Vec<f32> = (0..k * k / 4).map(|_| r.gauss()).collect();
    let scale: Vec<f32> = (0..k)
        .map(|i| 0.2 + 3.0 * ((i * 7919) % k) as f32 / k as f32)
        .collect();
    let mut x = vec![0f32; t * k];
    for row in x.chunks_exact_mut(k) {
        let z: Vec<f32> = (0..k / 4).map(|_| r.gauss()).collect();
        for i in 0..k {
            let mut v = 0.3 * r.gauss();
            for (a, zz) in z.iter().enumerate() {
                v += mix[a * k + i] * zz * 0.2;
            }
            row[i] = v * scale[i];
        }
    }
    let mut h = vec![0f64; k * k];
    for row in x.chunks_exact(k) {
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] += 2.0 * row[i] as f64 * row[j] as f64 / t as f64;
            }
        }
    }
    let w: Vec<f32> = (0..n * k)
        .map(|i| {
            let v = r.gauss() * 0.05;
            if i % 97 == 0 {
                v * 6.0
            } else {
                v
            }
        })
        .collect();
    (w, h)
}

fn damped(h: &[f64], k: usize, damp: f64) -> Vec<f64> {
    let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    let mut d = h.to_vec();
    for i in 0..k {
        d[i * k + i] += damp * mean;
    }
    d
}

fn params(bits: u32, group: Option<usize>, act: bool, stat: bool) -> QuantParams {
    QuantParams {
        bits,
        group_size: group,
        sym: true,
        act_order: act,
        static_groups: stat,
        damp: 0.01,
        mse: false,
    }
}

/// Every dequantized value is `scale[g_idx[i], j] * (code - zero)` with the stored grid.
fn assert_decodes(q: &QuantizedLinear) {
    for i in 0..q.k {
        let g = q.g_idx[i] as usize;
        for j in 0..q.n {
            let s = q.scales[g * q.n + j].to_f32();
            let z = q.zeros[g * q.n + j] as f32;
            let v = s * (q.codes[i * q.n + j] as f32 - z);
            assert_eq!(v, q.dequant[j * q.k + i], "[{j}, {i}]");
        }
    }
}

#[test]
fn reported_loss_is_the_hessian_weighted_error_and_beats_rtn() {
    let (n, k) = (48, 256);
    let (w, h) = problem(n, k, 1024, 1);
    for (bits, group, act, stat) in [
        (4, Some(128), true, false),
        (4, Some(32), false, false),
        (3, None, true, false),
        (3, Some(64), true, true),
        (2, Some(32), false, false),
        (8, Some(128), true, false),
        // 256 inputs in groups of 96: the last group is shorter.
        (4, Some(96), true, false),
        (4, Some(96), true, true),
    ] {
        let p = params(bits, group, act, stat);
        let (q, stats) = gptq(&w, n, k, &h, &p).unwrap();
        assert_decodes(&q);
        assert_eq!(stats.retries, 0);
        // The OBS losses summed over the walk equal tr(dW H' dW^T)/2 for the damped H'.
        let hd = damped(&h, k, stats.damp_used);
        let recomputed = quadratic_error(&w, &q.dequant, n, k, &hd);
        let rel = (stats.loss - recomputed).abs() / recomputed;
        assert!(
            rel < 1e-3,
            "{bits} bits {group:?}: loss {} vs {recomputed}",
            stats.loss
        );
        // GPTQ's error on the calibration inputs (undamped H) is below round-to-nearest's.
        let r = rtn(&w, n, k, &p).unwrap();
        assert_decodes(&r);
        let eg = quadratic_error(&w, &q.dequant, n, k, &h);
        let er = quadratic_error(&w, &r.dequant, n, k, &h);
        assert!(
            eg < er,
            "{bits} bits {group:?} act {act}: gptq {eg} >= rtn {er}"
        );
        if bits <= 4 {
            assert!(
                eg < 0.8 * er,
                "{bits} bits {group:?}: gptq {eg} vs rtn {er}"
            );
        }
    }
}

#[test]
fn g_idx_follows_act_order_and_static_groups() {
    let (n, k) = (16, 128);
    let (w, h) = problem(n, k, 512, 2);
    let (q, _) = gptq(&w, n, k, &h, &params(4, Some(32), false, false)).unwrap();
    assert!(q
        .g_idx
        .iter()
        .enumerate()
        .all(|(i, &g)| g as usize == i / 32));
    let (q, _) = gptq(&w, n, k, &h, &params(4, Some(32), true, true)).unwrap();
    assert!(q
        .g_idx
        .iter()
        .enumerate()
        .all(|(i, &g)| g as usize == i / 32));
    // Act-order: the 32 inputs with the largest Hessian diagonal form group 0, and so on.
    let (q, _) = gptq(&w, n, k, &h, &params(4, Some(32), true, false)).unwrap();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
    for (rank, &i) in order.iter().enumerate() {
        assert_eq!(q.g_idx[i] as usize, rank / 32);
    }
    let (q, _) = gptq(&w, n, k, &h, &params(4, None, true, false)).unwrap();
    assert!(q.g_idx.iter().all(|&g| g == 0) && q.groups() == 1);
}

#[test]
fn dead_inputs_are_zeroed_and_asymmetric_zeros_are_kept() {
    let (n, k) = (16, 64);
    let (w, mut h) = problem(n, k, 256, 3);
    for d in [5usize, 40] {
        for j in 0..k {
            h[d * k + j] = 0.0;
            h[j * k + d] = 0.0;
        }
    }
    let mut p = params(4, Some(32), true, false);
    p.sym = false;
    let (q, stats) = gptq(&w, n, k, &h, &p).unwrap();
    assert_eq!(stats.dead, 2);
    assert_decodes(&q);
    for j in 0..n {
        assert_eq!(q.dequant[j * k + 5], 0.0);
        assert_eq!(q.dequant[j * k + 40], 0.0);
    }
    assert!(q.zeros.iter().any(|&z| z != 8), "asymmetric zeros vary");
}

#[test]
fn a_singular_hessian_is_damped_until_cholesky_succeeds() {
    // Rank-one H with no damping: the factorization fails and is retried with more damping.
    let (n, k) = (8, 32);
    let x: Vec<f64> = (0..k).map(|i| 1.0 + i as f64).collect();
    let h: Vec<f64> = (0..k * k).map(|i| x[i / k] * x[i % k]).collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.01)
        .collect();
    let mut p = params(4, None, false, false);
    p.damp = 0.0;
    let (q, stats) = gptq(&w, n, k, &h, &p).unwrap();
    assert!(stats.retries >= 1 && stats.damp_used > 0.0, "{stats:?}");
    assert_decodes(&q);
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let h = vec![1.0; 64 * 64];
    let w = vec![0.1; 4 * 64];
    let e = gptq(&w, 4, 64, &h, &params(5, None, false, false)).unwrap_err();
    assert!(e.to_string().contains("bits = 5"), "{e}");
    let e = gptq(&w, 4, 64, &h, &params(4, Some(0), false, false)).unwrap_err();
    assert!(e.to_string().contains("group size"), "{e}");
    let mut bad = w.clone();
    bad[70] = f32::NAN;
    let e = gptq(&bad, 4, 64, &h, &params(4, None, false, false)).unwrap_err();
    assert!(e.to_string().contains("[1, 6]"), "{e}");
}

/// `fp_target` solves the least-squares fit of the full-precision outputs `w x_fp` from the
/// quantized model's inputs `x`, is `w` itself when the inputs agree, and GPTQ of it
/// reproduces the full-precision outputs better than GPTQ of `w`.
#[test]
fn fp_target_fits_the_full_precision_outputs() {
    let (n, k, t) = (24, 32, 600);
    let mut r = Lcg(77);
    // Full-precision inputs, and quantized-model inputs that drifted from them linearly.
    let scale: Vec<f32> = (0..k).map(|i| 0.3 + (i % 5) as f32 * 0.4).collect();
    let x_fp: Vec<f32> = (0..t * k).map(|i| r.gauss() * scale[i % k]).collect();
    let drift: Vec<f32> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 } + 0.08 * r.gauss())
        .collect();
    let x: Vec<f32> = x_fp
        .chunks_exact(k)
        .flat_map(|row| (0..k).map(|j| (0..k).map(|i| row[i] * drift[i * k + j]).sum::<f32>()))
        .collect();
    let outer = |a: &[f32], b: &[f32]| -> Vec<f64> {
        let mut m = vec![0f64; k * k];
        for (ra, rb) in a.chunks_exact(k).zip(b.chunks_exact(k)) {
            for i in 0..k {
                for j in 0..k {
                    m[i * k + j] += 2.0 * ra[i] as f64 * rb[j] as f64 / t as f64;
                }
            }
        }
        m
    };
    let (h, c) = (outer(&x, &x), outer(&x_fp, &x));
    let w: Vec<f32> = (0..n * k).map(|_| r.gauss() * 0.1).collect();

    assert_eq!(fp_target(&w, n, k, &h, &h, 0.01).unwrap(), w);
    // No input ever fired: nothing to fit.
    let zero = vec![0f64; k * k];
    assert_eq!(fp_target(&w, n, k, &zero, &zero, 0.01).unwrap(), w);

    // Nearly undamped: the normal equations `target H = w C` hold.
    let target = fp_target(&w, n, k, &h, &c, 1e-6).unwrap();
    let mul = |a: &[f32], m: &[f64]| -> Vec<f64> {
        (0..n * k)
            .map(|x| {
                (0..k)
                    .map(|i| a[x / k * k + i] as f64 * m[i * k + x % k])
                    .sum()
            })
            .collect()
    };
    let (lhs, rhs) = (mul(&target, &h), mul(&w, &c));
    let scale = rhs.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (a, b) in lhs.iter().zip(&rhs) {
        assert!((a - b).abs() < 1e-3 * scale, "{a} vs {b}");
    }

    // The full-precision output error of GPTQ's result, fitted to the target or to `w`.
    let out_err = |q: &[f32]| -> f64 {
        x_fp.chunks_exact(k)
            .zip(x.chunks_exact(k))
            .map(|(rf, rq)| {
                (0..n)
                    .map(|o| {
                        let want: f32 = (0..k).map(|i| w[o * k + i] * rf[i]).sum();
                        let got: f32 = (0..k).map(|i| q[o * k + i] * rq[i]).sum();
                        ((want - got) as f64).powi(2)
                    })
                    .sum::<f64>()
            })
            .sum()
    };
    let p = params(4, Some(16), true, false);
    let fitted = gptq(&fp_target(&w, n, k, &h, &c, p.damp).unwrap(), n, k, &h, &p).unwrap();
    let plain = gptq(&w, n, k, &h, &p).unwrap();
    let (e_fit, e_plain) = (out_err(&fitted.0.dequant), out_err(&plain.0.dequant));
    assert!(e_fit < 0.5 * e_plain, "fitted {e_fit} vs plain {e_plain}");
}
