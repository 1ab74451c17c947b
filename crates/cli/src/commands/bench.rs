//! `meditron bench`: prefill and decode speed measured the way llama-bench does (pp: one
//! batch of random prompt tokens; tg: tokens decoded one at a time from an empty context),
//! with tokenization and sampling left out. `--batch 16` adds batched decode: 16 sequences
//! stepping together, one forward per step, as the server's continuous batching runs them
//! (aggregate tokens per second, like llama-batched-bench's S_TG).

use crate::args::ModelArgs;
use anyhow::{bail, Result};
use kernels::cpu::{Features, ThreadPool};
use model::{BatchToken, Llama};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens for the prefill test (0: skip)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens for the decode test (0: skip)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Timed runs of each test, after one warm-up run
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cuda: super::bench_cuda::CudaArgs,
}

pub fn run(args: Args) -> Result<()> {
    if super::bench_cuda::run_if_cuda(
        &args.cuda,
        &args.model,
        args.n_prompt,
        args.n_gen,
        args.repetitions,
        args.json,
    )? {
        return Ok(());
    }
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let loaded = args.model.load()?;
    let pool = args.model.pool()?;
    let model = &loaded.model;
    let max = model.config.max_context;
    if args.n_prompt.max(args.n_gen) > max {
        bail!("-p/-n are limited to the model's context length {max}");
    }
    // Random tokens from a fixed generator, as llama-bench: the text does not matter.
    let mut rng = model::sampler::Rng::new(42);
    let vocab = model.config.n_vocab as u64;
    let tokens: Vec<u32> = (0..args.n_prompt.max(args.n_gen))
        .map(|_| (rng.next_u64() % vocab) as u32)
        .collect();

    let measure = |n: usize, f: &dyn Fn() -> Result<()>| -> Result<Option<Stats>> {
        if n == 0 {
            return Ok(None);
        }
        f()?; // warm-up
        let mut rates = Vec::new();
        for _ in 0..args.repetitions {
            let t = Instant::now();
            f()?;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        Ok(Some(Stats::of(&rates)))
    };
    let pp = measure(args.n_prompt, &|| {
        prefill(model, &pool, &tokens[..args.n_prompt])
    })?;
    let tg = measure(args.n_gen, &|| {
        decode(model, &pool, &tokens[..args.n_gen], 1)
    })?;
    let mut batched = Vec::new();
    for &b in args.cuda.batch.iter().filter(|&&b| b > 1) {
        if b > 256 {
            bail!("--batch {b}: at most 256 sequences");
        }
        let s = measure(args.n_gen * b, &|| {
            decode(model, &pool, &tokens[..args.n_gen], b)
        })?;
        batched.push((b, s));
    }

    let bytes = model.weight_bytes_per_token() as f64;
    let rss = peak_rss_bytes();
    let threads = pool.n_threads();
    let simd = Features::get().describe();
    if args.json {
        let j = serde_json::json!({
            "model": loaded.name,
            "model_path": loaded.path,
            "threads": threads,
            "simd": simd,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "repetitions": args.repetitions,
            "pp": pp.as_ref().map(|s| s.mean),
            "pp_sd": pp.as_ref().map(|s| s.sd),
            "tg": tg.as_ref().map(|s| s.mean),
            "tg_sd": tg.as_ref().map(|s| s.sd),
            "weight_bytes_per_token": bytes,
            "tg_gb_per_s": tg.as_ref().map(|s| s.mean * bytes / 1e9),
            "tg_batched": batched.iter().filter_map(|(b, s)| s.as_ref().map(|s| {
                serde_json::json!({"batch": b, "tokens_per_s": s.mean, "sd": s.sd})
            })).collect::<Vec<_>>(),
            "peak_rss_bytes": rss,
        });
        println!("{j}");
        return Ok(());
    }
    println!("| model | threads | simd | test | t/s |");
    println!("|---|---|---|---|---|");
    let rows = [
        (format!("pp{}", args.n_prompt), &pp),
        (format!("tg{}", args.n_gen), &tg),
    ];
    let batched_rows = batched
        .iter()
        .map(|(b, s)| (format!("tg{} x{b} (aggregate)", args.n_gen), s));
    for (name, s) in rows
        .iter()
        .map(|(n, s)| (n.clone(), *s))
        .chain(batched_rows)
    {
        if let Some(s) = s {
            println!(
                "| {} | {threads} | {simd} | {name} | {:.2} ± {:.2} |",
                loaded.name, s.mean, s.sd
            );
        }
    }
    println!();
    println!("weights read per decoded token: {:.1} MB", bytes / 1e6);
    if let Some(s) = &tg {
        println!("decode bandwidth: {:.1} GB/s", s.mean * bytes / 1e9);
    }
    if let Some(r) = rss {
        println!("peak RSS: {:.1} MB", r as f64 / 1e6);
    }
    Ok(())
}

struct Stats {
    mean: f64,
    sd: f64,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
        } else {
            0.0
        };
        Stats {
            mean,
            sd: var.sqrt(),
        }
    }
}

/// One forward over all prompt tokens (llama-bench uses a single batch up to its batch size).
fn prefill(model: &Llama, pool: &ThreadPool, tokens: &[u32]) -> Result<()> {
    model.forward_sequence(tokens, pool, |pos| pos + 1 == tokens.len())?;
    Ok(())
}

/// Tokens fed one at a time from an empty cache, each producing logits; `seqs` sequences
/// (the same tokens) step together, one forward per position.
fn decode(model: &Llama, pool: &ThreadPool, tokens: &[u32], seqs: usize) -> Result<()> {
    let mut cache = model.new_cache(tokens.len() * seqs);
    let ids: Vec<_> = (0..seqs).map(|_| cache.add_sequence()).collect();
    for (pos, &token) in tokens.iter().enumerate() {
        let batch: Vec<BatchToken> = ids
            .iter()
            .map(|&seq| BatchToken {
                token,
                seq,
                pos,
                logits: true,
            })
            .collect();
        model.forward(&batch, &mut cache, pool)?;
    }
    Ok(())
}

/// VmHWM from /proc (Linux); None elsewhere.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
