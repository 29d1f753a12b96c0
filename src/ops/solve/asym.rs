//! `solve asym(train_kernel, eval_kernel, gamma=1, lambda=0.5, reg=…, f0=…)`: the LS-SVM for
//! asymmetric kernels (AsK-LS) that the paper uses with the A-SignGD kernel
//! (`AsymmetricLstsqKernelSolver`, methods.md §4.6). Binary kernels (C = 1) only.
//!
//! With `K(i, j) = ⟨sign ∇f(xᵢ), ∇f(xⱼ)⟩` on the training set and `H_ij = Yᵢ K_ij Yⱼ`, solve
//! `[[I/γ, H], [Hᵀ, I/γ]] [α; β] = 1` (no bias) by min-norm least squares, then predict
//! `λ·ω(x) + (1 − λ)·ν(x)` with `ω(x) = Σᵢ αᵢ Yᵢ K^A(i, x)` from the eval kernel and
//! `ν(x) = Σᵢ βᵢ Yᵢ K^A_flip(i, x)` from its `flipped` side array. The paper's code reads an
//! undefined `args.kernel_lambda` (an AttributeError); λ is an explicit parameter here,
//! default ½ (the two views weighted equally). As in the paper, `f0=true` replaces the ±1
//! targets Y by Y − f0/s inside H and adds f0/s to the prediction.

use super::{
    check_finite, min_norm_lstsq, regularize, Problem, CODE, P_EVAL, P_F0, P_F0_SCALE, P_REG,
    P_TRAIN,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;
use nalgebra::{DMatrix, DVector};
use serde_json::{json, Map};

pub struct Asym;

static SIG: Signature = Signature {
    id: "solve.asym",
    version: 1,
    summary: "LS-SVM for asymmetric kernels (A-SignGD): ω and ν from the kernel and its flip, mixed by λ.",
    doc: "Binary (C = 1) kernels only; the eval kernel must carry its `flipped` kernel \
          (`kernel asym_signgd`). Solves [[I/γ, H], [Hᵀ, I/γ]] [α; β] = 1 with H_ij = Yᵢ K_ij Yⱼ \
          (no bias, min-norm least squares) and scores λ·Σᵢ αᵢYᵢK(i, x) + (1 − λ)·Σᵢ βᵢYᵢK_flip(i, x). \
          With a symmetric kernel, α = β and this is the ordinary bias-free LS-SVM.",
    params: &[
        P_TRAIN,
        P_EVAL,
        Param::opt("gamma", Ty::Float, Const::Float(1.0), "γ, the LS-SVM regularisation constant (`--kernel_gamma`).").range(1e-12, 1e12),
        Param::opt("lambda", Ty::Float, Const::Float(0.5), "λ ∈ [0, 1], weight of ω (the paper's undefined `kernel_lambda`).").range(0.0, 1.0),
        P_REG,
        P_F0,
        P_F0_SCALE,
    ],
    returns: Ty::Predictions,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve asym(kernel asym_signgd(lm, few, few, split=train), kernel asym_signgd(lm, few, t), gamma=1.0, lambda=0.5)\nreport evaluate(p)"],
    reference: Some("Malladi et al. (ICML 2023), arXiv:2210.05643; He et al., Learning with asymmetric kernels: least squares and feature interpretation (TPAMI 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Asym {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let p = Problem::from_args(args)?;
        check_finite(&p)?;
        if !p.binary() {
            return Err(OpError::new(
                CODE,
                format!("solve asym needs a binary kernel (C = 1), got C = {}", p.c),
            )
            .with_help("compute the kernel with the binary logit difference (a two-class task)"));
        }
        let Some(flipped) = &p.k_eval_flipped else {
            return Err(OpError::new(CODE, "eval_kernel has no `flipped` kernel")
                .with_help("compute the eval kernel with `kernel asym_signgd`, which stores it"));
        };
        let gamma = args.float("gamma")?;
        let lambda = args.float("lambda")?;
        let reg = args.float("reg")?;
        let offsets = p.offsets(args)?;
        let (k, smax) = regularize(&p.k_train, reg);
        let mut y = DVector::from_vec(p.targets());
        if let Some((t, _)) = &offsets {
            y -= DVector::from_column_slice(t);
        }
        let (alpha, beta, rank) = fit(&k, &y, gamma)?;
        let omega = p.k_eval.tr_mul(&alpha.component_mul(&y));
        let nu = flipped.tr_mul(&beta.component_mul(&y));
        let mut pred = omega * lambda + nu * (1.0 - lambda);
        if let Some((_, e)) = &offsets {
            pred += DVector::from_column_slice(e);
        }
        let loss = super::lstsq::eval_mse(&p, pred.as_slice());
        let mut meta = Map::new();
        meta.insert("solver".into(), json!("asym"));
        meta.insert("gamma".into(), json!(gamma));
        meta.insert("lambda".into(), json!(lambda));
        meta.insert("reg".into(), json!(reg));
        meta.insert("sigma_max".into(), json!(smax));
        meta.insert("rank".into(), json!(rank));
        meta.insert("f0".into(), json!(offsets.is_some()));
        meta.insert("loss".into(), json!(loss));
        p.finish(cx, "asym", pred.as_slice(), meta)
    }
}

/// Solves the AsK-LS system for `(α, β)`; also returns the system's numerical rank.
pub fn fit(
    k: &DMatrix<f64>,
    y: &DVector<f64>,
    gamma: f64,
) -> Result<(DVector<f64>, DVector<f64>, usize), OpError> {
    let n = y.len();
    let h = DMatrix::from_fn(n, n, |i, j| y[i] * k[(i, j)] * y[j]);
    let mut a = DMatrix::zeros(2 * n, 2 * n);
    for i in 0..n {
        a[(i, i)] = 1.0 / gamma;
        a[(n + i, n + i)] = 1.0 / gamma;
    }
    a.view_mut((0, n), (n, n)).copy_from(&h);
    a.view_mut((n, 0), (n, n)).copy_from(&h.transpose());
    let (sol, rank) = min_norm_lstsq(&a, &DVector::from_element(2 * n, 1.0))?;
    Ok((
        sol.rows(0, n).into_owned(),
        sol.rows(n, n).into_owned(),
        rank,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{args, kernel, solve};
    use super::*;

    fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
        m.transpose().iter().copied().collect()
    }

    /// A 2-D toy problem: train points X (4), eval points Q (2), labels ±1.
    fn toy() -> (DMatrix<f64>, DMatrix<f64>, Vec<f64>) {
        let x = DMatrix::from_row_slice(4, 2, &[1.0, 0.5, 0.8, 1.2, -1.0, -0.3, -0.4, -1.1]);
        let q = DMatrix::from_row_slice(2, 2, &[0.6, 0.2, -0.5, -0.7]);
        (x, q, vec![1.0, 1.0, 0.0, 0.0])
    }

    #[test]
    fn a_symmetric_kernel_gives_the_standard_ls_svm_whatever_lambda() {
        let (x, q, labels) = toy();
        let k = &x * x.transpose();
        let ke = &x * q.transpose();
        let t = kernel(4, 1, 4, row_major(&k), &labels, &labels);
        let e = kernel(4, 1, 2, row_major(&ke), &labels, &[1.0, 0.0]).with_extra(
            "flipped",
            vec![4, 1, 2, 1],
            row_major(&ke),
        );
        // Textbook bias-free LS-SVM: (H + I/γ) a = 1, score(x) = Σ aᵢ yᵢ K(i, x).
        let gamma = 2.0;
        let y = [1.0, 1.0, -1.0, -1.0];
        let h = DMatrix::from_fn(4, 4, |i, j| y[i] * k[(i, j)] * y[j])
            + DMatrix::identity(4, 4) / gamma;
        let a = h.lu().solve(&DVector::from_element(4, 1.0)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for lambda in [0.0, 0.3, 1.0] {
            let extra = vec![
                ("gamma", Value::Float(gamma)),
                ("lambda", Value::Float(lambda)),
            ];
            let p = solve(&Asym, &args(dir.path(), &t, &e, extra));
            for xi in 0..2 {
                let want: f64 = (0..4).map(|i| a[i] * y[i] * ke[(i, xi)]).sum();
                assert!(
                    (p.scores[xi][1] - want).abs() < 1e-9,
                    "λ={lambda}: {} vs {want}",
                    p.scores[xi][1]
                );
            }
            assert_eq!(p.predicted(), vec![1, 0]);
        }
    }

    #[test]
    fn an_asymmetric_kernel_matches_the_schur_complement_solution() {
        let (x, q, labels) = toy();
        // Asymmetric "kernels": K(i, j) = ⟨sign xᵢ, xⱼ⟩ on the train set, eval K(i, x) =
        // ⟨sign xᵢ, q⟩ and flipped K_flip(i, x) = ⟨sign q, xᵢ⟩ — the A-SignGD construction.
        let sx = x.map(f64::signum);
        let sq = q.map(f64::signum);
        let k = &sx * x.transpose();
        let ke = &sx * q.transpose();
        let kf = &x * sq.transpose();
        let t = kernel(4, 1, 4, row_major(&k), &labels, &labels);
        let e = kernel(4, 1, 2, row_major(&ke), &labels, &[1.0, 0.0]).with_extra(
            "flipped",
            vec![4, 1, 2, 1],
            row_major(&kf),
        );
        let (gamma, lambda) = (0.5, 0.25);
        // Independent solution: α = γ(1 − Hβ), (I/γ − γHᵀH) β = 1 − γHᵀ1.
        let y = DVector::from_vec(vec![1.0, 1.0, -1.0, -1.0]);
        let h = DMatrix::from_fn(4, 4, |i, j| y[i] * k[(i, j)] * y[j]);
        let ones = DVector::from_element(4, 1.0);
        let lhs = DMatrix::identity(4, 4) / gamma - h.transpose() * &h * gamma;
        let beta = lhs
            .lu()
            .solve(&(&ones - h.transpose() * &ones * gamma))
            .unwrap();
        let alpha = (&ones - &h * &beta) * gamma;
        let dir = tempfile::tempdir().unwrap();
        let extra = vec![
            ("gamma", Value::Float(gamma)),
            ("lambda", Value::Float(lambda)),
        ];
        let p = solve(&Asym, &args(dir.path(), &t, &e, extra));
        for xi in 0..2 {
            let omega: f64 = (0..4).map(|i| alpha[i] * y[i] * ke[(i, xi)]).sum();
            let nu: f64 = (0..4).map(|i| beta[i] * y[i] * kf[(i, xi)]).sum();
            let want = lambda * omega + (1.0 - lambda) * nu;
            assert!(
                (p.scores[xi][1] - want).abs() < 1e-9,
                "{} vs {want}",
                p.scores[xi][1]
            );
        }
        assert_ne!(alpha, beta);
    }

    #[test]
    fn multiclass_or_unflipped_kernels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = kernel(1, 1, 1, vec![1.0], &[1.0], &[1.0]);
        let out = tempfile::tempdir().unwrap();
        let mut cx = OpCtx::for_test(out.path().to_path_buf(), 0);
        let extra = || vec![("gamma", Value::Float(1.0)), ("lambda", Value::Float(0.5))];
        let e = Asym
            .run(&mut cx, &args(dir.path(), &t, &t, extra()))
            .unwrap_err();
        assert!(e.message.contains("flipped"), "{}", e.message);
        let m = kernel(1, 2, 1, vec![1.0, 0.0, 0.0, 1.0], &[1.0], &[1.0]);
        let e = Asym
            .run(&mut cx, &args(dir.path(), &m, &m, extra()))
            .unwrap_err();
        assert!(e.message.contains("C = 2"), "{}", e.message);
    }
}
