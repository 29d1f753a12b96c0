//! `merge fisher(models, fishers, weights, delta0)`: Fisher-weighted averaging (Matena & Raffel),
//! θ = (Σ_t α_t F_t + δ)⁻¹ Σ_t α_t F_t θ_t, elementwise (methods.md §3.3, "implied special cases").
//!
//! Models and their diagonal Fishers stream side by side through the merge engine (a Fisher
//! directory has the model's tensor names), one tensor at a time, in f64 whatever the storage
//! dtype. Where every α_t F_t is 0 and δ = 0 — a coordinate no Fisher has information on, such
//! as an unused pooler — the result is the α-weighted average Σ α_t θ_t / Σ α_t instead of 0/0,
//! so merging one model gives it back exactly. `δ > 0` is a zero-mean prior of precision δ
//! (weakly determined coordinates shrink towards 0), as the formula says. Fisher values must be
//! finite and ≥ 0; weights ≥ 0 with a positive sum. Also home of the helpers the Fisher-based
//! merges share (header validation over models and Fishers, value checks).

use super::Granularity;
use super::{out_dtype, provenance, stream_to_model, DTYPE_PARAM};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

pub struct FisherMerge;

static SIG: Signature = Signature {
    id: "merge.fisher",
    version: 1,
    summary: "Fisher-weighted average: θ = (Σ αₜFₜ + δ)⁻¹ Σ αₜFₜθₜ, elementwise.",
    doc: "Every float tensor is merged (embeddings, norms, heads, pooler). Where all αₜFₜ are 0 and \
          δ = 0 the coordinate falls back to the weighted average Σ αₜθₜ / Σ αₜ, so one model \
          merges to itself. δ > 0 pulls weakly determined coordinates towards 0 (a zero-mean \
          prior of precision δ). Computed in f64; Fisher values must be finite and ≥ 0.",
    params: &[
        Param::req("models", Ty::List(&Ty::Model), "Models θₜ with identical tensor names and shapes."),
        Param::req("fishers", Ty::List(&Ty::Fisher), "Their diagonal Fishers Fₜ (same order)."),
        Param::opt("weights", Ty::Opt(&Ty::List(&Ty::Float)), Const::None, "Per-model weights αₜ ≥ 0 (default 1 each)."),
        Param::opt("delta0", Ty::Float, Const::Float(0.0), "δ added to the denominator."),
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet ms = [model perturb(lm, std=0.01, seed=i) for i in range(2)]\nlet fs = [estimate fisher(m, t, examples=32) for m in ms]\nlet m = merge fisher(ms, fs)"],
    reference: Some("Matena & Raffel, Merging models with Fisher-weighted averaging (NeurIPS 2022), arXiv:2111.09832; methods.md §3.3"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("models", "fishers"), ("models", "weights")],
    cheap: false,
};

/// Header-only compatibility of the realised `Model` and `Fisher` arguments (unrealised ones
/// are skipped), so `smelt check` rejects mismatched shapes before any tensor is read.
pub fn validate_inputs(values: &[&Value]) -> Result<(), OpError> {
    let dirs: Vec<ModelDir> = values
        .iter()
        .filter_map(|v| v.as_artifact())
        .filter(|a| matches!(a.kind, Kind::Model | Kind::Fisher))
        .map(|a| ModelDir::open(&a.dir))
        .collect::<Result<_, _>>()?;
    for d in dirs.iter().skip(1) {
        dirs[0].check_compatible(d)?;
    }
    Ok(())
}

/// The values of a list argument followed by optional single arguments (for `validate`).
pub fn arg_values<'a>(args: &'a Args, lists: &[&str], singles: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for l in lists {
        if let Ok(xs) = args.list(l) {
            out.extend(xs.iter());
        }
    }
    for s in singles {
        if let Ok(v) = args.get(s) {
            out.push(v);
        }
    }
    out
}

/// The `delta0` argument, checked to be finite and ≥ 0.
pub fn delta_arg(args: &Args) -> Result<f64, OpError> {
    let d = args.float("delta0")?;
    if d.is_finite() && d >= 0.0 {
        return Ok(d);
    }
    Err(OpError::new(
        "smelt::run::argument",
        format!("`delta0={d}`: δ must be finite and ≥ 0"),
    )
    .with_help("δ is a small positive damping such as 1e-12 (or 0)"))
}

/// A Fisher value as f64, checked to be finite and ≥ 0.
pub fn fisher_value(v: f32, tensor: &str, which: &str) -> Result<f64, OpError> {
    if v.is_finite() && v >= 0.0 {
        return Ok(v as f64);
    }
    Err(OpError::new(
        "smelt::merge::bad_fisher",
        format!(
            "{which} has the value {v} in tensor `{tensor}`; a diagonal Fisher is finite and ≥ 0"
        ),
    )
    .with_help("estimate it again, or check that the file holds squared gradients"))
}

/// Opens the directories of artifacts (models or Fishers).
pub fn open_dirs(arts: &[&Arc<Artifact>]) -> Result<Vec<ModelDir>, OpError> {
    arts.iter().map(|a| ModelDir::open(&a.dir)).collect()
}

impl Operator for FisherMerge {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_inputs(&arg_values(args, &["models", "fishers"], &[]))
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let models = args.artifacts("models", Kind::Model)?;
        let fishers = args.artifacts("fishers", Kind::Fisher)?;
        let t = models.len();
        if t == 0 || fishers.len() != t {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{t} models and {} Fishers", fishers.len()),
            )
            .with_help("give one Fisher per model, in the same order"));
        }
        let weights = match args.get("weights")? {
            Value::None => vec![1.0; t],
            _ => args.floats("weights")?,
        };
        if weights.len() != t {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{t} models but {} weights", weights.len()),
            ));
        }
        let total: f64 = weights.iter().sum();
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || total <= 0.0 {
            return Err(OpError::new(
                "smelt::run::argument",
                format!("Fisher merging weights {weights:?} must be ≥ 0 with a positive sum"),
            ));
        }
        let delta = delta_arg(args)?;
        let mut all = models.clone();
        all.extend(fishers.iter().copied());
        let dirs = open_dirs(&all)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &all,
            &format!("weights={weights:?},delta0={delta:e}"),
        );
        stream_to_model(
            cx,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |part, xs| {
                let name = part.name;
                let (thetas, fs) = xs.split_at(t);
                let mut out = Vec::with_capacity(thetas[0].len());
                for j in 0..thetas[0].len() {
                    let (mut num, mut den, mut avg) = (0f64, 0f64, 0f64);
                    for k in 0..t {
                        let f = fisher_value(fs[k][j], name, &format!("Fisher {k}"))?;
                        let (w, theta) = (weights[k], thetas[k][j] as f64);
                        num += w * f * theta;
                        den += w * f;
                        avg += w * theta;
                    }
                    den += delta;
                    out.push(if den > 0.0 { num / den } else { avg / total } as f32);
                }
                Ok(out)
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::merge::testutil::tiny_model;
    use crate::tensors::header::Dtype;

    pub fn art(kind: Kind, dir: &std::path::Path, data: serde_json::Value) -> Value {
        Value::Artifact(Arc::new(Artifact {
            kind,
            dir: dir.to_path_buf(),
            key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
            data,
        }))
    }

    pub fn read(v: &Value, name: &str) -> Vec<f32> {
        ModelDir::open(&v.as_artifact().unwrap().dir)
            .unwrap()
            .read_f32(name)
            .unwrap()
    }

    fn args(models: Vec<Value>, fishers: Vec<Value>, weights: Value, delta: f64) -> Args {
        Args::new(vec![
            ("models", Value::list(models)),
            ("fishers", Value::list(fishers)),
            ("weights", weights),
            ("delta0", Value::Float(delta)),
            ("dtype", Value::str("auto")),
        ])
    }

    #[test]
    fn one_model_comes_back_exactly_and_two_follow_the_formula() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        tiny_model(&p("m1"), &[1.0, -2.0, 3.5, 0.1], &[7.0, -0.3], Dtype::F16);
        tiny_model(&p("m2"), &[3.0, 2.0, -1.0, 0.4], &[1.0, 0.9], Dtype::F32);
        // F₁ has a zero where F₂ is zero too (fallback) and where F₂ is not.
        tiny_model(&p("f1"), &[1.0, 0.0, 2.0, 0.0], &[0.5, 3.0], Dtype::F32);
        tiny_model(&p("f2"), &[3.0, 0.0, 0.0, 1.0], &[0.5, 1.0], Dtype::F32);
        let m = |n: &str| art(Kind::Model, &p(n), serde_json::Value::Null);
        let f = |n: &str| art(Kind::Fisher, &p(n), serde_json::json!({"examples": 8}));
        let run = |a: Args| {
            let mut cx = OpCtx::for_test(d.path().join(format!("out{}", rand_name())), 0);
            FisherMerge.run(&mut cx, &a)
        };
        // One model, any Fisher (zeros included), δ = 0: itself, bit for bit, in its dtype.
        let one = run(args(vec![m("m1")], vec![f("f1")], Value::None, 0.0)).unwrap();
        let src = ModelDir::open(p("m1")).unwrap();
        let out = ModelDir::open(&one.as_artifact().unwrap().dir).unwrap();
        for n in ["a", "b"] {
            assert_eq!(out.read_raw(n).unwrap(), src.read_raw(n).unwrap(), "{n}");
        }
        // Two models, weights (1, 3): θ = (F₁θ₁ + 3F₂θ₂) / (F₁ + 3F₂), or (θ₁ + 3θ₂)/4 where 0/0.
        let w = Value::list(vec![Value::Float(1.0), Value::Float(3.0)]);
        let two = run(args(vec![m("m1"), m("m2")], vec![f("f1"), f("f2")], w, 0.0)).unwrap();
        let (f1, f2) = ([1.0f64, 0.0, 2.0, 0.0], [3.0f64, 0.0, 0.0, 1.0]);
        // θ as stored (θ₁ in f16), in f64.
        let stored = |n: &str| -> Vec<f64> { read(&m(n), "a").iter().map(|&x| x as f64).collect() };
        let (t1, t2) = (stored("m1"), stored("m2"));
        // The result is stored in the first model's dtype (f16).
        let f16 = |x: f64| half::f16::from_f32(x as f32).to_f32();
        let want: Vec<f32> = (0..4)
            .map(|j| {
                let den = f1[j] + 3.0 * f2[j];
                if den > 0.0 {
                    f16((f1[j] * t1[j] + 3.0 * f2[j] * t2[j]) / den)
                } else {
                    f16((t1[j] + 3.0 * t2[j]) / 4.0)
                }
            })
            .collect();
        assert_eq!(read(&two, "a"), want);
        assert_eq!(want[1], f16((t1[1] + 3.0 * t2[1]) / 4.0), "0/0 falls back");
        // δ shrinks towards 0: one model with F = 1, δ = 1 halves it.
        tiny_model(&p("ones"), &[1.0; 4], &[1.0; 2], Dtype::F32);
        let half = run(args(vec![m("m2")], vec![f("ones")], Value::None, 1.0)).unwrap();
        assert_eq!(read(&half, "a"), vec![1.5, 1.0, -0.5, 0.2]);
        // Bad inputs: a negative Fisher value, negative weights, mismatched lengths.
        tiny_model(&p("neg"), &[1.0, -1.0, 1.0, 1.0], &[1.0; 2], Dtype::F32);
        let e = run(args(vec![m("m1")], vec![f("neg")], Value::None, 0.0)).unwrap_err();
        assert_eq!(e.code, "smelt::merge::bad_fisher");
        let w = Value::list(vec![Value::Float(-1.0)]);
        let e = run(args(vec![m("m1")], vec![f("f1")], w, 0.0)).unwrap_err();
        assert_eq!(e.code, "smelt::run::argument");
        let e = run(args(
            vec![m("m1"), m("m2")],
            vec![f("f1")],
            Value::None,
            0.0,
        ))
        .unwrap_err();
        assert_eq!(e.code, "smelt::run::length_mismatch");
        let e = run(args(vec![m("m1")], vec![f("f1")], Value::None, -1e-12)).unwrap_err();
        assert_eq!(e.code, "smelt::run::argument");
    }

    /// A fresh directory name per call (tests run several merges into one temp dir).
    pub fn rand_name() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
