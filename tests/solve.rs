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
