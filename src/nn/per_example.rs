//! Per-example parameter gradients rebuilt from a probed backward, summed as squares.
//!
//! [`SquaredGrads`] knows the model's parameters (name, tensor id, shape). For each batch it
//! takes the [`Recording`] of a probed forward (see [`crate::nn::probe`]) and the `GradStore` of
//! `Σ_b ℓ_b`.backward(), rebuilds every example's gradient of every parameter from the probes'
//! output gradients and the recorded inputs, adds the contributions of all uses of a parameter
//! (tied embeddings and decoders), squares them and sums over the examples:
//! `S[θ] += Σ_b (∂ℓ_b/∂θ)²` — batch-size-1 semantics from one backward per batch, never the
//! square of a batch gradient. [`SquaredGrads::finish`] divides by the number of examples.
//!
//! Storage: a per-example gradient is dense (`[B, …shape]`) or, for the rows of an embedding
//! or vocabulary-sized projection that a batch actually touches, row-sparse (`rows` + `[B, R,
//! cols]`): an embedding lookup only reaches the rows of the batch's tokens, and a decoder whose
//! logits are restricted to a few label words only reaches those rows, so a `[vocab, H]` matrix
//! is never materialised per example. Everything is candle ops on the model's device, in f32.

use crate::diag::OpError;
use crate::nn::probe::{Recording, Tap};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, D};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const CODE: &str = "smelt::run::per_example";

/// One parameter's per-example gradient within a batch.
enum Grad {
    /// `[B, …shape]`.
    Dense(Tensor),
    /// A linear weight's `Σ_t g_btᵀ x_bt` kept factored (`g [B, n, out]`, `x [B, n, in]`) and
    /// formed one example at a time when summed, so `[B, out, in]` never exists at once.
    Outer { g: Tensor, x: Tensor },
    /// Rows `rows` (sorted, distinct) of a 2-D parameter: `[B, rows.len(), cols]`.
    Rows { rows: Vec<u32>, data: Tensor },
}

struct Entry {
    name: String,
    shape: Vec<usize>,
    /// Running sum of squares on the host, allocated at the first gradient.
    sum: Vec<f32>,
}

/// Running `Σ_examples (∂ℓ/∂θ)²` for every registered parameter.
pub struct SquaredGrads {
    ids: HashMap<TensorId, usize>,
    entries: Vec<Entry>,
    by_name: BTreeMap<String, usize>,
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
            ids: HashMap::new(),
            entries: Vec::new(),
            by_name: BTreeMap::new(),
            examples: 0,
        }
    }

    /// Registers parameter `name` held by tensor `t`. Registering another tensor under an
    /// existing name makes it an alias (its gradients add to the same sums).
    pub fn register(&mut self, name: &str, t: &Tensor) -> Result<(), OpError> {
        let i = match self.by_name.get(name) {
            Some(&i) => {
                if self.entries[i].shape != t.dims() {
                    return Err(OpError::new(
                        CODE,
                        format!(
                            "`{name}` registered with shapes {:?} and {:?}",
                            self.entries[i].shape,
                            t.dims()
                        ),
                    ));
                }
                i
            }
            None => {
                self.entries.push(Entry {
                    name: name.to_string(),
                    shape: t.dims().to_vec(),
                    sum: Vec::new(),
                });
                self.by_name
                    .insert(name.to_string(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        self.ids.insert(t.id(), i);
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
        let mut per: HashMap<usize, Grad> = HashMap::new();
        for site in rec.sites {
            let Some(g) = grads.get(site.probe.as_tensor()) else {
                continue; // the output did not reach the loss (e.g. an unused pooler)
            };
            for tap in &site.taps {
                for (id, grad) in tap_grads(tap, g, batch)? {
                    let i = *self.ids.get(&id).ok_or_else(|| {
                        OpError::new(
                            CODE,
                            "a probed op uses a tensor that is not a registered parameter",
                        )
                        .with_help("this is a bug in the probe wiring of the model file")
                    })?;
                    let merged = match per.remove(&i) {
                        None => grad,
                        Some(prev) => add(prev, grad, &self.entries[i].shape)?,
                    };
                    per.insert(i, merged);
                }
            }
        }
        for (i, grad) in per {
            let e = &mut self.entries[i];
            let numel: usize = e.shape.iter().product();
            if e.sum.is_empty() {
                e.sum = vec![0f32; numel];
            }
            // One fused pass per gradient: the sums live on the host and are updated in place
            // (allocating new accumulator tensors every batch cost more than the backward).
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
                        with_f32(&m, |v| add_squares(&mut e.sum, v))?;
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
                        v.chunks_exact(numel)
                            .for_each(|ex| add_squares(&mut e.sum, ex))
                    })?;
                }
                Grad::Rows { rows, data } => {
                    let cols = numel / e.shape.first().copied().unwrap_or(1).max(1);
                    with_f32(&data, |v| {
                        for ex in v.chunks_exact(rows.len() * cols) {
                            for (&r, g) in rows.iter().zip(ex.chunks_exact(cols)) {
                                let dst = &mut e.sum[r as usize * cols..(r as usize + 1) * cols];
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
        let mut out = Vec::with_capacity(self.entries.len());
        let mut entries = self.entries;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let t = match e.sum.is_empty() {
                false => (Tensor::from_vec(e.sum, e.shape.as_slice(), device)? / n)?,
                true => Tensor::zeros(e.shape.as_slice(), DType::F32, device)?,
            };
            out.push((e.name, t));
        }
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

/// `[N, …, d]` → `[b, N·…/b, d]`.
fn per_example(t: &Tensor, b: usize) -> Result<Tensor, OpError> {
    let d = t.dim(D::Minus1)?;
    let n = t.elem_count() / d.max(1);
    if b == 0 || !n.is_multiple_of(b) {
        return Err(OpError::new(
            CODE,
            format!(
                "a probed activation {:?} does not split into {b} examples",
                t.dims()
            ),
        ));
    }
    Ok(t.contiguous()?.reshape((b, n / b, d))?)
}

/// The per-example gradients of the parameters one tap used, from its output gradient `g`.
fn tap_grads(tap: &Tap, g: &Tensor, b: usize) -> Result<Vec<(TensorId, Grad)>, OpError> {
    let g3 = per_example(g, b)?;
    let mut out = Vec::with_capacity(2);
    match tap {
        Tap::Linear {
            weight,
            bias,
            input,
        } => {
            let x3 = per_example(input, b)?;
            let o = g3.dim(2)?;
            if let Some(bias) = bias {
                out.push((*bias, Grad::Dense(g3.sum(1)?)));
            }
            // Output rows with any gradient in this batch (restricted logits touch a few).
            let touched = g3.abs()?.sum(1)?.sum(0)?.to_vec1::<f32>()?;
            let rows: Vec<u32> = (0..o as u32)
                .filter(|&r| touched[r as usize] != 0.0)
                .collect();
            if rows.len() * 2 <= o {
                if !rows.is_empty() {
                    let idx = Tensor::new(rows.as_slice(), g3.device())?;
                    let gs = g3.index_select(&idx, 2)?;
                    let data = gs.transpose(1, 2)?.contiguous()?.matmul(&x3)?;
                    out.push((*weight, Grad::Rows { rows, data }));
                }
            } else {
                out.push((*weight, Grad::Outer { g: g3, x: x3 }));
            }
        }
        Tap::LayerNorm {
            weight,
            bias,
            eps,
            input,
        } => {
            // x̂ exactly as `candle_nn::ops::layer_norm_slow` computes it for f32 inputs.
            let x = per_example(input, b)?;
            let h = x.dim(2)? as f64;
            let mean = (x.sum_keepdim(2)? / h)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = (xc.sqr()?.sum_keepdim(2)? / h)?;
            let xhat = xc.broadcast_div(&(var + *eps)?.sqrt()?)?;
            out.push((*weight, Grad::Dense((&g3 * xhat)?.sum(1)?)));
            out.push((*bias, Grad::Dense(g3.sum(1)?)));
        }
        Tap::RmsNorm { weight, eps, input } => {
            // x̂ exactly as `nn::ops::rms_norm` computes it (mean of squares in f64).
            let x = per_example(input, b)?;
            let ms = x.to_dtype(DType::F64)?.sqr()?.mean_keepdim(2)?;
            let inv = (ms + *eps)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
            let xhat = x.broadcast_mul(&inv)?;
            out.push((*weight, Grad::Dense((&g3 * xhat)?.sum(1)?)));
        }
        Tap::Lookup { table, ids } => {
            let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
            let (n, cols) = (g3.dim(1)?, g3.dim(2)?);
            if ids.len() != b * n {
                return Err(OpError::new(
                    CODE,
                    format!("{} looked-up ids for {b}×{n} positions", ids.len()),
                ));
            }
            let rows: Vec<u32> = ids
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let pos = |id: u32| rows.binary_search(&id).unwrap_or(0) as u32;
            let r = rows.len() as u32;
            let idx: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(k, &id)| (k / n) as u32 * r + pos(id))
                .collect();
            let idx = Tensor::new(idx.as_slice(), g3.device())?;
            let data = Tensor::zeros((b * rows.len(), cols), g3.dtype(), g3.device())?
                .index_add(&idx, &g3.reshape((b * n, cols))?, 0)?
                .reshape((b, rows.len(), cols))?;
            out.push((*table, Grad::Rows { rows, data }));
        }
    }
    Ok(out)
}

/// `data [B, R, c]` (rows `rows`) placed at row positions `pos` of a `[B, total, c]` zero tensor.
fn scatter(data: &Tensor, pos: &[u32], total: usize) -> Result<Tensor, OpError> {
    let (b, r, c) = data.dims3()?;
    let idx: Vec<u32> = (0..b as u32)
        .flat_map(|e| pos.iter().map(move |&p| e * total as u32 + p))
        .collect();
    let idx = Tensor::new(idx.as_slice(), data.device())?;
    Ok(Tensor::zeros((b * total, c), data.dtype(), data.device())?
        .index_add(&idx, &data.reshape((b * r, c))?, 0)?
        .reshape((b, total, c))?)
}

/// `[B, out, in]` from a factored linear gradient.
fn dense(g: Grad) -> Result<Grad, OpError> {
    Ok(match g {
        Grad::Outer { g, x } => Grad::Dense(g.transpose(1, 2)?.contiguous()?.matmul(&x)?),
        other => other,
    })
}

/// The sum of two per-example gradients of one parameter of shape `shape`.
fn add(a: Grad, b: Grad, shape: &[usize]) -> Result<Grad, OpError> {
    Ok(match (dense(a)?, dense(b)?) {
        (Grad::Outer { .. }, _) | (_, Grad::Outer { .. }) => {
            return Err(OpError::new(
                "smelt::internal",
                "a factored gradient was not formed",
            ))
        }
        (Grad::Dense(x), Grad::Dense(y)) => Grad::Dense(x.add(&y)?),
        (Grad::Rows { rows, data }, Grad::Dense(d))
        | (Grad::Dense(d), Grad::Rows { rows, data }) => {
            let total = *shape.first().unwrap_or(&0);
            Grad::Dense(d.add(&scatter(&data, &rows, total)?)?)
        }
        (Grad::Rows { rows: ra, data: da }, Grad::Rows { rows: rb, data: db }) => {
            let rows: Vec<u32> = ra
                .iter()
                .chain(&rb)
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let at = |rs: &[u32]| -> Vec<u32> {
                rs.iter()
                    .map(|r| rows.binary_search(r).unwrap_or(0) as u32)
                    .collect()
            };
            let data =
                scatter(&da, &at(&ra), rows.len())?.add(&scatter(&db, &at(&rb), rows.len())?)?;
            Grad::Rows { rows, data }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::probe::Probe;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::SeedableRng;
        let n = shape.iter().product();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v = crate::ops::model::perturb::gaussian(&mut rng, n);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A tiny network using every tap kind, with a tied embedding / decoder: ids → E[ids] →
    /// LayerNorm → Linear → RMSNorm → mean over positions → decoder Eᵀ restricted to `words`.
    fn forward(
        words: &[u32],
        e: &Tensor,
        ln: (&Tensor, &Tensor),
        lin: (&Tensor, &Tensor),
        rms: &Tensor,
        ids: &Tensor,
        probe: Option<&Probe>,
    ) -> Tensor {
        let (b, t) = ids.dims2().unwrap();
        let mut x = e.index_select(&ids.flatten_all().unwrap(), 0).unwrap();
        x = x.reshape((b, t, e.dim(1).unwrap())).unwrap();
        if let Some(p) = probe {
            let taps = vec![Tap::Lookup {
                table: e.id(),
                ids: ids.clone(),
            }];
            x = p.tap(&x, taps).unwrap();
        }
        let mut y = candle_nn::ops::layer_norm_slow(&x, ln.0, ln.1, 1e-5).unwrap();
        if let Some(p) = probe {
            y = p.layer_norm(&y, &x, ln.0, ln.1, 1e-5).unwrap();
        }
        let mut z = y
            .broadcast_matmul(&lin.0.t().unwrap())
            .unwrap()
            .broadcast_add(lin.1)
            .unwrap();
        if let Some(p) = probe {
            z = p.linear(&z, &y, lin.0, Some(lin.1)).unwrap();
        }
        let mut r = crate::nn::ops::rms_norm(&z, rms, 1e-6).unwrap();
        if let Some(p) = probe {
            r = p.rms_norm(&r, &z, rms, 1e-6).unwrap();
        }
        let pooled = r.mean(1).unwrap();
        let mut logits = pooled.matmul(&e.t().unwrap()).unwrap();
        if let Some(p) = probe {
            logits = p.linear(&logits, &pooled, e, None).unwrap();
        }
        let words = Tensor::new(words, &Device::Cpu).unwrap();
        logits.index_select(&words, 1).unwrap()
    }

    #[test]
    fn probed_squares_equal_a_loop_of_single_example_backwards() {
        // 2 of 9 decoder rows: row-sparse decoder + lookup; 6 of 9: dense decoder + lookup.
        check_against_loop(&[3, 5], &[0, 1]);
        check_against_loop(&[0, 1, 2, 3, 5, 7], &[4, 1]);
    }

    fn check_against_loop(words: &[u32], gold2: &[u32]) {
        let (v, h) = (9, 6);
        let params = [
            ("emb", randn(&[v, h], 1)),
            ("ln.w", randn(&[h], 2).affine(0.1, 1.0).unwrap()),
            ("ln.b", randn(&[h], 3)),
            ("lin.w", randn(&[h, h], 4)),
            ("lin.b", randn(&[h], 5)),
            ("rms.w", randn(&[h], 6).affine(0.1, 1.0).unwrap()),
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
