//! `ensemble boost_gradient(ensemble, tasks, rounds, weight=0.2, lr=5e-4, …)`: gradient
//! boosting over adapters by residual fitting (methods.md §1.12, `--train_gradient_boosting`).
//!
//! Each round:
//! 1. predict the training data with the current ensemble; the residual of example i is
//!    `r_i = 1 − p_i`, `p_i` the softmax probability of the gold class under the combined class
//!    scores `z = Σ_m w_m z_m` — the negative gradient of the cross-entropy w.r.t. the gold score;
//! 2. train a new adapter (fresh initialisation, the same one every round, the first member's
//!    kind and configuration) minimising `mean_i (z_{i,y_i} − r_i)²` on its raw gold-class score,
//!    AdamW at `lr` (the paper's code forces 5e-4) for `epochs`;
//! 3. append it with weight `weight` (the code's `gradient_boosting_lr`, 0.2) to every task's
//!    vector, so `z ← z + 0.2·z_new`.
//!
//! The class space: `p_i` is the softmax over the task's classes — the head's classes, the
//! label words at the mask, or the first tokens of a decoder's answer choices — i.e. over the
//! scores the ensemble combines and predicts from. The paper's code takes the decoder's
//! full-vocabulary softmax; for classification heads the two are the same thing.
//! The ridge fit on projected gradients (`--fit_linear_regression`) is not offered: it needs
//! the projected per-example gradients (`estimate gradients`) and their back-projection.

use super::combine::gold_probs;
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

pub struct BoostGradient;

static SIG: Signature = Signature {
    id: "ensemble.boost_gradient",
    version: 1,
    summary: "Gradient boosting over adapters: fit a new adapter's gold score to the residual 1 − p, add it with weight 0.2.",
    doc: "Residuals r_i = 1 − p_i, p_i = softmax probability of the gold class under the ensemble's \
          combined class scores on the train split (tasks concatenated in order). The new adapter \
          (same kind and configuration as the first member, fresh initialisation, the same one \
          every round) minimises mean (z_gold − r)² of its raw gold-class score with AdamW at `lr` \
          (the paper forces 5e-4), and is appended with `weight` to every task's weight vector. \
          The result's history lists the mean residual and the training error of every round.",
    params: &[
        P_ENSEMBLE, P_BTASKS, P_ROUNDS,
        Param::opt("weight", Ty::Float, Const::Float(0.2), "Weight of every new adapter (the boosting learning rate).").range(-1e6, 1e6),
        Param::opt("lr", Ty::Float, Const::Float(5e-4), "AdamW learning rate of each new adapter.").range(0.0, 10.0),
        P_BEPOCHS, P_BBATCH, P_BMAX_LEN, P_EVAL_BATCH, P_BSEED,
    ],
    returns: Ty::Ensemble,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet e = ensemble weighted([train lora(lm, t, head=prompt)], weights=[1.0])\nlet g = ensemble boost_gradient(e, t, rounds=2, epochs=3)\nreport evaluate([e, g], t)"],
    reference: Some("Li et al. (ACL 2025) §1.12; Friedman 2001, gradient boosting"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// `r_i = 1 − p_i` of combined class scores.
pub fn residuals(logits: &[Vec<f32>], gold: &[u32]) -> Vec<f64> {
    gold_probs(logits, gold)
        .into_iter()
        .map(|p| 1.0 - p)
        .collect()
}

impl Operator for BoostGradient {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let mut b = Boost::of(cx, args)?;
        let weight = args.float("weight")?;
        for round in 0..b.rounds {
            let (logits, gold) = b.predict(cx)?;
            let r = residuals(&logits, &gold);
            let n = gold.len().max(1) as f64;
            let error = argmax(&logits)
                .iter()
                .zip(&gold)
                .filter(|(p, y)| p != y)
                .count() as f64
                / n;
            let (out, key) = round_out(cx, round);
            let member = fit_member(
                &b.ensemble,
                &b.tasks,
                &Objective::GoldMse(r.clone()),
                &b.fit_params(args, round)?,
                &cx.device,
                &out,
                key,
                &format!("gb{round}"),
            )
            .map_err(|e| e.context(format!("boosting round {round}")))?;
            b.ensemble.push(member, weight)?;
            b.ensemble.history.push(json!({
                "round": round, "method": "boost_gradient", "fit": "sgd", "weight": weight,
                "mean_residual": r.iter().sum::<f64>() / n, "train_error": error,
            }));
        }
        b.ensemble.value(&cx.out_dir, cx.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residuals_are_one_minus_the_gold_softmax() {
        let z = vec![
            vec![1.0f32, 2.0, 0.5],
            vec![0.0, 0.0, 0.0],
            vec![30.0, -30.0, 0.0],
        ];
        let r = residuals(&z, &[1, 2, 0]);
        let e: f64 = [1.0f64, 2.0, 0.5].iter().map(|x| x.exp()).sum();
        assert!((r[0] - (1.0 - 2f64.exp() / e)).abs() < 1e-7);
        assert!((r[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!(r[2] >= 0.0 && r[2] < 1e-12);
    }
}
