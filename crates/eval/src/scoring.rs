//! Turns per-option log-likelihoods into predictions (acc, acc_norm) and counts into accuracies with intervals.

use serde::{Deserialize, Serialize};

/// The index of the largest value, the first on ties (numpy's argmax); NaN never wins.
pub fn argmax_first(xs: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// lm-eval's multiple-choice predictions: `acc` takes the highest summed log-probability,
/// `acc_norm` the highest log-probability divided by the choice's length in characters
/// (lm-eval: `lls / [len(c) for c in doc_to_choice(doc)]`, the choice without the leading space).
pub fn loglik_predictions(
    logliks: &[f64],
    choice_chars: &[usize],
) -> (Option<usize>, Option<usize>) {
    let normed: Vec<f64> = logliks
        .iter()
        .zip(choice_chars)
        .map(|(ll, &n)| ll / n.max(1) as f64)
        .collect();
    (argmax_first(logliks), argmax_first(&normed))
}

/// 95% two-sided normal quantile.
const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval at 95% for `p` observed over `n` trials (better than the normal
/// interval near 0 and 1 and for small `n`, where MMLU subjects live).
pub fn wilson95(p: f64, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let n = n as f64;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// lm-eval's `acc_stderr`: the sample standard deviation of the 0/1 scores over sqrt(n),
/// i.e. sqrt(p(1-p)/(n-1)).
pub fn lm_eval_stderr(p: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
}

/// An accuracy with its counts and uncertainty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Correct answers, summed over seeds.
    pub correct: usize,
    /// Answers scored: items x seeds.
    pub scored: usize,
    /// correct / scored (the mean of the per-seed accuracies when every seed saw the same items).
    pub acc: f64,
    /// Wilson 95% interval over the number of distinct items (seeds are not independent samples).
    pub ci95: [f64; 2],
    /// lm-eval's acc_stderr over the distinct items.
    pub stderr: f64,
}

impl Score {
    pub fn new(correct: usize, scored: usize, n_items: usize) -> Score {
        let acc = if scored == 0 {
            0.0
        } else {
            correct as f64 / scored as f64
        };
        Score {
            correct,
            scored,
            acc,
            ci95: wilson95(acc, n_items),
            stderr: lm_eval_stderr(acc, n_items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_on_ties_and_skips_nan() {
        assert_eq!(argmax_first(&[-1.0, -0.5, -0.5]), Some(1));
        assert_eq!(argmax_first(&[f64::NAN, -3.0]), Some(1));
        assert_eq!(argmax_first(&[]), None);
        assert_eq!(
            argmax_first(&[f64::NEG_INFINITY, f64::NEG_INFINITY]),
            Some(0)
        );
    }

    #[test]
    fn acc_norm_divides_by_choice_characters() {
        // yes/no/maybe: -3.0/3 = -1.0, -2.4/2 = -1.2, -4.0/5 = -0.8 -> acc picks "no", acc_norm "maybe".
        let (acc, norm) = loglik_predictions(&[-3.0, -2.4, -4.0], &[3, 2, 5]);
        assert_eq!((acc, norm), (Some(1), Some(2)));
        // Single letters: both agree.
        let (acc, norm) = loglik_predictions(&[-2.0, -1.0, -3.0, -1.5], &[1, 1, 1, 1]);
        assert_eq!((acc, norm), (Some(1), Some(1)));
    }

    #[test]
    fn wilson_matches_known_values() {
        // 50/100: [0.4038, 0.5962]; 0/10: [0, 0.2775]; 10/10: [0.7225, 1].
        let [lo, hi] = wilson95(0.5, 100);
        assert!(
            (lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson95(0.0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-4, "{hi}");
        let [lo, hi] = wilson95(1.0, 10);
        assert!(
            (lo - 0.7225).abs() < 1e-4 && (hi - 1.0).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(wilson95(0.3, 0), [0.0, 1.0]);
    }

    #[test]
    fn stderr_is_lm_evals() {
        // p = 0.5 over 5 items: sqrt(0.25 / 4) = 0.25.
        assert!((lm_eval_stderr(0.5, 5) - 0.25).abs() < 1e-12);
        let s = Score::new(3, 6, 3);
        assert_eq!(s.acc, 0.5);
        assert_eq!(s.ci95, wilson95(0.5, 3));
    }
}
