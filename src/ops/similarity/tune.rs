//! Tuning a copy of a source delta on a target task for a few hundred steps — the auxiliary
//! runs behind `similarity euclidean` and `similarity performance` (paper 2 §2.5: ≤ 200
//! updates, lr 5e-4, batch 8, constant schedule, no warmup, validation every 50 steps, best
//! checkpoint kept; §2.4: Adafactor, gradient clipping at 0.1).
//!
//! Each (source, target) pair loads a fresh copy of the source onto its base, feeds the
//! target's train split in the format `evaluate` would use, and runs the shared training loop
//! (`train::train`) with a seed derived from the node seed and the pair. When the format needs
//! a classification head and the source has none for the target, a fresh seeded head is
//! trained alongside (it is not part of the delta, so it never enters a distance).

use super::{delta_of, format_for, named_vars, overrides, snapshot};
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::train::runnable::Runnable;
use crate::ops::train::OPTIMIZERS;
use crate::ops::{Args, Const, OpCtx, Param};
use crate::train::classify::ClsHead;
use crate::train::feed::{argmax, Feed};
use crate::train::{accuracy, macro_f1, mcc, train, OptimizerConfig, ScheduleKind, TrainConfig};
use crate::types::Ty;
use crate::value::Artifact;
use candle_core::Tensor;
use std::sync::Arc;

pub const TUNE_METRICS: &[&str] = &["accuracy", "macro_f1", "mcc"];

/// The tuning parameters with paper 2's defaults.
pub const TUNE_PARAMS: [Param; 7] = [
    Param::opt("steps", Ty::Int, Const::Int(200), "Optimizer steps of each auxiliary tuning run (paper 2: 200).").range(1.0, 1e7),
    Param::opt("lr", Ty::Float, Const::Float(5e-4), "Learning rate, constant (paper 2: 5e-4).").range(0.0, 10.0),
    Param::opt("batch", Ty::Int, Const::Int(8), "Training batch size (paper 2: 8).").range(1.0, 1e6),
    Param::opt("optimizer", Ty::Enum(OPTIMIZERS), Const::Str("adafactor"), "Optimizer (paper 2: Adafactor with a fixed learning rate)."),
    Param::opt("max_grad_norm", Ty::Opt(&Ty::Float), Const::Float(0.1), "Clip the global gradient norm (paper 2: 0.1); none = no clipping."),
    Param::opt("eval_every", Ty::Int, Const::Int(50), "Validate on the target's dev split every this many steps and keep the best checkpoint (paper 2: 50).").range(1.0, 1e7),
    Param::opt("metric", Ty::Enum(TUNE_METRICS), Const::Str("accuracy"), "Dev metric for checkpoint selection (and the performance score)."),
];

/// One auxiliary run: the delta before and after, and the dev metric before and after.
pub struct Tuned {
    pub before: Vec<(String, Tensor)>,
    pub after: Vec<(String, Tensor)>,
    pub dev_before: f64,
    pub dev_after: f64,
    pub steps: usize,
}

/// A metric of class scores against gold labels.
pub fn metric(name: &str, logits: &[Vec<f32>], gold: &[u32]) -> Result<f64, OpError> {
    let pred = argmax(logits);
    match name {
        "macro_f1" => macro_f1(&pred, gold),
        "mcc" => mcc(&pred, gold),
        _ => accuracy(&pred, gold),
    }
}

/// The optimizer and loop settings from the tuning arguments.
fn config(args: &Args, seed: u64) -> Result<TrainConfig, OpError> {
    let lr = args.float("lr")?;
    let optimizer = match args.str("optimizer")? {
        "adamw" => OptimizerConfig::adamw(lr),
        "sgd" => OptimizerConfig::sgd(lr),
        "signgd" => OptimizerConfig::signgd(lr),
        _ => OptimizerConfig::adafactor(lr),
    };
    optimizer.validate()?;
    Ok(TrainConfig {
        optimizer,
        schedule: ScheduleKind::Constant,
        warmup_steps: 0,
        epochs: 1,
        max_steps: Some(args.int("steps")?.max(1) as usize),
        batch_size: args.int("batch")?.max(1) as usize,
        grad_accum: 1,
        max_grad_norm: args.opt_float("max_grad_norm")?,
        seed,
        eval_every: Some(args.int("eval_every")?.max(1) as usize),
        patience: None,
        restore_best: true,
        progress: false,
        groups: None,
    })
}

/// Tunes a fresh copy of `source` on `task` (seed `seed`).
pub fn tune(
    cx: &OpCtx,
    args: &Args,
    source: &Arc<Artifact>,
    task: &TaskData,
    seed: u64,
) -> Result<Tuned, OpError> {
    let run = Runnable::load(source, &cx.device)?;
    let delta = delta_of(&run, "similarity euclidean|performance")?;
    let spec = format_for(&run, task, &overrides(args)?)?;
    if task.train().is_empty() || task.dev().is_empty() {
        return Err(OpError::new(
            "smelt::train::no_data",
            format!(
                "task `{}` needs train and dev examples to tune on",
                task.name
            ),
        )
        .with_help("make a dev split with `data split(task, dev=0.1)` or `data kshot`"));
    }
    let feed = Feed::new(&run.lm, &spec, task, task.train())?;
    let dev = Feed::new(&run.lm, &spec, task, task.dev())?;
    let head = match (run.head(&task.name)?, feed.needs_head()) {
        (Some(h), _) => Some(h),
        (None, true) => Some(ClsHead::new(
            run.lm.config.hidden_size(),
            feed.classes,
            seed ^ 0x4845_4144,
            run.lm.device(),
        )?),
        (None, false) => None,
    };
    let name = args.str("metric")?;
    let gold = dev.labels();
    let named = named_vars(delta);
    let before = snapshot(&named)?;
    delta.set_training(false);
    let dev_before = metric(name, &dev.all_logits(&run.lm, head.as_ref(), 32)?, &gold)?;
    let mut vars = delta.vars();
    vars.extend(head.iter().flat_map(|h| h.vars()));
    let cfg = config(args, seed)?;
    let report = {
        let (lm, head, dev, gold) = (&run.lm, head.as_ref(), &dev, &gold);
        let mut loss = |idx: &[usize], _train: bool| -> Result<Tensor, OpError> {
            delta.set_training(true);
            feed.loss(lm, head, idx)
        };
        let mut eval = || -> Result<f64, OpError> {
            delta.set_training(false);
            metric(name, &dev.all_logits(lm, head, 32)?, gold)
        };
        train(&cfg, &vars, feed.len(), None, &mut loss, Some(&mut eval))?
    };
    delta.set_training(false);
    let dev_after = metric(name, &dev.all_logits(&run.lm, head.as_ref(), 32)?, &gold)?;
    Ok(Tuned {
        before,
        after: snapshot(&named)?,
        dev_before,
        dev_after,
        steps: report.steps,
    })
}

/// The seed of the run tuning source `j` on target `i`, derived from the node seed.
pub fn pair_seed(node: u64, i: usize, j: usize) -> u64 {
    node ^ ((i as u64) << 32 | j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Runs `f` on the tuned result of every pair `i ≠ j`; NaN on the diagonal.
pub fn each_tuned(
    cx: &OpCtx,
    args: &Args,
    pairs: &super::Pairs,
    f: &mut dyn FnMut(&Tuned) -> Result<f64, OpError>,
) -> Result<(Vec<f64>, Vec<usize>), OpError> {
    let n = pairs.n();
    let mut v = vec![f64::NAN; n * n];
    let mut steps = Vec::new();
    for (j, src) in pairs.sources.iter().enumerate() {
        for i in (0..n).filter(|&i| i != j) {
            let t =
                tune(cx, args, src, &pairs.tasks[i], pair_seed(cx.seed, i, j)).map_err(|e| {
                    e.context(format!(
                        "tuning source {} on target {}",
                        pairs.labels[j], pairs.labels[i]
                    ))
                })?;
            steps.push(t.steps);
            v[i * n + j] = f(&t)?;
        }
    }
    Ok((v, steps))
}
