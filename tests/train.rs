//! PEFT and training on the real small encoder (`assets/models/minilm-l3-v8k`, a 3-layer BERT).
//!
//! Checks the LoRA invariants (init ≡ base, merged ≡ unmerged after training, gradients reach
//! exactly the LoRA vars, every `B` included), the `no_match` error, the PEFT directory round
//! trip (also with Python-PEFT key spellings), the optimisers against hand-computed steps,
//! a tiny SST-2 16-shot LoRA fine-tune that must beat the majority class and be bit-for-bit
//! reproducible, the NaN-loss stop, and a throughput figure (LoRA training tokens/s at batch 8 ×
//! 128 tokens). Tests that need the model or task files skip with a message when they are absent.

use candle_core::{DType, Device, Tensor, Var};
use smelt::nn::peft::{lora::PREFIX, Lora, LoraConfig};
use smelt::nn::tokenizer::{Batch, Encoded, Tok};
use smelt::nn::{load, BertModel, LoadedModel, Model};
use smelt::train::classify::{argmax_rows, cls_logits, cross_entropy, ClsHead};
use smelt::train::{accuracy, train, Optimizer, OptimizerConfig, TrainConfig};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> Option<LoadedModel> {
    let dir = root().join("assets/models/minilm-l3-v8k");
    if !dir.is_dir() {
        eprintln!("skipping: {} absent", dir.display());
        return None;
    }
    Some(load(&dir, &Device::Cpu).unwrap())
}

fn bert(m: &LoadedModel) -> &BertModel {
    match &m.model {
        Model::Bert(b) => b,
        Model::Llama(_) => panic!("expected an encoder"),
    }
}

/// `(text, label)` rows of a JSONL task file (first `limit`), or `None` when absent.
fn jsonl(rel: &str, limit: usize) -> Option<Vec<(String, u32)>> {
    let p = root().join("../shared/assets/tasks").join(rel);
    let Ok(text) = std::fs::read_to_string(&p) else {
        eprintln!("skipping: {} absent", p.display());
        return None;
    };
    let rows = text.lines().filter(|l| !l.trim().is_empty()).take(limit);
    Some(
        rows.map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["text"].as_str().unwrap().to_string(),
                v["label"].as_u64().unwrap() as u32,
            )
        })
        .collect(),
    )
}

/// Encodes with `[CLS] … [SEP]`, truncated to `max` tokens (keeping the final `[SEP]`).
fn encode(tok: &Tok, text: &str, max: usize) -> Encoded {
    let mut e = tok.encode(text).unwrap();
    if e.len() > max {
        let last = *e.ids.last().unwrap();
        e.ids.truncate(max);
        e.type_ids.truncate(max);
        e.attention_mask.truncate(max);
        e.ids[max - 1] = last;
    }
    e
}

fn batch(tok: &Tok, encs: &[Encoded], idx: &[usize]) -> Batch {
    let sel: Vec<Encoded> = idx.iter().map(|&i| encs[i].clone()).collect();
    tok.pad(&sel, &Device::Cpu).unwrap()
}

fn sample_batch(m: &LoadedModel) -> Batch {
    let texts = [
        ("a gorgeous, witty film", None),
        ("dull and far too long .", Some("no")),
    ];
    m.tokenizer()
        .unwrap()
        .encode_batch(&texts, &Device::Cpu)
        .unwrap()
}

fn hidden(m: &LoadedModel, b: &Batch) -> Tensor {
    m.forward(&b.ids, Some(&b.type_ids), Some(&b.attention_mask))
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    smelt::nn::ops::max_abs_diff(a, b).unwrap()
}

fn qv(r: usize, seed: u64) -> LoraConfig {
    LoraConfig {
        seed,
        ..LoraConfig::new(r, 16.0, &["query", "value"])
    }
}

#[test]
fn lora_init_is_base_and_gradients_reach_exactly_the_lora_vars() {
    let Some(mut m) = model() else { return };
    let b = sample_batch(&m);
    let base = hidden(&m, &b);
    let lora = Lora::inject(m.linears_mut(), &qv(8, 1)).unwrap();
    assert_eq!(lora.modules.len(), 6, "3 layers × (query, value)");
    assert_eq!(
        lora.varmap.all_vars().len(),
        12,
        "the var map holds only A and B"
    );
    // B = 0, so only the norm/softmax path changes: with vars in the graph the differentiable
    // composites replace the fused kernels (they agree to ~1e-6).
    let d = max_diff(&base, &hidden(&m, &b));
    assert!(d < 1e-5, "init vs base: {d}");
    // one step so that ∂L/∂A is non-zero too, then a fresh backward
    let loss = |m: &LoadedModel| hidden(m, &b).sqr().unwrap().mean_all().unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::adamw(1e-3), lora.vars()).unwrap();
    opt.step_store(&loss(&m).backward().unwrap(), 1e-3).unwrap();
    let grads = loss(&m).backward().unwrap();
    for md in &lora.modules {
        for (what, v) in [("A", &md.a), ("B", &md.b)] {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {what}", md.name));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{}: |∂L/∂{what}| = {n}", md.name);
        }
    }
    let mut m = m;
    for (name, lin) in m.linears_mut() {
        assert!(
            grads.get(&lin.weight).is_none(),
            "{name}: frozen weight got a gradient"
        );
        if let Some(bias) = &lin.bias {
            assert!(
                grads.get(bias).is_none(),
                "{name}: frozen bias got a gradient"
            );
        }
    }
}

#[test]
fn merged_equals_unmerged_after_training() {
    let Some(mut m) = model() else { return };
    let b = sample_batch(&m);
    let mut lora = Lora::inject(
        m.linears_mut(),
        &LoraConfig {
            rslora: true,
            ..qv(4, 2)
        },
    )
    .unwrap();
    let target = hidden(&m, &b).affine(0.5, 0.1).unwrap();
    let vars = lora.vars();
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::adamw(5e-3),
        epochs: 4,
        batch_size: 1,
        ..Default::default()
    };
    let mut loss = |_: &[usize], _: bool| Ok(hidden(&m, &b).sub(&target)?.sqr()?.mean_all()?);
    let rep = train(&cfg, &vars, 2, None, &mut loss, None).unwrap();
    assert!(rep.losses.last() < rep.losses.first(), "{:?}", rep.losses);
    let unmerged = hidden(&m, &b);
    lora.merge(m.linears_mut()).unwrap();
    assert!(m.linears_mut().iter().all(|(_, l)| l.lora.is_none()));
    let merged = hidden(&m, &b);
    assert!(
        max_diff(&unmerged, &merged) < 1e-5,
        "merged vs unmerged: {}",
        max_diff(&unmerged, &merged)
    );
    lora.unmerge(m.linears_mut()).unwrap();
    assert!(max_diff(&unmerged, &hidden(&m, &b)) < 1e-5);
}

#[test]
fn a_pattern_matching_nothing_is_no_match() {
    let Some(mut m) = model() else { return };
    let e = Lora::inject(
        m.linears_mut(),
        &LoraConfig::new(4, 8.0, &["query", "q_proj"]),
    )
    .unwrap_err();
    assert_eq!(e.code, "smelt::peft::no_match");
    assert!(e.message.contains("q_proj"), "{}", e.message);
    assert!(e
        .help
        .unwrap()
        .contains("encoder.layer.0.attention.self.query"));
    assert!(
        m.linears_mut().iter().all(|(_, l)| l.lora.is_none()),
        "nothing injected on error"
    );
    let ok = Lora::inject(
        m.linears_mut(),
        &LoraConfig::new(2, 4.0, &[r"re:encoder\.layer\.[02]\..*\.value"]),
    );
    assert_eq!(ok.unwrap().modules.len(), 2);
}

/// Trained-looking adapter: LoRA factors and a head, all set to seeded non-zero values.
fn perturbed(m: &mut LoadedModel) -> (Lora, ClsHead) {
    let mut lora = Lora::inject(
        m.linears_mut(),
        &LoraConfig {
            task_type: Some("SEQ_CLS".into()),
            ..qv(8, 3)
        },
    )
    .unwrap();
    for (i, md) in lora.modules.iter().enumerate() {
        let b = Tensor::randn(0f32, 0.05, md.b.dims(), &Device::Cpu).unwrap();
        md.b.set(&b.affine(1.0, i as f64 * 1e-3).unwrap()).unwrap();
    }
    let head = ClsHead::new(384, 2, 5, &Device::Cpu).unwrap();
    for (n, v) in head.named_vars() {
        lora.add_module_to_save(n, &v).unwrap();
    }
    (lora, head)
}

#[test]
fn peft_directory_round_trip_gives_identical_logits() {
    let Some(mut m) = model() else { return };
    let b = sample_batch(&m);
    let (lora, head) = perturbed(&mut m);
    let want = cls_logits(bert(&m), &head, &b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lora.save_adapter(dir.path()).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    for k in [
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "use_rslora",
        "task_type",
        "base_model_name_or_path",
        "fan_in_fan_out",
        "inference_mode",
        "modules_to_save",
    ] {
        assert!(cfg.get(k).is_some(), "adapter_config.json lacks {k}");
    }
    assert_eq!(
        (
            cfg["peft_type"].as_str(),
            cfg["r"].as_u64(),
            cfg["lora_alpha"].as_u64()
        ),
        (Some("LORA"), Some(8), Some(16))
    );
    assert_eq!(
        (cfg["bias"].as_str(), cfg["fan_in_fan_out"].as_bool()),
        (Some("none"), Some(false))
    );
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    assert_eq!(cfg["target_modules"], serde_json::json!(["query", "value"]));
    let tensors = smelt::nn::peft::io::read_safetensors(
        &dir.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(
        tensors.contains_key("base_model.model.encoder.layer.0.attention.self.query.lora_A.weight")
    );
    assert_eq!(
        tensors["base_model.model.encoder.layer.2.attention.self.value.lora_B.weight"].dims(),
        &[384, 8]
    );
    assert!(tensors.contains_key("base_model.model.classifier.weight"));

    let check = |dir: &Path| {
        let mut fresh = model().unwrap();
        let l2 = Lora::load_adapter(fresh.linears_mut(), dir).unwrap();
        assert_eq!(
            (l2.modules.len(), l2.config.r, l2.config.alpha),
            (6, 8, 16.0)
        );
        let h2 = ClsHead::from_vars(
            l2.extra("classifier.weight").unwrap().clone(),
            l2.extra("classifier.bias").unwrap().clone(),
        )
        .unwrap();
        let got = cls_logits(bert(&fresh), &h2, &b).unwrap();
        assert_eq!(max_diff(&want, &got), 0.0, "logits after reload");
    };
    check(dir.path());
    // the same adapter spelled as Python PEFT writes it for BertForSequenceClassification
    let py = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("adapter_config.json"),
        py.path().join("adapter_config.json"),
    )
    .unwrap();
    let renamed = tensors
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replacen(PREFIX, "base_model.model.bert.", 1)
                .replace(".weight", ".default.weight");
            let k = k
                .replace(
                    "bert.classifier.default.weight",
                    "classifier.modules_to_save.default.weight",
                )
                .replace("bert.classifier.bias", "classifier.bias");
            (k, t.to_dtype(DType::F32).unwrap())
        })
        .collect();
    smelt::nn::peft::io::write_safetensors(
        &py.path().join("adapter_model.safetensors"),
        &renamed,
        &[("format", "pt")],
    )
    .unwrap();
    check(py.path());
}

#[test]
fn adamw_one_step_on_a_scalar_matches_hand_computation() {
    let p = Var::new(&[1f32], &Device::Cpu).unwrap();
    let cfg = OptimizerConfig::AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut o = Optimizer::new(cfg, vec![p.clone()]).unwrap();
    let g = |x: f32| vec![Some(Tensor::new(&[x], &Device::Cpu).unwrap())];
    o.step(&g(0.5), 0.1).unwrap();
    // m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25: p = 1·(1 − 0.1·0.01) − 0.1·0.5/(0.5 + 1e-8)
    let p1 = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
    let got = p.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((got - p1).abs() < 1e-6, "{got} vs {p1}");
    o.step(&g(-1.0), 0.1).unwrap();
    let (m, v) = (0.9 * 0.05 - 0.1, 0.999 * 0.00025 + 0.001);
    let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
    let p2 = p1 * 0.999 - 0.1 * mh / (vh.sqrt() + 1e-8);
    let got = p.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((got - p2).abs() < 1e-6, "{got} vs {p2}");
}

/// HF Adafactor (`scale_parameter=False, relative_step=False`, no β₁) written out with loops.
fn adafactor_reference(p: &mut [Vec<f64>], grads: &[Vec<Vec<f64>>], lr: f64) {
    let (rows, cols) = (p.len(), p[0].len());
    let (mut r, mut c) = (vec![0.0; rows], vec![0.0; cols]);
    for (t, g) in grads.iter().enumerate() {
        let rho = 1.0 - ((t + 1) as f64).powf(-0.8);
        let u: Vec<Vec<f64>> = g
            .iter()
            .map(|row| row.iter().map(|x| x * x + 1e-30).collect())
            .collect();
        for i in 0..rows {
            r[i] = rho * r[i] + (1.0 - rho) * u[i].iter().sum::<f64>() / cols as f64;
        }
        for j in 0..cols {
            c[j] = rho * c[j] + (1.0 - rho) * (0..rows).map(|i| u[i][j]).sum::<f64>() / rows as f64;
        }
        let rmean = r.iter().sum::<f64>() / rows as f64;
        let mut upd = vec![vec![0.0; cols]; rows];
        for i in 0..rows {
            for j in 0..cols {
                upd[i][j] = g[i][j] / ((r[i] / rmean) * c[j]).sqrt();
            }
        }
        let rms = (upd.iter().flatten().map(|x| x * x).sum::<f64>() / (rows * cols) as f64).sqrt();
        let div = (rms / 1.0).max(1.0);
        for i in 0..rows {
            for j in 0..cols {
                p[i][j] -= lr * upd[i][j] / div;
            }
        }
    }
}

#[test]
fn adafactor_matches_a_reference_on_a_small_matrix() {
    let init = vec![vec![0.5, -1.0, 2.0], vec![0.1, 0.3, -0.7]];
    let grads: Vec<Vec<Vec<f64>>> = (0..3)
        .map(|t| {
            (0..2)
                .map(|i| {
                    (0..3)
                        .map(|j| ((t * 7 + i * 3 + j) as f64 * 0.37).sin() * (1.0 + i as f64))
                        .collect()
                })
                .collect()
        })
        .collect();
    let flat = |m: &[Vec<f64>]| m.iter().flatten().map(|&x| x as f32).collect::<Vec<f32>>();
    let p = Var::from_vec(flat(&init), (2, 3), &Device::Cpu).unwrap();
    let mut o = Optimizer::new(OptimizerConfig::adafactor(0.01), vec![p.clone()]).unwrap();
    for g in &grads {
        o.step(
            &[Some(
                Tensor::from_vec(flat(g), (2, 3), &Device::Cpu).unwrap(),
            )],
            0.01,
        )
        .unwrap();
    }
    let mut want = init.clone();
    adafactor_reference(&mut want, &grads, 0.01);
    let got = p
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (g, w) in got.iter().zip(want.iter().flatten()) {
        assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    // a vector is not factored: after one step u = g/|g| element-wise, RMS 1, so p -= lr·sign(g)
    let v = Var::new(&[1f32, 1.0], &Device::Cpu).unwrap();
    let mut o = Optimizer::new(OptimizerConfig::adafactor(0.1), vec![v.clone()]).unwrap();
    o.step(
        &[Some(Tensor::new(&[3f32, -0.02], &Device::Cpu).unwrap())],
        0.1,
    )
    .unwrap();
    let got = v.as_tensor().to_vec1::<f32>().unwrap();
    assert!(
        (got[0] - 0.9).abs() < 1e-6 && (got[1] - 1.1).abs() < 1e-6,
        "{got:?}"
    );
}

struct Sst2Run {
    accuracy: f64,
    losses: Vec<f64>,
    train_tokens: usize,
    train_seconds: f64,
}

/// LoRA r=8 (α=32) on query/value + a seeded CLS head, AdamW 1e-3 for 10 epochs (40 steps) at batch 8
/// on SST-2 16-shot (split seed 42), evaluated on the first 200 test sentences with the
/// adapter merged (the fast inference path).
fn sst2_run(m0: &LoadedModel) -> Sst2Run {
    let train_rows = jsonl("sst2/k-shot/16-42.jsonl", usize::MAX).unwrap();
    let test_rows = jsonl("sst2/test.jsonl", 200).unwrap();
    let mut m = m0.clone();
    let cfg = LoraConfig {
        seed: 42,
        ..LoraConfig::new(8, 32.0, &["query", "value"])
    };
    let mut lora = Lora::inject(m.linears_mut(), &cfg).unwrap();
    let head = ClsHead::new(384, 2, 42, &Device::Cpu).unwrap();
    let tok = m.tokenizer().unwrap().clone();
    let enc = |rows: &[(String, u32)]| {
        rows.iter()
            .map(|(t, _)| encode(&tok, t, 128))
            .collect::<Vec<_>>()
    };
    let (tr, te) = (enc(&train_rows), enc(&test_rows));
    let labels: Vec<u32> = train_rows.iter().map(|r| r.1).collect();
    let mut vars = lora.vars();
    vars.extend(head.vars());
    let mut tokens = 0usize;
    let rep = {
        let model = bert(&m);
        let mut loss = |idx: &[usize], train: bool| {
            lora.set_training(train);
            let b = batch(&tok, &tr, idx);
            tokens += b.lengths.iter().sum::<usize>();
            let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            cross_entropy(&cls_logits(model, &head, &b)?, &y)
        };
        let cfg = TrainConfig {
            optimizer: OptimizerConfig::adamw(1e-3),
            epochs: 10,
            batch_size: 8,
            seed: 42,
            max_grad_norm: Some(1.0),
            ..Default::default()
        };
        train(&cfg, &vars, tr.len(), None, &mut loss, None).unwrap()
    };
    lora.set_training(false);
    lora.merge(m.linears_mut()).unwrap();
    let model = bert(&m);
    let mut pred = Vec::new();
    let idx: Vec<usize> = (0..te.len()).collect();
    for chunk in idx.chunks(50) {
        pred.extend(
            argmax_rows(&cls_logits(model, &head, &batch(&tok, &te, chunk)).unwrap()).unwrap(),
        );
    }
    let gold: Vec<u32> = test_rows.iter().map(|r| r.1).collect();
    Sst2Run {
        accuracy: accuracy(&pred, &gold).unwrap(),
        losses: rep.losses,
        train_tokens: tokens,
        train_seconds: rep.seconds,
    }
}

#[test]
fn sst2_16_shot_lora_learns_and_is_reproducible() {
    let Some(m) = model() else { return };
    let Some(gold) = jsonl("sst2/test.jsonl", 200) else {
        return;
    };
    if jsonl("sst2/k-shot/16-42.jsonl", 1).is_none() {
        return;
    }
    let pos = gold.iter().filter(|r| r.1 == 1).count() as f64 / gold.len() as f64;
    let majority = pos.max(1.0 - pos);
    let a = sst2_run(&m);
    let b = sst2_run(&m);
    eprintln!(
        "SST-2 16-shot LoRA: test acc {:.3} (majority {majority:.3}), loss {:.3} → {:.4}, {} train tokens in {:.2} s ({:.0} tokens/s)",
        a.accuracy,
        a.losses[0],
        a.losses.last().unwrap(),
        a.train_tokens,
        a.train_seconds,
        a.train_tokens as f64 / a.train_seconds
    );
    assert_eq!(
        (a.accuracy, &a.losses),
        (b.accuracy, &b.losses),
        "two runs with one seed differ"
    );
    assert!(
        a.losses.last().unwrap() < &0.1,
        "the training set is fitted: {:?}",
        a.losses
    );
    assert!(
        a.accuracy >= majority + 0.07,
        "accuracy {} vs majority {majority}",
        a.accuracy
    );
}

#[test]
fn nan_loss_stops_with_the_step_number() {
    let Some(m) = model() else { return };
    let Some(rows) = jsonl("sst2/k-shot/16-42.jsonl", 8) else {
        return;
    };
    let mut m = m;
    let lora = Lora::inject(m.linears_mut(), &qv(4, 0)).unwrap();
    let head = ClsHead::new(384, 2, 0, &Device::Cpu).unwrap();
    let tok = m.tokenizer().unwrap().clone();
    let encs: Vec<Encoded> = rows.iter().map(|(t, _)| encode(&tok, t, 64)).collect();
    let model = bert(&m);
    let mut loss = |idx: &[usize], _: bool| {
        let y: Vec<u32> = idx.iter().map(|&i| rows[i].1).collect();
        cross_entropy(&cls_logits(model, &head, &batch(&tok, &encs, idx))?, &y)
    };
    let mut vars = lora.vars();
    vars.extend(head.vars());
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::adamw(1e30),
        epochs: 5,
        batch_size: 4,
        ..Default::default()
    };
    let e = train(&cfg, &vars, rows.len(), None, &mut loss, None).unwrap_err();
    assert_eq!(e.code, "smelt::train::nan_loss");
    assert!(e.message.contains("step 2"), "{}", e.message);
    assert!(e.help.unwrap().contains("learning rate"));
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

#[test]
fn lora_training_throughput_batch_8_seq_128() {
    let Some(mut m) = model() else { return };
    let lora = Lora::inject(m.linears_mut(), &qv(8, 0)).unwrap();
    let head = ClsHead::new(384, 2, 0, &Device::Cpu).unwrap();
    let tok = m.tokenizer().unwrap().clone();
    let long =
        "the film is a gorgeous , witty and deeply moving portrait of a family . ".repeat(12);
    let encs: Vec<Encoded> = (0..8)
        .map(|i| encode(&tok, &format!("{i} {long}"), 128))
        .collect();
    assert!(encs.iter().all(|e| e.len() == 128));
    let b = tok.pad(&encs, &Device::Cpu).unwrap();
    let model = bert(&m);
    let mut vars = lora.vars();
    vars.extend(head.vars());
    let mut loss = |_: &[usize], _: bool| {
        cross_entropy(&cls_logits(model, &head, &b)?, &[0, 1, 0, 1, 0, 1, 0, 1])
    };
    let warm = TrainConfig {
        epochs: 1,
        batch_size: 8,
        ..Default::default()
    };
    train(&warm, &vars, 8, None, &mut loss, None).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 8,
        ..Default::default()
    };
    let rep = train(&cfg, &vars, 8, None, &mut loss, None).unwrap();
    let tps = (3 * 8 * 128) as f64 / rep.seconds;
    eprintln!(
        "LoRA r=8 (q,v) + head, batch 8 × 128: {:.0} training tokens/s ({:.3} s/step), peak RSS {:.0} MiB",
        tps,
        rep.seconds / 3.0,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    assert!(tps > 0.0 && rep.losses.iter().all(|l| l.is_finite()));
}
