//! Per-item results, their aggregation per task, seed and subject, and the JSON and markdown reports.

use crate::dataset::{Dataset, Task};
use crate::scoring::Score;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What one item got under one seed: also the line format of the resumable partial file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub task: Task,
    pub id: String,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub gold: usize,
    /// The predicted option; `None` when no answer could be read from the generation.
    pub pred: Option<usize>,
    /// loglik mode: the prediction under acc_norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    /// loglik mode: summed log-probability of each option's continuation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logliks: Vec<f64>,
    /// Generation modes: the generated text(s), one per sample for sc-cot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// sc-cot: the answer read from each sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<Option<usize>>,
}

impl ItemResult {
    pub fn correct(&self) -> bool {
        self.pred == Some(self.gold)
    }
}

/// Accuracy over one seed's pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedScore {
    pub seed: u64,
    pub n_items: usize,
    pub acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    pub unparsed: usize,
}

/// Accuracy over one subject (MMLU subject, MedMCQA subject_name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubjectScore {
    pub subject: String,
    pub n_items: usize,
    pub acc: Score,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<Score>,
    pub unparsed: usize,
}

/// One task's results and provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: Task,
    pub n_items: usize,
    /// Seeds pooled: the mean of the per-seed accuracies.
    pub acc: Score,
    /// loglik mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<Score>,
    /// Answers that could not be read, summed over seeds (they count as wrong).
    pub unparsed: usize,
    pub per_seed: Vec<SeedScore>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectScore>,
    pub files: Vec<String>,
    pub layouts: Vec<String>,
    pub fewshot_source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A task that was asked for (through `all`) but had no data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub task: Task,
    pub reason: String,
}

/// The parameters a run was made with, recorded so a number can be traced and reproduced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    pub mode: String,
    pub template: String,
    pub shots: usize,
    pub seeds: Vec<u64>,
    pub limit: Option<usize>,
    pub temperature: f32,
    pub samples: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub data: String,
}

/// The whole report: what was run on which model, and the scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model_id: String,
    /// SHA-256 of the model file(s), when the caller supplied it.
    pub model_file_hash: Option<String>,
    /// The OpenAI-compatible server evaluated, if any.
    pub endpoint: Option<String>,
    pub params: RunParams,
    pub tasks: Vec<TaskReport>,
    pub skipped: Vec<Skipped>,
    pub ci_method: String,
    pub eval_version: String,
    pub elapsed_s: f64,
}

pub const CI_METHOD: &str =
    "Wilson score interval, 95%, over distinct items (seeds pooled into the accuracy, not into n)";

/// Aggregates one task's item results (any number of seeds) into its report.
pub fn task_report(ds: &Dataset, results: &[ItemResult], loglik: bool) -> TaskReport {
    let n_items = {
        let mut ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let score = |rs: &[&ItemResult], n: usize| -> (Score, Option<Score>, usize) {
        let correct = rs.iter().filter(|r| r.correct()).count();
        let norm = loglik.then(|| {
            let c = rs.iter().filter(|r| r.pred_norm == Some(r.gold)).count();
            Score::new(c, rs.len(), n)
        });
        let unparsed = rs.iter().filter(|r| r.pred.is_none()).count();
        (Score::new(correct, rs.len(), n), norm, unparsed)
    };
    let all: Vec<&ItemResult> = results.iter().collect();
    let (acc, acc_norm, unparsed) = score(&all, n_items);

    let mut seeds: BTreeMap<u64, Vec<&ItemResult>> = BTreeMap::new();
    for r in results {
        seeds.entry(r.seed).or_default().push(r);
    }
    let per_seed = seeds
        .iter()
        .map(|(seed, rs)| {
            let (s, norm, unparsed) = score(rs, rs.len());
            SeedScore {
                seed: *seed,
                n_items: rs.len(),
                acc: s.acc,
                acc_norm: norm.map(|n| n.acc),
                unparsed,
            }
        })
        .collect();

    let mut by_subject: BTreeMap<&str, Vec<&ItemResult>> = BTreeMap::new();
    for r in results {
        if let Some(s) = &r.subject {
            by_subject.entry(s.as_str()).or_default().push(r);
        }
    }
    let subjects = by_subject
        .into_iter()
        .map(|(subject, rs)| {
            let n = rs.len() / seeds.len().max(1);
            let (s, norm, unparsed) = score(&rs, n.max(1));
            SubjectScore {
                subject: subject.to_string(),
                n_items: n,
                acc: s,
                acc_norm: norm,
                unparsed,
            }
        })
        .collect();

    TaskReport {
        task: ds.task,
        n_items,
        acc,
        acc_norm,
        unparsed,
        per_seed,
        subjects,
        files: ds.files.iter().map(|p| p.display().to_string()).collect(),
        layouts: ds.layouts.clone(),
        fewshot_source: ds.fewshot_source.clone(),
        notes: ds.notes.clone(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn pct_ci(s: &Score) -> String {
    format!("{} ({}–{})", pct(s.acc), pct(s.ci95[0]), pct(s.ci95[1]))
}

impl Report {
    pub fn to_json(&self) -> String {
        // A report is plain data: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
            .with_context(|| format!("writing report {}", path.display()))
    }

    /// A markdown summary: run parameters, one row per task, then per-subject rows.
    pub fn to_markdown(&self) -> String {
        let p = &self.params;
        let mut md = String::new();
        let _ = writeln!(md, "## meditron eval: {}", self.model_id);
        let _ = writeln!(md);
        if let Some(h) = &self.model_file_hash {
            let _ = writeln!(md, "- model file sha256: `{h}`");
        }
        if let Some(e) = &self.endpoint {
            let _ = writeln!(md, "- endpoint: {e}");
        }
        let seeds: Vec<String> = p.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            md,
            "- mode {}, template {}, {} shots, seeds {}, limit {}",
            p.mode,
            p.template,
            p.shots,
            seeds.join(","),
            p.limit
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into())
        );
        if p.mode != "loglik" {
            let _ = writeln!(
                md,
                "- temperature {}, samples {}, max new tokens {}",
                p.temperature, p.samples, p.max_new_tokens
            );
        }
        let _ = writeln!(md, "- accuracy in % with {}", self.ci_method);
        let _ = writeln!(md);
        let loglik = p.mode == "loglik";
        if loglik {
            let _ = writeln!(
                md,
                "| task | items | acc (95% CI) | acc_norm (95% CI) | layout |"
            );
            let _ = writeln!(md, "|---|---:|---|---|---|");
        } else {
            let _ = writeln!(md, "| task | items | acc (95% CI) | unparsed | layout |");
            let _ = writeln!(md, "|---|---:|---|---:|---|");
        }
        for t in &self.tasks {
            let third = match (&t.acc_norm, loglik) {
                (Some(n), true) => pct_ci(n),
                (None, true) => "-".into(),
                (_, false) => t.unparsed.to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                t.task,
                t.n_items,
                pct_ci(&t.acc),
                third,
                t.layouts.join("; ")
            );
        }
        for t in self
            .tasks
            .iter()
            .filter(|t| t.task == Task::MmluMedical && !t.subjects.is_empty())
        {
            let _ = writeln!(md);
            let _ = writeln!(
                md,
                "| {} subject | items | acc (95% CI) | unparsed |",
                t.task
            );
            let _ = writeln!(md, "|---|---:|---|---:|");
            for s in &t.subjects {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    s.subject,
                    s.n_items,
                    pct_ci(&s.acc),
                    s.unparsed
                );
            }
        }
        if self.tasks.iter().any(|t| t.per_seed.len() > 1) {
            let _ = writeln!(md);
            let _ = writeln!(md, "| task | seed | acc | unparsed |");
            let _ = writeln!(md, "|---|---:|---:|---:|");
            for t in &self.tasks {
                for s in t.per_seed.iter().filter(|_| t.per_seed.len() > 1) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        t.task,
                        s.seed,
                        pct(s.acc),
                        s.unparsed
                    );
                }
            }
        }
        for s in &self.skipped {
            let _ = writeln!(md);
            let _ = writeln!(md, "- skipped {}: {}", s.task, s.reason);
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;

    fn ds(task: Task) -> Dataset {
        Dataset {
            task,
            items: vec![],
            fewshot_pool: vec![],
            fewshot_source: "pool".into(),
            files: vec!["f.csv".into()],
            layouts: vec!["MMLU headerless CSV".into()],
            notes: vec![],
        }
    }

    fn r(id: &str, seed: u64, subject: &str, gold: usize, pred: Option<usize>) -> ItemResult {
        ItemResult {
            task: Task::MmluMedical,
            id: id.into(),
            seed,
            subject: Some(subject.into()),
            gold,
            pred,
            pred_norm: None,
            logliks: vec![],
            outputs: vec![],
            votes: vec![],
        }
    }

    #[test]
    fn aggregates_seeds_and_subjects() {
        let results = vec![
            r("a:0", 1, "anatomy", 0, Some(0)),
            r("a:1", 1, "anatomy", 1, None),
            r("v:0", 1, "virology", 2, Some(2)),
            r("a:0", 2, "anatomy", 0, Some(1)),
            r("a:1", 2, "anatomy", 1, Some(1)),
            r("v:0", 2, "virology", 2, Some(2)),
        ];
        let t = task_report(&ds(Task::MmluMedical), &results, false);
        assert_eq!(t.n_items, 3);
        assert_eq!((t.acc.correct, t.acc.scored), (4, 6));
        assert_eq!(t.unparsed, 1);
        assert_eq!(t.per_seed.len(), 2);
        assert!((t.per_seed[0].acc - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(t.subjects[0].subject, "anatomy");
        assert_eq!(t.subjects[0].n_items, 2);
        assert_eq!(t.subjects[0].acc.correct, 2);
        assert_eq!(t.subjects[1].acc.acc, 1.0);
        let report = Report {
            model_id: "m".into(),
            model_file_hash: Some("abc".into()),
            endpoint: None,
            params: RunParams {
                mode: "generate".into(),
                template: "plain".into(),
                shots: 3,
                seeds: vec![1, 2],
                limit: None,
                temperature: 0.0,
                samples: 1,
                max_new_tokens: 16,
                batch_size: 8,
                data: "d".into(),
            },
            tasks: vec![t],
            skipped: vec![Skipped {
                task: Task::Medqa,
                reason: "no files".into(),
            }],
            ci_method: CI_METHOD.into(),
            eval_version: "0".into(),
            elapsed_s: 1.0,
        };
        let md = report.to_markdown();
        assert!(md.contains("| mmlu-medical | 3 | 66.7 ("), "{md}");
        assert!(md.contains("| anatomy | 2 | 50.0 ("), "{md}");
        assert!(md.contains("| mmlu-medical | 1 | 66.7 | 1 |"), "{md}");
        assert!(md.contains("| mmlu-medical | 2 | 66.7 | 0 |"), "{md}");
        assert!(md.contains("skipped medqa: no files"));
        // serde_json's float parsing may move the last bit, so compare what a reader sees.
        let back: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back.to_markdown(), md);
    }
}
