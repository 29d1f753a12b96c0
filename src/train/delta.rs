//! What training changes in a model — the *delta* — and how it is installed, saved and reloaded.
//!
//! * `Full`: every checkpoint tensor becomes a trainable `Var` (the model is rebuilt from the
//!   vars, so embeddings, norms and projections all train); saved as a full HF directory.
//! * `Lora`: PEFT LoRA factors on the selected projections (frozen base).
//! * `Adapter`: bottleneck adapters after attention / FFN outputs (frozen base).
//! * `Prefix`: per-layer key/value prefixes re-parameterised by an MLP (frozen base).
//!
//! QLoRA / quantized adapters are `Lora` / `Adapter` on a base whose block projections were
//! quantized (`nn::quant`) before the delta was installed.
//!
//! Classification heads (one per task, `cls` format only) are trained alongside and saved in
//! `heads.safetensors` as `classifier.weight`/`.bias` (one task) or `classifier.<task>.weight`
//! (several) — the same names a full model carries inside `model.safetensors`.

use crate::diag::OpError;
use crate::nn::peft::io::{read_safetensors, write_safetensors};
use crate::nn::peft::{AdapterConfig, Adapters, Lora, LoraConfig, Prefix, PrefixConfig};
use crate::nn::{ArchConfig, LoadedModel, Weights};
use crate::train::classify::ClsHead;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const HEADS_FILE: &str = "heads.safetensors";

/// How a delta is made.
#[derive(Debug, Clone)]
pub enum DeltaSpec {
    Full,
    Lora(LoraConfig),
    Adapter(AdapterConfig),
    Prefix(PrefixConfig),
}

/// An installed delta.
pub enum Delta {
    /// Raw checkpoint name → var.
    Full(Vec<(String, Var)>),
    Lora(Lora),
    Adapter(Adapters),
    Prefix(Prefix),
}

impl DeltaSpec {
    pub fn method(&self) -> &'static str {
        match self {
            DeltaSpec::Full => "full",
            DeltaSpec::Lora(_) => "lora",
            DeltaSpec::Adapter(_) => "adapter",
            DeltaSpec::Prefix(_) => "prefix",
        }
    }
}

/// Loads `dir` with every tensor as a trainable var (f32), for full fine-tuning.
pub fn load_trainable(
    dir: &Path,
    device: &Device,
) -> Result<(LoadedModel, Vec<(String, Var)>), OpError> {
    let config = ArchConfig::from_dir(dir)?;
    let w = Weights::open(dir, device)?;
    let mut vars = Vec::new();
    let mut map = HashMap::new();
    for name in w.names().map(str::to_string).collect::<Vec<_>>() {
        let t = w.get_raw(&name)?.to_dtype(DType::F32)?;
        let v = Var::from_tensor(&t)?;
        map.insert(name.clone(), v.as_tensor().clone());
        vars.push((name, v));
    }
    let lm = crate::nn::assemble(dir, config, &mut Weights::from_map(map, device))?;
    Ok((lm, vars))
}

impl Delta {
    /// Installs a fresh delta into `lm` (for `Full`, `lm` must come from [`load_trainable`]).
    pub fn install(
        lm: &mut LoadedModel,
        spec: &DeltaSpec,
        full_vars: Vec<(String, Var)>,
    ) -> Result<Delta, OpError> {
        Ok(match spec {
            DeltaSpec::Full => Delta::Full(full_vars),
            DeltaSpec::Lora(c) => Delta::Lora(Lora::inject(lm.linears_mut(), c)?),
            DeltaSpec::Adapter(c) => Delta::Adapter(Adapters::inject(lm.linears_mut(), c)?),
            DeltaSpec::Prefix(c) => Delta::Prefix(Prefix::inject(lm, c)?),
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        match self {
            Delta::Full(v) => v.iter().map(|(_, v)| v.clone()).collect(),
            Delta::Lora(l) => l.vars(),
            Delta::Adapter(a) => a.vars(),
            Delta::Prefix(p) => p.vars(),
        }
    }

    /// Dropout on (training) or off (evaluation).
    pub fn set_training(&self, on: bool) {
        match self {
            Delta::Full(_) | Delta::Prefix(_) => {}
            Delta::Lora(l) => l.set_training(on),
            Delta::Adapter(a) => a.set_training(on),
        }
    }

    pub fn trainable_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// Head tensor names for `task` among `n_tasks` tasks.
pub fn head_names(task: &str, n_tasks: usize) -> (String, String) {
    if n_tasks == 1 {
        ("classifier.weight".into(), "classifier.bias".into())
    } else {
        (
            format!("classifier.{task}.weight"),
            format!("classifier.{task}.bias"),
        )
    }
}

/// Writes trained heads (task name → head) to `dir/heads.safetensors` (nothing if none).
pub fn save_heads(dir: &Path, heads: &[(String, ClsHead)], n_tasks: usize) -> Result<(), OpError> {
    if heads.is_empty() {
        return Ok(());
    }
    let mut t = BTreeMap::new();
    for (task, h) in heads {
        let (w, b) = head_names(task, n_tasks);
        t.insert(w, h.weight.as_detached_tensor());
        t.insert(b, h.bias.as_detached_tensor());
    }
    write_safetensors(&dir.join(HEADS_FILE), &t, &[("format", "pt")])
}

/// The head for `task` among `tensors` (`classifier.<task>.*` first, then `classifier.*`).
pub fn find_head(
    tensors: &BTreeMap<String, Tensor>,
    task: &str,
) -> Result<Option<ClsHead>, OpError> {
    for (w, b) in [head_names(task, 2), head_names(task, 1)] {
        if let (Some(w), Some(b)) = (tensors.get(&w), tensors.get(&b)) {
            let f = |t: &Tensor| -> Result<Var, OpError> {
                Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
            };
            return Ok(Some(ClsHead::from_vars(f(w)?, f(b)?)?));
        }
    }
    Ok(None)
}

/// Head tensors stored in `dir/heads.safetensors`, if any.
pub fn read_heads(dir: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>, OpError> {
    let p = dir.join(HEADS_FILE);
    if p.is_file() {
        read_safetensors(&p, device)
    } else {
        Ok(BTreeMap::new())
    }
}
