//! `similarity cosine_weights(deltas, tasks, tuned)`: paper 2's Cosine of delta weights
//! (methods.md §2.5).
//!
//! `s_ij = mean_k cos(vec(δ_i^tuned[k]), vec(δ_j[k]))` over every delta tensor `k` (LoRA A and
//! B, bottleneck down/up and biases, prefix embedding and MLP; classification heads excluded),
//! where `δ_i^tuned = tuned[i]` is the target's delta tuned from random init on its few-shot
//! data. Reads the adapter files only (no forward pass). A tensor whose norm is 0 on either
//! side contributes 0 (its cosine is undefined). A similarity: `sign=positive`, τ = 0.001
//! (the current code; history tried 1).

use super::{matrix_value, p_sign, p_temperature, tuned_args, Pairs, P_ADAPTERS, P_TASKS};
use crate::diag::OpError;
use crate::nn::peft::prefix::ENCODER_FILE;
use crate::ops::merge::adapter_set::{AdapterIn, Tensor32, MAIN_FILE};
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Artifact, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct SimilarityCosineWeights;

static SIG: Signature = Signature {
    id: "similarity.cosine_weights",
    version: 1,
    summary: "Mean per-tensor cosine between each target's own tuned delta and each source delta.",
    doc: "s_ij = mean over delta tensors k of cos(vec(tuned_i[k]), vec(δ_j[k])) (LoRA factors, \
          adapter weights, prefix embedding and MLP; heads excluded). `tuned[i]` is target i's \
          delta tuned from random init on its few-shot data; every adapter must have the same \
          tensors. Diagonal NaN. Higher is more similar: recorded `sign=positive`, τ = 0.001.",
    params: &[
        P_ADAPTERS,
        P_TASKS,
        Param::req("tuned", Ty::List(&Ty::Adapter), "One per task: the target's delta tuned from random init on its own (few-shot) data."),
        p_sign("positive"),
        p_temperature(0.001),
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet few = [train lora(lm, data kshot(t, k=8), head=prompt) for t in ts]\nlet s = similarity cosine_weights(ds, ts, few)"],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks"), ("tasks", "tuned")],
    cheap: false,
};

/// Every delta tensor of an adapter directory (main file, then the prefix MLP).
pub fn delta_tensors(a: &Arc<Artifact>) -> Result<BTreeMap<String, Tensor32>, OpError> {
    let ad = AdapterIn::open(a)?;
    let mut t = ad.read(MAIN_FILE)?;
    t.extend(ad.read(ENCODER_FILE)?);
    Ok(t)
}

/// Cosine of two flattened tensors in f64; 0 when either has zero norm.
pub fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (a as f64, b as f64);
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx.sqrt() * yy.sqrt())
    }
}

/// `mean_k cos(a[k], b[k])`; the two must hold the same tensor names and shapes.
pub fn mean_cosine(
    a: &BTreeMap<String, Tensor32>,
    b: &BTreeMap<String, Tensor32>,
) -> Result<f64, OpError> {
    if a.is_empty() {
        return Err(OpError::new(
            "smelt::run::argument",
            "the adapter has no tensors",
        ));
    }
    let mut total = 0.0;
    for (name, (shape, x)) in a {
        let (s2, y) = b.get(name).filter(|(s, _)| s == shape).ok_or_else(|| {
            OpError::new(
                "smelt::check::incompatible_adapters",
                format!("tensor `{name}` {shape:?} has no counterpart of that shape"),
            )
            .with_help("compare adapters of one configuration (same kind, rank, modules)")
        })?;
        debug_assert_eq!(s2, shape);
        total += cosine(x, y);
    }
    if a.len() != b.len() {
        return Err(OpError::new(
            "smelt::check::incompatible_adapters",
            format!("the adapters hold {} and {} tensors", a.len(), b.len()),
        ));
    }
    Ok(total / a.len() as f64)
}

impl Operator for SimilarityCosineWeights {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let tuned = tuned_args(args, pairs.n())?;
        let src: Vec<_> = pairs
            .sources
            .iter()
            .map(|a| delta_tensors(a))
            .collect::<Result<_, _>>()?;
        let n = pairs.n();
        let mut values = vec![f64::NAN; n * n];
        for (i, t) in tuned.iter().enumerate() {
            let ti = delta_tensors(t)?;
            for j in (0..n).filter(|&j| j != i) {
                values[i * n + j] = mean_cosine(&ti, &src[j]).map_err(|e| {
                    e.context(format!(
                        "tuned {} vs source {}",
                        pairs.labels[i], pairs.labels[j]
                    ))
                })?;
            }
        }
        let mut meta = serde_json::Map::new();
        meta.insert(
            "formula".into(),
            json!("mean over delta tensors k of cos(vec(tuned_i[k]), vec(δ_j[k]))"),
        );
        matrix_value(cx, SIG.id, &pairs.labels, values, args, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;

    #[test]
    fn cosine_closed_forms() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-15);
        assert!((cosine(&[1.0, 0.0], &[0.0, 3.0])).abs() < 1e-15);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-15);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn mean_over_tensors_of_the_adapter_files() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        // Target 0's tuned delta is source 1 itself: cosine 1 with it.
        let tuned = vec![
            deltas[1].clone(),
            lora(&t.path().join("t1"), 50, 0.05),
            lora(&t.path().join("t2"), 51, 0.05),
        ];
        let a = args(
            &deltas,
            &tasks,
            vec![
                ("tuned", Value::list(tuned.clone())),
                ("sign", Value::str("positive")),
                ("temperature", Value::Float(0.001)),
            ],
        );
        let out = SimilarityCosineWeights
            .run(&mut OpCtx::for_test(t.path().join("s"), 0), &a)
            .unwrap();
        let m = matrix(&out);
        check_layout(&m, "positive");
        assert!((m.get(0, 1) - 1.0).abs() < 1e-12, "{}", m.get(0, 1));
        // Independent: read the safetensors files directly.
        let read = |v: &Value| {
            let p = v
                .as_artifact()
                .unwrap()
                .dir
                .join("adapter_model.safetensors");
            let bytes = std::fs::read(p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut out: Vec<(String, Vec<f32>)> = st
                .tensors()
                .into_iter()
                .map(|(n, v)| {
                    let f = v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    (n, f)
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        for (i, ti) in tuned.iter().enumerate() {
            for j in (0..3).filter(|&j| j != i) {
                let (a, b) = (read(ti), read(&deltas[j]));
                assert_eq!(a.len(), 12, "6 modules × (A, B)");
                let mut s = 0.0;
                for ((na, x), (nb, y)) in a.iter().zip(&b) {
                    assert_eq!(na, nb);
                    let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let nx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                    let ny: f64 = y.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                    s += dot / (nx * ny);
                }
                let want = s / a.len() as f64;
                assert!(
                    (m.get(i, j) - want).abs() < 1e-12,
                    "({i},{j}) {} vs {want}",
                    m.get(i, j)
                );
            }
        }
    }
}
