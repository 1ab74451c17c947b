//! `meditron eval`'s engine: the Meditron paper's medical benchmarks (PubMedQA, MedMCQA, MedQA, MMLU-Medical) on any `Backend`.
//!
//! Flow: [`dataset`] reads a task's files into `Item`s; [`prompts`] turns them into lm-eval
//! log-likelihood requests or Meditron generation prompts; a [`Backend`] (the local engine,
//! or [`OpenAiBackend`] for a remote server) answers them in batches; [`extract`] and
//! [`scoring`] turn answers into predictions; [`report`] aggregates them. [`run_eval`] drives it
//! all, resumably; [`EvalArgs`] are the CLI flags. [`perplexity`] scores text files
//! (PPL and bits per byte) through a [`TokenScorer`].
//!
//! Wiring `meditron eval` in the CLI (a sketch):
//! ```text
//! #[derive(clap::Args)] struct Args { #[command(flatten)] model: ModelArgs,
//!                                     #[command(flatten)] eval: eval::EvalArgs }
//! eval::run_from_args(&args.eval, || {
//!     let engine = LocalEngine::load(&args.model)?;            // implements eval::Backend
//!     let hash = eval::hash_files(&engine.weight_files()).ok();
//!     Ok((Box::new(engine) as Box<dyn eval::Backend>, hash))
//! })?;
//! ```
//! The local `Backend::loglik` must split tokens as `backend`'s docs say to match lm-eval.

pub mod args;
pub mod backend;
pub mod dataset;
pub mod extract;
pub mod openai;
pub mod perplexity;
pub mod prompts;
pub mod report;
pub mod run;
pub mod scoring;

pub use args::{hash_files, run_from_args, EvalArgs};
pub use backend::{
    encode_pair, group_by_context, lm_eval_window, Backend, GenParams, LM_EVAL_MAX_LENGTH,
};
pub use dataset::{load_task, Dataset, Item, LoadOptions, Task};
pub use openai::OpenAiBackend;
pub use perplexity::{run_perplexity, PerplexityArgs, TokenScorer};
pub use report::{ItemResult, Report};
pub use run::{run_eval, EvalOptions, Mode, NoProgress, ProgressSink, TextProgress};
