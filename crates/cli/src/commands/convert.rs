//! `meditron convert`: a GGUF model as a Hugging Face model directory (safetensors in f32,
//! f16 or bf16, config.json, tokenizer files), loadable by transformers and by meditron.

use crate::args::ModelArgs;
use anyhow::{bail, Result};
use model::convert::OutDtype;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory to write (created if needed; must not hold a model already)
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Element type of the written weights
    #[arg(long, value_enum, default_value_t = OutDtype::F16)]
    pub dtype: OutDtype,
}

pub fn run(args: Args) -> Result<()> {
    let src = crate::model_path::resolve(args.model.model.as_deref())?;
    if !src.is_file() {
        bail!(
            "{}: convert reads GGUF files; this is a directory",
            src.display()
        );
    }
    if args.out.join("config.json").exists() {
        bail!(
            "{} already holds a model (config.json); choose another --out",
            args.out.display()
        );
    }
    model::convert::gguf_to_hf(&src, &args.out, args.dtype)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
