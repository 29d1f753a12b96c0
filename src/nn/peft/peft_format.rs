//! The PEFT LoRA adapter directory: `save_adapter` / `load_adapter` / `config_from_json`.
//!
//! What follows PEFT (`PeftModel.save_pretrained` / `from_pretrained`):
//! * `adapter_config.json`: `peft_type: "LORA"`, `r`, `lora_alpha`, `lora_dropout`,
//!   `target_modules` (list of suffixes; a single `re:` pattern is written as PEFT's regex
//!   string; mixed lists are written as the matched module names), `bias: "none"`, `use_rslora`,
//!   `task_type`, `base_model_name_or_path`, `fan_in_fan_out: false`, `inference_mode: true`,
//!   `modules_to_save`, `init_lora_weights: true`, `use_dora: false`, `rank_pattern: {}`,
//!   `alpha_pattern: {}`, `layers_to_transform: null`, `revision: null`. No smelt-only keys.
//! * `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight` `[r, in]` and
//!   `…lora_B.weight` `[out, r]`; extra trainable modules as `base_model.model.<name>` (PEFT's
//!   saved name for `modules_to_save`); metadata `{"format": "pt"}`.
//!
//! Loading accepts files written by Python PEFT: keys with an adapter name
//! (`lora_A.default.weight`), module paths with a task-model prefix (`bert.encoder…` matched by
//! `.`-suffix against our names), `modules_to_save.default` infixes, f16/bf16 tensors. Variants
//! smelt cannot reproduce (DoRA, `bias != "none"`, `fan_in_fan_out`, rank/alpha patterns,
//! `layers_to_transform`) are `smelt::peft::unsupported` errors, never silently wrong adapters.

use super::device_of;
use super::io::{ensure_dir, read_json, read_safetensors, write_json, write_safetensors};
use super::lora::{parse_all, Lora, LoraConfig, PREFIX};
use super::pattern::ModulePattern;
use crate::diag::OpError;
use crate::nn::linear::Linear;
use candle_core::{Tensor, Var};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const UNSUP: &str = "smelt::peft::unsupported";

impl Lora {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (PEFT layout).
    pub fn save_adapter(&self, dir: &Path) -> Result<(), OpError> {
        ensure_dir(dir)?;
        write_json(&dir.join("adapter_config.json"), &self.peft_config_json()?)?;
        let tensors: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect();
        write_safetensors(
            &dir.join("adapter_model.safetensors"),
            &tensors,
            &[("format", "pt")],
        )
    }

    fn peft_config_json(&self) -> Result<Value, OpError> {
        let c = &self.config;
        let patterns = parse_all(&c.target_modules)?;
        let targets = match patterns.as_slice() {
            [ModulePattern::Regex { source, .. }] => json!(source),
            ps if ps.iter().all(|p| matches!(p, ModulePattern::Suffix(_))) => {
                json!(c.target_modules)
            }
            _ => json!(self
                .modules
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()),
        };
        let mut to_save: Vec<String> = Vec::new();
        for (n, _) in &self.extra {
            let module = n
                .rsplit_once('.')
                .map_or(n.as_str(), |(m, _)| m)
                .to_string();
            if !to_save.contains(&module) {
                to_save.push(module);
            }
        }
        let alpha = if c.alpha.fract() == 0.0 && c.alpha.abs() < 1e15 {
            json!(c.alpha as i64)
        } else {
            json!(c.alpha)
        };
        Ok(json!({
            "peft_type": "LORA",
            "r": c.r,
            "lora_alpha": alpha,
            "lora_dropout": c.dropout,
            "target_modules": targets,
            "bias": "none",
            "use_rslora": c.rslora,
            "task_type": c.task_type,
            "base_model_name_or_path": c.base_model_name_or_path,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "modules_to_save": if to_save.is_empty() { Value::Null } else { json!(to_save) },
            "init_lora_weights": true,
            "use_dora": false,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": Value::Null,
            "revision": Value::Null,
        }))
    }

    /// Reads a PEFT LoRA directory (smelt's or Python PEFT's) and injects it into `linears`.
    /// The factors become trainable vars again; other tensors land in [`Lora::extra`].
    pub fn load_adapter(linears: Vec<(String, &mut Linear)>, dir: &Path) -> Result<Lora, OpError> {
        let config = config_from_json(&read_json(&dir.join("adapter_config.json"))?)?;
        let device = device_of(&linears);
        let tensors = read_safetensors(&dir.join("adapter_model.safetensors"), &device)?;
        let mut factors: BTreeMap<String, [Option<Tensor>; 2]> = BTreeMap::new();
        let mut lora = Lora::empty(config);
        for (key, t) in tensors {
            let k = key.strip_prefix(PREFIX).unwrap_or(&key);
            let (module, which) = match (k.find(".lora_A."), k.find(".lora_B.")) {
                (Some(p), _) => (&k[..p], 0),
                (_, Some(p)) => (&k[..p], 1),
                _ if k.contains("lora_") => {
                    return Err(OpError::new(
                        UNSUP,
                        format!("adapter tensor {key} is not a LoRA A/B factor of a linear layer"),
                    ))
                }
                _ => {
                    let name = k.replace(".modules_to_save.default", "");
                    lora.add_module_to_save(&name, &Var::from_tensor(&t)?)?;
                    continue;
                }
            };
            factors.entry(module.to_string()).or_default()[which] = Some(t);
        }
        let mut linears = linears;
        for (module, [a, b]) in factors {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(OpError::new(
                    "smelt::peft::missing_key",
                    format!("{module}: lora_A or lora_B is missing"),
                ));
            };
            let hits: Vec<usize> = (0..linears.len())
                .filter(|&i| same_module(&module, &linears[i].0))
                .collect();
            let &[i] = hits.as_slice() else {
                return Err(OpError::new(
                    "smelt::peft::no_match",
                    format!(
                        "adapter module `{module}` matches {} modules of the model",
                        hits.len()
                    ),
                )
                .with_help("the adapter was trained on a different architecture or model"));
            };
            let (name, lin) = &mut linears[i];
            let dt = lin.weight.dtype();
            lora.attach(name, lin, a.to_dtype(dt)?, b.to_dtype(dt)?)?;
        }
        if lora.modules.is_empty() {
            return Err(OpError::new(
                "smelt::peft::missing_key",
                format!("{} holds no LoRA factors", dir.display()),
            ));
        }
        Ok(lora)
    }
}

/// Whether a saved module path (possibly with a task-model prefix) names our module.
fn same_module(saved: &str, ours: &str) -> bool {
    let dot_suffix = |long: &str, short: &str| {
        long.len() > short.len()
            && long.ends_with(short)
            && long.as_bytes()[long.len() - short.len() - 1] == b'.'
    };
    saved == ours || dot_suffix(saved, ours) || dot_suffix(ours, saved)
}

/// A [`LoraConfig`] from PEFT's `adapter_config.json`, refusing variants smelt would get wrong.
pub fn config_from_json(v: &Value) -> Result<LoraConfig, OpError> {
    let unsup = |what: String| {
        OpError::new(UNSUP, what).with_help("merge the adapter into the base model in Python (`merge_and_unload`) and load the merged model instead")
    };
    let bad = |what: &str| {
        OpError::new(
            "smelt::peft::bad_config",
            format!("adapter_config.json: {what}"),
        )
    };
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(unsup(format!("PEFT type {other:?} is not LoRA"))),
    }
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let non_empty = |k: &str| {
        v.get(k).is_some_and(|x| {
            !(x.is_null()
                || x.as_object().is_some_and(|o| o.is_empty())
                || x.as_array().is_some_and(|a| a.is_empty()))
        })
    };
    if flag("use_dora") || flag("fan_in_fan_out") {
        return Err(unsup(
            "DoRA / fan_in_fan_out adapters are not supported".into(),
        ));
    }
    for k in ["rank_pattern", "alpha_pattern", "layers_to_transform"] {
        if non_empty(k) {
            return Err(unsup(format!("`{k}` is not supported")));
        }
    }
    match v.get("bias").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(b) => {
            return Err(unsup(format!(
                "bias = {b:?} is not supported (only \"none\")"
            )))
        }
    }
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("`r` must be a positive integer"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("`lora_alpha` must be a number"))?;
    let target_modules = match v.get("target_modules") {
        Some(Value::String(re)) => vec![format!("re:{re}")],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("`target_modules` must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        _ => vec!["re:.*".to_string()],
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let config = LoraConfig {
        r,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        target_modules,
        rslora: flag("use_rslora"),
        seed: 0,
        task_type: text("task_type"),
        base_model_name_or_path: text("base_model_name_or_path"),
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn layers() -> Vec<(String, Linear)> {
        let w = |o: usize, i: usize| Tensor::randn(0f32, 0.5, (o, i), &Device::Cpu).unwrap();
        vec![
            ("m.0.q_proj".into(), Linear::new(w(6, 4), None)),
            ("m.0.v_proj".into(), Linear::new(w(6, 4), None)),
        ]
    }

    fn refs(v: &mut [(String, Linear)]) -> Vec<(String, &mut Linear)> {
        v.iter_mut().map(|(n, l)| (n.clone(), l)).collect()
    }

    #[test]
    fn save_load_round_trip_on_small_layers() {
        let mut m = layers();
        let cfg = LoraConfig {
            dropout: 0.1,
            ..LoraConfig::new(2, 3.0, &["re:.*_proj"])
        };
        let mut l = Lora::inject(refs(&mut m), &cfg).unwrap();
        l.modules[1]
            .b
            .set(&Tensor::ones((6, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        l.add_module_to_save(
            "score.weight",
            &Var::ones((2, 6), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        l.save_adapter(d.path()).unwrap();
        let cfg_json = super::super::io::read_json(&d.path().join("adapter_config.json")).unwrap();
        assert_eq!(cfg_json["target_modules"], json!(".*_proj"));
        assert_eq!(cfg_json["lora_alpha"], json!(3));
        assert_eq!(cfg_json["modules_to_save"], json!(["score"]));
        let mut m2 = layers();
        for (a, b) in m2.iter_mut().zip(&m) {
            a.1.weight = b.1.weight.clone();
        }
        let l2 = Lora::load_adapter(refs(&mut m2), d.path()).unwrap();
        assert_eq!(
            (l2.config.r, l2.config.dropout, l2.modules.len()),
            (2, 0.1, 2)
        );
        assert!(l2.extra("score.weight").is_some());
        let x = Tensor::randn(0f32, 1.0, (3, 4), &Device::Cpu).unwrap();
        let (y1, y2) = (m[1].1.forward(&x).unwrap(), m2[1].1.forward(&x).unwrap());
        assert_eq!(crate::nn::ops::max_abs_diff(&y1, &y2).unwrap(), 0.0);
        let mut other = vec![(
            "x.k_proj".to_string(),
            Linear::new(
                Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap(),
                None,
            ),
        )];
        assert_eq!(
            Lora::load_adapter(refs(&mut other), d.path())
                .unwrap_err()
                .code,
            "smelt::peft::no_match"
        );
    }

    #[test]
    fn python_peft_configs_and_keys() {
        let v = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 32, "target_modules": "model.*q", "bias": "none"});
        let c = config_from_json(&v).unwrap();
        assert_eq!(
            (c.r, c.alpha, c.target_modules[0].as_str()),
            (4, 32.0, "re:model.*q")
        );
        for bad in [
            json!({"peft_type": "IA3"}),
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}),
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "lora_only"}),
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"q": 2}}),
        ] {
            assert_eq!(config_from_json(&bad).unwrap_err().code, UNSUP);
        }
        assert!(same_module(
            "bert.encoder.layer.0.attention.self.query",
            "encoder.layer.0.attention.self.query"
        ));
        assert!(!same_module("encoder.layer.10.x", "layer.0.x"));
    }
}
