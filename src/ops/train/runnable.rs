//! Trained results on disk and back: writing what `train …` produced, and loading any `Model`
//! or `Adapter` artifact into a model that can be run (by `evaluate`, `measure score`,
//! `model apply`).
//!
//! Layout of a trained result (the node's store object):
//! * full: `model/` — an HF directory (`config.json`, tokenizer files copied from the base,
//!   `model.safetensors` in the base's dtype with the heads inside) + `heads.safetensors` + `smelt.json`;
//! * LoRA: `adapter/` — PEFT's `adapter_config.json` + `adapter_model.safetensors`;
//! * bottleneck adapter: `adapter/` — the same layout with `peft_type: "SMELT_BOTTLENECK"`;
//! * prefix: `adapter/` — PEFT's `PREFIX_TUNING` directory (+ the MLP in `smelt_prefix_encoder.safetensors`);
//! * QLoRA / quantized adapter: as LoRA / adapter, with `"quant"` in `smelt.json` so the base is
//!   quantized the same way before the adapter is run again;
//!
//! plus, for both adapters, `heads.safetensors` (cls heads) and `smelt.json` (method, tasks,
//! the input format of every task, the base model's directory and key, the training report).
//! The format record is what makes evaluation feed examples exactly as training did.

use crate::cache::Key;
use crate::diag::OpError;
use crate::nn::peft::io::{read_json, write_safetensors};
use crate::nn::peft::{Adapters, Lora, Prefix};
use crate::nn::quant::{quantize_model, QuantBits};
use crate::nn::{LoadedModel, Weights};
use crate::tensors::model_dir::ModelDir;
use crate::train::classify::ClsHead;
use crate::train::delta::{find_head, head_names, read_heads, save_heads, Delta};
use crate::train::feed::FormatSpec;
use crate::value::{Artifact, Kind, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const INFO_FILE: &str = "smelt.json";

fn candle_dtype(dir: &Path) -> Result<DType, OpError> {
    Ok(
        match crate::ops::merge::dominant_dtype(&ModelDir::open(dir)?).as_str() {
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => DType::F32,
        },
    )
}

/// Copies the base directory's non-weight files (config, tokenizer, …) into `out`.
fn copy_side_files(base: &Path, out: &Path) -> Result<(), OpError> {
    for e in std::fs::read_dir(base)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type()?.is_file()
            && !name.ends_with(".safetensors")
            && name != "model.safetensors.index.json"
            && name != INFO_FILE
        {
            std::fs::copy(e.path(), out.join(&name))?;
        }
    }
    Ok(())
}

/// Writes a trained delta (and heads, and `smelt.json`) to `out` and describes it.
#[allow(clippy::too_many_arguments)]
pub fn write_result(
    lm: &LoadedModel,
    delta: &Delta,
    heads: &[(String, ClsHead)],
    n_tasks: usize,
    base: &Path,
    out: &Path,
    mut info: serde_json::Value,
    key: Key,
) -> Result<Value, OpError> {
    let _ = lm;
    std::fs::create_dir_all(out)?;
    let kind = match delta {
        Delta::Full(vars) => {
            let dtype = candle_dtype(base)?;
            let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
            for (name, v) in vars {
                t.insert(name.clone(), v.as_detached_tensor().to_dtype(dtype)?);
            }
            for (task, h) in heads {
                let (w, b) = head_names(task, n_tasks);
                t.insert(w, h.weight.as_detached_tensor().to_dtype(dtype)?);
                t.insert(b, h.bias.as_detached_tensor().to_dtype(dtype)?);
            }
            let prov = serde_json::to_string(&info).unwrap_or_default();
            write_safetensors(
                &out.join("model.safetensors"),
                &t,
                &[("format", "pt"), ("smelt", &prov)],
            )?;
            copy_side_files(base, out)?;
            Kind::Model
        }
        Delta::Lora(l) => {
            l.save_adapter(out)?;
            Kind::Adapter
        }
        Delta::Adapter(a) => {
            a.save_dir(out)?;
            Kind::Adapter
        }
        Delta::Prefix(p) => {
            p.save_adapter(out)?;
            Kind::Adapter
        }
    };
    save_heads(out, heads, n_tasks)?;
    crate::nn::peft::io::write_json(&out.join(INFO_FILE), &info)?;
    if kind == Kind::Model {
        let summary = crate::ops::load::model::model_summary(&ModelDir::open(out)?);
        if let (Some(o), Some(s)) = (info.as_object_mut(), summary.as_object()) {
            for (k, v) in s {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Value::Artifact(Arc::new(Artifact {
        kind,
        dir: out.to_path_buf(),
        key,
        data: info,
    })))
}

/// A model ready to run: the loaded network with its delta installed, heads and formats.
pub struct Runnable {
    pub lm: LoadedModel,
    /// Head tensors by name (`classifier[.<task>].{weight,bias}`).
    pub head_tensors: BTreeMap<String, Tensor>,
    /// Input formats recorded at training time, by task name.
    pub formats: BTreeMap<String, FormatSpec>,
    /// A short name for tables.
    pub label: String,
    /// Keeps adapter state alive (hooks hold their own references; this documents ownership).
    pub delta: Option<Delta>,
}

pub fn info_of(dir: &Path) -> serde_json::Value {
    read_json(&dir.join(INFO_FILE)).unwrap_or(serde_json::Value::Null)
}

fn formats_of(info: &serde_json::Value) -> BTreeMap<String, FormatSpec> {
    info["formats"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), serde_json::from_value(v.clone()).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The quantization a trained adapter's base had (`"nf4"` / `"int8"` in `smelt.json`).
pub fn quant_of(info: &serde_json::Value) -> Option<QuantBits> {
    match info["quant"].as_str() {
        Some("nf4") => Some(QuantBits::Nf4),
        Some("int8") => Some(QuantBits::Int8),
        _ => None,
    }
}

/// A default table label for an artifact.
pub fn label_of(a: &Artifact) -> String {
    if let Some(l) = a.data["label"].as_str() {
        return l.to_string();
    }
    let name = a
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match name.as_str() {
        "model" | "adapter" | "" => format!(
            "{}#{}",
            a.data["model_type"].as_str().unwrap_or("model"),
            &a.key.hex()[..8]
        ),
        _ => name,
    }
}

/// The base model directory an adapter is bound to.
pub fn base_dir(a: &Artifact) -> Result<PathBuf, OpError> {
    a.data["base"]["dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| {
            OpError::new(
                "smelt::peft::no_base",
                "this adapter does not record its base model",
            )
            .with_help("load it with `load adapter(path, base=model)`")
        })
}

impl Runnable {
    pub fn load(a: &Artifact, device: &Device) -> Result<Runnable, OpError> {
        let info = info_of(&a.dir);
        let mut formats = formats_of(&info);
        if formats.is_empty() {
            formats = formats_of(&a.data);
        }
        let label = label_of(a);
        match a.kind {
            Kind::Model => {
                let lm = crate::nn::load(&a.dir, device)?;
                let w = Weights::open(&a.dir, device)?;
                let mut head_tensors = read_heads(&a.dir, device)?;
                for n in w
                    .names()
                    .filter(|n| n.starts_with("classifier."))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                {
                    head_tensors.insert(n.clone(), w.get_raw(&n)?);
                }
                Ok(Runnable {
                    lm,
                    head_tensors,
                    formats,
                    label,
                    delta: None,
                })
            }
            Kind::Adapter => {
                let base = base_dir(a)?;
                let mut lm = crate::nn::load(&base, device)
                    .map_err(|e| e.context("loading the adapter's base model"))?;
                if let Some(bits) = quant_of(&info) {
                    quantize_model(&mut lm, bits)?;
                }
                let cfg = read_json(&a.dir.join("adapter_config.json"))?;
                let mut head_tensors = read_heads(&a.dir, device)?;
                let delta = match cfg["peft_type"].as_str() {
                    Some("LORA") => {
                        let l = Lora::load_adapter(lm.linears_mut(), &a.dir)?;
                        for (w, b) in [("classifier.weight", "classifier.bias")] {
                            if let (Some(wv), Some(bv)) = (l.extra(w), l.extra(b)) {
                                head_tensors
                                    .entry(w.into())
                                    .or_insert_with(|| wv.as_detached_tensor());
                                head_tensors
                                    .entry(b.into())
                                    .or_insert_with(|| bv.as_detached_tensor());
                            }
                        }
                        Delta::Lora(l)
                    }
                    Some(crate::nn::peft::adapter_format::PEFT_TYPE) => {
                        Delta::Adapter(Adapters::load_dir(lm.linears_mut(), &a.dir)?)
                    }
                    Some("PREFIX_TUNING") => Delta::Prefix(Prefix::load_adapter(&mut lm, &a.dir)?),
                    other => return Err(OpError::new(
                        "smelt::peft::unsupported",
                        format!("adapter type {other:?} cannot be run here"),
                    )
                    .with_help(
                        "smelt runs LORA, PREFIX_TUNING and SMELT_BOTTLENECK adapter directories",
                    )),
                };
                delta.set_training(false);
                Ok(Runnable {
                    lm,
                    head_tensors,
                    formats,
                    label,
                    delta: Some(delta),
                })
            }
            k => Err(OpError::new(
                "smelt::run::argument",
                format!("expected a Model or an Adapter, got a {k:?}"),
            )),
        }
    }

    /// The trained head for `task`, if the model has one.
    pub fn head(&self, task: &str) -> Result<Option<ClsHead>, OpError> {
        find_head(&self.head_tensors, task)
    }
}

/// The `model`/`models` argument values as artifacts of kind Model or Adapter.
pub fn runnable_args<'a>(v: &'a Value, name: &str) -> Result<Vec<&'a Arc<Artifact>>, OpError> {
    let one = |v: &'a Value| match v {
        Value::Artifact(a) if matches!(a.kind, Kind::Model | Kind::Adapter) => Ok(a),
        other => Err(OpError::new(
            "smelt::run::argument",
            format!(
                "`{name}` should hold models or adapters, got {}",
                other.display()
            ),
        )),
    };
    match v {
        Value::List(xs) => xs.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}
