//! The flags of `meditron serve`, named as text-generation-inference's launcher names them, and
//! the limits they resolve to once the model's context length is known.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// `meditron serve` flags. Names, aliases and defaults follow TGI's launcher so that a TGI
/// command line works unchanged.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A .gguf file or a Hugging Face model directory; the built-in default model if absent
    #[arg(long, short = 'm', alias = "model-id")]
    pub model: Option<String>,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0")]
    pub hostname: String,
    /// Port to listen on
    #[arg(long, short = 'p', default_value_t = 3000)]
    pub port: u16,
    /// Longest prompt accepted, in tokens (default: max-total-tokens - 1)
    #[arg(long, alias = "max-input-length")]
    pub max_input_tokens: Option<usize>,
    /// Longest prompt plus generated tokens of one request (default: the model's context, at most 4096)
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Prompt tokens processed in one engine step, summed over requests (default: max-input-tokens + 50)
    #[arg(long)]
    pub max_batch_prefill_tokens: Option<usize>,
    /// Tokens the KV cache holds for all requests together; bounds memory and admission
    /// (default: what fits in 1 GiB, at least max-total-tokens)
    #[arg(long)]
    pub max_batch_total_tokens: Option<usize>,
    /// Requests in flight (running or queued) before new ones get 429
    #[arg(long, default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Most stop sequences in one request
    #[arg(long, default_value_t = 4)]
    pub max_stop_sequences: usize,
    /// Most `best_of` candidates (and OpenAI `n` choices) of one request
    #[arg(long, default_value_t = 2)]
    pub max_best_of: usize,
    /// Most `top_n_tokens` (and OpenAI `top_logprobs`) of one request
    #[arg(long, default_value_t = 5)]
    pub max_top_n_tokens: usize,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Require `Authorization: Bearer <key>` on the generation routes
    #[arg(long)]
    pub api_key: Option<String>,
    /// Worker threads of the compute pool (default: all cores)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Seconds SIGTERM waits for in-flight requests before exiting anyway
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Where the model runs: cpu, or cuda (a Hugging Face directory, GPTQ or fp16, on GPU 0)
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ServeArgs {
    /// The flags with every default filled in, for tests and embedding.
    pub fn with_model(model: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            model: model.map(|p| p.to_string_lossy().into_owned()),
            hostname: "127.0.0.1".into(),
            port: 3000,
            max_input_tokens: None,
            max_total_tokens: None,
            max_batch_prefill_tokens: None,
            max_batch_total_tokens: None,
            max_concurrent_requests: 128,
            max_stop_sequences: 4,
            max_best_of: 2,
            max_top_n_tokens: 5,
            payload_limit: 2_000_000,
            api_key: None,
            threads: None,
            shutdown_timeout: 30,
            device: "cpu".into(),
        }
    }
}

/// KV cache memory used when `--max-batch-total-tokens` is not given.
const DEFAULT_KV_BYTES: usize = 1 << 30;

/// The limits every request is checked against, fixed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_batch_prefill_tokens: usize,
    pub max_batch_total_tokens: usize,
    pub max_concurrent_requests: usize,
    pub max_stop_sequences: usize,
    pub max_best_of: usize,
    pub max_top_n_tokens: usize,
}

impl Limits {
    /// Fills the defaults from the model (`max_context` tokens, `kv_bytes_per_token` of cache
    /// per token) and checks the flags against each other as TGI's launcher does.
    pub fn resolve(
        args: &ServeArgs,
        max_context: usize,
        kv_bytes_per_token: usize,
    ) -> Result<Limits> {
        let max_total_tokens = args.max_total_tokens.unwrap_or(max_context.min(4096));
        if max_total_tokens < 2 {
            bail!("--max-total-tokens must be at least 2, got {max_total_tokens}");
        }
        if max_total_tokens > max_context {
            bail!("--max-total-tokens {max_total_tokens} is larger than the model's context length {max_context}");
        }
        let max_input_tokens = args.max_input_tokens.unwrap_or(max_total_tokens - 1);
        if max_input_tokens == 0 || max_input_tokens >= max_total_tokens {
            bail!(
                "--max-input-tokens ({max_input_tokens}) must be at least 1 and less than --max-total-tokens ({max_total_tokens})"
            );
        }
        let max_batch_prefill_tokens = args
            .max_batch_prefill_tokens
            .unwrap_or(max_input_tokens + 50);
        if max_batch_prefill_tokens < max_input_tokens {
            bail!(
                "--max-batch-prefill-tokens ({max_batch_prefill_tokens}) must be at least --max-input-tokens ({max_input_tokens})"
            );
        }
        let max_batch_total_tokens = args
            .max_batch_total_tokens
            .unwrap_or((DEFAULT_KV_BYTES / kv_bytes_per_token.max(1)).max(max_total_tokens));
        if max_batch_total_tokens < max_total_tokens {
            bail!(
                "--max-batch-total-tokens ({max_batch_total_tokens}) must be at least --max-total-tokens ({max_total_tokens})"
            );
        }
        if args.max_concurrent_requests == 0 {
            bail!("--max-concurrent-requests must be at least 1");
        }
        if args.max_best_of == 0 {
            bail!("--max-best-of must be at least 1");
        }
        Ok(Limits {
            max_input_tokens,
            max_total_tokens,
            max_batch_prefill_tokens,
            max_batch_total_tokens,
            max_concurrent_requests: args.max_concurrent_requests,
            max_stop_sequences: args.max_stop_sequences,
            max_best_of: args.max_best_of,
            max_top_n_tokens: args.max_top_n_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn the_seeds_tgi_command_line_parses() {
        let cli = Cli::try_parse_from([
            "serve",
            "--model-id",
            "m.gguf",
            "--max-input-length",
            "3696",
            "--max-total-tokens",
            "4096",
            "--max-batch-prefill-tokens",
            "4096",
        ])
        .unwrap();
        let limits = Limits::resolve(&cli.serve, 8192, 1000).unwrap();
        assert_eq!(cli.serve.model.as_deref(), Some("m.gguf"));
        assert_eq!(cli.serve.port, 3000);
        assert_eq!(limits.max_input_tokens, 3696);
        assert_eq!(limits.max_total_tokens, 4096);
        assert_eq!(limits.max_batch_prefill_tokens, 4096);
        assert_eq!(limits.max_batch_total_tokens, (1 << 30) / 1000);
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let mut a = ServeArgs::with_model(None);
        a.max_input_tokens = Some(4096);
        a.max_total_tokens = Some(4096);
        assert!(Limits::resolve(&a, 8192, 1).is_err());
        let mut a = ServeArgs::with_model(None);
        a.max_total_tokens = Some(9000);
        assert!(Limits::resolve(&a, 8192, 1).is_err());
        let mut a = ServeArgs::with_model(None);
        a.max_batch_total_tokens = Some(100);
        assert!(Limits::resolve(&a, 8192, 1).is_err());
        let mut a = ServeArgs::with_model(None);
        a.max_batch_prefill_tokens = Some(10);
        assert!(Limits::resolve(&a, 8192, 1).is_err());
    }
}
