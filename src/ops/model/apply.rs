//! `model apply(adapter)`: fold a LoRA adapter into its base — `W ← W + s·B·A` — and return a
//! full Model (PEFT's `merge_and_unload`).
//!
//! Streams the base tensor by tensor through the merge engine (f32 accumulation, output in the
//! base's dtype unless `dtype` says otherwise) and adds each adapted projection's `s·B·A`. The
//! adapter's heads and recorded input formats are copied beside the weights, so the result
//! evaluates like the adapter did, and full-model merges (`merge average`, task arithmetic, …)
//! apply to LoRA-trained models. Bottleneck adapters and prefixes change the computation, not
//! the weights, so they cannot be folded: that is an error with a hint.

use crate::diag::OpError;
use crate::nn::peft::io::{read_json, write_json};
use crate::nn::peft::Lora;
use crate::ops::merge::Granularity;
use crate::ops::merge::{out_dtype, provenance, stream_to_model, DTYPE_PARAM};
use crate::ops::train::runnable::{base_dir, INFO_FILE};
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::train::delta::HEADS_FILE;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use candle_core::Device;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Apply;

static SIG: Signature = Signature {
    id: "model.apply",
    version: 1,
    summary: "Fold a LoRA adapter into its base model's weights (W + s·B·A).",
    doc: "The result is a full HF model directory equal in output to the adapter on its base (up to \
          the output dtype's rounding), carrying the adapter's classification heads and input formats. \
          Only LoRA adapters fold into weights.",
    params: &[Param::req("adapter", Ty::Adapter, "A LoRA adapter (from `train lora` or `load adapter`)."), DTYPE_PARAM],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet a = train lora(lm, load task(\"experiments/data/movies\"), head=prompt)\nlet m = model apply(a)"],
    reference: Some("PEFT `merge_and_unload`"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// Whether tensor `name` (e.g. `bert.encoder.layer.0.attention.self.query.weight`) is the
/// weight of `module` (`encoder.layer.0.attention.self.query`).
fn is_weight_of(name: &str, module: &str) -> bool {
    let Some(stem) = name.strip_suffix(".weight") else {
        return false;
    };
    stem == module
        || (stem.ends_with(module) && stem.as_bytes()[stem.len() - module.len() - 1] == b'.')
}

impl Operator for Apply {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let adapter = args.artifact("adapter", Kind::Adapter)?;
        let cfg = read_json(&adapter.dir.join("adapter_config.json"))?;
        if cfg["peft_type"] != "LORA" {
            return Err(OpError::new(
                "smelt::peft::cannot_fold",
                format!(
                    "a {} adapter cannot be folded into weights",
                    cfg["peft_type"]
                ),
            )
            .with_help(
                "only LoRA is a weight delta; evaluate the adapter directly, or train LoRA",
            ));
        }
        let base = base_dir(adapter)?;
        // The factors alone, on CPU: attach them to a throwaway model to reuse PEFT's reader.
        let mut lm = crate::nn::load(&base, &Device::Cpu)?;
        let lora = Lora::load_adapter(lm.linears_mut(), &adapter.dir)?;
        let scale = lora.config.scale();
        let mut deltas: Vec<(String, Vec<f32>)> = Vec::new();
        for m in &lora.modules {
            let d = (m.b.as_tensor().matmul(m.a.as_tensor())? * scale)?;
            deltas.push((m.name.clone(), d.flatten_all()?.to_vec1::<f32>()?));
        }
        drop(lm);
        let dirs = [ModelDir::open(&base)?];
        let dtype = out_dtype(args, &dirs[0])?;
        let base_art = Arc::new(Artifact {
            kind: Kind::Model,
            dir: base.clone(),
            key: adapter.key,
            data: serde_json::Value::Null,
        });
        let meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &[adapter, &base_art],
            &format!("scale={scale}"),
        );
        let mut used: HashMap<String, bool> = HashMap::new();
        let v = stream_to_model(
            cx,
            &dirs,
            dtype,
            meta,
            Granularity::Whole,
            &mut |part, xs| {
                let name = part.name;
                let mut out = xs[0].clone();
                if let Some((m, d)) = deltas.iter().find(|(m, _)| is_weight_of(name, m)) {
                    if d.len() != out.len() {
                        return Err(OpError::new(
                            "smelt::peft::shape",
                            format!("{m}: delta has {} values, weight {}", d.len(), out.len()),
                        ));
                    }
                    for (o, x) in out.iter_mut().zip(d) {
                        *o += x;
                    }
                    used.insert(m.clone(), true);
                }
                Ok(out)
            },
        )?;
        if let Some((m, _)) = deltas.iter().find(|(m, _)| !used.contains_key(m)) {
            return Err(OpError::new(
                "smelt::peft::no_match",
                format!("adapter module `{m}` has no weight in the base checkpoint"),
            ));
        }
        let Value::Artifact(a) = v else {
            unreachable!("stream_to_model returns an artifact")
        };
        let mut a = (*a).clone();
        for f in [HEADS_FILE] {
            if adapter.dir.join(f).is_file() {
                std::fs::copy(adapter.dir.join(f), a.dir.join(f))?;
            }
        }
        let mut info = read_json(&adapter.dir.join(INFO_FILE)).unwrap_or(serde_json::json!({}));
        let label = format!("apply({})", info["label"].as_str().unwrap_or("lora"));
        info["label"] = label.clone().into();
        write_json(&a.dir.join(INFO_FILE), &info)?;
        a.data["label"] = label.into();
        a.data["formats"] = info["formats"].clone();
        Ok(Value::Artifact(Arc::new(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::is_weight_of;

    #[test]
    fn weight_names_match_modules_at_dot_boundaries() {
        assert!(is_weight_of(
            "bert.encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.attention.self.query"
        ));
        assert!(is_weight_of(
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj"
        ));
        assert!(!is_weight_of(
            "encoder.layer.10.attention.self.query.weight",
            "0.attention.self.query"
        ));
        assert!(!is_weight_of(
            "encoder.layer.0.attention.self.query.bias",
            "encoder.layer.0.attention.self.query"
        ));
    }
}
