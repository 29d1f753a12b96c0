//! `solve lstsq(train_kernel, eval_kernel, reg=…, f0=…)`: kernel regression, the paper's
//! `LstsqKernelSolver` (methods.md §4.6).
//!
//! `α = argmin ‖K_train α − Y‖` with the minimum norm (SVD pseudo-inverse, singular values
//! below `ε·NC·σ_max` dropped — `torch.linalg.lstsq`'s default driver computes the same
//! min-norm solution, up to the rank cut-off on near-singular kernels), where `K_train` may
//! carry the ridge `reg·σ_max·I`. Predictions `K_evalᵀ α` (+ f0/s with `f0=true`, training on
//! `Y − f0/s`). The payload's `loss` is the paper's `(1/#rows)·Σ(pred − target)²` over the
//! evaluated (example, class) rows; `rank` is the numerical rank of the (regularised) kernel.

use super::{
    check_finite, min_norm_lstsq, regularize, Problem, P_EVAL, P_F0, P_F0_SCALE, P_REG, P_TRAIN,
};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Signature};
use crate::types::Ty;
use crate::value::Value;
use nalgebra::DVector;
use serde_json::{json, Map};

pub struct Lstsq;

static SIG: Signature = Signature {
    id: "solve.lstsq",
    version: 1,
    summary: "Kernel regression: min-norm least squares on the training kernel, predictions K_evalᵀα.",
    doc: "Fits α = lstsq(K_train + reg·σ_max·I, Y) (minimum norm) on the flattened (example, class) \
          kernel, with Y the one-hot labels (±1 for a binary C = 1 kernel), and predicts the class \
          scores K_evalᵀα of the eval kernel's examples. With an invertible kernel and reg = 0 the \
          training labels are interpolated. `f0=true` fits Y − f0/s and adds f0/s back.",
    params: &[P_TRAIN, P_EVAL, P_REG, P_F0, P_F0_SCALE],
    returns: Ty::Predictions,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve lstsq(kernel sgd(lm, few, few, split=train), kernel sgd(lm, few, t), reg=1e-3)\nreport evaluate(p, metric=[accuracy, macro_f1])"],
    reference: Some("Malladi et al., A Kernel-Based View of Language Model Fine-Tuning (ICML 2023), arXiv:2210.05643"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Lstsq {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let p = Problem::from_args(args)?;
        check_finite(&p)?;
        let reg = args.float("reg")?;
        let offsets = p.offsets(args)?;
        let (k, smax) = regularize(&p.k_train, reg);
        let mut y = DVector::from_vec(p.targets());
        if let Some((t, _)) = &offsets {
            y -= DVector::from_column_slice(t);
        }
        let (alpha, rank) = min_norm_lstsq(&k, &y)?;
        let mut pred = p.k_eval.tr_mul(&alpha);
        if let Some((_, e)) = &offsets {
            pred += DVector::from_column_slice(e);
        }
        let loss = eval_mse(&p, pred.as_slice());
        let mut meta = Map::new();
        meta.insert("solver".into(), json!("lstsq"));
        meta.insert("reg".into(), json!(reg));
        meta.insert("sigma_max".into(), json!(smax));
        meta.insert("rank".into(), json!(rank));
        meta.insert("f0".into(), json!(offsets.is_some()));
        meta.insert("loss".into(), json!(loss));
        p.finish(cx, "lstsq", pred.as_slice(), meta)
    }
}

/// Mean squared error of flattened predictions against the eval examples' regression targets
/// (one-hot, or ±1 for a binary kernel), over (example, class) rows.
pub fn eval_mse(p: &Problem, pred: &[f64]) -> f64 {
    let mut total = 0.0;
    for (x, &l) in p.eval_labels.iter().enumerate() {
        for k in 0..p.c {
            let target = match (p.binary(), k as u32 == l) {
                (true, _) => {
                    if l == 1 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                (false, true) => 1.0,
                (false, false) => 0.0,
            };
            total += (pred[x * p.c + k] - target).powi(2);
        }
    }
    total / pred.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, kernel, solve};
    use super::*;

    #[test]
    fn an_invertible_kernel_interpolates_the_training_labels() {
        // N = 3, C = 2: a symmetric positive-definite 6×6 kernel, eval = train.
        let g: Vec<f64> = (0..36)
            .map(|i| ((i * 7 + 3) % 11) as f64 / 5.0 - 1.0)
            .collect();
        let g = nalgebra::DMatrix::from_row_slice(6, 6, &g);
        let k = &g * g.transpose() + nalgebra::DMatrix::identity(6, 6) * 0.5;
        let vals: Vec<f64> = k.transpose().iter().copied().collect(); // row-major
        let labels = [1.0, 0.0, 1.0];
        let t = kernel(3, 2, 3, vals, &labels, &labels);
        let dir = tempfile::tempdir().unwrap();
        let p = solve(&Lstsq, &args(dir.path(), &t, &t, vec![]));
        for (row, &l) in p.scores.iter().zip(&[1usize, 0, 1]) {
            for (c, &v) in row.iter().enumerate() {
                let want = if c == l { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "{row:?}");
            }
        }
        assert_eq!(p.predicted(), vec![1, 0, 1]);
        assert_eq!(p.meta["rank"], json!(6));
        assert!(p.meta["loss"].as_f64().unwrap() < 1e-18);
        assert_eq!(p.label, "lstsq(kernel.test)");
    }

    #[test]
    fn ridge_and_prediction_match_the_closed_form() {
        // K_train = diag(1, 2) (binary, C = 1), reg = 0.5 → K + 1·I = diag(2, 3);
        // Y = (+1, −1) → α = (1/2, −1/3); eval column k = (4, 3) → 4/2 − 3/3 = 1.
        let t = kernel(2, 1, 2, vec![1.0, 0.0, 0.0, 2.0], &[1.0, 0.0], &[1.0, 0.0]);
        let e = kernel(2, 1, 1, vec![4.0, 3.0], &[1.0, 0.0], &[0.0]);
        let dir = tempfile::tempdir().unwrap();
        let p = solve(
            &Lstsq,
            &args(dir.path(), &t, &e, vec![("reg", Value::Float(0.5))]),
        );
        assert!((p.scores[0][1] - 1.0).abs() < 1e-12 && (p.scores[0][0] + 1.0).abs() < 1e-12);
        assert_eq!(p.predicted(), vec![1]);
        // Gold is class 0 (target −1): squared error (1 − (−1))² = 4.
        assert!((p.meta["loss"].as_f64().unwrap() - 4.0).abs() < 1e-12);
    }

    #[test]
    fn the_f0_correction_provably_flips_a_prediction() {
        // K_train = I, Y = (+1, −1); eval column k = (0.1, 0) so without f0 the score is
        // +0.1 (class 1). With f0 (train f0 = (0, 0), eval f0 = −1, s = 1):
        // α = Y − 0 = Y, score = 0.1 − 1 = −0.9 (class 0). With s = 2: 0.1 − 0.5 = −0.4.
        let t = kernel(2, 1, 2, vec![1.0, 0.0, 0.0, 1.0], &[1.0, 0.0], &[1.0, 0.0]).with_extra(
            "train_f0",
            vec![2, 1],
            vec![0.0, 0.0],
        );
        let e = kernel(2, 1, 1, vec![0.1, 0.0], &[1.0, 0.0], &[0.0]).with_extra(
            "eval_f0",
            vec![1, 1],
            vec![-1.0],
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = solve(&Lstsq, &args(dir.path(), &t, &e, vec![]));
        assert!((plain.scores[0][1] - 0.1).abs() < 1e-12);
        assert_eq!(plain.predicted(), vec![1]);
        let f0 = solve(
            &Lstsq,
            &args(dir.path(), &t, &e, vec![("f0", Value::Bool(true))]),
        );
        assert!((f0.scores[0][1] + 0.9).abs() < 1e-12);
        assert_eq!(f0.predicted(), vec![0]);
        let half = vec![("f0", Value::Bool(true)), ("f0_scale", Value::Float(2.0))];
        let s2 = solve(&Lstsq, &args(dir.path(), &t, &e, half));
        assert!((s2.scores[0][1] + 0.4).abs() < 1e-12);
        // Training f0 moves the fit: train f0 = (1, 0) → α = (0, −1) → score 0 − 1·0 − 1 = −1.
        let t2 = t.clone().with_extra("train_f0", vec![2, 1], vec![1.0, 0.0]);
        let p = solve(
            &Lstsq,
            &args(dir.path(), &t2, &e, vec![("f0", Value::Bool(true))]),
        );
        assert!((p.scores[0][1] + 1.0).abs() < 1e-12);
    }

    #[test]
    fn f0_without_logits_is_a_clear_error() {
        let t = kernel(1, 1, 1, vec![1.0], &[1.0], &[1.0]);
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), &t, &t, vec![("f0", Value::Bool(true))]);
        let out = tempfile::tempdir().unwrap();
        let mut cx = OpCtx::for_test(out.path().to_path_buf(), 0);
        let e = Lstsq.run(&mut cx, &a).unwrap_err();
        assert!(e.message.contains("train_f0"), "{}", e.message);
    }
}
