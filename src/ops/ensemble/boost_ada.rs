//! `ensemble boost_ada(ensemble, tasks, rounds, update=standard|as_coded, samme=false, …)`:
//! AdaBoost over adapters (methods.md §1.12, `--train_adaboosting`).
//!
//! Example weights start at `w_i = 1` over the tasks' training examples. Each round:
//! 1. predict the training data with the current ensemble (argmax of the combined scores);
//! 2. `ε = Σ_{i wrong} w_i / Σ_i w_i` and `α = log((1 − ε)/ε)` — as the paper's code, no ½
//!    and no `log(K − 1)`; `samme=true` adds `log(K − 1)` (multi-class SAMME, K = classes);
//! 3. misclassified examples get `w_i ← w_i·exp(α)` (standard AdaBoost; `update=as_coded`
//!    reproduces the code's `w_i ← exp(α·w_i)`), then the weights are rescaled to `Σ w = N`;
//! 4. a new adapter is trained with the per-example weighted loss `Σ_i w_i ℓ_i / B` per batch
//!    (the code's `Σ w_i·CE / #tokens`; with `Σ w = N` the weights average 1);
//! 5. it joins the ensemble with weight `α` in every task's weight vector.
//!
//! `ε = 0` (nothing misclassified) or `ε = 1` leaves `α` infinite: boosting stops there and
//! the history says so. A negative `α` (ε > ½) is kept, as the paper's code does.

use super::fit::{fit_member, Objective};
use super::{
    round_out, Boost, P_BBATCH, P_BEPOCHS, P_BMAX_LEN, P_BSEED, P_BTASKS, P_ENSEMBLE, P_EVAL_BATCH,
    P_ROUNDS,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::train::feed::argmax;
use crate::types::Ty;
use crate::value::Value;
use serde_json::json;

pub struct BoostAda;

pub const UPDATES: &[&str] = &["standard", "as_coded"];

static SIG: Signature = Signature {
    id: "ensemble.boost_ada",
    version: 1,
    summary: "AdaBoost over adapters: reweight misclassified examples, train a new adapter, add it with weight α.",
    doc: "ε = Σ_wrong w / Σ w under the current ensemble's predictions, α = log((1−ε)/ε) \
          (+ log(K−1) with samme=true), misclassified w ← w·exp(α) (update=as_coded: the paper \
          code's exp(α·w)), weights rescaled to sum to N; the new adapter (same kind and \
          configuration as the first member, fresh initialisation, the same one every round) is \
          trained with the per-example weighted loss and appended with weight α to every task's \
          weight vector. Stops early when ε is 0 or 1. The result's history lists ε, α and the \
          training error of every round.",
    params: &[
        P_ENSEMBLE, P_BTASKS, P_ROUNDS,
        Param::opt("update", Ty::Enum(UPDATES), Const::Str("standard"), "`standard`: w·exp(α) for misclassified examples; `as_coded`: exp(α·w), as the paper's code."),
        Param::opt("samme", Ty::Bool, Const::Bool(false), "Add log(K−1) to α (multi-class SAMME; K = number of classes of the task)."),
        Param::opt("lr", Ty::Float, Const::Float(1e-3), "AdamW learning rate of each new adapter.").range(0.0, 10.0),
        P_BEPOCHS, P_BBATCH, P_BMAX_LEN, P_EVAL_BATCH, P_BSEED,
    ],
    returns: Ty::Ensemble,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet e = ensemble weighted([train lora(lm, t, head=prompt)])\nlet b = ensemble boost_ada(e, t, rounds=2)\nreport evaluate(b, t)"],
    reference: Some("Li et al. (ACL 2025) §1.12; Freund & Schapire 1997; Zhu et al. 2009 (SAMME)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// How misclassified examples are reweighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    Standard,
    AsCoded,
}

/// One AdaBoost step.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaStep {
    pub eps: f64,
    pub alpha: f64,
    /// The updated weights, rescaled to sum to N.
    pub weights: Vec<f64>,
}

/// ε, α and the reweighting from the current weights and which examples are wrong; `None`
/// when ε is 0 or 1 (α would be infinite). `classes` only matters with `samme`.
pub fn ada_step(
    w: &[f64],
    wrong: &[bool],
    classes: usize,
    update: Update,
    samme: bool,
) -> Option<AdaStep> {
    let total: f64 = w.iter().sum();
    let bad: f64 = w
        .iter()
        .zip(wrong)
        .filter(|(_, &x)| x)
        .map(|(w, _)| w)
        .sum();
    let eps = bad / total;
    if !(eps > 0.0 && eps < 1.0) {
        return None;
    }
    let mut alpha = ((1.0 - eps) / eps).ln();
    if samme && classes > 2 {
        alpha += ((classes - 1) as f64).ln();
    }
    let mut next: Vec<f64> = w
        .iter()
        .zip(wrong)
        .map(|(&wi, &x)| match (x, update) {
            (false, _) => wi,
            (true, Update::Standard) => wi * alpha.exp(),
            (true, Update::AsCoded) => (alpha * wi).exp(),
        })
        .collect();
    let s: f64 = next.iter().sum();
    let n = w.len() as f64;
    for x in &mut next {
        *x *= n / s;
    }
    Some(AdaStep {
        eps,
        alpha,
        weights: next,
    })
}

impl Operator for BoostAda {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let mut b = Boost::of(cx, args)?;
        let update = match args.str("update")? {
            "as_coded" => Update::AsCoded,
            _ => Update::Standard,
        };
        let samme = args.bool("samme")?;
        let classes = b.tasks.iter().map(|t| t.labels.len()).max().unwrap_or(2);
        let n: usize = b.tasks.iter().map(|t| t.train().len()).sum();
        let mut w = vec![1.0; n];
        for round in 0..b.rounds {
            let (logits, gold) = b.predict(cx)?;
            let wrong: Vec<bool> = argmax(&logits)
                .iter()
                .zip(&gold)
                .map(|(p, y)| p != y)
                .collect();
            let error = wrong.iter().filter(|&&x| x).count() as f64 / n.max(1) as f64;
            let Some(step) = ada_step(&w, &wrong, classes, update, samme) else {
                b.ensemble.history.push(json!({
                    "round": round, "method": "boost_ada", "train_error": error,
                    "stopped": "the weighted training error is 0 or 1, so α is infinite",
                }));
                break;
            };
            w = step.weights;
            let (out, key) = round_out(cx, round);
            let member = fit_member(
                &b.ensemble,
                &b.tasks,
                &Objective::WeightedCe(w.clone()),
                &b.fit_params(args, round)?,
                &cx.device,
                &out,
                key,
                &format!("ada{round}"),
            )
            .map_err(|e| e.context(format!("boosting round {round}")))?;
            b.ensemble.push(member, step.alpha)?;
            b.ensemble.history.push(json!({
                "round": round, "method": "boost_ada", "update": args.str("update")?,
                "eps": step.eps, "alpha": step.alpha, "train_error": error,
            }));
        }
        b.ensemble.value(&cx.out_dir, cx.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaboost_step_matches_a_hand_computation() {
        // 5 examples, weights (1, 1, 2, 0.5, 0.5), examples 1 and 3 wrong
        let w = [1.0, 1.0, 2.0, 0.5, 0.5];
        let wrong = [false, true, false, true, false];
        let s = ada_step(&w, &wrong, 2, Update::Standard, false).unwrap();
        let eps = 1.5 / 5.0;
        let alpha = (0.7f64 / 0.3).ln();
        assert!((s.eps - eps).abs() < 1e-15 && (s.alpha - alpha).abs() < 1e-15);
        // wrong ones × (1−ε)/ε = 7/3, then rescaled to Σ = 5
        let raw = [1.0, 7.0 / 3.0, 2.0, 0.5 * 7.0 / 3.0, 0.5];
        let sum: f64 = raw.iter().sum();
        for (got, r) in s.weights.iter().zip(raw) {
            assert!(
                (got - r * 5.0 / sum).abs() < 1e-12,
                "{got} vs {}",
                r * 5.0 / sum
            );
        }
        assert!((s.weights.iter().sum::<f64>() - 5.0).abs() < 1e-12);
        // the code's update: exp(α·w) for wrong ones
        let c = ada_step(&w, &wrong, 2, Update::AsCoded, false).unwrap();
        let raw = [1.0, alpha.exp(), 2.0, (alpha * 0.5).exp(), 0.5];
        let sum: f64 = raw.iter().sum();
        for (got, r) in c.weights.iter().zip(raw) {
            assert!((got - r * 5.0 / sum).abs() < 1e-12);
        }
        // SAMME adds log(K − 1); binary tasks are unchanged
        let k4 = ada_step(&w, &wrong, 4, Update::Standard, true).unwrap();
        assert!((k4.alpha - (alpha + 3f64.ln())).abs() < 1e-12);
        assert_eq!(
            ada_step(&w, &wrong, 2, Update::Standard, true)
                .unwrap()
                .alpha,
            s.alpha
        );
        // ε > ½ gives a negative α, kept as in the paper's code
        let many = ada_step(
            &[1.0; 4],
            &[true, true, true, false],
            2,
            Update::Standard,
            false,
        )
        .unwrap();
        assert!((many.alpha - (0.25f64 / 0.75).ln()).abs() < 1e-12 && many.alpha < 0.0);
        // nothing or everything wrong: α infinite, no step
        assert!(ada_step(&w, &[false; 5], 2, Update::Standard, false).is_none());
        assert!(ada_step(&w, &[true; 5], 2, Update::Standard, false).is_none());
    }
}
