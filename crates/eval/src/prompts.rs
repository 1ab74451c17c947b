//! Prompt text: lm-evaluation-harness's log-likelihood templates and Meditron's instruction prompts.
//!
//! lm-eval templates as read from lm-evaluation-harness `lm_eval/tasks/` (pubmedqa/
//! preprocess_pubmedqa.py, medmcqa/utils_medmcqa.py, medqa/preprocess_medqa.py,
//! mmlu/default/_default_template_yaml and the per-subject `description`); the request is
//! `(context, " " + choice)` (target_delimiter " "), shots are joined by "\n\n".
//! Differences from specs/eval.md, all following lm-eval's source:
//! - mmlu strips the question (`question.strip()`) and prefixes the task description
//!   "The following are multiple choice questions (with answers) about {subject}.\n\n" once,
//!   before any shots; the subject has `_` replaced by spaces.
//! - medqa_4options puts the options right after the question (no "Choices:" line), unlike medmcqa.
//! - lm-eval has no 5-option MedQA task; `medqa` here uses the medqa_4options template with E.
//!
//! Meditron prompts follow the epfLLM/meditron `evaluation/` code (benchmarks.py, inference.py):
//! `{system}\n{shots}\n\n{question}\n{cue}`, shots `{question}\nThe answer is: {gold}`.
//! Differences from that code, on purpose:
//! - no trailing "\n" after the cue (the code adds one and strips it again only with shots;
//!   specs/eval.md has none);
//! - the question is trimmed before the `?` rule, so "What? " does not become "What? ?";
//! - `<|im_start|>question\n...<|im_end|>\n<|im_start|>answer\n` as in specs/eval.md (the code
//!   writes `<|im_start|> question` with spaces and an empty system turn first).

use crate::dataset::{Item, Task};
use serde::{Deserialize, Serialize};

/// How a generation prompt is wrapped: plain text for base models, or the question/answer
/// turns the fine-tuned Meditron models were trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    #[default]
    Plain,
    ImStart,
}

// ---------------------------------------------------------------- lm-eval (log-likelihood)

/// One item's log-likelihood requests: the shared context and one continuation per option.
#[derive(Clone, Debug, PartialEq)]
pub struct LoglikPrompt {
    pub context: String,
    /// `" " + choice`, in option order.
    pub continuations: Vec<String>,
    /// Length in characters of each choice *without* the leading space: lm-eval's acc_norm
    /// divides by `len(choice)` of `doc_to_choice`, which does not include the delimiter.
    pub choice_chars: Vec<usize>,
}

/// lm-eval's `doc_to_choice`: yes/no/maybe for PubMedQA, option letters otherwise.
pub fn lm_eval_choices(item: &Item) -> Vec<String> {
    match item.task {
        Task::Pubmedqa => vec!["yes".into(), "no".into(), "maybe".into()],
        _ => item.options.iter().map(|(l, _)| l.clone()).collect(),
    }
}

/// lm-eval's `doc_to_text` for the item's task.
pub fn lm_eval_doc_to_text(item: &Item) -> String {
    match item.task {
        Task::Pubmedqa => format!(
            "Abstract: {}\nQuestion: {}\nAnswer:",
            item.context.as_deref().unwrap_or(""),
            item.question
        ),
        Task::Medmcqa => {
            let mut s = format!("Question: {}\nChoices:\n", item.question);
            for (letter, text) in &item.options {
                s.push_str(&format!("{letter}. {text}\n"));
            }
            s.push_str("Answer:");
            s
        }
        Task::Medqa | Task::Medqa4 => {
            let mut s = format!("Question: {}\n", item.question);
            for (letter, text) in &item.options {
                s.push_str(&format!("{letter}. {text}\n"));
            }
            s.push_str("Answer:");
            s
        }
        Task::MmluMedical => {
            let mut s = item.question.trim().to_string();
            for (letter, text) in &item.options {
                s.push_str(&format!("\n{letter}. {text}"));
            }
            s.push_str("\nAnswer:");
            s
        }
    }
}

/// lm-eval's task `description`, placed once before shots and question (MMLU only).
pub fn lm_eval_description(item: &Item) -> String {
    match (item.task, &item.subject) {
        (Task::MmluMedical, Some(subject)) => format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        ),
        _ => String::new(),
    }
}

/// The log-likelihood requests of `item` after `shots` demonstrations (lm-eval's fewshot_context).
pub fn loglik_prompt(item: &Item, shots: &[&Item]) -> LoglikPrompt {
    let mut context = lm_eval_description(item);
    for shot in shots {
        let choices = lm_eval_choices(shot);
        let gold = choices.get(shot.answer).cloned().unwrap_or_default();
        context.push_str(&lm_eval_doc_to_text(shot));
        context.push(' ');
        context.push_str(&gold);
        context.push_str("\n\n");
    }
    context.push_str(&lm_eval_doc_to_text(item));
    let choices = lm_eval_choices(item);
    LoglikPrompt {
        context,
        continuations: choices.iter().map(|c| format!(" {c}")).collect(),
        choice_chars: choices.iter().map(|c| c.chars().count()).collect(),
    }
}

// ---------------------------------------------------------------- Meditron (generation)

const MCQ_SYSTEM_HEAD: &str = "You are a medical doctor answering real-world medical entrance exam questions. Based on your understanding of basic and clinical science, medical knowledge, and mechanisms underlying health, disease, patient care, and modes of therapy, answer the following multiple-choice question.";
const MCQ_SYSTEM_TAIL: &str =
    "Base your answer on the current and standard practices referenced in medical guidelines.";

/// The answer cue that ends a prompt without chain of thought.
pub const ANSWER_CUE: &str = "The answer is:";
/// The cue that starts a chain of thought.
pub const COT_CUE: &str = "Let's think step by step.";

/// Meditron's system text for the task (the paper's instructions).
pub fn system_text(task: Task) -> String {
    match task {
        Task::Pubmedqa => "As an expert doctor in clinical science and medical knowledge, can you tell me if the following statement is correct? Answer yes, no, or maybe.".into(),
        Task::Medqa => format!("{MCQ_SYSTEM_HEAD} Select one correct answer from A to E. {MCQ_SYSTEM_TAIL}"),
        Task::Medqa4 | Task::Medmcqa | Task::MmluMedical => {
            format!("{MCQ_SYSTEM_HEAD} Select one correct answer from A to D. {MCQ_SYSTEM_TAIL}")
        }
    }
}

/// Meditron's question text: the abstract then the question for PubMedQA; otherwise
/// `Question: <q>\n\nOptions:\nA. ..` with a `?` added when the question ends in neither `?` nor `.`.
pub fn meditron_question(item: &Item) -> String {
    match item.task {
        Task::Pubmedqa => format!(
            "{}\n{}",
            item.context.as_deref().unwrap_or(""),
            item.question
        ),
        _ => {
            let mut q = item.question.trim_end().to_string();
            if !q.ends_with('?') && !q.ends_with('.') {
                q.push('?');
            }
            let options: Vec<String> = item
                .options
                .iter()
                .map(|(l, t)| format!("{l}. {t}"))
                .collect();
            format!("Question: {q}\n\nOptions:\n{}", options.join("\n"))
        }
    }
}

/// The gold answer as Meditron writes it after "The answer is:": a letter, or yes/no/maybe.
pub fn gold_label(item: &Item) -> String {
    item.options
        .get(item.answer)
        .map(|(l, _)| l.clone())
        .unwrap_or_default()
}

/// A full generation prompt: system text, shots, question and cue, wrapped per `template`.
/// With `cot`, shots that carry an explanation show it as their reasoning.
pub fn meditron_prompt(item: &Item, shots: &[&Item], cot: bool, template: Template) -> String {
    let question = meditron_question(item);
    let body = if shots.is_empty() {
        question
    } else {
        let demos: Vec<String> = shots
            .iter()
            .map(|s| match (&s.explanation, cot) {
                (Some(exp), true) => format!(
                    "{}\n{COT_CUE} {}\n{ANSWER_CUE} {}",
                    meditron_question(s),
                    exp.trim(),
                    gold_label(s)
                ),
                _ => format!("{}\n{ANSWER_CUE} {}", meditron_question(s), gold_label(s)),
            })
            .collect();
        format!("{}\n\n{question}", demos.join("\n\n"))
    };
    let cue = if cot { COT_CUE } else { ANSWER_CUE };
    let text = format!("{}\n{body}\n{cue}", system_text(item.task));
    match template {
        Template::Plain => text,
        Template::ImStart => {
            format!("<|im_start|>question\n{text}<|im_end|>\n<|im_start|>answer\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(task: Task, q: &str, n: usize, subject: Option<&str>) -> Item {
        Item {
            id: "1".into(),
            task,
            subject: subject.map(str::to_string),
            question: q.into(),
            options: (0..n)
                .map(|i| (((b'A' + i as u8) as char).to_string(), format!("opt{i}")))
                .collect(),
            answer: 1,
            context: None,
            explanation: Some("Because opt1.".into()),
        }
    }

    fn pubmed() -> Item {
        Item {
            id: "9".into(),
            task: Task::Pubmedqa,
            subject: None,
            question: "Does X cause Y?".into(),
            options: ["yes", "no", "maybe"]
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect(),
            answer: 2,
            context: Some("First part.\nSecond part.".into()),
            explanation: None,
        }
    }

    #[test]
    fn pubmedqa_loglik_matches_lm_eval() {
        let p = loglik_prompt(&pubmed(), &[]);
        assert_eq!(
            p.context,
            "Abstract: First part.\nSecond part.\nQuestion: Does X cause Y?\nAnswer:"
        );
        assert_eq!(p.continuations, [" yes", " no", " maybe"]);
        assert_eq!(p.choice_chars, [3, 2, 5]);
    }

    #[test]
    fn medmcqa_loglik_matches_lm_eval() {
        let p = loglik_prompt(&mc(Task::Medmcqa, "Which nerve?", 4, None), &[]);
        assert_eq!(
            p.context,
            "Question: Which nerve?\nChoices:\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer:"
        );
        assert_eq!(p.continuations, [" A", " B", " C", " D"]);
        assert_eq!(p.choice_chars, [1, 1, 1, 1]);
    }

    #[test]
    fn medqa_loglik_matches_lm_eval() {
        let p = loglik_prompt(&mc(Task::Medqa4, "A 30-year-old man...", 4, None), &[]);
        assert_eq!(
            p.context,
            "Question: A 30-year-old man...\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer:"
        );
        let p5 = loglik_prompt(&mc(Task::Medqa, "Q", 5, None), &[]);
        assert!(p5.context.ends_with("D. opt3\nE. opt4\nAnswer:"));
        assert_eq!(p5.continuations.len(), 5);
    }

    #[test]
    fn mmlu_loglik_has_description_once_and_strips_question() {
        let item = mc(
            Task::MmluMedical,
            "  What bone?  ",
            4,
            Some("clinical_knowledge"),
        );
        let shot = mc(
            Task::MmluMedical,
            "Shot question?",
            4,
            Some("clinical_knowledge"),
        );
        let p = loglik_prompt(&item, &[&shot, &shot]);
        let head = "The following are multiple choice questions (with answers) about clinical knowledge.\n\n";
        let demo = "Shot question?\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer: B\n\n";
        let q = "What bone?\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer:";
        assert_eq!(p.context, format!("{head}{demo}{demo}{q}"));
    }

    #[test]
    fn meditron_question_adds_question_mark() {
        let item = mc(
            Task::Medmcqa,
            "Which is not true for myelinated fibers:",
            4,
            None,
        );
        assert_eq!(
            meditron_question(&item),
            "Question: Which is not true for myelinated fibers:?\n\nOptions:\nA. opt0\nB. opt1\nC. opt2\nD. opt3"
        );
        let item = mc(Task::Medmcqa, "Pick one. ", 4, None);
        assert!(meditron_question(&item).starts_with("Question: Pick one.\n\n"));
        assert_eq!(
            meditron_question(&pubmed()),
            "First part.\nSecond part.\nDoes X cause Y?"
        );
    }

    #[test]
    fn meditron_prompt_zero_and_few_shot() {
        let item = mc(Task::Medqa, "Q1?", 5, None);
        let p = meditron_prompt(&item, &[], false, Template::Plain);
        assert!(p.starts_with("You are a medical doctor"));
        assert!(p.contains("from A to E."));
        assert!(p.ends_with("E. opt4\nThe answer is:"));
        let shot = mc(Task::Medqa, "Shot?", 5, None);
        let p = meditron_prompt(&item, &[&shot], false, Template::Plain);
        let expected_body = "Question: Shot?\n\nOptions:\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nE. opt4\nThe answer is: B\n\nQuestion: Q1?";
        assert!(p.contains(expected_body), "{p}");
        let cot = meditron_prompt(&item, &[&shot], true, Template::Plain);
        assert!(
            cot.contains("E. opt4\nLet's think step by step. Because opt1.\nThe answer is: B\n\n")
        );
        assert!(cot.ends_with("\nLet's think step by step."));
    }

    #[test]
    fn im_start_template_wraps_the_whole_prompt() {
        let p = meditron_prompt(&pubmed(), &[], false, Template::ImStart);
        assert!(p.starts_with("<|im_start|>question\nAs an expert doctor"));
        assert!(p.ends_with("Does X cause Y?\nThe answer is:<|im_end|>\n<|im_start|>answer\n"));
    }
}
