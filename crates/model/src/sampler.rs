//! Choosing the next token from logits with Hugging Face `generate` semantics: repetition
//! penalty, then temperature, top-k, top-p and typical-p filtering, then a seeded draw.

/// Sampling settings; the neutral value of each filter turns it off.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// false: greedy (argmax), whatever the other settings say.
    pub do_sample: bool,
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1.0: off.
    pub top_p: f32,
    /// 1.0: off.
    pub typical_p: f32,
    /// 1.0: off. HF's CTRL-style penalty over prompt and generated tokens.
    pub repetition_penalty: f32,
    /// 0.0: off. OpenAI-style: minus `penalty * count` for generated tokens.
    pub frequency_penalty: f32,
    /// 0.0: off. OpenAI-style: minus `penalty` once a token has been generated.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same stream on every platform,
/// so a seed reproduces a text exactly.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    // Scratch reused between tokens: (token id, probability).
    candidates: Vec<(u32, f32)>,
}

/// The index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    // The maximum 16 lanes at a time, then the first 16 holding it: both passes vectorize,
    // where one pass keeping the index did not (a scalar compare per logit).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = logits.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(*v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let first = logits
        .chunks(16)
        .position(|c| c.iter().fold(false, |any, v| any | (*v == max)))
        .unwrap_or(0);
    let at = logits[first * 16..]
        .iter()
        .position(|v| *v == max)
        .unwrap_or(0);
    (first * 16 + at) as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    /// Applies the penalties to `logits` in place, then picks a token. `context` is every token
    /// the sequence has so far (prompt and generated); `generated` only the generated ones.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], generated: &[u32]) -> u32 {
        let uniform = if self.params.do_sample {
            self.next_uniform()
        } else {
            0.0
        };
        self.sample_with(logits, context, generated, uniform)
    }

    /// The request's next uniform number in [0, 1): what `sample` draws for each sampled token
    /// (greedy tokens draw none). A device backend that samples (`Forward::forward_sampled`)
    /// gets it from here, so a seed gives the same stream of draws on every backend.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.next_f64() as f32
    }

    /// `sample` with its draw given: `uniform` picks the token by inverse CDF over the
    /// filtered candidates (ignored when greedy). The reference a device sampler is checked
    /// against.
    pub fn sample_with(
        &mut self,
        logits: &mut [f32],
        context: &[u32],
        generated: &[u32],
        uniform: f32,
    ) -> u32 {
        self.apply_penalties(logits, context, generated);
        if !self.params.do_sample {
            return argmax(logits);
        }
        self.filter_and_draw(logits, uniform)
    }

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32], generated: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in context {
                let t = t as usize;
                if t < logits.len() && !seen[t] {
                    seen[t] = true;
                    let l = &mut logits[t];
                    *l = if *l < 0.0 {
                        *l * p.repetition_penalty
                    } else {
                        *l / p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in generated {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn filter_and_draw(&mut self, logits: &[f32], r: f32) -> u32 {
        self.filter(logits);
        let mut acc = 0f32;
        for c in self.candidates.iter() {
            acc += c.1;
            if r < acc {
                return c.0;
            }
        }
        self.candidates.last().map(|c| c.0).unwrap_or(0)
    }

    /// Leaves in `self.candidates` the (id, probability) pairs the filters keep.
    fn filter(&mut self, logits: &[f32]) {
        let p = self.params.clone();
        let inv_t = 1.0 / p.temperature.max(1e-6);
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, l)| (i as u32, l * inv_t)),
        );
        // Sorting 50k logits every token would cost milliseconds: only the candidates a
        // filter keeps are ordered (top-k: the k best; top-p: a head holding the mass).
        let mut sorted = false;
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit);
            // HF keeps every token whose logit ties with the k-th.
            let kth = cands[p.top_k - 1].1;
            let mut keep = p.top_k;
            for i in p.top_k..cands.len() {
                if cands[i].1 >= kth {
                    cands.swap(i, keep);
                    keep += 1;
                }
            }
            cands.truncate(keep);
            cands.sort_unstable_by(by_logit);
            sorted = true;
        }
        softmax_pairs(cands);
        if p.top_p < 1.0 {
            if !sorted {
                sort_head(cands, p.top_p);
                sorted = true;
            }
            nucleus(cands, p.top_p);
        }
        if p.typical_p < 1.0 {
            if !sorted {
                cands.sort_unstable_by(by_logit);
            }
            typical_filter(cands, p.typical_p);
        }
    }
}

/// Keeps the smallest prefix of `c` (sorted by probability) whose mass reaches `top_p`, at
/// least one token, and renormalizes.
fn nucleus(c: &mut Vec<(u32, f32)>, top_p: f32) {
    let mut mass = 0f32;
    let mut keep = c.len();
    for (i, x) in c.iter().enumerate() {
        mass += x.1;
        if mass >= top_p {
            keep = i + 1;
            break;
        }
    }
    c.truncate(keep.max(1));
    renormalize(c);
}

/// Descending by value, ties by id: the order every filter sees.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Orders the most probable candidates, enough of them to hold `mass`, and drops the rest
/// (a nucleus of `mass` lies within them). Grows the head 4x at a time from 256.
fn sort_head(c: &mut Vec<(u32, f32)>, mass: f32) {
    let mut m = 256;
    while m < c.len() {
        c.select_nth_unstable_by(m - 1, by_logit);
        if c[..m].iter().map(|x| x.1).sum::<f32>() >= mass {
            c.truncate(m);
            break;
        }
        m *= 4;
    }
    c.sort_unstable_by(by_logit);
}

/// Turns (id, logit) into (id, probability).
fn softmax_pairs(c: &mut [(u32, f32)]) {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.1));
    for x in c.iter_mut() {
        x.1 = (x.1 - max).exp();
    }
    renormalize(c);
}

fn renormalize(c: &mut [(u32, f32)]) {
    let sum: f32 = c.iter().map(|x| x.1).sum();
    if sum > 0.0 {
        for x in c.iter_mut() {
            x.1 /= sum;
        }
    }
}

/// Locally typical sampling (Meister et al.), as HF's TypicalLogitsWarper: rank tokens by how
/// far their surprisal is from the entropy, keep the closest ones up to mass `typical_p`.
fn typical_filter(c: &mut Vec<(u32, f32)>, typical_p: f32) {
    let entropy: f32 = -c
        .iter()
        .filter(|x| x.1 > 0.0)
        .map(|x| x.1 * x.1.ln())
        .sum::<f32>();
    let dev = |p: f32| {
        if p > 0.0 {
            (-p.ln() - entropy).abs()
        } else {
            f32::INFINITY
        }
    };
    c.sort_by(|a, b| dev(a.1).total_cmp(&dev(b.1)));
    let mut mass = 0f32;
    let mut keep = c.len();
    for (i, x) in c.iter().enumerate() {
        mass += x.1;
        if mass >= typical_p {
            keep = i + 1;
            break;
        }
    }
    c.truncate(keep.max(1));
    renormalize(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams {
            do_sample: true,
            seed: 42,
            ..Default::default()
        };
        f(&mut p);
        Sampler::new(p)
    }

    /// The filters as first written: sort everything, then cut.
    fn reference_filter(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
        let inv_t = 1.0 / p.temperature.max(1e-6);
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l * inv_t))
            .collect();
        c.sort_by(by_logit);
        if p.top_k > 0 && p.top_k < c.len() {
            let kth = c[p.top_k - 1].1;
            let keep = c.partition_point(|x| x.1 >= kth);
            c.truncate(keep);
        }
        softmax_pairs(&mut c);
        if p.top_p < 1.0 {
            nucleus(&mut c, p.top_p);
        }
        if p.typical_p < 1.0 {
            typical_filter(&mut c, p.typical_p);
        }
        c
    }

    #[test]
    fn argmax_is_the_first_largest_as_torch_picks_it() {
        let mut rng = Rng::new(11);
        for len in [1usize, 5, 16, 17, 100, 49152] {
            for _ in 0..20 {
                // A coarse grid, so that the maximum is often tied.
                let v: Vec<f32> = (0..len)
                    .map(|_| (rng.next_f64() * 8.0).floor() as f32)
                    .collect();
                let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let first = v.iter().position(|&x| x == max).unwrap();
                assert_eq!(argmax(&v), first as u32, "len {len}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn partial_sorting_keeps_what_a_full_sort_keeps() {
        let mut rng = Rng::new(7);
        for case in 0..60 {
            // Peaked and flat distributions, with ties (logits rounded to a coarse grid).
            let spread = [0.5f32, 3.0, 12.0][case % 3];
            let logits: Vec<f32> = (0..5000)
                .map(|_| ((rng.next_f64() as f32 * spread) * 4.0).round() / 4.0)
                .collect();
            let (top_k, top_p, typical_p) = [
                (40, 1.0, 1.0),
                (0, 0.9, 1.0),
                (50, 0.95, 1.0),
                (0, 1.0, 0.9),
                (0, 0.5, 1.0),
                (3000, 0.99, 1.0),
                (0, 1.0, 1.0),
            ][case % 7];
            let mut s = sampling(|p| {
                p.top_k = top_k;
                p.top_p = top_p;
                p.typical_p = typical_p;
                p.temperature = 0.7;
            });
            s.filter(&logits);
            let mut got = s.candidates.clone();
            let mut want = reference_filter(&logits, &s.params);
            got.sort_by(by_logit);
            want.sort_by(by_logit);
            // The softmax sums in another order, so a nucleus cut may land one token over
            // where the cumulative mass meets top_p to within rounding.
            if got.len() != want.len() {
                let short = got.len().min(want.len());
                assert_eq!(
                    got.len().max(want.len()),
                    short + 1,
                    "case {case}: kept sets differ"
                );
                let all = SamplingParams {
                    top_p: 1.0,
                    ..s.params.clone()
                };
                let mut full = reference_filter(&logits, &all);
                full.sort_by(by_logit);
                let mass: f32 = full[..short].iter().map(|x| x.1).sum();
                assert!(
                    (mass - top_p).abs() < 1e-4,
                    "case {case}: cut at mass {mass}, top_p {top_p}"
                );
                continue;
            }
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "case {case}");
                assert!((g.1 - w.1).abs() < 1e-5, "case {case}: {g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, 1.0], &[], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        let mut l = [4.0, -4.0, 4.0];
        s.apply_penalties(&mut l, &[0, 1, 1], &[]);
        assert_eq!(l, [2.0, -8.0, 4.0]);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = [1.0, 5.0, 2.0, 4.9];
        let mut s = sampling(|p| p.top_k = 1);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[], &[]), 1);
        }
        // Mass of token 1 alone is ~0.5; top_p 0.5 keeps tokens 1 and 3 at most.
        let mut s = sampling(|p| p.top_p = 0.6);
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone(), &[], &[]);
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let draws = |seed| {
            let mut s = sampling(|p| p.seed = seed);
            (0..4000)
                .map(|_| s.sample(&mut logits.clone(), &[], &[]))
                .collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7));
        assert_ne!(a, draws(8));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn typical_p_drops_the_atypical_tail() {
        let mut c = vec![(0, 0.5), (1, 0.3), (2, 0.19), (3, 0.01)];
        typical_filter(&mut c, 0.5);
        assert!(c.iter().all(|x| x.0 != 3));
        assert!((c.iter().map(|x| x.1).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
