//! The machine's ceiling for the packed kernels: `vpdpbusd` (64 u8 x i8 products each) on
//! independent accumulators, per core, timed. Batched decode and prefill are compute-bound on
//! two cores, so their MACs divided by this rate bound what any kernel could reach.
//!
//!     cargo test --release -p kernels --test vnni_peak -- --ignored --nocapture

/// Whether the CPU has AVX-512 VNNI (saying so when not).
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    let has = kernels::cpu::Features::get().avx512_vnni;
    if !has {
        eprintln!("no AVX-512 VNNI on this CPU");
    }
    has
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "a measurement, not a check: run by hand"]
fn vnni_peak() {
    if !has_vnni() {
        return;
    }
    let iters = 100_000_000u64;
    let t = std::time::Instant::now();
    // SAFETY: the CPU has AVX-512 VNNI (checked above).
    let sink = unsafe { chains(iters) };
    let s = t.elapsed().as_secs_f64();
    let per_s = (iters * 12) as f64 / s;
    eprintln!(
        "vpdpbusd: {:.2} G/s on one core = {:.1} G u8xi8 MAC/s ({sink})",
        per_s / 1e9,
        per_s * 64.0 / 1e9
    );
    assert!(per_s > 0.0);
}

/// 12 independent accumulator chains: more than the instruction's latency times its
/// throughput, so the loop runs at the issue rate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn chains(iters: u64) -> i32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 12];
    let w = _mm512_set1_epi8(3);
    let mut x = _mm512_set1_epi8(1);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_dpbusd_epi32(*a, w, x);
        }
        // Keeps the loop from being folded away.
        x = std::hint::black_box(x);
    }
    acc.iter().map(|&a| _mm512_reduce_add_epi32(a)).sum()
}

/// Whether float multiplies share `vpdpbusd`'s issue slot: 12 independent `vpdpbusd` per
/// iteration alone, then with 4 independent `vfmadd`/`vmulps`. On the Zen 4 dev VM: 3.61 ->
/// 2.91 G/s, the float ops taking ~3 of the 4 slots they would if they shared `vpdpbusd`'s
/// one 512-bit slot per cycle completely (a C loop of 8 `vpdpbusd` + 2 `vfmadd` + 1 `vmulps`
/// ran at 8/11 of the peak). So the Q4 kernel's 8 `vpdpbusd` + 3 float multiplies per 512
/// MACs run at most at ~75% of the `vpdpbusd` peak.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "a measurement, not a check: run by hand"]
fn vnni_with_float_ops() {
    if !has_vnni() {
        return;
    }
    let iters = 50_000_000u64;
    for float_ops in [false, true] {
        let t = std::time::Instant::now();
        // SAFETY: the CPU has AVX-512 VNNI (checked above).
        let sink = unsafe { mixed(iters, float_ops) };
        let per_s = (iters * 12) as f64 / t.elapsed().as_secs_f64();
        eprintln!(
            "12 vpdpbusd{}: {:.2} G vpdpbusd/s ({sink})",
            if float_ops {
                " + 3 vfmadd + 1 vmulps"
            } else {
                ""
            },
            per_s / 1e9
        );
        assert!(per_s > 0.0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn mixed(iters: u64, float_ops: bool) -> f32 {
    use std::arch::x86_64::*;
    let mut acc: [__m512i; 12] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32));
    let mut f: [__m512; 4] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    let (w, s) = (_mm512_set1_epi8(3), _mm512_set1_ps(0.5));
    let mut x = _mm512_set1_epi8(1);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_dpbusd_epi32(*a, w, x);
        }
        if float_ops {
            f[0] = _mm512_fmadd_ps(f[0], s, s);
            f[1] = _mm512_fmadd_ps(f[1], s, s);
            f[2] = _mm512_fmadd_ps(f[2], s, s);
            f[3] = _mm512_mul_ps(f[3], s);
        }
        x = std::hint::black_box(x);
    }
    let ints: i32 = acc.iter().map(|&a| _mm512_reduce_add_epi32(a)).sum();
    ints as f32 + f.iter().map(|&v| _mm512_reduce_add_ps(v)).sum::<f32>()
}
