//! The output functional of methods.md §1.5 and its per-example gradients with respect to a
//! LoRA adapter's factors: what `estimate gradients`, `affinity first_order` and
//! `measure approx_error` share.
//!
//! `f(x) = log(p/(1−p))` of the gold token's probability `p`, clipped as the paper code does
//! (`p > 0.9 ⇒ p − 0.01`, `p < 0.001 ⇒ p + 0.01`; the shift is a constant, so `∂f/∂p` is taken
//! at the clipped value): the **full-vocabulary** softmax at the label position — the label
//! word at `[MASK]` through the MLM decoder for an encoder prompt, the first token of the gold
//! answer choice after the prompt for a decoder — or the class softmax of a cls head. The
//! full-vocabulary logits are the tracked output of the decoder / `lm_head` layer, kept by the
//! probe's watch (`nn::probe::Probe::watch`).
//!
//! Gradients: a LoRA-only probe taps `u = x Aᵀ` and `(s·u) Bᵀ` of every adapted projection;
//! one backward of `Σ_b f_b` per batch gives every example's gradient of every factor
//! (`nn::per_example`). Factors whose gradient is structurally zero — `A` of a module whose
//! `B = 0`, as at PEFT init — are skipped (known to the index, never rebuilt). The model runs in
//! eval mode (LoRA dropout off).

use crate::data::{PromptTemplate, TaskData, Verbalizer};
use crate::diag::OpError;
use crate::nn::peft::lora::PREFIX;
use crate::nn::per_example::{JacobianBlock, ParamIndex};
use crate::nn::probe::Probe;
use crate::nn::Model;
use crate::ops::train::runnable::Runnable;
use crate::tensors::gradients::ParamSpec;
use crate::train::classify::{log_softmax, ClsHead};
use crate::train::delta::Delta;
use crate::train::feed::{Feed, FormatSpec};
use crate::value::Artifact;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

const CODE: &str = "smelt::run::gradients";

/// Clips a probability as the paper code does before taking log-odds.
pub fn clip_shift(p: f64) -> f64 {
    if p > 0.9 {
        -0.01
    } else if p < 0.001 {
        0.01
    } else {
        0.0
    }
}

/// Which softmax the gold token is read from.
#[derive(Debug, Clone)]
pub enum Gold {
    /// The class scores themselves (cls head).
    Class,
    /// The full vocabulary; the token id of each class.
    Vocab(Vec<u32>),
}

/// A LoRA adapter on its base with a LoRA-only probe installed and its factors indexed.
pub struct AdapterProbe {
    pub run: Runnable,
    pub probe: Probe,
    pub index: ParamIndex,
    /// Every LoRA factor in coordinate order (used ones are registered in `index`).
    pub params: Vec<ParamSpec>,
    vars: Vec<Var>,
}

impl AdapterProbe {
    /// Loads a LoRA adapter artifact (on its recorded base) for per-example gradients.
    pub fn load(adapter: &Artifact, device: &Device) -> Result<AdapterProbe, OpError> {
        let mut run = Runnable::load(adapter, device)?;
        let named = match &run.delta {
            Some(Delta::Lora(l)) => l.named_vars(),
            _ => return Err(OpError::new(
                CODE,
                "per-example adapter gradients need a LoRA adapter",
            )
            .with_help(
                "train one with `train lora(…)` (max_steps=0 gives the PEFT initialisation)",
            )),
        };
        let factors: Vec<(String, Var)> = named
            .into_iter()
            .filter(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B."))
            .collect();
        let zero = |v: &Var| -> Result<bool, OpError> {
            Ok(v.as_tensor()
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                == 0.0)
        };
        let mut index = ParamIndex::new();
        let mut params = Vec::new();
        let mut vars = Vec::new();
        for (name, v) in &factors {
            // A is structurally zero when its module's B is zero: ∂f/∂A = s·Bᵀ(…) = 0.
            let used = match name.find(".lora_A.") {
                Some(p) => {
                    let b = format!("{}.lora_B.{}", &name[..p], &name[p + 8..]);
                    match factors.iter().find(|(n, _)| *n == b) {
                        Some((_, bv)) => !zero(bv)?,
                        None => true,
                    }
                }
                None => true,
            };
            match used {
                true => {
                    index.register(name, v.as_tensor())?;
                }
                false => index.skip(v.as_tensor()),
            }
            params.push(ParamSpec {
                name: name.clone(),
                shape: v.dims().to_vec(),
                used,
            });
            vars.push(v.clone());
        }
        if index.is_empty() {
            return Err(OpError::new(CODE, "the adapter has no LoRA factors"));
        }
        let probe = Probe::lora_only();
        match &run.lm.model {
            Model::Bert(b) => probe.watch(&b.mlm.decoder.weight),
            Model::Llama(l) => probe.watch(&l.lm_head.weight),
        }
        run.lm.set_probe(Some(probe.clone()));
        Ok(AdapterProbe {
            run,
            probe,
            index,
            params,
            vars,
        })
    }

    /// The LoRA factor variables, in `params` order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// D used: the number of coordinates whose gradients are rebuilt.
    pub fn used(&self) -> usize {
        self.index.numel()
    }

    /// The input format of `task`, as `evaluate` chooses it (overrides, the format recorded at
    /// training, the adapter's cls head, else the default prompt).
    pub fn format(
        &self,
        task: &TaskData,
        head: &str,
        template: Option<&str>,
        words: Option<&str>,
        max_len: usize,
    ) -> Result<FormatSpec, OpError> {
        let has_head = self.run.head(&task.name)?.is_some();
        let lm = &self.run.lm;
        match (head, template, words, self.run.formats.get(&task.name)) {
            ("auto", None, None, Some(r)) => Ok(FormatSpec {
                max_len,
                ..r.clone()
            }),
            ("auto", None, None, None) if has_head => {
                FormatSpec::resolve(lm, task, "cls", None, None, max_len)
            }
            ("auto", None, None, None) => {
                FormatSpec::resolve(lm, task, "prompt", None, None, max_len)
            }
            (h, t, w, _) => FormatSpec::resolve(lm, task, h, t, w, max_len),
        }
    }

    /// Where the gold token of `spec` is read from.
    pub fn gold(&self, spec: &FormatSpec, task: &TaskData) -> Result<Gold, OpError> {
        if spec.head == "cls" {
            return Ok(Gold::Class);
        }
        let tok = self.run.lm.tokenizer()?;
        Ok(Gold::Vocab(match &self.run.lm.model {
            Model::Bert(_) => Verbalizer::new(tok, &spec.words)?.ids,
            Model::Llama(_) => {
                let src = spec.template.as_deref().unwrap_or_default();
                let prompt = PromptTemplate::parse(src, spec.words.clone())?;
                prompt
                    .choice_ids(tok, &task.labels)?
                    .iter()
                    .map(|ids| ids.first().copied().unwrap_or(0))
                    .collect()
            }
        }))
    }

    /// The functional `f` of `feed`'s examples `idx` (`[b]`, tracked through the probes).
    pub fn functional(
        &self,
        feed: &Feed,
        gold: &Gold,
        head: Option<&ClsHead>,
        idx: &[usize],
    ) -> Result<Tensor, OpError> {
        self.probe.take();
        self.probe.watched();
        let scores = feed.logits(&self.run.lm, head, idx)?;
        let labels = feed.labels();
        let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
        let (z, y) = match gold {
            Gold::Class => (scores, y),
            Gold::Vocab(ids) => {
                let z = self.probe.watched().ok_or_else(|| {
                    OpError::new("smelt::internal", "the LM head's logits were not kept")
                })?;
                (z, y.iter().map(|&l| ids[l as usize]).collect())
            }
        };
        log_odds(&z, &y)
    }

    /// Per-example gradients of `f` over the used coordinates (row-major `[b, D_used]`, f32)
    /// and `f` itself, for `feed`'s examples `idx`.
    pub fn rows(
        &self,
        feed: &Feed,
        gold: &Gold,
        head: Option<&ClsHead>,
        idx: &[usize],
    ) -> Result<(Vec<f32>, Vec<f64>), OpError> {
        let f = self.functional(feed, gold, head, idx)?;
        let rec = self.probe.take();
        let store = f.sum_all()?.backward()?;
        let j = JacobianBlock::from_backwards(&self.index, &rec, &[store], idx.len())?;
        let rows = j.flatten(&self.index)?;
        let g: Vec<f32> = rows.into_iter().flatten().map(|x| x as f32).collect();
        let f0 = f.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok((g, f0))
    }

    /// `f` without gradients (batches of `batch`).
    pub fn values(
        &self,
        feed: &Feed,
        gold: &Gold,
        head: Option<&ClsHead>,
        batch: usize,
    ) -> Result<Vec<f64>, OpError> {
        let idx: Vec<usize> = (0..feed.len()).collect();
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(batch.max(1)) {
            let f = self.functional(feed, gold, head, chunk)?.detach();
            self.probe.take();
            out.extend(f.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    /// A copy of the current LoRA factor values by key name.
    pub fn values_of_params(&self) -> Result<BTreeMap<String, Tensor>, OpError> {
        self.params
            .iter()
            .zip(&self.vars)
            .map(|(p, v)| Ok((p.name.clone(), v.as_detached_tensor().copy()?)))
            .collect()
    }

    /// Sets every LoRA factor named in `values` (PEFT key names, as `back_project` returns).
    pub fn set_params(&self, values: &BTreeMap<String, Tensor>) -> Result<(), OpError> {
        for (p, v) in self.params.iter().zip(&self.vars) {
            if let Some(t) = values.get(&p.name) {
                v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
            }
        }
        Ok(())
    }
}

impl Drop for AdapterProbe {
    fn drop(&mut self) {
        self.run.lm.set_probe(None);
    }
}

/// Clipped log-odds `log(p/(1−p))` of `softmax(z)[y]` per row (`z [b, V]`), differentiable.
pub fn log_odds(z: &Tensor, y: &[u32]) -> Result<Tensor, OpError> {
    let idx = Tensor::new(y, z.device())?.unsqueeze(1)?;
    let logp = log_softmax(&z.to_dtype(DType::F32)?)?
        .gather(&idx, 1)?
        .squeeze(1)?;
    let p = logp.exp()?;
    let shift: Vec<f32> = p
        .detach()
        .to_vec1::<f32>()?
        .iter()
        .map(|&v| clip_shift(v as f64) as f32)
        .collect();
    let pc = p.broadcast_add(&Tensor::new(shift.as_slice(), z.device())?)?;
    let q = (pc.neg()? + 1.0)?;
    Ok((pc.log()? - q.log()?)?)
}

/// `PREFIX` stripped from a PEFT key (for display).
pub fn short_name(key: &str) -> &str {
    key.strip_prefix(PREFIX).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_odds_follow_the_clipped_formula_and_its_derivative() {
        let dev = Device::Cpu;
        // Rows: p moderate, p > 0.9 (clipped down), p < 0.001 (clipped up).
        let z = Var::new(
            &[[0.0f32, 1.0, -1.0], [8.0, 0.0, 0.0], [-9.0, 0.0, 0.0]],
            &dev,
        )
        .unwrap();
        let f = log_odds(z.as_tensor(), &[1, 0, 0]).unwrap();
        let fv = f.to_vec1::<f32>().unwrap();
        let rows = [[0.0f64, 1.0, -1.0], [8.0, 0.0, 0.0], [-9.0, 0.0, 0.0]];
        let g = f.sum_all().unwrap().backward().unwrap();
        let gz = g.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        for (r, (row, y)) in rows.iter().zip([1usize, 0, 0]).enumerate() {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            let p = (row[y] - lse).exp();
            let pc = p + clip_shift(p);
            assert!(
                (fv[r] as f64 - (pc / (1.0 - pc)).ln()).abs() < 1e-4,
                "row {r}"
            );
            // ∂f/∂z_k = (δ_ky − p_k)·p / (pc (1 − pc)).
            for k in 0..3 {
                let pk = (row[k] - lse).exp();
                let want = (if k == y { 1.0 } else { 0.0 } - pk) * p / (pc * (1.0 - pc));
                assert!(
                    (gz[r][k] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "row {r} col {k}"
                );
            }
        }
        assert!(clip_shift(0.95) < 0.0 && clip_shift(0.0005) > 0.0 && clip_shift(0.5) == 0.0);
    }
}
