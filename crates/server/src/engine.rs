//! The engine: one thread that owns the model, the paged KV cache and the thread pool, and runs
//! continuous batching over every request at once, streaming tokens back per request.
//!
//! Each step (1) takes in new requests and drops those whose client went away, (2) admits
//! queued requests while the KV cache can hold their whole budget (prompt + max_new_tokens),
//! (3) builds one batch from a decode token of every generating sequence plus prompt chunks of
//! prefilling ones, bounded by `max_batch_prefill_tokens`, (4) runs it in one forward pass, so
//! the weights are read once per step whatever the number of sequences, and (5) samples, sends
//! the tokens and frees the pages of sequences that finished.

use crate::args::Limits;
use crate::metrics::Metrics;
use model::generate::FinishReason;
use model::grammar::JsonConstraint;
use model::kv_cache::BLOCK_TOKENS;
use model::{BatchToken, Forward, KvCache, SampleRow, Sampled, Sampler, SamplingParams, SeqId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Prompt tokens per step while other sequences are decoding (or one per decoding sequence,
/// if more): on a CPU a step costs about the same per token, prefill or decode, so a long
/// prefill in one step would stall every stream for seconds (a 256-token chunk held 16 streams
/// for 2 s on 2 cores); spread over steps it keeps inter-token latency near a decode step's,
/// while still admitting prompts as fast as streams finish.
const PREFILL_CHUNK_WHILE_DECODING: usize = 64;

/// Prompt tokens per step of a request that wants every prompt token's log-probabilities: each
/// of them returns a whole vocabulary of logits (200 KB for 50k tokens).
const PROMPT_LOGPROBS_CHUNK: usize = 128;

/// One generation as the engine sees it: token ids in, token ids out.
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// End at an end-of-generation token (false: only at `max_new_tokens`, for benchmarks).
    pub stop_at_eos: bool,
    /// Log-probability of each generated token (TGI always sends them).
    pub logprobs: bool,
    /// Log-probabilities of the prompt tokens (`decoder_input_details`, OpenAI `echo`).
    pub prompt_logprobs: bool,
    /// The `top_n` most likely alternatives of every scored token.
    pub top_n: usize,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
    /// Only tokens that keep the output a valid JSON document may be sampled.
    pub constraint: Option<JsonConstraint>,
}

/// A token id with its log-probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// The score of one token under the model: its log-probability and the top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub id: u32,
    /// NaN when not asked for.
    pub logprob: f32,
    pub top: Vec<TokenLogprob>,
}

/// What the engine tells a request, in this order: `Admitted`, `Prompt` (when asked),
/// `Token`s (the last with its finish reason), or `Finished` when no token was generated;
/// `Error` at any point ends it.
#[derive(Debug)]
pub enum Event {
    Admitted {
        queue_time: Duration,
    },
    /// Scores of prompt tokens 1.. (the first token has no context to be scored in).
    Prompt(Vec<Scored>),
    Token {
        token: Scored,
        finish: Option<FinishReason>,
    },
    Finished(FinishReason),
    Error(String),
}

enum Msg {
    Request(Box<EngineRequest>),
    Shutdown,
}

/// Queues requests for the engine thread; cheap to clone.
#[derive(Clone)]
pub struct EngineClient {
    tx: Sender<Msg>,
    alive: Arc<AtomicBool>,
}

impl EngineClient {
    /// Queues a request; false when the engine is gone.
    pub fn submit(&self, req: EngineRequest) -> bool {
        self.tx.send(Msg::Request(Box::new(req))).is_ok()
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Owns the engine thread: stops and joins it.
pub struct EngineHandle {
    client: EngineClient,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread; `make_pool` runs on it, so the pool's thread 0 is the engine.
    /// `model`: the CPU `Llama`, or a GPU backend (`crate::gpu`).
    pub fn start<M: Forward + Send + 'static>(
        model: M,
        eos_ids: Vec<u32>,
        limits: Limits,
        threads: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<EngineHandle> {
        let (tx, rx) = std::sync::mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        let thread = std::thread::Builder::new()
            .name("meditron-engine".into())
            .spawn(move || {
                let pool = match threads {
                    Some(n) => kernels::cpu::ThreadPool::new(n),
                    None => kernels::cpu::ThreadPool::with_default_threads(),
                };
                let cache = model.new_cache(limits.max_batch_total_tokens);
                let mut engine = Engine {
                    total_blocks: cache.capacity_tokens() / BLOCK_TOKENS,
                    model: Box::new(model),
                    cache,
                    pool,
                    eos_ids,
                    limits,
                    metrics,
                    waiting: VecDeque::new(),
                    running: Vec::new(),
                    reserved_blocks: 0,
                    idle: VecDeque::new(),
                    prefill_held: 0,
                };
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(&rx)));
                if result.is_err() {
                    tracing::error!("the engine thread panicked; the server is unhealthy");
                    engine.fail_all("the engine stopped unexpectedly");
                }
                alive2.store(false, Ordering::SeqCst);
            })?;
        Ok(EngineHandle {
            client: EngineClient { tx, alive },
            thread: Some(thread),
        })
    }

    pub fn client(&self) -> EngineClient {
        self.client.clone()
    }

    /// Stops the engine (requests still running get an error) and waits for its thread.
    pub fn shutdown(&mut self) {
        let _ = self.client.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request admitted into the batch.
struct Running {
    req: EngineRequest,
    seq: SeqId,
    /// The prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// `tokens[..fed]` are in the KV cache; a generating sequence has exactly one more.
    fed: usize,
    generated: usize,
    sampler: Sampler,
    reserved_blocks: usize,
    prompt_scores: Vec<Scored>,
    /// Set when the sequence is to leave the batch at the end of this step.
    done: bool,
}

/// A finished sequence whose keys and values stay in the cache until its pages are needed, so
/// that a request starting with the same tokens (the next turn of a chat, another option of a
/// multiple-choice question) skips recomputing them.
struct Idle {
    seq: SeqId,
    /// The tokens in the cache.
    tokens: Vec<u32>,
    /// `scores[k]` scores `tokens[k + 1]` with `top_n` alternatives, when the request that left
    /// this sequence asked for prompt log-probabilities.
    scores: Vec<Scored>,
    top_n: usize,
}

/// Finished sequences kept for reuse, at most.
const MAX_IDLE: usize = 16;

/// What a row of the step came to (see `Engine::pick_rows`).
enum Pick {
    Host(Scored),
    Device(Sampled),
}

/// What a row of logits returned by the forward pass is for.
#[derive(Clone, Copy)]
enum Row {
    /// Scores prompt token `pos + 1` of running sequence `i`.
    Prompt(usize, usize),
    /// Picks the next token of running sequence `i`.
    Sample(usize),
}

struct Engine {
    model: Box<dyn Forward + Send>,
    cache: KvCache,
    pool: kernels::cpu::ThreadPool,
    eos_ids: Vec<u32>,
    limits: Limits,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Box<EngineRequest>>,
    running: Vec<Running>,
    total_blocks: usize,
    /// Blocks promised to running sequences (their whole budget), whether used yet or not:
    /// admission never overcommits, so a running sequence never finds the cache full.
    reserved_blocks: usize,
    /// Oldest first; their pages count against admission until evicted.
    idle: VecDeque<Idle>,
    /// Decode steps prompts have been held back (`Forward::prefill_batching`).
    prefill_held: usize,
}

impl Engine {
    fn run(&mut self, rx: &Receiver<Msg>) {
        self.metrics.kv_pages_total.set(self.total_blocks as i64);
        loop {
            if !self.receive(rx) {
                self.fail_all("the server is shutting down");
                return;
            }
            self.drop_cancelled();
            self.admit();
            self.publish_gauges();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Takes in new requests, waiting for one when idle. False on shutdown.
    fn receive(&mut self, rx: &Receiver<Msg>) -> bool {
        let handle = |engine: &mut Engine, msg: Msg| match msg {
            Msg::Request(r) => {
                engine.waiting.push_back(r);
                true
            }
            Msg::Shutdown => false,
        };
        if self.running.is_empty() && self.waiting.is_empty() {
            // Idle: block, but wake now and then so a dropped sender is noticed.
            loop {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(msg) => {
                        if !handle(self, msg) {
                            return false;
                        }
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            }
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    if !handle(self, msg) {
                        return false;
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    return !(self.running.is_empty() && self.waiting.is_empty())
                }
            }
        }
    }

    /// Frees the pages of sequences whose client went away (the receiver was dropped).
    fn drop_cancelled(&mut self) {
        self.waiting.retain(|r| !r.events.is_closed());
        for r in &mut self.running {
            if r.req.events.is_closed() {
                r.done = true;
            }
        }
        self.remove_done();
    }

    fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_TOKENS)
    }

    fn idle_blocks(&self) -> usize {
        self.idle
            .iter()
            .map(|s| Self::blocks_for(s.tokens.len()))
            .sum()
    }

    /// The idle sequence sharing the longest usable prefix with `req`'s prompt, and that
    /// prefix's length (at least the prompt's last token is always recomputed, for its logits).
    fn best_idle(&self, req: &EngineRequest) -> Option<(usize, usize)> {
        let limit = req.prompt.len().saturating_sub(1);
        self.idle
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let same = s
                    .tokens
                    .iter()
                    .zip(&req.prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                let common = if !req.prompt_logprobs {
                    same.min(limit)
                } else if s.top_n == req.top_n {
                    // Skipped positions take their scores from the earlier request, and
                    // `scores[k]` scores token k + 1: only scores of matching tokens carry
                    // over, so the last matching position is computed again to score the
                    // first token that differs.
                    same.saturating_sub(1).min(s.scores.len()).min(limit)
                } else {
                    0
                };
                (i, common)
            })
            .filter(|&(_, common)| common > 0)
            .max_by_key(|&(i, common)| (common, i))
    }

    /// Admits queued requests, oldest first, while their whole budget fits in the cache.
    fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            let budget =
                (front.prompt.len() + front.max_new_tokens).min(self.model.config().max_context);
            let need = Self::blocks_for(budget);
            let reuse = self.best_idle(front);
            // Idle sequences give their pages back, oldest first, when a request needs them.
            let mut idle_held = self.idle_blocks();
            if let Some((i, _)) = reuse {
                idle_held -= Self::blocks_for(self.idle[i].tokens.len());
            }
            let mut evict = 0;
            while self.reserved_blocks + idle_held + need > self.total_blocks
                && evict < self.idle.len()
            {
                if reuse.is_none_or(|(i, _)| i != evict) {
                    idle_held -= Self::blocks_for(self.idle[evict].tokens.len());
                }
                evict += 1;
            }
            if self.reserved_blocks + idle_held + need > self.total_blocks {
                // FIFO without skipping: a long request is not starved by short ones.
                break;
            }
            let reused = reuse.map(|(i, common)| (self.idle[i].seq, common));
            let (cache, mut j) = (&mut self.cache, 0);
            self.idle.retain(|s| {
                let keep = j >= evict || reused.is_some_and(|(seq, _)| seq == s.seq);
                if !keep {
                    cache.remove_sequence(s.seq);
                }
                j += 1;
                keep
            });
            let Some(req) = self.waiting.pop_front() else {
                break;
            };
            let req = *req;
            let queue_time = req.arrived.elapsed();
            self.metrics.queue_seconds.observe(queue_time.as_secs_f64());
            self.metrics.prompt_tokens.add(req.prompt.len() as u64);
            if req.events.send(Event::Admitted { queue_time }).is_err() {
                continue;
            }
            if req.prompt.is_empty() {
                let _ = req
                    .events
                    .send(Event::Error("the prompt has no tokens".into()));
                continue;
            }
            let (seq, fed, prompt_scores) = match reused {
                Some((seq, common)) => {
                    let at = self.idle.iter().position(|s| s.seq == seq);
                    let mut idle = at
                        .and_then(|at| self.idle.remove(at))
                        .expect("the reused sequence is idle");
                    if self.cache.truncate(seq, common).is_err() {
                        self.cache.remove_sequence(seq);
                        (self.cache.add_sequence(), 0, Vec::new())
                    } else {
                        self.metrics.prompt_tokens_cached.add(common as u64);
                        let scores = if req.prompt_logprobs {
                            idle.scores.truncate(common);
                            idle.scores
                        } else {
                            Vec::new()
                        };
                        (seq, common, scores)
                    }
                }
                None => (self.cache.add_sequence(), 0, Vec::new()),
            };
            self.reserved_blocks += need;
            let sampler = Sampler::new(req.sampling.clone());
            let tokens = req.prompt.clone();
            self.running.push(Running {
                prompt_len: tokens.len(),
                tokens,
                seq,
                fed,
                generated: 0,
                sampler,
                reserved_blocks: need,
                prompt_scores,
                done: false,
                req,
            });
        }
    }

    fn publish_gauges(&self) {
        let m = &self.metrics;
        m.requests_running.set(self.running.len() as i64);
        m.requests_waiting.set(self.waiting.len() as i64);
        // Pages of idle sequences are counted apart: any request may take them.
        let free_blocks = self.cache.free_tokens() / BLOCK_TOKENS;
        let cached = self.idle_blocks();
        m.kv_pages_used
            .set(self.total_blocks.saturating_sub(free_blocks + cached) as i64);
        m.kv_pages_cached.set(cached as i64);
    }

    /// One forward pass over a decode token of every generating sequence and prompt chunks.
    fn step(&mut self) {
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut rows = Vec::new();
        let mut advance = vec![0usize; self.running.len()];
        let mut decoding = 0;
        for (i, r) in self.running.iter().enumerate() {
            if r.fed >= r.prompt_len {
                batch.push(BatchToken {
                    token: r.tokens[r.fed],
                    seq: r.seq,
                    pos: r.fed,
                    logits: true,
                });
                rows.push(Row::Sample(i));
                advance[i] = 1;
                decoding += 1;
            }
        }
        let mut budget = self.limits.max_batch_prefill_tokens;
        if decoding > 0 {
            match self.model.prefill_batching() {
                None => budget = budget.min(PREFILL_CHUNK_WHILE_DECODING.max(decoding)),
                Some((chunk, hold)) => {
                    let waiting: usize = self
                        .running
                        .iter()
                        .map(|r| r.prompt_len.saturating_sub(r.fed))
                        .sum();
                    if waiting > 0 && waiting < chunk && self.prefill_held < hold {
                        self.prefill_held += 1;
                        budget = 0;
                    } else {
                        self.prefill_held = 0;
                        budget = budget.min(chunk);
                    }
                }
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            if r.fed >= r.prompt_len || budget == 0 {
                continue;
            }
            let mut n = (r.prompt_len - r.fed).min(budget);
            if r.req.prompt_logprobs {
                n = n.min(PROMPT_LOGPROBS_CHUNK);
            }
            for pos in r.fed..r.fed + n {
                let last = pos + 1 == r.prompt_len;
                let mark = last || r.req.prompt_logprobs;
                batch.push(BatchToken {
                    token: r.tokens[pos],
                    seq: r.seq,
                    pos,
                    logits: mark,
                });
                if last {
                    rows.push(Row::Sample(i));
                } else if mark {
                    rows.push(Row::Prompt(i, pos));
                }
            }
            advance[i] = n;
            budget -= n;
        }
        let sequences = advance.iter().filter(|&&a| a > 0).count();
        let planned = device_rows(self.model.device_top_n(), &mut self.running, &rows);
        let on_device: Vec<bool> = match &planned {
            Some(p) => p.iter().map(Option::is_some).collect(),
            None => vec![false; rows.len()],
        };
        let result = match &planned {
            Some(specs) => self
                .model
                .forward_sampled(&batch, &mut self.cache, &self.pool, specs),
            None => self
                .model
                .forward(&batch, &mut self.cache, &self.pool)
                .map(|l| (l, Vec::new())),
        };
        drop(planned);
        let n_vocab = self.model.config().n_vocab;
        let (mut logits, sampled) = match result {
            Ok((l, s)) if s.len() == on_device.iter().filter(|&&d| d).count() => (l, s),
            Ok((_, s)) => {
                self.fail_all(&format!(
                    "the forward pass sampled {} rows, not the {} asked",
                    s.len(),
                    on_device.iter().filter(|&&d| d).count()
                ));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "forward pass failed");
                self.fail_all(&format!("the forward pass failed: {e}"));
                return;
            }
        };
        for (i, a) in advance.iter().enumerate() {
            self.running[i].fed += a;
        }
        let picks = self.pick_rows(&rows, &on_device, &mut logits, sampled, n_vocab);
        for (row, pick) in rows.iter().zip(picks) {
            match (*row, pick) {
                (Row::Prompt(i, _), Some(Pick::Host(score))) => {
                    self.running[i].prompt_scores.push(score)
                }
                (Row::Sample(i), Some(Pick::Host(token))) if self.before_token(i) => {
                    self.push_token(i, token)
                }
                (Row::Sample(i), Some(Pick::Device(s))) => self.take_sampled(i, s),
                _ => {}
            }
        }
        self.model.recycle_logits(logits);
        self.remove_done();
        self.publish_gauges();
        let m = &self.metrics;
        m.batch_size.observe(sequences as f64);
        m.batch_tokens.observe(batch.len() as f64);
        m.step_seconds.observe(started.elapsed().as_secs_f64());
        tracing::trace!(
            sequences,
            tokens = batch.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "engine step"
        );
    }

    /// Each row's outcome, in row order: the prompt token's score, the host's pick (penalties,
    /// constraint and sampler applied to its logits row, then scored) or the device's. The
    /// host's rows are split over the pool: each is a pass or three over the vocabulary, and
    /// one after another on the engine thread they were ~5% of a 16-sequence decode step,
    /// with the other threads idle.
    fn pick_rows(
        &mut self,
        rows: &[Row],
        on_device: &[bool],
        logits: &mut [f32],
        sampled: Vec<Sampled>,
        n_vocab: usize,
    ) -> Vec<Option<Pick>> {
        enum Work<'a> {
            Prompt(&'a [f32], u32, usize),
            Sample(&'a mut Running, &'a mut [f32]),
        }
        let mut sampled = sampled.into_iter();
        let mut logit_rows = logits.chunks_exact_mut(n_vocab.max(1));
        // A sequence has at most one sampled row a step: its `Running` is lent to that row.
        let mut lent: Vec<Option<&mut Running>> = self.running.iter_mut().map(Some).collect();
        let mut out: Vec<Option<Pick>> = Vec::with_capacity(rows.len());
        let mut work = Vec::new();
        for (k, (row, &device)) in rows.iter().zip(on_device).enumerate() {
            out.push(None);
            if device {
                out[k] = sampled.next().map(Pick::Device);
                continue;
            }
            let Some(l) = logit_rows.next() else {
                break;
            };
            let w = match *row {
                Row::Prompt(i, pos) => {
                    let r = lent[i]
                        .as_deref()
                        .expect("a prompt row's sequence is running");
                    Work::Prompt(l, r.tokens[pos + 1], r.req.top_n)
                }
                Row::Sample(i) => match lent[i].take() {
                    Some(r) => Work::Sample(r, l),
                    None => continue,
                },
            };
            work.push((k, std::sync::Mutex::new((w, None))));
        }
        self.pool.parallel_for(work.len(), |j| {
            let mut guard = work[j].1.lock().unwrap_or_else(|p| p.into_inner());
            let (w, result) = &mut *guard;
            *result = Some(match w {
                Work::Prompt(l, next, top_n) => score(l, *next, true, *top_n),
                Work::Sample(r, l) => {
                    if let Some(c) = &r.req.constraint {
                        c.mask(l);
                    }
                    let id = r.sampler.sample(l, &r.tokens, &r.tokens[r.prompt_len..]);
                    if let Some(c) = &mut r.req.constraint {
                        c.advance(id);
                    }
                    score(l, id, r.req.logprobs, r.req.top_n)
                }
            });
        });
        for (k, cell) in work {
            let (_, result) = cell.into_inner().unwrap_or_else(|p| p.into_inner());
            out[k] = result.map(Pick::Host);
        }
        out
    }

    /// Sends the token the device sampled for running sequence `i` (see `device_rows`), scored
    /// as `score` would have on the host.
    fn take_sampled(&mut self, i: usize, s: Sampled) {
        if !self.before_token(i) {
            return;
        }
        let req = &self.running[i].req;
        let token = Scored {
            id: s.id,
            logprob: if req.logprobs || req.top_n > 0 {
                s.logprob
            } else {
                f32::NAN
            },
            top: s
                .top
                .into_iter()
                .take(req.top_n)
                .map(|(id, logprob)| TokenLogprob { id, logprob })
                .collect(),
        };
        self.push_token(i, token);
    }

    /// Before the first token, sends the prompt's scores (when asked); ends a request that
    /// wants no token. False when the sequence is done.
    fn before_token(&mut self, i: usize) -> bool {
        let r = &mut self.running[i];
        if r.generated == 0 && r.req.prompt_logprobs {
            // Kept (not taken): a later request may reuse this sequence and its scores.
            let scores = r.prompt_scores.clone();
            if r.req.events.send(Event::Prompt(scores)).is_err() {
                r.done = true;
                return false;
            }
        }
        if r.req.max_new_tokens == 0 {
            let _ = r.req.events.send(Event::Finished(FinishReason::Length));
            r.done = true;
            return false;
        }
        true
    }

    /// Appends a picked token to sequence `i` and sends it, with its finish reason if last.
    fn push_token(&mut self, i: usize, token: Scored) {
        let max_context = self.model.config().max_context;
        let r = &mut self.running[i];
        let id = token.id;
        r.tokens.push(id);
        r.generated += 1;
        self.metrics.generated_tokens.add(1);
        let finish = if r.req.stop_at_eos && self.eos_ids.contains(&id) {
            Some(FinishReason::EosToken)
        } else if r.generated >= r.req.max_new_tokens || r.tokens.len() >= max_context {
            Some(FinishReason::Length)
        } else {
            None
        };
        if r.req.events.send(Event::Token { token, finish }).is_err() || finish.is_some() {
            r.done = true;
        }
    }

    /// Takes finished and cancelled sequences out of the batch and frees their pages at once.
    fn remove_done(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].done {
                let r = self.running.swap_remove(i);
                self.reserved_blocks -= r.reserved_blocks;
                self.keep_idle(r);
            } else {
                i += 1;
            }
        }
    }

    /// Keeps a finished sequence's cache for reuse (the oldest idle one goes when full).
    fn keep_idle(&mut self, r: Running) {
        if r.fed == 0 {
            self.cache.remove_sequence(r.seq);
            return;
        }
        if self.idle.len() >= MAX_IDLE {
            if let Some(old) = self.idle.pop_front() {
                self.cache.remove_sequence(old.seq);
            }
        }
        let mut tokens = r.tokens;
        tokens.truncate(r.fed);
        let mut scores = r.prompt_scores;
        scores.truncate(r.fed.saturating_sub(1));
        self.idle.push_back(Idle {
            seq: r.seq,
            tokens,
            scores,
            top_n: r.req.top_n,
        });
    }

    /// Ends every request with an error and empties the cache.
    fn fail_all(&mut self, message: &str) {
        for r in self.running.drain(..) {
            let _ = r.req.events.send(Event::Error(message.to_string()));
            self.cache.remove_sequence(r.seq);
        }
        for r in self.waiting.drain(..) {
            let _ = r.events.send(Event::Error(message.to_string()));
        }
        for s in self.idle.drain(..) {
            self.cache.remove_sequence(s.seq);
        }
        self.reserved_blocks = 0;
        self.publish_gauges();
    }
}

/// The step's rows the backend samples on its device (`Forward::forward_sampled`), one entry per
/// row of `rows`; None when the backend cannot or no row qualifies. A row qualifies unless its
/// request needs the logits on the host (a grammar constraint masks them; more alternatives
/// than the device returns) or takes no token (max_new_tokens 0). The uniform draw of each
/// sampled row is taken from its sampler here, as `Sampler::sample` would take it.
fn device_rows<'a>(
    top_n_max: Option<usize>,
    running: &'a mut [Running],
    rows: &[Row],
) -> Option<Vec<Option<SampleRow<'a>>>> {
    let max = top_n_max?;
    let on =
        |r: &Running| r.req.constraint.is_none() && r.req.max_new_tokens > 0 && r.req.top_n <= max;
    let qualifies = |row: &Row, running: &[Running]| match *row {
        Row::Sample(i) => on(&running[i]),
        Row::Prompt(..) => false,
    };
    if !rows.iter().any(|row| qualifies(row, running)) {
        return None;
    }
    let mut uniforms = vec![0f32; rows.len()];
    for (u, row) in uniforms.iter_mut().zip(rows) {
        if let (Row::Sample(i), true) = (row, qualifies(row, running)) {
            let sampler = &mut running[*i].sampler;
            if sampler.params.do_sample {
                *u = sampler.next_uniform();
            }
        }
    }
    let running: &'a [Running] = running;
    Some(
        rows.iter()
            .zip(uniforms)
            .map(|(row, uniform)| match *row {
                Row::Sample(i) if on(&running[i]) => {
                    let r = &running[i];
                    Some(SampleRow {
                        params: &r.sampler.params,
                        uniform,
                        context: &r.tokens,
                        generated: &r.tokens[r.prompt_len..],
                        top_n: r.req.top_n,
                    })
                }
                _ => None,
            })
            .collect(),
    )
}

/// The log-probability of `id` under `logits` (when `want`) and the `top_n` most likely tokens.
pub fn score(logits: &[f32], id: u32, want: bool, top_n: usize) -> Scored {
    if !want && top_n == 0 {
        return Scored {
            id,
            logprob: f32::NAN,
            top: Vec::new(),
        };
    }
    let log_sum = kernels::cpu::ops::log_sum_exp(logits);
    let logprob = logits
        .get(id as usize)
        .map(|&x| x - log_sum)
        .unwrap_or(f32::NEG_INFINITY);
    let mut top: Vec<TokenLogprob> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        for (t, &x) in logits.iter().enumerate() {
            if top.len() == top_n && x <= top[top_n - 1].logprob {
                continue;
            }
            // Ties keep the lower id first, as a stable sort by logit would.
            let at = top.partition_point(|e| e.logprob >= x);
            top.insert(
                at,
                TokenLogprob {
                    id: t as u32,
                    logprob: x,
                },
            );
            top.truncate(top_n);
        }
        for e in &mut top {
            e.logprob -= log_sum;
        }
    }
    Scored { id, logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::cpu::ThreadPool;
    use model::{ForwardError, Llama, ModelConfig};
    use std::sync::atomic::AtomicUsize;

    /// A model whose logits are a fixed function of (token, position), sampling on its
    /// "device" with the CPU sampler's own code when `device` is set.
    struct Mock {
        config: ModelConfig,
        device: bool,
        device_rows: Arc<AtomicUsize>,
    }

    const MOCK_TOP_N: usize = 4;

    impl Mock {
        fn new(device: bool, device_rows: Arc<AtomicUsize>) -> Mock {
            let config = ModelConfig {
                architecture: "llama".into(),
                n_layers: 1,
                hidden: 8,
                intermediate: 8,
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: 8,
                n_vocab: 50,
                max_context: 256,
                rope_theta: 1e4,
                rope_dims: 8,
                rope_style: kernels::cpu::ops::RopeStyle::Halves,
                rms_eps: 1e-5,
                tie_embeddings: false,
            };
            Mock {
                config,
                device,
                device_rows,
            }
        }
    }

    impl Forward for Mock {
        fn config(&self) -> &ModelConfig {
            &self.config
        }
        fn new_cache(&self, max_tokens: usize) -> KvCache {
            KvCache::pages_only(max_tokens)
        }
        fn forward(
            &mut self,
            batch: &[BatchToken],
            cache: &mut KvCache,
            _pool: &ThreadPool,
        ) -> Result<Vec<f32>, ForwardError> {
            Llama::check_and_reserve(&self.config, batch, cache)?;
            let mut out = Vec::new();
            for t in batch.iter().filter(|t| t.logits) {
                let mut x = (t.token as u64 + 1) * 0x9E37_79B9 + t.pos as u64 * 0x85EB_CA6B;
                for _ in 0..self.config.n_vocab {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A coarse grid, so that ties occur.
                    out.push(((x % 25) as f32 - 12.0) * 0.25);
                }
            }
            Ok(out)
        }
        fn device_top_n(&self) -> Option<usize> {
            self.device.then_some(MOCK_TOP_N)
        }
        fn forward_sampled(
            &mut self,
            batch: &[BatchToken],
            cache: &mut KvCache,
            pool: &ThreadPool,
            rows: &[Option<SampleRow>],
        ) -> Result<(Vec<f32>, Vec<Sampled>), ForwardError> {
            let logits = self.forward(batch, cache, pool)?;
            let (mut out, mut sampled) = (Vec::new(), Vec::new());
            for (l, row) in logits.chunks(self.config.n_vocab).zip(rows) {
                let Some(row) = row else {
                    out.extend_from_slice(l);
                    continue;
                };
                assert!(row.top_n <= MOCK_TOP_N);
                self.device_rows.fetch_add(1, Ordering::SeqCst);
                let mut l = l.to_vec();
                let mut sampler = Sampler::new(row.params.clone());
                let id = sampler.sample_with(&mut l, row.context, row.generated, row.uniform);
                let s = score(&l, id, true, row.top_n);
                sampled.push(Sampled {
                    id,
                    logprob: s.logprob,
                    top: s.top.iter().map(|t| (t.id, t.logprob)).collect(),
                });
            }
            Ok((out, sampled))
        }
    }

    /// Every request's prompt scores and tokens, running `requests` on the mock.
    fn run_mock(device: bool, requests: &[(SamplingParams, usize, bool)]) -> (Vec<String>, usize) {
        let device_rows = Arc::new(AtomicUsize::new(0));
        let limits = Limits {
            max_input_tokens: 64,
            max_total_tokens: 128,
            max_batch_prefill_tokens: 64,
            max_batch_total_tokens: 4096,
            max_concurrent_requests: 16,
            max_stop_sequences: 4,
            max_best_of: 1,
            max_top_n_tokens: 8,
        };
        let mut engine = EngineHandle::start(
            Mock::new(device, device_rows.clone()),
            vec![],
            limits,
            Some(1),
            Arc::new(Metrics::default()),
        )
        .expect("engine starts");
        let mut receivers = Vec::new();
        for (k, (sampling, top_n, prompt_logprobs)) in requests.iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            assert!(engine.client().submit(EngineRequest {
                prompt: (0..5 + k as u32).map(|t| (t * 7 + 3) % 50).collect(),
                max_new_tokens: 12,
                sampling: sampling.clone(),
                stop_at_eos: false,
                logprobs: k % 2 == 0,
                prompt_logprobs: *prompt_logprobs,
                top_n: *top_n,
                events: tx,
                arrived: Instant::now(),
                constraint: None,
            }));
            receivers.push(rx);
        }
        let mut logs = Vec::new();
        for mut rx in receivers {
            let mut log = String::new();
            while let Some(e) = rx.blocking_recv() {
                match e {
                    Event::Admitted { .. } => {}
                    Event::Token { token, finish } => {
                        log += &format!("{token:?} {finish:?}\n");
                        if finish.is_some() {
                            break;
                        }
                    }
                    e => log += &format!("{e:?}\n"),
                }
            }
            logs.push(log);
        }
        engine.shutdown();
        (logs, device_rows.load(Ordering::SeqCst))
    }

    #[test]
    fn device_sampling_streams_what_host_sampling_streams() {
        let seeded = SamplingParams {
            do_sample: true,
            temperature: 0.8,
            top_k: 20,
            top_p: 0.9,
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            presence_penalty: 0.2,
            seed: 11,
            ..Default::default()
        };
        let typical = SamplingParams {
            do_sample: true,
            typical_p: 0.8,
            seed: 5,
            ..Default::default()
        };
        let requests = [
            (SamplingParams::default(), 3, false),
            (seeded, 0, false),
            (typical, 2, true),
            // More alternatives than the device returns: sampled on the host.
            (SamplingParams::default(), MOCK_TOP_N + 1, false),
        ];
        let (host, none) = run_mock(false, &requests);
        let (device, rows) = run_mock(true, &requests);
        assert_eq!(none, 0);
        // 12 tokens each for the first three requests, none for the last.
        assert_eq!(rows, 36);
        for (k, (h, d)) in host.iter().zip(&device).enumerate() {
            assert_eq!(h, d, "request {k}");
            assert_eq!(h.lines().filter(|l| l.starts_with("Scored")).count(), 12);
        }
        assert!(host[2].starts_with("Prompt("));
    }

    #[test]
    fn scores_are_log_softmax_and_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let s = score(&logits, 2, true, 3);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert!((s.logprob - (2.0 - z.ln())).abs() < 1e-5);
        let ids: Vec<u32> = s.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 2]);
        assert!((s.top[0].logprob - (3.0 - z.ln())).abs() < 1e-5);
        assert!(score(&logits, 0, false, 0).logprob.is_nan());
    }
}
