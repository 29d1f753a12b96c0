//! `merge uncertainty(models, hessians, base, base_hessian, delta0, alpha, base_scale, scales)`:
//! uncertainty-based gradient matching (UBGM, Daheim et al. 2024), exactly as the paper code
//! computes it (methods.md §3.3), elementwise over every float tensor:
//!
//! ```text
//! H̄ = α·Σ_t s_t F_t + s_0 F_0 + δ
//! θ = θ_LLM + α·Σ_t [(s_t F_t + s_0 F_0 + δ) / H̄] ⊙ (θ_t − θ_LLM)
//! ```
//!
//! δ enters both H̄ and every numerator; α multiplies the task terms and the fine-tuned
//! Hessians in H̄ but not s_0F_0; the division is in f64 whatever the storage dtype (with
//! δ = 1e-12, H̄ can be ~δ). Defaults that make `merge uncertainty(models, hessians,
//! delta0=1e-12)` run: `base` = the base model every `models[t]` records (`train full` writes
//! it to `smelt.json`); no `base_hessian` ⇒ s_0F_0 = 0; `scales` = each Fisher's example count
//! N_t (so s_t F_t is the sum-over-data Fisher); `base_scale` = the base Hessian's count.
//! H̄ ≤ 0 (possible with negative α, or with δ = 0 where every Fisher is 0) is an error.

use super::fisher::{arg_values, delta_arg, fisher_value, open_dirs, validate_inputs};
use super::Granularity;
use super::{out_dtype, provenance, stream_to_model, DTYPE_PARAM};
use crate::diag::OpError;
use crate::ops::estimate::fisher_examples;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Uncertainty;

static SIG: Signature = Signature {
    id: "merge.uncertainty",
    version: 1,
    summary: "Uncertainty-based gradient matching: θ = θ₀ + α Σₜ [(sₜFₜ + s₀F₀ + δ)/H̄] ⊙ (θₜ − θ₀).",
    doc: "H̄ = α Σₜ sₜFₜ + s₀F₀ + δ, elementwise over every float tensor (embeddings, norms, head, \
          pooler), computed in f64 — the paper code's formula (δ in H̄ and in every numerator; \
          α on the task terms and on the fine-tuned Hessians in H̄, not on s₀F₀). Defaults: `base` \
          = the base model all `models` record (from `train full`); no `base_hessian` ⇒ s₀F₀ = 0; \
          `scales` = each Fisher's example count Nₜ; `base_scale` = the base Hessian's count \
          (explicit values are used as given). H̄ ≤ 0 anywhere (negative α outweighing s₀F₀ + δ, \
          or δ = 0 on coordinates without curvature) is an error.",
    params: &[
        Param::req("models", Ty::List(&Ty::Model), "Fine-tuned models θₜ (from one base)."),
        Param::req("hessians", Ty::List(&Ty::Fisher), "Their diagonal Fishers Fₜ (per-example averages), same order."),
        Param::opt("base", Ty::Opt(&Ty::Model), Const::None, "θ_LLM, the model the task vectors start from; default: the base the models record."),
        Param::opt("base_hessian", Ty::Opt(&Ty::Fisher), Const::None, "F₀, the base model's Fisher; default none (s₀F₀ = 0)."),
        Param::opt("delta0", Ty::Float, Const::Float(1e-12), "δ, added to H̄ and to every numerator."),
        Param::opt("alpha", Ty::Float, Const::Float(1.0), "α, one scaling factor for all tasks (negative removes data; H̄ must stay > 0)."),
        Param::opt("base_scale", Ty::Opt(&Ty::Float), Const::None, "s₀ (the paper's scaling_factor_pt, e.g. the base's training-set size); default the base Hessian's example count."),
        Param::opt("scales", Ty::Opt(&Ty::List(&Ty::Float)), Const::None, "sₜ (scaling_factors_ft, e.g. training-set sizes); default each Fisher's example count."),
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &[
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet base = train full(lm, ts[0], max_steps=2)\nlet models = [train full(base, t, max_steps=2) for t in ts]\nlet hessians = [estimate fisher(m, t, examples=16) for (m, t) in zip(models, ts)]\nlet m = merge uncertainty(models, hessians, delta0=1e-12)",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet ms = [model perturb(lm, std=0.01, seed=i) for i in range(2)]\nlet fs = [estimate fisher(m, t, examples=16) for m in ms]\nlet f0 = estimate fisher(lm, t, examples=16)\nlet m = merge uncertainty(ms, fs, base=lm, base_hessian=f0, delta0=1e-12, alpha=1.0, base_scale=25000, scales=[240, 240])",
    ],
    reference: Some("Daheim et al., Model merging by uncertainty-based gradient matching (ICLR 2024), arXiv:2310.12808; methods.md §3.3"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("models", "hessians"), ("models", "scales")],
    cheap: false,
};

const NO_BASE: &str = "smelt::merge::no_base";

/// The base every model records (`base.dir`/`base.key` in its artifact data or `smelt.json`),
/// as `(directory, key)`; an error when one records none or two disagree.
pub fn recorded_base(models: &[&Arc<Artifact>]) -> Result<(PathBuf, String), OpError> {
    let mut found: Option<(PathBuf, String)> = None;
    for (i, a) in models.iter().enumerate() {
        let info = match a.data["base"]["dir"].is_string() {
            true => a.data.clone(),
            false => crate::nn::peft::io::read_json(&a.dir.join("smelt.json")).unwrap_or_default(),
        };
        let dir = info["base"]["dir"].as_str().ok_or_else(|| {
            OpError::new(
                NO_BASE,
                format!("models[{i}] does not record the model it was fine-tuned from"),
            )
            .with_help("pass `base=` (the model the task vectors are relative to)")
        })?;
        let key = info["base"]["key"].as_str().unwrap_or_default().to_string();
        let this = (PathBuf::from(dir), key);
        match &found {
            None => found = Some(this),
            Some((d, k)) if *d == this.0 || (!k.is_empty() && *k == this.1) => {}
            Some((d, _)) => {
                return Err(OpError::new(
                    NO_BASE,
                    format!(
                        "models[0] was fine-tuned from {} but models[{i}] from {}",
                        d.display(),
                        this.0.display()
                    ),
                )
                .with_help("UBGM adds task vectors of one base: pass `base=` explicitly"))
            }
        }
    }
    found.ok_or_else(|| OpError::new(NO_BASE, "no models to merge"))
}

/// N of a Fisher as a scale, or an error naming the argument to give instead.
fn count(h: &Artifact, what: &str, instead: &str) -> Result<f64, OpError> {
    fisher_examples(h).ok_or_else(|| {
        OpError::new(
            "smelt::merge::no_example_count",
            format!("{what} records no example count to scale it by"),
        )
        .with_help(format!(
            "pass `{instead}`, or load it with `load fisher(path, examples=N)`"
        ))
    })
}

impl Operator for Uncertainty {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        let values = arg_values(args, &["models", "hessians"], &["base", "base_hessian"]);
        validate_inputs(&values)
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let models = args.artifacts("models", Kind::Model)?;
        let hessians = args.artifacts("hessians", Kind::Fisher)?;
        let t = models.len();
        if t == 0 || hessians.len() != t {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{t} models and {} hessians", hessians.len()),
            )
            .with_help("give one Fisher per fine-tuned model, in the same order"));
        }
        let (base_dir, base_key) = match args.get("base")? {
            Value::None => recorded_base(&models)?,
            _ => {
                let b = args.artifact("base", Kind::Model)?;
                (b.dir.clone(), b.key.hex())
            }
        };
        let f0 = match args.get("base_hessian")? {
            Value::None => None,
            _ => Some(args.artifact("base_hessian", Kind::Fisher)?),
        };
        let alpha = args.float("alpha")?;
        let delta = delta_arg(args)?;
        let scales: Vec<f64> = match args.get("scales")? {
            Value::None => hessians
                .iter()
                .enumerate()
                .map(|(i, h)| count(h, &format!("hessians[{i}]"), "scales=[…]"))
                .collect::<Result<_, _>>()?,
            _ => args.floats("scales")?,
        };
        if scales.len() != t {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{t} models but {} scales", scales.len()),
            ));
        }
        let s0 = match (f0, args.opt_float("base_scale")?) {
            (Some(_), Some(s)) => s,
            (Some(h), None) => count(h, "base_hessian", "base_scale=")?,
            (None, Some(_)) => {
                return Err(OpError::new(
                    "smelt::run::argument",
                    "`base_scale` is given but there is no `base_hessian` to scale",
                )
                .with_help("pass `base_hessian=` too, or drop `base_scale`"))
            }
            (None, None) => 0.0,
        };
        let base_dir_model =
            ModelDir::open(&base_dir).map_err(|e| e.context("opening the base model (θ_LLM)"))?;
        let mut dirs = vec![base_dir_model];
        dirs.extend(open_dirs(&models)?);
        let mut fishers = Vec::new();
        fishers.extend(f0);
        fishers.extend(hessians.iter().copied());
        dirs.extend(open_dirs(&fishers)?);
        let dtype = out_dtype(args, &dirs[0])?;
        let mut inputs = models.clone();
        inputs.extend(fishers.iter().copied());
        let mut meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &inputs,
            &format!("alpha={alpha:e},delta0={delta:e},base_scale={s0:e},scales={scales:?}"),
        );
        meta.insert("smelt.base".into(), base_key);
        let has_f0 = f0.is_some();
        stream_to_model(
            cx,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |part, xs| {
                let name = part.name;
                let (base, rest) = xs.split_first().ok_or_else(|| {
                    OpError::new("smelt::internal", "the merge engine gave no inputs")
                })?;
                let (thetas, fs) = rest.split_at(t);
                let (f0, fs) = match has_f0 {
                    true => (Some(&fs[0]), &fs[1..]),
                    false => (None, fs),
                };
                let mut sf = vec![0f64; t];
                let mut out = Vec::with_capacity(base.len());
                for j in 0..base.len() {
                    let s0f0 = match f0 {
                        Some(f) => s0 * fisher_value(f[j], name, "base_hessian")?,
                        None => 0.0,
                    };
                    for k in 0..t {
                        sf[k] =
                            scales[k] * fisher_value(fs[k][j], name, &format!("hessians[{k}]"))?;
                    }
                    let hbar = alpha * sf.iter().sum::<f64>() + s0f0 + delta;
                    if !(hbar > 0.0 && hbar.is_finite()) {
                        return Err(OpError::new(
                        "smelt::merge::nonpositive_curvature",
                        format!("H̄ = α·Σ sₜFₜ + s₀F₀ + δ = {hbar:e} at element {j} of `{name}`"),
                    )
                    .with_help(if alpha < 0.0 {
                        "with negative alpha the task Hessians must stay below s₀F₀ + δ: add a base_hessian, raise delta0 or reduce |alpha|"
                    } else {
                        "every Fisher is 0 here: use delta0 > 0"
                    }));
                    }
                    let b = base[j] as f64;
                    let update: f64 = (0..t)
                        .map(|k| (sf[k] + s0f0 + delta) / hbar * (thetas[k][j] as f64 - b))
                        .sum::<f64>()
                        * alpha;
                    // A zero update keeps the base value bit for bit.
                    out.push(if update == 0.0 {
                        base[j]
                    } else {
                        (b + update) as f32
                    });
                }
                Ok(out)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::fisher::tests::{art, rand_name, read};
    use super::*;
    use crate::ops::merge::task_arithmetic::TaskArithmetic;
    use crate::tensors::header::Dtype;
    use crate::tensors::writer::{SafetensorsWriter, WriterOptions};
    use serde_json::json;
    use std::path::Path;

    /// A model dir with a float tensor `w` [6], an integer buffer `ids` and a config.
    fn write(dir: &Path, w: &[f32; 6], ids: &[i64; 2]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"bert","vocab_size":4}"#,
        )
        .unwrap();
        let specs = vec![
            ("ids".to_string(), Dtype::I64, vec![2]),
            ("w".to_string(), Dtype::F32, vec![6]),
        ];
        let mut st = SafetensorsWriter::create(
            &dir.join("model.safetensors"),
            &specs,
            WriterOptions::default(),
        )
        .unwrap();
        let raw: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        st.write_raw("ids", &raw).unwrap();
        st.write_f32("w", w).unwrap();
        st.finish().unwrap();
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let f = Fixture {
                dir: tempfile::tempdir().unwrap(),
            };
            write(&f.p("base"), &[1.0, -1.0, 0.5, 2.0, 0.0, 3.0], &[7, 9]);
            write(&f.p("m1"), &[2.0, -1.5, 0.5, 1.0, 0.25, 3.0], &[0, 0]);
            write(&f.p("m2"), &[0.0, 0.5, 1.5, 2.5, -0.5, 2.0], &[0, 0]);
            write(&f.p("f1"), &[1.0, 0.0, 2e-3, 5.0, 1e-9, 0.5], &[0, 0]);
            write(&f.p("f2"), &[3.0, 0.0, 1e-3, 1.0, 0.0, 0.5], &[0, 0]);
            write(&f.p("f0"), &[0.5, 1.0, 0.0, 0.1, 2.0, 0.0], &[0, 0]);
            f
        }
        fn p(&self, n: &str) -> std::path::PathBuf {
            self.dir.path().join(n)
        }
        fn model(&self, n: &str) -> Value {
            art(Kind::Model, &self.p(n), serde_json::Value::Null)
        }
        fn fisher(&self, n: &str, examples: u64) -> Value {
            art(Kind::Fisher, &self.p(n), json!({"examples": examples}))
        }
        fn w(&self, n: &str) -> Vec<f64> {
            read(&self.model(n), "w")
                .iter()
                .map(|&x| x as f64)
                .collect()
        }
        fn run(&self, args: Vec<(&'static str, Value)>) -> Result<Value, OpError> {
            let mut all = vec![
                ("base", Value::None),
                ("base_hessian", Value::None),
                ("delta0", Value::Float(1e-12)),
                ("alpha", Value::Float(1.0)),
                ("base_scale", Value::None),
                ("scales", Value::None),
                ("dtype", Value::str("auto")),
            ];
            for (k, v) in args {
                match all.iter_mut().find(|(n, _)| *n == k) {
                    Some(slot) => slot.1 = v,
                    None => all.push((k, v)),
                }
            }
            let mut cx = OpCtx::for_test(self.p(&format!("out{}", rand_name())), 0);
            Uncertainty.run(&mut cx, &Args::new(all))
        }
        fn pair(&self) -> Vec<(&'static str, Value)> {
            vec![
                (
                    "models",
                    Value::list(vec![self.model("m1"), self.model("m2")]),
                ),
                (
                    "hessians",
                    Value::list(vec![self.fisher("f1", 100), self.fisher("f2", 100)]),
                ),
                ("base", self.model("base")),
            ]
        }
    }

    fn floats(xs: &[f64]) -> Value {
        Value::list(xs.iter().map(|&x| Value::Float(x)).collect())
    }

    fn close(got: &[f32], want: &[f64], tol: f64) {
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol * w.abs().max(1.0),
                "element {j}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn identical_fishers_and_alpha_one_over_t_average_the_models() {
        // Fₜ = F, sₜ = s, α = 1/T: H̄ = s F + s₀F₀ + δ, so each coefficient
        // (s F + s₀F₀ + δ)/H̄ = 1 exactly and θ = θ₀ + (1/T) Σ τₜ = mean θₜ — also where F = 0
        // (coefficient δ/δ) and with or without a base Hessian.
        let f = Fixture::new();
        let (b, m1, m2) = (f.w("base"), f.w("m1"), f.w("m2"));
        let mean: Vec<f64> = (0..6)
            .map(|j| b[j] + 0.5 * ((m1[j] - b[j]) + (m2[j] - b[j])))
            .collect();
        for with_f0 in [false, true] {
            let mut a = vec![
                ("models", Value::list(vec![f.model("m1"), f.model("m2")])),
                (
                    "hessians",
                    Value::list(vec![f.fisher("f1", 50), f.fisher("f1", 50)]),
                ),
                ("base", f.model("base")),
                ("alpha", Value::Float(0.5)),
            ];
            if with_f0 {
                a.push(("base_hessian", f.fisher("f0", 7)));
                a.push(("base_scale", Value::Float(1e4)));
            }
            close(&read(&f.run(a).unwrap(), "w"), &mean, 1e-7);
        }
    }

    #[test]
    fn huge_delta_is_task_arithmetic_and_the_formula_holds_elementwise() {
        let f = Fixture::new();
        let (b, m1, m2) = (f.w("base"), f.w("m1"), f.w("m2"));
        let alpha = 0.7;
        // δ → ∞: every coefficient → 1, θ → θ₀ + α Σ τₜ, i.e. `merge task_arithmetic`.
        let mut a = f.pair();
        a.push(("delta0", Value::Float(1e30)));
        a.push(("alpha", Value::Float(alpha)));
        let ubgm = read(&f.run(a).unwrap(), "w");
        let ta_args = Args::new(vec![
            ("base", f.model("base")),
            ("models", Value::list(vec![f.model("m1"), f.model("m2")])),
            ("alpha", Value::Float(alpha)),
            ("dtype", Value::str("auto")),
        ]);
        let mut cx = OpCtx::for_test(f.p("ta"), 0);
        let ta = read(&TaskArithmetic.run(&mut cx, &ta_args).unwrap(), "w");
        close(
            &ubgm,
            &ta.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            1e-6,
        );
        // The formula itself, with a base Hessian, explicit scales and δ = 1e-12.
        let (f0, f1, f2) = (f.w("f0"), f.w("f1"), f.w("f2"));
        let (s0, s, d) = (300.0, [100.0, 40.0], 1e-12);
        let mut a = f.pair();
        a.extend([
            ("base_hessian", f.fisher("f0", 1)),
            ("base_scale", Value::Float(s0)),
            ("scales", floats(&s)),
            ("alpha", Value::Float(alpha)),
        ]);
        let got = read(&f.run(a).unwrap(), "w");
        let want: Vec<f64> = (0..6)
            .map(|j| {
                let (h1, h2, h0) = (s[0] * f1[j], s[1] * f2[j], s0 * f0[j]);
                let hbar = alpha * (h1 + h2) + h0 + d;
                b[j] + alpha
                    * ((h1 + h0 + d) / hbar * (m1[j] - b[j])
                        + (h2 + h0 + d) / hbar * (m2[j] - b[j]))
            })
            .collect();
        close(&got, &want, 1e-7);
        // Element 1: F₁ = F₂ = 0 and F₀ > 0 — coefficients s₀F₀/s₀F₀ = 1 (task arithmetic there).
        assert!((got[1] as f64 - (b[1] + alpha * (m1[1] - b[1] + m2[1] - b[1]))).abs() < 1e-6);
    }

    #[test]
    fn every_tensor_is_kept_and_defaults_come_from_the_records() {
        let f = Fixture::new();
        // Models recording their base (as `train full` writes it) and Fishers their counts.
        let rec = |n: &str| {
            let data = json!({"base": {"dir": f.p("base"), "key": "k0"}});
            art(Kind::Model, &f.p(n), data)
        };
        let short = vec![
            ("models", Value::list(vec![rec("m1"), rec("m2")])),
            (
                "hessians",
                Value::list(vec![f.fisher("f1", 120), f.fisher("f2", 30)]),
            ),
        ];
        let out = f.run(short).unwrap();
        let mut explicit = f.pair();
        explicit.push(("scales", floats(&[120.0, 30.0])));
        let want = f.run(explicit).unwrap();
        assert_eq!(read(&out, "w"), read(&want, "w"));
        // Every tensor of the base, same dtypes; integer buffers come from the base.
        let (o, b) = (
            ModelDir::open(&out.as_artifact().unwrap().dir).unwrap(),
            ModelDir::open(f.p("base")).unwrap(),
        );
        assert_eq!(o.signature(), b.signature());
        assert_eq!(o.read_raw("ids").unwrap(), b.read_raw("ids").unwrap());
        assert!(o.metadata()["smelt.base"] == "k0");
        // Errors: no recorded base, no example count, negative α outweighing the curvature.
        let plain = vec![
            ("models", Value::list(vec![f.model("m1")])),
            ("hessians", Value::list(vec![f.fisher("f1", 1)])),
        ];
        assert_eq!(f.run(plain).unwrap_err().code, NO_BASE);
        let no_n = art(Kind::Fisher, &f.p("f1"), json!({"examples": null}));
        let a = vec![
            ("models", Value::list(vec![f.model("m1")])),
            ("hessians", Value::list(vec![no_n])),
            ("base", f.model("base")),
        ];
        assert_eq!(f.run(a).unwrap_err().code, "smelt::merge::no_example_count");
        let mut a = f.pair();
        a.push(("alpha", Value::Float(-1.0)));
        let e = f.run(a).unwrap_err();
        assert_eq!(e.code, "smelt::merge::nonpositive_curvature");
        assert!(
            e.help.as_deref().unwrap_or("").contains("negative alpha"),
            "{e:?}"
        );
        // With a base Hessian large enough, negative α is fine (data removal).
        let mut a = f.pair();
        a.extend([
            ("alpha", Value::Float(-0.1)),
            ("base_hessian", f.fisher("f0", 1)),
            ("base_scale", Value::Float(1e6)),
            ("delta0", Value::Float(20.0)),
        ]);
        assert!(f.run(a).is_ok());
        let mut a = f.pair();
        a.push(("base_scale", Value::Float(3.0)));
        assert_eq!(f.run(a).unwrap_err().code, "smelt::run::argument");
    }
}
