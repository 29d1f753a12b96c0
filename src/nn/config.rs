//! HF `config.json` → validated architecture configs (BERT family, Llama family).
//!
//! The architecture is detected from `model_type` (falling back to `architectures`); anything
//! else is `smelt::model::unknown_architecture`, listing what is supported. Raw serde structs
//! accept HF's optional fields; `validate` turns them into plain structs and rejects missing or
//! absurd values (0 heads, hidden not divisible by heads, vocab 0, …) with an error that names
//! the `config.json` it came from, so a broken checkpoint fails at load rather than mid-forward.

use crate::diag::OpError;
use serde::Deserialize;
use std::path::Path;

const BAD: &str = "smelt::model::bad_config";
const SUPPORTED: &str = "bert, roberta, xlm-roberta (encoders); llama, qwen2, smollm (decoders)";

/// Activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact erf GELU (HF's default for BERT).
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn parse(s: &str, origin: &str) -> Result<Activation, OpError> {
        Ok(match s {
            "gelu" | "gelu_python" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(OpError::new(
                    BAD,
                    format!("{origin}: unsupported hidden_act `{other}`"),
                )
                .with_help("supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu"))
            }
        })
    }

    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::GeluErf => crate::nn::ops::gelu_erf(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertFlavor {
    Bert,
    /// RoBERTa / XLM-R: position ids start at `pad_token_id + 1` and skip padding.
    Roberta,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub flavor: BertFlavor,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub pad_token_id: u32,
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaFlavor {
    Llama,
    /// Qwen2: biases on q/k/v projections.
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub flavor: LlamaFlavor,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// Biases on q/k/v (Qwen2, or `attention_bias: true`).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

/// A validated architecture config.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Bert(BertConfig),
    Llama(LlamaConfig),
}

impl ArchConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<ArchConfig, OpError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            OpError::new(
                "smelt::model::missing_config",
                format!("cannot read {}: {e}", path.display()),
            )
            .with_help("a model directory needs an HF config.json beside model.safetensors")
        })?;
        ArchConfig::from_json(&text, &path.display().to_string())
    }

    /// Parses config JSON; `origin` names the file in error messages.
    pub fn from_json(text: &str, origin: &str) -> Result<ArchConfig, OpError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| OpError::new(BAD, format!("{origin}: invalid config JSON: {e}")))?;
        match detect(&raw) {
            Some(Family::Bert(f)) => raw.bert(f, origin).map(ArchConfig::Bert),
            Some(Family::Llama(f)) => raw.llama(f, origin).map(ArchConfig::Llama),
            None => {
                let what = raw
                    .model_type
                    .clone()
                    .or_else(|| raw.architectures.as_ref().map(|a| a.join(", ")))
                    .unwrap_or_else(|| "none given".into());
                Err(OpError::new(
                    "smelt::model::unknown_architecture",
                    format!("{origin}: unknown model architecture `{what}`"),
                )
                .with_help(format!("supported model_type values: {SUPPORTED}")))
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Bert(c) => c.vocab_size,
            ArchConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            ArchConfig::Bert(c) => c.hidden_size,
            ArchConfig::Llama(c) => c.hidden_size,
        }
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            ArchConfig::Bert(c) => Some(c.pad_token_id),
            ArchConfig::Llama(c) => c.pad_token_id,
        }
    }

    /// `"bert"`, `"roberta"`, `"llama"` or `"qwen2"`.
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Bert(c) if c.flavor == BertFlavor::Roberta => "roberta",
            ArchConfig::Bert(_) => "bert",
            ArchConfig::Llama(c) if c.flavor == LlamaFlavor::Qwen2 => "qwen2",
            ArchConfig::Llama(_) => "llama",
        }
    }
}

enum Family {
    Bert(BertFlavor),
    Llama(LlamaFlavor),
}

fn detect(raw: &RawConfig) -> Option<Family> {
    let by_type = |t: &str| match t.to_ascii_lowercase().replace('_', "-").as_str() {
        "bert" => Some(Family::Bert(BertFlavor::Bert)),
        "roberta" | "xlm-roberta" => Some(Family::Bert(BertFlavor::Roberta)),
        "llama" | "smollm" | "smollm2" => Some(Family::Llama(LlamaFlavor::Llama)),
        "qwen2" => Some(Family::Llama(LlamaFlavor::Qwen2)),
        _ => None,
    };
    if let Some(t) = &raw.model_type {
        return by_type(t);
    }
    raw.architectures.as_ref()?.iter().find_map(|a| {
        let a = a.to_ascii_lowercase();
        ["xlmroberta", "roberta", "bert", "qwen2", "llama"]
            .iter()
            .find(|p| a.starts_with(*p))
            .and_then(|p| by_type(if *p == "xlmroberta" { "roberta" } else { p }))
    })
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    intermediate_size: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    pad_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    head_dim: Option<usize>,
    attention_bias: Option<bool>,
    position_embedding_type: Option<String>,
}

fn need(v: Option<usize>, name: &str, origin: &str) -> Result<usize, OpError> {
    match v {
        Some(0) => Err(OpError::new(
            BAD,
            format!("{origin}: `{name}` must be positive, got 0"),
        )),
        Some(n) => Ok(n),
        None => Err(OpError::new(
            BAD,
            format!("{origin}: missing required field `{name}`"),
        )),
    }
}

fn check_eps(eps: f64, name: &str, origin: &str) -> Result<f64, OpError> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        Ok(eps)
    } else {
        Err(OpError::new(
            BAD,
            format!("{origin}: `{name}` = {eps} is not a small positive number"),
        ))
    }
}

fn divisible(hidden: usize, heads: usize, origin: &str) -> Result<(), OpError> {
    if !hidden.is_multiple_of(heads) {
        return Err(OpError::new(
            BAD,
            format!(
                "{origin}: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            ),
        ));
    }
    Ok(())
}

impl RawConfig {
    fn bert(&self, flavor: BertFlavor, origin: &str) -> Result<BertConfig, OpError> {
        let hidden_size = need(self.hidden_size, "hidden_size", origin)?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads", origin)?;
        divisible(hidden_size, num_attention_heads, origin)?;
        if let Some(p) = self
            .position_embedding_type
            .as_deref()
            .filter(|p| *p != "absolute")
        {
            return Err(OpError::new(
                BAD,
                format!("{origin}: position_embedding_type `{p}` is not supported"),
            )
            .with_help("only absolute position embeddings are implemented"));
        }
        let default_pad = if flavor == BertFlavor::Roberta { 1 } else { 0 };
        Ok(BertConfig {
            flavor,
            hidden_size,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers", origin)?,
            num_attention_heads,
            intermediate_size: need(self.intermediate_size, "intermediate_size", origin)?,
            hidden_act: Activation::parse(self.hidden_act.as_deref().unwrap_or("gelu"), origin)?,
            layer_norm_eps: check_eps(
                self.layer_norm_eps.unwrap_or(1e-12),
                "layer_norm_eps",
                origin,
            )?,
            vocab_size: need(self.vocab_size, "vocab_size", origin)?,
            max_position_embeddings: need(
                self.max_position_embeddings,
                "max_position_embeddings",
                origin,
            )?,
            type_vocab_size: self.type_vocab_size.unwrap_or(2),
            pad_token_id: self.pad_token_id.unwrap_or(default_pad),
        })
    }

    fn llama(&self, flavor: LlamaFlavor, origin: &str) -> Result<LlamaConfig, OpError> {
        let hidden_size = need(self.hidden_size, "hidden_size", origin)?;
        let heads = need(self.num_attention_heads, "num_attention_heads", origin)?;
        let kv = need(
            self.num_key_value_heads.or(Some(heads)),
            "num_key_value_heads",
            origin,
        )?;
        if !heads.is_multiple_of(kv) {
            return Err(OpError::new(
                BAD,
                format!("{origin}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => need(Some(d), "head_dim", origin)?,
            None => {
                divisible(hidden_size, heads, origin)?;
                hidden_size / heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(OpError::new(
                BAD,
                format!("{origin}: head_dim {head_dim} must be even for RoPE"),
            ));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            return Err(
                OpError::new(BAD, format!("{origin}: rope_scaling {s} is not supported"))
                    .with_help("only plain RoPE (rope_scaling: null) is implemented"),
            );
        }
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        if Activation::parse(act, origin)? != Activation::Silu {
            return Err(OpError::new(
                BAD,
                format!("{origin}: Llama-family MLP needs silu, got `{act}`"),
            ));
        }
        let rope_theta = self.rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(OpError::new(
                BAD,
                format!("{origin}: rope_theta {rope_theta} must be > 1"),
            ));
        }
        let eos_token_id = match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
            }
            _ => None,
        };
        Ok(LlamaConfig {
            flavor,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size", origin)?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers", origin)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: check_eps(self.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps", origin)?,
            rope_theta,
            vocab_size: need(self.vocab_size, "vocab_size", origin)?,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: need(
                self.max_position_embeddings.or(Some(2048)),
                "max_position_embeddings",
                origin,
            )?,
            qkv_bias: flavor == LlamaFlavor::Qwen2 || self.attention_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_id,
            pad_token_id: self.pad_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"model_type":"bert","vocab_size":8192,
        "hidden_size":384,"num_hidden_layers":3,"num_attention_heads":12,"intermediate_size":1536,
        "hidden_act":"gelu","max_position_embeddings":512,"type_vocab_size":2,
        "layer_norm_eps":1e-12,"pad_token_id":0}"#;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
        "vocab_size":49152,"hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
        "num_attention_heads":9,"num_key_value_heads":3,"hidden_act":"silu",
        "max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":100000.0,
        "tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2,"pad_token_id":2}"#;

    #[test]
    fn parses_bert_and_llama() {
        let ArchConfig::Bert(b) = ArchConfig::from_json(MINILM, "config.json").unwrap() else {
            panic!("expected bert")
        };
        assert_eq!(
            (b.hidden_size, b.head_dim(), b.hidden_act),
            (384, 32, Activation::GeluErf)
        );
        let ArchConfig::Llama(l) = ArchConfig::from_json(SMOL, "config.json").unwrap() else {
            panic!("expected llama")
        };
        assert_eq!(
            (l.head_dim, l.num_key_value_heads, l.qkv_bias),
            (64, 3, false)
        );
        assert!(l.tie_word_embeddings);
    }

    #[test]
    fn detects_from_architectures_and_qwen2_bias() {
        let c = MINILM
            .replace(r#""model_type":"bert","#, "")
            .replace("BertModel", "RobertaModel");
        let a = ArchConfig::from_json(&c, "x/config.json").unwrap();
        assert_eq!(a.name(), "roberta");
        let q = SMOL.replace(r#""model_type":"llama""#, r#""model_type":"qwen2""#);
        let ArchConfig::Llama(l) = ArchConfig::from_json(&q, "config.json").unwrap() else {
            panic!()
        };
        assert!(l.qkv_bias);
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let c = MINILM.replace(r#""model_type":"bert""#, r#""model_type":"t5""#);
        let e = ArchConfig::from_json(&c, "m/config.json").unwrap_err();
        assert_eq!(e.code, "smelt::model::unknown_architecture");
        assert!(e.message.contains("t5") && e.message.contains("m/config.json"));
        assert!(e.help.unwrap().contains("llama"));
    }

    #[test]
    fn absurd_fields_are_rejected() {
        for (from, to, what) in [
            (
                r#""num_attention_heads":12"#,
                r#""num_attention_heads":0"#,
                "num_attention_heads",
            ),
            (
                r#""num_attention_heads":12"#,
                r#""num_attention_heads":7"#,
                "divisible",
            ),
            (r#""vocab_size":8192"#, r#""vocab_size":0"#, "vocab_size"),
            (r#""hidden_size":384,"#, "", "hidden_size"),
        ] {
            let e = ArchConfig::from_json(&MINILM.replace(from, to), "a/config.json").unwrap_err();
            assert_eq!(e.code, BAD);
            assert!(
                e.message.contains(what) && e.message.contains("a/config.json"),
                "{}",
                e.message
            );
        }
        let e = ArchConfig::from_json(
            &SMOL.replace(r#""num_key_value_heads":3"#, r#""num_key_value_heads":4"#),
            "c",
        )
        .unwrap_err();
        assert!(e.message.contains("num_key_value_heads"));
    }
}
