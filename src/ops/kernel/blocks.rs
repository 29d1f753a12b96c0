//! The block loop behind `kernel.*`: a [`KernelModel`] (probed model, cls head, selected
//! parameters) turns a block of examples into its outputs `f` and their Jacobian rows;
//! [`compute`] holds one training block while it walks the evaluation blocks, so memory is two
//! blocks (`block·C·D` floats each), never `N·D`. When both sides are the same feed (the
//! training kernel) the diagonal blocks reuse the training Jacobians and the blocks below the
//! diagonal are mirrored from those above (for the asymmetric kernel, from the flip), which
//! halves the work without changing a bit of the result.

use super::{lora_error, selected, KernelKind, CODE};
use crate::diag::OpError;
use crate::nn::per_example::{JacobianBlock, ParamIndex};
use crate::nn::probe::Probe;
use crate::ops::estimate::ProbedModel;
use crate::train::classify::ClsHead;
use crate::train::feed::Feed;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

/// The model side: the probed model, its cls head when the format uses one, and the selected
/// parameters.
pub struct KernelModel {
    pub pm: ProbedModel,
    pub head: Option<(ClsHead, String, String)>,
    pub index: ParamIndex,
    probe: Probe,
}

impl KernelModel {
    /// Registers the parameters `selection` keeps (the others are known but skipped) and
    /// installs the probe.
    pub fn new(
        mut pm: ProbedModel,
        head: Option<(ClsHead, String, String)>,
        selection: &str,
    ) -> Result<KernelModel, OpError> {
        if selection == "lora" {
            return Err(lora_error());
        }
        let mut index = ParamIndex::new();
        let mut all: Vec<(&str, &Tensor)> =
            pm.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        if let Some((h, w, b)) = &head {
            all.push((w, h.weight.as_tensor()));
            all.push((b, h.bias.as_tensor()));
        }
        for (name, t) in &all {
            if !selected(selection, name) {
                index.skip(t);
            }
        }
        for (name, t) in all {
            if selected(selection, name) {
                index.register(name, t)?;
            }
        }
        if index.is_empty() {
            return Err(OpError::new(
                CODE,
                format!("`params={selection}` selects no parameter of this model"),
            ));
        }
        let probe = Probe::new();
        pm.lm.set_probe(Some(probe.clone()));
        Ok(KernelModel {
            pm,
            head,
            index,
            probe,
        })
    }

    /// D: the number of scalar parameters in θ.
    pub fn params(&self) -> usize {
        self.index.numel()
    }

    /// The outputs `f` of `feed`'s examples `idx` (`[b, C]`, a differentiable graph through
    /// the probes): class scores, or `f₁ − f₀` when `binary`.
    fn outputs(&self, feed: &Feed, idx: &[usize], binary: bool) -> Result<Tensor, OpError> {
        self.probe.take(); // nothing left over from an interrupted block
        let head = self.head.as_ref().filter(|_| feed.needs_head());
        let mut z = feed.logits(&self.pm.lm, head.map(|h| &h.0), idx)?;
        if let Some((h, ..)) = head {
            // The cls head `z = W h_[CLS] + b` sits outside the model: probe it here.
            let hidden = self.probe.noted("last_hidden_state").ok_or_else(|| {
                OpError::new(
                    "smelt::internal",
                    "the encoder did not note its last hidden state",
                )
            })?;
            let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
            z = self
                .probe
                .linear(&z, &cls, h.weight.as_tensor(), Some(h.bias.as_tensor()))?;
        }
        Ok(match binary {
            true => (z.narrow(1, 1, 1)? - z.narrow(1, 0, 1)?)?,
            false => z,
        })
    }

    /// The Jacobian block of `feed`'s examples `idx` and their outputs `f` (row-major
    /// `[b, C]`, f64).
    pub fn block(
        &self,
        feed: &Feed,
        idx: &[usize],
        binary: bool,
    ) -> Result<(JacobianBlock, Vec<f64>), OpError> {
        let f = self.outputs(feed, idx, binary)?;
        let rec = self.probe.take();
        let stores = (0..f.dim(1)?)
            .map(|c| Ok(f.narrow(1, c, 1)?.sum_all()?.backward()?))
            .collect::<Result<Vec<GradStore>, OpError>>()?;
        let j = JacobianBlock::from_backwards(&self.index, &rec, &stores, idx.len())?;
        let f0 = f
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        Ok((j, f0))
    }
}

impl Drop for KernelModel {
    fn drop(&mut self) {
        self.pm.lm.set_probe(None);
    }
}

/// What a kernel run computed.
#[derive(Debug, Clone)]
pub struct KernelValues {
    /// Outputs per example (1 for binary).
    pub c: usize,
    /// `[N_train, C, N_X, C]`, row-major.
    pub values: Vec<f64>,
    /// The asymmetric kernel's flip, same layout.
    pub flipped: Option<Vec<f64>>,
    pub train_f0: Vec<f64>,
    pub eval_f0: Vec<f64>,
    pub seconds: f64,
}

/// The kernel between `train`'s and `eval`'s examples, `block` examples at a time.
pub fn compute(
    kind: KernelKind,
    model: &KernelModel,
    train: &Feed,
    eval: &Feed,
    binary: bool,
    block: usize,
    progress: bool,
) -> Result<KernelValues, OpError> {
    let start = std::time::Instant::now();
    if binary && train.classes != 2 {
        return Err(OpError::new(
            CODE,
            format!(
                "binary outputs f₁ − f₀ need 2 classes, not {}",
                train.classes
            ),
        ));
    }
    let c = if binary { 1 } else { train.classes };
    let (nt, nx) = (train.len(), eval.len());
    let block = block.max(1);
    let mut values = vec![0f64; nt * c * nx * c];
    let mut flipped = (kind == KernelKind::AsymSignGd).then(|| vec![0f64; values.len()]);
    let (mut train_f0, mut eval_f0) = (vec![0f64; nt * c], vec![0f64; nx * c]);
    let ti: Vec<usize> = (0..nt).collect();
    let xi: Vec<usize> = (0..nx).collect();
    let bar = progress.then(|| indicatif::ProgressBar::new(nt as u64));
    // K[(i,c),(x,c')] for a train block `tb` (rows) and an eval block `xb` (columns), and the
    // transposed placement K[(x,c'),(i,c)] (symmetric case: the mirrored block).
    let place = |dst: &mut [f64], k: &[f64], tb: &[usize], xb: &[usize], mirror: bool| {
        let w = xb.len() * c;
        for (r, row) in k.chunks_exact(w).enumerate() {
            let (i, ci) = (tb[r / c], r % c);
            for (s, &v) in row.iter().enumerate() {
                let (x, cx) = (xb[s / c], s % c);
                match mirror {
                    false => dst[((i * c + ci) * nx + x) * c + cx] = v,
                    true => dst[((x * c + cx) * nx + i) * c + ci] = v,
                }
            }
        }
    };
    // The same feed on both sides (the training kernel): the eval Jacobians of a block pair
    // are the train Jacobians, and only the blocks on and above the diagonal are computed.
    let symmetric = std::ptr::eq(train, eval);
    for (bi, tb) in ti.chunks(block).enumerate() {
        let (jt, f0) = model.block(train, tb, binary)?;
        train_f0[tb[0] * c..tb[0] * c + f0.len()].copy_from_slice(&f0);
        if symmetric {
            eval_f0[tb[0] * c..tb[0] * c + f0.len()].copy_from_slice(&f0);
        }
        let signed = match kind {
            KernelKind::Sgd => None,
            _ => Some(jt.sign()?),
        };
        for (bx, xb) in xi.chunks(block).enumerate() {
            if symmetric && bx < bi {
                continue;
            }
            let (jx, jx_signed) = match symmetric && bx == bi {
                true => (jt.clone(), signed.clone()),
                false => {
                    let (jx, f0) = model.block(eval, xb, binary)?;
                    if bi == 0 && !symmetric {
                        eval_f0[xb[0] * c..xb[0] * c + f0.len()].copy_from_slice(&f0);
                    }
                    let s = signed.is_some().then(|| jx.sign()).transpose()?;
                    (jx, s)
                }
            };
            let k = match (&signed, &jx_signed, kind) {
                (Some(a), Some(b), KernelKind::SignGd) => a.dot(b)?,
                (Some(a), _, _) => a.dot(&jx)?,
                _ => jt.dot(&jx)?,
            };
            // ⟨∇f(x_i), sign ∇f(x)⟩ for the asymmetric kernel's flip.
            let flip = match (kind, &jx_signed) {
                (KernelKind::AsymSignGd, Some(b)) => Some(jt.dot(b)?),
                _ => None,
            };
            place(&mut values, &k, tb, xb, false);
            if let (Some(dst), Some(fl)) = (flipped.as_mut(), &flip) {
                place(dst, fl, tb, xb, false);
            }
            if symmetric && bx != bi {
                // K[x, i] = ⟨·(x), ·(i)⟩: the same products, or the flip's for K^A.
                place(&mut values, flip.as_ref().unwrap_or(&k), tb, xb, true);
                if let Some(dst) = flipped.as_mut() {
                    place(dst, &k, tb, xb, true);
                }
            }
        }
        if let Some(b) = &bar {
            b.inc(tb.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(KernelValues {
        c,
        values,
        flipped,
        train_f0,
        eval_f0,
        seconds: start.elapsed().as_secs_f64(),
    })
}
