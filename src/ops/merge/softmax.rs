//! `merge softmax(deltas, scores, temperature=0.1, sign=positive)`: similarity-weighted
//! averaging of source deltas (Lv et al. 2023, paper 2 §2.6).
//!
//! `wⱼ = softmax(sign·sⱼ/τ)` over the sources, then `δ = Σⱼ wⱼ δⱼ`. For adapters the sum runs
//! tensor by tensor (LoRA A and B apart, prefix embeddings and MLP, bottleneck down/up — as the
//! paper does; `mode=delta` merges LoRA exactly in ΔW space instead). For models it is the
//! weighted average of the models, which equals `base + Σⱼ wⱼ τⱼ` for task vectors
//! `τⱼ = θⱼ − base` because the weights sum to 1. `sign=negative` is for scores where lower
//! means more similar (loss, KL, EL2N, GraNd, Euclidean distance); `positive` for similarities
//! (cosine, performance gain). The weights, scores, temperature and sign are recorded in the
//! result's data (`merge`) and provenance.
//!
//! Scores come as a list (one per delta) or as a target × source `Matrix` from `similarity …`:
//! then `target=NAME` picks the row, `deltas` are matched to the matrix's source columns by
//! position, the target's own column (its label equals the target's) is dropped from the
//! softmax and the merge, and `temperature`/`sign` default to the values the matrix records
//! (the paper's for that score) instead of 0.1/positive. The record then also holds the whole
//! row of weights (`row_weights`, 0 for the target itself) and the source labels.

use super::adapter_params::{
    filter_provenance, follows_input, run_adapter_merge, validate_inputs, MERGEABLE, MERGED,
    MODE_PARAM, RANK_PARAM,
};
use super::adapter_set::{inputs, Inputs};
use super::Granularity;
use super::{
    open_models, out_dtype, provenance, stream_merge, weighted_sum, DTYPE_PARAM, EXCLUDE_PARAM,
    INCLUDE_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;

pub struct Softmax;

pub const SIGNS: &[&str] = &["positive", "negative"];

static SIG: Signature = Signature {
    id: "merge.softmax",
    version: 2,
    summary: "Similarity-weighted average of deltas: w = softmax(sign·s/τ), δ = Σ wⱼ δⱼ.",
    doc: "One score per source, or a `similarity …` Matrix with `target=NAME`: that row, without the \
          target's own column, with the matrix's recorded sign and τ unless given here. Adapters of one base are merged tensor by tensor (LoRA A and B \
          apart, prefixes with their MLP, bottleneck adapters), as paper 2 does; models give their \
          weighted average (= base + Σ wⱼ τⱼ, since Σ w = 1). τ → ∞ gives the plain average, τ → 0 \
          the single best-scored source. The weights are recorded in the result's data (`merge.weights`).",
    params: &[
        Param::req("deltas", MERGEABLE, "Source adapters of one base model, or fine-tuned models of one base."),
        Param::req("scores", Ty::Either(&Ty::List(&Ty::Float), &Ty::Matrix), "One similarity score per source, or a target × source Matrix from `similarity …` (with `target`)."),
        Param::opt("target", Ty::Opt(&Ty::Str), Const::None, "With a score Matrix: the target row (a task name); its own source column is left out. Optional for a one-row matrix."),
        Param::opt("temperature", Ty::Opt(&Ty::Float), Const::None, "Softmax temperature τ > 0 (paper 2: 0.1; smaller is sharper). Default: the matrix's recorded τ, else 0.1.").range(0.0, 1e300),
        Param::opt("sign", Ty::Opt(&Ty::Enum(SIGNS)), Const::None, "`positive`: a higher score gets more weight (cosine, performance); `negative`: a lower score does (loss, KL, EL2N, GraNd, distance). Default: the matrix's recorded sign, else positive."),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        DTYPE_PARAM,
        MODE_PARAM,
        RANK_PARAM,
    ],
    returns: MERGED,
    ret_fn: Some(follows_input),
    examples: &[
        "let m = load model(\"assets/models/minilm-l3-v8k\")\nlet s = merge softmax([m, m], [0.2, 0.9], temperature=0.5)",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet init = merge softmax(loras, [0.41, 0.52, 1.30], sign=negative)",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity loss(loras, ts)\nlet inits = [merge softmax(loras, s, target=t.name) for t in ts]",
    ],
    reference: Some("Lv et al., Parameter-efficient Weight Ensembling Facilitates Task-level Knowledge Transfer (ACL 2023)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[("deltas", "scores")],
    cheap: false,
};

/// `softmax(sign·s/τ)`, computed stably (shifted by the maximum) in f64.
pub fn softmax_weights(scores: &[f64], temperature: f64, sign: f64) -> Result<Vec<f64>, OpError> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(OpError::new(
            "smelt::run::argument",
            format!("temperature must be positive and finite, got {temperature}"),
        )
        .with_help("paper 2 uses 0.1; larger temperatures flatten the weights"));
    }
    if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
        return Err(OpError::new(
            "smelt::run::argument",
            format!("score {s} is not a finite number"),
        ));
    }
    let z: Vec<f64> = scores.iter().map(|s| sign * s / temperature).collect();
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let total: f64 = e.iter().sum();
    Ok(e.iter().map(|x| x / total).collect())
}

/// The merge weights: one per kept delta, the kept deltas' indices, and the record.
fn weights_of(
    args: &Args,
    n_deltas: usize,
) -> Result<(Vec<f64>, Vec<usize>, serde_json::Value), OpError> {
    let given_t = args.opt_float("temperature")?;
    let given_s = match args.get("sign")? {
        Value::None => None,
        _ => Some(args.str("sign")?.to_string()),
    };
    let sign_of = |s: &str| if s == "negative" { -1.0 } else { 1.0 };
    let Value::Artifact(a) = args.get("scores")? else {
        let scores = args.floats("scores")?;
        if args.get("target")? != &Value::None {
            return Err(OpError::new(
                "smelt::run::argument",
                "`target` selects a row of a score Matrix; the scores here are a list",
            )
            .with_help("drop `target`, or pass the Matrix from `similarity …`"));
        }
        if scores.len() != n_deltas {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!("{n_deltas} deltas but {} scores", scores.len()),
            ));
        }
        let temperature = given_t.unwrap_or(0.1);
        let sign = given_s.unwrap_or_else(|| "positive".into());
        let w = softmax_weights(&scores, temperature, sign_of(&sign))?;
        let record = json!({"scores": scores, "temperature": temperature, "sign": sign});
        return Ok((w, (0..scores.len()).collect(), record));
    };
    let m = Matrix::read(&a.dir)?;
    let row_of = matrix_row(&m, args)?;
    let (rows, cols) = (&m.axes[0].labels, &m.axes[1].labels);
    if m.cols() != n_deltas {
        return Err(OpError::new(
            "smelt::run::length_mismatch",
            format!("{n_deltas} deltas but the score matrix has {} sources", m.cols()),
        )
        .with_help("pass the deltas in the order of the matrix's sources (the list `similarity` was given)"));
    }
    let target = rows.get(row_of).cloned().unwrap_or_default();
    let row = m.row(row_of);
    let keep = source_columns(&m, row_of);
    let scores: Vec<f64> = keep.iter().map(|&j| row[j]).collect();
    let (temperature, sign) = matrix_direction(&m, given_t, given_s);
    let w = softmax_weights(&scores, temperature, sign_of(&sign))
        .map_err(|e| e.context(format!("row `{target}` of the score matrix `{}`", m.what)))?;
    let mut row_weights = vec![0.0; m.cols()];
    for (k, &j) in keep.iter().enumerate() {
        row_weights[j] = w[k];
    }
    let record = json!({
        "scores": scores,
        "temperature": temperature,
        "sign": sign,
        "target": target,
        "similarity": m.what,
        "sources": keep.iter().map(|&j| cols.get(j).cloned().unwrap_or_default()).collect::<Vec<_>>(),
        "all_sources": cols,
        "row_weights": row_weights,
    });
    Ok((w, keep, record))
}

/// The source columns a target row's weights range over: every column except the one labelled
/// like the row (all of them when the row has no label).
pub fn source_columns(m: &Matrix, row: usize) -> Vec<usize> {
    let target = m.axes[0].labels.get(row).map_or("", String::as_str);
    let cols = &m.axes[1].labels;
    (0..m.cols())
        .filter(|&j| cols.get(j).is_none_or(|c| c != target || target.is_empty()))
        .collect()
}

/// Softmax temperature and direction for a score matrix: the given ones, else those the matrix
/// records (the paper's for its similarity), else τ = 0.1 and `positive`.
pub fn matrix_direction(
    m: &Matrix,
    temperature: Option<f64>,
    sign: Option<String>,
) -> (f64, String) {
    let temperature = temperature
        .or_else(|| m.meta.get("temperature").and_then(|v| v.as_f64()))
        .unwrap_or(0.1);
    let sign = sign
        .or_else(|| {
            m.meta
                .get("sign")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "positive".into());
    (temperature, sign)
}

/// The row of a score matrix the `target` argument names (the only row when not given).
fn matrix_row(m: &Matrix, args: &Args) -> Result<usize, OpError> {
    if m.shape.len() != 2 {
        return Err(OpError::new(
            "smelt::run::argument",
            format!("`{}` is not a 2-D target × source matrix", m.what),
        ));
    }
    let rows = &m.axes[0].labels;
    match args.get("target")? {
        Value::None if m.rows() == 1 => Ok(0),
        Value::None => Err(OpError::new(
            "smelt::run::argument",
            format!("the score matrix has {} target rows; which one?", m.rows()),
        )
        .with_help(format!("add target=NAME, one of: {}", rows.join(", ")))),
        _ => {
            let t = args.str("target")?;
            rows.iter().position(|r| r == t).ok_or_else(|| {
                OpError::new(
                    "smelt::run::argument",
                    format!("`{t}` is not a target of the score matrix"),
                )
                .with_help(format!("targets: {}", rows.join(", ")))
            })
        }
    }
}

impl Operator for Softmax {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        if let Some(t) = args.get("temperature")?.as_f64() {
            softmax_weights(&[], t, 1.0)?;
        }
        validate_inputs(args, "deltas")
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let inputs = inputs(args.list("deltas")?, "merge softmax")?;
        let arts = match &inputs {
            Inputs::Models(a) | Inputs::Adapters(a) => a,
        };
        let (weights, keep, mut record) = weights_of(args, arts.len())?;
        if let Inputs::Adapters(arts) = &inputs {
            let id = (SIG.id, SIG.version);
            let kept: Vec<_> = keep.iter().map(|&j| arts[j]).collect();
            return run_adapter_merge(cx, args, &kept, id, &weights, record);
        }
        let all = args.artifacts("deltas", Kind::Model)?;
        let models: Vec<_> = keep.iter().map(|&j| all[j]).collect();
        let dirs = open_models(&models)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let w32: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &models,
            &format!("weights={weights:?}, {record}{}", filter_provenance(args)),
        );
        let v = stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |_, xs| Ok(weighted_sum(xs, &w32)),
        )?;
        let Value::Artifact(a) = v else {
            return Ok(v);
        };
        let mut a: Artifact = (*a).clone();
        record["op"] = json!(SIG.id);
        record["weights"] = json!(weights);
        record["inputs"] = json!(models
            .iter()
            .map(|m| json!({"key": m.key.hex(), "label": crate::ops::train::runnable::label_of(m)}))
            .collect::<Vec<_>>());
        a.data["merge"] = record;
        Ok(Value::Artifact(Arc::new(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::adapter_fixtures::lora;
    use crate::ops::merge::testutil::tiny_model;
    use crate::tensors::header::Dtype;
    use crate::tensors::model_dir::ModelDir;
    use std::path::Path;

    fn model(dir: &Path) -> Value {
        Value::Artifact(Arc::new(Artifact {
            kind: Kind::Model,
            dir: dir.to_path_buf(),
            key: crate::cache::Key::of_bytes(dir.to_string_lossy().as_bytes()),
            data: serde_json::Value::Null,
        }))
    }

    fn args(deltas: Vec<Value>, scores: &[f64], temperature: f64, sign: &str) -> Args {
        Args::new(vec![
            ("deltas", Value::list(deltas)),
            (
                "scores",
                Value::list(scores.iter().map(|&s| Value::Float(s)).collect()),
            ),
            ("target", Value::None),
            ("temperature", Value::Float(temperature)),
            ("sign", Value::str(sign)),
            ("dtype", Value::str("auto")),
            ("mode", Value::str("factors")),
            ("rank", Value::None),
        ])
    }

    fn three_models(root: &Path) -> Vec<Value> {
        let vals: [([f32; 4], [f32; 2]); 3] = [
            ([1.0, 2.0, 3.0, 4.0], [1.0, -1.0]),
            ([0.5, 0.0, -2.0, 8.0], [3.0, 0.25]),
            ([-1.0, 4.0, 1.0, 0.0], [-2.0, 5.0]),
        ];
        vals.iter()
            .enumerate()
            .map(|(i, (a, b))| {
                let d = root.join(format!("m{i}"));
                tiny_model(&d, a, b, Dtype::F32);
                model(&d)
            })
            .collect()
    }

    #[test]
    fn models_hand_computed_and_infinite_temperature_is_the_average() {
        let t = tempfile::tempdir().unwrap();
        let ms = three_models(t.path());
        let mut cx = OpCtx::for_test(t.path().join("s"), 0);
        let out = Softmax
            .run(
                &mut cx,
                &args(ms.clone(), &[1.0, 2.0, 3.0], 0.5, "positive"),
            )
            .unwrap();
        let a = out.as_artifact().unwrap();
        let got = ModelDir::open(&a.dir).unwrap().read_f32("a").unwrap();
        let e = [2f64.exp(), 4f64.exp(), 6f64.exp()];
        let w: Vec<f64> = e.iter().map(|x| x / e.iter().sum::<f64>()).collect();
        let xs = [
            [1.0, 2.0, 3.0, 4.0],
            [0.5, 0.0, -2.0, 8.0],
            [-1.0, 4.0, 1.0, 0.0],
        ];
        for (k, g) in got.iter().enumerate() {
            let want: f64 = (0..3).map(|j| w[j] * xs[j][k]).sum();
            assert!((*g as f64 - want).abs() < 1e-6, "{got:?}");
        }
        let rec: Vec<f64> = serde_json::from_value(a.data["merge"]["weights"].clone()).unwrap();
        assert!(
            rec.iter().zip(&w).all(|(x, y)| (x - y).abs() < 1e-15),
            "{rec:?}"
        );
        assert_eq!(a.data["merge"]["temperature"], json!(0.5));
        let mut cx = OpCtx::for_test(t.path().join("flat"), 0);
        let flat = Softmax
            .run(
                &mut cx,
                &args(ms.clone(), &[1.0, 2.0, 3.0], 1e9, "negative"),
            )
            .unwrap();
        let mut cx = OpCtx::for_test(t.path().join("avg"), 0);
        let avg_args = Args::new(vec![
            ("models", Value::list(ms)),
            ("dtype", Value::str("auto")),
            ("mode", Value::str("factors")),
            ("rank", Value::None),
        ]);
        let avg = super::super::average::Average
            .run(&mut cx, &avg_args)
            .unwrap();
        for name in ["a", "b"] {
            let f = ModelDir::open(&flat.as_artifact().unwrap().dir)
                .unwrap()
                .read_f32(name)
                .unwrap();
            let g = ModelDir::open(&avg.as_artifact().unwrap().dir)
                .unwrap()
                .read_f32(name)
                .unwrap();
            for (x, y) in f.iter().zip(&g) {
                assert!((x - y).abs() < 1e-6, "{f:?} vs {g:?}");
            }
        }
    }

    #[test]
    fn adapters_are_merged_factor_wise_with_the_weights_recorded() {
        let t = tempfile::tempdir().unwrap();
        let mk = |n: &str, a: f32| {
            let v = |k: f32| (0..6).map(|i| k * (i as f32 + 1.0)).collect::<Vec<f32>>();
            Value::Artifact(lora(&t.path().join(n), 2, 4.0, v(a), v(-a), (3, 3), "b"))
        };
        let ads = vec![mk("x", 1.0), mk("y", 2.0), mk("z", 4.0)];
        let mut cx = OpCtx::for_test(t.path().join("m"), 0);
        let out = Softmax
            .run(&mut cx, &args(ads, &[0.3, 0.1, 0.2], 0.1, "negative"))
            .unwrap();
        let a = out.as_artifact().unwrap();
        assert_eq!(a.kind, Kind::Adapter);
        let w = softmax_weights(&[0.3, 0.1, 0.2], 0.1, -1.0).unwrap();
        assert!(w[1] > w[2] && w[2] > w[0], "lower scores weigh more: {w:?}");
        assert_eq!(a.data["merge"]["weights"], json!(w));
        assert_eq!(a.data["merge"]["sign"], "negative");
        let got = crate::nn::peft::io::read_safetensors(
            &a.dir.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let va = got["base_model.model.m.q.lora_A.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let k: f64 = w[0] + 2.0 * w[1] + 4.0 * w[2];
        for (i, x) in va.iter().enumerate() {
            assert!((*x as f64 - k * (i as f64 + 1.0)).abs() < 1e-5, "{va:?}");
        }
    }

    #[test]
    fn unequal_lengths_and_adapter_results_at_check_time() {
        let check = |body: &str| {
            let text = format!(
                "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet a = train lora(lm, t, head=prompt)\n{body}\n"
            );
            let mut s = crate::session::Session::new();
            s.load_source("t.exp", &text, Path::new("t.exp"), &[])
                .err()
                .map(|ds| ds.iter().map(|d| d.code).collect::<Vec<_>>())
        };
        let e = check("let x = merge softmax([lm, lm], [0.1, 0.2, 0.3])").unwrap();
        assert_eq!(e, vec!["smelt::check::length_mismatch"]);
        // the result type follows the input: adapters give an Adapter, models a Model
        assert_eq!(
            check("let m = model apply(merge softmax([a, a], [1.0, 2.0]))"),
            None
        );
        assert_eq!(
            check("let m = model apply(merge average([a, a], mode=delta))"),
            None
        );
        assert!(check("let m = model apply(merge linear([lm, lm], [1.0, 2.0]))").is_some());
    }

    #[test]
    fn a_score_matrix_row_drops_the_target_and_brings_its_direction() {
        use crate::tensors::matrix::{Axis, Matrix};
        let t = tempfile::tempdir().unwrap();
        let ms = three_models(t.path());
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let nan = f64::NAN;
        let m = Matrix::new2(
            "similarity.loss",
            Axis::new("target", names.clone()),
            Axis::new("source", names),
            vec![nan, 0.3, 0.5, 0.2, nan, 0.6, 0.4, 0.1, nan],
        )
        .unwrap()
        .with_meta("sign", json!("negative"))
        .with_meta("temperature", json!(0.25));
        let dir = t.path().join("matrix");
        m.write(&dir).unwrap();
        let scores = Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir,
            key: crate::cache::Key::of_bytes(b"m"),
            data: m.artifact_data(),
        }));
        let margs = |target: Value, temperature: Value| {
            Args::new(vec![
                ("deltas", Value::list(ms.clone())),
                ("scores", scores.clone()),
                ("target", target),
                ("temperature", temperature),
                ("sign", Value::None),
                ("dtype", Value::str("auto")),
                ("mode", Value::str("factors")),
                ("rank", Value::None),
            ])
        };
        let mut cx = OpCtx::for_test(t.path().join("s"), 0);
        let out = Softmax
            .run(&mut cx, &margs(Value::str("b"), Value::None))
            .unwrap();
        let a = out.as_artifact().unwrap();
        // Row b: sources a (0.2) and c (0.6), sign negative and τ = 0.25 from the matrix.
        let (za, zc) = ((-0.2f64 / 0.25).exp(), (-0.6f64 / 0.25).exp());
        let w = [za / (za + zc), zc / (za + zc)];
        let rec = &a.data["merge"];
        assert_eq!(rec["target"], "b");
        assert_eq!(rec["sign"], "negative");
        assert_eq!(rec["temperature"], json!(0.25));
        assert_eq!(rec["sources"], json!(["a", "c"]));
        let row: Vec<f64> = serde_json::from_value(rec["row_weights"].clone()).unwrap();
        assert_eq!(row[1], 0.0);
        assert!((row[0] - w[0]).abs() < 1e-15 && (row[2] - w[1]).abs() < 1e-15);
        let got = ModelDir::open(&a.dir).unwrap().read_f32("a").unwrap();
        let (xa, xc) = ([1.0, 2.0, 3.0, 4.0], [-1.0, 4.0, 1.0, 0.0]);
        for k in 0..4 {
            let want = w[0] * xa[k] + w[1] * xc[k];
            assert!((got[k] as f64 - want).abs() < 1e-6, "{got:?}");
        }
        // An explicit temperature wins; a missing or unknown target is an error.
        let mut cx = OpCtx::for_test(t.path().join("t"), 0);
        let out = Softmax
            .run(&mut cx, &margs(Value::str("b"), Value::Float(1.0)))
            .unwrap();
        assert_eq!(
            out.as_artifact().unwrap().data["merge"]["temperature"],
            json!(1.0)
        );
        let mut cx = OpCtx::for_test(t.path().join("u"), 0);
        let e = Softmax
            .run(&mut cx, &margs(Value::None, Value::None))
            .unwrap_err();
        assert!(e.message.contains("3 target rows"), "{}", e.message);
        let e = Softmax
            .run(&mut cx, &margs(Value::str("z"), Value::None))
            .unwrap_err();
        assert!(e.message.contains("`z` is not a target"), "{}", e.message);
    }

    #[test]
    fn hand_computed_three_source_weights() {
        // s = [1, 2, 3], τ = 0.5: z = [2, 4, 6]; w = e^z / Σ e^z.
        let w = softmax_weights(&[1.0, 2.0, 3.0], 0.5, 1.0).unwrap();
        let e = [2f64.exp(), 4f64.exp(), 6f64.exp()];
        let t: f64 = e.iter().sum();
        for (got, want) in w.iter().zip(e.iter().map(|x| x / t)) {
            assert!((got - want).abs() < 1e-15, "{w:?}");
        }
        assert!((w[0] - 0.015_876_239_976_466_765).abs() < 1e-15);
        assert!((w[2] - 0.866_813_332_197_334_8).abs() < 1e-15);
    }

    #[test]
    fn sign_reverses_the_order_and_huge_temperatures_are_uniform() {
        let s = [0.3, -1.0, 2.5, 0.0];
        let pos = softmax_weights(&s, 0.1, 1.0).unwrap();
        let neg = softmax_weights(&s, 0.1, -1.0).unwrap();
        let order = |w: &[f64]| {
            let mut i: Vec<usize> = (0..w.len()).collect();
            i.sort_by(|a, b| w[*b].total_cmp(&w[*a]));
            i
        };
        let mut rev = order(&neg);
        rev.reverse();
        assert_eq!(order(&pos), vec![2, 0, 3, 1]);
        assert_eq!(order(&pos), rev);
        let flat = softmax_weights(&s, 1e9, 1.0).unwrap();
        assert!(flat.iter().all(|w| (w - 0.25).abs() < 1e-9), "{flat:?}");
        // Scores far apart do not overflow: the best source takes all the weight.
        let sharp = softmax_weights(&[1000.0, 0.0], 0.1, 1.0).unwrap();
        assert_eq!(sharp, vec![1.0, 0.0]);
        assert!(softmax_weights(&s, 0.0, 1.0).is_err());
        assert!(softmax_weights(&[f64::NAN], 1.0, 1.0).is_err());
    }
}
