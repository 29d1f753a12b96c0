//! Streaming safetensors writer: declare every tensor up front, then append them one at a time.
//!
//! Safetensors puts the header (all names, dtypes, shapes, offsets) before the data, so the
//! writer takes the full signature first, writes the header, and then accepts each tensor's
//! values in sorted-name order, converting f32 to the declared dtype on the fly. Only one tensor
//! is ever buffered. Output goes to hidden temp files in the target directory that are renamed
//! into place by [`SafetensorsWriter::finish`] (and deleted if the writer is dropped unfinished).
//! When the total exceeds `max_shard_bytes`, it writes Hugging Face style shards
//! `model-00001-of-0000n.safetensors` plus `model.safetensors.index.json`.
//! Format details that Python `safetensors` checks: header JSON padded with spaces to a multiple
//! of 8 bytes, offsets relative to the data region, data contiguous with no gaps.

use super::convert::f32_to_bytes;
use super::dtype::Dtype;
use crate::diag::OpError;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default shard limit: 2 GB.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2_000_000_000;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Stored in every shard's `__metadata__`; `format: pt` is added when absent (transformers
    /// refuses files whose metadata lacks it).
    pub metadata: BTreeMap<String, String>,
    pub max_shard_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            metadata: BTreeMap::new(),
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// What [`SafetensorsWriter::finish`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Shard files, then the index when sharded.
    pub files: Vec<PathBuf>,
    /// Total bytes of all files written.
    pub bytes: u64,
}

struct ShardPlan {
    final_path: PathBuf,
    tmp_path: PathBuf,
    header: Vec<u8>,
    file_len: u64,
}

pub struct SafetensorsWriter {
    specs: Vec<(String, Dtype, Vec<usize>)>,
    sizes: Vec<usize>,
    shard_of: Vec<usize>,
    shards: Vec<ShardPlan>,
    index_path: Option<PathBuf>,
    next: usize,
    /// Values of tensor `next` already written by [`SafetensorsWriter::write_f32_part`].
    partial: usize,
    cur: Option<(usize, BufWriter<File>)>,
    buf: Vec<u8>,
    finished: bool,
}

fn write_err(path: &Path, e: std::io::Error) -> OpError {
    OpError::new(
        "smelt::io::write_failed",
        format!("{}: {e}", path.display()),
    )
    .with_help("check that the output directory exists, is writable and has free space")
}

fn spec_err(msg: String) -> OpError {
    OpError::new("smelt::run::bad_tensor", msg)
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn header_bytes(
    specs: &[(String, Dtype, Vec<usize>)],
    sizes: &[usize],
    meta: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut map = Map::new();
    let meta: Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    map.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for ((name, dtype, shape), size) in specs.iter().zip(sizes) {
        map.insert(
            name.clone(),
            json!({"dtype": dtype.as_str(), "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}

impl SafetensorsWriter {
    /// Start writing `specs` (any order; they are sorted by name) to `path`
    /// (e.g. `dir/model.safetensors`; shards are named after its stem).
    pub fn create(
        path: &Path,
        specs: &[(String, Dtype, Vec<usize>)],
        opts: WriterOptions,
    ) -> Result<SafetensorsWriter, OpError> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let file_name = path.file_name().and_then(|f| f.to_str()).ok_or_else(|| {
            OpError::new(
                "smelt::io::write_failed",
                format!("{}: not a file path", path.display()),
            )
        })?;
        let mut specs = specs.to_vec();
        specs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sizes = Vec::with_capacity(specs.len());
        for (i, (name, dtype, shape)) in specs.iter().enumerate() {
            if name.is_empty() || name == "__metadata__" || (i > 0 && specs[i - 1].0 == *name) {
                return Err(spec_err(format!(
                    "{}: tensor name `{name}` is empty, reserved or repeated",
                    path.display()
                )));
            }
            let size = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| spec_err(format!("tensor `{name}`: shape {shape:?} overflows")))?;
            sizes.push(size);
        }
        let mut meta = opts.metadata.clone();
        meta.entry("format".into()).or_insert_with(|| "pt".into());
        // Greedy packing in name order: start a new shard when the next tensor would overflow.
        // Each group is (first tensor, end, bytes).
        let mut groups: Vec<(usize, usize, u64)> = Vec::new();
        let mut cur = (0usize, 0usize, 0u64);
        for &size in &sizes {
            if cur.1 > cur.0 && cur.2.saturating_add(size as u64) > opts.max_shard_bytes {
                groups.push(cur);
                cur = (cur.1, cur.1, 0);
            }
            cur.1 += 1;
            cur.2 = cur.2.saturating_add(size as u64);
        }
        groups.push(cur);
        if sizes
            .iter()
            .try_fold(0usize, |a, &s| a.checked_add(s))
            .is_none()
        {
            return Err(spec_err(format!(
                "{}: total tensor size overflows",
                path.display()
            )));
        }
        let n = groups.len();
        let stem = file_name.strip_suffix(".safetensors").unwrap_or(file_name);
        let pid = std::process::id();
        let mut shards = Vec::with_capacity(n);
        let mut shard_of = Vec::with_capacity(specs.len());
        for (k, &(lo, hi, bytes)) in groups.iter().enumerate() {
            let name = if n == 1 {
                file_name.to_string()
            } else {
                format!("{stem}-{:05}-of-{n:05}.safetensors", k + 1)
            };
            let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
            let header = header_bytes(&specs[lo..hi], &sizes[lo..hi], &meta);
            shard_of.extend(std::iter::repeat_n(k, hi - lo));
            shards.push(ShardPlan {
                final_path: dir.join(&name),
                tmp_path: dir.join(format!(".{name}.tmp-{pid}-{nonce}")),
                file_len: header.len() as u64 + bytes,
                header,
            });
        }
        let index_path = (n > 1).then(|| dir.join(format!("{file_name}.index.json")));
        let mut w = SafetensorsWriter {
            specs,
            sizes,
            shard_of,
            shards,
            index_path,
            next: 0,
            partial: 0,
            cur: None,
            buf: Vec::new(),
            finished: false,
        };
        w.open_shard(0)?;
        Ok(w)
    }

    /// The name the next `write_*` call must supply, if any remain.
    pub fn next_name(&self) -> Option<&str> {
        self.specs.get(self.next).map(|s| s.0.as_str())
    }

    fn open_shard(&mut self, k: usize) -> Result<(), OpError> {
        self.close_current()?;
        let plan = &self.shards[k];
        let file = File::create(&plan.tmp_path).map_err(|e| write_err(&plan.final_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&plan.header)
            .map_err(|e| write_err(&plan.final_path, e))?;
        self.cur = Some((k, out));
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), OpError> {
        if let Some((k, out)) = self.cur.take() {
            let path = &self.shards[k].final_path;
            let file = out
                .into_inner()
                .map_err(|e| write_err(path, e.into_error()))?;
            let len = file.metadata().map_err(|e| write_err(path, e))?.len();
            if len != self.shards[k].file_len {
                return Err(OpError::msg(format!(
                    "{}: wrote {len} bytes, planned {}",
                    path.display(),
                    self.shards[k].file_len
                )));
            }
        }
        Ok(())
    }

    /// Check that `name` is the next declared tensor and return its index.
    fn expect(&self, name: &str) -> Result<usize, OpError> {
        match self.specs.get(self.next) {
            Some((n, ..)) if n == name => Ok(self.next),
            Some((n, ..)) => {
                Err(spec_err(if self.specs.iter().any(|s| s.0 == name) {
                    format!("tensor `{name}` written out of order; `{n}` comes next (sorted name order)")
                } else {
                    format!("tensor `{name}` was not declared when the writer was created")
                }))
            }
            None => Err(spec_err(format!(
                "tensor `{name}`: every declared tensor was already written"
            ))),
        }
    }

    /// Append a tensor given as f32 values, converted to its declared (float) dtype.
    pub fn write_f32(&mut self, name: &str, data: &[f32]) -> Result<(), OpError> {
        let i = self.expect(name)?;
        self.no_partial(name)?;
        let (_, dtype, shape) = &self.specs[i];
        let numel = self.sizes[i] / dtype.size();
        if data.len() != numel {
            return Err(OpError::new(
                "smelt::run::shape_mismatch",
                format!(
                    "tensor `{name}`: got {} values but its declared shape {shape:?} has {numel}",
                    data.len()
                ),
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let res = f32_to_bytes(*dtype, data, &mut buf).and_then(|_| self.append(i, &buf));
        self.buf = buf;
        res.map_err(|e| e.context(format!("tensor `{name}`")))
    }

    /// Append the next `data.len()` values of a tensor written in parts (in order, starting
    /// with its first value); the tensor is complete once all its values have arrived.
    pub fn write_f32_part(&mut self, name: &str, data: &[f32]) -> Result<(), OpError> {
        let i = self.expect(name)?;
        let (_, dtype, shape) = &self.specs[i];
        let numel = self.sizes[i] / dtype.size();
        if self.partial + data.len() > numel {
            return Err(OpError::new(
                "smelt::run::shape_mismatch",
                format!(
                    "tensor `{name}`: {} values written in parts but its declared shape {shape:?} has {numel}",
                    self.partial + data.len()
                ),
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let res = f32_to_bytes(*dtype, data, &mut buf).and_then(|_| self.append(i, &buf));
        self.buf = buf;
        res.map_err(|e| e.context(format!("tensor `{name}`")))?;
        self.partial += data.len();
        if self.partial < numel {
            self.next = i; // `append` moved on; the tensor is not finished yet
        } else {
            self.partial = 0;
        }
        Ok(())
    }

    /// Append a tensor's stored bytes exactly (little-endian, declared dtype).
    pub fn write_raw(&mut self, name: &str, bytes: &[u8]) -> Result<(), OpError> {
        let i = self.expect(name)?;
        self.no_partial(name)?;
        if bytes.len() != self.sizes[i] {
            return Err(OpError::new(
                "smelt::run::shape_mismatch",
                format!(
                    "tensor `{name}`: got {} bytes, declared {}",
                    bytes.len(),
                    self.sizes[i]
                ),
            ));
        }
        self.append(i, bytes)
    }

    fn no_partial(&self, name: &str) -> Result<(), OpError> {
        match self.partial {
            0 => Ok(()),
            k => Err(spec_err(format!(
                "tensor `{name}`: {k} values were already written in parts; finish it with write_f32_part"
            ))),
        }
    }

    fn append(&mut self, i: usize, bytes: &[u8]) -> Result<(), OpError> {
        let k = self.shard_of[i];
        if self.cur.as_ref().map(|c| c.0) != Some(k) {
            self.open_shard(k)?;
        }
        if let Some((_, out)) = self.cur.as_mut() {
            out.write_all(bytes)
                .map_err(|e| write_err(&self.shards[k].final_path, e))?;
        }
        self.next = i + 1;
        Ok(())
    }

    /// Flush, check every declared tensor was written, and move the files into place.
    pub fn finish(mut self) -> Result<Written, OpError> {
        if let Some(name) = self.next_name() {
            return Err(spec_err(format!(
                "writer finished before tensor `{name}` was written"
            )));
        }
        // Shards with no tensors (only possible for an empty signature) still get their header.
        let last = self.shards.len() - 1;
        if self.cur.as_ref().map(|c| c.0) != Some(last) {
            self.open_shard(last)?;
        }
        self.close_current()?;
        let mut files = Vec::new();
        let mut bytes = 0;
        for plan in &self.shards {
            std::fs::rename(&plan.tmp_path, &plan.final_path)
                .map_err(|e| write_err(&plan.final_path, e))?;
            files.push(plan.final_path.clone());
            bytes += plan.file_len;
        }
        if let Some(index) = &self.index_path {
            let mut weight_map = Map::new();
            for (i, (name, ..)) in self.specs.iter().enumerate() {
                let file = self.shards[self.shard_of[i]]
                    .final_path
                    .file_name()
                    .unwrap_or_default();
                weight_map.insert(
                    name.clone(),
                    Value::String(file.to_string_lossy().into_owned()),
                );
            }
            let total: usize = self.sizes.iter().sum();
            let doc = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            let tmp = index.with_extension(format!("tmp-{}", std::process::id()));
            std::fs::write(&tmp, &text).map_err(|e| write_err(index, e))?;
            std::fs::rename(&tmp, index).map_err(|e| write_err(index, e))?;
            files.push(index.clone());
            bytes += text.len() as u64;
        }
        self.finished = true;
        Ok(Written { files, bytes })
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.cur = None;
            for plan in &self.shards {
                let _ = std::fs::remove_file(&plan.tmp_path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::header::read_header;

    fn specs() -> Vec<(String, Dtype, Vec<usize>)> {
        vec![
            ("b".into(), Dtype::F16, vec![3]),
            ("a".into(), Dtype::F32, vec![2, 2]),
        ]
    }

    #[test]
    fn header_is_padded_and_valid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let mut w = SafetensorsWriter::create(&p, &specs(), WriterOptions::default()).unwrap();
        assert_eq!(w.next_name(), Some("a"));
        w.write_f32("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.write_f32("b", &[0.5, 1.5, 2.5]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.files, vec![p.clone()]);
        let h = read_header(&p).unwrap();
        assert_eq!(h.data_start % 8, 0);
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.file_len, out.bytes);
        assert_eq!(h.tensors["b"].offsets, (16, 22));
    }

    #[test]
    fn tensors_written_in_parts_equal_whole_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (
            dir.path().join("p.safetensors"),
            dir.path().join("q.safetensors"),
        );
        let mut w = SafetensorsWriter::create(&p, &specs(), WriterOptions::default()).unwrap();
        w.write_f32_part("a", &[1.0]).unwrap();
        assert_eq!(w.next_name(), Some("a"));
        assert!(
            w.write_f32("a", &[0.0; 4]).is_err(),
            "a part-written tensor stays in parts"
        );
        w.write_f32_part("a", &[2.0, 3.0]).unwrap();
        assert_eq!(
            w.write_f32_part("a", &[4.0, 5.0]).unwrap_err().code,
            "smelt::run::shape_mismatch"
        );
        w.write_f32_part("a", &[4.0]).unwrap();
        w.write_f32_part("b", &[0.5, 1.5, 2.5]).unwrap();
        w.finish().unwrap();
        let mut w = SafetensorsWriter::create(&q, &specs(), WriterOptions::default()).unwrap();
        w.write_f32("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.write_f32("b", &[0.5, 1.5, 2.5]).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
        // Unfinished parts are an unfinished tensor.
        let mut w = SafetensorsWriter::create(&p, &specs(), WriterOptions::default()).unwrap();
        w.write_f32("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.write_f32_part("b", &[0.5]).unwrap();
        assert!(w.finish().unwrap_err().message.contains("`b`"));
    }

    #[test]
    fn order_shape_and_completeness_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let mut w = SafetensorsWriter::create(&p, &specs(), WriterOptions::default()).unwrap();
        assert!(w
            .write_f32("b", &[0.0; 3])
            .unwrap_err()
            .message
            .contains("out of order"));
        assert!(w
            .write_f32("zz", &[0.0; 3])
            .unwrap_err()
            .message
            .contains("not declared"));
        assert_eq!(
            w.write_f32("a", &[0.0; 3]).unwrap_err().code,
            "smelt::run::shape_mismatch"
        );
        w.write_f32("a", &[0.0; 4]).unwrap();
        assert!(w.finish().unwrap_err().message.contains("`b`"));
        // The unfinished writer removed its temp file and never created the target.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = vec![
            ("a".into(), Dtype::F32, vec![1]),
            ("a".into(), Dtype::F32, vec![1]),
        ];
        let e = SafetensorsWriter::create(
            &dir.path().join("m.safetensors"),
            &s,
            WriterOptions::default(),
        );
        assert!(e.is_err());
    }
}
