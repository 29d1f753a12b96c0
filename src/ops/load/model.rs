//! `load model(path)`: an HF model directory (`config.json` + single or sharded safetensors).
//!
//! Reads headers only (names, dtypes, shapes, config); tensor data is read lazily by the
//! operators that need it, through an mmap. The result refers to the user's directory; its
//! identity is the content fingerprint of the directory's files.

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

pub struct LoadModel;

static SIG: Signature = Signature {
    id: "load.model",
    version: 1,
    summary: "Load an HF model directory (config.json + safetensors).",
    doc: "Reads `config.json` and the safetensors headers (single file or sharded index); tensor data \
          is memory-mapped and read only when an operator needs it. `smelt check` runs this to compare \
          tensor names, shapes and vocabularies before anything else is read.",
    params: &[Param::req("path", Ty::Path, "Directory holding `config.json` and `model.safetensors`.")],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

impl Operator for LoadModel {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let path = std::path::Path::new(args.str("path")?);
        let dir = ModelDir::open(path)?;
        let abs = std::fs::canonicalize(path)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Model,
            dir: abs,
            key: cx.key,
            data: model_summary(&dir),
        })))
    }
}

/// A small JSON description of a model directory (shown by the REPL and stored in the cache).
pub fn model_summary(dir: &ModelDir) -> serde_json::Value {
    let params: usize = dir.tensors().values().map(|(_, t)| t.numel()).sum();
    let arch = dir
        .config()
        .and_then(|c| c.get("model_type"))
        .and_then(|m| m.as_str())
        .unwrap_or("unknown")
        .to_string();
    serde_json::json!({
        "model_type": arch,
        "tensors": dir.tensors().len(),
        "parameters": params,
        "dtype": super::super::merge::dominant_dtype(dir).as_str(),
        "vocab_size": dir.vocab_size(),
    })
}
