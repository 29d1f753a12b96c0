//! `similarity performance(deltas, tasks, steps=200)`: paper 2's Performance score
//! (methods.md §2.5).
//!
//! `Δperf_ij = dev_perf(δ_j tuned on i) − dev_perf(δ_j zero-shot on i)`: a copy of source delta
//! `j` is tuned on target `i`'s train split with the recipe of `similarity euclidean` (paper 2:
//! ≤ 200 updates, best dev checkpoint), and the score is the gain of the dev `metric` (default
//! accuracy) over the untuned source. Higher = more similar, `sign=positive`, τ = 0.001 (a
//! history file used −s). The paper then merges the *tuned* source deltas, which this node
//! does not keep; the matrix's meta records `dev_before`/`dev_after` as side arrays.
//! Fixed here: the released code's zero-shot indexing (`[i*3 : i*3+3]`, §2.9) — each pair's
//! zero-shot score is measured directly.

use super::tune::{each_tuned, TUNE_PARAMS};
use super::{matrix_value, p_sign, p_temperature, Pairs, FORMAT_PARAMS, P_ADAPTERS, P_TASKS};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;

pub struct SimilarityPerformance;

static SIG: Signature = Signature {
    id: "similarity.performance",
    version: 1,
    summary: "Dev-metric gain of each source delta after brief tuning on each target.",
    doc: "Tunes a copy of every source δ_j on every other target i as `similarity euclidean` does \
          and scores dev_metric(tuned) − dev_metric(untuned δ_j) on target i's dev split (`metric`, \
          default accuracy). Diagonal NaN. Higher is more similar: recorded `sign=positive`, \
          τ = 0.001. The matrix also holds `dev_before` and `dev_after` (same layout). Adapters only; \
          n·(n−1) tuning runs, all inside this cached node.",
    params: &[
        P_ADAPTERS, P_TASKS, p_sign("positive"), p_temperature(0.001),
        TUNE_PARAMS[0], TUNE_PARAMS[1], TUNE_PARAMS[2], TUNE_PARAMS[3], TUNE_PARAMS[4], TUNE_PARAMS[5], TUNE_PARAMS[6],
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity performance(ds, ts, steps=20, metric=accuracy)"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

impl Operator for SimilarityPerformance {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let n = pairs.n();
        let (mut before, mut after) = (vec![f64::NAN; n * n], vec![f64::NAN; n * n]);
        let mut k = 0;
        let order: Vec<(usize, usize)> = (0..n)
            .flat_map(|j| (0..n).filter(move |&i| i != j).map(move |i| (i, j)))
            .collect();
        let (values, steps) = each_tuned(cx, args, &pairs, &mut |t| {
            let (i, j) = order[k];
            k += 1;
            before[i * n + j] = t.dev_before;
            after[i * n + j] = t.dev_after;
            Ok(t.dev_after - t.dev_before)
        })?;
        let mut meta = serde_json::Map::new();
        meta.insert(
            "formula".into(),
            json!("dev_metric(δ_j tuned on i) − dev_metric(δ_j on i)"),
        );
        meta.insert("metric".into(), json!(args.str("metric")?));
        meta.insert("steps".into(), json!(args.int("steps")?));
        meta.insert("steps_run".into(), json!(steps));
        meta.insert(
            "merge".into(),
            json!("paper 2 merges the tuned source deltas (not kept by this node)"),
        );
        let v = matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)?;
        // Add the two side arrays to the written matrix.
        let a = v.as_artifact().expect("matrix artifact");
        let m = Matrix::read(&a.dir)?
            .with_extra("dev_before", vec![n, n], before)
            .with_extra("dev_after", vec![n, n], after);
        m.write(&a.dir)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir: a.dir.clone(),
            key: cx.key,
            data: m.artifact_data(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;
    use crate::ops::train::runnable::Runnable;
    use crate::train::feed::{argmax, Feed, FormatSpec};
    use candle_core::Device;

    fn perf_args(deltas: &[Value], tasks: &[Value], lr: f64) -> Args {
        args(
            deltas,
            tasks,
            vec![
                ("sign", Value::str("positive")),
                ("temperature", Value::Float(0.001)),
                ("steps", Value::Int(1)),
                ("lr", Value::Float(lr)),
                ("batch", Value::Int(240)),
                ("optimizer", Value::str("sgd")),
                ("max_grad_norm", Value::None),
                ("eval_every", Value::Int(1)),
                ("metric", Value::str("accuracy")),
            ],
        )
    }

    /// Dev accuracy of `delta` on `task`, optionally after one manual full-batch SGD step.
    fn dev_acc(delta: &Value, task: &Value, lr: f64) -> f64 {
        let run = Runnable::load(delta.as_artifact().unwrap(), &Device::Cpu).unwrap();
        let t = crate::data::TaskData::from_artifact(task.as_artifact().unwrap()).unwrap();
        let spec = FormatSpec::resolve(&run.lm, &t, "prompt", None, None, 128).unwrap();
        if lr > 0.0 {
            let feed = Feed::new(&run.lm, &spec, &t, t.train()).unwrap();
            let idx: Vec<usize> = (0..feed.len()).collect();
            let g = feed
                .loss(&run.lm, None, &idx)
                .unwrap()
                .mean_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in run.delta.as_ref().unwrap().vars() {
                let gk = g.get(v.as_tensor()).unwrap();
                let new = (v.as_tensor() - (gk * lr).unwrap()).unwrap();
                v.set(&new).unwrap();
            }
        }
        let dev = Feed::new(&run.lm, &spec, &t, t.dev()).unwrap();
        let pred = argmax(&dev.all_logits(&run.lm, None, 32).unwrap());
        let gold = dev.labels();
        pred.iter().zip(&gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
    }

    #[test]
    fn gain_of_one_sgd_step_against_a_manual_update() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let lr = 2.0;
        let out = SimilarityPerformance
            .run(
                &mut OpCtx::for_test(t.path().join("s"), 5),
                &perf_args(&deltas[..2], &tasks[..2], lr),
            )
            .unwrap();
        let m = matrix(&out);
        assert_eq!(m.meta["sign"], serde_json::json!("positive"));
        assert!(m.get(0, 0).is_nan() && m.get(1, 1).is_nan());
        let (before, after) = (&m.extra["dev_before"].1, &m.extra["dev_after"].1);
        for (i, j) in [(0usize, 1usize), (1, 0)] {
            let (b, a) = (
                dev_acc(&deltas[j], &tasks[i], 0.0),
                dev_acc(&deltas[j], &tasks[i], lr),
            );
            assert_eq!(before[i * 2 + j], b, "({i},{j}) zero-shot");
            assert_eq!(after[i * 2 + j], a, "({i},{j}) tuned");
            assert!((m.get(i, j) - (a - b)).abs() < 1e-12);
        }
        eprintln!("before {before:?} after {after:?}");
        assert!(
            (0..4).any(|k| before[k].is_finite() && before[k] != after[k]),
            "the step must change some accuracy for this test to mean anything"
        );
        // lr = 0: no gain anywhere.
        let flat = matrix(
            &SimilarityPerformance
                .run(
                    &mut OpCtx::for_test(t.path().join("z"), 5),
                    &perf_args(&deltas[..2], &tasks[..2], 0.0),
                )
                .unwrap(),
        );
        assert_eq!((flat.get(0, 1), flat.get(1, 0)), (0.0, 0.0));
    }
}
