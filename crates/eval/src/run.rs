//! Runs an evaluation: loads each task, builds prompts, batches them through a `Backend`, scores, resumes, reports.

use crate::backend::{Backend, GenParams};
use crate::dataset::{load_task, Dataset, Item, LoadOptions, NoFiles, Task};
use crate::extract::{extract, majority, AnswerKind};
use crate::prompts::{loglik_prompt, meditron_prompt, Template};
use crate::report::{task_report, ItemResult, Report, RunParams, Skipped, CI_METHOD};
use crate::scoring::loglik_predictions;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How answers are obtained from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// lm-eval: the option whose continuation is most likely (acc and acc_norm).
    Loglik,
    /// Meditron: generate after "The answer is:" and read the answer.
    Generate,
    /// Chain of thought: generate after "Let's think step by step." and read "answer is X".
    Cot,
    /// Self-consistency: several sampled chains of thought, majority vote.
    ScCot,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Loglik => "loglik",
            Mode::Generate => "generate",
            Mode::Cot => "cot",
            Mode::ScCot => "sc-cot",
        }
    }

    fn is_cot(self) -> bool {
        matches!(self, Mode::Cot | Mode::ScCot)
    }
}

/// The partial-results file: one JSON line per scored item, appended as the run goes.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialFile {
    pub path: PathBuf,
    /// `--resume FILE`: a file written by a different run is an error. Otherwise (the file
    /// derived from `--json`) such a file is started afresh.
    pub explicit: bool,
}

/// Everything a run needs besides the backend (`EvalArgs::to_options` builds it from flags).
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub tasks: Vec<Task>,
    /// Report tasks without data as skipped instead of failing (for `--task all`).
    pub skip_missing: bool,
    pub mode: Mode,
    pub template: Template,
    pub data: PathBuf,
    pub shots: usize,
    /// Few-shot draws (and sampling) per seed; results are pooled over seeds.
    pub seeds: Vec<u64>,
    /// First N items per task (per subject for MMLU, as lm-eval limits each subtask).
    pub limit: Option<usize>,
    pub temperature: f32,
    /// sc-cot: chains sampled per question.
    pub samples: usize,
    pub max_new_tokens: usize,
    /// Questions per backend call.
    pub batch_size: usize,
    pub load: LoadOptions,
    pub partial: Option<PartialFile>,
    /// Recorded in the report; the caller computes it (see `hash_files`).
    pub model_file_hash: Option<String>,
    pub endpoint: Option<String>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            tasks: Task::ALL.to_vec(),
            skip_missing: true,
            mode: Mode::Loglik,
            template: Template::Plain,
            data: PathBuf::new(),
            shots: 0,
            seeds: vec![1234, 432, 32],
            limit: None,
            temperature: 0.0,
            samples: 5,
            max_new_tokens: 16,
            batch_size: 16,
            load: LoadOptions::default(),
            partial: None,
            model_file_hash: None,
            endpoint: None,
        }
    }
}

impl EvalOptions {
    /// Seeds change nothing without shots or sampling: then one pass under the first seed.
    fn effective_seeds(&self) -> Vec<u64> {
        let sampling = self.mode != Mode::Loglik && self.temperature > 0.0;
        if self.shots > 0 || sampling {
            self.seeds.clone()
        } else {
            self.seeds.iter().take(1).copied().collect()
        }
    }

    fn run_params(&self, seeds: &[u64]) -> RunParams {
        RunParams {
            mode: self.mode.name().into(),
            template: match self.template {
                Template::Plain => "plain".into(),
                Template::ImStart => "im-start".into(),
            },
            shots: self.shots,
            seeds: seeds.to_vec(),
            limit: self.limit,
            temperature: if self.mode == Mode::Loglik {
                0.0
            } else {
                self.temperature
            },
            samples: if self.mode == Mode::ScCot {
                self.samples
            } else {
                1
            },
            max_new_tokens: if self.mode == Mode::Loglik {
                0
            } else {
                self.max_new_tokens
            },
            batch_size: self.batch_size,
            data: self.data.display().to_string(),
        }
    }
}

/// Receives progress: one `start` per task and seed, `advance` per finished batch.
pub trait ProgressSink {
    fn start(&mut self, label: &str, total: usize, already_done: usize);
    fn advance(&mut self, n: usize);
    fn finish(&mut self);
}

/// Progress that goes nowhere (tests, `--quiet`).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn start(&mut self, _: &str, _: usize, _: usize) {}
    fn advance(&mut self, _: usize) {}
    fn finish(&mut self) {}
}

/// A one-line progress bar with rate and ETA on stderr, redrawn at most 5 times a second.
pub struct TextProgress {
    label: String,
    total: usize,
    done: usize,
    resumed: usize,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Default for TextProgress {
    fn default() -> Self {
        TextProgress {
            label: String::new(),
            total: 0,
            done: 0,
            resumed: 0,
            started: Instant::now(),
            last_draw: None,
        }
    }
}

impl TextProgress {
    fn draw(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last_draw
                .is_some_and(|t| now.duration_since(t).as_millis() < 200)
        {
            return;
        }
        self.last_draw = Some(now);
        let frac = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let width = 30;
        let filled = (frac * width as f64).round() as usize;
        let elapsed = self.started.elapsed().as_secs_f64();
        let fresh = self.done.saturating_sub(self.resumed);
        let rate = if elapsed > 0.0 {
            fresh as f64 / elapsed
        } else {
            0.0
        };
        let eta = if rate > 0.0 {
            fmt_secs((self.total - self.done.min(self.total)) as f64 / rate)
        } else {
            "?".into()
        };
        eprint!(
            "\r{} [{}{}] {}/{} {:.0}% {:.1}/s ETA {}   ",
            self.label,
            "#".repeat(filled.min(width)),
            ".".repeat(width - filled.min(width)),
            self.done,
            self.total,
            100.0 * frac,
            rate,
            eta
        );
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl ProgressSink for TextProgress {
    fn start(&mut self, label: &str, total: usize, already_done: usize) {
        *self = TextProgress {
            label: label.to_string(),
            total,
            done: already_done,
            resumed: already_done,
            started: Instant::now(),
            last_draw: None,
        };
        self.draw(true);
    }
    fn advance(&mut self, n: usize) {
        self.done += n;
        self.draw(false);
    }
    fn finish(&mut self) {
        self.draw(true);
        eprintln!();
    }
}

// ---------------------------------------------------------------- resumable partial results

/// What must agree for results in a partial file to be reused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunKey {
    model_id: String,
    mode: Mode,
    template: Template,
    shots: usize,
    temperature: f32,
    samples: usize,
    max_new_tokens: usize,
}

#[derive(Serialize, Deserialize)]
struct Header {
    header: RunKey,
}

type ResultKey = (Task, String, u64);

struct Partial {
    done: HashMap<ResultKey, ItemResult>,
    file: Option<File>,
    path: Option<PathBuf>,
}

impl Partial {
    fn open(spec: Option<&PartialFile>, key: &RunKey) -> anyhow::Result<Partial> {
        let Some(spec) = spec else {
            return Ok(Partial {
                done: HashMap::new(),
                file: None,
                path: None,
            });
        };
        let path = &spec.path;
        let mut done = HashMap::new();
        let mut fresh = true;
        if path.exists() {
            match read_partial(path)? {
                Some((found, results)) if found == *key => {
                    for r in results {
                        done.insert((r.task, r.id.clone(), r.seed), r);
                    }
                    fresh = false;
                }
                Some((found, _)) if spec.explicit => bail!(
                    "{} holds results of a different run ({}); use another --resume file or delete it",
                    path.display(),
                    describe_mismatch(&found, key)
                ),
                _ => {}
            }
        }
        // Rewritten whole, from what was read, so a torn last line is not appended to.
        let mut text = serde_json::to_string(&Header {
            header: key.clone(),
        })? + "\n";
        if !fresh {
            let mut kept: Vec<&ItemResult> = done.values().collect();
            kept.sort_by(|a, b| (a.task, a.seed, &a.id).cmp(&(b.task, b.seed, &b.id)));
            for r in kept {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Partial {
            done,
            file: Some(file),
            path: Some(path.clone()),
        })
    }

    fn record(&mut self, results: &[ItemResult]) -> anyhow::Result<()> {
        if let (Some(f), Some(path)) = (&mut self.file, &self.path) {
            let mut buf = String::new();
            for r in results {
                buf.push_str(&serde_json::to_string(r)?);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())
                .and_then(|_| f.flush())
                .with_context(|| format!("appending to {}", path.display()))?;
        }
        for r in results {
            self.done.insert((r.task, r.id.clone(), r.seed), r.clone());
        }
        Ok(())
    }
}

fn describe_mismatch(a: &RunKey, b: &RunKey) -> String {
    let mut diffs = Vec::new();
    if a.model_id != b.model_id {
        diffs.push(format!("model {} vs {}", a.model_id, b.model_id));
    }
    if a.mode != b.mode {
        diffs.push(format!("mode {} vs {}", a.mode.name(), b.mode.name()));
    }
    if a.shots != b.shots {
        diffs.push(format!("shots {} vs {}", a.shots, b.shots));
    }
    if a.template != b.template {
        diffs.push("template".into());
    }
    if a.temperature != b.temperature
        || a.samples != b.samples
        || a.max_new_tokens != b.max_new_tokens
    {
        diffs.push("sampling settings".into());
    }
    diffs.join(", ")
}

/// Reads a partial file: its header and results. A torn last line (a run killed mid-write)
/// is dropped; any other bad line is an error naming it. An empty file reads as `None`.
fn read_partial(path: &Path) -> anyhow::Result<Option<(RunKey, Vec<ItemResult>)>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let header: Header = serde_json::from_str(first).with_context(|| {
        format!(
            "{}, line 1: not a meditron eval partial-results header",
            path.display()
        )
    })?;
    let mut results = Vec::new();
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ItemResult>(line) {
            Ok(r) => results.push(r),
            Err(_) if i == last => {}
            Err(e) => bail!("{}, line {}: bad result record: {e}", path.display(), i + 1),
        }
    }
    Ok(Some((header.header, results)))
}

// ---------------------------------------------------------------- few-shot draws

/// SplitMix64: a small, well-mixed generator, so a draw depends only on the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `k` + 1 candidate demonstrations for one seed (and MMLU subject): a seeded shuffle of
/// the pool, drawn once so every question of the seed shares them (as Meditron does), the
/// extra one replacing the evaluated item when it is among them.
fn draw_candidates<'a>(
    pool: &'a [Item],
    subject: Option<&str>,
    k: usize,
    seed: u64,
) -> Vec<&'a Item> {
    let mut cands: Vec<&Item> = match subject {
        Some(s) if pool.iter().any(|it| it.subject.as_deref() == Some(s)) => pool
            .iter()
            .filter(|it| it.subject.as_deref() == Some(s))
            .collect(),
        _ => pool.iter().collect(),
    };
    let mut rng = SplitMix64(seed ^ fnv1a(subject.unwrap_or("")));
    let take = (k + 1).min(cands.len());
    for i in 0..take {
        let j = i + (rng.next() % (cands.len() - i) as u64) as usize;
        cands.swap(i, j);
    }
    cands.truncate(take);
    cands
}

fn shots_for<'a>(cands: &[&'a Item], item: &Item, k: usize) -> Vec<&'a Item> {
    cands
        .iter()
        .copied()
        .filter(|c| c.id != item.id || c.question != item.question)
        .take(k)
        .collect()
}

/// First `limit` items, per subject for MMLU.
fn limited(items: &[Item], limit: Option<usize>) -> Vec<&Item> {
    let Some(n) = limit else {
        return items.iter().collect();
    };
    let mut per: HashMap<Option<&str>, usize> = HashMap::new();
    items
        .iter()
        .filter(|it| {
            let key = if it.task == Task::MmluMedical {
                it.subject.as_deref()
            } else {
                None
            };
            let c = per.entry(key).or_default();
            *c += 1;
            *c <= n
        })
        .collect()
}

// ---------------------------------------------------------------- the run

/// Evaluates `backend` on every task of `opts` and returns the report (also written to the
/// partial file as it goes, when one is set).
pub fn run_eval(
    backend: &mut dyn Backend,
    opts: &EvalOptions,
    progress: &mut dyn ProgressSink,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    if opts.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    if opts.seeds.is_empty() {
        bail!("at least one seed is needed");
    }
    if opts.mode == Mode::ScCot && opts.samples == 0 {
        bail!("sc-cot needs at least one sample");
    }
    let model_id = backend.model_id();
    let key = RunKey {
        model_id: model_id.clone(),
        mode: opts.mode,
        template: opts.template,
        shots: opts.shots,
        temperature: if opts.mode == Mode::Loglik {
            0.0
        } else {
            opts.temperature
        },
        samples: if opts.mode == Mode::ScCot {
            opts.samples
        } else {
            1
        },
        max_new_tokens: if opts.mode == Mode::Loglik {
            0
        } else {
            opts.max_new_tokens
        },
    };
    let mut partial = Partial::open(opts.partial.as_ref(), &key)?;
    let seeds = opts.effective_seeds();
    let mut tasks = Vec::new();
    let mut skipped = Vec::new();
    for &task in &opts.tasks {
        let load = LoadOptions {
            skip_pool: opts.load.skip_pool || opts.shots == 0,
            ..opts.load.clone()
        };
        let ds = match load_task(task, &opts.data, &load) {
            Ok(ds) => ds,
            Err(e) if opts.skip_missing && e.downcast_ref::<NoFiles>().is_some() => {
                skipped.push(Skipped {
                    task,
                    reason: e.to_string(),
                });
                continue;
            }
            Err(e) => return Err(e.context(format!("loading {task}"))),
        };
        let mut ds = ds;
        let items = limited(&ds.items, opts.limit);
        if opts.shots > 0 && ds.fewshot_pool.len() < opts.shots + 1 {
            ds.notes.push(format!(
                "few-shot pool has {} questions: fewer than {} shots for some items",
                ds.fewshot_pool.len(),
                opts.shots
            ));
        }
        let mut results = Vec::new();
        for &seed in &seeds {
            results.extend(run_task_seed(
                backend,
                opts,
                &ds,
                &items,
                seed,
                &mut partial,
                progress,
            )?);
        }
        tasks.push(task_report(&ds, &results, opts.mode == Mode::Loglik));
    }
    if tasks.is_empty() {
        let why: Vec<String> = skipped.iter().map(|s| s.reason.clone()).collect();
        bail!("no task had data: {}", why.join("; "));
    }
    Ok(Report {
        model_id,
        model_file_hash: opts.model_file_hash.clone(),
        endpoint: opts.endpoint.clone(),
        params: opts.run_params(&seeds),
        tasks,
        skipped,
        ci_method: CI_METHOD.into(),
        eval_version: env!("CARGO_PKG_VERSION").into(),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

fn run_task_seed(
    backend: &mut dyn Backend,
    opts: &EvalOptions,
    ds: &Dataset,
    items: &[&Item],
    seed: u64,
    partial: &mut Partial,
    progress: &mut dyn ProgressSink,
) -> anyhow::Result<Vec<ItemResult>> {
    let task = ds.task;
    let mut results = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    for item in items {
        match partial.done.get(&(task, item.id.clone(), seed)) {
            Some(r) => results.push(r.clone()),
            None => pending.push(*item),
        }
    }
    let label = if opts.effective_seeds().len() > 1 {
        format!("{task} seed {seed}")
    } else {
        task.to_string()
    };
    progress.start(&label, items.len(), results.len());
    // Demonstrations are drawn once per seed and subject, so prompts share a prefix.
    let mut draws: HashMap<Option<String>, Vec<&Item>> = HashMap::new();
    for chunk in pending.chunks(opts.batch_size) {
        let mut shots: Vec<Vec<&Item>> = Vec::with_capacity(chunk.len());
        for item in chunk {
            let subject = if task == Task::MmluMedical {
                item.subject.clone()
            } else {
                None
            };
            let cands = if opts.shots == 0 {
                draws.entry(subject).or_default()
            } else {
                draws.entry(subject.clone()).or_insert_with(|| {
                    draw_candidates(&ds.fewshot_pool, subject.as_deref(), opts.shots, seed)
                })
            };
            shots.push(shots_for(cands, item, opts.shots));
        }
        let batch = match opts.mode {
            Mode::Loglik => score_loglik(backend, chunk, &shots, seed)?,
            _ => score_generate(backend, opts, chunk, &shots, seed)?,
        };
        partial.record(&batch)?;
        progress.advance(batch.len());
        results.extend(batch);
    }
    progress.finish();
    Ok(results)
}

fn base_result(item: &Item, seed: u64) -> ItemResult {
    ItemResult {
        task: item.task,
        id: item.id.clone(),
        seed,
        subject: item.subject.clone(),
        gold: item.answer,
        pred: None,
        pred_norm: None,
        logliks: Vec::new(),
        outputs: Vec::new(),
        votes: Vec::new(),
    }
}

fn score_loglik(
    backend: &mut dyn Backend,
    items: &[&Item],
    shots: &[Vec<&Item>],
    seed: u64,
) -> anyhow::Result<Vec<ItemResult>> {
    let prompts: Vec<_> = items
        .iter()
        .zip(shots)
        .map(|(it, sh)| loglik_prompt(it, sh))
        .collect();
    let requests: Vec<(String, String)> = prompts
        .iter()
        .flat_map(|p| {
            p.continuations
                .iter()
                .map(|c| (p.context.clone(), c.clone()))
        })
        .collect();
    let lls = backend
        .loglik(&requests)
        .context("backend log-likelihood call failed")?;
    if lls.len() != requests.len() {
        bail!(
            "backend returned {} log-likelihoods for {} requests",
            lls.len(),
            requests.len()
        );
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(items.len());
    for (item, p) in items.iter().zip(&prompts) {
        let mine = &lls[at..at + p.continuations.len()];
        at += p.continuations.len();
        let (pred, pred_norm) = loglik_predictions(mine, &p.choice_chars);
        out.push(ItemResult {
            pred,
            pred_norm,
            logliks: mine.to_vec(),
            ..base_result(item, seed)
        });
    }
    Ok(out)
}

fn score_generate(
    backend: &mut dyn Backend,
    opts: &EvalOptions,
    items: &[&Item],
    shots: &[Vec<&Item>],
    seed: u64,
) -> anyhow::Result<Vec<ItemResult>> {
    let cot = opts.mode.is_cot();
    let prompts: Vec<String> = items
        .iter()
        .zip(shots)
        .map(|(it, sh)| meditron_prompt(it, sh, cot, opts.template))
        .collect();
    // Meditron's stop strings, plus the start of a new demonstration.
    let mut stop: Vec<String> = vec!["###".into(), "$$$".into(), "\n\nQuestion:".into()];
    if opts.template == Template::ImStart {
        stop.push("<|im_end|>".into());
    }
    let samples = if opts.mode == Mode::ScCot {
        opts.samples
    } else {
        1
    };
    let mut outputs: Vec<Vec<String>> = vec![Vec::with_capacity(samples); items.len()];
    for s in 0..samples {
        let params = GenParams {
            max_new_tokens: opts.max_new_tokens,
            temperature: opts.temperature,
            top_p: 1.0,
            seed: seed.wrapping_mul(1000).wrapping_add(s as u64),
            stop: stop.clone(),
        };
        let texts = backend
            .generate(&prompts, &params)
            .context("backend generation call failed")?;
        if texts.len() != prompts.len() {
            bail!(
                "backend returned {} generations for {} prompts",
                texts.len(),
                prompts.len()
            );
        }
        for (o, t) in outputs.iter_mut().zip(texts) {
            o.push(t);
        }
    }
    let with_shots = opts.shots > 0;
    Ok(items
        .iter()
        .zip(outputs)
        .map(|(item, outs)| {
            let kind = AnswerKind::of(item);
            let votes: Vec<Option<usize>> = outs
                .iter()
                .map(|o| extract(o, kind, with_shots, cot))
                .collect();
            let pred = majority(&votes);
            ItemResult {
                pred,
                votes: if opts.mode == Mode::ScCot {
                    votes
                } else {
                    Vec::new()
                },
                outputs: outs,
                ..base_result(item, seed)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, subject: Option<&str>) -> Item {
        Item {
            id: id.into(),
            task: Task::MmluMedical,
            subject: subject.map(str::to_string),
            question: format!("q{id}"),
            options: vec![("A".into(), "x".into()), ("B".into(), "y".into())],
            answer: 0,
            context: None,
            explanation: None,
        }
    }

    #[test]
    fn draws_are_seeded_subject_bound_and_skip_the_item() {
        let pool: Vec<Item> = (0..20)
            .map(|i| {
                item(
                    &i.to_string(),
                    Some(if i % 2 == 0 { "anatomy" } else { "virology" }),
                )
            })
            .collect();
        let a = draw_candidates(&pool, Some("anatomy"), 3, 1234);
        let b = draw_candidates(&pool, Some("anatomy"), 3, 1234);
        let c = draw_candidates(&pool, Some("anatomy"), 3, 432);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|it| it.subject.as_deref() == Some("anatomy")));
        let first = a[0].clone();
        let shots = shots_for(&a, &first, 3);
        assert_eq!(shots.len(), 3);
        assert!(shots.iter().all(|s| s.id != first.id));
        // A pool smaller than k gives what it has.
        assert_eq!(draw_candidates(&pool[..2], None, 5, 1).len(), 2);
    }

    #[test]
    fn limit_is_per_mmlu_subject() {
        let items = vec![
            item("1", Some("a")),
            item("2", Some("a")),
            item("3", Some("b")),
            item("4", Some("b")),
        ];
        let ids: Vec<&str> = limited(&items, Some(1))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["1", "3"]);
        assert_eq!(limited(&items, None).len(), 4);
    }

    #[test]
    fn eta_formatting() {
        assert_eq!(fmt_secs(42.0), "42s");
        assert_eq!(fmt_secs(125.0), "2m05s");
        assert_eq!(fmt_secs(3700.0), "1h01m");
    }
}
