//! Per-example LoRA gradients (`estimate gradients`, methods.md §1.5–1.6) on tiny random models
//! (a 2-layer BERT with a full MLM head, a 2-layer grouped-query decoder; both with the
//! committed encoder's vocabulary): the probed, batched gradients of the clipped gold-token
//! log-odds equal a loop of single-example ordinary backwards to 1e-5, for A and B factors
//! (B ≠ 0) and with A skipped at B = 0; the exact features are those gradients; projected
//! features preserve inner products within JL bounds; then through `smelt run` on the committed
//! encoder: same seed ⇒ same features whatever the batch size, another seed ⇒ other features,
//! `dim=none` ⇒ D_used columns, and A at PEFT init counted as skipped; `measure approx_error`
//! with exact gradients: the first-order error shrinks like s⁴ and stays ≪ the baseline.

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use smelt::cache::Key;
use smelt::data::{ReadOptions, TaskData};
use smelt::nn::peft::{Lora, LoraConfig};
use smelt::nn::{bert, llama, weights::synthetic, ArchConfig};
use smelt::ops::estimate::log_odds::AdapterProbe;
use smelt::run::{run, RunOptions};
use smelt::session::Session;
use smelt::tensors::gradients::{GradientSet, Projection};
use smelt::train::feed::Feed;
use smelt::value::{Artifact, Kind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> Option<PathBuf> {
    let d = root().join("assets/models/minilm-l3-v8k");
    if !d.is_dir() {
        eprintln!("skipping: {} absent", d.display());
        return None;
    }
    Some(d)
}

/// Writes `config`, the tensors (f32) and `src`'s tokenizer into `dir`.
fn write_dir(dir: &Path, config: &str, t: &BTreeMap<String, Tensor>, src: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    for f in ["tokenizer.json", "vocab.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    smelt::nn::peft::io::write_safetensors(&dir.join("model.safetensors"), t, &[("format", "pt")])
        .unwrap();
    dir.to_path_buf()
}

/// A tiny random BERT with a full MLM head (decoder tied to the embeddings).
fn tiny_bert(dir: &Path) -> Option<PathBuf> {
    let src = minilm()?;
    let h = 16;
    let config = format!(
        r#"{{"model_type":"bert","vocab_size":8192,"hidden_size":{h},"num_hidden_layers":2,
        "num_attention_heads":2,"intermediate_size":32,"hidden_act":"gelu",
        "max_position_embeddings":128,"type_vocab_size":2,"layer_norm_eps":1e-12,"pad_token_id":0}}"#
    );
    let ArchConfig::Bert(c) = ArchConfig::from_json(&config, "config.json").unwrap() else {
        panic!("an encoder config")
    };
    let mut shapes = bert::checkpoint_shapes(&c);
    for (n, s) in [
        ("cls.predictions.transform.dense.weight", vec![h, h]),
        ("cls.predictions.transform.dense.bias", vec![h]),
        ("cls.predictions.transform.LayerNorm.weight", vec![h]),
        ("cls.predictions.transform.LayerNorm.bias", vec![h]),
        ("cls.predictions.bias", vec![8192]),
    ] {
        shapes.push((n.to_string(), s));
    }
    let t = synthetic(&shapes, 5, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    Some(write_dir(dir, &config, &t, &src))
}

/// A 2-layer grouped-query decoder with an untied LM head.
fn tiny_llama(dir: &Path) -> Option<PathBuf> {
    let src = minilm()?;
    let config = r#"{"model_type":"qwen2","vocab_size":8192,"hidden_size":32,"intermediate_size":48,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,
        "rope_theta":10000.0,"tie_word_embeddings":false,"max_position_embeddings":128,"pad_token_id":0}"#;
    let ArchConfig::Llama(c) = ArchConfig::from_json(config, "config.json").unwrap() else {
        panic!("a decoder config")
    };
    let t = synthetic(&llama::checkpoint_shapes(&c), 23, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    Some(write_dir(dir, config, &t, &src))
}

/// A LoRA adapter on `base` saved in `dir` (B random when `b_nonzero`, else PEFT's zero).
fn adapter(base: &Path, dir: &Path, targets: &[&str], b_nonzero: bool) -> Artifact {
    let mut lm = smelt::nn::load(base, &Device::Cpu).unwrap();
    let mut cfg = LoraConfig::new(2, 4.0, targets);
    cfg.seed = 9;
    let lora = Lora::inject(lm.linears_mut(), &cfg).unwrap();
    if b_nonzero {
        for (i, m) in lora.modules.iter().enumerate() {
            let t = synthetic(
                &[("b".into(), m.b.dims().to_vec())],
                40 + i as u64,
                &Device::Cpu,
            )
            .unwrap();
            m.b.set(&(t["b"].clone() * 4.0).unwrap()).unwrap();
        }
    }
    lora.save_adapter(dir).unwrap();
    Artifact {
        kind: Kind::Adapter,
        dir: dir.to_path_buf(),
        key: Key::of_bytes(dir.to_string_lossy().as_bytes()),
        data: json!({"base": {"dir": base}}),
    }
}

fn movies(n: usize) -> (TaskData, Vec<smelt::data::Example>) {
    let t = TaskData::open(
        &root().join("experiments/data/movies"),
        &ReadOptions::default(),
    )
    .unwrap();
    let ex = t.train()[..n].to_vec();
    (t, ex)
}

/// Batched probed gradients vs a loop of single-example backwards over the LoRA variables.
fn check_against_loop(ap: &AdapterProbe, task: &TaskData, ex: &[smelt::data::Example]) -> usize {
    let spec = ap.format(task, "prompt", None, None, 64).unwrap();
    let feed = Feed::new(&ap.run.lm, &spec, task, ex).unwrap();
    let gold = ap.gold(&spec, task).unwrap();
    let idx: Vec<usize> = (0..feed.len()).collect();
    let (rows, f0) = ap.rows(&feed, &gold, None, &idx).unwrap();
    let d = ap.used();
    assert_eq!(rows.len(), idx.len() * d);
    let mut worst = 0f64;
    for i in idx {
        let f = ap.functional(&feed, &gold, None, &[i]).unwrap();
        ap.probe.take();
        let fi = f.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0];
        assert!((fi - f0[i]).abs() < 1e-4, "f in a batch equals f alone");
        let g = f.sum_all().unwrap().backward().unwrap();
        let mut want: Vec<f32> = Vec::new();
        for (p, v) in ap.params.iter().zip(ap.vars()) {
            if !p.used {
                continue;
            }
            let gv = g
                .get(v.as_tensor())
                .expect("every used factor gets a gradient");
            want.extend(gv.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(want.len(), d);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!(
            scale > 1e-4,
            "example {i}: gradients far from zero ({scale})"
        );
        let got = &rows[i * d..(i + 1) * d];
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        // The acceptance bound (1e-5) and f32 rounding relative to the entries (1e-4).
        assert!(
            diff <= 1e-5 && diff <= 1e-4 * scale,
            "example {i}: {diff} (scale {scale})"
        );
        worst = worst.max(diff / scale);
    }
    eprintln!("worst difference relative to the largest entry {worst:e}");
    d
}

#[test]
fn probed_lora_gradients_equal_a_per_example_loop() {
    let t = tempfile::tempdir().unwrap();
    let Some(enc) = tiny_bert(&t.path().join("bert")) else {
        return;
    };
    let dec = tiny_llama(&t.path().join("llama")).unwrap();
    let (task, ex) = movies(7);
    // Encoder prompt (label word at the mask, full vocabulary), A and B both informative.
    let a = adapter(&enc, &t.path().join("a1"), &["query", "value"], true);
    let ap = AdapterProbe::load(&a, &Device::Cpu).unwrap();
    assert!(ap.params.iter().all(|p| p.used));
    let d = check_against_loop(&ap, &task, &ex);
    assert_eq!(
        d,
        2 * 2 * (2 * 16 + 16 * 2),
        "2 layers × (query, value) × (A, B)"
    );
    drop(ap);
    // PEFT init (B = 0): A is structurally zero and skipped.
    let a = adapter(&enc, &t.path().join("a2"), &["query", "value"], false);
    let ap = AdapterProbe::load(&a, &Device::Cpu).unwrap();
    let skipped: Vec<bool> = ap
        .params
        .iter()
        .map(|p| p.name.contains("lora_A"))
        .collect();
    assert_eq!(
        ap.params.iter().map(|p| !p.used).collect::<Vec<_>>(),
        skipped
    );
    assert_eq!(check_against_loop(&ap, &task, &ex), 2 * 2 * 16 * 2);
    drop(ap);
    // Decoder: first token of the answer choice, full vocabulary.
    let a = adapter(&dec, &t.path().join("a3"), &["q_proj", "v_proj"], true);
    let ap = AdapterProbe::load(&a, &Device::Cpu).unwrap();
    check_against_loop(&ap, &task, &ex);
}

#[test]
fn projected_features_preserve_inner_products() {
    let t = tempfile::tempdir().unwrap();
    let Some(enc) = tiny_bert(&t.path().join("bert")) else {
        return;
    };
    let (task, ex) = movies(12);
    let a = adapter(&enc, &t.path().join("a"), &["query", "key", "value"], true);
    let ap = AdapterProbe::load(&a, &Device::Cpu).unwrap();
    let spec = ap.format(&task, "prompt", None, None, 64).unwrap();
    let feed = Feed::new(&ap.run.lm, &spec, &task, &ex).unwrap();
    let gold = ap.gold(&spec, &task).unwrap();
    let idx: Vec<usize> = (0..feed.len()).collect();
    let (g, _) = ap.rows(&feed, &gold, None, &idx).unwrap();
    let (n, rows) = (idx.len(), ap.used());
    let dim = 2000;
    let p = Projection {
        seed: 17,
        dim: Some(dim),
        rows,
    };
    let x = p.project(&g, n).unwrap();
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&u, &v)| u as f64 * v as f64)
            .sum::<f64>()
    };
    let (gi, xi) = (
        |i: usize| &g[i * rows..(i + 1) * rows],
        |i: usize| &x[i * dim..(i + 1) * dim],
    );
    // Var(⟨Pᵀg, Pᵀh⟩) ≤ 2‖g‖²‖h‖²/d for Rademacher P: allow 5 standard deviations.
    let eps = 5.0 * (2.0 / dim as f64).sqrt();
    let mut worst = 0f64;
    for i in 0..n {
        for j in i..n {
            let exact = dot(gi(i), gi(j));
            let scale = dot(gi(i), gi(i)).sqrt() * dot(gi(j), gi(j)).sqrt();
            let err = (dot(xi(i), xi(j)) - exact).abs() / scale;
            worst = worst.max(err);
            assert!(err < eps, "pair ({i}, {j}): relative error {err} ≥ {eps}");
        }
    }
    eprintln!("worst relative inner-product error {worst:.4} (bound {eps:.4})");
    assert!(worst > 0.0, "a projection to fewer dimensions is not exact");
}

fn run_program(t: &Path, text: &str) -> smelt::run::RunOutcome {
    let f = t.join("g.exp");
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

/// Every gradient set in the store, keyed by (batch, user seed, dim).
fn sets(store: &Path) -> BTreeMap<(u64, i64, Option<u64>), GradientSet> {
    let mut out = BTreeMap::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "gradients.json") {
                let s = GradientSet::read(p.parent().unwrap()).unwrap();
                let m = &s.meta;
                let key = (
                    m["batch"].as_u64().unwrap(),
                    m["user_seed"].as_i64().unwrap(),
                    s.projection.dim.map(|d| d as u64),
                );
                out.insert(key, s);
            }
        }
    }
    out
}

#[test]
fn estimate_gradients_runs_and_its_features_depend_on_the_seed_only() {
    let Some(lm) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let text = format!(
        "config {{ seed: 3 }}\n\
         let lm = load model(\"{}\")\n\
         let ts = [load task(\"{}/\" + n) for n in [\"movies\", \"topics\"]]\n\
         let a0 = train lora(lm, ts, max_steps=0, head=prompt)\n\
         let g = [estimate gradients(lm, ts, adapter=a0, dim=48, examples=10, batch=b, seed=s) for (b, s) in zip([4, 3, 4], [0, 0, 1])]\n\
         let e = estimate gradients(lm, ts, adapter=a0, dim=none, examples=10, batch=4)\n\
         report g\nreport e\n\
         report measure approx_error(lm, e, scales=[0.001, 0.01, 0.1]) as \"exact\"\n\
         report measure approx_error(lm, g[0], scales=[0.01, 0.1]) as \"projected\"\n",
        lm.display(),
        root().join("experiments/data").display()
    );
    let o = run_program(t.path(), &text);
    let all = sets(&t.path().join("store"));
    assert_eq!(all.len(), 4);
    let a = &all[&(4, 0, Some(48))];
    let b = &all[&(3, 0, Some(48))];
    let c = &all[&(4, 1, Some(48))];
    let e = &all[&(4, 0, None)];
    let (used, skipped) = a.coords();
    assert_eq!(
        (used, skipped),
        (3 * 2 * 384 * 8, 3 * 2 * 8 * 384),
        "B used, A skipped at init"
    );
    assert_eq!(
        a.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["movies", "topics"]
    );
    for (ta, tb) in a.tasks.iter().zip(&b.tasks) {
        assert_eq!(ta.len(), 10);
        assert_eq!((&ta.ids, &ta.labels), (&tb.ids, &tb.labels));
        let scale = ta.features.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ta
            .features
            .iter()
            .zip(&tb.features)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            scale > 0.0 && diff <= 1e-5 * scale,
            "batch size changes nothing: {diff} / {scale}"
        );
        let f0 = ta
            .f0
            .iter()
            .zip(&tb.f0)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(f0 < 1e-5);
    }
    // Another seed: another projection of the same gradients (same norms on average).
    assert_ne!(a.tasks[0].features, c.tasks[0].features);
    // Exact gradients: D_used columns, and their projection with the recorded P is `a`.
    assert_eq!(e.dim(), used);
    for (te, ta) in e.tasks.iter().zip(&a.tasks) {
        let again = a.projection.project(&te.features, te.len()).unwrap();
        let scale = ta.features.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = again
            .iter()
            .zip(&ta.features)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "projecting the exact gradients gives the features: {diff}"
        );
    }
    // §1.13: with exact gradients the first-order error vanishes faster than the distance
    // (the remainder is O(s²), so the squared relative error is O(s⁴)), far below the
    // no-gradient baseline.
    let table = |name: &str| &o.reports.iter().find(|(n, _)| n == name).unwrap().1;
    let col = |t: &smelt::report::Table, c: &str| -> Vec<f64> {
        let i = t.columns.iter().position(|x| x == c).unwrap();
        t.rows.iter().map(|r| r[i].as_f64().unwrap()).collect()
    };
    let exact = table("exact");
    let (err, base, dist) = (
        col(exact, "error"),
        col(exact, "baseline_error"),
        col(exact, "distance"),
    );
    eprintln!("approx error {err:?} baseline {base:?}");
    for (d, s) in dist.iter().zip([0.001, 0.01, 0.1]) {
        assert!((d - s).abs() < 1e-9 * s, "‖Δ‖/‖θ0‖ is the scale");
    }
    assert!(err[1] <= 1e-2 * err[2], "error(0.01) ≪ error(0.1): {err:?}");
    for (e, b) in err.iter().zip(&base) {
        assert!(*e <= 0.1 * b, "first order ≪ baseline: {e} vs {b}");
    }
    assert!(
        err[0] <= 1e-3 * base[0],
        "at distance 1e-3: {} vs {}",
        err[0],
        base[0]
    );
    let proj = table("projected");
    let (err, base) = (col(proj, "error"), col(proj, "baseline_error"));
    assert!(
        err.iter().zip(&base).all(|(e, b)| e < b),
        "{err:?} vs {base:?}"
    );
}
