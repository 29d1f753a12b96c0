//! TIES' sign election and disjoint mean, and the whole TIES combine of one tensor
//! ([`TiesMerge`]), shared by `merge ties` and `merge dare(combine=ties)`.
//!
//! Coordinates are processed in blocks of 2048 so the m trimmed rows of a block stay in cache:
//! the elected sign is + when the mass Σᵢ τ̂ᵢ ≥ 0 (`sum`) or when more nonzero entries are
//! positive than negative, a tied count falling back to the mass (`count`); the merged value is
//! the mean of the nonzero entries with the elected sign (0 when none). Large tensors use two
//! threads — models split for the trims, coordinates split for the election — and the result
//! does not depend on the split.

use super::trim::{find_trims, keep_count, mag, Trim, TrimScratch};
use crate::diag::OpError;

/// How the sign of a coordinate is elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignRule {
    /// Sign of the summed values (`+` when the sum is 0).
    Sum,
    /// Majority of the nonzero signs, a tie broken by [`SignRule::Sum`].
    Count,
}

impl SignRule {
    pub fn parse(s: &str) -> Result<SignRule, OpError> {
        match s {
            "sum" => Ok(SignRule::Sum),
            "count" => Ok(SignRule::Count),
            _ => Err(OpError::new(
                "smelt::run::argument",
                format!("sign must be `sum` or `count`, got `{s}`"),
            )),
        }
    }
}

/// Coordinates per block of the election pass (m × BLOCK values stay in cache).
pub const BLOCK: usize = 2048;

/// Sign election and disjoint mean over one block. `vals` holds `m` rows of `len` values
/// (model-major); `delta[j]` receives the mean of the nonzero values agreeing with the elected
/// sign of coordinate j, or 0.
pub fn elect_block(vals: &[f32], m: usize, len: usize, rule: SignRule, delta: &mut [f32]) {
    let rows = || vals.chunks_exact(len).take(m);
    // The elected sign as ±1.
    let mut sign = [0f32; BLOCK];
    let sign = &mut sign[..len];
    let mut mass = [0f32; BLOCK];
    let mass = &mut mass[..len];
    for row in rows() {
        for (s, &v) in mass.iter_mut().zip(row) {
            *s += v;
        }
    }
    match rule {
        SignRule::Sum => {
            for (e, &s) in sign.iter_mut().zip(mass.iter()) {
                *e = if s >= 0.0 { 1.0 } else { -1.0 };
            }
        }
        SignRule::Count => {
            let mut votes = [0f32; BLOCK];
            let votes = &mut votes[..len];
            for row in rows() {
                for (c, &v) in votes.iter_mut().zip(row) {
                    *c += (v > 0.0) as u8 as f32 - (v < 0.0) as u8 as f32;
                }
            }
            for ((e, &s), &c) in sign.iter_mut().zip(mass.iter()).zip(votes.iter()) {
                *e = if c > 0.0 || (c == 0.0 && s >= 0.0) {
                    1.0
                } else {
                    -1.0
                };
            }
        }
    }
    let mut count = [0f32; BLOCK];
    let count = &mut count[..len];
    let delta = &mut delta[..len];
    delta.fill(0.0);
    for row in rows() {
        for (((d, c), &v), &e) in delta
            .iter_mut()
            .zip(count.iter_mut())
            .zip(row)
            .zip(sign.iter())
        {
            let agree = v * e > 0.0;
            *d += if agree { v } else { 0.0 };
            *c += agree as u8 as f32;
        }
    }
    for (d, &c) in delta.iter_mut().zip(count.iter()) {
        if c > 1.0 {
            *d /= c;
        }
    }
}

/// `row = x − b` where |x − b| ≥ `min` (as magnitude bits), else 0 (branch-free).
#[inline]
fn trim_into(row: &mut [f32], x: &[f32], b: &[f32], min: u32) {
    for ((v, &xv), &bv) in row.iter_mut().zip(x).zip(b) {
        let t = xv - bv;
        *v = if mag(t) >= min { t } else { 0.0 };
    }
}

/// Buffers of the election pass over one range of coordinates.
struct Work {
    vals: Vec<f32>,
    delta: Vec<f32>,
}

impl Work {
    fn new(m: usize) -> Work {
        Work {
            vals: vec![0f32; m * BLOCK],
            delta: vec![0f32; BLOCK],
        }
    }

    /// Trim, elect and apply over buffer coordinates `start..start + out.len()`, which are
    /// tensor coordinates `offset + start..` (the trims count in tensor coordinates).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &mut self,
        b: &[f32],
        tuned: &[Vec<f32>],
        trims: &[Trim],
        start: usize,
        offset: usize,
        out: &mut [f32],
        rule: SignRule,
        alpha: f32,
    ) {
        let m = tuned.len();
        for (o, lo) in out.chunks_mut(BLOCK).zip((start..).step_by(BLOCK)) {
            let len = o.len();
            let bb = &b[lo..lo + len];
            let rows = self.vals.chunks_exact_mut(len);
            for ((x, trim), row) in tuned.iter().zip(trims).zip(rows) {
                // Entries tied with the threshold are kept before index `until` only.
                let ties = trim.until.saturating_sub(offset + lo).min(len);
                let above = trim.t.saturating_add(1);
                trim_into(&mut row[..ties], &x[lo..lo + ties], &bb[..ties], trim.t);
                trim_into(
                    &mut row[ties..],
                    &x[lo + ties..lo + len],
                    &bb[ties..],
                    above,
                );
            }
            elect_block(&self.vals[..m * len], m, len, rule, &mut self.delta);
            for ((o, &bv), &d) in o.iter_mut().zip(bb).zip(&self.delta) {
                *o = apply(bv, alpha, d);
            }
        }
    }
}

/// Tensors from this size on are merged by two threads.
const PARALLEL_MIN: usize = 1 << 16;

/// The TIES combine of one tensor, with its reusable buffers (also used by `bench_merge`).
/// Large tensors use two threads (models split for the trims, coordinates split for the
/// election); the result does not depend on the split.
pub struct TiesMerge {
    density: Vec<f64>,
    rule: SignRule,
    alpha: f32,
    scratch: [TrimScratch; 2],
    work: [Work; 2],
}

impl TiesMerge {
    /// `density` has one entry per model.
    pub fn new(density: Vec<f64>, rule: SignRule, alpha: f32) -> TiesMerge {
        let m = density.len();
        TiesMerge {
            density,
            rule,
            alpha,
            scratch: Default::default(),
            work: [Work::new(m), Work::new(m)],
        }
    }

    /// Merge one tensor: `xs[0]` is the base, `xs[1..]` the models.
    pub fn combine(&mut self, xs: &[Vec<f32>]) -> Result<Vec<f32>, OpError> {
        let (b, tuned) = xs.split_first().expect("base is present");
        let (n, m) = (b.len(), tuned.len());
        let ks: Vec<usize> = self.density.iter().map(|&d| keep_count(d, n)).collect();
        let par = n >= PARALLEL_MIN;
        let [s0, s1] = &mut self.scratch;
        let trims = if par && m >= 2 {
            let h = m.div_ceil(2);
            let (ka, kb) = ks.split_at(h);
            let (ta, tb) = std::thread::scope(|sc| {
                let other = sc.spawn(|| find_trims(b, &tuned[h..], kb, s1));
                (find_trims(b, &tuned[..h], ka, s0), other.join())
            });
            let tb = tb.map_err(|_| OpError::msg("merge ties: a worker thread panicked"))?;
            [ta?, tb?].concat()
        } else {
            find_trims(b, tuned, &ks, s0)?
        };
        debug_assert_eq!(m, trims.len());
        self.combine_part(xs, &trims, 0)
    }

    /// The keep counts of a tensor of `numel` elements, one per model.
    pub fn keep_counts(&self, numel: usize) -> Vec<usize> {
        self.density.iter().map(|&d| keep_count(d, numel)).collect()
    }

    /// Elect and apply on one part of a tensor (`xs[0]` the base, `xs[1..]` the models) whose
    /// first element is element `offset` of the tensor, with the whole tensor's `trims`.
    pub fn combine_part(
        &mut self,
        xs: &[Vec<f32>],
        trims: &[Trim],
        offset: usize,
    ) -> Result<Vec<f32>, OpError> {
        let (b, tuned) = xs.split_first().expect("base is present");
        let n = b.len();
        let (rule, alpha) = (self.rule, self.alpha);
        let mut out = vec![0f32; n];
        let [w0, w1] = &mut self.work;
        if n >= PARALLEL_MIN {
            let mid = (n / 2).div_ceil(BLOCK) * BLOCK;
            let (o0, o1) = out.split_at_mut(mid);
            let done = std::thread::scope(|sc| {
                let other = sc.spawn(|| w1.pass(b, tuned, trims, mid, offset, o1, rule, alpha));
                w0.pass(b, tuned, trims, 0, offset, o0, rule, alpha);
                other.join()
            });
            done.map_err(|_| OpError::msg("merge ties: a worker thread panicked"))?;
        } else {
            w0.pass(b, tuned, trims, 0, offset, &mut out, rule, alpha);
        }
        Ok(out)
    }
}

/// θ₀ + α·δ per coordinate, keeping θ₀ bit for bit where α·δ is 0.
#[inline]
pub fn apply(b: f32, alpha: f32, d: f32) -> f32 {
    let u = alpha * d;
    if u == 0.0 {
        b
    } else {
        b + u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::trim::tests::reference_keep;
    use rand::{Rng, SeedableRng};

    /// TIES written plainly from the paper: full sorts, per-coordinate loops.
    fn reference_ties(b: &[f32], xs: &[Vec<f32>], density: &[f64], rule: SignRule) -> Vec<f32> {
        let n = b.len();
        let trimmed: Vec<Vec<f32>> = xs
            .iter()
            .zip(density)
            .map(|(x, &d)| {
                let tau: Vec<f32> = x.iter().zip(b).map(|(x, b)| x - b).collect();
                let keep = reference_keep(&tau, keep_count(d, n));
                tau.iter()
                    .zip(keep)
                    .map(|(&t, k)| if k { t } else { 0.0 })
                    .collect()
            })
            .collect();
        (0..n)
            .map(|j| {
                let mass: f32 = trimmed.iter().fold(0.0, |s, t| s + t[j]);
                let votes: i32 = trimmed
                    .iter()
                    .map(|t| t[j].partial_cmp(&0.0).unwrap() as i32)
                    .sum();
                let plus = match rule {
                    SignRule::Sum => mass >= 0.0,
                    SignRule::Count => votes > 0 || (votes == 0 && mass >= 0.0),
                };
                let agree: Vec<f32> = trimmed
                    .iter()
                    .map(|t| t[j])
                    .filter(|&v| if plus { v > 0.0 } else { v < 0.0 })
                    .collect();
                if agree.is_empty() {
                    return b[j];
                }
                b[j] + agree.iter().fold(0.0, |s, v| s + v) / agree.len() as f32
            })
            .collect()
    }

    #[test]
    fn two_thread_combine_matches_a_plain_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = PARALLEL_MIN + 4321;
        let b: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-64i32..64) as f32 / 64.0)
            .collect();
        let mut xs = vec![b.clone()];
        for _ in 0..3 {
            xs.push(
                b.iter()
                    .map(|&v| v + rng.random_range(-9i32..9) as f32 / 64.0)
                    .collect(),
            );
        }
        let density = vec![0.2, 0.05, 0.5];
        for rule in [SignRule::Sum, SignRule::Count] {
            let got = TiesMerge::new(density.clone(), rule, 1.0)
                .combine(&xs)
                .unwrap();
            assert!(
                got == reference_ties(&b, &xs[1..], &density, rule),
                "{rule:?}"
            );
        }
        // One model: the coordinate split alone.
        let got = TiesMerge::new(vec![0.3], SignRule::Sum, 1.0)
            .combine(&xs[..2])
            .unwrap();
        assert!(got == reference_ties(&b, &xs[1..2], &[0.3], SignRule::Sum));
    }

    #[test]
    fn count_rule_and_zero_mass() {
        // Two models disagreeing with equal counts: the mass decides; exact cancellation → +.
        let vals = [1.0f32, -2.0, 3.0, 0.0, -3.0, 2.0, -3.0, 0.0];
        let mut d = [0f32; 4];
        elect_block(&vals, 2, 4, SignRule::Count, &mut d);
        assert_eq!(d, [-3.0, 2.0, 3.0, 0.0]);
        elect_block(&vals, 2, 4, SignRule::Sum, &mut d);
        assert_eq!(d, [-3.0, 2.0, 3.0, 0.0]);
    }
}
