//! The five double-precision BLAS routines clarabel's PSD-cone code calls (`dgemm dgemv dsymv
//! dsyrk dsyr2k`), written in Rust with BLAS's column-major conventions and strides; the
//! LAPACK half and the reason these exist are in src/ops/cluster/lapack.rs. The tests check
//! each routine against a direct computation.

#![allow(
    clippy::too_many_arguments,
    clippy::missing_safety_doc,
    clippy::needless_range_loop
)]

use std::os::raw::{c_char, c_int};
use std::slice;

/// Column-major element `(i, j)` with leading dimension `ld`.
#[inline]
pub(super) fn at(i: usize, j: usize, ld: usize) -> usize {
    i + j * ld
}

pub(super) fn up(c: c_char) -> u8 {
    (c as u8).to_ascii_uppercase()
}

/// Indices of a BLAS vector of length `n` with stride `inc` (negative strides run backwards).
fn vidx(n: usize, inc: c_int) -> impl Iterator<Item = usize> {
    let step = inc.unsigned_abs() as usize;
    let neg = inc < 0;
    (0..n).map(move |k| if neg { (n - 1 - k) * step } else { k * step })
}

fn vlen(n: usize, inc: c_int) -> usize {
    if n == 0 {
        0
    } else {
        (n - 1) * inc.unsigned_abs() as usize + 1
    }
}

/// C = α·op(A)·op(B) + β·C.
#[no_mangle]
pub unsafe extern "C" fn dgemm_(
    transa: *const c_char,
    transb: *const c_char,
    m: *const c_int,
    n: *const c_int,
    k: *const c_int,
    alpha: *const f64,
    a: *const f64,
    lda: *const c_int,
    b: *const f64,
    ldb: *const c_int,
    beta: *const f64,
    c: *mut f64,
    ldc: *const c_int,
) {
    let (ta, tb) = (up(*transa) != b'N', up(*transb) != b'N');
    let (m, n, k) = (*m as usize, *n as usize, *k as usize);
    let (lda, ldb, ldc) = (*lda as usize, *ldb as usize, *ldc as usize);
    let (alpha, beta) = (*alpha, *beta);
    if m == 0 || n == 0 {
        return;
    }
    let c = slice::from_raw_parts_mut(c, ldc * (n - 1) + m);
    let a = slice::from_raw_parts(
        a,
        if k == 0 {
            0
        } else {
            lda * (if ta { m } else { k } - 1) + if ta { k } else { m }
        },
    );
    let b = slice::from_raw_parts(
        b,
        if k == 0 {
            0
        } else {
            ldb * (if tb { k } else { n } - 1) + if tb { n } else { k }
        },
    );
    for j in 0..n {
        for i in 0..m {
            let mut s = 0.0;
            for p in 0..k {
                let aip = if ta {
                    a[at(p, i, lda)]
                } else {
                    a[at(i, p, lda)]
                };
                let bpj = if tb {
                    b[at(j, p, ldb)]
                } else {
                    b[at(p, j, ldb)]
                };
                s += aip * bpj;
            }
            let cij = &mut c[at(i, j, ldc)];
            *cij = if beta == 0.0 {
                alpha * s
            } else {
                alpha * s + beta * *cij
            };
        }
    }
}

/// y = α·op(A)·x + β·y.
#[no_mangle]
pub unsafe extern "C" fn dgemv_(
    trans: *const c_char,
    m: *const c_int,
    n: *const c_int,
    alpha: *const f64,
    a: *const f64,
    lda: *const c_int,
    x: *const f64,
    incx: *const c_int,
    beta: *const f64,
    y: *mut f64,
    incy: *const c_int,
) {
    let t = up(*trans) != b'N';
    let (m, n, lda) = (*m as usize, *n as usize, *lda as usize);
    if m == 0 || n == 0 {
        return;
    }
    let (rows, cols) = if t { (n, m) } else { (m, n) };
    let a = slice::from_raw_parts(a, lda * (n - 1) + m);
    let x = slice::from_raw_parts(x, vlen(cols, *incx));
    let y = slice::from_raw_parts_mut(y, vlen(rows, *incy));
    let xi: Vec<usize> = vidx(cols, *incx).collect();
    for (r, yi) in vidx(rows, *incy).enumerate() {
        let mut s = 0.0;
        for (q, &xq) in xi.iter().enumerate() {
            let arq = if t {
                a[at(q, r, lda)]
            } else {
                a[at(r, q, lda)]
            };
            s += arq * x[xq];
        }
        y[yi] = if *beta == 0.0 {
            *alpha * s
        } else {
            *alpha * s + *beta * y[yi]
        };
    }
}

/// Element `(i, j)` of a symmetric matrix stored in triangle `uplo`.
pub(super) fn sym(a: &[f64], i: usize, j: usize, lda: usize, upper: bool) -> f64 {
    let (r, c) = if (i <= j) == upper { (i, j) } else { (j, i) };
    a[at(r, c, lda)]
}

/// y = α·A·x + β·y, A symmetric (one triangle referenced).
#[no_mangle]
pub unsafe extern "C" fn dsymv_(
    uplo: *const c_char,
    n: *const c_int,
    alpha: *const f64,
    a: *const f64,
    lda: *const c_int,
    x: *const f64,
    incx: *const c_int,
    beta: *const f64,
    y: *mut f64,
    incy: *const c_int,
) {
    let upper = up(*uplo) == b'U';
    let (n, lda) = (*n as usize, *lda as usize);
    if n == 0 {
        return;
    }
    let a = slice::from_raw_parts(a, lda * (n - 1) + n);
    let x = slice::from_raw_parts(x, vlen(n, *incx));
    let y = slice::from_raw_parts_mut(y, vlen(n, *incy));
    let xi: Vec<usize> = vidx(n, *incx).collect();
    for (i, yi) in vidx(n, *incy).enumerate() {
        let s: f64 = (0..n).map(|j| sym(a, i, j, lda, upper) * x[xi[j]]).sum();
        y[yi] = if *beta == 0.0 {
            *alpha * s
        } else {
            *alpha * s + *beta * y[yi]
        };
    }
}

/// C = α·op(A)·op(A)ᵀ + β·C on triangle `uplo` of C (op = identity for `N`, transpose for `T`).
#[no_mangle]
pub unsafe extern "C" fn dsyrk_(
    uplo: *const c_char,
    trans: *const c_char,
    n: *const c_int,
    k: *const c_int,
    alpha: *const f64,
    a: *const f64,
    lda: *const c_int,
    beta: *const f64,
    c: *mut f64,
    ldc: *const c_int,
) {
    let upper = up(*uplo) == b'U';
    let t = up(*trans) != b'N';
    let (n, k, lda, ldc) = (*n as usize, *k as usize, *lda as usize, *ldc as usize);
    if n == 0 {
        return;
    }
    let a = slice::from_raw_parts(
        a,
        if k == 0 {
            0
        } else {
            lda * (if t { n } else { k } - 1) + if t { k } else { n }
        },
    );
    let c = slice::from_raw_parts_mut(c, ldc * (n - 1) + n);
    // op(A) is n×k: element (i, p).
    let opa = |i: usize, p: usize| {
        if t {
            a[at(p, i, lda)]
        } else {
            a[at(i, p, lda)]
        }
    };
    for j in 0..n {
        let rows = if upper { 0..j + 1 } else { j..n };
        for i in rows {
            let s: f64 = (0..k).map(|p| opa(i, p) * opa(j, p)).sum();
            let cij = &mut c[at(i, j, ldc)];
            *cij = if *beta == 0.0 {
                *alpha * s
            } else {
                *alpha * s + *beta * *cij
            };
        }
    }
}

/// C = α·(op(A)·op(B)ᵀ + op(B)·op(A)ᵀ) + β·C on triangle `uplo` of C.
#[no_mangle]
pub unsafe extern "C" fn dsyr2k_(
    uplo: *const c_char,
    trans: *const c_char,
    n: *const c_int,
    k: *const c_int,
    alpha: *const f64,
    a: *const f64,
    lda: *const c_int,
    b: *const f64,
    ldb: *const c_int,
    beta: *const f64,
    c: *mut f64,
    ldc: *const c_int,
) {
    let upper = up(*uplo) == b'U';
    let t = up(*trans) != b'N';
    let (n, k) = (*n as usize, *k as usize);
    let (lda, ldb, ldc) = (*lda as usize, *ldb as usize, *ldc as usize);
    if n == 0 {
        return;
    }
    let len = |ld: usize| {
        if k == 0 {
            0
        } else {
            ld * (if t { n } else { k } - 1) + if t { k } else { n }
        }
    };
    let a = slice::from_raw_parts(a, len(lda));
    let b = slice::from_raw_parts(b, len(ldb));
    let c = slice::from_raw_parts_mut(c, ldc * (n - 1) + n);
    let op = |m: &[f64], ld: usize, i: usize, p: usize| {
        if t {
            m[at(p, i, ld)]
        } else {
            m[at(i, p, ld)]
        }
    };
    for j in 0..n {
        let rows = if upper { 0..j + 1 } else { j..n };
        for i in rows {
            let s: f64 = (0..k)
                .map(|p| op(a, lda, i, p) * op(b, ldb, j, p) + op(b, ldb, i, p) * op(a, lda, j, p))
                .sum();
            let cij = &mut c[at(i, j, ldc)];
            *cij = if *beta == 0.0 {
                *alpha * s
            } else {
                *alpha * s + *beta * *cij
            };
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::ops::cluster) fn ch(c: u8) -> c_char {
        c as c_char
    }

    /// A deterministic column-major m×n matrix.
    pub(in crate::ops::cluster) fn mat(m: usize, n: usize, salt: usize) -> Vec<f64> {
        (0..m * n)
            .map(|k| (((k * 37 + salt * 11) % 23) as f64 - 11.0) / 7.0)
            .collect()
    }

    pub(in crate::ops::cluster) fn naive(
        a: &[f64],
        m: usize,
        k: usize,
        b: &[f64],
        n: usize,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i + j * m] = (0..k).map(|p| a[i + p * m] * b[p + j * k]).sum();
            }
        }
        c
    }

    pub(in crate::ops::cluster) fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
        let mut t = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                t[j + i * n] = a[i + j * m];
            }
        }
        t
    }

    pub(in crate::ops::cluster) fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{x} vs {y}");
        }
    }

    #[test]
    fn gemm_matches_a_direct_product_in_every_transpose_mode() {
        let (m, n, k) = (3usize, 4usize, 5usize);
        let a = mat(m, k, 1);
        let b = mat(k, n, 2);
        let want = naive(&a, m, k, &b, n);
        for (ta, tb) in [(b'N', b'N'), (b'T', b'N'), (b'N', b'T'), (b'T', b'T')] {
            let aa = if ta == b'T' {
                transpose(&a, m, k)
            } else {
                a.clone()
            };
            let bb = if tb == b'T' {
                transpose(&b, k, n)
            } else {
                b.clone()
            };
            let lda = if ta == b'T' { k } else { m } as c_int;
            let ldb = if tb == b'T' { n } else { k } as c_int;
            let mut c = vec![1.0; m * n];
            let (mi, ni, ki, ldc) = (m as c_int, n as c_int, k as c_int, m as c_int);
            unsafe {
                dgemm_(
                    &ch(ta),
                    &ch(tb),
                    &mi,
                    &ni,
                    &ki,
                    &2.0,
                    aa.as_ptr(),
                    &lda,
                    bb.as_ptr(),
                    &ldb,
                    &0.5,
                    c.as_mut_ptr(),
                    &ldc,
                );
            }
            let expect: Vec<f64> = want.iter().map(|x| 2.0 * x + 0.5).collect();
            close(&c, &expect, 1e-12);
        }
    }

    #[test]
    fn gemv_symv_syrk_and_syr2k_follow_their_definitions() {
        let (m, n) = (3usize, 4usize);
        let a = mat(m, n, 3);
        let x = [1.0, -2.0, 0.5, 3.0];
        let mut y = vec![1.0; m];
        let (mi, ni, one) = (m as c_int, n as c_int, 1 as c_int);
        unsafe {
            dgemv_(
                &ch(b'N'),
                &mi,
                &ni,
                &1.0,
                a.as_ptr(),
                &mi,
                x.as_ptr(),
                &one,
                &1.0,
                y.as_mut_ptr(),
                &one,
            )
        };
        let want: Vec<f64> = (0..m)
            .map(|i| 1.0 + (0..n).map(|j| a[i + j * m] * x[j]).sum::<f64>())
            .collect();
        close(&y, &want, 1e-12);
        // Aᵀx with a negative stride on y.
        let mut y = vec![0.0; n];
        let neg = -1 as c_int;
        unsafe {
            dgemv_(
                &ch(b'T'),
                &mi,
                &ni,
                &1.0,
                a.as_ptr(),
                &mi,
                x.as_ptr(),
                &one,
                &0.0,
                y.as_mut_ptr(),
                &neg,
            )
        };
        let want: Vec<f64> = (0..n)
            .rev()
            .map(|j| (0..m).map(|i| a[i + j * m] * x[i]).sum())
            .collect();
        close(&y, &want, 1e-12);
        // A·Aᵀ (3×3) through syrk, upper triangle only; symv with it.
        let aat = naive(&a, m, n, &transpose(&a, m, n), m);
        let mut c = vec![f64::NAN; m * m];
        unsafe {
            dsyrk_(
                &ch(b'U'),
                &ch(b'N'),
                &mi,
                &ni,
                &1.0,
                a.as_ptr(),
                &mi,
                &0.0,
                c.as_mut_ptr(),
                &mi,
            )
        };
        for j in 0..m {
            for i in 0..m {
                if i <= j {
                    assert!((c[i + j * m] - aat[i + j * m]).abs() < 1e-12);
                } else {
                    assert!(c[i + j * m].is_nan(), "lower triangle untouched");
                }
            }
        }
        let v = [0.5, 1.0, -1.0];
        let mut w = vec![0.0; m];
        unsafe {
            dsymv_(
                &ch(b'U'),
                &mi,
                &1.0,
                c.as_ptr(),
                &mi,
                v.as_ptr(),
                &one,
                &0.0,
                w.as_mut_ptr(),
                &one,
            )
        };
        let want: Vec<f64> = (0..m)
            .map(|i| (0..m).map(|j| aat[i + j * m] * v[j]).sum())
            .collect();
        close(&w, &want, 1e-12);
        // syr2k, trans = T: Aᵀ·B + Bᵀ·A for A, B of shape 3×4 gives 4×4 (lower triangle).
        let b = mat(m, n, 4);
        let (at_, bt) = (transpose(&a, m, n), transpose(&b, m, n));
        let s1 = naive(&at_, n, m, &b, n);
        let s2 = naive(&bt, n, m, &a, n);
        let mut c = vec![0.0; n * n];
        unsafe {
            dsyr2k_(
                &ch(b'L'),
                &ch(b'T'),
                &ni,
                &mi,
                &1.0,
                a.as_ptr(),
                &mi,
                b.as_ptr(),
                &mi,
                &0.0,
                c.as_mut_ptr(),
                &ni,
            )
        };
        for j in 0..n {
            for i in j..n {
                assert!((c[i + j * n] - s1[i + j * n] - s2[i + j * n]).abs() < 1e-12);
            }
        }
    }
}
