//! Q4_0, Q4_1 and Q8_0 weights repacked at load time into 16-row groups for AVX-512 VNNI.
//!
//! GGUF stores each output row as a run of 32-element blocks. Reading one row at a time, a
//! 512-bit integer dot product covers at most two blocks, and every block then needs its own
//! scale conversion, int-to-float conversion and horizontal sum. Here 16 consecutive rows are
//! interleaved block by block so that lane `i` of a 512-bit vector belongs to row `i`: eight
//! `vpdpbusd` (4 elements each, the activation's 4 bytes broadcast to every lane) give the
//! 16 rows' exact integer dot products for one block, and one conversion plus one fused
//! multiply-add applies the 16 row scales at once. For a batch of tokens (prefill) the
//! unpacked weights of a block are reused from registers for every token of the tile.
//!
//! Layout of one group of 16 rows (rows `16g..16g+16`), block after block:
//!
//! | format | bytes per block | content |
//! |---|---|---|
//! | Q4 | 320 | 16 x f16 `d`; 16 x f16 `m`; then 4 x 64 bytes: chunk `k`, lane `i` = row `i`'s GGUF nibble bytes `4k..4k+4` |
//! | Q8 | 544 | 16 x f16 `d`; then 8 x 64 bytes: chunk `k`, lane `i` = row `i`'s 4 values `4k..4k+4`, each + 128 (as u8) |
//! | Q4G | 1088 per 4 blocks | 16 x f16 `d`; 16 x f16 `-z`; then the 4 blocks' 256 bytes of nibbles, each as in Q4 |
//!
//! Q4 values are `q * d + m` (Q4_1 as stored; Q4_0's `(q - 8) * d` with `m = -8 d`, exact in
//! f16); a GGUF nibble byte `j` holds element `j` (low) and `j + 16` (high), so chunk `k`
//! masked gives elements `4k..4k+4` and shifted gives `16+4k..`. Q8 values are `(u - 128) * d`:
//! the integer dot product starts from `-128 * sum(x)`, so it stays exact. Q4_1 and Q8_0 keep their
//! GGUF sizes (20 and 34 bytes per row-block); Q4_0 grows from 18 to 20.
//!
//! The integer sums per (row, block) are the same as the row-at-a-time kernels'; only the
//! order of the float additions differs.

use super::ahead::AheadWindow;
use super::dot::{f16_at, QuantKind};
use super::matmul::{WeightFormat, WeightView};
use super::pool::ThreadPool;
use super::q8::QK;
use super::Features;
use half::f16;

/// Rows per interleaved group: one per 32-bit lane of a 512-bit vector.
pub const GROUP: usize = 16;

/// The two packed layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    /// 4-bit values `q * d + m` (from Q4_0 or Q4_1).
    Q4,
    /// 8-bit values `q * d` (from Q8_0).
    Q8,
    /// 4-bit values `d * (q - z)` (from GPTQ, by [`pack_gptq4`]): the Q4 layout with `-z`
    /// (a small integer, exact in f16) where Q4 keeps `m`; `m = -d z` is formed in f32.
    Q4Z,
    /// [`PackedKind::Q4Z`] with one scale and zero per run of 4 blocks (128 inputs; the last
    /// run may be shorter), for GPTQ groups of 128 or more: 4.25 bits per weight instead of 5,
    /// and the scales applied once per run.
    Q4G,
}

/// Blocks of 32 inputs sharing one header in [`PackedKind::Q4G`].
const SUPER: usize = 4;

impl PackedKind {
    /// Bytes of one block of one row (the group holds 16 of them).
    pub fn block_bytes(self) -> usize {
        match self {
            PackedKind::Q4 | PackedKind::Q4Z => 20,
            PackedKind::Q8 => 34,
            PackedKind::Q4G => 17,
        }
    }

    /// Bytes of one row of `nb` blocks.
    pub fn row_bytes(self, nb: usize) -> usize {
        match self {
            PackedKind::Q4G => nb * 16 + nb.div_ceil(SUPER) * 4,
            _ => nb * self.block_bytes(),
        }
    }

    /// Bytes of one group of 16 rows of `nb` blocks.
    fn group_bytes(self, nb: usize) -> usize {
        self.row_bytes(nb) * GROUP
    }

    /// Offsets within a group's data of block `b`'s header (`d`, then the offset field) and
    /// of its nibbles (4 x 64 bytes), for the 4-bit kinds.
    fn q4_block(self, b: usize) -> (usize, usize) {
        match self {
            PackedKind::Q4G => {
                let h = b / SUPER * (64 + 256 * SUPER);
                (h, h + 64 + 256 * (b % SUPER))
            }
            _ => (b * 320, b * 320 + 64),
        }
    }

    fn group_block_bytes(self) -> usize {
        self.block_bytes() * GROUP
    }
}

/// Whether weights should be repacked on this CPU: the packed kernels want AVX-512 VNNI
/// (elsewhere the row-at-a-time kernels are faster than the portable packed one).
/// `MEDITRON_NO_PACK=1` keeps the file's layout (for comparisons).
pub fn worth_packing(feat: Features) -> bool {
    feat.avx512_vnni && std::env::var_os("MEDITRON_NO_PACK").is_none()
}

/// Repacks GGUF rows (`rows` x `cols`, `kind` blocks) into 16-row groups; None when the shape
/// does not allow it (rows not a multiple of 16) or a Q4_0 offset would overflow f16.
pub fn pack(
    kind: QuantKind,
    data: &[u8],
    rows: usize,
    cols: usize,
) -> Option<(PackedKind, Vec<u8>)> {
    let mut out = vec![0u8; packed_len(kind, rows, cols)?];
    let pk = pack_into(kind, data, rows, cols, &mut out)?;
    Some((pk, out))
}

/// The bytes [`pack`] makes of a `rows` x `cols` matrix of `kind`; None when it cannot.
pub fn packed_len(kind: QuantKind, rows: usize, cols: usize) -> Option<usize> {
    if rows == 0 || !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK) {
        return None;
    }
    Some(rows * (cols / QK) * packed_kind(kind).block_bytes())
}

fn packed_kind(kind: QuantKind) -> PackedKind {
    match kind {
        QuantKind::Q4_0 | QuantKind::Q4_1 => PackedKind::Q4,
        QuantKind::Q8_0 => PackedKind::Q8,
    }
}

/// [`pack`] into `out` (of [`packed_len`] bytes, e.g. part of one buffer for a whole model).
pub fn pack_into(
    kind: QuantKind,
    data: &[u8],
    rows: usize,
    cols: usize,
    out: &mut [u8],
) -> Option<PackedKind> {
    if packed_len(kind, rows, cols)? != out.len() {
        return None;
    }
    let nb = cols / QK;
    let src_bb = kind.block_bytes();
    if data.len() != rows * nb * src_bb {
        return None;
    }
    let pk = packed_kind(kind);
    let gbb = pk.group_block_bytes();
    for g in 0..rows / GROUP {
        for b in 0..nb {
            let dst = &mut out[(g * nb + b) * gbb..(g * nb + b + 1) * gbb];
            for i in 0..GROUP {
                let r = g * GROUP + i;
                let src = &data[(r * nb + b) * src_bb..(r * nb + b + 1) * src_bb];
                match kind {
                    QuantKind::Q4_0 => {
                        let d = f16::from_le_bytes([src[0], src[1]]);
                        let m = f16::from_f32(-8.0 * d.to_f32());
                        if !m.is_finite() || m.to_f32() != -8.0 * d.to_f32() {
                            return None;
                        }
                        dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
                        dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&m.to_le_bytes());
                        put_q4_nibbles(&mut dst[64..], i, &src[2..18]);
                    }
                    QuantKind::Q4_1 => {
                        dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
                        dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&src[2..4]);
                        put_q4_nibbles(&mut dst[64..], i, &src[4..20]);
                    }
                    QuantKind::Q8_0 => {
                        dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
                        for k in 0..8 {
                            for j in 0..4 {
                                let v = src[2 + 4 * k + j] as i8;
                                dst[32 + 64 * k + 4 * i + j] = (v as i16 + 128) as u8;
                            }
                        }
                    }
                }
            }
        }
    }
    Some(pk)
}

/// Row `lane`'s 16 nibble bytes of a block into the 4 x 64 bytes at `dst`.
fn put_q4_nibbles(dst: &mut [u8], lane: usize, qs: &[u8]) {
    for k in 0..4 {
        dst[64 * k + 4 * lane..64 * k + 4 * lane + 4].copy_from_slice(&qs[4 * k..4 * k + 4]);
    }
}

/// Repacks a 4-bit GPTQ matrix already in [`super::gptq::repack`]'s row layout (per row and
/// block of 32 inputs: f16 scale, i16 zero, 16 bytes of nibbles in the Q4 order) into
/// 16-row groups: [`PackedKind::Q4G`] when every run of 4 blocks shares its scale and zero
/// (groups of 128 or more, act-order included, since repacking sorted inputs by group), else
/// [`PackedKind::Q4Z`]; None when the shape does not allow it. The input permutation of
/// act-order stays with the caller.
pub fn pack_gptq4(data: &[u8], rows: usize, cols: usize) -> Option<(PackedKind, Vec<u8>)> {
    const SRC: usize = 20;
    if rows == 0 || !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK) {
        return None;
    }
    let nb = cols / QK;
    if data.len() != rows * nb * SRC {
        return None;
    }
    let src = |r: usize, b: usize| &data[(r * nb + b) * SRC..(r * nb + b + 1) * SRC];
    let shared =
        (0..rows).all(|r| (0..nb).all(|b| src(r, b)[..4] == src(r, b / SUPER * SUPER)[..4]));
    let kind = if shared {
        PackedKind::Q4G
    } else {
        PackedKind::Q4Z
    };
    let gb = kind.group_bytes(nb);
    let mut out = vec![0u8; rows * kind.row_bytes(nb)];
    for g in 0..rows / GROUP {
        let dst = &mut out[g * gb..(g + 1) * gb];
        for b in 0..nb {
            let (hdr, nib) = kind.q4_block(b);
            for i in 0..GROUP {
                let src = src(g * GROUP + i, b);
                let z = i16::from_le_bytes([src[2], src[3]]);
                dst[hdr + 2 * i..hdr + 2 * i + 2].copy_from_slice(&src[0..2]);
                dst[hdr + 32 + 2 * i..hdr + 34 + 2 * i]
                    .copy_from_slice(&f16::from_f32(-(z as f32)).to_le_bytes());
                put_q4_nibbles(&mut dst[nib..nib + 256], i, &src[4..20]);
            }
        }
    }
    Some((kind, out))
}

/// Any matrix (f32/f16/bf16 rows, through `w.dequantize_row`) rounded to Q8_0 as llama.cpp
/// rounds it (per block of 32: `d = amax / 127` stored as f16, `q = round(x / d)`) and packed as
/// [`PackedKind::Q8`]; None when the shape does not allow it. GPTQ checkpoints keep `lm_head`
/// in fp16, which for a small model is half of the bytes read per decoded token; the GGUF
/// files of the same model store it at 8 bits.
pub fn pack_as_q8(w: &WeightView) -> Option<Vec<u8>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 || !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK) || w.perm.is_some() {
        return None;
    }
    let src_bb = QuantKind::Q8_0.block_bytes();
    let mut q8 = vec![0u8; rows * cols / QK * src_bb];
    let mut row = vec![0f32; cols];
    for (r, dst) in q8.chunks_exact_mut(cols / QK * src_bb).enumerate() {
        w.dequantize_row(r, &mut row);
        for (x, b) in row.chunks_exact(QK).zip(dst.chunks_exact_mut(src_bb)) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            for (q, v) in b[2..].iter_mut().zip(x) {
                *q = (v * inv).round() as i8 as u8;
            }
        }
    }
    pack(QuantKind::Q8_0, &q8, rows, cols).map(|(_, data)| data)
}

/// Row `r` of a packed matrix expanded to f32 (`out.len()` = cols).
pub fn dequantize_row(kind: PackedKind, data: &[u8], rows: usize, r: usize, out: &mut [f32]) {
    let nb = out.len() / QK;
    let gbb = kind.group_block_bytes();
    let (g, i) = (r / GROUP, r % GROUP);
    debug_assert!(r < rows);
    let gb = kind.group_bytes(nb);
    let wg = &data[g * gb..(g + 1) * gb];
    for (b, o) in out.chunks_exact_mut(QK).enumerate() {
        match kind {
            PackedKind::Q4 | PackedKind::Q4Z | PackedKind::Q4G => {
                let (hdr, nib) = kind.q4_block(b);
                let d = f16_at(wg, hdr + 2 * i);
                let m = offset(kind, d, f16_at(wg, hdr + 32 + 2 * i));
                for e in 0..QK / 2 {
                    let byte = wg[nib + 64 * (e / 4) + 4 * i + e % 4];
                    o[e] = (byte & 0x0F) as f32 * d + m;
                    o[e + QK / 2] = (byte >> 4) as f32 * d + m;
                }
            }
            PackedKind::Q8 => {
                let blk = &wg[b * gbb..(b + 1) * gbb];
                let d = f16_at(blk, 2 * i);
                for (e, v) in o.iter_mut().enumerate() {
                    let u = blk[32 + 64 * (e / 4) + 4 * i + e % 4];
                    *v = (u as i32 - 128) as f32 * d;
                }
            }
        }
    }
}

/// Activations of `n` tokens quantized to 8 bits per block of 32, split by field so the
/// kernels can broadcast 4 bytes at a time: `qs` (n, cols), `d` and `isum` (n, cols / 32),
/// and `dsum = d * isum` (what offsets and zeros multiply).
#[derive(Default)]
struct Activations {
    qs: Vec<i8>,
    d: Vec<f32>,
    isum: Vec<i32>,
    dsum: Vec<f32>,
}

impl Activations {
    /// The same rounding as [`super::q8::quantize_row`] (and llama.cpp's Q8 activations), bit
    /// for bit; rows are split over the pool when there are many (prefill).
    fn quantize(pool: &ThreadPool, x: &[f32], cols: usize, simd: bool) -> Activations {
        let blocks = x.len() / QK;
        // Every element is written below: buffers of an earlier call are reused as they are
        // (zeroing new ones was ~0.5% of a batched decode step).
        let mut a = SPARE_ACTIVATIONS.with(|s| s.take()).unwrap_or_default();
        a.qs.resize(x.len(), 0);
        a.d.resize(blocks, 0.0);
        a.isum.resize(blocks, 0);
        let n = x.len() / cols.max(1);
        let nb = cols / QK;
        let (qs, d, isum) = (
            SharedPtr(a.qs.as_mut_ptr()),
            SharedPtr(a.d.as_mut_ptr()),
            SharedPtr(a.isum.as_mut_ptr()),
        );
        let rows = |r: std::ops::Range<usize>| {
            let (b0, b1) = (r.start * nb, r.end * nb);
            // SAFETY: each task owns the blocks of its rows in all three arrays.
            let (qs, d, isum) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs.get().add(b0 * QK), (b1 - b0) * QK),
                    std::slice::from_raw_parts_mut(d.get().add(b0), b1 - b0),
                    std::slice::from_raw_parts_mut(isum.get().add(b0), b1 - b0),
                )
            };
            let xs = &x[b0 * QK..b1 * QK];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd` is set only when the CPU has AVX-512.
                unsafe { vnni::quantize(xs, qs, d, isum) };
                return;
            }
            let _ = simd;
            quantize_portable(xs, qs, d, isum);
        };
        // Below a few rows the hand-off costs more than the work.
        if n >= 8 {
            pool.for_ranges(n, 1, rows);
        } else {
            rows(0..n);
        }
        a.dsum.clear();
        a.dsum
            .extend(a.d.iter().zip(&a.isum).map(|(&d, &s)| d * s as f32));
        a
    }

    /// Keeps the buffers for the calling thread's next [`Activations::quantize`].
    fn recycle(self) {
        SPARE_ACTIVATIONS.with(|s| s.set(Some(self)));
    }
}

thread_local! {
    static SPARE_ACTIVATIONS: std::cell::Cell<Option<Activations>> = const { std::cell::Cell::new(None) };
}

fn quantize_portable(x: &[f32], qs: &mut [i8], d: &mut [f32], isum: &mut [i32]) {
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        let inv = if db == 0.0 { 0.0 } else { 1.0 / db };
        let mut sum = 0i32;
        for (q, v) in qs[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
            // round() is to nearest, ties away from zero, like llama.cpp's roundf.
            let r = (v * inv).round() as i32;
            *q = r as i8;
            sum += r;
        }
        d[b] = db;
        isum[b] = sum;
    }
}

/// A raw pointer that threads may share because each writes disjoint elements.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}
impl<T> SharedPtr<T> {
    /// A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// A raw pointer that threads may share because each writes disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Batches of at least this many tokens prefetch the next group's weights into L2 while
/// computing one (see [`prefetch_l2`]); a single token's GEMV is bound by memory bandwidth,
/// where the hardware prefetchers do better alone (measured -12% with the hint at one token).
const PREFETCH_FROM_TOKENS: usize = 8;

/// Asks for `bytes` in L2. A batch multiplies each 16-row group by all its tokens in several
/// tile passes, so only the first pass reads the group from memory: without the hint the
/// weight stream stalls that pass while the others run from L1. L2 rather than L1: the group
/// being computed and the activations stay in L1. Spread over the passes rather than all at
/// once: a burst of ~90 lines overflows the miss queues and the core stalls issuing it
/// (`packed_speed`, 16 tokens from memory: Q4_1 90 -> 104 G MAC/s at once, 120 spread; Q8_0
/// 79 -> 95 -> 120).
fn prefetch_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint and cannot fault; the address is in the slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T1,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Tokens per kernel call in prefill: the 8 unpacked weight vectors stay in registers across
/// them, next to two accumulators per token.
const TOKEN_TILE: usize = 4;

/// `y[t, r] = sum_k x[t, k] * W[r, k]` for a packed `w`; x is (n, cols), y is (n, rows).
pub fn matmul(
    pool: &ThreadPool,
    feat: Features,
    kind: PackedKind,
    w: &WeightView,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let _ = kind;
    matmul_many(pool, feat, &mut [(*w, y)], x, n, None);
}

/// Several packed matrices with the same input width applied to the same activations in
/// one pool job (the activations are quantized once and the threads synchronize once):
/// `ys[j] = x W_j^T`, each (n, rows_j). Each tile pass also prefetches its share of `ahead`.
pub fn matmul_many(
    pool: &ThreadPool,
    feat: Features,
    jobs: &mut [(WeightView, &mut [f32])],
    x: &[f32],
    n: usize,
    ahead: Option<AheadWindow>,
) {
    let Some(cols) = jobs.first().map(|(w, _)| w.cols) else {
        return;
    };
    let nb = cols / QK;
    assert_eq!(x.len(), n * cols, "matmul: x is not (n, cols)");
    // (kind, data, rows, out, first group index of this matrix)
    let mut mats = Vec::with_capacity(jobs.len());
    let mut groups = 0;
    for (w, y) in jobs.iter_mut() {
        let WeightFormat::Packed(kind) = w.format else {
            panic!("packed::matmul_many on {:?} weights", w.format);
        };
        assert_eq!(w.cols, cols, "matmul_many: input widths differ");
        assert_eq!(y.len(), n * w.rows, "matmul: y is not (n, rows)");
        mats.push((kind, w.data, w.rows, SharedOut(y.as_mut_ptr()), groups));
        groups += w.rows / GROUP;
    }
    let simd = cfg!(target_arch = "x86_64") && feat.avx512_vnni;
    let act = Activations::quantize(pool, x, cols, simd);
    pool.for_ranges(groups, 1, |range| {
        for gg in range {
            let m = mats
                .iter()
                .rposition(|m| m.4 <= gg)
                .expect("group 0 exists");
            let (kind, data, rows, out, first) = mats[m];
            let g = gg - first;
            let gb = kind.group_bytes(nb);
            let wg = &data[g * gb..(g + 1) * gb];
            // The next group's weights, prefetched a slice per tile pass (see `prefetch_l2`).
            let next_group = (n >= PREFETCH_FROM_TOKENS && g + 1 < rows / GROUP)
                .then(|| &data[(g + 1) * gb..(g + 2) * gb]);
            let passes = n.div_ceil(TOKEN_TILE);
            let mut t = 0;
            while t < n {
                if let Some(a) = next_group {
                    let lines = a.len().div_ceil(64);
                    let at = |pass: usize| (pass * lines / passes * 64).min(a.len());
                    let pass = t / TOKEN_TILE;
                    prefetch_l2(&a[at(pass)..at(pass + 1)]);
                }
                if let Some(ahead) = ahead {
                    ahead.fetch(gg * passes + t / TOKEN_TILE, groups * passes);
                }
                let tile = (n - t).min(TOKEN_TILE);
                let toks = t..t + tile;
                let mut res = [[0f32; GROUP]; TOKEN_TILE];
                if simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has AVX-512 VNNI; `wg` holds `nb` group-blocks and every
                    // activation row `nb` blocks.
                    unsafe {
                        vnni::group(kind, wg, nb, &act, toks.clone(), &mut res)
                    };
                } else {
                    portable_group(kind, wg, nb, &act, toks.clone(), &mut res);
                }
                for (j, tok) in toks.enumerate() {
                    // SAFETY: rows 16g..16g+16 of token `tok` in this output belong to this
                    // task alone, and the output is (n, rows).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            res[j].as_ptr(),
                            out.0.add(tok * rows + g * GROUP),
                            GROUP,
                        )
                    };
                }
                t += tile;
            }
        }
    });
    act.recycle();
}

/// A 4-bit block's offset `m` from its stored second field (Q4Z stores `-z`).
#[inline]
fn offset(kind: PackedKind, d: f32, field: f32) -> f32 {
    if matches!(kind, PackedKind::Q4Z | PackedKind::Q4G) {
        d * field
    } else {
        field
    }
}

/// The portable kernel: the same integer sums, one element at a time.
fn portable_group(
    kind: PackedKind,
    wg: &[u8],
    nb: usize,
    act: &Activations,
    toks: std::ops::Range<usize>,
    res: &mut [[f32; GROUP]; TOKEN_TILE],
) {
    let gbb = kind.group_block_bytes();
    for (j, t) in toks.enumerate() {
        for i in 0..GROUP {
            let mut sum = 0f32;
            let mut off = 0f32;
            for b in 0..nb {
                let xq = &act.qs[(t * nb + b) * QK..(t * nb + b + 1) * QK];
                let (dx, isum, dsum) = (
                    act.d[t * nb + b],
                    act.isum[t * nb + b],
                    act.dsum[t * nb + b],
                );
                let mut acc = 0i32;
                let d;
                match kind {
                    PackedKind::Q4 | PackedKind::Q4Z | PackedKind::Q4G => {
                        let (hdr, nib) = kind.q4_block(b);
                        d = f16_at(wg, hdr + 2 * i);
                        for e in 0..QK / 2 {
                            let byte = wg[nib + 64 * (e / 4) + 4 * i + e % 4];
                            acc += (byte & 0x0F) as i32 * xq[e] as i32;
                            acc += (byte >> 4) as i32 * xq[e + QK / 2] as i32;
                        }
                        off += offset(kind, d, f16_at(wg, hdr + 32 + 2 * i)) * dsum;
                    }
                    PackedKind::Q8 => {
                        let blk = &wg[b * gbb..(b + 1) * gbb];
                        d = f16_at(blk, 2 * i);
                        acc = -128 * isum;
                        for (e, &xv) in xq.iter().enumerate() {
                            let u = blk[32 + 64 * (e / 4) + 4 * i + e % 4];
                            acc += u as i32 * xv as i32;
                        }
                    }
                }
                sum += d * dx * acc as f32;
            }
            res[j][i] = sum + off;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over registers read best here
mod vnni {
    use super::{Activations, PackedKind, GROUP, QK, SUPER, TOKEN_TILE};

    use std::arch::x86_64::*;

    /// One group of 16 rows against the tokens `toks` (at most [`TOKEN_TILE`]).
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI and F16C; `wg` holds `nb` packed group-blocks of `kind`
    /// and every activation row of `act` holds `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group(
        kind: PackedKind,
        wg: &[u8],
        nb: usize,
        act: &Activations,
        toks: std::ops::Range<usize>,
        res: &mut [[f32; GROUP]; TOKEN_TILE],
    ) {
        macro_rules! go {
            ($f:ident, $n:literal) => {{
                let v = $f::<$n>(wg.as_ptr(), nb, act, toks.start);
                for j in 0..$n {
                    _mm512_storeu_ps(res[j].as_mut_ptr(), v[j]);
                }
            }};
            ($f:ident, $n:literal, $z:literal) => {{
                let v = $f::<$n, $z>(wg.as_ptr(), nb, act, toks.start);
                for j in 0..$n {
                    _mm512_storeu_ps(res[j].as_mut_ptr(), v[j]);
                }
            }};
        }
        match (kind, toks.len()) {
            (PackedKind::Q4, 4) => go!(q4, 4, false),
            (PackedKind::Q4, 3) => go!(q4, 3, false),
            (PackedKind::Q4, 2) => go!(q4, 2, false),
            (PackedKind::Q4, _) => go!(q4, 1, false),
            (PackedKind::Q4Z, 4) => go!(q4, 4, true),
            (PackedKind::Q4Z, 3) => go!(q4, 3, true),
            (PackedKind::Q4Z, 2) => go!(q4, 2, true),
            (PackedKind::Q4Z, _) => go!(q4, 1, true),
            (PackedKind::Q4G, 4) => go!(q4g, 4),
            (PackedKind::Q4G, 3) => go!(q4g, 3),
            (PackedKind::Q4G, 2) => go!(q4g, 2),
            (PackedKind::Q4G, _) => go!(q4g, 1),
            (PackedKind::Q8, 4) => go!(q8, 4),
            (PackedKind::Q8, 3) => go!(q8, 3),
            (PackedKind::Q8, 2) => go!(q8, 2),
            (PackedKind::Q8, _) => go!(q8, 1),
        }
    }

    /// [`super::quantize_portable`] with AVX-512, bit for bit: the same max, the same scale
    /// and reciprocal, and rounding half away from zero built from truncation.
    /// # Safety
    /// The CPU has AVX-512 F/BW; slices hold `x.len() / 32` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], isum: &mut [i32]) {
        let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
        let half = _mm512_set1_ps(0.5);
        let one = _mm512_set1_ps(1.0);
        for b in 0..x.len() / QK {
            let p = x.as_ptr().add(b * QK);
            let v = [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))];
            let abs =
                |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(v[0]), abs(v[1])));
            let db = amax / 127.0;
            let inv = _mm512_set1_ps(if db == 0.0 { 0.0 } else { 1.0 / db });
            let mut sum = _mm512_setzero_si512();
            for (h, &vh) in v.iter().enumerate() {
                let s = _mm512_mul_ps(vh, inv);
                // trunc(s), plus one step away from zero where |s - trunc(s)| >= 0.5.
                let t = _mm512_roundscale_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let frac = abs(_mm512_sub_ps(s, t));
                let up = _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ);
                // 1.0 with the sign of s (an integer OR: `_mm512_or_ps` needs AVX-512 DQ, not
                // enabled here, and was compiled as a call per use).
                let step = _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_castps_si512(one),
                    _mm512_andnot_si512(abs_mask, _mm512_castps_si512(s)),
                ));
                let r = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
                sum = _mm512_add_epi32(sum, r);
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(b * QK + 16 * h) as *mut __m128i,
                    _mm512_cvtepi32_epi8(r),
                );
            }
            d[b] = db;
            isum[b] = _mm512_reduce_add_epi32(sum);
        }
    }

    /// The 4 activation bytes `4k..4k+4` of a block, in every lane.
    #[inline(always)]
    unsafe fn bcast(xq: *const i8, k: usize) -> __m512i {
        _mm512_set1_epi32((xq.add(4 * k) as *const i32).read_unaligned())
    }

    /// The 16 rows' nibbles of one block (4 x 64 bytes at `p`): low nibbles (elements
    /// `4k..4k+4` in chunk k) and high ones (`16+4k..`), as bytes.
    #[inline(always)]
    unsafe fn unpack_q4(p: *const u8) -> [[__m512i; 4]; 2] {
        let mask = _mm512_set1_epi8(0x0F);
        let mut v = [[_mm512_setzero_si512(); 4]; 2];
        for k in 0..4 {
            let raw = _mm512_loadu_si512(p.add(64 * k) as *const _);
            v[0][k] = _mm512_and_si512(raw, mask);
            v[1][k] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
        }
        v
    }

    /// The 16 rows' exact integer dot products of an unpacked block with the activation
    /// block `xq`: two independent chains of four, so the instruction latency overlaps.
    #[inline(always)]
    unsafe fn dot_q4(nibbles: &[[__m512i; 4]; 2], xq: *const i8) -> __m512i {
        let mut a = _mm512_setzero_si512();
        let mut c = _mm512_setzero_si512();
        for k in 0..4 {
            a = _mm512_dpbusd_epi32(a, nibbles[0][k], bcast(xq, k));
            c = _mm512_dpbusd_epi32(c, nibbles[1][k], bcast(xq, 4 + k));
        }
        _mm512_add_epi32(a, c)
    }

    /// `ZERO`: the second field is `-z` and the offset is `d` times it ([`PackedKind::Q4Z`]).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4<const N: usize, const ZERO: bool>(
        w: *const u8,
        nb: usize,
        act: &Activations,
        t0: usize,
    ) -> [__m512; N] {
        // One block at a time: the integer sums start afresh every block, so the only chain
        // across blocks is one FMA per block and token. (Two blocks per iteration into even
        // and odd sums left the compiler short of registers: spills, and 4 tokens ran 20%
        // slower, `packed_speed`.)
        let mut sum = [_mm512_setzero_ps(); N];
        let mut off = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            q4_block::<N, ZERO>(w, nb, b, act, t0, &mut sum, &mut off);
        }
        std::array::from_fn(|j| _mm512_add_ps(sum[j], off[j]))
    }

    /// Block `b` of a Q4/Q4Z group against N tokens, added to `sum` and `off`.
    #[inline(always)]
    unsafe fn q4_block<const N: usize, const ZERO: bool>(
        w: *const u8,
        nb: usize,
        b: usize,
        act: &Activations,
        t0: usize,
        sum: &mut [__m512; N],
        off: &mut [__m512; N],
    ) {
        let p = w.add(b * 320);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let m = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
        let m = if ZERO { _mm512_mul_ps(d, m) } else { m };
        let nibbles = unpack_q4(p.add(64));
        for j in 0..N {
            let blk = (t0 + j) * nb + b;
            let dx = _mm512_set1_ps(*act.d.get_unchecked(blk));
            let i = _mm512_cvtepi32_ps(dot_q4(&nibbles, act.qs.as_ptr().add(blk * QK)));
            sum[j] = _mm512_fmadd_ps(i, _mm512_mul_ps(d, dx), sum[j]);
            off[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(*act.dsum.get_unchecked(blk)), off[j]);
        }
    }

    /// [`PackedKind::Q4G`]: per block only the integer sums and the activation scale; the
    /// rows' scales and zeros once per 4 blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4g<const N: usize>(
        w: *const u8,
        nb: usize,
        act: &Activations,
        t0: usize,
    ) -> [__m512; N] {
        let mut sum = [_mm512_setzero_ps(); N];
        let mut off = [_mm512_setzero_ps(); N];
        for sb in 0..nb.div_ceil(SUPER) {
            let p = w.add(sb * (64 + 256 * SUPER));
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let m = _mm512_mul_ps(
                d,
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
            );
            // Per token: sum over the 4 blocks of dx * (integer sums), and of dx * isum.
            let mut acc = [_mm512_setzero_ps(); N];
            let mut xoff = [0f32; N];
            for sub in 0..SUPER.min(nb - sb * SUPER) {
                let b = sb * SUPER + sub;
                let nibbles = unpack_q4(p.add(64 + 256 * sub));
                for j in 0..N {
                    let blk = (t0 + j) * nb + b;
                    let dx = *act.d.get_unchecked(blk);
                    let i = _mm512_cvtepi32_ps(dot_q4(&nibbles, act.qs.as_ptr().add(blk * QK)));
                    acc[j] = _mm512_fmadd_ps(i, _mm512_set1_ps(dx), acc[j]);
                    xoff[j] += *act.dsum.get_unchecked(blk);
                }
            }
            for j in 0..N {
                sum[j] = _mm512_fmadd_ps(acc[j], d, sum[j]);
                off[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(xoff[j]), off[j]);
            }
        }
        std::array::from_fn(|j| _mm512_add_ps(sum[j], off[j]))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q8<const N: usize>(
        w: *const u8,
        nb: usize,
        act: &Activations,
        t0: usize,
    ) -> [__m512; N] {
        // One block at a time, as in `q4`.
        let mut sum = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            q8_block::<N>(w, nb, b, act, t0, &mut sum);
        }
        sum
    }

    #[inline(always)]
    unsafe fn q8_block<const N: usize>(
        w: *const u8,
        nb: usize,
        b: usize,
        act: &Activations,
        t0: usize,
        sum: &mut [__m512; N],
    ) {
        let p = w.add(b * 544);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let mut wv = [_mm512_setzero_si512(); 8];
        for (k, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(p.add(32 + 64 * k) as *const _);
        }
        for j in 0..N {
            let blk = (t0 + j) * nb + b;
            let xq = act.qs.as_ptr().add(blk * QK);
            // Weights are stored + 128: start from -128 * sum(x) to keep the sum exact.
            let mut a = _mm512_set1_epi32(-128 * *act.isum.get_unchecked(blk));
            let mut c = _mm512_setzero_si512();
            for k in 0..4 {
                a = _mm512_dpbusd_epi32(a, wv[k], bcast(xq, k));
                c = _mm512_dpbusd_epi32(c, wv[4 + k], bcast(xq, 4 + k));
            }
            let dx = _mm512_set1_ps(*act.d.get_unchecked(blk));
            let i = _mm512_cvtepi32_ps(_mm512_add_epi32(a, c));
            sum[j] = _mm512_fmadd_ps(i, _mm512_mul_ps(d, dx), sum[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::{dequantize, random_blocks, Rng};

    #[test]
    fn dequantized_rows_equal_the_gguf_rows() {
        let mut rng = Rng::new(21);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            let (rows, cols) = (32, 96);
            let data = random_blocks(kind, rows * cols / QK, &mut rng);
            let want = dequantize(kind, &data);
            let (pk, packed) = pack(kind, &data, rows, cols).expect("packable");
            assert_eq!(packed.len(), rows * cols / QK * pk.block_bytes());
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                dequantize_row(pk, &packed, rows, r, &mut row);
                assert_eq!(row, want[r * cols..(r + 1) * cols], "{kind:?} row {r}");
            }
        }
    }

    #[test]
    fn f16_rows_rounded_to_q8_stay_within_half_a_step() {
        let mut rng = Rng::new(5);
        let (rows, cols) = (32, 64);
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let view = WeightView::new(WeightFormat::F16, &bytes, rows, cols).unwrap();
        let packed = pack_as_q8(&view).expect("packable");
        let mut got = vec![0f32; cols];
        let mut want = vec![0f32; cols];
        for r in 0..rows {
            dequantize_row(PackedKind::Q8, &packed, rows, r, &mut got);
            view.dequantize_row(r, &mut want);
            for (g, w) in got.chunks(QK).zip(want.chunks(QK)) {
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step of d = amax / 127, plus d's own f16 rounding over 127 steps.
                let tol = amax / 127.0 * 0.5 + amax * 2f32.powi(-11) + 1e-7;
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= tol, "row {r}: {a} vs {b}");
                }
            }
        }
        // Rows not a multiple of 16 are left to the caller.
        let short = WeightView::new(WeightFormat::F16, &bytes[..2 * 8 * cols], 8, cols).unwrap();
        assert!(pack_as_q8(&short).is_none());
    }

    #[test]
    fn activation_quantization_equals_the_row_quantizer_bit_for_bit() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(9);
        let cols = 96;
        for n in [1usize, 3, 17] {
            let mut x: Vec<f32> = (0..n * cols).map(|_| rng.f32() * 3.0).collect();
            // Exact ties at +-0.5 steps, zeros, and an all-zero block.
            x[0] = 127.0;
            x[1] = 0.5;
            x[2] = -0.5;
            x[3] = 1.5;
            x[4] = -2.5;
            x[5] = 0.0;
            x[32..64].fill(0.0);
            let mut want = vec![crate::cpu::q8::BlockQ8::default(); n * cols / QK];
            crate::cpu::q8::quantize_row(&x, &mut want);
            for simd in [false, Features::get().avx512_vnni] {
                let a = Activations::quantize(&pool, &x, cols, simd);
                for (b, w) in want.iter().enumerate() {
                    assert_eq!(a.d[b].to_bits(), w.d.to_bits(), "simd {simd} block {b}");
                    assert_eq!(a.isum[b], w.isum, "simd {simd} block {b}");
                    assert_eq!(a.qs[b * QK..(b + 1) * QK], w.qs, "simd {simd} block {b}");
                }
            }
        }
    }

    #[test]
    fn shapes_that_do_not_pack_are_refused() {
        let mut rng = Rng::new(2);
        let data = random_blocks(QuantKind::Q4_1, 8, &mut rng);
        assert!(pack(QuantKind::Q4_1, &data, 8, 32).is_none());
        assert!(pack(QuantKind::Q4_1, &data[..20], 16, 32).is_none());
    }

    /// Speed of the packed kernels on one thread at batch sizes of serving, to compare with
    /// the instruction-mix bound (`vpdpbusd`, `vfmadd`, `vmulps` share one 512-bit issue slot
    /// per cycle on Zen 4, tests/vnni_peak.rs: ~11 slots per 512 MACs for Q4, ~10 for Q8):
    /// `cargo test --release -p kernels packed_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn packed_speed() {
        let pool = ThreadPool::new(1);
        let mut rng = Rng::new(3);
        for (kind, rows, cols, copies) in [
            (QuantKind::Q4_1, 1536, 576, 1),
            (QuantKind::Q4_1, 1536, 576, 64),
            (QuantKind::Q8_0, 4096, 576, 1),
            (QuantKind::Q8_0, 4096, 576, 16),
        ] {
            let data = random_blocks(kind, rows * cols / QK, &mut rng);
            let (pk, packed) = pack(kind, &data, rows, cols).unwrap();
            // `copies` distinct matrices cycled through: 1 stays in L2, 64 come from memory.
            let all: Vec<Vec<u8>> = (0..copies).map(|_| packed.clone()).collect();
            for n in [1usize, 4, 16] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                let mut y = vec![0f32; n * rows];
                let iters = 4000 / n.max(4) * 4;
                let t = std::time::Instant::now();
                for i in 0..iters {
                    let view = packed_view(pk, &all[i % copies], rows, cols);
                    matmul(&pool, Features::get(), pk, &view, &x, n, &mut y);
                }
                let s = t.elapsed().as_secs_f64();
                let macs = (iters * n * rows * cols) as f64 / s;
                println!(
                    "{kind:?} {rows}x{cols} x {copies} copies, {n} tokens: {:.1} G MAC/s, {:.1} us per call",
                    macs / 1e9,
                    s / iters as f64 * 1e6
                );
            }
        }
    }

    fn packed_view(pk: PackedKind, data: &[u8], rows: usize, cols: usize) -> WeightView<'_> {
        WeightView::new(
            crate::cpu::matmul::WeightFormat::Packed(pk),
            data,
            rows,
            cols,
        )
        .unwrap()
    }

    /// A token's outputs do not depend on the batch it is computed in (tiles of 4, 3, 2 or 1
    /// tokens, threads): bit for bit those of the token alone. Serving relies on it: a
    /// request's greedy text must not change with the other requests in the step.
    #[test]
    fn batched_tokens_equal_tokens_alone_bit_for_bit() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(23);
        let (rows, cols) = (48, 576);
        for kind in [QuantKind::Q4_1, QuantKind::Q8_0] {
            let data = random_blocks(kind, rows * cols / QK, &mut rng);
            let (pk, packed) = pack(kind, &data, rows, cols).unwrap();
            let view = packed_view(pk, &packed, rows, cols);
            for feat in [Features::PORTABLE, Features::get()] {
                for n in [2usize, 3, 5, 7, 16] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                    let mut batched = vec![f32::NAN; n * rows];
                    matmul(&pool, feat, pk, &view, &x, n, &mut batched);
                    for t in 0..n {
                        let mut alone = vec![f32::NAN; rows];
                        matmul(
                            &pool,
                            feat,
                            pk,
                            &view,
                            &x[t * cols..][..cols],
                            1,
                            &mut alone,
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&alone),
                            bits(&batched[t * rows..][..rows]),
                            "{kind:?}, {}: token {t} of {n}",
                            feat.describe()
                        );
                    }
                }
            }
        }
    }

    /// Every path against the plain float product of the dequantized weights, and the SIMD
    /// path against the portable one (same integer sums, float order only).
    #[test]
    fn packed_matmul_matches_reference() {
        let pool = ThreadPool::new(3);
        let mut rng = Rng::new(17);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            for (rows, cols, n) in [(16, 32, 1), (48, 576, 7), (64, 96, 4)] {
                let data = random_blocks(kind, rows * cols / QK, &mut rng);
                let wf = dequantize(kind, &data);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                let (pk, packed) = pack(kind, &data, rows, cols).unwrap();
                let view = packed_view(pk, &packed, rows, cols);
                let mut portable = vec![f32::NAN; n * rows];
                matmul(&pool, Features::PORTABLE, pk, &view, &x, n, &mut portable);
                let mut feats = vec![];
                if Features::get().avx512_vnni {
                    feats.push(Features::get());
                }
                for t in 0..n {
                    for r in 0..rows {
                        let xr = &x[t * cols..(t + 1) * cols];
                        let wr = &wf[r * cols..(r + 1) * cols];
                        let exact: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        let scale: f32 = xr.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum();
                        let got = portable[t * rows + r];
                        assert!(
                            (got - exact).abs() <= 0.01 * scale + 1e-4,
                            "{kind:?} portable [{t},{r}]: {got} vs {exact}"
                        );
                    }
                }
                for feat in feats {
                    let mut y = vec![f32::NAN; n * rows];
                    matmul(&pool, feat, pk, &view, &x, n, &mut y);
                    for (i, (g, p)) in y.iter().zip(&portable).enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        let scale: f32 = (0..cols)
                            .map(|k| (x[t * cols + k] * wf[r * cols + k]).abs())
                            .sum();
                        assert!(
                            (g - p).abs() <= 1e-5 * scale + 1e-5,
                            "{kind:?} simd [{t},{r}]: {g} vs portable {p}"
                        );
                    }
                }
            }
        }
    }
}
