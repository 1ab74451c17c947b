//! Time of the per-module GPTQ solve (damped Cholesky of the inverse Hessian, the column walk,
//! and the two Hessian-weighted error figures of the loss table) at a given size, on random
//! weights and a random positive definite Hessian: measures what the 70B projection in
//! benches/QUANTIZE_NOTES.md extrapolates.
//! `cargo run --release -p quantize --example solve_speed -- N K [threads]`
use quantize::gptq::{self, QuantParams};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let (n, k) = match a[..] {
        [n, k, ..] => (n, k),
        _ => anyhow::bail!("usage: solve_speed N K [threads]"),
    };
    let threads = a.get(2).copied().unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    // Hessian 2/r X^T X of r random rows with a few strong directions, plus a small ridge.
    let r = 1024.min(2 * k);
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..r * k)
        .map(|i| rnd() * if i % k < 16 { 8.0 } else { 1.0 })
        .collect();
    let w: Vec<f32> = (0..n * k).map(|_| rnd() * 0.05).collect();
    let t = Instant::now();
    let mut h32 = vec![0f32; k * k];
    quantize::linalg::syrk_lower(&mut h32, &x, r, k);
    quantize::linalg::symmetrize_lower(&mut h32, k);
    let h: Vec<f64> = h32
        .iter()
        .enumerate()
        .map(|(i, &v)| 2.0 * v as f64 / r as f64 + if i / k == i % k { 1e-3 } else { 0.0 })
        .collect();
    drop(h32);
    eprintln!("Hessian {k} x {k}: {:.1} s", t.elapsed().as_secs_f64());
    let p = QuantParams {
        bits: 4,
        group_size: Some(128),
        sym: true,
        act_order: true,
        static_groups: false,
        damp: 0.1,
        mse: false,
    };
    let t = Instant::now();
    let (q, stats) = gptq::gptq(&w, n, k, &h, &p)?;
    let solve = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let r = gptq::rtn(&w, n, k, &p)?;
    let rtn = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let e = gptq::quadratic_error_estimate(&w, &q.dequant, n, k, &h);
    let e_rtn = gptq::quadratic_error_estimate(&w, &r.dequant, n, k, &h);
    let errs = t.elapsed().as_secs_f64();
    println!(
        "n {n} k {k} ({threads} threads): gptq {solve:.2} s, rtn {rtn:.2} s, the two errors {errs:.2} s; loss {:.4e}, GPTQ/RTN {:.3}",
        stats.loss,
        e / e_rtn
    );
    Ok(())
}
