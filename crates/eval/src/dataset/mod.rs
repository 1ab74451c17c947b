//! Benchmark questions as `Item`s: finds a task's files under `--data`, detects their layout, reads them.

mod readers;
mod records;

pub use records::Loc;

use records::{file_name_lower, first_json_record};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The MMLU subjects of MMLU-Medical (Meditron's selection).
pub const MMLU_MEDICAL: [&str; 9] = [
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
    "high_school_biology",
    "virology",
    "nutrition",
];

/// A benchmark of the Meditron paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Pubmedqa,
    Medmcqa,
    /// MedQA (USMLE) with 5 options.
    Medqa,
    /// MedQA (USMLE) with 4 options.
    Medqa4,
    MmluMedical,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::Pubmedqa,
        Task::Medmcqa,
        Task::Medqa,
        Task::Medqa4,
        Task::MmluMedical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Pubmedqa => "pubmedqa",
            Task::Medmcqa => "medmcqa",
            Task::Medqa => "medqa",
            Task::Medqa4 => "medqa4",
            Task::MmluMedical => "mmlu-medical",
        }
    }

    pub fn from_name(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Number of options a question of this task has (MMLU and MedMCQA: 4).
    pub fn n_options(self) -> usize {
        match self {
            Task::Pubmedqa => 3,
            Task::Medqa => 5,
            _ => 4,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One benchmark question with its options and gold answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within the task: PMID, MedMCQA id, MedQA id or `file:line`, MMLU `subject:row`.
    pub id: String,
    pub task: Task,
    /// MMLU subject; MedMCQA `subject_name`.
    pub subject: Option<String>,
    pub question: String,
    /// (letter or label, text): `("A", "...")`, PubMedQA `("yes", "yes")`.
    pub options: Vec<(String, String)>,
    /// Index into `options`.
    pub answer: usize,
    /// PubMedQA: the abstract's CONTEXTS joined by newlines.
    pub context: Option<String>,
    /// MedMCQA `exp`, PubMedQA `LONG_ANSWER`: the reasoning for chain-of-thought demonstrations.
    pub explanation: Option<String>,
}

/// Whether MedMCQA's `cop` counts from 0 (Hugging Face copy) or 1 (raw release).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopBase {
    Zero,
    One,
}

/// A malformed or unreadable benchmark file, naming the file, the line or record, and the field.
#[derive(Debug, thiserror::Error)]
pub struct DataError {
    pub file: PathBuf,
    pub loc: Option<Loc>,
    pub field: Option<String>,
    pub message: String,
}

impl DataError {
    pub fn at(
        file: &Path,
        loc: Option<Loc>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> DataError {
        DataError {
            file: file.to_path_buf(),
            loc,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.loc {
            write!(f, ", {loc}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// No file of the task under `--data`: with `--task all` such a task is skipped, not fatal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoFiles(pub String);

/// What reading a task needs beyond the path.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// MedMCQA files whose `cop` values cannot tell the base themselves.
    pub cop_base: Option<CopBase>,
    /// Do not read train/dev files (a 0-shot run needs no demonstrations).
    pub skip_pool: bool,
}

/// A task's evaluation questions, its few-shot pool, and where they came from.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub task: Task,
    /// The evaluation split, in file order (MMLU: subjects in name order).
    pub items: Vec<Item>,
    /// Demonstrations are drawn from here, never the evaluated item itself (matched by id).
    pub fewshot_pool: Vec<Item>,
    /// Where the pool came from, for the report.
    pub fewshot_source: String,
    pub files: Vec<PathBuf>,
    /// The detected layouts, e.g. "MedMCQA raw release (cop 1-based; detected: some cop is 4)".
    pub layouts: Vec<String>,
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------- layout detection

/// The layout of one file, told from its content rather than its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    PubmedqaOriPqal,
    PubmedqaGroundTruth,
    Medmcqa,
    MedqaJsonl,
    MedqaBigbio,
    MedqaHf,
    MmluCsv,
    MmluCais,
    MmluLukaemon,
}

impl Format {
    fn describe(self) -> &'static str {
        match self {
            Format::PubmedqaOriPqal => "PubMedQA ori_pqal.json",
            Format::PubmedqaGroundTruth => "PubMedQA test_ground_truth.json",
            Format::Medmcqa => "MedMCQA",
            Format::MedqaJsonl => "MedQA jsonl (options object, answer_idx)",
            Format::MedqaBigbio => "MedQA bigbio (options list of key/value)",
            Format::MedqaHf => "MedQA -hf (sent1, ending0.., label)",
            Format::MmluCsv => "MMLU headerless CSV",
            Format::MmluCais => "MMLU cais/mmlu (question, subject, choices, answer)",
            Format::MmluLukaemon => "MMLU lukaemon/mmlu (input, A-D, target)",
        }
    }

    fn serves(self, task: Task) -> bool {
        match self {
            Format::PubmedqaOriPqal | Format::PubmedqaGroundTruth => task == Task::Pubmedqa,
            Format::Medmcqa => task == Task::Medmcqa,
            Format::MedqaJsonl | Format::MedqaBigbio | Format::MedqaHf => {
                matches!(task, Task::Medqa | Task::Medqa4)
            }
            Format::MmluCsv | Format::MmluCais | Format::MmluLukaemon => task == Task::MmluMedical,
        }
    }

    fn task_family(self) -> &'static str {
        match self {
            Format::PubmedqaOriPqal | Format::PubmedqaGroundTruth => "pubmedqa",
            Format::Medmcqa => "medmcqa",
            Format::MedqaJsonl | Format::MedqaBigbio | Format::MedqaHf => "medqa/medqa4",
            _ => "mmlu-medical",
        }
    }
}

/// Reads just enough of `path` to tell its layout; `Ok(None)` for files of no known layout.
pub fn detect(path: &Path) -> Result<Option<(Format, Option<usize>)>, DataError> {
    let name = file_name_lower(path);
    if name.ends_with(".csv") {
        return Ok(Some((Format::MmluCsv, Some(4))));
    }
    if !(name.ends_with(".json") || name.ends_with(".jsonl")) {
        return Ok(None);
    }
    let Some(first) = first_json_record(path)? else {
        return Ok(None);
    };
    let Value::Object(obj) = &first else {
        return Ok(None);
    };
    let has = |k: &str| obj.contains_key(k);
    // Whole-file objects keyed by PMID.
    if let Some(v) = obj.values().next() {
        if v.get("QUESTION").is_some() {
            return Ok(Some((Format::PubmedqaOriPqal, Some(3))));
        }
        if v.as_str()
            .is_some_and(|s| matches!(s, "yes" | "no" | "maybe"))
            && obj.keys().all(|k| k.chars().all(|c| c.is_ascii_digit()))
        {
            return Ok(Some((Format::PubmedqaGroundTruth, Some(3))));
        }
    }
    if has("opa") && has("opb") {
        return Ok(Some((Format::Medmcqa, Some(4))));
    }
    if has("sent1") && has("ending0") {
        let n = (0..10).take_while(|i| has(&format!("ending{i}"))).count();
        return Ok(Some((Format::MedqaHf, Some(n))));
    }
    match obj.get("options") {
        Some(Value::Object(o)) => return Ok(Some((Format::MedqaJsonl, Some(o.len())))),
        Some(Value::Array(a)) => return Ok(Some((Format::MedqaBigbio, Some(a.len())))),
        _ => {}
    }
    if has("choices") && has("question") && has("answer") {
        let n = obj.get("choices").and_then(Value::as_array).map(Vec::len);
        return Ok(Some((Format::MmluCais, n)));
    }
    if has("input") && has("target") && has("A") {
        return Ok(Some((Format::MmluLukaemon, Some(4))));
    }
    Ok(None)
}

// ---------------------------------------------------------------- finding a task's files

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Train,
    Dev,
    Test,
}

/// The split a file name says it holds: `train`, `dev`/`val`/`validation`, `test`.
fn split_of(path: &Path) -> Option<Split> {
    let name = file_name_lower(path);
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    if words.contains(&"train") {
        Some(Split::Train)
    } else if words
        .iter()
        .any(|w| matches!(*w, "dev" | "val" | "valid" | "validation"))
    {
        Some(Split::Dev)
    } else if words.contains(&"test") {
        Some(Split::Test)
    } else {
        None
    }
}

/// MMLU subject from a file name: `anatomy_test.csv` -> anatomy; `anatomy/test.jsonl` -> anatomy.
fn mmlu_subject(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem = stem.trim_end_matches(".json").to_string();
    let mut subject = stem.as_str();
    for suffix in [
        "_test",
        "_dev",
        "_val",
        "_validation",
        "_train",
        "-test",
        "-dev",
        "-validation",
        "-train",
    ] {
        if let Some(s) = subject.strip_suffix(suffix) {
            subject = s;
            break;
        }
    }
    if subject.is_empty() || matches!(subject, "test" | "dev" | "val" | "validation" | "train") {
        return path
            .parent()
            .and_then(Path::file_name)
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| subject.to_string());
    }
    subject.to_string()
}

struct Found {
    path: PathBuf,
    format: Format,
    n_options: Option<usize>,
    split: Option<Split>,
}

/// Every benchmark file under `dir` (4 levels deep), with layouts detected, in path order.
/// Files that cannot be read are listed separately so a task with no files can say why.
fn scan(dir: &Path) -> (Vec<Found>, Vec<DataError>) {
    let mut paths = Vec::new();
    walk(dir, 0, &mut paths);
    paths.sort();
    let (mut found, mut unreadable) = (Vec::new(), Vec::new());
    for path in paths {
        match detect(&path) {
            Ok(Some((format, n_options))) => {
                let split = split_of(&path);
                found.push(Found {
                    path,
                    format,
                    n_options,
                    split,
                });
            }
            Ok(None) => {}
            Err(e) => unreadable.push(e),
        }
    }
    (found, unreadable)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if depth < 4 {
                walk(&path, depth + 1, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// Loads `task` from `data`: a file of the task (its few-shot pool is looked for beside it) or
/// a folder searched for the task's files by content and name.
pub fn load_task(task: Task, data: &Path, opts: &LoadOptions) -> anyhow::Result<Dataset> {
    if !data.exists() {
        anyhow::bail!("--data {}: no such file or folder", data.display());
    }
    let (found, unreadable, explicit) = if data.is_file() {
        let Some((format, n_options)) = detect(data)? else {
            anyhow::bail!(
                "{}: not a benchmark file of any known layout (see specs/eval.md: PubMedQA ori_pqal.json, MedMCQA jsonl, MedQA jsonl/bigbio/-hf, MMLU csv/cais/lukaemon)",
                data.display()
            );
        };
        if !format.serves(task) {
            // NoFiles, so that `--task all` on one file runs just that file's task.
            return Err(NoFiles(format!(
                "{} looks like {} ({}), not {task}",
                data.display(),
                format.task_family(),
                format.describe()
            ))
            .into());
        }
        // Siblings give the few-shot pool (train/dev files) and PubMedQA's other half.
        let dir = data.parent().unwrap_or(Path::new("."));
        let (mut siblings, _) = scan_flat(dir);
        siblings.retain(|f| f.path != data);
        let mut all = vec![Found {
            path: data.to_path_buf(),
            format,
            n_options,
            split: split_of(data),
        }];
        all.extend(siblings);
        (all, Vec::new(), Some(data.to_path_buf()))
    } else {
        let (found, unreadable) = scan(data);
        (found, unreadable, None)
    };
    let mine: Vec<Found> = found
        .into_iter()
        .filter(|f| f.format.serves(task))
        .collect();
    let result = match task {
        Task::Pubmedqa => load_pubmedqa(&mine, explicit.as_deref()),
        Task::Medmcqa => load_medmcqa(&mine, explicit.as_deref(), opts),
        Task::Medqa | Task::Medqa4 => load_medqa(task, &mine, explicit.as_deref(), opts),
        Task::MmluMedical => load_mmlu(&mine, explicit.as_deref(), opts),
    };
    match result? {
        Some(ds) => Ok(dedupe_ids(ds)),
        None => {
            let mut msg = format!("no {task} files found under {}", data.display());
            if !unreadable.is_empty() {
                let list: Vec<String> = unreadable.iter().map(|e| e.to_string()).collect();
                msg.push_str(&format!(" (could not read: {})", list.join("; ")));
            }
            Err(NoFiles(msg).into())
        }
    }
}

/// The files directly in `dir` (no recursion), for a single file's siblings.
fn scan_flat(dir: &Path) -> (Vec<Found>, Vec<DataError>) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    let mut found = Vec::new();
    for path in paths {
        // A malformed sibling must not stop the explicitly named file from being evaluated.
        if let Ok(Some((format, n_options))) = detect(&path) {
            let split = split_of(&path);
            found.push(Found {
                path,
                format,
                n_options,
                split,
            });
        }
    }
    (found, Vec::new())
}

fn load_pubmedqa(files: &[Found], explicit: Option<&Path>) -> anyhow::Result<Option<Dataset>> {
    let ori = files.iter().find(|f| f.format == Format::PubmedqaOriPqal);
    let Some(ori) = ori else {
        if let Some(p) = explicit {
            anyhow::bail!(
                "{}: a PubMedQA ground-truth file needs ori_pqal.json beside it",
                p.display()
            );
        }
        return Ok(None);
    };
    // The ground truth that belongs to this ori_pqal.json sits in the same folder.
    let truth = files
        .iter()
        .find(|f| f.format == Format::PubmedqaGroundTruth && f.path.parent() == ori.path.parent());
    let (items, pool) = readers::pubmedqa(&ori.path, truth.map(|t| t.path.as_path()))?;
    let mut ds = Dataset {
        task: Task::Pubmedqa,
        items,
        fewshot_pool: pool,
        fewshot_source: String::new(),
        files: vec![ori.path.clone()],
        layouts: vec!["PubMedQA ori_pqal.json".into()],
        notes: Vec::new(),
    };
    match truth {
        Some(t) => {
            ds.files.push(t.path.clone());
            ds.layouts[0].push_str(" + test_ground_truth.json");
            ds.fewshot_source = "PubMedQA questions not in test_ground_truth.json".into();
        }
        None => {
            ds.notes.push(format!(
                "no test_ground_truth.json beside {}: evaluating all {} questions",
                ori.path.display(),
                ds.items.len()
            ));
            ds.fewshot_source =
                "the evaluated questions (each item excluded from its own shots)".into();
        }
    }
    Ok(Some(ds))
}

/// Picks the evaluation files: the explicitly named file, else the preferred split present.
fn pick_eval<'a>(
    files: &'a [&'a Found],
    explicit: Option<&Path>,
    prefer: &[Option<Split>],
) -> Vec<&'a Found> {
    if let Some(p) = explicit {
        return files.iter().copied().filter(|f| f.path == p).collect();
    }
    for split in prefer {
        let chosen: Vec<&Found> = files
            .iter()
            .copied()
            .filter(|f| f.split == *split)
            .collect();
        if !chosen.is_empty() {
            return chosen;
        }
    }
    Vec::new()
}

fn load_medmcqa(
    files: &[Found],
    explicit: Option<&Path>,
    opts: &LoadOptions,
) -> anyhow::Result<Option<Dataset>> {
    let refs: Vec<&Found> = files.iter().collect();
    // The raw test split has no answers, so the dev (validation) split is MedMCQA's test set.
    let eval = pick_eval(
        &refs,
        explicit,
        &[Some(Split::Dev), None, Some(Split::Test)],
    );
    if eval.is_empty() {
        return Ok(None);
    }
    let mut ds = empty(Task::Medmcqa);
    for f in &eval {
        let (items, base, how) = readers::medmcqa(&f.path, opts.cop_base)?;
        ds.layouts.push(match base {
            CopBase::One => format!("MedMCQA raw release (cop 1-based; {how})"),
            CopBase::Zero => format!("MedMCQA Hugging Face copy (cop 0-based; {how})"),
        });
        ds.items.extend(items);
        ds.files.push(f.path.clone());
    }
    let train: Vec<&Found> = refs
        .iter()
        .copied()
        .filter(|f| f.split == Some(Split::Train) && !eval.iter().any(|e| e.path == f.path))
        .filter(|_| !opts.skip_pool)
        .collect();
    for f in &train {
        let (items, _, _) = readers::medmcqa(&f.path, opts.cop_base)?;
        ds.fewshot_pool.extend(items);
    }
    set_pool_source(&mut ds, &train, opts);
    Ok(Some(ds))
}

fn load_medqa(
    task: Task,
    files: &[Found],
    explicit: Option<&Path>,
    opts: &LoadOptions,
) -> anyhow::Result<Option<Dataset>> {
    let want = task.n_options();
    let fits = |f: &&Found| f.n_options == Some(want);
    let refs: Vec<&Found> = files.iter().filter(fits).collect();
    if let Some(p) = explicit {
        if let Some(f) = files.iter().find(|f| f.path == p) {
            if f.n_options != Some(want) {
                let other = if want == 4 { "medqa" } else { "medqa4" };
                anyhow::bail!(
                    "{} has {} options per question; --task {task} needs {want} (use --task {other})",
                    p.display(),
                    f.n_options.map(|n| n.to_string()).unwrap_or_else(|| "an unknown number of".into()),
                );
            }
        }
    }
    let mut eval = pick_eval(&refs, explicit, &[Some(Split::Test), None]);
    // The MedQA release holds US (English), Mainland and Taiwan questions; Meditron and
    // lm-eval evaluate the US set, so in a folder with several regions only US is read.
    let us = |f: &&Found| f.path.components().any(|c| c.as_os_str() == "US");
    let mut other_regions = Vec::new();
    if eval.len() > 1 && eval.iter().any(us) {
        other_regions = eval
            .iter()
            .filter(|f| !us(f))
            .map(|f| f.path.clone())
            .collect();
        eval.retain(us);
    }
    if eval.is_empty() {
        return Ok(None);
    }
    let mut ds = empty(task);
    for f in &eval {
        ds.items.extend(readers::medqa(&f.path, task)?);
        ds.layouts.push(f.format.describe().to_string());
        ds.files.push(f.path.clone());
    }
    if !other_regions.is_empty() {
        ds.notes.push(format!(
            "not read (not the US set): {}",
            records::display(&other_regions)
        ));
    }
    let train: Vec<&Found> = refs
        .iter()
        .copied()
        .filter(|f| f.split == Some(Split::Train))
        .filter(|f| other_regions.is_empty() || us(f))
        .filter(|_| !opts.skip_pool)
        .collect();
    for f in &train {
        ds.fewshot_pool.extend(readers::medqa(&f.path, task)?);
    }
    set_pool_source(&mut ds, &train, opts);
    Ok(Some(ds))
}

fn load_mmlu(
    files: &[Found],
    explicit: Option<&Path>,
    opts: &LoadOptions,
) -> anyhow::Result<Option<Dataset>> {
    let refs: Vec<&Found> = files.iter().collect();
    let eval = pick_eval(&refs, explicit, &[Some(Split::Test), None]);
    if eval.is_empty() {
        return Ok(None);
    }
    let read = |f: &Found| -> Result<Vec<Item>, DataError> {
        let subject = mmlu_subject(&f.path);
        match f.format {
            Format::MmluCsv => readers::mmlu_csv(&f.path, &subject),
            Format::MmluCais => readers::mmlu_cais(&f.path, &subject),
            _ => readers::mmlu_lukaemon(&f.path, &subject),
        }
    };
    let mut ds = empty(Task::MmluMedical);
    let mut all = Vec::new();
    for f in &eval {
        // In a folder, only the medical subjects' files are read at all.
        if explicit.is_none()
            && f.format != Format::MmluCais
            && !MMLU_MEDICAL.contains(&mmlu_subject(&f.path).as_str())
        {
            continue;
        }
        all.extend(read(f)?);
        if !ds.layouts.iter().any(|l| l == f.format.describe()) {
            ds.layouts.push(f.format.describe().to_string());
        }
        ds.files.push(f.path.clone());
    }
    let medical: Vec<Item> = all
        .iter()
        .filter(|it| {
            it.subject
                .as_deref()
                .is_some_and(|s| MMLU_MEDICAL.contains(&s))
        })
        .cloned()
        .collect();
    ds.items = if medical.is_empty() && !all.is_empty() {
        ds.notes.push(format!(
            "no MMLU-Medical subject in {}: evaluating all {} questions of its subjects",
            records::display(&ds.files),
            all.len()
        ));
        all
    } else {
        medical
    };
    if ds.items.is_empty() {
        return Ok(None);
    }
    // Stable by subject name, keeping file order within a subject.
    ds.items.sort_by(|a, b| a.subject.cmp(&b.subject));
    let subjects: Vec<String> = {
        let mut s: Vec<String> = ds.items.iter().filter_map(|i| i.subject.clone()).collect();
        s.dedup();
        s
    };
    // lm-eval draws MMLU shots from the dev split; lukaemon calls it train, some copies val.
    let pool_files: Vec<&Found> = refs
        .iter()
        .copied()
        .filter(|f| {
            matches!(f.split, Some(Split::Dev) | Some(Split::Train)) && !ds.files.contains(&f.path)
        })
        .filter(|f| f.format == Format::MmluCais || subjects.contains(&mmlu_subject(&f.path)))
        .filter(|_| !opts.skip_pool)
        .collect();
    for f in &pool_files {
        ds.fewshot_pool.extend(
            read(f)?
                .into_iter()
                .filter(|it| it.subject.as_ref().is_some_and(|s| subjects.contains(s))),
        );
    }
    set_pool_source(&mut ds, &pool_files, opts);
    Ok(Some(ds))
}

fn empty(task: Task) -> Dataset {
    Dataset {
        task,
        items: Vec::new(),
        fewshot_pool: Vec::new(),
        fewshot_source: String::new(),
        files: Vec::new(),
        layouts: Vec::new(),
        notes: Vec::new(),
    }
}

fn set_pool_source(ds: &mut Dataset, pool_files: &[&Found], opts: &LoadOptions) {
    if opts.skip_pool {
        ds.fewshot_source = "not read (no shots)".into();
    } else if ds.fewshot_pool.is_empty() {
        ds.fewshot_pool = ds.items.clone();
        ds.fewshot_source =
            "the evaluated questions (each item excluded from its own shots)".into();
    } else {
        let paths: Vec<PathBuf> = pool_files.iter().map(|f| f.path.clone()).collect();
        ds.fewshot_source = records::display(&paths);
    }
}

/// Makes ids unique within the task (resume files and reports are keyed by them).
fn dedupe_ids(mut ds: Dataset) -> Dataset {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut dupes = 0;
    for item in &mut ds.items {
        let n = seen.entry(item.id.clone()).or_default();
        if *n > 0 {
            item.id = format!("{}#{}", item.id, n);
            dupes += 1;
        }
        *n += 1;
    }
    if dupes > 0 {
        ds.notes
            .push(format!("{dupes} repeated ids renamed with a #n suffix"));
    }
    ds
}

#[cfg(test)]
mod tests;
