//! `load adapter(path, base=model)`: a PEFT adapter directory (LoRA or prefix tuning, written by
//! Python `peft` or by smelt) or a smelt bottleneck-adapter directory, bound to the base model it adapts.
//!
//! The configuration is read and variants smelt cannot reproduce exactly (DoRA, LoRA biases,
//! rank/alpha patterns, …) are refused; every LoRA factor must name a projection of the base
//! with fitting shapes (`A: [r, in]`, `B: [out, r]` for a `[out, in]` weight) — all checked from
//! headers, so `smelt check` catches a wrong base. The files are copied into the store, so the
//! result never depends on the directory staying where it was.

use crate::diag::OpError;
use crate::nn::peft::io::{read_json, read_safetensors, write_json};
use crate::ops::train::runnable::INFO_FILE;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use candle_core::Device;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

pub struct LoadAdapter;

static SIG: Signature = Signature {
    id: "load.adapter",
    version: 1,
    summary: "Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) onto a base model.",
    doc: "LoRA directories from Python PEFT (`save_pretrained`) or smelt, and smelt's bottleneck \
          adapters. Key spellings with adapter names (`lora_A.default.weight`) and task-model prefixes \
          (`bert.`) are accepted; modules are matched to the base by name and shape.",
    params: &[
        Param::req("path", Ty::Path, "The adapter directory."),
        Param::req("base", Ty::Model, "The model the adapter was trained on."),
        Param::opt("quant", Ty::Opt(&Ty::Enum(&["nf4", "int8"])), Const::None, "The quantization of the base it was trained on (QLoRA); default: as recorded by smelt, else none."),
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet a = load adapter(\"out/movies-lora\", base=lm)"],
    reference: Some("PEFT adapter directory format"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

fn bad(msg: String) -> OpError {
    OpError::new("smelt::peft::mismatch", msg)
        .with_help("load the adapter onto the model it was trained on")
}

/// Checks every LoRA factor against the base checkpoint's header; returns (modules, r).
fn check_lora(dir: &Path, base: &ModelDir) -> Result<(usize, usize), OpError> {
    let tensors = read_safetensors(&dir.join("adapter_model.safetensors"), &Device::Cpu)?;
    let (mut modules, mut rank) = (0, 0);
    for (key, t) in &tensors {
        let k = key
            .strip_prefix(crate::nn::peft::lora::PREFIX)
            .unwrap_or(key);
        let Some(p) = k.find(".lora_A.") else {
            continue;
        };
        let module = &k[..p];
        let hits: Vec<_> = base
            .tensors()
            .iter()
            .filter(|(n, _)| {
                n.strip_suffix(".weight").is_some_and(|s| {
                    s == module
                        || s.ends_with(&format!(".{module}"))
                        || module.ends_with(&format!(".{s}"))
                })
            })
            .collect();
        let [(_, (_, info))] = hits.as_slice() else {
            return Err(bad(format!(
                "adapter module `{module}` matches {} weights of the base",
                hits.len()
            )));
        };
        let (w, a) = (&info.shape, t.dims());
        let b_key = key.replace(".lora_A.", ".lora_B.");
        let b = tensors
            .get(&b_key)
            .ok_or_else(|| OpError::new("smelt::peft::missing_key", format!("{b_key} is missing")))?
            .dims();
        if w.len() != 2
            || a.len() != 2
            || b.len() != 2
            || a[1] != w[1]
            || b[0] != w[0]
            || a[0] != b[1]
        {
            return Err(bad(format!(
                "`{module}`: A {a:?} and B {b:?} do not fit the base weight {w:?}"
            )));
        }
        modules += 1;
        rank = a[0];
    }
    if modules == 0 {
        return Err(OpError::new(
            "smelt::peft::missing_key",
            format!("{} holds no LoRA factors", dir.display()),
        ));
    }
    Ok((modules, rank))
}

impl Operator for LoadAdapter {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let path = Path::new(args.str("path")?);
        let base = args.artifact("base", Kind::Model)?;
        let cfg_path = path.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(OpError::new(
                "smelt::peft::not_adapter",
                format!("{} has no adapter_config.json", path.display()),
            )
            .with_help(
                "a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors",
            ));
        }
        let cfg = read_json(&cfg_path)?;
        let base_dir = ModelDir::open(&base.dir)?;
        let (method, detail) = match cfg["peft_type"].as_str() {
            Some("LORA") => {
                let c = crate::nn::peft::config_from_json(&cfg)?;
                let (modules, r) = check_lora(path, &base_dir)?;
                (
                    "lora",
                    json!({"r": r, "alpha": c.alpha, "modules": modules, "targets": c.target_modules}),
                )
            }
            Some("PREFIX_TUNING") => ("prefix", json!({"tokens": cfg["num_virtual_tokens"]})),
            Some(crate::nn::peft::adapter_format::PEFT_TYPE) => {
                crate::nn::peft::adapter_format::config_from_json(&cfg)?;
                ("adapter", json!({}))
            }
            other => {
                return Err(OpError::new(
                    "smelt::peft::unsupported",
                    format!("adapter type {other:?} is not supported"),
                )
                .with_help("smelt loads LORA and PREFIX_TUNING (PEFT) and SMELT_BOTTLENECK adapter directories"))
            }
        };
        let out = cx.out_dir.join("adapter");
        std::fs::create_dir_all(&out)?;
        for e in std::fs::read_dir(path)? {
            let e = e?;
            if e.file_type()?.is_file() && e.file_name() != INFO_FILE {
                std::fs::copy(e.path(), out.join(e.file_name()))?;
            }
        }
        let prior = read_json(&path.join(INFO_FILE)).ok();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "adapter".into());
        let mut info = json!({
            "method": method,
            "label": prior.as_ref().and_then(|p| p["label"].as_str()).map(str::to_string).unwrap_or(name),
            "base": {"dir": base.dir, "key": base.key.hex()},
            "formats": prior.as_ref().map(|p| p["formats"].clone()).unwrap_or(serde_json::Value::Null),
            "source": path.display().to_string(),
            "quant": match args.get("quant")? {
                Value::None => prior.as_ref().map(|p| p["quant"].clone()).unwrap_or(serde_json::Value::Null),
                _ => args.str("quant")?.into(),
            },
        });
        if let (Some(o), Some(d)) = (info.as_object_mut(), detail.as_object()) {
            o.extend(d.clone());
        }
        write_json(&out.join(INFO_FILE), &info)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Adapter,
            dir: out,
            key: cx.key,
            data: info,
        })))
    }
}
