//! Reads the chosen option out of generated text the way Meditron's evaluate.py does, and votes over samples.
//!
//! Rules (specs/eval.md): lower-case; with shots keep the text before the first blank line;
//! replace everything but ASCII letters and digits by spaces; with chain of thought take the
//! word after the last "answer is"; then the first letter (multiple choice) or the first word
//! (PubMedQA: yes/no/maybe). Anything else is unparsed (`None`) and counts as wrong.
//! Where this differs from evaluate.py, on purpose:
//! - leading whitespace is dropped before the blank-line cut, so an answer after an initial
//!   blank line is not lost;
//! - with chain of thought the cut is at the first blank line followed by "question" (the
//!   model starting a new demonstration), as a blank line inside the reasoning is common;
//! - chain of thought without any "answer is" is unparsed (evaluate.py would read the first
//!   word of the reasoning, so "A patient ..." counted as option A);
//! - "maybe" is accepted for PubMedQA (evaluate.py's final check lists only yes and no), and
//!   letters beyond the question's options are unparsed rather than wrong.

use crate::dataset::{Item, Task};

/// What kind of answer an item takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// Option letters A.. for this many options.
    Letters(usize),
    /// PubMedQA's yes / no / maybe, as indices 0 / 1 / 2.
    YesNoMaybe,
}

impl AnswerKind {
    pub fn of(item: &Item) -> AnswerKind {
        match item.task {
            Task::Pubmedqa => AnswerKind::YesNoMaybe,
            _ => AnswerKind::Letters(item.options.len()),
        }
    }
}

/// The option index `output` answers, or `None` when it cannot be read.
pub fn extract(output: &str, kind: AnswerKind, shots: bool, cot: bool) -> Option<usize> {
    let mut text = output.to_lowercase().trim_start().to_string();
    if cot {
        if let Some(i) = text.find("\n\nquestion") {
            text.truncate(i);
        }
    } else if shots {
        if let Some(i) = text.find("\n\n") {
            text.truncate(i);
        }
    }
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let answer: &str = if cot {
        // The word after the last "answer is" (two words, as spacing was normalised).
        let at = words
            .windows(2)
            .rposition(|w| w[0] == "answer" && w[1] == "is")?;
        words.get(at + 2)?
    } else {
        words.first()?
    };
    match kind {
        AnswerKind::Letters(n) => {
            let c = answer.chars().next()?;
            let idx = (c as u32).checked_sub('a' as u32)? as usize;
            (c.is_ascii_lowercase() && idx < n).then_some(idx)
        }
        AnswerKind::YesNoMaybe => match answer {
            "yes" => Some(0),
            "no" => Some(1),
            "maybe" => Some(2),
            // Tokens glued without a space ("yesyes"), which evaluate.py also repairs.
            "yesyes" | "yesno" => Some(0),
            "nono" | "noyes" => Some(1),
            _ => None,
        },
    }
}

/// Self-consistency: the most frequent parsed answer; a tie goes to the answer that appears
/// first in sample order; `None` when no sample parsed.
pub fn majority(votes: &[Option<usize>]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None; // (answer, count)
    for v in votes.iter().flatten() {
        if best.is_some_and(|(b, _)| b == *v) {
            continue;
        }
        let count = votes.iter().filter(|x| **x == Some(*v)).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((*v, count));
        }
    }
    best.map(|(answer, _)| answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MC4: AnswerKind = AnswerKind::Letters(4);
    const MC5: AnswerKind = AnswerKind::Letters(5);
    const YNM: AnswerKind = AnswerKind::YesNoMaybe;

    #[test]
    fn zero_shot_multiple_choice() {
        assert_eq!(extract(" B", MC4, false, false), Some(1));
        assert_eq!(extract(" B. Kidney", MC4, false, false), Some(1));
        assert_eq!(extract("(C) Ureter", MC4, false, false), Some(2));
        assert_eq!(extract("d", MC4, false, false), Some(3));
        assert_eq!(
            extract(" A\n\nQuestion: next one", MC4, false, false),
            Some(0)
        );
        assert_eq!(extract("\n\nC", MC4, false, false), Some(2));
        assert_eq!(extract("E", MC5, false, false), Some(4));
        // Beyond the options, or no letter at all.
        assert_eq!(extract("E", MC4, false, false), None);
        assert_eq!(extract("", MC4, false, false), None);
        assert_eq!(extract("   ", MC4, false, false), None);
        assert_eq!(extract("1", MC4, false, false), None);
        assert_eq!(extract("The answer is B", MC4, false, false), None);
        assert_eq!(extract("**", MC4, false, false), None);
        assert_eq!(extract("é", MC4, false, false), None);
    }

    #[test]
    fn few_shot_keeps_text_before_blank_line() {
        assert_eq!(
            extract(" C\n\nQuestion: A 45-year-old", MC4, true, false),
            Some(2)
        );
        assert_eq!(extract(" yes\n\nno", YNM, true, false), Some(0));
        assert_eq!(extract("\n\nB", MC4, true, false), Some(1));
    }

    #[test]
    fn pubmedqa_words() {
        assert_eq!(extract(" yes", YNM, false, false), Some(0));
        assert_eq!(extract("No.", YNM, false, false), Some(1));
        assert_eq!(
            extract(" Maybe, the evidence is unclear", YNM, false, false),
            Some(2)
        );
        assert_eq!(extract("YES, because", YNM, false, false), Some(0));
        assert_eq!(extract("yesyes", YNM, false, false), Some(0));
        assert_eq!(extract("noyes", YNM, false, false), Some(1));
        assert_eq!(extract("not clear", YNM, false, false), None);
        assert_eq!(extract("The study shows yes", YNM, false, false), None);
        assert_eq!(extract("A", YNM, false, false), None);
    }

    #[test]
    fn chain_of_thought_takes_word_after_last_answer_is() {
        let out = "The patient has a lesion of the facial nerve. Option A is wrong because the answer is not about taste.\nTherefore, the answer is: C. Ureter";
        assert_eq!(extract(out, MC4, false, true), Some(2));
        assert_eq!(
            extract(
                "Reasoning...\n\nMore reasoning. The answer is (B).",
                MC4,
                true,
                true
            ),
            Some(1)
        );
        assert_eq!(
            extract("So the final answer is yes.", YNM, false, true),
            Some(0)
        );
        assert_eq!(extract("The answer is maybe", YNM, false, true), Some(2));
        assert_eq!(extract("A patient with ... so B", MC4, false, true), None);
        assert_eq!(extract("... the answer is", MC4, false, true), None);
        // A new demonstration after the answer does not override it.
        let out = "Because of X. The answer is: D\n\nQuestion: Another?\nThe answer is: A";
        assert_eq!(extract(out, MC4, true, true), Some(3));
    }

    #[test]
    fn majority_vote_ties_go_first() {
        assert_eq!(majority(&[Some(1), Some(2), Some(2)]), Some(2));
        assert_eq!(majority(&[Some(1), Some(2), Some(2), Some(1)]), Some(1));
        assert_eq!(majority(&[None, Some(3), None, None]), Some(3));
        assert_eq!(majority(&[None, None]), None);
        assert_eq!(majority(&[]), None);
        assert_eq!(
            majority(&[Some(0), None, Some(2), Some(2), Some(0), Some(1)]),
            Some(0)
        );
    }
}
