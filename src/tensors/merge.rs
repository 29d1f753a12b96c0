//! Streaming merge engine: combine N compatible models tensor by tensor into a new model dir.
//!
//! For each tensor name (sorted) it decodes that tensor of every input straight out of the mmap
//! into reusable f32 buffers, hands them to a `combine` callback and streams the result through
//! [`SafetensorsWriter`] (the two-core loop lives in `pipeline.rs`). Memory stays at about two
//! tensors × (number of models + 1), never a whole model. Integer tensors (e.g. `position_ids`
//! buffers) are copied from the first input unchanged. The output is built in
//! `<out_dir>.tmp-<pid>` together with `config.json` (with `torch_dtype` updated) and the first
//! input's tokenizer files, and renamed into place only after everything succeeded.
//!
//! Which tensors are combined, passed through from the first input or left out (tensor
//! selection, tensors only some inputs have) is decided by [`plan_merge`] in `merge_plan.rs`.

use super::dtype::Dtype;
pub use super::merge_plan::{plan_merge, Action, MergeOptions, Partial, Planned};
use super::model_dir::ModelDir;
use super::pipeline::{stream_tensors, Step};
use super::writer::{SafetensorsWriter, WriterOptions};
use crate::diag::OpError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which part of which tensor a `combine` call sees: elements `start..start + len` (flat,
/// row-major; `len` is the length of the buffers) of tensor `name`, which has `numel`. Without
/// chunking every call sees a whole tensor (`start` 0, `len == numel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: &'a str,
    pub start: usize,
    pub numel: usize,
}

impl Part<'_> {
    /// A part of `len` elements is the whole tensor.
    pub fn is_whole(&self, len: usize) -> bool {
        self.start == 0 && len == self.numel
    }
}

/// Elements per part when a merge is chunked ([`MergeOptions::chunk`]): 2 Mi values, 8 MB
/// per input in f32. Small enough that the largest tensors (embeddings) stop setting the peak
/// memory (measured on SmolLM2-135M, 8 copies + base: 4 Mi parts peaked at 435 MB, 1.6× the
/// model); large enough that per-part overhead is negligible.
pub const CHUNK: usize = 1 << 21;

/// The per-tensor callback of a merge: `(part, one f32 buffer per input) → merged values`.
pub type CombineFn<'a> = dyn FnMut(Part<'_>, &[Vec<f32>]) -> Result<Vec<f32>, OpError> + 'a;

/// Figures from one merge.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeStats {
    pub tensors: usize,
    /// Tensors copied from the first input without calling `combine`.
    pub passed_through: usize,
    /// Tensor bytes read from all inputs.
    pub bytes_read: u64,
    /// Bytes of all files written (weights, index, config, tokenizer files).
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Removes a half-built output directory unless the merge committed it.
struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> OpError {
    OpError::new(
        "smelt::io::write_failed",
        format!("{}: {e}", path.display()),
    )
    .with_help("check that the output location is writable and has free space")
}

fn sibling(path: &Path, suffix: &str) -> Result<PathBuf, OpError> {
    let name = path.file_name().ok_or_else(|| {
        OpError::new(
            "smelt::io::write_failed",
            format!("{}: output must name a directory", path.display()),
        )
    })?;
    let mut name = name.to_os_string();
    name.push(suffix);
    Ok(path.with_file_name(name))
}

/// True when replacing `path` cannot destroy unrelated data: it is an empty directory or a model
/// directory (has weights or a config).
fn replaceable(path: &Path) -> bool {
    let Ok(mut entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries.next().is_none()
        || [
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json",
        ]
        .iter()
        .any(|f| path.join(f).is_file())
}

/// Merge `inputs` into `out_dir`; `combine(name, per_model_values)` returns the merged values.
/// Every tensor is combined and the inputs must have identical tensor sets.
pub fn merge_streaming(
    inputs: &[&ModelDir],
    out_dir: &Path,
    out_dtype: Dtype,
    metadata: BTreeMap<String, String>,
    combine: &mut CombineFn<'_>,
) -> Result<MergeStats, OpError> {
    let opts = MergeOptions::default();
    merge_streaming_with(inputs, out_dir, out_dtype, metadata, &opts, combine)
}

/// [`merge_streaming`] with a tensor selection and a policy for partial tensors: `combine` is
/// called only for the tensors [`plan_merge`] marks `Combine`; the others are copied from the
/// first input (or left out).
pub fn merge_streaming_with(
    inputs: &[&ModelDir],
    out_dir: &Path,
    out_dtype: Dtype,
    metadata: BTreeMap<String, String>,
    opts: &MergeOptions,
    combine: &mut CombineFn<'_>,
) -> Result<MergeStats, OpError> {
    let start = Instant::now();
    let first = *inputs.first().ok_or_else(|| {
        OpError::new(
            "smelt::check::no_models",
            "a merge needs at least one input model",
        )
        .with_help("pass one or more model directories")
    })?;
    if !matches!(out_dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(OpError::new(
            "smelt::io::unsupported_dtype",
            format!("cannot write merged weights as {out_dtype}"),
        )
        .with_help("choose F32, F16 or BF16"));
    }
    let plan = plan_merge(inputs, opts)?;
    if out_dir.exists() && !replaceable(out_dir) {
        return Err(OpError::new(
            "smelt::io::output_exists",
            format!(
                "{}: exists and is not a model directory; refusing to replace it",
                out_dir.display()
            ),
        )
        .with_help("choose a new output directory or remove the existing one"));
    }
    let tmp = TmpDir {
        path: sibling(out_dir, &format!(".tmp-{}", std::process::id()))?,
        keep: false,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path).map_err(|e| io_err(&tmp.path, e))?;
    }
    std::fs::create_dir_all(&tmp.path).map_err(|e| io_err(&tmp.path, e))?;

    let mut specs: Vec<(String, Dtype, Vec<usize>)> = Vec::with_capacity(plan.len());
    let mut steps: Vec<Step> = Vec::with_capacity(plan.len());
    for p in &plan {
        let info = first
            .info(&p.name)
            .expect("planned tensors are in the first input");
        let dtype = if info.dtype.is_float() {
            out_dtype
        } else {
            info.dtype
        };
        specs.push((p.name.clone(), dtype, info.shape.clone()));
        steps.push(match p.action {
            Action::Combine => Step::Combine(&p.name),
            Action::PassThrough if dtype == info.dtype => Step::CopyRaw(&p.name),
            Action::PassThrough => Step::CopyConvert(&p.name),
        });
    }
    let passed_through = steps
        .iter()
        .filter(|s| !matches!(s, Step::Combine(_)))
        .count();
    let wopts = WriterOptions {
        metadata,
        ..WriterOptions::default()
    };
    let mut writer = SafetensorsWriter::create(&tmp.path.join("model.safetensors"), &specs, wopts)?;
    let bytes_read = stream_tensors(inputs, &steps, opts.chunk, &mut writer, combine)?;
    let mut bytes_written = writer.finish()?.bytes;

    if let Some(config) = first.config() {
        let mut config = config.clone();
        if let (Value::Object(map), Some(t)) = (&mut config, out_dtype.torch_name()) {
            map.insert("torch_dtype".into(), Value::String(t.into()));
        }
        let text = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
        let path = tmp.path.join("config.json");
        std::fs::write(&path, &text).map_err(|e| io_err(&path, e))?;
        bytes_written += text.len() as u64;
    }
    for src in first.side_files() {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = tmp.path.join(name);
        bytes_written += std::fs::copy(src, &dst).map_err(|e| io_err(&dst, e))?;
    }
    commit(tmp, out_dir)?;
    Ok(MergeStats {
        tensors: specs.len(),
        passed_through,
        bytes_read,
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Rename the finished temp dir to `out_dir`, replacing an existing one only now.
fn commit(mut tmp: TmpDir, out_dir: &Path) -> Result<(), OpError> {
    if out_dir.exists() {
        let old = sibling(out_dir, &format!(".old-{}", std::process::id()))?;
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out_dir, &old).map_err(|e| io_err(out_dir, e))?;
        if let Err(e) = std::fs::rename(&tmp.path, out_dir) {
            let _ = std::fs::rename(&old, out_dir);
            return Err(io_err(out_dir, e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp.path, out_dir).map_err(|e| io_err(out_dir, e))?;
    }
    tmp.keep = true;
    Ok(())
}

/// Elementwise mean of equally shaped buffers (a ready-made `combine` for averaging).
///
/// Works in cache-sized blocks so each output element is written once and every input is
/// streamed once; the inner loops vectorise.
pub fn mean(values: &[Vec<f32>]) -> Vec<f32> {
    const BLOCK: usize = 4096;
    let Some(first) = values.first() else {
        return Vec::new();
    };
    let n = values.iter().map(Vec::len).min().unwrap_or(0);
    let scale = 1.0 / values.len() as f32;
    // Filled block by block with `extend_from_slice` (no zero-initialisation pass).
    let mut out: Vec<f32> = Vec::with_capacity(n);
    for lo in (0..n).step_by(BLOCK) {
        let hi = (lo + BLOCK).min(n);
        out.extend_from_slice(&first[lo..hi]);
        let o = &mut out[lo..hi];
        for v in &values[1..] {
            for (o, x) in o.iter_mut().zip(&v[lo..hi]) {
                *o += x;
            }
        }
        for o in o.iter_mut() {
            *o *= scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::model_dir::INCOMPATIBLE;

    fn model(dir: &Path, vals: &[f32], ids: &[i64]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"vocab_size": 3, "torch_dtype": "float32"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("vocab.txt"), "a\nb\nc\n").unwrap();
        let specs = vec![
            ("w".into(), Dtype::F32, vec![vals.len()]),
            ("ids".into(), Dtype::I64, vec![ids.len()]),
        ];
        let mut w = SafetensorsWriter::create(
            &dir.join("model.safetensors"),
            &specs,
            WriterOptions::default(),
        )
        .unwrap();
        let raw: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_raw("ids", &raw).unwrap();
        w.write_f32("w", vals).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn averages_and_copies_side_files() {
        let d = tempfile::tempdir().unwrap();
        model(&d.path().join("a"), &[1.0, 2.0], &[0, 1]);
        model(&d.path().join("b"), &[3.0, 6.0], &[5, 5]);
        let (a, b) = (
            ModelDir::open(d.path().join("a")).unwrap(),
            ModelDir::open(d.path().join("b")).unwrap(),
        );
        let out = d.path().join("out");
        let stats = merge_streaming(
            &[&a, &b],
            &out,
            Dtype::BF16,
            BTreeMap::new(),
            &mut |_, v| Ok(mean(v)),
        )
        .unwrap();
        assert_eq!(stats.tensors, 2);
        let m = ModelDir::open(&out).unwrap();
        assert_eq!(m.read_f32("w").unwrap(), vec![2.0, 4.0]);
        assert_eq!(m.read_raw("ids").unwrap(), a.read_raw("ids").unwrap());
        assert_eq!(m.info("w").unwrap().dtype, Dtype::BF16);
        assert_eq!(m.config().unwrap()["torch_dtype"], "bfloat16");
        assert!(out.join("vocab.txt").is_file());
        // Failing combine leaves the previous output intact and no temp dir behind.
        let fail = merge_streaming(&[&a], &out, Dtype::F32, BTreeMap::new(), &mut |_, _| {
            Err(OpError::msg("boom"))
        });
        assert!(fail
            .unwrap_err()
            .message
            .contains("while merging tensor `w`"));
        assert_eq!(
            ModelDir::open(&out).unwrap().read_f32("w").unwrap(),
            vec![2.0, 4.0]
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 3);
    }

    #[test]
    fn many_inputs_arrive_in_order() {
        let d = tempfile::tempdir().unwrap();
        let dirs: Vec<ModelDir> = (0..5)
            .map(|i| {
                let p = d.path().join(format!("m{i}"));
                let vals: Vec<f32> = (0..5000).map(|j| (i * 10_000 + j) as f32).collect();
                model(&p, &vals, &[i as i64]);
                ModelDir::open(&p).unwrap()
            })
            .collect();
        let refs: Vec<&ModelDir> = dirs.iter().collect();
        let out = d.path().join("out");
        // Order-sensitive combine: output = Σ_i i·v_i, checked against the inputs' order.
        let mut weighted = |_: Part, v: &[Vec<f32>]| -> Result<Vec<f32>, OpError> {
            let mut o = vec![0.0f32; v[0].len()];
            for (i, x) in v.iter().enumerate() {
                o.iter_mut().zip(x).for_each(|(o, x)| *o += i as f32 * x);
            }
            Ok(o)
        };
        merge_streaming(&refs, &out, Dtype::F32, BTreeMap::new(), &mut weighted).unwrap();
        let got = ModelDir::open(&out).unwrap().read_f32("w").unwrap();
        for (j, g) in got.iter().enumerate() {
            let want: f32 = (0..5).map(|i| i as f32 * (i * 10_000 + j) as f32).sum();
            assert_eq!(*g, want);
        }
    }

    /// A model with the given f32 tensors (1-D) and an integer buffer `ids`.
    fn model_of(dir: &Path, tensors: &[(&str, Vec<f32>)], dtype: Dtype) -> ModelDir {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"vocab_size": 3}"#).unwrap();
        let mut specs: Vec<(String, Dtype, Vec<usize>)> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), dtype, vec![v.len()]))
            .collect();
        specs.push(("ids".into(), Dtype::I64, vec![1]));
        let path = dir.join("model.safetensors");
        let mut w = SafetensorsWriter::create(&path, &specs, WriterOptions::default()).unwrap();
        let mut sorted: Vec<(&str, Option<&Vec<f32>>)> =
            tensors.iter().map(|(n, v)| (*n, Some(v))).collect();
        sorted.push(("ids", None));
        sorted.sort_by_key(|(n, _)| *n);
        for (n, v) in sorted {
            match v {
                Some(v) => w.write_f32(n, v).unwrap(),
                None => w.write_raw(n, &7i64.to_le_bytes()).unwrap(),
            }
        }
        w.finish().unwrap();
        ModelDir::open(dir).unwrap()
    }

    #[test]
    fn unselected_tensors_pass_through_without_combine() {
        let d = tempfile::tempdir().unwrap();
        let tensors = |x: f32| vec![("emb", vec![x, 0.1]), ("head", vec![x; 3]), ("w", vec![x])];
        let a = model_of(&d.path().join("a"), &tensors(1.0), Dtype::F16);
        // `head` differs in shape: fine, since it is not selected.
        let mut tb = tensors(3.0);
        tb[1].1 = vec![3.0; 5];
        let b = model_of(&d.path().join("b"), &tb, Dtype::F16);
        let select = |n: &str| n != "head";
        let opts = MergeOptions {
            select: Some(&select),
            partial: Partial::Error,
            chunk: None,
        };
        for (dtype, sub) in [(Dtype::F16, "same"), (Dtype::F32, "wider")] {
            let mut seen = Vec::new();
            let out = d.path().join(sub);
            let stats = merge_streaming_with(
                &[&a, &b],
                &out,
                dtype,
                BTreeMap::new(),
                &opts,
                &mut |n: Part, v: &[Vec<f32>]| {
                    seen.push(n.name.to_string());
                    Ok(mean(v))
                },
            )
            .unwrap();
            assert_eq!(seen, vec!["emb", "w"]);
            assert_eq!((stats.tensors, stats.passed_through), (4, 2));
            // Read: both inputs' `emb` and `w`, the first input's `head` and `ids`.
            assert_eq!(stats.bytes_read, 2 * (4 + 2) + 6 + 8);
            let m = ModelDir::open(&out).unwrap();
            assert_eq!(
                m.read_f32("emb").unwrap(),
                vec![2.0, a.read_f32("emb").unwrap()[1]]
            );
            assert_eq!(m.read_f32("w").unwrap(), vec![2.0]);
            assert_eq!(m.read_f32("head").unwrap(), vec![1.0; 3]);
            assert_eq!(m.info("head").unwrap().dtype, dtype);
            if dtype == Dtype::F16 {
                assert_eq!(m.read_raw("head").unwrap(), a.read_raw("head").unwrap());
            }
            assert_eq!(m.read_raw("ids").unwrap(), a.read_raw("ids").unwrap());
        }
        // Without the filter the shape mismatch of `head` is an error.
        let e = merge_streaming(
            &[&a, &b],
            &d.path().join("x"),
            Dtype::F32,
            BTreeMap::new(),
            &mut |_, v| Ok(mean(v)),
        );
        assert_eq!(e.unwrap_err().code, INCOMPATIBLE);
    }

    #[test]
    fn partial_tensors_follow_the_policy() {
        let d = tempfile::tempdir().unwrap();
        let base = model_of(
            &d.path().join("base"),
            &[("a", vec![1.0]), ("only_base", vec![5.0]), ("w", vec![2.0])],
            Dtype::F32,
        );
        let m1 = model_of(
            &d.path().join("m1"),
            &[
                ("a", vec![3.0]),
                ("only_models", vec![9.0]),
                ("w", vec![4.0]),
            ],
            Dtype::F32,
        );
        let m2 = model_of(
            &d.path().join("m2"),
            &[
                ("a", vec![5.0]),
                ("only_base", vec![6.0]),
                ("only_models", vec![9.0]),
                ("w", vec![6.0]),
            ],
            Dtype::F32,
        );
        let inputs = [&base, &m1, &m2];
        let run = |partial: Partial, sub: &str| {
            let opts = MergeOptions {
                select: None,
                partial,
                chunk: None,
            };
            let out = d.path().join(sub);
            let mut seen = Vec::new();
            merge_streaming_with(
                &inputs,
                &out,
                Dtype::F32,
                BTreeMap::new(),
                &opts,
                &mut |n: Part, v: &[Vec<f32>]| {
                    seen.push(n.name.to_string());
                    Ok(mean(v))
                },
            )
            .map(|_| (ModelDir::open(&out).unwrap(), seen))
        };
        let e = run(Partial::Error, "e").unwrap_err();
        assert_eq!(e.code, INCOMPATIBLE);
        assert!(
            e.message.starts_with("2 tensor(s) are not in every input"),
            "{}",
            e.message
        );
        assert!(e.message.contains("`only_base`") && e.message.contains("`only_models`"));
        assert!(
            e.message.contains("m1"),
            "names the input lacking it: {}",
            e.message
        );
        assert!(e.help.unwrap().contains("partial=base"));
        assert!(!d.path().join("e").exists());

        let (m, seen) = run(Partial::Base, "b").unwrap();
        assert_eq!(seen, vec!["a", "w"]);
        let names: Vec<&String> = m.tensors().keys().collect();
        assert_eq!(names, ["a", "ids", "only_base", "w"]);
        assert_eq!(m.read_f32("only_base").unwrap(), vec![5.0]);
        assert_eq!(m.read_f32("a").unwrap(), vec![3.0]);

        let (m, seen) = run(Partial::Skip, "s").unwrap();
        assert_eq!(seen, vec!["a", "w"]);
        let names: Vec<&String> = m.tensors().keys().collect();
        assert_eq!(names, ["a", "ids", "w"]);
        assert_eq!(m.read_f32("w").unwrap(), vec![4.0]);

        // An unselected partial tensor the base has is simply copied, whatever the policy.
        let select = |n: &str| n != "only_base" && n != "only_models";
        let opts = MergeOptions {
            select: Some(&select),
            partial: Partial::Error,
            chunk: None,
        };
        let plan = plan_merge(&inputs, &opts).unwrap();
        let got: Vec<(&str, Action)> = plan.iter().map(|p| (p.name.as_str(), p.action)).collect();
        assert_eq!(
            got,
            [
                ("a", Action::Combine),
                ("ids", Action::PassThrough),
                ("only_base", Action::PassThrough),
                ("w", Action::Combine)
            ]
        );
    }

    #[test]
    fn refuses_to_replace_unrelated_dirs() {
        let d = tempfile::tempdir().unwrap();
        model(&d.path().join("a"), &[1.0], &[0]);
        std::fs::create_dir(d.path().join("docs")).unwrap();
        std::fs::write(d.path().join("docs/notes.txt"), "keep me").unwrap();
        let a = ModelDir::open(d.path().join("a")).unwrap();
        let e = merge_streaming(
            &[&a],
            &d.path().join("docs"),
            Dtype::F32,
            BTreeMap::new(),
            &mut |_, v| Ok(v[0].clone()),
        );
        assert_eq!(e.unwrap_err().code, "smelt::io::output_exists");
        assert!(d.path().join("docs/notes.txt").is_file());
    }
}
