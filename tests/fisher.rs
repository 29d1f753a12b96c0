//! Fisher estimation and the Fisher-based merges through the language, on the committed small
//! encoder and the synthetic tasks: `estimate fisher` (sampled and empirical labels) on a base
//! and two fine-tunes, the short form `merge uncertainty(models, hessians, delta0=1e-12)`
//! verbatim (base and scales from the records), the full UBGM call, `merge fisher`; closed
//! forms checked by `expect` (one-model Fisher merge = the model, δ → ∞ UBGM = task
//! arithmetic, short form = explicit defaults); the saved Fisher's layout; `load fisher` of
//! smelt's layout and of the paper code's `hessian/` checkpoint giving identical merges; and a
//! missing example count as an error with the call's span.

use smelt::diag::render_all;
use smelt::report::Table;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use smelt::tensors::model_dir::ModelDir;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opts(dir: &Path, store: &str) -> RunOptions {
    RunOptions {
        store: dir.join(store),
        out: dir.join("runs"),
        ..Default::default()
    }
}

fn run_ok(file: &Path, opts: &RunOptions) -> RunOutcome {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(o) => {
            let failed = render_all(&o.failed, &s.sources, false, 100);
            assert!(o.failed.is_empty(), "failed expects:\n{failed}");
            o
        }
        Err(d) => panic!("run failed:\n{}", render_all(&d, &s.sources, false, 100)),
    }
}

fn table<'a>(o: &'a RunOutcome, name: &str) -> &'a Table {
    &o.reports.iter().find(|(n, _)| n == name).unwrap().1
}

fn num(t: &Table, row: usize, col: &str) -> f64 {
    let c = t.columns.iter().position(|x| x == col).unwrap();
    t.rows[row][c].as_f64().unwrap()
}

fn prelude() -> String {
    let r = root();
    let task = |n: &str| r.join("experiments/data").join(n).display().to_string();
    format!(
        "config {{ seed: 11 }}\n\
         let lm = load model(\"{}\")\n\
         let movies = load task(\"{}\")\n\
         let restaurants = load task(\"{}\")\n\
         let products = load task(\"{}\")\n",
        r.join("assets/models/minilm-l3-v8k").display(),
        task("movies"),
        task("restaurants"),
        task("products"),
    )
}

#[test]
fn fisher_estimates_and_merges_through_the_language() {
    if !root().join("assets/models/minilm-l3-v8k").is_dir() {
        eprintln!("skipping: the committed model is absent");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = |n: &str| t.path().join(n).display().to_string();
    let program = format!(
        "{}\
         let base  = train full(lm, movies, head=prompt, max_steps=4, batch=8, lr=1e-4)\n\
         let tasks = [restaurants, products]\n\
         let tuned = [train full(base, x, head=prompt, max_steps=4, batch=8, lr=1e-4) for x in tasks]\n\
         let f0    = estimate fisher(base, movies, examples=24)\n\
         let fs    = [estimate fisher(m, x, examples=24, labels=empirical, batch=5) for (m, x) in zip(tuned, tasks)]\n\
         let short = merge uncertainty(tuned, fs, delta0=1e-12)\n\
         let explicit = merge uncertainty(tuned, fs, base=base, delta0=1e-12, alpha=1.0, scales=[24, 24])\n\
         let full  = merge uncertainty(tuned, fs, base=base, base_hessian=f0, delta0=1e-12, alpha=1.0, base_scale=240, scales=[240, 240])\n\
         let fm    = merge fisher(tuned, fs)\n\
         let ta    = merge task_arithmetic(base, tuned, alpha=0.5)\n\
         expect measure distance(short, explicit) == 0.0 within 1e-12\n\
         expect measure distance(merge fisher([tuned[0]], [fs[0]]), tuned[0]) == 0.0 within 1e-12\n\
         expect measure distance(merge uncertainty(tuned, fs, delta0=1e30, alpha=0.5, dtype=f32), merge task_arithmetic(base, tuned, alpha=0.5, dtype=f32), relative=true) < 1e-6\n\
         expect measure distance(full, base) > 0.0\n\
         report [{{m: \"short\", d: measure distance(short, base)}}, {{m: \"full\", d: measure distance(full, base)}}, {{m: \"fisher\", d: measure distance(fm, base)}}, {{m: \"ta\", d: measure distance(ta, base)}}] as \"distances\"\n\
         report evaluate([base, full, fm, ta], tasks, metric=accuracy) as \"scores\"\n\
         save fs[0] to \"{}\"\n\
         save tuned[0] to \"{}\"\n\
         save base to \"{}\"\n",
        prelude(),
        out("fisher0"),
        out("tuned0"),
        out("base"),
    );
    let f = t.path().join("a.exp");
    std::fs::write(&f, program).unwrap();
    let first = run_ok(&f, &opts(t.path(), "s1"));
    let d = table(&first, "distances");
    for row in 0..4 {
        assert!(num(d, row, "d") > 0.0, "{d:?}");
    }
    let scores = table(&first, "scores");
    assert_eq!(scores.rows.len(), 8);
    eprintln!("{}", scores.to_markdown());

    // The saved Fisher: the model's tensor names, f32 values ≥ 0, the record with N.
    let fisher = ModelDir::open(t.path().join("fisher0")).unwrap();
    let model = ModelDir::open(t.path().join("tuned0")).unwrap();
    assert_eq!(
        fisher.tensors().keys().collect::<Vec<_>>(),
        model.tensors().keys().collect::<Vec<_>>()
    );
    let mut positive = 0;
    for name in fisher.tensors().keys() {
        assert_eq!(fisher.info(name).unwrap().dtype.as_str(), "F32");
        let v = fisher.read_f32(name).unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{name}");
        positive += v.iter().any(|x| *x > 0.0) as usize;
    }
    assert!(
        positive + 3 >= fisher.tensors().len(),
        "only {positive} tensors have curvature"
    );
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("fisher0/fisher.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["examples"], 24);
    assert_eq!(rec["labels"], "empirical");
    assert_eq!(rec["task"], "restaurants");

    // The paper code's layout: the same values as an HF checkpoint in `hessian/` of a model dir.
    let paper = t.path().join("paper");
    std::fs::create_dir_all(paper.join("hessian")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(t.path().join("tuned0").join(f), paper.join(f)).unwrap();
        std::fs::copy(
            t.path().join("fisher0").join(f),
            paper.join("hessian").join(f),
        )
        .unwrap();
    }
    let second = format!(
        "config {{ seed: 11 }}\n\
         let b = load model(\"{}\")\n\
         let m = load model(\"{}\")\n\
         let own = merge uncertainty([m], [load fisher(\"{}\")], base=b)\n\
         let hf  = merge uncertainty([m], [load fisher(\"{}\", examples=24)], base=b)\n\
         expect measure distance(own, hf) == 0.0 within 1e-12\n\
         expect measure distance(own, m, relative=true) < 1e-6\n",
        out("base"),
        out("tuned0"),
        out("fisher0"),
        paper.display(),
    );
    let g = t.path().join("b.exp");
    std::fs::write(&g, second).unwrap();
    run_ok(&g, &opts(t.path(), "s2"));

    // Without a count, the default scales cannot be formed: an error at the call.
    let third = format!(
        "let b = load model(\"{}\")\nlet m = load model(\"{}\")\nlet x = merge uncertainty([m], [load fisher(\"{}\")], base=b)\nreport {{d: measure distance(x, b)}}\n",
        out("base"),
        out("tuned0"),
        paper.display(),
    );
    let h = t.path().join("c.exp");
    std::fs::write(&h, third).unwrap();
    let mut s = Session::new();
    let err = match run(&mut s, &h, &opts(t.path(), "s3")) {
        Ok(_) => panic!("a Fisher without an example count needs scales"),
        Err(d) => render_all(&d, &s.sources, false, 100),
    };
    assert!(
        err.contains("no_example_count") && err.contains("merge uncertainty"),
        "{err}"
    );
}
