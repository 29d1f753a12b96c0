//! Training one new ensemble member for a boosting round (methods.md §1.12).
//!
//! The new member is the same kind of delta as the ensemble's first member (LoRA or bottleneck
//! adapter, same configuration), freshly initialised from one seed per boosting call — so every
//! round starts from the same initial adapter weights, as the paper's `initial_weights.pt` —
//! on the shared (possibly quantized) base. Each task is fed in the first member's recorded
//! format (its default format otherwise), with per-task batches, and a fresh head per task for
//! `cls` formats. Two objectives:
//! * [`Objective::WeightedCe`] — AdaBoost: the batch loss `Σ_i w_i ℓ_i / B` with the ordinary
//!   per-example loss `ℓ_i` (class CE, or the answer-token LM loss for decoders), as the paper's
//!   `Σ w_i·CE / #tokens` — divided by the batch size, not by the batch's `Σ w_i` (the
//!   trainer's `weights=` mean would undo the weights' scale between batches);
//! * [`Objective::GoldMse`] — gradient boosting: `ℓ_i = (z_{i,y_i} − r_i)²`, the raw score of
//!   the gold class (head logit / label-word or first-answer-token logit) regressed on the
//!   residual `r_i` ([`gold_mse`]).

use crate::cache::Key;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::nn::peft::io::read_json;
use crate::nn::peft::{adapter_format, config_from_json};
use crate::ops::ensemble::combine::load_base;
use crate::ops::train::runnable::{info_of, write_result};
use crate::tensors::ensemble::{Ensemble, Member};
use crate::train::classify::ClsHead;
use crate::train::delta::{Delta, DeltaSpec};
use crate::train::feed::{Feed, FormatSpec};
use crate::train::{train, OptimizerConfig, ScheduleKind, TrainConfig};
use crate::value::Value;
use candle_core::{Device, Tensor};
use serde_json::json;
use std::path::Path;

const CODE: &str = "smelt::run::boost";

/// What the new member is trained to do (one entry per training example, tasks concatenated
/// in order, each task's train split in file order).
pub enum Objective {
    WeightedCe(Vec<f64>),
    GoldMse(Vec<f64>),
}

/// The recipe of one boosting round's training.
pub struct FitParams {
    pub lr: f64,
    pub epochs: usize,
    pub batch: usize,
    pub max_len: usize,
    /// Initialisation seed (the same for every round of one boosting call).
    pub init_seed: u64,
    /// Data-order seed (per round).
    pub seed: u64,
}

/// Per-example `(z_{i,y_i} − r_i)²` of class scores `z` `[b, C]`.
pub fn gold_mse(z: &Tensor, gold: &[u32], targets: &[f32]) -> Result<Tensor, OpError> {
    let idx = Tensor::new(gold, z.device())?.unsqueeze(1)?;
    let g = z.gather(&idx, 1)?.squeeze(1)?;
    let r = Tensor::new(targets, z.device())?.to_dtype(g.dtype())?;
    Ok(g.sub(&r)?.sqr()?)
}

/// A fresh delta of the first member's kind and configuration.
fn spec_of(ens: &Ensemble, init_seed: u64) -> Result<DeltaSpec, OpError> {
    let m = &ens.members[0];
    let cfg = read_json(&m.dir.join("adapter_config.json"))?;
    match cfg["peft_type"].as_str() {
        Some("LORA") => {
            let mut c = config_from_json(&cfg)?;
            c.seed = init_seed;
            Ok(DeltaSpec::Lora(c))
        }
        Some(adapter_format::PEFT_TYPE) => {
            let mut c = adapter_format::config_from_json(&cfg)?;
            c.seed = init_seed;
            Ok(DeltaSpec::Adapter(c))
        }
        other => Err(OpError::new(
            CODE,
            format!("boosting trains LoRA or bottleneck adapters; the first member is {other:?}"),
        )
        .with_help("build the ensemble from `train lora|qlora|adapter|qadapter` results")),
    }
}

/// Trains one new member on `tasks` and writes it under `out`.
#[allow(clippy::too_many_arguments)]
pub fn fit_member(
    ens: &Ensemble,
    tasks: &[TaskData],
    objective: &Objective,
    p: &FitParams,
    device: &Device,
    out: &Path,
    key: Key,
    label: &str,
) -> Result<Member, OpError> {
    let base = ens.base.clone().ok_or_else(|| {
        OpError::new(
            CODE,
            "boosting needs an adapter ensemble (members on one shared base)",
        )
    })?;
    let mut lm = load_base(ens, device)?.expect("adapter ensembles have a base");
    let spec = spec_of(ens, p.init_seed)?;
    let delta = Delta::install(&mut lm, &spec, vec![])?;
    let recorded = info_of(&ens.members[0].dir);
    let mut feeds = Vec::with_capacity(tasks.len());
    for (t, task) in tasks.iter().enumerate() {
        let fspec =
            match serde_json::from_value::<FormatSpec>(recorded["formats"][&task.name].clone()) {
                Ok(f) => f,
                Err(_) => FormatSpec::resolve(&lm, task, "auto", None, None, p.max_len)?,
            };
        let feed = Feed::new(&lm, &fspec, task, task.train())?;
        let head = match feed.needs_head() {
            true => Some(ClsHead::new(
                lm.config.hidden_size(),
                feed.classes,
                p.init_seed ^ (0x4845_4144 + t as u64),
                lm.device(),
            )?),
            false => None,
        };
        feeds.push((fspec, feed, head));
    }
    let owner: Vec<(usize, usize)> = feeds
        .iter()
        .enumerate()
        .flat_map(|(t, f)| (0..f.1.len()).map(move |i| (t, i)))
        .collect();
    let per = match objective {
        Objective::WeightedCe(v) | Objective::GoldMse(v) => v,
    };
    if per.len() != owner.len() || owner.is_empty() {
        return Err(OpError::new(
            CODE,
            format!(
                "{} per-example values for {} training examples",
                per.len(),
                owner.len()
            ),
        ));
    }
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::adamw(p.lr),
        schedule: ScheduleKind::Constant,
        epochs: p.epochs,
        batch_size: p.batch.max(1),
        seed: p.seed,
        groups: (tasks.len() > 1).then(|| owner.iter().map(|(t, _)| *t).collect()),
        ..TrainConfig::default()
    };
    let mut vars = delta.vars();
    vars.extend(
        feeds
            .iter()
            .filter_map(|f| f.2.as_ref())
            .flat_map(|h| h.vars()),
    );
    let report = {
        let (lm, feeds, delta) = (&lm, &feeds, &delta);
        let mut loss = |idx: &[usize], _train: bool| -> Result<Tensor, OpError> {
            delta.set_training(true);
            let t = owner[idx[0]].0;
            if idx.iter().any(|&i| owner[i].0 != t) {
                return Err(OpError::new("smelt::internal", "a batch mixes tasks"));
            }
            let local: Vec<usize> = idx.iter().map(|&i| owner[i].1).collect();
            let (_, feed, head) = &feeds[t];
            match objective {
                Objective::WeightedCe(w) => {
                    let l = feed.loss(lm, head.as_ref(), &local)?;
                    let wi: Vec<f32> = idx.iter().map(|&i| w[i] as f32).collect();
                    Ok(l.mul(&Tensor::new(wi.as_slice(), l.device())?.to_dtype(l.dtype())?)?)
                }
                Objective::GoldMse(r) => {
                    let labels = feed.labels();
                    let gold: Vec<u32> = local.iter().map(|&i| labels[i]).collect();
                    let tgt: Vec<f32> = idx.iter().map(|&i| r[i] as f32).collect();
                    gold_mse(&feed.logits(lm, head.as_ref(), &local)?, &gold, &tgt)
                }
            }
        };
        train(&cfg, &vars, owner.len(), None, &mut loss, None)?
    };
    delta.set_training(false);
    let heads: Vec<(String, ClsHead)> = tasks
        .iter()
        .zip(&feeds)
        .filter_map(|(t, f)| f.2.clone().map(|h| (t.name.clone(), h)))
        .collect();
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let formats: serde_json::Map<String, serde_json::Value> = tasks
        .iter()
        .zip(&feeds)
        .map(|(t, f)| (t.name.clone(), json!(f.0)))
        .collect();
    let info = json!({
        "method": format!("{}{}", if ens.quant.is_some() { "q" } else { "" }, spec.method()),
        "label": label,
        "quant": ens.quant,
        "tasks": names,
        "formats": formats,
        "base": {"dir": base.dir, "key": base.key},
        "steps": report.steps,
        "epochs": report.epochs,
        "first_loss": report.losses.first(),
        "final_loss": report.losses.last(),
        "train_seconds": report.seconds,
        "trainable_params": delta.trainable_params(),
        "op": "ensemble.boost",
    });
    let v = write_result(&lm, &delta, &heads, names.len(), &base.dir, out, info, key)?;
    match v {
        Value::Artifact(a) => Member::of(&a),
        _ => Err(OpError::new("smelt::internal", "training wrote no adapter")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_mse_is_the_squared_gold_score_error() {
        let z = Tensor::new(&[[1f32, 2.0, 3.0], [-1.0, 0.5, 0.0]], &Device::Cpu).unwrap();
        let l = gold_mse(&z, &[2, 1], &[0.5, 0.25])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(l, vec![(3.0f32 - 0.5).powi(2), (0.5f32 - 0.25).powi(2)]);
    }
}
