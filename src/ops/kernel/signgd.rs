//! `kernel signgd(model, train, eval, …)`: the SignGD kernel
//! `K[(i,c),(x,c')] = ⟨sign ∇θ f_c(x_i), sign ∇θ f_c'(x)⟩` with `sign 0 = 0` (methods.md §4.5).
//!
//! Entries are integers with |K| ≤ D (the number of selected parameters). The shared
//! machinery (selection, format, block loop, Matrix) is in [`super`]; Jacobians come from
//! gradient probes (`nn::per_example::JacobianBlock`).

use super::{run_kernel, validate, KernelKind, DOC_COMMON, PARAMS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct KernelSignGd;

static SIG: Signature = Signature {
    id: "kernel.signgd",
    version: 1,
    summary: "SignGD kernel: K[(i,c),(x,c')] = <sign grad f_c(x_i), sign grad f_c'(x)>; integer entries, |K| <= D.",
    doc: DOC_COMMON,
    params: PARAMS,
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet k = kernel signgd(lm, t, t, split=train, params=biases)"],
    reference: Some("methods.md §4.5 (LM-Kernel-FT `src/kernel_trainer.py`); Malladi et al., ICML 2023, arXiv:2210.05643"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for KernelSignGd {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate(KernelKind::SignGd, args)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        run_kernel(KernelKind::SignGd, &SIG, cx, args)
    }
}
