//! `meditron serve`: the TGI and OpenAI HTTP APIs in front of a continuous-batching engine.
//!
//! - [`ServeArgs`] and [`run_serve`]: the command, flags as TGI's launcher.
//! - [`BenchServeArgs`] and [`run_bench_serve`]: a vLLM-style serving benchmark client.
//! - [`Server`]: the same server embedded (tests start it on an ephemeral port).

mod args;
mod bench;
mod body;
mod engine;
mod error;
mod generation;
mod gpu;
mod grammar;
mod info;
pub mod metrics;
mod openai;
mod server;
mod state;
mod tgi;
mod validate;
mod web;

pub use args::{Limits, ServeArgs};
pub use bench::{run_bench_serve, BenchServeArgs};
pub use error::ApiError;
pub use server::{router, run_serve, Server};
pub use state::AppState;
