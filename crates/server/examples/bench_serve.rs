//! `meditron bench-serve` without the CLI: the serving benchmark against a running server.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: server::BenchServeArgs,
}

fn main() {
    if let Err(e) = server::run_bench_serve(Cli::parse().bench) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
