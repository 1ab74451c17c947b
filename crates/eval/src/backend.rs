//! The model interface evaluation needs (batched log-likelihoods and generations), plus lm-eval's token split.
//!
//! To reproduce lm-evaluation-harness numbers (its `local-completions` model, or `hf`), a
//! backend scores a `(context, continuation)` pair exactly as lm-eval does:
//! 1. move trailing whitespace of the context to the front of the continuation
//!    ([`split_trailing_space`]);
//! 2. tokenize `context` and `context + continuation` separately, with no special tokens
//!    (no BOS: lm-eval's API models pass `add_special_tokens=False`);
//! 3. the continuation's tokens are `whole[len(context_tokens)..]` ([`encode_pair`]), even in
//!    the rare case where the context's tokens are not a prefix of the whole;
//! 4. keep the last `max_length` tokens of `context_tokens + continuation_tokens`
//!    ([`lm_eval_window`]; `local-completions` uses 2048 - 1 = [`LM_EVAL_MAX_LENGTH`]);
//! 5. the log-likelihood is the sum over continuation positions `i` of
//!    `log_softmax(logits[i - 1])[token[i]]`, computed in f32 or better.
//!
//! An empty context (not produced by these tasks) is lm-eval's `[prefix_token_id]` (BOS, else EOS).

/// How to sample a batch of generations.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// Sampling seed for the whole call; runs with several samples use one call per sample,
    /// each with its own seed, so a backend may use the same seed for every prompt of a call.
    pub seed: u64,
    /// Generation stops before any of these strings; the returned text excludes them.
    pub stop: Vec<String>,
}

/// What evaluation needs from a model, local or remote. Every method takes many requests at
/// once so a backend can batch them into few forward passes.
pub trait Backend {
    /// Summed log-probability of each continuation given its context (see the module docs for
    /// the tokenization that matches lm-eval). Requests for one question come together, in
    /// option order, with the very same context string, so a backend can prefill it once.
    fn loglik(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>>;

    /// One completion per prompt (raw text: prompts already carry any template), without the
    /// prompt and without the stop string that ended it.
    fn generate(&mut self, prompts: &[String], params: &GenParams) -> anyhow::Result<Vec<String>>;

    /// The model's name for the report (a repo id, a file name, or the server's model).
    fn model_id(&self) -> String;
}

/// The token budget of lm-eval's API models: `max_length` 2048 minus the one generated token.
pub const LM_EVAL_MAX_LENGTH: usize = 2047;

/// lm-eval's `_encode_pair` whitespace rule: trailing whitespace of the context belongs to the
/// continuation (so " yes" is never split from a context ending in a space).
pub fn split_trailing_space<'a>(context: &'a str, continuation: &str) -> (&'a str, String) {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    (trimmed, format!("{moved}{continuation}"))
}

/// lm-eval's `_encode_pair`: context tokens, and continuation tokens taken from the
/// tokenization of the whole text after the context's token count. `encode` must add no
/// special tokens.
pub fn encode_pair<E>(
    context: &str,
    continuation: &str,
    mut encode: impl FnMut(&str) -> Result<Vec<u32>, E>,
) -> Result<(Vec<u32>, Vec<u32>), E> {
    let (context, continuation) = split_trailing_space(context, continuation);
    let whole = encode(&format!("{context}{continuation}"))?;
    let context_tokens = encode(context)?;
    let continuation_tokens = whole
        .get(context_tokens.len()..)
        .unwrap_or_default()
        .to_vec();
    Ok((context_tokens, continuation_tokens))
}

/// lm-eval's left truncation: the input is the last `max_length` tokens of context and
/// continuation, and `ctxlen` is how many of them are context. The continuation's
/// log-probabilities are those of `input[ctxlen..]`.
pub fn lm_eval_window(
    context: &[u32],
    continuation: &[u32],
    max_length: usize,
) -> (Vec<u32>, usize) {
    let total = context.len() + continuation.len();
    let cut = total.saturating_sub(max_length);
    let mut input = Vec::with_capacity(total - cut);
    input.extend(context.iter().chain(continuation).skip(cut));
    (input, context.len().saturating_sub(cut))
}

/// Requests grouped by identical context, in order of first appearance: each context with its
/// (request index, continuation) pairs. A backend prefills each context once, then scores its
/// continuations from the cached prefix; when every continuation of a group is one token and
/// the context's tokens are a prefix of each whole text (the usual case: contexts end in
/// "Answer:" and continuations are " A", " yes"), one forward pass scores the whole group from
/// the logits at the context's last position.
pub fn group_by_context(requests: &[(String, String)]) -> Vec<(&str, Vec<(usize, &str)>)> {
    let mut groups: Vec<(&str, Vec<(usize, &str)>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (ctx, cont)) in requests.iter().enumerate() {
        let g = *index.entry(ctx.as_str()).or_insert_with(|| {
            groups.push((ctx.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push((i, cont.as_str()));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tokenizer: one token per character, merging " y" + "es" style pairs the way BPE
    /// merges a space with the next word.
    fn toy_encode(s: &str) -> Result<Vec<u32>, std::convert::Infallible> {
        let mut out = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == ' ' && i + 1 < chars.len() && chars[i + 1].is_alphabetic() {
                out.push(1000 + chars[i + 1] as u32);
                i += 2;
            } else {
                out.push(chars[i] as u32);
                i += 1;
            }
        }
        Ok(out)
    }

    #[test]
    fn trailing_space_moves_to_the_continuation() {
        assert_eq!(
            split_trailing_space("Answer: ", "yes"),
            ("Answer:", " yes".to_string())
        );
        assert_eq!(
            split_trailing_space("Answer:", " yes"),
            ("Answer:", " yes".to_string())
        );
        assert_eq!(
            split_trailing_space("A\n\n", "B"),
            ("A", "\n\nB".to_string())
        );
    }

    #[test]
    fn encode_pair_takes_the_whole_texts_tail() {
        let (ctx, cont) = encode_pair("Answer:", " yes", toy_encode).unwrap();
        assert_eq!(
            ctx,
            vec![
                'A' as u32, 'n' as u32, 's' as u32, 'w' as u32, 'e' as u32, 'r' as u32, ':' as u32
            ]
        );
        assert_eq!(cont, vec![1000 + 'y' as u32, 'e' as u32, 's' as u32]);
        // The context's trailing space would otherwise be a lone token.
        let (ctx2, cont2) = encode_pair("Answer: ", "yes", toy_encode).unwrap();
        assert_eq!((ctx2, cont2), (ctx, cont));
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let r: Vec<(String, String)> = [("c1", " A"), ("c1", " B"), ("c2", " yes"), ("c1", " C")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let g = group_by_context(&r);
        assert_eq!(
            g,
            vec![
                ("c1", vec![(0, " A"), (1, " B"), (3, " C")]),
                ("c2", vec![(2, " yes")])
            ]
        );
    }

    #[test]
    fn window_truncates_the_context_on_the_left() {
        assert_eq!(
            lm_eval_window(&[1, 2, 3], &[4, 5], 10),
            (vec![1, 2, 3, 4, 5], 3)
        );
        assert_eq!(
            lm_eval_window(&[1, 2, 3], &[4, 5], 4),
            (vec![2, 3, 4, 5], 2)
        );
        assert_eq!(lm_eval_window(&[1, 2, 3], &[4, 5], 2), (vec![4, 5], 0));
    }
}
