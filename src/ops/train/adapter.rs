//! `train adapter(model, tasks, …)`: bottleneck adapters on a frozen base (methods.md §1.4, §2.3).
//!
//! Houlsby placement (after the attention output and after the FFN output of every block),
//! width `size` or hidden/`reduction`, ReLU or swish, N(0, 0.02) init of both projections or a
//! zero up-projection (identity at init), optional biases and dropout.

use super::*;
use crate::nn::peft::{AdapterActivation, AdapterConfig, AdapterInit, AdapterSize};
use crate::ops::{Determinism, OpKind, Operator, Signature};

pub struct TrainAdapter;

pub const P_SIZE: Param = Param::opt(
    "size",
    Ty::Opt(&Ty::Int),
    Const::None,
    "Bottleneck width (overrides `reduction`).",
);
pub const P_REDUCTION: Param = Param::opt(
    "reduction",
    Ty::Int,
    Const::Int(16),
    "Reduction factor: width = hidden / reduction.",
)
.range(1.0, 1e6);
pub const P_ACT: Param = Param::opt(
    "activation",
    Ty::Enum(&["relu", "swish"]),
    Const::Str("relu"),
    "Bottleneck non-linearity.",
);
pub const P_INIT: Param = Param::opt(
    "init",
    Ty::Either(&Ty::Enum(&["normal", "zero_up"]), &Ty::Adapter),
    Const::Str("normal"),
    "`normal`: both projections N(0, 0.02²); `zero_up`: up-projection zero (identity at init); or an adapter to start from (e.g. a merged delta from `merge softmax`), of the same size and sites on the same base.",
);
pub const P_BIAS: Param = Param::opt(
    "bias",
    Ty::Bool,
    Const::Bool(true),
    "Biases in the bottleneck projections.",
);
pub const P_ADROPOUT: Param = Param::opt(
    "dropout",
    Ty::Float,
    Const::Float(0.0),
    "Dropout on the adapter output.",
)
.range(0.0, 0.99);

static SIG: Signature = Signature {
    id: "train.adapter",
    version: 1,
    summary: "Train bottleneck adapters (Houlsby placement) on one or more tasks.",
    doc: "Adapters after every attention output and FFN output: `h + up(act(down(h)))`. Frozen base; \
          only adapter (and head) parameters train. Saved in PEFT's directory layout with \
          `peft_type: \"SMELT_BOTTLENECK\"` (Python PEFT has no bottleneck adapters).",
    params: &[
        P_MODEL, P_TASKS, P_SIZE, P_REDUCTION, P_ACT, P_INIT, P_BIAS, P_ADROPOUT,
        Param::opt("lr", Ty::Float, Const::Float(1e-3), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED,
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet a = train adapter(lm, t, size=12, activation=swish, optimizer=adafactor, lr=5e-4, schedule=constant)"],
    reference: Some("Houlsby et al. 2019; methods.md §1.4 (DoubleSeqBn) and §2.3 (OpenDelta Houlsby)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// The adapter configuration from the adapter parameters.
pub fn adapter_config(args: &Args, seed: u64) -> Result<AdapterConfig, OpError> {
    let size = match args.get("size")? {
        Value::None => AdapterSize::ReductionFactor(args.int("reduction")?.max(0) as usize),
        _ => AdapterSize::Bottleneck(args.int("size")?.max(0) as usize),
    };
    Ok(AdapterConfig {
        size,
        activation: match args.str("activation")? {
            "swish" => AdapterActivation::Swish,
            _ => AdapterActivation::Relu,
        },
        init: match args.str("init").unwrap_or("normal") {
            "zero_up" => AdapterInit::ZeroUp { std: 0.02 },
            _ => AdapterInit::Normal { std: 0.02 },
        },
        bias: args.bool("bias")?,
        dropout: args.float("dropout")?,
        after_attention: true,
        after_ffn: true,
        seed: seed ^ 0x4144_4150,
    })
}

impl Operator for TrainAdapter {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = super::lora::run_seed(args, cx)?;
        let spec = DeltaSpec::Adapter(adapter_config(args, cx.seed)?);
        run_training(cx, args, spec, None, SIG.id, SIG.version)
    }
}
