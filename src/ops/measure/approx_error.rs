//! `measure approx_error(model, gradients, scales=[…], seed)`: how well the first-order
//! expansion `f(θ0 + Δ) ≈ f(θ0) + gᵀΔ` predicts the real network at growing distances from the
//! adapter's initialisation (methods.md §1.13).
//!
//! 1. Direction: a seeded `fraction` (75%) of the tasks; of their examples a seeded 80% fit the
//!    L2 logistic surrogate (free offset, `λ = 1/C`, C = 1e-4 as the paper's liblinear call) →
//!    `w`, `Δ_dir = P w`.
//! 2. `Δ = scale · ‖θ0‖ · Δ_dir / ‖Δ_dir‖` (‖θ0‖ over every LoRA factor of the adapter).
//! 3. First-order prediction `f0_i + ĝ_iᵀΔ` with `ĝ = g̃ · pinv(P)`. Because `Δ` lies in the range
//!    of `P`, `pinv(P)·Δ = (scale·‖θ0‖/‖P w‖) · w` exactly, so `ĝᵀΔ = (scale·‖θ0‖/‖Pw‖) · g̃ᵀw`
//!    (no pseudo-inverse is formed; with `dim=none`, `P = I` and this is `gᵀΔ`).
//! 4. Truth: the real network at `θ0 + Δ` (`f` on the same examples, eval mode).
//! 5. `error = mean_i (|f0_i + ĝ_iᵀΔ − fΔ_i| / max(|fΔ_i|, |f0_i|))²`; the baseline drops the
//!    gradient term: `mean_i (|f0_i − fΔ_i| / max(|fΔ_i|, |f0_i|))²`.
//!
//! Result: a Table (scale, distance ‖Δ‖/‖θ0‖, error, baseline_error, n) over the examples of
//! every task of the gradient set.

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::affinity::first_order::recorded_artifact;
use crate::ops::affinity::surrogate::{fit, Variant};
use crate::ops::estimate::log_odds::AdapterProbe;
use crate::ops::evaluate::{table_value, P_EBATCH};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::gradients::GradientSet;
use crate::train::feed::{Feed, FormatSpec};
use crate::types::Ty;
use crate::value::{Kind, Value};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;

const CODE: &str = "smelt::run::approx_error";

pub struct ApproxError;

static SIG: Signature = Signature {
    id: "measure.approx_error",
    version: 1,
    summary: "Relative squared error of the first-order prediction f0 + gᵀΔ against the real network at θ0 + Δ, per relative distance.",
    doc: "Direction Δ_dir = P w from an L2 logistic fit (free offset, λ = 1/C, C = 1e-4) on a \
          seeded 80% of the examples of a seeded `fraction` of the tasks; Δ = scale·‖θ0‖·Δ_dir/‖Δ_dir‖ \
          (θ0: every LoRA factor of the gradient set's adapter). Prediction f0 + ĝᵀΔ with \
          ĝ = g̃·pinv(P) (exact for Δ in the range of P); truth f(θ0 + Δ) from the real network \
          on the same examples. error = mean (|f0 + ĝᵀΔ − fΔ| / max(|fΔ|, |f0|))²; baseline_error \
          drops the gradient term. One row per scale (methods.md §1.13).",
    params: &[
        Param::req("model", Ty::Model, "The base model (must be the gradient set's)."),
        Param::req("gradients", Ty::Gradients, "Per-example gradients at θ0 (`estimate gradients`)."),
        Param::opt("scales", Ty::List(&Ty::Float), Const::None, "Relative distances ‖Δ‖/‖θ0‖ (default [0.001, 0.01, 0.1])."),
        Param::opt("fraction", Ty::Float, Const::Float(0.75), "Fraction of the tasks whose examples fit the direction.").range(0.0, 1.0),
        Param::opt("lambda", Ty::Float, Const::Float(1e4), "Regularisation λ = 1/C of the direction's fit.").range(1e-12, 1e12),
        Param::opt("seed", Ty::Int, Const::Int(0), "Extra seed for the task and example draws."),
        P_EBATCH,
    ],
    returns: Ty::Table,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet a0 = train lora(lm, ts, max_steps=0, head=prompt)\nlet g = estimate gradients(lm, ts, adapter=a0, examples=32)\nreport measure approx_error(lm, g, scales=[0.001, 0.01, 0.1])"],
    reference: Some("methods.md §1.13 (EnsembleLoRA `fast_estimate_eval_approximation.py`); Li et al., ACL 2025"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// `(error, baseline)` of §1.13 step 5 over examples with outputs `f0`, predictions `pred`
/// and truths `ft`.
pub fn errors(f0: &[f64], pred: &[f64], ft: &[f64]) -> (f64, f64) {
    let n = f0.len().max(1) as f64;
    let (mut e, mut b) = (0.0, 0.0);
    for ((&a, &p), &t) in f0.iter().zip(pred).zip(ft) {
        let den = t.abs().max(a.abs()).max(f64::MIN_POSITIVE);
        e += ((p - t).abs() / den).powi(2);
        b += ((a - t).abs() / den).powi(2);
    }
    (e / n, b / n)
}

/// The examples of a task of the set, in the set's order, encoded in its recorded format.
fn feed_of(
    ap: &AdapterProbe,
    set: &GradientSet,
    t: usize,
) -> Result<(Feed, FormatSpec, TaskData), OpError> {
    let tg = &set.tasks[t];
    let task = TaskData::from_artifact(&recorded_artifact(Kind::Task, &tg.task)?)?;
    let split = set.meta["split"].as_str().unwrap_or("train");
    let by_id: BTreeMap<String, _> = task
        .split(split)
        .iter()
        .map(|e| (e.id.to_string(), e.clone()))
        .collect();
    let examples = tg
        .ids
        .iter()
        .map(|id| by_id.get(id).cloned())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            OpError::new(
                CODE,
                format!("task `{}` lost examples of the gradient set", tg.name),
            )
        })?;
    let spec: FormatSpec = serde_json::from_value(tg.format.clone())
        .map_err(|_| OpError::new(CODE, format!("task `{}`: no recorded format", tg.name)))?;
    let feed = Feed::new(&ap.run.lm, &spec, &task, &examples)?;
    Ok((feed, spec, task))
}

impl Operator for ApproxError {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let set = GradientSet::read(&args.artifact("gradients", Kind::Gradients)?.dir)?;
        let recorded = set.model["dir"].as_str().unwrap_or_default();
        if std::path::Path::new(recorded).canonicalize().ok() != model.dir.canonicalize().ok() {
            return Err(OpError::new(
                CODE,
                format!("the gradients were taken on {recorded}, not on `model`"),
            )
            .with_help("pass the base model the gradient set records"));
        }
        let scales = match args.get("scales")? {
            Value::None => vec![1e-3, 1e-2, 1e-1],
            _ => args.floats("scales")?,
        };
        let batch = args.int("batch")?.max(1) as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            cx.seed ^ (args.int("seed")? as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // 1. The direction, from a fraction of the tasks and 80% of their examples.
        let n = set.tasks.len();
        let k = ((args.float("fraction")? * n as f64) as usize).clamp(1, n.max(1));
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
        let d = set.dim();
        let (mut x, mut f) = (Vec::new(), Vec::new());
        for &t in &order[..k] {
            let tg = &set.tasks[t];
            for i in 0..tg.len() {
                if rng.random::<f64>() < 0.8 {
                    x.extend_from_slice(&tg.features[i * d..(i + 1) * d]);
                    f.push(tg.f0[i]);
                }
            }
        }
        if f.is_empty() {
            return Err(OpError::new(
                CODE,
                "no example was drawn to fit the direction",
            ));
        }
        let w = fit(&x, &f, d, args.float("lambda")?, Variant::FreeOffset)?.w;
        let dir = set.delta(&w)?;
        let dir_norm = dir.values().flatten().map(|v| v * v).sum::<f64>().sqrt();
        if dir_norm == 0.0 {
            return Err(OpError::new(CODE, "the fitted direction is zero")
                .with_help("lower lambda, or check that the gradients are not all zero"));
        }
        // 2.–5. Per scale: prediction, truth, errors.
        let adapter = recorded_artifact(Kind::Adapter, &set.adapter)?;
        let ap = AdapterProbe::load(&adapter, &cx.device)?;
        let theta0 = ap.values_of_params()?;
        let theta_norm = theta0
            .values()
            .map(|t| {
                Ok(t.to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?)
            })
            .sum::<Result<f64, OpError>>()?
            .sqrt();
        let feeds = (0..n)
            .map(|t| feed_of(&ap, &set, t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = Vec::new();
        for &scale in &scales {
            let c = scale * theta_norm / dir_norm;
            let mut values = BTreeMap::new();
            for p in &set.params {
                let t0 = &theta0[&p.name];
                let delta: Vec<f32> = dir[&p.name].iter().map(|&v| (v * c) as f32).collect();
                let dt = Tensor::from_vec(delta, p.shape.as_slice(), t0.device())?;
                values.insert(p.name.clone(), t0.add(&dt)?);
            }
            ap.set_params(&values)?;
            let (mut f0, mut pred, mut ft) = (Vec::new(), Vec::new(), Vec::new());
            for (t, (feed, spec, task)) in feeds.iter().enumerate() {
                let gold = ap.gold(spec, task)?;
                let head = ap.run.head(&task.name)?.filter(|_| feed.needs_head());
                ft.extend(ap.values(feed, &gold, head.as_ref(), batch)?);
                let tg = &set.tasks[t];
                for i in 0..tg.len() {
                    let gw: f64 = tg.features[i * d..(i + 1) * d]
                        .iter()
                        .zip(&w)
                        .map(|(&a, &b)| a as f64 * b)
                        .sum();
                    pred.push(tg.f0[i] + c * gw);
                    f0.push(tg.f0[i]);
                }
            }
            let (e, b) = errors(&f0, &pred, &ft);
            rows.push(vec![
                json!(scale),
                json!(c * dir_norm / theta_norm),
                json!(e),
                json!(b),
                json!(f0.len()),
            ]);
        }
        ap.set_params(&theta0)?;
        let cols = ["scale", "distance", "error", "baseline_error", "n"];
        table_value(cx, cols.iter().map(|s| s.to_string()).collect(), rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_follow_the_written_formula() {
        let (e, b) = errors(&[1.0, -2.0], &[1.5, -2.0], &[2.0, -4.0]);
        // example 1: |1.5−2|/2 = 0.25, |1−2|/2 = 0.5; example 2: |−2+4|/4 = 0.5 for both.
        assert!((e - (0.0625 + 0.25) / 2.0).abs() < 1e-15);
        assert!((b - (0.25 + 0.25) / 2.0).abs() < 1e-15);
        assert_eq!(errors(&[3.0], &[3.0], &[3.0]), (0.0, 0.0));
    }
}
