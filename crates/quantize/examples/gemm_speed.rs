//! Throughput of the calibration GEMMs on this machine (GMAC/s):
//! `cargo run -p quantize --example gemm_speed [threads]`.
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let (rows, inp, out) = (4096, 576, 1536);
    let x: Vec<f32> = (0..rows * inp).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..out * inp).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut y = vec![0f32; rows * out];
    for name in ["linear", "syrk 1536"] {
        let t = Instant::now();
        let reps = 5;
        let macs = match name {
            "linear" => {
                for _ in 0..reps {
                    quantize::linalg::linear(&mut y, &x, &w, rows, inp, out, false);
                }
                (rows * inp * out * reps) as f64
            }
            _ => {
                let mut h = vec![0f32; out * out];
                for _ in 0..reps {
                    quantize::linalg::syrk_lower(&mut h, &y, rows, out);
                }
                (rows * out * out * reps / 2) as f64
            }
        };
        let s = t.elapsed().as_secs_f64();
        println!("{name}: {:.1} GMAC/s ({threads} threads)", macs / s / 1e9);
    }
}
