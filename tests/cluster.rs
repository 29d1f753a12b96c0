//! Task clustering through the language (paper 1, methods.md §1.9): a task × task affinity typed
//! in with `matrix(rows=…, labels=…)` (three planted groups), clustered by `cluster sdp`,
//! `cluster spectral`, `cluster coclustering` and `cluster kmeans`; `report` renders the
//! partition, `save` writes its JSON, `average_density` chooses k, and `groups(p, tasks)` hands
//! the groups to training as lists of tasks. Also: check-time and run-time errors point at the
//! call and say what to do.

use smelt::diag::render_all;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opts(t: &Path) -> RunOptions {
    RunOptions {
        store: t.join("store"),
        out: t.join("runs"),
        ..Default::default()
    }
}

fn run_text(t: &Path, name: &str, text: &str) -> Result<RunOutcome, String> {
    let f = t.join(name);
    std::fs::write(&f, text).unwrap();
    let mut s = Session::new();
    match run(&mut s, &f, &opts(t)) {
        Ok(o) if o.failed.is_empty() => Ok(o),
        Ok(o) => Err(render_all(&o.failed, &s.sources, false, 100)),
        Err(d) => Err(render_all(&d, &s.sources, false, 100)),
    }
}

/// Six tasks in three planted groups {a, d}, {b, e}, {c, f} (interleaved), asymmetric noise.
const AFFINITY: &str = "let t = matrix(rows=[
    [1.00, 0.10, 0.15, 0.92, 0.05, 0.20],
    [0.12, 1.00, 0.08, 0.11, 0.95, 0.02],
    [0.20, 0.05, 1.00, 0.07, 0.12, 0.90],
    [0.88, 0.14, 0.03, 1.00, 0.09, 0.18],
    [0.02, 0.91, 0.16, 0.06, 1.00, 0.10],
    [0.15, 0.04, 0.93, 0.12, 0.07, 1.00]],
  labels=[\"a\", \"b\", \"c\", \"d\", \"e\", \"f\"], what=\"affinity\")\n";

fn groups_of(table: &smelt::report::Table) -> Vec<String> {
    let mut g: Vec<String> = table
        .rows
        .iter()
        .map(|r| r[2].as_str().unwrap().to_string())
        .collect();
    g.sort();
    g
}

#[test]
fn every_method_recovers_the_planted_groups_and_the_partition_reports_and_saves() {
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("p.json");
    let text = format!(
        "config {{ seed: 3 }}\n{AFFINITY}\
         let p = cluster sdp(t, 3)\n\
         report p as \"sdp\"\n\
         report cluster spectral(t, 3) as \"spectral\"\n\
         report cluster coclustering(t, 3, extended=true) as \"extended\"\n\
         report cluster kmeans(t, 3) as \"kmeans\"\n\
         save p to \"{}\"\n\
         report [{{k: k, density: average_density(t, cluster sdp(t, k))}} for k in [2, 3, 4]] as \"density\"\n\
         plot heatmap(t) to \"{}\"\n",
        json.display(),
        t.path().join("t.svg").display()
    );
    let out = run_text(t.path(), "cluster.exp", &text).unwrap();
    let report = |name: &str| &out.reports.iter().find(|(n, _)| n == name).unwrap().1;
    let want = vec!["a, d".to_string(), "b, e".into(), "c, f".into()];
    for method in ["sdp", "spectral", "extended", "kmeans"] {
        let r = report(method);
        assert_eq!(r.columns, vec!["group", "size", "tasks"], "{method}");
        assert_eq!(groups_of(r), want, "{method}");
    }
    // The report file is the readable table.
    let md = std::fs::read_to_string(out.run_dir.join("sdp.md")).unwrap();
    assert!(md.contains("| a, d "), "{md}");
    // `save p to "p.json"` writes the partition's JSON, with the solver's record.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(saved["method"], "cluster.sdp");
    assert_eq!(saved["k"], 3);
    assert_eq!(saved["solver"]["status"], "solved");
    assert!(saved["solver"]["iterations"].as_u64().unwrap() > 0);
    assert!(saved["meta"]["max_row_sum_error"].as_f64().unwrap() < 1e-6);
    assert_eq!(saved["meta"]["relaxation"].as_array().unwrap().len(), 6);
    // Average density by hand for k = 3: Σ_C Σ_{i,j∈C} T_ij / 2.
    let dens = report("density");
    let by_hand = (1.0 + 0.92 + 0.88 + 1.0) / 2.0
        + (1.0 + 0.95 + 0.91 + 1.0) / 2.0
        + (1.0 + 0.90 + 0.93 + 1.0) / 2.0;
    let k3 = dens
        .rows
        .iter()
        .find(|r| r[0] == smelt::value::Value::Int(3))
        .unwrap();
    assert!(
        (k3[1].as_f64().unwrap() - by_hand).abs() < 1e-12,
        "{:?}",
        k3
    );
    assert!(t.path().join("t.svg").exists());
}

#[test]
fn groups_hand_tasks_to_training_by_name() {
    let t = tempfile::tempdir().unwrap();
    let data = root().join("experiments/data");
    let text = format!(
        "let ts = [load task(\"{}/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\n\
         let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"movies\", \"restaurants\", \"topics\"])\n\
         let gs = groups(cluster sdp(t, 2), ts)\n\
         report [{{group: i, tasks: len(gs[i]), first: gs[i][0].name}} for i in range(len(gs))] as \"groups\"\n",
        data.display()
    );
    let out = run_text(t.path(), "groups.exp", &text).unwrap();
    let r = &out.reports[0].1;
    let rows: Vec<(i64, String)> = r
        .rows
        .iter()
        .map(|row| {
            (
                row[1].as_f64().unwrap() as i64,
                row[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![(2, "movies".to_string()), (1, "topics".to_string())]
    );
    // A partition naming a task that is not given is a run-time error with the task's name.
    let text = format!(
        "let ts = [load task(\"{}/movies\")]\n\
         let t = matrix(rows=[[1.0, 0.1], [0.1, 1.0]], labels=[\"movies\", \"boolq\"])\n\
         report len(groups(cluster sdp(t, 2), ts))\n",
        data.display()
    );
    let e = run_text(t.path(), "missing.exp", &text).unwrap_err();
    assert!(
        e.contains("smelt::run::unknown_task") && e.contains("boolq"),
        "{e}"
    );
}

#[test]
fn budget_and_nan_errors_say_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let e = run_text(
        t.path(),
        "nobudget.exp",
        &format!("{AFFINITY}report cluster sdp(t)\n"),
    )
    .unwrap_err();
    assert!(
        e.contains("smelt::check::sdp_budget") && e.contains("size_penalty"),
        "{e}"
    );
    // k out of range names the allowed range (the NaN rule is unit-tested: literals hold no NaN).
    let two = "let s = matrix(rows=[[0.0, 1.0], [1.0, 0.0]], labels=[\"x\", \"y\"])\n";
    let e = run_text(
        t.path(),
        "bigk.exp",
        &format!("{two}report cluster sdp(s, 3)\n"),
    )
    .unwrap_err();
    assert!(
        e.contains("smelt::run::cluster_k") && e.contains("between 1 and 2"),
        "{e}"
    );
    let ok = run_text(
        t.path(),
        "pen.exp",
        &format!("{AFFINITY}report cluster sdp(t, size_penalty=0.2)\n"),
    )
    .unwrap();
    assert_eq!(groups_of(&ok.reports[0].1), vec!["a, d", "b, e", "c, f"]);
}
