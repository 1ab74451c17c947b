//! The machine's ceiling for the packed kernels: `vpdpbusd` (64 u8 x i8 products each) on
//! independent accumulators, per core, timed. Batched decode and prefill are compute-bound on
//! two cores, so their MACs divided by this rate bound what any kernel could reach.
//!
//!     cargo test --release -p kernels --test vnni_peak -- --ignored --nocapture

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "a measurement, not a check: run by hand"]
fn vnni_peak() {
    use kernels::cpu::Features;
    if !Features::get().avx512_vnni {
        eprintln!("no AVX-512 VNNI on this CPU");
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
