//! Adapter-space merges through the language, end to end on the committed small encoder and
//! the synthetic tasks: two LoRA adapters trained, merged by `merge average` (factor-wise and
//! exactly in ΔW space), `merge linear` and `merge softmax`, evaluated; `model apply` of the
//! ΔW-space merge scores like the merged adapter; the merged directories are valid PEFT
//! directories that reload; bottleneck adapters and prefixes merge and run; adapters of
//! different bases are refused.

use smelt::diag::render_all;
use smelt::report::Table;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use std::path::{Path, PathBuf};

const MODEL: &str = "assets/models/minilm-l3-v8k";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn prelude() -> String {
    let r = root();
    let task = |n: &str| r.join("experiments/data").join(n).display().to_string();
    format!(
        "config {{ seed: 11 }}\nlet lm = load model(\"{}\")\nlet movies = load task(\"{}\")\nlet restaurants = load task(\"{}\")\n",
        r.join(MODEL).display(),
        task("movies"),
        task("restaurants"),
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

fn table<'a>(o: &'a RunOutcome, name: &str) -> &'a Table {
    &o.reports.iter().find(|(n, _)| n == name).unwrap().1
}

fn num(t: &Table, row: usize, col: &str) -> f64 {
    let c = t.columns.iter().position(|x| x == col).unwrap();
    t.rows[row][c].as_f64().unwrap()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tensors(p: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn lora_adapters_merge_factor_wise_in_delta_space_and_by_similarity() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    let text = format!(
        "{}let a = train lora(lm, movies, head=prompt, lr=2e-3, epochs=2, batch=16)\n\
         let b = train lora(lm, restaurants, head=prompt, lr=2e-3, epochs=2, batch=16)\n\
         let fa = merge average([a, b])\n\
         let da = merge average([a, b], mode=delta)\n\
         let sm = merge softmax([a, b], [0.2, 0.5], sign=negative)\n\
         let one = merge linear([a], [1.0])\n\
         let ts = [movies, restaurants]\n\
         report evaluate(lm, ts, metric=[accuracy, ce_loss]) as \"base\"\n\
         report evaluate([a, b, fa, da, sm, one], ts, metric=[accuracy, ce_loss]) as \"merged\"\n\
         report evaluate(model apply(da), ts, metric=[accuracy, ce_loss]) as \"applied\"\n\
         save a to \"{}\"\n\
         save da to \"{}\"\n\
         save one to \"{}\"\n\
         save sm to \"{}\"\n",
        prelude(),
        p("a").display(),
        p("da").display(),
        p("one").display(),
        p("sm").display(),
    );
    let o = run_text(t.path(), "merge.exp", &text).unwrap_or_else(|e| panic!("{e}"));
    let (m, base) = (table(&o, "merged"), table(&o, "base"));
    eprintln!("{}\n{}", base.to_markdown(), m.to_markdown());
    // rows: model-major (a, b, fa, da, sm, one), then task (movies, restaurants)
    let acc = |r: usize| num(m, r, "accuracy");
    let ce = |r: usize| num(m, r, "ce_loss");
    let (a, fa, da, sm, one) = (0, 4, 6, 8, 10);
    for task in 0..2 {
        // The exact ΔW average keeps what both adapters learnt (the tasks share a lexicon).
        assert!(acc(da + task) > num(base, task, "accuracy"), "{m:?}");
        assert!(ce(da + task) < num(base, task, "ce_loss"), "{m:?}");
        for r in [fa, sm] {
            assert!(ce(r + task).is_finite() && acc(r + task) > 0.0, "{m:?}");
        }
        // one adapter with weight 1 is the adapter
        assert_eq!(m.rows[one + task][3..], m.rows[a + task][3..], "{m:?}");
    }

    // `model apply` of the ΔW-space merge scores like the merged adapter (same logits up to
    // f32 rounding: identical accuracy, CE to 1e-5).
    let ap = table(&o, "applied");
    for task in 0..2 {
        assert_eq!(num(ap, task, "accuracy"), acc(da + task), "{ap:?}");
        let (x, y) = (num(ap, task, "ce_loss"), ce(da + task));
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{ap:?} vs {m:?}");
    }
    let (ta, tone) = (
        tensors(&p("a/adapter_model.safetensors")),
        tensors(&p("one/adapter_model.safetensors")),
    );
    assert_eq!(
        ta, tone,
        "factor merge of one adapter with weight 1 is bit-exact"
    );

    // The ΔW merge is a PEFT directory of rank r_a + r_b with the same key names.
    let (ca, cd) = (
        json(&p("a/adapter_config.json")),
        json(&p("da/adapter_config.json")),
    );
    assert_eq!(cd["r"], 16);
    assert_eq!(cd["lora_alpha"], ca["lora_alpha"]);
    let names =
        |v: &[(String, Vec<usize>, Vec<u8>)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let td = tensors(&p("da/adapter_model.safetensors"));
    assert_eq!(names(&td), names(&ta));
    let info = json(&p("da/smelt.json"));
    assert_eq!(info["merge"]["mode"], "delta");
    assert_eq!(info["merge"]["rank"], 16);
    assert!(info["merge"]["truncation"]["max"].as_f64().unwrap() < 1e-6);
    assert_eq!(info["tasks"], serde_json::json!(["movies", "restaurants"]));
    // softmax: the lower (negative-sign) score gets the larger weight, recorded with the inputs
    let sm = json(&p("sm/smelt.json"));
    let w: Vec<f64> = serde_json::from_value(sm["merge"]["weights"].clone()).unwrap();
    let want = 1.0 / (1.0 + (-(0.5 - 0.2) / 0.1f64).exp());
    assert!(
        (w[0] - want).abs() < 1e-12 && (w[0] + w[1] - 1.0).abs() < 1e-12,
        "{w:?}"
    );
    assert_eq!(sm["merge"]["temperature"], 0.1);

    // The saved merge reloads and scores the same; a truncated re-merge records its error.
    let again = format!(
        "{}let da = load adapter(\"{}\", base=lm)\n\
         let a = load adapter(\"{}\", base=lm)\n\
         let low = merge linear([da, a], [1.0, -1.0], mode=delta, rank=4)\n\
         report evaluate(da, [movies, restaurants], metric=[accuracy, ce_loss]) as \"reload\"\n\
         save low to \"{}\"\n",
        prelude(),
        p("da").display(),
        p("a").display(),
        p("low").display(),
    );
    let re = run_text(t.path(), "again.exp", &again).unwrap_or_else(|e| panic!("{e}"));
    let rl = table(&re, "reload");
    for task in 0..2 {
        assert_eq!(rl.rows[task][3..], m.rows[da + task][3..]);
    }
    let low = json(&p("low/smelt.json"));
    assert_eq!(low["merge"]["rank"], 4);
    let err = low["merge"]["truncation"]["max"].as_f64().unwrap();
    assert!(err > 0.0 && err < 1.0, "{err}");
}

#[test]
fn bottleneck_adapters_and_prefixes_merge_and_run_and_other_bases_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let text = format!(
        "{}let ads = [train adapter(lm, x, size=8, lr=2e-3, max_steps=6, head=prompt) for x in [movies, restaurants]]\n\
         let pfx = [train prefix(lm, x, tokens=4, lr=2e-3, max_steps=6, head=prompt) for x in [movies, restaurants]]\n\
         let ma = merge average(ads)\n\
         let mp = merge softmax(pfx, [1.0, 2.0], temperature=1.0)\n\
         report evaluate([ma, mp], movies, metric=[accuracy, ce_loss]) as \"kinds\"\n\
         save ads[0] to \"{}\"\n",
        prelude(),
        t.path().join("ad0").display(),
    );
    let o = run_text(t.path(), "kinds.exp", &text).unwrap_or_else(|e| panic!("{e}"));
    let k = table(&o, "kinds");
    for r in 0..2 {
        assert!(num(k, r, "ce_loss").is_finite(), "{k:?}");
    }
    // delta mode is LoRA-only, and an adapter bound to another base is refused
    let e = run_text(
        t.path(),
        "delta.exp",
        &format!(
            "{}let ad = load adapter(\"{}\", base=lm)\nlet m = merge average([ad], mode=delta)\n",
            prelude(),
            t.path().join("ad0").display()
        ),
    )
    .unwrap_err();
    assert!(e.contains("smelt::merge::delta_needs_lora"), "{e}");
    let e = run_text(
        t.path(),
        "bases.exp",
        &format!(
            "{}let ad = load adapter(\"{}\", base=lm)\nlet other = load adapter(\"{}\", base=model perturb(lm, std=1e-4))\nlet m = merge average([ad, other])\n",
            prelude(),
            t.path().join("ad0").display(),
            t.path().join("ad0").display()
        ),
    )
    .unwrap_err();
    assert!(e.contains("smelt::check::base_mismatch"), "{e}");
    assert!(e.contains("merge average([ad, other])"), "{e}");
}
