//! Every kernel run on the GPU against a plain CPU reference on fresh random inputs (outputs
//! poisoned with NaN first, so an unwritten element fails), then the big ones timed against
//! their bytes-moved floor. `meditron bench --device cuda --check-kernels` runs this.

use crate::driver::{Buf, Gpu};
use crate::gptq::{repack, GptqTensors, Packed};
use crate::kernels::{
    gptq_dequant, gptq_dequant_cols, gptq_gemv, Heads, Ops, QLinear, ATTN_SPLIT, PAGE,
};
use anyhow::{bail, Result};
use half::f16;

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545F4914F6CDD1D)
    }
    pub fn u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
    /// Roughly normal (sum of uniforms), mean 0, std 1.
    pub fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| self.u32() as f32 / u32::MAX as f32)
            .sum::<f32>()
            * 1.732
            - 3.464
    }
}

fn h(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}
fn f(x: u16) -> f32 {
    f16::from_bits(x).to_f32()
}

/// ||a - b|| / ||b||, NaN if any element of a is NaN.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() {
            return f64::NAN;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

pub struct Report {
    pub lines: Vec<String>,
    pub failed: usize,
}
impl Report {
    fn check(&mut self, name: &str, err: f64, bound: f64) {
        let ok = err <= bound; // NaN fails
        if !ok {
            self.failed += 1;
        }
        self.lines.push(format!(
            "{} {name}: rel err {err:.2e} (bound {bound:.0e})",
            if ok { "PASS" } else { "FAIL" }
        ));
    }
}

fn poisoned(gpu: &Gpu, bytes: usize) -> Result<Buf> {
    let b = gpu.alloc(bytes)?;
    gpu.fill32(&b, 0x7fc00000)?; // f32 NaN (and fp16 NaN pairs)
    Ok(b)
}

fn upload_q(gpu: &Gpu, p: &Packed) -> Result<QLinear> {
    let perm = p.perm.as_ref().map(|v| gpu.upload(v)).transpose()?;
    let q = QLinear {
        qw: gpu.upload(&p.words)?,
        scales: gpu.upload(&p.scales)?,
        zeros: p.zeros.as_ref().map(|z| gpu.upload(z)).transpose()?,
        perm,
        inv_perm: None,
        k: p.k,
        n: p.n,
        bits: p.bits,
        group_size: p.group_size,
        kw: crate::kernels::default_kw(p.bits, p.n),
        seg: [p.n, p.n],
    };
    q.validate()?;
    Ok(q)
}

/// A GPTQ layer in checkpoint form (act-order g_idx, optional asymmetric zeros), repacked.
fn random_gptq(
    rng: &mut Rng,
    bits: u32,
    k: usize,
    n: usize,
    group: Option<usize>,
    act: bool,
    sym: bool,
) -> Result<Packed> {
    let gs = group.unwrap_or(k);
    let groups = k / gs;
    let codes: Vec<u32> = (0..k * n).map(|_| rng.u32() % (1 << bits)).collect();
    let zeros: Vec<u32> = (0..groups * n)
        .map(|_| {
            if sym {
                (1 << (bits - 1)) - 1
            } else {
                rng.u32() % ((1 << bits) - 1)
            }
        })
        .collect();
    let std_q = (1u32 << bits) as f32 / 12f32.sqrt();
    let s = 1.0 / (std_q * (k as f32).sqrt());
    let scales: Vec<u16> = (0..groups * n)
        .map(|_| h(s * (0.5 + (rng.u32() % 1000) as f32 / 1000.0)))
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    if act {
        for i in (1..k).rev() {
            order.swap(i, rng.u32() as usize % (i + 1));
        }
    }
    let mut g_idx = vec![0i32; k];
    for (rank, &row) in order.iter().enumerate() {
        g_idx[row] = (rank / gs) as i32;
    }
    let qweight = crate::gptq::gptq_pack_rows(&codes, bits, k, n);
    let qzeros = crate::gptq::gptq_pack_cols(&zeros, bits, groups, n);
    repack(&GptqTensors {
        bits,
        k,
        n,
        group_size: gs,
        qweight: &qweight,
        qzeros: &qzeros,
        scales: &scales,
        g_idx: &g_idx,
        zero_offset: 1,
    })
}

/// Runs every correctness check; returns the report (failures counted, not fatal).
pub fn check_all(gpu: &Gpu) -> Result<Report> {
    let mut r = Report {
        lines: Vec::new(),
        failed: 0,
    };
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );

    // GPTQ GEMV (decode) and dequant + cuBLAS GEMM (prefill), against the spec's dequantization
    // in original row order with x gathered through the act-order permutation.
    let (k, n) = (2304usize, 448usize); // K not a multiple of a block's 1024 rows, N not of 128
    for bits in [4u32, 3, 8] {
        for (group, act, sym) in [
            (Some(128), true, true),
            (Some(32), false, false),
            (None, false, true),
            (Some(128), true, false),
        ] {
            let p = random_gptq(&mut rng, bits, k, n, group, act, sym)?;
            let wref = p.dequant_ref(); // [K][N], sorted rows
            let mut q = upload_q(gpu, &p)?;
            let kws: &[usize] = if bits == 8 { &[64] } else { &[64, 128] };
            for (nb, &kw) in [1usize, 4]
                .iter()
                .flat_map(|nb| kws.iter().map(move |kw| (*nb, kw)))
            {
                q.kw = kw;
                let x: Vec<f32> = (0..nb * k).map(|_| f(h(rng.normal()))).collect();
                // The kernel reads x in the sorted order; the model's norm kernel gathers it.
                let xs: Vec<u16> = (0..nb * k)
                    .map(|i| {
                        let (b, kk) = (i / k, i % k);
                        h(x[b * k + p.perm.as_ref().map_or(kk, |pm| pm[kk] as usize)])
                    })
                    .collect();
                let mut yref = vec![0f32; nb * n];
                for b in 0..nb {
                    for kk in 0..k {
                        let xv = f(xs[b * k + kk]);
                        for c in 0..n {
                            yref[b * n + c] += xv * wref[kk * n + c];
                        }
                    }
                }
                // ... and in the pair order of the dequantizer (see gptq::xpos).
                let mut shuffled = vec![0u16; nb * k];
                for (i, &v) in xs.iter().enumerate() {
                    shuffled[(i / k) * k + crate::gptq::xpos(i % k, bits)] = v;
                }
                let xd = gpu.upload(&shuffled)?;
                let out = poisoned(gpu, q.splits() * nb * n * 4)?;
                let s = gptq_gemv(gpu, &q, xd.ptr, out.ptr, nb)?;
                let parts: Vec<f32> = gpu.read(&out, 0, s * nb * n)?;
                let y: Vec<f32> = (0..nb * n)
                    .map(|i| (0..s).map(|j| parts[j * nb * n + i]).sum())
                    .collect();
                let name = format!(
                    "gptq_gemv {bits}-bit group {} act {act} sym {sym} rows {nb} kw {kw}",
                    group.map_or("none".into(), |g| g.to_string())
                );
                // fp16 accumulation within a group: ~1e-3 relative.
                r.check(&name, rel_err(&y, &yref), 4e-3);
                // The same product added into a residual stream by the kernel's last blocks,
                // with the per-128-column sums of squares; twice, so the counters must have
                // reset themselves in between.
                let tiles = n.div_ceil(128);
                let h0: Vec<f32> = (0..nb * n).map(|_| rng.normal()).collect();
                let hd = gpu.upload(&h0)?;
                let ss = poisoned(gpu, nb * tiles * 4)?;
                let counters = gpu.upload(&vec![0u32; tiles])?;
                let mut ok = true;
                let (mut e_h, mut e_ss) = (0f64, 0f64);
                for round in 0..2 {
                    gpu.write(&hd, 0, &h0)?;
                    let add = (hd.ptr, ss.ptr, counters.ptr);
                    crate::kernels::gptq_gemv_fused(gpu, &q, xd.ptr, out.ptr, nb, Some(add))?;
                    let hg: Vec<f32> = gpu.read(&hd, 0, nb * n)?;
                    let dh: Vec<f32> = hg.iter().zip(&h0).map(|(a, b)| a - b).collect();
                    let ssg: Vec<f32> = gpu.read(&ss, 0, nb * tiles)?;
                    let ssref: Vec<f32> = (0..nb * tiles)
                        .map(|i| {
                            let (b, t) = (i / tiles, i % tiles);
                            (t * 128..((t + 1) * 128).min(n))
                                .map(|c| (hg[b * n + c] as f64).powi(2))
                                .sum::<f64>() as f32
                        })
                        .collect();
                    e_h = e_h.max(rel_err(&dh, &yref));
                    e_ss = e_ss.max(rel_err(&ssg, &ssref));
                    let cz: Vec<u32> = gpu.read(&counters, 0, tiles)?;
                    ok &= cz.iter().all(|&c| c == 0);
                    let _ = round;
                }
                r.check(&format!("{name} + residual add"), e_h, 4e-3);
                r.check(
                    &format!("{name} + residual add: sums of squares"),
                    e_ss,
                    1e-5,
                );
                r.check(
                    &format!("{name} + residual add: counters reset"),
                    if ok { 0.0 } else { 1.0 },
                    0.0,
                );
            }
            // Prefill path: dequantize to fp16 [K][N], then cuBLAS with f32 output.
            let w16 = poisoned(gpu, k * n * 2)?;
            gptq_dequant(gpu, &q, w16.ptr)?;
            let wd: Vec<u16> = gpu.read(&w16, 0, k * n)?;
            let wdf: Vec<f32> = wd.iter().map(|&v| f(v)).collect();
            // Rows come back in the checkpoint's original order.
            let mut wref_orig = vec![0f32; k * n];
            for kk in 0..k {
                let o = p.perm.as_ref().map_or(kk, |pm| pm[kk] as usize);
                wref_orig[o * n..(o + 1) * n].copy_from_slice(&wref[kk * n..(kk + 1) * n]);
            }
            r.check(
                &format!("gptq_dequant {bits}-bit group {group:?} act {act} (original order)"),
                rel_err(&wdf, &wref_orig),
                1e-3,
            );
            if bits == 4 {
                let m = 37;
                let xs: Vec<u16> = (0..m * k).map(|_| h(rng.normal())).collect();
                let mut yref = vec![0f32; m * n];
                for i in 0..m {
                    for kk in 0..k {
                        let xv = f(xs[i * k + kk]);
                        for c in 0..n {
                            yref[i * n + c] += xv * wdf[kk * n + c];
                        }
                    }
                }
                let xd = gpu.upload(&xs)?;
                let out = poisoned(gpu, m * n * 4)?;
                gpu.gemm_f16(xd.ptr, w16.ptr, out.ptr, m, n, k, true)?;
                r.check(
                    &format!("cuBLAS GEMM [K][N] m={m} group {group:?}"),
                    rel_err(&gpu.read(&out, 0, m * n)?, &yref),
                    1e-4,
                );
                // The prefill pipeline's column slices: a [K][w] slice equals those columns of
                // the whole dequantization bit for bit, and its GEMM lands in those columns.
                let (c0, w) = (64usize, 192usize);
                let sl = poisoned(gpu, k * w * 2)?;
                gptq_dequant_cols(gpu, false, &q, sl.ptr, c0, w)?;
                let got: Vec<u16> = gpu.read(&sl, 0, k * w)?;
                let same =
                    (0..k).all(|kk| got[kk * w..(kk + 1) * w] == wd[kk * n + c0..kk * n + c0 + w]);
                r.check(
                    &format!(
                        "gptq_dequant_cols {bits}-bit columns {c0}..{} group {group:?} (bit-exact)",
                        c0 + w
                    ),
                    if same { 0.0 } else { 1.0 },
                    0.0,
                );
                let out = poisoned(gpu, m * n * 4)?;
                gpu.gemm_f16_ldc(xd.ptr, sl.ptr, out.ptr + (c0 * 4) as u64, m, w, k, true, n)?;
                let all: Vec<f32> = gpu.read(&out, 0, m * n)?;
                let (mut ys, mut yr) = (Vec::new(), Vec::new());
                for i in 0..m {
                    ys.extend_from_slice(&all[i * n + c0..i * n + c0 + w]);
                    yr.extend_from_slice(&yref[i * n + c0..i * n + c0 + w]);
                }
                r.check(
                    &format!(
                        "cuBLAS GEMM into columns {c0}..{} (ldc) m={m} group {group:?}",
                        c0 + w
                    ),
                    rel_err(&ys, &yr),
                    1e-4,
                );
            }
        }
    }

    check_load_repack(gpu, &mut rng, &mut r)?;
    check_tc(gpu, &mut rng, &mut r)?;

    for heads in [
        Heads {
            n_heads: 64,
            n_kv: 8,
            head_dim: 128,
        },
        Heads {
            n_heads: 9,
            n_kv: 3,
            head_dim: 64,
        },
    ] {
        check_llama_ops(gpu, &mut rng, heads, &mut r)?;
        check_gemv_rope(gpu, &mut rng, heads, &mut r)?;
    }
    check_gemv_swiglu(gpu, &mut rng, &mut r)?;
    check_sampling(gpu, &mut rng, &mut r)?;
    Ok(r)
}

/// The q|k|v GEMV of one row with qkv_rope folded in against the GEMV + qkv_rope pair.
fn check_gemv_rope(gpu: &Gpu, rng: &mut Rng, hd: Heads, r: &mut Report) -> Result<()> {
    let ops = Ops { gpu, heads: hd };
    let (nh, nkv, d) = (hd.n_heads, hd.n_kv, hd.head_dim);
    let (k, n) = (1024usize, (nh + 2 * nkv) * d);
    let tag = format!("(heads {nh}/{nkv}x{d})");
    for bits in [4u32, 3] {
        let p = random_gptq(rng, bits, k, n, Some(128), false, true)?;
        let q = upload_q(gpu, &p)?;
        let x: Vec<u16> = (0..k).map(|_| h(rng.normal())).collect();
        let xd = gpu.upload(&x)?;
        let max_ctx = 256usize;
        let max_pages = max_ctx / PAGE;
        let kv_elems = max_pages * PAGE * nkv * d;
        let cache: Vec<u16> = (0..kv_elems).map(|_| h(rng.normal())).collect();
        let half = d / 2;
        let cos: Vec<f32> = (0..max_ctx * half)
            .map(|i| ((i % 97) as f32 * 0.07).cos())
            .collect();
        let sin: Vec<f32> = (0..max_ctx * half)
            .map(|i| ((i % 97) as f32 * 0.07).sin())
            .collect();
        let (cd, sd) = (gpu.upload(&cos)?, gpu.upload(&sin)?);
        let posd = gpu.upload(&[77i32])?;
        let seqd = gpu.upload(&[0i32])?;
        let td = gpu.upload(&(0..max_pages as i32).rev().collect::<Vec<_>>())?;
        let part = gpu.alloc(q.splits() * n * 4)?;
        // Unfused.
        let (k1, v1) = (gpu.upload(&cache)?, gpu.upload(&cache)?);
        let q1 = poisoned(gpu, nh * d * 4)?;
        let s = gptq_gemv(gpu, &q, xd.ptr, part.ptr, 1)?;
        ops.qkv_rope(
            part.ptr, s, 1, posd.ptr, seqd.ptr, cd.ptr, sd.ptr, q1.ptr, k1.ptr, v1.ptr, td.ptr,
            max_pages,
        )?;
        // Fused, twice (the counters must reset themselves).
        let counters = gpu.upload(&vec![0u32; n.div_ceil(128)])?;
        let (k2, v2) = (gpu.upload(&cache)?, gpu.upload(&cache)?);
        let q2 = poisoned(gpu, nh * d * 4)?;
        let args = crate::kernels::RopeArgs {
            pos: posd.ptr,
            seq: seqd.ptr,
            cos: cd.ptr,
            sin: sd.ptr,
            q: q2.ptr,
            kc: k2.ptr,
            vc: v2.ptr,
            table: td.ptr,
            max_pages: max_pages as i32,
            nh: nh as i32,
            nkv: nkv as i32,
            hd: d as i32,
            page: PAGE as i32,
        };
        for _ in 0..2 {
            crate::kernels::gptq_gemv_rope(gpu, &q, xd.ptr, part.ptr, &args, counters.ptr)?;
        }
        let f32s = |b: &Buf, n: usize| gpu.read::<f32>(b, 0, n);
        let f16s = |b: &Buf| -> Result<Vec<f32>> {
            Ok(gpu
                .read::<u16>(b, 0, kv_elems)?
                .iter()
                .map(|&v| f(v))
                .collect())
        };
        let eq = rel_err(&f32s(&q2, nh * d)?, &f32s(&q1, nh * d)?);
        let ek = rel_err(&f16s(&k2)?, &f16s(&k1)?).max(rel_err(&f16s(&v2)?, &f16s(&v1)?));
        let cz = gpu
            .read::<u32>(&counters, 0, n.div_ceil(128))?
            .iter()
            .all(|&c| c == 0);
        r.check(
            &format!("gptq_gemv {bits}-bit + RoPE folded in: q vs GEMV + qkv_rope {tag}"),
            eq,
            1e-5,
        );
        r.check(
            &format!("gptq_gemv {bits}-bit + RoPE folded in: k/v cache vs GEMV + qkv_rope {tag}"),
            ek,
            1e-4,
        );
        r.check(
            &format!("gptq_gemv {bits}-bit + RoPE folded in: counters reset {tag}"),
            if cz { 0.0 } else { 1.0 },
            0.0,
        );
    }
    Ok(())
}

/// The gate|up GEMV of one row with swiglu folded in (MEDITRON_FUSE_SWIGLU=1): against the CPU
/// (the spec's dequantization, then silu(gate) * up with transformers' fp16 roundings, scattered
/// through down_proj's inverse permutation) and bit for bit against the GEMV + swiglu pair;
/// twice, so the counters must have reset themselves.
fn check_gemv_swiglu(gpu: &Gpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
    let ops = Ops {
        gpu,
        heads: Heads {
            n_heads: 64,
            n_kv: 8,
            head_dim: 128,
        },
    };
    let (k, inter) = (2304usize, 640usize);
    let n = 2 * inter;
    for bits in [4u32, 3] {
        let sym = bits == 3;
        let p = random_gptq(rng, bits, k, n, Some(128), true, sym)?;
        let wref = p.dequant_ref(); // [K][N], sorted rows
        let q = upload_q(gpu, &p)?;
        // x in the sorted row order (as the norm kernel leaves it), then in pair order.
        let xs: Vec<u16> = (0..k).map(|_| h(rng.normal())).collect();
        let mut shuffled = vec![0u16; k];
        for (i, &v) in xs.iter().enumerate() {
            shuffled[crate::gptq::xpos(i, bits)] = v;
        }
        let xd = gpu.upload(&shuffled)?;
        let mut yref = vec![0f64; n];
        for kk in 0..k {
            let xv = f(xs[kk]) as f64;
            for c in 0..n {
                yref[c] += xv * wref[kk * n + c] as f64;
            }
        }
        let mut inv: Vec<i32> = (0..inter as i32).collect();
        for i in (1..inter).rev() {
            inv.swap(i, rng.u32() as usize % (i + 1));
        }
        let mut aref = vec![0f32; inter];
        for j in 0..inter {
            let g = f(h(yref[j] as f32));
            let u = f(h(yref[inter + j] as f32));
            aref[inv[j] as usize] = f(h(g / (1.0 + (-g).exp()))) * u;
        }
        let iv = gpu.upload(&inv)?;
        let part = gpu.alloc(q.splits() * n * 4)?;
        let read_a = |b: &Buf| -> Result<(Vec<u16>, Vec<f32>)> {
            let got: Vec<u16> = gpu.read(b, 0, inter)?;
            let y = (0..inter)
                .map(|i| f(got[crate::gptq::xpos(i, bits)]))
                .collect();
            Ok((got, y))
        };
        // Unfused: GEMV, then swiglu.
        let a1 = poisoned(gpu, inter * 2)?;
        let s = gptq_gemv(gpu, &q, xd.ptr, part.ptr, 1)?;
        ops.swiglu(part.ptr, s, 1, iv.ptr, a1.ptr, inter, bits)?;
        let (bits1, y1) = read_a(&a1)?;
        r.check(
            &format!("gptq_gemv {bits}-bit act-order + swiglu (unfused) vs CPU"),
            rel_err(&y1, &aref),
            4e-3,
        );
        let counters = gpu.upload(&vec![0u32; inter / 128])?;
        let a2 = poisoned(gpu, inter * 2)?;
        let args = crate::kernels::SwigluArgs {
            inv_perm: iv.ptr,
            out: a2.ptr,
            inter: inter as i32,
            xbits: bits as i32,
        };
        for _ in 0..2 {
            crate::kernels::gptq_gemv_swiglu(gpu, &q, xd.ptr, part.ptr, &args, counters.ptr)?;
        }
        let (bits2, y2) = read_a(&a2)?;
        r.check(
            &format!("gptq_gemv {bits}-bit + SwiGLU folded in vs CPU"),
            rel_err(&y2, &aref),
            4e-3,
        );
        r.check(
            &format!("gptq_gemv {bits}-bit + SwiGLU folded in vs GEMV + swiglu (bit-exact)"),
            if bits1 == bits2 { 0.0 } else { 1.0 },
            0.0,
        );
        let cz = gpu
            .read::<u32>(&counters, 0, inter / 128)?
            .iter()
            .all(|&c| c == 0);
        r.check(
            &format!("gptq_gemv {bits}-bit + SwiGLU folded in: counters reset"),
            if cz { 0.0 } else { 1.0 },
            0.0,
        );
    }
    Ok(())
}

/// One part's checkpoint tensors (qweight, qzeros, scales, g_idx) and its CPU repack.
type Part = (Vec<u32>, Vec<u32>, Vec<u16>, Vec<i32>, Packed);

/// Checkpoint tensors of a fused linear (parts with their own act-order g_idx), as a loader sees
/// them: (qweight, qzeros, scales, g_idx) per part, and the CPU repack of each part.
fn random_parts(
    rng: &mut Rng,
    bits: u32,
    k: usize,
    ns: &[usize],
    gs: usize,
    sym: bool,
) -> Vec<Part> {
    let groups = k.div_ceil(gs);
    ns.iter()
        .map(|&n| {
            let codes: Vec<u32> = (0..k * n).map(|_| rng.u32() % (1 << bits)).collect();
            let zeros: Vec<u32> = (0..groups * n)
                .map(|_| {
                    if sym {
                        (1 << (bits - 1)) - 1
                    } else {
                        rng.u32() % ((1 << bits) - 1)
                    }
                })
                .collect();
            let s = 1.0 / ((1u32 << bits) as f32 / 12f32.sqrt() * (k as f32).sqrt());
            let scales: Vec<u16> = (0..groups * n)
                .map(|_| h(s * (0.5 + (rng.u32() % 1000) as f32 / 1000.0)))
                .collect();
            let mut order: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                order.swap(i, rng.u32() as usize % (i + 1));
            }
            let mut g_idx = vec![0i32; k];
            for (rank, &row) in order.iter().enumerate() {
                g_idx[row] = (rank / gs) as i32;
            }
            let qweight = crate::gptq::gptq_pack_rows(&codes, bits, k, n);
            let qzeros = crate::gptq::gptq_pack_cols(&zeros, bits, groups, n);
            let p = repack(&GptqTensors {
                bits,
                k,
                n,
                group_size: gs,
                qweight: &qweight,
                qzeros: &qzeros,
                scales: &scales,
                g_idx: &g_idx,
                zero_offset: 1,
            })
            .expect("valid random layer");
            (qweight, qzeros, scales, g_idx, p)
        })
        .collect()
}

/// The loader's GPU repack of a fused linear with parts of different permutations.
fn gpu_fused(gpu: &Gpu, bits: u32, k: usize, gs: usize, parts: &[Part]) -> Result<QLinear> {
    let n: usize = parts.iter().map(|p| p.4.n).sum();
    let groups = k.div_ceil(gs);
    let mut perms = Vec::new();
    for p in parts {
        let pm = crate::load::sort_by_group(&p.3, gs, groups)?
            .unwrap_or_else(|| (0..k as i32).collect());
        perms.extend(pm);
    }
    let perm = gpu.upload(&perms)?;
    let qw = gpu.alloc(k / 32 * bits as usize * n * 4)?;
    let scales = gpu.alloc(groups * n * 2)?;
    let zeros = gpu.alloc(groups * n)?;
    let mut col0 = 0;
    let mut seg = [n, n];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            seg[i - 1] = col0;
        }
        let np = p.4.n;
        let (raw, qz, sc) = (gpu.upload(&p.0)?, gpu.upload(&p.1)?, gpu.upload(&p.2)?);
        crate::kernels::gptq_repack_on_gpu(
            gpu,
            bits,
            raw.ptr,
            perm.ptr + (i * k * 4) as u64,
            qw.ptr,
            k,
            np,
            n,
            col0,
        )?;
        crate::kernels::copy_cols_u16(gpu, sc.ptr, scales.ptr, groups, np, n, col0)?;
        crate::kernels::gptq_zeros_on_gpu(gpu, bits, qz.ptr, zeros.ptr, groups, np, n, col0, 1)?;
        gpu.sync()?;
        col0 += np;
    }
    let q = QLinear {
        qw,
        scales,
        zeros: Some(zeros),
        perm: Some(perm),
        inv_perm: None,
        k,
        n,
        bits,
        group_size: gs,
        kw: crate::kernels::default_kw(bits, n),
        seg,
    };
    q.validate()?;
    Ok(q)
}

/// y[b][c] over the fused linear's parts: part p reads x through its own permutation.
fn fused_ref(parts: &[Part], x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let n: usize = parts.iter().map(|p| p.4.n).sum();
    let mut y = vec![0f32; rows * n];
    let mut col0 = 0;
    for p in parts {
        let pk = &p.4;
        let w = pk.dequant_ref();
        for b in 0..rows {
            for kk in 0..k {
                let xv = x[b * k + pk.perm.as_ref().map_or(kk, |pm| pm[kk] as usize)];
                for c in 0..pk.n {
                    y[b * n + col0 + c] += xv * w[kk * pk.n + c];
                }
            }
        }
        col0 += pk.n;
    }
    y
}

/// x [rows][k] gathered per part and shuffled into the pair order: [nseg][rows][k] fp16.
fn fused_x(parts: &[Part], x: &[f32], rows: usize, k: usize, bits: u32) -> Vec<u16> {
    let mut out = vec![0u16; parts.len() * rows * k];
    for (s, p) in parts.iter().enumerate() {
        for b in 0..rows {
            for kk in 0..k {
                let v = x[b * k + p.4.perm.as_ref().map_or(kk, |pm| pm[kk] as usize)];
                out[(s * rows + b) * k + crate::gptq::xpos(kk, bits)] = h(v);
            }
        }
    }
    out
}

/// The loader's path: checkpoint tensors repacked on the GPU equal the CPU repack bit for bit,
/// and a fused linear whose parts have different permutations multiplies right (GEMV per part
/// segment, and the dequantizer's per-part un-permutation).
fn check_load_repack(gpu: &Gpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
    let k = 2304usize; // 18 groups of 128
    for bits in [4u32, 3, 8] {
        let gs = 128;
        let parts = random_parts(rng, bits, k, &[192, 64, 96], gs, false);
        let q = gpu_fused(gpu, bits, k, gs, &parts)?;
        let n = q.n;
        let groups = k / gs;
        // Bit-exact against the CPU repack, column range by column range.
        let words: Vec<u32> = gpu.read(&q.qw, 0, k / 32 * bits as usize * n)?;
        let zeros: Vec<u8> = gpu.read(q.zeros.as_ref().unwrap(), 0, groups * n)?;
        let scales: Vec<u16> = gpu.read(&q.scales, 0, groups * n)?;
        let mut bad = 0usize;
        let mut col0 = 0;
        for p in &parts {
            let pk = &p.4;
            for row in 0..k / 32 * bits as usize {
                for c in 0..pk.n {
                    bad += usize::from(words[row * n + col0 + c] != pk.words[row * pk.n + c]);
                }
            }
            for g in 0..groups {
                for c in 0..pk.n {
                    let z = pk
                        .zeros
                        .as_ref()
                        .map_or(1u8 << (bits - 1), |z| z[g * pk.n + c]);
                    bad += usize::from(zeros[g * n + col0 + c] != z);
                    bad += usize::from(scales[g * n + col0 + c] != pk.scales[g * pk.n + c]);
                }
            }
            col0 += pk.n;
        }
        r.check(
            &format!(
                "GPU repack of checkpoint tensors {bits}-bit act-order asym, 3 parts (mismatches)"
            ),
            bad as f64,
            0.0,
        );
        // GEMV over the fused linear, 1 and 3 rows.
        for rows in [1usize, 3] {
            let x: Vec<f32> = (0..rows * k).map(|_| f(h(rng.normal()))).collect();
            let yref = fused_ref(&parts, &x, rows, k);
            let xd = gpu.upload(&fused_x(&parts, &x, rows, k, bits))?;
            let out = poisoned(gpu, q.splits() * rows * n * 4)?;
            let s = gptq_gemv(gpu, &q, xd.ptr, out.ptr, rows)?;
            let pr: Vec<f32> = gpu.read(&out, 0, s * rows * n)?;
            let y: Vec<f32> = (0..rows * n)
                .map(|i| (0..s).map(|j| pr[j * rows * n + i]).sum())
                .collect();
            r.check(
                &format!("gptq_gemv {bits}-bit fused parts with own permutations, rows {rows}"),
                rel_err(&y, &yref),
                4e-3,
            );
        }
        // Dequantizer: each part's rows back in original order.
        let w16 = poisoned(gpu, k * n * 2)?;
        gptq_dequant(gpu, &q, w16.ptr)?;
        let wd: Vec<u16> = gpu.read(&w16, 0, k * n)?;
        let mut wref = vec![0f32; k * n];
        let mut col0 = 0;
        for p in &parts {
            let pk = &p.4;
            let w = pk.dequant_ref();
            for kk in 0..k {
                let o = pk.perm.as_ref().map_or(kk, |pm| pm[kk] as usize);
                for c in 0..pk.n {
                    wref[o * n + col0 + c] = w[kk * pk.n + c];
                }
            }
            col0 += pk.n;
        }
        let wdf: Vec<f32> = wd.iter().map(|&v| f(v)).collect();
        r.check(
            &format!("gptq_dequant {bits}-bit fused parts (original order)"),
            rel_err(&wdf, &wref),
            1e-3,
        );
    }
    Ok(())
}

/// The tensor-core kernel for 9..32 rows against the reference (4-bit; sym and asym zeros,
/// group 128 / none, a fused linear with per-part permutations).
fn check_tc(gpu: &Gpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
    let k = 2304usize;
    // Symmetric weights take the kernel with each group's scales loaded once (one group
    // spanning the K splits, or 18 groups), asymmetric ones the per-slab zeros.
    for (gs, sym, ns) in [
        (128usize, true, vec![448usize]),
        (k, true, vec![320]),
        (128, false, vec![192, 64, 128]),
    ] {
        let parts = random_parts(rng, 4, k, &ns, gs, sym);
        let q = gpu_fused(gpu, 4, k, gs, &parts)?;
        let n = q.n;
        for rows in [9usize, 17, 32] {
            let x: Vec<f32> = (0..rows * k).map(|_| f(h(rng.normal()))).collect();
            let yref = fused_ref(&parts, &x, rows, k);
            let xd = gpu.upload(&fused_x(&parts, &x, rows, k, 4))?;
            // The default variant, and the cp.async ring (3 slabs, and 10: more than the 8 slabs
            // of the short last split; with the activations through it, 2 and 3; none).
            for ring in [
                None,
                Some((0, false)),
                Some((3, false)),
                Some((10, false)),
                Some((2, true)),
                Some((3, true)),
            ] {
                let out = poisoned(gpu, k.div_ceil(crate::kernels::TC_KCH) * rows * n * 4)?;
                let s = match ring {
                    None => crate::kernels::gptq_gemm_tc(gpu, &q, xd.ptr, out.ptr, rows)?,
                    Some(a) => crate::kernels::gptq_gemm_tc_variant(
                        gpu, &q, xd.ptr, out.ptr, rows, 1, 4, a,
                    )?,
                };
                let pr: Vec<f32> = gpu.read(&out, 0, s * rows * n)?;
                let y: Vec<f32> = (0..rows * n)
                    .map(|i| (0..s).map(|j| pr[j * rows * n + i]).sum())
                    .collect();
                r.check(
                    &format!(
                        "gptq_gemm_tc 4-bit group {gs} sym {sym} parts {} rows {rows}{}",
                        ns.len(),
                        ring.map_or(String::new(), |(a, x)| format!(
                            " ring {a}{}",
                            if x { "x" } else { "" }
                        ))
                    ),
                    rel_err(&y, &yref),
                    2e-3,
                );
            }
        }
    }
    Ok(())
}

fn check_llama_ops(gpu: &Gpu, rng: &mut Rng, hd: Heads, r: &mut Report) -> Result<()> {
    let ops = Ops { gpu, heads: hd };
    let tag = format!("(heads {}/{}x{})", hd.n_heads, hd.n_kv, hd.head_dim);
    // fp16 GEMV, nn.Linear layout.
    let (k, n) = (1152usize, 1000usize);
    let w: Vec<u16> = (0..n * k).map(|_| h(rng.normal() * 0.05)).collect();
    for rows in [1usize, 3] {
        let x: Vec<u16> = (0..rows * k).map(|_| h(rng.normal())).collect();
        let yref: Vec<f32> = (0..rows * n)
            .map(|i| {
                (0..k)
                    .map(|j| f(w[(i % n) * k + j]) * f(x[(i / n) * k + j]))
                    .sum()
            })
            .collect();
        let (wd, xd) = (gpu.upload(&w)?, gpu.upload(&x)?);
        let out = poisoned(gpu, rows * n * 4)?;
        ops.gemv_f16(wd.ptr, xd.ptr, out.ptr, k, n, rows)?;
        r.check(
            &format!("gemv_f16 rows {rows} {tag}"),
            rel_err(&gpu.read(&out, 0, rows * n)?, &yref),
            1e-5,
        );
        let out2 = poisoned(gpu, rows * n * 4)?;
        gpu.gemm_f16(xd.ptr, wd.ptr, out2.ptr, rows, n, k, false)?;
        r.check(
            &format!("cuBLAS GEMM [N][K] rows {rows} {tag}"),
            rel_err(&gpu.read(&out2, 0, rows * n)?, &yref),
            1e-4,
        );
    }

    // Residual add + RMSNorm + act-order gather.
    let (rows, hid, s) = (3usize, 2304usize, 2usize);
    let h0: Vec<f32> = (0..rows * hid).map(|_| rng.normal()).collect();
    let parts: Vec<f32> = (0..s * rows * hid).map(|_| rng.normal()).collect();
    let wn: Vec<u16> = (0..hid).map(|_| h(1.0 + 0.1 * rng.normal())).collect();
    let mut perm: Vec<i32> = (0..hid as i32).collect();
    for i in (1..hid).rev() {
        perm.swap(i, rng.u32() as usize % (i + 1));
    }
    let mut href = h0.clone();
    let mut yref = vec![0f32; rows * hid];
    for b in 0..rows {
        for i in 0..hid {
            href[b * hid + i] += (0..s).map(|j| parts[(j * rows + b) * hid + i]).sum::<f32>();
        }
        let ms = href[b * hid..(b + 1) * hid]
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            / hid as f64;
        let rs = 1.0 / (ms + 1e-5).sqrt();
        for kk in 0..hid {
            let j = perm[kk] as usize;
            yref[b * hid + kk] = f(h((href[b * hid + j] as f64 * rs) as f32)) * f(wn[j]);
        }
    }
    let (hd_, pd, wd, pm) = (
        gpu.upload(&h0)?,
        gpu.upload(&parts)?,
        gpu.upload(&wn)?,
        gpu.upload(&perm)?,
    );
    let out = poisoned(gpu, rows * hid * 2)?;
    let ss = gpu.alloc(rows * hid.div_ceil(256) * 4)?;
    // Written in the 4-bit GEMV's pair order, read back through gptq::xpos.
    ops.add_rmsnorm(
        pd.ptr, s, rows, hd_.ptr, wd.ptr, pm.ptr, out.ptr, hid, 1e-5, ss.ptr, 4, 1,
    )?;
    let got: Vec<u16> = gpu.read(&out, 0, rows * hid)?;
    let y: Vec<f32> = (0..rows * hid)
        .map(|i| f(got[(i / hid) * hid + crate::gptq::xpos(i % hid, 4)]))
        .collect();
    r.check(
        &format!("add_rmsnorm + gather {tag}"),
        rel_err(&y, &yref),
        2e-3,
    );
    r.check(
        &format!("add_rmsnorm residual {tag}"),
        rel_err(&gpu.read(&hd_, 0, rows * hid)?, &href),
        1e-6,
    );

    // SwiGLU with the down projection's scatter.
    let inter = 1536usize;
    let parts: Vec<f32> = (0..s * rows * 2 * inter)
        .map(|_| 2.0 * rng.normal())
        .collect();
    let mut inv: Vec<i32> = (0..inter as i32).collect();
    for i in (1..inter).rev() {
        inv.swap(i, rng.u32() as usize % (i + 1));
    }
    let mut yref = vec![0f32; rows * inter];
    for b in 0..rows {
        for j in 0..inter {
            let g = f(h((0..s)
                .map(|t| parts[(t * rows + b) * 2 * inter + j])
                .sum::<f32>()));
            let u = f(h((0..s)
                .map(|t| parts[(t * rows + b) * 2 * inter + inter + j])
                .sum::<f32>()));
            yref[b * inter + inv[j] as usize] = f(h(g / (1.0 + (-g).exp()))) * u;
        }
    }
    let (pd, iv) = (gpu.upload(&parts)?, gpu.upload(&inv)?);
    let out = poisoned(gpu, rows * inter * 2)?;
    // Written in the 3-bit GEMV's pair order, read back through gptq::xpos.
    ops.swiglu(pd.ptr, s, rows, iv.ptr, out.ptr, inter, 3)?;
    let got: Vec<u16> = gpu.read(&out, 0, rows * inter)?;
    let y: Vec<f32> = (0..rows * inter)
        .map(|i| f(got[(i / inter) * inter + crate::gptq::xpos(i % inter, 3)]))
        .collect();
    r.check(&format!("swiglu + scatter {tag}"), rel_err(&y, &yref), 2e-3);

    // RoPE + KV append, then split attention + combine over a paged cache, GQA.
    let Heads {
        n_heads: nh,
        n_kv: nkv,
        head_dim: d,
    } = hd;
    let positions = [5usize, 130, 700]; // one split, several, many
    let b = positions.len();
    let max_ctx = 1024usize;
    let max_pages = max_ctx / PAGE;
    let ncol = (nh + 2 * nkv) * d;
    let kv_elems = b * max_pages * PAGE * nkv * d;
    let cache_k: Vec<u16> = (0..kv_elems).map(|_| h(rng.normal())).collect();
    let cache_v: Vec<u16> = (0..kv_elems).map(|_| h(rng.normal())).collect();
    // Pages handed out in a scrambled order, as a server's free list would.
    let mut table: Vec<i32> = (0..(b * max_pages) as i32).collect();
    for i in (1..table.len()).rev() {
        table.swap(i, rng.u32() as usize % (i + 1));
    }
    let parts: Vec<f32> = (0..s * b * ncol).map(|_| rng.normal()).collect();
    let half_d = d / 2;
    let mut cos = vec![0f32; max_ctx * half_d];
    let mut sin = vec![0f32; max_ctx * half_d];
    for p in 0..max_ctx {
        for i in 0..half_d {
            let a = p as f64 * 10000f64.powf(-((2 * i) as f64) / d as f64);
            cos[p * half_d + i] = a.cos() as f32;
            sin[p * half_d + i] = a.sin() as f32;
        }
    }
    let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let seq: Vec<i32> = (0..b as i32).collect();
    let (kd, vd) = (gpu.upload(&cache_k)?, gpu.upload(&cache_v)?);
    let (pd, posd, seqd, td) = (
        gpu.upload(&parts)?,
        gpu.upload(&pos)?,
        gpu.upload(&seq)?,
        gpu.upload(&table)?,
    );
    let (cd, sd) = (gpu.upload(&cos)?, gpu.upload(&sin)?);
    let qd = poisoned(gpu, b * nh * d * 4)?;
    ops.qkv_rope(
        pd.ptr, s, b, posd.ptr, seqd.ptr, cd.ptr, sd.ptr, qd.ptr, kd.ptr, vd.ptr, td.ptr, max_pages,
    )?;
    // Reference q, k, v at each row's position.
    let mut qref = vec![0f32; b * nh * d];
    let mut kref = cache_k.iter().map(|&v| f(v)).collect::<Vec<_>>();
    let mut vref = cache_v.iter().map(|&v| f(v)).collect::<Vec<_>>();
    let slot = |bb: usize, p: usize, kvh: usize| {
        ((table[bb * max_pages + p / PAGE] as usize * PAGE + p % PAGE) * nkv + kvh) * d
    };
    for bb in 0..b {
        let p = positions[bb];
        let x = |c: usize| (0..s).map(|t| parts[(t * b + bb) * ncol + c]).sum::<f32>();
        for head in 0..nh + 2 * nkv {
            for i in 0..half_d {
                let (x0, x1) = (x(head * d + i), x(head * d + i + half_d));
                let (c, sn) = (cos[p * half_d + i], sin[p * half_d + i]);
                let (y0, y1) = if head < nh + nkv {
                    (x0 * c - x1 * sn, x1 * c + x0 * sn)
                } else {
                    (x0, x1)
                };
                if head < nh {
                    qref[(bb * nh + head) * d + i] = y0;
                    qref[(bb * nh + head) * d + i + half_d] = y1;
                } else {
                    let kvh = if head < nh + nkv {
                        head - nh
                    } else {
                        head - nh - nkv
                    };
                    let dst = if head < nh + nkv {
                        &mut kref
                    } else {
                        &mut vref
                    };
                    dst[slot(bb, p, kvh) + i] = f(h(y0));
                    dst[slot(bb, p, kvh) + i + half_d] = f(h(y1));
                }
            }
        }
    }
    r.check(
        &format!("qkv_rope q {tag}"),
        rel_err(&gpu.read(&qd, 0, b * nh * d)?, &qref),
        1e-6,
    );
    let kgot: Vec<f32> = gpu
        .read::<u16>(&kd, 0, kv_elems)?
        .iter()
        .map(|&v| f(v))
        .collect();
    let vgot: Vec<f32> = gpu
        .read::<u16>(&vd, 0, kv_elems)?
        .iter()
        .map(|&v| f(v))
        .collect();
    r.check(
        &format!("qkv_rope k cache {tag}"),
        rel_err(&kgot, &kref),
        1e-4,
    );
    r.check(
        &format!("qkv_rope v cache {tag}"),
        rel_err(&vgot, &vref),
        1e-4,
    );

    let nsplit = max_ctx.div_ceil(ATTN_SPLIT);
    let po = gpu.alloc(b * nh * nsplit * d * 4)?;
    let pml = gpu.alloc(b * nh * nsplit * 2 * 4)?;
    let mut inv: Vec<i32> = (0..(nh * d) as i32).collect();
    for i in (1..inv.len()).rev() {
        inv.swap(i, rng.u32() as usize % (i + 1));
    }
    let ivd = gpu.upload(&inv)?;
    let out = poisoned(gpu, b * nh * d * 2)?;
    ops.attention(
        qd.ptr, kd.ptr, vd.ptr, td.ptr, max_pages, posd.ptr, seqd.ptr, po.ptr, pml.ptr, nsplit, b,
        ivd.ptr, out.ptr, 16, 0,
    )?;
    // The same with the splits merged inside attn_split (no attn_combine): bit for bit, twice
    // (the counters must reset themselves).
    let counters = gpu.upload(&vec![0u32; b * nkv])?;
    let mut same = true;
    for _ in 0..2 {
        let out2 = poisoned(gpu, b * nh * d * 2)?;
        ops.attention(
            qd.ptr,
            kd.ptr,
            vd.ptr,
            td.ptr,
            max_pages,
            posd.ptr,
            seqd.ptr,
            po.ptr,
            pml.ptr,
            nsplit,
            b,
            ivd.ptr,
            out2.ptr,
            16,
            counters.ptr,
        )?;
        same &= gpu.read::<u16>(&out2, 0, b * nh * d)? == gpu.read::<u16>(&out, 0, b * nh * d)?;
    }
    same &= gpu
        .read::<u32>(&counters, 0, b * nkv)?
        .iter()
        .all(|&c| c == 0);
    r.check(
        &format!("attention split with the merge folded in == split + combine, bit-exact {tag}"),
        if same { 0.0 } else { 1.0 },
        0.0,
    );
    let mut aref = vec![0f32; b * nh * d];
    let scale = 1.0 / (d as f64).sqrt();
    for bb in 0..b {
        let len = positions[bb] + 1;
        for head in 0..nh {
            let kvh = head / (nh / nkv);
            let qv = &qref[(bb * nh + head) * d..][..d];
            let sc: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d)
                        .map(|i| qv[i] as f64 * kref[slot(bb, j, kvh) + i] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = sc.iter().map(|&v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let o: f64 = (0..len)
                    .map(|j| e[j] * vref[slot(bb, j, kvh) + i] as f64)
                    .sum::<f64>()
                    / z;
                aref[bb * nh * d + inv[head * d + i] as usize] = o as f32;
            }
        }
    }
    let y: Vec<f32> = gpu
        .read::<u16>(&out, 0, b * nh * d)?
        .iter()
        .map(|&v| f(v))
        .collect();
    r.check(
        &format!("attention split+combine, paged GQA, pos {positions:?} {tag}"),
        rel_err(&y, &aref),
        2e-3,
    );

    // Tiled (prefill) attention: runs of rows from three sequences as a server's mixed step
    // would send them (a prompt from position 0, a chunk continuing one, single rows), against
    // the same f64 reference over the cache as it is on the device now.
    let mut rows_sp: Vec<(usize, usize)> = Vec::new();
    rows_sp.extend((0..70).map(|p| (0usize, p)));
    rows_sp.extend((600..640).map(|p| (2usize, p)));
    rows_sp.push((1, 300));
    rows_sp.extend((900..917).map(|p| (1usize, p)));
    rows_sp.push((0, 70));
    let tr = rows_sp.len();
    let qt: Vec<f32> = (0..tr * nh * d).map(|_| rng.normal()).collect();
    let posd2 = gpu.upload(&rows_sp.iter().map(|r| r.1 as i32).collect::<Vec<_>>())?;
    let seqd2 = gpu.upload(&rows_sp.iter().map(|r| r.0 as i32).collect::<Vec<_>>())?;
    let qtd = gpu.upload(&qt)?;
    let kdev: Vec<f32> = gpu
        .read::<u16>(&kd, 0, kv_elems)?
        .iter()
        .map(|&v| f(v))
        .collect();
    let vdev: Vec<f32> = gpu
        .read::<u16>(&vd, 0, kv_elems)?
        .iter()
        .map(|&v| f(v))
        .collect();
    let mut tref = vec![0f32; tr * nh * d];
    for (ri, &(sq, p)) in rows_sp.iter().enumerate() {
        for head in 0..nh {
            let kvh = head / (nh / nkv);
            let qv = &qt[(ri * nh + head) * d..][..d];
            let sc: Vec<f64> = (0..=p)
                .map(|j| {
                    (0..d)
                        .map(|i| qv[i] as f64 * kdev[slot(sq, j, kvh) + i] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = sc.iter().map(|&v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let o: f64 = (0..=p)
                    .map(|j| e[j] * vdev[slot(sq, j, kvh) + i] as f64)
                    .sum::<f64>()
                    / z;
                tref[ri * nh * d + inv[head * d + i] as usize] = o as f32;
            }
        }
    }
    let out = poisoned(gpu, tr * nh * d * 2)?;
    // Written in the 4-bit GEMV's pair order (as for a tensor-core batch), read back via xpos.
    ops.attention_tiled(
        qtd.ptr, kd.ptr, vd.ptr, td.ptr, max_pages, posd2.ptr, seqd2.ptr, tr, ivd.ptr, out.ptr, 4,
    )?;
    let got: Vec<u16> = gpu.read(&out, 0, tr * nh * d)?;
    let y: Vec<f32> = (0..tr * nh * d)
        .map(|i| f(got[(i / (nh * d)) * nh * d + crate::gptq::xpos(i % (nh * d), 4)]))
        .collect();
    r.check(
        &format!("attention tiled (prefill, tensor cores), {tr} rows of 3 sequences {tag}"),
        rel_err(&y, &tref),
        2e-3,
    );

    // Greedy argmax with ties to the lowest index, and the step's bookkeeping.
    let vocab = 32000usize;
    let mut logits: Vec<f32> = (0..2 * vocab).map(|_| rng.normal()).collect();
    logits[vocab + 17] = 9.0;
    logits[vocab + 20000] = 9.0;
    let want: Vec<i32> = (0..2)
        .map(|bb| {
            (0..vocab).fold(0, |best, i| {
                if logits[bb * vocab + i] > logits[bb * vocab + best] {
                    i
                } else {
                    best
                }
            }) as i32
        })
        .collect();
    let (ld, tok, posd, hist) = (
        gpu.upload(&logits)?,
        gpu.alloc(8)?,
        gpu.upload(&[3i32, 7])?,
        gpu.upload(&[-1i32; 2 * 16])?,
    );
    ops.argmax(ld.ptr, vocab, 2, tok.ptr, posd.ptr, hist.ptr, 16, true)?;
    let got: Vec<i32> = gpu.read(&tok, 0, 2)?;
    let hv: Vec<i32> = gpu.read(&hist, 0, 32)?;
    let pv: Vec<i32> = gpu.read(&posd, 0, 2)?;
    let ok = got == want && hv[4] == want[0] && hv[16 + 8] == want[1] && pv == [4, 8];
    r.check(
        &format!("argmax_step {tag}"),
        if ok { 0.0 } else { 1.0 },
        0.0,
    );
    Ok(())
}

/// Times the 70B-shaped GEMVs (several weight copies rotated so L2 cannot hold them) and
/// reports GB/s against `peak_gbs`.
pub fn time_kernels(gpu: &Gpu, peak_gbs: f64) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let heads = Heads {
        n_heads: 64,
        n_kv: 8,
        head_dim: 128,
    };
    let ops = Ops { gpu, heads };
    // Attention of a 512-token prompt (one sequence, positions 0..511), 70B heads, per layer:
    // the per-row flash-decoding kernels vs the tiled tensor-core kernel.
    {
        let (rows, d) = (512usize, 128usize);
        let max_pages = rows / PAGE;
        let kv = gpu.alloc(rows * 8 * d * 2)?;
        let vv = gpu.alloc(rows * 8 * d * 2)?;
        ops.fill_f16(&kv, 11, -1.0, 1.0)?;
        ops.fill_f16(&vv, 12, -1.0, 1.0)?;
        let q = gpu.alloc(rows * 64 * d * 4)?;
        let qh = gpu.alloc(rows * 64 * d * 2)?;
        ops.fill_f16(&qh, 14, -1.0, 1.0)?;
        // q as f32 from fp16 noise (fill_u32 bits would be NaNs): widen on the host.
        let qf: Vec<f32> = gpu
            .read::<u16>(&qh, 0, rows * 64 * d)?
            .iter()
            .map(|&v| f(v))
            .collect();
        gpu.write(&q, 0, &qf)?;
        let table = gpu.upload(&(0..max_pages as i32).collect::<Vec<_>>())?;
        let pos = gpu.upload(&(0..rows as i32).collect::<Vec<_>>())?;
        let seq = gpu.upload(&vec![0i32; rows])?;
        let nsplit = rows.div_ceil(ATTN_SPLIT);
        let po = gpu.alloc(rows * 64 * nsplit * d * 4)?;
        let pml = gpu.alloc(rows * 64 * nsplit * 2 * 4)?;
        let out = gpu.alloc(rows * 64 * d * 2)?;
        for tiled in [false, true] {
            let go = || {
                if tiled {
                    ops.attention_tiled(
                        q.ptr, kv.ptr, vv.ptr, table.ptr, max_pages, pos.ptr, seq.ptr, rows, 0,
                        out.ptr, 16,
                    )
                } else {
                    ops.attention_split(
                        q.ptr, kv.ptr, vv.ptr, table.ptr, max_pages, pos.ptr, seq.ptr, po.ptr,
                        pml.ptr, nsplit, rows, 0, out.ptr, 16, 0,
                    )
                }
            };
            go()?;
            let mut times: Vec<f64> = (0..20).map(|_| gpu.time(go)).collect::<Result<_>>()?;
            times.sort_by(|a, b| a.total_cmp(b));
            lines.push(format!(
                "attention 512-token prompt, 64/8 heads x 128, one layer, {}: {:.1} us (x80 layers: {:.1} ms)",
                if tiled { "tiled tensor-core kernel" } else { "split + combine per row" },
                times[10] * 1e3,
                times[10] * 80.0
            ));
        }
    }
    let shapes = [
        ("qkv", 8192usize, 10240usize),
        ("o_proj", 8192, 8192),
        ("gate_up", 8192, 57344),
        ("down", 28672, 8192),
    ];
    for (bits, group) in [
        (4u32, Some(128usize)),
        (4, None),
        (4, Some(32)),
        (3, Some(128)),
        (8, Some(128)),
    ] {
        for (name, k, n) in shapes {
            let copies = (600_000_000 / (k * n * bits as usize / 8)).clamp(1, 8);
            let mut ws = Vec::new();
            for c in 0..copies {
                let gs = group.unwrap_or(k);
                let qw = gpu.alloc(k / 32 * bits as usize * n * 4)?;
                ops.fill_u32(&qw, 77 + c as u32)?;
                let scales = gpu.alloc(k.div_ceil(gs) * n * 2)?;
                ops.fill_f16(&scales, 5, 1e-3, 2e-3)?;
                ws.push(QLinear {
                    qw,
                    scales,
                    zeros: None,
                    perm: None,
                    inv_perm: None,
                    k,
                    n,
                    bits,
                    group_size: gs,
                    kw: 64,
                    seg: [n, n],
                });
            }
            let x = gpu.alloc(k * 2)?;
            ops.fill_f16(&x, 9, -1.0, 1.0)?;
            let out = gpu.alloc(k.div_ceil(64 * 8) * n * 4)?;
            let kws: &[usize] = if bits == 8 { &[64] } else { &[64, 128] };
            for &kw in kws {
                for w in ws.iter_mut() {
                    w.kw = kw;
                }
                for w in &ws {
                    gptq_gemv(gpu, w, x.ptr, out.ptr, 1)?;
                }
                let mut times = Vec::new();
                for rep in 0..30 {
                    let w = &ws[rep % ws.len()];
                    times.push(gpu.time(|| gptq_gemv(gpu, w, x.ptr, out.ptr, 1).map(|_| ()))?);
                }
                times.sort_by(|a, b| a.total_cmp(b));
                let ms = times[times.len() / 2];
                let (regs, local) = crate::kernels::gptq_gemv_resources(gpu, &ws[0], 1)?;
                let bytes = ws[0].weight_bytes() + k * 2 + ws[0].splits() * n * 4;
                let gbs = bytes as f64 / ms / 1e6;
                lines.push(format!(
                "gptq_gemv {bits}-bit g{} kw {kw:3} {name:8} K={k:5} N={n:5}: {:7.1} us, {:6.0} GB/s ({:.0}% of {peak_gbs:.0}), floor {:6.1} us; {regs} regs, {local} B local",
                group.map_or("none".into(), |g| g.to_string()),
                ms * 1e3,
                gbs,
                100.0 * gbs / peak_gbs,
                bytes as f64 / peak_gbs / 1e3
            ));
            }
        }
    }
    // Tensor-core kernel for batched decode (4-bit g128), 16 and 32 rows.
    for (name, k, n) in shapes {
        let gs = 128;
        let qw = gpu.alloc(k / 32 * 4 * n * 4)?;
        ops.fill_u32(&qw, 91)?;
        let scales = gpu.alloc(k / gs * n * 2)?;
        ops.fill_f16(&scales, 5, 1e-3, 2e-3)?;
        let w = QLinear {
            qw,
            scales,
            zeros: None,
            perm: None,
            inv_perm: None,
            k,
            n,
            bits: 4,
            group_size: gs,
            kw: 64,
            seg: [n, n],
        };
        let x = gpu.alloc(32 * k * 2)?;
        ops.fill_f16(&x, 9, -1.0, 1.0)?;
        let out = gpu.alloc(k.div_ceil(crate::kernels::TC_KCH) * 32 * n * 4)?;
        // Variants (slabs loaded per batch, min blocks per SM) at 32 rows; the default at 16.
        let (du, db) = crate::kernels::tc_variant();
        let mut runs = vec![(16usize, du, db, crate::kernels::tc_async())];
        for (u, b, a) in [(1, 4, (0, false)), (1, 4, (2, true)), (1, 4, (3, true))] {
            runs.push((32, u, b, a));
        }
        for (rows, u, b, a) in runs {
            let go =
                || crate::kernels::gptq_gemm_tc_variant(gpu, &w, x.ptr, out.ptr, rows, u, b, a);
            go()?;
            let mut times: Vec<f64> = (0..20)
                .map(|_| gpu.time(|| go().map(|_| ())))
                .collect::<Result<_>>()?;
            times.sort_by(|a, b| a.total_cmp(b));
            let ms = times[10];
            let gbs = w.weight_bytes() as f64 / ms / 1e6;
            let (regs, local) = crate::kernels::tc_resources(gpu, rows, u, b, a)?;
            let mut ring = match a {
                (0, _) => String::new(),
                (a, x) => format!(" ring {a}{}", if x { "x" } else { "" }),
            };
            if crate::kernels::tc_hoist() {
                ring += " hoist";
            }
            lines.push(format!(
                "gptq_gemm_tc 4-bit g128 rows {rows:2} {name:8} K={k:5} N={n:5} TC={u},{b}{ring}: {:7.1} us, {gbs:6.0} GB/s of weights ({:.0}%); {regs} regs, {local} B local",
                ms * 1e3,
                100.0 * gbs / peak_gbs
            ));
        }
    }
    // Sampling 32 rows of a 32000-token vocabulary: greedy with log-probabilities, and the
    // serving mix (temperature, top-k 50, top-p 0.9, repetition penalty over 512 tokens, top-5).
    {
        use crate::sample::{pack, OUT_WORDS};
        let (v, rows) = (32000usize, 32usize);
        let logits = gpu.alloc(rows * v * 4)?;
        let mut rng = Rng::new(5);
        let host: Vec<f32> = (0..rows * v).map(|_| rng.normal() * 3.0).collect();
        let pristine = gpu.upload(&host)?;
        let out = gpu.alloc(rows * OUT_WORDS * 4)?;
        let context: Vec<u32> = (0..512).map(|_| rng.u32() % v as u32).collect();
        for (name, p) in [
            ("greedy", model::SamplingParams::default()),
            (
                "T 0.7, top-k 50, top-p 0.9, repetition 1.1, top-5",
                model::SamplingParams {
                    do_sample: true,
                    temperature: 0.7,
                    top_k: 50,
                    top_p: 0.9,
                    repetition_penalty: 1.1,
                    ..Default::default()
                },
            ),
        ] {
            let mut words = Vec::new();
            let mut pen = Vec::new();
            for row in 0..rows {
                let spec = model::SampleRow {
                    params: &p,
                    uniform: 0.37,
                    context: &context,
                    generated: &context[500..],
                    top_n: if p.do_sample { 5 } else { 0 },
                };
                words.extend(pack(&spec, row, &mut pen));
            }
            let pd = gpu.upload(&words)?;
            let pend = gpu.upload(&pen)?;
            let fresh = || gpu.copy_dtod(logits.ptr, pristine.ptr, rows * v * 4);
            // Fresh logits each time: the kernel penalizes them in place.
            let go = || {
                fresh()?;
                crate::sample::launch(gpu, logits.ptr, v, &pd, &pend, &out, rows)
            };
            go()?;
            let median = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
                let mut t: Vec<f64> = (0..11).map(|_| gpu.time(f)).collect::<Result<_>>()?;
                t.sort_by(|a, b| a.total_cmp(b));
                Ok(t[5])
            };
            let (t, base) = (median(&go)?, median(&fresh)?);
            lines.push(format!(
                "sample_rows {rows} rows x {v} logits, {name}: {:.1} us (a copy of the logits, {:.1} us, subtracted)",
                (t - base) * 1e3,
                base * 1e3
            ));
        }
    }
    // lm_head in fp16.
    let (k, n) = (8192usize, 32000usize);
    let w = gpu.alloc(k * n * 2)?;
    ops.fill_f16(&w, 3, -0.02, 0.02)?;
    let x = gpu.alloc(k * 2)?;
    ops.fill_f16(&x, 4, -1.0, 1.0)?;
    let out = gpu.alloc(n * 4)?;
    ops.gemv_f16(w.ptr, x.ptr, out.ptr, k, n, 1)?;
    let mut times: Vec<f64> = (0..20)
        .map(|_| gpu.time(|| ops.gemv_f16(w.ptr, x.ptr, out.ptr, k, n, 1)))
        .collect::<Result<_>>()?;
    times.sort_by(|a, b| a.total_cmp(b));
    let ms = times[10];
    let gbs = (k * n * 2) as f64 / ms / 1e6;
    lines.push(format!(
        "gemv_f16 lm_head K={k} N={n}: {:.1} us, {gbs:.0} GB/s ({:.0}%)",
        ms * 1e3,
        100.0 * gbs / peak_gbs
    ));
    Ok(lines)
}

/// Device-to-device copy bandwidth (bytes read + written), the ceiling the GEMVs are held to.
pub fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
    let bytes = 2usize << 30;
    let a = gpu.alloc(bytes)?;
    let b = gpu.alloc(bytes)?;
    let copy = || {
        crate::driver::check(
            // SAFETY: both buffers hold `bytes` bytes.
            unsafe { cudarc::driver::sys::cuMemcpyDtoDAsync_v2(b.ptr, a.ptr, bytes, gpu.stream) },
            "device copy",
        )
    };
    copy()?;
    let mut t: Vec<f64> = (0..5).map(|_| gpu.time(copy)).collect::<Result<_>>()?;
    t.sort_by(|x, y| x.total_cmp(y));
    if t[2] <= 0.0 {
        bail!("copy timing returned {}", t[2]);
    }
    Ok(2.0 * bytes as f64 / t[2] / 1e6)
}

/// Sampling on the GPU (sample.cu) against the CPU sampler (`model::Sampler::sample_with`) on
/// the same logits and uniform numbers: penalized logits bit for bit, greedy ids exactly, drawn
/// ids (a cut or a draw can land one token over where a cumulative sum meets its target to
/// within rounding: at most 2% of rows), log-probabilities and the top-n alternatives; then the
/// frequencies of 8192 draws against the filtered softmax (chi-square, can fail by chance with
/// probability ~1e-6).
pub fn check_sampling(gpu: &Gpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
    use crate::sample::{pack, unpack, OUT_WORDS, PARAM_WORDS, TOP_N_MAX};
    use model::{SampleRow, Sampler, SamplingParams};
    let (v, rows) = (5003usize, 96usize);
    let mut logits = Vec::with_capacity(rows * v);
    for row in 0..rows {
        let spread = [0.5f32, 3.0, 12.0][row % 3];
        // A grid of quarters: ties between logits, as the filters must handle.
        logits.extend((0..v).map(|_| (rng.normal() * spread * 4.0).round() / 4.0));
    }
    let filters = [
        (0usize, 1.0f32, 1.0f32),
        (40, 1.0, 1.0),
        (0, 0.9, 1.0),
        (50, 0.95, 1.0),
        (0, 1.0, 0.9),
        (3000, 0.99, 1.0),
        (1, 1.0, 1.0),
        (v + 5, 0.5, 1.0),
        (20, 1.0, 0.8),
        (0, 0.3, 0.95),
    ];
    let mut params = Vec::new();
    let mut contexts = Vec::new();
    for row in 0..rows {
        let (top_k, top_p, typical_p) = filters[row % filters.len()];
        params.push(SamplingParams {
            do_sample: row % 4 != 0,
            temperature: [0.7f32, 1.0, 1.3][row % 3],
            top_k,
            top_p,
            typical_p,
            repetition_penalty: if row % 5 < 2 { 1.3 } else { 1.0 },
            frequency_penalty: if row % 7 < 3 { 0.5 } else { 0.0 },
            presence_penalty: if row % 3 == 1 { 0.3 } else { 0.0 },
            seed: row as u64,
        });
        // 20 prompt and 10 generated tokens from the first 300 ids: repeats among them.
        contexts.push((0..30).map(|_| rng.u32() % 300).collect::<Vec<u32>>());
    }
    let uniforms: Vec<f32> = (0..rows)
        .map(|row| model::sampler::Rng::new(row as u64 + 1).next_f64() as f32)
        .collect();
    let specs: Vec<SampleRow> = (0..rows)
        .map(|row| SampleRow {
            params: &params[row],
            uniform: uniforms[row],
            context: &contexts[row],
            generated: &contexts[row][20..],
            top_n: [0, 5, TOP_N_MAX][row % 3],
        })
        .collect();
    let mut words = Vec::new();
    let mut pen = Vec::new();
    for (row, spec) in specs.iter().enumerate() {
        words.extend(pack(spec, row, &mut pen));
    }
    let ld = gpu.upload(&logits)?;
    let pd = gpu.upload(&words)?;
    let pend = gpu.upload(&pen)?;
    let out = poisoned(gpu, rows * OUT_WORDS * 4)?;
    crate::sample::launch(gpu, ld.ptr, v, &pd, &pend, &out, rows)?;
    let got = gpu.read::<u32>(&out, 0, rows * OUT_WORDS)?;
    let penalized = gpu.read::<f32>(&ld, 0, rows * v)?;
    let (mut pen_diff, mut greedy_wrong, mut drawn, mut draw_differ) = (0f32, 0, 0, 0);
    let (mut lp_err, mut top_wrong, mut top_err) = (0f64, 0, 0f64);
    for (row, spec) in specs.iter().enumerate() {
        let s = unpack(&got[row * OUT_WORDS..(row + 1) * OUT_WORDS], spec.top_n);
        let mut l = logits[row * v..(row + 1) * v].to_vec();
        let want = Sampler::new(spec.params.clone()).sample_with(
            &mut l,
            spec.context,
            spec.generated,
            spec.uniform,
        );
        for (a, b) in penalized[row * v..(row + 1) * v].iter().zip(&l) {
            pen_diff = pen_diff.max(if a.to_bits() == b.to_bits() {
                0.0
            } else {
                (a - b).abs().max(f32::MIN_POSITIVE)
            });
        }
        if spec.params.do_sample {
            drawn += 1;
            draw_differ += (s.id != want) as usize;
        } else {
            greedy_wrong += (s.id != want) as usize;
        }
        let m = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        let lp = l.get(s.id as usize).map_or(f64::NAN, |&x| x as f64 - lse);
        lp_err = lp_err.max((s.logprob as f64 - lp).abs());
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        if s.top.len() != spec.top_n {
            top_wrong += 1;
        }
        for (&(id, lp), &want_id) in s.top.iter().zip(&order) {
            top_wrong += (id != want_id) as usize;
            top_err = top_err.max((lp as f64 - (l[want_id as usize] as f64 - lse)).abs());
        }
    }
    r.check(
        "sample_rows penalties (bit-exact vs the CPU sampler)",
        pen_diff as f64,
        0.0,
    );
    r.check(
        &format!("sample_rows greedy ids ({} rows)", rows - drawn),
        greedy_wrong as f64,
        0.0,
    );
    r.check(
        &format!("sample_rows drawn ids = CPU sampler's for the same uniform: {draw_differ}/{drawn} differ (as a fraction)"),
        draw_differ as f64 / drawn.max(1) as f64,
        0.02,
    );
    r.check("sample_rows log-probability (abs)", lp_err, 1e-4);
    r.check("sample_rows top-n ids (wrong count)", top_wrong as f64, 0.0);
    r.check("sample_rows top-n log-probabilities (abs)", top_err, 1e-4);

    // Frequencies: 8192 draws from one row of 1000 logits, each draw its own block.
    let (v, n) = (1000usize, 8192usize);
    let row: Vec<f32> = (0..v).map(|_| rng.normal() * 2.5).collect();
    let ld = gpu.upload(&row)?;
    let out = poisoned(gpu, n * OUT_WORDS * 4)?;
    let pend = gpu.upload(&[0i32, 0])?;
    for (name, temperature, top_k, top_p, typical_p) in [
        (
            "temperature 0.9, top-k 40, top-p 0.9",
            0.9f32,
            40usize,
            0.9f32,
            1.0f32,
        ),
        ("temperature 1.2, no filter", 1.2, 0, 1.0, 1.0),
        ("typical-p 0.9", 1.0, 0, 1.0, 0.9),
    ] {
        let p = SamplingParams {
            do_sample: true,
            temperature,
            top_k,
            top_p,
            typical_p,
            ..Default::default()
        };
        let mut u = model::sampler::Rng::new(rng.u32() as u64);
        let mut words = Vec::with_capacity(n * PARAM_WORDS);
        let mut pen = Vec::new();
        for _ in 0..n {
            let spec = SampleRow {
                params: &p,
                uniform: u.next_f64() as f32,
                context: &[],
                generated: &[],
                top_n: 0,
            };
            words.extend(pack(&spec, 0, &mut pen));
        }
        let pd = gpu.upload(&words)?;
        crate::sample::launch(gpu, ld.ptr, v, &pd, &pend, &out, n)?;
        let got = gpu.read::<u32>(&out, 0, n * OUT_WORDS)?;
        let mut counts = vec![0usize; v];
        let mut outside = 0;
        for w in got.chunks_exact(OUT_WORDS) {
            match counts.get_mut(w[0] as usize) {
                Some(c) => *c += 1,
                None => outside += 1,
            }
        }
        let probs = filtered_softmax(&row, &p);
        // Chi-square over bins of at least 20 expected draws (tokens by probability); a draw
        // of a token the filters drop fails outright.
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let (mut chi2, mut bins, mut e, mut c) = (0f64, 0usize, 0f64, 0usize);
        for &t in &order {
            if probs[t] == 0.0 {
                outside += counts[t];
                continue;
            }
            e += probs[t] * n as f64;
            c += counts[t];
            if e >= 20.0 {
                chi2 += (c as f64 - e).powi(2) / e;
                bins += 1;
                (e, c) = (0.0, 0);
            }
        }
        if e > 0.0 {
            chi2 += (c as f64 - e).powi(2) / e;
            bins += 1;
        }
        let df = bins.saturating_sub(1).max(1) as f64;
        let bound = df + 7.0 * (2.0 * df).sqrt();
        r.check(
            &format!("sample_rows frequencies of {n} draws, {name}: chi-square {chi2:.1} over {df} degrees of freedom, {outside} draws outside the kept set (statistic / bound)"),
            if outside > 0 { f64::INFINITY } else { chi2 / bound },
            1.0,
        );
    }
    Ok(())
}

/// The distribution the sampler draws from, computed apart from it in f64 with full sorts:
/// temperature, top-k (with ties), softmax, top-p, typical-p.
fn filtered_softmax(logits: &[f32], p: &model::SamplingParams) -> Vec<f64> {
    let inv_t = 1.0 / p.temperature.max(1e-6);
    let z: Vec<f64> = logits.iter().map(|&l| (l * inv_t) as f64).collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    if p.top_k > 0 && p.top_k < z.len() {
        let kth = z[order[p.top_k - 1]];
        order.retain(|&i| z[i] >= kth);
    }
    let m = z[order[0]];
    let mut probs = vec![0f64; z.len()];
    for &i in &order {
        probs[i] = (z[i] - m).exp();
    }
    let norm = |probs: &mut Vec<f64>| {
        let s: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= s);
    };
    norm(&mut probs);
    // Keeps the shortest prefix of `order` whose mass reaches `limit`; zeroes the rest.
    let keep_mass = |order: &mut Vec<usize>, probs: &mut Vec<f64>, limit: f32| {
        let mut mass = 0.0;
        let mut keep = order.len();
        for (k, &i) in order.iter().enumerate() {
            mass += probs[i];
            if mass >= limit as f64 {
                keep = k + 1;
                break;
            }
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
        order.truncate(keep);
        norm(probs);
    };
    if p.top_p < 1.0 {
        keep_mass(&mut order, &mut probs, p.top_p);
    }
    if p.typical_p < 1.0 {
        let h: f64 = -order.iter().map(|&i| probs[i] * probs[i].ln()).sum::<f64>();
        let dev = |i: usize| (-probs[i].ln() - h).abs();
        order.sort_by(|&a, &b| dev(a).total_cmp(&dev(b)));
        keep_mass(&mut order, &mut probs, p.typical_p);
    }
    probs
}
