//! Per-example projected gradients on disk (`estimate gradients`, methods.md §1.5–1.6), the
//! seeded Rademacher projection that made them, and the way back into the adapter.
//!
//! Projection `g̃ = g P` with `P ∈ {±1/√d}^{D×d}` (D = the adapter coordinates used, d = `dim`).
//! `P` is never held whole: row `r` lives in chunk `r / CHUNK_ROWS`, and a chunk's rows are the
//! output of a ChaCha8 stream keyed by (`seed`, chunk index), 64 signs per `u64`, each row
//! starting a fresh word. So the same seed gives the same `P` (and the same features) whatever
//! the batch size or the order the rows are generated in, and `Δ = P w` (the back-projection of
//! a surrogate's weights into the adapter, §1.7) regenerates exactly the rows that were used.
//! `dim = none` is the identity (features are the exact gradients).
//!
//! Layout of a gradient set directory:
//! * `gradients.safetensors`: per task `<task>.features` `[N, d]` (f32), `<task>.f0` `[N]` (f64,
//!   the output functional at θ0), `<task>.labels` `[N]` (u32 class index);
//! * `gradients.json`: `format`, `dim` (null = exact), `seed`, the adapter parameters in
//!   coordinate order (`name`, `shape`, `used`: structurally zero factors such as LoRA `A` at
//!   `B = 0` are skipped and not projected), `D_total`/`D_used`/`D_skipped`, per task its name,
//!   example ids, input format and task artifact, and the model and adapter artifacts.
//!
//! [`back_project`] turns surrogate weights `w ∈ R^d` into adapter tensors `θ0 + P w` (by PEFT
//! key name), which is how `affinity first_order`, `measure approx_error` and ridge boosting map
//! a fitted direction back into a network that can be run.

use crate::diag::OpError;
use candle_core::{Device, Tensor};
use rand::{RngCore, SeedableRng};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const CODE: &str = "smelt::run::gradients";
pub const GRADIENTS_FORMAT: &str = "smelt-gradients";
/// Rows of `P` per generated chunk (the unit of the seeded streams).
pub const CHUNK_ROWS: usize = 256;

/// The seeded Rademacher projection `R^D → R^d` (or the identity when `dim` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub seed: u64,
    pub dim: Option<usize>,
    /// D: the number of (used) gradient coordinates.
    pub rows: usize,
}

impl Projection {
    /// The feature dimension (d, or D without projection).
    pub fn out_dim(&self) -> usize {
        self.dim.unwrap_or(self.rows)
    }

    /// Rows `lo..hi` of `P` (within one chunk), row-major `[hi − lo, d]`, entries ±1/√d.
    fn rows_of_chunk(&self, chunk: usize, lo: usize, hi: usize, d: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(chunk as u64);
        let words = d.div_ceil(64);
        let v = 1.0 / (d as f32).sqrt();
        let first = chunk * CHUNK_ROWS;
        // Skip the rows of the chunk before `lo` (each consumes `words` words).
        for _ in 0..(lo - first) * words {
            rng.next_u64();
        }
        let mut out = Vec::with_capacity((hi - lo) * d);
        for _ in lo..hi {
            let mut j = 0;
            for _ in 0..words {
                let bits = rng.next_u64();
                for k in 0..64.min(d - j) {
                    out.push(if (bits >> k) & 1 == 1 { v } else { -v });
                }
                j += 64;
            }
        }
        out
    }

    /// Calls `f(lo, hi, P[lo..hi])` for consecutive row blocks of `P` covering `0..rows`.
    fn for_blocks(&self, d: usize, mut f: impl FnMut(usize, usize, Vec<f32>)) {
        let mut lo = 0;
        while lo < self.rows {
            let chunk = lo / CHUNK_ROWS;
            let hi = ((chunk + 1) * CHUNK_ROWS).min(self.rows);
            f(lo, hi, self.rows_of_chunk(chunk, lo, hi, d));
            lo = hi;
        }
    }

    /// `G P` for row-major `G [n, D]` (f32): `[n, d]`.
    pub fn project(&self, g: &[f32], n: usize) -> Result<Vec<f32>, OpError> {
        if g.len() != n * self.rows {
            return Err(OpError::new(
                CODE,
                format!("{} values are not {n} rows of {}", g.len(), self.rows),
            ));
        }
        let Some(d) = self.dim else {
            return Ok(g.to_vec());
        };
        let dev = Device::Cpu;
        let gt = Tensor::from_slice(g, (n, self.rows), &dev)?;
        let mut acc = Tensor::zeros((n, d), candle_core::DType::F32, &dev)?;
        let mut err = None;
        self.for_blocks(d, |lo, hi, p| {
            let step = || -> Result<Tensor, OpError> {
                let p = Tensor::from_vec(p, (hi - lo, d), &dev)?;
                Ok(acc.add(&gt.narrow(1, lo, hi - lo)?.contiguous()?.matmul(&p)?)?)
            };
            match step() {
                Ok(a) => acc = a,
                Err(e) => err = Some(e),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        Ok(acc.flatten_all()?.to_vec1::<f32>()?)
    }

    /// `P w` for `w ∈ R^d`: `[D]` (f64 accumulation).
    pub fn back(&self, w: &[f64]) -> Result<Vec<f64>, OpError> {
        let d = self.out_dim();
        if w.len() != d {
            return Err(OpError::new(
                CODE,
                format!("{} weights for a {d}-dimensional projection", w.len()),
            ));
        }
        if self.dim.is_none() {
            return Ok(w.to_vec());
        }
        let mut out = vec![0f64; self.rows];
        self.for_blocks(d, |lo, _, p| {
            for (r, row) in p.chunks_exact(d).enumerate() {
                out[lo + r] = row.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum();
            }
        });
        Ok(out)
    }
}

/// One adapter tensor in coordinate order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The key in the adapter's `adapter_model.safetensors`.
    pub name: String,
    pub shape: Vec<usize>,
    /// False for structurally zero gradients (skipped, not projected, never moved).
    pub used: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One task's features.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskGradients {
    pub name: String,
    pub ids: Vec<String>,
    /// `[N, d]`, row-major.
    pub features: Vec<f32>,
    pub f0: Vec<f64>,
    pub labels: Vec<u32>,
    /// The input format used (a `FormatSpec` as JSON) and the task artifact (for re-evaluation).
    pub format: Value,
    pub task: Value,
}

impl TaskGradients {
    pub fn len(&self) -> usize {
        self.f0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.f0.is_empty()
    }
}

/// A gradient set: features of every task plus what maps them back into the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientSet {
    pub projection: Projection,
    pub params: Vec<ParamSpec>,
    pub tasks: Vec<TaskGradients>,
    /// `{"dir", "key"}` of the base model and of the adapter whose parameters are θ.
    pub model: Value,
    pub adapter: Value,
    /// Anything else worth recording (functional, timings).
    pub meta: Value,
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl GradientSet {
    /// D used (projected coordinates) and D skipped.
    pub fn coords(&self) -> (usize, usize) {
        let used = self.params.iter().filter(|p| p.used).map(ParamSpec::numel);
        let skipped = self.params.iter().filter(|p| !p.used).map(ParamSpec::numel);
        (used.sum(), skipped.sum())
    }

    pub fn dim(&self) -> usize {
        self.projection.out_dim()
    }

    pub fn task(&self, name: &str) -> Option<&TaskGradients> {
        self.tasks.iter().find(|t| t.name == name)
    }

    fn header(&self) -> Value {
        let (used, skipped) = self.coords();
        json!({
            "format": GRADIENTS_FORMAT,
            "dim": self.projection.dim,
            "seed": self.projection.seed.to_string(),
            "chunk_rows": CHUNK_ROWS,
            "D_total": used + skipped,
            "D_used": used,
            "D_skipped": skipped,
            "params": self.params.iter().map(|p| json!({"name": p.name, "shape": p.shape, "used": p.used})).collect::<Vec<_>>(),
            "tasks": self.tasks.iter().map(|t| json!({"name": t.name, "n": t.len(), "ids": t.ids, "format": t.format, "task": t.task})).collect::<Vec<_>>(),
            "model": self.model,
            "adapter": self.adapter,
            "meta": self.meta,
        })
    }

    /// A short JSON description (for the artifact payload).
    pub fn summary(&self) -> Value {
        let mut h = self.header();
        if let Some(ts) = h["tasks"].as_array_mut() {
            for t in ts {
                t.as_object_mut().map(|o| o.remove("ids"));
            }
        }
        h
    }

    /// Writes `gradients.safetensors` and `gradients.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), OpError> {
        std::fs::create_dir_all(dir)?;
        let d = self.dim();
        let mut arrays: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for t in &self.tasks {
            if t.features.len() != t.len() * d || t.labels.len() != t.len() {
                return Err(OpError::new(
                    CODE,
                    format!(
                        "task `{}`: features do not match {} examples",
                        t.name,
                        t.len()
                    ),
                ));
            }
            let f: Vec<u8> = t.features.iter().flat_map(|x| x.to_le_bytes()).collect();
            let l: Vec<u8> = t.labels.iter().flat_map(|x| x.to_le_bytes()).collect();
            arrays.push((
                format!("{}.features", t.name),
                StDtype::F32,
                vec![t.len(), d],
                f,
            ));
            arrays.push((
                format!("{}.f0", t.name),
                StDtype::F64,
                vec![t.len()],
                f64_bytes(&t.f0),
            ));
            arrays.push((format!("{}.labels", t.name), StDtype::U32, vec![t.len()], l));
        }
        let views = arrays
            .iter()
            .map(|(n, dt, s, b)| {
                TensorView::new(*dt, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| OpError::new(CODE, format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut info = std::collections::HashMap::new();
        info.insert("format".to_string(), GRADIENTS_FORMAT.to_string());
        let path = dir.join("gradients.safetensors");
        safetensors::serialize_to_file(views, Some(info), &path)
            .map_err(|e| OpError::new(CODE, format!("cannot write {}: {e}", path.display())))?;
        crate::nn::peft::io::write_json(&dir.join("gradients.json"), &self.header())
    }

    /// Reads a set written by [`GradientSet::write`].
    pub fn read(dir: &Path) -> Result<GradientSet, OpError> {
        let head = crate::nn::peft::io::read_json(&dir.join("gradients.json"))?;
        let corrupt = |what: &str| {
            OpError::new(
                CODE,
                format!("{} is not a readable gradient set ({what})", dir.display()),
            )
            .with_help("the directory is damaged; delete it and re-run `estimate gradients`")
        };
        if head["format"] != GRADIENTS_FORMAT {
            return Err(corrupt("format"));
        }
        let params: Vec<ParamSpec> = head["params"]
            .as_array()
            .ok_or_else(|| corrupt("params"))?
            .iter()
            .map(|p| {
                Some(ParamSpec {
                    name: p["name"].as_str()?.to_string(),
                    shape: serde_json::from_value(p["shape"].clone()).ok()?,
                    used: p["used"].as_bool()?,
                })
            })
            .collect::<Option<_>>()
            .ok_or_else(|| corrupt("params"))?;
        let rows = params.iter().filter(|p| p.used).map(ParamSpec::numel).sum();
        let projection = Projection {
            seed: head["seed"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("seed"))?,
            dim: head["dim"].as_u64().map(|d| d as usize),
            rows,
        };
        let path = dir.join("gradients.safetensors");
        let bytes = std::fs::read(&path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|_| corrupt("safetensors"))?;
        let get = |n: &str, dt: StDtype| -> Result<Vec<u8>, OpError> {
            let v = st.tensor(n).map_err(|_| corrupt(n))?;
            if v.dtype() != dt {
                return Err(corrupt(n));
            }
            Ok(v.data().to_vec())
        };
        let mut tasks = Vec::new();
        for t in head["tasks"].as_array().ok_or_else(|| corrupt("tasks"))? {
            let name = t["name"].as_str().ok_or_else(|| corrupt("task name"))?;
            let f = get(&format!("{name}.features"), StDtype::F32)?;
            let f0 = get(&format!("{name}.f0"), StDtype::F64)?;
            let l = get(&format!("{name}.labels"), StDtype::U32)?;
            tasks.push(TaskGradients {
                name: name.to_string(),
                ids: serde_json::from_value(t["ids"].clone()).map_err(|_| corrupt("ids"))?,
                features: f
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                f0: f0
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect(),
                labels: l
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                format: t["format"].clone(),
                task: t["task"].clone(),
            });
        }
        Ok(GradientSet {
            projection,
            params,
            tasks,
            model: head["model"].clone(),
            adapter: head["adapter"].clone(),
            meta: head["meta"].clone(),
        })
    }

    /// `Δ = P w` split into the adapter's tensors (by key name, flat, f64); skipped tensors
    /// get zeros.
    pub fn delta(&self, w: &[f64]) -> Result<BTreeMap<String, Vec<f64>>, OpError> {
        let flat = self.projection.back(w)?;
        let mut out = BTreeMap::new();
        let mut at = 0;
        for p in &self.params {
            let n = p.numel();
            let v = match p.used {
                true => {
                    at += n;
                    flat[at - n..at].to_vec()
                }
                false => vec![0.0; n],
            };
            out.insert(p.name.clone(), v);
        }
        Ok(out)
    }
}

/// The adapter tensors `θ0 + P w` by key name (f32, on `device`): the recorded adapter's
/// initial values plus the back-projected surrogate weights `w ∈ R^d`.
pub fn back_project(
    set: &GradientSet,
    w: &[f64],
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, OpError> {
    let dir = set.adapter["dir"]
        .as_str()
        .ok_or_else(|| OpError::new(CODE, "the gradient set does not record its adapter"))?;
    let init = crate::nn::peft::io::read_safetensors(
        &Path::new(dir).join("adapter_model.safetensors"),
        device,
    )?;
    let delta = set.delta(w)?;
    let mut out = BTreeMap::new();
    for p in &set.params {
        let t0 = init.get(&p.name).ok_or_else(|| {
            OpError::new(
                CODE,
                format!("the adapter at {dir} has no tensor `{}`", p.name),
            )
        })?;
        let d = Tensor::from_vec(
            delta[&p.name].iter().map(|&x| x as f32).collect::<Vec<_>>(),
            p.shape.as_slice(),
            device,
        )?;
        out.insert(p.name.clone(), t0.add(&d)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proj(seed: u64, dim: usize, rows: usize) -> Projection {
        Projection {
            seed,
            dim: Some(dim),
            rows,
        }
    }

    /// The whole `P` (test sizes only).
    fn dense(p: &Projection) -> Vec<f32> {
        let d = p.out_dim();
        let mut out = Vec::new();
        p.for_blocks(d, |_, _, rows| out.extend(rows));
        out
    }

    #[test]
    fn rows_are_rademacher_and_depend_only_on_seed_and_index() {
        let p = proj(7, 100, 600);
        let full = dense(&p);
        assert_eq!(full.len(), 600 * 100);
        let v = 0.1f32;
        assert!(full.iter().all(|&x| x == v || x == -v));
        let plus = full.iter().filter(|&&x| x > 0.0).count() as f64 / full.len() as f64;
        assert!((plus - 0.5).abs() < 0.01, "{plus}");
        // A row generated alone (mid-chunk) equals the same row of the whole matrix.
        let r = 300;
        let alone = p.rows_of_chunk(r / CHUNK_ROWS, r, r + 1, 100);
        assert_eq!(alone, full[r * 100..(r + 1) * 100]);
        // More rows do not change the first ones; another seed changes them.
        assert_eq!(dense(&proj(7, 100, 300)), full[..300 * 100]);
        assert_ne!(dense(&proj(8, 100, 300)), full[..300 * 100]);
    }

    #[test]
    fn projection_and_back_projection_are_adjoint() {
        // ⟨G P, w⟩ = ⟨G, P w⟩ for every row of G, and both equal the explicit products.
        let (n, rows, d) = (3, 530, 37);
        let p = proj(3, d, rows);
        let g: Vec<f32> = (0..n * rows)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f64> = (0..d).map(|j| (j as f64 * 0.7).sin()).collect();
        let feats = p.project(&g, n).unwrap();
        let back = p.back(&w).unwrap();
        let pm = dense(&p);
        for i in 0..n {
            let lhs: f64 = (0..d).map(|j| feats[i * d + j] as f64 * w[j]).sum();
            let rhs: f64 = (0..rows).map(|r| g[i * rows + r] as f64 * back[r]).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{lhs} vs {rhs}"
            );
            for j in [0, d / 2, d - 1] {
                let want: f64 = (0..rows)
                    .map(|r| g[i * rows + r] as f64 * pm[r * d + j] as f64)
                    .sum();
                assert!((feats[i * d + j] as f64 - want).abs() < 1e-4);
            }
        }
        // No projection: the identity both ways.
        let id = Projection {
            seed: 0,
            dim: None,
            rows,
        };
        assert_eq!(id.project(&g, n).unwrap(), g);
        assert_eq!(id.back(&vec![1.0; rows]).unwrap(), vec![1.0; rows]);
        assert!(p.project(&g[1..], n).is_err() && p.back(&w[1..]).is_err());
    }

    #[test]
    fn a_set_round_trips_and_maps_weights_back_by_name() {
        let t = tempfile::tempdir().unwrap();
        let params = vec![
            ParamSpec {
                name: "a".into(),
                shape: vec![2, 3],
                used: false,
            },
            ParamSpec {
                name: "b".into(),
                shape: vec![4, 2],
                used: true,
            },
        ];
        let projection = proj(5, 3, 8);
        let set = GradientSet {
            projection,
            params,
            tasks: vec![TaskGradients {
                name: "movies".into(),
                ids: vec!["0".into(), "1".into()],
                features: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                f0: vec![0.5, -1.5],
                labels: vec![1, 0],
                format: json!({"head": "cls"}),
                task: json!({"dir": "x"}),
            }],
            model: json!({"dir": "m"}),
            adapter: json!({"dir": "a"}),
            meta: json!({"functional": "log_odds"}),
        };
        set.write(t.path()).unwrap();
        let back = GradientSet::read(t.path()).unwrap();
        assert_eq!(back, set);
        assert_eq!(set.coords(), (8, 6));
        let w = [0.3, -1.0, 2.0];
        let delta = set.delta(&w).unwrap();
        assert_eq!(delta["a"], vec![0.0; 6], "skipped tensors never move");
        assert_eq!(delta["b"], set.projection.back(&w).unwrap());
    }
}
