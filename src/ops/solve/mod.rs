//! `solve …`: kernel solvers of Malladi et al. (ICML 2023), methods.md §4.6.
//!
//! Every solver takes two kernels produced by the `kernel` family, both with the stored layout
//! `[N_train, C, N_X, C]` (training examples outer, as the paper's `compute_kernel_outer`):
//! `train_kernel` = the training set against itself (`kernel sgd(m, train, train, split=train)`) and
//! `eval_kernel` = the training set against the examples to predict (`kernel sgd(m, train,
//! eval)`). As the paper's `reshape_kernel_and_targets`, both are flattened to the full
//! cross-class matrices `K_train ∈ R^{NC×NC}` and `K_eval ∈ R^{NC×MC}`; targets are the
//! one-hot labels flattened to length N·C, or ±1 when C = 1 (the binary logit difference).
//! A solver fits coefficients on `K_train` and predicts `K_evalᵀα`, reshaped to `[M, C]`;
//! binary scores s become the two class scores `[−s, s]` as in the paper.
//!
//! Shared here: the common parameters, the σ_max-relative ridge, the min-norm least squares
//! and test fixtures; reading and checking the kernel pair, targets and the f0 correction
//! (`--adjust_for_init`: fit on `Y − f0/s`, predict `… + f0/s`) are in [`problem`].

pub mod asym;
pub mod features;
pub mod logistic;
pub mod logistic_fit;
pub mod lstsq;
pub mod multinomial;
pub mod predictions;
pub mod probe;
pub mod probe_head;
pub mod problem;
pub mod smo;
pub mod svm;

use crate::diag::OpError;
use crate::ops::{Const, Param};
use crate::types::Ty;
use nalgebra::{DMatrix, DVector};
pub use problem::{check_finite, Offsets, Problem};

pub const CODE: &str = "smelt::run::solve";

pub const P_TRAIN: Param = Param::req(
    "train_kernel",
    Ty::Matrix,
    "Kernel of the training set against itself, layout [N_train, C, N_train, C] \
     (`kernel sgd(model, train, train, split=train)`); its `train_labels` are the targets.",
);
pub const P_EVAL: Param = Param::req(
    "eval_kernel",
    Ty::Matrix,
    "Kernel of the same training set (outer) against the examples to predict (inner), layout \
     [N_train, C, N_X, C] (`kernel sgd(model, train, eval)`); its `eval_labels` are the gold labels.",
);
pub const P_REG: Param = Param::opt(
    "reg",
    Ty::Float,
    Const::Float(0.0),
    "Ridge relative to the largest singular value: K_train + reg·σ_max(K_train)·I \
     (`--kernel_regularization`).",
)
.range(0.0, 1e12);
pub const P_F0: Param = Param::opt(
    "f0",
    Ty::Bool,
    Const::Bool(false),
    "Correct for the pre-trained model's output (`--adjust_for_init`): fit Y − f0/s, predict \
     … + f0/s, with f0 the kernels' `train_f0` / `eval_f0` logits.",
);
pub const P_F0_SCALE: Param = Param::opt(
    "f0_scale",
    Ty::Float,
    Const::Float(1.0),
    "s in f0/s (`--f0_scaling`).",
)
.range(1e-12, 1e12);

/// The largest singular value.
pub fn sigma_max(k: &DMatrix<f64>) -> f64 {
    if k.is_empty() {
        return 0.0;
    }
    k.singular_values().max()
}

/// `K + reg·σ_max(K)·I` (unchanged when `reg` is 0), and the σ_max used (0 when unused).
pub fn regularize(k: &DMatrix<f64>, reg: f64) -> (DMatrix<f64>, f64) {
    if reg == 0.0 {
        return (k.clone(), 0.0);
    }
    let s = sigma_max(k);
    let mut out = k.clone();
    for i in 0..k.nrows().min(k.ncols()) {
        out[(i, i)] += reg * s;
    }
    (out, s)
}

/// Minimum-norm least-squares solution of `a·x = b` (SVD, singular values below
/// `ε·max(m, n)·σ_max` dropped, as LAPACK's `rcond` default), and the numerical rank.
pub fn min_norm_lstsq(
    a: &DMatrix<f64>,
    b: &DVector<f64>,
) -> Result<(DVector<f64>, usize), OpError> {
    let svd = a.clone().svd(true, true);
    let smax = svd.singular_values.max();
    let cut = f64::EPSILON * a.nrows().max(a.ncols()) as f64 * smax;
    let rank = svd.singular_values.iter().filter(|&&s| s > cut).count();
    let x = svd.solve(b, cut).map_err(|e| {
        OpError::new(CODE, format!("least squares failed: {e}"))
            .with_help("the kernel may contain NaN or infinite entries")
    })?;
    Ok((x, rank))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Hand-made kernels for the solver tests.
    use super::predictions::Predictions;
    use crate::ops::{Args, OpCtx};
    use crate::tensors::matrix::{Axis, Matrix};
    use crate::value::{Artifact, Kind, Value};
    use std::path::Path;
    use std::sync::Arc;

    fn axes() -> Vec<Axis> {
        ["train", "class", "eval", "class"]
            .iter()
            .map(|n| Axis::unlabelled(*n))
            .collect()
    }

    /// A kernel matrix `[n, c, m, c]` from the flattened `(n·c) × (m·c)` row-major values.
    pub fn kernel(
        n: usize,
        c: usize,
        m: usize,
        values: Vec<f64>,
        train_labels: &[f64],
        eval_labels: &[f64],
    ) -> Matrix {
        Matrix::new("kernel.test", vec![n, c, m, c], axes(), values)
            .unwrap()
            .with_extra("train_labels", vec![n], train_labels.to_vec())
            .with_extra("eval_labels", vec![m], eval_labels.to_vec())
            .with_meta("task", serde_json::json!("toy"))
            .with_meta("split", serde_json::json!("test"))
    }

    /// Writes `m` under `dir/name` and returns it as a Matrix artifact value.
    pub fn artifact(dir: &Path, name: &str, m: &Matrix) -> Value {
        let d = dir.join(name);
        m.write(&d).unwrap();
        Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir: d,
            key: crate::cache::Key::of_bytes(name.as_bytes()),
            data: m.artifact_data(),
        }))
    }

    /// Arguments for a solver: both kernels, then `extra` named values.
    pub fn args(
        dir: &Path,
        train: &Matrix,
        eval: &Matrix,
        extra: Vec<(&'static str, Value)>,
    ) -> Args {
        let mut v = vec![
            ("train_kernel", artifact(dir, "train", train)),
            ("eval_kernel", artifact(dir, "eval", eval)),
            ("reg", Value::Float(0.0)),
            ("f0", Value::Bool(false)),
            ("f0_scale", Value::Float(1.0)),
        ];
        for (k, x) in extra {
            if let Some(slot) = v.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = x;
            } else {
                v.push((k, x));
            }
        }
        Args::new(v)
    }

    /// Runs `op` and reads its predictions back.
    pub fn solve(op: &dyn crate::ops::Operator, args: &Args) -> Predictions {
        let out = tempfile::tempdir().unwrap();
        let mut cx = OpCtx::for_test(out.path().to_path_buf(), 0);
        let v = op.run(&mut cx, args).unwrap();
        Predictions::from_artifact(v.as_artifact().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_is_relative_to_the_largest_singular_value() {
        let k = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, 0.0, -3.0]);
        let (r, s) = regularize(&k, 0.5);
        assert!((s - 3.0).abs() < 1e-12);
        assert!((r[(0, 0)] - 2.5).abs() < 1e-12 && (r[(1, 1)] + 1.5).abs() < 1e-12);
        assert_eq!(regularize(&k, 0.0).0, k);
    }

    #[test]
    fn min_norm_lstsq_on_a_rank_one_matrix_is_the_pseudo_inverse() {
        // A = v vᵀ with v = (1, 2): A⁺ = v vᵀ / |v|⁴, so x = v (vᵀb) / 25.
        let a = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 2.0, 4.0]);
        let b = DVector::from_vec(vec![1.0, 0.0]);
        let (x, rank) = min_norm_lstsq(&a, &b).unwrap();
        assert_eq!(rank, 1);
        assert!((x[0] - 1.0 / 25.0).abs() < 1e-14 && (x[1] - 2.0 / 25.0).abs() < 1e-14);
    }
}
