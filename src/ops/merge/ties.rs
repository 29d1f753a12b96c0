//! `merge ties(base, models, density, sign, alpha)`: TIES-Merging (Yadav et al. 2023).
//!
//! Per tensor, with task vectors τᵢ = θᵢ − θ₀:
//! 1. **Trim**: keep the k = ⌈density·n⌉ largest |τᵢ| of each model (n = the tensor's size),
//!    zero the rest. Equal magnitudes at the threshold are kept in ascending flat-index order,
//!    so the result never depends on a sort's whims. The threshold is found by selection, not
//!    sorting: a strided sample brackets it, one blocked pass over all models counts the
//!    entries above each bracket and collects those inside, and `select_nth_unstable`
//!    finishes (a full selection is the fallback when a bracket misses).
//! 2. **Elect** a sign per coordinate: `sum` = sign of Σᵢ τ̂ᵢ (the paper's mass rule), `count`
//!    = the majority of the nonzero signs, a tied count falling back to the mass rule. A zero
//!    mass elects `+` (as mergekit; the paper's code uses the whole model's majority sign
//!    there, which only matters when nonzero values cancel exactly).
//! 3. **Disjoint mean** over the models whose trimmed value is nonzero and has the elected sign
//!    (zero when none): θ = θ₀ + α·τₘ. A zero update keeps the base value bit for bit.
//!
//! Defaults: density 0.2 (the paper's k = 20%; mergekit's default is density 1, i.e. no
//! trimming, which leaves only the sign election), sign `sum`, α = 1 (the paper's default
//! when no validation set is used to tune λ). The sign election and disjoint mean are shared
//! with `merge dare(combine=ties)`.

use super::{
    open_models, out_dtype, provenance, stream_merge, validate_merge, DTYPE_PARAM, EXCLUDE_PARAM,
    INCLUDE_PARAM, PARTIAL_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Ties;

static SIG: Signature = Signature {
    id: "merge.ties",
    version: 1,
    summary: "TIES-Merging: trim task vectors to their largest entries, elect signs, average the agreeing ones.",
    doc: "Per tensor: keep the ⌈density·n⌉ largest-magnitude entries of each task vector θᵢ − θ₀ \
          (ties at the threshold kept in index order), elect a sign per coordinate (`sum`: sign of \
          the summed trimmed values, the paper's rule; `count`: majority of nonzero signs, ties \
          broken by the sum; a zero sum elects +), then average only the nonzero entries with the \
          elected sign: θ = θ₀ + α·mean. `density` is one value or one per model. Tensors outside \
          `include`/`exclude` are copied from the base.",
    params: &[
        Param::req("base", Ty::Model, "The pre-trained model θ₀ the task vectors are relative to."),
        Param::req("models", Ty::List(&Ty::Model), "Fine-tuned models θᵢ."),
        Param::opt("density", Ty::Either(&Ty::Float, &Ty::List(&Ty::Float)), Const::Float(0.2), "Fraction of each task vector kept by magnitude (the paper's k; 1 = no trimming).").range(0.0, 1.0),
        Param::opt("sign", Ty::Enum(&["sum", "count"]), Const::Str("sum"), "Sign election: `sum` (mass, the paper's) or `count` (majority of signs)."),
        Param::opt("alpha", Ty::Float, Const::Float(1.0), "Scaling λ of the merged task vector."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        PARTIAL_PARAM,
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet t = merge ties(m, [m, m], density=0.2, sign=sum)"],
    reference: Some("Yadav et al., TIES-Merging: Resolving Interference When Merging Models (NeurIPS 2023), arXiv:2306.01708"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("models", "density")],
    cheap: false,
};

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

/// The stored magnitude order of an f32: `|v|` as bits (monotone in |v|; NaN sorts highest).
#[inline]
fn mag(v: f32) -> u32 {
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
    t: u32,
    until: usize,
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

    /// Trim, elect and apply over coordinates `start..start + out.len()`.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &mut self,
        b: &[f32],
        tuned: &[Vec<f32>],
        trims: &[Trim],
        start: usize,
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
                let ties = trim.until.saturating_sub(lo).min(len);
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
        let (rule, alpha) = (self.rule, self.alpha);
        let mut out = vec![0f32; n];
        let [w0, w1] = &mut self.work;
        if par {
            let mid = (n / 2).div_ceil(BLOCK) * BLOCK;
            let (o0, o1) = out.split_at_mut(mid);
            let done = std::thread::scope(|sc| {
                let other = sc.spawn(|| w1.pass(b, tuned, &trims, mid, o1, rule, alpha));
                w0.pass(b, tuned, &trims, 0, o0, rule, alpha);
                other.join()
            });
            done.map_err(|_| OpError::msg("merge ties: a worker thread panicked"))?;
        } else {
            w0.pass(b, tuned, &trims, 0, &mut out, rule, alpha);
        }
        debug_assert_eq!(m, trims.len());
        Ok(out)
    }
}

/// One number per model from a `Float | List<Float>` argument.
pub fn per_model(args: &Args, name: &str, models: usize) -> Result<Vec<f64>, OpError> {
    let vals = match args.get(name)? {
        Value::List(_) => args.floats(name)?,
        _ => vec![args.float(name)?; models],
    };
    if vals.len() != models {
        return Err(OpError::new(
            "smelt::run::length_mismatch",
            format!("{models} models but {} {name} values", vals.len()),
        ));
    }
    Ok(vals)
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

impl Operator for Ties {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        let mut all = vec![args.get("base")?];
        all.extend(args.list("models")?.iter());
        validate_merge(args, &all)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let base = args.artifact("base", Kind::Model)?;
        let models = args.artifacts("models", Kind::Model)?;
        let density = per_model(args, "density", models.len())?;
        if let Some(d) = density.iter().find(|d| !(0.0..=1.0).contains(*d)) {
            return Err(OpError::new(
                "smelt::run::out_of_range",
                format!("density {d} is outside [0, 1]"),
            ));
        }
        let rule = SignRule::parse(args.str("sign")?)?;
        let alpha = args.float("alpha")? as f32;
        let mut all = vec![base];
        all.extend(models.iter().copied());
        let dirs = open_models(&all)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let params = format!(
            "density={density:?}, sign={}, alpha={alpha}, {}",
            args.str("sign")?,
            super::filter::describe(args)?
        );
        let meta = provenance(cx, SIG.id, SIG.version, &all, &params);
        let mut ties = TiesMerge::new(density, rule, alpha);
        stream_merge(cx, args, &dirs, dtype, meta, &mut |_, xs| ties.combine(xs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::{model_value, read, tiny_model};
    use crate::tensors::header::Dtype;
    use rand::{Rng, SeedableRng};

    fn args(base: Value, models: Vec<Value>, density: f64, sign: &str, alpha: f64) -> Args {
        Args::new(vec![
            ("base", base),
            ("models", Value::list(models)),
            ("density", Value::Float(density)),
            ("sign", Value::str(sign)),
            ("alpha", Value::Float(alpha)),
            ("include", Value::list(vec![])),
            ("exclude", Value::list(vec![])),
            ("partial", Value::str("error")),
            ("dtype", Value::str("auto")),
        ])
    }

    /// Base a = 0, b = 1 and the three task vectors of the hand-computed example.
    fn fixture(t: &std::path::Path) -> (Value, Vec<Value>) {
        tiny_model(&t.join("base"), &[0.0; 4], &[1.0, 1.0], Dtype::F32);
        tiny_model(
            &t.join("m1"),
            &[3.0, -1.0, 0.5, 2.0],
            &[2.0, 1.0],
            Dtype::F32,
        );
        tiny_model(
            &t.join("m2"),
            &[-5.0, 4.0, 1.0, -1.0],
            &[1.0, 0.0],
            Dtype::F32,
        );
        tiny_model(
            &t.join("m3"),
            &[1.0, 1.0, -6.0, -1.0],
            &[1.0, 3.0],
            Dtype::F32,
        );
        let models = ["m1", "m2", "m3"].map(|m| model_value(&t.join(m))).to_vec();
        (model_value(&t.join("base")), models)
    }

    fn run(a: &Args, out: std::path::PathBuf) -> (Vec<f32>, Vec<f32>) {
        let mut cx = OpCtx::for_test(out, 0);
        let v = Ties.run(&mut cx, a).unwrap();
        read(&v)
    }

    #[test]
    fn hand_computed_conflicting_signs() {
        // density 0.5 keeps 2 of 4 entries of `a` and 1 of 2 of `b` per model:
        //   m1: [3, 0, 0, 2]   m2: [-5, 4, 0, 0]   m3: [1, 0, -6, 0] (|1| ties: index 0 kept)
        //   sums [-1, 4, -6, 2] → sum rule: [-5, 4, -6, 2]; count rule (2 of 3 positive at
        //   index 0): [(3+1)/2, 4, -6, 2].
        //   b: τ = [1,0], [0,-1], [0,2] → index 1: -1 + 2 > 0 → +2 (count: tie → mass → +).
        let t = tempfile::tempdir().unwrap();
        let (base, models) = fixture(t.path());
        let (a, b) = run(
            &args(base.clone(), models.clone(), 0.5, "sum", 1.0),
            t.path().join("s"),
        );
        assert_eq!(a, vec![-5.0, 4.0, -6.0, 2.0]);
        assert_eq!(b, vec![2.0, 3.0]);
        let (a, b) = run(
            &args(base.clone(), models.clone(), 0.5, "count", 1.0),
            t.path().join("c"),
        );
        assert_eq!(a, vec![2.0, 4.0, -6.0, 2.0]);
        assert_eq!(b, vec![2.0, 3.0]);
        // α scales the merged task vector; α = 0 returns the base exactly.
        let (a, _) = run(
            &args(base.clone(), models.clone(), 0.5, "sum", 0.5),
            t.path().join("h"),
        );
        assert_eq!(a, vec![-2.5, 2.0, -3.0, 1.0]);
        let (a, b) = run(&args(base, models, 0.5, "sum", 0.0), t.path().join("z"));
        assert_eq!((a, b), (vec![0.0; 4], vec![1.0, 1.0]));
    }

    #[test]
    fn filters_copy_unselected_tensors_from_the_base() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = fixture(t.path());
        let with = |key: &'static str, pats: &[&str]| {
            let mut a = args(base.clone(), models.clone(), 0.5, "sum", 1.0);
            let list = Value::list(pats.iter().map(Value::str).collect());
            a.values.iter_mut().find(|(n, _)| *n == key).unwrap().1 = list;
            a
        };
        let (a, b) = run(&with("exclude", &["b"]), t.path().join("x"));
        assert_eq!((a, b), (vec![-5.0, 4.0, -6.0, 2.0], vec![1.0, 1.0]));
        let (a, b) = run(&with("include", &["b"]), t.path().join("i"));
        assert_eq!((a, b), (vec![0.0; 4], vec![2.0, 3.0]));
        // A pattern matching nothing is refused by `smelt check` (validate) and at run time.
        let bad = with("include", &["classifier"]);
        assert_eq!(
            Ties.validate(&bad).unwrap_err().code,
            "smelt::check::no_match"
        );
        let mut cx = OpCtx::for_test(t.path().join("bad"), 0);
        let e = Ties.run(&mut cx, &bad).unwrap_err();
        assert!(e.message.contains("`classifier`"), "{}", e.message);
        assert!(Ties.validate(&with("exclude", &["a"])).is_ok());
    }

    #[test]
    fn density_one_with_agreeing_signs_is_the_mean_task_vector() {
        let t = tempfile::tempdir().unwrap();
        let base_a = [0.5f32, -1.0, 2.0, 0.0];
        let base_b = [1.0f32, 1.0];
        tiny_model(&t.path().join("base"), &base_a, &base_b, Dtype::F32);
        let deltas = [
            [0.3f32, -0.2, 1.5, 0.7],
            [0.1, -0.6, 0.5, 0.1],
            [0.2, -0.1, 0.25, 0.4],
        ];
        let mut models = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            let a: Vec<f32> = base_a.iter().zip(d).map(|(b, d)| b + d).collect();
            let dir = t.path().join(format!("m{i}"));
            tiny_model(
                &dir,
                &a.try_into().unwrap(),
                &[1.0 + i as f32, 0.5],
                Dtype::F32,
            );
            models.push(model_value(&dir));
        }
        let (a, b) = run(
            &args(model_value(&t.path().join("base")), models, 1.0, "sum", 1.0),
            t.path().join("out"),
        );
        for j in 0..4 {
            let tv: f32 = (0..3)
                .map(|i| (base_a[j] + deltas[i][j]) - base_a[j])
                .sum::<f32>()
                / 3.0;
            assert!(
                (a[j] - (base_a[j] + tv)).abs() < 1e-6,
                "{j}: {} vs {}",
                a[j],
                base_a[j] + tv
            );
        }
        // b: task vectors [0, 1, 2] at index 0 (one zero: mean of the two nonzero), all −0.5 at 1.
        assert_eq!(b, vec![1.0 + 1.5, 0.5]);
    }

    /// Reference trim: full sort by (magnitude desc, index asc), first k kept.
    fn reference_keep(tau: &[f32], k: usize) -> Vec<bool> {
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
