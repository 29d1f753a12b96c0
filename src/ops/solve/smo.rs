//! Sequential minimal optimisation for the C-SVC dual with a precomputed kernel — libsvm's
//! solver (Fan, Chen & Lin 2005: second-order working-set selection), without shrinking.
//!
//! Solves `min_α ½ αᵀQα + pᵀα` s.t. `yᵀα = 0`, `0 ≤ αᵢ ≤ C`, with `Q_ij = yᵢyⱼK_ij`. The usual
//! SVM has `pᵢ = −1`; a fixed offset oᵢ in the decision function (the f0 correction,
//! `f(x) = Σⱼ αⱼyⱼK(j, x) − ρ + o(x)`) changes the margin constraint to
//! `yᵢ(w·φᵢ − ρ) ≥ 1 − yᵢoᵢ − ξᵢ`, i.e. `pᵢ = −(1 − yᵢoᵢ)`. Stops when the maximal KKT
//! violation `m(α) − M(α)` is below `tol` (scikit-learn's default 1e-3). Non-PSD kernels are
//! handled as libsvm does (curvature clamped to τ = 1e-12).
//!
//! Written here because neither linfa-svm nor another maintained Rust crate accepts a
//! precomputed kernel matrix directly (linfa-svm builds its kernel from feature vectors).

use nalgebra::DMatrix;

const TAU: f64 = 1e-12;

#[derive(Debug, Clone)]
pub struct Svm {
    pub alpha: Vec<f64>,
    pub rho: f64,
    pub iters: usize,
    pub converged: bool,
}

impl Svm {
    /// Decision values `Σⱼ αⱼyⱼK(j, x) − ρ` for the columns of `k_eval` (train × eval).
    pub fn decision(&self, y: &[f64], k_eval: &DMatrix<f64>) -> Vec<f64> {
        (0..k_eval.ncols())
            .map(|x| {
                let s: f64 = (0..y.len())
                    .filter(|&j| self.alpha[j] != 0.0)
                    .map(|j| self.alpha[j] * y[j] * k_eval[(j, x)])
                    .sum();
                s - self.rho
            })
            .collect()
    }
}

/// Solves the dual. `y` holds ±1; `p` the linear term (−1 each for the plain SVM).
pub fn solve(k: &DMatrix<f64>, y: &[f64], p: &[f64], c: f64, tol: f64) -> Svm {
    let l = y.len();
    let q = |i: usize, j: usize| y[i] * y[j] * k[(i, j)];
    let mut alpha = vec![0.0; l];
    let mut g: Vec<f64> = p.to_vec(); // gradient Qα + p at α = 0
    let up = |a: f64| a >= c;
    let low = |a: f64| a <= 0.0;
    let max_iter = 10_000_000usize.max(100 * l);
    let mut iters = 0;
    let mut converged = false;
    while iters < max_iter {
        // Working set: i maximises −yG over I_up, j the second-order best partner in I_low.
        let mut gmax = f64::NEG_INFINITY;
        let mut gmax_idx = usize::MAX;
        for t in 0..l {
            if y[t] > 0.0 {
                if !up(alpha[t]) && -g[t] >= gmax {
                    gmax = -g[t];
                    gmax_idx = t;
                }
            } else if !low(alpha[t]) && g[t] >= gmax {
                gmax = g[t];
                gmax_idx = t;
            }
        }
        let i = gmax_idx;
        let mut gmax2 = f64::NEG_INFINITY;
        let mut gmin_idx = usize::MAX;
        let mut obj_min = f64::INFINITY;
        for t in 0..l {
            let (grad_diff, viol) = if y[t] > 0.0 {
                if low(alpha[t]) {
                    continue;
                }
                (gmax + g[t], g[t])
            } else {
                if up(alpha[t]) {
                    continue;
                }
                (gmax - g[t], -g[t])
            };
            gmax2 = gmax2.max(viol);
            if i != usize::MAX && grad_diff > 0.0 {
                let quad = k[(i, i)] + k[(t, t)] - 2.0 * k[(i, t)];
                let obj = -(grad_diff * grad_diff) / if quad > 0.0 { quad } else { TAU };
                if obj <= obj_min {
                    gmin_idx = t;
                    obj_min = obj;
                }
            }
        }
        if gmax + gmax2 < tol || i == usize::MAX || gmin_idx == usize::MAX {
            converged = true;
            break;
        }
        let j = gmin_idx;
        iters += 1;
        let (ai, aj) = (alpha[i], alpha[j]);
        if y[i] != y[j] {
            let quad = (k[(i, i)] + k[(j, j)] + 2.0 * q(i, j)).max(TAU);
            let delta = (-g[i] - g[j]) / quad;
            let diff = alpha[i] - alpha[j];
            alpha[i] += delta;
            alpha[j] += delta;
            if diff > 0.0 {
                if alpha[j] < 0.0 {
                    alpha[j] = 0.0;
                    alpha[i] = diff;
                }
            } else if alpha[i] < 0.0 {
                alpha[i] = 0.0;
                alpha[j] = -diff;
            }
            if diff > 0.0 {
                if alpha[i] > c {
                    alpha[i] = c;
                    alpha[j] = c - diff;
                }
            } else if alpha[j] > c {
                alpha[j] = c;
                alpha[i] = c + diff;
            }
        } else {
            let quad = (k[(i, i)] + k[(j, j)] - 2.0 * q(i, j)).max(TAU);
            let delta = (g[i] - g[j]) / quad;
            let sum = alpha[i] + alpha[j];
            alpha[i] -= delta;
            alpha[j] += delta;
            if sum > c {
                if alpha[i] > c {
                    alpha[i] = c;
                    alpha[j] = sum - c;
                }
            } else if alpha[j] < 0.0 {
                alpha[j] = 0.0;
                alpha[i] = sum;
            }
            if sum > c {
                if alpha[j] > c {
                    alpha[j] = c;
                    alpha[i] = sum - c;
                }
            } else if alpha[i] < 0.0 {
                alpha[i] = 0.0;
                alpha[j] = sum;
            }
        }
        let (di, dj) = (alpha[i] - ai, alpha[j] - aj);
        for (t, gt) in g.iter_mut().enumerate() {
            *gt += q(i, t) * di + q(j, t) * dj;
        }
    }
    let rho = bias(&alpha, &g, y, c);
    Svm {
        alpha,
        rho,
        iters,
        converged,
    }
}

/// ρ: the mean of yᵢGᵢ over free vectors, else the middle of the feasible interval.
fn bias(alpha: &[f64], g: &[f64], y: &[f64], c: f64) -> f64 {
    let (mut ub, mut lb, mut sum, mut free) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for t in 0..y.len() {
        let yg = y[t] * g[t];
        if alpha[t] >= c {
            if y[t] < 0.0 {
                ub = ub.min(yg);
            } else {
                lb = lb.max(yg);
            }
        } else if alpha[t] <= 0.0 {
            if y[t] > 0.0 {
                ub = ub.min(yg);
            } else {
                lb = lb.max(yg);
            }
        } else {
            free += 1;
            sum += yg;
        }
    }
    if free > 0 {
        sum / free as f64
    } else {
        (ub + lb) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_kernel(x: &[[f64; 2]]) -> DMatrix<f64> {
        DMatrix::from_fn(x.len(), x.len(), |i, j| {
            x[i][0] * x[j][0] + x[i][1] * x[j][1]
        })
    }

    #[test]
    fn separable_points_get_the_max_margin_separator() {
        // Support vectors x₊ = (1, 2), x₋ = (0, 0), plus points far from the boundary. The
        // max-margin separator of two points is their perpendicular bisector with margin 1:
        // w = 2(x₊ − x₋)/‖x₊ − x₋‖² = (0.4, 0.8), b = −w·(x₊ + x₋)/2 = −1.
        let x = [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0], [-3.0, -4.0], [3.0, 4.0]];
        let y = [1.0, -1.0, 1.0, -1.0, 1.0];
        let k = linear_kernel(&x);
        let svm = solve(&k, &y, &[-1.0; 5], 1e6, 1e-10);
        assert!(svm.converged);
        let w: Vec<f64> = (0..2)
            .map(|d| (0..5).map(|i| svm.alpha[i] * y[i] * x[i][d]).sum())
            .collect();
        assert!(
            (w[0] - 0.4).abs() < 1e-8 && (w[1] - 0.8).abs() < 1e-8,
            "{w:?}"
        );
        assert!((-svm.rho + 1.0).abs() < 1e-8, "b = {}", -svm.rho);
        // Only the two support vectors carry weight, α = ‖w‖²/2 each (= 0.4).
        assert!((svm.alpha[0] - 0.4).abs() < 1e-8 && (svm.alpha[1] - 0.4).abs() < 1e-8);
        assert!(svm.alpha[2..].iter().all(|&a| a.abs() < 1e-12));
        // Decision values at new points: w·q + b.
        let q = [[0.5, 1.0], [2.0, -1.0]];
        let ke = DMatrix::from_fn(5, 2, |i, j| x[i][0] * q[j][0] + x[i][1] * q[j][1]);
        let d = svm.decision(&y, &ke);
        assert!(
            (d[0] - 0.0).abs() < 1e-8 && (d[1] - (0.8 - 0.8 - 1.0)).abs() < 1e-8,
            "{d:?}"
        );
    }

    #[test]
    fn the_soft_margin_solution_satisfies_the_kkt_conditions() {
        // Overlapping classes with a small C: check yᵀα = 0, 0 ≤ α ≤ C and the KKT gap.
        let x = [
            [0.0, 1.0],
            [1.0, 0.2],
            [0.5, 0.5],
            [-0.2, 0.1],
            [0.3, -0.4],
            [0.6, 0.6],
        ];
        let y = [1.0, 1.0, -1.0, -1.0, -1.0, 1.0];
        let k = linear_kernel(&x);
        let c = 0.5;
        let svm = solve(&k, &y, &[-1.0; 6], c, 1e-9);
        let s: f64 = svm.alpha.iter().zip(&y).map(|(a, y)| a * y).sum();
        assert!(s.abs() < 1e-12);
        assert!(svm.alpha.iter().all(|&a| (0.0..=c).contains(&a)));
        // y f(x) ≥ 1 where α = 0, = 1 where 0 < α < C, ≤ 1 where α = C.
        let f = svm.decision(&y, &k);
        for t in 0..6 {
            let m = y[t] * f[t];
            if svm.alpha[t] <= 0.0 {
                assert!(m >= 1.0 - 1e-7, "{t}: {m}");
            } else if svm.alpha[t] >= c {
                assert!(m <= 1.0 + 1e-7, "{t}: {m}");
            } else {
                assert!((m - 1.0).abs() < 1e-7, "{t}: {m}");
            }
        }
    }

    #[test]
    fn an_offset_shifts_the_margin_constraint() {
        // One point per class on a line, K = x xᵀ with x₊ = 1, x₋ = −1, offset o₊ = 0.5:
        // constraints w + b + 0.5 ≥ 1 and −(−w + b) ≥ 1. Minimising w²/2: by the KKT
        // conditions with both active, w + b = 0.5 and w − b = 1 → w = 0.75, b = −0.25.
        let k = DMatrix::from_row_slice(2, 2, &[1.0, -1.0, -1.0, 1.0]);
        let y = [1.0, -1.0];
        let o = [0.5, 0.0];
        let p: Vec<f64> = (0..2).map(|i| -(1.0 - y[i] * o[i])).collect();
        let svm = solve(&k, &y, &p, 1e6, 1e-12);
        let w: f64 = svm.alpha[0] + svm.alpha[1]; // Σ αᵢyᵢxᵢ with x = (1, −1), y = (1, −1)
        assert!(
            (w - 0.75).abs() < 1e-9 && (-svm.rho + 0.25).abs() < 1e-9,
            "w={w} b={}",
            -svm.rho
        );
    }
}
