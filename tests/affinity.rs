//! `affinity first_order` end to end on the committed encoder and four synthetic tasks
//! (methods.md §1.7–1.8): gradients at the PEFT initialisation, then the affinity matrix from
//! every 2-task subset. Checked: axes and shape; counts (each pair in exactly one subset, each
//! task in three); every entry rebuilt from the per-subset side table (`T_ij` = task i's score
//! in the subset {i, j}, `T_ii` = the mean over i's subsets); with a huge λ the surrogate's
//! weights vanish, so every score is the untouched adapter's, as `evaluate` reports it; the
//! loss metric gives −cross-entropy (≤ 0, and equal to −`ce_loss` at huge λ); a small λ (fixed
//! offset) moves the network (scores differ from θ0's); fewer subsets than C(n, k) are distinct and
//! depend on the seed.

use smelt::report::Table;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use smelt::tensors::matrix::Matrix;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const TASKS: [&str; 4] = ["movies", "products", "restaurants", "topics"];

fn run_text(t: &Path, text: &str) -> RunOutcome {
    let f = t.join("a.exp");
    std::fs::write(&f, text).unwrap();
    let mut s = Session::new();
    let opts = RunOptions {
        store: t.join("store"),
        out: t.join("runs"),
        ..Default::default()
    };
    match run(&mut s, &f, &opts) {
        Ok(o) if o.failed.is_empty() => o,
        Ok(o) => panic!(
            "{}",
            smelt::diag::render_all(&o.failed, &s.sources, false, 100)
        ),
        Err(d) => panic!("{}", smelt::diag::render_all(&d, &s.sources, false, 100)),
    }
}

/// Every affinity matrix in the store, keyed by (variant, lambda, metric, subsets).
fn matrices(store: &Path) -> Vec<Matrix> {
    let mut out = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "matrix.json") {
                let m = Matrix::read(p.parent().unwrap()).unwrap();
                if m.what == "affinity.first_order" {
                    out.push(m);
                }
            }
        }
    }
    out
}

fn find<'a>(ms: &'a [Matrix], lambda: f64, metric: &str, subsets: usize) -> &'a Matrix {
    ms.iter()
        .find(|m| {
            m.meta["lambda"].as_f64() == Some(lambda)
                && m.meta["metric"] == metric
                && m.meta["subsets"].as_u64() == Some(subsets as u64)
        })
        .unwrap_or_else(|| panic!("no matrix for λ={lambda} {metric} K={subsets}"))
}

fn column(t: &Table, name: &str) -> Vec<f64> {
    let c = t.columns.iter().position(|c| c == name).unwrap();
    t.rows.iter().map(|r| r[c].as_f64().unwrap()).collect()
}

/// Checks T against its side table: T_ij = mean of task i's scores over subsets with i and j.
fn check_from_side_table(m: &Matrix) {
    let n = m.rows();
    let (_, members) = &m.extra["members"];
    let (_, scores) = &m.extra["scores"];
    let (_, counts) = &m.extra["counts"];
    let k = members.len() / n;
    for i in 0..n {
        for j in 0..n {
            let with: Vec<usize> = (0..k)
                .filter(|&s| members[s * n + i] == 1.0 && members[s * n + j] == 1.0)
                .collect();
            assert_eq!(counts[i * n + j], with.len() as f64);
            let want = with.iter().map(|&s| scores[s * n + i]).sum::<f64>() / with.len() as f64;
            match with.is_empty() {
                true => assert!(m.get(i, j).is_nan()),
                false => assert!((m.get(i, j) - want).abs() < 1e-12, "T[{i},{j}]"),
            }
        }
    }
    for s in 0..k {
        for t in 0..n {
            assert_eq!(members[s * n + t] == 1.0, !scores[s * n + t].is_nan());
        }
    }
}

#[test]
fn first_order_affinity_from_every_pair_of_four_tasks() {
    let lm = root().join("assets/models/minilm-l3-v8k");
    if !lm.is_dir() {
        eprintln!("skipping: {} absent", lm.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let text = format!(
        "config {{ seed: 5 }}\n\
         let lm = load model(\"{}\")\n\
         let ts = [load task(\"{}/\" + n) for n in [\"movies\", \"products\", \"restaurants\", \"topics\"]]\n\
         let a0 = train lora(lm, ts, max_steps=0, head=prompt)\n\
         let g = estimate gradients(lm, ts, adapter=a0, dim=100, examples=32)\n\
         let frozen = affinity first_order(g, subsets=6, subset_size=0.5, lambda=1e9)\n\
         let frozen_loss = affinity first_order(g, subsets=6, subset_size=0.5, lambda=1e9, metric=loss)\n\
         let free = affinity first_order(g, subsets=6, subset_size=0.5, lambda=1e-3)\n\
         let moved = affinity first_order(g, subsets=6, subset_size=0.5, lambda=1e-3, variant=fixed_offset)\n\
         let fixed = affinity first_order(g, subsets=6, subset_size=0.5, lambda=1e-3, variant=fixed_offset, metric=loss)\n\
         let few = [affinity first_order(g, subsets=3, subset_size=0.5, lambda=1.0, seed=s) for s in [0, 1]]\n\
         report evaluate(a0, ts, split=dev, metric=[accuracy, ce_loss]) as \"base\"\n\
         report [frozen, frozen_loss, free, moved, fixed] ++ few\n",
        lm.display(),
        root().join("experiments/data").display()
    );
    let o = run_text(t.path(), &text);
    let base = &o.reports.iter().find(|(n, _)| n == "base").unwrap().1;
    let (acc, ce) = (column(base, "accuracy"), column(base, "ce_loss"));
    let ms = matrices(&t.path().join("store"));
    assert_eq!(ms.len(), 7);
    for m in &ms {
        assert_eq!(m.shape, vec![4, 4]);
        assert_eq!(m.axes[0].labels, TASKS);
        assert_eq!(m.axes[1].labels, TASKS);
        check_from_side_table(m);
    }
    // All C(4, 2) = 6 subsets: each pair together once, each task in three.
    let frozen = find(&ms, 1e9, "accuracy", 6);
    let (_, counts) = &frozen.extra["counts"];
    for i in 0..4 {
        for j in 0..4 {
            assert_eq!(counts[i * 4 + j], if i == j { 3.0 } else { 1.0 });
        }
    }
    // λ → ∞: w → 0, the network is θ0 and every score is the adapter's own.
    let (_, w_norm) = &frozen.extra["w_norm"];
    assert!(w_norm.iter().all(|&w| w < 1e-6), "{w_norm:?}");
    for (i, a) in acc.iter().enumerate() {
        for j in 0..4 {
            assert!(
                (frozen.get(i, j) - a).abs() < 1e-9,
                "T[{i},{j}] vs evaluate"
            );
        }
    }
    let frozen_loss = find(&ms, 1e9, "loss", 6);
    for (i, c) in ce.iter().enumerate() {
        assert!((frozen_loss.get(i, i) + c).abs() < 1e-5, "−loss at θ0");
    }
    // Free offset: c is fitted (at init the gold log-odds are ≈ log(0.0101/0.9899) for every
    // example, so c alone nearly separates them and w stays small).
    let free = ms
        .iter()
        .find(|m| m.meta["variant"] == "free_offset" && m.meta["lambda"].as_f64() == Some(1e-3))
        .unwrap();
    assert!(free.extra["offset"]
        .1
        .iter()
        .all(|c| c.is_finite() && *c != 0.0));
    // Fixed offset, small λ: w raises the gold log-odds and moves the network.
    let moved = ms
        .iter()
        .find(|m| m.meta["variant"] == "fixed_offset" && m.meta["metric"] == "accuracy")
        .unwrap();
    let (_, w_norm) = &moved.extra["w_norm"];
    assert!(w_norm.iter().all(|&w| w > 0.0));
    assert!((0..4).any(|i| (0..4).any(|j| (moved.get(i, j) - acc[i]).abs() > 1e-9)));
    let fixed = find(&ms, 1e-3, "loss", 6);
    eprintln!(
        "moved: {:?}\nfixed (−loss): {:?}",
        moved.values, fixed.values
    );
    assert_eq!(fixed.meta["variant"], "fixed_offset");
    assert!(fixed.values.iter().all(|&v| v <= 0.0));
    assert!(fixed.extra["offset"].1.iter().all(|c| c.is_nan()));
    // Fewer subsets than C(4, 2): distinct, and another seed draws others.
    let few: Vec<&Matrix> = ms.iter().filter(|m| m.meta["subsets"] == 3).collect();
    assert_eq!(few.len(), 2);
    let rows = |m: &Matrix| -> Vec<Vec<f64>> {
        m.extra["members"]
            .1
            .chunks(4)
            .map(<[f64]>::to_vec)
            .collect()
    };
    for m in &few {
        let r = rows(m);
        assert!(r.iter().all(|s| s.iter().sum::<f64>() == 2.0));
        assert!(
            (0..3).all(|a| (0..a).all(|b| r[a] != r[b])),
            "distinct subsets"
        );
    }
    assert_ne!(rows(few[0]), rows(few[1]));
}

/// The brief's canonical form: `cluster affinity(tasks, k=…)` from `use std.affinity` runs
/// gradients → surrogate → affinity → SDP and gives a partition of every task; naming the
/// default model explicitly is the same computation (one cached node). Six subsets of two are
/// all C(4, 2) pairs, so every affinity entry is defined.
#[test]
fn stdlib_cluster_affinity_partitions_every_task() {
    let lm = root().join("assets/models/minilm-l3-v8k");
    if !lm.is_dir() {
        eprintln!("skipping: {} absent", lm.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let text = format!(
        "use std.affinity\n\
         let lm = load model(\"{}\")\n\
         let ts = [load task(\"{}/\" + n) for n in [\"movies\", \"products\", \"restaurants\", \"topics\"]]\n\
         let p = cluster affinity(ts, k=2, subsets=6, dim=64)\n\
         let q = cluster affinity(ts, k=2, model=lm, subsets=6, dim=64)\n\
         report p as \"groups\"\n\
         report q as \"same\"\n",
        lm.display(),
        root().join("experiments/data").display()
    );
    let o = run_text(t.path(), &text);
    let table = |name: &str| {
        o.reports
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .to_markdown()
    };
    let groups = table("groups");
    assert_eq!(groups, table("same"));
    for task in TASKS {
        assert_eq!(groups.matches(task).count(), 1, "{task} once in:\n{groups}");
    }
}
