//! `similarity loss(deltas, tasks, examples=50)`: paper 2's Loss score (methods.md §2.5).
//!
//! `s_ij` = the mean training loss of the base model with source delta `j`, in eval mode, on
//! the first `examples` (default 50, in file order) of target `i`'s dev split. The loss is
//! `Feed::loss` — the cross-entropy of the class scores (encoders), or the causal-LM loss on
//! the answer tokens (decoders, the analogue of T5's token loss) — averaged over examples.
//! Lower loss = more similar, so the recorded direction is `negative`, τ = 0.1.

use super::{
    data_meta, examples_arg, matrix_value, overrides, p_sign, p_temperature, target_feed, Pairs,
};
use super::{FORMAT_PARAMS, P_DELTAS, P_EXAMPLES, P_SPLIT, P_TASKS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;
use candle_core::DType;

pub struct SimilarityLoss;

static SIG: Signature = Signature {
    id: "similarity.loss",
    version: 1,
    summary: "Loss of each source delta on each target's first dev examples: a target × source Matrix.",
    doc: "s_ij = mean loss of model + δ_j (eval mode) on the first `examples` of target i's `split` \
          (paper 2: the first dev batch of 50). The loss is the one the delta trains with (class \
          cross-entropy; decoders: answer-token LM loss). Diagonal NaN. Lower is more similar: \
          recorded `sign=negative`, τ = 0.1, which `merge softmax(deltas, S, target=…)` uses.",
    params: &[
        P_DELTAS, P_TASKS, P_SPLIT, P_EXAMPLES, p_sign("negative"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3], FORMAT_PARAMS[4],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity loss(ds, ts, examples=50)\nlet init = merge softmax(ds, s, target=\"movies\")"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

impl Operator for SimilarityLoss {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let o = overrides(args)?;
        let (split, n) = (args.str("split")?, examples_arg(args)?);
        let batch = args.int("batch")?.max(1) as usize;
        let values = pairs.each(cx, &mut |run, i, _| {
            let (feed, head) = target_feed(run, &pairs.tasks[i], split, n, &o)?;
            let idx: Vec<usize> = (0..feed.len()).collect();
            let mut total = 0.0;
            for chunk in idx.chunks(batch) {
                let l = feed.loss(&run.lm, head.as_ref(), chunk)?.detach();
                total += l.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            }
            Ok(total / feed.len() as f64)
        })?;
        let meta = data_meta(
            args,
            "mean over examples of the training loss of model + δ_j",
        )?;
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;

    #[test]
    fn mean_cross_entropy_of_each_source_on_each_target() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("split", Value::str("dev")),
                ("examples", Value::Int(20)),
                ("sign", Value::str("negative")),
                ("temperature", Value::Float(0.1)),
            ],
        );
        let out = SimilarityLoss
            .run(&mut OpCtx::for_test(t.path().join("s"), 0), &a)
            .unwrap();
        let m = matrix(&out);
        check_layout(&m, "negative");
        assert_eq!(m.meta["temperature"], serde_json::json!(0.1));
        assert_eq!(m.meta["examples"], serde_json::json!(20));
        for (i, target) in tasks.iter().enumerate() {
            for j in (0..3).filter(|&j| j != i) {
                let (z, y) = dev_logits(&deltas[j], target, 20);
                let want: f64 = z
                    .iter()
                    .zip(&y)
                    .map(|(z, &y)| -softmax(z)[y as usize].ln())
                    .sum::<f64>()
                    / 20.0;
                assert!(
                    (m.get(i, j) - want).abs() < 1e-5,
                    "({i},{j}) {} vs {want}",
                    m.get(i, j)
                );
            }
        }
        // Sources differ, so the scores do too.
        assert!((m.get(0, 1) - m.get(0, 2)).abs() > 1e-6);
    }
}
