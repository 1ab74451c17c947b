//! One reader per public layout of PubMedQA, MedMCQA, MedQA and MMLU, each turning records into `Item`s.

use super::records::{read_csv_rows, read_json_records, read_ordered_object, show, Loc, Rec};
use super::{CopBase, DataError, Item, Task};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const LETTERS: [&str; 10] = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"];

fn lettered(texts: Vec<String>) -> Vec<(String, String)> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| (LETTERS[i.min(LETTERS.len() - 1)].to_string(), t))
        .collect()
}

fn letter_index(letter: &str, n: usize) -> Option<usize> {
    let l = letter.trim().to_ascii_uppercase();
    LETTERS[..n.min(LETTERS.len())].iter().position(|x| *x == l)
}

// ---------------------------------------------------------------- PubMedQA

/// PubMedQA's `ori_pqal.json` (PMID -> record) split by `test_ground_truth.json` (PMID -> label):
/// returns (test items in `ori_pqal.json` order, the other questions as the few-shot pool).
/// Without a ground-truth file every question is a test item.
pub fn pubmedqa(ori: &Path, truth: Option<&Path>) -> Result<(Vec<Item>, Vec<Item>), DataError> {
    let records = read_ordered_object(ori)?;
    let mut all = Vec::with_capacity(records.0.len());
    for (i, (pmid, v)) in records.0.iter().enumerate() {
        let rec = Rec {
            v,
            file: ori,
            loc: Loc::Record(i + 1),
        };
        if !v.is_object() {
            return Err(rec.err(
                pmid,
                "expected an object with QUESTION, CONTEXTS, final_decision",
            ));
        }
        let question = rec.str("QUESTION")?;
        let contexts = match rec.get("CONTEXTS")? {
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| rec.err("CONTEXTS", "expected a list of strings"))?,
            other => {
                return Err(rec.err(
                    "CONTEXTS",
                    format!("expected a list of strings, found {}", show(other)),
                ))
            }
        };
        let decision = rec.str("final_decision")?;
        let answer = yes_no_maybe(&decision).ok_or_else(|| {
            rec.err(
                "final_decision",
                format!("expected yes, no or maybe, found {decision:?}"),
            )
        })?;
        all.push(Item {
            id: pmid.clone(),
            task: Task::Pubmedqa,
            subject: None,
            question,
            options: ["yes", "no", "maybe"]
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect(),
            answer,
            context: Some(contexts.join("\n")),
            explanation: rec.opt_str("LONG_ANSWER"),
        });
    }
    let Some(truth) = truth else {
        return Ok((all.clone(), all));
    };
    let labels = read_ordered_object(truth)?;
    let mut gold: HashMap<&str, usize> = HashMap::new();
    for (i, (pmid, v)) in labels.0.iter().enumerate() {
        let rec = Rec {
            v,
            file: truth,
            loc: Loc::Record(i + 1),
        };
        let label = v.as_str().and_then(yes_no_maybe).ok_or_else(|| {
            rec.err(
                pmid,
                format!("expected yes, no or maybe, found {}", show(v)),
            )
        })?;
        if !all.iter().any(|it| it.id == *pmid) {
            return Err(rec.err(pmid, format!("PMID {pmid} is not in {}", ori.display())));
        }
        gold.insert(pmid.as_str(), label);
    }
    let (mut test, mut pool) = (Vec::new(), Vec::new());
    for mut item in all {
        match gold.get(item.id.as_str()) {
            Some(&label) => {
                item.answer = label;
                test.push(item);
            }
            None => pool.push(item),
        }
    }
    Ok((test, pool))
}

fn yes_no_maybe(s: &str) -> Option<usize> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" => Some(0),
        "no" => Some(1),
        "maybe" => Some(2),
        _ => None,
    }
}

// ---------------------------------------------------------------- MedMCQA

/// MedMCQA records (`question`, `opa`..`opd`, `cop`, `exp`, `subject_name`, `id`) from the raw
/// release (1-based `cop`) or the Hugging Face copy (0-based `cop`). The base is read from the
/// data: any `cop` 0 means 0-based, any 4 means 1-based; a file with only 1..3 needs `--cop-base`.
/// Returns the items and the base used, with how it was decided.
pub fn medmcqa(
    path: &Path,
    cop_base: Option<CopBase>,
) -> Result<(Vec<Item>, CopBase, &'static str), DataError> {
    let records = read_json_records(path)?;
    let mut raw = Vec::with_capacity(records.len());
    let (mut first_zero, mut first_four) = (None, None);
    for (loc, v) in &records {
        let rec = Rec {
            v,
            file: path,
            loc: *loc,
        };
        let cop = rec.int("cop")?;
        if !(0..=4).contains(&cop) {
            return Err(rec.err(
                "cop",
                format!("expected 0..3 (HF copy) or 1..4 (raw release), found {cop}"),
            ));
        }
        if cop == 0 && first_zero.is_none() {
            first_zero = Some(*loc);
        }
        if cop == 4 && first_four.is_none() {
            first_four = Some(*loc);
        }
        raw.push((rec, cop));
    }
    let (base, how) = match (first_zero, first_four, cop_base) {
        (Some(z), Some(f), _) => {
            return Err(DataError::at(
                path,
                Some(f),
                Some("cop"),
                format!("cop is 4 here but 0 at {z}: the file mixes 0-based and 1-based answers"),
            ))
        }
        (Some(z), None, Some(CopBase::One)) => {
            return Err(DataError::at(path, Some(z), Some("cop"), "cop is 0, which --cop-base 1 does not allow"))
        }
        (None, Some(f), Some(CopBase::Zero)) => {
            return Err(DataError::at(path, Some(f), Some("cop"), "cop is 4, which --cop-base 0 does not allow"))
        }
        (Some(_), None, _) => (CopBase::Zero, "detected: some cop is 0"),
        (None, Some(_), _) => (CopBase::One, "detected: some cop is 4"),
        (None, None, Some(b)) => (b, "from --cop-base"),
        (None, None, None) => {
            return Err(DataError::at(
                path,
                None,
                Some("cop"),
                "every cop is 1, 2 or 3, so it cannot tell the raw release (1-based) from the Hugging Face copy (0-based); pass --cop-base 1 or --cop-base 0",
            ))
        }
    };
    let offset = if base == CopBase::One { 1 } else { 0 };
    let mut items = Vec::with_capacity(raw.len());
    for (rec, cop) in raw {
        let answer = cop - offset;
        if !(0..4).contains(&answer) {
            return Err(rec.err(
                "cop",
                format!("{cop} is out of range for a {}-based cop", offset),
            ));
        }
        let options = ["opa", "opb", "opc", "opd"]
            .iter()
            .map(|f| rec.str(f))
            .collect::<Result<Vec<_>, _>>()?;
        let id = rec
            .opt_str("id")
            .unwrap_or_else(|| format!("{}", loc_number(rec.loc)));
        items.push(Item {
            id,
            task: Task::Medmcqa,
            subject: rec.opt_str("subject_name"),
            question: rec.str("question")?,
            options: lettered(options),
            answer: answer as usize,
            context: None,
            explanation: rec.opt_str("exp").filter(|e| !e.trim().is_empty()),
        });
    }
    Ok((items, base, how))
}

fn loc_number(loc: Loc) -> usize {
    match loc {
        Loc::Line(n) | Loc::Record(n) => n,
    }
}

// ---------------------------------------------------------------- MedQA

/// MedQA (USMLE) in its three public shapes: the original jsonl (`options` object, `answer_idx`
/// letter), bigbio (`options` list of {key, value}) and the 4-option `-hf` copy (`sent1`,
/// `ending0..`, `label`). The gold answer is `answer_idx` (or `label`), else the option whose
/// text equals `answer`.
pub fn medqa(path: &Path, task: Task) -> Result<Vec<Item>, DataError> {
    let records = read_json_records(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut items = Vec::with_capacity(records.len());
    for (loc, v) in &records {
        let rec = Rec {
            v,
            file: path,
            loc: *loc,
        };
        let (question, options, answer) = if rec.has("sent1") {
            let mut texts = Vec::new();
            while let Some(t) = rec.opt_str(&format!("ending{}", texts.len())) {
                texts.push(t);
            }
            if texts.len() < 2 {
                return Err(rec.err("ending0", "expected ending0, ending1, ... with the options"));
            }
            let label = rec.int("label")?;
            if label < 0 || label as usize >= texts.len() {
                return Err(rec.err(
                    "label",
                    format!("{label} is not an option index (0..{})", texts.len() - 1),
                ));
            }
            (rec.str("sent1")?, lettered(texts), label as usize)
        } else {
            let options: Vec<(String, String)> = match rec.get("options")? {
                Value::Object(map) => {
                    let mut pairs: Vec<(String, String)> = map
                        .iter()
                        .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            rec.err("options", "expected an object of letter -> text")
                        })?;
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                    pairs
                }
                Value::Array(list) => list
                    .iter()
                    .map(|o| {
                        Some((
                            o.get("key")?.as_str()?.to_string(),
                            o.get("value")?.as_str()?.to_string(),
                        ))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        rec.err(
                            "options",
                            "expected a list of {\"key\": letter, \"value\": text}",
                        )
                    })?,
                other => {
                    return Err(rec.err(
                        "options",
                        format!("expected an object or a list, found {}", show(other)),
                    ))
                }
            };
            if options.len() < 2 {
                return Err(rec.err("options", "fewer than two options"));
            }
            let answer = if let Some(idx) = rec.opt_str("answer_idx") {
                options
                    .iter()
                    .position(|(k, _)| k.eq_ignore_ascii_case(idx.trim()))
                    .ok_or_else(|| {
                        rec.err(
                            "answer_idx",
                            format!("{idx:?} is not one of the option letters"),
                        )
                    })?
            } else {
                let text = rec.str("answer").map_err(|_| {
                    rec.err("answer_idx", "missing (and no `answer` text to match)")
                })?;
                options
                    .iter()
                    .position(|(_, t)| t.trim() == text.trim())
                    .ok_or_else(|| rec.err("answer", format!("{text:?} matches no option")))?
            };
            (rec.str("question")?, options, answer)
        };
        let id = rec
            .opt_str("id")
            .unwrap_or_else(|| format!("{stem}:{}", loc_number(*loc)));
        items.push(Item {
            id,
            task,
            subject: None,
            question,
            options,
            answer,
            context: None,
            explanation: None,
        });
    }
    Ok(items)
}

// ---------------------------------------------------------------- MMLU

/// MMLU's headerless CSV (`question,A,B,C,D,answer-letter`), subject given by the file name.
pub fn mmlu_csv(path: &Path, subject: &str) -> Result<Vec<Item>, DataError> {
    let rows = read_csv_rows(path)?;
    let mut items = Vec::with_capacity(rows.len());
    for (i, (loc, row)) in rows.into_iter().enumerate() {
        if row.len() != 6 {
            return Err(DataError::at(
                path,
                Some(loc),
                None,
                format!(
                    "expected 6 columns (question, A, B, C, D, answer), found {}",
                    row.len()
                ),
            ));
        }
        let answer = letter_index(&row[5], 4).ok_or_else(|| {
            DataError::at(
                path,
                Some(loc),
                Some("answer"),
                format!("expected A, B, C or D in column 6, found {:?}", row[5]),
            )
        })?;
        let mut row = row.into_iter();
        let question = row.next().unwrap_or_default();
        let options: Vec<String> = row.take(4).collect();
        items.push(mmlu_item(subject, i, question, options, answer));
    }
    Ok(items)
}

/// `cais/mmlu` records: `question`, `subject`, `choices` (list), `answer` (index; a letter is
/// accepted too). `fallback_subject` names records without a `subject`.
pub fn mmlu_cais(path: &Path, fallback_subject: &str) -> Result<Vec<Item>, DataError> {
    let records = read_json_records(path)?;
    let mut items = Vec::with_capacity(records.len());
    let mut per_subject: HashMap<String, usize> = HashMap::new();
    for (loc, v) in &records {
        let rec = Rec {
            v,
            file: path,
            loc: *loc,
        };
        let subject = rec
            .opt_str("subject")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback_subject.to_string());
        let choices: Vec<String> = match rec.get("choices")? {
            Value::Array(list) => list
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| rec.err("choices", "expected a list of strings"))?,
            other => {
                return Err(rec.err(
                    "choices",
                    format!("expected a list of strings, found {}", show(other)),
                ))
            }
        };
        if choices.len() < 2 {
            return Err(rec.err("choices", "fewer than two choices"));
        }
        let answer = match rec.get("answer")? {
            Value::String(s) if letter_index(s, choices.len()).is_some() => {
                letter_index(s, choices.len())
            }
            _ => rec
                .int("answer")
                .ok()
                .filter(|a| *a >= 0 && (*a as usize) < choices.len())
                .map(|a| a as usize),
        }
        .ok_or_else(|| {
            rec.err(
                "answer",
                format!(
                    "expected an index 0..{} or a letter, found {}",
                    choices.len() - 1,
                    show(&v["answer"])
                ),
            )
        })?;
        let n = per_subject.entry(subject.clone()).or_default();
        items.push(mmlu_item(
            &subject,
            *n,
            rec.str("question")?,
            choices,
            answer,
        ));
        *n += 1;
    }
    Ok(items)
}

/// `lukaemon/mmlu` records: `input`, `A`..`D`, `target` (letter); subject from the file name.
pub fn mmlu_lukaemon(path: &Path, subject: &str) -> Result<Vec<Item>, DataError> {
    let records = read_json_records(path)?;
    let mut items = Vec::with_capacity(records.len());
    for (i, (loc, v)) in records.iter().enumerate() {
        let rec = Rec {
            v,
            file: path,
            loc: *loc,
        };
        let options = ["A", "B", "C", "D"]
            .iter()
            .map(|f| rec.str(f))
            .collect::<Result<Vec<_>, _>>()?;
        let target = rec.str("target")?;
        let answer = letter_index(&target, 4)
            .ok_or_else(|| rec.err("target", format!("expected A, B, C or D, found {target:?}")))?;
        items.push(mmlu_item(subject, i, rec.str("input")?, options, answer));
    }
    Ok(items)
}

fn mmlu_item(
    subject: &str,
    index: usize,
    question: String,
    options: Vec<String>,
    answer: usize,
) -> Item {
    Item {
        id: format!("{subject}:{index}"),
        task: Task::MmluMedical,
        subject: Some(subject.to_string()),
        question,
        options: lettered(options),
        answer,
        context: None,
        explanation: None,
    }
}
