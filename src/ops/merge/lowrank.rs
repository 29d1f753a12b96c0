//! Small dense f64 linear algebra for merging LoRA adapters in ΔW space: a row-major [`Mat`],
//! thin QR and SVD (nalgebra's), and the SVD of a low-rank product `B·A` without forming it.
//!
//! The matrices are small (a LoRA module's stacked factors are `out × R` and `R × in` with
//! `R` = the sum of the input ranks). [`product_svd`] costs `O((out + in)·R²)`: a thin QR of
//! `Aᵀ` folds `A` into an `R × R` triangle, then the SVD runs on the `out × R` matrix `B·Rᵀ`.

use nalgebra::DMatrix;

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_f32(rows: usize, cols: usize, v: &[f32]) -> Mat {
        debug_assert_eq!(v.len(), rows * cols);
        Mat {
            rows,
            cols,
            data: v.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn set(&mut self, i: usize, j: usize, x: f64) {
        self.data[i * self.cols + j] = x;
    }

    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.set(j, i, self.at(i, j));
            }
        }
        out
    }

    pub fn matmul(&self, o: &Mat) -> Mat {
        assert_eq!(self.cols, o.rows, "matmul shapes");
        let mut out = Mat::zeros(self.rows, o.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                if a == 0.0 {
                    continue;
                }
                let row = &o.data[k * o.cols..(k + 1) * o.cols];
                for (x, &b) in out.data[i * o.cols..(i + 1) * o.cols].iter_mut().zip(row) {
                    *x += a * b;
                }
            }
        }
        out
    }

    /// Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&x| x as f32).collect()
    }
}

/// Thin QR (nalgebra's Householder QR): `x (m×n) = q (m×k) · r (k×n)`, `k = min(m, n)`, `q`
/// with orthonormal columns, `r` upper triangular. Rank-deficient inputs are fine.
pub fn qr(x: &Mat) -> (Mat, Mat) {
    let f = to_na(x).qr();
    (from_na(&f.q()), from_na(&f.r()))
}

fn to_na(x: &Mat) -> DMatrix<f64> {
    DMatrix::from_row_slice(x.rows, x.cols, &x.data)
}

fn from_na(m: &DMatrix<f64>) -> Mat {
    let (rows, cols) = m.shape();
    Mat {
        rows,
        cols,
        data: (0..rows)
            .flat_map(|i| (0..cols).map(move |j| m[(i, j)]))
            .collect(),
    }
}

/// A thin SVD `x = u · diag(s) · vᵀ` with `s` sorted descending (non-negative).
#[derive(Debug, Clone)]
pub struct Svd {
    /// `m × k`, orthonormal columns.
    pub u: Mat,
    pub s: Vec<f64>,
    /// `n × k`, orthonormal columns.
    pub v: Mat,
}

/// Thin SVD of any matrix (nalgebra's bidiagonalisation + implicit QR): `k = min(rows, cols)`
/// singular triplets, sorted by decreasing singular value.
pub fn svd(x: &Mat) -> Svd {
    let f = nalgebra::SVD::new(to_na(x), true, true);
    let (u, vt) = (
        f.u.as_ref().expect("u requested"),
        f.v_t.as_ref().expect("v requested"),
    );
    let mut order: Vec<usize> = (0..f.singular_values.len()).collect();
    order.sort_by(|&a, &b| f.singular_values[b].total_cmp(&f.singular_values[a]));
    let k = order.len();
    let mut su = Mat::zeros(x.rows, k);
    let mut sv = Mat::zeros(x.cols, k);
    for (c, &j) in order.iter().enumerate() {
        for i in 0..x.rows {
            su.set(i, c, u[(i, j)]);
        }
        for i in 0..x.cols {
            sv.set(i, c, vt[(j, i)]);
        }
    }
    Svd {
        u: su,
        s: order.iter().map(|&j| f.singular_values[j]).collect(),
        v: sv,
    }
}

/// SVD of the product `b (out×R) · a (R×in)` without forming it: `Aᵀ = Q·R` (thin), then the
/// SVD of `B·Rᵀ` (`out × min(in, R)`), and `V = Q·V'`. Returns `min(out, in, R)` triplets.
pub fn product_svd(b: &Mat, a: &Mat) -> Svd {
    assert_eq!(b.cols, a.rows, "product_svd shapes");
    let (q, r) = qr(&a.t());
    let c = b.matmul(&r.t());
    let inner = svd(&c);
    Svd {
        v: q.matmul(&inner.v),
        u: inner.u,
        s: inner.s,
    }
}

/// Relative Frobenius error of keeping the first `k` singular values:
/// `sqrt(Σ_{j≥k} s_j²) / sqrt(Σ_j s_j²)` (0 for a zero matrix).
pub fn truncation_error(s: &[f64], k: usize) -> f64 {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 {
        return 0.0;
    }
    let dropped: f64 = s.iter().skip(k).map(|x| x * x).sum();
    (dropped / total).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Mat {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|_| rng.random::<f64>() * 2.0 - 1.0)
                .collect(),
        }
    }

    fn max_diff(a: &Mat, b: &Mat) -> f64 {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn eye(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        (0..n).for_each(|i| m.set(i, i, 1.0));
        m
    }

    fn scale_cols(m: &Mat, s: &[f64]) -> Mat {
        let mut out = m.clone();
        for i in 0..m.rows {
            for (j, &x) in s.iter().enumerate() {
                out.set(i, j, m.at(i, j) * x);
            }
        }
        out
    }

    #[test]
    fn qr_is_orthonormal_triangular_and_exact_also_when_rank_deficient() {
        let mut dup = random(6, 4, 3);
        for i in 0..6 {
            let x = dup.at(i, 0);
            dup.set(i, 2, x); // column 2 = column 0
        }
        for x in [random(7, 4, 1), random(3, 5, 2), dup, Mat::zeros(4, 3)] {
            let (q, r) = qr(&x);
            let k = x.rows.min(x.cols);
            assert_eq!((q.rows, q.cols, r.rows, r.cols), (x.rows, k, k, x.cols));
            assert!(max_diff(&q.matmul(&r), &x) < 1e-12);
            if x.norm() > 0.0 {
                assert!(max_diff(&q.t().matmul(&q), &eye(k)) < 1e-12);
            }
            for i in 0..k {
                for j in 0..i.min(x.cols) {
                    assert_eq!(r.at(i, j), 0.0);
                }
            }
        }
    }

    #[test]
    fn svd_recovers_planted_singular_values_in_both_orientations() {
        let (u, _) = qr(&random(7, 4, 10));
        let (v, _) = qr(&random(5, 4, 11));
        let planted = [5.0, 3.0, 1e-3, 0.0];
        let x = scale_cols(&u, &planted).matmul(&v.t()); // 7×5, rank 3
        for m in [x.clone(), x.t()] {
            let d = svd(&m);
            for (got, want) in d.s.iter().zip(planted) {
                assert!((got - want).abs() < 1e-12, "{:?}", d.s);
            }
            let back = scale_cols(&d.u, &d.s).matmul(&d.v.t());
            assert!(max_diff(&back, &m) < 1e-12);
            let k = d.s.len();
            assert!(max_diff(&d.v.t().matmul(&d.v), &eye(k)) < 1e-12);
        }
    }

    #[test]
    fn product_svd_equals_the_svd_of_the_formed_product() {
        for (out, r, inn) in [(9, 4, 6), (3, 5, 8), (6, 6, 2)] {
            let (b, a) = (random(out, r, 20 + out as u64), random(r, inn, 30));
            let dense = b.matmul(&a);
            let p = product_svd(&b, &a);
            let d = svd(&dense);
            for (x, y) in p.s.iter().zip(&d.s) {
                assert!((x - y).abs() < 1e-12, "{:?} vs {:?}", p.s, d.s);
            }
            let back = scale_cols(&p.u, &p.s).matmul(&p.v.t());
            assert!(max_diff(&back, &dense) < 1e-12);
            assert_eq!(p.s.len(), out.min(r).min(inn));
        }
    }

    #[test]
    fn truncation_error_is_the_discarded_energy() {
        assert_eq!(truncation_error(&[3.0, 4.0], 2), 0.0);
        assert!((truncation_error(&[3.0, 4.0], 1) - 0.8).abs() < 1e-15);
        assert_eq!(truncation_error(&[0.0, 0.0], 0), 0.0);
    }
}
