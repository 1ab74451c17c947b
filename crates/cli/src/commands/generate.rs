//! `meditron generate`: one prompt in, the completion streamed to stdout (logs go to stderr).

use crate::args::{ModelArgs, SamplingArgs};
use anyhow::{Context, Result};
use model::generate::{generate, GenerationParams, Session};
use std::io::{Read, Write};
use tokenizer::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message for the chat template
    #[arg(long)]
    pub system: Option<String>,
    /// Use the prompt as is, without the chat template
    #[arg(long)]
    pub raw: bool,
    /// Print timing figures on stderr at the end
    #[arg(long)]
    pub verbose: bool,
    /// The prompt; read from stdin when absent or "-"
    pub prompt: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let params = args.sampling.params()?;
    let prompt = match args.prompt.as_deref() {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
        Some(p) => p.to_string(),
    };
    let loaded = args.model.load()?;
    let pool = args.model.pool()?;
    let ids = if args.raw {
        loaded.tokenizer.encode(&prompt, true)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: prompt,
        });
        loaded.encode_chat(&messages)?
    };
    let ctx = args.model.context(&loaded)?;
    if ids.len() >= ctx {
        anyhow::bail!(
            "the prompt is {} tokens long; the context holds {ctx}",
            ids.len()
        );
    }
    let gen_params = GenerationParams {
        max_new_tokens: args.sampling.max_new_tokens.min(ctx - ids.len()),
        sampling: params,
        stop: args.sampling.stop.clone(),
        stop_tokens: loaded.tokenizer.eos_ids().to_vec(),
    };
    let mut session = Session::new(&loaded.model, ctx);
    let mut stdout = std::io::stdout().lock();
    let out = generate(
        &loaded.model,
        &pool,
        &loaded.tokenizer,
        &mut session,
        &ids,
        &gen_params,
        |piece| {
            // A closed pipe (e.g. `| head`) ends generation quietly.
            stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok()
        },
    )?;
    let _ = writeln!(stdout);
    if args.verbose {
        let pp = out.prompt_tokens as f64 / out.prefill_time.as_secs_f64().max(1e-9);
        let tg = out.tokens.len() as f64 / out.decode_time.as_secs_f64().max(1e-9);
        eprintln!(
            "prompt {} tokens at {pp:.1} tok/s, generated {} tokens at {tg:.1} tok/s, finish: {}",
            out.prompt_tokens,
            out.tokens.len(),
            out.finish.as_str()
        );
    }
    Ok(())
}
