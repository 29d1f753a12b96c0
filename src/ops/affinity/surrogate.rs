//! The first-order surrogate of methods.md §1.7: L2-regularised logistic regression on
//! projected gradients, both variants, solved by damped Newton with a Cholesky factorisation.
//!
//! Both objectives are instances of
//! `J(v) = (α/2)‖v‖² + β Σ_i softplus(−(a_iᵀ v + o_i))`,
//! * **free offset** (variant A, sklearn's problem): `v = [w; c]`, `a_i = [g̃_i; −f_i]`, `o_i = 0`,
//!   `α = 1`, `β = 1/λ` — i.e. `½(‖w‖² + c²) + (1/λ) Σ log(1 + exp(−(g̃ᵀw − c·f)))`, no intercept;
//! * **fixed offset** (variant B): `v = w`, `a_i = g̃_i`, `o_i = f_i`, `α = 2λ`, `β = 1/N` — i.e.
//!   `mean log(1 + exp(−(g̃ᵀw + f))) + λ‖w‖²`.
//!
//! `J` is strictly convex (α > 0), with gradient `αv − β Σ σ(−m_i) a_i` and Hessian
//! `αI + β Σ σ(m_i)σ(−m_i) a_i a_iᵀ` (`m_i = a_iᵀv + o_i`). Newton steps from `v = 0` with
//! backtracking (Armijo) converge quadratically; the stop is `‖∇J‖ ≤ tol·max(1, ‖∇J(0)‖)`.

use crate::diag::OpError;
use nalgebra::{DMatrix, DVector};

const CODE: &str = "smelt::run::affinity";

/// Which §1.7 objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    FreeOffset,
    FixedOffset,
}

impl Variant {
    pub fn parse(s: &str) -> Result<Variant, OpError> {
        match s {
            "free_offset" => Ok(Variant::FreeOffset),
            "fixed_offset" => Ok(Variant::FixedOffset),
            v => Err(OpError::new(CODE, format!("unknown variant `{v}`"))
                .with_help("variants: free_offset (sklearn's problem), fixed_offset (offset +1)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::FreeOffset => "free_offset",
            Variant::FixedOffset => "fixed_offset",
        }
    }
}

/// A solved surrogate.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The weights on the features (`d`).
    pub w: Vec<f64>,
    /// The free offset coefficient `c` (free variant; `None` for the fixed one).
    pub c: Option<f64>,
    pub objective: f64,
    pub grad_norm: f64,
    pub iterations: usize,
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The generic problem `(α/2)‖v‖² + β Σ softplus(−(a_iᵀv + o_i))`.
struct Problem {
    a: DMatrix<f64>,
    o: DVector<f64>,
    alpha: f64,
    beta: f64,
}

impl Problem {
    fn margins(&self, v: &DVector<f64>) -> DVector<f64> {
        &self.a * v + &self.o
    }

    fn value(&self, v: &DVector<f64>) -> f64 {
        let m = self.margins(v);
        0.5 * self.alpha * v.norm_squared()
            + self.beta * m.iter().map(|&x| softplus(-x)).sum::<f64>()
    }

    fn gradient(&self, v: &DVector<f64>, m: &DVector<f64>) -> DVector<f64> {
        let s = m.map(|x| sigmoid(-x));
        v * self.alpha - self.a.tr_mul(&s) * self.beta
    }

    fn hessian(&self, m: &DVector<f64>) -> DMatrix<f64> {
        let wts = m.map(|x| sigmoid(x) * sigmoid(-x) * self.beta);
        let mut scaled = self.a.clone();
        for (mut row, &s) in scaled.row_iter_mut().zip(wts.iter()) {
            row *= s;
        }
        let mut h = self.a.tr_mul(&scaled);
        for i in 0..h.nrows() {
            h[(i, i)] += self.alpha;
        }
        h
    }

    /// `−H⁻¹ g`. Directly (Cholesky of `H = αI + AᵀSA`), or with `K = AAᵀ` by Woodbury:
    /// `H⁻¹ = (1/α)[I − AᵀS½ (αI + S½KS½)⁻¹ S½A]`, which needs only an n × n factorisation.
    fn newton_step(
        &self,
        m: &DVector<f64>,
        g: &DVector<f64>,
        gram: Option<&DMatrix<f64>>,
    ) -> Result<DVector<f64>, OpError> {
        let not_pd = || {
            OpError::new(CODE, "the surrogate's Hessian is not positive definite")
                .with_help("the features contain NaN or infinite values")
        };
        let Some(k) = gram else {
            return Ok(self.hessian(m).cholesky().ok_or_else(not_pd)?.solve(&(-g)));
        };
        let r = m.map(|x| (sigmoid(x) * sigmoid(-x) * self.beta).sqrt());
        let mut inner = k.clone();
        for i in 0..inner.nrows() {
            for j in 0..inner.ncols() {
                inner[(i, j)] *= r[i] * r[j];
            }
            inner[(i, i)] += self.alpha;
        }
        let ag = (&self.a * g).component_mul(&r);
        let y = inner
            .cholesky()
            .ok_or_else(not_pd)?
            .solve(&ag)
            .component_mul(&r);
        Ok((self.a.tr_mul(&y) - g) / self.alpha)
    }

    fn solve(&self, tol: f64, max_iter: usize) -> Result<(DVector<f64>, f64, f64, usize), OpError> {
        let mut v = DVector::zeros(self.a.ncols());
        let mut m = self.margins(&v);
        let mut f = self.value(&v);
        let g0 = self.gradient(&v, &m).norm().max(1.0);
        // More columns than rows (e.g. exact gradients): the Newton system goes through the
        // n × n Gram matrix (Woodbury) instead of the cols × cols Hessian.
        let gram = (self.a.ncols() > self.a.nrows()).then(|| &self.a * self.a.transpose());
        for it in 0..max_iter {
            let g = self.gradient(&v, &m);
            let gn = g.norm();
            if gn <= tol * g0 {
                return Ok((v, f, gn, it));
            }
            let step = self.newton_step(&m, &g, gram.as_ref())?;
            let slope = g.dot(&step);
            // Newton decrement at f64 resolution: no step can improve the objective further.
            if -slope <= 1e-15 * (1.0 + f.abs()) {
                return Ok((v, f, gn, it + 1));
            }
            let mut t = 1.0;
            loop {
                let cand = &v + &step * t;
                let fc = self.value(&cand);
                if fc <= f + 1e-4 * t * slope || t < 1e-12 {
                    v = cand;
                    f = fc;
                    break;
                }
                t *= 0.5;
            }
            m = self.margins(&v);
        }
        let gn = self.gradient(&v, &m).norm();
        Ok((v, f, gn, max_iter))
    }
}

/// Fits the surrogate on features `x` (row-major `[n, d]`) and outputs `f` (`[n]`).
pub fn fit(x: &[f32], f: &[f64], d: usize, lambda: f64, variant: Variant) -> Result<Fit, OpError> {
    let n = f.len();
    if n == 0 || x.len() != n * d {
        return Err(OpError::new(
            CODE,
            format!(
                "{} feature values for {n} examples of dimension {d}",
                x.len()
            ),
        ));
    }
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(
            OpError::new(CODE, format!("lambda = {lambda} must be positive"))
                .with_help("typical values: 1e-3 … 1 (free_offset), 1e-3 … 1e4 (fixed_offset)"),
        );
    }
    let (cols, alpha, beta) = match variant {
        Variant::FreeOffset => (d + 1, 1.0, 1.0 / lambda),
        Variant::FixedOffset => (d, 2.0 * lambda, 1.0 / n as f64),
    };
    let mut a = DMatrix::zeros(n, cols);
    for i in 0..n {
        for j in 0..d {
            a[(i, j)] = x[i * d + j] as f64;
        }
        if variant == Variant::FreeOffset {
            a[(i, d)] = -f[i];
        }
    }
    let o = match variant {
        Variant::FreeOffset => DVector::zeros(n),
        Variant::FixedOffset => DVector::from_column_slice(f),
    };
    let p = Problem { a, o, alpha, beta };
    let (v, objective, grad_norm, iterations) = p.solve(1e-10, 100)?;
    let (w, c) = match variant {
        Variant::FreeOffset => (v.rows(0, d).iter().copied().collect(), Some(v[d])),
        Variant::FixedOffset => (v.iter().copied().collect(), None),
    };
    Ok(Fit {
        w,
        c,
        objective,
        grad_norm,
        iterations,
    })
}

/// The objective of `variant` at `(w, c)` written out directly (for checks).
pub fn objective(
    x: &[f32],
    f: &[f64],
    d: usize,
    lambda: f64,
    variant: Variant,
    w: &[f64],
    c: f64,
) -> f64 {
    let n = f.len();
    let dot = |i: usize| (0..d).map(|j| x[i * d + j] as f64 * w[j]).sum::<f64>();
    let ww: f64 = w.iter().map(|v| v * v).sum();
    match variant {
        Variant::FreeOffset => {
            0.5 * (ww + c * c)
                + (0..n)
                    .map(|i| (1.0 + (-(dot(i) - c * f[i])).exp()).ln())
                    .sum::<f64>()
                    / lambda
        }
        Variant::FixedOffset => {
            (0..n)
                .map(|i| (1.0 + (-(dot(i) + f[i])).exp()).ln())
                .sum::<f64>()
                / n as f64
                + lambda * ww
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, d: usize) -> (Vec<f32>, Vec<f64>) {
        let x = (0..n * d)
            .map(|i| ((i * 7919 % 97) as f32 / 48.5 - 1.0) * 0.8)
            .collect();
        let f = (0..n).map(|i| ((i * 31 % 11) as f64 - 5.0) / 3.0).collect();
        (x, f)
    }

    #[test]
    fn newton_reaches_a_stationary_point_of_the_written_objective() {
        let (n, d) = (40, 6);
        let (x, f) = data(n, d);
        for variant in [Variant::FreeOffset, Variant::FixedOffset] {
            for lambda in [1e-2, 1.0] {
                let fit = fit(&x, &f, d, lambda, variant).unwrap();
                assert!(
                    fit.iterations < 30 && fit.grad_norm < 1e-6,
                    "{variant:?} {lambda}: {fit:?}"
                );
                let c = fit.c.unwrap_or(0.0);
                let j = objective(&x, &f, d, lambda, variant, &fit.w, c);
                assert!((j - fit.objective).abs() < 1e-9 * (1.0 + j.abs()));
                // Central finite differences of the written objective vanish at the optimum,
                // and every coordinate perturbation increases it.
                let h = 1e-5;
                for k in 0..d {
                    let mut wp = fit.w.clone();
                    wp[k] += h;
                    let mut wm = fit.w.clone();
                    wm[k] -= h;
                    let (jp, jm) = (
                        objective(&x, &f, d, lambda, variant, &wp, c),
                        objective(&x, &f, d, lambda, variant, &wm, c),
                    );
                    assert!(((jp - jm) / (2.0 * h)).abs() < 1e-5, "{variant:?} ∂_{k}");
                    assert!(jp > j && jm > j);
                }
                if let Some(c) = fit.c {
                    let dc = (objective(&x, &f, d, lambda, variant, &fit.w, c + h)
                        - objective(&x, &f, d, lambda, variant, &fit.w, c - h))
                        / (2.0 * h);
                    assert!(dc.abs() < 1e-5, "∂c = {dc}");
                }
            }
        }
    }

    #[test]
    fn a_two_dimensional_problem_matches_a_brute_force_grid() {
        let (n, d) = (25, 2);
        let (x, f) = data(n, d);
        for (variant, lambda) in [(Variant::FixedOffset, 0.05), (Variant::FreeOffset, 0.5)] {
            let fit = fit(&x, &f, d, lambda, variant).unwrap();
            // Free offset: minimise over c too (inner 1-D grid) so the grid sees the same problem.
            let best_c = |w: &[f64]| -> (f64, f64) {
                match variant {
                    Variant::FixedOffset => (objective(&x, &f, d, lambda, variant, w, 0.0), 0.0),
                    Variant::FreeOffset => (-100..=100)
                        .map(|k| k as f64 * 0.04)
                        .map(|c| (objective(&x, &f, d, lambda, variant, w, c), c))
                        .fold((f64::INFINITY, 0.0), |a, b| if b.0 < a.0 { b } else { a }),
                }
            };
            let mut best = (f64::INFINITY, [0.0, 0.0]);
            for i in -50..=50 {
                for j in -50..=50 {
                    let w = [i as f64 * 0.05, j as f64 * 0.05];
                    let (v, _) = best_c(&w);
                    if v < best.0 {
                        best = (v, w);
                    }
                }
            }
            assert!(
                fit.objective <= best.0 + 1e-12,
                "Newton {} grid {}",
                fit.objective,
                best.0
            );
            assert!(
                fit.w.iter().chain(&fit.c).all(|v| v.abs() < 2.4),
                "optimum inside the grid"
            );
            assert!(
                (fit.w[0] - best.1[0]).abs() < 0.05 && (fit.w[1] - best.1[1]).abs() < 0.05,
                "{variant:?}: {:?} vs grid {:?}",
                fit.w,
                best.1
            );
        }
    }

    #[test]
    fn more_features_than_examples_solve_through_the_gram_matrix() {
        // d > n takes the Woodbury path: the optimum is a stationary point of the written
        // objective and lies in the span of the examples' features.
        let (n, d) = (8, 30);
        let (x, f) = data(n, d);
        for variant in [Variant::FreeOffset, Variant::FixedOffset] {
            let fit = fit(&x, &f, d, 0.1, variant).unwrap();
            assert!(
                fit.iterations < 30 && fit.grad_norm < 1e-6,
                "{variant:?}: {fit:?}"
            );
            let c = fit.c.unwrap_or(0.0);
            let h = 1e-5;
            for k in 0..d {
                let mut wp = fit.w.clone();
                wp[k] += h;
                let mut wm = fit.w.clone();
                wm[k] -= h;
                let g = (objective(&x, &f, d, 0.1, variant, &wp, c)
                    - objective(&x, &f, d, 0.1, variant, &wm, c))
                    / (2.0 * h);
                assert!(g.abs() < 1e-5, "{variant:?} ∂_{k} = {g}");
            }
            // The optimum lies in the span of the examples' features (a representer fact).
            let a = DMatrix::from_fn(n, d, |i, j| x[i * d + j] as f64);
            let w = DVector::from_column_slice(&fit.w);
            let coef = a.transpose().svd(true, true).solve(&w, 1e-12).unwrap();
            assert!((a.transpose() * coef - &w).norm() < 1e-8 * (1.0 + w.norm()));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(fit(&[1.0, 2.0], &[0.5], 3, 1.0, Variant::FreeOffset).is_err());
        assert!(fit(&[1.0], &[0.5], 1, 0.0, Variant::FreeOffset).is_err());
        assert!(Variant::parse("both").is_err());
        assert_eq!(
            Variant::parse("fixed_offset").unwrap().name(),
            "fixed_offset"
        );
    }
}
