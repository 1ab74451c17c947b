//! Rotations folded into the weights before quantization (`meditron quantize --rotate`), the
//! "computational invariance" of QuaRot and SpinQuant applied to weight-only GPTQ.
//!
//! RMSNorm without its weight commutes with an orthogonal `Q`: `rms(x Q) = rms(x)`, so
//! `norm(x Q) = norm(x) Q`. Once every norm weight is folded into the projections that read it
//! (columns of q/k/v, gate/up and the head scaled by it, the norm set to ones), the residual
//! stream can be carried in any rotated basis: the embedding rows become `e Q`, every reader of
//! the stream `W Q`, every writer to it `Q^T W`. Inside attention, each KV head's values can
//! take a rotation of their own (`v Q_h`, undone by `o_proj`'s columns of the query heads that
//! read that KV head). The model computes the same function, and its files are a plain Llama
//! (norm weights of one, an untied `lm_head`) that every loader runs.
//!
//! Why it helps the quantizer: a random rotation spreads each row's few large weights and the
//! few massive activation channels over all inputs, so the groups' ranges shrink relative to
//! their typical values and the Hessians lose their spikes.

use crate::data::SplitMix;
use crate::layer::{Dims, LayerWeights, DOWN, GATE, K, O, Q, UP, V};
use crate::linalg::linear;

/// The rotations of one model: `hidden x hidden` for the residual stream, one `head_dim`
/// square per layer for the values.
pub struct Rotation {
    /// `[hidden, hidden]` row-major, orthogonal.
    pub residual: Vec<f32>,
    /// Its transpose (what [`linear`] multiplies by for `x Q`).
    residual_t: Vec<f32>,
    seed: u64,
}

impl Rotation {
    pub fn new(hidden: usize, seed: u64) -> Rotation {
        let residual = random_orthogonal(hidden, seed);
        let residual_t = transpose(&residual, hidden, hidden);
        Rotation {
            residual,
            residual_t,
            seed,
        }
    }

    /// `rows x hidden` activations or embedding rows in the rotated basis: `x Q`.
    pub fn rotate_rows(&self, x: &[f32]) -> Vec<f32> {
        let h = self.hidden();
        let rows = x.len() / h;
        let mut y = vec![0f32; x.len()];
        linear(&mut y, x, &self.residual_t, rows, h, h, false);
        y
    }

    fn hidden(&self) -> usize {
        (self.residual.len() as f64).sqrt() as usize
    }

    /// A reader of the normed residual stream with norm weight `g`: `W diag(g) Q`.
    pub fn reader(&self, w: &[f32], g: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = w
            .chunks_exact(g.len())
            .flat_map(|row| row.iter().zip(g).map(|(a, b)| a * b))
            .collect();
        self.rotate_rows(&scaled)
    }

    /// Folds the layer's norms and rotates all seven projections; the norms become ones.
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
            let (n, k) = d.shape(m);
            // Q^T W = (W^T Q)^T.
            let wt = transpose(&lw.lin[m], n, k);
            lw.lin[m] = transpose(&self.rotate_rows(&wt), k, n);
        }
        // Values: each KV head's rows of v_proj by Q_h^T, the matching o_proj columns by Q_h.
        let hd = d.head_dim;
        let qh = random_orthogonal(hd, self.seed ^ (0x5EED_0000 + layer as u64));
        let (_, k) = d.shape(V);
        for kv in 0..d.kv_heads {
            let rows = &mut lw.lin[V][kv * hd * k..(kv + 1) * hd * k];
            let mut out = vec![0f32; rows.len()];
            for (i, orow) in out.chunks_exact_mut(k).enumerate() {
                for (r, src) in rows.chunks_exact(k).enumerate() {
                    let c = qh[r * hd + i];
                    for (o, s) in orow.iter_mut().zip(src) {
                        *o += c * s;
                    }
                }
            }
            rows.copy_from_slice(&out);
        }
        let (_, qd) = d.shape(O);
        for row in lw.lin[O].chunks_exact_mut(qd) {
            for h in 0..d.heads {
                let blk = &mut row[h * hd..(h + 1) * hd];
                let src = blk.to_vec();
                for (j, b) in blk.iter_mut().enumerate() {
                    *b = (0..hd).map(|r| src[r] * qh[r * hd + j]).sum();
                }
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

/// A random orthogonal `n x n` matrix (row-major): Gaussian entries, rows orthonormalized by
/// Gram-Schmidt twice in f64 (the second pass removes what rounding left of the first).
pub fn random_orthogonal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut gauss = || {
        // Box-Muller; u1 in (0, 1].
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let mut m: Vec<f64> = (0..n * n).map(|_| gauss()).collect();
    for i in 0..n {
        for _ in 0..2 {
            for j in 0..i {
                let dot: f64 = (0..n).map(|c| m[i * n + c] * m[j * n + c]).sum();
                for c in 0..n {
                    m[i * n + c] -= dot * m[j * n + c];
                }
            }
        }
        let norm = (0..n).map(|c| m[i * n + c] * m[i * n + c]).sum::<f64>().sqrt();
        for c in 0..n {
            m[i * n + c] /= norm;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}
