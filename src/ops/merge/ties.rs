//! `merge ties(base, models, density, sign, alpha)`: TIES-Merging (Yadav et al. 2023).
//!
//! Per tensor, with task vectors τᵢ = θᵢ − θ₀:
//! 1. **Trim**: keep the k = ⌈density·n⌉ largest |τᵢ| of each model (n = the tensor's size),
//!    zero the rest. Equal magnitudes at the threshold are kept in ascending flat-index order,
//!    so the result never depends on a sort's whims. The threshold is found by selection, not
//!    sorting ([`super::trim`]).
//! 2. **Elect** a sign per coordinate: `sum` = sign of Σᵢ τ̂ᵢ (the paper's mass rule), `count`
//!    = the majority of the nonzero signs, a tied count falling back to the mass rule. A zero
//!    mass elects `+` (as mergekit; the paper's code uses the whole model's majority sign
//!    there, which only matters when nonzero values cancel exactly).
//! 3. **Disjoint mean** over the models whose trimmed value is nonzero and has the elected sign
//!    (zero when none): θ = θ₀ + α·τₘ. A zero update keeps the base value bit for bit.
//!
//! Defaults: density 0.2 (the paper's k = 20%; mergekit's default is density 1, i.e. no
//! trimming, which leaves only the sign election), sign `sum`, α = 1 (the paper's default
//! when no validation set is used to tune λ). The sign election and disjoint mean
//! ([`super::elect`]) are shared with `merge dare(combine=ties)`.

use super::elect::{SignRule, TiesMerge};
use super::trim_streamed::find_trims_streamed;
use super::Granularity;
use super::{
    open_models, out_dtype, per_model, provenance, stream_merge, validate_base_and_models,
    DTYPE_PARAM, EXCLUDE_PARAM, INCLUDE_PARAM, PARTIAL_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::ModelDir;
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

impl Operator for Ties {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_base_and_models(args)
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
        // A large tensor arrives in parts: its trims are found first, over the whole tensor,
        // by streaming radix selection (exactly what the in-memory selection would keep).
        let mut trims = Vec::new();
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |part, xs| {
                let len = xs[0].len();
                if part.is_whole(len) {
                    return ties.combine(xs);
                }
                if part.start == 0 {
                    let read = |i: usize, start: usize, len: usize, buf: &mut Vec<f32>| {
                        let d: &ModelDir = &dirs[i];
                        d.read_f32_range_into(part.name, start, len, buf)?;
                        d.evict_range(part.name, start, len);
                        Ok(())
                    };
                    let ks = ties.keep_counts(part.numel);
                    trims = find_trims_streamed(part.numel, &ks, len, &read)?;
                }
                ties.combine_part(xs, &trims, part.start)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::{model_value, read, tiny_model};
    use crate::tensors::header::Dtype;

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
    fn tensors_merged_in_parts_equal_whole_tensors() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = fixture(t.path());
        for density in [0.25, 0.5, 0.75, 1.0] {
            for sign in ["sum", "count"] {
                let a = args(base.clone(), models.clone(), density, sign, 1.0);
                let whole = run(&a, t.path().join(format!("w{density}{sign}")));
                for chunk in [1, 3] {
                    crate::ops::merge::TEST_CHUNK.with(|c| c.set(Some(chunk)));
                    let parts = run(&a, t.path().join(format!("p{chunk}{density}{sign}")));
                    crate::ops::merge::TEST_CHUNK.with(|c| c.set(None));
                    assert_eq!(
                        parts, whole,
                        "density {density}, sign {sign}, parts of {chunk}"
                    );
                }
            }
        }
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
}
