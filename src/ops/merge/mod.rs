//! `merge.*`: the model-merging family, sharing streaming and task-vector helpers.
//!
//! Every merge streams tensor by tensor through [`crate::tensors::merge::merge_streaming`]
//! (each input tensor read once, memory O(one tensor × number of models)), accumulates in f32
//! whatever the storage dtype, and writes an HF directory with provenance in the safetensors
//! `__metadata__`. Output dtype: `auto` keeps the first input's dtype, so merging one f16 model
//! with weight 1 gives it back bit for bit.
//!
//! Tensor selection (`include=`/`exclude=`, [`filter`]) and the policy for tensors that only
//! some inputs have (`partial=`, [`crate::tensors::merge::Partial`]) are shared: an operator
//! declares [`INCLUDE_PARAM`], [`EXCLUDE_PARAM`], [`PARTIAL_PARAM`], checks them in `validate`
//! with [`validate_merge`] and streams with [`stream_merge`]. Unselected tensors are copied from
//! the reference input (the base, or the first model) without any combine work.

pub mod adapter_delta;
#[cfg(test)]
pub(crate) mod adapter_fixtures;
pub mod adapter_params;
pub mod adapter_prefix;
pub mod adapter_set;
pub mod adapter_space;
pub mod average;
pub mod dare;
pub mod elect;
pub mod filter;
pub mod fisher;
pub mod heads;
pub mod linear;
pub mod lowrank;
pub mod slerp;
pub mod softmax;
pub mod task_arithmetic;
pub mod ties;
pub mod trim;
pub mod trim_streamed;
pub mod uncertainty;

pub use filter::{
    name_filter, partial_policy, NameFilter, EXCLUDE_PARAM, INCLUDE_PARAM, PARTIAL_PARAM,
};

use crate::diag::OpError;
use crate::ops::{Args, Const, OpCtx, Param};
use crate::tensors::header::Dtype;
use crate::tensors::merge::{merge_streaming_with, plan_merge, MergeOptions, Part, Partial, CHUNK};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::collections::{BTreeMap, BTreeSet};
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

/// Every tensor name of the given inputs, sorted (what filter patterns are checked against).
pub fn tensor_names(dirs: &[&ModelDir]) -> Vec<String> {
    let names: BTreeSet<&String> = dirs.iter().flat_map(|d| d.tensors().keys()).collect();
    names.into_iter().cloned().collect()
}

/// Header-only check of a merge with filters: the patterns of `include`/`exclude` must match
/// tensors of the inputs and the inputs must be compatible on the selected tensors under the
/// `partial` policy. `values` lists the model arguments with the reference (the base, or the
/// first model) first. Runs only when the reference is realised (its tensors decide the
/// output); unrealised other inputs are skipped.
pub fn validate_merge(args: &Args, values: &[&Value]) -> Result<(), OpError> {
    let model = |v: &&Value| {
        v.as_artifact()
            .filter(|a| a.kind == Kind::Model)
            .map(|a| a.dir.clone())
    };
    if values.first().and_then(model).is_none() {
        return Ok(());
    }
    let dirs: Vec<ModelDir> = values
        .iter()
        .filter_map(model)
        .map(ModelDir::open)
        .collect::<Result<_, _>>()?;
    let refs: Vec<&ModelDir> = dirs.iter().collect();
    let filter = name_filter(args, &tensor_names(&refs))?;
    let select = |n: &str| filter.selects(n);
    let opts = MergeOptions {
        select: Some(&select),
        partial: partial_policy(args)?,
        chunk: None,
    };
    plan_merge(&refs, &opts).map(|_| ())
}

/// One number per model from a `Float | List<Float>` argument.
pub fn per_model(args: &Args, name: &str, models: usize) -> Result<Vec<f64>, OpError> {
    let vals = match args.get(name)? {
        Value::List(_) => args.floats(name)?,
        _ => vec![args.float(name)?; models],
    };
    if vals.len() != models {
        return Err(OpError::new(
            "smelt::run::length_mismatch",
            format!("{models} models but {} {name} values", vals.len()),
        ));
    }
    Ok(vals)
}

/// `validate` of the merges taking `base` and `models`: header checks of all of them.
pub fn validate_base_and_models(args: &Args) -> Result<(), OpError> {
    let mut all = vec![args.get("base")?];
    all.extend(args.list("models")?.iter());
    validate_merge(args, &all)
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

/// Combines one tensor's (or part's) values from every input into the merged values.
pub type Combine<'a> = dyn FnMut(Part<'_>, &[Vec<f32>]) -> Result<Vec<f32>, OpError> + 'a;

/// Whether a merge's `combine` sees whole tensors or, because it is elementwise (each output
/// element depends only on the same element of the inputs), parts of at most
/// [`crate::tensors::merge::CHUNK`] elements — which bounds memory by the chunk instead of
/// the largest tensor (an embedding matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Whole,
    Elementwise,
}

#[cfg(test)]
thread_local! {
    /// Tests shrink the parts to a few elements to check that chunking never changes a result.
    pub(crate) static TEST_CHUNK: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

impl Granularity {
    fn chunk(self) -> Option<usize> {
        #[cfg(test)]
        if let (Granularity::Elementwise, Some(c)) = (self, TEST_CHUNK.with(|c| c.get())) {
            return Some(c);
        }
        match self {
            Granularity::Whole => None,
            Granularity::Elementwise => Some(CHUNK),
        }
    }
}

/// Run a streaming merge of `inputs` into the node's output directory and describe the result.
/// Every tensor is combined; the inputs must have identical tensor sets.
pub fn stream_to_model(
    cx: &OpCtx,
    inputs: &[ModelDir],
    dtype: Dtype,
    metadata: BTreeMap<String, String>,
    granularity: Granularity,
    combine: &mut Combine,
) -> Result<Value, OpError> {
    stream_to_model_with(
        cx,
        inputs,
        dtype,
        metadata,
        &NameFilter::all(),
        Partial::Error,
        granularity,
        combine,
    )
}

/// [`stream_to_model`] with the operator's `include`/`exclude`/`partial` arguments (missing ones
/// mean no filter and `partial=error`). `inputs[0]` is the reference: unselected tensors are
/// copied from it and `combine` sees only the selected ones.
pub fn stream_merge(
    cx: &OpCtx,
    args: &Args,
    inputs: &[ModelDir],
    dtype: Dtype,
    metadata: BTreeMap<String, String>,
    granularity: Granularity,
    combine: &mut Combine,
) -> Result<Value, OpError> {
    let refs: Vec<&ModelDir> = inputs.iter().collect();
    let filter = name_filter(args, &tensor_names(&refs))?;
    let partial = partial_policy(args)?;
    stream_to_model_with(
        cx,
        inputs,
        dtype,
        metadata,
        &filter,
        partial,
        granularity,
        combine,
    )
}

/// [`stream_to_model`] with an explicit filter and partial-tensor policy.
#[allow(clippy::too_many_arguments)]
pub fn stream_to_model_with(
    cx: &OpCtx,
    inputs: &[ModelDir],
    dtype: Dtype,
    metadata: BTreeMap<String, String>,
    filter: &NameFilter,
    partial: Partial,
    granularity: Granularity,
    combine: &mut Combine,
) -> Result<Value, OpError> {
    let out = cx.out_dir.join("model");
    let refs: Vec<&ModelDir> = inputs.iter().collect();
    let select = |n: &str| filter.selects(n);
    let opts = MergeOptions {
        select: (!filter.is_all()).then_some(&select as &dyn Fn(&str) -> bool),
        partial,
        chunk: granularity.chunk(),
    };
    let stats = merge_streaming_with(&refs, &out, dtype, metadata, &opts, combine)?;
    let dir = ModelDir::open(&out)?;
    let heads = heads::carry_heads(inputs, &out)?;
    let mut data = crate::ops::load::model::model_summary(&dir);
    if !heads.is_null() {
        data["formats"] = heads["formats"].clone();
        data["heads_from"] = heads["merge"]["heads"].clone();
    }
    data["merge_seconds"] = serde_json::json!(stats.seconds);
    data["bytes_read"] = serde_json::json!(stats.bytes_read);
    data["tensors_merged"] = serde_json::json!(stats.tensors - stats.passed_through);
    data["tensors_copied"] = serde_json::json!(stats.passed_through);
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

    /// Write a model whose tensors are the given 1-D f32 vectors.
    pub fn model_with(dir: &Path, tensors: &[(&str, &[f32])]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        let specs: Vec<_> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), Dtype::F32, vec![v.len()]))
            .collect();
        let path = dir.join("model.safetensors");
        let mut w = SafetensorsWriter::create(&path, &specs, WriterOptions::default()).unwrap();
        let mut sorted = tensors.to_vec();
        sorted.sort_by_key(|(n, _)| *n);
        for (n, v) in sorted {
            w.write_f32(n, v).unwrap();
        }
        w.finish().unwrap();
    }

    /// A realised model argument pointing at `dir`.
    pub fn model_value(dir: &Path) -> crate::value::Value {
        crate::value::Value::Artifact(std::sync::Arc::new(crate::value::Artifact {
            kind: crate::value::Kind::Model,
            dir: dir.to_path_buf(),
            key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
            data: serde_json::Value::Null,
        }))
    }

    /// Tensors `a` and `b` of a merge result.
    pub fn read(v: &crate::value::Value) -> (Vec<f32>, Vec<f32>) {
        let dir = crate::tensors::model_dir::ModelDir::open(&v.as_artifact().unwrap().dir).unwrap();
        (dir.read_f32("a").unwrap(), dir.read_f32("b").unwrap())
    }
}
