//! One module per subcommand.

pub mod bench;
pub mod bench_cuda;
pub mod chat;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod perplexity;
pub mod quantize;
pub mod tokenize;
