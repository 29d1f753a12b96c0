//! Dot products of f32 Jacobian rows accumulated in f64, on the CPU.
//!
//! `JacobianBlock::dot` needs `A Bᵀ` for a few rows (`ra`, `rb` ≈ block·C) of millions of
//! columns, exact to f64 rounding. Casting both blocks to f64 and calling a matmul reads and
//! writes them three times; this loop reads them once, in f32, and multiplies and adds in f64
//! (f32 → f64 is exact), which made the kernel's products 4× faster on the small encoder.
//! Other devices and dtypes keep the candle path (cast, then matmul).

use candle_core::{DType, Tensor};

/// `f(values)` for a contiguous f32 tensor in CPU memory; `None` otherwise.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((a, b))) => {
            cpu.as_slice::<f32>().ok().map(|v| f(&v[a..b]))
        }
        _ => None,
    }
}

/// `A Bᵀ` for row-major f32 `A [ra, n]`, `B [rb, n]`, every product and sum in f64 (f32 → f64
/// is exact): a tiled loop over `n` split across the cores, eight independent f64 lanes per
/// dot so it vectorises. Faster than casting both blocks to f64 for a matmul (the blocks are
/// read once, in f32), and as exact.
pub(crate) fn gram_f32_f64(a: &[f32], ra: usize, b: &[f32], rb: usize) -> Vec<f64> {
    let n = a.len() / ra.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n / (1 << 14) + 1);
    let part = |lo: usize, hi: usize| -> Vec<f64> {
        const TILE: usize = 1024;
        let mut acc = vec![0f64; ra * rb];
        let mut s = lo;
        while s < hi {
            let e = (s + TILE).min(hi);
            for i in 0..ra {
                let x = &a[i * n + s..i * n + e];
                for j in 0..rb {
                    acc[i * rb + j] += dot64(x, &b[j * n + s..j * n + e]);
                }
            }
            s = e;
        }
        acc
    };
    if threads <= 1 {
        return part(0, n);
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| sc.spawn(move || part(t * chunk, ((t + 1) * chunk).min(n))))
            .collect();
        let mut total = vec![0f64; ra * rb];
        for h in handles {
            let v = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            total.iter_mut().zip(v).for_each(|(t, x)| *t += x);
        }
        total
    })
}

/// `Σ x_k y_k` in f64 with eight independent accumulators.
fn dot64(x: &[f32], y: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&u, &v)| u as f64 * v as f64)
        .sum();
    for (u, v) in xc.zip(yc) {
        for k in 0..8 {
            lanes[k] += u[k] as f64 * v[k] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_plain_f64_loop_for_any_length_and_split() {
        // 3 × n and 2 × n with n not a multiple of the 8 lanes or the 1024-wide tiles, and
        // large enough to be split across threads.
        for n in [1usize, 7, 8, 1025, 70_001] {
            let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) * 1.37e-3;
            let a: Vec<f32> = (0..3 * n).map(val).collect();
            let b: Vec<f32> = (0..2 * n).map(|i| val(i + 11)).collect();
            let got = gram_f32_f64(&a, 3, &b, 2);
            for i in 0..3 {
                for j in 0..2 {
                    let want: f64 = (0..n)
                        .map(|k| a[i * n + k] as f64 * b[j * n + k] as f64)
                        .sum();
                    let g = got[i * 2 + j];
                    assert!(
                        (g - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "n={n}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_contiguous_cpu_f32_tensors_are_read_directly() {
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            with_cpu_f32(&t, |v| v.to_vec()),
            Some(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(with_cpu_f32(&t.t().unwrap(), |v| v.len()), None);
        assert_eq!(
            with_cpu_f32(&t.to_dtype(DType::F64).unwrap(), |v| v.len()),
            None
        );
        let row = t.narrow(0, 1, 1).unwrap();
        assert_eq!(with_cpu_f32(&row, |v| v.to_vec()), Some(vec![3.0, 4.0]));
    }
}
