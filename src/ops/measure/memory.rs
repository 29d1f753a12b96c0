//! `measure memory(ensemble, task, quant=nf4, examples=4)`: what an ensemble costs in memory —
//! M full models against one shared (optionally quantized) base + M adapters (methods.md §1.14,
//! `measure_memory.py`).
//!
//! One row per setting, each built from scratch after the previous one was dropped:
//! * `full_models` — M full models resident at once (adapter members: M copies of the base,
//!   each with its adapter merged in, LoRA folded into the weights; bottleneck/prefix adapters
//!   stay attached); model members: the M models;
//! * `shared_base` — one base as the ensemble runs it + the M adapters' tensors held resident
//!   (as the paper's module keeps every adapter's state dict and swaps them in);
//! * `shared_base_<quant>` — the same on a base whose block projections are quantized
//!   (`quant`, default NF4; `none` drops the row).
//!
//! Each setting then predicts `examples` examples of `task` at batch 1 (every member's forward).
//! Columns: `weight_bytes` — the bytes of the weights resident, counted from tensor shapes
//! (every checkpoint tensor at f32, as `nn::load` holds it; quantized projections at their
//! storage bytes; adapters at their tensors' sizes), a deterministic figure; `peak_rss_mb` —
//! the process's peak resident set (`VmHWM` of /proc/self/status, reset through
//! /proc/self/clear_refs before each setting, Linux only, else `null`) and `added_rss_mb` —
//! that peak minus the resident set before the setting was built. RSS includes everything the
//! process holds: the program, allocator caches, activations of the forward passes, memory
//! mapped files touched, and other threads' work (other nodes, parallel tests), so treat it as
//! indicative and `weight_bytes` as the exact comparison. CPU only: no device memory is read.

use crate::data::TaskData;
use crate::diag::OpError;
use crate::nn::peft::io::read_safetensors;
use crate::nn::quant::{quantize_model, QuantBits};
use crate::nn::LoadedModel;
use crate::ops::ensemble::combine::{attach, for_each_member};
use crate::ops::evaluate::{score, table_value, Overrides};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::ensemble::Ensemble;
use crate::tensors::ModelDir;
use crate::train::delta::Delta;
use crate::types::Ty;
use crate::value::{Kind, Value};
use candle_core::Device;
use serde_json::json;

pub struct Memory;

static SIG: Signature = Signature {
    id: "measure.memory",
    version: 1,
    summary: "Memory of an ensemble: M full models vs one (quantized) shared base + M adapters.",
    doc: "A table with one row per setting (`full_models`, `shared_base`, `shared_base_<quant>`): \
          members, weight_bytes (resident weights counted from tensor shapes: checkpoint tensors at \
          f32, quantized projections at storage size, adapter tensors at theirs), peak_rss_mb \
          (VmHWM after building the setting and predicting `examples` examples at batch 1; reset \
          before each setting) and added_rss_mb (the peak minus the RSS before building). RSS \
          counts the whole process (allocator caches, activations, other threads), so compare \
          weight_bytes exactly and RSS loosely. CPU only.",
    params: &[
        Param::req("ensemble", Ty::Ensemble, "The ensemble to measure."),
        Param::req("task", Ty::Task, "The task whose examples are predicted in each setting."),
        Param::opt("quant", Ty::Enum(&["nf4", "int8", "none"]), Const::Str("nf4"), "Quantization of the extra shared-base row (`none`: no such row)."),
        Param::opt("examples", Ty::Int, Const::Int(4), "Examples predicted (batch 1) in each setting.").range(1.0, 1e6),
        Param::opt("split", Ty::Enum(&["test", "dev", "train"]), Const::Str("test"), "Split the examples come from."),
        Param::opt("max_len", Ty::Int, Const::Int(128), "Maximum tokens per example.").range(8.0, 1e6),
    ],
    returns: Ty::Table,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet e = ensemble weighted([train lora(lm, t, head=prompt) for t in ts])\nreport measure memory(e, ts[0], quant=nf4)"],
    reference: Some("Li et al. (ACL 2025) §1.14, measure_memory.py"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// `(VmRSS, VmHWM)` in bytes, from /proc/self/status (None off Linux).
pub fn rss() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |k: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(k))?;
        let kb: u64 = line[k.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0); false when it cannot.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Bytes of every checkpoint tensor of `dir` at f32.
pub fn checkpoint_f32_bytes(dir: &std::path::Path) -> Result<usize, OpError> {
    Ok(ModelDir::open(dir)?
        .tensors()
        .values()
        .map(|(_, t)| 4 * t.numel())
        .sum())
}

/// A loaded base's resident weight bytes: checkpoint at f32, minus what quantization saved.
fn base_bytes(lm: &mut LoadedModel, f32_bytes: usize) -> usize {
    let saved: usize = lm
        .linears_mut()
        .iter()
        .filter(|(_, l)| l.quant.is_some())
        .map(|(_, l)| 4 * l.in_dim() * l.out_dim() - l.frozen_bytes())
        .sum();
    f32_bytes - saved
}

fn mb(b: u64) -> f64 {
    (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The first `n` examples of `task`'s split.
fn few(task: &TaskData, split: &str, n: usize) -> TaskData {
    let mut t = task.clone();
    if let Some(xs) = t.splits.get_mut(split) {
        xs.truncate(n);
    }
    t
}

struct Setting {
    name: String,
    members: usize,
    weight_bytes: usize,
}

impl Operator for Memory {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let ens = Ensemble::from_artifact(args.artifact("ensemble", Kind::Ensemble)?)?;
        let task = TaskData::from_artifact(args.artifact("task", Kind::Task)?)?;
        let split = args.str("split")?;
        let t = few(&task, split, args.int("examples")?.max(1) as usize);
        let o = Overrides {
            head: "auto",
            template: None,
            words: None,
            max_len: args.int("max_len")?.max(1) as usize,
            max_new: 1,
        };
        let quant = match args.str("quant")? {
            "nf4" => Some(QuantBits::Nf4),
            "int8" => Some(QuantBits::Int8),
            _ => None,
        };
        let dev = cx.device.clone();
        let mut rows = Vec::new();
        let mut measure = |name: &str,
                           build: &mut dyn FnMut() -> Result<Setting, OpError>|
         -> Result<(), OpError> {
            let reset = reset_peak();
            let before = rss();
            let s = build().map_err(|e| e.context(format!("measuring the `{name}` setting")))?;
            let after = rss();
            let (peak, added) = match (reset, before, after) {
                (true, Some((r0, _)), Some((_, hwm))) => {
                    (json!(mb(hwm)), json!(mb(hwm.saturating_sub(r0))))
                }
                _ => (json!(null), json!(null)),
            };
            rows.push(vec![
                json!(s.name),
                json!(s.members),
                json!(s.weight_bytes),
                peak,
                added,
                json!(t.split(split).len()),
            ]);
            Ok(())
        };
        measure("full_models", &mut || {
            full_models(&ens, &t, split, &o, &dev)
        })?;
        if ens.base.is_some() {
            let own = ens.quant.clone();
            measure("shared_base", &mut || {
                shared_base(&ens, &t, split, &o, &dev, None)
            })?;
            if let Some(q) = quant.filter(|q| own.as_deref() != Some(q.name())) {
                measure("shared_base_q", &mut || {
                    shared_base(&ens, &t, split, &o, &dev, Some(q))
                })?;
            }
        }
        let columns = [
            "setting",
            "members",
            "weight_bytes",
            "peak_rss_mb",
            "added_rss_mb",
            "examples",
        ];
        table_value(cx, columns.iter().map(|s| s.to_string()).collect(), rows)
    }
}

/// M full models resident at once, each predicting the examples.
fn full_models(
    ens: &Ensemble,
    t: &TaskData,
    split: &str,
    o: &Overrides,
    dev: &Device,
) -> Result<Setting, OpError> {
    let mut held = Vec::with_capacity(ens.members.len());
    let mut bytes = 0;
    for m in &ens.members {
        let a = m.artifact();
        let run = match &ens.base {
            Some(base) => {
                let mut lm = crate::nn::load(&base.dir, dev)?;
                if let Some(q) = crate::ops::train::runnable::quant_of(&json!({"quant": ens.quant}))
                {
                    quantize_model(&mut lm, q)?;
                }
                let mut run = attach(lm, &a)?;
                bytes += base_bytes(&mut run.lm, checkpoint_f32_bytes(&base.dir)?);
                match run.delta.take() {
                    Some(Delta::Lora(mut l)) => l.merge(run.lm.linears_mut())?,
                    other => {
                        bytes += other.as_ref().map_or(0, |d| 4 * d.trainable_params());
                        run.delta = other;
                    }
                }
                run
            }
            None => {
                bytes += checkpoint_f32_bytes(&m.dir)?;
                crate::ops::train::runnable::Runnable::load(&a, dev)?
            }
        };
        held.push(run);
    }
    for run in &held {
        score(run, t, split, o, 1, false)?;
    }
    Ok(Setting {
        name: "full_models".into(),
        members: held.len(),
        weight_bytes: bytes,
    })
}

/// One base (quantized with `q`, or as the ensemble runs it) + every adapter's tensors held.
fn shared_base(
    ens: &Ensemble,
    t: &TaskData,
    split: &str,
    o: &Overrides,
    dev: &Device,
    q: Option<QuantBits>,
) -> Result<Setting, OpError> {
    let mut e = ens.clone();
    if let Some(q) = q {
        e.quant = Some(q.name().to_string());
    }
    let base = e.base.clone().expect("adapter ensemble");
    let mut held = Vec::with_capacity(e.members.len());
    let mut bytes = 0;
    for m in &e.members {
        let mut map = read_safetensors(&m.dir.join("adapter_model.safetensors"), dev)?;
        for extra in ["smelt_prefix_encoder.safetensors", "heads.safetensors"] {
            let p = m.dir.join(extra);
            if p.is_file() {
                map.extend(read_safetensors(&p, dev)?);
            }
        }
        bytes += map
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum::<usize>();
        held.push(map);
    }
    let mut counted = false;
    for_each_member(&e, dev, |_, run| {
        if !counted {
            let mut lm = detach_copy(run);
            bytes += base_bytes(&mut lm, checkpoint_f32_bytes(&base.dir)?);
            counted = true;
        }
        score(run, t, split, o, 1, false).map(|_| ())
    })?;
    drop(held);
    Ok(Setting {
        name: match q {
            Some(q) => format!("shared_base_{}", q.name()),
            None => "shared_base".into(),
        },
        members: e.members.len(),
        weight_bytes: bytes,
    })
}

/// A shallow copy of the running base's model (tensors are shared, nothing is duplicated) to
/// read its layers' storage sizes.
fn detach_copy(run: &crate::ops::train::runnable::Runnable) -> LoadedModel {
    run.lm.clone()
}
