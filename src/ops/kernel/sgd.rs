//! `kernel sgd(model, train, eval, …)`: the empirical NTK
//! `K[(i,c),(x,c')] = ⟨∇θ f_c(x_i), ∇θ f_c'(x)⟩`, the kernel of SGD fine-tuning in the lazy
//! regime (methods.md §4.5).
//!
//! Symmetric positive semi-definite when train and eval are the same examples. The shared
//! machinery (selection, format, block loop, Matrix) is in [`super`]; Jacobians come from
//! gradient probes (`nn::per_example::JacobianBlock`).

use super::{run_kernel, validate, KernelKind, DOC_COMMON, PARAMS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct KernelSgd;

static SIG: Signature = Signature {
    id: "kernel.sgd",
    version: 1,
    summary: "Empirical NTK: K[(i,c),(x,c')] = <grad f_c(x_i), grad f_c'(x)> over the selected parameters.",
    doc: DOC_COMMON,
    params: PARAMS,
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet k_train = kernel sgd(lm, t, t, split=train, head=prompt)\nlet k_test = kernel sgd(lm, t, t, head=prompt)"],
    reference: Some("methods.md §4.5 (LM-Kernel-FT `src/kernel_trainer.py`); Malladi et al., ICML 2023, arXiv:2210.05643"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for KernelSgd {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate(KernelKind::Sgd, args)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        run_kernel(KernelKind::Sgd, &SIG, cx, args)
    }
}
