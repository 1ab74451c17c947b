//! `meditron tokenize`: text on stdin, token ids out as a JSON array (special tokens written in
//! the text are parsed; BOS only when the model adds one).

use crate::args::ModelArgs;
use anyhow::{Context, Result};
use std::io::Read;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Never add BOS, whatever the model says
    #[arg(long)]
    pub no_bos: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading text from stdin (it must be UTF-8)")?;
    let tok =
        model::load::load_tokenizer(&crate::model_path::resolve(args.model.model.as_deref())?)?;
    let ids = tok.encode(&text, !args.no_bos)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
