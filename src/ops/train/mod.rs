//! `train full|lora|adapter|prefix|qlora|qadapter`: the shared parameters and the one training
//! routine every method runs through.
//!
//! A method file declares its signature (the shared parameters below plus its own) and turns
//! its own arguments into a [`DeltaSpec`]; [`run_training`] does the rest: load the base, install
//! the delta, resolve each task's input format ([`FormatSpec`]), train with per-task batches
//! (`TrainConfig::groups`), optional per-example weights and early stopping on mean dev accuracy,
//! then write the result (PEFT directory or full HF directory, heads, `smelt.json`). Every
//! random draw (init, dropout, data order) comes from the node seed.

pub mod adapter;
pub mod full;
pub mod init;
pub mod lora;
pub mod prefix;
pub mod quantized;
pub mod runnable;

use crate::data::TaskData;
use crate::diag::OpError;
use crate::nn::quant::{quantize_model, QuantBits};
use crate::ops::{Args, Const, OpCtx, Param};
use crate::train::classify::ClsHead;
use crate::train::delta::{load_trainable, Delta, DeltaSpec};
use crate::train::feed::{argmax, Feed, FormatSpec};
use crate::train::{accuracy, train, OptimizerConfig, ScheduleKind, TrainConfig};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use candle_core::Tensor;
use serde_json::json;
use std::sync::Arc;

pub const TASKS_TY: Ty = Ty::Either(&Ty::Task, &Ty::List(&Ty::Task));
pub const OPTIMIZERS: &[&str] = &["adamw", "adafactor", "sgd", "signgd"];
pub const SCHEDULES: &[&str] = &["constant", "linear", "cosine"];
pub const HEADS: &[&str] = &["auto", "cls", "prompt"];

pub const P_MODEL: Param = Param::req("model", Ty::Model, "The base model (HF directory).");
pub const P_TASKS: Param = Param::req(
    "tasks",
    TASKS_TY,
    "A task, or a list of tasks trained together with per-task batches.",
);
pub const P_EPOCHS: Param = Param::opt(
    "epochs",
    Ty::Int,
    Const::Int(1),
    "Passes over the training data.",
)
.range(0.0, 1e6);
pub const P_MAX_STEPS: Param = Param::opt(
    "max_steps",
    Ty::Opt(&Ty::Int),
    Const::None,
    "Optimizer steps; overrides `epochs` when given.",
);
pub const P_BATCH: Param =
    Param::opt("batch", Ty::Int, Const::Int(8), "Examples per micro-batch.").range(1.0, 1e6);
pub const P_ACCUM: Param = Param::opt(
    "accum",
    Ty::Int,
    Const::Int(1),
    "Micro-batches per optimizer step (gradient accumulation).",
)
.range(1.0, 1e6);
pub const P_OPTIMIZER: Param = Param::opt(
    "optimizer",
    Ty::Enum(OPTIMIZERS),
    Const::Str("adamw"),
    "AdamW (β 0.9/0.999, ε 1e-8), Adafactor (constant external lr), SGD, or SignGD.",
);
pub const P_WD: Param = Param::opt(
    "weight_decay",
    Ty::Float,
    Const::Float(0.0),
    "Decoupled weight decay.",
)
.range(0.0, 1.0);
pub const P_SCHEDULE: Param = Param::opt(
    "schedule",
    Ty::Enum(SCHEDULES),
    Const::Str("linear"),
    "Learning-rate schedule after warmup.",
);
pub const P_WARMUP: Param =
    Param::opt("warmup", Ty::Int, Const::Int(0), "Linear warmup steps.").range(0.0, 1e9);
pub const P_CLIP: Param = Param::opt(
    "max_grad_norm",
    Ty::Opt(&Ty::Float),
    Const::None,
    "Clip the global gradient norm to this value.",
);
pub const P_MAX_LEN: Param = Param::opt(
    "max_len",
    Ty::Int,
    Const::Int(128),
    "Maximum tokens per example (longer inputs are truncated).",
)
.range(8.0, 1e6);
pub const P_HEAD: Param = Param::opt("head", Ty::Enum(HEADS), Const::Str("auto"), "`cls`: linear head on [CLS] (encoders); `prompt`: label words at the mask (encoders) or answer choices (decoders); `auto`: prompt for decoders or when a template is given, else cls.");
pub const P_TEMPLATE: Param = Param::opt("template", Ty::Opt(&Ty::Str), Const::None, "Encoder: LM-BFF template (`*cls**sent_0*_It_was*mask*.*sep+*`); decoder: `{text} … ||| {answer}`.");
pub const P_WORDS: Param = Param::opt("words", Ty::Opt(&Ty::Str), Const::None, "Label words / answer choices: `\"terrible, great\"` in label order or `\"negative:terrible, positive:great\"`.");
pub const P_WEIGHTS: Param = Param::opt("weights", Ty::Opt(&Ty::List(&Ty::Float)), Const::None, "Per-example loss weights over the training examples (tasks concatenated in order), e.g. from boosting.");
pub const P_PATIENCE: Param = Param::opt("patience", Ty::Opt(&Ty::Int), Const::None, "Early stopping: evaluate mean dev accuracy (each epoch, or every `eval_every` steps), stop after this many evaluations without improvement, keep the best.");
pub const P_EVAL_EVERY: Param = Param::opt(
    "eval_every",
    Ty::Opt(&Ty::Int),
    Const::None,
    "Evaluate the dev metric every this many steps (default: each epoch when `patience` is set).",
);
/// `init=` of `train lora` and `train prefix`: the delta to start from.
pub const P_INIT_FROM: Param = Param::opt(
    "init",
    Ty::Opt(&Ty::Adapter),
    Const::None,
    "Start from this adapter's weights (e.g. a merged delta from `merge softmax`) instead of a fresh initialisation; same kind and shape-determining configuration, same base.",
);
pub const P_SEED: Param = Param::opt(
    "seed",
    Ty::Int,
    Const::Int(0),
    "Extra seed, to train several runs of one configuration.",
);

/// The `tasks` argument as a list.
pub fn tasks_arg(args: &Args, name: &str) -> Result<Vec<TaskData>, OpError> {
    match args.get(name)? {
        Value::List(_) => args
            .artifacts(name, Kind::Task)?
            .into_iter()
            .map(|a| TaskData::from_artifact(a))
            .collect(),
        _ => Ok(vec![TaskData::from_artifact(
            args.artifact(name, Kind::Task)?,
        )?]),
    }
}

/// The `tasks` arguments' store directories and payloads, by task name (recorded with trained
/// artifacts so `best(…, by=dev_accuracy)` can score them on their own dev data).
fn task_artifacts(args: &Args) -> Result<serde_json::Map<String, serde_json::Value>, OpError> {
    let arts = match args.get("tasks")? {
        Value::List(_) => args.artifacts("tasks", Kind::Task)?,
        _ => vec![args.artifact("tasks", Kind::Task)?],
    };
    Ok(arts
        .iter()
        .map(|a| {
            let name = a.data["name"].as_str().unwrap_or_default().to_string();
            (name, json!({"dir": a.dir, "data": a.data}))
        })
        .collect())
}

fn opt_usize(args: &Args, name: &str) -> Result<Option<usize>, OpError> {
    match args.get(name)? {
        Value::None => Ok(None),
        _ => Ok(Some(args.int(name)?.max(0) as usize)),
    }
}

fn opt_str<'a>(args: &'a Args, name: &str) -> Result<Option<&'a str>, OpError> {
    match args.get(name)? {
        Value::None => Ok(None),
        _ => args.str(name).map(Some),
    }
}

/// The optimizer, schedule and loop settings from the shared parameters.
pub fn train_config(args: &Args, seed: u64, progress: bool) -> Result<TrainConfig, OpError> {
    let lr = args.float("lr")?;
    let wd = args.float("weight_decay")?;
    let mut optimizer = match args.str("optimizer")? {
        "adafactor" => OptimizerConfig::adafactor(lr),
        "sgd" => OptimizerConfig::sgd(lr),
        "signgd" => OptimizerConfig::signgd(lr),
        _ => OptimizerConfig::adamw(lr),
    };
    match &mut optimizer {
        OptimizerConfig::AdamW { weight_decay, .. }
        | OptimizerConfig::Sgd { weight_decay, .. }
        | OptimizerConfig::SignGd { weight_decay, .. }
        | OptimizerConfig::Adafactor { weight_decay, .. } => *weight_decay = wd,
    }
    optimizer.validate()?;
    let patience = opt_usize(args, "patience")?;
    Ok(TrainConfig {
        optimizer,
        schedule: ScheduleKind::parse(args.str("schedule")?)?,
        warmup_steps: args.int("warmup")?.max(0) as usize,
        epochs: args.int("epochs")?.max(0) as usize,
        max_steps: opt_usize(args, "max_steps")?,
        batch_size: args.int("batch")?.max(1) as usize,
        grad_accum: args.int("accum")?.max(1) as usize,
        max_grad_norm: args.opt_float("max_grad_norm")?,
        seed,
        eval_every: opt_usize(args, "eval_every")?,
        patience,
        restore_best: true,
        progress,
        groups: None,
    })
}

/// One task's training data, encoded, with its head (cls format only).
struct TaskRun {
    task: TaskData,
    spec: FormatSpec,
    feed: Feed,
    head: Option<ClsHead>,
}

/// Trains `spec` on the `model` and `tasks` arguments and writes the result into the node.
/// `quant` quantizes the frozen base first (QLoRA, quantized adapters).
pub fn run_training(
    cx: &mut OpCtx,
    args: &Args,
    spec: DeltaSpec,
    quant: Option<QuantBits>,
    id: &str,
    version: u32,
) -> Result<Value, OpError> {
    let base = args.artifact("model", Kind::Model)?;
    let tasks = tasks_arg(args, "tasks")?;
    let what = format!(
        "{} on {}",
        spec.method(),
        tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    inner(cx, args, base, tasks, spec, quant, id, version)
        .map_err(|e| e.context(format!("training {what}")))
}

#[allow(clippy::too_many_arguments)]
fn inner(
    cx: &mut OpCtx,
    args: &Args,
    base: &Arc<Artifact>,
    tasks: Vec<TaskData>,
    spec: DeltaSpec,
    quant: Option<QuantBits>,
    id: &str,
    version: u32,
) -> Result<Value, OpError> {
    let (mut lm, full_vars) = match spec {
        DeltaSpec::Full => load_trainable(&base.dir, &cx.device)?,
        _ => (crate::nn::load(&base.dir, &cx.device)?, vec![]),
    };
    let quant_summary = match quant {
        Some(bits) => Some(quantize_model(&mut lm, bits)?),
        None => None,
    };
    let delta = match args.get("init") {
        Ok(Value::Artifact(init)) => init::load_init(&mut lm, &spec, init, base)?,
        _ => Delta::install(&mut lm, &spec, full_vars)?,
    };
    let head = args.str("head")?;
    let (template, words) = (opt_str(args, "template")?, opt_str(args, "words")?);
    let max_len = args.int("max_len")?.max(1) as usize;
    let mut runs = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        let fspec = FormatSpec::resolve(&lm, &task, head, template, words, max_len)?;
        let feed = Feed::new(&lm, &fspec, &task, task.train())?;
        if feed.is_empty() {
            return Err(OpError::new(
                "smelt::train::no_data",
                format!("task `{}` has no training examples", task.name),
            ));
        }
        let head = match feed.needs_head() {
            true => Some(ClsHead::new(
                lm.config.hidden_size(),
                feed.classes,
                cx.seed ^ (0x4845_4144 + i as u64),
                lm.device(),
            )?),
            false => None,
        };
        runs.push(TaskRun {
            task,
            spec: fspec,
            feed,
            head,
        });
    }
    let mut cfg = train_config(args, cx.seed, cx.progress)?;
    let owner: Vec<(usize, usize)> = runs
        .iter()
        .enumerate()
        .flat_map(|(t, r)| (0..r.feed.len()).map(move |i| (t, i)))
        .collect();
    if runs.len() > 1 {
        cfg.groups = Some(owner.iter().map(|(t, _)| *t).collect());
    }
    let weights = match args.get("weights")? {
        Value::None => None,
        _ => Some(args.floats("weights")?),
    };
    if let Some(w) = &weights {
        if w.len() != owner.len() {
            return Err(OpError::new(
                "smelt::train::weights",
                format!("{} weights for {} training examples", w.len(), owner.len()),
            )
            .with_help(
                "give one weight per training example, tasks concatenated in the order given",
            ));
        }
    }
    let mut vars = delta.vars();
    vars.extend(
        runs.iter()
            .filter_map(|r| r.head.as_ref())
            .flat_map(|h| h.vars()),
    );
    // Early stopping on mean dev accuracy.
    let dev: Option<Vec<Feed>> = match cfg.patience.is_some() || cfg.eval_every.is_some() {
        false => None,
        true => Some(
            runs.iter()
                .map(|r| {
                    if r.task.dev().is_empty() {
                        return Err(OpError::new("smelt::train::no_dev", format!("task `{}` has no dev split for early stopping", r.task.name))
                            .with_help("make one with `data split(task, dev=0.1)` or `data kshot`, or drop `patience`"));
                    }
                    Feed::new(&lm, &r.spec, &r.task, r.task.dev())
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let report = {
        let lm = &lm;
        let runs = &runs;
        let delta = &delta;
        let mut loss = |idx: &[usize], _train: bool| -> Result<Tensor, OpError> {
            delta.set_training(true);
            let t = owner[idx[0]].0;
            if idx.iter().all(|&i| owner[i].0 == t) {
                let local: Vec<usize> = idx.iter().map(|&i| owner[i].1).collect();
                return runs[t].feed.loss(lm, runs[t].head.as_ref(), &local);
            }
            let parts = idx
                .iter()
                .map(|&i| {
                    let (t, l) = owner[i];
                    runs[t].feed.loss(lm, runs[t].head.as_ref(), &[l])
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let mut eval = || -> Result<f64, OpError> {
            delta.set_training(false);
            let feeds = dev.as_ref().expect("dev feeds when evaluating");
            let mut total = 0.0;
            for (r, f) in runs.iter().zip(feeds) {
                let pred = argmax(&f.all_logits(lm, r.head.as_ref(), 32)?);
                total += accuracy(&pred, &f.labels())?;
            }
            Ok(total / runs.len() as f64)
        };
        let eval_fn: Option<&mut crate::train::trainer::EvalFn<'_>> =
            if dev.is_some() { Some(&mut eval) } else { None };
        train(
            &cfg,
            &vars,
            owner.len(),
            weights.as_deref(),
            &mut loss,
            eval_fn,
        )?
    };
    delta.set_training(false);
    let out = cx.out_dir.join(if matches!(delta, Delta::Full(_)) {
        "model"
    } else {
        "adapter"
    });
    let heads: Vec<(String, ClsHead)> = runs
        .iter()
        .filter_map(|r| r.head.clone().map(|h| (r.task.name.clone(), h)))
        .collect();
    let formats: serde_json::Map<String, serde_json::Value> = runs
        .iter()
        .map(|r| (r.task.name.clone(), json!(r.spec)))
        .collect();
    let names: Vec<&str> = runs.iter().map(|r| r.task.name.as_str()).collect();
    let method = match quant {
        Some(_) => format!("q{}", delta_method(&delta)),
        None => delta_method(&delta).to_string(),
    };
    let info = json!({
        "method": method,
        "label": format!("{method}({})", names.join("+")),
        "quant": quant.map(|q| q.name()),
        "quant_bytes": quant_summary.as_ref().map(|q| q.quant_bytes),
        "tasks": names,
        "task_artifacts": task_artifacts(args)?,
        "formats": formats,
        "base": {"dir": base.dir, "key": base.key.hex()},
        "steps": report.steps,
        "epochs": report.epochs,
        "examples": report.examples,
        "first_loss": report.losses.first(),
        "final_loss": report.losses.last(),
        "best_dev": report.best.map(|(s, m)| json!({"step": s, "accuracy": m})),
        "stopped_early": report.stopped_early,
        "train_seconds": report.seconds,
        "trainable_params": delta.trainable_params() + heads.iter().map(|(_, h)| h.weight.elem_count() + h.bias.elem_count()).sum::<usize>(),
        "op": id,
        "op_version": version,
        "node": cx.key.hex(),
    });
    runnable::write_result(
        &lm,
        &delta,
        &heads,
        names.len(),
        &base.dir,
        &out,
        info,
        cx.key,
    )
}

fn delta_method(d: &Delta) -> &'static str {
    match d {
        Delta::Full(_) => "full",
        Delta::Lora(_) => "lora",
        Delta::Adapter(_) => "adapter",
        Delta::Prefix(_) => "prefix",
    }
}
