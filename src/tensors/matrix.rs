//! Labelled matrices: the storage behind the language's `Matrix` values.
//!
//! One representation serves every operator that produces a matrix: similarity scores and
//! softmax weights (2-D, target × source), task affinities (2-D), and empirical-NTK kernels
//! (4-D `[N_train, C, N_X, C]` with their block layout). A matrix is a directory holding
//! `matrix.safetensors` (the `values` array in f64, plus any named side arrays such as a
//! kernel's `flipped` transpose or the training labels) and `matrix.json` (what produced it,
//! one label list per axis, free-form metadata). Values are always f64 on disk so kernels
//! accumulated in float64 keep every bit, and the file loads in Python with
//! `safetensors.numpy.load_file`.
//!
//! The artifact payload ([`Matrix::artifact_data`]) carries the shape, labels and metadata, and
//! for small matrices (≤ [`INLINE_MAX`] entries) the values themselves, so the REPL and tables
//! can show them without reading the file.

use crate::diag::OpError;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

const CODE: &str = "smelt::run::matrix";
/// Matrices with at most this many entries are also inlined in the artifact payload.
pub const INLINE_MAX: usize = 4096;
pub const MATRIX_FORMAT: &str = "smelt-matrix";

/// One axis: its name (e.g. `target`, `source`, `train`, `class`) and optional labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub name: String,
    /// Empty, or exactly as many labels as the axis is long.
    pub labels: Vec<String>,
}

impl Axis {
    pub fn new(name: impl Into<String>, labels: Vec<String>) -> Axis {
        Axis {
            name: name.into(),
            labels,
        }
    }

    pub fn unlabelled(name: impl Into<String>) -> Axis {
        Axis::new(name, Vec::new())
    }
}

/// A dense row-major f64 array with labelled axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// What produced it, e.g. `similarity.loss`, `kernel.sgd`, `affinity`.
    pub what: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    /// One per dimension of `shape`.
    pub axes: Vec<Axis>,
    /// Free-form facts (temperature, sign, layout, …), kept in `matrix.json`.
    pub meta: Map<String, Value>,
    /// Named side arrays (shape, values), e.g. a kernel's `flipped` or `train_labels`.
    pub extra: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Matrix {
    /// A 2-D matrix with labelled rows and columns (their lengths give the shape), from
    /// row-major values.
    pub fn new2(
        what: impl Into<String>,
        rows: Axis,
        cols: Axis,
        values: Vec<f64>,
    ) -> Result<Matrix, OpError> {
        let shape = vec![rows.labels.len(), cols.labels.len()];
        Matrix::new(what, shape, vec![rows, cols], values)
    }

    /// An array of any rank; checks that values, shape and labels agree.
    pub fn new(
        what: impl Into<String>,
        shape: Vec<usize>,
        axes: Vec<Axis>,
        values: Vec<f64>,
    ) -> Result<Matrix, OpError> {
        let m = Matrix {
            what: what.into(),
            shape,
            values,
            axes,
            meta: Map::new(),
            extra: BTreeMap::new(),
        };
        m.validate()?;
        Ok(m)
    }

    pub fn with_meta(mut self, key: &str, value: Value) -> Matrix {
        self.meta.insert(key.to_string(), value);
        self
    }

    pub fn with_extra(mut self, name: &str, shape: Vec<usize>, values: Vec<f64>) -> Matrix {
        self.extra.insert(name.to_string(), (shape, values));
        self
    }

    fn validate(&self) -> Result<(), OpError> {
        let n: usize = self.shape.iter().product();
        if n != self.values.len() {
            return Err(OpError::new(
                CODE,
                format!(
                    "matrix `{}`: shape {:?} holds {n} values but {} were given",
                    self.what,
                    self.shape,
                    self.values.len()
                ),
            ));
        }
        if self.axes.len() != self.shape.len() {
            return Err(OpError::new(
                CODE,
                format!(
                    "matrix `{}`: {} axes described for a rank-{} array",
                    self.what,
                    self.axes.len(),
                    self.shape.len()
                ),
            ));
        }
        for (axis, &len) in self.axes.iter().zip(&self.shape) {
            if !axis.labels.is_empty() && axis.labels.len() != len {
                return Err(OpError::new(
                    CODE,
                    format!(
                        "matrix `{}`: axis `{}` has {} labels but length {len}",
                        self.what,
                        axis.name,
                        axis.labels.len()
                    ),
                ));
            }
        }
        for (name, (shape, values)) in &self.extra {
            if shape.iter().product::<usize>() != values.len() {
                return Err(OpError::new(
                    CODE,
                    format!(
                        "matrix `{}`: side array `{name}` has the wrong length",
                        self.what
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(0)
    }

    /// Entry `(i, j)` of a 2-D matrix.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.values[i * self.cols() + j]
    }

    /// Row `i` of a 2-D matrix.
    pub fn row(&self, i: usize) -> &[f64] {
        let c = self.cols();
        &self.values[i * c..(i + 1) * c]
    }

    /// Entry `i` along the first axis: a rank-(r−1) matrix with the remaining axes, the same
    /// metadata plus `<axis name>: <label or index>` (side arrays are not carried over).
    pub fn slice(&self, i: usize) -> Result<Matrix, OpError> {
        let (Some(&len), Some(axis)) = (self.shape.first(), self.axes.first()) else {
            return Err(OpError::new(
                CODE,
                format!("`{}` has no axis to slice", self.what),
            ));
        };
        if self.shape.len() < 2 || i >= len {
            return Err(OpError::new(
                CODE,
                format!(
                    "cannot take entry {i} of the `{}` axis of `{}` (shape {:?})",
                    axis.name, self.what, self.shape
                ),
            ));
        }
        let step: usize = self.shape[1..].iter().product();
        let label = axis.labels.get(i).cloned().unwrap_or_else(|| i.to_string());
        let mut m = Matrix::new(
            self.what.clone(),
            self.shape[1..].to_vec(),
            self.axes[1..].to_vec(),
            self.values[i * step..(i + 1) * step].to_vec(),
        )?;
        m.meta = self.meta.clone();
        m.meta.insert(axis.name.clone(), json!(label));
        Ok(m)
    }

    /// Writes `matrix.safetensors` and `matrix.json` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), OpError> {
        self.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create", e))?;
        let mut arrays: Vec<(String, Vec<usize>, Vec<u8>)> = vec![(
            "values".to_string(),
            self.shape.clone(),
            f64_bytes(&self.values),
        )];
        for (name, (shape, values)) in &self.extra {
            arrays.push((name.clone(), shape.clone(), f64_bytes(values)));
        }
        let views: Vec<(String, TensorView)> = arrays
            .iter()
            .map(|(n, s, b)| {
                TensorView::new(StDtype::F64, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| OpError::new(CODE, format!("matrix `{}`: {e}", self.what)))
            })
            .collect::<Result<_, _>>()?;
        let mut info = std::collections::HashMap::new();
        info.insert("format".to_string(), MATRIX_FORMAT.to_string());
        info.insert("what".to_string(), self.what.clone());
        let path = dir.join("matrix.safetensors");
        safetensors::serialize_to_file(views, Some(info), &path)
            .map_err(|e| OpError::new(CODE, format!("cannot write {}: {e}", path.display())))?;
        let json_path = dir.join("matrix.json");
        let text = serde_json::to_string_pretty(&self.header_json()).expect("json");
        std::fs::write(&json_path, text).map_err(|e| io_err(&json_path, "write", e))
    }

    /// Reads a matrix written by [`Matrix::write`].
    pub fn read(dir: &Path) -> Result<Matrix, OpError> {
        let json_path = dir.join("matrix.json");
        let text =
            std::fs::read_to_string(&json_path).map_err(|e| io_err(&json_path, "read", e))?;
        let head: Value = serde_json::from_str(&text).map_err(|e| {
            OpError::new(
                CODE,
                format!("{} is not valid JSON: {e}", json_path.display()),
            )
            .with_help("the matrix directory is damaged; delete it and re-run to recompute")
        })?;
        if head["format"] != MATRIX_FORMAT {
            return Err(OpError::new(
                CODE,
                format!("{} is not a smelt matrix", json_path.display()),
            ));
        }
        let path = dir.join("matrix.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| io_err(&path, "read", e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            OpError::new(CODE, format!("{} is corrupt: {e}", path.display()))
                .with_help("the matrix directory is damaged; delete it and re-run to recompute")
        })?;
        let mut values = None;
        let mut extra = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != StDtype::F64 {
                return Err(OpError::new(
                    CODE,
                    format!(
                        "{}: `{name}` is {:?}, expected F64",
                        path.display(),
                        view.dtype()
                    ),
                ));
            }
            let data = bytes_f64(view.data());
            if name == "values" {
                values = Some((view.shape().to_vec(), data));
            } else {
                extra.insert(name, (view.shape().to_vec(), data));
            }
        }
        let (shape, values) = values.ok_or_else(|| {
            OpError::new(CODE, format!("{} has no `values` array", path.display()))
        })?;
        let axes = head["axes"]
            .as_array()
            .map(|a| a.iter().map(axis_from_json).collect())
            .unwrap_or_default();
        let m = Matrix {
            what: head["what"].as_str().unwrap_or("").to_string(),
            shape,
            values,
            axes,
            meta: head["meta"].as_object().cloned().unwrap_or_default(),
            extra,
        };
        m.validate()?;
        Ok(m)
    }

    fn header_json(&self) -> Value {
        json!({
            "format": MATRIX_FORMAT,
            "what": self.what,
            "shape": self.shape,
            "axes": self.axes.iter().map(|a| json!({"name": a.name, "labels": a.labels})).collect::<Vec<_>>(),
            "meta": self.meta,
            "extra": self.extra.iter().map(|(n, (s, _))| (n.clone(), json!(s))).collect::<Map<_, _>>(),
        })
    }

    /// The artifact payload: the header, plus the values when the matrix is small.
    pub fn artifact_data(&self) -> Value {
        let mut head = self.header_json();
        if self.values.len() <= INLINE_MAX {
            head["values"] = json!(self.values);
        }
        head
    }
}

fn axis_from_json(v: &Value) -> Axis {
    Axis {
        name: v["name"].as_str().unwrap_or("").to_string(),
        labels: v["labels"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_f64(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn io_err(path: &Path, verb: &str, e: std::io::Error) -> OpError {
    OpError::new(CODE, format!("cannot {verb} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_trips_values_labels_meta_and_side_arrays_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let values = vec![0.0, 1.0 / 3.0, -2.5e-300, f64::MAX, 7.0, 1e-17];
        let m = Matrix::new2(
            "similarity.loss",
            Axis::new("target", labels(&["a", "b"])),
            Axis::new("source", labels(&["x", "y", "z"])),
            values.clone(),
        )
        .unwrap()
        .with_meta("temperature", json!(0.1))
        .with_extra("flipped", vec![3, 2], vec![1.0; 6]);
        m.write(dir.path()).unwrap();
        let back = Matrix::read(dir.path()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get(1, 2), 1e-17);
        assert_eq!(back.row(0), &values[..3]);
        assert_eq!(m.artifact_data()["values"][1], json!(1.0 / 3.0));
    }

    #[test]
    fn rejects_inconsistent_shapes_and_labels() {
        let bad = Matrix::new(
            "k",
            vec![2, 2],
            vec![Axis::unlabelled("r"), Axis::unlabelled("c")],
            vec![1.0; 3],
        );
        assert!(bad.unwrap_err().message.contains("holds 4 values"));
        let bad = Matrix::new(
            "k",
            vec![2, 1],
            vec![Axis::new("r", labels(&["a"])), Axis::unlabelled("c")],
            vec![1.0; 2],
        );
        assert!(bad.unwrap_err().message.contains("1 labels but length 2"));
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = Matrix::new2(
            "m",
            Axis::new("r", labels(&["a"])),
            Axis::new("c", labels(&["b"])),
            vec![1.0],
        )
        .unwrap();
        m.write(dir.path()).unwrap();
        std::fs::write(dir.path().join("matrix.safetensors"), b"garbage").unwrap();
        let e = Matrix::read(dir.path()).unwrap_err();
        assert!(e.message.contains("corrupt"), "{}", e.message);
    }
}
