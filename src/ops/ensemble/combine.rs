//! Running an ensemble: M forward passes on one shared base, class scores combined as
//! `z = Σ_m w_m · z_m` (methods.md §1.11), predictions = argmax of `z`.
//!
//! Adapter ensembles load the base once (quantized as the adapters were trained) and swap the
//! members in turn: install member m's delta, score every task, remove the delta, install the
//! next — never M copies of the base. Full-model members are loaded one at a time. Each member
//! is fed each task in its own recorded input format (exactly as `evaluate` feeds it alone), so
//! an ensemble of one member with weight 1 scores bit for bit like that member.
//!
//! Losses are computed from the combined scores (`ce_loss` of `z`), never as a weighted sum of
//! the members' losses (the paper's module summed every output tensor, losses included — §1.17).
//! Text metrics answer with the word of the predicted class (an ensemble does not generate).

use crate::data::TaskData;
use crate::diag::OpError;
use crate::nn::peft::io::read_json;
use crate::nn::peft::{Adapters, Lora, Prefix};
use crate::nn::quant::quantize_model;
use crate::nn::LoadedModel;
use crate::ops::evaluate::{score, Overrides, Scored};
use crate::ops::train::runnable::{info_of, label_of, quant_of, Runnable};
use crate::tensors::ensemble::Ensemble;
use crate::train::delta::{read_heads, Delta};
use crate::train::feed::{argmax, FormatSpec};
use crate::value::Artifact;
use candle_core::Device;
use std::collections::BTreeMap;

/// Every member's and the ensemble's scores on each task (`members[m][t]`, `combined[t]`).
pub struct EnsembleScores {
    pub labels: Vec<String>,
    pub members: Vec<Vec<Scored>>,
    pub combined: Vec<Scored>,
}

/// Loads the shared base of an adapter ensemble (quantized like its adapters).
pub fn load_base(ens: &Ensemble, device: &Device) -> Result<Option<LoadedModel>, OpError> {
    let Some(base) = &ens.base else {
        return Ok(None);
    };
    let mut lm = crate::nn::load(&base.dir, device)
        .map_err(|e| e.context("loading the ensemble's shared base model"))?;
    if let Some(bits) = quant_of(&serde_json::json!({"quant": ens.quant})) {
        quantize_model(&mut lm, bits)?;
    }
    Ok(Some(lm))
}

/// Installs adapter `a` into the shared base `lm` (which must carry no other delta).
pub fn attach(mut lm: LoadedModel, a: &Artifact) -> Result<Runnable, OpError> {
    let info = info_of(&a.dir);
    let formats: BTreeMap<String, FormatSpec> = [&info, &a.data]
        .into_iter()
        .find_map(|i| {
            let m: BTreeMap<String, FormatSpec> = i["formats"]
                .as_object()?
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), serde_json::from_value(v.clone()).ok()?)))
                .collect();
            (!m.is_empty()).then_some(m)
        })
        .unwrap_or_default();
    let cfg = read_json(&a.dir.join("adapter_config.json"))?;
    let mut head_tensors = read_heads(&a.dir, lm.device())?;
    let delta = match cfg["peft_type"].as_str() {
        Some("LORA") => {
            let l = Lora::load_adapter(lm.linears_mut(), &a.dir)?;
            for name in ["classifier.weight", "classifier.bias"] {
                if let Some(v) = l.extra(name) {
                    head_tensors
                        .entry(name.into())
                        .or_insert_with(|| v.as_detached_tensor());
                }
            }
            Delta::Lora(l)
        }
        Some(crate::nn::peft::adapter_format::PEFT_TYPE) => {
            Delta::Adapter(Adapters::load_dir(lm.linears_mut(), &a.dir)?)
        }
        Some("PREFIX_TUNING") => Delta::Prefix(Prefix::load_adapter(&mut lm, &a.dir)?),
        other => {
            return Err(OpError::new(
                "smelt::peft::unsupported",
                format!("adapter type {other:?} cannot be run here"),
            )
            .with_help("smelt runs LORA, PREFIX_TUNING and SMELT_BOTTLENECK adapter directories"))
        }
    };
    delta.set_training(false);
    Ok(Runnable {
        lm,
        head_tensors,
        formats,
        label: label_of(a),
        delta: Some(delta),
    })
}

/// Removes the adapter again and gives the bare base back.
pub fn detach(run: Runnable) -> LoadedModel {
    let mut lm = run.lm;
    match run.delta {
        Some(Delta::Lora(mut l)) => l.remove(lm.linears_mut()),
        Some(Delta::Adapter(a)) => a.remove(lm.linears_mut()),
        Some(Delta::Prefix(p)) => p.remove(&mut lm),
        Some(Delta::Full(_)) | None => {}
    }
    lm
}

/// Runs `f` once per member (in member order) with the member installed.
pub fn for_each_member(
    ens: &Ensemble,
    device: &Device,
    mut f: impl FnMut(usize, &Runnable) -> Result<(), OpError>,
) -> Result<(), OpError> {
    let mut base = load_base(ens, device)?;
    for (m, member) in ens.members.iter().enumerate() {
        let a = member.artifact();
        let ctx = |e: OpError| e.context(format!("running ensemble member {}", member.label));
        match base.take() {
            Some(lm) => {
                let run = attach(lm, &a).map_err(ctx)?;
                let r = f(m, &run);
                base = Some(detach(run));
                r.map_err(ctx)?;
            }
            None => {
                let run = Runnable::load(&a, device).map_err(ctx)?;
                f(m, &run).map_err(ctx)?;
            }
        }
    }
    Ok(())
}

/// Scores every member and the ensemble on each task's `split`.
pub fn score_ensemble(
    ens: &Ensemble,
    tasks: &[TaskData],
    split: &str,
    o: &Overrides,
    batch: usize,
    device: &Device,
) -> Result<EnsembleScores, OpError> {
    let mut members: Vec<Vec<Scored>> = Vec::with_capacity(ens.members.len());
    let mut words: Vec<Vec<String>> = Vec::new();
    for_each_member(ens, device, |m, run| {
        let mut per_task = Vec::with_capacity(tasks.len());
        for task in tasks {
            per_task.push(score(run, task, split, o, batch, false)?);
            if m == 0 {
                let w = match (o.words, run.formats.get(&task.name)) {
                    (None, Some(f)) if !f.words.is_empty() => f.words.clone(),
                    _ => task.labels.clone(),
                };
                words.push(w);
            }
        }
        members.push(per_task);
        Ok(())
    })?;
    let mut combined = Vec::with_capacity(tasks.len());
    for (t, task) in tasks.iter().enumerate() {
        let scores: Vec<Vec<Vec<f32>>> = members.iter().map(|s| s[t].logits.clone()).collect();
        let first = &members[0][t];
        if members.iter().any(|s| s[t].gold != first.gold) {
            return Err(OpError::new(
                "smelt::run::ensemble",
                format!(
                    "ensemble members disagree on the gold labels of `{}`",
                    task.name
                ),
            ));
        }
        let logits = Ensemble::combine(ens.weights_for(&task.name), &scores)?;
        let word = |l: u32| words[t].get(l as usize).cloned().unwrap_or_default();
        combined.push(Scored {
            answers: Some(argmax(&logits).into_iter().map(word).collect()),
            gold: first.gold.clone(),
            gold_answers: first.gold_answers.clone(),
            logits,
        });
    }
    Ok(EnsembleScores {
        labels: ens.members.iter().map(|m| m.label.clone()).collect(),
        members,
        combined,
    })
}

/// Softmax probability of the gold class under each row's scores (f64).
pub fn gold_probs(logits: &[Vec<f32>], gold: &[u32]) -> Vec<f64> {
    logits
        .iter()
        .zip(gold)
        .map(|(z, &y)| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let s: f64 = z.iter().map(|&v| (v as f64 - m).exp()).sum();
            (z[y as usize] as f64 - m).exp() / s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::{lora, task};
    use crate::tensors::ensemble::Member;
    use crate::value::Value;

    fn overrides() -> Overrides<'static> {
        Overrides {
            head: "prompt",
            template: None,
            words: None,
            max_len: 64,
            max_new: 1,
        }
    }

    #[test]
    fn combined_scores_are_the_weighted_sum_of_members_run_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ads: Vec<Value> = (0..3)
            .map(|j| lora(&dir.path().join(format!("l{j}")), 21 + j, 0.08))
            .collect();
        let mut t =
            TaskData::from_artifact(task(dir.path(), "movies").as_artifact().unwrap()).unwrap();
        t.splits.get_mut("dev").unwrap().truncate(12);
        let members: Vec<Member> = ads
            .iter()
            .map(|a| Member::of(a.as_artifact().unwrap()).unwrap())
            .collect();
        let w = vec![0.7, -0.4, 1.9];
        let mut per = BTreeMap::new();
        per.insert("movies".to_string(), w.clone());
        let ens = Ensemble::new(members, vec![1.0; 3], per).unwrap();
        let s = score_ensemble(
            &ens,
            std::slice::from_ref(&t),
            "dev",
            &overrides(),
            5,
            &Device::Cpu,
        )
        .unwrap();
        // independent: each adapter loaded alone on its own fresh base
        let alone: Vec<Scored> = ads
            .iter()
            .map(|a| {
                let run = Runnable::load(a.as_artifact().unwrap(), &Device::Cpu).unwrap();
                score(&run, &t, "dev", &overrides(), 5, false).unwrap()
            })
            .collect();
        for (m, a) in alone.iter().enumerate() {
            // swapping adapters on one base leaves nothing behind
            assert_eq!(s.members[m][0].logits, a.logits, "member {m}");
        }
        assert!(
            alone[0].logits != alone[1].logits,
            "the adapters must differ"
        );
        for i in 0..12 {
            for c in 0..2 {
                let want: f64 = (0..3).map(|m| w[m] * alone[m].logits[i][c] as f64).sum();
                let got = s.combined[0].logits[i][c] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
        assert_eq!(s.combined[0].gold, alone[0].gold);
        // the loss comes from the combined scores, not the weighted sum of losses
        let ce = s.combined[0].metric("ce_loss").unwrap();
        let summed: f64 = (0..3)
            .map(|m| w[m] * alone[m].metric("ce_loss").unwrap())
            .sum();
        assert!(
            (ce - crate::train::feed::mean_ce(&s.combined[0].logits, &s.combined[0].gold)).abs()
                < 1e-12
        );
        assert!((ce - summed).abs() > 1e-6);
        // other tasks use the default vector (uniform here)
        assert_eq!(ens.weights_for("topics"), &[1.0; 3]);
    }

    #[test]
    fn gold_probs_are_softmax_entries() {
        let p = gold_probs(&[vec![0.0, (3f32).ln()]], &[1]);
        assert!((p[0] - 0.75).abs() < 1e-7);
    }
}
