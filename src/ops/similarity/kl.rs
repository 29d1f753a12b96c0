//! `similarity kl(deltas, tasks, tuned, examples=50)`: paper 2's KL-divergence score
//! (methods.md §2.5).
//!
//! `s_ij = Σ_examples KL(P_i ‖ Q_j) = Σ_e Σ_c p_c (ln p_c − ln q_c)`, where `P_i` is the class
//! distribution of the *target's own* delta tuned from random init on its few-shot data
//! (`tuned[i]`, paper 2's "64_tune" checkpoint) and `Q_j` that of model + source δ_j, both in
//! eval mode on the first `examples` (default 50) of target `i`'s dev split. Classes where
//! either probability is exactly 0 are dropped, as the paper does. Lower = more similar:
//! `sign=negative`, τ = 0.1.

use super::{class_probs, data_meta, matrix_value, p_sign, p_temperature, tuned_args, Pairs};
use super::{FORMAT_PARAMS, P_DELTAS, P_EXAMPLES, P_SPLIT, P_TASKS, P_TUNED};
use crate::diag::OpError;
use crate::ops::train::runnable::Runnable;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct SimilarityKl;

static SIG: Signature = Signature {
    id: "similarity.kl",
    version: 1,
    summary: "KL divergence from each target's own tuned model to each source delta, on the target's first dev examples.",
    doc: "s_ij = Σ over the first `examples` of target i's `split` of KL(P_i ‖ Q_j) over the task's \
          classes; P_i from `tuned[i]` (the target's delta tuned from random init on its few-shot \
          data), Q_j from model + δ_j, both eval mode; classes with a probability of exactly 0 in \
          either are dropped. Diagonal NaN. Lower is more similar: recorded `sign=negative`, τ = 0.1 \
          (the paper's history tried 10).",
    params: &[
        P_DELTAS, P_TASKS, P_TUNED, P_SPLIT, P_EXAMPLES, p_sign("negative"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3], FORMAT_PARAMS[4],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet few = [train lora(lm, data kshot(t, k=8), head=prompt) for t in ts]\nlet s = similarity kl(ds, ts, few)"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks"), ("tasks", "tuned")],
    cheap: false,
};

/// `Σ_e Σ_c p_c (ln p_c − ln q_c)` over the classes where both probabilities are non-zero.
pub fn kl_sum(p: &[Vec<f64>], q: &[Vec<f64>]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(p, q)| {
            p.iter()
                .zip(q)
                .filter(|(a, b)| **a != 0.0 && **b != 0.0)
                .map(|(a, b)| a * (a.ln() - b.ln()))
                .sum::<f64>()
        })
        .sum()
}

impl Operator for SimilarityKl {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let tuned = tuned_args(args, pairs.n())?;
        let mut p = Vec::with_capacity(pairs.n());
        for (i, t) in tuned.iter().enumerate() {
            let run = Runnable::load(t, &cx.device)?;
            let task = &pairs.tasks[i];
            let (probs, _) = class_probs(&run, task, args).map_err(|e| {
                e.context(format!("scoring the tuned target model of {}", task.name))
            })?;
            p.push(probs);
        }
        let values = pairs.each(cx, &mut |run, i, _| {
            let (q, _) = class_probs(run, &pairs.tasks[i], args)?;
            Ok(kl_sum(&p[i], &q))
        })?;
        let meta = data_meta(
            args,
            "Σ_examples KL(P_tuned_i ‖ Q_j), zero-probability classes dropped",
        )?;
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;

    #[test]
    fn closed_forms() {
        let p = vec![vec![0.5, 0.5]];
        assert_eq!(kl_sum(&p, &p), 0.0);
        let q = vec![vec![0.25, 0.75]];
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl_sum(&p, &q) - want).abs() < 1e-15);
        // A class with zero probability on either side is dropped.
        assert_eq!(
            kl_sum(&[vec![0.0, 1.0]], &[vec![0.5, 0.5]]),
            0.5f64.ln().abs()
        );
        assert_eq!(
            kl_sum(&[vec![0.5, 0.5]], &[vec![0.0, 1.0]]),
            0.5 * 0.5f64.ln()
        );
    }

    #[test]
    fn kl_from_the_tuned_target_against_evaluate_scores() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let tuned: Vec<Value> = (0..3)
            .map(|i| lora(&t.path().join(format!("tuned{i}")), 40 + i as u64, 0.05))
            .collect();
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("tuned", Value::list(tuned.clone())),
                ("split", Value::str("dev")),
                ("examples", Value::Int(30)),
                ("sign", Value::str("negative")),
                ("temperature", Value::Float(0.1)),
            ],
        );
        let out = SimilarityKl
            .run(&mut OpCtx::for_test(t.path().join("s"), 0), &a)
            .unwrap();
        let m = matrix(&out);
        check_layout(&m, "negative");
        for i in 0..3 {
            let (zp, _) = dev_logits(&tuned[i], &tasks[i], 30);
            for j in (0..3).filter(|&j| j != i) {
                let (zq, _) = dev_logits(&deltas[j], &tasks[i], 30);
                let mut want = 0.0;
                for (a, b) in zp.iter().zip(&zq) {
                    let (p, q) = (softmax(a), softmax(b));
                    for c in 0..p.len() {
                        want += p[c] * (p[c] / q[c]).ln();
                    }
                }
                assert!(m.get(i, j) > 0.0);
                assert!(
                    (m.get(i, j) - want).abs() < 1e-5,
                    "({i},{j}) {} vs {want}",
                    m.get(i, j)
                );
            }
        }
    }
}
