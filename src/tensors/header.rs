//! Validated safetensors headers, read without touching tensor data.
//!
//! A safetensors file is `u64 LE header length` + JSON header + data region. Files come from the
//! network and from other tools, so every field is checked before anything indexes into the data:
//! lengths against the file size (and a 100 MB cap), UTF-8 and JSON, dtypes, shape products
//! (with overflow checks), `data_offsets` inside the data region, byte lengths equal to
//! `numel × dtype size`, and no overlapping tensors. Every failure is an [`OpError`] with code
//! `smelt::io::corrupt_safetensors` (or `smelt::io::missing_file`) whose message names the file.

pub use super::dtype::Dtype;
use crate::diag::OpError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest JSON header accepted (the reference implementation uses the same limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

pub const CORRUPT: &str = "smelt::io::corrupt_safetensors";
pub const MISSING: &str = "smelt::io::missing_file";
const CORRUPT_HELP: &str =
    "the file may be truncated or not a safetensors file; re-download or re-save it";

/// One tensor's entry: `offsets` are `(begin, end)` relative to the start of the data region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub offsets: (usize, usize),
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.offsets.1 - self.offsets.0
    }
}

/// A validated header: every `offsets` range lies inside `data_start..file_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data region (`8 + header length`).
    pub data_start: usize,
    pub file_len: u64,
}

/// Map an I/O error on `path` to `smelt::io::missing_file` or a generic I/O error naming it.
pub fn io_error(path: &Path, e: std::io::Error) -> OpError {
    if e.kind() == std::io::ErrorKind::NotFound {
        OpError::new(MISSING, format!("{}: file not found", path.display()))
            .with_help("check the path; model directories need model.safetensors or an index")
    } else {
        OpError::new("smelt::run::io", format!("{}: {e}", path.display()))
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> OpError {
    OpError::new(CORRUPT, format!("{}: {what}", path.display())).with_help(CORRUPT_HELP)
}

/// Read and validate the header of the safetensors file at `path` (reads only the header bytes).
pub fn read_header(path: &Path) -> Result<Header, OpError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if file_len < 8 {
        return Err(corrupt(
            path,
            format!("file is {file_len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| io_error(path, e))?;
    let n = check_header_len(path, u64::from_le_bytes(len_bytes), file_len)?;
    let mut json = vec![0u8; n];
    file.read_exact(&mut json).map_err(|e| io_error(path, e))?;
    parse_header(path, &json, file_len)
}

/// Validate the header of a whole file already in memory (e.g. an mmap).
pub fn header_from_bytes(path: &Path, bytes: &[u8]) -> Result<Header, OpError> {
    let file_len = bytes.len() as u64;
    if bytes.len() < 8 {
        return Err(corrupt(
            path,
            format!("file is {file_len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let raw: [u8; 8] = bytes[..8].try_into().unwrap_or_default();
    let n = check_header_len(path, u64::from_le_bytes(raw), file_len)?;
    parse_header(path, &bytes[8..8 + n], file_len)
}

fn check_header_len(path: &Path, n: u64, file_len: u64) -> Result<usize, OpError> {
    if n > MAX_HEADER_BYTES {
        return Err(corrupt(
            path,
            format!("header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if n > file_len - 8 {
        return Err(corrupt(
            path,
            format!(
                "header length {n} is larger than the {} bytes after the length prefix",
                file_len - 8
            ),
        ));
    }
    Ok(n as usize)
}

/// Parse and validate the JSON header bytes of a file of `file_len` bytes.
pub fn parse_header(path: &Path, json: &[u8], file_len: u64) -> Result<Header, OpError> {
    let data_start = 8 + json.len();
    let data_len = file_len.checked_sub(data_start as u64).ok_or_else(|| {
        corrupt(
            path,
            format!(
                "a {}-byte header does not fit in {file_len} bytes",
                json.len()
            ),
        )
    })?;
    let data_len =
        usize::try_from(data_len).map_err(|_| corrupt(path, "file too large for this platform"))?;
    let text = std::str::from_utf8(json)
        .map_err(|e| corrupt(path, format!("header is not valid UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| corrupt(path, format!("header is not valid JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(corrupt(path, "header is not a JSON object"));
    };
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            let Value::Object(meta) = entry else {
                return Err(corrupt(path, "`__metadata__` is not a JSON object"));
            };
            for (k, v) in meta {
                let Value::String(s) = v else {
                    return Err(corrupt(
                        path,
                        format!("metadata value `{k}` is not a string"),
                    ));
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let info = parse_entry(path, &name, &entry, data_len)?;
        tensors.insert(name, info);
    }
    check_overlaps(path, &tensors)?;
    Ok(Header {
        tensors,
        metadata,
        data_start,
        file_len,
    })
}

fn parse_entry(
    path: &Path,
    name: &str,
    entry: &Value,
    data_len: usize,
) -> Result<TensorInfo, OpError> {
    let bad = |what: String| corrupt(path, format!("tensor `{name}`: {what}"));
    let obj = entry
        .as_object()
        .ok_or_else(|| bad("entry is not a JSON object".into()))?;
    let dtype_str = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `dtype` string".into()))?;
    let dtype =
        Dtype::parse(dtype_str).ok_or_else(|| bad(format!("unknown dtype `{dtype_str}`")))?;
    let shape_json = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing `shape` array".into()))?;
    let mut shape = Vec::with_capacity(shape_json.len());
    for d in shape_json {
        let d = d.as_u64().and_then(|d| usize::try_from(d).ok());
        shape.push(d.ok_or_else(|| bad("shape entries must be non-negative integers".into()))?);
    }
    let offs = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("missing `data_offsets` pair".into()))?;
    let as_off = |v: &Value| v.as_u64().and_then(|x| usize::try_from(x).ok());
    let (Some(begin), Some(end)) = (as_off(&offs[0]), as_off(&offs[1])) else {
        return Err(bad("data_offsets must be non-negative integers".into()));
    };
    if end < begin {
        return Err(bad(format!(
            "data_offsets end {end} is before begin {begin}"
        )));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] run past the {data_len}-byte data region"
        )));
    }
    let bytes = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if bytes != end - begin {
        return Err(bad(format!(
            "{} bytes in data_offsets but shape {shape:?} of {dtype} needs {bytes}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        offsets: (begin, end),
    })
}

fn check_overlaps(path: &Path, tensors: &BTreeMap<String, TensorInfo>) -> Result<(), OpError> {
    let mut ranges: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|(_, t)| t.offsets.1 > t.offsets.0)
        .map(|(n, t)| (t.offsets.0, t.offsets.1, n.as_str()))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(corrupt(
                path,
                format!(
                    "tensors `{}` and `{}` overlap in the data region",
                    w[0].2, w[1].2
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(json: &str, data_len: usize) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.resize(b.len() + data_len, 0);
        b
    }

    fn parse(json: &str, data_len: usize) -> Result<Header, OpError> {
        header_from_bytes(Path::new("x.safetensors"), &file_bytes(json, data_len))
    }

    #[test]
    fn parses_valid_header() {
        let h = parse(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"I64","shape":[],"data_offsets":[12,20]}}"#,
            20,
        )
        .unwrap();
        assert_eq!(h.tensors["a"].shape, vec![2, 3]);
        assert_eq!(h.tensors["b"].dtype, Dtype::I64);
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.file_len, h.data_start as u64 + 20);
    }

    #[test]
    fn rejects_bad_entries() {
        let cases = [
            (
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#,
                "needs 4",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,4]}}"#,
                "unknown dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,0]}}"#,
                "before begin",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                "run past",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                "overlap",
            ),
            (r#"{"__metadata__":{"k":1}}"#, "not a string"),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"a":"#, "not valid JSON"),
        ];
        for (json, want) in cases {
            let e = parse(json, 8).unwrap_err();
            assert_eq!(e.code, CORRUPT, "{json}");
            assert!(e.message.contains(want), "{json}: {}", e.message);
            assert!(e.message.contains("x.safetensors"));
            assert!(e.help.is_some());
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let p = Path::new("y.safetensors");
        assert_eq!(header_from_bytes(p, &[1, 2, 3]).unwrap_err().code, CORRUPT);
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(header_from_bytes(p, &b)
            .unwrap_err()
            .message
            .contains("limit"));
        let mut b = 100u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(header_from_bytes(p, &b)
            .unwrap_err()
            .message
            .contains("larger than"));
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xff, 0xfe]);
        assert!(header_from_bytes(p, &b)
            .unwrap_err()
            .message
            .contains("UTF-8"));
    }

    #[test]
    fn random_corruption_never_panics() {
        let good = file_bytes(
            r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"I64","shape":[1],"data_offsets":[12,20]}}"#,
            20,
        );
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..(1 + rand() % 4) {
                let i = (rand() % b.len() as u64) as usize;
                b[i] = rand() as u8;
            }
            let cut = (rand() % (b.len() as u64 + 1)) as usize;
            if let Ok(h) = header_from_bytes(Path::new("f"), &b[..cut]) {
                for t in h.tensors.values() {
                    assert!(h.data_start + t.offsets.1 <= cut);
                    assert_eq!(t.byte_len(), t.numel() * t.dtype.size());
                }
            }
        }
    }
}
