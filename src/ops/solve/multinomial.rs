//! L2-regularised multinomial (softmax) logistic regression with intercepts, fitted by damped
//! Newton (nalgebra), and its `LogisticRegressionCV` cross-validation — the linear-probing
//! solver of LM-BFF's `LinearHeadTrainer` (methods.md §4.6: `multi_class="multinomial"`,
//! `max_iter=5000`, `random_state=0`, scikit-learn's defaults otherwise).
//!
//! Objective (scikit-learn's multinomial loss, intercepts unpenalised):
//! `L(W, b) = Σᵢ [logsumexp(zᵢ) − zᵢ,yᵢ] + ‖W‖²_F / (2C)`, `zᵢ = W xᵢ + b`, W ∈ R^{K×d}.
//!
//! Reduction: every stationarity condition gives `W_c = −C Σᵢ (pᵢc − yᵢc) xᵢ`, so the optimal
//! rows lie in the span of the training rows. With the thin SVD `X = U S Vᵀ` (rank r ≤ n) the
//! problem in the coordinates `x̃ = Vᵀx` has the same optimum `W = B Vᵀ` and an isotropic
//! penalty ‖B‖², so Newton works on K·(r + 1) unknowns instead of K·(d + 1) (d = 768 for
//! RoBERTa-base, n = 32 at K = 16). The rows of any cross-validation fold lie in the same span,
//! so one projection serves every fit. `b₀` is pinned to 0 (softmax is shift-invariant), which
//! makes the Hessian positive definite; predictions are unaffected.

use super::logistic_fit::stratified_folds;
use nalgebra::{DMatrix, DVector};

/// A fitted model in the reduced coordinates: logits `z = B x̃ + b`.
#[derive(Debug, Clone)]
pub struct Softmax {
    /// `K × r`.
    pub w: DMatrix<f64>,
    pub b: DVector<f64>,
    pub iters: usize,
    pub converged: bool,
}

impl Softmax {
    /// Logits `[n, K]` of the rows of `x` (`n × r`).
    pub fn logits(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        let mut z = x * self.w.transpose();
        for mut row in z.row_iter_mut() {
            row += self.b.transpose();
        }
        z
    }
}

/// The orthonormal basis `V` (`d × r`) of the row span of `x`: right singular vectors with
/// singular values above `ε·max(n, d)·σ_max`.
pub fn row_basis(x: &DMatrix<f64>) -> DMatrix<f64> {
    let svd = x.clone().svd(false, true);
    let vt = svd.v_t.expect("v_t requested");
    let smax = svd.singular_values.max();
    let cut = f64::EPSILON * x.nrows().max(x.ncols()) as f64 * smax;
    let keep: Vec<usize> = (0..svd.singular_values.len())
        .filter(|&i| svd.singular_values[i] > cut)
        .collect();
    vt.select_rows(&keep).transpose()
}

fn probs(z: &DMatrix<f64>) -> DMatrix<f64> {
    let mut p = z.clone();
    for mut row in p.row_iter_mut() {
        let m = row.max();
        row.apply(|v| *v = (*v - m).exp());
        let s = row.sum();
        row /= s;
    }
    p
}

/// The objective at `m`.
pub fn objective(x: &DMatrix<f64>, y: &[u32], c: f64, m: &Softmax) -> f64 {
    let z = m.logits(x);
    let mut total = 0.0;
    for (i, row) in z.row_iter().enumerate() {
        let mx = row.max();
        let lse = row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() + mx;
        total += lse - row[y[i] as usize];
    }
    total + m.w.norm_squared() / (2.0 * c)
}

/// Gradient and Hessian in the layout `θ = [w₀ (r), b₀, w₁, b₁, …]` with `b₀` pinned.
fn newton_system(x: &DMatrix<f64>, y: &[u32], c: f64, m: &Softmax) -> (DVector<f64>, DMatrix<f64>) {
    let (n, r) = (x.nrows(), x.ncols());
    let k = m.w.nrows();
    let d = r + 1;
    let p = probs(&m.logits(x));
    let mut g = DVector::<f64>::zeros(k * d);
    let mut h = DMatrix::<f64>::zeros(k * d, k * d);
    let mut xh = DVector::<f64>::zeros(d);
    for i in 0..n {
        for j in 0..r {
            xh[j] = x[(i, j)];
        }
        xh[r] = 1.0;
        let outer = &xh * xh.transpose();
        for a in 0..k {
            let resid = p[(i, a)] - f64::from(y[i] as usize == a);
            g.rows_mut(a * d, d).axpy(resid, &xh, 1.0);
            for bcls in 0..k {
                let wgt = p[(i, a)] * (f64::from(a == bcls) - p[(i, bcls)]);
                if wgt != 0.0 {
                    h.view_mut((a * d, bcls * d), (d, d))
                        .zip_apply(&outer, |hv, o| *hv += wgt * o);
                }
            }
        }
    }
    for a in 0..k {
        for j in 0..r {
            g[a * d + j] += m.w[(a, j)] / c;
            h[(a * d + j, a * d + j)] += 1.0 / c;
        }
    }
    // Pin b₀: zero its gradient, decouple its row and column.
    let b0 = r;
    g[b0] = 0.0;
    for j in 0..k * d {
        h[(b0, j)] = 0.0;
        h[(j, b0)] = 0.0;
    }
    h[(b0, b0)] = 1.0;
    (g, h)
}

/// Minimises the objective from zero (or `start`) by Newton steps with backtracking.
pub fn fit(x: &DMatrix<f64>, y: &[u32], k: usize, c: f64, start: Option<&Softmax>) -> Softmax {
    let (r, d) = (x.ncols(), x.ncols() + 1);
    let mut m = start.cloned().unwrap_or(Softmax {
        w: DMatrix::zeros(k, r),
        b: DVector::zeros(k),
        iters: 0,
        converged: false,
    });
    m.iters = 0;
    m.converged = false;
    let tol = 1e-9 * (1.0 + x.nrows() as f64);
    let mut f = objective(x, y, c, &m);
    for it in 0..200 {
        let (g, h) = newton_system(x, y, c, &m);
        m.iters = it;
        if g.amax() <= tol {
            m.converged = true;
            break;
        }
        let step = match h.clone().cholesky() {
            Some(ch) => ch.solve(&g),
            None => {
                let mut hj = h;
                let s = hj.diagonal().amax().max(1.0);
                for i in 0..hj.nrows() {
                    hj[(i, i)] += 1e-8 * s;
                }
                hj.lu().solve(&g).unwrap_or_else(|| g.clone())
            }
        };
        let slope = -g.dot(&step);
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-12 {
            let mut cand = m.clone();
            for a in 0..k {
                for j in 0..r {
                    cand.w[(a, j)] -= t * step[a * d + j];
                }
                cand.b[a] -= t * step[a * d + r];
            }
            let fc = objective(x, y, c, &cand);
            if fc <= f + 1e-4 * t * slope {
                m = cand;
                f = fc;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            // No decrease is possible at f64 precision: we are at the optimum.
            m.converged = g.amax() <= 1e-6 * (1.0 + x.nrows() as f64);
            break;
        }
    }
    m
}

/// Row-wise argmax (first maximum).
pub fn argmax(z: &DMatrix<f64>) -> Vec<u32> {
    z.row_iter()
        .map(|row| {
            let mut best = 0;
            for j in 1..row.len() {
                if row[j] > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}

/// Summed fold accuracy of every C in `cs` (StratifiedKFold without shuffling, scikit-learn's
/// fold assignment; warm starts along the grid as scikit-learn's path).
pub fn cv_scores(
    x: &DMatrix<f64>,
    y: &[u32],
    k: usize,
    cs: &[f64],
    folds: usize,
) -> Result<Vec<f64>, crate::diag::OpError> {
    let fold = stratified_folds(y, folds)?;
    let mut scores = vec![0.0; cs.len()];
    for f in 0..folds {
        let tr: Vec<usize> = (0..y.len()).filter(|&i| fold[i] != f).collect();
        let te: Vec<usize> = (0..y.len()).filter(|&i| fold[i] == f).collect();
        let (xtr, xte) = (x.select_rows(&tr), x.select_rows(&te));
        let ytr: Vec<u32> = tr.iter().map(|&i| y[i]).collect();
        let mut prev: Option<Softmax> = None;
        for (ci, &c) in cs.iter().enumerate() {
            let m = fit(&xtr, &ytr, k, c, prev.as_ref());
            let pred = argmax(&m.logits(&xte));
            let hits = te.iter().zip(&pred).filter(|(&i, &p)| y[i] == p).count();
            scores[ci] += hits as f64 / te.len().max(1) as f64;
            prev = Some(m);
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian-free clusters in R³ (linearly separable), 4 points each.
    fn clusters() -> (DMatrix<f64>, Vec<u32>) {
        let pts = [
            [2.0, 0.1, 0.0],
            [2.5, -0.2, 0.3],
            [1.8, 0.3, -0.1],
            [2.2, 0.0, 0.2],
            [0.0, 2.0, 0.1],
            [0.2, 2.4, -0.3],
            [-0.1, 1.9, 0.0],
            [0.3, 2.2, 0.2],
            [-2.0, -2.0, 1.0],
            [-1.7, -2.3, 0.8],
            [-2.4, -1.8, 1.2],
            [-2.1, -2.1, 0.9],
        ];
        let x = DMatrix::from_fn(12, 3, |i, j| pts[i][j]);
        (x, (0..12).map(|i| (i / 4) as u32).collect())
    }

    #[test]
    fn the_fit_is_the_stationary_point_of_the_full_objective() {
        let (x, y) = clusters();
        let c = 0.3;
        let m = fit(&x, &y, 3, c, None);
        assert!(m.converged);
        // ∂L/∂W_c = Σᵢ (pᵢc − yᵢc) xᵢ + W_c / C and ∂L/∂b_c = Σᵢ (pᵢc − yᵢc) up to the shift
        // (all ∂/∂b_c equal, here 0 since Σ_c ∂/∂b_c = 0), written out independently.
        let z = &x * m.w.transpose();
        for cls in 0..3 {
            let mut gw = [0.0f64; 3];
            let mut gb = 0.0;
            for i in 0..12 {
                let zi: Vec<f64> = (0..3).map(|a| z[(i, a)] + m.b[a]).collect();
                let s: f64 = zi.iter().map(|v| v.exp()).sum();
                let r = zi[cls].exp() / s - f64::from(y[i] as usize == cls);
                gb += r;
                for (j, g) in gw.iter_mut().enumerate() {
                    *g += r * x[(i, j)];
                }
            }
            for (j, g) in gw.iter().enumerate() {
                assert!((g + m.w[(cls, j)] / c).abs() < 1e-8, "dL/dW[{cls},{j}]");
            }
            assert!(gb.abs() < 1e-8, "dL/db[{cls}] = {gb}");
        }
        assert_eq!(argmax(&m.logits(&x)), y);
    }

    #[test]
    fn projecting_on_the_row_span_changes_nothing() {
        // 4 points in R⁵ (rank 4): fit in the projected coordinates equals the full fit.
        let x = DMatrix::from_row_slice(
            4,
            5,
            &[
                1.0, 0.5, 0.0, -0.3, 0.2, 0.1, 1.2, 0.4, 0.0, -0.5, -0.8, 0.0, 1.0, 0.7, 0.1, 0.3,
                -0.6, 0.2, 1.1, 0.9,
            ],
        );
        let y = [0, 1, 2, 1];
        let full = fit(&x, &y, 3, 2.0, None);
        let v = row_basis(&x);
        assert_eq!(v.ncols(), 4);
        let red = fit(&(&x * &v), &y, 3, 2.0, None);
        let back = &red.w * v.transpose();
        assert!((back - &full.w).amax() < 1e-8);
        assert!((red.logits(&(&x * &v)) - full.logits(&x)).amax() < 1e-8);
    }

    #[test]
    fn cross_validation_scores_sum_fold_accuracies() {
        let (x, y) = clusters();
        // Separable clusters: every C classifies every held-out point (4 folds of 3 points).
        let s = cv_scores(&x, &y, 3, &[1e-2, 1.0, 1e2], 4).unwrap();
        assert_eq!(s, vec![4.0, 4.0, 4.0]);
        assert!(cv_scores(&x, &y, 3, &[1.0], 5).is_err());
    }
}
