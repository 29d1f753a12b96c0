//! `cluster spectral(T, k)`: spectral clustering on a precomputed affinity, as paper 1's
//! `clustering.py` calls scikit-learn (`SpectralClustering(affinity="precomputed", n_init=100)`
//! on (E + Eᵀ)/2 with E = exp(T)), methods.md §1.9.
//!
//! The steps are scikit-learn's: the symmetric normalised Laplacian L = I − D^{-1/2}·A·D^{-1/2}
//! of the affinity A with its diagonal ignored (scipy's `laplacian(normed=True)` drops
//! self-loops), the eigenvectors of L's k smallest eigenvalues (nalgebra `SymmetricEigen`),
//! each row divided by √degree, then k-means with seeded k-means++ restarts
//! (src/ops/cluster/kmeans.rs). The extended co-clustering of `cluster coclustering` reuses
//! [`spectral_labels`] on a 2n × 2n affinity.

use super::kmeans::{kmeans, KMeansFit};
use super::{
    affinity, check_k, groups_from_labels, kmeans_seed, nan_param, partition_value, seed_param,
    task_matrix_arg,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::Value;
use nalgebra::{DMatrix, SymmetricEigen};
use serde_json::json;

pub struct ClusterSpectral;

static SIG: Signature = Signature {
    id: "cluster.spectral",
    version: 1,
    summary: "Spectral clustering of tasks on the affinity (E + Eᵀ)/2, E = exp(T).",
    doc: "scikit-learn's `SpectralClustering(affinity=\"precomputed\")` as paper 1 uses it: the \
          affinity is A = (E + Eᵀ)/2 with E = exp(T) (or E = T with `use_exp=false`, which must \
          then be non-negative); its diagonal is ignored; rows of the eigenvectors of the \
          normalised Laplacian's k smallest eigenvalues, divided by √degree, are clustered by \
          k-means with `n_init` seeded k-means++ restarts. The partition's objective is the \
          k-means inertia of the embedding.",
    params: &[
        Param::req("matrix", Ty::Matrix, "Task × task affinity T."),
        Param::req("k", Ty::Int, "Number of groups.").range(1.0, 1e9),
        Param::opt("use_exp", Ty::Bool, Const::Bool(true), "Cluster exp(T) (the code's default) instead of T."),
        Param::opt("n_init", Ty::Int, Const::Int(100), "k-means restarts (the code's 100).").range(1.0, 1e6),
        seed_param(),
        nan_param(),
    ],
    returns: Ty::Partition,
    ret_fn: None,
    examples: &["let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet p = cluster spectral(t, 2)"],
    reference: Some("Li et al. (ACL 2025); methods.md §1.9; Ng, Jordan & Weiss (2001)"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// The spectral embedding (n rows of k coordinates) of the symmetric affinity `a` (row-major).
pub fn embedding(a: &[f64], n: usize, k: usize) -> Result<Vec<Vec<f64>>, OpError> {
    let deg: Vec<f64> = (0..n)
        .map(|i| (0..n).filter(|&j| j != i).map(|j| a[i * n + j]).sum())
        .collect();
    if let Some(i) = deg.iter().position(|d| *d <= 0.0 || !d.is_finite()) {
        return Err(OpError::new(
            "smelt::run::cluster_degree",
            format!(
                "task {i} has no positive affinity to any other task (degree {})",
                deg[i]
            ),
        )
        .with_help("spectral clustering needs every task connected; keep `use_exp=true`"));
    }
    let s: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
    // Largest eigenvalues of D^{-1/2} A D^{-1/2} = smallest of the normalised Laplacian.
    let m = DMatrix::from_fn(n, n, |i, j| {
        if i == j {
            0.0
        } else {
            s[i] * a[i * n + j] * s[j]
        }
    });
    let eig = SymmetricEigen::new(m);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| eig.eigenvalues[y].total_cmp(&eig.eigenvalues[x]));
    Ok((0..n)
        .map(|i| {
            order[..k]
                .iter()
                .map(|&c| eig.eigenvectors[(i, c)] * s[i])
                .collect()
        })
        .collect())
}

/// Spectral clustering labels of the symmetric affinity `a`.
pub fn spectral_labels(
    a: &[f64],
    n: usize,
    k: usize,
    n_init: usize,
    seed: u64,
) -> Result<KMeansFit, OpError> {
    let emb = embedding(a, n, k)?;
    Ok(kmeans(&emb, k, n_init, seed))
}

impl Operator for ClusterSpectral {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let t = task_matrix_arg(args, "matrix")?;
        let n = t.n();
        let k = check_k(args.int("k")?, n)?;
        let e = affinity(&t, args.bool("use_exp")?)?;
        let sym: Vec<f64> = (0..n * n)
            .map(|q| (e[q] + e[(q % n) * n + q / n]) / 2.0)
            .collect();
        let n_init = args.int("n_init")?.max(1) as usize;
        let fit = if n == 1 {
            KMeansFit {
                labels: vec![0],
                inertia: 0.0,
                iterations: 0,
            }
        } else {
            spectral_labels(&sym, n, k, n_init, kmeans_seed(cx, args)?)?
        };
        let mut meta = serde_json::Map::new();
        meta.insert("use_exp".into(), json!(args.bool("use_exp")?));
        meta.insert("n_init".into(), json!(n_init));
        let p = Partition {
            method: SIG.id.to_string(),
            k: Some(k),
            tasks: t.names.clone(),
            groups: groups_from_labels(&t.names, &fit.labels),
            objective: Some(fit.inertia),
            status: "converged".into(),
            iterations: fit.iterations,
            meta,
        };
        partition_value(cx, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{planted, recovers};
    use super::*;

    #[test]
    fn recovers_planted_blocks_from_exp_of_a_noisy_affinity() {
        let (t, _) = planted(&[3, 2, 4], 2.0, 0.0, 0.3, 5);
        let n = t.n();
        let e: Vec<f64> = t.values.iter().map(|x| x.exp()).collect();
        let fit = spectral_labels(&e, n, 3, 20, 1).unwrap();
        let groups = groups_from_labels(&t.names, &fit.labels);
        assert!(recovers(&groups, 3), "{groups:?}");
    }

    #[test]
    fn two_disconnected_blocks_embed_to_two_points() {
        // Affinity 1 inside {0, 1, 2} and {3, 4}, 0 across: the two top eigenvectors of
        // D^{-1/2} A D^{-1/2} (eigenvalue 1) span the block indicators scaled by √degree, so
        // after dividing by √degree every task of a block sits at the same point.
        let n = 5;
        let block = [0, 0, 0, 1, 1];
        let a: Vec<f64> = (0..n * n)
            .map(|q| {
                if block[q / n] == block[q % n] {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let emb = embedding(&a, n, 2).unwrap();
        let d = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        assert!(d(&emb[0], &emb[1]) < 1e-20 && d(&emb[1], &emb[2]) < 1e-20);
        assert!(d(&emb[3], &emb[4]) < 1e-20);
        assert!(d(&emb[0], &emb[3]) > 1e-3);
    }

    #[test]
    fn an_isolated_task_is_a_clear_error() {
        let a = vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 5.0];
        let e = embedding(&a, 3, 2).unwrap_err();
        assert_eq!(e.code, "smelt::run::cluster_degree");
    }
}
