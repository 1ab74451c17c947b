//! `meditron serve` without the CLI: the binary the client tests start (`--help` for flags).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: server::ServeArgs,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDITRON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = server::run_serve(Cli::parse().serve) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
