//! `average_density(T, partition)`: Σ over groups C of (Σ_{i,j∈C} T_ij)/|C| — the score
//! paper 1's `clustering.py` (`compute_average_density`, methods.md §1.9) uses to choose the
//! number of groups k: compare it across `cluster sdp(T, k)` for several k.
//!
//! Tasks are matched by name (the matrix's labels, the partition's task names), so the
//! partition may come from any matrix over the same tasks. The diagonal T_ii counts, as in the
//! code. A helper: it realises its two arguments and computes on the spot.

use crate::diag::OpError;
use crate::ops::cluster::{nan_param, task_matrix, TaskMatrix};
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct AverageDensity;

static SIG: Signature = Signature {
    id: "average_density",
    version: 1,
    summary: "Σ_C (Σ_{i,j∈C} T_ij)/|C| of a partition on an affinity matrix (to choose k).",
    doc: "The average density of paper 1's `compute_average_density`: for every group C of the \
          partition, the sum of T over all ordered pairs (i, j) in C (diagonal included) \
          divided by |C|, summed over groups. Tasks are matched by name; a partition task the \
          matrix does not label is an error. `nan=zero` reads non-finite entries as 0.",
    params: &[
        Param::req("matrix", Ty::Matrix, "Task × task affinity T."),
        Param::req("partition", Ty::Partition, "Groups of the matrix's tasks."),
        nan_param(),
    ],
    returns: Ty::Float,
    ret_fn: None,
    examples: &["let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet d = [average_density(t, cluster sdp(t, k)) for k in [1, 2, 3]]"],
    reference: Some("Li et al. (ACL 2025); methods.md §1.9 (`compute_average_density`)"),
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

/// The average density of `groups` (task names) on `t`.
pub fn average_density(t: &TaskMatrix, groups: &[Vec<String>]) -> Result<f64, OpError> {
    let mut total = 0.0;
    for g in groups.iter().filter(|g| !g.is_empty()) {
        let idx: Vec<usize> = g
            .iter()
            .map(|name| {
                t.names.iter().position(|n| n == name).ok_or_else(|| {
                    OpError::new(
                        "smelt::run::unknown_task",
                        format!("the partition's task `{name}` is not a label of the matrix"),
                    )
                    .with_help(format!("the matrix's tasks are: {}", t.names.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?;
        let within: f64 = idx
            .iter()
            .flat_map(|&i| idx.iter().map(move |&j| (i, j)))
            .map(|(i, j)| t.get(i, j))
            .sum();
        total += within / idx.len() as f64;
    }
    Ok(total)
}

impl Operator for AverageDensity {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let m = force(args.get("matrix")?)?;
        let p = force(args.get("partition")?)?;
        let forced = Args::new(vec![("matrix", m), ("partition", p)]);
        let m = Matrix::read(&forced.artifact("matrix", Kind::Matrix)?.dir)?;
        let p = forced.artifact("partition", Kind::Partition)?;
        let p = Partition::from_json(&p.data).ok_or_else(|| {
            OpError::new(
                "smelt::run::partition",
                "the partition's payload is damaged",
            )
        })?;
        let t = task_matrix(&m, args.str("nan")?)?;
        average_density(&t, &p.groups).map(Value::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matches_a_hand_computation() {
        // T (asymmetric on purpose), groups {a, c} and {b}:
        // {a, c}: (T_aa + T_ac + T_ca + T_cc)/2 = (1 + 0.5 + 0.25 + 2)/2 = 1.875
        // {b}:    T_bb / 1 = 3
        let t = TaskMatrix {
            names: names(&["a", "b", "c"]),
            values: vec![1.0, 9.0, 0.5, 9.0, 3.0, 9.0, 0.25, 9.0, 2.0],
        };
        let d = average_density(&t, &[names(&["a", "c"]), names(&["b"])]).unwrap();
        assert!((d - 4.875).abs() < 1e-15, "{d}");
        // One group of everything: sum of all entries / 3.
        let all = average_density(&t, &[names(&["c", "b", "a"])]).unwrap();
        assert!((all - t.values.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        let e = average_density(&t, &[names(&["z"])]).unwrap_err();
        assert_eq!(e.code, "smelt::run::unknown_task");
    }
}
