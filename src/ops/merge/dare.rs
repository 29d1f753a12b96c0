//! `merge dare(base, models, p, rescale, alpha, combine)`: DARE, drop-and-rescale task vectors
//! (Yu et al. 2023), then combine them linearly or with TIES' sign election.
//!
//! Each coordinate of each task vector τᵢ = θᵢ − θ₀ is dropped with probability `p` and the
//! survivors are multiplied by 1/(1 − p) when `rescale` (so E[τ̃ᵢ] = τᵢ). Then
//! - `combine=linear` (mergekit `dare_linear`): θ = θ₀ + Σᵢ αᵢ τ̃ᵢ, in model order (with p = 0
//!   this is `merge task_arithmetic` bit for bit);
//! - `combine=ties` (mergekit `dare_ties`): TIES' sign election and disjoint mean on the τ̃ᵢ
//!   (no magnitude trim), θ = θ₀ + α·mean. mergekit's `dare_ties` defaults to
//!   `normalize: false`, a disjoint *sum*; this operator follows the TIES paper's mean.
//!
//! Masks: one ChaCha8 stream per (node seed, tensor name, model index) — the node seed comes
//! from the node key (which includes `seed`) and the experiment seed — so a mask depends on
//! neither the order tensors are visited in nor threading. A coordinate survives when its
//! 32-bit draw is below round((1 − p)·2³²).
//!
//! Default p = 0.9, the paper's headline drop rate ("90% or even 99%"); mergekit's `density`
//! is 1 − p.

use super::elect::{apply, elect_block, SignRule, BLOCK};
use super::Granularity;
use super::{
    open_models, out_dtype, per_model, provenance, stream_merge, validate_base_and_models,
    DTYPE_PARAM, EXCLUDE_PARAM, INCLUDE_PARAM, PARTIAL_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Dare;

static SIG: Signature = Signature {
    id: "merge.dare",
    version: 1,
    summary: "DARE: randomly drop task-vector entries with probability p, rescale by 1/(1−p), then combine.",
    doc: "Masks are drawn per (node seed, tensor, model) from ChaCha8 streams, so they are \
          reproducible and independent of tensor order; `seed` draws other masks. \
          `combine=linear`: θ = θ₀ + Σ αᵢ τ̃ᵢ (p = 0 is task arithmetic exactly). `combine=ties`: \
          TIES sign election (`sign`) and disjoint mean of the τ̃ᵢ, θ = θ₀ + α·mean (α must then \
          be one number). Tensors outside `include`/`exclude` are copied from the base.",
    params: &[
        Param::req("base", Ty::Model, "The pre-trained model θ₀ the task vectors are relative to."),
        Param::req("models", Ty::List(&Ty::Model), "Fine-tuned models θᵢ."),
        Param::opt("p", Ty::Float, Const::Float(0.9), "Drop probability of each task-vector entry.").range(0.0, 1.0),
        Param::opt("rescale", Ty::Bool, Const::Bool(true), "Multiply the surviving entries by 1/(1 − p)."),
        Param::opt("alpha", Ty::Either(&Ty::Float, &Ty::List(&Ty::Float)), Const::Float(1.0), "Scaling of the task vectors (one per model allowed with combine=linear)."),
        Param::opt("combine", Ty::Enum(&["linear", "ties"]), Const::Str("linear"), "How the sparsified task vectors are combined."),
        Param::opt("sign", Ty::Enum(&["sum", "count"]), Const::Str("sum"), "Sign election of combine=ties."),
        Param::opt("seed", Ty::Int, Const::Int(0), "Extra seed, to draw other masks."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        PARTIAL_PARAM,
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet d = merge dare(m, [m, m], p=0.5, combine=ties)"],
    reference: Some("Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch (ICML 2024), arXiv:2311.03099"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[("models", "alpha")],
    cheap: false,
};

/// The mask stream of one (tensor, model).
fn mask_rng(seed: u64, tensor: &str, model: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(b"merge.dare\0");
    h.update(tensor.as_bytes());
    h.update(&[0]);
    h.update(&(model as u64).to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

impl Operator for Dare {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_base_and_models(args)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let base = args.artifact("base", Kind::Model)?;
        let models = args.artifacts("models", Kind::Model)?;
        let m = models.len();
        let p = args.float("p")?;
        let rescale = args.bool("rescale")?;
        if !(0.0..=1.0).contains(&p) || (rescale && p >= 1.0) {
            return Err(OpError::new(
                "smelt::run::out_of_range",
                format!(
                    "drop probability p = {p} must be in [0, 1) (in [0, 1] with rescale=false)"
                ),
            )
            .with_help("p = 1 drops every entry and leaves nothing to rescale"));
        }
        let alphas: Vec<f32> = per_model(args, "alpha", m)?
            .iter()
            .map(|&a| a as f32)
            .collect();
        let ties = match args.str("combine")? {
            "ties" => {
                if matches!(args.get("alpha")?, Value::List(_)) {
                    return Err(OpError::new(
                        "smelt::run::argument",
                        "combine=ties scales the merged task vector by one alpha, not one per model",
                    )
                    .with_help("pass one number, e.g. alpha=1.0"));
                }
                Some(SignRule::parse(args.str("sign")?)?)
            }
            _ => None,
        };
        let scale = if rescale {
            (1.0 / (1.0 - p)) as f32
        } else {
            1.0
        };
        // Keep when the 32-bit draw is below this (2^32 keeps everything).
        let keep_below = ((1.0 - p) * 4_294_967_296.0).round() as u64;
        let mut all = vec![base];
        all.extend(models.iter().copied());
        let dirs = open_models(&all)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let params = format!(
            "p={p}, rescale={rescale}, alpha={alphas:?}, combine={}, sign={}, seed={}, {}",
            args.str("combine")?,
            args.str("sign")?,
            args.int("seed")?,
            super::filter::describe(args)?
        );
        let meta = provenance(cx, SIG.id, SIG.version, &all, &params);
        let seed = cx.seed;
        let mut vals = vec![0f32; m * BLOCK];
        let mut draws = vec![0u32; BLOCK];
        let mut delta = vec![0f32; BLOCK];
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |part, xs| {
                let name = part.name;
                let (b, tuned) = xs.split_first().expect("base is present");
                let n = b.len();
                // One u32 draw per element: a part starting at element `start` continues the
                // tensor's streams at word `start`, so chunking never changes a mask.
                let mut rngs: Vec<ChaCha8Rng> = (0..m)
                    .map(|i| {
                        let mut rng = mask_rng(seed, name, i);
                        rng.set_word_pos(part.start as u128);
                        rng
                    })
                    .collect();
                let mut out = Vec::with_capacity(n);
                for lo in (0..n).step_by(BLOCK) {
                    let len = BLOCK.min(n - lo);
                    let bb = &b[lo..lo + len];
                    for ((x, rng), row) in
                        tuned.iter().zip(&mut rngs).zip(vals.chunks_exact_mut(len))
                    {
                        rng.fill(&mut draws[..len]);
                        for (((v, &xv), &bv), &u) in
                            row.iter_mut().zip(&x[lo..]).zip(bb).zip(&draws)
                        {
                            *v = if (u as u64) < keep_below {
                                (xv - bv) * scale
                            } else {
                                0.0
                            };
                        }
                    }
                    let vals = &vals[..m * len];
                    match ties {
                        Some(rule) => {
                            elect_block(vals, m, len, rule, &mut delta);
                            out.extend(
                                bb.iter()
                                    .zip(&delta)
                                    .map(|(&bv, &d)| apply(bv, alphas[0], d)),
                            );
                        }
                        None => {
                            delta[..len].fill(0.0);
                            for (row, &a) in vals.chunks_exact(len).zip(&alphas) {
                                for (d, &v) in delta.iter_mut().zip(row) {
                                    *d += a * v;
                                }
                            }
                            out.extend(bb.iter().zip(&delta).map(|(&bv, &d)| apply(bv, 1.0, d)));
                        }
                    }
                }
                Ok(out)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::task_arithmetic::TaskArithmetic;
    use crate::ops::merge::testutil::{model_value, model_with, read, tiny_model};
    use crate::ops::merge::ties::Ties;
    use crate::tensors::header::Dtype;
    use crate::tensors::model_dir::ModelDir;
    use std::path::Path;

    fn args(base: &Value, models: &[Value], p: f64, alpha: Value, combine: &str) -> Args {
        Args::new(vec![
            ("base", base.clone()),
            ("models", Value::list(models.to_vec())),
            ("p", Value::Float(p)),
            ("rescale", Value::Bool(true)),
            ("alpha", alpha),
            ("combine", Value::str(combine)),
            ("sign", Value::str("sum")),
            ("seed", Value::Int(0)),
            ("include", Value::list(vec![])),
            ("exclude", Value::list(vec![])),
            ("partial", Value::str("error")),
            ("dtype", Value::str("auto")),
        ])
    }

    fn run(a: &Args, out: &Path, seed: u64) -> Value {
        Dare.run(&mut OpCtx::for_test(out.to_path_buf(), seed), a)
            .unwrap()
    }

    fn fixture(t: &Path) -> (Value, Vec<Value>) {
        tiny_model(
            &t.join("base"),
            &[0.5, -1.0, 2.0, 0.0],
            &[1.0, 1.0],
            Dtype::F32,
        );
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
        (
            model_value(&t.join("base")),
            vec![model_value(&t.join("m1")), model_value(&t.join("m2"))],
        )
    }

    #[test]
    fn p_zero_is_task_arithmetic_and_ties_at_density_one() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = fixture(t.path());
        let alpha = Value::list(vec![Value::Float(0.7), Value::Float(-0.3)]);
        let dare = read(&run(
            &args(&base, &models, 0.0, alpha.clone(), "linear"),
            &t.path().join("d"),
            5,
        ));
        let ta_args = Args::new(vec![
            ("base", base.clone()),
            ("models", Value::list(models.clone())),
            ("alpha", alpha),
            ("dtype", Value::str("auto")),
        ]);
        let ta = TaskArithmetic
            .run(&mut OpCtx::for_test(t.path().join("ta"), 0), &ta_args)
            .unwrap();
        assert_eq!(dare, read(&ta));
        let dare = read(&run(
            &args(&base, &models, 0.0, Value::Float(1.0), "ties"),
            &t.path().join("dt"),
            5,
        ));
        let ties_args = Args::new(vec![
            ("base", base),
            ("models", Value::list(models)),
            ("density", Value::Float(1.0)),
            ("sign", Value::str("sum")),
            ("alpha", Value::Float(1.0)),
            ("include", Value::list(vec![])),
            ("exclude", Value::list(vec![])),
            ("partial", Value::str("error")),
            ("dtype", Value::str("auto")),
        ]);
        let ties = Ties
            .run(&mut OpCtx::for_test(t.path().join("t"), 0), &ties_args)
            .unwrap();
        assert_eq!(dare, read(&ties));
    }

    /// Base 0 and `models` copies whose tensor `w` is all ones (plus a small tensor `aa`).
    fn ones(t: &Path, n: usize, models: usize) -> (Value, Vec<Value>) {
        let zeros = vec![0f32; n];
        let ones = vec![1f32; n];
        model_with(&t.join("base"), &[("aa", &[0.0]), ("w", &zeros)]);
        let ms = (0..models)
            .map(|i| {
                let dir = t.join(format!("m{i}"));
                model_with(&dir, &[("aa", &[i as f32]), ("w", &ones)]);
                model_value(&dir)
            })
            .collect();
        (model_value(&t.join("base")), ms)
    }

    fn w(v: &Value) -> Vec<f32> {
        ModelDir::open(&v.as_artifact().unwrap().dir)
            .unwrap()
            .read_f32("w")
            .unwrap()
    }

    #[test]
    fn keep_rate_and_expectation_on_a_large_tensor() {
        let t = tempfile::tempdir().unwrap();
        let n = 200_000;
        let (base, models) = ones(t.path(), n, 1);
        for p in [0.3, 0.9] {
            let out = w(&run(
                &args(&base, &models, p, Value::Float(1.0), "linear"),
                &t.path().join(format!("o{p}")),
                11,
            ));
            let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Binomial: 5 standard deviations.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (kept - (1.0 - p)).abs() < 5.0 * sd,
                "p={p}: keep rate {kept}"
            );
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(out.iter().all(|&v| v == 0.0 || v == scale));
            let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            assert!(
                (mean - 1.0).abs() < 5.0 * sd / (1.0 - p),
                "p={p}: E[θ] {mean} vs 1"
            );
        }
    }

    #[test]
    fn parts_of_any_size_draw_the_same_masks() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = ones(t.path(), 5000, 2);
        for combine in ["linear", "ties"] {
            let a = args(&base, &models, 0.5, Value::Float(1.0), combine);
            let whole = w(&run(&a, &t.path().join(format!("whole-{combine}")), 3));
            for chunk in [1, 7, 4096] {
                super::super::TEST_CHUNK.with(|c| c.set(Some(chunk)));
                let parts = w(&run(&a, &t.path().join(format!("{chunk}-{combine}")), 3));
                super::super::TEST_CHUNK.with(|c| c.set(None));
                assert_eq!(whole, parts, "combine={combine}, parts of {chunk}");
            }
        }
    }

    #[test]
    fn masks_follow_seed_tensor_and_model_index() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = ones(t.path(), 4096, 2);
        let one = |i: usize| {
            let mut a = vec![Value::Float(0.0); 2];
            a[i] = Value::Float(1.0);
            Value::list(a)
        };
        let a0 = args(&base, &models, 0.5, one(0), "linear");
        let first = w(&run(&a0, &t.path().join("a"), 1));
        assert_eq!(
            first,
            w(&run(&a0, &t.path().join("b"), 1)),
            "same seed, same masks"
        );
        assert_ne!(
            first,
            w(&run(&a0, &t.path().join("c"), 2)),
            "another seed, other masks"
        );
        // The two models' tensors `w` are identical, but model index 1 draws its own mask.
        let second = w(&run(
            &args(&base, &models, 0.5, one(1), "linear"),
            &t.path().join("d"),
            1,
        ));
        assert_ne!(first, second);
        // Model 0's mask is the same whether or not model 1 is merged, and whatever the
        // other tensors of the file are: it depends on (seed, tensor name, index) only.
        let alone = w(&run(
            &args(&base, &models[..1], 0.5, Value::Float(1.0), "linear"),
            &t.path().join("e"),
            1,
        ));
        assert_eq!(first, alone);
        let m0 = ModelDir::open(&models[0].as_artifact().unwrap().dir).unwrap();
        let draws: Vec<bool> = {
            let mut rng = mask_rng(1, "w", 0);
            (0..4096).map(|_| rng.random::<u32>() < 1 << 31).collect()
        };
        let expect: Vec<f32> = draws.iter().map(|&k| if k { 2.0 } else { 0.0 }).collect();
        assert_eq!(first, expect);
        assert_eq!(m0.read_f32("w").unwrap(), vec![1.0; 4096]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let (base, models) = fixture(t.path());
        let mut cx = OpCtx::for_test(t.path().join("x"), 0);
        let e = Dare
            .run(
                &mut cx,
                &args(&base, &models, 1.0, Value::Float(1.0), "linear"),
            )
            .unwrap_err();
        assert_eq!(e.code, "smelt::run::out_of_range");
        let two = Value::list(vec![Value::Float(1.0), Value::Float(1.0)]);
        let e = Dare
            .run(&mut cx, &args(&base, &models, 0.5, two, "ties"))
            .unwrap_err();
        assert_eq!(e.code, "smelt::run::argument");
    }
}
