//! Test fixtures for the similarity scores: the committed small encoder, the synthetic tasks as
//! `Task` values, seeded LoRA adapters written without training (random non-zero `B`, so every
//! adapter changes the model), and the argument lists the operators take.

use crate::data::ReadOptions;
use crate::data::TaskData;
use crate::nn::peft::{Lora, LoraConfig};
use crate::ops::data::task_value;
use crate::ops::merge::adapter_fixtures::rand;
use crate::ops::train::runnable::{Runnable, INFO_FILE};
use crate::ops::{Args, OpCtx};
use crate::value::{Artifact, Kind, Value};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MODEL: &str = "assets/models/minilm-l3-v8k";
pub const TASKS: [&str; 3] = ["movies", "restaurants", "topics"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A synthetic task, written into `dir` as a `Task` value.
pub fn task(dir: &Path, name: &str) -> Value {
    let t = TaskData::open(
        &root().join("experiments/data").join(name),
        &ReadOptions {
            name: None,
            train: "train".into(),
            test: "test".into(),
        },
    )
    .unwrap();
    task_value(&OpCtx::for_test(dir.join(format!("task-{name}")), 0), &t).unwrap()
}

/// A LoRA adapter on the small encoder (query/value, r = 4, α = 8) with seeded `A` and a
/// seeded non-zero `B` (scale `b_scale`), bound to the base like a trained one.
pub fn lora(dir: &Path, seed: u64, b_scale: f32) -> Value {
    lora_with_dropout(dir, seed, b_scale, 0.0)
}

/// As [`lora`], with LoRA dropout `p` recorded in the adapter's config.
pub fn lora_with_dropout(dir: &Path, seed: u64, b_scale: f32, p: f64) -> Value {
    let base = root().join(MODEL);
    let mut lm = crate::nn::load(&base, &Device::Cpu).unwrap();
    let cfg = LoraConfig {
        seed,
        dropout: p,
        ..LoraConfig::new(4, 8.0, &["query", "value"])
    };
    let l = Lora::inject(lm.linears_mut(), &cfg).unwrap();
    for (k, m) in l.modules.iter().enumerate() {
        let dims = m.b.dims().to_vec();
        let n = dims.iter().product();
        let v: Vec<f32> = rand(n, seed * 1000 + k as u64)
            .into_iter()
            .map(|x| x * b_scale)
            .collect();
        m.b.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    l.save_adapter(dir).unwrap();
    let info = json!({
        "method": "lora",
        "label": format!("lora{seed}"),
        "base": {"dir": base, "key": "minilm-test-base"},
    });
    crate::nn::peft::io::write_json(&dir.join(INFO_FILE), &info).unwrap();
    Value::Artifact(Arc::new(Artifact {
        kind: Kind::Adapter,
        dir: dir.to_path_buf(),
        key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
        data: info,
    }))
}

/// Three tasks and three adapters (adapter j "trained on" task j).
pub fn setup(dir: &Path) -> (Vec<Value>, Vec<Value>) {
    let tasks = TASKS.iter().map(|n| task(dir, n)).collect();
    let deltas = (0..3)
        .map(|j| lora(&dir.join(format!("lora{j}")), 7 + j as u64, 0.05))
        .collect();
    (deltas, tasks)
}

/// `deltas`, `tasks`, then the named extras, then the shared format defaults.
pub fn args(deltas: &[Value], tasks: &[Value], extra: Vec<(&'static str, Value)>) -> Args {
    let mut v = vec![
        ("deltas", Value::list(deltas.to_vec())),
        ("tasks", Value::list(tasks.to_vec())),
        ("head", Value::str("auto")),
        ("template", Value::None),
        ("words", Value::None),
        ("max_len", Value::Int(128)),
        ("batch", Value::Int(16)),
    ];
    for (k, x) in extra {
        v.retain(|(n, _)| *n != k);
        v.push((k, x));
    }
    Args::new(v)
}

/// Class scores of `model` on the first `n` dev examples of `task`, computed through
/// `evaluate`'s scoring routine (an independent path from the similarity code).
pub fn dev_logits(model: &Value, task: &Value, n: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let a = model.as_artifact().unwrap();
    let mut t = TaskData::from_artifact(task.as_artifact().unwrap()).unwrap();
    t.splits.get_mut("dev").unwrap().truncate(n);
    let run = Runnable::load(a, &Device::Cpu).unwrap();
    let o = crate::ops::evaluate::Overrides {
        head: "auto",
        template: None,
        words: None,
        max_len: 128,
        max_new: 1,
    };
    let s = crate::ops::evaluate::score(&run, &t, "dev", &o, 7, false).unwrap();
    (s.logits, s.gold)
}

/// Plain softmax in f64.
pub fn softmax(z: &[f32]) -> Vec<f64> {
    let e: Vec<f64> = z.iter().map(|&v| (v as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// The matrix a similarity operator returned.
pub fn matrix(v: &Value) -> crate::tensors::matrix::Matrix {
    let a = v.as_artifact().unwrap();
    assert_eq!(a.kind, Kind::Matrix);
    crate::tensors::matrix::Matrix::read(&a.dir).unwrap()
}

/// Checks labels (both axes = the task names) and the NaN diagonal.
pub fn check_layout(m: &crate::tensors::matrix::Matrix, sign: &str) {
    let names: Vec<String> = TASKS.iter().map(|s| s.to_string()).collect();
    assert_eq!(m.shape, vec![3, 3]);
    assert_eq!(m.axes[0].name, "target");
    assert_eq!(m.axes[1].name, "source");
    assert_eq!(m.axes[0].labels, names);
    assert_eq!(m.axes[1].labels, names);
    for i in 0..3 {
        for j in 0..3 {
            assert_eq!(m.get(i, j).is_nan(), i == j, "({i}, {j}) = {}", m.get(i, j));
        }
    }
    assert_eq!(m.meta["sign"], json!(sign));
}
