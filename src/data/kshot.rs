//! Seeded sampling of task splits: the LM-BFF k-shot sampler, stratified down-sampling and
//! stratified dev splits.
//!
//! Every sampler draws from its own ChaCha8 stream, seeded by blake3(purpose, seed), and
//! shuffles with a Fisher–Yates loop written here (not `rand`'s `shuffle`), so a split depends
//! only on (data, seed) and stays the same across `rand` upgrades. This is methods.md §5.15:
//! the papers' code shares one global NumPy state; here each random choice has its own stream.
//!
//! k-shot (methods.md §4.2, LM-BFF `tools/generate_k_shot_data.py`): shuffle the train pool
//! with the seed, then per label take the first K as train and the next K as dev; the test
//! split is capped at 1,000 examples by a shuffle with the fixed seed 42 (independent of the
//! k-shot seed, as in LM-BFF's `k-shot-1k-test`). The splits are not bit-identical to LM-BFF's
//! files (NumPy's MT19937 stream is not reproduced), but the procedure and its invariants are.

use super::task::{Example, TaskData};
use super::SAMPLING;
use crate::diag::OpError;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// At most this many test examples after [`kshot`].
pub const TEST_CAP: usize = 1000;
/// Seed of the test-capping shuffle (LM-BFF uses `np.random.seed(42)` for every k-shot seed).
pub const TEST_SEED: u64 = 42;

/// A ChaCha8 stream for one purpose (`"kshot"`, `"subsample"`, …) and seed.
pub fn stream(purpose: &str, seed: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"smelt.data.");
    h.update(purpose.as_bytes());
    h.update(&seed.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Uniform integer in `0..n` (n ≥ 1) by rejection, without modulo bias.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

/// Fisher–Yates shuffle (from the back, as NumPy does).
pub fn shuffle<T>(rng: &mut ChaCha8Rng, xs: &mut [T]) {
    for i in (1..xs.len()).rev() {
        let j = below(rng, i + 1);
        xs.swap(i, j);
    }
}

/// A seeded permutation of `0..n`.
pub fn permutation(purpose: &str, seed: u64, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut stream(purpose, seed), &mut idx);
    idx
}

/// Split `n` into per-label counts proportional to `counts` (largest remainder; ties go to the
/// lower label index). Never gives a label more than it has.
pub fn allocate(counts: &[usize], n: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return vec![0; counts.len()];
    }
    let n = n.min(total);
    let mut out: Vec<usize> = counts.iter().map(|&c| c * n / total).collect();
    let mut rest: Vec<(usize, usize)> = counts
        .iter()
        .enumerate()
        .map(|(l, &c)| ((c * n) % total, l))
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let missing = n - out.iter().sum::<usize>();
    for &(_, l) in rest.iter().take(missing) {
        out[l] += 1;
    }
    out
}

/// Pick, per label, the first `want[label]` examples in permuted order; returns (picked, rest),
/// both in the original order.
fn pick(examples: &[Example], perm: &[usize], want: &[usize]) -> (Vec<Example>, Vec<Example>) {
    let mut taken = vec![0; want.len()];
    let mut chosen = vec![false; examples.len()];
    for &i in perm {
        let l = examples[i].label;
        if taken[l] < want[l] {
            taken[l] += 1;
            chosen[i] = true;
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (e, c) in examples.iter().zip(chosen) {
        if c {
            a.push(e.clone())
        } else {
            b.push(e.clone())
        }
    }
    (a, b)
}

/// Cap a split at `cap` examples: shuffle with [`TEST_SEED`] and keep the first `cap`.
pub fn cap_test(examples: &[Example], cap: usize) -> Vec<Example> {
    if examples.len() <= cap {
        return examples.to_vec();
    }
    let perm = permutation("kshot.test", TEST_SEED, examples.len());
    perm[..cap].iter().map(|&i| examples[i].clone()).collect()
}

/// The LM-BFF k-shot split of `task`: K train and (up to) K dev examples per label from the
/// shuffled train pool, grouped by label in label order; test capped at [`TEST_CAP`].
pub fn kshot(task: &TaskData, k: usize, seed: u64) -> Result<TaskData, OpError> {
    if k == 0 {
        return Err(OpError::new(SAMPLING, "k must be at least 1"));
    }
    let pool = task.train();
    let counts = task.label_counts("train");
    if let Some((l, &c)) = counts.iter().enumerate().find(|(_, &c)| c < k) {
        return Err(OpError::new(
            SAMPLING,
            format!(
                "label `{}` has {c} examples in the train split of `{}`, but k={k} needs {k} per label",
                task.labels[l], task.name
            ),
        )
        .with_help(format!(
            "use k ≤ {} (LM-BFF also takes the next k as dev, so 2k per label fills the dev split)",
            counts.iter().min().copied().unwrap_or(0)
        )));
    }
    let mut by_label: Vec<Vec<&Example>> = vec![Vec::new(); task.labels.len()];
    for i in permutation("kshot", seed, pool.len()) {
        by_label[pool[i].label].push(&pool[i]);
    }
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for xs in &by_label {
        train.extend(xs.iter().take(k).map(|&e| e.clone()));
        dev.extend(xs.iter().skip(k).take(k).map(|&e| e.clone()));
    }
    let mut out = TaskData::new(task.name.clone(), task.labels.clone(), task.is_pair);
    out.splits.insert("train".into(), train);
    out.splits.insert("dev".into(), dev);
    out.splits
        .insert("test".into(), cap_test(task.test(), TEST_CAP));
    Ok(out)
}

/// Keep `n` examples of `split` (stratified: label proportions kept by largest remainder);
/// other splits unchanged; kept examples stay in file order. `n` ≥ the split's size keeps all.
pub fn subsample(
    task: &TaskData,
    split: &str,
    n: usize,
    stratified: bool,
    seed: u64,
) -> Result<TaskData, OpError> {
    let examples = task.split(split);
    if examples.is_empty() {
        return Err(OpError::new(
            SAMPLING,
            format!(
                "task `{}` has no `{split}` examples to sample from",
                task.name
            ),
        ));
    }
    let perm = permutation("subsample", seed, examples.len());
    let kept = if stratified {
        pick(examples, &perm, &allocate(&task.label_counts(split), n)).0
    } else {
        let mut idx: Vec<usize> = perm.into_iter().take(n).collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| examples[i].clone()).collect()
    };
    let mut out = task.clone();
    out.splits.insert(split.to_string(), kept);
    Ok(out)
}

/// Move a stratified `fraction` (rounded up, as scikit-learn's `StratifiedShuffleSplit`) of
/// the train split into `dev`, replacing any existing dev split.
pub fn split_dev(task: &TaskData, fraction: f64, seed: u64) -> Result<TaskData, OpError> {
    let train = task.train();
    let n_dev = (fraction * train.len() as f64).ceil() as usize;
    if !(fraction > 0.0 && fraction < 1.0) || n_dev == 0 || n_dev >= train.len() {
        return Err(OpError::new(
            SAMPLING,
            format!(
                "cannot move a fraction {fraction} of {} train examples of `{}` into dev",
                train.len(),
                task.name
            ),
        )
        .with_help("dev_fraction must leave at least one example on each side"));
    }
    let perm = permutation("split", seed, train.len());
    let (dev, rest) = pick(train, &perm, &allocate(&task.label_counts("train"), n_dev));
    let mut out = task.clone();
    out.splits.insert("train".into(), rest);
    out.splits.insert("dev".into(), dev);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(counts: &[usize], n_test: usize) -> TaskData {
        let labels = (0..counts.len()).map(|l| format!("l{l}")).collect();
        let mut t = TaskData::new("t", labels, false);
        let mut train = Vec::new();
        for (l, &c) in counts.iter().enumerate() {
            for _ in 0..c {
                let id = train.len();
                train.push(Example {
                    id,
                    text: format!("x{id}"),
                    text_b: None,
                    label: l,
                });
            }
        }
        let test = (0..n_test).map(|id| Example {
            id,
            text: String::new(),
            text_b: None,
            label: id % counts.len(),
        });
        t.splits.insert("train".into(), train);
        t.splits.insert("test".into(), test.collect());
        t
    }

    #[test]
    fn kshot_counts_determinism_and_disjointness() {
        let t = task(&[100, 40, 25], 1500);
        let a = kshot(&t, 16, 13).unwrap();
        assert_eq!(a.label_counts("train"), vec![16, 16, 16]);
        assert_eq!(a.label_counts("dev"), vec![16, 16, 9]);
        assert_eq!(a.test().len(), TEST_CAP);
        assert_eq!(a, kshot(&t, 16, 13).unwrap());
        assert_ne!(a.train(), kshot(&t, 16, 21).unwrap().train());
        let ids: std::collections::HashSet<usize> =
            a.train().iter().chain(a.dev()).map(|e| e.id).collect();
        assert_eq!(ids.len(), 48 + 41);
        // The capped test split does not depend on the k-shot seed.
        assert_eq!(a.test(), kshot(&t, 16, 87).unwrap().test());
        let e = kshot(&t, 26, 1).unwrap_err();
        assert!(e.message.contains("label `l2` has 25"), "{}", e.message);
    }

    #[test]
    fn allocation_is_proportional_and_exact() {
        assert_eq!(allocate(&[50, 30, 20], 10), vec![5, 3, 2]);
        assert_eq!(allocate(&[1, 1, 1], 2), vec![1, 1, 0]);
        assert_eq!(allocate(&[3, 0], 10), vec![3, 0]);
        let a = allocate(&[7, 13, 5], 11);
        assert_eq!(a.iter().sum::<usize>(), 11);
    }

    #[test]
    fn subsample_and_split_keep_proportions() {
        let t = task(&[60, 40], 10);
        let s = subsample(&t, "train", 10, true, 0).unwrap();
        assert_eq!(s.label_counts("train"), vec![6, 4]);
        assert!(
            s.train().windows(2).all(|w| w[0].id < w[1].id),
            "file order kept"
        );
        assert_eq!(
            subsample(&t, "train", 10, false, 0).unwrap().train().len(),
            10
        );
        assert_eq!(
            subsample(&t, "train", 1000, true, 0).unwrap().train().len(),
            100
        );
        let d = split_dev(&t, 0.1, 0).unwrap();
        assert_eq!((d.train().len(), d.label_counts("dev")), (90, vec![6, 4]));
        assert!(split_dev(&t, 1.0, 0).is_err());
    }

    #[test]
    fn shuffle_is_a_stable_permutation() {
        let p = permutation("kshot", 42, 10);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
        assert_eq!(p, permutation("kshot", 42, 10));
    }
}
