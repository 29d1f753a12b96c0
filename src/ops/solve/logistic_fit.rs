//! L2-regularised binary logistic regression with an intercept and fixed offsets, fitted by
//! damped Newton (nalgebra), and the cross-validation of scikit-learn's `LogisticRegressionCV`.
//!
//! Objective (scikit-learn's, intercept unpenalised):
//! `L(w, b) = Σᵢ [log(1 + e^{zᵢ}) − yᵢ zᵢ] + ‖w‖² / (2C)`, `zᵢ = xᵢ·w + b + oᵢ`, `yᵢ ∈ {0, 1}`;
//! `oᵢ` is a fixed per-row offset (the f0 correction; zero for the paper's solver). The
//! objective is strictly convex in w, so Newton with backtracking reaches the same optimum as
//! scikit-learn's L-BFGS (to tighter tolerance). Written here rather than with `linfa-logistic`
//! because that crate has no per-row offsets and penalises differently; see `logistic.rs`.
//!
//! Folds: `StratifiedKFold(n_splits, shuffle=False)` reproduced exactly (scikit-learn 0.24's
//! `_make_test_folds`); the grid `Cs = logspace(-4, 4, n)`; the best C maximises the summed
//! fold accuracy, first maximum on ties; then a refit on all rows.

use super::CODE;
use crate::diag::OpError;
use nalgebra::{DMatrix, DVector};

/// A fitted model.
#[derive(Debug, Clone)]
pub struct Fit {
    pub w: DVector<f64>,
    pub b: f64,
    pub iters: usize,
    pub converged: bool,
}

impl Fit {
    /// `z = X w + b + o` for every row.
    pub fn decision(&self, x: &DMatrix<f64>, offset: &[f64]) -> Vec<f64> {
        let z = x * &self.w;
        z.iter().zip(offset).map(|(z, o)| z + self.b + o).collect()
    }
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The objective at `(w, b)`.
pub fn objective(
    x: &DMatrix<f64>,
    y: &[f64],
    offset: &[f64],
    c: f64,
    w: &DVector<f64>,
    b: f64,
) -> f64 {
    let z = x * w;
    let data: f64 = z
        .iter()
        .zip(y)
        .zip(offset)
        .map(|((z, y), o)| softplus(z + b + o) - y * (z + b + o))
        .sum();
    data + w.norm_squared() / (2.0 * c)
}

/// The gradient `(∂L/∂w, ∂L/∂b)`.
pub fn gradient(
    x: &DMatrix<f64>,
    y: &[f64],
    offset: &[f64],
    c: f64,
    w: &DVector<f64>,
    b: f64,
) -> (DVector<f64>, f64) {
    let z = x * w;
    let r = DVector::from_iterator(
        y.len(),
        z.iter()
            .zip(y)
            .zip(offset)
            .map(|((z, y), o)| sigmoid(z + b + o) - y),
    );
    (x.tr_mul(&r) + w / c, r.sum())
}

/// Minimises the objective from `start` (warm start) or zero.
pub fn fit(x: &DMatrix<f64>, y: &[f64], offset: &[f64], c: f64, start: Option<&Fit>) -> Fit {
    let d = x.ncols();
    let (mut w, mut b) = start.map_or((DVector::zeros(d), 0.0), |s| (s.w.clone(), s.b));
    let mut obj = objective(x, y, offset, c, &w, b);
    let max_iter = 200;
    let mut tiny = 0;
    for iter in 0..max_iter {
        let (gw, gb) = gradient(x, y, offset, c, &w, b);
        let gmax = gw.amax().max(gb.abs());
        if gmax <= 1e-10 * (1.0 + obj.abs()) {
            return Fit {
                w,
                b,
                iters: iter,
                converged: true,
            };
        }
        // Hessian of (w, b): X̃ᵀ D X̃ + diag(1/C, …, 1/C, 0), X̃ = [X, 1].
        let z = x * &w;
        let dv: Vec<f64> = z
            .iter()
            .zip(offset)
            .map(|(z, o)| {
                let p = sigmoid(z + b + o);
                p * (1.0 - p)
            })
            .collect();
        let mut xt = DMatrix::zeros(x.nrows(), d + 1);
        xt.view_mut((0, 0), (x.nrows(), d)).copy_from(x);
        xt.column_mut(d).fill(1.0);
        let mut xd = xt.clone();
        for (i, &di) in dv.iter().enumerate() {
            xd.row_mut(i).scale_mut(di);
        }
        let mut h = xt.transpose() * &xd; // gemm (tr_mul takes dot products)
        for i in 0..d {
            h[(i, i)] += 1.0 / c;
        }
        let mut g = DVector::zeros(d + 1);
        g.rows_mut(0, d).copy_from(&gw);
        g[d] = gb;
        let step = newton_step(h, &g);
        let slope = g.dot(&step);
        if slope.abs() <= 1e-12 * (1.0 + obj.abs()) {
            // Quadratic regime: the decrease is below the objective's rounding, so take the
            // full Newton step unchecked; a few of these reach the gradient tolerance.
            w -= step.rows(0, d);
            b -= step[d];
            obj = objective(x, y, offset, c, &w, b);
            tiny += 1;
            if tiny >= 4 {
                let (gw, gb) = gradient(x, y, offset, c, &w, b);
                let converged = gw.amax().max(gb.abs()) <= 1e-7 * (1.0 + obj.abs());
                return Fit {
                    w,
                    b,
                    iters: iter + 1,
                    converged,
                };
            }
            continue;
        }
        // Backtracking (Armijo) on the objective.
        let mut t = 1.0;
        let mut moved = false;
        for _ in 0..60 {
            let w2 = &w - step.rows(0, d) * t;
            let b2 = b - step[d] * t;
            let o2 = objective(x, y, offset, c, &w2, b2);
            if o2 <= obj - 1e-4 * t * slope {
                moved = o2 < obj;
                w = w2;
                b = b2;
                obj = o2;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            // No decrease at machine precision: as good as it gets.
            return Fit {
                w,
                b,
                iters: iter + 1,
                converged: gmax <= 1e-6 * (1.0 + obj.abs()),
            };
        }
    }
    Fit {
        w,
        b,
        iters: max_iter,
        converged: false,
    }
}

/// Solves `H s = g` (Cholesky; LU, then a jittered diagonal, when H is singular).
fn newton_step(h: DMatrix<f64>, g: &DVector<f64>) -> DVector<f64> {
    if let Some(ch) = h.clone().cholesky() {
        return ch.solve(g);
    }
    if let Some(s) = h.clone().lu().solve(g) {
        if s.iter().all(|v| v.is_finite()) {
            return s;
        }
    }
    let scale = h.diagonal().amax().max(1.0);
    let mut hj = h;
    for i in 0..hj.nrows() {
        hj[(i, i)] += 1e-10 * scale;
    }
    hj.lu().solve(g).unwrap_or_else(|| g.clone())
}

/// `logspace(-4, 4, n)`, scikit-learn's grid for `Cs = n`.
pub fn log_cs(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![1e-4];
    }
    (0..n)
        .map(|i| 10f64.powf(-4.0 + 8.0 * i as f64 / (n - 1) as f64))
        .collect()
}

/// The test fold of every row: `StratifiedKFold(k, shuffle=False)` of scikit-learn 0.24.
pub fn stratified_folds(y: &[u32], k: usize) -> Result<Vec<usize>, OpError> {
    // Classes encoded in order of first appearance.
    let mut order: Vec<u32> = Vec::new();
    for &l in y {
        if !order.contains(&l) {
            order.push(l);
        }
    }
    let enc: Vec<usize> = y
        .iter()
        .map(|l| order.iter().position(|o| o == l).unwrap())
        .collect();
    let mut counts = vec![0usize; order.len()];
    for &e in &enc {
        counts[e] += 1;
    }
    if k < 2 || counts.iter().all(|&n| n < k) || y.len() < k {
        return Err(OpError::new(
            CODE,
            format!("{k}-fold cross-validation needs at least {k} rows of some class; class counts are {counts:?}"),
        )
        .with_help("use fewer folds, or give a fixed `c` to skip cross-validation"));
    }
    let mut sorted = enc.clone();
    sorted.sort_unstable();
    // allocation[f][class] = how many of that class fold f gets (sorted[f::k]).
    let mut alloc = vec![vec![0usize; order.len()]; k];
    for (i, &e) in sorted.iter().enumerate() {
        alloc[i % k][e] += 1;
    }
    let mut folds = vec![0usize; y.len()];
    for class in 0..order.len() {
        let mut seq = Vec::new();
        for (f, a) in alloc.iter().enumerate() {
            seq.extend(std::iter::repeat_n(f, a[class]));
        }
        let rows = enc
            .iter()
            .enumerate()
            .filter(|(_, &e)| e == class)
            .map(|(i, _)| i);
        for (row, f) in rows.zip(seq) {
            folds[row] = f;
        }
    }
    Ok(folds)
}

/// Cross-validates C over `cs`: returns the summed fold accuracy of each C.
pub fn cv_scores(
    x: &DMatrix<f64>,
    y: &[f64],
    offset: &[f64],
    cs: &[f64],
    k: usize,
) -> Result<Vec<f64>, OpError> {
    let labels: Vec<u32> = y.iter().map(|&v| u32::from(v > 0.5)).collect();
    let folds = stratified_folds(&labels, k)?;
    let mut scores = vec![0.0; cs.len()];
    for f in 0..k {
        let train: Vec<usize> = (0..y.len()).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..y.len()).filter(|&i| folds[i] == f).collect();
        let pick = |rows: &[usize]| {
            (
                x.select_rows(rows),
                rows.iter().map(|&i| y[i]).collect::<Vec<_>>(),
                rows.iter().map(|&i| offset[i]).collect::<Vec<_>>(),
            )
        };
        let (xtr, ytr, otr) = pick(&train);
        let (xte, yte, ote) = pick(&test);
        let mut prev: Option<Fit> = None;
        for (ci, &c) in cs.iter().enumerate() {
            let m = fit(&xtr, &ytr, &otr, c, prev.as_ref());
            let z = m.decision(&xte, &ote);
            let hits = z
                .iter()
                .zip(&yte)
                .filter(|(z, y)| (**z > 0.0) == (**y > 0.5))
                .count();
            scores[ci] += hits as f64 / test.len().max(1) as f64;
            prev = Some(m);
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_zeroes_the_gradient_of_the_regularised_objective() {
        // 2-D toy problem, overlapping classes, with offsets.
        let x = DMatrix::from_row_slice(
            6,
            2,
            &[0.0, 1.0, 1.0, 0.5, 2.0, 2.0, -1.0, 0.0, 0.5, -1.0, 1.5, 0.2],
        );
        let y = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let o = [0.0, 0.3, -0.2, 0.0, 0.1, 0.0];
        for c in [1e-2, 1.0, 1e3] {
            let m = fit(&x, &y, &o, c, None);
            assert!(m.converged);
            let (gw, gb) = gradient(&x, &y, &o, c, &m.w, m.b);
            assert!(gw.amax() < 1e-8 && gb.abs() < 1e-8, "c={c}: {gw} {gb}");
            // A minimum: perturbing any coordinate raises the objective.
            let base = objective(&x, &y, &o, c, &m.w, m.b);
            for i in 0..2 {
                let mut w2 = m.w.clone();
                w2[i] += 1e-3;
                assert!(objective(&x, &y, &o, c, &w2, m.b) > base);
            }
        }
    }

    #[test]
    fn one_feature_without_intercept_signal_matches_the_scalar_equation() {
        // Rows x = ±1 with labels 1/0 and no offset: by symmetry b = 0, and with σ(−w) =
        // 1 − σ(w) the stationarity condition is ∂L/∂w = −4(1 − σ(w)) + w/C = 0 (C = 1).
        let x = DMatrix::from_row_slice(4, 1, &[1.0, 1.0, -1.0, -1.0]);
        let y = [1.0, 1.0, 0.0, 0.0];
        let m = fit(&x, &y, &[0.0; 4], 1.0, None);
        let w = m.w[0];
        assert!(m.b.abs() < 1e-10);
        assert!((-4.0 * (1.0 - sigmoid(w)) + w).abs() < 1e-10, "w = {w}");
    }

    #[test]
    fn folds_match_scikit_learn() {
        // scikit-learn's allocation rule: sorted labels [0,0,0,0,1,1,1,1], fold f takes
        // sorted[f::3] → per fold (class 0, class 1) = (2,1), (1,2), (1,1). Class 0 (rows
        // 0,1,2,7) gets folds [0,0,1,2] in row order; class 1 (rows 3,4,5,6) [0,1,1,2].
        let y = [0, 0, 0, 1, 1, 1, 1, 0];
        assert_eq!(
            stratified_folds(&y, 3).unwrap(),
            vec![0, 0, 1, 0, 1, 1, 2, 2]
        );
        assert!(stratified_folds(&[0, 1, 1], 5).is_err());
    }

    #[test]
    fn the_grid_is_logspace() {
        let cs = log_cs(10);
        assert_eq!(cs.len(), 10);
        assert!((cs[0] - 1e-4).abs() < 1e-18 && (cs[9] - 1e4).abs() < 1e-9);
        assert!((cs[1] / cs[0] - 10f64.powf(8.0 / 9.0)).abs() < 1e-9);
    }
}
