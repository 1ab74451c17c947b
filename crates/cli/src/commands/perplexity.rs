//! `meditron perplexity`: perplexity and bits per byte of text files on the local model. Without
//! `--stride` the protocol is llama.cpp's (disjoint chunks, second halves scored), so the
//! figures compare with `llama-perplexity`; the windows, scoring and report live in
//! `eval::perplexity`. The last line of stdout is `PPL = x` over all files, as llama.cpp prints.

use crate::args::ModelArgs;
use anyhow::{bail, Result};
use eval::{PerplexityArgs, TokenScorer};
use kernels::cpu::ThreadPool;
use model::load::LoadedModel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ppl: PerplexityArgs,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    if args.ppl.ctx > loaded.model.config.max_context {
        bail!(
            "--ctx {} is larger than the model's context length {}",
            args.ppl.ctx,
            loaded.model.config.max_context
        );
    }
    let pool = args.model.pool()?;
    let mut scorer = LocalScorer { loaded, pool };
    let mut progress = eval::TextProgress::default();
    let report = eval::run_perplexity(&mut scorer, &args.ppl, &mut progress)?;
    eprintln!();
    print!("{}", report.to_markdown());
    println!("PPL = {:.4}", report.total.ppl);
    Ok(())
}

struct LocalScorer {
    loaded: LoadedModel,
    pool: ThreadPool,
}

impl TokenScorer for LocalScorer {
    fn tokenize(&mut self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        Ok(self.loaded.tokenizer.encode_with_offsets(text, true)?)
    }

    fn bos(&self) -> Option<u32> {
        let tok = &self.loaded.tokenizer;
        tok.add_bos().then(|| tok.bos_id()).flatten()
    }

    /// Each window from an empty cache; logits only where they score a token.
    fn score(&mut self, windows: &[(Vec<u32>, usize)]) -> Result<Vec<Vec<f64>>> {
        let model = &self.loaded.model;
        let vocab = model.config.n_vocab;
        let mut out = Vec::with_capacity(windows.len());
        for (tokens, first) in windows {
            let first = (*first).max(1);
            let logits = model.forward_sequence(tokens, &self.pool, |pos| {
                pos + 1 >= first && pos + 1 < tokens.len()
            })?;
            out.push(
                logits
                    .chunks_exact(vocab)
                    .zip(&tokens[first..])
                    .map(|(row, &t)| log_softmax_at(row, t as usize))
                    .collect(),
            );
        }
        Ok(out)
    }

    fn model_id(&self) -> String {
        self.loaded.name.clone()
    }
}

fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let sum: f64 = logits.iter().map(|v| (*v as f64 - max).exp()).sum();
    logits
        .get(i)
        .map(|v| *v as f64 - max - sum.ln())
        .unwrap_or(f64::NEG_INFINITY)
}
