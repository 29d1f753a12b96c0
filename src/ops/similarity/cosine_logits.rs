//! `similarity cosine_logits(deltas, tasks)`: paper 2's "Cosine of logits and labels"
//! (methods.md §2.5).
//!
//! `s_ij = Σ_examples cos(softmax(z), onehot(y)) = Σ p_y / ‖p‖₂` with `z` the class scores of
//! model + δ_j (eval mode) on **every** example of target `i`'s dev split (`examples=none`).
//! A similarity: higher = more similar, so the direction is `sign=positive` (τ = 0.1). The
//! released code negates it (a bug, §2.9); `sign=negative` reproduces that explicitly.

use super::{class_probs, data_meta, matrix_value, p_sign, p_temperature, Pairs};
use super::{FORMAT_PARAMS, P_ALL_EXAMPLES, P_DELTAS, P_SPLIT, P_TASKS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct SimilarityCosineLogits;

static SIG: Signature = Signature {
    id: "similarity.cosine_logits",
    version: 1,
    summary: "Cosine between each source's class probabilities and the one-hot labels, summed over a target's dev data.",
    doc: "s_ij = Σ over target i's `split` (all examples unless `examples` is given) of \
          cos(softmax(z), onehot(y)) = p_y/‖p‖₂, z the class scores of model + δ_j (eval mode). \
          Diagonal NaN. Higher is more similar: recorded `sign=positive`, τ = 0.1. The paper's \
          released code negates this score (a bug); `sign=negative` reproduces it on purpose.",
    params: &[
        P_DELTAS, P_TASKS, P_SPLIT, P_ALL_EXAMPLES, p_sign("positive"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3], FORMAT_PARAMS[4],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity cosine_logits(ds, ts)\nlet as_released = similarity cosine_logits(ds, ts, sign=negative)"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

/// `Σ_e p_e[y_e] / ‖p_e‖₂`.
pub fn cosine_to_labels(probs: &[Vec<f64>], gold: &[u32]) -> f64 {
    probs
        .iter()
        .zip(gold)
        .map(|(p, &y)| p[y as usize] / p.iter().map(|q| q * q).sum::<f64>().sqrt())
        .sum()
}

impl Operator for SimilarityCosineLogits {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let values = pairs.each(cx, &mut |run, i, _| {
            let (p, y) = class_probs(run, &pairs.tasks[i], args)?;
            Ok(cosine_to_labels(&p, &y))
        })?;
        let meta = data_meta(args, "Σ_examples cos(softmax(z_j), onehot(y)) = Σ p_y/‖p‖₂")?;
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;

    #[test]
    fn closed_forms() {
        // One-hot on the gold label: cosine 1; on another label: 0; uniform over C: 1/√C.
        assert_eq!(cosine_to_labels(&[vec![0.0, 1.0]], &[1]), 1.0);
        assert_eq!(cosine_to_labels(&[vec![0.0, 1.0]], &[0]), 0.0);
        let u = cosine_to_labels(&[vec![0.25; 4]], &[2]);
        assert!((u - 0.5).abs() < 1e-15);
    }

    #[test]
    fn sums_over_all_dev_examples_with_a_positive_direction() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("split", Value::str("dev")),
                ("examples", Value::None),
                ("sign", Value::str("positive")),
                ("temperature", Value::Float(0.1)),
            ],
        );
        let out = SimilarityCosineLogits
            .run(&mut OpCtx::for_test(t.path().join("s"), 0), &a)
            .unwrap();
        let m = matrix(&out);
        check_layout(&m, "positive");
        assert_eq!(m.meta["examples"], serde_json::json!("all"));
        for (i, target) in tasks.iter().enumerate() {
            for j in (0..3).filter(|&j| j != i) {
                let (z, y) = dev_logits(&deltas[j], target, usize::MAX);
                assert_eq!(y.len(), 60, "every dev example");
                let want: f64 = z
                    .iter()
                    .zip(&y)
                    .map(|(z, &y)| {
                        let p = softmax(z);
                        p[y as usize] / p.iter().map(|q| q * q).sum::<f64>().sqrt()
                    })
                    .sum();
                assert!(
                    (m.get(i, j) - want).abs() < 1e-4,
                    "({i},{j}) {} vs {want}",
                    m.get(i, j)
                );
            }
        }
    }
}
