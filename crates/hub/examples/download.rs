//! `meditron download` before the CLI wires it: the same flags and output, from the hub crate alone.
//!
//! ```text
//! HF_ENDPOINT=http://127.0.0.1:8765 HF_HOME=/tmp/hf cargo run -p hub --example download -- test-org/tiny-model:gptq-4bit-128g
//! ```

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    download: hub::DownloadArgs,
}

fn main() {
    // Printed as the meditron binary prints errors: the whole cause chain on one line.
    if let Err(e) = hub::run_download(&Cli::parse().download) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
