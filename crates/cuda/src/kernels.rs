//! Launchers: one function per kernel, checking shapes before the launch and choosing the
//! compile-time variant (bits, batch rows, group flush, head shape) that NVRTC builds once.

use crate::driver::{Buf, Gpu};
use anyhow::{bail, Result};

pub(crate) const COMMON: &str = include_str!("kernels/common.cuh");
const GPTQ_CU: &str = include_str!("kernels/gptq.cu");
const LLAMA_CU: &str = include_str!("kernels/llama.cu");

/// Sources as NVRTC sees them (common helpers first), for compile checks.
pub fn sources() -> [(&'static str, String); 2] {
    [
        ("gptq", format!("{COMMON}\n{GPTQ_CU}")),
        ("llama", format!("{COMMON}\n{LLAMA_CU}")),
    ]
}

/// Positions per attention block (flash-decoding split) and KV page size, fixed in llama.cu.
pub const ATTN_SPLIT: usize = 64;
pub const PAGE: usize = 16;

/// A GPTQ linear layer on the device in the kernel's layout (see gptq.cu).
pub struct QLinear {
    pub qw: Buf,               // [K / 32 * bits][N] u32
    pub scales: Buf,           // [G][N] fp16
    pub zeros: Option<Buf>,    // [G][N] u8, None = symmetric
    pub perm: Option<Buf>,     // [K] i32: sorted row k is original input row perm[k]
    pub inv_perm: Option<Buf>, // [K] i32
    pub k: usize,
    pub n: usize,
    pub bits: u32,
    /// Rows per scale group; K when the checkpoint has one group (group_size -1).
    pub group_size: usize,
    /// Input rows per warp in the GEMV (64 or 128): see `default_kw`.
    pub kw: usize,
    /// Column bounds of the parts of a fused linear whose act-order permutations differ
    /// (q | k | v, gate | up): columns >= seg[0] (>= seg[1]) use permutation 1 (2), whose input
    /// is gathered separately; [n, n] when there is one permutation (or none).
    pub seg: [usize; 2],
}

/// Rows of K per warp chunk of the GEMV. 8-bit: 64 (the words of 128 rows would not fit in
/// registers). Otherwise 64 for narrow matrices (more, smaller blocks: fewer idle SMs in the last
/// wave) and 128 for wide ones; MEDITRON_GEMV_KW=64|128 overrides for experiments.
pub fn default_kw(bits: u32, n: usize) -> usize {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let o = *OVERRIDE.get_or_init(|| {
        std::env::var("MEDITRON_GEMV_KW")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v == 64 || v == 128)
    });
    if bits == 8 {
        64
    } else if let Some(v) = o {
        v
    } else if n <= 16384 {
        64
    } else {
        128
    }
}

impl QLinear {
    /// Input permutations (and gathered copies of the input): 1, 2 or 3.
    pub fn nseg(&self) -> usize {
        1 + usize::from(self.seg[0] < self.n) + usize::from(self.seg[1] < self.n)
    }
    /// Whether `rows` activation rows take the tensor-core kernel (4-bit, 9..=32 rows, parts
    /// aligned to its 64-column warps).
    pub fn tc(&self, rows: usize) -> bool {
        self.bits == 4
            && (9..=TC_MAX_ROWS).contains(&rows)
            && self
                .seg
                .iter()
                .all(|&b| b == self.n || b.is_multiple_of(64))
    }
    /// K splits the GEMV produces partial sums for.
    pub fn splits(&self) -> usize {
        self.k.div_ceil(self.kw * 8)
    }
    pub fn weight_bytes(&self) -> usize {
        self.qw.bytes + self.scales.bytes + self.zeros.as_ref().map_or(0, |z| z.bytes)
    }
    pub fn validate(&self) -> Result<()> {
        let kwv = self.kw;
        if ![3, 4, 8].contains(&self.bits)
            || (kwv != 64 && kwv != 128)
            || (self.bits == 8 && kwv != 64)
        {
            bail!("GPTQ kernels take 3, 4 or 8 bits, not {}", self.bits);
        }
        if !self.k.is_multiple_of(32) || !self.n.is_multiple_of(4) {
            bail!(
                "GPTQ layer {}x{}: K must be a multiple of 32 and N of 4",
                self.k,
                self.n
            );
        }
        let g = self.group_size;
        if !(g == self.k
            || (g.is_multiple_of(32) && (g.is_multiple_of(kwv) || kwv.is_multiple_of(g))))
        {
            bail!("GPTQ group size {g} is not supported (32, 64, 128, ... or one group)");
        }
        Ok(())
    }
}

/// x: [nb][K] fp16 in the sorted row order; out: [splits][nb][N] f32. Returns the split count.
pub fn gptq_gemv(gpu: &Gpu, w: &QLinear, x: u64, out: u64, nb: usize) -> Result<usize> {
    gptq_gemv_fused(gpu, w, x, out, nb, None)
}

/// Whether the GEMV unpacks weights with one LOP3 per fp16 pair (default; MEDITRON_GEMV_LOP3=0
/// for the plain C expression, which compiles to an AND and an OR).
pub fn gemv_lop3() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_GEMV_LOP3").map_or(true, |v| v != "0"))
}

/// Most 128-column tiles of a GEMV whose split-K sums go into the residual stream (counters).
pub const RESID_TILES: usize = 512;

/// Where a GEMV adds its result itself: (resid [nb][N] f32, ss [nb][N / 128] f32 sums of squares
/// per 128-column tile, counters [N / 128] u32, zero before and after).
pub type ResidAdd = (u64, u64, u64);

/// `gptq_gemv` that, with `resid`, also adds the product to the residual stream and writes the
/// per-tile sums of squares for the next RMSNorm (the last block of each column tile sums the
/// splits), so no add_partials is needed. Returns the split count (partials are still written).
pub fn gptq_gemv_fused(
    gpu: &Gpu,
    w: &QLinear,
    x: u64,
    out: u64,
    nb: usize,
    resid: Option<ResidAdd>,
) -> Result<usize> {
    if resid.is_some() && w.n.div_ceil(128) > RESID_TILES {
        bail!(
            "GEMV with the residual add: N = {} is over {} columns",
            w.n,
            RESID_TILES * 128
        );
    }
    gemv_launch(gpu, w, x, out, nb, resid.map_or(Fold::None, Fold::Resid))
}

/// What a GEMV does after its product, in its last block per column tile (compile-time RESID).
#[derive(Clone, Copy)]
enum Fold<'a> {
    /// Partial sums only (RESID 0).
    None,
    /// Added into the residual stream, with sums of squares (RESID 1).
    Resid(ResidAdd),
    /// RoPE and the KV-cache append of one row (RESID 2), with [N / 128] counters.
    Rope(&'a RopeArgs, u64),
    /// silu(gate) * up of one row (RESID 3), with [N / 256] counters.
    Swiglu(&'a SwigluArgs, u64),
}

/// Where the gate|up GEMV of one row puts silu(gate) * up when it applies SwiGLU itself
/// (`gptq_gemv_swiglu`); the layout of `struct SwigluArgs` in gptq.cu.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct SwigluArgs {
    /// [inter] i32: down_proj's inverse act-order permutation, or 0.
    pub inv_perm: u64,
    /// [inter] fp16, down_proj's input in `xbits`' pair order.
    pub out: u64,
    pub inter: i32,
    pub xbits: i32,
}

impl crate::driver::Arg for SwigluArgs {
    fn ptr(&self) -> *mut std::ffi::c_void {
        self as *const SwigluArgs as *mut std::ffi::c_void
    }
}

/// The gate|up product of one row with swiglu folded in: gate tile t and up tile t share counter
/// t, and the last of their blocks sums both tiles' splits (swiglu's order and arithmetic, so the
/// same bits) and writes silu(gate) * up into down_proj's input, so no swiglu launch follows.
/// `counters`: [inter / 128] u32, zero before and after. N must be 2 * inter, inter a multiple
/// of 128 with at most RESID_TILES tiles.
pub fn gptq_gemv_swiglu(
    gpu: &Gpu,
    w: &QLinear,
    x: u64,
    out: u64,
    sw: &SwigluArgs,
    counters: u64,
) -> Result<usize> {
    let inter = sw.inter as usize;
    if inter == 0
        || !inter.is_multiple_of(128)
        || w.n != 2 * inter
        || inter / 128 > RESID_TILES
        || ![3, 4, 16].contains(&sw.xbits)
    {
        bail!(
            "GEMV with SwiGLU: N = {} must be 2 x inter ({inter}), inter a multiple of 128 up to {}",
            w.n,
            RESID_TILES * 128
        );
    }
    gemv_launch(gpu, w, x, out, 1, Fold::Swiglu(sw, counters))
}

/// Where the q|k|v GEMV of one row puts its rotated outputs when it applies RoPE itself
/// (`gptq_gemv_rope`); the layout of `struct RopeArgs` in gptq.cu.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RopeArgs {
    pub pos: u64,
    pub seq: u64,
    pub cos: u64,
    pub sin: u64,
    pub q: u64,
    pub kc: u64,
    pub vc: u64,
    pub table: u64,
    pub max_pages: i32,
    pub nh: i32,
    pub nkv: i32,
    pub hd: i32,
    pub page: i32,
}

impl crate::driver::Arg for RopeArgs {
    fn ptr(&self) -> *mut std::ffi::c_void {
        self as *const RopeArgs as *mut std::ffi::c_void
    }
}

/// The q|k|v product of one row with qkv_rope folded in: the last block of each 128-column tile
/// sums the splits, rotates q and k and writes q (f32) and k, v (paged cache), so no qkv_rope
/// launch follows. `counters`: [N / 128] u32, zero before and after. head_dim must divide 128.
pub fn gptq_gemv_rope(
    gpu: &Gpu,
    w: &QLinear,
    x: u64,
    out: u64,
    rope: &RopeArgs,
    counters: u64,
) -> Result<usize> {
    let hd = rope.hd as usize;
    if hd == 0 || 128 % hd != 0 || !w.n.is_multiple_of(hd) || w.n.div_ceil(128) > RESID_TILES {
        bail!(
            "GEMV with RoPE: head_dim {hd} must divide 128 and N = {}",
            w.n
        );
    }
    gemv_launch(gpu, w, x, out, 1, Fold::Rope(rope, counters))
}

fn gemv_launch(gpu: &Gpu, w: &QLinear, x: u64, out: u64, nb: usize, fold: Fold) -> Result<usize> {
    if !(1..=8).contains(&nb) {
        bail!("GEMV batch {nb} out of 1..=8");
    }
    let no_rope = RopeArgs::default();
    let no_sw = SwigluArgs::default();
    let (mode, (rp, sp, cp), rope, sw) = match fold {
        Fold::None => (0, (0, 0, 0), &no_rope, &no_sw),
        Fold::Resid(add) => (1, add, &no_rope, &no_sw),
        Fold::Rope(r, c) => (2, (0, 0, c), r, &no_sw),
        Fold::Swiglu(s, c) => (3, (0, 0, c), &no_rope, s),
    };
    if mode >= 2 && nb != 1 {
        bail!("GEMV with RoPE or SwiGLU folded in takes one row");
    }
    let kwv = w.kw;
    let spf = if w.group_size == w.k {
        kwv / 32
    } else {
        (w.group_size.min(kwv) / 32).max(1)
    };
    let src = &sources()[0].1;
    let m = gpu.module(
        "gptq",
        src,
        &[
            ("BITS", w.bits as i64),
            ("NB", nb as i64),
            ("KW", kwv as i64),
            ("SPF", spf as i64),
            ("RESID", mode),
            ("LOP3", gemv_lop3() as i64),
        ],
    )?;
    let f = m.func("gptq_gemv")?;
    let splits = w.splits();
    let grid = (w.n.div_ceil(128) as u32, splits as u32, 1);
    let zeros = w.zeros.as_ref().map_or(0, |z| z.ptr);
    gpu.launch_dep(
        &f,
        grid,
        256,
        0,
        &[
            &w.qw.ptr,
            &w.scales.ptr,
            &zeros,
            &x,
            &out,
            &(w.k as i32),
            &(w.n as i32),
            &(w.group_size as i32),
            &(w.seg[0] as i32),
            &(w.seg[1] as i32),
            &((nb * w.k / 2) as i32),
            &rp,
            &sp,
            &cp,
            rope,
            sw,
        ],
    )?;
    Ok(splits)
}

/// The tensor-core kernel's (slabs loaded per batch, minimum blocks per SM): 1,4 (128
/// registers, 16 warps per SM; fastest of the variants timed in run 6 on an H100) unless
/// MEDITRON_TC="u,b" (u in 1, 2, 4; b in 1..=4) says otherwise (for timing the variants).
pub fn tc_variant() -> (usize, usize) {
    static V: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("MEDITRON_TC")
            .ok()
            .and_then(|v| {
                let (a, b) = v.split_once(',')?;
                let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                ([1, 2, 4].contains(&a) && (1..=4).contains(&b)).then_some((a, b))
            })
            .unwrap_or((1, 4))
    })
}

/// The tensor-core kernel's cp.async ring: (slabs per warp, whether the activations go through
/// it too); (0, false): weights loaded into registers, `tc_variant`'s u slabs at a time.
/// MEDITRON_TC_ASYNC=A (weights) or Ax (weights and activations), A in 2..=16, or 0; default
/// 2x (run 16, H200: batch-32 step 41.95 -> 40.81 ms; the weights alone through a deeper ring
/// were no faster).
pub fn tc_async() -> (usize, bool) {
    static V: std::sync::OnceLock<(usize, bool)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let v = std::env::var("MEDITRON_TC_ASYNC").unwrap_or_else(|_| "2x".into());
        let v = v.trim();
        let (a, x) = match v.strip_suffix('x') {
            Some(a) => (a, true),
            None => (v, false),
        };
        a.parse()
            .ok()
            .filter(|a| (2..=16).contains(a))
            .map_or((0, false), |a| (a, x))
    })
}

/// Whether the tensor-core kernel loads each group's scales once (symmetric weights only): on
/// unless MEDITRON_TC_HOIST=0.
pub fn tc_hoist() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_TC_HOIST").map_or(true, |v| v != "0"))
}

fn tc_module(
    gpu: &Gpu,
    rows: usize,
    u: usize,
    b: usize,
    ring: (usize, bool),
    hoist: bool,
) -> Result<&'static crate::driver::Module> {
    gpu.module(
        "gptq",
        &sources()[0].1,
        &[
            ("BITS", 4),
            ("NT", rows.div_ceil(8) as i64),
            ("TCU", u as i64),
            ("TCB", b as i64),
            ("TCA", ring.0 as i64),
            ("TCX", ring.1 as i64),
            ("TCS", hoist as i64),
        ],
    )
}

/// Registers and local bytes of the tensor-core kernel variant (u, b, ring) for `rows` rows.
pub fn tc_resources(
    gpu: &Gpu,
    rows: usize,
    u: usize,
    b: usize,
    ring: (usize, bool),
) -> Result<(i32, i32)> {
    tc_module(gpu, rows, u, b, ring, tc_hoist())?
        .func("gptq_gemm_tc")?
        .resources()
}

/// Most activation rows of the tensor-core kernel, and the input rows each of its blocks covers.
pub const TC_MAX_ROWS: usize = 32;
pub const TC_KCH: usize = 1024;

/// Batched 4-bit product on the tensor cores for 9..=32 rows; x as for `gptq_gemv` (sorted,
/// pair order, one copy per segment). out: [splits][rows][N] f32. Returns the split count.
pub fn gptq_gemm_tc(gpu: &Gpu, w: &QLinear, x: u64, out: u64, rows: usize) -> Result<usize> {
    let (u, b) = tc_variant();
    gptq_gemm_tc_variant(gpu, w, x, out, rows, u, b, tc_async())
}

/// `gptq_gemm_tc` with its compile-time variant named (see `tc_variant`, `tc_async`; the ring
/// needs N % 4 == 0 and falls back to register loads otherwise).
#[allow(clippy::too_many_arguments)]
pub fn gptq_gemm_tc_variant(
    gpu: &Gpu,
    w: &QLinear,
    x: u64,
    out: u64,
    rows: usize,
    u: usize,
    b: usize,
    ring: (usize, bool),
) -> Result<usize> {
    if !w.tc(rows) {
        bail!(
            "tensor-core GEMM: {}-bit, {rows} rows, parts {:?} not supported",
            w.bits,
            w.seg
        );
    }
    let ring = if w.n.is_multiple_of(4) {
        ring
    } else {
        (0, false)
    };
    let hoist = tc_hoist() && w.zeros.is_none();
    let f = tc_module(gpu, rows, u, b, ring, hoist)?.func("gptq_gemm_tc")?;
    // 4 warps x slabs x (4 x 72 weight words + NT x 8 rows x 16 activation words).
    let slot = 4 * 72 + if ring.1 { rows.div_ceil(8) * 8 * 16 } else { 0 };
    let smem = (4 * ring.0 * slot * 4) as u32;
    if smem > 48 * 1024 {
        bail!(
            "tensor-core GEMM: a ring of {ring:?} slabs needs {smem} bytes of shared memory per block (at most 48 KB)"
        );
    }
    let splits = w.k.div_ceil(TC_KCH);
    let zeros = w.zeros.as_ref().map_or(0, |z| z.ptr);
    gpu.launch_dep(
        &f,
        (w.n.div_ceil(256) as u32, splits as u32, 1),
        128,
        smem,
        &[
            &w.qw.ptr,
            &w.scales.ptr,
            &zeros,
            &x,
            &out,
            &(w.k as i32),
            &(w.n as i32),
            &(w.group_size as i32),
            &(rows as i32),
            &(w.seg[0] as i32),
            &(w.seg[1] as i32),
            &((rows * w.k / 2) as i32),
            &(TC_KCH as i32),
        ],
    )?;
    Ok(splits)
}

/// Checkpoint qweight columns (AutoGPTQ packing, on the device at `raw`, [K * bits / 32][ncols])
/// into `dst` (the kernel layout of a linear with `n` columns) at columns col0.., rows sorted by
/// `perm` (device [K] i32, 0 = identity).
#[allow(clippy::too_many_arguments)]
pub fn gptq_repack_on_gpu(
    gpu: &Gpu,
    bits: u32,
    raw: u64,
    perm: u64,
    dst: u64,
    k: usize,
    ncols: usize,
    n: usize,
    col0: usize,
) -> Result<()> {
    let m = gpu.module("gptq", &sources()[0].1, &[("BITS", bits as i64)])?;
    gpu.launch(
        &m.func("gptq_repack")?,
        (ncols.div_ceil(256) as u32, (k / 32) as u32, 1),
        256,
        0,
        &[
            &raw,
            &perm,
            &dst,
            &(k as i32),
            &(ncols as i32),
            &(n as i32),
            &(col0 as i32),
        ],
    )
}

/// Checkpoint qzeros [G][ncols * bits / 32] (device) into byte zero points [G][n] at col0...
#[allow(clippy::too_many_arguments)]
pub fn gptq_zeros_on_gpu(
    gpu: &Gpu,
    bits: u32,
    qz: u64,
    dst: u64,
    groups: usize,
    ncols: usize,
    n: usize,
    col0: usize,
    offset: u32,
) -> Result<()> {
    let m = gpu.module("gptq", &sources()[0].1, &[("BITS", bits as i64)])?;
    gpu.launch(
        &m.func("gptq_unpack_zeros")?,
        (ncols.div_ceil(256) as u32, groups as u32, 1),
        256,
        0,
        &[
            &qz,
            &dst,
            &(ncols as i32),
            &(n as i32),
            &(col0 as i32),
            &(offset as i32),
        ],
    )
}

/// dst[r][col0 + c] = src[r][c], 16-bit values, `rows` x `ncols` into a row stride of `n`.
pub fn copy_cols_u16(
    gpu: &Gpu,
    src: u64,
    dst: u64,
    rows: usize,
    ncols: usize,
    n: usize,
    col0: usize,
) -> Result<()> {
    let m = gpu.module("gptq", &sources()[0].1, &[("BITS", 4)])?;
    gpu.launch(
        &m.func("copy_cols_u16")?,
        (ncols.div_ceil(256) as u32, rows as u32, 1),
        256,
        0,
        &[&src, &dst, &(ncols as i32), &(n as i32), &(col0 as i32)],
    )
}

/// (registers, local bytes) of the GEMV variant `gptq_gemv` would launch for `w` and `nb`.
pub fn gptq_gemv_resources(gpu: &Gpu, w: &QLinear, nb: usize) -> Result<(i32, i32)> {
    let kwv = w.kw;
    let spf = if w.group_size == w.k {
        kwv / 32
    } else {
        (w.group_size.min(kwv) / 32).max(1)
    };
    let m = gpu.module(
        "gptq",
        &sources()[0].1,
        &[
            ("BITS", w.bits as i64),
            ("NB", nb as i64),
            ("KW", kwv as i64),
            ("SPF", spf as i64),
            ("RESID", 0),
            ("LOP3", gemv_lop3() as i64),
        ],
    )?;
    m.func("gptq_gemv")?.resources()
}

/// Dequantizes to fp16 [K][N] at `dst`, rows in the checkpoint's original order, on `stream`.
pub fn gptq_dequant_on(gpu: &Gpu, side: bool, w: &QLinear, dst: u64) -> Result<()> {
    gptq_dequant_cols(gpu, side, w, dst, 0, w.n)
}

/// Dequantizes columns [col0, col0 + ncols) to an fp16 [K][ncols] slice at `dst` (rows in the
/// checkpoint's original order), on the main or the second stream.
pub fn gptq_dequant_cols(
    gpu: &Gpu,
    side: bool,
    w: &QLinear,
    dst: u64,
    col0: usize,
    ncols: usize,
) -> Result<()> {
    if ncols == 0 || col0 + ncols > w.n {
        bail!(
            "dequantizing columns {col0}..+{ncols} of a {}-column linear",
            w.n
        );
    }
    let m = gpu.module("gptq", &sources()[0].1, &[("BITS", w.bits as i64)])?;
    let f = m.func("gptq_dequant")?;
    let zeros = w.zeros.as_ref().map_or(0, |z| z.ptr);
    gpu.launch_on(
        side,
        &f,
        (ncols.div_ceil(256) as u32, (w.k / 32) as u32, 1),
        256,
        0,
        &[
            &w.qw.ptr,
            &w.scales.ptr,
            &zeros,
            &dst,
            &(w.k as i32),
            &(w.n as i32),
            &(w.group_size as i32),
            &w.perm.as_ref().map_or(0, |p| p.ptr),
            &(w.seg[0] as i32),
            &(w.seg[1] as i32),
            &(col0 as i32),
            &(ncols as i32),
        ],
    )
}

/// Dequantizes to fp16 [K][N] (original row order) at `dst`.
pub fn gptq_dequant(gpu: &Gpu, w: &QLinear, dst: u64) -> Result<()> {
    gptq_dequant_on(gpu, false, w, dst)
}

/// Whether attn_split's blocks past a row's position return at once (default; the combine
/// reads only the blocks with keys); MEDITRON_ATTN_SKIP_EMPTY=0 has them write empty partials
/// as before run 14.
pub fn attn_skip_empty() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_ATTN_SKIP_EMPTY").map_or(true, |v| v != "0"))
}

/// `Ops::attention` of more rows than this takes the tiled tensor-core kernel.
pub const TILED_ATTN_MIN_ROWS: usize = 32;

/// The tiled attention kernel is used unless MEDITRON_ATTN_TILE=0 (for timing the old path).
pub fn tiled_attention_enabled() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_ATTN_TILE").map_or(true, |v| v != "0"))
}

/// Head shape of the attention kernels.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

fn llama(gpu: &Gpu, h: Heads, nbf: usize) -> Result<&'static crate::driver::Module> {
    if !h.head_dim.is_multiple_of(64)
        || h.head_dim > 256
        || h.n_kv == 0
        || !h.n_heads.is_multiple_of(h.n_kv)
    {
        bail!("attention kernels need head_dim a multiple of 64 (<= 256) and heads a multiple of kv heads: {h:?}");
    }
    gpu.module(
        "llama",
        &sources()[1].1,
        &[
            ("HD", h.head_dim as i64),
            ("GQA", (h.n_heads / h.n_kv) as i64),
            ("PAGE", PAGE as i64),
            ("SPLIT", ATTN_SPLIT as i64),
            ("NBF", nbf as i64),
        ],
    )
}

pub struct Ops<'g> {
    pub gpu: &'g Gpu,
    pub heads: Heads,
}

impl<'g> Ops<'g> {
    fn m(&self) -> Result<&'static crate::driver::Module> {
        llama(self.gpu, self.heads, 1)
    }

    pub fn embed(&self, tok: u64, emb: u64, h: u64, rows: usize, hidden: usize) -> Result<()> {
        let f = self.m()?.func("embed")?;
        self.gpu.launch_dep(
            &f,
            (rows as u32, 1, 1),
            256,
            0,
            &[&tok, &emb, &h, &(hidden as i32)],
        )
    }

    /// h += sum of `s` partials; out = fp16(rmsnorm(h) * w) gathered through perm into the
    /// consumer's pair layout (`xbits`: its weight bits, 16 for fp16/cuBLAS), `nseg` copies
    /// (perm [nseg][hidden], out [nseg][rows][hidden]). `ss`: scratch of rows * ceil(hidden /
    /// 256) f32.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm(
        &self,
        part: u64,
        s: usize,
        rows: usize,
        h: u64,
        w: u64,
        perm: u64,
        out: u64,
        hidden: usize,
        eps: f32,
        ss: u64,
        xbits: u32,
        nseg: usize,
    ) -> Result<()> {
        let m = self.m()?;
        let nb = hidden.div_ceil(256);
        if nb > 256 {
            bail!("hidden size {hidden} is over the norm kernel's 65536");
        }
        self.gpu.launch_dep(
            &m.func("add_partials")?,
            (nb as u32, rows as u32, 1),
            256,
            0,
            &[
                &part,
                &(s as i32),
                &(rows as i32),
                &h,
                &ss,
                &(hidden as i32),
            ],
        )?;
        self.rmsnorm(rows, h, ss, nb, w, perm, out, hidden, eps, xbits, nseg)
    }

    /// out = fp16(rmsnorm(h) * w) gathered as `add_rmsnorm` does, from h and `nss` (<= 256)
    /// partial sums of squares per row already in `ss` (written by add_partials or by a GEMV
    /// with the residual add).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        rows: usize,
        h: u64,
        ss: u64,
        nss: usize,
        w: u64,
        perm: u64,
        out: u64,
        hidden: usize,
        eps: f32,
        xbits: u32,
        nseg: usize,
    ) -> Result<()> {
        if nss > 256 {
            bail!("{nss} partial sums of squares are over the norm kernel's 256");
        }
        let m = self.m()?;
        self.gpu.launch_dep(
            &m.func("rmsnorm_gather")?,
            (hidden.div_ceil(256) as u32, rows as u32, nseg.max(1) as u32),
            256,
            0,
            &[
                &h,
                &ss,
                &(nss as i32),
                &w,
                &perm,
                &out,
                &(hidden as i32),
                &eps,
                &(xbits as i32),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope(
        &self,
        part: u64,
        s: usize,
        rows: usize,
        pos: u64,
        seq: u64,
        cos: u64,
        sin: u64,
        q: u64,
        kc: u64,
        vc: u64,
        table: u64,
        max_pages: usize,
    ) -> Result<()> {
        let h = self.heads;
        let f = self.m()?.func("qkv_rope")?;
        self.gpu.launch_dep(
            &f,
            (rows as u32, (h.n_heads + 2 * h.n_kv) as u32, 1),
            (h.head_dim / 2) as u32,
            0,
            &[
                &part,
                &(s as i32),
                &(rows as i32),
                &pos,
                &seq,
                &cos,
                &sin,
                &q,
                &kc,
                &vc,
                &table,
                &(max_pages as i32),
                &(h.n_heads as i32),
                &(h.n_kv as i32),
            ],
        )
    }

    /// Attention of `rows` query tokens over their sequences' cached keys/values, written as
    /// fp16 [rows][n_heads * head_dim] scattered through inv_perm (o_proj's sorted order).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: u64,
        kc: u64,
        vc: u64,
        table: u64,
        max_pages: usize,
        pos: u64,
        seq: u64,
        part_o: u64,
        part_ml: u64,
        nsplit: usize,
        rows: usize,
        inv_perm: u64,
        out: u64,
        xbits: u32,
        counters: u64,
    ) -> Result<()> {
        if rows > TILED_ATTN_MIN_ROWS && tiled_attention_enabled() {
            return self.attention_tiled(
                q, kc, vc, table, max_pages, pos, seq, rows, inv_perm, out, xbits,
            );
        }
        self.attention_split(
            q, kc, vc, table, max_pages, pos, seq, part_o, part_ml, nsplit, rows, inv_perm, out,
            xbits, counters,
        )
    }

    /// Flash-decoding attention (attn_split + attn_combine): one block per row, KV head and
    /// ATTN_SPLIT positions; the decode path. With `counters` (rows x n_kv u32, zero before and
    /// after) the last split block of each row and KV head merges the splits itself and no
    /// attn_combine is launched.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_split(
        &self,
        q: u64,
        kc: u64,
        vc: u64,
        table: u64,
        max_pages: usize,
        pos: u64,
        seq: u64,
        part_o: u64,
        part_ml: u64,
        nsplit: usize,
        rows: usize,
        inv_perm: u64,
        out: u64,
        xbits: u32,
        counters: u64,
    ) -> Result<()> {
        let h = self.heads;
        let m = self.m()?;
        let scale = 1.0 / (h.head_dim as f32).sqrt();
        self.gpu.launch_dep(
            &m.func("attn_split")?,
            (rows as u32, h.n_kv as u32, nsplit as u32),
            256,
            0,
            &[
                &q,
                &kc,
                &vc,
                &table,
                &(max_pages as i32),
                &pos,
                &seq,
                &part_o,
                &part_ml,
                &(h.n_kv as i32),
                &scale,
                &counters,
                &inv_perm,
                &out,
                &(xbits as i32),
                &(attn_skip_empty() as i32),
            ],
        )?;
        if counters != 0 {
            return Ok(());
        }
        self.gpu.launch_dep(
            &m.func("attn_combine")?,
            (rows as u32, h.n_heads as u32, 1),
            h.head_dim as u32,
            0,
            &[
                &part_o,
                &part_ml,
                &(nsplit as i32),
                &pos,
                &inv_perm,
                &out,
                &(h.n_heads as i32),
                &(xbits as i32),
            ],
        )
    }

    /// The tensor-core attention of many rows at once (attn_prefill in llama.cu): each key and
    /// value is read once per block of rows instead of once per row. Same inputs and output as
    /// `attention` (which calls it for more than TILED_ATTN_MIN_ROWS rows).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tiled(
        &self,
        q: u64,
        kc: u64,
        vc: u64,
        table: u64,
        max_pages: usize,
        pos: u64,
        seq: u64,
        rows: usize,
        inv_perm: u64,
        out: u64,
        xbits: u32,
    ) -> Result<()> {
        let h = self.heads;
        let gqa = h.n_heads / h.n_kv;
        let warps = 4;
        if gqa > warps * 16 {
            bail!(
                "tiled attention takes at most {} query heads per KV head",
                warps * 16
            );
        }
        let qt = warps * 16 / gqa;
        let m = self.m()?;
        let scale = 1.0 / (h.head_dim as f32).sqrt();
        self.gpu.launch_dep(
            &m.func("attn_prefill")?,
            (rows.div_ceil(qt) as u32, h.n_kv as u32, 1),
            (warps * 32) as u32,
            0,
            &[
                &q,
                &kc,
                &vc,
                &table,
                &(max_pages as i32),
                &pos,
                &seq,
                &(rows as i32),
                &inv_perm,
                &out,
                &(h.n_kv as i32),
                &scale,
                &(xbits as i32),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn swiglu(
        &self,
        part: u64,
        s: usize,
        rows: usize,
        inv_perm: u64,
        out: u64,
        inter: usize,
        xbits: u32,
    ) -> Result<()> {
        let f = self.m()?.func("swiglu")?;
        self.gpu.launch_dep(
            &f,
            (inter.div_ceil(256) as u32, rows as u32, 1),
            256,
            0,
            &[
                &part,
                &(s as i32),
                &(rows as i32),
                &inv_perm,
                &out,
                &(inter as i32),
                &(xbits as i32),
            ],
        )
    }

    /// out[b][n] = W[n][:] . x[b][:] for fp16 W [N][K]; rows 1..=8.
    pub fn gemv_f16(
        &self,
        w: u64,
        x: u64,
        out: u64,
        k: usize,
        n: usize,
        rows: usize,
    ) -> Result<()> {
        if !k.is_multiple_of(8) || !(1..=8).contains(&rows) {
            bail!("fp16 GEMV needs K % 8 == 0 (K = {k}) and 1..=8 rows ({rows})");
        }
        let f = llama(self.gpu, self.heads, rows)?.func("gemv_f16")?;
        self.gpu.launch_dep(
            &f,
            (n.div_ceil(8) as u32, 1, 1),
            256,
            0,
            &[&w, &x, &out, &(k as i32), &(n as i32)],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn argmax(
        &self,
        logits: u64,
        vocab: usize,
        rows: usize,
        tok: u64,
        pos: u64,
        history: u64,
        hist_len: usize,
        advance: bool,
    ) -> Result<()> {
        let f = self.m()?.func("argmax_step")?;
        self.gpu.launch_dep(
            &f,
            (rows as u32, 1, 1),
            1024,
            0,
            &[
                &logits,
                &(vocab as i32),
                &tok,
                &pos,
                &history,
                &(hist_len as i32),
                &(advance as i32),
            ],
        )
    }

    pub fn fill_u32(&self, dst: &Buf, seed: u32) -> Result<()> {
        let f = self.m()?.func("fill_u32")?;
        let n = (dst.bytes / 4) as u64;
        self.gpu
            .launch(&f, (1024, 1, 1), 256, 0, &[&dst.ptr, &n, &seed])
    }

    pub fn fill_f16(&self, dst: &Buf, seed: u32, lo: f32, hi: f32) -> Result<()> {
        let f = self.m()?.func("fill_f16")?;
        let n = (dst.bytes / 2) as u64;
        self.gpu
            .launch(&f, (1024, 1, 1), 256, 0, &[&dst.ptr, &n, &seed, &lo, &hi])
    }
}
