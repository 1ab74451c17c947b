//! Text <-> token ids and chat templates, equal to Hugging Face transformers and llama.cpp.
//!
//! The tokenization itself is Hugging Face's own `tokenizers` crate, so a model directory's
//! `tokenizer.json` behaves exactly as in transformers. A GGUF file carries no `tokenizer.json`,
//! only llama.cpp's `tokenizer.ggml.*` keys; [`Tokenizer::from_gguf`] rebuilds the equivalent
//! `tokenizers` pipeline from them (byte-level BPE for `gpt2`, SentencePiece-style BPE with byte
//! fallback for `llama`), choosing the pre-tokenizer the way llama.cpp does.
//!
//! - [`Tokenizer`]: encode/decode, special tokens, BOS/EOS and the end-of-generation set.
//! - [`IncrementalDecoder`]: text for a stream of generated ids, never half a character.
//! - [`ChatTemplate`]: Hugging Face Jinja chat templates rendered with minijinja.

mod chat;
mod gguf;
mod stream;
mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use gguf::GgufVocab;
pub use stream::IncrementalDecoder;
pub use tokenizer::Tokenizer;

use std::path::PathBuf;

/// Everything that can go wrong between text and ids; each variant says where.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid GGUF tokenizer metadata: {0}")]
    Vocab(String),
    #[error("encoding text: {0}")]
    Encode(String),
    #[error("decoding token ids: {0}")]
    Decode(String),
    #[error("chat template: {0}")]
    Template(String),
}
