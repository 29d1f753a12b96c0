//! `merge.*`: the model-merging family, sharing streaming and task-vector helpers.
//!
//! Every merge streams tensor by tensor through [`crate::tensors::merge::merge_streaming`]
//! (each input tensor read once, memory O(one tensor × number of models)), accumulates in f32
//! whatever the storage dtype, and writes an HF directory with provenance in the safetensors
//! `__metadata__`. Output dtype: `auto` keeps the first input's dtype, so merging one f16 model
//! with weight 1 gives it back bit for bit.

pub mod average;
pub mod linear;
pub mod task_arithmetic;

use crate::diag::OpError;
use crate::ops::{Args, Const, OpCtx, Param};
use crate::tensors::header::Dtype;
use crate::tensors::merge::merge_streaming;
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The shared `dtype` parameter of merges.
pub const DTYPE_PARAM: Param = Param::opt(
    "dtype",
    Ty::Enum(&["auto", "f32", "f16", "bf16"]),
    Const::Str("auto"),
    "Storage dtype of the result; `auto` keeps the first input's.",
);

/// The most common floating-point dtype among a directory's tensors (by element count).
pub fn dominant_dtype(dir: &ModelDir) -> Dtype {
    let mut counts: BTreeMap<Dtype, usize> = BTreeMap::new();
    for (_, t) in dir.tensors().values() {
        if t.dtype.is_float() {
            *counts.entry(t.dtype).or_default() += t.numel();
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d)
        .unwrap_or(Dtype::F32)
}

pub fn out_dtype(args: &Args, first: &ModelDir) -> Result<Dtype, OpError> {
    Ok(match args.str("dtype")? {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        _ => match dominant_dtype(first) {
            d @ (Dtype::F32 | Dtype::F16 | Dtype::BF16) => d,
            _ => Dtype::F32,
        },
    })
}

/// Open every model argument (headers only).
pub fn open_models(models: &[&Arc<Artifact>]) -> Result<Vec<ModelDir>, OpError> {
    models.iter().map(|a| ModelDir::open(&a.dir)).collect()
}

/// Header-only compatibility check of realised model arguments; unrealised ones are skipped.
/// Used by `validate` so `smelt check` rejects mismatched merges before reading tensor data.
pub fn validate_models(values: &[&Value]) -> Result<(), OpError> {
    let dirs: Vec<ModelDir> = values
        .iter()
        .filter_map(|v| v.as_artifact())
        .filter(|a| a.kind == Kind::Model)
        .map(|a| ModelDir::open(&a.dir))
        .collect::<Result<_, _>>()?;
    for d in dirs.iter().skip(1) {
        dirs[0].check_compatible(d)?;
    }
    Ok(())
}

/// Provenance written into the result's safetensors `__metadata__`.
pub fn provenance(
    cx: &OpCtx,
    op: &str,
    version: u32,
    inputs: &[&Arc<Artifact>],
    params: &str,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("smelt.op".into(), format!("{op}@{version}"));
    m.insert("smelt.node_key".into(), cx.key.hex());
    m.insert(
        "smelt.inputs".into(),
        inputs
            .iter()
            .map(|a| a.key.hex())
            .collect::<Vec<_>>()
            .join(","),
    );
    m.insert("smelt.params".into(), params.into());
    m.insert("smelt.version".into(), env!("CARGO_PKG_VERSION").into());
    m
}

/// Combines one tensor's values from every input into the merged values.
pub type Combine<'a> = dyn FnMut(&str, &[Vec<f32>]) -> Result<Vec<f32>, OpError> + 'a;

/// Run a streaming merge of `inputs` into the node's output directory and describe the result.
pub fn stream_to_model(
    cx: &OpCtx,
    inputs: &[ModelDir],
    dtype: Dtype,
    metadata: BTreeMap<String, String>,
    combine: &mut Combine,
) -> Result<Value, OpError> {
    let out = cx.out_dir.join("model");
    let refs: Vec<&ModelDir> = inputs.iter().collect();
    let stats = merge_streaming(&refs, &out, dtype, metadata, combine)?;
    let dir = ModelDir::open(&out)?;
    let mut data = crate::ops::load::model::model_summary(&dir);
    data["merge_seconds"] = serde_json::json!(stats.seconds);
    data["bytes_read"] = serde_json::json!(stats.bytes_read);
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Model,
        dir: out,
        key: cx.key,
        data,
    })))
}

/// `Σ_i w_i · x_i` elementwise, accumulated in f32 in input order (deterministic).
/// Starts from the first term (not from +0.0), so one model with weight 1 keeps even the
/// sign of its zeros.
pub fn weighted_sum(xs: &[Vec<f32>], weights: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = xs[0].iter().map(|v| weights[0] * v).collect();
    for (x, &w) in xs.iter().zip(weights).skip(1) {
        for (o, v) in out.iter_mut().zip(x) {
            *o += w * v;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared fixtures for merge tests: tiny HF directories written with the real writer.
    use crate::tensors::header::Dtype;
    use crate::tensors::writer::{SafetensorsWriter, WriterOptions};
    use std::path::Path;

    /// Write a two-tensor model with the given values into `dir`.
    pub fn tiny_model(dir: &Path, a: &[f32; 4], b: &[f32; 2], dtype: Dtype) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"bert","vocab_size":4}"#,
        )
        .unwrap();
        let specs = vec![
            ("a".to_string(), dtype, vec![2, 2]),
            ("b".to_string(), dtype, vec![2]),
        ];
        let mut w = SafetensorsWriter::create(
            &dir.join("model.safetensors"),
            &specs,
            WriterOptions::default(),
        )
        .unwrap();
        w.write_f32("a", a).unwrap();
        w.write_f32("b", b).unwrap();
        w.finish().unwrap();
    }
}
