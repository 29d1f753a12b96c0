//! `solve svm(train_kernel, eval_kernel, c=1, tol=1e-3, reg=…, f0=…)`: a support-vector
//! classifier on the precomputed kernel, the paper's `SVCKernelSolver` (methods.md §4.6;
//! scikit-learn `SVC(kernel="precomputed")`, defaults C = 1, tol = 1e-3).
//!
//! Rows are the flattened (example, class) pairs, labelled +1 when the class is the example's
//! gold class (binary C = 1 kernels: the ±1 label) — as the paper's code does after
//! `reshape_kernel_and_targets`. The dual is solved by our SMO (`smo.rs`; libsvm's algorithm).
//! Class scores are the decision values `Σⱼ αⱼyⱼK(j, x) − ρ`. The paper maps scikit-learn's
//! hard ±1 predictions to scores instead; for binary kernels the predicted class is the same,
//! for several classes decision values break the ties that ±1 scores leave. `f0=true` (which the
//! paper's SVC refuses) adds f0/s to the decision function as a fixed offset, in training (the
//! margin constraints) and prediction.

use super::smo;
use super::{check_finite, regularize, Problem, CODE, P_EVAL, P_F0, P_F0_SCALE, P_REG, P_TRAIN};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;
use serde_json::{json, Map};

pub struct Svm;

static SIG: Signature = Signature {
    id: "solve.svm",
    version: 1,
    summary: "Support-vector classifier on the precomputed kernel (C-SVC, libsvm's SMO).",
    doc: "Fits a soft-margin SVM with the training kernel as its Gram matrix on (example, class) \
          rows labelled +1 for the gold class and −1 otherwise (binary C = 1 kernels: the ±1 \
          label), and scores eval rows by their decision values. `c` is the box constraint, \
          `tol` the KKT-violation tolerance. `f0=true` adds f0/s to the decision function as a \
          fixed offset (an extension: the paper's SVC has no f0 correction).",
    params: &[
        P_TRAIN,
        P_EVAL,
        Param::opt("c", Ty::Float, Const::Float(1.0), "Box constraint C (penalty on margin violations).").range(1e-12, 1e12),
        Param::opt("tol", Ty::Float, Const::Float(1e-3), "Stop when the largest KKT violation is below this.").range(1e-15, 1.0),
        P_REG,
        P_F0,
        P_F0_SCALE,
    ],
    returns: Ty::Predictions,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve svm(kernel sgd(lm, few, few, split=train), kernel sgd(lm, few, t), c=1.0)\nreport evaluate(p, metric=[accuracy, mcc])"],
    reference: Some("Malladi et al. (ICML 2023), arXiv:2210.05643; Fan, Chen & Lin, Working set selection using second order information (JMLR 2005)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Svm {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let p = Problem::from_args(args)?;
        check_finite(&p)?;
        let c = args.float("c")?;
        let tol = args.float("tol")?;
        let reg = args.float("reg")?;
        let (k, _) = regularize(&p.k_train, reg);
        let y: Vec<f64> = p
            .targets()
            .iter()
            .map(|&t| if t > 0.0 { 1.0 } else { -1.0 })
            .collect();
        if y.iter().all(|&v| v == y[0]) {
            return Err(OpError::new(
                CODE,
                "every training row has the same label; an SVM needs both",
            )
            .with_help("the training set must contain more than one class"));
        }
        let offsets = p.offsets(args)?;
        let lin: Vec<f64> = match &offsets {
            Some((o, _)) => y.iter().zip(o).map(|(y, o)| -(1.0 - y * o)).collect(),
            None => vec![-1.0; y.len()],
        };
        let model = smo::solve(&k, &y, &lin, c, tol);
        let mut scores = model.decision(&y, &p.k_eval);
        if let Some((_, e)) = &offsets {
            scores.iter_mut().zip(e).for_each(|(s, o)| *s += o);
        }
        let mut meta = Map::new();
        meta.insert("solver".into(), json!("svm"));
        meta.insert("c".into(), json!(c));
        meta.insert("tol".into(), json!(tol));
        meta.insert("reg".into(), json!(reg));
        meta.insert("f0".into(), json!(offsets.is_some()));
        meta.insert(
            "support_vectors".into(),
            json!(model.alpha.iter().filter(|&&a| a > 0.0).count()),
        );
        meta.insert("bias".into(), json!(-model.rho));
        meta.insert("smo_iters".into(), json!(model.iters));
        meta.insert("converged".into(), json!(model.converged));
        p.finish(cx, "svm", &scores, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, kernel, solve};
    use super::*;
    use nalgebra::DMatrix;

    fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
        m.transpose().iter().copied().collect()
    }

    #[test]
    fn a_separable_toy_problem_gets_the_max_margin_separator() {
        // Train: x₊ = (1, 2), x₋ = (0, 0) (the support vectors) and two far points. The
        // max-margin separator is the perpendicular bisector: w = (0.4, 0.8), b = −1.
        let x = DMatrix::from_row_slice(4, 2, &[1.0, 2.0, 0.0, 0.0, 5.0, 6.0, -3.0, -4.0]);
        let q = DMatrix::from_row_slice(3, 2, &[0.5, 1.0, 2.0, -1.0, 1.0, 1.0]);
        let labels = [1.0, 0.0, 1.0, 0.0];
        let t = kernel(4, 1, 4, row_major(&(&x * x.transpose())), &labels, &labels);
        let e = kernel(
            4,
            1,
            3,
            row_major(&(&x * q.transpose())),
            &labels,
            &[1.0, 0.0, 1.0],
        );
        let dir = tempfile::tempdir().unwrap();
        let extra = vec![("c", Value::Float(1e6)), ("tol", Value::Float(1e-10))];
        let p = solve(&Svm, &args(dir.path(), &t, &e, extra));
        for (row, qrow) in p.scores.iter().zip(q.row_iter()) {
            let want = 0.4 * qrow[0] + 0.8 * qrow[1] - 1.0;
            assert!(
                (row[1] - want).abs() < 1e-7 && (row[0] + want).abs() < 1e-7,
                "{row:?} vs {want}"
            );
        }
        assert_eq!(p.predicted(), vec![0, 0, 1]); // 0 → tie → first class; −1 → 0; 0.2 → 1
        assert_eq!(p.meta["support_vectors"], json!(2));
        assert!((p.meta["bias"].as_f64().unwrap() + 1.0).abs() < 1e-7);
    }

    #[test]
    fn multiclass_rows_predict_the_gold_class_on_a_block_kernel() {
        // N = 3, C = 3, K = I: each (example, class) row is its own feature; training points
        // are then predicted by the sign of their own row, i.e. the gold class wins.
        let id = DMatrix::<f64>::identity(9, 9);
        let labels = [2.0, 0.0, 1.0];
        let t = kernel(3, 3, 3, row_major(&id), &labels, &labels);
        let dir = tempfile::tempdir().unwrap();
        let p = solve(
            &Svm,
            &args(
                dir.path(),
                &t,
                &t,
                vec![("c", Value::Float(10.0)), ("tol", Value::Float(1e-3))],
            ),
        );
        assert_eq!(p.predicted(), vec![2, 0, 1]);
    }
}
