//! The generation loop: prefill a prompt (reusing whatever prefix the sequence's cache already
//! holds), then decode token by token with a sampler until EOS, a stop sequence or the limit,
//! streaming text that never splits a UTF-8 character or shows part of a stop sequence.

use crate::kv_cache::{KvCache, SeqId};
use crate::llama::{BatchToken, ForwardError, Llama};
use crate::sampler::{Sampler, SamplingParams};
use kernels::cpu::ThreadPool;
use std::time::{Duration, Instant};
use tokenizer::{IncrementalDecoder, Tokenizer};

/// Prompt tokens run through the model per forward call: bounds activation memory.
pub const PREFILL_CHUNK: usize = 256;

#[derive(Clone, Debug)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Token ids that end generation (EOS and friends); not part of the text.
    pub stop_tokens: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    EosToken,
    StopSequence,
    /// The caller's callback asked to stop (e.g. Ctrl-C).
    Cancelled,
}

impl FinishReason {
    /// The name Text Generation Inference uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not recomputed.
    pub reused_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

#[derive(Debug)]
pub enum GenerateError {
    Forward(ForwardError),
    Tokenizer(String),
    EmptyPrompt,
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenerateError::Forward(e) => write!(f, "{e}"),
            GenerateError::Tokenizer(e) => write!(f, "detokenizing: {e}"),
            GenerateError::EmptyPrompt => write!(f, "the prompt has no tokens"),
        }
    }
}

impl std::error::Error for GenerateError {}

impl From<ForwardError> for GenerateError {
    fn from(e: ForwardError) -> Self {
        GenerateError::Forward(e)
    }
}

/// One sequence in a cache plus the tokens it holds, so the next prompt can reuse the longest
/// common prefix (the whole history in a chat).
pub struct Session {
    pub cache: KvCache,
    pub seq: SeqId,
    /// The tokens whose keys and values are in the cache, in order.
    pub tokens: Vec<u32>,
}

impl Session {
    pub fn new(model: &Llama, max_tokens: usize) -> Session {
        let mut cache = model.new_cache(max_tokens);
        let seq = cache.add_sequence();
        Session {
            cache,
            seq,
            tokens: Vec::new(),
        }
    }

    /// Runs `prompt` so the cache holds it, recomputing only past the common prefix, and
    /// returns the logits after its last token. At least the last token is always recomputed.
    pub fn prefill(
        &mut self,
        model: &Llama,
        pool: &ThreadPool,
        prompt: &[u32],
    ) -> Result<(Vec<f32>, usize), GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let start = common.min(prompt.len() - 1);
        self.tokens.truncate(start);
        self.cache
            .truncate(self.seq, start)
            .map_err(ForwardError::from)?;
        let mut logits = Vec::new();
        for chunk_start in (start..prompt.len()).step_by(PREFILL_CHUNK) {
            let end = (chunk_start + PREFILL_CHUNK).min(prompt.len());
            let batch: Vec<BatchToken> = (chunk_start..end)
                .map(|pos| BatchToken {
                    token: prompt[pos],
                    seq: self.seq,
                    pos,
                    logits: pos + 1 == prompt.len(),
                })
                .collect();
            logits = model.forward(&batch, &mut self.cache, pool)?;
            self.tokens.extend_from_slice(&prompt[chunk_start..end]);
        }
        Ok((logits, start))
    }

    /// Feeds one generated token and returns the logits after it.
    pub fn step(
        &mut self,
        model: &Llama,
        pool: &ThreadPool,
        token: u32,
    ) -> Result<Vec<f32>, GenerateError> {
        let pos = self.tokens.len();
        let batch = [BatchToken {
            token,
            seq: self.seq,
            pos,
            logits: true,
        }];
        let logits = model.forward(&batch, &mut self.cache, pool)?;
        self.tokens.push(token);
        Ok(logits)
    }
}

/// Holds back text that might be the start of a stop sequence until it is clear either way.
pub struct StopMatcher {
    stops: Vec<String>,
    /// All text produced so far (to find stops that straddle pieces).
    text: String,
    /// Bytes of `text` already released to the caller.
    released: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            released: 0,
        }
    }

    /// Adds a piece; returns the text now safe to show and whether a stop sequence was found
    /// (then the returned text ends right before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let search_from = self
            .released
            .saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let search_from = floor_char_boundary(&self.text, search_from);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        if let Some(at) = hit {
            let out = self.text[self.released.min(at)..at].to_string();
            self.text.truncate(at);
            self.released = at;
            return (out, true);
        }
        // Keep back the longest suffix that is a proper prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for l in (1..s.len()).rev() {
                if l <= self.text.len()
                    && self.text.is_char_boundary(self.text.len() - l)
                    && s.as_bytes()
                        .starts_with(&self.text.as_bytes()[self.text.len() - l..])
                {
                    keep = keep.max(l);
                    break;
                }
            }
        }
        let until = (self.text.len() - keep).max(self.released);
        let out = self.text[self.released..until].to_string();
        self.released = until;
        (out, false)
    }

    /// Whatever is still held back, once generation ended without a stop.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Generates from `prompt` in `session`, calling `on_text` with each new piece of visible
/// text; returning false from it stops generation (finish reason `Cancelled`).
pub fn generate(
    model: &Llama,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    session: &mut Session,
    prompt: &[u32],
    params: &GenerationParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generated, GenerateError> {
    let t0 = Instant::now();
    let (mut logits, reused) = session.prefill(model, pool, prompt)?;
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut decoder = IncrementalDecoder::new(tokenizer, true);
    let mut stops = StopMatcher::new(&params.stop);
    let mut generated = Vec::new();
    let mut finish = FinishReason::Length;
    while generated.len() < params.max_new_tokens {
        let token = sampler.sample(&mut logits, &session.tokens, &generated);
        if params.stop_tokens.contains(&token) {
            // Not fed to the model: the next prompt's prefill recomputes from here anyway.
            finish = FinishReason::EosToken;
            break;
        }
        generated.push(token);
        let piece = decoder
            .push(token)
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
        let (visible, stopped) = stops.push(&piece);
        let keep_going = visible.is_empty() || on_text(&visible);
        if stopped {
            finish = FinishReason::StopSequence;
            break;
        }
        if !keep_going {
            finish = FinishReason::Cancelled;
            break;
        }
        if generated.len() == params.max_new_tokens {
            break;
        }
        logits = session.step(model, pool, token)?;
    }
    if finish != FinishReason::StopSequence {
        let tail = decoder
            .finish()
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
        let (mut visible, stopped) = stops.push(&tail);
        if stopped {
            finish = FinishReason::StopSequence;
        } else {
            visible.push_str(&stops.flush());
        }
        if !visible.is_empty() {
            on_text(&visible);
        }
    }
    Ok(Generated {
        text: stops.text().to_string(),
        tokens: generated,
        finish,
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        prefill_time,
        decode_time: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut shown = Vec::new();
        for p in pieces {
            let (out, hit) = m.push(p);
            shown.push(out);
            if hit {
                return (shown, true, m.text().to_string());
            }
        }
        shown.push(m.flush());
        (shown, false, m.text().to_string())
    }

    #[test]
    fn stop_split_across_pieces_is_never_shown() {
        let (shown, hit, text) = run(&["###"], &["Hello #", "#", "# world"]);
        assert!(hit);
        assert_eq!(shown.concat(), "Hello ");
        assert_eq!(text, "Hello ");
    }

    #[test]
    fn a_false_start_is_released_later() {
        let (shown, hit, text) = run(&["<|im_end|>"], &["a <", "|im", " b"]);
        assert!(!hit);
        assert_eq!(shown[0], "a ");
        assert_eq!(shown.concat(), "a <|im b");
        assert_eq!(text, "a <|im b");
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        let (shown, hit, _) = run(&["é!", "x"], &["ça é", "! x"]);
        assert!(hit);
        assert_eq!(shown.concat(), "ça ");
    }
}
