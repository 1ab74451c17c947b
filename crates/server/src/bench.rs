//! `meditron bench-serve`: a vLLM-style serving benchmark against a running server.

#[derive(clap::Args, Debug, Clone)]
pub struct BenchServeArgs {}

pub fn run_bench_serve(_args: BenchServeArgs) -> anyhow::Result<()> {
    Ok(())
}
