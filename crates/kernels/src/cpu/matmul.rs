//! `y = x W^T` for a weight matrix stored row by row in one of the model file formats, over
//! a batch of activation rows, split across the thread pool by output rows.

use super::ahead::AheadWindow;
use super::dot::{self, QuantKind};
use super::gptq::{self, GptqFormat};
use super::packed::{self, PackedKind};
use super::pool::ThreadPool;
use super::q8::{quantize_row, BlockQ8, QK};
use super::Features;
use half::bf16;

/// How the bytes of each weight row are laid out.
#[derive(Clone, Copy, Debug)]
pub enum WeightFormat {
    /// Blocks with an integer dot product against 8-bit activations.
    Quant(QuantKind),
    /// GPTQ weights repacked by [`gptq::repack`]; inputs permuted by [`WeightView::perm`].
    Gptq(GptqFormat),
    /// Q4_0/Q4_1/Q8_0 rows interleaved 16 at a time by [`packed::pack`] (AVX-512 VNNI).
    Packed(PackedKind),
    F32,
    F16,
    BF16,
    /// Any other block format: each row is expanded to f32 first (correct, not fast).
    Blocks {
        block_elems: usize,
        block_bytes: usize,
        dequantize: fn(&[u8], &mut [f32]),
    },
}

impl WeightFormat {
    /// Bytes of one row of `cols` elements, or None when `cols` does not fill whole blocks.
    pub fn row_bytes(&self, cols: usize) -> Option<usize> {
        let (elems, bytes) = match *self {
            WeightFormat::Quant(k) => (QK, k.block_bytes()),
            WeightFormat::Gptq(g) => (QK, g.block_bytes()),
            WeightFormat::Packed(k) => {
                return cols.is_multiple_of(QK).then(|| k.row_bytes(cols / QK));
            }
            WeightFormat::F32 => (1, 4),
            WeightFormat::F16 | WeightFormat::BF16 => (1, 2),
            WeightFormat::Blocks {
                block_elems,
                block_bytes,
                ..
            } => (block_elems, block_bytes),
        };
        cols.is_multiple_of(elems).then(|| cols / elems * bytes)
    }
}

/// A borrowed weight matrix: `rows` outputs, each a row of `cols` inputs.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub format: WeightFormat,
    pub data: &'a [u8], // (rows, row_bytes)
    pub rows: usize,
    pub cols: usize,
    /// Stored column c holds input `perm[c]` (GPTQ act-order); None for input order.
    pub perm: Option<&'a [u32]>,
}

impl<'a> WeightView<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements.
    pub fn new(
        format: WeightFormat,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        let row_bytes = format
            .row_bytes(cols)
            .ok_or_else(|| format!("{cols} columns is not a whole number of {format:?} blocks"))?;
        if matches!(format, WeightFormat::Packed(_)) && !rows.is_multiple_of(packed::GROUP) {
            return Err(format!(
                "{rows} rows is not a whole number of {}-row packed groups",
                packed::GROUP
            ));
        }
        match row_bytes.checked_mul(rows) {
            Some(n) if n == data.len() => Ok(WeightView {
                format,
                data,
                rows,
                cols,
                perm: None,
            }),
            _ => Err(format!(
                "{rows} x {cols} {format:?} weights need {row_bytes} x {rows} bytes, found {}",
                data.len()
            )),
        }
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.data.len() / self.rows.max(1);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` expanded to f32 into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if let WeightFormat::Packed(k) = self.format {
            let Some(perm) = self.perm else {
                return packed::dequantize_row(k, self.data, self.rows, r, out);
            };
            // Stored column c holds input perm[c].
            let mut stored = vec![0f32; out.len()];
            packed::dequantize_row(k, self.data, self.rows, r, &mut stored);
            for (&i, v) in perm.iter().zip(&stored) {
                out[i as usize] = *v;
            }
            return;
        }
        let src = self.row(r);
        match self.format {
            WeightFormat::F32 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            // F16C, 8 at a time: a call per element was 60% of a GPTQ model's decode.
            WeightFormat::F16 => gptq::f16_to_f32(Features::get(), src, out),
            WeightFormat::BF16 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            WeightFormat::Blocks { dequantize, .. } => dequantize(src, out),
            WeightFormat::Gptq(g) => gptq::dequantize_row(g, src, self.perm, out),
            WeightFormat::Packed(_) => unreachable!("handled above"),
            // The reference dequantizer; sizes were checked when the view was built.
            WeightFormat::Quant(kind) => drop(formats::dequantize(kind.ggml_type(), src, out)),
        }
    }
}

/// A raw pointer that threads may share because each writes disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` is in bounds and no other thread writes element `i` during the same job.
    #[inline(always)]
    unsafe fn write(&self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Output rows handled together, so one tile of weights stays in L1 across the batch.
const ROW_TILE: usize = 8;

/// `y[t, r] = sum_k x[t, k] * W[r, k]` for `n` activation rows.
/// `x` is (n, cols) and `y` is (n, rows), both row-major.
pub fn matmul(pool: &ThreadPool, w: &WeightView, x: &[f32], n: usize, y: &mut [f32]) {
    matmul_with(pool, Features::get(), w, x, n, y)
}

/// Several matrices with the same input width applied to the same activations,
/// `jobs[j].1 = x W_j^T` (each (n, rows_j)): one pool job and one activation quantization
/// when they are all packed (Q/K/V, gate/up), else one [`matmul`] each. The packed kernels'
/// jobs also prefetch `ahead`, a share each (see [`super::ahead`]).
pub fn matmul_many(
    pool: &ThreadPool,
    jobs: &mut [(WeightView, &mut [f32])],
    x: &[f32],
    n: usize,
    ahead: Option<AheadWindow>,
) {
    let feat = Features::get();
    let Some((cols, perm)) = jobs.first().map(|(w, _)| (w.cols, w.perm)) else {
        return;
    };
    // Act-order GPTQ projections of one input normally share their permutation.
    if jobs.iter().all(|(w, _)| {
        matches!(w.format, WeightFormat::Packed(_)) && w.cols == cols && w.perm == perm
    }) {
        let gathered = perm.map(|p| gather(p, x, n));
        return packed::matmul_many(pool, feat, jobs, gathered.as_deref().unwrap_or(x), n, ahead);
    }
    for (w, y) in jobs.iter_mut() {
        matmul_with(pool, feat, w, x, n, y);
    }
}

/// The `n` rows of `x` with their columns in stored order: column c takes input `perm[c]`.
fn gather(perm: &[u32], x: &[f32], n: usize) -> Vec<f32> {
    let cols = perm.len();
    let mut out = vec![0f32; n * cols];
    for (o, xr) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        for (v, &i) in o.iter_mut().zip(perm) {
            *v = xr[i as usize];
        }
    }
    out
}

/// [`matmul`] with the instruction sets given explicitly (tests compare the paths).
pub fn matmul_with(
    pool: &ThreadPool,
    feat: Features,
    w: &WeightView,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), n * w.cols, "matmul: x is not (n, cols)");
    assert_eq!(y.len(), n * w.rows, "matmul: y is not (n, rows)");
    if let WeightFormat::Gptq(g) = w.format {
        return gptq::matmul(pool, feat, g, w, x, n, y);
    }
    if let WeightFormat::Packed(k) = w.format {
        let gathered = w.perm.map(|p| gather(p, x, n));
        return packed::matmul(pool, feat, k, w, gathered.as_deref().unwrap_or(x), n, y);
    }
    let out = SharedOut(y.as_mut_ptr());
    let rows = w.rows;
    match w.format {
        WeightFormat::Quant(kind) => {
            let blocks = w.cols / QK;
            let mut xq = vec![BlockQ8::default(); n * blocks];
            for (xr, qr) in x
                .chunks_exact(w.cols)
                .zip(xq.chunks_exact_mut(blocks.max(1)))
            {
                quantize_row(xr, qr);
            }
            let k = pick_quant_kernels(kind, feat);
            pool.for_ranges(rows, ROW_TILE, |range| {
                let xrow = |t: usize| &xq[t * blocks..(t + 1) * blocks];
                for tile_start in range.clone().step_by(ROW_TILE) {
                    let tile = tile_start..(tile_start + ROW_TILE).min(range.end);
                    let mut t = 0;
                    // Four tokens per pass over a weight row (each block unpacked once), and
                    // four rows per pass over the tokens (each activation block loaded once).
                    while t + 4 <= n {
                        let xs = [xrow(t), xrow(t + 1), xrow(t + 2), xrow(t + 3)];
                        let mut r = tile.start;
                        while r + 4 <= tile.end {
                            let v = (k.four_by_four)(
                                [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)],
                                xs,
                            );
                            for (i, row) in v.into_iter().enumerate() {
                                for (j, v) in row.into_iter().enumerate() {
                                    // SAFETY: each (t, r) is written by exactly one thread.
                                    unsafe { out.write((t + j) * rows + r + i, v) };
                                }
                            }
                            r += 4;
                        }
                        for r in r..tile.end {
                            let [v] = (k.four_tokens)([w.row(r)], xs);
                            for (j, v) in v.into_iter().enumerate() {
                                // SAFETY: each (t, r) is written by exactly one thread.
                                unsafe { out.write((t + j) * rows + r, v) };
                            }
                        }
                        t += 4;
                    }
                    for t in t..n {
                        let mut r = tile.start;
                        // Four rows at a time: independent accumulator chains.
                        while r + 4 <= tile.end {
                            let v = (k.four_rows)(
                                [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)],
                                [xrow(t)],
                            );
                            for (j, [v]) in v.into_iter().enumerate() {
                                // SAFETY: each (t, r) is written by exactly one thread.
                                unsafe { out.write(t * rows + r + j, v) };
                            }
                            r += 4;
                        }
                        for r in r..tile.end {
                            // SAFETY: each (t, r) is written by exactly one thread.
                            unsafe {
                                out.write(t * rows + r, (k.one)([w.row(r)], [xrow(t)])[0][0])
                            };
                        }
                    }
                }
            });
        }
        #[cfg(target_arch = "x86_64")]
        WeightFormat::F16 if n == 1 && feat.avx2_fma => {
            // One token: convert in registers; more tokens share one converted row below.
            pool.for_ranges(rows, ROW_TILE, |range| {
                let mut r = range.start;
                while r < range.end {
                    // SAFETY (both): the CPU has AVX2, FMA and F16C; rows hold `cols` halves.
                    let (v, k) = if r + 4 <= range.end {
                        let rs = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                        let v = unsafe { dot::f16c::dot_f16_rows(rs, x) };
                        (v, 4)
                    } else {
                        let [v] = unsafe { dot::f16c::dot_f16_rows([w.row(r)], x) };
                        ([v, 0.0, 0.0, 0.0], 1)
                    };
                    for (j, v) in v.into_iter().take(k).enumerate() {
                        // SAFETY: each row is written by exactly one thread.
                        unsafe { out.write(r + j, v) };
                    }
                    r += k;
                }
            });
        }
        _ => {
            let dot = pick_f32_dot(feat);
            pool.for_ranges(rows, ROW_TILE, |range| {
                let mut wrow = vec![0f32; w.cols];
                for r in range {
                    w.dequantize_row(r, &mut wrow);
                    for t in 0..n {
                        let v = dot(&wrow, &x[t * w.cols..(t + 1) * w.cols]);
                        // SAFETY: each (t, r) is written by exactly one thread.
                        unsafe { out.write(t * rows + r, v) };
                    }
                }
            });
        }
    }
}

/// Weight rows against activation rows: one row x one token (tails), four rows x one token
/// (decode), one row x four tokens (prefill).
struct QuantKernels {
    one: RowsDot<1, 1>,
    four_rows: RowsDot<4, 1>,
    four_tokens: RowsDot<1, 4>,
    four_by_four: RowsDot<4, 4>,
}

/// R weight rows against N activation rows.
type RowsDot<const R: usize, const N: usize> = fn([&[u8]; R], [&[BlockQ8]; N]) -> [[f32; N]; R];

fn pick_quant_kernels(kind: QuantKind, feat: Features) -> QuantKernels {
    macro_rules! simd {
        ($m:ident, $f:ident) => {
            // SAFETY (all): chosen only when the CPU has the module's instruction sets.
            QuantKernels {
                one: |r, x| unsafe { dot::$m::$f(r, x) },
                four_rows: |r, x| unsafe { dot::$m::$f(r, x) },
                four_tokens: |r, x| unsafe { dot::$m::$f(r, x) },
                four_by_four: |r, x| unsafe { dot::$m::$f(r, x) },
            }
        };
    }
    macro_rules! for_kind {
        ($m:ident) => {
            match kind {
                QuantKind::Q4_0 => simd!($m, dot_q4_0),
                QuantKind::Q4_1 => simd!($m, dot_q4_1),
                QuantKind::Q8_0 => simd!($m, dot_q8_0),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        if feat.avx512_vnni {
            return for_kind!(vnni);
        }
        if feat.avx2_fma {
            return for_kind!(avx2);
        }
    }
    let _ = feat;
    macro_rules! portable {
        ($f:path) => {
            QuantKernels {
                one: |r, x| [[$f(r[0], x[0])]],
                four_rows: |r, x| r.map(|r| [$f(r, x[0])]),
                four_tokens: |r, x| [x.map(|x| $f(r[0], x))],
                four_by_four: |r, x| r.map(|r| x.map(|x| $f(r, x))),
            }
        };
    }
    match kind {
        QuantKind::Q4_0 => portable!(dot::dot_q4_0_portable),
        QuantKind::Q4_1 => portable!(dot::dot_q4_1_portable),
        QuantKind::Q8_0 => portable!(dot::dot_q8_0_portable),
    }
}

fn pick_f32_dot(feat: Features) -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if feat.avx2_fma {
        // SAFETY: chosen only when the CPU has AVX2 and FMA.
        return |a, b| unsafe { dot::avx2::dot_f32(a, b) };
    }
    let _ = feat;
    dot::dot_f32_portable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::{dequantize, random_blocks, Rng};
    use half::f16;

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols).map(|k| x[t * cols + k] * w[r * cols + k]).sum();
            }
        }
        y
    }

    /// Portable, AVX2 and VNNI, as far as this CPU has them.
    fn all_features() -> Vec<Features> {
        let f = Features::get();
        let mut v = vec![Features::PORTABLE];
        if f.avx2_fma {
            v.push(Features {
                avx2_fma: true,
                avx512_vnni: false,
            });
        }
        if f.avx512_vnni {
            v.push(f);
        }
        v
    }

    #[test]
    fn quantized_matmul_matches_reference_on_every_path() {
        let pool = ThreadPool::new(3);
        let mut rng = Rng::new(11);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            for (rows, cols, n) in [(1, 32, 1), (19, 64, 3), (67, 576, 9)] {
                let data = random_blocks(kind, rows * cols / QK, &mut rng);
                let wf = dequantize(kind, &data);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                let want = reference(&wf, &x, rows, cols, n);
                let view = WeightView::new(WeightFormat::Quant(kind), &data, rows, cols).unwrap();
                for feat in all_features() {
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_with(&pool, feat, &view, &x, n, &mut y);
                    for (i, (g, e)) in y.iter().zip(&want).enumerate() {
                        // 8-bit activations: about 0.4% of the sum of |products| per element.
                        let scale: f32 = (0..cols)
                            .map(|k| (x[(i / rows) * cols + k] * wf[(i % rows) * cols + k]).abs())
                            .sum();
                        assert!(
                            (g - e).abs() <= 0.01 * scale + 1e-4,
                            "{kind:?} {feat:?} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_formats_match_reference() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(5);
        let (rows, cols, n) = (13, 40, 4);
        let wf: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
        let cases: [(WeightFormat, Vec<u8>, Vec<f32>); 3] = [
            (
                WeightFormat::F32,
                wf.iter().flat_map(|v| v.to_le_bytes()).collect(),
                wf.clone(),
            ),
            (
                WeightFormat::F16,
                wf.iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                wf.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
            ),
            (
                WeightFormat::BF16,
                wf.iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                wf.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
            ),
        ];
        for (format, bytes, rounded) in cases {
            let want = reference(&rounded, &x, rows, cols, n);
            let view = WeightView::new(format, &bytes, rows, cols).unwrap();
            for feat in all_features() {
                let mut y = vec![f32::NAN; n * rows];
                matmul_with(&pool, feat, &view, &x, n, &mut y);
                for (g, e) in y.iter().zip(&want) {
                    assert!((g - e).abs() < 1e-4, "{format:?}: {g} vs {e}");
                }
                // One token takes another path (f16 converted in registers): same sums.
                let mut one = vec![f32::NAN; rows];
                matmul_with(&pool, feat, &view, &x[..cols], 1, &mut one);
                assert_eq!(one, y[..rows], "{format:?} {feat:?}: one token");
            }
        }
    }

    #[test]
    fn wrong_sizes_are_reported() {
        assert!(WeightView::new(WeightFormat::Quant(QuantKind::Q4_1), &[0; 20], 1, 33).is_err());
        assert!(WeightView::new(WeightFormat::Quant(QuantKind::Q4_1), &[0; 19], 1, 32).is_err());
        assert!(WeightView::new(WeightFormat::F16, &[0; 8], 2, 2).is_ok());
    }
}
