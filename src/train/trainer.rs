//! A generic, deterministic training loop, independent of the language and of the model.
//!
//! The caller supplies `loss(batch_indices, train) -> Tensor` returning **per-example** losses
//! `ℓ_i` (`[b]`) — or an already-reduced scalar when no weights are given — the trainable vars,
//! and optionally a dev metric (higher is better). One optimizer step covers an effective batch
//! `E` of `batch_size × grad_accum` examples split into micro-batches; with example weights
//! `w_i` (default 1) the step minimises the weighted mean `L = Σ_{i∈E} w_i ℓ_i / Σ_{i∈E} w_i`:
//! each micro-batch `μ` back-propagates `Σ_{i∈μ} w_i ℓ_i / Σ_{i∈E} w_i`, so the accumulated
//! gradient is exactly `∇L`. Then: optional clipping by global norm, lr = base · λ(step) from
//! the schedule, one optimizer update.
//!
//! Data order: one `ChaCha8Rng::seed_from_u64(seed)` stream shuffles `0..n` at every epoch, so
//! a run is a pure function of (seed, data, initial vars). Early stopping: the dev metric is
//! evaluated every `eval_every` steps (default: end of each epoch); after `patience`
//! consecutive evaluations without a strict improvement training stops, and with
//! `restore_best` the vars are reset to the best evaluation's values. A non-finite loss or
//! gradient norm stops with `smelt::train::nan_loss` naming the step.

use super::optim::{Optimizer, OptimizerConfig};
use super::schedule::{clip_grad_norm, GradAccumulator, Schedule, ScheduleKind};
use crate::diag::OpError;
use candle_core::{DType, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Everything about a run except the data, model and closures.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Overrides `epochs` when set (HF `max_steps`).
    pub max_steps: Option<usize>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Evaluate every this many optimizer steps (default: end of each epoch).
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    pub restore_best: bool,
    pub progress: bool,
    /// Group id (e.g. task index) of every example: batches then never mix groups (per-task
    /// batches of multi-task training); each epoch shuffles within groups, cuts each group
    /// into batches and shuffles the batch order.
    pub groups: Option<Vec<usize>>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerConfig::adamw(1e-3),
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            max_grad_norm: None,
            seed: 0,
            eval_every: None,
            patience: None,
            restore_best: true,
            progress: false,
            groups: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainReport {
    pub steps: usize,
    pub epochs: usize,
    /// Weighted mean training loss of every optimizer step.
    pub losses: Vec<f64>,
    /// `(step, metric)` of every evaluation.
    pub evals: Vec<(usize, f64)>,
    pub best: Option<(usize, f64)>,
    pub stopped_early: bool,
    /// Examples processed (with repetition).
    pub examples: usize,
    pub seconds: f64,
}

/// Per-example losses (or a reduced scalar) for the given example indices.
pub type LossFn<'a> = dyn FnMut(&[usize], bool) -> Result<Tensor, OpError> + 'a;
/// A dev metric, higher is better.
pub type EvalFn<'a> = dyn FnMut() -> Result<f64, OpError> + 'a;

fn bad(msg: String) -> OpError {
    OpError::new("smelt::train::bad_config", msg)
}

fn nan(step: usize, epoch: usize, what: &str, lr: f64) -> OpError {
    OpError::new("smelt::train::nan_loss", format!("{what} is not finite at step {step} (epoch {epoch})"))
        .with_help(format!("lower the learning rate (it was {lr:.3e}), clip gradients (max_grad_norm), or check the data for empty or broken examples"))
}

/// Trains `vars` on examples `0..n`. `weights` (length `n`, ≥ 0) weight the mean loss.
pub fn train(
    cfg: &TrainConfig,
    vars: &[Var],
    n: usize,
    weights: Option<&[f64]>,
    loss: &mut LossFn<'_>,
    mut eval: Option<&mut EvalFn<'_>>,
) -> Result<TrainReport, OpError> {
    let start = std::time::Instant::now();
    if n == 0 || cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(bad(format!(
            "need examples, batch size and accumulation ≥ 1 (n = {n}, batch = {}, accum = {})",
            cfg.batch_size, cfg.grad_accum
        )));
    }
    if let Some(w) = weights {
        if w.len() != n || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(bad(format!(
                "{} example weights for {n} examples, all must be finite and ≥ 0",
                w.len()
            )));
        }
    }
    let eff = cfg.batch_size * cfg.grad_accum;
    if let Some(g) = &cfg.groups {
        if g.len() != n {
            return Err(bad(format!("{} group ids for {n} examples", g.len())));
        }
    }
    let per_epoch = epoch_batches(
        &mut ChaCha8Rng::seed_from_u64(0),
        n,
        eff,
        cfg.groups.as_deref(),
    )
    .len();
    let total = cfg.max_steps.unwrap_or(cfg.epochs * per_epoch);
    let schedule = Schedule {
        kind: cfg.schedule,
        warmup_steps: cfg.warmup_steps,
        total_steps: total,
    };
    let mut opt = Optimizer::new(cfg.optimizer.clone(), vars.to_vec())?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut rep = TrainReport::default();
    let mut best_vals: Option<Vec<Tensor>> = None;
    let mut bad_evals = 0usize;
    'outer: while rep.steps < total {
        let batches = epoch_batches(&mut rng, n, eff, cfg.groups.as_deref());
        rep.epochs += 1;
        for chunk in &batches {
            if rep.steps >= total {
                break 'outer;
            }
            let step = rep.steps + 1;
            let lr = cfg.optimizer.lr() * schedule.factor(rep.steps);
            let w_total: f64 = match weights {
                Some(w) => chunk.iter().map(|&i| w[i]).sum(),
                None => chunk.len() as f64,
            };
            let mut acc = GradAccumulator::new(vars.len());
            let mut step_loss = 0.0;
            for micro in chunk.chunks(cfg.batch_size) {
                let l = loss(micro, true)?;
                let scaled = match (l.rank(), weights) {
                    (1, _) if l.dims()[0] == micro.len() => {
                        let w: Vec<f32> = micro.iter().map(|&i| weights.map_or(1.0, |w| w[i]) as f32).collect();
                        let w = Tensor::from_vec(w, micro.len(), l.device())?.to_dtype(l.dtype())?;
                        (l.mul(&w)?.sum_all()? / w_total.max(f64::MIN_POSITIVE))?
                    }
                    (0, None) => (l * (micro.len() as f64 / w_total))?,
                    _ => {
                        return Err(OpError::new("smelt::train::bad_loss", format!("the loss closure returned shape {:?} for {} examples", l.dims(), micro.len()))
                            .with_help("return per-example losses [batch] (a scalar only works without example weights)"))
                    }
                };
                let v = scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !v.is_finite() {
                    return Err(nan(step, rep.epochs, "the training loss", lr));
                }
                step_loss += v;
                if w_total > 0.0 {
                    acc.add(vars, &scaled.backward()?)?;
                }
                rep.examples += micro.len();
            }
            let mut grads = acc.take();
            let norm = match cfg.max_grad_norm {
                Some(c) => clip_grad_norm(&mut grads, c)?,
                None => super::schedule::global_norm(&grads)?,
            };
            if !norm.is_finite() {
                return Err(nan(step, rep.epochs, "the gradient norm", lr));
            }
            opt.step(&grads, lr)?;
            rep.steps = step;
            rep.losses.push(step_loss);
            if let Some(b) = &bar {
                b.set_position(step as u64);
                b.set_message(format!("loss {step_loss:.4}"));
            }
            let at_eval = match cfg.eval_every {
                Some(k) => k > 0 && step % k == 0,
                None => false,
            };
            if at_eval
                && evaluate(
                    &mut eval,
                    &mut rep,
                    vars,
                    &mut best_vals,
                    &mut bad_evals,
                    cfg,
                )?
            {
                rep.stopped_early = true;
                break 'outer;
            }
        }
        if cfg.eval_every.is_none()
            && evaluate(
                &mut eval,
                &mut rep,
                vars,
                &mut best_vals,
                &mut bad_evals,
                cfg,
            )?
        {
            rep.stopped_early = true;
            break;
        }
    }
    if let (true, Some(best)) = (cfg.restore_best, &best_vals) {
        for (v, t) in vars.iter().zip(best) {
            v.set(t)?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    rep.seconds = start.elapsed().as_secs_f64();
    Ok(rep)
}

/// One epoch's optimizer batches (each of ≤ `eff` examples). Without groups: shuffle `0..n`
/// and cut it in order. With groups: shuffle each group's members, cut each group, then shuffle
/// the batch order (all from the one run stream, so a run stays a function of its seed).
fn epoch_batches(
    rng: &mut ChaCha8Rng,
    n: usize,
    eff: usize,
    groups: Option<&[usize]>,
) -> Vec<Vec<usize>> {
    match groups {
        None => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(rng);
            order.chunks(eff).map(<[usize]>::to_vec).collect()
        }
        Some(g) => {
            let mut by: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
            for (i, &k) in g.iter().enumerate() {
                by.entry(k).or_default().push(i);
            }
            let mut batches = Vec::new();
            for members in by.values_mut() {
                members.shuffle(rng);
                batches.extend(members.chunks(eff).map(<[usize]>::to_vec));
            }
            batches.shuffle(rng);
            batches
        }
    }
}

/// Runs the dev metric (if any); returns whether patience ran out.
fn evaluate(
    eval: &mut Option<&mut EvalFn<'_>>,
    rep: &mut TrainReport,
    vars: &[Var],
    best_vals: &mut Option<Vec<Tensor>>,
    bad_evals: &mut usize,
    cfg: &TrainConfig,
) -> Result<bool, OpError> {
    let Some(f) = eval.as_mut() else {
        return Ok(false);
    };
    let m = f()?;
    rep.evals.push((rep.steps, m));
    if rep.best.is_none_or(|(_, b)| m > b) {
        rep.best = Some((rep.steps, m));
        *bad_evals = 0;
        if cfg.restore_best {
            *best_vals = Some(
                vars.iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<Result<_, _>>()?,
            );
        }
        Ok(false)
    } else {
        *bad_evals += 1;
        Ok(cfg.patience.is_some_and(|p| *bad_evals >= p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Weighted least squares on a scalar: `ℓ_i = (θ − y_i)²`.
    fn fit(cfg: &TrainConfig, ys: &[f32], w: Option<&[f64]>) -> (f32, TrainReport) {
        let theta = Var::new(&[0f32], &Device::Cpu).unwrap();
        let t = theta.as_tensor().clone();
        let mut loss = |idx: &[usize], _train: bool| -> Result<Tensor, OpError> {
            let y: Vec<f32> = idx.iter().map(|&i| ys[i]).collect();
            let y = Tensor::new(y.as_slice(), &Device::Cpu)?;
            Ok(t.broadcast_sub(&y)?.sqr()?)
        };
        let rep = train(
            cfg,
            std::slice::from_ref(&theta),
            ys.len(),
            w,
            &mut loss,
            None,
        )
        .unwrap();
        (theta.as_tensor().to_vec1::<f32>().unwrap()[0], rep)
    }

    #[test]
    fn converges_to_the_weighted_mean_deterministically() {
        let cfg = TrainConfig {
            optimizer: OptimizerConfig::sgd(0.1),
            epochs: 60,
            batch_size: 2,
            grad_accum: 2,
            ..Default::default()
        };
        let ys = [1.0, 2.0, 3.0, 10.0];
        let (th, rep) = fit(&cfg, &ys, Some(&[1.0, 1.0, 1.0, 0.0]));
        assert!((th - 2.0).abs() < 1e-3, "{th}");
        assert_eq!(rep.steps, 60);
        let (th2, rep2) = fit(&cfg, &ys, Some(&[1.0, 1.0, 1.0, 0.0]));
        assert_eq!((th, &rep.losses), (th2, &rep2.losses));
    }

    #[test]
    fn early_stopping_restores_the_best() {
        let theta = Var::new(&[0f32], &Device::Cpu).unwrap();
        let t = theta.as_tensor().clone();
        let mut loss = |idx: &[usize], _: bool| -> Result<Tensor, OpError> {
            Ok((t
                .broadcast_sub(&Tensor::new(&[5f32], &Device::Cpu)?)?
                .sqr()?
                * idx.len() as f64)?
                .sum_all()?)
        };
        // metric peaks when θ ≈ 1, then gets worse as θ → 5
        let mut metric = || -> Result<f64, OpError> {
            Ok(-(theta.as_tensor().to_vec1::<f32>()?[0] as f64 - 1.0).abs())
        };
        let cfg = TrainConfig {
            optimizer: OptimizerConfig::sgd(0.05),
            epochs: 100,
            batch_size: 1,
            patience: Some(3),
            eval_every: Some(1),
            ..Default::default()
        };
        let rep = train(
            &cfg,
            std::slice::from_ref(&theta),
            1,
            None,
            &mut loss,
            Some(&mut metric),
        )
        .unwrap();
        assert!(rep.stopped_early && rep.steps < 20, "{rep:?}");
        let th = theta.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert_eq!(Some(rep.best.unwrap().1), Some(-(th as f64 - 1.0).abs()));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = TrainConfig::default();
        let v = Var::new(&[0f32], &Device::Cpu).unwrap();
        let mut loss = |_: &[usize], _: bool| -> Result<Tensor, OpError> {
            Ok(Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?)
        };
        let e = train(&cfg, std::slice::from_ref(&v), 2, None, &mut loss, None).unwrap_err();
        assert_eq!(e.code, "smelt::train::bad_loss");
        let e = train(
            &cfg,
            std::slice::from_ref(&v),
            2,
            Some(&[1.0]),
            &mut loss,
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, "smelt::train::bad_config");
        assert!(train(&cfg, &[], 0, None, &mut loss, None).is_err());
    }

    #[test]
    fn grouped_batches_never_mix_groups_and_cover_each_example_once() {
        let groups: Vec<usize> = (0..23).map(|i| i % 3).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let b = epoch_batches(&mut rng, 23, 4, Some(&groups));
        assert!(b
            .iter()
            .all(|x| x.len() <= 4 && x.iter().all(|&i| groups[i] == groups[x[0]])));
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        // 8, 8, 7 members → 2 + 2 + 2 batches
        assert_eq!(b.len(), 6);
        let again = epoch_batches(&mut ChaCha8Rng::seed_from_u64(5), 23, 4, Some(&groups));
        assert_eq!(b, again);
    }
}
