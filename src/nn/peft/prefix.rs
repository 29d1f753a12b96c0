//! Prefix tuning (Li & Liang 2021) with PEFT's `PrefixTuningConfig` semantics and file layout.
//!
//! `P` virtual tokens get, in every layer, a key and a value vector per (key/value) head that are
//! prepended to that layer's attention keys/values; every real token attends to them (the mask
//! gets `P` leading ones). The prefix is produced by a [`PrefixEncoder`]-like module:
//! * `projection = true` (PEFT default): `E [P, d] → Linear(d, e) → tanh → Linear(e, L·2·d)`;
//! * `projection = false`: `E [P, L·2·d]` directly,
//!
//! where `d = token_dim` (BERT: hidden size; Llama with GQA: `num_key_value_heads · head_dim`, as
//! PEFT ≥ 0.12 does) and `e = encoder_hidden` (default `d`). Row `p` of the `[P, L·2·d]` output is
//! `[key₀ | value₀ | key₁ | value₁ | …]`, each `d = heads × head_dim`, i.e. PEFT's
//! `view(P, L·2, heads, head_dim).permute(2, 0, 3, 1, 4).split(2)`.
//!
//! Positions, as HF with `past_key_values` of length `P`: prefix keys get **no RoPE**, and the real
//! tokens take positions `P..P+T` (Llama RoPE; BERT/RoBERTa absolute position embeddings too), so
//! a PEFT-trained prefix reproduces HF's outputs. Inputs must fit `T + P` positions.
//!
//! Init (torch defaults, drawn from `ChaCha8Rng::seed_from_u64(seed)` in this order): `E ~ N(0,
//! 1)`; each Linear's weight and bias `~ U(±1/√fan_in)`.
//!
//! Files ([`Prefix::save_adapter`]): `adapter_config.json` (`peft_type: "PREFIX_TUNING"`, …) and
//! `adapter_model.safetensors` holding `prompt_embeddings [P, L·2·d]`, the *computed* prefix, as
//! PEFT saves it; extra modules as `base_model.model.<name>`. With a projection smelt also writes
//! `smelt_prefix_encoder.safetensors` (PEFT's parameter names `prompt_encoder.default.embedding.
//! weight`, `….transform.0.weight/bias`, `….transform.2.weight/bias`) so that a reload keeps
//! training the MLP; without that file (e.g. from Python) the computed prefix is loaded as a
//! projection-free embedding (PEFT's inference mode). Either way reloaded logits are identical.

use super::io::{ensure_dir, read_json, read_safetensors, write_json, write_safetensors};
use super::{normal, uniform};
use crate::diag::OpError;
use crate::nn::{LoadedModel, Model};
use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Extra file with the MLP re-parameterisation (smelt only; PEFT keeps just the computed prefix).
pub const ENCODER_FILE: &str = "smelt_prefix_encoder.safetensors";
const ENC: &str = "prompt_encoder.default.";
const NAMES: [&str; 4] = [
    "transform.0.weight",
    "transform.0.bias",
    "transform.2.weight",
    "transform.2.bias",
];

/// The function behind a [`PrefixHook`]: per layer, `(keys, values)` each `[heads, P, head_dim]`.
pub type PrefixFn = dyn Fn() -> candle_core::Result<Vec<(Tensor, Tensor)>> + Send + Sync;

/// The prefix slot of a model's attention: recomputed on every forward (so gradients flow).
#[derive(Clone)]
pub struct PrefixHook {
    /// Number of virtual tokens `P`.
    pub len: usize,
    pub kv: Arc<PrefixFn>,
}

impl std::fmt::Debug for PrefixHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrefixHook({} tokens)", self.len)
    }
}

/// Prepends a layer's prefix `[heads, P, hd]` (broadcast over the batch) to `x [B, heads, T, hd]`.
pub fn prepend(prefix: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, _, d) = x.dims4()?;
    let p = prefix.dim(1)?;
    let pre = prefix.to_dtype(x.dtype())?.unsqueeze(0)?;
    Tensor::cat(&[&pre.broadcast_as((b, h, p, d))?.contiguous()?, x], 2)
}

/// Prefix-tuning hyper-parameters (PEFT `PrefixTuningConfig` plus smelt's seed).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixConfig {
    pub num_virtual_tokens: usize,
    /// PEFT `prefix_projection`: re-parameterise through the two-layer MLP.
    pub projection: bool,
    /// PEFT `encoder_hidden_size` (default: the token dim).
    pub encoder_hidden: Option<usize>,
    pub seed: u64,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig {
            num_virtual_tokens: 20,
            projection: true,
            encoder_hidden: None,
            seed: 0,
        }
    }
}

/// An injected prefix: its trainable tensors and the attention geometry it was built for.
pub struct Prefix {
    pub config: PrefixConfig,
    pub num_layers: usize,
    /// Key/value heads per layer (PEFT `num_attention_heads`, after its GQA adjustment).
    pub num_heads: usize,
    pub head_dim: usize,
    /// `num_heads · head_dim` (PEFT `token_dim`).
    pub token_dim: usize,
    pub encoder_hidden: usize,
    /// PEFT `task_type` written to the config (`SEQ_CLS` for encoders, `CAUSAL_LM` for decoders).
    pub task_type: Option<String>,
    embedding: Var,
    /// `[W₁ [e, d], b₁ [e], W₂ [L·2·d, e], b₂ [L·2·d]]` with a projection.
    transform: Option<[Var; 4]>,
    /// Extra trainable tensors saved with the adapter (e.g. `classifier.weight`).
    pub extra: Vec<(String, Var)>,
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefix")
            .field("config", &self.config)
            .field("num_layers", &self.num_layers)
            .field("num_heads", &self.num_heads)
            .field("head_dim", &self.head_dim)
            .finish()
    }
}

/// `[P, L·2·d]` from the embedding and optional MLP.
fn encode(emb: &Tensor, t: Option<&[Tensor; 4]>) -> candle_core::Result<Tensor> {
    match t {
        None => Ok(emb.clone()),
        Some([w1, b1, w2, b2]) => {
            let h = emb.matmul(&w1.t()?)?.broadcast_add(b1)?.tanh()?;
            h.matmul(&w2.t()?)?.broadcast_add(b2)
        }
    }
}

/// `(layers, kv heads, head_dim)` of the model's attention.
fn geometry(model: &LoadedModel) -> (usize, usize, usize) {
    match &model.model {
        Model::Bert(m) => {
            let c = &m.config;
            (c.num_hidden_layers, c.num_attention_heads, c.head_dim())
        }
        Model::Llama(m) => {
            let c = &m.config;
            (c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
        }
    }
}

fn slot(model: &mut LoadedModel) -> &mut Option<PrefixHook> {
    match &mut model.model {
        Model::Bert(m) => &mut m.prefix,
        Model::Llama(m) => &mut m.prefix,
    }
}

fn bad(msg: String) -> OpError {
    OpError::new("smelt::peft::bad_config", msg)
        .with_help("PEFT defaults: num_virtual_tokens = 20, prefix_projection = true")
}

impl Prefix {
    /// Fresh, seeded prefix for `model`, installed in its attention. Errors: a zero size, a
    /// model that already carries a prefix (`smelt::peft::already_injected`).
    pub fn inject(model: &mut LoadedModel, cfg: &PrefixConfig) -> Result<Prefix, OpError> {
        let (l, h, hd) = geometry(model);
        let d = h * hd;
        let e = cfg.encoder_hidden.unwrap_or(d);
        if cfg.num_virtual_tokens == 0 || e == 0 {
            return Err(bad(
                "num_virtual_tokens and encoder_hidden must be positive".into(),
            ));
        }
        let (p, out, dev) = (cfg.num_virtual_tokens, l * 2 * d, model.device().clone());
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, &dev);
        let width = if cfg.projection { d } else { out };
        let emb = t(normal(&mut rng, p * width, 1.0), &[p, width])?;
        let transform = if cfg.projection {
            let (bd, be) = (1.0 / (d as f64).sqrt(), 1.0 / (e as f64).sqrt());
            Some([
                t(uniform(&mut rng, e * d, bd), &[e, d])?,
                t(uniform(&mut rng, e, bd), &[e])?,
                t(uniform(&mut rng, out * e, be), &[out, e])?,
                t(uniform(&mut rng, out, be), &[out])?,
            ])
        } else {
            None
        };
        Prefix::build(model, cfg.clone(), emb, transform, e)
    }

    fn build(
        model: &mut LoadedModel,
        config: PrefixConfig,
        emb: Tensor,
        transform: Option<[Tensor; 4]>,
        encoder_hidden: usize,
    ) -> Result<Prefix, OpError> {
        if slot(model).is_some() {
            return Err(OpError::new(
                "smelt::peft::already_injected",
                "the model already carries a prefix",
            )
            .with_help("remove the first prefix before injecting another"));
        }
        let (num_layers, num_heads, head_dim) = geometry(model);
        let task_type = match &model.model {
            Model::Bert(_) => "SEQ_CLS",
            Model::Llama(_) => "CAUSAL_LM",
        };
        let var = |t: &Tensor| Var::from_tensor(t);
        let transform = match transform {
            Some([a, b, c, d]) => Some([var(&a)?, var(&b)?, var(&c)?, var(&d)?]),
            None => None,
        };
        let prefix = Prefix {
            config,
            num_layers,
            num_heads,
            head_dim,
            token_dim: num_heads * head_dim,
            encoder_hidden,
            task_type: Some(task_type.to_string()),
            embedding: var(&emb)?,
            transform,
            extra: Vec::new(),
        };
        *slot(model) = Some(prefix.hook());
        Ok(prefix)
    }

    /// The attention hook: the tensors share storage with the vars, so optimiser steps show.
    fn hook(&self) -> PrefixHook {
        let emb = self.embedding.as_tensor().clone();
        let tr = self
            .transform
            .as_ref()
            .map(|v| v.clone().map(|x| x.as_tensor().clone()));
        let (p, l, h, hd) = (
            self.config.num_virtual_tokens,
            self.num_layers,
            self.num_heads,
            self.head_dim,
        );
        let kv = move || {
            let all = encode(&emb, tr.as_ref())?
                .reshape((p, l * 2, h, hd))?
                .permute((1, 2, 0, 3))?
                .contiguous()?; // [L·2, heads, P, hd]
            (0..l)
                .map(|i| Ok((all.get(2 * i)?, all.get(2 * i + 1)?)))
                .collect()
        };
        PrefixHook {
            len: p,
            kv: Arc::new(kv),
        }
    }

    /// The computed prefix `[P, L·2·d]` (PEFT's `prompt_embeddings`), detached.
    pub fn prompt_embeddings(&self) -> Result<Tensor, OpError> {
        let tr = self
            .transform
            .as_ref()
            .map(|v| v.clone().map(|x| x.as_detached_tensor()));
        Ok(encode(&self.embedding.as_detached_tensor(), tr.as_ref())?)
    }

    /// Trainable tensors: embedding, then `W₁, b₁, W₂, b₂` (with a projection), then extras.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// [`Prefix::vars`] with PEFT's parameter names (`prompt_encoder.default.embedding.weight`, …).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![(format!("{ENC}embedding.weight"), self.embedding.clone())];
        if let Some(t) = &self.transform {
            v.extend(
                NAMES
                    .iter()
                    .zip(t)
                    .map(|(n, x)| (format!("{ENC}{n}"), x.clone())),
            );
        }
        v.extend(self.extra.iter().cloned());
        v
    }

    /// Registers an extra trainable tensor (e.g. `classifier.weight`) saved with the adapter.
    pub fn add_module_to_save(&mut self, name: &str, var: &Var) -> Result<(), OpError> {
        if self.extra.iter().any(|(n, _)| n == name) {
            return Err(OpError::new(
                "smelt::peft::duplicate",
                format!("`{name}` is already registered"),
            ));
        }
        self.extra.push((name.to_string(), var.clone()));
        Ok(())
    }

    pub fn extra(&self, name: &str) -> Option<&Var> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Takes the prefix out of the model's attention (the model is the base again).
    pub fn remove(&self, model: &mut LoadedModel) {
        *slot(model) = None;
    }

    /// Writes the PEFT directory (see the module docs for exactly what).
    pub fn save_adapter(&self, dir: &Path) -> Result<(), OpError> {
        ensure_dir(dir)?;
        let mut modules: Vec<String> = Vec::new();
        for (n, _) in &self.extra {
            let m = n
                .rsplit_once('.')
                .map_or(n.as_str(), |(m, _)| m)
                .to_string();
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
        let config = json!({
            "peft_type": "PREFIX_TUNING",
            "task_type": self.task_type,
            "num_virtual_tokens": self.config.num_virtual_tokens,
            "token_dim": self.token_dim,
            "num_transformer_submodules": 1,
            "num_attention_heads": self.num_heads,
            "num_layers": self.num_layers,
            "encoder_hidden_size": self.encoder_hidden,
            "prefix_projection": self.config.projection,
            "inference_mode": true,
            "base_model_name_or_path": Value::Null,
            "revision": Value::Null,
            "modules_to_save": if modules.is_empty() { Value::Null } else { json!(modules) },
        });
        write_json(&dir.join("adapter_config.json"), &config)?;
        let mut main = BTreeMap::new();
        main.insert("prompt_embeddings".to_string(), self.prompt_embeddings()?);
        for (n, v) in &self.extra {
            main.insert(format!("base_model.model.{n}"), v.as_detached_tensor());
        }
        let meta = [("format", "pt")];
        write_safetensors(&dir.join("adapter_model.safetensors"), &main, &meta)?;
        let enc_path = dir.join(ENCODER_FILE);
        if self.transform.is_some() {
            let enc: BTreeMap<String, Tensor> = self
                .named_vars()
                .into_iter()
                .filter(|(n, _)| n.starts_with(ENC))
                .map(|(n, v)| (n, v.as_detached_tensor()))
                .collect();
            write_safetensors(
                &enc_path,
                &enc,
                &[("format", "pt"), ("smelt", "prefix MLP")],
            )?;
        } else if enc_path.is_file() {
            std::fs::remove_file(&enc_path)?; // a stale MLP from an earlier save would mislead
        }
        Ok(())
    }

    /// Reads a PEFT prefix directory (smelt's or Python PEFT's) and installs it in `model`.
    pub fn load_adapter(model: &mut LoadedModel, dir: &Path) -> Result<Prefix, OpError> {
        let c = read_json(&dir.join("adapter_config.json"))?;
        let unsup = |m: String| {
            OpError::new("smelt::peft::unsupported", m).with_help(
                "smelt reads PREFIX_TUNING adapters of encoder-only or decoder-only models",
            )
        };
        if c.get("peft_type").and_then(Value::as_str) != Some("PREFIX_TUNING") {
            return Err(unsup(format!(
                "PEFT type {} is not PREFIX_TUNING",
                c["peft_type"]
            )));
        }
        let num = |k: &str| c.get(k).and_then(Value::as_u64).map(|x| x as usize);
        if num("num_transformer_submodules").unwrap_or(1) != 1 {
            return Err(unsup("encoder-decoder prefixes (2 submodules)".into()));
        }
        let (l, h, hd) = geometry(model);
        let p = num("num_virtual_tokens")
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("adapter_config.json: `num_virtual_tokens` missing".into()))?;
        let want = [
            ("num_layers", l),
            ("num_attention_heads", h),
            ("token_dim", h * hd),
        ];
        for (k, v) in want {
            if num(k).is_some_and(|x| x != v) {
                return Err(OpError::new(
                    "smelt::peft::shape",
                    format!("adapter {k} = {} but the model has {v}", c[k]),
                )
                .with_help("the prefix was trained on a different model"));
            }
        }
        let dev = model.device().clone();
        let tensors = read_safetensors(&dir.join("adapter_model.safetensors"), &dev)?;
        let computed = tensors.get("prompt_embeddings").ok_or_else(|| {
            OpError::new(
                "smelt::peft::missing_key",
                "adapter has no `prompt_embeddings`",
            )
        })?;
        if computed.dims() != [p, l * 2 * h * hd] {
            return Err(OpError::new(
                "smelt::peft::shape",
                format!(
                    "prompt_embeddings {:?}, expected [{p}, {}]",
                    computed.dims(),
                    l * 2 * h * hd
                ),
            ));
        }
        let projection = c.get("prefix_projection").and_then(Value::as_bool) == Some(true)
            && dir.join(ENCODER_FILE).is_file();
        let config = PrefixConfig {
            num_virtual_tokens: p,
            projection,
            encoder_hidden: num("encoder_hidden_size"),
            seed: 0,
        };
        let mut prefix = if projection {
            let enc = read_safetensors(&dir.join(ENCODER_FILE), &dev)?;
            let get = |n: &str| {
                enc.get(&format!("{ENC}{n}")).cloned().ok_or_else(|| {
                    OpError::new(
                        "smelt::peft::missing_key",
                        format!("{ENCODER_FILE} lacks {ENC}{n}"),
                    )
                })
            };
            let t = [
                get(NAMES[0])?,
                get(NAMES[1])?,
                get(NAMES[2])?,
                get(NAMES[3])?,
            ];
            let emb = get("embedding.weight")?;
            check_mlp(&emb, &t, computed)?;
            let e = t[0].dim(0)?;
            Prefix::build(model, config, emb, Some(t), e)?
        } else {
            let e = config.encoder_hidden.unwrap_or(h * hd);
            Prefix::build(model, config, computed.clone(), None, e)?
        };
        for (k, t) in tensors.iter().filter(|(k, _)| *k != "prompt_embeddings") {
            let k = k
                .strip_prefix("base_model.model.")
                .or(k.strip_prefix("base_model."))
                .unwrap_or(k);
            prefix.add_module_to_save(
                &k.replace(".modules_to_save.default", ""),
                &Var::from_tensor(t)?,
            )?;
        }
        if let Some(t) = c.get("task_type").and_then(Value::as_str) {
            prefix.task_type = Some(t.to_string());
        }
        Ok(prefix)
    }
}

/// The MLP file must reproduce the saved `prompt_embeddings` (shapes and values).
fn check_mlp(emb: &Tensor, t: &[Tensor; 4], computed: &Tensor) -> Result<(), OpError> {
    let out = encode(emb, Some(t))
        .map_err(|e| OpError::new("smelt::peft::shape", format!("{ENCODER_FILE}: {e}")))?;
    let d = if out.dims() == computed.dims() {
        crate::nn::ops::max_abs_diff(&out, computed)?
    } else {
        f32::INFINITY
    };
    if d > 1e-4 {
        return Err(OpError::new(
            "smelt::peft::inconsistent",
            format!("{ENCODER_FILE} does not reproduce prompt_embeddings (max diff {d})"),
        )
        .with_help(format!(
            "delete {ENCODER_FILE} to load the computed prefix alone"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::bert::{checkpoint_shapes, BertModel};
    use crate::nn::config::ArchConfig;
    use crate::nn::weights::{synthetic, Weights};
    use candle_core::Device;

    fn tiny_bert() -> LoadedModel {
        let cfg = r#"{"model_type":"bert","vocab_size":30,"hidden_size":8,"num_hidden_layers":2,
            "num_attention_heads":2,"intermediate_size":12,"max_position_embeddings":20,
            "type_vocab_size":2}"#;
        let config = ArchConfig::from_json(cfg, "tiny/config.json").unwrap();
        let ArchConfig::Bert(c) = &config else {
            unreachable!()
        };
        let map = synthetic(&checkpoint_shapes(c), 1, &Device::Cpu).unwrap();
        let m = BertModel::load(&mut Weights::from_map(map, &Device::Cpu), c).unwrap();
        LoadedModel {
            dir: "<tiny>".into(),
            config,
            model: Model::Bert(m),
            tokenizer: None,
        }
    }

    #[test]
    fn layout_is_pefts_key_value_per_layer_then_heads() {
        let mut m = tiny_bert();
        let cfg = PrefixConfig {
            num_virtual_tokens: 3,
            projection: false,
            ..Default::default()
        };
        let p = Prefix::inject(&mut m, &cfg).unwrap();
        let (l, d) = (2, 8); // row p = [k₀ | v₀ | k₁ | v₁], each [heads 2 × head_dim 4]
        let n = 3 * l * 2 * d;
        let vals: Vec<f32> = (0..n).map(|i| i as f32).collect();
        p.vars()[0]
            .set(&Tensor::from_vec(vals, (3, l * 2 * d), &Device::Cpu).unwrap())
            .unwrap();
        let Model::Bert(b) = &m.model else {
            unreachable!()
        };
        let kv = (b.prefix.as_ref().unwrap().kv)().unwrap();
        assert_eq!(kv.len(), 2);
        let (k1, v1) = (&kv[1].0, &kv[1].1);
        assert_eq!(k1.dims(), &[2, 3, 4]);
        // layer 1, head 1, token 2, dim 3 of the key: column 2·d + 1·4 + 3 of row 2
        let at = |t: &Tensor| t.get(1).unwrap().get(2).unwrap().get(3).unwrap();
        let got = at(k1).to_scalar::<f32>().unwrap();
        assert_eq!(got, (2 * l * 2 * d + 2 * d + 4 + 3) as f32);
        let got = at(v1).to_scalar::<f32>().unwrap();
        assert_eq!(got, (2 * l * 2 * d + 3 * d + 4 + 3) as f32);
        p.remove(&mut m);
        let Model::Bert(b) = &m.model else {
            unreachable!()
        };
        assert!(b.prefix.is_none());
    }
}
