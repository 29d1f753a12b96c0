//! `solve logistic(train_kernel, eval_kernel, c=…, cs=10, folds=5, reg=…, f0=…)`: the paper's
//! default solver (`LogisticKernelSolver`, methods.md §4.6) — L2 logistic regression with the
//! rows of the training kernel as features and C chosen by stratified cross-validation.
//!
//! As `LogisticRegressionCV(max_iter=10000, random_state=0)` on `K_train` (after the optional
//! ridge): feature vector of a training row (i, c) = `K_train[(i, c), ·]`, target 1 when c is
//! i's gold class (binary C = 1 kernels: when the label is positive); an eval row (x, c') uses
//! `K_eval[·, (x, c')]`. Its score is the fitted logit `log p₁ − log p₀`, reshaped to [M, C].
//! The optimiser is a damped Newton method of our own (`logistic_fit.rs`, nalgebra) instead of
//! `linfa-logistic`: it reaches the same optimum and supports the fixed per-row offsets the f0
//! correction needs. `f0=true` is an extension: the paper's logistic solver ignores f0; here
//! f0/s enters every logit as an offset, in training and prediction.
//!
//! Cost: each Newton step forms a (NC+1)² Hessian from NC rows; the default grid fits 51
//! models (10 C × 5 folds + refit). Fine at K = 16/64 for binary tasks; K = 512 with many
//! classes (NC ≈ 3000) takes minutes, as the paper notes for scikit-learn.

use super::logistic_fit::{cv_scores, fit, log_cs};
use super::{check_finite, regularize, Problem, CODE, P_EVAL, P_F0, P_F0_SCALE, P_REG, P_TRAIN};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;
use serde_json::{json, Map};

pub struct Logistic;

static SIG: Signature = Signature {
    id: "solve.logistic",
    version: 1,
    summary: "L2 logistic regression on kernel rows, C by stratified cross-validation (the paper's default solver).",
    doc: "Features of an (example, class) row are its row of the training kernel; the target is \
          whether the class is the example's gold class (binary C = 1 kernels: whether the label \
          is positive). C is chosen from `cs` log-spaced values in [1e-4, 1e4] by `folds`-fold \
          stratified cross-validation on accuracy (scikit-learn's `LogisticRegressionCV` \
          defaults), or fixed with `c`. Class scores are the fitted logits of the eval rows. The \
          intercept is not penalised. `f0=true` adds f0/s to every logit as a fixed offset (an \
          extension: the paper's logistic solver ignores f0).",
    params: &[
        P_TRAIN,
        P_EVAL,
        Param::opt("c", Ty::Opt(&Ty::Float), Const::None, "Inverse regularisation strength; `none` cross-validates it.").range(1e-12, 1e12),
        Param::opt("cs", Ty::Int, Const::Int(10), "Size of the C grid logspace(-4, 4, cs).").range(1.0, 1000.0),
        Param::opt("folds", Ty::Int, Const::Int(5), "Cross-validation folds (StratifiedKFold, no shuffling).").range(2.0, 1000.0),
        P_REG,
        P_F0,
        P_F0_SCALE,
    ],
    returns: Ty::Predictions,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve logistic(kernel sgd(lm, few, few, split=train), kernel sgd(lm, few, t))\nreport evaluate(p)"],
    reference: Some("Malladi et al., A Kernel-Based View of Language Model Fine-Tuning (ICML 2023), arXiv:2210.05643"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Logistic {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let p = Problem::from_args(args)?;
        check_finite(&p)?;
        let reg = args.float("reg")?;
        let (x, _) = regularize(&p.k_train, reg);
        let y: Vec<f64> = p.targets().iter().map(|&t| f64::from(t > 0.0)).collect();
        if y.iter().all(|&v| v == y[0]) {
            return Err(OpError::new(
                CODE,
                "every training row has the same target; logistic regression needs both",
            )
            .with_help("the training set must contain more than one class"));
        }
        let offsets = p.offsets(args)?;
        let (o_train, o_eval) = offsets
            .clone()
            .unwrap_or_else(|| (vec![0.0; y.len()], vec![0.0; p.m * p.c]));
        let mut meta = Map::new();
        let c = match args.opt_float("c")? {
            Some(c) => c,
            None => {
                let cs = log_cs(args.int("cs")?.max(1) as usize);
                let folds = args.int("folds")?.max(2) as usize;
                let scores = cv_scores(&x, &y, &o_train, &cs, folds)?;
                let mut best = 0;
                for (i, &s) in scores.iter().enumerate() {
                    if s > scores[best] {
                        best = i;
                    }
                }
                meta.insert("cs".into(), json!(cs));
                meta.insert(
                    "cv_accuracy".into(),
                    json!(scores.iter().map(|s| s / folds as f64).collect::<Vec<_>>()),
                );
                cs[best]
            }
        };
        let model = fit(&x, &y, &o_train, c, None);
        let eval_rows = p.k_eval.transpose();
        let z = model.decision(&eval_rows, &o_eval);
        let eval_y: Vec<f64> = eval_targets(&p);
        let ce = z
            .iter()
            .zip(&eval_y)
            .map(|(z, y)| softplus(*z) - y * z)
            .sum::<f64>()
            / z.len().max(1) as f64;
        meta.insert("solver".into(), json!("logistic"));
        meta.insert("c".into(), json!(c));
        meta.insert("reg".into(), json!(reg));
        meta.insert("f0".into(), json!(offsets.is_some()));
        meta.insert("newton_iters".into(), json!(model.iters));
        meta.insert("converged".into(), json!(model.converged));
        meta.insert("loss".into(), json!(ce));
        p.finish(cx, "logistic", &z, meta)
    }
}

/// Binary targets of the eval rows (gold class / positive label).
fn eval_targets(p: &Problem) -> Vec<f64> {
    let mut y = Vec::with_capacity(p.m * p.c);
    for &l in &p.eval_labels {
        if p.binary() {
            y.push(f64::from(l == 1));
        } else {
            y.extend((0..p.c).map(|k| f64::from(k as u32 == l)));
        }
    }
    y
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, kernel, solve};
    use super::super::logistic_fit::gradient;
    use super::*;
    use nalgebra::{DMatrix, DVector};

    /// A 2-D toy problem: points xᵢ ∈ R², linear kernel K = X Xᵀ (binary, C = 1).
    fn toy() -> (DMatrix<f64>, Vec<f64>, DMatrix<f64>) {
        let x = DMatrix::from_row_slice(
            8,
            2,
            &[
                1.0, 2.0, 2.0, 1.0, 1.5, 1.5, 0.2, 0.4, // class 1 (first three), then mixed
                -1.0, -1.0, -2.0, 0.5, -0.5, -1.5, 0.3, -0.2,
            ],
        );
        let labels = vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let q = DMatrix::from_row_slice(2, 2, &[0.5, 0.5, -0.3, 0.1]);
        (x, labels, q)
    }

    fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
        m.transpose().iter().copied().collect()
    }

    #[test]
    fn fixed_c_gives_the_textbook_optimum_on_a_2d_problem() {
        let (x, labels, q) = toy();
        let k = &x * x.transpose();
        let ke = &x * q.transpose(); // 8 train × 2 eval
        let t = kernel(8, 1, 8, row_major(&k), &labels, &labels);
        let e = kernel(8, 1, 2, row_major(&ke), &labels, &[1.0, 0.0]);
        let dir = tempfile::tempdir().unwrap();
        let c = 0.7;
        let p = solve(
            &Logistic,
            &args(dir.path(), &t, &e, vec![("c", Value::Float(c))]),
        );
        // The textbook optimum is the stationary point of the objective: fit, check ∇ = 0 by
        // an independent formula, and check the op's logits are that optimum's.
        let y: Vec<f64> = labels.clone();
        let m = fit(&k, &y, &[0.0; 8], c, None);
        let (gw, gb) = gradient(&k, &y, &[0.0; 8], c, &m.w, m.b);
        assert!(gw.amax() < 1e-8 && gb.abs() < 1e-8);
        // ∇ = 0 of Σ log(1 + e^z) − y z + ‖w‖²/(2C) written out independently here:
        let z = &k * &m.w + DVector::from_element(8, m.b);
        let r: Vec<f64> = z
            .iter()
            .zip(&y)
            .map(|(z, y)| 1.0 / (1.0 + (-z).exp()) - y)
            .collect();
        for j in 0..8 {
            let g: f64 = (0..8).map(|i| r[i] * k[(i, j)]).sum::<f64>() + m.w[j] / c;
            assert!(g.abs() < 1e-8, "∂/∂w{j} = {g}");
        }
        assert!(r.iter().sum::<f64>().abs() < 1e-8);
        for (xi, row) in p.scores.iter().enumerate() {
            let want: f64 = (0..8).map(|i| m.w[i] * ke[(i, xi)]).sum::<f64>() + m.b;
            assert!((row[1] - want).abs() < 1e-9 && (row[0] + want).abs() < 1e-9);
        }
        assert_eq!(p.meta["c"], json!(c));
    }

    #[test]
    fn cross_validation_picks_the_best_grid_point_and_refits() {
        let (x, labels, q) = toy();
        let k = &x * x.transpose();
        let ke = &x * q.transpose();
        let t = kernel(8, 1, 8, row_major(&k), &labels, &labels);
        let e = kernel(8, 1, 2, row_major(&ke), &labels, &[1.0, 0.0]);
        let dir = tempfile::tempdir().unwrap();
        let a = args(
            dir.path(),
            &t,
            &e,
            vec![
                ("c", Value::None),
                ("cs", Value::Int(5)),
                ("folds", Value::Int(2)),
            ],
        );
        let p = solve(&Logistic, &a);
        let cs = log_cs(5);
        let scores = cv_scores(&k, &labels, &[0.0; 8], &cs, 2).unwrap();
        let best = scores
            .iter()
            .enumerate()
            .fold(0, |b, (i, &s)| if s > scores[b] { i } else { b });
        assert_eq!(p.meta["c"], json!(cs[best]));
        let m = fit(&k, &labels, &[0.0; 8], cs[best], None);
        let want: f64 = (0..8).map(|i| m.w[i] * ke[(i, 0)]).sum::<f64>() + m.b;
        assert!((p.scores[0][1] - want).abs() < 1e-9);
    }

    #[test]
    fn multiclass_rows_are_is_gold_class_targets() {
        // N = 3, C = 2, K = I (6×6): each row only sees itself, so the logit of row (i, c) is
        // w_(i,c) + b, larger for gold rows; predicting on the training set recovers labels.
        let id = DMatrix::<f64>::identity(6, 6);
        let labels = [0.0, 1.0, 1.0];
        let t = kernel(3, 2, 3, row_major(&id), &labels, &labels);
        let dir = tempfile::tempdir().unwrap();
        let p = solve(
            &Logistic,
            &args(dir.path(), &t, &t, vec![("c", Value::Float(10.0))]),
        );
        assert_eq!(p.predicted(), vec![0, 1, 1]);
        assert_eq!(p.scores[0].len(), 2);
    }
}
