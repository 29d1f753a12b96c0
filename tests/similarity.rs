//! Task similarities through the language (paper 2 §2.5–2.6), on the committed small encoder and
//! the synthetic tasks: three LoRA adapters trained, `similarity loss` scores every source on
//! every target, and `merge softmax(deltas, S, target=t.name)` turns each row into the target's
//! initial delta. Checked: the matrix's labels, NaN diagonal and recorded direction; each merge's
//! weights sum to 1, leave the target's own delta out, and equal softmax(−s/0.1) of the row
//! (the direction and temperature come from the matrix); an explicit temperature overrides it;
//! a huge temperature gives the plain average of the other sources; check-time and run-time
//! errors (lengths, a missing target) point at the call.

use smelt::diag::render_all;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use smelt::tensors::matrix::Matrix;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const TASKS: [&str; 3] = ["movies", "restaurants", "topics"];

fn prelude() -> String {
    let r = root();
    format!(
        "config {{ seed: 11 }}\n\
         let lm = load model(\"{}\")\n\
         let ts = [load task(\"{}/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\n\
         let ds = [train lora(lm, t, head=prompt, lr=2e-3, epochs=1, batch=16) for t in ts]\n",
        r.join("assets/models/minilm-l3-v8k").display(),
        r.join("experiments/data").display(),
    )
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

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every matrix in the store whose producer is `what`.
fn matrices(store: &Path, what: &str) -> Vec<Matrix> {
    let mut out = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "matrix.json") {
                let m = Matrix::read(p.parent().unwrap()).unwrap();
                if m.what == what {
                    out.push(m);
                }
            }
        }
    }
    out
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn loss_similarity_feeds_softmax_merges_that_leave_the_target_out() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    let text = format!(
        "{}let s = similarity loss(ds, ts)\n\
         let inits = [merge softmax(ds, s, target=t.name) for t in ts]\n\
         let warm = merge softmax(ds, s, target=\"movies\", temperature=1.0)\n\
         let flat = merge softmax(ds, s, target=\"topics\", temperature=1e12)\n\
         let avg = merge average([ds[0], ds[1]])\n\
         report evaluate(inits, ts, metric=[accuracy, ce_loss]) as \"inits\"\n\
         save inits[0] to \"{}\"\nsave inits[1] to \"{}\"\nsave inits[2] to \"{}\"\n\
         save warm to \"{}\"\nsave flat to \"{}\"\nsave avg to \"{}\"\n",
        prelude(),
        p("i0").display(),
        p("i1").display(),
        p("i2").display(),
        p("warm").display(),
        p("flat").display(),
        p("avg").display(),
    );
    let o = run_text(t.path(), "sim.exp", &text).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", o.reports[0].1.to_markdown());

    let ms = matrices(&p("store"), "similarity.loss");
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    let names: Vec<String> = TASKS.iter().map(|s| s.to_string()).collect();
    assert_eq!(m.axes[0].name, "target");
    assert_eq!(m.axes[1].name, "source");
    assert_eq!((&m.axes[0].labels, &m.axes[1].labels), (&names, &names));
    assert_eq!(m.meta["sign"], "negative");
    assert_eq!(m.meta["temperature"], 0.1);
    assert_eq!(m.meta["examples"], 50);
    for i in 0..3 {
        for j in 0..3 {
            assert_eq!(m.get(i, j).is_nan(), i == j);
            if i != j {
                assert!(m.get(i, j) > 0.0 && m.get(i, j).is_finite());
            }
        }
    }

    for (i, target) in TASKS.iter().enumerate() {
        let rec = &json(&p(&format!("i{i}/smelt.json")))["merge"];
        assert_eq!(rec["target"], *target);
        assert_eq!(rec["sign"], "negative");
        assert_eq!(rec["temperature"], 0.1);
        let sources: Vec<&str> = rec["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let others: Vec<&str> = TASKS.iter().copied().filter(|n| n != target).collect();
        assert_eq!(sources, others, "the target's own delta is left out");
        let w = floats(&rec["weights"]);
        assert_eq!(w.len(), 2);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
        let row = floats(&rec["row_weights"]);
        assert_eq!(row[i], 0.0);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // w = softmax(−s/0.1) over the other sources, from the matrix row.
        let js: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        let z: Vec<f64> = js.iter().map(|&j| (-m.get(i, j) / 0.1).exp()).collect();
        for (k, &j) in js.iter().enumerate() {
            let want = z[k] / z.iter().sum::<f64>();
            assert!((w[k] - want).abs() < 1e-12, "{w:?}");
            assert_eq!(row[j], w[k]);
        }
        // A lower loss gets the larger weight.
        assert_eq!(
            w[0] > w[1],
            m.get(i, js[0]) < m.get(i, js[1]),
            "{w:?} for {:?}",
            m.row(i)
        );
    }

    // An explicit temperature overrides the matrix's; a huge one is the plain average.
    let warm = &json(&p("warm/smelt.json"))["merge"];
    assert_eq!(warm["temperature"], 1.0);
    let ww = floats(&warm["weights"]);
    let z = [(-m.get(0, 1)).exp(), (-m.get(0, 2)).exp()];
    assert!((ww[0] - z[0] / (z[0] + z[1])).abs() < 1e-12);
    let flat = &json(&p("flat/smelt.json"))["merge"];
    assert!(floats(&flat["weights"])
        .iter()
        .all(|w| (w - 0.5).abs() < 1e-9));
    let read = |d: &str| {
        let b = std::fs::read(p(d).join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    // topics' sources are movies and restaurants: the τ → ∞ merge is their average.
    let (f, a) = (read("flat"), read("avg"));
    assert_eq!(f.len(), a.len());
    for ((nf, xf), (na, xa)) in f.iter().zip(&a) {
        assert_eq!(nf, na);
        let g = |x: &[u8]| {
            x.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        for (x, y) in g(xf).iter().zip(g(xa)) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{nf}");
        }
    }

    // Re-running is all cached.
    let again = run_text(t.path(), "sim.exp", &text).unwrap();
    assert_eq!(again.executed, 0);
}

#[test]
fn lengths_and_targets_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let e = run_text(
        t.path(),
        "len.exp",
        &format!("{}let s = similarity el2n(ds, [ts[0], ts[1]])\n", prelude()),
    )
    .unwrap_err();
    assert!(e.contains("smelt::check::length_mismatch"), "{e}");
    let e = run_text(
        t.path(),
        "target.exp",
        &format!(
            "{}let s = similarity loss(ds, ts, examples=5)\nlet m = merge softmax(ds, s)\n",
            prelude()
        ),
    )
    .unwrap_err();
    assert!(
        e.contains("3 target rows") && e.contains("target=NAME"),
        "{e}"
    );
    let e = run_text(
        t.path(),
        "unknown.exp",
        &format!(
            "{}let s = similarity loss(ds, ts, examples=5)\nlet m = merge softmax(ds, s, target=\"books\")\n",
            prelude()
        ),
    )
    .unwrap_err();
    assert!(e.contains("`books` is not a target"), "{e}");
}
