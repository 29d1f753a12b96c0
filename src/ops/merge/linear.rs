//! `merge linear(models, weights)`: θ = Σᵢ wᵢ·θᵢ (optionally divided by Σᵢ wᵢ) — of full
//! models, or of PEFT adapters of one base in adapter space (see [`super::adapter_space`]).
//!
//! The weighted sum is accumulated in f32 in input order. Weights may be negative. With one
//! model and weight 1 the result is the input, bit for bit (in its own dtype).

use super::adapter_params::{
    filter_provenance, follows_input, run_adapter_merge, validate_inputs, MERGEABLE, MERGED,
    MODE_PARAM, RANK_PARAM,
};
use super::adapter_set::{inputs, Inputs};
use super::Granularity;
use super::{
    open_models, out_dtype, provenance, stream_merge, weighted_sum, DTYPE_PARAM, EXCLUDE_PARAM,
    INCLUDE_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Linear;

static SIG: Signature = Signature {
    id: "merge.linear",
    version: 1,
    summary: "Weighted sum of models, or of adapters of one base: θ = Σ wᵢ θᵢ.",
    doc: "Models: streams tensor by tensor; every float tensor of every model is combined (integer \
          buffers are copied from the first model). Adapters give an adapter: `mode=factors` combines \
          every adapter tensor on its own (LoRA A and B apart), `mode=delta` combines LoRA weight \
          deltas exactly, ΔW = Σ wᵢ sᵢ Bᵢ Aᵢ (negative weights subtract, with no cross terms), \
          re-factorised to `rank`. `normalize=true` divides by Σ wᵢ (which must then be non-zero).",
    params: &[
        Param::req("models", MERGEABLE, "Models with identical tensor names and shapes, or adapters of one base model."),
        Param::req("weights", Ty::List(&Ty::Float), "One weight per model."),
        Param::opt("normalize", Ty::Bool, Const::Bool(false), "Divide the weights by their sum."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        DTYPE_PARAM,
        MODE_PARAM,
        RANK_PARAM,
    ],
    returns: MERGED,
    ret_fn: Some(follows_input),
    examples: &[
        "let m = load model(\"assets/models/minilm-l3-v8k\")\nlet mix = merge linear([m, m], [0.3, 0.7])",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet forget = merge linear(loras, [1.0, -0.5], mode=delta, rank=8)",
    ],
    reference: Some("Wortsman et al., Model soups (ICML 2022), arXiv:2203.05482"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("models", "weights")],
    cheap: false,
};

impl Operator for Linear {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_inputs(args, "models")
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let inputs = inputs(args.list("models")?, "merge linear")?;
        let n = match &inputs {
            Inputs::Models(a) | Inputs::Adapters(a) => a.len(),
        };
        let mut weights = args.floats("weights")?;
        if weights.len() != n {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{n} models but {} weights", weights.len()),
            ));
        }
        if args.bool("normalize")? {
            let total: f64 = weights.iter().sum();
            if total == 0.0 {
                return Err(OpError::new(
                    "smelt::run::argument",
                    "cannot normalize weights that sum to 0",
                )
                .with_help("use normalize=false or weights with a non-zero sum"));
            }
            weights.iter_mut().for_each(|w| *w /= total);
        }
        if let Inputs::Adapters(arts) = inputs {
            let id = (SIG.id, SIG.version);
            return run_adapter_merge(cx, args, &arts, id, &weights, serde_json::json!({}));
        }
        let models = args.artifacts("models", Kind::Model)?;
        let dirs = open_models(&models)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let w32: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &models,
            &format!("weights={weights:?}{}", filter_provenance(args)),
        );
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |_, xs| Ok(weighted_sum(xs, &w32)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::tiny_model;
    use crate::tensors::header::Dtype;
    use crate::tensors::model_dir::ModelDir;
    use crate::value::Artifact;
    use std::sync::Arc;

    fn model(dir: &std::path::Path) -> Value {
        Value::Artifact(Arc::new(Artifact {
            kind: Kind::Model,
            dir: dir.to_path_buf(),
            key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
            data: serde_json::Value::Null,
        }))
    }

    #[test]
    fn weighted_sum_with_negative_weights() {
        let t = tempfile::tempdir().unwrap();
        tiny_model(
            &t.path().join("x"),
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 1.0],
            Dtype::F32,
        );
        tiny_model(
            &t.path().join("y"),
            &[0.5, 0.5, 0.5, 0.5],
            &[2.0, -2.0],
            Dtype::F32,
        );
        let args = Args::new(vec![
            (
                "models",
                Value::list(vec![model(&t.path().join("x")), model(&t.path().join("y"))]),
            ),
            (
                "weights",
                Value::list(vec![Value::Float(2.0), Value::Float(-1.0)]),
            ),
            ("normalize", Value::Bool(false)),
            ("dtype", Value::str("auto")),
            ("mode", Value::str("factors")),
            ("rank", Value::None),
        ]);
        let mut cx = OpCtx::for_test(t.path().join("out"), 0);
        let out = Linear.run(&mut cx, &args).unwrap();
        let dir = ModelDir::open(&out.as_artifact().unwrap().dir).unwrap();
        assert_eq!(dir.read_f32("a").unwrap(), vec![1.5, 3.5, 5.5, 7.5]);
        assert_eq!(dir.read_f32("b").unwrap(), vec![0.0, 4.0]);
    }
}
