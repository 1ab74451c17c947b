//! `meditron inspect`: what a model file holds — architecture, metadata, tensors with their
//! types and shapes, the tokenizer and the chat template.

use crate::args::ModelArgs;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// List every tensor (default: a summary by type)
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(args: Args) -> Result<()> {
    let path = crate::model_path::resolve(args.model.model.as_deref())?;
    if path.is_file() {
        let file = formats::GgufFile::open(&path)?;
        println!("file: {} (GGUF v{})", path.display(), file.version());
        println!("metadata:");
        for (key, value) in file.metadata() {
            println!("  {key} = {}", short(&value.describe(), 100));
        }
        println!("tensors: {}", file.tensors().len());
        let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for t in file.tensors() {
            let e = by_type.entry(t.ty.name()).or_default();
            e.0 += 1;
            e.1 += t.n_bytes as u64;
            if args.tensors {
                println!("  {:<40} {:<6} {:?}", t.name, t.ty.name(), t.dims);
            }
        }
        for (ty, (n, bytes)) in by_type {
            println!("  {ty:<6} {n:>4} tensors, {:.1} MB", bytes as f64 / 1e6);
        }
    }
    let loaded = args.model.load().context("loading the model")?;
    let c = &loaded.model.config;
    println!("model: {}", loaded.describe());
    println!(
        "  context {}, head_dim {}, rope theta {} ({:?} pairs, {} dims), rms eps {}, tied embeddings: {}",
        c.max_context, c.head_dim, c.rope_theta, c.rope_style, c.rope_dims, c.rms_eps, c.tie_embeddings
    );
    println!(
        "  weights read per decoded token: {:.1} MB",
        loaded.model.weight_bytes_per_token() as f64 / 1e6
    );
    let tok = &loaded.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "tokenizer: {} tokens, bos {} (added: {}), end-of-generation {:?}",
        tok.vocab_size(),
        name(tok.bos_id()),
        tok.add_bos(),
        tok.eos_ids()
            .iter()
            .map(|&i| name(Some(i)))
            .collect::<Vec<_>>()
    );
    match tok.chat_template() {
        Some(t) => println!("chat template (from the model):\n{t}"),
        None => println!("chat template: none in the model; ChatML is used"),
    }
    Ok(())
}

/// The first `max` characters of `s`, with an ellipsis when cut.
fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
