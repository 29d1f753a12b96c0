//! Hugging Face model directories: `config.json` + `model.safetensors` or a sharded index.
//!
//! [`ModelDir::open`] validates every shard header (via [`super::header`]), memory-maps the shards
//! and presents one sorted map `name → (shard, TensorInfo)`. Tensors are read one at a time
//! straight from the mapped bytes and converted to `f32`, so a merge never holds a whole model.
//! Tokenizer and other small side files are recorded so writers can copy them next to a result.
//! A bare `*.safetensors` file also opens (no config, no side files).

use super::convert::bytes_to_f32;
use super::dtype::Dtype;
use super::header::{io_error, read_header, Header, TensorInfo, CORRUPT};
use crate::diag::OpError;
use memmap2::{Mmap, UncheckedAdvice};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Small files copied along with the weights when they exist.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
];

pub const INCOMPATIBLE: &str = "smelt::check::incompatible_models";

/// One memory-mapped safetensors file with its validated header.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub header: Header,
    mmap: Mmap,
}

#[derive(Debug)]
pub struct ModelDir {
    path: PathBuf,
    config: Option<Value>,
    shards: Vec<Shard>,
    index: Option<PathBuf>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
    side_files: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<Value, OpError> {
    let text = std::fs::read(path).map_err(|e| io_error(path, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        OpError::new(
            "smelt::io::bad_json",
            format!("{}: invalid JSON ({e})", path.display()),
        )
        .with_help("fix or re-download the file")
    })
}

fn map_shard(path: PathBuf) -> Result<Shard, OpError> {
    let header = read_header(&path)?;
    let file = File::open(&path).map_err(|e| io_error(&path, e))?;
    // SAFETY: the mapping is read-only; like every mmap reader we assume the file is not
    // truncated while mapped. The length is re-checked against the validated header.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_error(&path, e))?;
    if mmap.len() as u64 != header.file_len {
        return Err(OpError::new(
            CORRUPT,
            format!("{}: file changed size while being opened", path.display()),
        )
        .with_help("do not modify model files while they are read"));
    }
    Ok(Shard { path, header, mmap })
}

impl ModelDir {
    /// Open a model directory (or a single `.safetensors` file) and validate all headers.
    pub fn open(path: impl AsRef<Path>) -> Result<ModelDir, OpError> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| io_error(&path, e))?;
        if meta.is_file() {
            let shard = map_shard(path.clone())?;
            return ModelDir::assemble(path, None, vec![shard], None, Vec::new());
        }
        let config_path = path.join("config.json");
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let side_files = SIDE_FILES
            .iter()
            .map(|f| path.join(f))
            .filter(|p| p.is_file())
            .collect();
        let single = path.join("model.safetensors");
        let index_path = path.join("model.safetensors.index.json");
        if single.is_file() {
            let shard = map_shard(single)?;
            return ModelDir::assemble(path, config, vec![shard], None, side_files);
        }
        if !index_path.is_file() {
            return Err(OpError::new(
                "smelt::io::missing_file",
                format!(
                    "{}: no model.safetensors or model.safetensors.index.json",
                    path.display()
                ),
            )
            .with_help(
                "expected a Hugging Face model directory (config.json + safetensors weights)",
            ));
        }
        let index = read_json(&index_path)?;
        let bad = |what: String| {
            OpError::new(CORRUPT, format!("{}: {what}", index_path.display()))
                .with_help("the index does not match the shard files; re-download the model")
        };
        let weight_map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in weight_map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("`{name}` maps to a non-string")))?;
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!("shard name `{file}` is not a plain file name")));
            }
            wanted.entry(file).or_default().push(name);
        }
        let mut shards = Vec::new();
        for (file, names) in &wanted {
            let shard = map_shard(path.join(file))?;
            if let Some(n) = names
                .iter()
                .find(|n| !shard.header.tensors.contains_key(**n))
            {
                return Err(bad(format!(
                    "`{n}` is listed in {file}, which has no such tensor"
                )));
            }
            shards.push(shard);
        }
        ModelDir::assemble(path, config, shards, Some(index_path), side_files)
    }

    fn assemble(
        path: PathBuf,
        config: Option<Value>,
        shards: Vec<Shard>,
        index: Option<PathBuf>,
        side_files: Vec<PathBuf>,
    ) -> Result<ModelDir, OpError> {
        let mut tensors = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for (name, info) in &shard.header.tensors {
                if let Some((j, _)) = tensors.insert(name.clone(), (i, info.clone())) {
                    return Err(OpError::new(
                        CORRUPT,
                        format!(
                            "{}: tensor `{name}` appears in both {} and {}",
                            path.display(),
                            shards[j].path.display(),
                            shard.path.display()
                        ),
                    )
                    .with_help("the shards overlap; re-download the model"));
                }
            }
        }
        Ok(ModelDir {
            path,
            config,
            shards,
            index,
            tensors,
            side_files,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> Option<&Value> {
        self.config.as_ref()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The sharded index file, when the weights are sharded.
    pub fn index_path(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// `name → (shard index, info)`, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, (usize, TensorInfo)> {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|(_, t)| t)
    }

    /// Metadata (`__metadata__`) of the first shard.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.shards
            .first()
            .map(|s| s.header.metadata.clone())
            .unwrap_or_default()
    }

    pub fn has_tokenizer(&self) -> bool {
        self.side_files
            .iter()
            .any(|p| p.ends_with("tokenizer.json"))
    }

    /// Tokenizer, vocabulary and generation files present in the directory.
    pub fn side_files(&self) -> &[PathBuf] {
        &self.side_files
    }

    /// Total bytes of tensor data over all shards.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|(_, t)| t.byte_len() as u64)
            .sum()
    }

    /// `vocab_size` from `config.json` (top level, or `text_config` for multimodal configs).
    pub fn vocab_size(&self) -> Option<usize> {
        let c = self.config.as_ref()?;
        let v = c
            .get("vocab_size")
            .or_else(|| c.get("text_config")?.get("vocab_size"))?;
        v.as_u64().and_then(|v| usize::try_from(v).ok())
    }

    /// `(name, dtype, shape)` of every tensor, sorted by name.
    pub fn signature(&self) -> Vec<(String, Dtype, Vec<usize>)> {
        self.tensors
            .iter()
            .map(|(n, (_, t))| (n.clone(), t.dtype, t.shape.clone()))
            .collect()
    }

    /// Check that `other` has the same tensor names and shapes and the same vocabulary size.
    pub fn check_compatible(&self, other: &ModelDir) -> Result<(), OpError> {
        let (a, b) = (self.path.display(), other.path.display());
        let fail = |msg: String| {
            OpError::new(INCOMPATIBLE, msg).with_help(
                "merging needs models of one architecture and vocabulary (fine-tunes of one base)",
            )
        };
        if let (Some(va), Some(vb)) = (self.vocab_size(), other.vocab_size()) {
            if va != vb {
                return Err(fail(format!(
                    "vocabulary sizes differ: {a} has {va}, {b} has {vb}"
                )));
            }
        }
        let names: BTreeSet<&String> = self.tensors.keys().chain(other.tensors.keys()).collect();
        for name in names {
            match (self.info(name), other.info(name)) {
                (Some(_), None) => {
                    return Err(fail(format!(
                        "tensor `{name}` is in {a} but missing from {b}"
                    )))
                }
                (None, Some(_)) => {
                    return Err(fail(format!(
                        "tensor `{name}` is in {b} but missing from {a}"
                    )))
                }
                (Some(x), Some(y)) if x.shape != y.shape => {
                    return Err(fail(format!(
                        "tensor `{name}` has shape {:?} in {a} but {:?} in {b}",
                        x.shape, y.shape
                    )))
                }
                (Some(x), Some(y)) if x.dtype.is_float() != y.dtype.is_float() => {
                    return Err(fail(format!(
                        "tensor `{name}` is {} in {a} but {} in {b}",
                        x.dtype, y.dtype
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn locate(&self, name: &str) -> Result<(&Shard, &TensorInfo), OpError> {
        let (i, info) = self.tensors.get(name).ok_or_else(|| {
            OpError::new(
                "smelt::io::missing_tensor",
                format!("{}: no tensor named `{name}`", self.path.display()),
            )
            .with_help(format!(
                "the model has {} tensors; check the name",
                self.tensors.len()
            ))
        })?;
        Ok((&self.shards[*i], info))
    }

    /// The stored bytes of a tensor, borrowed from the mapping (little-endian, as on disk).
    pub fn read_raw(&self, name: &str) -> Result<&[u8], OpError> {
        let (shard, info) = self.locate(name)?;
        let start = shard.header.data_start + info.offsets.0;
        let end = shard.header.data_start + info.offsets.1;
        shard.mmap.get(start..end).ok_or_else(|| {
            OpError::new(
                CORRUPT,
                format!(
                    "{}: tensor `{name}` lies outside the file",
                    shard.path.display()
                ),
            )
        })
    }

    /// Read a tensor converted to f32 into `out` (reusing its allocation).
    pub fn read_f32_into(&self, name: &str, out: &mut Vec<f32>) -> Result<(), OpError> {
        let dtype = self.locate(name)?.1.dtype;
        bytes_to_f32(dtype, self.read_raw(name)?, out)
            .map_err(|e| e.context(format!("tensor `{name}`")))
    }

    /// Read elements `start..start + len` of a tensor (flat, row-major) converted to f32 into
    /// `out`: the chunked merges decode a large tensor part by part.
    pub fn read_f32_range_into(
        &self,
        name: &str,
        start: usize,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), OpError> {
        let info = self.locate(name)?.1;
        let (dtype, numel) = (info.dtype, info.numel());
        if start + len > numel {
            return Err(OpError::msg(format!(
                "internal: elements {start}..{} of `{name}`, which has {numel}",
                start + len
            )));
        }
        let size = dtype.size();
        let raw = &self.read_raw(name)?[start * size..(start + len) * size];
        bytes_to_f32(dtype, raw, out).map_err(|e| e.context(format!("tensor `{name}`")))
    }

    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, OpError> {
        let mut out = Vec::new();
        self.read_f32_into(name, &mut out)?;
        Ok(out)
    }

    /// Read a tensor as an f32 candle tensor of its stored shape.
    pub fn read_tensor(
        &self,
        name: &str,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor, OpError> {
        let shape = self.locate(name)?.1.shape.clone();
        let data = self.read_f32(name)?;
        Ok(candle_core::Tensor::from_vec(data, shape, device)?)
    }

    /// Hint that a tensor's mapped pages are no longer needed by this process, so they stop
    /// counting towards its RSS (the page cache keeps them). Failures are ignored.
    pub fn evict(&self, name: &str) {
        if let Some(info) = self.info(name) {
            self.evict_range(name, 0, info.numel());
        }
    }

    /// [`ModelDir::evict`] for elements `start..start + len` only (whole pages inside them).
    pub fn evict_range(&self, name: &str, start: usize, len: usize) {
        let Ok((shard, info)) = self.locate(name) else {
            return;
        };
        const PAGE: usize = 64 * 1024; // a multiple of every common page size
        let size = info.dtype.size();
        let first = shard.header.data_start + info.offsets.0;
        let last = shard.header.data_start + info.offsets.1;
        let lo = (first + start * size).min(last);
        let hi = (first + (start + len) * size).min(last);
        let (start, end) = (lo.div_ceil(PAGE) * PAGE, hi / PAGE * PAGE);
        if end > start {
            // SAFETY: the mapping is read-only and file-backed, so dropping pages only means
            // later reads fault them in again from the file.
            let _ = unsafe {
                shard
                    .mmap
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, json: &str, data: &[u8]) {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn opens_sharded_dir_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_file(
            &d.join("s1.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &a,
        );
        write_file(
            &d.join("s2.safetensors"),
            r#"{"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#,
            &[0x80, 0x3f],
        );
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(d.join("config.json"), r#"{"vocab_size": 5}"#).unwrap();
        let m = ModelDir::open(d).unwrap();
        assert_eq!(m.shards().len(), 2);
        assert_eq!(m.read_f32("a").unwrap(), vec![1.0, 2.0]);
        assert_eq!(m.read_f32("b").unwrap(), vec![1.0]);
        assert_eq!(m.vocab_size(), Some(5));
        assert_eq!(
            m.read_f32("zz").unwrap_err().code,
            "smelt::io::missing_tensor"
        );
        m.evict("a");
        assert_eq!(m.read_f32("a").unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn rejects_bad_index_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"../x"}}"#,
        )
        .unwrap();
        assert_eq!(ModelDir::open(d).unwrap_err().code, CORRUPT);
        std::fs::write(d.join("config.json"), "{nope").unwrap();
        let e = ModelDir::open(d).unwrap_err();
        assert_eq!(e.code, "smelt::io::bad_json");
        assert!(e.message.contains("config.json"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelDir::open(empty.path()).unwrap_err().code,
            "smelt::io::missing_file"
        );
    }
}
