//! Neural-network building blocks and model architectures on candle (no language concerns).
//!
//! `load(dir)` reads an HF model directory (`config.json`, safetensors weights, optional
//! `tokenizer.json`) into a [`LoadedModel`]: a BERT/RoBERTa encoder or a Llama-family decoder
//! built from differentiable ops, with frozen weights as plain tensors and a LoRA slot on every
//! [`Linear`]. Fused candle kernels are used only when nothing upstream is tracked by autograd.

pub mod bert;
pub mod config;
pub mod heads;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod peft;
pub mod per_example;
pub mod probe;
pub mod quant;
pub mod tokenizer;
pub mod weights;

pub use bert::{BertModel, BertOutput};
pub use config::{ArchConfig, BertConfig, LlamaConfig};
pub use linear::{Linear, LoraDelta};
pub use llama::LlamaModel;
pub use tokenizer::{Batch, Encoded, Tok};
pub use weights::Weights;

use crate::diag::OpError;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// The architecture-specific model. (One per loaded checkpoint, so the variants' size
/// difference costs nothing worth a box.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Bert(BertModel),
    Llama(LlamaModel),
}

/// A model directory loaded into memory.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: ArchConfig,
    pub model: Model,
    /// `None` when the directory has no `tokenizer.json` (see [`LoadedModel::tokenizer`]).
    pub tokenizer: Option<Tok>,
}

/// Loads `dir` (config.json + model.safetensors or a sharded index + optional tokenizer.json)
/// onto `device`, computing in f32. A tokenizer whose vocabulary exceeds the config's
/// `vocab_size` is an error; a missing one is allowed until [`LoadedModel::tokenizer`] is asked.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel, OpError> {
    let config = ArchConfig::from_dir(dir)?;
    assemble(dir, config, &mut Weights::open(dir, device)?)
}

/// Builds `config`'s model from the tensors in `w` and reads `dir`'s tokenizer (checked
/// against the vocabulary, optional) — the common tail of [`load`] and of the loaders that
/// first turn the checkpoint's tensors into vars or named parameters.
pub fn assemble(dir: &Path, config: ArchConfig, w: &mut Weights) -> Result<LoadedModel, OpError> {
    let ctx = |e: OpError| e.context(format!("loading {}", dir.display()));
    let model = match &config {
        ArchConfig::Bert(c) => Model::Bert(BertModel::load(w, c).map_err(ctx)?),
        ArchConfig::Llama(c) => Model::Llama(LlamaModel::load(w, c).map_err(ctx)?),
    };
    let tokenizer = match Tok::from_dir(dir, config.pad_token_id()) {
        Ok(t) => {
            t.check_vocab(config.vocab_size())?;
            Some(t)
        }
        Err(e) if e.code == "smelt::model::missing_tokenizer" => None,
        Err(e) => return Err(e),
    };
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        tokenizer,
    })
}

impl LoadedModel {
    /// The tokenizer, or `smelt::model::missing_tokenizer` when the directory has none.
    pub fn tokenizer(&self) -> Result<&Tok, OpError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| tokenizer::missing_tokenizer(&self.dir))
    }

    /// Encoder: last hidden state `[B, T, H]`; decoder: logits `[B, T, vocab]` (type ids ignored).
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, OpError> {
        match &self.model {
            Model::Bert(m) => m.forward(ids, type_ids, mask),
            Model::Llama(m) => m.forward(ids, mask),
        }
    }

    /// Every injectable projection with its HF module name, for attaching LoRA deltas.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match &mut self.model {
            Model::Bert(m) => m.linears_mut(),
            Model::Llama(m) => m.linears_mut(),
        }
    }

    /// Installs (or removes) a per-example gradient probe on every parameterised op.
    pub fn set_probe(&mut self, probe: Option<probe::Probe>) {
        match &mut self.model {
            Model::Bert(m) => m.set_probe(probe),
            Model::Llama(m) => m.set_probe(probe),
        }
    }

    pub fn device(&self) -> &Device {
        match &self.model {
            Model::Bert(m) => m.embeddings.word.device(),
            Model::Llama(m) => m.embed_tokens.device(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets/models")
    }

    #[test]
    fn loads_small_bert_and_runs() {
        let dir = assets().join("minilm-l3-v8k");
        if !dir.is_dir() {
            eprintln!("skipping: {} absent", dir.display());
            return;
        }
        let m = load(&dir, &Device::Cpu).unwrap();
        assert_eq!(m.config.name(), "bert");
        let tok = m.tokenizer().unwrap();
        let b = tok
            .encode_batch(&[("hello world", None), ("a b", Some("c"))], m.device())
            .unwrap();
        let h = m
            .forward(&b.ids, Some(&b.type_ids), Some(&b.attention_mask))
            .unwrap();
        assert_eq!(h.dims(), &[2, b.lengths[0].max(b.lengths[1]), 384]);
        let Model::Bert(bert) = &m.model else {
            panic!()
        };
        assert!(bert.mlm_is_tied_only() && bert.pooler.is_none());
    }

    #[test]
    fn missing_directory_pieces_are_reported() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            load(d.path(), &Device::Cpu).unwrap_err().code,
            "smelt::model::missing_config"
        );
        let cfg = r#"{"model_type":"gpt2","vocab_size":10}"#;
        std::fs::write(d.path().join("config.json"), cfg).unwrap();
        let e = load(d.path(), &Device::Cpu).unwrap_err();
        assert_eq!(e.code, "smelt::model::unknown_architecture");
    }
}
