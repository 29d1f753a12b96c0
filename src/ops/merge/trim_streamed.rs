//! Exact TIES trims of a tensor too large to hold at once, by radix selection over parts.
//!
//! A chunked merge sees a large tensor (an embedding matrix) only part by part, but the trim
//! keeps the k largest |x − b| of the *whole* tensor. The magnitude order of an f32 is the
//! order of its bits without the sign ([`mag`]), so the k-th largest magnitude is found by
//! radix selection in two streaming passes over the tensor: a histogram of the high 16 bits
//! picks the bucket holding the k-th entry, a histogram of the low 16 bits inside that bucket
//! gives the exact threshold `t`. Entries tied at `t` are kept in ascending index order, as in
//! [`super::trim::find_trims`]; only when some of them must be dropped does a third pass find
//! the index where keeping stops. Memory: two 65536-bucket histograms per model plus one part
//! per input, whatever the tensor's size. The models are split over two threads.

use super::trim::{mag, Trim};
use crate::diag::OpError;

/// Reads elements `start..start + len` of input `i` (0 = base, 1.. = the models) into `buf`.
pub type ReadPart<'a> =
    dyn Fn(usize, usize, usize, &mut Vec<f32>) -> Result<(), OpError> + Sync + 'a;

const BUCKETS: usize = 1 << 16;

/// The trims keeping the `ks[i]` largest |x_{i+1} − b| of a tensor of `numel` elements, read in
/// parts of `part` elements through `read`; identical to `find_trims` on the whole tensor.
pub fn find_trims_streamed(
    numel: usize,
    ks: &[usize],
    part: usize,
    read: &ReadPart,
) -> Result<Vec<Trim>, OpError> {
    let h = ks.len().div_ceil(2);
    if ks.len() < 2 {
        return trims_of(numel, ks, 0, part, read);
    }
    let (lo, hi) = std::thread::scope(|sc| {
        let other = sc.spawn(|| trims_of(numel, &ks[h..], h, part, read));
        (trims_of(numel, &ks[..h], 0, part, read), other.join())
    });
    let hi = hi.map_err(|_| OpError::msg("merge ties: a worker thread panicked"))?;
    Ok([lo?, hi?].concat())
}

/// Trims of models `first..first + ks.len()` (0-based among the models).
fn trims_of(
    numel: usize,
    ks: &[usize],
    first: usize,
    part: usize,
    read: &ReadPart,
) -> Result<Vec<Trim>, OpError> {
    let mut trims: Vec<Trim> = ks
        .iter()
        .map(|&k| match k {
            0 => Trim::NONE,
            k if k >= numel => Trim::ALL,
            _ => Trim::NONE, // replaced below
        })
        .collect();
    let todo: Vec<usize> = (0..ks.len())
        .filter(|&i| ks[i] > 0 && ks[i] < numel)
        .collect();
    if todo.is_empty() {
        return Ok(trims);
    }
    let (mut b, mut x) = (Vec::new(), Vec::new());
    // Visit |x_i − b| of every todo model, part by part, in index order.
    let mut scan = |f: &mut dyn FnMut(usize, usize, u32)| -> Result<(), OpError> {
        for start in (0..numel).step_by(part.max(1)) {
            let len = part.min(numel - start);
            read(0, start, len, &mut b)?;
            for (t, &i) in todo.iter().enumerate() {
                read(first + i + 1, start, len, &mut x)?;
                for (j, (&xv, &bv)) in x.iter().zip(&b).enumerate() {
                    f(t, start + j, mag(xv - bv));
                }
            }
        }
        Ok(())
    };
    // Pass 1: high 16 bits.
    let mut hist = vec![0u64; todo.len() * BUCKETS];
    scan(&mut |t, _, m| hist[t * BUCKETS + (m >> 16) as usize] += 1)?;
    // (bucket, entries above the bucket) per model.
    let high: Vec<(u32, u64)> = todo
        .iter()
        .enumerate()
        .map(|(t, &i)| descend(&hist[t * BUCKETS..(t + 1) * BUCKETS], ks[i] as u64))
        .collect();
    // Pass 2: low 16 bits inside the chosen bucket.
    hist.iter_mut().for_each(|c| *c = 0);
    scan(&mut |t, _, m| {
        if m >> 16 == high[t].0 {
            hist[t * BUCKETS + (m & 0xFFFF) as usize] += 1;
        }
    })?;
    // (threshold, entries equal to it that are kept, entries equal to it).
    let mut exact: Vec<(u32, u64, u64)> = Vec::with_capacity(todo.len());
    for (t, &i) in todo.iter().enumerate() {
        let (bucket, above) = high[t];
        let counts = &hist[t * BUCKETS..(t + 1) * BUCKETS];
        let (low, within) = descend(counts, ks[i] as u64 - above);
        let thr = (bucket << 16) | low;
        let keep_equal = ks[i] as u64 - above - within;
        exact.push((thr, keep_equal, counts[low as usize]));
        trims[i] = Trim {
            t: thr,
            until: usize::MAX,
        };
    }
    // Pass 3, only when some entries tied at the threshold are dropped: where keeping stops.
    if exact.iter().any(|&(_, keep, equal)| keep < equal) {
        let mut seen = vec![0u64; todo.len()];
        let mut until = vec![usize::MAX; todo.len()];
        scan(&mut |t, j, m| {
            let (thr, keep, equal) = exact[t];
            if m == thr && keep < equal {
                seen[t] += 1;
                if seen[t] == keep {
                    until[t] = j + 1;
                }
            }
        })?;
        for (t, &i) in todo.iter().enumerate() {
            trims[i].until = until[t];
        }
    }
    Ok(trims)
}

/// Walk `counts` from the top bucket down to the one holding the `k`-th largest entry
/// (`k ≥ 1`); returns that bucket and the number of entries in the buckets above it.
fn descend(counts: &[u64], k: u64) -> (u32, u64) {
    let mut above = 0u64;
    for (b, &c) in counts.iter().enumerate().rev() {
        if above + c >= k {
            return (b as u32, above);
        }
        above += c;
    }
    (0, above)
}

#[cfg(test)]
mod tests {
    use super::super::trim::{find_trims, keep_count, TrimScratch};
    use super::*;
    use rand::{Rng, SeedableRng};

    fn keeps(trim: &Trim, b: &[f32], x: &[f32]) -> Vec<bool> {
        x.iter()
            .zip(b)
            .enumerate()
            .map(|(j, (&x, &b))| trim.keeps(x - b, j))
            .collect()
    }

    #[test]
    fn equals_the_in_memory_selection_with_ties_and_any_part_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (n, levels) in [(1000usize, 7u32), (70_000, 1000), (5000, 1 << 20), (3, 2)] {
            // Quantised values force many ties at the threshold.
            let mut draw = || {
                (0..n)
                    .map(|_| rng.random_range(0..levels) as f32 / 8.0 - 3.0)
                    .collect()
            };
            let b: Vec<f32> = draw();
            let xs: Vec<Vec<f32>> = (0..3).map(|_| draw()).collect();
            for density in [0.0, 0.01, 0.2, 0.5, 0.999, 1.0] {
                let ks: Vec<usize> = xs.iter().map(|_| keep_count(density, n)).collect();
                let want = find_trims(&b, &xs, &ks, &mut TrimScratch::default()).unwrap();
                for part in [1, 64, 4096, n] {
                    let read = |i: usize, s: usize, l: usize, buf: &mut Vec<f32>| {
                        let src = if i == 0 { &b } else { &xs[i - 1] };
                        buf.clear();
                        buf.extend_from_slice(&src[s..s + l]);
                        Ok(())
                    };
                    let got = find_trims_streamed(n, &ks, part, &read).unwrap();
                    for i in 0..3 {
                        let kept = keeps(&got[i], &b, &xs[i]);
                        assert_eq!(kept, keeps(&want[i], &b, &xs[i]), "n={n} d={density}");
                        assert_eq!(kept.iter().filter(|&&k| k).count(), ks[i]);
                    }
                }
            }
        }
    }
}
