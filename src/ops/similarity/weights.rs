//! `similarity weights(scores, temperature, sign)`: the whole target × source matrix of the
//! weights `merge softmax` gives each source — paper 2's weight heat map (Figure 2).
//!
//! Row i is `softmax(sign·s_i·/τ)` over the sources other than target i itself (the column
//! labelled like the row), exactly as `merge softmax(deltas, scores, target=…)` computes it;
//! the target's own cell is 0, so every row sums to 1. Direction and temperature default to the
//! ones the score matrix records (the paper's for that similarity), else positive and 0.1.

use crate::diag::OpError;
use crate::ops::merge::softmax::{matrix_direction, softmax_weights, source_columns, SIGNS};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::{Axis, Matrix};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;

pub struct Weights;

static SIG: Signature = Signature {
    id: "similarity.weights",
    version: 1,
    summary: "Softmax weights of every target row of a score matrix (target's own cell 0).",
    doc: "Row i holds the weights `merge softmax(deltas, scores, target=row i)` uses: \
          softmax(sign·s/τ) over the other sources, 0 for the target itself, so each row sums to \
          1. `temperature` and `sign` default to the values recorded in the score matrix.",
    params: &[
        Param::req("scores", Ty::Matrix, "A target × source score matrix from `similarity …`."),
        Param::opt("temperature", Ty::Opt(&Ty::Float), Const::None, "Softmax temperature τ > 0 (default: the matrix's, else 0.1).").range(0.0, 1e300),
        Param::opt("sign", Ty::Opt(&Ty::Enum(SIGNS)), Const::None, "`positive` or `negative` (default: the matrix's, else positive)."),
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet w = similarity weights(similarity loss(loras, ts))"],
    reference: Some("Lv et al. (ACL 2023) §2.6, Figure 2"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// The weight matrix of `m` (2-D, labelled target rows and source columns).
pub fn weight_matrix(m: &Matrix, temperature: f64, sign: &str) -> Result<Matrix, OpError> {
    if m.shape.len() != 2 {
        return Err(OpError::new(
            "smelt::run::argument",
            format!("`{}` is not a 2-D target × source matrix", m.what),
        ));
    }
    let (rows, cols) = (&m.axes[0].labels, &m.axes[1].labels);
    let s = if sign == "negative" { -1.0 } else { 1.0 };
    let mut values = vec![0.0; m.rows() * m.cols()];
    for i in 0..m.rows() {
        let keep = source_columns(m, i);
        let scores: Vec<f64> = keep.iter().map(|&j| m.get(i, j)).collect();
        let w = softmax_weights(&scores, temperature, s)
            .map_err(|e| e.context(format!("row {i} of `{}`", m.what)))?;
        for (k, &j) in keep.iter().enumerate() {
            values[i * m.cols() + j] = w[k];
        }
    }
    let axes = vec![
        Axis::new(m.axes[0].name.clone(), rows.clone()),
        Axis::new(m.axes[1].name.clone(), cols.clone()),
    ];
    Ok(Matrix::new(
        format!("weights({})", m.what),
        m.shape.clone(),
        axes,
        values,
    )?
    .with_meta("temperature", json!(temperature))
    .with_meta("sign", json!(sign)))
}

impl Operator for Weights {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let m = Matrix::read(&args.artifact("scores", Kind::Matrix)?.dir)?;
        let sign = match args.get("sign")? {
            Value::None => None,
            _ => Some(args.str("sign")?.to_string()),
        };
        let (temperature, sign) = matrix_direction(&m, args.opt_float("temperature")?, sign);
        let w = weight_matrix(&m, temperature, &sign)?;
        let dir = cx.out_dir.join("matrix");
        w.write(&dir)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir,
            key: cx.key,
            data: w.artifact_data(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rows_sum_to_one_skip_the_target_and_follow_the_sign() {
        let t = names(&["a", "b", "c"]);
        let m = Matrix::new2(
            "similarity.loss",
            Axis::new("target", t.clone()),
            Axis::new("source", t),
            vec![f64::NAN, 1.0, 2.0, 0.5, f64::NAN, 0.5, 3.0, 1.0, f64::NAN],
        )
        .unwrap();
        let w = weight_matrix(&m, 1.0, "negative").unwrap();
        for i in 0..3 {
            assert_eq!(w.get(i, i), 0.0);
            assert!((w.row(i).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // Row a: softmax(−[1, 2]) — the lower loss gets more weight.
        let e = [(-1f64).exp(), (-2f64).exp()];
        assert!((w.get(0, 1) - e[0] / (e[0] + e[1])).abs() < 1e-12);
        assert_eq!(w.get(1, 0), w.get(1, 2), "equal scores, equal weights");
        // τ → ∞ is the uniform average over the other sources.
        let flat = weight_matrix(&m, 1e12, "negative").unwrap();
        assert!((flat.get(2, 0) - 0.5).abs() < 1e-9);
    }
}
