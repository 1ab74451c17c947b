//! `meditron chat`: a terminal conversation that keeps the history in the chat template and
//! reuses the cached prefix, so each turn only computes the new tokens.

use crate::args::{ModelArgs, SamplingArgs};
use anyhow::{Context, Result};
use model::generate::{generate, FinishReason, GenerationParams, Session};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokenizer::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message that opens the conversation
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let base_params = args.sampling.params()?;
    let loaded = args.model.load()?;
    let pool = args.model.pool()?;
    let ctx = args.model.context(&loaded)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // First Ctrl-C stops the answer; a second one while idle quits.
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let interactive = std::io::stdin().is_terminal();
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &args.system {
        history.push(Message {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let mut session = Session::new(&loaded.model, ctx);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    if interactive {
        eprintln!(
            "Chatting with {}. Ctrl-C stops an answer, Ctrl-D or /exit quits, /reset starts over.",
            loaded.describe()
        );
    }
    let mut turn = 0u64;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush().ok();
        }
        interrupted.store(false, Ordering::SeqCst);
        let Some(line) = lines.next() else { break };
        let line = line.context("reading from stdin")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        history.push(Message {
            role: "user".into(),
            content: text.to_string(),
        });
        let ids = loaded.encode_chat(&history)?;
        if ids.len() + 1 >= ctx {
            history.pop();
            eprintln!(
                "[the conversation no longer fits the {ctx}-token context: /reset to start over]"
            );
            continue;
        }
        let mut params = base_params.clone();
        params.seed = params.seed.wrapping_add(turn);
        turn += 1;
        let gen = GenerationParams {
            max_new_tokens: args.sampling.max_new_tokens.min(ctx - ids.len()),
            sampling: params,
            stop: args.sampling.stop.clone(),
            stop_tokens: loaded.tokenizer.eos_ids().to_vec(),
        };
        let mut stdout = std::io::stdout().lock();
        let out = generate(
            &loaded.model,
            &pool,
            &loaded.tokenizer,
            &mut session,
            &ids,
            &gen,
            |piece| {
                let _ = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush());
                !interrupted.load(Ordering::SeqCst)
            },
        )?;
        let _ = writeln!(stdout);
        if out.finish == FinishReason::Cancelled {
            eprintln!("[stopped]");
        }
        history.push(Message {
            role: "assistant".into(),
            content: out.text,
        });
    }
    Ok(())
}
