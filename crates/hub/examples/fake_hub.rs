//! Serves the tests' fake Hugging Face Hub on 127.0.0.1 so a download can be run, killed and resumed by hand.
//!
//! ```text
//! cargo run -p hub --example fake_hub -- --port 8765 --throttle 262144
//! HF_ENDPOINT=http://127.0.0.1:8765 HF_HOME=/tmp/hf meditron download test-org/tiny-model:gptq-4bit-128g
//! ```
//! `--throttle` limits each connection to that many bytes per second, so there is time to
//! press Ctrl-C (or `kill -9`) in the middle of a transfer.

#[path = "../tests/support/fake_hub.rs"]
mod fake_hub;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// Bytes per second per CDN connection (none: as fast as possible).
    #[arg(long)]
    throttle: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hub = fake_hub::FakeHub::start_on(args.port)?;
    hub.behave(|b| b.throttle = args.throttle);
    println!(
        "fake Hub at {} serving {} (branches main, {}), {}, {}, {}",
        hub.endpoint(),
        fake_hub::REPO,
        fake_hub::GPTQ_BRANCH,
        fake_hub::GATED_REPO,
        fake_hub::RENAMED_REPO,
        fake_hub::HUGE_REPO
    );
    println!("gated token: {}; stop with Ctrl-C", fake_hub::VALID_TOKEN);
    let mut seen = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let requests = hub.requests();
        for r in &requests[seen..] {
            let range = r
                .range
                .map(|(s, e)| {
                    format!(
                        " Range: bytes={s}-{}",
                        e.map(|e| e.to_string()).unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            println!("{} {}{range}", r.method, r.path);
        }
        seen = requests.len();
    }
}
