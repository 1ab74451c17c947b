//! GPTQ weights repacked for the CPU, and their matrix products: 2-4-bit weights against
//! 8-bit activations (portable, AVX2, AVX-512 VNNI; chosen at run time), 8-bit weights against
//! f32 activations.
//!
//! A checkpoint's `qweight` packs input rows of each output column together, and with
//! act-order consecutive inputs belong to scattered groups. At load time [`repack`] turns each
//! output row into blocks of 32 inputs taken in g_idx order (a stable sort of the inputs by
//! group), so every block lies in one group and carries that group's scale and zero:
//!
//! | bytes | content |
//! |---|---|
//! | 0..2 | f16 scale `s` (exactly the checkpoint's) |
//! | 2..4 | i16 zero `z` (the real zero point, v1's +1 applied; minus 128 for 8 bits) |
//! | 4.. | 32 codes: 2 bits: 8 bytes, byte t holds elements t, t+8, t+16, t+24 in bit pairs 0..8; 3 bits: those 8 bytes for the low two bits, then a u32 whose bit e is bit 2 of element e; 4 bits: 16 bytes, byte t holds element t (low nibble) and t+16 (high); 8 bits: 32 i8, code - 128 |
//!
//! and the value of element e is `s * (q_e - z)`. The row order of inputs is the permutation
//! `perm` (stored column c holds input `perm[c]`); the matmul gathers the activations through
//! it once per call, so the inner loops never look at g_idx.
//!
//! Against 8-bit activation blocks (`d`, `qs`, `isum`) one block contributes
//! `s * d * (sum_e q_e * qs_e - z * isum)`: integer dot products, one float multiply-add.

use super::matmul::WeightView;
use super::pool::ThreadPool;
use super::q8::{quantize_row, BlockQ8, QK};
use super::Features;
use formats::gptq::GptqLinear;
use half::f16;

/// The packed layout of one GPTQ matrix: its bit width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqFormat {
    pub bits: u8,
}

impl GptqFormat {
    /// Bytes per block of 32 inputs: 4 bytes of scale and zero, then the codes.
    pub fn block_bytes(self) -> usize {
        4 + QK * self.bits as usize / 8
    }
}

/// A GPTQ layer repacked for [`matmul`].
#[derive(Debug)]
pub struct Repacked {
    pub format: GptqFormat,
    pub data: Vec<u8>, // (n, k / 32 blocks)
    /// Stored column c holds input `perm[c]`; None when the inputs stay in order.
    pub perm: Option<Vec<u32>>,
}

/// Repacks a checkpoint layer (`k` inputs, a multiple of 32) into rows of blocks.
pub fn repack(l: &GptqLinear) -> Result<Repacked, String> {
    let (k, n) = (l.k, l.n);
    if !k.is_multiple_of(QK) {
        return Err(format!("{k} inputs is not a multiple of {QK}"));
    }
    let bits = l.bits;
    let format = GptqFormat { bits: bits as u8 };
    let codes = l.codes().map_err(|e| e.0)?;
    let zeros = l.zeros().map_err(|e| e.0)?;
    // Stable: without act-order g_idx is non-decreasing and the permutation is the identity.
    let mut order: Vec<u32> = (0..k as u32).collect();
    order.sort_by_key(|&i| l.g_idx[i as usize]);
    let blocks = k / QK;
    for b in 0..blocks {
        let (first, last) = (order[b * QK] as usize, order[b * QK + QK - 1] as usize);
        if l.g_idx[first] != l.g_idx[last] {
            return Err(format!(
                "g_idx puts inputs of groups {} and {} in one run of {QK} (groups must hold \
                 multiples of {QK} inputs)",
                l.g_idx[first], l.g_idx[last]
            ));
        }
    }
    let bb = format.block_bytes();
    let mut data = vec![0u8; n * blocks * bb];
    let offset8 = if bits == 8 { 128 } else { 0 };
    for j in 0..n {
        for b in 0..blocks {
            let out = &mut data[(j * blocks + b) * bb..(j * blocks + b + 1) * bb];
            let ins = &order[b * QK..(b + 1) * QK];
            let g = l.g_idx[ins[0] as usize] as usize;
            out[0..2].copy_from_slice(&l.scales[g * n + j].to_le_bytes());
            let z = (zeros[g * n + j] - offset8) as i16;
            out[2..4].copy_from_slice(&z.to_le_bytes());
            let q: [u8; QK] = std::array::from_fn(|e| codes[ins[e] as usize * n + j]);
            encode_codes(bits, &q, &mut out[4..]);
        }
    }
    let identity = order.iter().enumerate().all(|(c, &i)| c as u32 == i);
    Ok(Repacked {
        format,
        data,
        perm: (!identity).then_some(order),
    })
}

fn encode_codes(bits: u32, q: &[u8; QK], out: &mut [u8]) {
    let two_bit = |out: &mut [u8]| {
        for t in 0..8 {
            out[t] = (q[t] & 3) | (q[t + 8] & 3) << 2 | (q[t + 16] & 3) << 4 | (q[t + 24] & 3) << 6;
        }
    };
    match bits {
        2 => two_bit(out),
        3 => {
            two_bit(out);
            let high = (0..QK).fold(0u32, |m, e| m | (((q[e] >> 2) & 1) as u32) << e);
            out[8..12].copy_from_slice(&high.to_le_bytes());
        }
        4 => {
            for t in 0..16 {
                out[t] = q[t] | q[t + 16] << 4;
            }
        }
        _ => {
            for (o, &c) in out.iter_mut().zip(q) {
                *o = (c as i32 - 128) as i8 as u8;
            }
        }
    }
}

/// The 32 codes of a block (8-bit ones minus 128), and its scale and zero.
fn decode_block(bits: u8, b: &[u8]) -> (f32, i32, [i32; QK]) {
    let s = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let z = i16::from_le_bytes([b[2], b[3]]) as i32;
    let c = &b[4..];
    let q = std::array::from_fn(|e| match bits {
        2 => ((c[e % 8] >> (2 * (e / 8))) & 3) as i32,
        3 => {
            let high = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
            (((c[e % 8] >> (2 * (e / 8))) & 3) as u32 | ((high >> e) & 1) << 2) as i32
        }
        4 => ((c[e % 16] >> (4 * (e / 16))) & 15) as i32,
        _ => c[e] as i8 as i32,
    });
    (s, z, q)
}

/// One packed row expanded to f32 in input order (`out` has `k` elements).
pub fn dequantize_row(format: GptqFormat, row: &[u8], perm: Option<&[u32]>, out: &mut [f32]) {
    for (bi, b) in row.chunks_exact(format.block_bytes()).enumerate() {
        let (s, z, q) = decode_block(format.bits, b);
        for (e, q) in q.into_iter().enumerate() {
            let c = bi * QK + e;
            let v = s * (q - z) as f32;
            match perm {
                Some(p) => out[p[c] as usize] = v,
                None => out[c] = v,
            }
        }
    }
}

/// The portable dot product of one packed row with one row of activation blocks.
pub fn dot_portable(format: GptqFormat, row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in row.chunks_exact(format.block_bytes()).zip(x) {
        let (s, z, q) = decode_block(format.bits, b);
        let acc: i32 = q.iter().zip(&xb.qs).map(|(&q, &x)| q * x as i32).sum();
        sum += s * xb.d * (acc - z * xb.isum) as f32;
    }
    sum
}

/// Little-endian f16 bytes to f32 (`out.len()` elements), 8 at a time with F16C where the CPU
/// has it. GPTQ checkpoints keep `lm_head` (and the tied embedding) in fp16; for a small model
/// that matrix is a third of the bytes read per decoded token, so its conversion matters.
pub fn f16_to_f32(feat: Features, src: &[u8], out: &mut [f32]) {
    assert!(
        src.len() >= 2 * out.len(),
        "f16_to_f32: {} bytes for {} values",
        src.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if feat.avx2_fma {
        // SAFETY: `avx2_fma` is only set when the CPU has AVX2, FMA and F16C; sizes checked.
        return unsafe { f16c_to_f32(src, out) };
    }
    let _ = feat;
    for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16c_to_f32(src: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n8 = out.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    for i in n8..out.len() {
        out[i] = f16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32();
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

/// `y[t, r] = sum_i x[t, i] * W[r, i]` for a packed GPTQ `w`; `x` is (n, cols) and `y` is
/// (n, rows). Activations are gathered through `w.perm` and quantized to 8 bits once (below
/// 8 bits; 8-bit weights keep f32 activations, see [`matmul_float`]).
pub fn matmul(
    pool: &ThreadPool,
    feat: Features,
    format: GptqFormat,
    w: &WeightView,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    if format.bits == 8 {
        return matmul_float(pool, feat, w, x, n, y);
    }
    let (rows, cols) = (w.rows, w.cols);
    let blocks = cols / QK;
    let mut xq = vec![BlockQ8::default(); n * blocks];
    let mut gathered = vec![0f32; if w.perm.is_some() { cols } else { 0 }];
    for (xr, qr) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(blocks.max(1))) {
        match w.perm {
            Some(p) => {
                for (g, &i) in gathered.iter_mut().zip(p) {
                    *g = xr[i as usize];
                }
                quantize_row(&gathered, qr);
            }
            None => quantize_row(xr, qr),
        }
    }
    let k = pick_kernels(format, feat);
    let out = SharedOut(y.as_mut_ptr());
    pool.for_ranges(rows, ROW_TILE, |range| {
        // SAFETY (all writes): each (t, r) is written by exactly one thread, in bounds.
        let put = |t: usize, r: usize, v: f32| unsafe { out.write(t * rows + r, v) };
        let xrow = |t: usize| &xq[t * blocks..(t + 1) * blocks];
        for tile_start in range.clone().step_by(ROW_TILE) {
            let tile = tile_start..(tile_start + ROW_TILE).min(range.end);
            let mut t = 0;
            while t + 4 <= n {
                let xs = [xrow(t), xrow(t + 1), xrow(t + 2), xrow(t + 3)];
                let mut r = tile.start;
                while r + 4 <= tile.end {
                    let v =
                        (k.four_by_four)([w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)], xs);
                    for (i, row) in v.into_iter().enumerate() {
                        for (j, v) in row.into_iter().enumerate() {
                            put(t + j, r + i, v);
                        }
                    }
                    r += 4;
                }
                for r in r..tile.end {
                    let [v] = (k.four_tokens)([w.row(r)], xs);
                    for (j, v) in v.into_iter().enumerate() {
                        put(t + j, r, v);
                    }
                }
                t += 4;
            }
            for t in t..n {
                let mut r = tile.start;
                while r + 4 <= tile.end {
                    let v = (k.four_rows)(
                        [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)],
                        [xrow(t)],
                    );
                    for (j, [v]) in v.into_iter().enumerate() {
                        put(t, r + j, v);
                    }
                    r += 4;
                }
                for r in r..tile.end {
                    put(t, r, (k.one)([w.row(r)], [xrow(t)])[0][0]);
                }
            }
        }
    });
}

/// 8-bit weights against f32 activations. Rounding the activations to 8 bits as well would
/// double the error of an 8-bit checkpoint: on the default model it alone moved perplexity
/// by ~1% over fp16, which is the whole budget users of 8-bit files expect. Each block's
/// weights are dequantized exactly (`s * (q - z)` fits f32's mantissa) in registers.
fn matmul_float(
    pool: &ThreadPool,
    feat: Features,
    w: &WeightView,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let (rows, cols) = (w.rows, w.cols);
    let gathered: Vec<f32>;
    let x = match w.perm {
        Some(p) => {
            gathered = x
                .chunks_exact(cols)
                .flat_map(|xr| p.iter().map(|&i| xr[i as usize]))
                .collect();
            &gathered[..]
        }
        None => x,
    };
    let out = SharedOut(y.as_mut_ptr());
    pool.for_ranges(rows, ROW_TILE, |range| {
        for r in range {
            let row = w.row(r);
            let mut t = 0;
            while t < n {
                let k = (n - t).min(4);
                let xs: [&[f32]; 4] =
                    std::array::from_fn(|j| &x[(t + j.min(k - 1)) * cols..][..cols]);
                let v = dot8_float(feat, row, xs);
                for (j, v) in v.into_iter().take(k).enumerate() {
                    // SAFETY: each (t, r) is written by exactly one thread, in bounds.
                    unsafe { out.write((t + j) * rows + r, v) };
                }
                t += k;
            }
        }
    });
}

/// One 8-bit packed row against four f32 activation rows.
fn dot8_float(feat: Features, row: &[u8], xs: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if feat.avx2_fma {
        // SAFETY: `avx2_fma` is only set when the CPU has AVX2, FMA and F16C; every x row
        // holds 32 values per block of `row`.
        return unsafe { dot8_float_avx2(row, xs) };
    }
    let _ = feat;
    let mut acc = [0f32; 4];
    for (b, blk) in row
        .chunks_exact(GptqFormat { bits: 8 }.block_bytes())
        .enumerate()
    {
        let (s, z, q) = decode_block(8, blk);
        for (a, x) in acc.iter_mut().zip(xs) {
            let xb = &x[b * QK..(b + 1) * QK];
            *a += q
                .iter()
                .zip(xb)
                .map(|(&q, &x)| s * (q - z) as f32 * x)
                .sum::<f32>();
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_float_avx2(row: &[u8], xs: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let bb = GptqFormat { bits: 8 }.block_bytes();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let s = _mm256_set1_ps(f16::from_le_bytes([blk[0], blk[1]]).to_f32());
        let z = _mm256_set1_epi32(i16::from_le_bytes([blk[2], blk[3]]) as i32);
        for e in 0..4 {
            let q = _mm_loadl_epi64(blk.as_ptr().add(4 + 8 * e) as *const __m128i);
            let q = _mm256_sub_epi32(_mm256_cvtepi8_epi32(q), z);
            let wv = _mm256_mul_ps(_mm256_cvtepi32_ps(q), s);
            for (a, x) in acc.iter_mut().zip(xs) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(b * QK + 8 * e));
                *a = _mm256_fmadd_ps(wv, xv, *a);
            }
        }
    }
    acc.map(|a| {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    })
}

/// R weight rows against N activation rows.
type RowsDot<const R: usize, const N: usize> = fn([&[u8]; R], [&[BlockQ8]; N]) -> [[f32; N]; R];

struct Kernels {
    one: RowsDot<1, 1>,
    four_rows: RowsDot<4, 1>,
    four_tokens: RowsDot<1, 4>,
    four_by_four: RowsDot<4, 4>,
}

fn pick_kernels(format: GptqFormat, feat: Features) -> Kernels {
    macro_rules! simd {
        ($m:ident, $b:literal) => {
            // SAFETY (all): chosen only when the CPU has the module's instruction sets.
            Kernels {
                one: |r, x| unsafe { $m::dot::<$b, 1, 1>(r, x) },
                four_rows: |r, x| unsafe { $m::dot::<$b, 4, 1>(r, x) },
                four_tokens: |r, x| unsafe { $m::dot::<$b, 1, 4>(r, x) },
                four_by_four: |r, x| unsafe { $m::dot::<$b, 4, 4>(r, x) },
            }
        };
    }
    macro_rules! for_bits {
        ($m:ident) => {
            match format.bits {
                2 => simd!($m, 2),
                3 => simd!($m, 3),
                4 => simd!($m, 4),
                _ => unreachable!("8-bit weights run against f32 activations"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        if feat.avx512_vnni {
            return for_bits!(vnni);
        }
        if feat.avx2_fma {
            return for_bits!(avx2);
        }
    }
    let _ = feat;
    macro_rules! portable {
        ($b:literal) => {
            Kernels {
                one: |r, x| [[dot_portable(GptqFormat { bits: $b }, r[0], x[0])]],
                four_rows: |r, x| r.map(|r| [dot_portable(GptqFormat { bits: $b }, r, x[0])]),
                four_tokens: |r, x| [x.map(|x| dot_portable(GptqFormat { bits: $b }, r[0], x))],
                four_by_four: |r, x| {
                    r.map(|r| x.map(|x| dot_portable(GptqFormat { bits: $b }, r, x)))
                },
            }
        };
    }
    match format.bits {
        2 => portable!(2),
        3 => portable!(3),
        4 => portable!(4),
        _ => unreachable!("8-bit weights run against f32 activations"),
    }
}

// ---------------------------------------------------------------------------------------------
// SIMD versions, generated for AVX2 (maddubs + madd) and AVX-512 VNNI (dpbusd).

#[cfg(target_arch = "x86_64")]
macro_rules! gptq_kernels {
    ($features:literal, $dot:path) => {
        use crate::cpu::q8::BlockQ8;
        use std::arch::x86_64::*;

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }

        /// The low two bits of the 32 codes from the 8 bytes at `p`, in element order.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_2bit(p: *const u8) -> __m256i {
            let v = _mm_loadl_epi64(p as *const __m128i);
            let m = _mm_set1_epi8(3);
            let a = _mm_and_si128(v, m);
            let b = _mm_and_si128(_mm_srli_epi16(v, 2), m);
            let c = _mm_and_si128(_mm_srli_epi16(v, 4), m);
            let d = _mm_and_si128(_mm_srli_epi16(v, 6), m);
            _mm256_set_m128i(_mm_unpacklo_epi64(c, d), _mm_unpacklo_epi64(a, b))
        }

        /// 32 codes of `BITS` bits from the block at `b` (past its 4 header bytes), as
        /// unsigned bytes (2 to 4 bits; 8-bit weights run against f32 activations).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack<const BITS: u32>(p: *const u8) -> __m256i {
            match BITS {
                2 => unpack_2bit(p),
                3 => {
                    let high = (p.add(8) as *const u32).read_unaligned() as i32;
                    // Byte e of the result takes bit e of `high`: broadcast byte e/8, test bit e%8.
                    let bytes = _mm256_shuffle_epi8(
                        _mm256_set1_epi32(high),
                        _mm256_set_epi64x(
                            0x0303_0303_0303_0303,
                            0x0202_0202_0202_0202,
                            0x0101_0101_0101_0101,
                            0,
                        ),
                    );
                    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
                    _mm256_or_si256(unpack_2bit(p), _mm256_and_si256(set, _mm256_set1_epi8(4)))
                }
                4 => {
                    let raw = _mm_loadu_si128(p as *const __m128i);
                    let mask = _mm_set1_epi8(0x0F);
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    _mm256_set_m128i(hi, lo)
                }
                _ => unreachable!("{BITS}-bit codes take no integer kernel"),
            }
        }

        /// R packed rows times N activation rows: `out[r][n] = row_r . x_n`.
        /// # Safety
        /// The CPU has the enabled features; every row holds `xs[n].len()` blocks of `BITS`.
        #[target_feature(enable = $features)]
        pub unsafe fn dot<const BITS: u32, const R: usize, const N: usize>(
            rows: [&[u8]; R],
            xs: [&[BlockQ8]; N],
        ) -> [[f32; N]; R] {
            let bb = 4 + 4 * BITS as usize;
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut offs = [[0f32; N]; R];
            for i in 0..xs[0].len() {
                for r in 0..R {
                    let b = rows[r].as_ptr().add(i * bb);
                    let bits16 = (b as *const u16).read_unaligned();
                    let s = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits16 as i32)));
                    let z = (b.add(2) as *const i16).read_unaligned() as f32;
                    let w = unpack::<BITS>(b.add(4));
                    for n in 0..N {
                        let xb = xs[n].get_unchecked(i);
                        let x = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                        let sd = s * xb.d;
                        let p = _mm256_cvtepi32_ps($dot(w, x));
                        acc[r][n] = _mm256_fmadd_ps(_mm256_set1_ps(sd), p, acc[r][n]);
                        offs[r][n] += sd * z * xb.isum as f32;
                    }
                }
            }
            std::array::from_fn(|r| std::array::from_fn(|n| hsum(acc[r][n]) - offs[r][n]))
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {

    /// u8 x i8 products summed in groups of four into eight i32 lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }

    gptq_kernels!("avx2,fma,f16c", dot_u8_i8);
}

#[cfg(target_arch = "x86_64")]
mod vnni {

    /// u8 x i8 products summed in groups of four into eight i32 lanes, in one instruction.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }

    gptq_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_u8_i8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::Rng;
    use crate::cpu::matmul::WeightFormat;
    use formats::gptq::CheckpointFormat;

    /// A layer with random codes, zeros and scales; `act_order` shuffles g_idx.
    fn random_layer(
        bits: u32,
        k: usize,
        n: usize,
        gs: usize,
        act_order: bool,
        rng: &mut Rng,
    ) -> GptqLinear {
        let groups = k.div_ceil(gs);
        let maxq = (1u32 << bits) - 1;
        let codes: Vec<u8> = (0..k * n)
            .map(|_| (rng.next_u32() % (maxq + 1)) as u8)
            .collect();
        // v1 zeros are 1..=2^b (stored 0..2^b-1), covering the 8-bit zero of 256.
        let zeros: Vec<i32> = (0..groups * n)
            .map(|_| (rng.next_u32() % (maxq + 1)) as i32 + 1)
            .collect();
        let scales = (0..groups * n)
            .map(|_| f16::from_f32(0.001 + 0.02 * rng.f32().abs()))
            .collect();
        let mut order: Vec<usize> = (0..k).collect();
        if act_order {
            for i in (1..k).rev() {
                order.swap(i, rng.next_u32() as usize % (i + 1));
            }
        }
        let mut g_idx = vec![0i32; k];
        for (r, &c) in order.iter().enumerate() {
            g_idx[c] = (r / gs) as i32;
        }
        GptqLinear::from_codes(
            bits,
            k,
            n,
            CheckpointFormat::V1,
            &codes,
            &zeros,
            scales,
            g_idx,
        )
        .unwrap()
    }

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
    fn dequantized_rows_equal_the_checkpoint_formula() {
        let mut rng = Rng::new(1);
        for bits in [2, 3, 4, 8] {
            for (gs, act) in [(64, false), (32, true), (128, true), (160, false)] {
                let l = random_layer(bits, 160, 5, gs, act, &mut rng);
                let want = l.dequantize().unwrap();
                let p = repack(&l).unwrap();
                assert_eq!(p.perm.is_some(), act, "{bits} bits gs {gs}");
                let view = WeightView {
                    format: WeightFormat::Gptq(p.format),
                    data: &p.data,
                    rows: 5,
                    cols: 160,
                    perm: p.perm.as_deref(),
                };
                let mut row = vec![0f32; 160];
                for r in 0..5 {
                    view.dequantize_row(r, &mut row);
                    assert_eq!(
                        row,
                        want[r * 160..(r + 1) * 160],
                        "{bits} bits gs {gs} act {act} row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_matches_reference_on_every_path() {
        let pool = ThreadPool::new(3);
        let mut rng = Rng::new(2);
        for bits in [2, 3, 4, 8] {
            for (rows, cols, gs, act, n) in [
                (1, 32, 32, false, 1),
                (13, 128, 32, true, 5),
                (37, 576, 128, true, 9),
                (8, 256, 256, false, 4),
                (48, 320, 64, true, 6),
                (16, 128, 128, false, 1),
                (32, 576, 128, true, 7),
                (16, 1536, 128, false, 2),
                (16, 320, 320, true, 3),
            ] {
                let l = random_layer(bits, cols, rows, gs, act, &mut rng);
                let wf = l.dequantize().unwrap();
                let p = repack(&l).unwrap();
                let view =
                    WeightView::new(WeightFormat::Gptq(p.format), &p.data, rows, cols).unwrap();
                let view = WeightView {
                    perm: p.perm.as_deref(),
                    ..view
                };
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                // 4 bits also in the 16-row interleaved layout (when the rows allow it).
                let interleaved = (bits == 4)
                    .then(|| crate::cpu::packed::pack_gptq4(&p.data, rows, cols))
                    .flatten();
                // Groups of 128 or more share headers per 4 blocks (the last run may be short).
                if let Some((kind, _)) = &interleaved {
                    let want = if gs >= 128 {
                        crate::cpu::packed::PackedKind::Q4G
                    } else {
                        crate::cpu::packed::PackedKind::Q4Z
                    };
                    assert_eq!(*kind, want, "{rows} x {cols} g{gs}");
                }
                let mut views = vec![(view, all_features())];
                if let Some((kind, data)) = &interleaved {
                    let v = WeightView::new(WeightFormat::Packed(*kind), data, rows, cols).unwrap();
                    let mut row = vec![0f32; cols];
                    for r in 0..rows {
                        let v = WeightView {
                            perm: p.perm.as_deref(),
                            ..v
                        };
                        v.dequantize_row(r, &mut row);
                        assert_eq!(row, wf[r * cols..(r + 1) * cols], "{kind:?} row {r}");
                    }
                    let feats = all_features()
                        .into_iter()
                        .filter(|f| !f.avx2_fma || f.avx512_vnni);
                    views.push((
                        WeightView {
                            perm: p.perm.as_deref(),
                            ..v
                        },
                        feats.collect(),
                    ));
                }
                let mut ys = Vec::new();
                for (view, feat) in views
                    .iter()
                    .flat_map(|(v, fs)| fs.iter().map(move |f| (v, *f)))
                {
                    let mut y = vec![f32::NAN; n * rows];
                    crate::cpu::matmul::matmul_with(&pool, feat, view, &x, n, &mut y);
                    for t in 0..n {
                        for r in 0..rows {
                            let prods = (0..cols).map(|i| x[t * cols + i] * wf[r * cols + i]);
                            let exact: f32 = prods.clone().sum();
                            let abs: f32 = prods.map(f32::abs).sum();
                            let got = y[t * rows + r];
                            // 8-bit activations: each product moves by at most |w| * d_x / 2,
                            // about 0.4% of |x|; 8-bit weights keep f32 activations.
                            let tol = if bits == 8 { 1e-5 } else { 0.01 };
                            assert!(
                                (got - exact).abs() <= tol * abs + 1e-5,
                                "{bits} bits {feat:?} [{t},{r}]: {got} vs {exact}"
                            );
                        }
                    }
                    ys.push(y);
                }
                // Every path does the same integer sums: only float summation order differs.
                for y in &ys[1..] {
                    for (a, b) in y.iter().zip(&ys[0]) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{bits} bits: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f16_conversion_matches_half_on_every_path() {
        let mut rng = Rng::new(4);
        for n in [1usize, 7, 8, 9, 576] {
            let v: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.f32() * 100.0)).collect();
            let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_le_bytes()).collect();
            // An odd offset: rows of a memory map need not be aligned.
            let mut shifted = vec![0u8];
            shifted.extend(&bytes);
            for feat in all_features() {
                let mut out = vec![f32::NAN; n];
                f16_to_f32(feat, &shifted[1..], &mut out);
                assert!(
                    out.iter().zip(&v).all(|(o, h)| *o == h.to_f32()),
                    "{feat:?} {n}"
                );
            }
        }
    }

    #[test]
    fn groups_that_split_a_block_are_refused() {
        let mut l = random_layer(4, 64, 2, 32, false, &mut Rng::new(3));
        l.g_idx[5] = 1;
        assert!(repack(&l).unwrap_err().contains("groups 0 and 1"));
    }
}
