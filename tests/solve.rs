//! Kernel solvers at the language level: hand-made kernels (written as smelt matrices, read
//! with `load kernel`) go through `solve lstsq|logistic|asym|svm` and `evaluate`, whose table
//! must hold the hand-computed metrics; `evaluate` of a model without tasks is refused at
//! check time; and the whole path runs on a real eNTK of the committed encoder.

use smelt::diag::render_all;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use smelt::tensors::matrix::{Axis, Matrix};
use std::path::{Path, PathBuf};

const MODEL: &str = "assets/models/minilm-l3-v8k";

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        store: dir.join("store"),
        out: dir.join("runs"),
        ..Default::default()
    }
}

fn run_text(dir: &Path, text: &str) -> Result<RunOutcome, String> {
    let file = dir.join("p.exp");
    std::fs::write(&file, text).unwrap();
    let mut s = Session::new();
    run(&mut s, &file, &opts(dir)).map_err(|d| render_all(&d, &s.sources, false, 80))
}

/// A binary (C = 1) kernel `[n, 1, m, 1]` from row-major values, as `kernel …` writes it.
fn kernel(
    values: Vec<f64>,
    n: usize,
    m: usize,
    train: &[f64],
    eval: &[f64],
    split: &str,
) -> Matrix {
    let axes = ["train", "class", "eval", "class"]
        .iter()
        .map(|a| Axis::unlabelled(*a))
        .collect();
    Matrix::new("kernel.sgd", vec![n, 1, m, 1], axes, values)
        .unwrap()
        .with_extra("train_labels", vec![n], train.to_vec())
        .with_extra("eval_labels", vec![m], eval.to_vec())
        .with_extra("train_f0", vec![n, 1], vec![0.0; n])
        .with_extra("eval_f0", vec![m, 1], vec![0.0; m])
        .with_meta("train_task", serde_json::json!("toy"))
        .with_meta("eval_task", serde_json::json!("toy"))
        .with_meta("eval_split", serde_json::json!(split))
}

fn cell(out: &RunOutcome, report: &str, row: usize, col: &str) -> f64 {
    let (_, t) = out
        .reports
        .iter()
        .find(|(n, _)| n == report)
        .expect("report");
    let c = t.columns.iter().position(|c| c == col).expect("column");
    t.rows[row][c]
        .as_f64()
        .unwrap_or_else(|| panic!("{:?}", t.rows[row][c]))
}

fn label(out: &RunOutcome, report: &str, row: usize) -> String {
    let (_, t) = out.reports.iter().find(|(n, _)| n == report).unwrap();
    t.rows[row][0].as_str().unwrap().to_string()
}

#[test]
fn hand_made_kernels_solve_and_evaluate_to_hand_computed_metrics() {
    let d = tempfile::tempdir().unwrap();
    // K_train = I₄ with labels ±1 (+, +, −, −): lstsq gives α = Y and scores K_evalᵀY.
    let ytrain = [1.0, 1.0, -1.0, -1.0];
    let train = kernel(
        (0..16).map(|i| f64::from(i % 5 == 0)).collect(),
        4,
        4,
        &ytrain,
        &ytrain,
        "train",
    );
    // Eval columns chosen so the scores are (+1, −1, −1, −0.5); gold (+, −, +, −).
    // Row-major [i][x]: score(x) = Σᵢ Yᵢ K[i][x].
    #[rustfmt::skip]
    let ke = vec![
        1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        0.0, 1.0, 1.0, 0.5,
        0.0, 0.0, 0.0, 0.0,
    ];
    let gold = [1.0, -1.0, 1.0, -1.0];
    let flipped = ke.clone();
    let eval =
        kernel(ke, 4, 4, &ytrain, &gold, "test").with_extra("flipped", vec![4, 1, 4, 1], flipped);
    let kdir = |n: &str| d.path().join(n);
    train.write(&kdir("ktrain")).unwrap();
    eval.write(&kdir("keval")).unwrap();
    let program = format!(
        r#"
let kt = load kernel("{}")
let ke = load kernel("{}")
let ps = [solve lstsq(kt, ke), solve svm(kt, ke, c=10.0), solve logistic(kt, ke, c=1.0), solve asym(kt, ke, gamma=10.0, lambda=1.0)]
report evaluate(ps, metric=[accuracy, mcc, macro_f1]) as "scores"
report evaluate(ps[0], metric=accuracy, names=["kernel"]) as "named"
"#,
        kdir("ktrain").display(),
        kdir("keval").display()
    );
    let out = run_text(d.path(), &program).unwrap_or_else(|e| panic!("{e}"));
    // Every solver separates this toy set the same way: predictions (+, −, −, −) against
    // gold (+, −, +, −): accuracy ¾; TP 1, TN 2, FN 1, FP 0 → MCC 2/√12; macro F1:
    // class 1 F1 = 2/3, class 0 F1 = 4/5 → 11/15.
    for row in 0..4 {
        assert_eq!(cell(&out, "scores", row, "accuracy"), 0.75, "row {row}");
        assert!((cell(&out, "scores", row, "mcc") - 2.0 / 12f64.sqrt()).abs() < 1e-12);
        assert!((cell(&out, "scores", row, "macro_f1") - 11.0 / 15.0).abs() < 1e-12);
    }
    assert_eq!(label(&out, "scores", 0), "lstsq(kernel.sgd)");
    assert_eq!(label(&out, "named", 0), "kernel");
    let (_, t) = &out.reports[0];
    assert_eq!(t.rows[0][1].as_str(), Some("toy"));
    assert_eq!(t.rows[0][2].as_str(), Some("test"));
    // With `tasks`, Predictions must match one of them and the split.
    let movies = repo("experiments/data/movies");
    let other = program.replace(
        "report evaluate(ps[0], metric=accuracy, names=[\"kernel\"]) as \"named\"",
        &format!(
            "report evaluate(ps[0], load task(\"{}\")) as \"mixed\"",
            movies.display()
        ),
    );
    let e = run_text(d.path(), &other).unwrap_err();
    assert!(e.contains("predictions for task `toy`"), "{e}");
}

#[test]
fn evaluating_a_model_without_tasks_is_refused_before_running() {
    let d = tempfile::tempdir().unwrap();
    let e = run_text(
        d.path(),
        &format!("let lm = load model(\"{MODEL}\")\nreport evaluate(lm)\n"),
    )
    .unwrap_err();
    assert!(e.contains("needs `tasks`"), "{e}");
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn solvers_run_on_a_real_entk_of_the_committed_encoder() {
    let d = tempfile::tempdir().unwrap();
    let program = format!(
        r#"
let lm = load model("{}")
let t = load task("{}")
let few = data kshot(t, k=4, seed=13)
let probe = data kshot(t, k=6, seed=21)
let kt = kernel sgd(lm, few, few, split=train, head=prompt)
let ke = kernel sgd(lm, few, probe, split=train, head=prompt)
let ps = [solve lstsq(kt, ke, reg=1e-6), solve lstsq(kt, ke, f0=true), solve logistic(kt, ke, folds=2, cs=4), solve svm(kt, ke)]
report evaluate(ps, metric=[accuracy, mcc]) as "kernel"
report evaluate(solve lstsq(kt, kt), metric=accuracy) as "fit"
expect measure score(solve lstsq(kt, kt), few, split=train) == 1.0
report {{mcc: measure score(ps[3], probe, split=train, metric=mcc)}} as "measured"
"#,
        repo(MODEL).display(),
        repo("experiments/data/movies").display()
    );
    let out = run_text(d.path(), &program).unwrap_or_else(|e| panic!("{e}"));
    for row in 0..4 {
        let acc = cell(&out, "kernel", row, "accuracy");
        eprintln!("{}: accuracy {acc}", label(&out, "kernel", row));
        assert!((0.0..=1.0).contains(&acc));
        assert_eq!(cell(&out, "kernel", row, "n"), 12.0);
    }
    // `measure score` of Predictions is `evaluate`'s number.
    assert_eq!(
        cell(&out, "measured", 0, "mcc"),
        cell(&out, "kernel", 3, "mcc")
    );
    // Kernel regression on its own training kernel interpolates the labels (ridge-free,
    // invertible eNTK of 8 distinct sentences).
    assert_eq!(cell(&out, "fit", 0, "accuracy"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Linear probing (`solve probe`, `solve probe_head`; methods.md §4.6) on the committed encoder.
// ---------------------------------------------------------------------------------------------

mod probing {
    use super::{cell, repo, run_text, MODEL};
    use candle_core::Device;
    use nalgebra::DMatrix;
    use smelt::data::{kshot, ReadOptions, TaskData};
    use smelt::ops::data::task_artifact;
    use smelt::ops::estimate::ProbedModel;
    use smelt::ops::solve::features::features;
    use smelt::ops::solve::logistic_fit;
    use smelt::ops::solve::predictions::Predictions;
    use smelt::ops::solve::{probe::Probe, probe_head::ProbeHead};
    use smelt::ops::{Args, OpCtx, Operator};
    use smelt::train::feed::{Feed, FormatSpec};
    use smelt::value::{Artifact, Kind, Value};
    use std::path::Path;
    use std::sync::Arc;

    /// 8 shots per label of the committed `movies` task, as a Task artifact under `dir`.
    fn few(dir: &Path) -> (TaskData, Value) {
        let t = TaskData::open(&repo("experiments/data/movies"), &ReadOptions::default()).unwrap();
        let few = kshot(&t, 8, 13).unwrap();
        let cx = OpCtx::for_test(dir.to_path_buf(), 0);
        let key = smelt::cache::Key::of_bytes(b"movies-8-13");
        let a = task_artifact(&cx, &few, "task", key).unwrap();
        (few, Value::Artifact(Arc::new(a)))
    }

    fn model_value(dir: &Path) -> Value {
        Value::Artifact(Arc::new(Artifact {
            kind: Kind::Model,
            dir: dir.to_path_buf(),
            key: smelt::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
            data: serde_json::Value::Null,
        }))
    }

    fn args(model: &Value, task: &Value, head: &str, c: f64, split: &str) -> Args {
        Args::new(vec![
            ("model", model.clone()),
            ("train", task.clone()),
            ("eval", task.clone()),
            ("split", Value::Str(split.into())),
            ("c", Value::Float(c)),
            ("cs", Value::Int(10)),
            ("folds", Value::Int(5)),
            ("batch", Value::Int(8)),
            ("head", Value::Str(head.into())),
            ("template", Value::None),
            ("words", Value::None),
            ("max_len", Value::Int(128)),
        ])
    }

    fn run(op: &dyn Operator, a: &Args, out: &Path) -> Value {
        let mut cx = OpCtx::for_test(out.to_path_buf(), 0);
        op.run(&mut cx, a)
            .unwrap_or_else(|e| panic!("{}", e.message))
    }

    #[test]
    fn the_probe_equals_an_independent_logistic_fit_on_the_same_features() {
        let d = tempfile::tempdir().unwrap();
        let (task, tv) = few(d.path());
        let mv = model_value(&repo(MODEL));
        let c = 0.5;
        let v = run(
            &Probe,
            &args(&mv, &tv, "prompt", c, "test"),
            &d.path().join("p"),
        );
        let p = Predictions::from_artifact(v.as_artifact().unwrap()).unwrap();
        assert_eq!(p.scores.len(), task.split("test").len());
        assert_eq!(p.label, "probe(prompt)");
        // The features, checked against the model's own prompt logits: the committed encoder
        // has no MLM transform, so its label-word logits are features · E[word]ᵀ.
        let pm = ProbedModel::load(&repo(MODEL), &Device::Cpu).unwrap();
        let spec = FormatSpec::resolve(&pm.lm, &task, "prompt", None, None, 128).unwrap();
        let x_tr = features(&pm.lm, &spec, &task, task.train(), 8).unwrap();
        let x_te = features(&pm.lm, &spec, &task, task.split("test"), 8).unwrap();
        let feed = Feed::new(&pm.lm, &spec, &task, task.train()).unwrap();
        let logits = feed.all_logits(&pm.lm, None, 8).unwrap();
        let emb = pm
            .params
            .iter()
            .find(|(n, _)| n == "embeddings.word_embeddings.weight")
            .unwrap()
            .1
            .to_vec2::<f32>()
            .unwrap();
        let tok = pm.lm.tokenizer().unwrap();
        for (w, word) in spec.words.iter().enumerate() {
            let id = smelt::data::verbalizer::word_id(tok, word).unwrap() as usize;
            for i in 0..task.train().len() {
                let dot: f64 = (0..x_tr.ncols())
                    .map(|j| x_tr[(i, j)] * emb[id][j] as f64)
                    .sum();
                assert!((dot - logits[i][w] as f64).abs() < 1e-3, "logit {i},{w}");
            }
        }
        // Independent fit: the two-class softmax with ‖W‖²/(2C) is binary logistic regression
        // on v = w₁ − w₀ with ‖v‖²/(2·2C) (its optimum has w₀ = −w₁), in all 384 dimensions.
        let y: Vec<f64> = task.train().iter().map(|e| e.label as f64).collect();
        let m = logistic_fit::fit(&x_tr, &y, &vec![0.0; y.len()], 2.0 * c, None);
        let z = m.decision(&x_te, &vec![0.0; x_te.nrows()]);
        let (gw, gb) = logistic_fit::gradient(&x_tr, &y, &vec![0.0; y.len()], 2.0 * c, &m.w, m.b);
        assert!(gw.amax() < 1e-6 && gb.abs() < 1e-6);
        for (row, want) in p.scores.iter().zip(&z) {
            assert!(
                (row[1] - row[0] - want).abs() < 1e-6 * (1.0 + want.abs()),
                "{} vs {want}",
                row[1] - row[0]
            );
        }
    }

    #[test]
    fn a_weakly_regularised_probe_separates_its_training_set() {
        let d = tempfile::tempdir().unwrap();
        let (task, tv) = few(d.path());
        let mv = model_value(&repo(MODEL));
        for head in ["prompt", "cls"] {
            let out = d.path().join(head);
            let v = run(&Probe, &args(&mv, &tv, head, 1e4, "train"), &out);
            let p = Predictions::from_artifact(v.as_artifact().unwrap()).unwrap();
            assert_eq!(p.gold.len(), task.train().len());
            assert_eq!(p.metric("accuracy").unwrap(), 1.0, "{head}");
            assert_eq!(p.meta["train_accuracy"], serde_json::json!(1.0));
        }
    }

    #[test]
    fn probe_head_writes_the_probe_as_the_models_cls_head() {
        let d = tempfile::tempdir().unwrap();
        let (task, tv) = few(d.path());
        let mv = model_value(&repo(MODEL));
        let c = 2.0;
        let v = run(
            &Probe,
            &args(&mv, &tv, "cls", c, "test"),
            &d.path().join("p"),
        );
        let p = Predictions::from_artifact(v.as_artifact().unwrap()).unwrap();
        let a = Args::new(vec![
            ("model", mv.clone()),
            ("train", tv.clone()),
            ("c", Value::Float(c)),
            ("cs", Value::Int(10)),
            ("folds", Value::Int(5)),
            ("batch", Value::Int(8)),
            ("max_len", Value::Int(128)),
        ]);
        let m = run(&ProbeHead, &a, &d.path().join("h"));
        let dir = m.as_artifact().unwrap().dir.clone();
        assert!(dir.join("heads.safetensors").is_file() && dir.join("smelt.json").is_file());
        // The head, read back as the kernels read it, gives the probe's logits (f32 head).
        let pm = ProbedModel::load(&dir, &Device::Cpu).unwrap();
        let (head, w, _) = pm.head(&task.name).unwrap().expect("a head");
        assert_eq!(w, "classifier.weight");
        let spec = FormatSpec::resolve(&pm.lm, &task, "cls", None, None, 128).unwrap();
        let feed = Feed::new(&pm.lm, &spec, &task, task.split("test")).unwrap();
        let z = feed.all_logits(&pm.lm, Some(&head), 8).unwrap();
        for (got, want) in z.iter().zip(&p.scores) {
            for k in 0..2 {
                assert!(
                    (got[k] as f64 - want[k]).abs() < 1e-3,
                    "{got:?} vs {want:?}"
                );
            }
        }
        // Independent of the above: the head applied to the cls features by hand.
        let x = features(&pm.lm, &spec, &task, task.split("test"), 8).unwrap();
        let wt = head.weight.as_tensor().to_vec2::<f32>().unwrap();
        let bt = head.bias.as_tensor().to_vec1::<f32>().unwrap();
        let wm = DMatrix::from_fn(2, x.ncols(), |i, j| wt[i][j] as f64);
        let hand = &x * wm.transpose();
        for (i, row) in p.scores.iter().enumerate() {
            for k in 0..2 {
                assert!((hand[(i, k)] + bt[k] as f64 - row[k]).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn probes_and_the_std_helper_run_in_a_program() {
        let d = tempfile::tempdir().unwrap();
        let program = format!(
            r#"
let lm = load model("{}")
let t = load task("{}")
let splits = [data kshot(t, k=8, seed=s) for s in [13, 21]]
let accs = [measure score(solve probe(lm, f, f, head=prompt), f) for f in splits]
let np = [solve probe_head(lm, f, cs=4) for f in splits]
let ks = [measure score(solve logistic(kernel sgd(m, f, f, split=train, head=cls, block=16), kernel sgd(m, f, f, head=cls, block=16), cs=4), f) for (m, f) in zip(np, splits)]
report {{mean: mean(accs), std: std(accs), hand: ((accs[0] - accs[1]) * (accs[0] - accs[1]) / 4.0), np: mean(ks)}} as "probe"
"#,
            repo(MODEL).display(),
            repo("experiments/data/movies").display()
        );
        let out = run_text(d.path(), &program).unwrap_or_else(|e| panic!("{e}"));
        let (s, var) = (
            cell(&out, "probe", 0, "std"),
            cell(&out, "probe", 0, "hand"),
        );
        // Population std of two numbers is |a − b| / 2.
        assert!((s * s - var).abs() < 1e-12);
        let (m, np) = (cell(&out, "probe", 0, "mean"), cell(&out, "probe", 0, "np"));
        eprintln!("probe accuracy {m}, no-prompt kernel accuracy {np}");
        assert!((0.0..=1.0).contains(&m) && (0.0..=1.0).contains(&np));
    }
}
