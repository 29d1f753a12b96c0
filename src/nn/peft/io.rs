//! safetensors and JSON IO for PEFT modules (adapter files as PEFT and HF write them).
//!
//! Writing goes through the `safetensors` crate so the header carries `__metadata__`
//! (`{"format": "pt"}`, as `PeftModel.save_pretrained` writes); tensors are stored as f32,
//! row-major, keys sorted. Reading goes through candle and converts every floating dtype
//! (f16/bf16/f64 from Python) to f32 on the requested device. IO failures are
//! `smelt::peft::io` errors naming the path.

use crate::diag::OpError;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const IO: &str = "smelt::peft::io";

/// Writes `tensors` (name → tensor, converted to f32) with `metadata` into `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &[(&str, &str)],
) -> Result<(), OpError> {
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.push((name.clone(), t.dims().to_vec(), b));
    }
    let mut views = Vec::with_capacity(bytes.len());
    for (name, shape, b) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| OpError::new(IO, format!("tensor {name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .map_err(|e| OpError::new(IO, format!("writing {}: {e}", path.display())))
}

/// Reads every tensor of a safetensors file as f32 on `device`, sorted by name.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>, OpError> {
    if !path.is_file() {
        return Err(OpError::new(
            IO,
            format!("{} does not exist", path.display()),
        ));
    }
    let map = candle_core::safetensors::load(path, device)
        .map_err(|e| OpError::new(IO, format!("reading {}: {e}", path.display())))?;
    let mut out = BTreeMap::new();
    for (k, t) in map {
        if !t.dtype().is_float() {
            return Err(OpError::new(
                IO,
                format!(
                    "{}: tensor {k} has non-float dtype {:?}",
                    path.display(),
                    t.dtype()
                ),
            ));
        }
        out.insert(k, t.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<serde_json::Value, OpError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| OpError::new(IO, format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| OpError::new(IO, format!("{} is not valid JSON: {e}", path.display())))
}

/// Writes pretty JSON (with a trailing newline).
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), OpError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| OpError::new(IO, format!("serialising {}: {e}", path.display())))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| OpError::new(IO, format!("writing {}: {e}", path.display())))
}

/// Creates `dir` (and parents).
pub fn ensure_dir(dir: &Path) -> Result<(), OpError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| OpError::new(IO, format!("creating {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_metadata() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.safetensors");
        let mut m = BTreeMap::new();
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        m.insert("x.weight".to_string(), t.clone());
        m.insert(
            "y".to_string(),
            t.to_dtype(DType::F16).unwrap().sum(0).unwrap(),
        );
        write_safetensors(&p, &m, &[("format", "pt")]).unwrap();
        let back = read_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(
            back["x.weight"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        assert_eq!(back["y"].to_vec1::<f32>().unwrap(), vec![4.0, 6.0]);
        let bytes = std::fs::read(&p).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        assert_eq!(
            read_safetensors(&d.path().join("no"), &Device::Cpu)
                .unwrap_err()
                .code,
            IO
        );
    }
}
