//! Per-example gradients summed as squares: the diagonal Fisher's accumulator.
//!
//! `S[θ] += Σ_b (∂ℓ_b/∂θ)²` for every registered parameter — batch-size-1 semantics from one
//! backward per batch, never the square of a batch gradient. [`SquaredGrads::finish`] divides
//! by the number of examples. The sums live on the host in f32 and are updated in place.

use super::{rebuild, Grad, ParamIndex, CODE};
use crate::diag::OpError;
use crate::nn::probe::Recording;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

/// Running `Σ_examples (∂ℓ/∂θ)²` for every registered parameter.
pub struct SquaredGrads {
    index: ParamIndex,
    /// One running sum per parameter of `index`, allocated at its first gradient.
    sums: Vec<Vec<f32>>,
    examples: usize,
}

impl Default for SquaredGrads {
    fn default() -> Self {
        SquaredGrads::new()
    }
}

impl SquaredGrads {
    pub fn new() -> SquaredGrads {
        SquaredGrads {
            index: ParamIndex::new(),
            sums: Vec::new(),
            examples: 0,
        }
    }

    /// Registers parameter `name` held by tensor `t`. Registering another tensor under an
    /// existing name makes it an alias (its gradients add to the same sums).
    pub fn register(&mut self, name: &str, t: &Tensor) -> Result<(), OpError> {
        let i = self.index.register(name, t)?;
        if i == self.sums.len() {
            self.sums.push(Vec::new());
        }
        Ok(())
    }

    /// Examples added so far.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// Adds the squared per-example gradients of a batch of `batch` examples.
    pub fn add_batch(
        &mut self,
        rec: Recording,
        grads: &GradStore,
        batch: usize,
    ) -> Result<(), OpError> {
        for (i, grad) in rebuild(&self.index, &rec, grads, batch)? {
            let e = self.index.entry(i);
            let numel = e.numel();
            let sum = &mut self.sums[i];
            if sum.is_empty() {
                *sum = vec![0f32; numel];
            }
            // One fused pass per gradient (allocating new accumulator tensors every batch
            // cost more than the backward).
            match grad {
                Grad::Outer { g, x } => {
                    if [g.dim(2)?, x.dim(2)?] != e.shape[..] {
                        return Err(OpError::new(
                            CODE,
                            format!("a probed linear does not fit `{}` {:?}", e.name, e.shape),
                        ));
                    }
                    for ex in 0..g.dim(0)? {
                        let m = g.get(ex)?.t()?.matmul(&x.get(ex)?)?;
                        with_f32(&m, |v| add_squares(sum, v))?;
                    }
                }
                Grad::Dense(t) => {
                    let dims = t.dims();
                    if dims.first() != Some(&batch) || dims[1..] != e.shape[..] {
                        return Err(OpError::new(
                            CODE,
                            format!(
                                "per-example gradient of `{}` has shape {dims:?}, the parameter {:?}",
                                e.name, e.shape
                            ),
                        ));
                    }
                    with_f32(&t, |v| {
                        v.chunks_exact(numel).for_each(|ex| add_squares(sum, ex))
                    })?;
                }
                Grad::Rows { rows, data } => {
                    let cols = numel / e.shape.first().copied().unwrap_or(1).max(1);
                    with_f32(&data, |v| {
                        for ex in v.chunks_exact(rows.len() * cols) {
                            for (&r, g) in rows.iter().zip(ex.chunks_exact(cols)) {
                                let dst = &mut sum[r as usize * cols..(r as usize + 1) * cols];
                                dst.iter_mut().zip(g).for_each(|(s, g)| *s += g * g);
                            }
                        }
                    })?;
                }
            }
        }
        self.examples += batch;
        Ok(())
    }

    /// `(name, Σ (∂ℓ/∂θ)² / n)` for every registered parameter (zeros where no gradient came),
    /// in name order; `n` is the number of examples added.
    pub fn finish(self, device: &candle_core::Device) -> Result<Vec<(String, Tensor)>, OpError> {
        let n = self.examples.max(1) as f64;
        let mut out = Vec::with_capacity(self.sums.len());
        for (i, sum) in self.sums.into_iter().enumerate() {
            let e = self.index.entry(i);
            let t = match sum.is_empty() {
                false => (Tensor::from_vec(sum, e.shape.as_slice(), device)? / n)?,
                true => Tensor::zeros(e.shape.as_slice(), DType::F32, device)?,
            };
            out.push((e.name.clone(), t));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Calls `f` with the tensor's values (row-major, f32) — straight from CPU storage when the
/// tensor is contiguous, else from a copy.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, OpError> {
    if t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&cpu.as_slice::<f32>()?[a..b]));
        }
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

/// `dst += src²` elementwise, split over the cores for large tensors.
fn add_squares(dst: &mut [f32], src: &[f32]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(dst.len() / (1 << 16) + 1);
    let run = |d: &mut [f32], s: &[f32]| d.iter_mut().zip(s).for_each(|(d, g)| *d += g * g);
    if threads <= 1 {
        return run(dst, src);
    }
    let chunk = dst.len().div_ceil(threads);
    std::thread::scope(|sc| {
        for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            sc.spawn(move || run(d, s));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::per_example::testnet::{forward, randn};
    use crate::nn::probe::Probe;
    use candle_core::{Device, Var};

    #[test]
    fn probed_squares_equal_a_loop_of_single_example_backwards() {
        // 2 of 9 decoder rows: row-sparse decoder + lookup; 6 of 9: dense decoder + lookup.
        check_against_loop(&[3, 5], &[0, 1]);
        check_against_loop(&[0, 1, 2, 3, 5, 7], &[4, 1]);
    }

    fn check_against_loop(words: &[u32], gold2: &[u32]) {
        let (v, h) = (9, 6);
        let params = [
            ("emb", randn(&[v, h], 1, DType::F32)),
            ("ln.w", randn(&[h], 2, DType::F32).affine(0.1, 1.0).unwrap()),
            ("ln.b", randn(&[h], 3, DType::F32)),
            ("lin.w", randn(&[h, h], 4, DType::F32)),
            ("lin.b", randn(&[h], 5, DType::F32)),
            (
                "rms.w",
                randn(&[h], 6, DType::F32).affine(0.1, 1.0).unwrap(),
            ),
        ];
        let p = |i: usize| &params[i].1;
        let ids =
            Tensor::new(&[[1u32, 3, 3, 0], [5, 2, 7, 1], [4, 4, 4, 8]], &Device::Cpu).unwrap();
        let gold = [gold2[0], gold2[1], 1];
        // Probed: one backward of Σ_b ℓ_b.
        let probe = Probe::new();
        let z = forward(
            words,
            p(0),
            (p(1), p(2)),
            (p(3), p(4)),
            p(5),
            &ids,
            Some(&probe),
        );
        let loss = crate::train::classify::cross_entropy(&z, &gold).unwrap();
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let mut sq = SquaredGrads::new();
        for (n, t) in &params {
            sq.register(n, t).unwrap();
        }
        sq.add_batch(probe.take(), &grads, 3).unwrap();
        assert_eq!(sq.examples(), 3);
        let got = sq.finish(&Device::Cpu).unwrap();
        // Reference: every parameter a Var, one backward per example.
        let vars: Vec<Var> = params
            .iter()
            .map(|(_, t)| Var::from_tensor(t).unwrap())
            .collect();
        let vt = |i: usize| vars[i].as_tensor();
        let mut want: Vec<Tensor> = params
            .iter()
            .map(|(_, t)| t.zeros_like().unwrap())
            .collect();
        for (row, &y) in gold.iter().enumerate() {
            let one = ids.narrow(0, row, 1).unwrap();
            let z = forward(
                words,
                vt(0),
                (vt(1), vt(2)),
                (vt(3), vt(4)),
                vt(5),
                &one,
                None,
            );
            let l = crate::train::classify::cross_entropy(&z, &[y]).unwrap();
            let g = l.sum_all().unwrap().backward().unwrap();
            for (i, w) in want.iter_mut().enumerate() {
                *w = w.add(&g.get(vt(i)).unwrap().sqr().unwrap()).unwrap();
            }
        }
        assert_eq!(got.len(), params.len());
        for (name, got) in &got {
            let i = params.iter().position(|(n, _)| n == name).unwrap();
            let want = (&want[i] / 3.0).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = crate::nn::ops::max_abs_diff(got, &want).unwrap();
            assert!(scale > 0.0, "{name}: the reference gradient is zero");
            assert!(d <= 1e-5 * scale, "{name}: |Δ| = {d}, scale {scale}");
        }
    }

    #[test]
    fn unknown_tensors_and_bad_batches_are_errors() {
        let probe = Probe::new();
        let w = Var::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[1f32, 1.0], [2.0, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
        let y = probe.linear(&y, &x, w.as_tensor(), None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let mut sq = SquaredGrads::new();
        let rec = probe.take();
        let e = sq.add_batch(rec, &grads, 3).unwrap_err();
        assert_eq!(e.code, CODE);
        sq.register("w", w.as_tensor()).unwrap();
        let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
        let y = probe.linear(&y, &x, w.as_tensor(), None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(
            sq.add_batch(probe.take(), &grads, 2).is_err(),
            "3 rows are not 2 examples"
        );
        assert!(sq
            .register("w", &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())
            .is_err());
    }
}
