//! `cluster …`: groups of tasks from a task × task affinity `Matrix` (methods.md §1.9).
//!
//! `cluster sdp` is paper 1's method (an SDP relaxation solved by clarabel, then the code's
//! greedy rounding), `cluster spectral` and `cluster coclustering` are its spectral
//! alternatives, `cluster kmeans` groups the rows of any matrix. Every one returns a
//! `Partition` (src/tensors/partition.rs) naming the tasks by the matrix's labels.
//!
//! Shared rules, stated once here and in each signature:
//! - The matrix must be 2-D and square; row labels name the tasks (column labels when rows have
//!   none, indices when neither has). Rows and columns labelled differently are an error.
//! - Non-finite entries (a similarity matrix's NaN diagonal) are an error with a hint, unless
//!   `nan=zero` asks to read them as 0.
//! - Random choices (k-means++ seeding and restarts) draw from the node seed mixed with `seed`.

pub mod blas;
pub mod coclustering;
pub mod kmeans;
pub mod lapack;
pub mod rounding;
pub mod sdp;
pub mod spectral;

use crate::diag::OpError;
use crate::ops::{Args, Const, OpCtx, Param};
use crate::tensors::matrix::Matrix;
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

/// Choices of the shared `nan` parameter.
pub const NAN_RULES: &[&str] = &["error", "zero"];

/// The shared `nan` parameter.
pub const fn nan_param() -> Param {
    Param::opt(
        "nan",
        Ty::Enum(NAN_RULES),
        Const::Str("error"),
        "Non-finite entries (e.g. a similarity matrix's NaN diagonal): `error`, or `zero` to read \
         them as 0.",
    )
}

/// The shared `seed` parameter of the methods that run k-means.
pub const fn seed_param() -> Param {
    Param::opt(
        "seed",
        Ty::Int,
        Const::Int(0),
        "Mixed into the node seed for k-means++ seeding and restarts.",
    )
}

/// The k-means seed: the node seed mixed with the `seed` argument.
pub(crate) fn kmeans_seed(cx: &OpCtx, args: &Args) -> Result<u64, OpError> {
    Ok(cx.seed ^ (args.int("seed")? as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A square task × task matrix: task names and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMatrix {
    pub names: Vec<String>,
    pub values: Vec<f64>,
}

impl TaskMatrix {
    pub fn n(&self) -> usize {
        self.names.len()
    }

    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.values[i * self.n() + j]
    }
}

/// Reads a square task matrix from a `Matrix`, applying the `nan` rule.
pub fn task_matrix(m: &Matrix, nan: &str) -> Result<TaskMatrix, OpError> {
    if m.shape.len() != 2 || m.rows() != m.cols() || m.rows() == 0 {
        return Err(OpError::new(
            "smelt::run::cluster_shape",
            format!(
                "clustering needs a non-empty square task × task matrix; `{}` has shape {:?}",
                m.what, m.shape
            ),
        )
        .with_help("pass an affinity or similarity matrix over one list of tasks"));
    }
    let n = m.rows();
    let (rows, cols) = (&m.axes[0].labels, &m.axes[1].labels);
    if !rows.is_empty() && !cols.is_empty() && rows != cols {
        return Err(OpError::new(
            "smelt::run::cluster_labels",
            format!(
                "`{}` labels its rows and columns differently, so its rows are not its columns' \
                 tasks",
                m.what
            ),
        )
        .with_help(
            "cluster a matrix over one list of tasks (rows and columns in the same order)",
        ));
    }
    let names = match (rows.is_empty(), cols.is_empty()) {
        (false, _) => rows.clone(),
        (true, false) => cols.clone(),
        (true, true) => (0..n).map(|i| i.to_string()).collect(),
    };
    let mut values = m.values.clone();
    let bad: Vec<usize> = (0..values.len())
        .filter(|&k| !values[k].is_finite())
        .collect();
    if let Some(&first) = bad.first() {
        if nan != "zero" {
            return Err(OpError::new(
                "smelt::run::cluster_nan",
                format!(
                    "`{}` has {} non-finite entries (the first at ({}, {}): {})",
                    m.what,
                    bad.len(),
                    names[first / n],
                    names[first % n],
                    values[first]
                ),
            )
            .with_help(
                "a similarity matrix stores NaN on its diagonal; pass `nan=zero` to read \
                 non-finite entries as 0, or cluster an affinity matrix",
            ));
        }
        for k in bad {
            values[k] = 0.0;
        }
    }
    Ok(TaskMatrix { names, values })
}

/// Reads argument `name` as a task matrix with the `nan` rule of `args`.
pub(crate) fn task_matrix_arg(args: &Args, name: &str) -> Result<TaskMatrix, OpError> {
    let m = Matrix::read(&args.artifact(name, Kind::Matrix)?.dir)?;
    task_matrix(&m, args.str("nan")?)
}

/// Checks `1 ≤ k ≤ n`.
pub(crate) fn check_k(k: i64, n: usize) -> Result<usize, OpError> {
    if k < 1 || k as usize > n {
        return Err(OpError::new(
            "smelt::run::cluster_k",
            format!("cannot form k = {k} groups from {n} tasks"),
        )
        .with_help(format!("choose k between 1 and {n}")));
    }
    Ok(k as usize)
}

/// Groups from one label per item, in order of first appearance; empty labels vanish.
pub fn groups_from_labels(names: &[String], labels: &[usize]) -> Vec<Vec<String>> {
    let mut order: Vec<usize> = Vec::new();
    for &l in labels {
        if !order.contains(&l) {
            order.push(l);
        }
    }
    order
        .iter()
        .map(|&l| {
            names
                .iter()
                .zip(labels)
                .filter(|(_, &x)| x == l)
                .map(|(t, _)| t.clone())
                .collect()
        })
        .collect()
}

/// The affinity spectral methods use: E = exp(T) when `use_exp`, else T (which must then be
/// non-negative).
pub(crate) fn affinity(t: &TaskMatrix, use_exp: bool) -> Result<Vec<f64>, OpError> {
    if use_exp {
        return Ok(t.values.iter().map(|x| x.exp()).collect());
    }
    if let Some(x) = t.values.iter().find(|x| **x < 0.0) {
        return Err(OpError::new(
            "smelt::run::cluster_negative",
            format!("spectral clustering needs a non-negative affinity; the matrix holds {x}"),
        )
        .with_help("keep `use_exp=true` (the default) to cluster exp(T)"));
    }
    Ok(t.values.clone())
}

/// Writes `p` under the node's output and returns the `Partition` artifact.
pub(crate) fn partition_value(cx: &OpCtx, p: &Partition) -> Result<Value, OpError> {
    let dir = cx.out_dir.join("partition");
    p.write(&dir)?;
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Partition,
        dir,
        key: cx.key,
        data: p.to_json(),
    })))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Planted block affinities for the clustering tests.

    use super::TaskMatrix;
    use rand::{Rng, SeedableRng};

    /// `sizes` blocks; within-block entries ≈ `inside`, across ≈ `across`, plus uniform noise
    /// in ±`noise` (symmetric). Tasks are named `b<block>_<index>` and interleaved so the
    /// blocks are not contiguous in matrix order.
    pub fn planted(
        sizes: &[usize],
        inside: f64,
        across: f64,
        noise: f64,
        seed: u64,
    ) -> (TaskMatrix, Vec<usize>) {
        let mut block = Vec::new();
        for (b, &s) in sizes.iter().enumerate() {
            block.extend(std::iter::repeat_n(b, s));
        }
        // A fixed interleaving: sort by (index within block, block).
        let mut order: Vec<usize> = (0..block.len()).collect();
        let pos: Vec<usize> = (0..block.len())
            .map(|i| i - block.iter().position(|&b| b == block[i]).unwrap())
            .collect();
        order.sort_by_key(|&i| (pos[i], block[i]));
        let labels: Vec<usize> = order.iter().map(|&i| block[i]).collect();
        let n = labels.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut values = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let base = if labels[i] == labels[j] {
                    inside
                } else {
                    across
                };
                let v = base + noise * (2.0 * rng.random::<f64>() - 1.0);
                values[i * n + j] = v;
                values[j * n + i] = v;
            }
        }
        let names = (0..n).map(|i| format!("b{}_{i}", labels[i])).collect();
        (TaskMatrix { names, values }, labels)
    }

    /// Do `groups` (of names `b<block>_<i>`) reproduce the planted blocks exactly?
    pub fn recovers(groups: &[Vec<String>], blocks: usize) -> bool {
        groups.len() == blocks
            && groups.iter().all(|g| {
                let b = |t: &String| t.split('_').next().unwrap().to_string();
                g.iter().all(|t| b(t) == b(&g[0]))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::matrix::Axis;

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_labels_and_applies_the_nan_rule() {
        let m = Matrix::new2(
            "similarity.loss",
            Axis::new("target", names(&["a", "b"])),
            Axis::new("source", names(&["a", "b"])),
            vec![f64::NAN, 0.5, 0.25, f64::NAN],
        )
        .unwrap();
        let e = task_matrix(&m, "error").unwrap_err();
        assert_eq!(e.code, "smelt::run::cluster_nan");
        assert!(e.message.contains("2 non-finite"), "{}", e.message);
        assert!(e.help.unwrap().contains("nan=zero"));
        let t = task_matrix(&m, "zero").unwrap();
        assert_eq!(t.names, names(&["a", "b"]));
        assert_eq!(t.values, vec![0.0, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn refuses_non_square_and_mislabelled_matrices() {
        let m = Matrix::new2(
            "m",
            Axis::new("r", names(&["a", "b"])),
            Axis::new("c", names(&["a"])),
            vec![1.0, 2.0],
        )
        .unwrap();
        assert_eq!(
            task_matrix(&m, "error").unwrap_err().code,
            "smelt::run::cluster_shape"
        );
        let m = Matrix::new2(
            "m",
            Axis::new("r", names(&["a", "b"])),
            Axis::new("c", names(&["b", "a"])),
            vec![1.0; 4],
        )
        .unwrap();
        assert_eq!(
            task_matrix(&m, "error").unwrap_err().code,
            "smelt::run::cluster_labels"
        );
    }

    #[test]
    fn labels_become_groups_in_order_of_first_appearance() {
        let g = groups_from_labels(&names(&["a", "b", "c", "d"]), &[2, 0, 2, 5]);
        assert_eq!(g, vec![names(&["a", "c"]), names(&["b"]), names(&["d"])]);
        assert!(check_k(0, 3).is_err() && check_k(4, 3).is_err());
        assert_eq!(check_k(3, 3).unwrap(), 3);
    }
}
