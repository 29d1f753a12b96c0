//! `estimate.*`: statistics of a model on a task's data. First member: the diagonal Fisher.
//!
//! This module holds what `estimate fisher`, `load fisher` and the Fisher-based merges share:
//! the probed model (every float checkpoint tensor as a named parameter), the Fisher loop
//! (one probed forward/backward per batch, batch-size-1 semantics, methods.md §3.4), label
//! sampling, and the Fisher directory layout:
//!
//! ```text
//! fisher/
//!   config.json          copied from the model (so merges see the same vocabulary)
//!   model.safetensors    the model's tensor names; float tensors hold F (f32), integer
//!                        buffers are copied unchanged, so models and Fishers stream side by side
//!   fisher.json          {"format": "smelt-fisher", "examples": N, "labels", "seed", "task", …}
//! ```
//!
//! `F = (1/N) Σ_i (∂ℓ_i/∂θ)²` is the per-example average (the paper code's convention); merges
//! multiply by a scale (by default N) to get the sum-over-data curvature.

#[cfg(test)]
mod exactness;
pub mod fisher;
pub mod gradients;
pub mod log_odds;

use crate::diag::OpError;
use crate::nn::per_example::SquaredGrads;
use crate::nn::probe::Probe;
use crate::nn::{ArchConfig, LoadedModel, Weights};
use crate::tensors::header::Dtype;
use crate::tensors::model_dir::ModelDir;
use crate::tensors::writer::{SafetensorsWriter, WriterOptions};
use crate::train::classify::{cross_entropy, ClsHead};
use crate::train::delta::{head_names, read_heads};
use crate::train::feed::Feed;
use crate::value::Artifact;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The Fisher record beside the tensors.
pub const FISHER_INFO: &str = "fisher.json";
/// The `format` value of smelt's Fisher record.
pub const FISHER_FORMAT: &str = "smelt-fisher";

/// Which label's NLL is differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMode {
    /// `ŷ ~ p(y|x)` (the true Fisher; methods.md §3.4).
    Sampled,
    /// The gold label (the "empirical Fisher").
    Empirical,
}

impl LabelMode {
    pub fn name(self) -> &'static str {
        match self {
            LabelMode::Sampled => "sampled",
            LabelMode::Empirical => "empirical",
        }
    }
}

/// Inverse-CDF draw from `softmax(logits)` with one uniform `u ∈ [0, 1)`: the first class whose
/// cumulative probability exceeds `u` (the last class if rounding leaves none).
pub fn sample_label(logits: &[f32], u: f64) -> u32 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&z| (z as f64 - m).exp()).collect();
    let total: f64 = e.iter().sum();
    let mut cum = 0.0;
    for (k, p) in e.iter().enumerate() {
        cum += p / total;
        if u < cum {
            return k as u32;
        }
    }
    logits.len().saturating_sub(1) as u32
}

/// A model whose every float checkpoint tensor is a known, named parameter.
pub struct ProbedModel {
    pub lm: LoadedModel,
    /// Float tensors of the checkpoint (as f32), by raw checkpoint name; the model holds
    /// exactly these tensors, so a tensor's id names its parameter.
    pub params: Vec<(String, Tensor)>,
    /// Head tensors by name: `classifier.*` of the weights, then `heads.safetensors`.
    pub heads: BTreeMap<String, Tensor>,
}

impl ProbedModel {
    /// Loads an HF directory keeping every tensor's identity (like full fine-tuning's loader,
    /// with frozen tensors instead of vars).
    pub fn load(dir: &Path, device: &Device) -> Result<ProbedModel, OpError> {
        let config = ArchConfig::from_dir(dir)?;
        let header = ModelDir::open(dir)?;
        let w = Weights::open(dir, device)?;
        let mut map = HashMap::new();
        let mut params = Vec::new();
        for (name, dtype, _) in header.signature() {
            let t = w.get_raw(&name)?;
            if dtype.is_float() {
                params.push((name.clone(), t.clone()));
            }
            map.insert(name, t);
        }
        let mut heads = read_heads(dir, device)?;
        for (n, t) in &params {
            if n.starts_with("classifier.") {
                heads.insert(n.clone(), t.clone());
            }
        }
        let lm = crate::nn::assemble(dir, config, &mut Weights::from_map(map, device))?;
        Ok(ProbedModel { lm, params, heads })
    }

    /// The classification head for `task` (`classifier.<task>.*`, then `classifier.*`) with the
    /// names of its weight and bias.
    pub fn head(&self, task: &str) -> Result<Option<(ClsHead, String, String)>, OpError> {
        for (w, b) in [head_names(task, 2), head_names(task, 1)] {
            if let (Some(wt), Some(bt)) = (self.heads.get(&w), self.heads.get(&b)) {
                let var = |t: &Tensor| -> Result<Var, OpError> {
                    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
                };
                return Ok(Some((ClsHead::from_vars(var(wt)?, var(bt)?)?, w, b)));
            }
        }
        Ok(None)
    }
}

/// What one Fisher run averaged.
#[derive(Debug, Clone)]
pub struct FisherValues {
    /// `(name, F)` for every float tensor of the model (and the head), in name order.
    pub tensors: Vec<(String, Tensor)>,
    pub examples: usize,
    pub seconds: f64,
}

/// The diagonal Fisher of `pm` on `feed`'s examples: `F = (1/N) Σ_i g_i²` with `g_i` the
/// gradient of `−log p(ŷ_i | x_i)` with respect to every float parameter, `ŷ_i` sampled from
/// the model's class distribution (one uniform per example from a ChaCha8 stream seeded with
/// `seed`, in example order) or the gold label. One probed backward per batch of `batch`.
/// `head`: the task's cls head with its tensor names (required by the `cls` format).
pub fn diagonal_fisher(
    pm: &mut ProbedModel,
    feed: &Feed,
    head: Option<&(ClsHead, String, String)>,
    labels: LabelMode,
    seed: u64,
    batch: usize,
    progress: bool,
) -> Result<FisherValues, OpError> {
    let start = std::time::Instant::now();
    let mut sq = SquaredGrads::new();
    for (n, t) in &pm.params {
        sq.register(n, t)?;
    }
    if let Some((h, wn, bn)) = head {
        sq.register(wn, h.weight.as_tensor())?;
        sq.register(bn, h.bias.as_tensor())?;
    }
    let probe = Probe::new();
    pm.lm.set_probe(Some(probe.clone()));
    let bar = progress.then(|| indicatif::ProgressBar::new(feed.len() as u64));
    let run = (|| -> Result<(), OpError> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let gold = feed.labels();
        let idx: Vec<usize> = (0..feed.len()).collect();
        for chunk in idx.chunks(batch.max(1)) {
            let mut z = feed.logits(&pm.lm, head.map(|h| &h.0), chunk)?;
            if let Some((h, ..)) = head.filter(|_| feed.needs_head()) {
                // The cls head `z = W h_[CLS] + b` sits outside the model: probe it here.
                let hidden = probe.noted("last_hidden_state").ok_or_else(|| {
                    OpError::new(
                        "smelt::internal",
                        "the encoder did not note its last hidden state",
                    )
                })?;
                let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                z = probe.linear(&z, &cls, h.weight.as_tensor(), Some(h.bias.as_tensor()))?;
            }
            let y: Vec<u32> = match labels {
                LabelMode::Empirical => chunk.iter().map(|&i| gold[i]).collect(),
                LabelMode::Sampled => z
                    .detach()
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .iter()
                    .map(|row| sample_label(row, rng.random::<f64>()))
                    .collect(),
            };
            let grads = cross_entropy(&z, &y)?.sum_all()?.backward()?;
            sq.add_batch(probe.take(), &grads, chunk.len())?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        Ok(())
    })();
    pm.lm.set_probe(None);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    run?;
    let examples = sq.examples();
    Ok(FisherValues {
        tensors: sq.finish(pm.lm.device())?,
        examples,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes a Fisher directory mirroring `model`: float tensors from `values` (zeros where a
/// tensor has none), integer buffers copied, `config.json` copied, `info` as `fisher.json`.
pub fn write_fisher_dir(
    out: &Path,
    model: &ModelDir,
    values: &[(String, Tensor)],
    info: &serde_json::Value,
    metadata: BTreeMap<String, String>,
) -> Result<(), OpError> {
    std::fs::create_dir_all(out)?;
    let values: BTreeMap<&str, &Tensor> = values.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let specs: Vec<(String, Dtype, Vec<usize>)> = model
        .signature()
        .into_iter()
        .map(|(n, d, s)| (n, if d.is_float() { Dtype::F32 } else { d }, s))
        .collect();
    let opts = WriterOptions {
        metadata,
        ..WriterOptions::default()
    };
    let mut w = SafetensorsWriter::create(&out.join("model.safetensors"), &specs, opts)?;
    for (name, dtype, shape) in &specs {
        if !dtype.is_float() {
            w.write_raw(name, model.read_raw(name)?)?;
            continue;
        }
        let numel: usize = shape.iter().product();
        match values.get(name.as_str()) {
            Some(t) => w.write_f32(name, &t.flatten_all()?.to_vec1::<f32>()?)?,
            None => w.write_f32(name, &vec![0f32; numel])?,
        }
    }
    w.finish()?;
    if let Some(config) = model.config() {
        let text = serde_json::to_string_pretty(config).unwrap_or_default() + "\n";
        std::fs::write(out.join("config.json"), text)?;
    }
    crate::nn::peft::io::write_json(&out.join(FISHER_INFO), info)
}

/// The number of examples a Fisher artifact averages, when known.
pub fn fisher_examples(a: &Artifact) -> Option<f64> {
    a.data["examples"].as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cdf_sampling_follows_the_softmax() {
        // p = softmax([0, ln 3]) = [0.25, 0.75].
        let z = [0.0f32, 3f32.ln()];
        assert_eq!(sample_label(&z, 0.0), 0);
        assert_eq!(sample_label(&z, 0.2499), 0);
        assert_eq!(sample_label(&z, 0.2501), 1);
        assert_eq!(sample_label(&z, 0.999_999_999), 1);
        assert_eq!(sample_label(&[5.0, 5.0, 5.0], 0.5), 1);
        // Frequencies from a seeded stream match the probabilities.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| sample_label(&z, rng.random::<f64>()) == 1)
            .count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.015, "{ones}");
    }
}
