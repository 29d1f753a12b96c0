//! The inputs of an adapter-space merge: opening PEFT adapter directories (headers and configs
//! only) and checking that they can be merged at all.
//!
//! Adapters merge only when they adapt the same base model (the base key recorded in
//! `smelt.json` / the artifact's data, with the same quantization) and are of one kind (LoRA,
//! smelt bottleneck adapter, prefix tuning). `mode=factors` needs identical tensor names and
//! shapes and the configuration fields that give those tensors their meaning (LoRA `r`,
//! `lora_alpha`, rsLoRA; adapter activation and placement; prefix geometry). `mode=delta` is
//! LoRA only and lets ranks and alphas differ, but not the adapted modules. Everything here reads
//! JSON and safetensors headers, so `smelt check` refuses a bad merge before any tensor is read.

use crate::diag::OpError;
use crate::nn::peft::adapter_format::PEFT_TYPE as BOTTLENECK;
use crate::nn::peft::io::{read_json, read_safetensors};
use crate::nn::peft::prefix::ENCODER_FILE;
use crate::ops::train::runnable::{label_of, INFO_FILE};
use crate::tensors::header::read_header;
use crate::train::delta::HEADS_FILE;
use crate::value::{Artifact, Kind, Value};
use candle_core::Device;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const MAIN_FILE: &str = "adapter_model.safetensors";
pub const INCOMPATIBLE: &str = "smelt::check::incompatible_adapters";

/// How adapters are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every tensor of the adapter files separately (paper 2).
    Factors,
    /// LoRA in `ΔW = s·B·A` space, re-factorised to `rank` (default: the sum of input ranks).
    Delta { rank: Option<usize> },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Factors => "factors",
            Mode::Delta { .. } => "delta",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftKind {
    Lora,
    Bottleneck,
    Prefix,
}

impl PeftKind {
    fn of(cfg: &Json, dir: &Path) -> Result<PeftKind, OpError> {
        match cfg["peft_type"].as_str() {
            Some("LORA") => Ok(PeftKind::Lora),
            Some("PREFIX_TUNING") => Ok(PeftKind::Prefix),
            Some(t) if t == BOTTLENECK => Ok(PeftKind::Bottleneck),
            other => Err(OpError::new(
                "smelt::peft::unsupported",
                format!("{}: adapter type {other:?} cannot be merged", dir.display()),
            )
            .with_help("smelt merges LORA, PREFIX_TUNING and SMELT_BOTTLENECK adapters")),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PeftKind::Lora => "lora",
            PeftKind::Bottleneck => "adapter",
            PeftKind::Prefix => "prefix",
        }
    }

    /// Config fields that must agree for a factor-wise merge to mean anything.
    fn factor_keys(&self) -> &'static [&'static str] {
        match self {
            PeftKind::Lora => &["r", "lora_alpha", "use_rslora"],
            PeftKind::Bottleneck => &["non_linearity", "bias", "mh_adapter", "output_adapter"],
            PeftKind::Prefix => &[
                "num_virtual_tokens",
                "token_dim",
                "num_layers",
                "num_attention_heads",
            ],
        }
    }
}

/// A tensor read as f32: shape and row-major values.
pub type Tensor32 = (Vec<usize>, Vec<f32>);

/// One opened adapter directory.
#[derive(Debug, Clone)]
pub struct AdapterIn {
    pub art: Arc<Artifact>,
    pub kind: PeftKind,
    /// `adapter_config.json`.
    pub config: Json,
    /// `smelt.json` (or the artifact's data when the directory has none).
    pub info: Json,
    /// Tensor name → shape of `adapter_model.safetensors`.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl AdapterIn {
    pub fn open(art: &Arc<Artifact>) -> Result<AdapterIn, OpError> {
        let dir = &art.dir;
        let config = read_json(&dir.join("adapter_config.json"))?;
        let kind = PeftKind::of(&config, dir)?;
        let info = read_json(&dir.join(INFO_FILE)).unwrap_or_else(|_| art.data.clone());
        let shapes = header_shapes(&dir.join(MAIN_FILE))?;
        Ok(AdapterIn {
            art: art.clone(),
            kind,
            config,
            info,
            shapes,
        })
    }

    pub fn label(&self) -> String {
        label_of(&self.art)
    }

    fn field<'a>(&'a self, path: &[&str]) -> Option<&'a Json> {
        let walk = |mut v: &'a Json| {
            for p in path {
                v = v.get(p)?;
            }
            (!v.is_null()).then_some(v)
        };
        walk(&self.info).or_else(|| walk(&self.art.data))
    }

    pub fn base_key(&self) -> Option<&str> {
        self.field(&["base", "key"]).and_then(Json::as_str)
    }

    pub fn quant(&self) -> Option<&str> {
        self.field(&["quant"]).and_then(Json::as_str)
    }

    /// The configured LoRA rank `r`.
    pub fn lora_r(&self) -> Result<usize, OpError> {
        Ok(crate::nn::peft::config_from_json(&self.config)?.r)
    }

    /// The LoRA scale `α/r` (`α/√r` with rsLoRA).
    pub fn lora_scale(&self) -> Result<f64, OpError> {
        Ok(crate::nn::peft::config_from_json(&self.config)?.scale())
    }

    /// Whether the directory has `file`.
    pub fn has(&self, file: &str) -> bool {
        self.art.dir.join(file).is_file()
    }

    /// Every tensor of `file` as f32 (empty when the file is absent).
    pub fn read(&self, file: &str) -> Result<BTreeMap<String, Tensor32>, OpError> {
        let p = self.art.dir.join(file);
        if !p.is_file() {
            return Ok(BTreeMap::new());
        }
        let mut out = BTreeMap::new();
        for (k, t) in read_safetensors(&p, &Device::Cpu)? {
            out.insert(k, (t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        Ok(out)
    }
}

fn header_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, OpError> {
    Ok(read_header(path)?
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect())
}

/// `(module, 0 for A | 1 for B)` of a LoRA factor's tensor name.
pub fn lora_factor(name: &str) -> Option<(&str, usize)> {
    match (name.find(".lora_A."), name.find(".lora_B.")) {
        (Some(p), _) => Some((&name[..p], 0)),
        (_, Some(p)) => Some((&name[..p], 1)),
        _ => None,
    }
}

/// JSON equality with numbers compared as numbers (`16` = `16.0`) and missing = null.
fn same(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn incompatible(msg: String, help: &str) -> OpError {
    OpError::new(INCOMPATIBLE, msg).with_help(help.to_string())
}

/// The artifacts of a list argument, all models or all adapters.
pub enum Inputs<'a> {
    Models(Vec<&'a Arc<Artifact>>),
    Adapters(Vec<&'a Arc<Artifact>>),
}

/// Splits a realised `List<Model> | List<Adapter>` argument; an empty or mixed list is an error.
pub fn inputs<'a>(values: &'a [Value], op: &str) -> Result<Inputs<'a>, OpError> {
    let arts: Vec<&Arc<Artifact>> = values
        .iter()
        .map(|v| match v {
            Value::Artifact(a) if matches!(a.kind, Kind::Model | Kind::Adapter) => Ok(a),
            other => Err(OpError::new(
                "smelt::run::argument",
                format!("`{op}` merges models or adapters, got {}", other.display()),
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some(first) = arts.first() else {
        return Err(OpError::new(
            "smelt::run::argument",
            format!("`{op}` of an empty list"),
        ));
    };
    mixed(&arts)?;
    Ok(match first.kind {
        Kind::Adapter => Inputs::Adapters(arts),
        _ => Inputs::Models(arts),
    })
}

fn mixed(arts: &[&Arc<Artifact>]) -> Result<(), OpError> {
    if arts.windows(2).any(|w| w[0].kind != w[1].kind) {
        return Err(OpError::new(
            "smelt::merge::mixed_inputs",
            "the list mixes models and adapters",
        )
        .with_help(
            "fold LoRA adapters into their base with `model apply(a)` to merge them with models",
        ));
    }
    Ok(())
}

/// Header-level check of the realised adapters among `values` (unrealised ones are skipped).
pub fn validate(values: &[Value], mode: Mode) -> Result<(), OpError> {
    let arts: Vec<&Arc<Artifact>> = values
        .iter()
        .filter_map(|v| match v {
            Value::Artifact(a) if matches!(a.kind, Kind::Model | Kind::Adapter) => Some(a),
            _ => None,
        })
        .collect();
    mixed(&arts)?;
    if arts.first().is_some_and(|a| a.kind == Kind::Adapter) {
        let ins: Vec<AdapterIn> = arts
            .iter()
            .map(|a| AdapterIn::open(a))
            .collect::<Result<_, _>>()?;
        check_compatible(&ins, mode)?;
    }
    Ok(())
}

/// Checks that `ins` adapt one base, are of one kind and fit together for `mode`.
pub fn check_compatible(ins: &[AdapterIn], mode: Mode) -> Result<(), OpError> {
    let Some(first) = ins.first() else {
        return Ok(());
    };
    let name = |i: usize| format!("adapter {} (`{}`)", i + 1, ins[i].label());
    if matches!(mode, Mode::Delta { .. }) && first.kind != PeftKind::Lora {
        return Err(OpError::new(
            "smelt::merge::delta_needs_lora",
            format!(
                "mode=delta merges LoRA weight deltas, but {} is a {} adapter",
                name(0),
                first.kind.name()
            ),
        )
        .with_help("use mode=factors (the default) for bottleneck adapters and prefixes"));
    }
    let key0 = first.base_key().ok_or_else(|| {
        OpError::new(
            "smelt::peft::no_base",
            format!("{} does not record its base model", name(0)),
        )
        .with_help("load it with `load adapter(path, base=model)`")
    })?;
    for (i, a) in ins.iter().enumerate().skip(1) {
        if a.kind != first.kind {
            return Err(incompatible(
                format!(
                    "{} is a {} adapter but {} is a {} adapter",
                    name(i),
                    a.kind.name(),
                    name(0),
                    first.kind.name()
                ),
                "merge adapters of one kind (all LoRA, all bottleneck adapters or all prefixes)",
            ));
        }
        if a.base_key() != Some(key0) {
            let short =
                |k: Option<&str>| k.map_or("none".to_string(), |k| k.chars().take(12).collect());
            return Err(OpError::new(
                "smelt::check::base_mismatch",
                format!(
                    "{} adapts base {} but {} adapts base {}",
                    name(i),
                    short(a.base_key()),
                    name(0),
                    short(Some(key0))
                ),
            )
            .with_help("adapters merge only on the model they were trained on: train or load them (`load adapter(path, base=…)`) onto the same base"));
        }
        if a.quant() != first.quant() {
            return Err(incompatible(
                format!(
                    "{} was trained on a {} base but {} on a {} base",
                    name(i),
                    a.quant().unwrap_or("full-precision"),
                    name(0),
                    first.quant().unwrap_or("full-precision")
                ),
                "merge adapters trained with the same base quantization",
            ));
        }
        match mode {
            Mode::Factors => {
                for k in first.kind.factor_keys() {
                    if !same(&a.config[*k], &first.config[*k]) {
                        return Err(incompatible(
                            format!(
                                "adapter_config.json `{k}` is {} in {} but {} in {}",
                                a.config[*k],
                                name(i),
                                first.config[*k],
                                name(0)
                            ),
                            if first.kind == PeftKind::Lora {
                                "factor-wise merging needs one LoRA configuration; mode=delta merges LoRA of different ranks exactly"
                            } else {
                                "factor-wise merging needs adapters of one configuration"
                            },
                        ));
                    }
                }
                same_tensors(&a.shapes, &first.shapes, &name(i), &name(0), true)?;
            }
            Mode::Delta { .. } => {
                // Modules and their [out, in] must agree; ranks may differ.
                same_tensors(&a.shapes, &first.shapes, &name(i), &name(0), false)?;
                for (n, s) in &a.shapes {
                    let t = &first.shapes[n];
                    let dim = match lora_factor(n) {
                        Some((_, 0)) => 1,
                        Some(_) => 0,
                        None => continue,
                    };
                    if s.len() != 2 || t.len() != 2 || s[dim] != t[dim] {
                        return Err(incompatible(
                            format!("LoRA factor `{n}` is {s:?} in {} but {t:?} in {}", name(i), name(0)),
                            "the adapters target modules of different shapes: they were trained on different models",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Same tensor names and shapes (LoRA factors' shapes only when `factors` is set: delta mode
/// checks their `[out, in]` itself, since ranks may differ).
fn same_tensors(
    a: &BTreeMap<String, Vec<usize>>,
    b: &BTreeMap<String, Vec<usize>>,
    an: &str,
    bn: &str,
    factors: bool,
) -> Result<(), OpError> {
    let help = "the adapters must target the same modules (same `targets`) of the same base";
    if let Some(n) = a.keys().find(|n| !b.contains_key(*n)) {
        return Err(incompatible(
            format!("tensor `{n}` is in {an} but not in {bn}"),
            help,
        ));
    }
    if let Some(n) = b.keys().find(|n| !a.contains_key(*n)) {
        return Err(incompatible(
            format!("tensor `{n}` is in {bn} but not in {an}"),
            help,
        ));
    }
    for (n, s) in a {
        let t = &b[n];
        if s != t && (factors || lora_factor(n).is_none()) {
            return Err(incompatible(
                format!("tensor `{n}` is {s:?} in {an} but {t:?} in {bn}"),
                "the adapters must share one configuration (rank, size, number of tokens)",
            ));
        }
    }
    Ok(())
}

/// Tensor names of the first adapter's files, for name filters: `adapter_model.safetensors`,
/// then the prefix MLP file and `heads.safetensors` when present.
pub fn tensor_names(first: &AdapterIn) -> Result<Vec<String>, OpError> {
    let mut names: Vec<String> = first.shapes.keys().cloned().collect();
    for f in [ENCODER_FILE, HEADS_FILE] {
        if first.has(f) {
            names.extend(header_shapes(&first.art.dir.join(f))?.into_keys());
        }
    }
    Ok(names)
}
