//! `similarity euclidean(deltas, tasks, steps=200)`: paper 2's Euclidean score (methods.md §2.5).
//!
//! `d_ij = Σ_k ‖δ_j[k] − δ_j^{tuned on i}[k]‖_F`: a copy of source delta `j` is tuned on target
//! `i`'s train split for at most `steps` updates (paper 2: 200, lr 5e-4, batch 8, Adafactor,
//! constant lr, clip 0.1, validation every 50 steps, best checkpoint), then the distance is the
//! sum over delta tensors of the Frobenius norm of the change. How far the source had to move
//! to fit the target: lower = more similar, `sign=negative`, τ = 0.1. The paper merges the
//! *original* source deltas with these weights. The n·(n−1) tuning runs happen inside this node
//! (cached with it), each seeded from the node seed and the pair.

use super::tune::{each_tuned, TUNE_PARAMS};
use super::{matrix_value, p_sign, p_temperature, Pairs, FORMAT_PARAMS, P_ADAPTERS, P_TASKS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;
use candle_core::{DType, Tensor};
use serde_json::json;

pub struct SimilarityEuclidean;

static SIG: Signature = Signature {
    id: "similarity.euclidean",
    version: 1,
    summary: "How far each source delta moves when tuned briefly on each target: Σ_k ‖δ_j[k] − δ_j^(tuned on i)[k]‖_F.",
    doc: "Tunes a copy of every source δ_j on every other target i (train split; at most `steps` \
          updates, dev validation every `eval_every` steps, best checkpoint kept; paper 2's recipe \
          as defaults) and scores the sum over delta tensors of the Frobenius norm of the change \
          (heads excluded). Diagonal NaN. Lower is more similar: recorded `sign=negative`, τ = 0.1. \
          Paper 2 merges the original source deltas with these weights. Adapters only; \
          n·(n−1) tuning runs, all inside this cached node.",
    params: &[
        P_ADAPTERS, P_TASKS, p_sign("negative"), p_temperature(0.1),
        TUNE_PARAMS[0], TUNE_PARAMS[1], TUNE_PARAMS[2], TUNE_PARAMS[3], TUNE_PARAMS[4], TUNE_PARAMS[5], TUNE_PARAMS[6],
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity euclidean(ds, ts, steps=20)"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

/// `Σ_k ‖a[k] − b[k]‖_F` over tensors paired by position (same names).
pub fn frobenius_sum(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Result<f64, OpError> {
    let mut total = 0.0;
    for ((na, x), (nb, y)) in a.iter().zip(b) {
        debug_assert_eq!(na, nb);
        let d = (x.to_dtype(DType::F64)? - y.to_dtype(DType::F64)?)?;
        total += d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    }
    Ok(total)
}

impl Operator for SimilarityEuclidean {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let (values, steps) = each_tuned(cx, args, &pairs, &mut |t| {
            frobenius_sum(&t.before, &t.after)
        })?;
        let mut meta = serde_json::Map::new();
        meta.insert(
            "formula".into(),
            json!("Σ_k ‖δ_j[k] − δ_j^(tuned on i)[k]‖_F"),
        );
        meta.insert("steps".into(), json!(args.int("steps")?));
        meta.insert("steps_run".into(), json!(steps));
        meta.insert("lr".into(), json!(args.float("lr")?));
        meta.insert("optimizer".into(), json!(args.str("optimizer")?));
        meta.insert(
            "merge".into(),
            json!("paper 2 merges the original source deltas"),
        );
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;
    use crate::ops::train::runnable::Runnable;
    use crate::train::feed::Feed;
    use candle_core::Device;

    pub fn tune_args(deltas: &[Value], tasks: &[Value], lr: f64, steps: i64, batch: i64) -> Args {
        args(
            deltas,
            tasks,
            vec![
                ("sign", Value::str("negative")),
                ("temperature", Value::Float(0.1)),
                ("steps", Value::Int(steps)),
                ("lr", Value::Float(lr)),
                ("batch", Value::Int(batch)),
                ("optimizer", Value::str("sgd")),
                ("max_grad_norm", Value::None),
                ("eval_every", Value::Int(1)),
                ("metric", Value::str("accuracy")),
            ],
        )
    }

    #[test]
    fn zero_learning_rate_moves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let out = SimilarityEuclidean
            .run(
                &mut OpCtx::for_test(t.path().join("s"), 3),
                &tune_args(&deltas[..2], &tasks[..2], 0.0, 2, 8),
            )
            .unwrap();
        let m = matrix(&out);
        assert_eq!(m.axes[0].labels, vec!["movies", "restaurants"]);
        assert!(m.get(0, 0).is_nan() && m.get(1, 1).is_nan());
        assert_eq!((m.get(0, 1), m.get(1, 0)), (0.0, 0.0));
    }

    #[test]
    fn one_full_batch_sgd_step_moves_by_lr_times_the_gradient_norms() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let lr = 0.05;
        // One step over the whole train split (240 examples): Δδ_k = −lr·∇_k mean loss.
        let out = SimilarityEuclidean
            .run(
                &mut OpCtx::for_test(t.path().join("s"), 3),
                &tune_args(&deltas[..2], &tasks[..2], lr, 1, 240),
            )
            .unwrap();
        let m = matrix(&out);
        check_sign(&m);
        for (i, j) in [(0usize, 1usize), (1, 0)] {
            let run = Runnable::load(deltas[j].as_artifact().unwrap(), &Device::Cpu).unwrap();
            let task =
                crate::data::TaskData::from_artifact(tasks[i].as_artifact().unwrap()).unwrap();
            let spec =
                crate::train::feed::FormatSpec::resolve(&run.lm, &task, "prompt", None, None, 128)
                    .unwrap();
            let feed = Feed::new(&run.lm, &spec, &task, task.train()).unwrap();
            let idx: Vec<usize> = (0..feed.len()).collect();
            let g = feed
                .loss(&run.lm, None, &idx)
                .unwrap()
                .mean_all()
                .unwrap()
                .backward()
                .unwrap();
            let want: f64 = run
                .delta
                .as_ref()
                .unwrap()
                .vars()
                .iter()
                .map(|v| {
                    let gk = g.get(v.as_tensor()).unwrap();
                    lr * (gk
                        .sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap() as f64)
                        .sqrt()
                })
                .sum();
            assert!(want > 0.0);
            let rel = (m.get(i, j) - want).abs() / want;
            assert!(rel < 1e-3, "({i},{j}) {} vs {want}", m.get(i, j));
        }
    }

    fn check_sign(m: &crate::tensors::matrix::Matrix) {
        assert_eq!(m.meta["sign"], serde_json::json!("negative"));
        assert_eq!(m.meta["steps_run"], serde_json::json!([1, 1]));
    }
}
