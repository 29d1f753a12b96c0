//! Adapter-space merges: combine PEFT adapters of one base into one adapter directory that
//! `evaluate`, `model apply` and `save` use like any other.
//!
//! * `mode=factors` (default, paper 2 §2.6): every tensor of the adapter files is combined on its
//!   own, `t = Σᵢ wᵢ tᵢ` in f32 in input order — LoRA `A` and `B` apart, bottleneck `down`/`up`,
//!   prefix embeddings and their MLP (the prefix is then recomputed from the merged MLP, as
//!   loading it would), extra saved modules too. One adapter with weight 1 comes back bit for bit.
//! * `mode=delta` (LoRA): the exact merge `ΔW = Σᵢ wᵢ sᵢ Bᵢ Aᵢ`, re-factorised by SVD to
//!   `rank` ([`super::adapter_delta`]).
//!
//! The directory keeps the first input's key names and `adapter_config.json` (delta mode sets
//! `r`). `heads.safetensors` is merged with the same weights when every input has the same head
//! tensors, else dropped with a note. `smelt.json` is the first input's with the method, label,
//! the union of tasks and input formats and a `merge` record (inputs, weights, mode, rank,
//! truncation, notes) replacing its training report. Unselected tensors of a name filter are
//! copied from the first input.

use super::adapter_delta::delta_merge;
use super::adapter_prefix::prefix_mlp;
use super::adapter_set::{
    check_compatible, AdapterIn, Mode, PeftKind, Tensor32, INCOMPATIBLE, MAIN_FILE,
};
use super::weighted_sum;
use crate::diag::OpError;
use crate::nn::peft::io::{write_json, write_safetensors};
use crate::nn::peft::prefix::ENCODER_FILE;
use crate::ops::train::runnable::INFO_FILE;
use crate::ops::OpCtx;
use crate::train::delta::HEADS_FILE;
use crate::value::{Artifact, Kind, Value};
use candle_core::{Device, Tensor};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a merge operator asks of the engine.
pub struct Spec<'a> {
    /// Operator id and version (`merge.average`, 1).
    pub op: &'static str,
    pub version: u32,
    /// One weight per input.
    pub weights: &'a [f64],
    pub mode: Mode,
    /// Which tensors to merge (by the first input's tensor names); the rest come from input 1.
    pub select: &'a dyn Fn(&str) -> bool,
    /// Extra fields for the `merge` record (e.g. softmax scores and temperature).
    pub record: Json,
}

/// Keys of a training report that do not describe a merged adapter.
const TRAINING_KEYS: &[&str] = &[
    "steps",
    "epochs",
    "examples",
    "first_loss",
    "final_loss",
    "best_dev",
    "stopped_early",
    "train_seconds",
    "source",
];

pub(super) fn weighted(
    name: &str,
    per_input: &[&BTreeMap<String, Tensor32>],
    w32: &[f32],
    selected: bool,
) -> Result<Tensor32, OpError> {
    let (shape, first) = per_input[0].get(name).ok_or_else(|| missing(name, 1))?;
    if !selected {
        return Ok((shape.clone(), first.clone()));
    }
    let mut xs = Vec::with_capacity(per_input.len());
    for (i, m) in per_input.iter().enumerate() {
        let (s, v) = m.get(name).ok_or_else(|| missing(name, i + 1))?;
        if s != shape {
            return Err(OpError::new(
                INCOMPATIBLE,
                format!(
                    "tensor `{name}` is {s:?} in adapter {} but {shape:?} in adapter 1",
                    i + 1
                ),
            ));
        }
        xs.push(v.clone());
    }
    Ok((shape.clone(), weighted_sum(&xs, w32)))
}

pub(super) fn missing(name: &str, i: usize) -> OpError {
    OpError::new(INCOMPATIBLE, format!("adapter {i} has no tensor `{name}`"))
        .with_help("the adapters must have the same tensors")
}

/// Merge `arts` (already known to be adapters) into the node's output directory.
pub fn merge_adapters(cx: &OpCtx, arts: &[&Arc<Artifact>], spec: &Spec) -> Result<Value, OpError> {
    let ins: Vec<AdapterIn> = arts
        .iter()
        .map(|a| AdapterIn::open(a))
        .collect::<Result<_, _>>()?;
    check_compatible(&ins, spec.mode)?;
    if spec.weights.len() != ins.len() {
        return Err(OpError::new(
            "smelt::run::length_mismatch",
            format!("{} adapters but {} weights", ins.len(), spec.weights.len()),
        ));
    }
    let w32: Vec<f32> = spec.weights.iter().map(|&w| w as f32).collect();
    let first = &ins[0];
    let mains: Vec<BTreeMap<String, Tensor32>> = ins
        .iter()
        .map(|a| a.read(MAIN_FILE))
        .collect::<Result<_, _>>()?;
    let main_refs: Vec<&BTreeMap<String, Tensor32>> = mains.iter().collect();
    let mut notes: Vec<String> = Vec::new();
    let mut record = json!({});
    let mut config = first.config.clone();
    let mut out_main: BTreeMap<String, Tensor32> = BTreeMap::new();
    let mut out_encoder: Option<BTreeMap<String, Tensor32>> = None;

    match spec.mode {
        Mode::Factors => {
            for name in mains[0].keys() {
                let t = weighted(name, &main_refs, &w32, (spec.select)(name))?;
                out_main.insert(name.clone(), t);
            }
            if first.kind == PeftKind::Prefix {
                out_encoder = prefix_mlp(&ins, &w32, spec.select, &mut out_main, &mut notes)?;
            }
        }
        Mode::Delta { rank } => {
            let (r_out, rec) = delta_merge(&ins, &main_refs, spec, rank, &mut out_main)?;
            config["r"] = json!(r_out);
            record = rec;
        }
    }

    // Heads: merged when every input has the same head tensors.
    let heads: Vec<BTreeMap<String, Tensor32>> = ins
        .iter()
        .map(|a| a.read(HEADS_FILE))
        .collect::<Result<_, _>>()?;
    let shapes = |h: &BTreeMap<String, Tensor32>| -> Vec<(String, Vec<usize>)> {
        h.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect()
    };
    let mut out_heads = BTreeMap::new();
    let heads_note = if heads.iter().all(|h| h.is_empty()) {
        "none".to_string()
    } else if let Some(i) = heads.iter().position(|h| shapes(h) != shapes(&heads[0])) {
        let why = format!(
            "dropped: adapter {} has different head tensors than adapter 1",
            i + 1
        );
        notes.push(format!("heads.safetensors {why}"));
        why
    } else {
        let refs: Vec<&BTreeMap<String, Tensor32>> = heads.iter().collect();
        for name in heads[0].keys() {
            out_heads.insert(
                name.clone(),
                weighted(name, &refs, &w32, (spec.select)(name))?,
            );
        }
        "merged".to_string()
    };

    // Write the directory.
    let out = cx.out_dir.join("adapter");
    std::fs::create_dir_all(&out)?;
    let mut merge = json!({
        "op": spec.op,
        "mode": spec.mode.name(),
        "inputs": ins.iter().map(|a| json!({"key": a.art.key.hex(), "label": a.label()})).collect::<Vec<_>>(),
        "weights": spec.weights,
        "heads": heads_note,
        "notes": notes,
    });
    for src in [&record, &spec.record] {
        if let (Some(m), Some(r)) = (merge.as_object_mut(), src.as_object()) {
            m.extend(r.clone());
        }
    }
    let meta_json = merge.to_string();
    let meta = [("format", "pt"), ("smelt", meta_json.as_str())];
    write_safetensors(&out.join(MAIN_FILE), &to_candle(&out_main)?, &meta)?;
    if let Some(enc) = &out_encoder {
        write_safetensors(&out.join(ENCODER_FILE), &to_candle(enc)?, &meta)?;
    }
    if !out_heads.is_empty() {
        write_safetensors(&out.join(HEADS_FILE), &to_candle(&out_heads)?, &meta)?;
    }
    write_json(&out.join("adapter_config.json"), &config)?;
    let info = merged_info(cx, &ins, spec, merge);
    write_json(&out.join(INFO_FILE), &info)?;
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Adapter,
        dir: out,
        key: cx.key,
        data: info,
    })))
}

fn to_candle(m: &BTreeMap<String, Tensor32>) -> Result<BTreeMap<String, Tensor>, OpError> {
    m.iter()
        .map(|(k, (s, v))| {
            Ok((
                k.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu)?,
            ))
        })
        .collect()
}

/// `smelt.json` of the result: the first input's, with the training report replaced.
fn merged_info(cx: &OpCtx, ins: &[AdapterIn], spec: &Spec, merge: Json) -> Json {
    let first = &ins[0];
    let mut info = match &first.info {
        Json::Object(_) => first.info.clone(),
        _ => json!({}),
    };
    let o = info.as_object_mut().expect("an object");
    for k in TRAINING_KEYS {
        o.remove(*k);
    }
    let short = spec.op.rsplit('.').next().unwrap_or(spec.op);
    let labels: Vec<String> = ins.iter().map(AdapterIn::label).collect();
    let mut tasks: Vec<Json> = Vec::new();
    let mut formats = serde_json::Map::new();
    for a in ins {
        for t in a.info["tasks"].as_array().into_iter().flatten() {
            if !tasks.contains(t) {
                tasks.push(t.clone());
            }
        }
        for (k, v) in a.info["formats"].as_object().into_iter().flatten() {
            formats.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    o.insert("method".into(), json!(spec.op));
    o.insert("peft".into(), json!(first.kind.name()));
    let tag = match spec.mode {
        Mode::Factors => short.to_string(),
        Mode::Delta { .. } => format!("{short}/delta"),
    };
    o.insert(
        "label".into(),
        json!(format!("{tag}({})", labels.join(", "))),
    );
    o.insert("tasks".into(), json!(tasks));
    o.insert("formats".into(), Json::Object(formats));
    if o.get("base").is_none_or(Json::is_null) {
        o.insert("base".into(), first.art.data["base"].clone());
    }
    o.insert("op".into(), json!(spec.op));
    o.insert("op_version".into(), json!(spec.version));
    o.insert("node".into(), json!(cx.key.hex()));
    o.insert("merge".into(), merge);
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::adapter_fixtures::*;
    use std::path::Path;

    #[test]
    fn one_adapter_with_weight_one_comes_back() {
        let t = tempfile::tempdir().unwrap();
        let dims = (6, 5);
        let (a, b) = (rand(3 * 5, 1), rand(6 * 3, 2));
        let x = lora(
            &t.path().join("x"),
            3,
            8.0,
            a.clone(),
            b.clone(),
            dims,
            "base",
        );
        let f = merge(&t.path().join("f"), &[&x], &[1.0], Mode::Factors).unwrap();
        let got = tensors(&f, MAIN_FILE);
        assert_eq!((got[QA].clone(), got[QB].clone()), (a.clone(), b.clone()));
        let d = merge(
            &t.path().join("d"),
            &[&x],
            &[1.0],
            Mode::Delta { rank: None },
        )
        .unwrap();
        let (w, r) = merged_delta(&d, dims);
        assert_eq!(r, 3);
        assert_eq!(d.as_artifact().unwrap().data["merge"]["rank"], 3);
        let want = dense(&a, &b, 3, dims, 8.0 / 3.0);
        assert!(max_diff(&w, &want) < 1e-6, "{}", max_diff(&w, &want));
        // smelt.json: the first input's, with a merge record instead of the training report
        let info = &f.as_artifact().unwrap().data;
        assert_eq!(info["base"]["key"], "base");
        assert_eq!(info["label"], "linear(x)");
        assert!(info.get("steps").is_none());
        assert_eq!(info["merge"]["weights"], json!([1.0]));
    }

    #[test]
    fn factor_mode_is_the_per_tensor_weighted_sum() {
        let t = tempfile::tempdir().unwrap();
        let dims = (4, 3);
        let (a1, b1, a2, b2) = (rand(6, 3), rand(8, 4), rand(6, 5), rand(8, 6));
        let x = lora(
            &t.path().join("x"),
            2,
            4.0,
            a1.clone(),
            b1.clone(),
            dims,
            "base",
        );
        let y = lora(
            &t.path().join("y"),
            2,
            4.0,
            a2.clone(),
            b2.clone(),
            dims,
            "base",
        );
        let m = merge(&t.path().join("m"), &[&x, &y], &[0.25, -1.5], Mode::Factors).unwrap();
        let got = tensors(&m, MAIN_FILE);
        let sum = |p: &[f32], q: &[f32]| -> Vec<f32> {
            p.iter().zip(q).map(|(p, q)| 0.25 * p + -1.5 * q).collect()
        };
        assert_eq!(got[QA], sum(&a1, &a2));
        assert_eq!(got[QB], sum(&b1, &b2));
        // … which is not the weighted sum of the ΔW (cross terms)
        let (w, _) = merged_delta(&m, dims);
        let exact: Vec<f64> = dense(&a1, &b1, 2, dims, 2.0)
            .iter()
            .zip(dense(&a2, &b2, 2, dims, 2.0))
            .map(|(p, q)| 0.25 * p - 1.5 * q)
            .collect();
        assert!(max_diff(&w, &exact) > 1e-3);
    }

    #[test]
    fn heads_merge_when_all_have_them_and_are_dropped_otherwise() {
        let t = tempfile::tempdir().unwrap();
        let dims = (4, 3);
        let x = lora(
            &t.path().join("x"),
            2,
            4.0,
            rand(6, 1),
            rand(8, 2),
            dims,
            "b",
        );
        let y = lora(
            &t.path().join("y"),
            2,
            4.0,
            rand(6, 3),
            rand(8, 4),
            dims,
            "b",
        );
        let head = |dir: &Path, v: Vec<f32>| {
            let mut m = BTreeMap::new();
            m.insert(
                "classifier.weight".to_string(),
                Tensor::from_vec(v, (2, 2), &Device::Cpu).unwrap(),
            );
            write_safetensors(&dir.join(HEADS_FILE), &m, &[("format", "pt")]).unwrap();
        };
        head(&x.dir, vec![1.0, 2.0, 3.0, 4.0]);
        let m = merge(&t.path().join("m1"), &[&x, &y], &[0.5, 0.5], Mode::Factors).unwrap();
        let rec = &m.as_artifact().unwrap().data["merge"];
        assert!(
            rec["heads"].as_str().unwrap().starts_with("dropped"),
            "{rec}"
        );
        assert!(!m.as_artifact().unwrap().dir.join(HEADS_FILE).exists());
        head(&y.dir, vec![3.0, 2.0, 1.0, 0.0]);
        let m = merge(
            &t.path().join("m2"),
            &[&x, &y],
            &[0.5, 0.5],
            Mode::Delta { rank: None },
        )
        .unwrap();
        assert_eq!(
            tensors(&m, HEADS_FILE)["classifier.weight"],
            vec![2.0, 2.0, 2.0, 2.0]
        );
        assert_eq!(m.as_artifact().unwrap().data["merge"]["heads"], "merged");
        // tasks and formats are the union of the inputs'
        assert_eq!(m.as_artifact().unwrap().data["tasks"], json!(["x", "y"]));
    }

    #[test]
    fn mismatched_adapters_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dims = (4, 3);
        let x = lora(
            &t.path().join("x"),
            2,
            4.0,
            rand(6, 1),
            rand(8, 2),
            dims,
            "base-1",
        );
        let other = lora(
            &t.path().join("o"),
            2,
            4.0,
            rand(6, 1),
            rand(8, 2),
            dims,
            "base-2",
        );
        let e = merge(
            &t.path().join("m1"),
            &[&x, &other],
            &[0.5, 0.5],
            Mode::Factors,
        );
        assert_eq!(e.unwrap_err().code, "smelt::check::base_mismatch");
        // different ranks: factor mode refuses, delta mode merges exactly
        let r3 = lora(
            &t.path().join("r3"),
            3,
            4.0,
            rand(9, 3),
            rand(12, 4),
            dims,
            "base-1",
        );
        let e = merge(&t.path().join("m2"), &[&x, &r3], &[0.5, 0.5], Mode::Factors).unwrap_err();
        assert_eq!(e.code, super::super::adapter_set::INCOMPATIBLE);
        assert!(e.help.unwrap().contains("mode=delta"));
        assert!(merge(
            &t.path().join("m3"),
            &[&x, &r3],
            &[0.5, 0.5],
            Mode::Delta { rank: None }
        )
        .is_ok());
        // a module of another shape
        let wide = lora(
            &t.path().join("w"),
            2,
            4.0,
            rand(10, 1),
            rand(8, 2),
            (4, 5),
            "base-1",
        );
        let e = merge(
            &t.path().join("m4"),
            &[&x, &wide],
            &[0.5, 0.5],
            Mode::Delta { rank: None },
        );
        assert_eq!(e.unwrap_err().code, super::super::adapter_set::INCOMPATIBLE);
        // delta mode is LoRA-only
        let bn = adapter_dir(
            &t.path().join("bn"),
            json!({"peft_type": "SMELT_BOTTLENECK", "non_linearity": "relu", "bias": true,
                   "mh_adapter": true, "output_adapter": true}),
            &[("l.adapter.down.weight", vec![2, 3], rand(6, 7))],
            "base-1",
            "bn",
        );
        let e = merge(
            &t.path().join("m5"),
            &[&bn],
            &[1.0],
            Mode::Delta { rank: None },
        );
        assert_eq!(e.unwrap_err().code, "smelt::merge::delta_needs_lora");
        let e = merge(&t.path().join("m6"), &[&x, &bn], &[0.5, 0.5], Mode::Factors);
        assert_eq!(e.unwrap_err().code, super::super::adapter_set::INCOMPATIBLE);
    }
}
