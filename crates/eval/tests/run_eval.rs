//! End-to-end runs of `run_eval` on the real shared/data files with mock backends whose
//! accuracies are known exactly: an oracle, one that always picks the first option, and
//! scripted generators for cot and sc-cot; plus resuming and progress.

use eval::dataset::{load_task, LoadOptions, Task};
use eval::prompts::{lm_eval_choices, lm_eval_doc_to_text, meditron_question, ANSWER_CUE, COT_CUE};
use eval::run::PartialFile;
use eval::{run_eval, Backend, EvalOptions, GenParams, Mode, NoProgress, ProgressSink};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.is_dir(),
        "the benchmark data is expected at {}",
        p.display()
    );
    p
}

fn opts(tasks: &[Task], mode: Mode, limit: Option<usize>) -> EvalOptions {
    EvalOptions {
        tasks: tasks.to_vec(),
        mode,
        limit,
        data: shared_data(),
        ..EvalOptions::default()
    }
}

/// Knows every answer: the gold continuation scores 0, the others -5; generations name the gold.
struct Oracle {
    /// lm-eval question text -> gold choice (" yes", " B").
    loglik_gold: Vec<(String, String)>,
    /// Meditron question text -> gold label ("yes", "B").
    gen_gold: Vec<(String, String)>,
    /// Exact-context fast path for 0-shot prompts.
    exact: HashMap<String, String>,
    contexts: Vec<String>,
}

impl Oracle {
    fn new(tasks: &[Task]) -> Oracle {
        let mut o = Oracle {
            loglik_gold: vec![],
            gen_gold: vec![],
            exact: HashMap::new(),
            contexts: vec![],
        };
        for &t in tasks {
            let ds = load_task(t, &shared_data(), &LoadOptions::default()).unwrap();
            for it in &ds.items {
                let gold = format!(" {}", lm_eval_choices(it)[it.answer]);
                let text = lm_eval_doc_to_text(it);
                let full = eval::prompts::loglik_prompt(it, &[]).context;
                o.exact.insert(full, gold.clone());
                o.loglik_gold.push((text, gold));
                o.gen_gold
                    .push((meditron_question(it), it.options[it.answer].0.clone()));
            }
        }
        o
    }

    fn gold_for_context(&self, ctx: &str) -> &str {
        if let Some(g) = self.exact.get(ctx) {
            return g;
        }
        let (_, g) = self
            .loglik_gold
            .iter()
            .find(|(q, _)| ctx.ends_with(q.as_str()))
            .expect("a known question");
        g
    }
}

impl Backend for Oracle {
    fn loglik(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        Ok(requests
            .iter()
            .map(|(ctx, cont)| {
                self.contexts.push(ctx.clone());
                if self.gold_for_context(ctx) == cont {
                    0.0
                } else {
                    -5.0
                }
            })
            .collect())
    }
    fn generate(&mut self, prompts: &[String], _: &GenParams) -> anyhow::Result<Vec<String>> {
        Ok(prompts
            .iter()
            .map(|p| {
                let (_, g) = self
                    .gen_gold
                    .iter()
                    .find(|(q, _)| {
                        p.ends_with(&format!("{q}\n{ANSWER_CUE}"))
                            || p.ends_with(&format!("{q}\n{COT_CUE}"))
                    })
                    .expect("a known question");
                format!(" {g}")
            })
            .collect())
    }
    fn model_id(&self) -> String {
        "oracle".into()
    }
}

/// Always the first option: " A" / " yes" scores best; generations say `text`.
struct First {
    text: String,
    calls: usize,
    fail_at_call: Option<usize>,
    requested: usize,
}

impl First {
    fn new(text: &str) -> First {
        First {
            text: text.into(),
            calls: 0,
            fail_at_call: None,
            requested: 0,
        }
    }
}

impl Backend for First {
    fn loglik(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        self.calls += 1;
        if self.fail_at_call == Some(self.calls) {
            anyhow::bail!("the model crashed");
        }
        self.requested += requests.len();
        Ok(requests
            .iter()
            .map(|(_, c)| if c == " A" || c == " yes" { -1.0 } else { -2.0 })
            .collect())
    }
    fn generate(&mut self, prompts: &[String], _: &GenParams) -> anyhow::Result<Vec<String>> {
        self.calls += 1;
        self.requested += prompts.len();
        Ok(prompts.iter().map(|_| self.text.clone()).collect())
    }
    fn model_id(&self) -> String {
        "first".into()
    }
}

#[test]
fn oracle_scores_everything_on_full_pubmedqa_and_medmcqa() {
    let tasks = [Task::Pubmedqa, Task::Medmcqa];
    let mut oracle = Oracle::new(&tasks);
    let report = run_eval(
        &mut oracle,
        &opts(&tasks, Mode::Loglik, None),
        &mut NoProgress,
    )
    .unwrap();
    let n: Vec<usize> = report.tasks.iter().map(|t| t.n_items).collect();
    assert_eq!(n, [500, 4183]);
    for t in &report.tasks {
        assert_eq!(t.acc.acc, 1.0, "{}", t.task);
        assert_eq!(t.acc_norm.as_ref().unwrap().acc, 1.0);
        assert_eq!(t.per_seed.len(), 1, "0-shot loglik runs once");
    }
    assert_eq!(report.model_id, "oracle");
    assert_eq!(report.params.seeds, [1234]);
    assert!(report.tasks[1].layouts[0].contains("cop 1-based"));
}

#[test]
fn first_option_accuracy_is_the_share_of_gold_a() {
    let tasks = [Task::Pubmedqa, Task::Medmcqa, Task::MmluMedical];
    let mut first = First::new(" A");
    let report = run_eval(
        &mut first,
        &opts(&tasks, Mode::Loglik, None),
        &mut NoProgress,
    )
    .unwrap();
    let acc: Vec<(usize, usize)> = report
        .tasks
        .iter()
        .map(|t| (t.acc.correct, t.n_items))
        .collect();
    // PubMedQA: 276 of 500 are "yes"; MedMCQA: cop 1 on 1348 of 4183; MMLU: 235 "A" of 1089.
    assert_eq!(acc, [(276, 500), (1348, 4183), (235, 1089)]);
    let mmlu = &report.tasks[2];
    let anatomy = mmlu
        .subjects
        .iter()
        .find(|s| s.subject == "anatomy")
        .unwrap();
    assert_eq!((anatomy.acc.correct, anatomy.n_items), (25, 135));
    assert_eq!(mmlu.subjects.len(), 6);
    // acc_norm divides by characters: " yes" -1/3 still beats " no" -2/2 and " maybe" -2/5.
    assert_eq!(report.tasks[0].acc_norm.as_ref().unwrap().correct, 276);
    let md = report.to_markdown();
    assert!(md.contains("| pubmedqa | 500 | 55.2 ("), "{md}");
    assert!(md.contains("| anatomy | 135 | 18.5 ("), "{md}");
}

#[test]
fn limit_takes_the_first_items_and_mmlu_per_subject() {
    let mut first = First::new(" A");
    let report = run_eval(
        &mut first,
        &opts(&[Task::Medmcqa, Task::MmluMedical], Mode::Loglik, Some(200)),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(
        (report.tasks[0].acc.correct, report.tasks[0].n_items),
        (71, 200)
    );
    let mmlu = &report.tasks[1];
    let n: Vec<(&str, usize)> = mmlu
        .subjects
        .iter()
        .map(|s| (s.subject.as_str(), s.n_items))
        .collect();
    assert_eq!(
        n,
        [
            ("anatomy", 135),
            ("clinical_knowledge", 200),
            ("college_biology", 144),
            ("college_medicine", 173),
            ("medical_genetics", 100),
            ("professional_medicine", 200)
        ]
    );
    assert_eq!(mmlu.n_items, 952);
}

#[test]
fn generate_reads_letters_and_counts_unparsed() {
    let mut first = First::new(" A. something");
    let report = run_eval(
        &mut first,
        &opts(&[Task::Medmcqa, Task::Pubmedqa], Mode::Generate, Some(200)),
        &mut NoProgress,
    )
    .unwrap();
    let med = &report.tasks[0];
    assert_eq!((med.acc.correct, med.unparsed), (71, 0));
    // "A" is no PubMedQA answer: all unparsed, all wrong.
    let pub_ = &report.tasks[1];
    assert_eq!(
        (pub_.acc.correct, pub_.unparsed, pub_.n_items),
        (0, 200, 200)
    );
    assert!(pub_.acc_norm.is_none());
    assert_eq!(report.params.max_new_tokens, 16);
}

#[test]
fn oracle_generations_with_shots_over_three_seeds() {
    let tasks = [Task::Medmcqa];
    let mut oracle = Oracle::new(&tasks);
    let o = EvalOptions {
        shots: 3,
        ..opts(&tasks, Mode::Generate, Some(30))
    };
    let report = run_eval(&mut oracle, &o, &mut NoProgress).unwrap();
    let t = &report.tasks[0];
    assert_eq!(t.per_seed.len(), 3);
    assert_eq!((t.n_items, t.acc.scored, t.acc.correct), (30, 90, 90));
    assert_eq!(report.params.seeds, [1234, 432, 32]);
}

#[test]
fn loglik_shots_share_one_draw_per_seed() {
    let tasks = [Task::Pubmedqa];
    let mut oracle = Oracle::new(&tasks);
    let o = EvalOptions {
        shots: 2,
        seeds: vec![1, 2],
        ..opts(&tasks, Mode::Loglik, Some(5))
    };
    let report = run_eval(&mut oracle, &o, &mut NoProgress).unwrap();
    assert_eq!(report.tasks[0].acc.acc, 1.0);
    // 5 items x 3 options x 2 seeds; shots end in " yes/no/maybe\n\n" before the question.
    assert_eq!(oracle.contexts.len(), 30);
    let demos = |ctx: &String| ctx[..ctx.rfind("Abstract: ").unwrap()].to_string();
    let seed1: Vec<String> = oracle.contexts[..15].iter().map(demos).collect();
    let seed2: Vec<String> = oracle.contexts[15..].iter().map(demos).collect();
    assert!(seed1.iter().all(|d| *d == seed1[0]) && seed2.iter().all(|d| *d == seed2[0]));
    assert_ne!(seed1[0], seed2[0]);
    assert_eq!(seed1[0].matches("\nAnswer: ").count(), 2);
    assert!(seed1[0].ends_with("\n\n"));
}

/// Chain of thought: reasoning, then "the answer is <letter>", the letter scripted per sample.
struct Scripted {
    /// Sample seeds whose answer is wrong.
    wrong_when: fn(u64) -> bool,
    gold: Oracle,
}

impl Backend for Scripted {
    fn loglik(&mut self, _: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        anyhow::bail!("not used")
    }
    fn generate(&mut self, prompts: &[String], params: &GenParams) -> anyhow::Result<Vec<String>> {
        assert!(prompts.iter().all(|p| p.ends_with(COT_CUE)));
        let golds = self.gold.generate(prompts, params)?;
        Ok(golds
            .into_iter()
            .map(|g| {
                let letter = if (self.wrong_when)(params.seed) {
                    "Z".to_string()
                } else {
                    g.trim().to_string()
                };
                format!(" First, the findings.\n\nThen the mechanism. So the answer is {letter}.")
            })
            .collect())
    }
    fn model_id(&self) -> String {
        "scripted".into()
    }
}

#[test]
fn cot_and_self_consistency_vote() {
    let tasks = [Task::Medmcqa];
    // cot: every chain wrong ("Z" is no option): all unparsed.
    let mut always_wrong = Scripted {
        wrong_when: |_| true,
        gold: Oracle::new(&tasks),
    };
    let report = run_eval(
        &mut always_wrong,
        &opts(&tasks, Mode::Cot, Some(10)),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(
        (report.tasks[0].acc.correct, report.tasks[0].unparsed),
        (0, 10)
    );
    assert_eq!(
        report.params.max_new_tokens, 16,
        "EvalOptions default; EvalArgs picks 512 for cot"
    );

    // sc-cot: sample seeds are seed*1000 + s; one sample in three is wrong, so the vote is right.
    let mut mostly_right = Scripted {
        wrong_when: |seed| seed % 3 == 0,
        gold: Oracle::new(&tasks),
    };
    let o = EvalOptions {
        temperature: 0.8,
        samples: 3,
        seeds: vec![1234],
        ..opts(&tasks, Mode::ScCot, Some(10))
    };
    let report = run_eval(&mut mostly_right, &o, &mut NoProgress).unwrap();
    assert_eq!(
        (report.tasks[0].acc.correct, report.tasks[0].unparsed),
        (10, 0)
    );

    // Two chains in three unparsed: unparsed chains do not vote, so the one parsed answer wins.
    let mut mostly_wrong = Scripted {
        wrong_when: |seed| seed % 3 != 1,
        gold: Oracle::new(&tasks),
    };
    let report = run_eval(&mut mostly_wrong, &o, &mut NoProgress).unwrap();
    assert_eq!(report.tasks[0].acc.correct, 10);
}

#[test]
fn resumes_from_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("run.partial.jsonl");
    let o = EvalOptions {
        batch_size: 10,
        partial: Some(PartialFile {
            path: partial.clone(),
            explicit: true,
        }),
        ..opts(&[Task::Pubmedqa], Mode::Loglik, Some(30))
    };
    let mut crashing = First::new(" A");
    crashing.fail_at_call = Some(3);
    let e = run_eval(&mut crashing, &o, &mut NoProgress).unwrap_err();
    assert!(format!("{e:#}").contains("the model crashed"));
    let lines = std::fs::read_to_string(&partial).unwrap().lines().count();
    assert_eq!(lines, 1 + 20, "header and two batches");
    // A run killed mid-write leaves a torn last line, which is dropped.
    let mut text = std::fs::read_to_string(&partial).unwrap();
    text.push_str("{\"task\":\"pubmedqa\",\"id\":\"123");
    std::fs::write(&partial, text).unwrap();

    let mut rest = First::new(" A");
    let report = run_eval(&mut rest, &o, &mut NoProgress).unwrap();
    assert_eq!(
        rest.requested,
        10 * 3,
        "only the last 10 questions (3 options each)"
    );
    assert_eq!(report.tasks[0].n_items, 30);
    let yes_in_first_30 = load_task(Task::Pubmedqa, &shared_data(), &LoadOptions::default())
        .unwrap()
        .items[..30]
        .iter()
        .filter(|i| i.answer == 0)
        .count();
    assert_eq!(report.tasks[0].acc.correct, yes_in_first_30);

    // Another model may not reuse these results...
    let mut other = First::new(" A");
    let o2 = EvalOptions {
        mode: Mode::Generate,
        ..o.clone()
    };
    let e = run_eval(&mut other, &o2, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds results of a different run (mode loglik vs generate"),
        "{e}"
    );
    // ...but a file derived from --json is simply started afresh.
    let o3 = EvalOptions {
        partial: Some(PartialFile {
            path: partial.clone(),
            explicit: false,
        }),
        ..o2
    };
    run_eval(&mut other, &o3, &mut NoProgress).unwrap();
    assert_eq!(other.requested, 30);
    // A bad line in the middle is an error naming it.
    let mut lines: Vec<String> = std::fs::read_to_string(&partial)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines[5] = "garbage".into();
    std::fs::write(&partial, lines.join("\n") + "\n").unwrap();
    let e = run_eval(&mut other, &o3, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 6: bad result record"), "{e}");
}

#[test]
fn all_tasks_skip_what_has_no_data_and_write_reports() {
    let mut first = First::new(" A");
    let mut o = opts(&Task::ALL, Mode::Loglik, Some(5));
    o.model_file_hash = Some("deadbeef".into());
    let report = run_eval(&mut first, &o, &mut NoProgress).unwrap();
    let tasks: Vec<Task> = report.tasks.iter().map(|t| t.task).collect();
    assert_eq!(tasks, [Task::Pubmedqa, Task::Medmcqa, Task::MmluMedical]);
    let skipped: Vec<Task> = report.skipped.iter().map(|s| s.task).collect();
    assert_eq!(skipped, [Task::Medqa, Task::Medqa4]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    report.write_json(&out).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["model_file_hash"], "deadbeef");
    assert_eq!(v["params"]["mode"], "loglik");
    assert_eq!(v["tasks"][0]["n_items"], 5);
    assert!(v["tasks"][0]["acc"]["ci95"].is_array());
    // `all` on one file runs that file's task only.
    let one = EvalOptions {
        data: shared_data().join("medmcqa/dev.jsonl"),
        ..opts(&Task::ALL, Mode::Loglik, Some(3))
    };
    let report = run_eval(&mut first, &one, &mut NoProgress).unwrap();
    assert_eq!(
        report.tasks.iter().map(|t| t.task).collect::<Vec<_>>(),
        [Task::Medmcqa]
    );
    assert_eq!(report.skipped.len(), 4);
    // Asking for a task that has no data is an error.
    let e = run_eval(
        &mut first,
        &EvalOptions {
            skip_missing: false,
            ..opts(&[Task::Medqa4], Mode::Loglik, None)
        },
        &mut NoProgress,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("no medqa4 files found"));
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl ProgressSink for Recorder {
    fn start(&mut self, label: &str, total: usize, done: usize) {
        self.events.push(format!("start {label} {total} {done}"));
    }
    fn advance(&mut self, n: usize) {
        self.events.push(format!("+{n}"));
    }
    fn finish(&mut self) {
        self.events.push("end".into());
    }
}

#[test]
fn progress_reports_batches() {
    let mut first = First::new(" A");
    let mut rec = Recorder::default();
    let o = EvalOptions {
        batch_size: 4,
        shots: 1,
        seeds: vec![5, 6],
        ..opts(&[Task::Pubmedqa], Mode::Loglik, Some(10))
    };
    run_eval(&mut first, &o, &mut rec).unwrap();
    assert_eq!(
        rec.events,
        [
            "start pubmedqa seed 5 10 0",
            "+4",
            "+4",
            "+2",
            "end",
            "start pubmedqa seed 6 10 0",
            "+4",
            "+4",
            "+2",
            "end"
        ]
    );
}
