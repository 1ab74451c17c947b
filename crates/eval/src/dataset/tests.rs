//! Reader tests on the real data, the invented fixtures in testdata/ and malformed files.

use super::*;
use std::collections::BTreeMap;

fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.is_dir(),
        "the benchmark data is expected at {} (shared/data beside the repository)",
        p.display()
    );
    p
}

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

fn load(task: Task, path: &Path) -> Dataset {
    load_task(task, path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn err(task: Task, path: &Path) -> String {
    match load_task(task, path, &LoadOptions::default()) {
        Ok(ds) => panic!("expected an error, read {} items", ds.items.len()),
        Err(e) => format!("{e:#}"),
    }
}

fn answer_counts(items: &[Item]) -> BTreeMap<usize, usize> {
    let mut m = BTreeMap::new();
    for it in items {
        *m.entry(it.answer).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------- real data (../shared/data)

#[test]
fn real_pubmedqa_test_split_is_the_ground_truth_pmids() {
    let ds = load(Task::Pubmedqa, &shared_data());
    assert_eq!(ds.items.len(), 500);
    assert_eq!(ds.fewshot_pool.len(), 500);
    assert_eq!(ds.files.len(), 2);
    assert_eq!(
        ds.layouts,
        ["PubMedQA ori_pqal.json + test_ground_truth.json"]
    );
    // File order of ori_pqal.json, not sorted by PMID.
    let ids: Vec<&str> = ds.items.iter().take(3).map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["21645374", "16418930", "9488747"]);
    assert_eq!(
        answer_counts(&ds.items),
        BTreeMap::from([(0, 276), (1, 169), (2, 55)])
    );
    let first = &ds.items[0];
    assert!(first.question.starts_with("Do mitochondria play a role"));
    assert!(first
        .context
        .as_deref()
        .unwrap()
        .starts_with("Programmed cell death (PCD) is the regulated death"));
    assert!(first
        .context
        .as_deref()
        .unwrap()
        .contains(" in plants.\nThe following paper elucidates"));
    assert!(ds
        .items
        .iter()
        .all(|it| !ds.fewshot_pool.iter().any(|p| p.id == it.id)));
    // The same folder named one level down, or through either file, gives the same split.
    let via_file = load(
        Task::Pubmedqa,
        &shared_data().join("pubmedqa/test_ground_truth.json"),
    );
    assert_eq!(via_file.items, ds.items);
}

#[test]
fn real_medmcqa_dev_is_raw_one_based() {
    let ds = load(Task::Medmcqa, &shared_data());
    assert_eq!(ds.items.len(), 4183);
    assert_eq!(
        ds.layouts,
        ["MedMCQA raw release (cop 1-based; detected: some cop is 4)"]
    );
    assert_eq!(
        answer_counts(&ds.items),
        BTreeMap::from([(0, 1348), (1, 1085), (2, 925), (3, 825)])
    );
    let first = &ds.items[0];
    assert_eq!(first.id, "45258d3d-b974-44dd-a161-c3fccbdadd88");
    assert_eq!(first.answer, 0);
    assert_eq!(first.options[3].0, "D");
    assert_eq!(first.subject.as_deref(), Some("Physiology"));
    assert_eq!(first.explanation, None);
    // No train file: shots come from the evaluated set itself.
    assert!(ds.fewshot_source.starts_with("the evaluated questions"));
}

#[test]
fn real_mmlu_medical_subjects_present() {
    let ds = load(Task::MmluMedical, &shared_data());
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for it in &ds.items {
        *per.entry(it.subject.as_deref().unwrap()).or_default() += 1;
    }
    assert_eq!(
        per,
        BTreeMap::from([
            ("anatomy", 135),
            ("clinical_knowledge", 265),
            ("college_biology", 144),
            ("college_medicine", 173),
            ("medical_genetics", 100),
            ("professional_medicine", 272),
        ])
    );
    let anatomy: Vec<Item> = ds
        .items
        .iter()
        .filter(|i| i.subject.as_deref() == Some("anatomy"))
        .cloned()
        .collect();
    assert_eq!(
        answer_counts(&anatomy),
        BTreeMap::from([(0, 25), (1, 34), (2, 45), (3, 31)])
    );
    assert_eq!(ds.items[0].id, "anatomy:0");
    assert_eq!(
        ds.items[1].question,
        "A \"dished face\" profile is often associated with"
    );
    assert_eq!(ds.layouts, ["MMLU headerless CSV"]);
}

#[test]
fn real_data_has_no_medqa() {
    let e = load_task(Task::Medqa, &shared_data(), &LoadOptions::default()).unwrap_err();
    assert!(e.downcast_ref::<NoFiles>().is_some(), "{e:#}");
    assert!(e.to_string().starts_with("no medqa files found under"));
}

// ---------------------------------------------------------------- invented fixtures, other layouts

#[test]
fn medmcqa_hf_copy_is_zero_based_with_train_pool() {
    let ds = load(Task::Medmcqa, &testdata("medmcqa_hf"));
    assert_eq!(
        ds.layouts,
        ["MedMCQA Hugging Face copy (cop 0-based; detected: some cop is 0)"]
    );
    let answers: Vec<usize> = ds.items.iter().map(|i| i.answer).collect();
    assert_eq!(answers, [0, 1, 2]);
    assert_eq!(
        ds.items[2].explanation, None,
        "an empty exp is no explanation"
    );
    assert_eq!(ds.fewshot_pool.len(), 3);
    assert!(ds.fewshot_source.ends_with("train.jsonl"));
    let opts = LoadOptions {
        skip_pool: true,
        ..LoadOptions::default()
    };
    let no_pool = load_task(Task::Medmcqa, &testdata("medmcqa_hf"), &opts).unwrap();
    assert!(no_pool.fewshot_pool.is_empty());
    assert_eq!(no_pool.fewshot_source, "not read (no shots)");
    assert_eq!(ds.fewshot_pool[1].answer, 3);
}

#[test]
fn medqa_five_and_four_options_from_one_folder() {
    let ds = load(Task::Medqa, &testdata("medqa"));
    assert_eq!(ds.items.len(), 3);
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [1, 0, 4]
    );
    assert_eq!(ds.items[0].options.len(), 5);
    assert_eq!(ds.items[0].id, "test:1");
    assert_eq!(ds.fewshot_pool.len(), 2);
    assert_eq!(ds.layouts, ["MedQA jsonl (options object, answer_idx)"]);

    let ds4 = load(Task::Medqa4, &testdata("medqa"));
    assert_eq!(ds4.items.len(), 2);
    assert_eq!(
        ds4.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [0, 2]
    );
    assert!(ds4.files[0].ends_with("4_options/phrases_no_exclude_test.jsonl"));
}

#[test]
fn medqa_folder_with_regions_reads_the_us_set() {
    let dir = tempfile::tempdir().unwrap();
    let base = testdata("medqa/US");
    for region in ["US", "Mainland"] {
        std::fs::create_dir_all(dir.path().join(region)).unwrap();
        for f in ["test.jsonl", "train.jsonl"] {
            std::fs::copy(base.join(f), dir.path().join(region).join(f)).unwrap();
        }
    }
    let ds = load(Task::Medqa, dir.path());
    assert_eq!(ds.items.len(), 3);
    assert_eq!(ds.fewshot_pool.len(), 2);
    assert!(ds.files[0].ends_with("US/test.jsonl"));
    assert!(
        ds.notes[0].starts_with("not read (not the US set): ")
            && ds.notes[0].ends_with("Mainland/test.jsonl"),
        "{:?}",
        ds.notes
    );
}

#[test]
fn medqa_bigbio_and_hf_layouts() {
    let ds = load(Task::Medqa, &testdata("medqa_bigbio/test.jsonl"));
    assert_eq!(ds.layouts, ["MedQA bigbio (options list of key/value)"]);
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [3, 1]
    );
    assert_eq!(
        ds.items[0].options[3],
        ("D".to_string(), "Facial nerve".to_string())
    );

    let hf = load(Task::Medqa4, &testdata("medqa_hf/test.json"));
    assert_eq!(hf.layouts, ["MedQA -hf (sent1, ending0.., label)"]);
    assert_eq!(
        hf.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [1, 0, 2]
    );
    assert_eq!(hf.items[0].id, "hf-0");
    assert_eq!(hf.items[2].options[2].1, "Intramuscular epinephrine");

    let e = err(Task::Medqa, &testdata("medqa_hf/test.json"));
    assert!(
        e.contains("has 4 options per question; --task medqa needs 5 (use --task medqa4)"),
        "{e}"
    );
}

#[test]
fn mmlu_cais_keeps_medical_subjects() {
    let ds = load(Task::MmluMedical, &testdata("mmlu_cais"));
    let subjects: Vec<&str> = ds
        .items
        .iter()
        .map(|i| i.subject.as_deref().unwrap())
        .collect();
    assert_eq!(subjects, ["anatomy", "anatomy", "virology"]);
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    assert_eq!(ds.items[1].id, "anatomy:1");
    assert_eq!(ds.items[2].options[1].1, "RNA");
}

#[test]
fn mmlu_lukaemon_subject_from_folder_and_train_pool() {
    let ds = load(Task::MmluMedical, &testdata("mmlu_lukaemon"));
    assert_eq!(ds.items.len(), 2);
    assert!(ds
        .items
        .iter()
        .all(|i| i.subject.as_deref() == Some("nutrition")));
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [2, 0]
    );
    assert_eq!(ds.fewshot_pool.len(), 1);
    assert_eq!(ds.fewshot_pool[0].answer, 1);
    assert_eq!(ds.layouts, ["MMLU lukaemon/mmlu (input, A-D, target)"]);
}

#[test]
fn mmlu_csv_quotes_dev_pool_and_non_medical_subjects() {
    let ds = load(Task::MmluMedical, &testdata("mmlu_csv"));
    assert_eq!(ds.items.len(), 3, "astronomy is not MMLU-Medical");
    assert_eq!(
        ds.items[1].question,
        "A virus with a \"lipid envelope\" is usually inactivated by"
    );
    assert_eq!(ds.items[1].options[3].1, "water, at room temperature");
    assert_eq!(ds.fewshot_pool.len(), 1);
    assert!(ds.fewshot_source.ends_with("virology_dev.csv"));
    // Named explicitly, a non-medical subject is evaluated, with a note.
    let astro = load(Task::MmluMedical, &testdata("mmlu_csv/astronomy_test.csv"));
    assert_eq!(astro.items.len(), 1);
    assert!(
        astro.notes[0].starts_with("no MMLU-Medical subject in"),
        "{:?}",
        astro.notes
    );
}

#[test]
fn pubmedqa_mini_keeps_file_order() {
    let ds = load(Task::Pubmedqa, &testdata("pubmedqa_mini"));
    assert_eq!(
        ds.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["90000003", "90000002"]
    );
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(
        ds.fewshot_pool
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["90000001", "90000004"]
    );
    assert_eq!(
        ds.items[0].explanation.as_deref(),
        Some("Daily walking lowered resting blood pressure.")
    );
}

#[test]
fn a_file_of_another_task_is_named() {
    let e = load_task(
        Task::Pubmedqa,
        &testdata("medmcqa_hf/validation.jsonl"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("looks like medmcqa (MedMCQA), not pubmedqa"),
        "{e}"
    );
    assert!(
        e.downcast_ref::<NoFiles>().is_some(),
        "so --task all runs the file's own task"
    );
    let e = err(Task::Pubmedqa, Path::new("/no/such/place"));
    assert!(e.contains("no such file or folder"), "{e}");
}

// ---------------------------------------------------------------- malformed records

/// Writes `content` as `name` in a fresh folder and returns the file's path (and the folder).
fn write(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

const MCQ_OK: &str =
    r#"{"id":"x1","question":"Q one?","opa":"a","opb":"b","opc":"c","opd":"d","cop":4}"#;

fn expect(task: Task, name: &str, content: &str, wanted: &str) {
    let (_dir, path) = write(name, content);
    let e = err(task, &path);
    let want = format!("{}, {wanted}", path.display());
    assert!(e.contains(&want), "\n got: {e}\nwant: {want}");
}

#[test]
fn malformed_medmcqa() {
    let missing = r#"{"id":"x2","question":"Q two?","opa":"a","opb":"b","opd":"d","cop":2}"#;
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n{missing}\n"),
        "line 2, field `opc`: missing",
    );
    let bad_cop = r#"{"id":"x2","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":7}"#;
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n{bad_cop}\n"),
        "line 2, field `cop`: expected 0..3",
    );
    let text_cop =
        r#"{"id":"x2","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":"second"}"#;
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n{text_cop}\n"),
        "line 2, field `cop`: expected an integer, found \"second\"",
    );
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n\n{{\"id\": oops}}\n"),
        "line 3: invalid JSON",
    );
    let zero = r#"{"id":"x3","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":0}"#;
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n{zero}\n"),
        "line 1, field `cop`: cop is 4 here but 0 at line 2",
    );
    let opt_num =
        r#"{"id":"x2","question":"Q?","opa":["a"],"opb":"b","opc":"c","opd":"d","cop":1}"#;
    expect(
        Task::Medmcqa,
        "dev.jsonl",
        &format!("{MCQ_OK}\n{opt_num}\n"),
        "line 2, field `opa`: expected a string, found an array",
    );
}

#[test]
fn medmcqa_ambiguous_base_needs_the_flag() {
    let one = r#"{"id":"y1","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":1}"#;
    let three = r#"{"id":"y2","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":3}"#;
    let (_dir, path) = write("val.jsonl", &format!("{one}\n{three}\n"));
    let e = err(Task::Medmcqa, &path);
    assert!(
        e.contains("field `cop`: every cop is 1, 2 or 3") && e.contains("--cop-base"),
        "{e}"
    );
    let opts = LoadOptions {
        cop_base: Some(CopBase::One),
        ..LoadOptions::default()
    };
    let ds = load_task(Task::Medmcqa, &path, &opts).unwrap();
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(
        ds.layouts,
        ["MedMCQA raw release (cop 1-based; from --cop-base)"]
    );
    let opts = LoadOptions {
        cop_base: Some(CopBase::Zero),
        ..LoadOptions::default()
    };
    let ds = load_task(Task::Medmcqa, &path, &opts).unwrap();
    assert_eq!(
        ds.items.iter().map(|i| i.answer).collect::<Vec<_>>(),
        [1, 3]
    );
    // A flag contradicting the data is refused.
    let (_d2, p2) = write("val.jsonl", &format!("{MCQ_OK}\n"));
    let e = load_task(Task::Medmcqa, &p2, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 1, field `cop`: cop is 4, which --cop-base 0 does not allow"),
        "{e}"
    );
}

#[test]
fn malformed_mmlu() {
    expect(
        Task::MmluMedical,
        "anatomy_test.csv",
        "Q1?,a,b,c,d,A\nQ2?,a,b,c,B\n",
        "line 2: expected 6 columns",
    );
    expect(
        Task::MmluMedical,
        "anatomy_test.csv",
        "Q1?,a,b,c,d,A\nQ2?,a,b,c,d,F\n",
        "line 2, field `answer`: expected A, B, C or D",
    );
    // An unterminated quote swallows the rest of the file into one field.
    expect(
        Task::MmluMedical,
        "anatomy_test.csv",
        "\"Q1?,a,b,c,d,A\nQ2?,a,b,c,d,B\n",
        "line 1: expected 6 columns (question, A, B, C, D, answer), found 1",
    );
    let cais = r#"{"question":"Q?","subject":"anatomy","choices":["a","b","c","d"],"answer":9}"#;
    expect(
        Task::MmluMedical,
        "test.jsonl",
        &format!("{cais}\n"),
        "line 1, field `answer`: expected an index 0..3",
    );
    let cais = r#"{"question":"Q?","subject":"anatomy","choices":"a b c d","answer":1}"#;
    expect(
        Task::MmluMedical,
        "test.jsonl",
        &format!("{cais}\n"),
        "line 1, field `choices`: expected a list of strings",
    );
    let luk_ok = r#"{"input":"Q?","A":"a","B":"b","C":"c","D":"d","target":"A"}"#;
    let luk_bad = r#"{"input":"Q?","A":"a","B":"b","C":"c","D":"d"}"#;
    expect(
        Task::MmluMedical,
        "virology_test.jsonl",
        &format!("{luk_ok}\n{luk_bad}\n"),
        "line 2, field `target`: missing",
    );
}

#[test]
fn malformed_medqa() {
    let ok = r#"{"question":"Q?","answer":"x","options":{"A":"x","B":"y","C":"z","D":"w","E":"v"},"answer_idx":"A"}"#;
    let bad_idx = r#"{"question":"Q?","answer":"x","options":{"A":"x","B":"y","C":"z","D":"w","E":"v"},"answer_idx":"Z"}"#;
    expect(
        Task::Medqa,
        "test.jsonl",
        &format!("{ok}\n{bad_idx}\n"),
        "line 2, field `answer_idx`: \"Z\" is not one of the option letters",
    );
    let bad_opts = r#"{"question":"Q?","answer":"x","options":{"A":"x","B":"y","C":"z","D":"w","E":7},"answer_idx":"A"}"#;
    expect(
        Task::Medqa,
        "test.jsonl",
        &format!("{ok}\n{bad_opts}\n"),
        "line 2, field `options`: expected an object of letter -> text",
    );
    let no_answer = r#"{"question":"Q?","options":{"A":"x","B":"y","C":"z","D":"w","E":"v"}}"#;
    expect(
        Task::Medqa,
        "test.jsonl",
        &format!("{ok}\n{no_answer}\n"),
        "line 2, field `answer_idx`: missing",
    );
    let text_only = r#"{"question":"Q?","answer":"nowhere","options":[{"key":"A","value":"x"},{"key":"B","value":"y"},{"key":"C","value":"z"},{"key":"D","value":"w"},{"key":"E","value":"v"}]}"#;
    expect(
        Task::Medqa,
        "test.jsonl",
        &format!("{text_only}\n"),
        "line 1, field `answer`: \"nowhere\" matches no option",
    );
    let hf =
        r#"[{"sent1":"Q?","ending0":"a","ending1":"b","ending2":"c","ending3":"d","label":7}]"#;
    expect(
        Task::Medqa4,
        "test.json",
        hf,
        "record 1, field `label`: 7 is not an option index (0..3)",
    );
}

#[test]
fn malformed_pubmedqa() {
    let dir = tempfile::tempdir().unwrap();
    let ori = dir.path().join("ori_pqal.json");
    let record =
        |d: &str| format!(r#"{{"QUESTION":"Q?","CONTEXTS":["c"],"final_decision":"{d}"}}"#);
    std::fs::write(
        &ori,
        format!(r#"{{"1":{},"2":{}}}"#, record("yes"), record("perhaps")),
    )
    .unwrap();
    let e = err(Task::Pubmedqa, &ori);
    assert!(e.contains("ori_pqal.json, record 2, field `final_decision`: expected yes, no or maybe, found \"perhaps\""), "{e}");

    std::fs::write(
        &ori,
        format!(
            r#"{{"1":{},"2":{{"QUESTION":"Q?","CONTEXTS":"c","final_decision":"no"}}}}"#,
            record("yes")
        ),
    )
    .unwrap();
    assert!(err(Task::Pubmedqa, &ori)
        .contains("record 2, field `CONTEXTS`: expected a list of strings"));

    std::fs::write(
        &ori,
        format!(r#"{{"1":{},"2":{}}}"#, record("yes"), record("no")),
    )
    .unwrap();
    let truth = dir.path().join("test_ground_truth.json");
    std::fs::write(&truth, r#"{"1": "yes", "3": "no"}"#).unwrap();
    let e = err(Task::Pubmedqa, &ori);
    assert!(
        e.contains("test_ground_truth.json, record 2, field `3`: PMID 3 is not in"),
        "{e}"
    );
    std::fs::write(&truth, r#"{"1": "yes", "2": "unsure"}"#).unwrap();
    assert!(err(Task::Pubmedqa, &ori).contains("record 2, field `2`: expected yes, no or maybe"));
}

#[test]
fn folder_without_the_task_and_unknown_files() {
    let (dir, _) = write("notes.json", r#"{"hello": "world"}"#);
    let e = load_task(Task::Medmcqa, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.downcast_ref::<NoFiles>().is_some());
    let (_d, path) = write("notes.json", r#"{"hello": "world"}"#);
    assert!(err(Task::Medmcqa, &path).contains("not a benchmark file of any known layout"));
    // A folder file too broken to detect is mentioned when nothing else is found.
    let (dir, _) = write("dev.jsonl", "{not json\n");
    let e = err(Task::Medmcqa, dir.path());
    assert!(
        e.contains("could not read:") && e.contains("dev.jsonl, line 1: invalid JSON"),
        "{e}"
    );
}

#[test]
fn repeated_ids_are_made_unique() {
    let a = r#"{"id":"same","question":"Q?","opa":"a","opb":"b","opc":"c","opd":"d","cop":4}"#;
    let (_d, path) = write("dev.jsonl", &format!("{a}\n{a}\n"));
    let ds = load(Task::Medmcqa, &path);
    assert_eq!(
        ds.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["same", "same#1"]
    );
    assert_eq!(ds.notes, ["1 repeated ids renamed with a #n suffix"]);
}
