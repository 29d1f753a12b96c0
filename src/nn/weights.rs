//! Frozen checkpoint weights from an HF directory (`model.safetensors` or a sharded index).
//!
//! The files are memory-mapped and tensors are loaded one at a time, upcast to f32 (f16, bf16
//! and f32 checkpoints all compute in f32). The result is a plain `Tensor`, never a `Var`, so
//! frozen weights carry no gradient buffers. Names are looked up under a prefix the model picks
//! (`""`, `"bert."`, `"model."`, …); a missing tensor is an `OpError` naming the tensor and file.

use crate::diag::OpError;
use crate::nn::linear::Linear;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const MISSING: &str = "smelt::model::missing_weight";

enum Source {
    Mmap(MmapedSafetensors),
    Memory(HashMap<String, Tensor>),
}

/// An open checkpoint plus the name prefix in use.
pub struct Weights {
    source: Source,
    names: BTreeSet<String>,
    files: Vec<PathBuf>,
    device: Device,
    prefix: String,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.files)
            .field("tensors", &self.names.len())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path, device: &Device) -> Result<Weights, OpError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            return Err(OpError::new(
                "smelt::model::missing_weights",
                format!(
                    "no model.safetensors or model.safetensors.index.json in {}",
                    dir.display()
                ),
            )
            .with_help("convert pytorch_model.bin checkpoints to safetensors first"));
        };
        Weights::from_files(files, device)
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn from_files(files: Vec<PathBuf>, device: &Device) -> Result<Weights, OpError> {
        // SAFETY: the checkpoint files are treated as read-only for the lifetime of the mapping;
        // modifying them while a model is loaded is unsupported (the usual mmap caveat).
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            OpError::new(
                "smelt::model::bad_weights",
                format!("cannot read safetensors {files:?}: {e}"),
            )
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Weights {
            source: Source::Mmap(st),
            names,
            files,
            device: device.clone(),
            prefix: String::new(),
        })
    }

    /// In-memory weights (tests, synthetic models); tensors are moved to `device` on access.
    pub fn from_map(map: HashMap<String, Tensor>, device: &Device) -> Weights {
        let names = map.keys().cloned().collect();
        let files = vec![PathBuf::from("<memory>")];
        Weights {
            source: Source::Memory(map),
            names,
            files,
            device: device.clone(),
            prefix: String::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All tensor names in the checkpoint (without prefix handling).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| s.as_str())
    }

    /// Picks the first prefix under which `probe` exists (e.g. `["", "bert.", "roberta."]`).
    /// Returns false, leaving the prefix unchanged, when none matches.
    pub fn choose_prefix(&mut self, candidates: &[&str], probe: &str) -> bool {
        match candidates
            .iter()
            .find(|p| self.names.contains(&format!("{p}{probe}")))
        {
            Some(p) => {
                self.prefix = p.to_string();
                true
            }
            None => false,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `name` exists under the current prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&format!("{}{name}", self.prefix))
    }

    /// Whether `name` exists with no prefix applied (for heads such as `classifier.weight`).
    pub fn contains_raw(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Loads `prefix + name` as f32.
    pub fn get(&self, name: &str) -> Result<Tensor, OpError> {
        self.get_raw(&format!("{}{name}", self.prefix))
    }

    /// Loads `prefix + name` as f32 and checks its shape.
    pub fn get_shape(&self, name: &str, shape: &[usize]) -> Result<Tensor, OpError> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(OpError::new(
                "smelt::model::weight_shape",
                format!(
                    "tensor `{}{name}` has shape {:?}, expected {shape:?}",
                    self.prefix,
                    t.dims()
                ),
            )
            .with_help("config.json does not match model.safetensors"));
        }
        Ok(t)
    }

    /// Loads `prefix + name` if present.
    pub fn get_opt(&self, name: &str) -> Result<Option<Tensor>, OpError> {
        if self.contains(name) {
            self.get(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Loads an exact tensor name (no prefix) as f32.
    pub fn get_raw(&self, full: &str) -> Result<Tensor, OpError> {
        if !self.names.contains(full) {
            return Err(OpError::new(
                MISSING,
                format!("tensor `{full}` not found in {}", self.describe_files()),
            )
            .with_help("the checkpoint does not match the architecture in config.json"));
        }
        let t = match &self.source {
            Source::Mmap(st) => st.load(full, &self.device)?,
            Source::Memory(m) => m[full].to_device(&self.device)?,
        };
        Ok(if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        })
    }

    /// Loads a linear layer `name.weight [out, in]` (+ `name.bias [out]` when `bias`).
    pub fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear, OpError> {
        let w = self.get_shape(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get_shape(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }

    /// Like [`Weights::linear`] with the bias taken when present.
    pub fn linear_opt_bias(&self, name: &str, out: usize, inp: usize) -> Result<Linear, OpError> {
        let has_bias = self.contains(&format!("{name}.bias"));
        self.linear(name, out, inp, has_bias)
    }

    fn describe_files(&self) -> String {
        let v: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        v.join(", ")
    }
}

/// The distinct shard files named by an index's `weight_map`, resolved beside the index.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, OpError> {
    let bad = |m: String| {
        OpError::new(
            "smelt::model::bad_weights",
            format!("{}: {m}", index.display()),
        )
    };
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing `weight_map` object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = BTreeSet::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
        files.insert(f.to_string());
    }
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(m) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(format!("shard {} does not exist", m.display())));
    }
    Ok(files)
}

/// Random weights for the given `(name, shape)` list, deterministic in `seed`: norm weights
/// (`*norm*.weight`, `*LayerNorm.weight`) near 1, everything else N(0, 0.05²). For tests and
/// tiny synthetic models; load them with [`Weights::from_map`].
pub fn synthetic(
    shapes: &[(String, Vec<usize>)],
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>, OpError> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with(".weight") && name.to_ascii_lowercase().contains("norm");
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box-Muller: two uniforms → one standard normal.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                if is_norm {
                    1.0 + 0.05 * z as f32
                } else {
                    0.05 * z as f32
                }
            })
            .collect();
        out.insert(
            name.clone(),
            Tensor::from_vec(data, shape.as_slice(), device)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(file)).unwrap();
    }

    #[test]
    fn loads_single_file_with_upcast_and_prefix() {
        let d = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        write(d.path(), "model.safetensors", &[("bert.embeddings.x", t)]);
        let mut w = Weights::open(d.path(), &Device::Cpu).unwrap();
        assert!(w.choose_prefix(&["", "bert.", "roberta."], "embeddings.x"));
        let x = w.get("embeddings.x").unwrap();
        assert_eq!(x.dtype(), DType::F32);
        assert_eq!(x.to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert!(!x.is_variable());
        let e = w.get("embeddings.y").unwrap_err();
        assert_eq!(e.code, MISSING);
        assert!(e.message.contains("bert.embeddings.y"));
        assert!(w.get_shape("embeddings.x", &[3]).is_err());
    }

    #[test]
    fn loads_sharded_index() {
        let d = tempfile::tempdir().unwrap();
        let a = Tensor::ones(2, DType::BF16, &Device::Cpu).unwrap();
        let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        write(d.path(), "s1.safetensors", &[("a", a)]);
        write(d.path(), "s2.safetensors", &[("b", b)]);
        let idx = r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
        std::fs::write(d.path().join("model.safetensors.index.json"), idx).unwrap();
        let w = Weights::open(d.path(), &Device::Cpu).unwrap();
        assert_eq!(
            w.get("a").unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 1.0]
        );
        assert_eq!(w.get("b").unwrap().dims(), &[3]);
        assert_eq!(w.names().count(), 2);
    }

    #[test]
    fn synthetic_weights_are_deterministic() {
        let shapes = vec![
            ("a.norm.weight".to_string(), vec![4]),
            ("b.weight".to_string(), vec![2, 3]),
        ];
        let m1 = synthetic(&shapes, 7, &Device::Cpu).unwrap();
        let m2 = synthetic(&shapes, 7, &Device::Cpu).unwrap();
        let w = Weights::from_map(m1, &Device::Cpu);
        assert_eq!(
            w.get("b.weight").unwrap().to_vec2::<f32>().unwrap(),
            m2["b.weight"].to_vec2::<f32>().unwrap()
        );
        let n = w
            .get("a.norm.weight")
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((n - 1.0).abs() < 0.2);
    }

    #[test]
    fn missing_checkpoint_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = Weights::open(d.path(), &Device::Cpu).unwrap_err();
        assert_eq!(e.code, "smelt::model::missing_weights");
    }
}
