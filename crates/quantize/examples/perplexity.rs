//! Perplexity of model directories (fp16 or GPTQ) on a text file, llama.cpp's protocol, with the
//! quantizer's f32 forward: `cargo run -p quantize --example perplexity -- FILE CTX CHUNKS DIR...`
//! (the quality table in README.md, "GPTQ").
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        anyhow::bail!("usage: perplexity FILE CTX CHUNKS DIR...");
    }
    let text = std::fs::read_to_string(&a[0])?;
    let (ctx, chunks): (usize, usize) = (a[1].parse()?, a[2].parse()?);
    for dir in &a[3..] {
        let t = Instant::now();
        let (ppl, n) = quantize::eval::perplexity(std::path::Path::new(dir), &text, ctx, chunks)?;
        println!(
            "{dir}\tPPL = {ppl:.4}\t({n} tokens scored, {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
