//! `load fisher(path, examples=…)`: a diagonal Fisher saved on disk, in smelt's layout or the
//! paper code's.
//!
//! * smelt: a directory with `fisher.json` (`"format": "smelt-fisher"`, the example count N,
//!   label mode, task, …) beside `model.safetensors` — what `estimate fisher` writes and
//!   `save` copies.
//! * the paper code (UKPLab/iclr2024-model-merging, `CustomTrainerForSquaredGradients`): an HF
//!   checkpoint whose parameters hold the Fisher values, given directly or as the `hessian/`
//!   subfolder of a model directory. It records no example count.
//!
//! Decision on N: `examples` is optional. A smelt Fisher carries its own N (an `examples` that
//! disagrees with it is an error, so a number is never silently replaced); a paper-layout
//! Fisher has N only if `examples` is given. Only `merge uncertainty`'s default `scales` need
//! N, and say so when it is missing. Reads headers only (like `load model`); the values are
//! checked (finite, ≥ 0) when a merge streams them.

use crate::diag::OpError;
use crate::ops::estimate::{FISHER_FORMAT, FISHER_INFO};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct LoadFisher;

static SIG: Signature = Signature {
    id: "load.fisher",
    version: 1,
    summary: "Load a diagonal Fisher: smelt's directory or an HF checkpoint of Fisher values.",
    doc: "Accepts smelt's layout (`fisher.json` + `model.safetensors`, as written by `estimate \
          fisher` and `save`) and the paper code's (an HF checkpoint whose parameters hold the \
          Fisher, or a model directory with it in `hessian/`). The values are per-example \
          averages. `examples` = N, the number of examples averaged: a smelt Fisher records it \
          (a different `examples` is an error); a paper-layout Fisher has none unless given, \
          and then `merge uncertainty` needs explicit `scales`/`base_scale`.",
    params: &[
        Param::req("path", Ty::Path, "A Fisher directory, an HF checkpoint of Fisher values, or a model directory with `hessian/`."),
        Param::opt("examples", Ty::Opt(&Ty::Int), Const::None, "Examples the Fisher averages (N); required by default `scales` when the files do not record it.").range(1.0, 1e15),
    ],
    returns: Ty::Fisher,
    ret_fn: None,
    examples: &["let f = load fisher(\"runs/fishers/imdb\", examples=25000)"],
    reference: Some("methods.md §3.4 (the `hessian` checkpoint of UKPLab/iclr2024-model-merging)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

fn has_weights(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file()
}

/// The directory holding the Fisher tensors: `path/hessian` when it has weights (a model
/// directory with its Fisher beside it, as the paper code saves them), else `path` itself.
fn locate(path: &Path) -> Result<PathBuf, OpError> {
    let sub = path.join("hessian");
    if has_weights(&sub) {
        return Ok(sub);
    }
    if path.is_file() || has_weights(path) {
        return Ok(path.to_path_buf());
    }
    let torch = ["pytorch_model.bin", "hessian/pytorch_model.bin"]
        .iter()
        .any(|f| path.join(f).is_file());
    Err(OpError::new(
        "smelt::io::missing_file",
        format!(
            "{}: no model.safetensors here or in hessian/",
            path.display()
        ),
    )
    .with_help(if torch {
        "convert the pytorch_model.bin to safetensors first (transformers' `save_pretrained(safe_serialization=True)`)"
    } else {
        "point at `estimate fisher` output, a saved Fisher, or the paper code's `hessian` checkpoint"
    }))
}

/// Reads a Fisher at `path` (headers and `fisher.json` only) into an artifact description.
pub fn open_fisher(
    path: &Path,
    examples: Option<u64>,
) -> Result<(PathBuf, serde_json::Value), OpError> {
    let dir = locate(path)?;
    let md = ModelDir::open(&dir)?;
    let info_path = dir.join(FISHER_INFO);
    let (layout, mut data) = if info_path.is_file() {
        let info = crate::nn::peft::io::read_json(&info_path)?;
        if info["format"] != FISHER_FORMAT {
            return Err(OpError::new(
                "smelt::io::bad_json",
                format!("{}: not a smelt Fisher record", info_path.display()),
            ));
        }
        ("smelt", info)
    } else {
        ("hf", json!({}))
    };
    let recorded = data["examples"].as_u64();
    let n = match (recorded, examples) {
        (Some(r), Some(e)) if r != e => {
            return Err(OpError::new(
                "smelt::run::argument",
                format!(
                    "{} records {r} examples, but `examples={e}` was given",
                    info_path.display()
                ),
            )
            .with_help("drop `examples`, or rescale in the merge with `scales`/`base_scale`"))
        }
        (r, e) => r.or(e),
    };
    let params: usize = md
        .tensors()
        .values()
        .filter(|(_, t)| t.dtype.is_float())
        .map(|(_, t)| t.numel())
        .sum();
    data["examples"] = json!(n);
    data["layout"] = json!(layout);
    data["tensors"] = json!(md.tensors().len());
    data["parameters"] = json!(params);
    Ok((dir, data))
}

impl Operator for LoadFisher {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let path = Path::new(args.str("path")?);
        let examples = match args.get("examples")? {
            Value::None => None,
            _ => Some(args.int("examples")?.max(1) as u64),
        };
        let (dir, data) = open_fisher(path, examples)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Fisher,
            dir: std::fs::canonicalize(&dir)?,
            key: cx.key,
            data,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::tiny_model;
    use crate::tensors::header::Dtype;

    #[test]
    fn reads_both_layouts_and_decides_the_example_count() {
        let d = tempfile::tempdir().unwrap();
        // Paper layout: a model directory with the Fisher in `hessian/`, no count.
        let model = d.path().join("model");
        tiny_model(&model, &[1.0; 4], &[0.0; 2], Dtype::F32);
        tiny_model(&model.join("hessian"), &[0.5; 4], &[0.25; 2], Dtype::F32);
        let (dir, data) = open_fisher(&model, None).unwrap();
        assert!(dir.ends_with("hessian"));
        assert_eq!(data["layout"], "hf");
        assert!(data["examples"].is_null());
        assert_eq!(
            open_fisher(&model, Some(25_000)).unwrap().1["examples"],
            25_000
        );
        // smelt layout: the record's count; a contradicting `examples` is an error.
        let own = d.path().join("own");
        tiny_model(&own, &[0.5; 4], &[0.25; 2], Dtype::F32);
        let rec = json!({"format": FISHER_FORMAT, "examples": 64, "labels": "sampled"});
        std::fs::write(own.join(FISHER_INFO), rec.to_string()).unwrap();
        let (_, data) = open_fisher(&own, None).unwrap();
        assert_eq!(
            (data["examples"].as_u64(), data["layout"].as_str()),
            (Some(64), Some("smelt"))
        );
        assert_eq!(data["parameters"], 6);
        assert_eq!(open_fisher(&own, Some(64)).unwrap().1["examples"], 64);
        assert_eq!(
            open_fisher(&own, Some(65)).unwrap_err().code,
            "smelt::run::argument"
        );
        // Nothing to load.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            open_fisher(&empty, None).unwrap_err().code,
            "smelt::io::missing_file"
        );
    }
}
