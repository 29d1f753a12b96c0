//! Magnitude trimming of task vectors by selection: keep the k largest |x − b| of a tensor,
//! ties at the threshold kept in ascending index order (TIES' "trim" step).
//!
//! The k-th largest magnitude is found without sorting: a strided sample of 4096 magnitudes
//! brackets it (ranks k/n ± 4σ + 8), one blocked pass over all models — reading the base once
//! per block — counts the entries above each bracket and compacts the keys inside it
//! (branch-free), and `select_nth_unstable` on those keys finishes. A bracket that missed (a
//! sample fooled by periodic data) falls back to a selection over every entry, so the result
//! is exact either way. Tensors up to 32768 entries go straight to the full selection.
//! A key packs (inverted magnitude bits, index) into a u64, so one selection orders by
//! magnitude and breaks ties by index; magnitudes compare as f32 bit patterns (NaN highest).

use crate::diag::OpError;

/// The stored magnitude order of an f32: `|v|` as bits (monotone in |v|; NaN sorts highest).
#[inline]
pub fn mag(v: f32) -> u32 {
    v.to_bits() & 0x7FFF_FFFF
}

/// Number of entries of `n` kept at `density`: ⌈density·n⌉ (any density > 0 keeps one).
pub fn keep_count(density: f64, n: usize) -> usize {
    ((density * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n)
}

/// The trim of one task vector: entry j is kept when its magnitude bits exceed `t`, or equal
/// `t` with `j < until` (ties kept in index order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    pub t: u32,
    pub until: usize,
}

impl Trim {
    pub const ALL: Trim = Trim {
        t: 0,
        until: usize::MAX,
    };
    pub const NONE: Trim = Trim {
        t: u32::MAX,
        until: 0,
    };

    #[inline]
    pub fn keeps(&self, v: f32, j: usize) -> bool {
        let m = mag(v);
        m > self.t || (m == self.t && j < self.until)
    }

    /// From the packed key of the k-th kept entry.
    fn from_key(key: u64) -> Trim {
        Trim {
            t: !((key >> 32) as u32),
            until: (key & 0xFFFF_FFFF) as usize + 1,
        }
    }
}

/// Sort key: ascending key = descending magnitude, then ascending index.
#[inline]
fn key(m: u32, j: usize) -> u64 {
    ((!m as u64) << 32) | j as u64
}

/// Reusable buffers of [`find_trims`].
#[derive(Default)]
pub struct TrimScratch {
    sample: Vec<u32>,
    keys: Vec<u64>,
    bands: Vec<Vec<u64>>,
}

/// Tensors up to this size are trimmed by one selection over all entries.
const SMALL: usize = 1 << 15;
/// Sample size that brackets the threshold of larger tensors.
const SAMPLES: usize = 4096;

/// Exact trim by selection over every entry.
fn select_all(b: &[f32], x: &[f32], k: usize, keys: &mut Vec<u64>) -> Trim {
    keys.clear();
    keys.extend(
        x.iter()
            .zip(b)
            .enumerate()
            .map(|(j, (&x, &b))| key(mag(x - b), j)),
    );
    let (_, e, _) = keys.select_nth_unstable(k - 1);
    Trim::from_key(*e)
}

/// Magnitude bounds `[lo, hi]` that likely contain the k-th largest |x − b|: ranks k/n ± 4σ
/// (+8) of a strided sample.
fn bracket(b: &[f32], x: &[f32], k: usize, sample: &mut Vec<u32>) -> (u32, u32) {
    let n = x.len();
    let stride = n / SAMPLES;
    sample.clear();
    sample.extend((0..SAMPLES).map(|i| mag(x[i * stride] - b[i * stride])));
    let p = k as f64 / n as f64;
    let r = p * SAMPLES as f64;
    let spread = 4.0 * (SAMPLES as f64 * p * (1.0 - p)).sqrt() + 8.0;
    let desc = |a: &u32, b: &u32| b.cmp(a);
    let hi_rank = (r - spread).floor();
    let hi = if hi_rank < 0.0 {
        u32::MAX
    } else {
        *sample.select_nth_unstable_by(hi_rank as usize, desc).1
    };
    let lo_rank = (r + spread).ceil() as usize;
    let lo = if lo_rank >= SAMPLES {
        0
    } else {
        *sample.select_nth_unstable_by(lo_rank, desc).1
    };
    (lo, hi.max(lo))
}

/// The trims keeping the `ks[i]` largest |xs[i] − b| of each model (ties in index order), by
/// selection: a strided sample brackets each threshold, one blocked pass over all models
/// (reading `b` once per block) counts the entries above each bracket and collects those
/// inside it, and `select_nth_unstable` finishes; a bracket that missed falls back to a
/// selection over every entry.
pub fn find_trims(
    b: &[f32],
    xs: &[Vec<f32>],
    ks: &[usize],
    s: &mut TrimScratch,
) -> Result<Vec<Trim>, OpError> {
    let n = b.len();
    if n > u32::MAX as usize {
        return Err(OpError::new(
            "smelt::run::tensor_too_large",
            format!("a tensor of {n} elements is too large for magnitude trimming (limit 2^32)"),
        )
        .with_help("exclude it with exclude=[...] or use density=1"));
    }
    let mut trims = vec![Trim::ALL; xs.len()];
    // (model, lo, hi) of the models whose threshold is bracketed.
    let mut todo: Vec<(usize, u32, u32)> = Vec::new();
    for (i, (x, &k)) in xs.iter().zip(ks).enumerate() {
        trims[i] = if k >= n {
            Trim::ALL
        } else if k == 0 {
            Trim::NONE
        } else if n <= SMALL {
            select_all(b, x, k, &mut s.keys)
        } else {
            let (lo, hi) = bracket(b, x, k, &mut s.sample);
            todo.push((i, lo, hi));
            continue;
        };
    }
    if todo.is_empty() {
        return Ok(trims);
    }
    s.bands.resize_with(todo.len(), Vec::new);
    s.bands.iter_mut().for_each(Vec::clear);
    let mut above = vec![0usize; todo.len()];
    let mut local = vec![0u64; BLOCK + 1];
    for lo in (0..n).step_by(BLOCK) {
        let bb = &b[lo..(lo + BLOCK).min(n)];
        for (t, &(i, low, high)) in todo.iter().enumerate() {
            // Branch-free: count, and compact in-band keys into `local`.
            let (mut w, mut up) = (0usize, 0usize);
            for (jj, (&xv, &bv)) in xs[i][lo..].iter().zip(bb).enumerate() {
                let m = mag(xv - bv);
                up += (m > high) as usize;
                local[w] = key(m, lo + jj);
                w += (m.wrapping_sub(low) <= high - low) as usize;
            }
            above[t] += up;
            s.bands[t].extend_from_slice(&local[..w]);
        }
    }
    for (t, &(i, _, _)) in todo.iter().enumerate() {
        let (k, band) = (ks[i], &mut s.bands[t]);
        trims[i] = if above[t] < k && above[t] + band.len() >= k {
            Trim::from_key(*band.select_nth_unstable(k - above[t] - 1).1)
        } else {
            select_all(b, &xs[i], k, &mut s.keys)
        };
    }
    Ok(trims)
}

/// Coordinates per block of the counting pass.
const BLOCK: usize = 2048;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Reference trim: full sort by (magnitude desc, index asc), first k kept.
    pub(crate) fn reference_keep(tau: &[f32], k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..tau.len()).collect();
        idx.sort_by(|&i, &j| mag(tau[j]).cmp(&mag(tau[i])).then(i.cmp(&j)));
        let mut keep = vec![false; tau.len()];
        idx[..k].iter().for_each(|&i| keep[i] = true);
        keep
    }

    #[test]
    fn selection_matches_a_full_sort_with_ties_in_index_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut s = TrimScratch::default();
        let n = 200_003;
        // Multiples of 1/8, so the quantised task vectors below are exact and tie massively.
        let b: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-64i32..64) as f32 / 8.0)
            .collect();
        // Heavily tied (quantised) task vectors, smooth ones, and a periodic pattern that
        // fools the strided sample (so the fallback runs).
        let quantised: Vec<f32> = b
            .iter()
            .map(|&v| v + (rng.random_range(-8i32..8) as f32) / 8.0)
            .collect();
        let smooth: Vec<f32> = b.iter().map(|&v| v + rng.random::<f32>() - 0.5).collect();
        let stride = n / 4096;
        let periodic: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                v + if j % stride == 0 {
                    9.0
                } else {
                    0.001 * (j % 7) as f32
                }
            })
            .collect();
        let xs = [quantised, smooth, periodic];
        let check = |x: &[f32], k: usize, trim: Trim| {
            let tau: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x - b).collect();
            let got: Vec<bool> = tau
                .iter()
                .enumerate()
                .map(|(j, &t)| trim.keeps(t, j))
                .collect();
            assert_eq!(got.iter().filter(|&&g| g).count(), k);
            assert!(got == reference_keep(&tau, k), "k = {k}");
        };
        for x in &xs {
            for density in [0.0, 1e-5, 0.2, 0.5, 0.9, 1.0] {
                let k = keep_count(density, n);
                let trim = find_trims(&b, std::slice::from_ref(x), &[k], &mut s).unwrap()[0];
                check(x, k, trim);
            }
        }
        // All three models in one blocked pass, each with its own k.
        let ks = [keep_count(0.2, n), keep_count(0.05, n), keep_count(0.5, n)];
        let trims = find_trims(&b, &xs, &ks, &mut s).unwrap();
        for ((x, &k), &trim) in xs.iter().zip(&ks).zip(&trims) {
            check(x, k, trim);
        }
        assert_eq!(keep_count(0.2, 10), 2);
        assert_eq!(keep_count(0.2, 2), 1);
        assert_eq!(keep_count(0.0, 2), 0);
    }
}
