//! Rotations folded into the weights before quantization (`meditron quantize --rotate`): the
//! "computational invariance" of QuaRot and SpinQuant, used for weight-only GPTQ.
//!
//! RMSNorm without its weight commutes with an orthogonal `Q`: `rms(x Q) = rms(x)`, so
//! `norm(x Q) = norm(x) Q`. Once every norm weight is folded into the projections that read it
//! (columns of q/k/v, gate/up and the head scaled by it, the norm set to ones), the residual
//! stream can be carried in any rotated basis: the embedding rows become `e Q`, every reader of
//! the stream `W Q`, every writer to it `Q^T W`. Inside attention, the values can take a
//! rotation of their own per head (`v Q_h`, undone by the `o_proj` columns of the query heads
//! that read that KV head). The model computes the same function, and its files are a plain
//! Llama (norm weights of one, an untied `lm_head`) that every loader runs.
//!
//! Why it helps the quantizer: a random rotation spreads each row's few large weights, and
//! the few channels that carry massive activations, over all inputs, so that the groups'
//! ranges shrink relative to their typical values and the Hessians lose their spikes.

use crate::data::SplitMix;
use crate::layer::{Dims, LayerWeights, DOWN, GATE, K, O, Q, UP, V};
use crate::linalg::linear;

/// The rotations of one model.
pub struct Rotation {
    hidden: usize,
    /// `Q^T` (`[hidden, hidden]` row-major): [`linear`] multiplies by a transposed weight.
    residual_t: Vec<f32>,
    seed: u64,
}

impl Rotation {
    pub fn new(hidden: usize, seed: u64) -> Rotation {
        Rotation {
            hidden,
            residual_t: transpose(&random_orthogonal(hidden, seed), hidden, hidden),
            seed,
        }
    }

    /// Rows of the residual stream (activations, embedding rows) in the rotated basis: `x Q`.
    pub fn rotate_rows(&self, x: &[f32]) -> Vec<f32> {
        let h = self.hidden;
        let mut y = vec![0f32; x.len()];
        linear(&mut y, x, &self.residual_t, x.len() / h, h, h, false);
        y
    }

    /// A reader of the residual stream behind a norm of weight `g`: `W diag(g) Q`.
    pub fn reader(&self, w: &[f32], g: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = w
            .chunks_exact(g.len())
            .flat_map(|row| row.iter().zip(g).map(|(a, b)| a * b))
            .collect();
        self.rotate_rows(&scaled)
    }

    /// A writer to the residual stream, `w[hidden, k]`: `Q^T W`, i.e. `(W^T Q)^T`.
    fn writer(&self, w: &[f32], k: usize) -> Vec<f32> {
        let h = self.hidden;
        transpose(&self.rotate_rows(&transpose(w, h, k)), k, h)
    }

    /// Folds the layer's norms into its projections, rotates the residual stream's readers
    /// and writers, and gives the values of every KV head the layer's own head rotation.
    pub fn apply(&self, lw: &mut LayerWeights, d: &Dims, layer: usize) {
        for m in [Q, K, V] {
            lw.lin[m] = self.reader(&lw.lin[m], &lw.attn_norm);
        }
        for m in [GATE, UP] {
            lw.lin[m] = self.reader(&lw.lin[m], &lw.mlp_norm);
        }
        lw.attn_norm.fill(1.0);
        lw.mlp_norm.fill(1.0);
        for m in [O, DOWN] {
            lw.lin[m] = self.writer(&lw.lin[m], d.shape(m).1);
        }
        let hd = d.head_dim;
        let qh = random_orthogonal(hd, self.seed ^ (0x5EED_0000 + layer as u64));
        // v_proj: each KV head's rows (its outputs) become Q_h^T W_h.
        let k = d.hidden;
        for head in lw.lin[V].chunks_exact_mut(hd * k) {
            let src = head.to_vec();
            for (i, row) in head.chunks_exact_mut(k).enumerate() {
                row.fill(0.0);
                for (r, s) in src.chunks_exact(k).enumerate() {
                    let c = qh[r * hd + i];
                    row.iter_mut().zip(s).for_each(|(o, s)| *o += c * s);
                }
            }
        }
        // o_proj: every query head's columns, W_h Q_h (each reads a KV head rotated alike).
        for block in lw.lin[O].chunks_exact_mut(hd) {
            let src = block.to_vec();
            for (j, b) in block.iter_mut().enumerate() {
                *b = (0..hd).map(|r| src[r] * qh[r * hd + j]).sum();
            }
        }
    }
}

fn transpose(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * k];
    for (j, row) in w.chunks_exact(k).enumerate() {
        for (i, v) in row.iter().enumerate() {
            t[i * n + j] = *v;
        }
    }
    t
}

/// A random orthogonal `n x n` matrix (row-major): the orthonormalized rows of a Gaussian
/// matrix, i.e. the `Q` of its transpose's QR factorization (f64, faer's blocked Householder:
/// 18.5 s at 70B's 8192 on two cores, where scalar Gram-Schmidt would take many minutes),
/// each column signed so that `R` has a positive diagonal (what Gram-Schmidt gives).
/// (A Hadamard-based rotation, as QuaRot uses, gave the same perplexity here: NOTES.)
pub fn random_orthogonal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut gauss = || {
        // Box-Muller; u1 in (0, 1].
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let m: Vec<f64> = (0..n * n).map(|_| gauss()).collect();
    // Column j of the transpose is row j of `m`.
    let qr = faer::Mat::<f64>::from_fn(n, n, |i, j| m[j * n + i]).qr();
    let (q, r) = (qr.compute_Q(), qr.R());
    let mut out = vec![0f32; n * n];
    for j in 0..n {
        let sign = if r[(j, j)] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            out[j * n + i] = (sign * q[(i, j)]) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{attention, mlp_act, norm, residual};
    use kernels::cpu::ops;

    #[test]
    fn random_orthogonal_is_orthogonal_and_seeded() {
        let n = 24;
        let q = random_orthogonal(n, 7);
        for i in 0..n {
            for j in 0..n {
                let dot: f32 = (0..n).map(|c| q[i * n + c] * q[j * n + c]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "row {i} . row {j} = {dot}");
            }
        }
        assert_eq!(q, random_orthogonal(n, 7));
        assert_ne!(q, random_orthogonal(n, 8));
        // The rows are the Gram-Schmidt orthonormalization of the Gaussian rows: row i lies
        // in the span of the first i + 1 of them, with a positive component along the last.
        let mut rng = SplitMix(7);
        let mut gauss = || {
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let g: Vec<f64> = (0..n * n).map(|_| gauss()).collect();
        let dot = |i: usize, j: usize| -> f64 {
            (0..n).map(|c| q[i * n + c] as f64 * g[j * n + c]).sum()
        };
        for i in 0..n {
            assert!(dot(i, i) > 0.0, "row {i}");
            for j in 0..i {
                // Orthonormal row i is orthogonal to the earlier Gaussian rows.
                assert!(dot(i, j).abs() < 1e-4, "row {i} . gaussian {j}");
            }
        }
    }

    /// One decoder layer (GQA, RoPE, SwiGLU, non-trivial norm weights) computes the same
    /// function after the rotation: rotated inputs give the rotated outputs.
    #[test]
    fn a_rotated_layer_computes_the_same_function() {
        let d = Dims {
            hidden: 16,
            inter: 24,
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            eps: 1e-5,
            inv_freq: ops::rope_inv_freq(10000.0, 4),
        };
        let mut rng = SplitMix(3);
        let mut r =
            |scale: f32| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
        let lin = (0..7)
            .map(|m| {
                let (n, k) = d.shape(m);
                (0..n * k).map(|_| r(0.6)).collect()
            })
            .collect();
        let lw = LayerWeights {
            attn_norm: (0..d.hidden).map(|_| 1.0 + r(1.0)).collect(),
            mlp_norm: (0..d.hidden).map(|_| 1.0 + r(1.0)).collect(),
            lin,
        };
        let (seq, samples) = (6, 2);
        let x: Vec<f32> = (0..seq * samples * d.hidden).map(|_| r(4.0)).collect();
        let forward = |lw: &LayerWeights, x: &[f32]| -> Vec<f32> {
            let mut x = x.to_vec();
            let att = attention(&norm(&x, &lw.attn_norm, d.eps), lw, &d, seq);
            residual(&mut x, &att, lw, &d, O);
            let act = mlp_act(&norm(&x, &lw.mlp_norm, d.eps), lw, &d);
            residual(&mut x, &act, lw, &d, DOWN);
            x
        };
        let rot = Rotation::new(d.hidden, 11);
        let mut rotated = lw.clone();
        rot.apply(&mut rotated, &d, 5);
        assert!(rotated
            .attn_norm
            .iter()
            .chain(&rotated.mlp_norm)
            .all(|&g| g == 1.0));
        let want = rot.rotate_rows(&forward(&lw, &x));
        let got = forward(&rotated, &rot.rotate_rows(&x));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "[{i}] {a} vs {b}");
        }
        // And it did change the weights.
        assert!(rotated.lin[V]
            .iter()
            .zip(&lw.lin[V])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
