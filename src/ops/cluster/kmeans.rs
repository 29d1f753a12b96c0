//! `cluster kmeans(X, k)`: k-means on the rows of a matrix, and the k-means step the spectral
//! methods share.
//!
//! Lloyd's algorithm from k-means++ seeds (first centre uniform, each next one drawn with
//! probability ∝ squared distance to the nearest chosen centre), `n_init` restarts, the run
//! with the smallest inertia (sum of squared distances to the assigned centre) kept — the
//! recipe of scikit-learn's `KMeans` that paper 1's spectral methods call. A cluster that
//! empties takes the point farthest from its centre. Every draw comes from one ChaCha8 stream
//! seeded by the node seed (mixed with `seed`), so a result never depends on anything else.
//! Written here rather than taken from linfa to keep the dependency set small; the tests check
//! it against closed-form optima.

use super::{check_k, groups_from_labels, kmeans_seed, nan_param, partition_value, seed_param};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::{Kind, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

pub struct ClusterKMeans;

static SIG: Signature = Signature {
    id: "cluster.kmeans",
    version: 1,
    summary: "k-means (k-means++ seeds, Lloyd iterations, seeded restarts) on the rows of a matrix.",
    doc: "Each row of the 2-D matrix is a point (e.g. a task's affinity profile); rows are named \
          by the row labels. Runs `n_init` seeded k-means++ restarts of Lloyd's algorithm and \
          keeps the one with the smallest inertia (the partition's objective). Empty groups \
          never appear: a cluster that empties takes the point farthest from its centre (from a \
          cluster with more than one point).",
    params: &[
        Param::req("matrix", Ty::Matrix, "Points as rows."),
        Param::req("k", Ty::Int, "Number of groups.").range(1.0, 1e9),
        Param::opt("n_init", Ty::Int, Const::Int(10), "Restarts; the best inertia wins.").range(1.0, 1e6),
        seed_param(),
        nan_param(),
    ],
    returns: Ty::Partition,
    ret_fn: None,
    examples: &["let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet p = cluster kmeans(t, 2)"],
    reference: Some("Arthur & Vassilvitskii (2007), k-means++; scikit-learn `KMeans`"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// The best restart.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    pub labels: Vec<usize>,
    pub inertia: f64,
    /// Lloyd iterations of the kept restart.
    pub iterations: usize,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn seeds(points: &[Vec<f64>], k: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    let n = points.len();
    let mut centres = vec![points[rng.random_range(0..n)].clone()];
    let mut d: Vec<f64> = points.iter().map(|p| dist2(p, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            let mut i = 0;
            while i + 1 < n && u >= d[i] {
                u -= d[i];
                i += 1;
            }
            i
        } else {
            rng.random_range(0..n)
        };
        centres.push(points[pick].clone());
        for (di, p) in d.iter_mut().zip(points) {
            *di = di.min(dist2(p, &centres[centres.len() - 1]));
        }
    }
    centres
}

fn lloyd(points: &[Vec<f64>], mut centres: Vec<Vec<f64>>, max_iter: usize) -> KMeansFit {
    let (n, k, dim) = (points.len(), centres.len(), points[0].len());
    let nearest = |p: &[f64], cs: &[Vec<f64>]| {
        (0..cs.len())
            .min_by(|&a, &b| dist2(p, &cs[a]).total_cmp(&dist2(p, &cs[b])))
            .unwrap_or(0)
    };
    let mut labels: Vec<usize> = points.iter().map(|p| nearest(p, &centres)).collect();
    let mut iterations = 0;
    for it in 1..=max_iter {
        iterations = it;
        let mut sums = vec![vec![0.0; dim]; k];
        let mut counts = vec![0usize; k];
        for (p, &l) in points.iter().zip(&labels) {
            counts[l] += 1;
            for (s, x) in sums[l].iter_mut().zip(p) {
                *s += x;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centres[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            }
        }
        // Refill empty clusters with the point farthest from its centre.
        for c in 0..k {
            if counts[c] == 0 {
                let far = (0..n)
                    .filter(|&i| counts[labels[i]] > 1)
                    .max_by(|&a, &b| {
                        dist2(&points[a], &centres[labels[a]])
                            .total_cmp(&dist2(&points[b], &centres[labels[b]]))
                    })
                    .unwrap_or(0);
                counts[labels[far]] -= 1;
                labels[far] = c;
                counts[c] = 1;
                centres[c] = points[far].clone();
            }
        }
        // Ties keep the current cluster, so a refilled cluster keeps its point.
        let next: Vec<usize> = points
            .iter()
            .zip(&labels)
            .map(|(p, &l)| {
                let b = nearest(p, &centres);
                if dist2(p, &centres[l]) <= dist2(p, &centres[b]) {
                    l
                } else {
                    b
                }
            })
            .collect();
        if next == labels {
            break;
        }
        labels = next;
    }
    let inertia = points
        .iter()
        .zip(&labels)
        .map(|(p, &l)| dist2(p, &centres[l]))
        .sum();
    KMeansFit {
        labels,
        inertia,
        iterations,
    }
}

/// k-means with `n_init` seeded k-means++ restarts; the smallest inertia wins (the first on ties).
pub fn kmeans(points: &[Vec<f64>], k: usize, n_init: usize, seed: u64) -> KMeansFit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<KMeansFit> = None;
    for _ in 0..n_init.max(1) {
        let fit = lloyd(points, seeds(points, k, &mut rng), 300);
        if best
            .as_ref()
            .is_none_or(|b| fit.inertia < b.inertia - 1e-12 * b.inertia.abs())
        {
            best = Some(fit);
        }
    }
    best.expect("at least one restart")
}

impl Operator for ClusterKMeans {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let m = Matrix::read(&args.artifact("matrix", Kind::Matrix)?.dir)?;
        if m.shape.len() != 2 || m.rows() == 0 {
            return Err(OpError::new(
                "smelt::run::cluster_shape",
                format!(
                    "`cluster kmeans` needs a non-empty 2-D matrix; `{}` has shape {:?}",
                    m.what, m.shape
                ),
            ));
        }
        if m.values.iter().any(|x| !x.is_finite()) && args.str("nan")? != "zero" {
            return Err(OpError::new(
                "smelt::run::cluster_nan",
                format!("`{}` has non-finite entries", m.what),
            )
            .with_help("pass `nan=zero` to read non-finite entries as 0"));
        }
        let points: Vec<Vec<f64>> = (0..m.rows())
            .map(|i| {
                m.row(i)
                    .iter()
                    .map(|x| if x.is_finite() { *x } else { 0.0 })
                    .collect()
            })
            .collect();
        let names: Vec<String> = match m.axes[0].labels.is_empty() {
            true => (0..m.rows()).map(|i| i.to_string()).collect(),
            false => m.axes[0].labels.clone(),
        };
        let k = check_k(args.int("k")?, points.len())?;
        let n_init = args.int("n_init")?.max(1) as usize;
        let fit = kmeans(&points, k, n_init, kmeans_seed(cx, args)?);
        let mut meta = serde_json::Map::new();
        meta.insert("n_init".into(), json!(n_init));
        let p = Partition {
            method: SIG.id.to_string(),
            k: Some(k),
            tasks: names.clone(),
            groups: groups_from_labels(&names, &fit.labels),
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
    use super::*;

    fn pts(xs: &[&[f64]]) -> Vec<Vec<f64>> {
        xs.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn finds_the_closed_form_optimum_of_two_pairs_on_a_line() {
        // {0, 1} and {10, 11}: centres 0.5 and 10.5, inertia 4 · 0.25 = 1.
        let p = pts(&[&[0.0], &[10.0], &[1.0], &[11.0]]);
        let fit = kmeans(&p, 2, 5, 1);
        assert!((fit.inertia - 1.0).abs() < 1e-12, "{}", fit.inertia);
        assert_eq!(fit.labels[0], fit.labels[2]);
        assert_eq!(fit.labels[1], fit.labels[3]);
        assert_ne!(fit.labels[0], fit.labels[1]);
    }

    #[test]
    fn restarts_escape_a_bad_local_optimum_and_the_seed_decides() {
        // Three tight blobs; k = 3. The optimum puts each blob in its own cluster.
        let mut p = Vec::new();
        for (cx, cy) in [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0)] {
            for d in [-0.1, 0.0, 0.1] {
                p.push(vec![cx + d, cy - d]);
            }
        }
        let fit = kmeans(&p, 3, 10, 42);
        let within: f64 = 3.0 * (2.0 * 0.01 + 2.0 * 0.01); // per blob: 2 points at distance² 0.02
        assert!((fit.inertia - within).abs() < 1e-9, "{}", fit.inertia);
        for b in 0..3 {
            assert!(fit.labels[3 * b..3 * b + 3]
                .iter()
                .all(|&l| l == fit.labels[3 * b]));
        }
        assert_eq!(kmeans(&p, 3, 10, 42), fit, "same seed, same result");
    }

    #[test]
    fn k_equal_to_the_number_of_points_gives_zero_inertia() {
        let p = pts(&[&[1.0, 2.0], &[1.0, 2.0], &[3.0, 0.0]]);
        let fit = kmeans(&p, 3, 3, 7);
        assert_eq!(fit.inertia, 0.0);
        let mut l = fit.labels.clone();
        l.sort();
        l.dedup();
        assert_eq!(l.len(), 3, "duplicate points still get their own cluster");
    }
}
