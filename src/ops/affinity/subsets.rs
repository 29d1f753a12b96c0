//! Distinct task subsets from a seeded stream, and the task-affinity matrix they define
//! (methods.md §1.8).
//!
//! A subset is `k` distinct task indices, sorted (a partial Fisher–Yates draw from a ChaCha8
//! stream). Duplicates of earlier subsets are skipped, so the result holds
//! `min(count, C(n, k))` distinct subsets; when `count ≥ C(n, k)` every subset is enumerated in
//! lexicographic order instead (no rejection loop can run long).
//!
//! Affinity: `T_ij = (1/n_ij) Σ_{s: {i,j} ⊆ S_s} score_s(i)`, with `n_ij` the number of sampled
//! subsets containing both (`T_ii` averages over the subsets containing `i`); entries with
//! `n_ij = 0` are NaN. `T` is not symmetric in general (row `i` holds task `i`'s scores).

use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

/// `C(n, k)`, saturating at `usize::MAX`.
pub fn binomial(n: usize, k: usize) -> usize {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > usize::MAX as u128 {
            return usize::MAX;
        }
    }
    c as usize
}

/// Every `k`-subset of `0..n` in lexicographic order.
fn all_subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = (0..k).collect();
    if k == 0 || k > n {
        return out;
    }
    loop {
        out.push(cur.clone());
        // Advance the rightmost index that can still move.
        let Some(i) = (0..k).rev().find(|&i| cur[i] < n - k + i) else {
            return out;
        };
        cur[i] += 1;
        for j in i + 1..k {
            cur[j] = cur[j - 1] + 1;
        }
    }
}

/// `count` distinct sorted `k`-subsets of `0..n` drawn from a stream seeded with `seed`.
pub fn sample(n: usize, k: usize, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let total = binomial(n, k);
    if count >= total {
        return all_subsets(n, k);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = rng.random_range(i..n);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx.sort_unstable();
        if seen.insert(idx.clone()) {
            out.push(idx);
        }
    }
    out
}

/// `(T, counts)` row-major `[n, n]` from each subset's per-task scores (`scores[s][t]` is the
/// score of task `subsets[s][t]`).
pub fn affinity(n: usize, subsets: &[Vec<usize>], scores: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0f64; n * n];
    let mut count = vec![0f64; n * n];
    for (s, sc) in subsets.iter().zip(scores) {
        for (a, &i) in s.iter().enumerate() {
            for &j in s {
                sum[i * n + j] += sc[a];
                count[i * n + j] += 1.0;
            }
        }
    }
    let t = sum
        .iter()
        .zip(&count)
        .map(|(&s, &c)| if c > 0.0 { s / c } else { f64::NAN })
        .collect();
    (t, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_distinct_sorted_deterministic_and_capped() {
        let a = sample(10, 3, 50, 4);
        assert_eq!(a.len(), 50);
        assert!(a
            .iter()
            .all(|s| s.len() == 3 && s.windows(2).all(|w| w[0] < w[1]) && s[2] < 10));
        let set: BTreeSet<_> = a.iter().collect();
        assert_eq!(set.len(), 50, "no duplicates");
        assert_eq!(sample(10, 3, 50, 4), a, "same seed, same subsets");
        assert_ne!(sample(10, 3, 50, 5), a);
        // Asking for more than exist gives each once.
        assert_eq!(binomial(5, 2), 10);
        let all = sample(5, 2, 100, 0);
        assert_eq!(all.len(), 10);
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 10);
        assert_eq!(all[0], vec![0, 1]);
        assert_eq!(all[9], vec![3, 4]);
        assert_eq!(binomial(60, 30), 118_264_581_564_861_424);
        assert_eq!(binomial(3, 4), 0);
    }

    #[test]
    fn affinity_averages_only_over_subsets_containing_both() {
        let subsets = vec![vec![0, 1], vec![0, 2], vec![0, 1]];
        let scores = vec![vec![0.5, 0.7], vec![0.9, 0.1], vec![0.3, 0.6]];
        let (t, c) = affinity(4, &subsets, &scores);
        let at = |i: usize, j: usize| t[i * 4 + j];
        assert!((at(0, 1) - 0.4).abs() < 1e-12, "mean of 0.5 and 0.3");
        assert!(
            (at(1, 0) - 0.65).abs() < 1e-12,
            "row 1 holds task 1's scores"
        );
        assert!((at(0, 0) - (0.5 + 0.9 + 0.3) / 3.0).abs() < 1e-12);
        assert!((at(0, 2) - 0.9).abs() < 1e-12 && (at(2, 0) - 0.1).abs() < 1e-12);
        assert!(
            at(1, 2).is_nan() && at(3, 3).is_nan(),
            "never together: undefined"
        );
        assert_eq!(c[1], 2.0);
        assert_eq!(c[4 + 2], 0.0);
        // Counts are symmetric by construction.
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(c[i * 4 + j], c[j * 4 + i]);
            }
        }
    }
}
