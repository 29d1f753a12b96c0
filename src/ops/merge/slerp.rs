//! `merge slerp(a, b, t, base)`: spherical linear interpolation of two models, tensor by tensor.
//!
//! Each tensor is treated as one flat vector (as mergekit does). With u, v the two tensors —
//! or their task vectors u = a − θ₀, v = b − θ₀ when `base` is given — the angle Ω comes from
//! normalised copies (cos Ω = u·v / (‖u‖‖v‖), accumulated in f64), and the *unnormalised*
//! tensors are interpolated:
//!   r = sin((1 − t)Ω)/sin Ω · u + sin(tΩ)/sin Ω · v,   θ = r   (or θ₀ + r with a base).
//! When |cos Ω| > 1 − ε (ε = 5·10⁻⁴, mergekit's `DOT_THRESHOLD = 0.9995`) the vectors are
//! (anti-)colinear and plain linear interpolation r = (1 − t)u + t·v is used instead. Where
//! mergekit would divide by a zero norm, a tensor with ‖u‖ or ‖v‖ ≤ 10⁻⁸ is interpolated
//! linearly too (the angle is undefined). t = 0 returns `a` and t = 1 returns `b` exactly.
//! Tensors outside `include`/`exclude` are copied from the reference (`base` when given,
//! otherwise `a`).

use super::Granularity;
use super::{
    open_models, out_dtype, provenance, stream_merge, validate_merge, DTYPE_PARAM, EXCLUDE_PARAM,
    INCLUDE_PARAM, PARTIAL_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Slerp;

static SIG: Signature = Signature {
    id: "merge.slerp",
    version: 1,
    summary: "Spherical linear interpolation between two models, per tensor (optionally of their task vectors).",
    doc: "Per flattened tensor: r = sin((1−t)Ω)/sin Ω·a + sin(tΩ)/sin Ω·b with cos Ω from the \
          normalised tensors; (anti-)colinear tensors (|cos Ω| > 0.9995) and zero tensors fall back \
          to (1−t)·a + t·b. With `base`, the task vectors a − θ₀ and b − θ₀ are interpolated and \
          added to θ₀. t = 0 gives `a`, t = 1 gives `b` exactly.",
    params: &[
        Param::req("a", Ty::Model, "The model at t = 0."),
        Param::req("b", Ty::Model, "The model at t = 1."),
        Param::opt("t", Ty::Float, Const::Float(0.5), "Interpolation position from a (0) to b (1).").range(0.0, 1.0),
        Param::opt("base", Ty::Opt(&Ty::Model), Const::None, "Interpolate the task vectors relative to this model instead of the weights."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        PARTIAL_PARAM,
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet s = merge slerp(m, m, t=0.3, exclude=[\"embeddings\"])"],
    reference: Some("Shoemake, Animating rotation with quaternion curves (SIGGRAPH 1985); as in mergekit (Goddard et al., arXiv:2403.13257)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// |cos Ω| above this counts as colinear (mergekit's `DOT_THRESHOLD`).
pub const DOT_THRESHOLD: f64 = 0.9995;
/// Norms at or below this make the angle undefined.
pub const NORM_EPS: f64 = 1e-8;

/// The interpolation coefficients (s₀, s₁) of u and v at position t.
pub fn coefficients(t: f64, u: impl Iterator<Item = (f32, f32)>) -> (f64, f64) {
    let (mut uu, mut vv, mut uv) = (0f64, 0f64, 0f64);
    for (a, b) in u {
        let (a, b) = (a as f64, b as f64);
        uu += a * a;
        vv += b * b;
        uv += a * b;
    }
    let (nu, nv) = (uu.sqrt(), vv.sqrt());
    if nu <= NORM_EPS || nv <= NORM_EPS {
        return (1.0 - t, t);
    }
    let cos = uv / (nu * nv);
    if cos.abs() > DOT_THRESHOLD {
        return (1.0 - t, t);
    }
    let omega = cos.acos();
    let s = omega.sin();
    (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
}

impl Operator for Slerp {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        let mut all = Vec::new();
        if !matches!(args.get("base")?, Value::None) {
            all.push(args.get("base")?);
        }
        all.extend([args.get("a")?, args.get("b")?]);
        validate_merge(args, &all)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let a = args.artifact("a", Kind::Model)?;
        let b = args.artifact("b", Kind::Model)?;
        let base = match args.get("base")? {
            Value::None => None,
            _ => Some(args.artifact("base", Kind::Model)?),
        };
        let t = args.float("t")?;
        if !(0.0..=1.0).contains(&t) {
            return Err(OpError::new(
                "smelt::run::out_of_range",
                format!("t = {t} is outside [0, 1]"),
            ));
        }
        let all: Vec<_> = base.into_iter().chain([a, b]).collect();
        let dirs = open_models(&all)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let params = format!(
            "t={t}, base={}, {}",
            base.is_some(),
            super::filter::describe(args)?
        );
        let meta = provenance(cx, SIG.id, SIG.version, &all, &params);
        let with_base = base.is_some();
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Whole,
            &mut |_, xs| {
                let (zero, x) = if with_base {
                    (Some(&xs[0]), &xs[1..])
                } else {
                    (None, xs)
                };
                let (xa, xb) = (&x[0], &x[1]);
                if t == 0.0 {
                    return Ok(xa.clone());
                }
                if t == 1.0 {
                    return Ok(xb.clone());
                }
                Ok(match zero {
                    None => {
                        let (s0, s1) = coefficients(t, xa.iter().copied().zip(xb.iter().copied()));
                        let (s0, s1) = (s0 as f32, s1 as f32);
                        xa.iter().zip(xb).map(|(&u, &v)| s0 * u + s1 * v).collect()
                    }
                    Some(z) => {
                        let tv = xa
                            .iter()
                            .zip(xb)
                            .zip(z.iter())
                            .map(|((&a, &b), &z)| (a - z, b - z));
                        let (s0, s1) = coefficients(t, tv);
                        let (s0, s1) = (s0 as f32, s1 as f32);
                        xa.iter()
                            .zip(xb)
                            .zip(z.iter())
                            .map(|((&a, &b), &z)| z + (s0 * (a - z) + s1 * (b - z)))
                            .collect()
                    }
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::{model_value, read, tiny_model};
    use crate::tensors::header::Dtype;
    use std::path::Path;

    fn args(a: &Value, b: &Value, t: f64, base: Value) -> Args {
        Args::new(vec![
            ("a", a.clone()),
            ("b", b.clone()),
            ("t", Value::Float(t)),
            ("base", base),
            ("include", Value::list(vec![])),
            ("exclude", Value::list(vec![])),
            ("partial", Value::str("error")),
            ("dtype", Value::str("auto")),
        ])
    }

    fn model(dir: &Path, a: [f32; 4], b: [f32; 2]) -> Value {
        tiny_model(dir, &a, &b, Dtype::F32);
        model_value(dir)
    }

    fn run(a: &Args, out: &Path) -> (Vec<f32>, Vec<f32>) {
        read(
            &Slerp
                .run(&mut OpCtx::for_test(out.to_path_buf(), 0), a)
                .unwrap(),
        )
    }

    fn norm(x: &[f32]) -> f64 {
        x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn endpoints_are_exact() {
        let t = tempfile::tempdir().unwrap();
        let a = model(&t.path().join("a"), [0.1, -0.7, 1e-3, 3.0], [-0.0, 2.5]);
        let b = model(&t.path().join("b"), [0.4, 0.2, -5.0, 1.0], [1.0, -2.5]);
        let z = model(&t.path().join("z"), [0.3, 0.3, 0.3, 0.3], [0.5, 0.5]);
        for (i, base) in [Value::None, z].into_iter().enumerate() {
            let at0 = run(
                &args(&a, &b, 0.0, base.clone()),
                &t.path().join(format!("o{i}0")),
            );
            let at1 = run(&args(&a, &b, 1.0, base), &t.path().join(format!("o{i}1")));
            assert_eq!(at0, (vec![0.1, -0.7, 1e-3, 3.0], vec![-0.0, 2.5]));
            assert!(at0.1[0].is_sign_negative());
            assert_eq!(at1, (vec![0.4, 0.2, -5.0, 1.0], vec![1.0, -2.5]));
        }
    }

    #[test]
    fn orthogonal_equal_norms_keep_the_norm() {
        let t = tempfile::tempdir().unwrap();
        let a = model(&t.path().join("a"), [1.0, 1.0, 0.0, 0.0], [3.0, 0.0]);
        let b = model(&t.path().join("b"), [0.0, 0.0, 1.0, -1.0], [0.0, 3.0]);
        let (x, y) = run(&args(&a, &b, 0.5, Value::None), &t.path().join("o"));
        let h = std::f32::consts::FRAC_1_SQRT_2;
        for (g, w) in x.iter().zip([h, h, h, -h]) {
            assert!((g - w).abs() < 1e-6, "{x:?}");
        }
        assert!((norm(&x) - 2f64.sqrt()).abs() < 1e-6);
        assert!((norm(&y) - 3.0).abs() < 1e-6);
        // At t = 1/4 the result is a quarter of the way round: angle π/8 from a, same norm.
        let (x, _) = run(&args(&a, &b, 0.25, Value::None), &t.path().join("q"));
        let cos = (x[0] + x[1]) as f64 / (norm(&x) * 2f64.sqrt());
        assert!((cos - (std::f64::consts::PI / 8.0).cos()).abs() < 1e-6);
        assert!((norm(&x) - 2f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn colinear_and_zero_tensors_interpolate_linearly() {
        let t = tempfile::tempdir().unwrap();
        // `a`: b = 2a (colinear); `b`: opposite directions (anti-colinear).
        let a = model(&t.path().join("a"), [1.0, 2.0, 3.0, 4.0], [1.0, -1.0]);
        let b = model(&t.path().join("b"), [2.0, 4.0, 6.0, 8.0], [-2.0, 2.0]);
        let (x, y) = run(&args(&a, &b, 0.25, Value::None), &t.path().join("o"));
        let lerp = |u: f32, v: f32| 0.75 * u + 0.25 * v;
        assert_eq!(
            x,
            vec![
                lerp(1.0, 2.0),
                lerp(2.0, 4.0),
                lerp(3.0, 6.0),
                lerp(4.0, 8.0)
            ]
        );
        assert_eq!(y, vec![lerp(1.0, -2.0), lerp(-1.0, 2.0)]);
        assert_eq!(
            coefficients(0.3, [(0.0, 1.0), (0.0, 2.0)].into_iter()),
            (0.7, 0.3)
        );
    }

    #[test]
    fn with_a_base_the_task_vectors_are_interpolated() {
        let t = tempfile::tempdir().unwrap();
        let z = model(&t.path().join("z"), [5.0, -5.0, 1.0, 0.0], [1.0, 1.0]);
        let a = model(&t.path().join("a"), [6.0, -4.0, 1.0, 0.0], [2.0, 1.0]);
        let b = model(&t.path().join("b"), [5.0, -5.0, 2.0, -1.0], [1.0, 2.0]);
        let (x, y) = run(&args(&a, &b, 0.5, z), &t.path().join("o"));
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want = [5.0 + h, -5.0 + h, 1.0 + h, -h];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{x:?}");
        }
        assert!((y[0] - (1.0 + h)).abs() < 1e-6 && (y[1] - (1.0 + h)).abs() < 1e-6);
    }
}
