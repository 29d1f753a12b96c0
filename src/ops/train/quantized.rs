//! `train qlora` and `train qadapter`: LoRA / bottleneck adapters on a frozen base whose block
//! projections are quantized to 4-bit NF4 (default) or 8-bit blockwise absmax (methods.md §1.4).
//!
//! The quantized weights are dequantized in the forward (candle's quantized matmul has no
//! backward), so gradients reach the factors exactly as in QLoRA; the saved adapter is an
//! ordinary LoRA / adapter directory whose `smelt.json` records the quantization, so evaluation
//! runs it on the same quantized base. NF4 blocks of 64 with an f32 absmax each (no double
//! quantisation of the absmax values).

use super::adapter::{adapter_config, P_ACT, P_ADROPOUT, P_BIAS, P_INIT, P_REDUCTION, P_SIZE};
use super::lora::{lora_config, run_seed, P_ALPHA, P_DROPOUT, P_R, P_RSLORA, P_TARGETS};
use super::*;
use crate::ops::{Determinism, OpKind, Operator, Signature};

pub struct TrainQLora;
pub struct TrainQAdapter;

pub const P_BITS: Param = Param::opt(
    "bits",
    Ty::Enum(&["nf4", "int8"]),
    Const::Str("nf4"),
    "Quantization of the frozen base: 4-bit NormalFloat or 8-bit, blocks of 64.",
);

static SIG_QLORA: Signature = Signature {
    id: "train.qlora",
    version: 1,
    summary: "Train LoRA on a 4-bit (NF4) or 8-bit quantized frozen base (QLoRA).",
    doc: "Like `train lora`, on a base whose transformer-block projections are quantized (embeddings, \
          norms and heads stay f32).",
    params: &[
        P_MODEL, P_TASKS, P_BITS, P_R, P_ALPHA, P_DROPOUT, P_TARGETS, P_RSLORA,
        Param::opt("lr", Ty::Float, Const::Float(1e-3), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED,
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet q = train qlora(lm, t, bits=nf4, r=16, alpha=32, head=prompt)"],
    reference: Some("Dettmers et al. 2023, QLoRA"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

static SIG_QADAPTER: Signature = Signature {
    id: "train.qadapter",
    version: 1,
    summary: "Train bottleneck adapters on a 4-bit (NF4) or 8-bit quantized frozen base.",
    doc: "Like `train adapter`, on a quantized base (methods.md §1.4 \"quantized adapter\").",
    params: &[
        P_MODEL, P_TASKS, P_BITS, P_SIZE, P_REDUCTION, P_ACT, P_INIT, P_BIAS, P_ADROPOUT,
        Param::opt("lr", Ty::Float, Const::Float(1e-3), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED,
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet q = train qadapter(lm, t, bits=int8, reduction=16, head=prompt)"],
    reference: Some("methods.md §1.4 (adapter on a 4-bit NF4 base)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

fn bits(args: &Args) -> Result<QuantBits, OpError> {
    Ok(match args.str("bits")? {
        "int8" => QuantBits::Int8,
        _ => QuantBits::Nf4,
    })
}

impl Operator for TrainQLora {
    fn signature(&self) -> &'static Signature {
        &SIG_QLORA
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = run_seed(args, cx)?;
        let spec = DeltaSpec::Lora(lora_config(args, cx.seed)?);
        run_training(
            cx,
            args,
            spec,
            Some(bits(args)?),
            SIG_QLORA.id,
            SIG_QLORA.version,
        )
    }
}

impl Operator for TrainQAdapter {
    fn signature(&self) -> &'static Signature {
        &SIG_QADAPTER
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = run_seed(args, cx)?;
        let spec = DeltaSpec::Adapter(adapter_config(args, cx.seed)?);
        run_training(
            cx,
            args,
            spec,
            Some(bits(args)?),
            SIG_QADAPTER.id,
            SIG_QADAPTER.version,
        )
    }
}
