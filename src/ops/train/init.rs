//! `init=ADAPTER` of `train lora|adapter|prefix`: start training from an existing delta's
//! weights — typically a merged one (`merge softmax(…)`, paper 2's similarity-weighted
//! initialisation, methods.md §2.4) — instead of a fresh initialisation.
//!
//! The starting adapter must be the same kind of delta (LoRA / bottleneck adapter / prefix)
//! with the same shape-determining configuration as the one the call asks for (LoRA rank,
//! alpha and rsLoRA; adapter width and sites; prefix length and projection), on a base with the
//! same tensors: a mismatch is an error naming both values, never a silent re-shape. Its
//! weights are loaded as trainable variables; dropout and the rest of the recipe come from the
//! call. Task heads are not taken from it (each training run makes its own).

use crate::diag::OpError;
use crate::nn::peft::io::read_json;
use crate::nn::peft::{adapter_format, Adapters, Lora, Prefix};
use crate::nn::LoadedModel;
use crate::ops::train::runnable::base_dir;
use crate::tensors::ModelDir;
use crate::train::delta::{Delta, DeltaSpec};
use crate::value::Artifact;
use std::sync::Arc;

const CODE: &str = "smelt::train::init";

fn differs(what: &str, asked: impl std::fmt::Debug, has: impl std::fmt::Debug) -> OpError {
    OpError::new(
        CODE,
        format!("`init` has {what} {has:?} but this training asks for {asked:?}"),
    )
    .with_help(format!(
        "give the same {what} as the adapter you start from (or drop `init` for a fresh start)"
    ))
}

/// Loads `init` into `lm` as the trainable delta described by `spec`.
pub fn load_init(
    lm: &mut LoadedModel,
    spec: &DeltaSpec,
    init: &Arc<Artifact>,
    base: &Artifact,
) -> Result<Delta, OpError> {
    let init_base = base_dir(init)?;
    ModelDir::open(&init_base)?
        .check_compatible(&ModelDir::open(&base.dir)?)
        .map_err(|e| e.context("`init` was trained on another base model"))?;
    let cfg = read_json(&init.dir.join("adapter_config.json"))?;
    let kind = cfg["peft_type"].as_str().unwrap_or("?").to_string();
    let delta = match (spec, kind.as_str()) {
        (DeltaSpec::Lora(c), "LORA") => {
            let l = Lora::load_adapter(lm.linears_mut(), &init.dir)?;
            if l.config.r != c.r {
                return Err(differs("rank r", c.r, l.config.r));
            }
            if l.config.alpha != c.alpha || l.config.rslora != c.rslora {
                return Err(differs(
                    "scaling (alpha, rslora)",
                    (c.alpha, c.rslora),
                    (l.config.alpha, l.config.rslora),
                ));
            }
            Delta::Lora(l)
        }
        (DeltaSpec::Adapter(c), adapter_format::PEFT_TYPE) => {
            let a = Adapters::load_dir(lm.linears_mut(), &init.dir)?;
            let shape = |x: &crate::nn::peft::AdapterConfig| {
                (
                    format!("{:?}", x.size),
                    x.after_attention,
                    x.after_ffn,
                    x.bias,
                )
            };
            if shape(&a.config) != shape(c) {
                return Err(differs(
                    "adapter (size, after attention, after FFN, bias)",
                    shape(c),
                    shape(&a.config),
                ));
            }
            Delta::Adapter(a)
        }
        (DeltaSpec::Prefix(c), "PREFIX_TUNING") => {
            let p = Prefix::load_adapter(lm, &init.dir)?;
            let shape = |x: &crate::nn::peft::PrefixConfig| (x.num_virtual_tokens, x.projection);
            if shape(&p.config) != shape(c) {
                return Err(differs(
                    "prefix (tokens, projection)",
                    shape(c),
                    shape(&p.config),
                ));
            }
            Delta::Prefix(p)
        }
        (spec, kind) => {
            let asked = match spec {
                DeltaSpec::Full => "full fine-tuning",
                DeltaSpec::Lora(_) => "LoRA",
                DeltaSpec::Adapter(_) => "a bottleneck adapter",
                DeltaSpec::Prefix(_) => "a prefix",
            };
            return Err(OpError::new(
                CODE,
                format!("`init` is a {kind} adapter but this trains {asked}"),
            )
            .with_help(
                "start from a delta of the same kind (e.g. merge LoRA adapters for `train lora`)",
            ));
        }
    };
    delta.set_training(true);
    Ok(delta)
}
