//! The eleven double-precision BLAS/LAPACK routines clarabel's PSD-cone code calls, written in
//! Rust (on nalgebra for the eigen- and singular-value decompositions).
//!
//! Why: clarabel's `sdp` feature calls BLAS/LAPACK through the `blas`/`lapack` FFI crates and
//! expects some library to define `dgemm_`, `dsyevr_`, … at link time. The usual providers
//! (OpenBLAS, netlib, MKL) need a system library, a Fortran compiler or a download at build
//! time, none of which a fresh clone on these machines has. So smelt defines exactly the
//! routines clarabel uses (`dgemm dgemv dsymv dsyrk dsyr2k dpotrf dpotrs dsyevr dgesdd dgesvd
//! dgesv`), with LAPACK's column-major conventions, workspace queries (`lwork = -1`) and `info`
//! codes. The problems smelt solves are small (n ≤ a few hundred tasks), where these plain
//! loops are fast enough; the tests below check each routine against a direct computation.
//!
//! Only the double-precision entry points exist: smelt solves in f64 only.
//! This file holds the LAPACK half; the BLAS half is src/ops/cluster/blas.rs.

#![allow(
    clippy::too_many_arguments,
    clippy::missing_safety_doc,
    clippy::needless_range_loop
)]

use super::blas::{at, sym, up};
use nalgebra::DMatrix;
use std::os::raw::{c_char, c_int};
use std::slice;

/// Cholesky factorisation in place: A = L·Lᵀ (`L`) or A = Uᵀ·U (`U`); `info = k` when the
/// leading minor of order k is not positive definite.
#[no_mangle]
pub unsafe extern "C" fn dpotrf_(
    uplo: *const c_char,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    info: *mut c_int,
) {
    let upper = up(*uplo) == b'U';
    let (n, lda) = (*n as usize, *lda as usize);
    *info = 0;
    if n == 0 {
        return;
    }
    let a = slice::from_raw_parts_mut(a, lda * (n - 1) + n);
    // Work on L (lower); for `U` the factor is Lᵀ stored in the upper triangle.
    let idx = |i: usize, j: usize| if upper { at(j, i, lda) } else { at(i, j, lda) };
    for j in 0..n {
        let mut d = a[idx(j, j)];
        for p in 0..j {
            d -= a[idx(j, p)] * a[idx(j, p)];
        }
        if d <= 0.0 || d.is_nan() {
            a[idx(j, j)] = d;
            *info = (j + 1) as c_int;
            return;
        }
        let d = d.sqrt();
        a[idx(j, j)] = d;
        for i in j + 1..n {
            let mut s = a[idx(i, j)];
            for p in 0..j {
                s -= a[idx(i, p)] * a[idx(j, p)];
            }
            a[idx(i, j)] = s / d;
        }
    }
}

/// Solves A·X = B with the factor from [`dpotrf_`].
#[no_mangle]
pub unsafe extern "C" fn dpotrs_(
    uplo: *const c_char,
    n: *const c_int,
    nrhs: *const c_int,
    a: *const f64,
    lda: *const c_int,
    b: *mut f64,
    ldb: *const c_int,
    info: *mut c_int,
) {
    let upper = up(*uplo) == b'U';
    let (n, nrhs, lda, ldb) = (*n as usize, *nrhs as usize, *lda as usize, *ldb as usize);
    *info = 0;
    if n == 0 || nrhs == 0 {
        return;
    }
    let a = slice::from_raw_parts(a, lda * (n - 1) + n);
    let b = slice::from_raw_parts_mut(b, ldb * (nrhs - 1) + n);
    let l = |i: usize, j: usize| {
        if upper {
            a[at(j, i, lda)]
        } else {
            a[at(i, j, lda)]
        }
    };
    for r in 0..nrhs {
        let col = &mut b[r * ldb..r * ldb + n];
        for i in 0..n {
            let mut s = col[i];
            for p in 0..i {
                s -= l(i, p) * col[p];
            }
            col[i] = s / l(i, i);
        }
        for i in (0..n).rev() {
            let mut s = col[i];
            for p in i + 1..n {
                s -= l(p, i) * col[p];
            }
            col[i] = s / l(i, i);
        }
    }
}

/// LU with partial pivoting, then solve: A·X = B (`ipiv` 1-based, as LAPACK).
#[no_mangle]
pub unsafe extern "C" fn dgesv_(
    n: *const c_int,
    nrhs: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    ipiv: *mut c_int,
    b: *mut f64,
    ldb: *const c_int,
    info: *mut c_int,
) {
    let (n, nrhs, lda, ldb) = (*n as usize, *nrhs as usize, *lda as usize, *ldb as usize);
    *info = 0;
    if n == 0 {
        return;
    }
    let a = slice::from_raw_parts_mut(a, lda * (n - 1) + n);
    let ipiv = slice::from_raw_parts_mut(ipiv, n);
    let b = slice::from_raw_parts_mut(b, if nrhs == 0 { 0 } else { ldb * (nrhs - 1) + n });
    for j in 0..n {
        let p = (j..n)
            .max_by(|&x, &y| a[at(x, j, lda)].abs().total_cmp(&a[at(y, j, lda)].abs()))
            .unwrap_or(j);
        ipiv[j] = (p + 1) as c_int;
        if a[at(p, j, lda)] == 0.0 {
            if *info == 0 {
                *info = (j + 1) as c_int;
            }
            continue;
        }
        if p != j {
            for c in 0..n {
                a.swap(at(p, c, lda), at(j, c, lda));
            }
        }
        let d = a[at(j, j, lda)];
        for i in j + 1..n {
            a[at(i, j, lda)] /= d;
            let lij = a[at(i, j, lda)];
            for c in j + 1..n {
                a[at(i, c, lda)] -= lij * a[at(j, c, lda)];
            }
        }
    }
    if *info != 0 {
        return;
    }
    for r in 0..nrhs {
        let col = &mut b[r * ldb..r * ldb + n];
        for j in 0..n {
            col.swap(j, ipiv[j] as usize - 1);
        }
        for i in 0..n {
            for p in 0..i {
                col[i] -= a[at(i, p, lda)] * col[p];
            }
        }
        for i in (0..n).rev() {
            for p in i + 1..n {
                col[i] -= a[at(i, p, lda)] * col[p];
            }
            col[i] /= a[at(i, i, lda)];
        }
    }
}

/// All eigenvalues (ascending) and optionally eigenvectors of a symmetric matrix
/// (`range = A` only, the only range clarabel asks for).
#[no_mangle]
pub unsafe extern "C" fn dsyevr_(
    jobz: *const c_char,
    range: *const c_char,
    uplo: *const c_char,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    _vl: *const f64,
    _vu: *const f64,
    _il: *const c_int,
    _iu: *const c_int,
    _abstol: *const f64,
    m: *mut c_int,
    w: *mut f64,
    z: *mut f64,
    ldz: *const c_int,
    _isuppz: *mut c_int,
    work: *mut f64,
    lwork: *const c_int,
    iwork: *mut c_int,
    liwork: *const c_int,
    info: *mut c_int,
) {
    let nn = *n as usize;
    *info = 0;
    if *lwork == -1 || *liwork == -1 {
        *work = (26 * nn).max(1) as f64;
        *iwork = (10 * nn).max(1) as c_int;
        return;
    }
    if up(*range) != b'A' {
        *info = -2;
        return;
    }
    *m = nn as c_int;
    if nn == 0 {
        return;
    }
    let upper = up(*uplo) == b'U';
    let lda = *lda as usize;
    let a = slice::from_raw_parts_mut(a, lda * (nn - 1) + nn);
    let full = DMatrix::from_fn(nn, nn, |i, j| sym(a, i, j, lda, upper));
    let vectors = up(*jobz) == b'V';
    let eig = nalgebra::SymmetricEigen::new(full);
    let mut order: Vec<usize> = (0..nn).collect();
    order.sort_by(|&x, &y| eig.eigenvalues[x].total_cmp(&eig.eigenvalues[y]));
    let w = slice::from_raw_parts_mut(w, nn);
    for (k, &o) in order.iter().enumerate() {
        w[k] = eig.eigenvalues[o];
    }
    if vectors {
        let ldz = *ldz as usize;
        let z = slice::from_raw_parts_mut(z, ldz * (nn - 1) + nn);
        for (k, &o) in order.iter().enumerate() {
            for i in 0..nn {
                z[at(i, k, ldz)] = eig.eigenvectors[(i, o)];
            }
        }
    }
}

/// Thin SVD (`job = S`): A = U·diag(s)·Vᵀ, singular values descending.
unsafe fn thin_svd(
    m: usize,
    n: usize,
    a: *mut f64,
    lda: usize,
    s: *mut f64,
    u: *mut f64,
    ldu: usize,
    vt: *mut f64,
    ldvt: usize,
) -> c_int {
    let k = m.min(n);
    if k == 0 {
        return 0;
    }
    let a = slice::from_raw_parts(a, lda * (n - 1) + m);
    let mat = DMatrix::from_fn(m, n, |i, j| a[at(i, j, lda)]);
    let Some(svd) = nalgebra::linalg::SVD::try_new(mat, true, true, f64::EPSILON, 0) else {
        return 1;
    };
    let (Some(uu), Some(vv)) = (svd.u, svd.v_t) else {
        return 1;
    };
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
    let s = slice::from_raw_parts_mut(s, k);
    let u = slice::from_raw_parts_mut(u, ldu * (k - 1) + m);
    let vt = slice::from_raw_parts_mut(vt, ldvt * (n - 1) + k);
    for (c, &o) in order.iter().enumerate() {
        s[c] = svd.singular_values[o];
        for i in 0..m {
            u[at(i, c, ldu)] = uu[(i, o)];
        }
        for j in 0..n {
            vt[at(c, j, ldvt)] = vv[(o, j)];
        }
    }
    0
}

/// SVD by divide and conquer (here: nalgebra's SVD; only `jobz = S` is supported).
#[no_mangle]
pub unsafe extern "C" fn dgesdd_(
    jobz: *const c_char,
    m: *const c_int,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    s: *mut f64,
    u: *mut f64,
    ldu: *const c_int,
    vt: *mut f64,
    ldvt: *const c_int,
    work: *mut f64,
    lwork: *const c_int,
    _iwork: *mut c_int,
    info: *mut c_int,
) {
    *info = 0;
    let (mm, nn) = (*m as usize, *n as usize);
    if *lwork == -1 {
        *work = (4 * mm.max(nn) + 1).max(1) as f64;
        return;
    }
    if up(*jobz) != b'S' {
        *info = -1;
        return;
    }
    *info = thin_svd(
        mm,
        nn,
        a,
        *lda as usize,
        s,
        u,
        *ldu as usize,
        vt,
        *ldvt as usize,
    );
}

/// SVD by QR iteration (here: nalgebra's SVD; only `jobu = jobvt = S` is supported).
#[no_mangle]
pub unsafe extern "C" fn dgesvd_(
    jobu: *const c_char,
    jobvt: *const c_char,
    m: *const c_int,
    n: *const c_int,
    a: *mut f64,
    lda: *const c_int,
    s: *mut f64,
    u: *mut f64,
    ldu: *const c_int,
    vt: *mut f64,
    ldvt: *const c_int,
    work: *mut f64,
    lwork: *const c_int,
    info: *mut c_int,
) {
    *info = 0;
    let (mm, nn) = (*m as usize, *n as usize);
    if *lwork == -1 {
        *work = (5 * mm.max(nn) + 1).max(1) as f64;
        return;
    }
    if up(*jobu) != b'S' || up(*jobvt) != b'S' {
        *info = -1;
        return;
    }
    *info = thin_svd(
        mm,
        nn,
        a,
        *lda as usize,
        s,
        u,
        *ldu as usize,
        vt,
        *ldvt as usize,
    );
}

#[cfg(test)]
mod tests {
    use super::super::blas::tests::{ch, close, mat, naive, transpose};
    use super::*;

    /// A symmetric positive definite 4×4: MᵀM + I.
    fn spd() -> Vec<f64> {
        let m = mat(4, 4, 5);
        let mut a = naive(&transpose(&m, 4, 4), 4, 4, &m, 4);
        for i in 0..4 {
            a[i + 4 * i] += 1.0;
        }
        a
    }

    #[test]
    fn cholesky_and_lu_solve_linear_systems_and_flag_singular_ones() {
        let a = spd();
        let b = [1.0, 2.0, -1.0, 0.5];
        let n = 4 as c_int;
        let one = 1 as c_int;
        for uplo in [b'L', b'U'] {
            let mut f = a.clone();
            let mut info = -7;
            let mut x = b;
            unsafe {
                dpotrf_(&ch(uplo), &n, f.as_mut_ptr(), &n, &mut info);
                assert_eq!(info, 0);
                dpotrs_(
                    &ch(uplo),
                    &n,
                    &one,
                    f.as_ptr(),
                    &n,
                    x.as_mut_ptr(),
                    &n,
                    &mut info,
                );
            }
            let ax: Vec<f64> = (0..4)
                .map(|i| (0..4).map(|j| a[i + 4 * j] * x[j]).sum())
                .collect();
            close(&ax, &b, 1e-10);
        }
        // A non-symmetric system by LU.
        let g = mat(4, 4, 6);
        let mut f = g.clone();
        let mut x = b;
        let mut ipiv = [0 as c_int; 4];
        let mut info = -7;
        unsafe {
            dgesv_(
                &n,
                &one,
                f.as_mut_ptr(),
                &n,
                ipiv.as_mut_ptr(),
                x.as_mut_ptr(),
                &n,
                &mut info,
            )
        };
        assert_eq!(info, 0);
        let gx: Vec<f64> = (0..4)
            .map(|i| (0..4).map(|j| g[i + 4 * j] * x[j]).sum())
            .collect();
        close(&gx, &b, 1e-9);
        // Not positive definite: info names the failing minor.
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        let two = 2 as c_int;
        unsafe { dpotrf_(&ch(b'L'), &two, bad.as_mut_ptr(), &two, &mut info) };
        assert_eq!(info, 2);
    }

    #[test]
    fn eigen_and_singular_value_decompositions_reconstruct_their_input() {
        let a = spd();
        let n = 4 as c_int;
        let (mut w, mut z, mut isuppz) = (vec![0.0; 4], vec![0.0; 16], vec![0 as c_int; 8]);
        let (mut work, mut iwork, mut m, mut info) = (vec![0.0; 1], vec![0 as c_int; 1], 0, 0);
        let mut f = a.clone();
        unsafe {
            let q = -1 as c_int;
            dsyevr_(
                &ch(b'V'),
                &ch(b'A'),
                &ch(b'U'),
                &n,
                f.as_mut_ptr(),
                &n,
                &0.0,
                &0.0,
                &0,
                &0,
                &-1.0,
                &mut m,
                w.as_mut_ptr(),
                z.as_mut_ptr(),
                &n,
                isuppz.as_mut_ptr(),
                work.as_mut_ptr(),
                &q,
                iwork.as_mut_ptr(),
                &q,
                &mut info,
            );
            assert!(work[0] >= 1.0 && iwork[0] >= 1);
            work.resize(work[0] as usize, 0.0);
            iwork.resize(iwork[0] as usize, 0);
            let (lw, liw) = (work.len() as c_int, iwork.len() as c_int);
            dsyevr_(
                &ch(b'V'),
                &ch(b'A'),
                &ch(b'U'),
                &n,
                f.as_mut_ptr(),
                &n,
                &0.0,
                &0.0,
                &0,
                &0,
                &-1.0,
                &mut m,
                w.as_mut_ptr(),
                z.as_mut_ptr(),
                &n,
                isuppz.as_mut_ptr(),
                work.as_mut_ptr(),
                &lw,
                iwork.as_mut_ptr(),
                &liw,
                &mut info,
            );
        }
        assert_eq!((info, m), (0, 4));
        assert!(w.windows(2).all(|p| p[0] <= p[1]), "ascending {w:?}");
        for k in 0..4 {
            let v = &z[4 * k..4 * k + 4];
            let av: Vec<f64> = (0..4)
                .map(|i| (0..4).map(|j| a[i + 4 * j] * v[j]).sum())
                .collect();
            close(&av, &v.iter().map(|x| w[k] * x).collect::<Vec<_>>(), 1e-9);
        }
        // Thin SVD of a 5×3 matrix, both entry points.
        let (mm, nn) = (5usize, 3usize);
        let g = mat(mm, nn, 7);
        for dc in [true, false] {
            let (mut s, mut u, mut vt) = (vec![0.0; 3], vec![0.0; 15], vec![0.0; 9]);
            let (mut f, mut work, mut iwork, mut info) =
                (g.clone(), vec![0.0; 1], vec![0 as c_int; 24], 0);
            let (mi, ni, k) = (mm as c_int, nn as c_int, 3 as c_int);
            for pass in 0..2 {
                let lw = if pass == 0 { -1 } else { work.len() as c_int };
                unsafe {
                    if dc {
                        dgesdd_(
                            &ch(b'S'),
                            &mi,
                            &ni,
                            f.as_mut_ptr(),
                            &mi,
                            s.as_mut_ptr(),
                            u.as_mut_ptr(),
                            &mi,
                            vt.as_mut_ptr(),
                            &k,
                            work.as_mut_ptr(),
                            &lw,
                            iwork.as_mut_ptr(),
                            &mut info,
                        );
                    } else {
                        dgesvd_(
                            &ch(b'S'),
                            &ch(b'S'),
                            &mi,
                            &ni,
                            f.as_mut_ptr(),
                            &mi,
                            s.as_mut_ptr(),
                            u.as_mut_ptr(),
                            &mi,
                            vt.as_mut_ptr(),
                            &k,
                            work.as_mut_ptr(),
                            &lw,
                            &mut info,
                        );
                    }
                }
                assert_eq!(info, 0);
                if pass == 0 {
                    work.resize(work[0] as usize, 0.0);
                }
            }
            assert!(s.windows(2).all(|p| p[0] >= p[1]), "descending {s:?}");
            let mut rec = vec![0.0; 15];
            for i in 0..mm {
                for j in 0..nn {
                    rec[i + j * mm] = (0..3).map(|c| u[i + c * mm] * s[c] * vt[c + j * 3]).sum();
                }
            }
            close(&rec, &g, 1e-10);
        }
    }
}
