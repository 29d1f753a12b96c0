//! `train lora(model, tasks, r, alpha, …)`: PEFT LoRA on a frozen base (methods.md §1.4, §2.3).
//!
//! PEFT's initialisation (A kaiming-uniform with a = √5, B = 0, scale α/r or α/√r with
//! rsLoRA), dropout on the LoRA input path only, default targets the attention query/value
//! projections of the architecture. The result is a PEFT directory that Python `peft` loads.

use super::*;
use crate::nn::peft::LoraConfig;
use crate::nn::ArchConfig;
use crate::ops::{Determinism, OpKind, Operator, Signature};

pub struct TrainLora;

pub const P_R: Param = Param::opt("r", Ty::Int, Const::Int(8), "LoRA rank.").range(1.0, 65536.0);
pub const P_ALPHA: Param = Param::opt(
    "alpha",
    Ty::Float,
    Const::Float(16.0),
    "LoRA alpha (scale α/r).",
);
pub const P_DROPOUT: Param = Param::opt(
    "dropout",
    Ty::Float,
    Const::Float(0.0),
    "Dropout on the LoRA input path.",
)
.range(0.0, 0.99);
pub const P_TARGETS: Param = Param::opt("targets", Ty::Opt(&Ty::List(&Ty::Str)), Const::None, "Target module patterns (suffixes like \"query\", or `re:` regexes); default: query/value (BERT), q_proj/v_proj (Llama). A pattern matching nothing is an error.");
pub const P_RSLORA: Param = Param::opt(
    "rslora",
    Ty::Bool,
    Const::Bool(false),
    "Rank-stabilised scale α/√r.",
);

static SIG: Signature = Signature {
    id: "train.lora",
    version: 1,
    summary: "Train LoRA adapters on one or more tasks; returns a PEFT adapter bound to the base.",
    doc: "Frozen base, trainable LoRA factors (and a classification head per task with head=cls). \
          Tasks are fed in their input format (cls head, LM-BFF prompt with label words, or decoder \
          answer choices), recorded with the adapter so `evaluate` feeds them the same way. \
          Several tasks train together with per-task batches. Saved as PEFT `adapter_config.json` + \
          `adapter_model.safetensors`.",
    params: &[
        P_MODEL, P_TASKS, P_R, P_ALPHA, P_DROPOUT, P_TARGETS, P_RSLORA,
        Param::opt("lr", Ty::Float, Const::Float(1e-3), "Peak learning rate.").range(0.0, 10.0),
        P_EPOCHS, P_MAX_STEPS, P_BATCH, P_ACCUM, P_OPTIMIZER, P_WD, P_SCHEDULE, P_WARMUP, P_CLIP,
        P_MAX_LEN, P_HEAD, P_TEMPLATE, P_WORDS, P_WEIGHTS, P_PATIENCE, P_EVAL_EVERY, P_SEED, P_INIT_FROM,
    ],
    returns: Ty::Adapter,
    ret_fn: None,
    examples: &[
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet a = train lora(lm, t, r=8, alpha=16, lr=1e-3, epochs=2, head=prompt)",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"products\"]]\nlet group = train lora(lm, ts, targets=[\"query\", \"key\", \"value\"], head=cls)",
    ],
    reference: Some("Hu et al. 2021, LoRA; PEFT LoraConfig"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// The default target patterns of an architecture.
pub fn default_targets(base: &std::path::Path) -> Result<Vec<String>, OpError> {
    Ok(match ArchConfig::from_dir(base)? {
        ArchConfig::Bert(_) => vec!["query".into(), "value".into()],
        ArchConfig::Llama(_) => vec!["q_proj".into(), "v_proj".into()],
    })
}

/// The LoRA configuration from the LoRA parameters (seeded from the node).
pub fn lora_config(args: &Args, seed: u64) -> Result<LoraConfig, OpError> {
    let base = args.artifact("model", Kind::Model)?;
    let targets = match args.get("targets")? {
        Value::None => default_targets(&base.dir)?,
        _ => args
            .list("targets")?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
    };
    let c = LoraConfig {
        r: args.int("r")?.max(0) as usize,
        alpha: args.float("alpha")?,
        dropout: args.float("dropout")?,
        target_modules: targets,
        rslora: args.bool("rslora")?,
        seed: seed ^ 0x4c4f_5241,
        task_type: None,
        base_model_name_or_path: Some(base.dir.display().to_string()),
    };
    c.validate()?;
    Ok(c)
}

/// The node seed mixed with the user's extra `seed`.
pub fn run_seed(args: &Args, cx: &OpCtx) -> Result<u64, OpError> {
    Ok(cx.seed ^ (args.int("seed")? as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Operator for TrainLora {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        cx.seed = run_seed(args, cx)?;
        let spec = DeltaSpec::Lora(lora_config(args, cx.seed)?);
        run_training(cx, args, spec, None, SIG.id, SIG.version)
    }
}
