//! `train prefix(model, tasks, tokens=20, …)`: prefix tuning (Li & Liang 2021; methods.md §2.3).
//!
//! P virtual key/value vectors per layer, produced by an MLP from a learnt embedding
//! (`projection=true`, PEFT's `prefix_projection`) or learnt directly; real tokens attend to
//! them in every layer. Saved as PEFT's `PREFIX_TUNING` directory.

use super::*;
use crate::nn::peft::PrefixConfig;
use crate::ops::{Determinism, OpKind, Operator, Signature};

pub struct TrainPrefix;

static SIG: Signature = Signature {
    id: "train.prefix",
    version: 1,
    summary: "Train prefix tuning (per-layer key/value prefixes from an MLP) on one or more tasks.",
    doc: "Frozen base; the prefix embedding and its re-parameterisation MLP (embedding → Linear → tanh → \
          Linear) train. Prefix keys are not rotated (RoPE) and real tokens keep positions after the \
          prefix, as with HF `past_key_values`. Inputs must fit `max_position_embeddings − tokens`.",
    params: &[
        P_MODEL, P_TASKS,
        Param::opt("tokens", Ty::Int, Const::Int(20), "Virtual tokens per layer (PEFT `num_virtual_tokens`).").range(1.0, 4096.0),
        Param::opt("projection", Ty::Bool, Const::Bool(true), "Re-parameterise the prefix by an MLP (PEFT `prefix_projection`)."),
        Param::opt("prefix_hidden", Ty::Opt(&Ty::Int), Const::None, "Hidden width of the MLP (default: the model's hidden size)."),
        Param::opt("lr", Ty::Float, Const::Float(1e-2), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED, P_INIT_FROM,
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet p = train prefix(lm, t, tokens=8, prefix_hidden=24, head=prompt)"],
    reference: Some("Li & Liang 2021, Prefix-Tuning; PEFT PrefixTuningConfig"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for TrainPrefix {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = super::lora::run_seed(args, cx)?;
        let cfg = PrefixConfig {
            num_virtual_tokens: args.int("tokens")?.max(1) as usize,
            projection: args.bool("projection")?,
            encoder_hidden: match args.get("prefix_hidden")? {
                Value::None => None,
                _ => Some(args.int("prefix_hidden")?.max(1) as usize),
            },
            seed: cx.seed ^ 0x5052_4546,
        };
        run_training(cx, args, DeltaSpec::Prefix(cfg), None, SIG.id, SIG.version)
    }
}
