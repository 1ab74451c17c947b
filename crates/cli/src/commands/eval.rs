//! `meditron eval`: the Meditron paper's medical benchmarks on the local model (or, with
//! --endpoint, on any OpenAI-compatible server), through the `eval` crate.

use crate::args::ModelArgs;
use anyhow::{anyhow, Result};
use eval::{encode_pair, group_by_context, lm_eval_window, Backend, GenParams, LM_EVAL_MAX_LENGTH};
use kernels::cpu::ThreadPool;
use model::generate::{generate, GenerationParams, Session};
use model::load::LoadedModel;
use model::{BatchToken, KvCache, SamplingParams, SeqId};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eval: eval::EvalArgs,
}

pub fn run(args: Args) -> Result<()> {
    let model_args = args.model.clone();
    eval::run_from_args(&args.eval, move || {
        let path = crate::model_path::resolve(model_args.model.as_deref())?;
        let loaded = model_args.load()?;
        let ctx = model_args.context(&loaded)?;
        let pool = model_args.pool()?;
        let hash = if path.is_file() {
            eval::hash_files(&[path]).ok()
        } else {
            None
        };
        let mut cache = loaded.model.new_cache(ctx);
        let seq = cache.add_sequence();
        let backend = LocalBackend {
            loaded,
            pool,
            cache,
            seq,
            cached: Vec::new(),
            ctx,
        };
        Ok((Box::new(backend) as Box<dyn Backend>, hash))
    })?;
    Ok(())
}

/// The local model as an evaluation backend. Log-likelihoods reuse the cached prefix between
/// requests, so a question's options share one prefill of its context.
struct LocalBackend {
    loaded: LoadedModel,
    pool: ThreadPool,
    cache: KvCache,
    seq: SeqId,
    /// Tokens whose keys and values are in `cache` for `seq`.
    cached: Vec<u32>,
    ctx: usize,
}

impl LocalBackend {
    /// Sum of log p(input[i] | input[..i]) for i in ctxlen..input.len().
    fn score(&mut self, input: &[u32], ctxlen: usize) -> Result<f64> {
        if ctxlen == 0 || ctxlen >= input.len() {
            return Ok(0.0);
        }
        if input.len() > self.ctx {
            return Err(anyhow!(
                "{} tokens do not fit the {}-token context (--ctx-size)",
                input.len(),
                self.ctx
            ));
        }
        let common = self
            .cached
            .iter()
            .zip(input)
            .take_while(|(a, b)| a == b)
            .count();
        // Recompute from the last context position: its logits score the first continuation token.
        let start = common.min(ctxlen - 1);
        let batch: Vec<BatchToken> = (start..input.len() - 1)
            .map(|pos| BatchToken {
                token: input[pos],
                seq: self.seq,
                pos,
                logits: pos + 1 >= ctxlen,
            })
            .collect();
        let logits = self
            .loaded
            .model
            .forward(&batch, &mut self.cache, &self.pool)?;
        self.cached.truncate(start);
        self.cached
            .extend_from_slice(&input[start..input.len() - 1]);
        let vocab = self.loaded.model.config.n_vocab;
        let mut sum = 0f64;
        for (row, target) in logits.chunks_exact(vocab).zip(&input[ctxlen..]) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|v| (*v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            sum += row
                .get(*target as usize)
                .map(|v| *v as f64)
                .unwrap_or(f64::NEG_INFINITY)
                - lse;
        }
        Ok(sum)
    }
}

impl Backend for LocalBackend {
    fn loglik(&mut self, requests: &[(String, String)]) -> Result<Vec<f64>> {
        let mut out = vec![0f64; requests.len()];
        let tok = self.loaded.tokenizer.clone();
        for (context, conts) in group_by_context(requests) {
            for (i, cont) in conts {
                let (ctx_ids, cont_ids) = encode_pair(context, cont, |s| tok.encode(s, false))?;
                let (input, ctxlen) = lm_eval_window(&ctx_ids, &cont_ids, LM_EVAL_MAX_LENGTH);
                out[i] = self.score(&input, ctxlen)?;
            }
        }
        Ok(out)
    }

    fn generate(&mut self, prompts: &[String], params: &GenParams) -> Result<Vec<String>> {
        let sampling = SamplingParams {
            do_sample: params.temperature > 0.0,
            temperature: if params.temperature > 0.0 {
                params.temperature
            } else {
                1.0
            },
            top_p: params.top_p,
            seed: params.seed,
            ..Default::default()
        };
        let mut texts = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let ids = self.loaded.tokenizer.encode(prompt, true)?;
            let room = self.ctx.saturating_sub(ids.len());
            if room == 0 {
                return Err(anyhow!(
                    "a prompt of {} tokens does not fit the {}-token context",
                    ids.len(),
                    self.ctx
                ));
            }
            let gen = GenerationParams {
                max_new_tokens: params.max_new_tokens.min(room),
                sampling: sampling.clone(),
                stop: params.stop.clone(),
                stop_tokens: self.loaded.tokenizer.eos_ids().to_vec(),
            };
            let mut session = Session::new(&self.loaded.model, ids.len() + gen.max_new_tokens + 1);
            let out = generate(
                &self.loaded.model,
                &self.pool,
                &self.loaded.tokenizer,
                &mut session,
                &ids,
                &gen,
                |_| true,
            )?;
            texts.push(out.text);
        }
        Ok(texts)
    }

    fn model_id(&self) -> String {
        self.loaded.name.clone()
    }
}
