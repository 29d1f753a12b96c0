//! The bottleneck-adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Python PEFT has no bottleneck adapters (they live in the `adapters` library, whose
//! directory format differs), so smelt writes PEFT's *layout* with its own `peft_type`
//! `"SMELT_BOTTLENECK"`: the config names every field of [`AdapterConfig`] (size or reduction
//! factor, activation, init, bias, dropout, placement) and the tensors are
//! `<module>.adapter.{down,up}.{weight,bias}` (see [`Adapters::save`]). Reading checks the type
//! and every field, so a LoRA directory is never mistaken for an adapter or vice versa.

use super::adapter::{AdapterActivation, AdapterConfig, AdapterInit, AdapterSize, Adapters};
use super::io::{ensure_dir, read_json, write_json};
use crate::diag::OpError;
use crate::nn::linear::Linear;
use serde_json::{json, Value};
use std::path::Path;

pub const PEFT_TYPE: &str = "SMELT_BOTTLENECK";

fn bad(msg: String) -> OpError {
    OpError::new("smelt::peft::bad_config", msg)
}

pub fn config_json(c: &AdapterConfig) -> Value {
    let (size, rf) = match c.size {
        AdapterSize::Bottleneck(m) => (Some(m), None),
        AdapterSize::ReductionFactor(r) => (None, Some(r)),
    };
    let (init, std) = match c.init {
        AdapterInit::Normal { std } => ("normal", std),
        AdapterInit::ZeroUp { std } => ("zero_up", std),
    };
    json!({
        "peft_type": PEFT_TYPE,
        "adapter_size": size,
        "reduction_factor": rf,
        "non_linearity": match c.activation { AdapterActivation::Relu => "relu", AdapterActivation::Swish => "swish" },
        "init": init,
        "init_std": std,
        "bias": c.bias,
        "dropout": c.dropout,
        "mh_adapter": c.after_attention,
        "output_adapter": c.after_ffn,
        "seed": c.seed,
    })
}

pub fn config_from_json(v: &Value) -> Result<AdapterConfig, OpError> {
    if v["peft_type"] != PEFT_TYPE {
        return Err(bad(format!(
            "adapter_config.json has peft_type {}, expected \"{PEFT_TYPE}\"",
            v["peft_type"]
        )));
    }
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| bad(format!("adapter_config.json: `{k}` missing")))
    };
    let flag = |k: &str| {
        v[k].as_bool()
            .ok_or_else(|| bad(format!("adapter_config.json: `{k}` missing")))
    };
    let size = match (v["adapter_size"].as_u64(), v["reduction_factor"].as_u64()) {
        (Some(m), _) => AdapterSize::Bottleneck(m as usize),
        (None, Some(r)) => AdapterSize::ReductionFactor(r as usize),
        _ => {
            return Err(bad(
                "adapter_config.json needs adapter_size or reduction_factor".into(),
            ))
        }
    };
    let std = num("init_std")?;
    Ok(AdapterConfig {
        size,
        activation: match v["non_linearity"].as_str() {
            Some("relu") => AdapterActivation::Relu,
            Some("swish") | Some("silu") => AdapterActivation::Swish,
            other => return Err(bad(format!("unknown non_linearity {other:?}"))),
        },
        init: match v["init"].as_str() {
            Some("zero_up") => AdapterInit::ZeroUp { std },
            _ => AdapterInit::Normal { std },
        },
        bias: flag("bias")?,
        dropout: num("dropout")?,
        after_attention: flag("mh_adapter")?,
        after_ffn: flag("output_adapter")?,
        seed: v["seed"].as_u64().unwrap_or(0),
    })
}

impl Adapters {
    /// Writes the adapter directory (config + tensors).
    pub fn save_dir(&self, dir: &Path) -> Result<(), OpError> {
        ensure_dir(dir)?;
        write_json(&dir.join("adapter_config.json"), &config_json(&self.config))?;
        self.save(&dir.join("adapter_model.safetensors"))
    }

    /// Reads a directory written by [`Adapters::save_dir`] into `linears`.
    pub fn load_dir(linears: Vec<(String, &mut Linear)>, dir: &Path) -> Result<Adapters, OpError> {
        let config = config_from_json(&read_json(&dir.join("adapter_config.json"))?)?;
        Adapters::load(linears, &dir.join("adapter_model.safetensors"), &config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_lora_configs_are_refused() {
        for c in [AdapterConfig::houlsby(12), AdapterConfig::double_seq_bn(16)] {
            assert_eq!(config_from_json(&config_json(&c)).unwrap(), c);
        }
        let e = config_from_json(&json!({"peft_type": "LORA", "r": 8})).unwrap_err();
        assert!(e.message.contains("LORA"), "{}", e.message);
    }
}
