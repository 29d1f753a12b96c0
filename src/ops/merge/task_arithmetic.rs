//! `merge task_arithmetic(base, models, alpha)`: θ = θ₀ + Σᵢ αᵢ (θᵢ − θ₀).
//!
//! Task vectors τᵢ = θᵢ − θ₀ are formed per tensor in f32 and added to the base with scaling
//! `alpha` (one number for all, or one per model). With `alpha = 0` the base comes back exactly.
//! Tensors outside `include`/`exclude` are copied from the base; `partial` decides about
//! tensors that only some models have.

use super::Granularity;
use super::{
    open_models, out_dtype, per_model, provenance, stream_merge, validate_base_and_models,
    DTYPE_PARAM, EXCLUDE_PARAM, INCLUDE_PARAM, PARTIAL_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct TaskArithmetic;

static SIG: Signature = Signature {
    id: "merge.task_arithmetic",
    version: 1,
    summary: "Add scaled task vectors to a base: θ = θ₀ + Σ αᵢ (θᵢ − θ₀).",
    doc: "`alpha` is one scaling factor for every task vector, or a list with one per model. \
          Every float tensor is merged (classifier heads included) unless `include`/`exclude` say \
          otherwise; unselected tensors and integer buffers come from the base.",
    params: &[
        Param::req("base", Ty::Model, "The pre-trained model θ₀ the task vectors are relative to."),
        Param::req("models", Ty::List(&Ty::Model), "Fine-tuned models θᵢ."),
        Param::opt("alpha", Ty::Either(&Ty::Float, &Ty::List(&Ty::Float)), Const::Float(1.0), "Scaling λ of the task vectors."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        PARTIAL_PARAM,
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet ta = merge task_arithmetic(m, [m, m], alpha=0.5)"],
    reference: Some("Ilharco et al., Editing models with task arithmetic (ICLR 2023), arXiv:2212.04089"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("models", "alpha")],
    cheap: false,
};

impl Operator for TaskArithmetic {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_base_and_models(args)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let base = args.artifact("base", Kind::Model)?;
        let models = args.artifacts("models", Kind::Model)?;
        let alphas: Vec<f32> = per_model(args, "alpha", models.len())?
            .into_iter()
            .map(|a| a as f32)
            .collect();
        let mut all = vec![base];
        all.extend(models.iter().copied());
        let dirs = open_models(&all)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let params = format!("alpha={alphas:?}, {}", super::filter::describe(args)?);
        let meta = provenance(cx, SIG.id, SIG.version, &all, &params);
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |_, xs| {
                let (base, tuned) = xs.split_first().expect("base is present");
                let mut delta = vec![0f32; base.len()];
                for (x, &a) in tuned.iter().zip(&alphas) {
                    for ((d, v), b) in delta.iter_mut().zip(x).zip(base) {
                        *d += a * (v - b);
                    }
                }
                // A zero update keeps the base value bit for bit (also its sign of zero).
                Ok(base
                    .iter()
                    .zip(&delta)
                    .map(|(&b, &d)| if d == 0.0 { b } else { b + d })
                    .collect())
            },
        )
    }
}
