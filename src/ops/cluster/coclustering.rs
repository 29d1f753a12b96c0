//! `cluster coclustering(T, k, extended=false)`: the two co-clustering variants of paper 1's
//! `clustering.py` (methods.md §1.9), which treat a task's row (how it is helped) and its
//! column (how it helps) as separate nodes.
//!
//! - `extended=false` — scikit-learn's `SpectralCoclustering` (Dhillon 2001) on E = exp(T):
//!   An = D1^{-1/2}·E·D2^{-1/2} (row and column sums), its singular vectors 2..1+⌈log₂k⌉ (the
//!   first is discarded), rows of Z = [D1^{-1/2}·U; D2^{-1/2}·V] clustered by k-means. Group c
//!   is {tasks whose row is in c} ∪ {tasks whose column is in c}, so a task whose row and
//!   column land in different clusters is in two groups (`overlapping: true`).
//! - `extended=true` — spectral clustering (src/ops/cluster/spectral.rs) of the 2n × 2n
//!   affinity [[(E + Eᵀ)/2, E], [Eᵀ, 0]]; a cluster's tasks are its row nodes and its column
//!   nodes (index − n); clusters without a row node are dropped, as in the code.
//!
//! Groups are listed in order of their cluster's first node; empty ones vanish. The SVD is
//! nalgebra's exact one (scikit-learn defaults to a randomized SVD, which approximates it).

use super::kmeans::{kmeans, KMeansFit};
use super::spectral::spectral_labels;
use super::{
    affinity, check_k, kmeans_seed, nan_param, partition_value, seed_param, task_matrix_arg,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::Value;
use nalgebra::DMatrix;
use serde_json::json;

pub struct ClusterCoclustering;

static SIG: Signature = Signature {
    id: "cluster.coclustering",
    version: 1,
    summary: "Spectral co-clustering of tasks (rows and columns of exp(T)), plain or extended.",
    doc: "`extended=false`: Dhillon's spectral co-clustering (scikit-learn's \
          `SpectralCoclustering`) of E = exp(T) — SVD of D1^{-1/2}·E·D2^{-1/2}, k-means on the \
          stacked scaled singular vectors 2..1+⌈log₂k⌉; a group is a row cluster ∪ the column \
          cluster with the same label, so a task can be in two groups. `extended=true`: spectral \
          clustering of [[(E+Eᵀ)/2, E], [Eᵀ, 0]]; each cluster's tasks are its row and column \
          nodes, clusters without a row node dropped. `use_exp=false` uses T itself (must be \
          non-negative).",
    params: &[
        Param::req("matrix", Ty::Matrix, "Task × task affinity T."),
        Param::req("k", Ty::Int, "Number of clusters.").range(1.0, 1e9),
        Param::opt("extended", Ty::Bool, Const::Bool(false), "The 2n × 2n extended variant."),
        Param::opt("use_exp", Ty::Bool, Const::Bool(true), "Co-cluster exp(T) instead of T."),
        Param::opt("n_init", Ty::Int, Const::Int(100), "k-means restarts (the code's 100).").range(1.0, 1e6),
        seed_param(),
        nan_param(),
    ],
    returns: Ty::Partition,
    ret_fn: None,
    examples: &["let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet p = cluster coclustering(t, 2, extended=true)"],
    reference: Some("Dhillon (KDD 2001); Li et al. (ACL 2025); methods.md §1.9"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// Dhillon's co-clustering of the non-negative n × m matrix `e`: (row labels, column labels).
pub fn cocluster(
    e: &[f64],
    n: usize,
    m: usize,
    k: usize,
    n_init: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>, KMeansFit), OpError> {
    let rows: Vec<f64> = (0..n).map(|i| e[i * m..(i + 1) * m].iter().sum()).collect();
    let cols: Vec<f64> = (0..m).map(|j| (0..n).map(|i| e[i * m + j]).sum()).collect();
    if rows
        .iter()
        .chain(&cols)
        .any(|s| *s <= 0.0 || !s.is_finite())
    {
        return Err(OpError::new(
            "smelt::run::cluster_degree",
            "a row or column of the affinity sums to 0: co-clustering needs positive sums",
        )
        .with_help("keep `use_exp=true` (the default)"));
    }
    let (r, c): (Vec<f64>, Vec<f64>) = (
        rows.iter().map(|s| 1.0 / s.sqrt()).collect(),
        cols.iter().map(|s| 1.0 / s.sqrt()).collect(),
    );
    let an = DMatrix::from_fn(n, m, |i, j| r[i] * e[i * m + j] * c[j]);
    let n_sv = 1 + (k as f64).log2().ceil() as usize;
    let svd = an.svd(true, true);
    let (u, vt) = (svd.u.expect("u"), svd.v_t.expect("v_t"));
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
    let keep: Vec<usize> = order.iter().skip(1).take(n_sv - 1).copied().collect();
    let mut z: Vec<Vec<f64>> = (0..n)
        .map(|i| keep.iter().map(|&q| r[i] * u[(i, q)]).collect())
        .collect();
    z.extend((0..m).map(|j| {
        keep.iter()
            .map(|&q| c[j] * vt[(q, j)])
            .collect::<Vec<f64>>()
    }));
    let fit = kmeans(&z, k, n_init, seed);
    Ok((fit.labels[..n].to_vec(), fit.labels[n..].to_vec(), fit))
}

/// Groups from a labelling of 2n nodes (rows then columns): label c's tasks are its row nodes ∪
/// its column nodes, in order of the label's first node; labels with no row node are dropped
/// when `need_row`.
fn union_groups(names: &[String], labels: &[usize], need_row: bool) -> Vec<Vec<String>> {
    let n = names.len();
    let mut order: Vec<usize> = Vec::new();
    for &l in labels {
        if !order.contains(&l) {
            order.push(l);
        }
    }
    order
        .into_iter()
        .filter(|l| !need_row || labels[..n].contains(l))
        .map(|l| {
            let mut g: Vec<usize> = (0..2 * n)
                .filter(|&q| labels[q] == l)
                .map(|q| q % n)
                .collect();
            g.sort();
            g.dedup();
            g.into_iter().map(|i| names[i].clone()).collect()
        })
        .collect()
}

impl Operator for ClusterCoclustering {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let t = task_matrix_arg(args, "matrix")?;
        let n = t.n();
        let k = check_k(args.int("k")?, n)?;
        let e = affinity(&t, args.bool("use_exp")?)?;
        let extended = args.bool("extended")?;
        let n_init = args.int("n_init")?.max(1) as usize;
        let seed = kmeans_seed(cx, args)?;
        let (labels, fit) = if k == 1 {
            (
                vec![0; 2 * n],
                KMeansFit {
                    labels: vec![0; 2 * n],
                    inertia: 0.0,
                    iterations: 0,
                },
            )
        } else if extended {
            let big = extended_affinity(&e, n);
            let fit = spectral_labels(&big, 2 * n, k, n_init, seed)?;
            (fit.labels.clone(), fit)
        } else {
            let (r, c, fit) = cocluster(&e, n, n, k, n_init, seed)?;
            ([r, c].concat(), fit)
        };
        let mut meta = serde_json::Map::new();
        meta.insert("extended".into(), json!(extended));
        meta.insert("use_exp".into(), json!(args.bool("use_exp")?));
        meta.insert("n_init".into(), json!(n_init));
        meta.insert("row_labels".into(), json!(labels[..n]));
        meta.insert("column_labels".into(), json!(labels[n..]));
        let p = Partition {
            method: SIG.id.to_string(),
            k: Some(k),
            tasks: t.names.clone(),
            groups: union_groups(&t.names, &labels, extended),
            objective: Some(fit.inertia),
            status: "converged".into(),
            iterations: fit.iterations,
            meta,
        };
        partition_value(cx, &p)
    }
}

/// [[(E + Eᵀ)/2, E], [Eᵀ, 0]] (row-major 2n × 2n).
pub fn extended_affinity(e: &[f64], n: usize) -> Vec<f64> {
    let w = 2 * n;
    let mut big = vec![0.0; w * w];
    for i in 0..n {
        for j in 0..n {
            big[i * w + j] = (e[i * n + j] + e[j * n + i]) / 2.0;
            big[i * w + n + j] = e[i * n + j];
            big[(n + j) * w + i] = e[i * n + j];
        }
    }
    big
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn recovers_a_planted_bicluster_of_a_rectangular_matrix() {
        // Rows {0, 2, 4} go with columns {1, 3}; rows {1, 3} with columns {0, 2, 4, 5}.
        let (n, m) = (5, 6);
        let row_b = [0, 1, 0, 1, 0];
        let col_b = [1, 0, 1, 0, 1, 1];
        let e: Vec<f64> = (0..n * m)
            .map(|q| {
                let (i, j) = (q / m, q % m);
                let noise = ((q * 7919) % 13) as f64 / 130.0;
                if row_b[i] == col_b[j] {
                    5.0 + noise
                } else {
                    0.2 + noise
                }
            })
            .collect();
        let (r, c, _) = cocluster(&e, n, m, 2, 10, 3).unwrap();
        for i in 0..n {
            assert_eq!(r[i] == r[0], row_b[i] == row_b[0], "rows {r:?}");
        }
        for j in 0..m {
            // Column j's cluster is the cluster of the rows it goes with.
            let partner = (0..n).find(|&i| row_b[i] == col_b[j]).unwrap();
            assert_eq!(c[j], r[partner], "cols {c:?} rows {r:?}");
        }
    }

    #[test]
    fn groups_are_unions_of_row_and_column_clusters() {
        let names = names(3);
        // Rows: t0→0, t1→0, t2→1; columns: t0→1, t1→0, t2→1.
        let g = union_groups(&names, &[0, 0, 1, 1, 0, 1], false);
        assert_eq!(g, vec![vec!["t0", "t1"], vec!["t0", "t2"]]);
        // A label only columns carry is dropped by the extended rule.
        let g = union_groups(&names, &[0, 0, 0, 1, 0, 0], true);
        assert_eq!(g, vec![vec!["t0", "t1", "t2"]]);
    }

    #[test]
    fn the_extended_matrix_has_the_documented_blocks() {
        let e = [1.0, 2.0, 3.0, 4.0];
        let big = extended_affinity(&e, 2);
        assert_eq!(
            big,
            vec![
                1.0, 2.5, 1.0, 2.0, //
                2.5, 4.0, 3.0, 4.0, //
                1.0, 3.0, 0.0, 0.0, //
                2.0, 4.0, 0.0, 0.0,
            ]
        );
    }
}
