//! `similarity block_cosine(deltas, tasks, tuned, examples=50)`: paper 2's block-wise
//! "modified cosine of logits and labels" (`get_block`, mode `cos_withoutpad`; methods.md §2.7).
//!
//! For target `i`, source `j` and block `l`:
//! `s_ij^l = Σ_e cos(vec h_l^tuned(e), vec h_l^j(e))`, where `h_l(e)` is block `l`'s output for
//! example `e` over its real (non-pad) tokens, flattened; `tuned[i]` is the target's own delta
//! tuned from random init on its few-shot data and `j` the base with source delta δ_j. Both see
//! the same tokens (the input format the tuned model records for the task), eval mode, the
//! first `examples` examples of the target's `split`. Higher is more similar: `sign=positive`,
//! τ = 0.1 (the history's block temperature). The result is a `[block, target, source]` array
//! (NaN diagonal in every block); `similarity block(S, b)` takes block `b` out.
//!
//! Block `l` is the output of transformer block `l` (0-based). The paper code's encoder states
//! `0..11` are the embedding output and blocks 0..10 — an off-by-one (methods.md §2.9) that this
//! operator does not reproduce.

use super::{examples_arg, overrides, p_sign, p_temperature, target_feed, tuned_args, Pairs};
use super::{FORMAT_PARAMS, P_DELTAS, P_EXAMPLES, P_SPLIT, P_TASKS, P_TUNED};
use crate::diag::OpError;
use crate::ops::train::runnable::Runnable;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::train::feed::Feed;
use crate::types::Ty;
use crate::value::Value;
use candle_core::{DType, Tensor};
use serde_json::json;

pub struct SimilarityBlockCosine;

static SIG: Signature = Signature {
    id: "similarity.block_cosine",
    version: 1,
    summary: "Per block: Σ over a target's first dev examples of the cosine between the block outputs of its own tuned model and of each source delta.",
    doc: "s_ij^l = Σ_e cos(h_l^tuned_i(e), h_l^j(e)), h_l(e) the output of block l for example e \
          over its non-pad tokens, flattened; tuned[i] the target's delta tuned from random init \
          on its few-shot data, j the base + δ_j; both fed the tuned model's input format, eval \
          mode, the first `examples` of target i's `split`. A [block, target, source] array with \
          NaN diagonals; higher is more similar (`sign=positive`, τ = 0.1). Take one block with \
          `similarity block`. Block l is transformer block l's output (not the paper code's \
          off-by-one embedding-plus-blocks 0..L−2).",
    params: &[
        P_DELTAS, P_TASKS, P_TUNED, P_SPLIT, P_EXAMPLES, p_sign("positive"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3], FORMAT_PARAMS[4],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet few = [train lora(lm, data kshot(t, k=8), head=prompt) for t in ts]\nlet per_block = similarity block_cosine(ds, ts, few)\nlet s0 = similarity block(per_block, 0)"],
    reference: Some("Lv et al. (ACL 2023), granularity analysis (get_block, cos_withoutpad); methods.md §2.7"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks"), ("tasks", "tuned")],
    cheap: false,
};

/// Every block's output for every example, each flattened over the example's real tokens.
/// `[block][example] → values`.
pub fn block_vectors(
    run: &Runnable,
    feed: &Feed,
    batch: usize,
) -> Result<Vec<Vec<Vec<f32>>>, OpError> {
    let idx: Vec<usize> = (0..feed.len()).collect();
    let mut out: Vec<Vec<Vec<f32>>> = Vec::new();
    for chunk in idx.chunks(batch.max(1)) {
        let (states, lengths) = feed.block_states(&run.lm, chunk)?;
        if out.is_empty() {
            out = vec![Vec::with_capacity(idx.len()); states.len()];
        }
        for (l, h) in states.iter().enumerate() {
            for (b, &len) in lengths.iter().enumerate() {
                let row: Tensor = h.get(b)?.narrow(0, 0, len)?;
                out[l].push(row.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
    }
    Ok(out)
}

/// `Σ_e cos(a_e, b_e)` in f64 (a zero vector contributes 0).
pub fn cosine_sum(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            for (&p, &q) in x.iter().zip(y) {
                let (p, q) = (p as f64, q as f64);
                xy += p * q;
                xx += p * p;
                yy += q * q;
            }
            if xx == 0.0 || yy == 0.0 {
                0.0
            } else {
                xy / (xx.sqrt() * yy.sqrt())
            }
        })
        .sum()
}

impl Operator for SimilarityBlockCosine {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let tuned = tuned_args(args, pairs.n())?;
        let o = overrides(args)?;
        let split = args.str("split")?;
        let batch = args.int("batch")?.max(1) as usize;
        let n = pairs.n();
        // The tuned target models: their feeds (shared with every source) and block outputs.
        let mut feeds = Vec::with_capacity(n);
        let mut reference = Vec::with_capacity(n);
        for (i, t) in tuned.iter().enumerate() {
            let run = Runnable::load(t, &cx.device)?;
            let task = &pairs.tasks[i];
            let (feed, _) = target_feed(&run, task, split, examples_arg(args)?, &o)?;
            reference.push(block_vectors(&run, &feed, batch).map_err(|e| {
                e.context(format!(
                    "block outputs of the tuned target model of {}",
                    task.name
                ))
            })?);
            feeds.push(feed);
        }
        let blocks = reference.first().map_or(0, |r| r.len());
        let mut values = vec![vec![f64::NAN; n * n]; blocks];
        for (j, src) in pairs.sources.iter().enumerate() {
            let run = Runnable::load(src, &cx.device)?;
            for i in (0..n).filter(|&i| i != j) {
                let mine = block_vectors(&run, &feeds[i], batch).map_err(|e| {
                    e.context(format!(
                        "scoring source {} on target {}",
                        pairs.labels[j], pairs.labels[i]
                    ))
                })?;
                for (l, v) in values.iter_mut().enumerate() {
                    v[i * n + j] = cosine_sum(&reference[i][l], &mine[l]);
                }
            }
        }
        let mut meta = super::data_meta(
            args,
            "Σ_examples cos(block output of the tuned target, block output with δ_j), non-pad tokens",
        )?;
        meta.insert(
            "blocks".into(),
            json!("transformer block l's output, l from 0"),
        );
        let labels = (0..blocks).map(|l| format!("block {l}")).collect();
        super::granular_value(
            cx,
            SIG.id,
            "block",
            labels,
            &pairs.labels,
            values,
            args,
            meta,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;
    use crate::tensors::matrix::Matrix;

    #[test]
    fn closed_forms() {
        let a = vec![vec![1.0, 0.0], vec![1.0, 1.0]];
        let b = vec![vec![2.0, 0.0], vec![-1.0, -1.0]];
        assert!((cosine_sum(&a, &b) - 0.0).abs() < 1e-12);
        assert!((cosine_sum(&a, &a) - 2.0).abs() < 1e-12);
        assert_eq!(cosine_sum(&[vec![0.0, 0.0]], &[vec![1.0, 0.0]]), 0.0);
    }

    /// Independent computation: each block output taken one example at a time (no padding at
    /// all), cosine summed in the test.
    #[test]
    fn matches_unpadded_one_example_forwards() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        // The targets' "tuned" models: other seeded adapters.
        let tuned: Vec<Value> = (0..3)
            .map(|k| lora(&t.path().join(format!("tuned{k}")), 50 + k, 0.05))
            .collect();
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("tuned", Value::list(tuned.clone())),
                ("split", Value::str("dev")),
                ("examples", Value::Int(6)),
                ("sign", Value::str("positive")),
                ("temperature", Value::Float(0.1)),
            ],
        );
        let v = SimilarityBlockCosine
            .run(&mut OpCtx::for_test(t.path().join("out"), 0), &a)
            .unwrap();
        let m = Matrix::read(&v.as_artifact().unwrap().dir).unwrap();
        assert_eq!(m.shape, vec![3, 3, 3], "3 blocks of the small encoder");
        assert_eq!(m.axes[0].labels[2], "block 2");
        let o = overrides(&a).unwrap();
        let load = |v: &Value| {
            Runnable::load(v.as_artifact().unwrap(), &candle_core::Device::Cpu).unwrap()
        };
        for (i, j) in [(0usize, 1usize), (2, 0)] {
            let task =
                crate::data::TaskData::from_artifact(tasks[i].as_artifact().unwrap()).unwrap();
            let (rt, rs) = (load(&tuned[i]), load(&deltas[j]));
            let (feed, _) = target_feed(&rt, &task, "dev", Some(6), &o).unwrap();
            for l in 0..3 {
                let mut want = 0.0;
                for e in 0..6 {
                    let one = |r: &Runnable| {
                        let (s, len) = feed.block_states(&r.lm, &[e]).unwrap();
                        assert_eq!(
                            s[l].dim(1).unwrap(),
                            len[0],
                            "a lone example has no padding"
                        );
                        vec![s[l].flatten_all().unwrap().to_vec1::<f32>().unwrap()]
                    };
                    want += cosine_sum(&one(&rt), &one(&rs));
                }
                let got = m.slice(l).unwrap().get(i, j);
                assert!(
                    (got - want).abs() < 1e-4,
                    "block {l} ({i},{j}): {got} vs {want}"
                );
                assert!(got > 0.0 && got <= 6.0 + 1e-9);
            }
        }
        for l in 0..3 {
            assert!(m.slice(l).unwrap().get(1, 1).is_nan());
        }
        assert_eq!(m.meta["sign"], "positive");
    }
}
