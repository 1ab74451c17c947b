//! `meditron perplexity`: llama.cpp's protocol, so the figures compare exactly: tokenize the
//! whole text, cut it into chunks of `ctx` tokens, run each chunk from an empty cache (first
//! token replaced by BOS when the model adds one), and score only the second half of each.

use crate::args::ModelArgs;
use anyhow::{bail, Context, Result};
use kernels::cpu::ThreadPool;
use model::Llama;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score
    #[arg(long, short = 'f')]
    pub file: std::path::PathBuf,
    /// Tokens per chunk
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks
    #[arg(long)]
    pub chunks: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4 tokens");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let loaded = args.model.load()?;
    if args.ctx > loaded.model.config.max_context {
        bail!(
            "--ctx {} is larger than the model's context length {}",
            args.ctx,
            loaded.model.config.max_context
        );
    }
    let pool = args.model.pool()?;
    let tokens = loaded.tokenizer.encode(&text, true)?;
    let mut n_chunks = tokens.len() / args.ctx;
    if let Some(c) = args.chunks {
        n_chunks = n_chunks.min(c);
    }
    if n_chunks == 0 {
        bail!(
            "{} has {} tokens; at least --ctx {} are needed",
            args.file.display(),
            tokens.len(),
            args.ctx
        );
    }
    let bos = if loaded.tokenizer.add_bos() {
        loaded.tokenizer.bos_id()
    } else {
        None
    };
    let (mut nll, mut count) = (0f64, 0usize);
    eprintln!(
        "perplexity: {} tokens, {n_chunks} chunks of {}",
        tokens.len(),
        args.ctx
    );
    for c in 0..n_chunks {
        let mut chunk = tokens[c * args.ctx..(c + 1) * args.ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let (s, n) = score_chunk(&loaded.model, &pool, &chunk)?;
        nll += s;
        count += n;
        eprint!("[{}]{:.4},", c + 1, (nll / count as f64).exp());
    }
    eprintln!();
    println!("PPL = {:.4}", (nll / count as f64).exp());
    Ok(())
}

/// Negative log-likelihood summed over positions ctx/2 .. ctx-2 predicting the next token.
fn score_chunk(model: &Llama, pool: &ThreadPool, chunk: &[u32]) -> Result<(f64, usize)> {
    let first = chunk.len() / 2;
    let logits =
        model.forward_sequence(chunk, pool, |pos| pos >= first && pos + 1 < chunk.len())?;
    let vocab = model.config.n_vocab;
    let mut nll = 0f64;
    let mut n = 0;
    for (row, pos) in logits.chunks_exact(vocab).zip(first..chunk.len() - 1) {
        nll -= log_softmax_at(row, chunk[pos + 1] as usize);
        n += 1;
    }
    Ok((nll, n))
}

fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let sum: f64 = logits.iter().map(|v| (*v as f64 - max).exp()).sum();
    logits
        .get(i)
        .map(|v| *v as f64 - max - sum.ln())
        .unwrap_or(f64::NEG_INFINITY)
}
