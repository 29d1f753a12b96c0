//! The greedy rounding of paper 1's `clustering.py` (methods.md §1.9), exactly as the code does
//! it, turning the SDP's relaxed solution X into groups.
//!
//! B = X > 1/n (entrywise). For i = 0..n−1, for j = i..n−1 with B[i, j] and j not yet assigned:
//! put i into the current group if i is unassigned, and put j into it. After any row i that
//! assigned something, the next group opens. Two consequences of the code's rule are kept on
//! purpose: a row whose own task already belongs to an earlier group still opens a new group
//! for the unassigned tasks it claims (it does not pull them into its own group), and the
//! number of groups may differ from k.
//!
//! One documented addition: a task no row claims (possible only when its row has no entry
//! above 1/n at or after the diagonal, e.g. when all of X equals 1/n) would silently vanish in
//! the code; here it becomes a group of its own, appended at the end, and the caller records
//! which tasks those were.

/// The groups (indices in order of assignment) and the tasks left to singleton groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounded {
    pub groups: Vec<Vec<usize>>,
    pub unclaimed: Vec<usize>,
}

/// Rounds the row-major n × n matrix `x` with threshold 1/n.
pub fn greedy_round(x: &[f64], n: usize) -> Rounded {
    let b = |i: usize, j: usize| x[i * n + j] > 1.0 / n as f64;
    let mut assigned = vec![false; n];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let mut current = Vec::new();
        for j in i..n {
            if b(i, j) && !assigned[j] {
                if !assigned[i] {
                    assigned[i] = true;
                    current.push(i);
                }
                if j != i {
                    assigned[j] = true;
                    current.push(j);
                }
            }
        }
        if !current.is_empty() {
            groups.push(current);
        }
    }
    let unclaimed: Vec<usize> = (0..n).filter(|&i| !assigned[i]).collect();
    groups.extend(unclaimed.iter().map(|&i| vec![i]));
    Rounded { groups, unclaimed }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rounding rule written out once more, as the Python reads, with an explicit cluster
    /// index array (−1 = unassigned) instead of group lists.
    fn reference(x: &[f64], n: usize) -> Vec<i64> {
        let mut assign = vec![-1i64; n];
        let mut cluster = 0i64;
        for i in 0..n {
            let mut any = false;
            for j in i..n {
                if x[i * n + j] > 1.0 / n as f64 && assign[j] == -1 {
                    if assign[i] == -1 {
                        assign[i] = cluster;
                    }
                    assign[j] = cluster;
                    any = true;
                }
            }
            if any {
                cluster += 1;
            }
        }
        assign
    }

    #[test]
    fn block_diagonal_x_gives_its_blocks() {
        // Blocks {0, 2} and {1, 3, 4}: X = 1/|C| inside a block (the SDP's ideal solution).
        let n = 5;
        let block = [0, 1, 0, 1, 1];
        let size = [2.0, 3.0];
        let x: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                if block[i] == block[j] {
                    1.0 / size[block[i]]
                } else {
                    0.0
                }
            })
            .collect();
        let r = greedy_round(&x, n);
        assert_eq!(r.groups, vec![vec![0, 2], vec![1, 3, 4]]);
        assert!(r.unclaimed.is_empty());
    }

    #[test]
    fn a_hand_made_x_follows_the_codes_greedy_rule() {
        // n = 4, threshold 0.25. Row 0 claims {0, 1}; row 1 (already in group 0) claims 3,
        // which opens group 1 holding only 3 (not 1); row 2 claims itself; row 3 claims nothing.
        let x = [
            0.6, 0.3, 0.05, 0.05, //
            0.3, 0.2, 0.1, 0.4, //
            0.05, 0.1, 0.8, 0.05, //
            0.05, 0.4, 0.05, 0.5,
        ];
        let r = greedy_round(&x, 4);
        assert_eq!(r.groups, vec![vec![0, 1], vec![3], vec![2]]);
        let want = reference(&x, 4);
        for (g, members) in r.groups.iter().enumerate() {
            for &m in members {
                assert_eq!(want[m], g as i64);
            }
        }
    }

    #[test]
    fn agrees_with_the_reference_on_many_random_matrices_and_keeps_unclaimed_tasks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let n = rng.random_range(2..9);
            let x: Vec<f64> = (0..n * n)
                .map(|_| rng.random::<f64>() * 2.0 / n as f64)
                .collect();
            let r = greedy_round(&x, n);
            let want = reference(&x, n);
            let claimed = r.groups.len() - r.unclaimed.len();
            for (g, members) in r.groups[..claimed].iter().enumerate() {
                for &m in members {
                    assert_eq!(want[m], g as i64, "{x:?}");
                }
            }
            for &u in &r.unclaimed {
                assert_eq!(want[u], -1);
            }
            let mut all: Vec<usize> = r.groups.concat();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "every task exactly once");
        }
        // All entries exactly 1/n: nothing exceeds the threshold, every task is unclaimed.
        let r = greedy_round(&[0.5; 4], 2);
        assert_eq!(
            (r.groups, r.unclaimed),
            (vec![vec![0], vec![1]], vec![0, 1])
        );
    }
}
