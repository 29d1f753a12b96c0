//! Test fixtures for adapter merges: tiny adapter directories written with the real writers
//! (bound to a fake base key), seeded values, and independent dense computations of ΔW.

use super::adapter_set::{Mode, MAIN_FILE};
use super::adapter_space::{merge_adapters, Spec};
use crate::diag::OpError;
use crate::nn::peft::io::{read_safetensors, write_json, write_safetensors};
use crate::ops::OpCtx;
use crate::value::{Artifact, Kind, Value};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const QA: &str = "base_model.model.m.q.lora_A.weight";
pub const QB: &str = "base_model.model.m.q.lora_B.weight";

/// Writes `config`, the tensors (name → shape, values) and a `smelt.json` naming `base`.
pub fn adapter_dir(
    dir: &Path,
    config: Json,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    base: &str,
    label: &str,
) -> Arc<Artifact> {
    std::fs::create_dir_all(dir).unwrap();
    write_json(&dir.join("adapter_config.json"), &config).unwrap();
    let mut m = BTreeMap::new();
    for (n, s, v) in tensors {
        m.insert(
            n.to_string(),
            Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    write_safetensors(&dir.join(MAIN_FILE), &m, &[("format", "pt")]).unwrap();
    let info = json!({
        "method": "lora", "label": label, "tasks": [label],
        "formats": {label: {"head": "prompt"}},
        "base": {"dir": "/no/base", "key": base},
        "steps": 10,
    });
    write_json(&dir.join(crate::ops::train::runnable::INFO_FILE), &info).unwrap();
    Arc::new(Artifact {
        kind: Kind::Adapter,
        dir: dir.to_path_buf(),
        key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
        data: info,
    })
}

pub fn lora_config(r: usize, alpha: f64) -> Json {
    json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q"], "bias": "none"})
}

/// A LoRA adapter with one module `m.q` (`A [r, n_in]`, `B [n_out, r]`).
pub fn lora(
    dir: &Path,
    r: usize,
    alpha: f64,
    a: Vec<f32>,
    b: Vec<f32>,
    (n_out, n_in): (usize, usize),
    base: &str,
) -> Arc<Artifact> {
    adapter_dir(
        dir,
        lora_config(r, alpha),
        &[
            ("base_model.model.m.q.lora_A.weight", vec![r, n_in], a),
            ("base_model.model.m.q.lora_B.weight", vec![n_out, r], b),
        ],
        base,
        &dir.file_name().unwrap().to_string_lossy(),
    )
}

pub fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut g = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| g.random::<f32>() * 2.0 - 1.0).collect()
}

pub fn merge(
    out: &Path,
    arts: &[&Arc<Artifact>],
    weights: &[f64],
    mode: Mode,
) -> Result<Value, OpError> {
    let cx = OpCtx::for_test(out.to_path_buf(), 0);
    let spec = Spec {
        op: "merge.linear",
        version: 1,
        weights,
        mode,
        select: &|_| true,
        record: json!({}),
    };
    merge_adapters(&cx, arts, &spec)
}

pub fn tensors(v: &Value, file: &str) -> BTreeMap<String, Vec<f32>> {
    let dir = &v.as_artifact().unwrap().dir;
    read_safetensors(&dir.join(file), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// ΔW = s·B·A as a dense `out × in` matrix, by plain loops in f64.
pub fn dense(a: &[f32], b: &[f32], r: usize, (n_out, n_in): (usize, usize), s: f64) -> Vec<f64> {
    let mut w = vec![0.0; n_out * n_in];
    for i in 0..n_out {
        for j in 0..n_in {
            for k in 0..r {
                w[i * n_in + j] += s * b[i * r + k] as f64 * a[k * n_in + j] as f64;
            }
        }
    }
    w
}

/// The merged adapter's ΔW, its rank and its scale (`α/r` from its config).
pub fn merged_delta(v: &Value, dims: (usize, usize)) -> (Vec<f64>, usize) {
    let a = v.as_artifact().unwrap();
    let cfg = crate::nn::peft::io::read_json(&a.dir.join("adapter_config.json")).unwrap();
    let r = cfg["r"].as_u64().unwrap() as usize;
    let s = cfg["lora_alpha"].as_f64().unwrap() / r as f64;
    let t = tensors(v, MAIN_FILE);
    (dense(&t[QA], &t[QB], r, dims, s), r)
}

pub fn max_diff(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}
