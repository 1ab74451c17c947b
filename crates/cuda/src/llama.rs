//! The Llama forward pass on the GPU: weights (GPTQ in the kernel layout, or fp16), the
//! per-step state (residual stream, scratch, paged KV cache, token/position arrays that the
//! kernels advance themselves), prefill through cuBLAS and decode through the fused GEMVs, and
//! the decode step captured as a CUDA graph.

use crate::driver::{Buf, Event, Gpu, Graph};
use crate::kernels::{
    gptq_dequant_cols, gptq_gemm_tc, gptq_gemv, gptq_gemv_fused, gptq_gemv_rope, gptq_gemv_swiglu,
    Heads, Ops, QLinear, RopeArgs, SwigluArgs, ATTN_SPLIT, PAGE,
};
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Config {
    pub hidden: usize,
    pub inter: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub n_layers: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_theta: f64,
}

impl Config {
    /// Llama-2-70B / Meditron-70B.
    pub fn llama_70b() -> Config {
        Config {
            hidden: 8192,
            inter: 28672,
            n_heads: 64,
            n_kv: 8,
            head_dim: 128,
            n_layers: 80,
            vocab: 32000,
            eps: 1e-5,
            rope_theta: 10000.0,
        }
    }
    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
        }
    }
    fn qkv_cols(&self) -> usize {
        (self.n_heads + 2 * self.n_kv) * self.head_dim
    }
}

pub enum Linear {
    Q(QLinear),
    /// fp16 [N][K] (nn.Linear layout).
    F16 {
        w: Buf,
        k: usize,
        n: usize,
    },
}

impl Linear {
    pub fn k(&self) -> usize {
        match self {
            Linear::Q(q) => q.k,
            Linear::F16 { k, .. } => *k,
        }
    }
    pub fn n(&self) -> usize {
        match self {
            Linear::Q(q) => q.n,
            Linear::F16 { n, .. } => *n,
        }
    }
    /// Whether `rows` rows go through dequantize + cuBLAS (weights back in original row order,
    /// input neither gathered nor shuffled) rather than a GEMV or the tensor-core kernel.
    fn blas(&self, rows: usize) -> bool {
        match self {
            Linear::Q(q) => rows > 8 && !q.tc(rows),
            Linear::F16 { .. } => rows > 8,
        }
    }
    /// The layout its input must be written in for `rows` rows: the GEMV's pair order for GPTQ
    /// at decode sizes, plain (16) for fp16 weights and cuBLAS.
    fn xbits(&self, rows: usize) -> u32 {
        match self {
            Linear::Q(q) if !self.blas(rows) => q.bits,
            _ => 16,
        }
    }
    /// The input gather (act-order permutation, one per part) for `rows` rows; 0 = none.
    fn perm(&self, rows: usize) -> u64 {
        match self {
            Linear::Q(q) if !self.blas(rows) => q.perm.as_ref().map_or(0, |p| p.ptr),
            _ => 0,
        }
    }
    /// Gathered copies of the input for `rows` rows.
    fn nseg(&self, rows: usize) -> usize {
        match self {
            Linear::Q(q) if !self.blas(rows) => q.nseg(),
            _ => 1,
        }
    }
    fn inv_perm(&self, rows: usize) -> u64 {
        match self {
            Linear::Q(q) if !self.blas(rows) => q.inv_perm.as_ref().map_or(0, |p| p.ptr),
            _ => 0,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Q(q) => q.weight_bytes(),
            Linear::F16 { w, .. } => w.bytes,
        }
    }
    /// Most partial sums a decode GEMV writes per row.
    fn splits(&self) -> usize {
        match self {
            Linear::Q(q) => q.splits(),
            Linear::F16 { .. } => 1,
        }
    }
}

pub struct Layer {
    pub attn_norm: Buf,  // [H] fp16
    pub ffn_norm: Buf,   // [H] fp16
    pub qkv: Linear,     // K = H, N = (NH + 2 NKV) * HD: q | k | v columns
    pub o: Linear,       // K = NH * HD, N = H
    pub gate_up: Linear, // K = H, N = 2 I: gate | up columns
    pub down: Linear,    // K = I, N = H
}

pub struct Model {
    pub cfg: Config,
    pub embed: Buf, // [V][H] fp16
    pub layers: Vec<Layer>,
    pub norm: Buf,    // [H] fp16
    pub lm_head: Buf, // [V][H] fp16
}

impl Model {
    /// Bytes a decode step reads for weights (all layers, lm_head, one embedding row).
    pub fn weight_bytes_per_token(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.o.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + 2 * l.attn_norm.bytes
            })
            .sum();
        l + self.lm_head.bytes + self.norm.bytes + self.cfg.hidden * 2
    }
}

// ---------------------------------------------------------------------------------------------
// Weights

fn rand_perm(k: usize, seed: u64) -> Vec<i32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut p: Vec<i32> = (0..k as i32).collect();
    for i in (1..k).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p.swap(i, (s % (i as u64 + 1)) as usize);
    }
    p
}

fn inverse(p: &[i32]) -> Vec<i32> {
    let mut inv = vec![0i32; p.len()];
    for (i, &j) in p.iter().enumerate() {
        inv[j as usize] = i as i32;
    }
    inv
}

/// Random GPTQ linear made on the GPU (symmetric zeros). `perm`: the act-order row permutation.
#[allow(clippy::too_many_arguments)]
fn synthetic_q(
    gpu: &Gpu,
    ops: &Ops,
    k: usize,
    n: usize,
    bits: u32,
    group: usize,
    perm: Option<&[i32]>,
    seed: u32,
) -> Result<QLinear> {
    let qw = gpu.alloc(k / 32 * bits as usize * n * 4)?;
    ops.fill_u32(&qw, seed)?;
    let groups = k.div_ceil(group);
    let scales = gpu.alloc(groups * n * 2)?;
    // Scales that keep outputs near unit size: codes are uniform, so (q - z) has std ~ 2^bits / sqrt(12).
    let std_q = (1u64 << bits) as f32 / 12f32.sqrt();
    let s = 1.0 / (std_q * (k as f32).sqrt());
    ops.fill_f16(&scales, seed ^ 0x5ca1e, 0.5 * s, 1.5 * s)?;
    let (perm, inv_perm) = match perm {
        Some(p) => (Some(gpu.upload(p)?), Some(gpu.upload(&inverse(p))?)),
        None => (None, None),
    };
    let q = QLinear {
        qw,
        scales,
        zeros: None,
        perm,
        inv_perm,
        k,
        n,
        bits,
        group_size: group,
        kw: crate::kernels::default_kw(bits, n),
        seg: [n, n],
    };
    q.validate()?;
    Ok(q)
}

/// A Llama of `cfg`'s shape with random GPTQ weights generated on the GPU (nothing read from
/// disk): speed does not depend on the values. q/k/v and gate/up share their act-order
/// permutation, as in real checkpoints (they see the same inputs, hence the same Hessian).
pub fn synthetic(
    gpu: &Gpu,
    cfg: &Config,
    bits: u32,
    group_size: Option<usize>,
    act_order: bool,
) -> Result<Model> {
    let ops = Ops {
        gpu,
        heads: cfg.heads(),
    };
    let (h, i) = (cfg.hidden, cfg.inter);
    let g = |k: usize| group_size.unwrap_or(k);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let seed = 1000 + 16 * l as u32;
        let perm = |k: usize, s: u32| act_order.then(|| rand_perm(k, s as u64));
        let (p_qkv, p_o, p_gu, p_down) = (
            perm(h, seed),
            perm(cfg.n_heads * cfg.head_dim, seed + 1),
            perm(h, seed + 2),
            perm(i, seed + 3),
        );
        let norm = |s: u32| -> Result<Buf> {
            let b = gpu.alloc(h * 2)?;
            ops.fill_f16(&b, s, 0.9, 1.1)?;
            Ok(b)
        };
        layers.push(Layer {
            attn_norm: norm(seed + 4)?,
            ffn_norm: norm(seed + 5)?,
            qkv: Linear::Q(synthetic_q(
                gpu,
                &ops,
                h,
                cfg.qkv_cols(),
                bits,
                g(h),
                p_qkv.as_deref(),
                seed + 6,
            )?),
            o: Linear::Q(synthetic_q(
                gpu,
                &ops,
                cfg.n_heads * cfg.head_dim,
                h,
                bits,
                g(h),
                p_o.as_deref(),
                seed + 7,
            )?),
            gate_up: Linear::Q(synthetic_q(
                gpu,
                &ops,
                h,
                2 * i,
                bits,
                g(h),
                p_gu.as_deref(),
                seed + 8,
            )?),
            down: Linear::Q(synthetic_q(
                gpu,
                &ops,
                i,
                h,
                bits,
                g(i),
                p_down.as_deref(),
                seed + 9,
            )?),
        });
    }
    let embed = gpu.alloc(cfg.vocab * h * 2)?;
    ops.fill_f16(&embed, 1, -0.05, 0.05)?;
    let lm_head = gpu.alloc(cfg.vocab * h * 2)?;
    ops.fill_f16(&lm_head, 2, -0.02, 0.02)?;
    let norm = gpu.alloc(h * 2)?;
    ops.fill_f16(&norm, 3, 0.9, 1.1)?;
    gpu.sync()?;
    Ok(Model {
        cfg: cfg.clone(),
        embed,
        layers,
        norm,
        lm_head,
    })
}

/// Loads a Hugging Face Llama directory (GPTQ, or fp16/bf16/f32 safetensors as fp16) on the GPU.
pub fn load_hf(gpu: &Gpu, dir: &Path) -> Result<Model> {
    crate::load::load(gpu, dir)
}

// ---------------------------------------------------------------------------------------------
// State and forward

/// Device buffers for up to `max_rows` prefill tokens and `batch` decode streams of up to
/// `max_ctx` positions each.
pub struct State {
    pub batch: usize,
    pub max_rows: usize,
    pub max_ctx: usize,
    h: Buf,                // [R][H] f32 residual stream
    ss: Buf,               // [R][ceil(H / 128)] f32 partial sums of squares for RMSNorm
    counters: Buf,         // [RESID_TILES] u32, zero between launches (GEMV residual add)
    attn_counters: Buf,    // [R][NKV] u32, zero between launches (attention split merge)
    pub(crate) xh: Buf,    // [R][max(H, I, NH*HD)] fp16 matmul input
    part: Buf,             // partial sums, [S][R][N] f32
    q: Buf,                // [R][NH][HD] f32
    part_o: Buf,           // [R][NH][nsplit][HD]
    part_ml: Buf,          // [R][NH][nsplit][2]
    w16: Option<Vec<Buf>>, // fp16 dequantized weight slices for prefill GEMMs (dq_bufs of them)
    pub logits: Buf,       // [B][V] f32
    pub(crate) pre_tok: Buf,
    pub(crate) pre_pos: Buf,
    pub(crate) pre_seq: Buf, // [R] i32
    pub dec_tok: Buf,
    pub dec_pos: Buf,
    dec_seq: Buf,     // [B] i32
    pub history: Buf, // [B][max_ctx + 1] i32: token at each position
    kc: Vec<Buf>,
    vc: Vec<Buf>, // per layer [pages][PAGE][NKV][HD] fp16
    table: Buf,   // [B][max_pages] i32
    max_pages: usize,
    cos: Buf,
    sin: Buf, // [max_ctx][HD/2] f32
}

impl State {
    pub fn new(
        gpu: &Gpu,
        m: &Model,
        batch: usize,
        max_rows: usize,
        max_ctx: usize,
    ) -> Result<State> {
        let max_pages = max_ctx.div_ceil(PAGE);
        // Identity page table: sequence s owns pages s * max_pages ...
        let table: Vec<i32> = (0..(batch * max_pages) as i32).collect();
        Self::build(gpu, m, batch, max_rows, max_ctx, batch * max_pages, &table)
    }

    /// `kv_pages` pages of PAGE tokens per layer, and a page table of table.len() / max_pages
    /// sequences (rewritten later with `set_table` by a server that hands pages out itself).
    pub fn build(
        gpu: &Gpu,
        m: &Model,
        batch: usize,
        max_rows: usize,
        max_ctx: usize,
        kv_pages: usize,
        table: &[i32],
    ) -> Result<State> {
        let c = &m.cfg;
        let rows = batch.max(max_rows);
        let mut width = c.hidden.max(c.inter).max(c.n_heads * c.head_dim);
        let mut part = 0usize;
        let mut w16 = 0usize;
        let mut any_blas = false;
        for l in &m.layers {
            for lin in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                // GEMV rows: the decode batch, or a prefill chunk of up to 8 tokens; the
                // tensor-core kernel makes fewer splits than the GEMV for up to 32.
                let gemv_rows = batch.max(max_rows.min(crate::kernels::TC_MAX_ROWS));
                part = part
                    .max(lin.splits() * gemv_rows * lin.n())
                    .max(max_rows * lin.n());
                if let Linear::Q(q) = lin {
                    width = width.max(q.nseg() * q.k);
                    let blas = (9..=rows).any(|r| lin.blas(r));
                    if blas {
                        any_blas = true;
                        let widest = dq_parts(q).iter().map(|p| p.1).max().unwrap_or(0);
                        w16 = w16.max(lin.k() * widest);
                    }
                }
            }
        }
        let nsplit = max_ctx.div_ceil(ATTN_SPLIT);
        let max_pages = max_ctx.div_ceil(PAGE);
        let kv_bytes = kv_pages * PAGE * c.n_kv * c.head_dim * 2;
        let mut kc = Vec::new();
        let mut vc = Vec::new();
        for _ in 0..c.n_layers {
            kc.push(gpu.alloc(kv_bytes)?);
            vc.push(gpu.alloc(kv_bytes)?);
        }
        let half = c.head_dim / 2;
        let mut cos = vec![0f32; max_ctx * half];
        let mut sin = vec![0f32; max_ctx * half];
        for p in 0..max_ctx {
            for i in 0..half {
                let f = p as f64 * c.rope_theta.powf(-((2 * i) as f64) / c.head_dim as f64);
                cos[p * half + i] = f.cos() as f32;
                sin[p * half + i] = f.sin() as f32;
            }
        }
        let i32s = |n: usize| gpu.alloc(n * 4);
        Ok(State {
            batch,
            max_rows,
            max_ctx,
            h: gpu.alloc(rows * c.hidden * 4)?,
            ss: gpu.alloc(rows * c.hidden.div_ceil(128) * 4)?,
            counters: gpu.upload(&vec![0u32; crate::kernels::RESID_TILES])?,
            attn_counters: gpu.upload(&vec![0u32; rows * c.n_kv])?,
            xh: gpu.alloc(rows * width * 2)?,
            part: gpu.alloc(part * 4)?,
            q: gpu.alloc(rows * c.n_heads * c.head_dim * 4)?,
            part_o: gpu.alloc(rows * c.n_heads * nsplit * c.head_dim * 4)?,
            part_ml: gpu.alloc(rows * c.n_heads * nsplit * 2 * 4)?,
            w16: if any_blas {
                Some(
                    (0..dq_bufs())
                        .map(|_| gpu.alloc(w16 * 2))
                        .collect::<Result<Vec<_>>>()?,
                )
            } else {
                None
            },
            logits: gpu.alloc(rows * c.vocab * 4)?,
            pre_tok: i32s(max_rows)?,
            pre_pos: i32s(max_rows)?,
            pre_seq: i32s(max_rows)?,
            dec_tok: i32s(batch)?,
            dec_pos: i32s(batch)?,
            dec_seq: gpu.upload(&(0..batch as i32).collect::<Vec<_>>())?,
            history: i32s(batch * (max_ctx + 1))?,
            kc,
            vc,
            table: gpu.upload(table)?,
            max_pages,
            cos: gpu.upload(&cos)?,
            sin: gpu.upload(&sin)?,
        })
    }

    /// Rewrites the page table: row s lists sequence s's pages (at most max_ctx / PAGE).
    pub fn set_table(&self, gpu: &Gpu, rows: &[&[u32]]) -> Result<()> {
        let mut t = vec![0i32; rows.len() * self.max_pages];
        for (s, r) in rows.iter().enumerate() {
            if r.len() > self.max_pages {
                bail!(
                    "a sequence of {} pages is longer than the cache's {} positions",
                    r.len(),
                    self.max_ctx
                );
            }
            for (i, &p) in r.iter().enumerate() {
                t[s * self.max_pages + i] = p as i32;
            }
        }
        gpu.write(&self.table, 0, &t)
    }

    /// KV cache bytes.
    pub fn kv_bytes(&self) -> usize {
        self.kc.iter().chain(&self.vc).map(|b| b.bytes).sum()
    }
}

pub struct Runner<'g> {
    pub gpu: &'g Gpu,
    pub model: &'g Model,
    ops: Ops<'g>,
    /// Measurement only: launch just the matrix products (the rest of the step is skipped and
    /// its results are garbage), to split a step's time into GEMVs and everything else.
    pub only_matmuls: Cell<bool>,
}

impl<'g> Runner<'g> {
    pub fn new(gpu: &'g Gpu, model: &'g Model) -> Runner<'g> {
        Runner {
            gpu,
            model,
            only_matmuls: Cell::new(false),
            ops: Ops {
                gpu,
                heads: model.cfg.heads(),
            },
        }
    }

    /// Whether the product of `lin` for `rows` rows adds itself into the residual stream (GPTQ
    /// GEMV for one row, output width the hidden size; off with MEDITRON_FUSE_RESID=0).
    fn resid_add(&self, lin: &Linear, rows: usize) -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on =
            *ON.get_or_init(|| std::env::var("MEDITRON_FUSE_RESID").map_or(true, |v| v != "0"));
        // One row only: for 8 (run 10) the serial per-row sums at the tail cost more than the
        // add_partials launch they save (batch 8: 36.6 -> 40.3 ms/step).
        on && rows == 1
            && matches!(lin, Linear::Q(q) if q.n == self.model.cfg.hidden
                && q.n.div_ceil(128) <= crate::kernels::RESID_TILES)
    }

    /// The product of `lin` added into the residual stream st.h, with the per-tile sums of squares
    /// in st.ss (see `resid_add`); returns the number of sums of squares per row.
    fn matmul_resid(&self, st: &State, lin: &Linear, x: u64, rows: usize) -> Result<usize> {
        let Linear::Q(q) = lin else {
            bail!("residual add needs a GPTQ linear");
        };
        let add = (st.h.ptr, st.ss.ptr, st.counters.ptr);
        gptq_gemv_fused(self.gpu, q, x, st.part.ptr, rows, Some(add))?;
        Ok(q.n.div_ceil(128))
    }

    /// h += the `s` partial sums in st.part (unless `fused`: a GEMV already added them and left
    /// `s` sums of squares per row), then the RMSNorm into the next linear's input.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        st: &State,
        rows: usize,
        s: usize,
        fused: bool,
        w: u64,
        next: Option<&Linear>,
    ) -> Result<()> {
        let c = &self.model.cfg;
        let (perm, xbits, nseg) = match next {
            Some(l) => (l.perm(rows), l.xbits(rows), l.nseg(rows)),
            None => (0, 16, 1),
        };
        if fused {
            self.ops.rmsnorm(
                rows, st.h.ptr, st.ss.ptr, s, w, perm, st.xh.ptr, c.hidden, c.eps, xbits, nseg,
            )
        } else {
            self.ops.add_rmsnorm(
                st.part.ptr,
                s,
                rows,
                st.h.ptr,
                w,
                perm,
                st.xh.ptr,
                c.hidden,
                c.eps,
                st.ss.ptr,
                xbits,
                nseg,
            )
        }
    }

    /// x: [rows][K] fp16 -> st.part; returns the number of partial sums.
    fn matmul(
        &self,
        st: &State,
        lin: &Linear,
        x: u64,
        rows: usize,
        pf: Option<&Prefetch>,
    ) -> Result<usize> {
        match lin {
            Linear::Q(q) if rows <= 8 => gptq_gemv(self.gpu, q, x, st.part.ptr, rows),
            Linear::Q(q) if q.tc(rows) => gptq_gemm_tc(self.gpu, q, x, st.part.ptr, rows),
            Linear::Q(q) => {
                let pf = pf.context("GPTQ prefill without the dequantization pipeline")?;
                // One GEMM per dequantized column slice, into its columns of the output.
                for (col0, ncols) in dq_parts(q) {
                    let w16 = pf.take(self)?;
                    self.gpu.gemm_f16_ldc(
                        x,
                        w16,
                        st.part.ptr + (col0 * 4) as u64,
                        rows,
                        ncols,
                        q.k,
                        true,
                        q.n,
                    )?;
                    pf.used(self)?;
                }
                Ok(1)
            }
            Linear::F16 { w, k, n } if rows <= 8 => {
                self.ops.gemv_f16(w.ptr, x, st.part.ptr, *k, *n, rows)?;
                Ok(1)
            }
            Linear::F16 { w, k, n } => {
                self.gpu
                    .gemm_f16(x, w.ptr, st.part.ptr, rows, *n, *k, false)?;
                Ok(1)
            }
        }
    }

    /// All layers for `rows` tokens whose ids/positions/sequences are in (tok, pos, seq);
    /// leaves the final-normed hidden states in st.xh.
    pub(crate) fn layers(
        &self,
        st: &State,
        rows: usize,
        tok: u64,
        pos: u64,
        seq: u64,
        nsplit: usize,
    ) -> Result<()> {
        let c = &self.model.cfg;
        let ops = &self.ops;
        let skip = self.only_matmuls.get();
        let pf = match &st.w16 {
            Some(bufs) if rows > 8 => Prefetch::start(self, bufs, rows)?,
            _ => None,
        };
        let pf = pf.as_ref();
        if !skip {
            // A plain launch: it follows host-to-device copies of the step's tokens.
            let _plain = PdlGuard::set(self.gpu, false);
            ops.embed(tok, self.model.embed.ptr, st.h.ptr, rows, c.hidden)?;
        }
        // Programmatic dependent launch between the step's kernels, except with the
        // dequantization pipeline (its events order the two streams).
        let _pdl = PdlGuard::set(self.gpu, pf.is_none());
        let mut s = 0;
        // Whether the last product added itself into h (s is then its sums of squares per row).
        let mut fused = false;
        for (li, l) in self.model.layers.iter().enumerate() {
            if !skip {
                self.norm(st, rows, s, fused, l.attn_norm.ptr, Some(&l.qkv))?;
            }
            let (kc, vc) = (st.kc[li].ptr, st.vc[li].ptr);
            // One row: the q|k|v GEMV applies RoPE and appends k, v itself (no qkv_rope).
            let rope_fused = match &l.qkv {
                Linear::Q(q) if !skip && rows == 1 && fuse_rope() && 128 % c.head_dim == 0 => {
                    let args = RopeArgs {
                        pos,
                        seq,
                        cos: st.cos.ptr,
                        sin: st.sin.ptr,
                        q: st.q.ptr,
                        kc,
                        vc,
                        table: st.table.ptr,
                        max_pages: st.max_pages as i32,
                        nh: c.n_heads as i32,
                        nkv: c.n_kv as i32,
                        hd: c.head_dim as i32,
                        page: PAGE as i32,
                    };
                    gptq_gemv_rope(self.gpu, q, st.xh.ptr, st.part.ptr, &args, st.counters.ptr)?;
                    true
                }
                _ => false,
            };
            if !rope_fused {
                s = self.matmul(st, &l.qkv, st.xh.ptr, rows, pf)?;
            }
            if !skip && !rope_fused {
                ops.qkv_rope(
                    st.part.ptr,
                    s,
                    rows,
                    pos,
                    seq,
                    st.cos.ptr,
                    st.sin.ptr,
                    st.q.ptr,
                    kc,
                    vc,
                    st.table.ptr,
                    st.max_pages,
                )?;
            }
            if !skip {
                ops.attention(
                    st.q.ptr,
                    kc,
                    vc,
                    st.table.ptr,
                    st.max_pages,
                    pos,
                    seq,
                    st.part_o.ptr,
                    st.part_ml.ptr,
                    nsplit,
                    rows,
                    l.o.inv_perm(rows),
                    st.xh.ptr,
                    l.o.xbits(rows),
                    if fuse_attn() { st.attn_counters.ptr } else { 0 },
                )?;
            }
            // Skipping the rest (only_matmuls) leaves h alone: no residual add either.
            fused = !skip && self.resid_add(&l.o, rows);
            s = if fused {
                self.matmul_resid(st, &l.o, st.xh.ptr, rows)?
            } else {
                self.matmul(st, &l.o, st.xh.ptr, rows, pf)?
            };
            if !skip {
                self.norm(st, rows, s, fused, l.ffn_norm.ptr, Some(&l.gate_up))?;
            }
            // One row, MEDITRON_FUSE_SWIGLU=1: the gate|up GEMV applies SwiGLU itself.
            let swiglu_fused = match &l.gate_up {
                Linear::Q(q)
                    if !skip
                        && rows == 1
                        && fuse_swiglu()
                        && q.n == 2 * c.inter
                        && c.inter.is_multiple_of(128)
                        && c.inter / 128 <= crate::kernels::RESID_TILES =>
                {
                    let args = SwigluArgs {
                        inv_perm: l.down.inv_perm(rows),
                        out: st.xh.ptr,
                        inter: c.inter as i32,
                        xbits: l.down.xbits(rows) as i32,
                    };
                    gptq_gemv_swiglu(self.gpu, q, st.xh.ptr, st.part.ptr, &args, st.counters.ptr)?;
                    true
                }
                _ => false,
            };
            if !swiglu_fused {
                s = self.matmul(st, &l.gate_up, st.xh.ptr, rows, pf)?;
            }
            if !skip && !swiglu_fused {
                ops.swiglu(
                    st.part.ptr,
                    s,
                    rows,
                    l.down.inv_perm(rows),
                    st.xh.ptr,
                    c.inter,
                    l.down.xbits(rows),
                )?;
            }
            fused = !skip && self.resid_add(&l.down, rows);
            s = if fused {
                self.matmul_resid(st, &l.down, st.xh.ptr, rows)?
            } else {
                self.matmul(st, &l.down, st.xh.ptr, rows, pf)?
            };
        }
        if !skip {
            self.norm(st, rows, s, fused, self.model.norm.ptr, None)?;
        }
        Ok(())
    }

    /// One decode step for all `st.batch` streams: reads dec_tok/dec_pos, writes the greedy
    /// next token to dec_tok and history, advances dec_pos. No host synchronization.
    pub fn decode_step(&self, st: &State) -> Result<()> {
        let c = &self.model.cfg;
        let b = st.batch;
        // lm_head and argmax follow the last layer's kernels directly.
        let _pdl = PdlGuard::set(self.gpu, !self.uses_prefetch(b));
        self.layers(
            st,
            b,
            st.dec_tok.ptr,
            st.dec_pos.ptr,
            st.dec_seq.ptr,
            st.max_ctx.div_ceil(ATTN_SPLIT),
        )?;
        if b <= 8 {
            self.ops.gemv_f16(
                self.model.lm_head.ptr,
                st.xh.ptr,
                st.logits.ptr,
                c.hidden,
                c.vocab,
                b,
            )?;
        } else {
            self.gpu.gemm_f16(
                st.xh.ptr,
                self.model.lm_head.ptr,
                st.logits.ptr,
                b,
                c.vocab,
                c.hidden,
                false,
            )?;
        }
        self.ops.argmax(
            st.logits.ptr,
            c.vocab,
            b,
            st.dec_tok.ptr,
            st.dec_pos.ptr,
            st.history.ptr,
            st.max_ctx + 1,
            true,
        )
    }

    /// All layers and the lm_head for `rows` rows whose tokens, positions and page-table rows
    /// are in st.pre_tok / pre_pos / pre_seq: logits [rows][vocab] f32 in st.logits. `nsplit`
    /// must cover the largest position + 1 in ATTN_SPLIT blocks.
    pub fn step_rows(&self, st: &State, rows: usize, nsplit: usize) -> Result<()> {
        let c = &self.model.cfg;
        if rows == 0 || rows > st.batch.max(st.max_rows) {
            bail!("{rows} rows do not fit the state's {}", st.max_rows);
        }
        self.layers(
            st,
            rows,
            st.pre_tok.ptr,
            st.pre_pos.ptr,
            st.pre_seq.ptr,
            nsplit,
        )?;
        if rows <= 8 {
            self.ops.gemv_f16(
                self.model.lm_head.ptr,
                st.xh.ptr,
                st.logits.ptr,
                c.hidden,
                c.vocab,
                rows,
            )
        } else {
            self.gpu.gemm_f16(
                st.xh.ptr,
                self.model.lm_head.ptr,
                st.logits.ptr,
                rows,
                c.vocab,
                c.hidden,
                false,
            )
        }
    }

    /// Whether `rows` rows take the dequantize + cuBLAS path (and its second stream) anywhere.
    fn uses_prefetch(&self, rows: usize) -> bool {
        self.model.layers.iter().any(|l| {
            [&l.qkv, &l.o, &l.gate_up, &l.down]
                .iter()
                .any(|lin| matches!(lin, Linear::Q(_)) && lin.blas(rows))
        })
    }

    pub fn capture_decode(&self, st: &State) -> Result<Graph> {
        self.gpu.capture(|| self.decode_step(st))
    }

    /// Prefill `tokens` of sequence 0 from position `start` in chunks of st.max_rows; the greedy
    /// next token lands in dec_tok[0] / history and dec_pos[0] becomes start + len.
    pub fn prefill(&self, st: &State, tokens: &[u32], start: usize) -> Result<()> {
        let c = &self.model.cfg;
        if tokens.is_empty() || start + tokens.len() > st.max_ctx {
            bail!(
                "prefill of {} tokens at {start} does not fit the {}-token cache",
                tokens.len(),
                st.max_ctx
            );
        }
        let mut done = 0;
        while done < tokens.len() {
            let rows = (tokens.len() - done).min(st.max_rows);
            let p0 = start + done;
            let tok: Vec<i32> = tokens[done..done + rows]
                .iter()
                .map(|&t| t as i32)
                .collect();
            let pos: Vec<i32> = (p0..p0 + rows).map(|p| p as i32).collect();
            self.gpu.write(&st.pre_tok, 0, &tok)?;
            self.gpu.write(&st.pre_pos, 0, &pos)?;
            self.gpu.write(&st.pre_seq, 0, &vec![0i32; rows])?;
            self.layers(
                st,
                rows,
                st.pre_tok.ptr,
                st.pre_pos.ptr,
                st.pre_seq.ptr,
                (p0 + rows).div_ceil(ATTN_SPLIT),
            )?;
            done += rows;
            if done == tokens.len() {
                self.gpu
                    .write(&st.dec_pos, 0, &[(start + done - 1) as i32])?;
                let last = st.xh.ptr + ((rows - 1) * c.hidden * 2) as u64;
                self.ops.gemv_f16(
                    self.model.lm_head.ptr,
                    last,
                    st.logits.ptr,
                    c.hidden,
                    c.vocab,
                    1,
                )?;
                self.ops.argmax(
                    st.logits.ptr,
                    c.vocab,
                    1,
                    st.dec_tok.ptr,
                    st.dec_pos.ptr,
                    st.history.ptr,
                    st.max_ctx + 1,
                    true,
                )?;
            }
        }
        Ok(())
    }
}

/// Whether the q|k|v GEMV of one row applies RoPE and appends k, v itself (no qkv_rope
/// launch): only with MEDITRON_FUSE_ROPE=1 (run 12: no faster, 15.91 vs 15.87 ms per token).
fn fuse_rope() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_FUSE_ROPE").is_ok_and(|v| v == "1"))
}

/// Whether the gate|up GEMV of one row applies SwiGLU itself (no swiglu launch): only with
/// MEDITRON_FUSE_SWIGLU=1 (run 18, H100: 3-bit decode 13.34-13.38 -> 14.45 ms per token, 4-bit
/// 15.78 -> 16.18 ms; the last block of each gate/up tile pair sums the splits alone).
fn fuse_swiglu() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_FUSE_SWIGLU").is_ok_and(|v| v == "1"))
}

/// Whether decode attention merges its splits inside attn_split (no attn_combine launch): only
/// with MEDITRON_FUSE_ATTN=1 (run 12: 0.8 ms per token slower; one block per KV head merges
/// what attn_combine spread over 64 blocks).
fn fuse_attn() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_FUSE_ATTN").is_ok_and(|v| v == "1"))
}

/// Sets the GPU's programmatic-dependent-launch switch for a scope, restoring it after.
struct PdlGuard<'a> {
    gpu: &'a Gpu,
    prev: bool,
}

impl<'a> PdlGuard<'a> {
    fn set(gpu: &'a Gpu, on: bool) -> PdlGuard<'a> {
        let prev = gpu.set_pdl(on);
        PdlGuard { gpu, prev }
    }
}

impl Drop for PdlGuard<'_> {
    fn drop(&mut self) {
        self.gpu.set_pdl(self.prev);
    }
}

/// Buffers of the prefill dequantization pipeline: MEDITRON_DQ_BUFS (2..=4), default 2 (3 let
/// the slice after next be dequantized during this one's GEMM: no faster in run 9).
pub fn dq_bufs() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("MEDITRON_DQ_BUFS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v| (2..=4).contains(v))
            .unwrap_or(2)
    })
}

/// Column slices (col0, ncols) a GPTQ linear is dequantized and multiplied in at prefill: at
/// most MEDITRON_DQ_CHUNK million weights each (default 0 = whole linears), widths a multiple
/// of 64. Slices of 128M weights shrink the buffers by 1.1 GiB for the 70B but cost ~6 ms of a
/// 512-token prefill (run 9: narrower GEMMs), so they are off by default.
pub fn dq_parts(q: &QLinear) -> Vec<(usize, usize)> {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let chunk = *V.get_or_init(|| {
        std::env::var("MEDITRON_DQ_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }) * 1_000_000;
    let parts = if chunk == 0 {
        1
    } else {
        (q.k * q.n).div_ceil(chunk).max(1)
    };
    let width = q.n.div_ceil(parts).next_multiple_of(64).min(q.n);
    (0..q.n)
        .step_by(width)
        .map(|c| (c, width.min(q.n - c)))
        .collect()
}

/// Prefill of GPTQ weights: column slices of the coming linears are dequantized to fp16 on the
/// second stream while the current slice's GEMM runs (dequantization is memory-bound, the GEMM
/// compute-bound, so they overlap), through `dq_bufs` buffers and events, in the order the
/// forward pass uses them.
struct Prefetch<'a> {
    units: Vec<(&'a QLinear, usize, usize)>,
    bufs: &'a [Buf],
    ready: Vec<Event>,
    free: Vec<Event>,
    next: Cell<usize>,
}

impl<'a> Prefetch<'a> {
    /// None when no linear takes dequantize + cuBLAS at `rows` rows.
    fn start(r: &Runner<'a>, bufs: &'a [Buf], rows: usize) -> Result<Option<Prefetch<'a>>> {
        let mut units = Vec::new();
        for l in &r.model.layers {
            for lin in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                if let Linear::Q(q) = lin {
                    if lin.blas(rows) {
                        units.extend(dq_parts(q).into_iter().map(|(c, n)| (q, c, n)));
                    }
                }
            }
        }
        if units.is_empty() {
            return Ok(None);
        }
        let nb = bufs.len();
        let pf = Prefetch {
            units,
            bufs,
            ready: (0..nb).map(|_| Event::new()).collect::<Result<_>>()?,
            free: (0..nb).map(|_| Event::new()).collect::<Result<_>>()?,
            next: Cell::new(0),
        };
        // The second stream must not read weights or overwrite buffers before the main
        // stream's earlier work: start it after everything issued so far.
        for e in &pf.free {
            e.record(r.gpu, false)?;
        }
        for i in 0..nb - 1 {
            pf.issue(r, i)?;
        }
        Ok(Some(pf))
    }

    fn issue(&self, r: &Runner, i: usize) -> Result<()> {
        if let Some(&(q, col0, ncols)) = self.units.get(i) {
            let b = i % self.bufs.len();
            self.free[b].wait_on(r.gpu, true)?;
            gptq_dequant_cols(r.gpu, true, q, self.bufs[b].ptr, col0, ncols)?;
            self.ready[b].record(r.gpu, true)?;
        }
        Ok(())
    }

    /// The fp16 weights of the next slice, once dequantized; starts the one `bufs - 1` ahead
    /// (its buffer was freed by the GEMM before this one).
    fn take(&self, r: &Runner) -> Result<u64> {
        let i = self.next.get();
        let b = i % self.bufs.len();
        self.ready[b].wait_on(r.gpu, false)?;
        self.issue(r, i + self.bufs.len() - 1)?;
        Ok(self.bufs[b].ptr)
    }

    /// Marks the buffer just used by the main stream's GEMM as free after that GEMM.
    fn used(&self, r: &Runner) -> Result<()> {
        let i = self.next.get();
        // Recorded on the main stream, after its GEMM.
        self.free[i % self.bufs.len()].record(r.gpu, false)?;
        self.next.set(i + 1);
        Ok(())
    }
}
