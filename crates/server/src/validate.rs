//! Request validation in one place, with TGI's rules and TGI's messages: sampling parameters,
//! stop sequences, `best_of`, `top_n_tokens`, and prompt/generation lengths against the limits.

use crate::args::Limits;
use crate::error::ApiError;
use model::SamplingParams;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::Validation(msg.into())
}

/// Sampling knobs as a request states them (None: not given).
#[derive(Clone, Debug, Default)]
pub struct Knobs {
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// Validated sampling: the sampler's parameters and the seed to report (None when greedy).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub params: SamplingParams,
    pub seed: Option<u64>,
}

/// Checks the knobs as TGI's router does, in TGI's order, and decides greedy or sampling the
/// way TGI's model server does: sampling when asked, or when any warper is set.
pub fn sampling(
    k: &Knobs,
    best_of: usize,
    random_seed: impl FnOnce() -> u64,
) -> Result<Sampling, ApiError> {
    let asks_sampling = k.do_sample
        || k.temperature.is_some()
        || k.top_k.is_some()
        || k.top_p.is_some()
        || k.typical_p.is_some();
    if best_of > 1 && !asks_sampling {
        return Err(invalid("you must use sampling when `best_of` is > 1"));
    }
    let temperature = k.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || temperature <= 0.0 {
        return Err(invalid("`temperature` must be strictly positive"));
    }
    let repetition_penalty = k.repetition_penalty.unwrap_or(1.0);
    if !repetition_penalty.is_finite() || repetition_penalty <= 0.0 {
        return Err(invalid("`repetition_penalty` must be strictly positive"));
    }
    let frequency_penalty = k.frequency_penalty.unwrap_or(0.0);
    if !(-2.0..=2.0).contains(&frequency_penalty) {
        return Err(invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"));
    }
    let presence_penalty = k.presence_penalty.unwrap_or(0.0);
    if !(-2.0..=2.0).contains(&presence_penalty) {
        return Err(invalid("`presence_penalty` must be >= -2.0 and <= 2.0"));
    }
    let top_p = match k.top_p {
        Some(p) if !(p > 0.0 && p < 1.0) => return Err(invalid("`top_p` must be > 0.0 and < 1.0")),
        Some(p) => p,
        None => 1.0,
    };
    let typical_p = match k.typical_p {
        Some(p) if !(p > 0.0 && p < 1.0) => {
            return Err(invalid("`typical_p` must be > 0.0 and < 1.0"))
        }
        Some(p) => p,
        None => 1.0,
    };
    let top_k = match k.top_k {
        Some(t) if t <= 0 => return Err(invalid("`top_k` must be strictly positive")),
        Some(t) => usize::try_from(t).unwrap_or(usize::MAX),
        None => 0,
    };
    if best_of > 1 && k.seed.is_some() {
        return Err(invalid("`seed` must not be set when `best_of` > 1"));
    }
    let do_sample =
        k.do_sample || temperature != 1.0 || top_k != 0 || top_p < 1.0 || typical_p < 1.0;
    let seed = k.seed.unwrap_or_else(random_seed);
    Ok(Sampling {
        params: SamplingParams {
            do_sample,
            temperature,
            top_k,
            top_p,
            typical_p,
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            seed,
        },
        seed: do_sample.then_some(seed),
    })
}

pub fn best_of(limits: &Limits, best_of: Option<usize>) -> Result<usize, ApiError> {
    let best_of = best_of.unwrap_or(1);
    if limits.max_best_of == 1 && best_of != 1 {
        return Err(invalid("`best_of` != 1 is not allowed for this endpoint"));
    }
    if best_of == 0 || best_of > limits.max_best_of {
        return Err(invalid(format!(
            "`best_of` must be > 0 and <= {}. Given: {best_of}",
            limits.max_best_of
        )));
    }
    Ok(best_of)
}

pub fn stop_sequences(limits: &Limits, stop: &[String]) -> Result<(), ApiError> {
    if stop.len() > limits.max_stop_sequences {
        return Err(invalid(format!(
            "`stop` supports up to {} stop sequences. Given: {}",
            limits.max_stop_sequences,
            stop.len()
        )));
    }
    Ok(())
}

pub fn top_n_tokens(limits: &Limits, top_n: Option<u32>) -> Result<usize, ApiError> {
    let top_n = top_n.unwrap_or(0) as usize;
    if top_n > limits.max_top_n_tokens {
        return Err(invalid(format!(
            "`top_n_tokens` must be >= 0 and <= {}. Given: {top_n}",
            limits.max_top_n_tokens
        )));
    }
    Ok(top_n)
}

pub fn truncate(limits: &Limits, truncate: Option<usize>) -> Result<Option<usize>, ApiError> {
    match truncate {
        Some(t) if t == 0 || t > limits.max_input_tokens => Err(invalid(format!(
            "`truncate` must be strictly positive and less than {}. Given: {t}",
            limits.max_input_tokens
        ))),
        t => Ok(t),
    }
}

/// Checks the prompt length and the generation budget; returns `max_new_tokens`, which
/// defaults to whatever room `max_total_tokens` leaves.
pub fn lengths(
    limits: &Limits,
    input_tokens: usize,
    max_new_tokens: Option<usize>,
) -> Result<usize, ApiError> {
    if max_new_tokens == Some(0) {
        return Err(invalid("`max_new_tokens` must be strictly positive"));
    }
    lengths_allow_zero(limits, input_tokens, max_new_tokens)
}

/// [`lengths`] for OpenAI completions with `echo`, where generating nothing is allowed.
pub fn lengths_allow_zero(
    limits: &Limits,
    input_tokens: usize,
    max_new_tokens: Option<usize>,
) -> Result<usize, ApiError> {
    let max_new = max_new_tokens.unwrap_or(limits.max_total_tokens.saturating_sub(input_tokens));
    if input_tokens.saturating_add(max_new) > limits.max_total_tokens {
        return Err(invalid(format!(
            "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {input_tokens} `inputs` tokens and {max_new} `max_new_tokens`",
            limits.max_total_tokens
        )));
    }
    if input_tokens > limits.max_input_tokens {
        return Err(invalid(format!(
            "`inputs` must have less than {} tokens. Given: {input_tokens}",
            limits.max_input_tokens
        )));
    }
    Ok(max_new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_input_tokens: 3696,
            max_total_tokens: 4096,
            max_batch_prefill_tokens: 4096,
            max_batch_total_tokens: 16384,
            max_concurrent_requests: 128,
            max_stop_sequences: 4,
            max_best_of: 2,
            max_top_n_tokens: 5,
        }
    }

    fn msg(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        match r {
            Err(ApiError::Validation(m)) => m,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn tgi_messages_for_bad_sampling_knobs() {
        let s = |k: Knobs| sampling(&k, 1, || 7);
        assert_eq!(
            msg(s(Knobs {
                temperature: Some(0.0),
                ..Default::default()
            })),
            "`temperature` must be strictly positive"
        );
        assert_eq!(
            msg(s(Knobs {
                repetition_penalty: Some(-1.0),
                ..Default::default()
            })),
            "`repetition_penalty` must be strictly positive"
        );
        assert_eq!(
            msg(s(Knobs {
                frequency_penalty: Some(2.5),
                ..Default::default()
            })),
            "`frequency_penalty` must be >= -2.0 and <= 2.0"
        );
        assert_eq!(
            msg(s(Knobs {
                top_p: Some(1.0),
                ..Default::default()
            })),
            "`top_p` must be > 0.0 and < 1.0"
        );
        assert_eq!(
            msg(s(Knobs {
                typical_p: Some(0.0),
                ..Default::default()
            })),
            "`typical_p` must be > 0.0 and < 1.0"
        );
        assert_eq!(
            msg(s(Knobs {
                top_k: Some(0),
                ..Default::default()
            })),
            "`top_k` must be strictly positive"
        );
        assert_eq!(
            msg(s(Knobs {
                temperature: Some(f32::NAN),
                ..Default::default()
            })),
            "`temperature` must be strictly positive"
        );
        assert_eq!(
            msg(sampling(&Knobs::default(), 2, || 7)),
            "you must use sampling when `best_of` is > 1"
        );
        let seeded = Knobs {
            do_sample: true,
            seed: Some(1),
            ..Default::default()
        };
        assert_eq!(
            msg(sampling(&seeded, 2, || 7)),
            "`seed` must not be set when `best_of` > 1"
        );
    }

    #[test]
    fn greedy_unless_asked_or_a_warper_is_set() {
        let s = sampling(&Knobs::default(), 1, || 7).unwrap();
        assert!(!s.params.do_sample);
        assert_eq!(s.seed, None);
        let s = sampling(
            &Knobs {
                temperature: Some(0.7),
                ..Default::default()
            },
            1,
            || 7,
        )
        .unwrap();
        assert!(s.params.do_sample);
        assert_eq!(s.seed, Some(7));
        let s = sampling(
            &Knobs {
                temperature: Some(1.0),
                repetition_penalty: Some(1.1),
                ..Default::default()
            },
            1,
            || 7,
        )
        .unwrap();
        assert!(!s.params.do_sample);
    }

    #[test]
    fn length_limits() {
        let l = limits();
        assert_eq!(lengths(&l, 10, None).unwrap(), 4086);
        assert_eq!(
            msg(lengths(&l, 10, Some(0))),
            "`max_new_tokens` must be strictly positive"
        );
        assert_eq!(
            msg(lengths(&l, 4000, Some(100))),
            "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 100 `max_new_tokens`"
        );
        assert_eq!(
            msg(lengths(&l, 3700, Some(10))),
            "`inputs` must have less than 3696 tokens. Given: 3700"
        );
        assert_eq!(lengths_allow_zero(&l, 10, Some(0)).unwrap(), 0);
        assert_eq!(
            msg(truncate(&l, Some(0))),
            "`truncate` must be strictly positive and less than 3696. Given: 0"
        );
        assert_eq!(
            msg(best_of(&l, Some(3))),
            "`best_of` must be > 0 and <= 2. Given: 3"
        );
        assert_eq!(
            msg(top_n_tokens(&l, Some(6))),
            "`top_n_tokens` must be >= 0 and <= 5. Given: 6"
        );
        let stops: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        assert_eq!(
            msg(stop_sequences(&l, &stops)),
            "`stop` supports up to 4 stop sequences. Given: 5"
        );
    }
}
