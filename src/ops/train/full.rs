//! `train full(model, tasks, …)`: full fine-tuning — every checkpoint tensor trains.
//!
//! The model is rebuilt from trainable vars (embeddings, norms, projections, tied heads), so
//! nothing is silently frozen; the result is a full HF directory in the base's dtype (with the
//! classification heads inside) that merges, evaluates and loads in Python `transformers`.

use super::*;
use crate::ops::{Determinism, OpKind, Operator, Signature};

pub struct TrainFull;

static SIG: Signature = Signature {
    id: "train.full",
    version: 1,
    summary: "Fine-tune every weight of a model on one or more tasks; returns a Model.",
    doc: "All parameters train (AdamW by default, HF's defaults otherwise). The saved model is an HF \
          directory in the base's dtype; cls heads are stored as `classifier.weight`/`.bias` (one task) \
          or `classifier.<task>.*` (several) on the [CLS] state without the pooler (LM-BFF's no-prompt \
          head), so `transformers` loads the encoder and reports the head keys as unused.",
    params: &[
        P_MODEL, P_TASKS,
        Param::opt("lr", Ty::Float, Const::Float(1e-5), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet base = train full(lm, t, epochs=1, lr=1e-5, batch=16, warmup=100, schedule=cosine)"],
    reference: Some("methods.md §3.2 (UBGM base/task models), §4.7 (FT baseline)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for TrainFull {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = super::lora::run_seed(args, cx)?;
        run_training(cx, args, DeltaSpec::Full, None, SIG.id, SIG.version)
    }
}
