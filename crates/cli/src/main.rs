//! `meditron`: download, inspect, run, serve, quantize and evaluate Llama-family models.

mod args;
mod commands;
mod model_path;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meditron", version, about = "Run Llama-family language models (GGUF, safetensors) on the CPU", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt (chat template applied unless --raw)
    Generate(commands::generate::Args),
    /// Chat in the terminal, streaming answers; Ctrl-C stops an answer, Ctrl-D quits
    Chat(commands::chat::Args),
    /// Show what a model file holds: architecture, tensors, tokenizer, chat template
    Inspect(commands::inspect::Args),
    /// Read text on stdin and print its token ids as a JSON array
    Tokenize(commands::tokenize::Args),
    /// Perplexity of a text file, computed the way llama.cpp's llama-perplexity does
    Perplexity(commands::perplexity::Args),
    /// Prefill and decode speed, like llama-bench (pp512 / tg128)
    Bench(commands::bench::Args),
    /// Write a GGUF model as a Hugging Face model directory (safetensors f32/f16/bf16)
    Convert(commands::convert::Args),
    /// GPTQ-quantize a Hugging Face model into an AutoGPTQ-layout checkpoint
    Quantize(commands::quantize::Args),
    /// Medical benchmarks of the Meditron paper (PubMedQA, MedMCQA, MedQA, MMLU-Medical)
    Eval(commands::eval::Args),
    /// Download a model repository (any branch) into the Hugging Face cache or a folder
    Download(hub::DownloadArgs),
    /// Serve the model over the TGI and OpenAI HTTP APIs, with continuous batching
    Serve(server::ServeArgs),
    /// Measure a running server: latency and throughput at several concurrencies (like vLLM's)
    BenchServe(server::BenchServeArgs),
}

/// glibc gives freed memory back to the kernel eagerly: a thread's heap above 2x the (dynamic)
/// mmap threshold is trimmed with `madvise(MADV_DONTNEED)`, and blocks over that threshold are
/// mapped and unmapped each time. The forward pass allocates the same few-megabyte activation
/// buffers every step, so each step faulted them back in, zeroed by the kernel: ~7% of a
/// 16-stream server's time in page faults (perf). Keep up to 1 GiB of freed heap, and map only
/// blocks of 32 MiB or more directly.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDITRON_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Download(a) => hub::run_download(&a),
        Command::Serve(mut a) => model_path::resolve(a.model.as_deref()).and_then(|p| {
            a.model = Some(p.to_string_lossy().into_owned());
            server::run_serve(a)
        }),
        Command::BenchServe(a) => server::run_bench_serve(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
