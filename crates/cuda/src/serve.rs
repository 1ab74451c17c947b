//! The GPU side of `meditron serve --device cuda`: a loaded model, its device state and one
//! forward pass over any mix of sequences' tokens (decode rows and prompt chunks), with pages of
//! the KV cache handed out by the server's own block allocator. Steps of up to 32 rows replay a
//! CUDA graph captured for that row count (the kernels read tokens, positions and page tables
//! from device buffers, so one graph serves every step of that size). Rows may be sampled on the
//! GPU (crate::sample), so that only their token ids come back.

use crate::driver::{Buf, Gpu, Graph};
use crate::kernels::{ATTN_SPLIT, PAGE, TC_MAX_ROWS};
use crate::llama::{Model, Runner, State};
use crate::sample::{OUT_WORDS, PARAM_WORDS};
use anyhow::{bail, Result};
use model::{SampleRow, Sampled};
use std::collections::HashMap;

/// Rows per forward chunk: longer batches (prompts) run in chunks of this many.
pub const MAX_ROWS: usize = 1024;

pub struct ServeModel {
    pub gpu: Gpu,
    pub model: Model,
    st: State,
    graphs: HashMap<usize, Graph>,
    max_ctx: usize,
    max_seqs: usize,
    sample_params: Buf, // [MAX_ROWS][PARAM_WORDS] u32
    sample_out: Buf,    // [MAX_ROWS][OUT_WORDS] u32
    sample_pen: Buf,    // [*][2] i32, grown on demand
}

/// One token of a step: its id, position and the step's sequence slot (index into `tables`).
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub token: u32,
    pub pos: usize,
    pub slot: usize,
    pub logits: bool,
}

impl ServeModel {
    /// A model on `gpu` with a KV cache of `kv_tokens` slots, sequences of up to `max_ctx`
    /// positions and at most `max_seqs` sequences per step.
    pub fn new(
        gpu: Gpu,
        model: Model,
        kv_tokens: usize,
        max_ctx: usize,
        max_seqs: usize,
    ) -> Result<ServeModel> {
        let pages = kv_tokens.div_ceil(PAGE);
        let max_pages = max_ctx.div_ceil(PAGE);
        let table = vec![0i32; max_seqs.max(1) * max_pages];
        let st = State::build(&gpu, &model, TC_MAX_ROWS, MAX_ROWS, max_ctx, pages, &table)?;
        let sample_params = gpu.alloc(MAX_ROWS * PARAM_WORDS * 4)?;
        let sample_out = gpu.alloc(MAX_ROWS * OUT_WORDS * 4)?;
        let sample_pen = gpu.alloc(1 << 16)?;
        gpu.sync()?;
        Ok(ServeModel {
            gpu,
            model,
            st,
            graphs: HashMap::new(),
            max_ctx,
            max_seqs: max_seqs.max(1),
            sample_params,
            sample_out,
            sample_pen,
        })
    }

    /// Runs the rows (each sequence's positions continuing its cached ones, in order) with
    /// `tables[slot]` the pages of each sequence; returns the logits of rows marked `logits`,
    /// concatenated [n_marked][vocab].
    pub fn forward(&mut self, rows: &[Row], tables: &[&[u32]]) -> Result<Vec<f32>> {
        let marked = rows.iter().filter(|r| r.logits).count();
        let none: Vec<Option<SampleRow>> = (0..marked).map(|_| None).collect();
        Ok(self.forward_sampled(rows, tables, &none)?.0)
    }

    /// As `forward`, with `specs` one entry per row marked `logits`: a `Some` row is sampled on
    /// the GPU (only its result comes back, in order), a `None` row returns its logits.
    pub fn forward_sampled(
        &mut self,
        rows: &[Row],
        tables: &[&[u32]],
        specs: &[Option<SampleRow>],
    ) -> Result<(Vec<f32>, Vec<Sampled>)> {
        self.gpu.bind()?;
        if tables.len() > self.max_seqs {
            bail!(
                "{} sequences in one step; the GPU state was made for {}",
                tables.len(),
                self.max_seqs
            );
        }
        let vocab = self.model.cfg.vocab;
        for r in rows {
            if r.pos >= self.max_ctx || r.slot >= tables.len() || r.token as usize >= vocab {
                bail!(
                    "row (token {}, position {}, sequence {}) is outside the model's {vocab} tokens / the cache's {} positions",
                    r.token,
                    r.pos,
                    r.slot,
                    self.max_ctx
                );
            }
        }
        if specs.len() != rows.iter().filter(|r| r.logits).count() {
            bail!(
                "{} sampling entries for {} rows with logits",
                specs.len(),
                rows.iter().filter(|r| r.logits).count()
            );
        }
        self.st.set_table(&self.gpu, tables)?;
        let runner = Runner::new(&self.gpu, &self.model);
        let mut out = Vec::new();
        let mut sampled = Vec::new();
        let mut specs = specs.iter();
        for chunk in rows.chunks(MAX_ROWS) {
            let n = chunk.len();
            // This chunk's rows to sample: their settings and penalties go up with the tokens.
            let mut params: Vec<u32> = Vec::new();
            let mut pen: Vec<i32> = Vec::new();
            let mut kinds = Vec::new(); // per marked row: Some(top_n) when sampled here
            for (i, r) in chunk.iter().enumerate() {
                if !r.logits {
                    continue;
                }
                match specs.next() {
                    Some(Some(spec)) => {
                        params.extend(crate::sample::pack(spec, i, &mut pen));
                        kinds.push((i, Some(spec.top_n)));
                    }
                    _ => kinds.push((i, None)),
                }
            }
            let nsample = params.len() / PARAM_WORDS;
            if nsample > 0 {
                if pen.len() * 4 > self.sample_pen.bytes {
                    self.sample_pen = self.gpu.alloc((pen.len() * 4).next_power_of_two())?;
                }
                self.gpu.write(&self.sample_params, 0, &params)?;
                self.gpu.write(&self.sample_pen, 0, &pen)?;
            }
            let tok: Vec<i32> = chunk.iter().map(|r| r.token as i32).collect();
            let pos: Vec<i32> = chunk.iter().map(|r| r.pos as i32).collect();
            let seq: Vec<i32> = chunk.iter().map(|r| r.slot as i32).collect();
            self.gpu.write(&self.st.pre_tok, 0, &tok)?;
            self.gpu.write(&self.st.pre_pos, 0, &pos)?;
            self.gpu.write(&self.st.pre_seq, 0, &seq)?;
            if n <= TC_MAX_ROWS {
                if !self.graphs.contains_key(&n) {
                    let nsplit = self.max_ctx.div_ceil(ATTN_SPLIT);
                    // Eager once (compiles kernels, creates cuBLAS), then captured.
                    runner.step_rows(&self.st, n, nsplit)?;
                    let g = self.gpu.capture(|| runner.step_rows(&self.st, n, nsplit))?;
                    self.graphs.insert(n, g);
                }
                self.gpu.replay(&self.graphs[&n])?;
            } else {
                let top = chunk.iter().map(|r| r.pos + 1).max().unwrap_or(1);
                runner.step_rows(&self.st, n, top.div_ceil(ATTN_SPLIT))?;
            }
            crate::sample::launch(
                &self.gpu,
                self.st.logits.ptr,
                vocab,
                &self.sample_params,
                &self.sample_pen,
                &self.sample_out,
                nsample,
            )?;
            if nsample == 0 && kinds.len() == n {
                out.extend(self.gpu.read::<f32>(&self.st.logits, 0, n * vocab)?);
            } else {
                for &(i, kind) in &kinds {
                    if kind.is_none() {
                        out.extend(
                            self.gpu
                                .read::<f32>(&self.st.logits, i * vocab * 4, vocab)?,
                        );
                    }
                }
            }
            if nsample > 0 {
                let words = self
                    .gpu
                    .read::<u32>(&self.sample_out, 0, nsample * OUT_WORDS)?;
                let tops = kinds.iter().filter_map(|k| k.1);
                for (w, top_n) in words.chunks_exact(OUT_WORDS).zip(tops) {
                    sampled.push(crate::sample::unpack(w, top_n));
                }
            }
        }
        Ok((out, sampled))
    }

    /// Captures the step graphs of every row count up to 32 before requests arrive (each
    /// takes an eager step and a capture, ~0.1 s; made on demand they would stall the first
    /// steps of a busy server), and compiles the sampling kernel with one sampled step. Writes
    /// keys/values at position 0 of page 0, which no sequence owns yet.
    pub fn warm_up(&mut self) -> Result<()> {
        let page = [0u32];
        let row = Row {
            token: 0,
            pos: 0,
            slot: 0,
            logits: true,
        };
        for n in 1..=TC_MAX_ROWS {
            self.forward(&vec![row; n], &[&page])?;
        }
        let greedy = model::SamplingParams::default();
        let spec = SampleRow {
            params: &greedy,
            uniform: 0.0,
            context: &[],
            generated: &[],
            top_n: 1,
        };
        self.forward_sampled(&[row], &[&page], &[Some(spec)])?;
        Ok(())
    }

    /// Device memory in use (bytes) and the KV cache's share of it.
    pub fn memory(&self) -> Result<(usize, usize)> {
        let (free, total) = self.gpu.mem_info()?;
        Ok((total - free, self.st.kv_bytes()))
    }
}

// SAFETY: the device handles (context, streams, buffers, graphs) are used by one thread at a
// time: the engine thread that owns this after it is moved there; `forward` makes the context
// current on the calling thread first.
unsafe impl Send for ServeModel {}
