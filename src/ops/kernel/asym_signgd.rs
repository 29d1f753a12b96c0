//! `kernel asym_signgd(model, train, eval, …)`: the asymmetric SignGD kernel
//! `K^A[(i,·),(x,·)] = ⟨sign ∇θ f(x_i), ∇θ f(x)⟩` (training point signed), the kernel of Adam /
//! SignGD fine-tuning, with its flip (methods.md §4.5).
//!
//! Binary tasks only (C = 1). The side array `flipped` holds
//! `K^A_flip[(i,·),(x,·)] = ⟨sign ∇f(x), ∇f(x_i)⟩`, the paper's index 1 of
//! `[2, N_train, C, N_X, C]`; on the same examples `flipped = (K^A)ᵀ`. The shared machinery is
//! in [`super`]; Jacobians come from gradient probes (`nn::per_example::JacobianBlock`).

use super::{run_kernel, validate, KernelKind, DOC_COMMON, PARAMS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct KernelAsymSignGd;

static SIG: Signature = Signature {
    id: "kernel.asym_signgd",
    version: 1,
    summary: "Asymmetric SignGD kernel <sign grad f(x_i), grad f(x)> with its flip <sign grad f(x), grad f(x_i)> (binary tasks).",
    doc: DOC_COMMON,
    params: PARAMS,
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet k = kernel asym_signgd(lm, t, t, split=train)"],
    reference: Some("methods.md §4.5 (LM-Kernel-FT `src/kernel_trainer.py`); Malladi et al., ICML 2023, arXiv:2210.05643"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for KernelAsymSignGd {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate(KernelKind::AsymSignGd, args)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        run_kernel(KernelKind::AsymSignGd, &SIG, cx, args)
    }
}
