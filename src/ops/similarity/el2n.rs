//! `similarity el2n(deltas, tasks, examples=50)`: paper 2's EL2N score (methods.md §2.5).
//!
//! `s_ij = Σ_examples ‖softmax(z) − onehot(y)‖₂` with `z` the class scores of model + δ_j (eval
//! mode) on the first `examples` (default 50) of target `i`'s dev split — a sum, as the paper
//! codes it, so it grows with `examples`. Lower = more similar: `sign=negative`, τ = 0.1.

use super::{class_probs, data_meta, matrix_value, p_sign, p_temperature, Pairs};
use super::{FORMAT_PARAMS, P_DELTAS, P_EXAMPLES, P_SPLIT, P_TASKS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct SimilarityEl2n;

static SIG: Signature = Signature {
    id: "similarity.el2n",
    version: 1,
    summary: "EL2N of each source delta on each target's first dev examples: a target × source Matrix.",
    doc: "s_ij = Σ over the first `examples` of target i's `split` of ‖softmax(z) − onehot(y)‖₂, z the \
          class scores of model + δ_j (eval mode). Diagonal NaN. Lower is more similar: recorded \
          `sign=negative`, τ = 0.1 (the paper's history tried 10).",
    params: &[
        P_DELTAS, P_TASKS, P_SPLIT, P_EXAMPLES, p_sign("negative"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3], FORMAT_PARAMS[4],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity el2n(ds, ts)"],
    reference: Some("Lv et al. 2023 (paper 2); Paul et al. 2021, EL2N"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

/// `Σ_e ‖p_e − onehot(y_e)‖₂`.
pub fn el2n(probs: &[Vec<f64>], gold: &[u32]) -> f64 {
    probs
        .iter()
        .zip(gold)
        .map(|(p, &y)| {
            p.iter()
                .enumerate()
                .map(|(c, &q)| {
                    let d = q - if c == y as usize { 1.0 } else { 0.0 };
                    d * d
                })
                .sum::<f64>()
                .sqrt()
        })
        .sum()
}

impl Operator for SimilarityEl2n {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let values = pairs.each(cx, &mut |run, i, _| {
            let (p, y) = class_probs(run, &pairs.tasks[i], args)?;
            Ok(el2n(&p, &y))
        })?;
        let meta = data_meta(args, "Σ_examples ‖softmax(z_j) − onehot(y)‖₂")?;
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;

    #[test]
    fn closed_forms() {
        // A perfect prediction has EL2N 0; a uniform one over C classes √(1 − 1/C).
        assert_eq!(el2n(&[vec![0.0, 1.0]], &[1]), 0.0);
        let u = el2n(&[vec![0.25; 4], vec![0.25; 4]], &[0, 3]);
        assert!((u - 2.0 * (0.75f64.powi(2) + 3.0 * 0.0625).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn sums_over_the_first_examples_against_evaluate_scores() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("split", Value::str("dev")),
                ("examples", Value::Int(50)),
                ("sign", Value::str("negative")),
                ("temperature", Value::Float(10.0)),
            ],
        );
        let out = SimilarityEl2n
            .run(&mut OpCtx::for_test(t.path().join("s"), 0), &a)
            .unwrap();
        let m = matrix(&out);
        check_layout(&m, "negative");
        assert_eq!(m.meta["temperature"], serde_json::json!(10.0));
        for (i, target) in tasks.iter().enumerate() {
            for j in (0..3).filter(|&j| j != i) {
                let (z, y) = dev_logits(&deltas[j], target, 50);
                let mut want = 0.0;
                for (z, &y) in z.iter().zip(&y) {
                    let p = softmax(z);
                    let mut s = 0.0;
                    for (c, q) in p.iter().enumerate() {
                        let o = if c == y as usize { 1.0 } else { 0.0 };
                        s += (q - o) * (q - o);
                    }
                    want += s.sqrt();
                }
                assert!(
                    (m.get(i, j) - want).abs() < 1e-4,
                    "({i},{j}) {} vs {want}",
                    m.get(i, j)
                );
            }
        }
    }
}
