//! Task data end to end: loading the real shared tasks (skipped when `../shared` is absent),
//! LM-BFF k-shot determinism and per-label counts, bad-input errors with file and line, LM-BFF
//! templates and verbalizers on sst2 and a pair task with the committed tokenizer, `.exp`
//! programs through `smelt::run::run`, and the committed synthetic data in `experiments/data/`
//! (regenerate with `SMELT_REGENERATE=1 cargo test --release --test data_ops`).

use smelt::data::synthetic::{generate, SynthSpec, KINDS};
use smelt::data::template::{encode, Part, Template};
use smelt::data::verbalizer::{lmbff_prompt, Verbalizer};
use smelt::data::{kshot, Example, ReadOptions, TaskData};
use smelt::diag::render_all;
use smelt::nn::tokenizer::Tok;
use smelt::run::{run, RunOptions};
use smelt::session::Session;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A shared task directory, or `None` (test skipped) when the shared assets are absent.
fn shared(task: &str) -> Option<PathBuf> {
    let p = root().join("../shared/assets/tasks").join(task);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping: {} absent", p.display());
        None
    }
}

fn tok() -> Tok {
    Tok::from_dir(&root().join("assets/models/minilm-l3-v8k"), None).unwrap()
}

fn open(p: &Path) -> TaskData {
    TaskData::open(p, &ReadOptions::default()).unwrap()
}

/// A task directory in a temp dir: `labels.json` plus the given files.
fn task_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("labels.json"),
        r#"{"labels": ["negative", "positive"], "pair": false}"#,
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

#[test]
fn shared_tasks_load_with_the_summary_sizes() {
    let Some(dir) = shared("") else { return };
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    for (name, s) in summary.as_object().unwrap() {
        let t = open(&dir.join(name));
        assert_eq!(t.name, *name);
        assert_eq!(
            t.labels.len() as u64,
            s["labels"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            t.train().len() as u64,
            s["train"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(t.test().len() as u64, s["test"].as_u64().unwrap(), "{name}");
        for (label, n) in s["train_dist"].as_object().unwrap() {
            let l: usize = label.parse().unwrap();
            assert_eq!(
                t.label_counts("train")[l] as u64,
                n.as_u64().unwrap(),
                "{name} label {l}"
            );
        }
    }
    let mnli = open(&dir.join("mnli"));
    assert!(mnli.is_pair && mnli.train().iter().all(|e| e.text_b.is_some()));
    assert_eq!(mnli.labels, vec!["entailment", "neutral", "contradiction"]);
    // A prepared k-shot file as the train split, and the 1k test sample.
    let opts = ReadOptions {
        train: "k-shot/16-42".into(),
        test: "test_1k".into(),
        ..Default::default()
    };
    let few = TaskData::open(&dir.join("sst2"), &opts).unwrap();
    assert_eq!(few.label_counts("train"), vec![16, 16]);
}

#[test]
fn kshot_is_deterministic_with_k_per_label() {
    let Some(dir) = shared("sst2") else { return };
    let sst2 = open(&dir);
    let mut trains = Vec::new();
    for seed in [13, 21, 42, 87, 100] {
        let a = kshot(&sst2, 16, seed).unwrap();
        assert_eq!(a, kshot(&sst2, 16, seed).unwrap(), "same seed, same split");
        assert_eq!(a.label_counts("train"), vec![16, 16]);
        assert_eq!(a.label_counts("dev"), vec![16, 16]);
        assert_eq!(a.test().len(), 872, "sst2 test is under the 1,000 cap");
        let train_ids: std::collections::HashSet<usize> = a.train().iter().map(|e| e.id).collect();
        assert!(
            a.dev().iter().all(|e| !train_ids.contains(&e.id)),
            "train and dev are disjoint"
        );
        // Every sampled example is the pool example with the same id.
        assert!(a.train().iter().all(|e| sst2.train()[e.id] == *e));
        trains.push(a.train().to_vec());
    }
    trains.dedup();
    assert_eq!(trains.len(), 5, "five seeds, five different splits");
    let mnli = open(&shared("mnli").unwrap());
    let m = kshot(&mnli, 64, 13).unwrap();
    assert_eq!(m.label_counts("train"), vec![64, 64, 64]);
    assert_eq!(m.test().len(), 1000, "mnli test has exactly the cap");
    let e = kshot(&mnli, 5000, 13).unwrap_err();
    assert!(
        e.message.contains("k=5000") && e.help.is_some(),
        "{}",
        e.message
    );
}

#[test]
fn a_bad_jsonl_line_names_file_and_line() {
    let bad = "{\"text\": \"fine\", \"label\": 1}\n{\"text\": \"also fine\", \"label\": 0}\n{\"text\": \"broken\", \"label\": }\n";
    let d = task_dir(&[
        ("train.jsonl", bad),
        ("test.jsonl", "{\"text\": \"x\", \"label\": 0}\n"),
    ]);
    let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
    assert_eq!(e.code, smelt::data::BAD_FILE);
    let file = d.path().join("train.jsonl");
    assert!(
        e.message
            .contains(&format!("line 3 of `{}`", file.display())),
        "{}",
        e.message
    );
}

#[test]
fn a_label_outside_the_space_names_file_line_and_label() {
    let d = task_dir(&[
        ("train.jsonl", "{\"text\": \"a\", \"label\": 1}\n"),
        (
            "test.jsonl",
            "{\"text\": \"b\", \"label\": 0}\n\n{\"text\": \"c\", \"label\": 2}\n",
        ),
    ]);
    let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
    assert_eq!(e.code, smelt::data::BAD_LABEL);
    let msg = &e.message;
    assert!(
        msg.contains("label 2 on line 3")
            && msg.contains("test.jsonl")
            && msg.contains("[negative, positive]"),
        "{msg}"
    );
    // By name in a TSV file.
    let d = task_dir(&[
        ("train.tsv", "text\tlabel\ngood\tpositive\nmeh\tneutral\n"),
        ("test.tsv", "text\tlabel\n"),
    ]);
    let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
    assert!(
        e.message.contains("label \"neutral\" on line 3"),
        "{}",
        e.message
    );
}

#[test]
fn a_missing_labels_json_explains_the_layout() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("train.jsonl"),
        "{\"text\": \"a\", \"label\": 1}\n",
    )
    .unwrap();
    let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
    assert_eq!(e.code, smelt::data::LAYOUT);
    assert!(e.message.contains("no labels.json"));
    assert!(e.help.unwrap().contains("\"pair\""));
}

#[test]
fn sst2_template_matches_the_tokenizer_and_finds_the_mask() {
    let Some(dir) = shared("sst2") else { return };
    let tok = tok();
    let few = kshot(&open(&dir), 16, 42).unwrap();
    let (src, words) = lmbff_prompt("sst2").unwrap();
    let tpl = Template::parse(src).unwrap();
    tpl.check(few.is_pair, few.labels.len()).unwrap();
    let v = Verbalizer::new(
        &tok,
        &words.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(
        v.ids,
        vec![
            tok.token_to_id("terrible").unwrap(),
            tok.token_to_id("great").unwrap()
        ]
    );
    let mask = tok.token_to_id("[MASK]").unwrap();
    for ex in few.train().iter().chain(few.dev()) {
        let enc = encode(&tok, &tpl, ex).unwrap();
        // The same text through the tokenizer's own template ([MASK] is an added token).
        let reference = tok.encode(&format!("{} It was [MASK].", ex.text)).unwrap();
        assert_eq!(enc.ids, reference.ids, "{:?}", ex.text);
        let p = enc.mask_pos.unwrap();
        assert_eq!(enc.ids[p], mask);
        assert_eq!(enc.ids[p + 1], tok.token_to_id(".").unwrap());
        assert_eq!(p, enc.ids.len() - 3, "… [MASK] . [SEP]");
        assert!(enc.type_ids.iter().all(|&t| t == 0));
    }
    // A template that needs a second sentence is rejected on a single-sentence task.
    let pair_tpl = Template::parse("*cls**sent_0**mask*,*+sent_1**sep+*").unwrap();
    let e = pair_tpl.check(few.is_pair, 2).unwrap_err();
    assert!(e.message.contains("sentence 1"), "{}", e.message);
}

#[test]
fn pair_template_on_mnli_and_rte() {
    let (Some(mnli), Some(rte)) = (shared("mnli"), shared("rte")) else {
        return;
    };
    let tok = tok();
    for (dir, name) in [(mnli, "mnli"), (rte, "rte")] {
        let t = open(&dir);
        let (src, words) = lmbff_prompt(name).unwrap();
        let tpl = Template::parse(src).unwrap();
        tpl.check(t.is_pair, t.labels.len()).unwrap();
        assert_eq!(words.len(), t.labels.len());
        Verbalizer::new(
            &tok,
            &words.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        for ex in t.train().iter().take(50) {
            let enc = encode(&tok, &tpl, ex).unwrap();
            assert!(enc.ids.len() <= 128);
            let p = enc.mask_pos.unwrap();
            assert_eq!(
                enc.ids[p - 1],
                tok.token_to_id("?").unwrap(),
                "*sent-_0*?*mask*"
            );
            assert_eq!(enc.ids[p + 1], tok.token_to_id(",").unwrap());
            if enc.ids.len() < 128 {
                // Untruncated: premise minus its last character, then the hypothesis.
                let mut a = ex.text.clone();
                a.pop();
                let b = ex.text_b.as_ref().unwrap();
                let b = b[..1].to_lowercase() + &b[1..];
                let reference = tok.encode(&format!("{a}? [MASK], {b}")).unwrap();
                assert_eq!(enc.ids, reference.ids);
            }
        }
    }
}

#[test]
fn truncation_cuts_sentences_not_template_tokens() {
    let tok = tok();
    let long = "the movie was great ".repeat(40);
    let ex = Example {
        id: 0,
        text: long.clone(),
        text_b: Some(long),
        label: 0,
    };
    let tpl = Template::parse("*cls**sent_0**mask*,*+sent_1**sep+*")
        .unwrap()
        .with_max_len(32);
    let enc = encode(&tok, &tpl, &ex).unwrap();
    assert_eq!(enc.ids.len(), 32);
    assert_eq!(enc.ids[0], tok.token_to_id("[CLS]").unwrap());
    assert_eq!(*enc.ids.last().unwrap(), tok.token_to_id("[SEP]").unwrap());
    let p = enc.mask_pos.unwrap();
    assert_eq!(
        p,
        1 + 14,
        "32 - 4 template tokens = 28, split evenly between the two sentences"
    );
    let tiny = Template::parse("*cls*_it_was_a_very_long_template*mask*.*sep*")
        .unwrap()
        .with_max_len(4);
    assert!(encode(&tok, &tiny, &ex)
        .unwrap_err()
        .message
        .contains("alone is"));
    assert!(matches!(tpl.parts[2], Part::Mask));
}

#[test]
fn multi_token_label_words_are_rejected_with_their_pieces() {
    let tok = tok();
    let e = Verbalizer::new(&tok, &["correct".into(), "incorrect".into()]).unwrap_err();
    assert_eq!(e.code, smelt::data::TEMPLATE);
    assert!(
        e.message.contains("`incorrect`") && e.message.contains("##"),
        "{}",
        e.message
    );
    assert!(e.help.is_some());
}

struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }
    fn opts(&self) -> RunOptions {
        RunOptions {
            store: self.0.path().join("store"),
            out: self.0.path().join("runs"),
            ..Default::default()
        }
    }
    fn write(&self, text: &str) -> PathBuf {
        let p = self.0.path().join("p.exp");
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn run_ok(file: &Path, opts: &RunOptions) -> smelt::run::RunOutcome {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(o) => o,
        Err(d) => panic!("run failed:\n{}", render_all(&d, &s.sources, false, 80)),
    }
}

fn cell(o: &smelt::run::RunOutcome, report: usize, col: &str) -> smelt::value::Value {
    let t = &o.reports[report].1;
    let i = t.columns.iter().position(|c| c == col).unwrap();
    t.rows[0][i].clone()
}

#[test]
fn an_exp_program_loads_sst2_and_takes_kshot() {
    let Some(dir) = shared("sst2") else { return };
    let t = Scratch::new();
    let program = format!(
        "let t = load task(\"{}\")\nlet few = data kshot(t, k=16, seed=42)\n\
         report {{name: few.name, n_train: few.n_train, n_test: few.n_test, labels: len(few.labels), pool: t.n_train}} as \"kshot\"\n",
        dir.display()
    );
    let f = t.write(&program);
    let o = run_ok(&f, &t.opts());
    assert_eq!(o.executed, 2);
    assert_eq!(cell(&o, 0, "name"), smelt::value::Value::str("sst2"));
    assert_eq!(cell(&o, 0, "n_train"), smelt::value::Value::Int(32));
    assert_eq!(cell(&o, 0, "n_test"), smelt::value::Value::Int(872));
    assert_eq!(cell(&o, 0, "pool"), smelt::value::Value::Int(67349));
    let again = run_ok(&f, &t.opts());
    assert_eq!((again.executed, again.reports.clone()), (0, o.reports));
}

#[test]
fn an_exp_program_on_the_committed_data_runs_every_data_operator() {
    let t = Scratch::new();
    let data = root().join("experiments/data");
    let program = format!(
        r#"
let ts     = load tasks("{d}", names=["movies", "products", "restaurants"])
let topics = load task("{d}/topics")
let pooled = data union(ts, name="reviews")
let few    = [data kshot(x, k=8, seed=13) for x in ts]
let small  = data subsample(topics, 40)
let split  = data split(small, dev_fraction=0.25)
let gen    = data synthetic("fresh", kind=restaurants, n=32)
report {{pooled: pooled.n_train, few: few[0].n_train, small: small.n_train, split: split.n_train, gen: gen.n_test, name: ts[1].name}} as "sizes"
"#,
        d = data.display()
    );
    let f = t.write(&program);
    let o = run_ok(&f, &t.opts());
    let int = |c: &str| match cell(&o, 0, c) {
        smelt::value::Value::Int(i) => i,
        v => panic!("{c}: {v:?}"),
    };
    assert_eq!(int("pooled"), 3 * 240);
    assert_eq!(
        (int("few"), int("small"), int("split"), int("gen")),
        (16, 40, 30, 16)
    );
    assert_eq!(cell(&o, 0, "name"), smelt::value::Value::str("products"));
    assert_eq!(run_ok(&f, &t.opts()).executed, 0, "everything cached");
}

#[test]
fn a_bad_task_fails_the_run_with_the_line() {
    let d = task_dir(&[
        ("train.jsonl", "{\"text\": \"a\", \"label\": 0}\n{oops\n"),
        ("test.jsonl", ""),
    ]);
    let t = Scratch::new();
    let f = t.write(&format!(
        "let t = load task(\"{}\")\nreport {{n: t.n_train}}\n",
        d.path().display()
    ));
    let mut s = Session::new();
    let rendered = match run(&mut s, &f, &t.opts()) {
        Ok(_) => panic!("should fail"),
        Err(d) => render_all(&d, &s.sources, false, 200),
    };
    assert!(
        rendered.contains("line 2 of") && rendered.contains("train.jsonl"),
        "{rendered}"
    );
}

/// `experiments/data/` is exactly `data synthetic(kind, kind=kind)` for the four kinds.
#[test]
fn committed_synthetic_data_is_current() {
    let regenerate = std::env::var_os("SMELT_REGENERATE").is_some();
    for kind in KINDS {
        let task = generate(&SynthSpec::new(kind, kind, 240, 0.1, 0)).unwrap();
        let dir = root().join("experiments/data").join(kind);
        if regenerate {
            task.save(&dir).unwrap();
        }
        let committed = TaskData::load(&dir, None).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        assert_eq!(committed, task, "{kind}: rerun with SMELT_REGENERATE=1");
    }
}
