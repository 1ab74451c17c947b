//! One Llama decoder layer in f32 for calibration: its weights read from the source checkpoint,
//! and the pieces of its forward pass the GPTQ stages need, on batches of whole samples
//! (`rows = samples * seq_len` tokens, row-major `[rows, width]`).

use crate::linalg::{cross, linear, symmetrize_lower, syrk_lower};
use anyhow::{bail, Context, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use formats::{LlamaConfig, ModelWeights, TensorView};
use kernels::cpu::ops;
use rayon::prelude::*;

/// The quantized projections, in checkpoint order; indices into [`LayerWeights::lin`].
pub const MODULES: [&str; 7] = formats::gptq::LLAMA_QUANTIZED;
pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

/// The sizes the forward needs, from config.json.
#[derive(Clone, Debug)]
pub struct Dims {
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub inv_freq: Vec<f32>,
}

impl Dims {
    pub fn from_config(c: &LlamaConfig) -> Dims {
        let head_dim = c.head_dim();
        Dims {
            hidden: c.hidden_size,
            inter: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim,
            eps: c.rms_norm_eps as f32,
            inv_freq: ops::rope_inv_freq(c.rope_theta as f32, head_dim),
        }
    }

    /// `(outputs, inputs)` of projection `m`.
    pub fn shape(&self, m: usize) -> (usize, usize) {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        match m {
            Q => (q, h),
            K | V => (kv, h),
            O => (h, q),
            GATE | UP => (self.inter, h),
            _ => (h, self.inter),
        }
    }
}

/// A tensor as f32, checking its shape.
pub fn tensor_f32(w: &ModelWeights, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = w
        .tensor(name)
        .with_context(|| format!("tensor '{name}' is missing from the source model"))?;
    if t.shape != shape {
        bail!(
            "tensor '{name}' in {} has shape {:?}, expected {shape:?}",
            t.file.display(),
            t.shape
        );
    }
    Ok(t.to_f32_vec()?)
}

/// Row `r` of a 2-D tensor as f32 (the embedding lookup without converting the whole table).
pub fn row_f32(t: &TensorView<'_>, r: usize) -> Result<Vec<f32>> {
    let cols = t.shape[1];
    let es = t.dtype.size();
    let bytes = &t.bytes[r * cols * es..(r + 1) * cols * es];
    let view = TensorView {
        bytes,
        shape: &t.shape[1..],
        ..*t
    };
    Ok(view.to_f32_vec()?)
}

#[derive(Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    /// `[out, in]` row-major, replaced by the dequantized weights as modules are quantized.
    pub lin: Vec<Vec<f32>>,
}

impl LayerWeights {
    pub fn read(w: &ModelWeights, layer: usize, d: &Dims) -> Result<LayerWeights> {
        let p = format!("model.layers.{layer}");
        let lin = (0..7)
            .map(|m| {
                let (n, k) = d.shape(m);
                tensor_f32(w, &format!("{p}.{}.weight", MODULES[m]), &[n, k])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerWeights {
            attn_norm: tensor_f32(w, &format!("{p}.input_layernorm.weight"), &[d.hidden])?,
            mlp_norm: tensor_f32(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                &[d.hidden],
            )?,
            lin,
        })
    }
}

/// RMSNorm of every row.
pub fn norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let width = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(o, r)| ops::rms_norm(r, w, eps, o));
    out
}

/// Query rows per block of the causal attention products.
const ATT_BLOCK: usize = 64;

/// Causal self-attention of `xn` (normed inputs) through q/k/v, before o_proj:
/// `[rows, heads*head_dim]`. Rotary embeddings in Hugging Face's half-split layout, positions
/// restarting at 0 in every sample of `seq` tokens; query head `h` reads KV head
/// `h / (heads / kv_heads)`.
pub fn attention(xn: &[f32], lw: &LayerWeights, d: &Dims, seq: usize) -> Vec<f32> {
    let rows = xn.len() / d.hidden;
    let (qd, kd, hd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim, d.head_dim);
    let mut q = vec![0f32; rows * qd];
    let mut k = vec![0f32; rows * kd];
    let mut v = vec![0f32; rows * kd];
    linear(&mut q, xn, &lw.lin[Q], rows, d.hidden, qd, false);
    linear(&mut k, xn, &lw.lin[K], rows, d.hidden, kd, false);
    linear(&mut v, xn, &lw.lin[V], rows, d.hidden, kd, false);
    let rope = |buf: &mut [f32], width: usize| {
        buf.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| ops::rope(row, hd, r % seq, &d.inv_freq, ops::RopeStyle::Halves));
    };
    rope(&mut q, qd);
    rope(&mut k, kd);
    let samples = rows / seq;
    let group = d.heads / d.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let heads: Vec<(usize, usize, Vec<f32>)> = (0..samples * d.heads)
        .into_par_iter()
        .map(|t| {
            let (s, h) = (t / d.heads, t % d.heads);
            let kvh = h / group;
            let qh =
                MatRef::from_row_major_slice_with_stride(&q[s * seq * qd + h * hd..], seq, hd, qd);
            let kh = MatRef::from_row_major_slice_with_stride(
                &k[s * seq * kd + kvh * hd..],
                seq,
                hd,
                kd,
            );
            let vh = MatRef::from_row_major_slice_with_stride(
                &v[s * seq * kd + kvh * hd..],
                seq,
                hd,
                kd,
            );
            // Causal: query block [r0, r1) reads keys [0, r1) only, so the products skip the
            // masked upper triangle (about half of the attention's multiply-adds).
            let mut p = vec![0f32; ATT_BLOCK * seq];
            let mut o = vec![0f32; seq * hd];
            for r0 in (0..seq).step_by(ATT_BLOCK) {
                let r1 = (r0 + ATT_BLOCK).min(seq);
                let (rows, keys) = (r1 - r0, r1);
                let pb = &mut p[..rows * keys];
                matmul(
                    MatMut::from_row_major_slice_mut(pb, rows, keys),
                    Accum::Replace,
                    qh.subrows(r0, rows),
                    kh.subrows(0, keys).transpose(),
                    scale,
                    Par::Seq,
                );
                for (i, row) in pb.chunks_exact_mut(keys).enumerate() {
                    let last = r0 + i;
                    softmax(&mut row[..=last]);
                    row[last + 1..].fill(0.0);
                }
                matmul(
                    MatMut::from_row_major_slice_mut(&mut o[r0 * hd..r1 * hd], rows, hd),
                    Accum::Replace,
                    MatRef::from_row_major_slice(pb, rows, keys),
                    vh.subrows(0, keys),
                    1.0f32,
                    Par::Seq,
                );
            }
            (s, h, o)
        })
        .collect();
    let mut a = vec![0f32; rows * qd];
    for (s, h, o) in heads {
        for (i, orow) in o.chunks_exact(hd).enumerate() {
            let r = s * seq + i;
            a[r * qd + h * hd..r * qd + (h + 1) * hd].copy_from_slice(orow);
        }
    }
    a
}

/// `x += a * W^T` (a residual branch through projection `m`).
pub fn residual(x: &mut [f32], a: &[f32], lw: &LayerWeights, d: &Dims, m: usize) {
    let (n, k) = d.shape(m);
    let rows = a.len() / k;
    linear(x, a, &lw.lin[m], rows, k, n, true);
}

/// `silu(hn gate^T) * (hn up^T)`: the input of down_proj.
pub fn mlp_act(hn: &[f32], lw: &LayerWeights, d: &Dims) -> Vec<f32> {
    let rows = hn.len() / d.hidden;
    let mut g = vec![0f32; rows * d.inter];
    let mut u = vec![0f32; rows * d.inter];
    linear(&mut g, hn, &lw.lin[GATE], rows, d.hidden, d.inter, false);
    linear(&mut u, hn, &lw.lin[UP], rows, d.hidden, d.inter, false);
    g.par_chunks_mut(d.inter)
        .zip(u.par_chunks(d.inter))
        .for_each(|(g, u)| {
            for (g, u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + fast_exp(-*g)) * u;
            }
        });
    g
}

/// `e^x` without a libm call, so that loops over slices vectorize (libm's expf was 10% of all
/// cycles): `2^(x log2 e)` split into an integer power (exponent bits) and a fraction whose
/// `2^f` is a degree-6 Taylor polynomial (relative error below 2e-7). Inputs are clamped to
/// [-87, 88], so tiny results come out as ~1e-38 instead of 0.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    let n = (t + ROUND) - ROUND;
    let y = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// Softmax in place with [`fast_exp`].
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = fast_exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `H = 2/tokens * sum x x^T` of one projection's inputs, summed per batch in f32 (faer's
/// symmetric product) and across batches in f64.
pub struct Hessian {
    pub k: usize,
    part: Vec<f32>,
    sum: Vec<f64>,
    tokens: usize,
}

impl Hessian {
    pub fn new(k: usize) -> Hessian {
        Hessian {
            k,
            part: vec![0.0; k * k],
            sum: vec![0.0; k * k],
            tokens: 0,
        }
    }

    pub fn add(&mut self, x: &[f32]) {
        let rows = x.len() / self.k;
        self.part.fill(0.0);
        syrk_lower(&mut self.part, x, rows, self.k);
        let k = self.k;
        self.sum
            .par_chunks_mut(k)
            .zip(self.part.par_chunks(k))
            .enumerate()
            .for_each(|(i, (s, p))| {
                for j in 0..=i {
                    s[j] += p[j] as f64;
                }
            });
        self.tokens += rows;
    }

    pub fn finish(mut self) -> Vec<f64> {
        symmetrize_lower(&mut self.sum, self.k);
        let f = 2.0 / self.tokens.max(1) as f64;
        self.sum.iter_mut().for_each(|v| *v *= f);
        self.sum
    }
}

/// `2/tokens * sum x_fp^T x` over the calibration tokens: how the full-precision model's inputs
/// of a projection (`x_fp`) relate to the quantized model's (`x`), on the Hessian's scale.
pub struct CrossCovariance {
    k: usize,
    part: Vec<f32>,
    sum: Vec<f64>,
    tokens: usize,
}

impl CrossCovariance {
    pub fn new(k: usize) -> CrossCovariance {
        CrossCovariance {
            k,
            part: vec![0.0; k * k],
            sum: vec![0.0; k * k],
            tokens: 0,
        }
    }

    pub fn add(&mut self, x_fp: &[f32], x: &[f32]) {
        let rows = x.len() / self.k;
        self.part.fill(0.0);
        cross(&mut self.part, x_fp, x, rows, self.k);
        self.sum
            .iter_mut()
            .zip(&self.part)
            .for_each(|(s, p)| *s += *p as f64);
        self.tokens += rows;
    }

    pub fn finish(mut self) -> Vec<f64> {
        let f = 2.0 / self.tokens.max(1) as f64;
        self.sum.iter_mut().for_each(|v| *v *= f);
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            hidden: 8,
            inter: 12,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            eps: 1e-5,
            inv_freq: ops::rope_inv_freq(10000.0, 2),
        }
    }

    fn weights(d: &Dims) -> LayerWeights {
        let lin = (0..7)
            .map(|m| {
                let (n, k) = d.shape(m);
                (0..n * k)
                    .map(|i| ((i * 37 + m * 11) % 23) as f32 * 0.05 - 0.5)
                    .collect()
            })
            .collect();
        LayerWeights {
            attn_norm: vec![1.0; d.hidden],
            mlp_norm: vec![1.0; d.hidden],
            lin,
        }
    }

    /// Attention written out with loops, one token at a time, as a reference; sequences
    /// shorter than one query block, and over two blocks with a partial last one.
    #[test]
    fn attention_matches_a_token_by_token_reference() {
        for seq in [5, 2 * ATT_BLOCK + 7] {
            attention_case(seq);
        }
    }

    fn attention_case(seq: usize) {
        let d = dims();
        let lw = weights(&d);
        let rows = 2 * seq;
        let x: Vec<f32> = (0..rows * d.hidden)
            .map(|i| ((i * 13) % 7) as f32 * 0.3 - 1.0)
            .collect();
        let a = attention(&x, &lw, &d, seq);
        let proj = |m: usize, r: usize| -> Vec<f32> {
            let (n, k) = d.shape(m);
            (0..n)
                .map(|o| (0..k).map(|i| x[r * k + i] * lw.lin[m][o * k + i]).sum())
                .collect()
        };
        for r in 0..rows {
            let (s, t) = (r / seq, r % seq);
            let mut q = proj(Q, r);
            ops::rope(&mut q, 2, t, &d.inv_freq, ops::RopeStyle::Halves);
            for h in 0..d.heads {
                let kvh = h / 2;
                let mut scores = Vec::new();
                let mut vals = Vec::new();
                for j in 0..=t {
                    let mut kk = proj(K, s * seq + j);
                    ops::rope(&mut kk, 2, j, &d.inv_freq, ops::RopeStyle::Halves);
                    let vv = proj(V, s * seq + j);
                    scores.push(
                        (q[h * 2] * kk[kvh * 2] + q[h * 2 + 1] * kk[kvh * 2 + 1]) / 2f32.sqrt(),
                    );
                    vals.push([vv[kvh * 2], vv[kvh * 2 + 1]]);
                }
                ops::softmax(&mut scores);
                for c in 0..2 {
                    let want: f32 = scores.iter().zip(&vals).map(|(p, v)| p * v[c]).sum();
                    let got = a[r * 8 + h * 2 + c];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "seq {seq} row {r} head {h}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2e-7 * (1.0 + x.abs()) * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(fast_exp(-1e4) < 1e-37 && fast_exp(-1e4) >= 0.0);
    }

    #[test]
    fn hessian_is_twice_the_mean_outer_product() {
        let mut h = Hessian::new(3);
        h.add(&[1.0, 2.0, 3.0]);
        h.add(&[0.0, 1.0, -1.0, 2.0, 0.0, 0.0]);
        let h = h.finish();
        // sum x x^T over 3 tokens, times 2/3.
        let want = [5.0, 2.0, 3.0, 2.0, 5.0, 5.0, 3.0, 5.0, 10.0];
        for (g, w) in h.iter().zip(want) {
            assert!((g - w * 2.0 / 3.0).abs() < 1e-9);
        }
    }
}
