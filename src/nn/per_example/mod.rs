//! Per-example parameter gradients rebuilt from a probed backward.
//!
//! A [`ParamIndex`] knows the model's parameters (name, tensor id, shape) and which of them are
//! wanted. [`rebuild`] takes the [`Recording`] of a probed forward (see [`crate::nn::probe`])
//! and the `GradStore` of one backward of `Σ_b out_b` (examples do not interact in an
//! eval-mode forward), rebuilds every example's gradient of every wanted parameter from the
//! probes' output gradients and the recorded inputs, and adds the contributions of all uses of
//! a parameter (tied embeddings and decoders). Two consumers:
//!
//! * [`SquaredGrads`] (`squared.rs`): `Σ_b (∂ℓ_b/∂θ)²`, the diagonal Fisher;
//! * [`JacobianBlock`] (`jacobian.rs`): per-example Jacobian rows of a few outputs and their
//!   dot products in f64, the empirical NTK and its sign variants.
//!
//! Storage: a per-example gradient is dense (`[B, …shape]`), a linear weight's factored
//! outer product, or, for the rows of an embedding or vocabulary-sized projection that a batch
//! actually touches, row-sparse (`rows` + `[B, R, cols]`): an embedding lookup only reaches the
//! rows of the batch's tokens, and a decoder whose logits are restricted to a few label words
//! only reaches those rows, so a `[vocab, H]` matrix is never materialised per example.
//! Everything is candle ops on the model's device, in the model's dtype.

mod gram;
mod jacobian;
mod squared;
#[cfg(test)]
mod testnet;

pub use jacobian::JacobianBlock;
pub use squared::SquaredGrads;

use crate::diag::OpError;
use crate::nn::probe::{Recording, Tap};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, D};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

const CODE: &str = "smelt::run::per_example";

/// One parameter's per-example gradient within a batch.
pub(crate) enum Grad {
    /// `[B, …shape]`.
    Dense(Tensor),
    /// A linear weight's `Σ_t g_btᵀ x_bt` kept factored (`g [B, n, out]`, `x [B, n, in]`) and
    /// formed one example at a time when summed, so `[B, out, in]` never exists at once.
    Outer { g: Tensor, x: Tensor },
    /// Rows `rows` (sorted, distinct) of a 2-D parameter: `[B, rows.len(), cols]`.
    Rows { rows: Vec<u32>, data: Tensor },
}

/// A registered parameter.
#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameters whose per-example gradients are rebuilt, by tensor id; plus the tensors a
/// probe may report that are deliberately left out (their gradients are skipped, not errors).
#[derive(Debug, Default)]
pub struct ParamIndex {
    ids: HashMap<TensorId, usize>,
    entries: Vec<ParamEntry>,
    by_name: BTreeMap<String, usize>,
    skipped: HashSet<TensorId>,
}

impl ParamIndex {
    pub fn new() -> ParamIndex {
        ParamIndex::default()
    }

    /// Registers parameter `name` held by tensor `t` and returns its index. Registering
    /// another tensor under an existing name makes it an alias (its gradients add up).
    pub fn register(&mut self, name: &str, t: &Tensor) -> Result<usize, OpError> {
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
                self.entries.push(ParamEntry {
                    name: name.to_string(),
                    shape: t.dims().to_vec(),
                });
                self.by_name
                    .insert(name.to_string(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        self.skipped.remove(&t.id());
        self.ids.insert(t.id(), i);
        Ok(i)
    }

    /// Marks `t` as a known parameter whose gradient is not wanted (unless it is, or later
    /// gets, registered: a tied tensor stays wanted if any of its names is).
    pub fn skip(&mut self, t: &Tensor) {
        if !self.ids.contains_key(&t.id()) {
            self.skipped.insert(t.id());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry(&self, i: usize) -> &ParamEntry {
        &self.entries[i]
    }

    /// The number of scalar parameters registered (each alias counted once).
    pub fn numel(&self) -> usize {
        self.entries.iter().map(ParamEntry::numel).sum()
    }

    fn wanted(&self, id: TensorId) -> Result<bool, OpError> {
        if self.ids.contains_key(&id) {
            return Ok(true);
        }
        if self.skipped.contains(&id) {
            return Ok(false);
        }
        Err(OpError::new(
            CODE,
            "a probed op uses a tensor that is not a registered parameter",
        )
        .with_help("this is a bug in the probe wiring of the model file"))
    }
}

/// Every wanted parameter's per-example gradient of `Σ_b out_b` for a batch of `batch`
/// examples: `grads` is that backward's store, `rec` what the probed forward recorded. The
/// uses of a parameter are added up; parameters that got no gradient are absent.
pub(crate) fn rebuild(
    index: &ParamIndex,
    rec: &Recording,
    grads: &GradStore,
    batch: usize,
) -> Result<BTreeMap<usize, Grad>, OpError> {
    let mut per: BTreeMap<usize, Grad> = BTreeMap::new();
    for site in &rec.sites {
        let Some(g) = grads.get(site.probe.as_tensor()) else {
            continue; // the output did not reach the loss (e.g. an unused pooler)
        };
        for tap in &site.taps {
            for (id, grad) in tap_grads(tap, g, batch, &|id| index.wanted(id))? {
                let i = index.ids[&id];
                let merged = match per.remove(&i) {
                    None => grad,
                    Some(prev) => add(prev, grad, &index.entries[i].shape)?,
                };
                per.insert(i, merged);
            }
        }
    }
    Ok(per)
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
/// Only the tensors `want` accepts are computed (it errs on unknown tensors).
fn tap_grads(
    tap: &Tap,
    g: &Tensor,
    b: usize,
    want: &dyn Fn(TensorId) -> Result<bool, OpError>,
) -> Result<Vec<(TensorId, Grad)>, OpError> {
    let g3 = per_example(g, b)?;
    let mut out = Vec::with_capacity(2);
    match tap {
        Tap::Linear {
            weight,
            bias,
            input,
        } => {
            if let Some(bias) = bias {
                if want(*bias)? {
                    out.push((*bias, Grad::Dense(g3.sum(1)?)));
                }
            }
            if !want(*weight)? {
                return Ok(out);
            }
            let x3 = per_example(input, b)?;
            let o = g3.dim(2)?;
            // Output rows with any gradient in this batch (restricted logits touch a few).
            let touched = g3
                .abs()?
                .sum(1)?
                .sum(0)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
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
            let (ww, wb) = (want(*weight)?, want(*bias)?);
            if wb {
                out.push((*bias, Grad::Dense(g3.sum(1)?)));
            }
            if !ww {
                return Ok(out);
            }
            // x̂ exactly as `candle_nn::ops::layer_norm_slow` computes it for f32 inputs.
            let x = per_example(input, b)?;
            let h = x.dim(2)? as f64;
            let mean = (x.sum_keepdim(2)? / h)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = (xc.sqr()?.sum_keepdim(2)? / h)?;
            let xhat = xc.broadcast_div(&(var + *eps)?.sqrt()?)?;
            out.push((*weight, Grad::Dense((&g3 * xhat)?.sum(1)?)));
        }
        Tap::RmsNorm { weight, .. } | Tap::Lookup { table: weight, .. } if !want(*weight)? => {}
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
