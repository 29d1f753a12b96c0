//! `affinity first_order(gradients, subsets=100, subset_size=0.5, lambda=1.0, …)`: the task-
//! affinity matrix of paper 1 from first-order surrogates (methods.md §1.7–1.8).
//!
//! For each of `subsets` distinct task subsets (⌊subset_size·n⌋ tasks, from a stream seeded by
//! the node): fit the surrogate (`surrogate::fit`, variant `free_offset` or `fixed_offset`) on
//! the subset's projected gradients and outputs, map `Δ = P w` back into the adapter
//! (`tensors::gradients::back_project`: `θ0 + Δ`), load it into the real network and score
//! every task of the subset on `split` (accuracy, or −loss: higher is better). Then
//! `T_ij = mean over subsets containing i and j of task i's score`.
//!
//! The result is a task × task Matrix with side arrays: `counts` `[n, n]` (subsets containing
//! both), `members` `[K, n]` (1 where task t is in subset s), `scores` `[K, n]` (NaN outside),
//! `offset` `[K]` (the free variant's `c`, ideally ≈ −1; NaN for fixed), `w_norm`, `iterations`,
//! `fit_seconds`, `eval_seconds` `[K]`.

use super::subsets::{affinity, binomial, sample};
use super::surrogate::{fit, Variant};
use crate::cache::Key;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::estimate::log_odds::AdapterProbe;
use crate::ops::evaluate::P_EBATCH;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::gradients::{back_project, GradientSet};
use crate::tensors::matrix::{Axis, Matrix};
use crate::train::classify::ClsHead;
use crate::train::feed::{argmax, mean_ce, Feed, FormatSpec};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const CODE: &str = "smelt::run::affinity";
const SUBSET_SALT: u64 = 0x4146_4649_4e49_5459; // "AFFINITY"

pub struct FirstOrder;

static SIG: Signature = Signature {
    id: "affinity.first_order",
    version: 1,
    summary: "Task affinity T_ij = mean score of task i over sampled subsets containing i and j, each scored at θ0 + P·w of a first-order surrogate.",
    doc: "Per subset S (distinct, ⌊subset_size·n⌋ tasks, sampled from a stream seeded by the \
          node; all C(n,k) subsets when `subsets` ≥ C(n,k)): fit the L2 logistic surrogate of \
          methods.md §1.7 on the projected gradients g̃ and outputs f of S's examples — \
          free_offset: min ½(‖w‖²+c²) + (1/λ) Σ log(1+exp(−(g̃ᵀw − c·f))) (sklearn's problem, no \
          intercept); fixed_offset: min mean log(1+exp(−(g̃ᵀw + f))) + λ‖w‖² — by Newton's method \
          with a Cholesky factorisation; map Δ = P w back into the adapter, run the real network \
          at θ0 + Δ on `split` of every task in S and score it (accuracy, or −loss = minus the \
          cross-entropy of the class scores; higher is better). T_ij averages task i's scores \
          over the subsets containing both i and j (NaN if none; T_ii over those containing i). \
          Side arrays: counts, members, scores, offset, w_norm, iterations, fit_seconds, \
          eval_seconds.",
    params: &[
        Param::req("gradients", Ty::Gradients, "Per-example projected gradients (`estimate gradients`)."),
        Param::opt("subsets", Ty::Int, Const::Int(100), "Number of distinct subsets (at most C(n, k)).").range(1.0, 1e6),
        Param::opt("subset_size", Ty::Float, Const::Float(0.5), "Fraction of the tasks per subset (k = ⌊subset_size·n⌋, at least 1).").range(0.0, 1.0),
        Param::opt("lambda", Ty::Float, Const::Float(1.0), "Regularisation λ of the surrogate (C = 1/λ for free_offset).").range(1e-12, 1e12),
        Param::opt("variant", Ty::Enum(&["free_offset", "fixed_offset"]), Const::Str("free_offset"), "Surrogate objective (methods.md §1.7 variants A and B)."),
        Param::opt("metric", Ty::Enum(&["accuracy", "loss"]), Const::Str("accuracy"), "Score of a task at θ0 + Δ: accuracy, or −loss (cross-entropy of the class scores)."),
        Param::opt("split", Ty::Enum(&["dev", "test", "train"]), Const::Str("dev"), "Which split the real network is scored on."),
        Param::opt("seed", Ty::Int, Const::Int(0), "Extra seed for the subset stream."),
        P_EBATCH,
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"products\", \"restaurants\", \"topics\"]]\nlet a0 = train lora(lm, ts, max_steps=0, head=prompt)\nlet g = estimate gradients(lm, ts, adapter=a0, examples=64)\nlet T = affinity first_order(g, subsets=6, subset_size=0.5)"],
    reference: Some("methods.md §1.7–1.8 (EnsembleLoRA `fast_estimate_linear_regression_glue.py`); Li et al., ACL 2025, arXiv:2505.21930"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// An artifact recorded as `{"dir", "key", "data"}` in a gradient set.
pub fn recorded_artifact(kind: Kind, v: &serde_json::Value) -> Result<Artifact, OpError> {
    let bad = || {
        OpError::new(CODE, "the gradient set does not record its inputs")
            .with_help("re-run `estimate gradients` to rebuild it")
    };
    Ok(Artifact {
        kind,
        dir: v["dir"].as_str().ok_or_else(bad)?.into(),
        key: v["key"].as_str().and_then(Key::from_hex).ok_or_else(bad)?,
        data: v["data"].clone(),
    })
}

/// A task of the set, encoded for scoring on `split` in its recorded format.
pub struct Scorer {
    pub name: String,
    pub feed: Feed,
    pub head: Option<ClsHead>,
}

/// One scorer per task of `set` (in set order).
pub fn scorers(ap: &AdapterProbe, set: &GradientSet, split: &str) -> Result<Vec<Scorer>, OpError> {
    set.tasks
        .iter()
        .map(|t| {
            let task = TaskData::from_artifact(&recorded_artifact(Kind::Task, &t.task)?)?;
            let spec: FormatSpec = serde_json::from_value(t.format.clone()).map_err(|_| {
                OpError::new(CODE, format!("task `{}`: no recorded format", t.name))
            })?;
            let examples = task.split(split);
            if examples.is_empty() {
                return Err(OpError::new(
                    CODE,
                    format!("task `{}` has no `{split}` examples", t.name),
                )
                .with_help("score on another split (split=test|train)"));
            }
            let feed = Feed::new(&ap.run.lm, &spec, &task, examples)?;
            let head = ap.run.head(&task.name)?.filter(|_| feed.needs_head());
            Ok(Scorer {
                name: t.name.clone(),
                feed,
                head,
            })
        })
        .collect()
}

/// The score of the network's current parameters on one task (higher is better).
pub fn score(ap: &AdapterProbe, s: &Scorer, metric: &str, batch: usize) -> Result<f64, OpError> {
    let logits = s.feed.all_logits(&ap.run.lm, s.head.as_ref(), batch)?;
    ap.probe.take();
    let gold = s.feed.labels();
    Ok(match metric {
        "loss" => -mean_ce(&logits, &gold),
        _ => crate::train::accuracy(&argmax(&logits), &gold)?,
    })
}

/// Features and outputs of the tasks `members` of `set`, stacked.
pub fn stack(set: &GradientSet, members: &[usize]) -> (Vec<f32>, Vec<f64>) {
    let (mut x, mut f) = (Vec::new(), Vec::new());
    for &t in members {
        x.extend_from_slice(&set.tasks[t].features);
        f.extend_from_slice(&set.tasks[t].f0);
    }
    (x, f)
}

impl Operator for FirstOrder {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        Variant::parse(args.str("variant")?).map(|_| ())
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let g = args.artifact("gradients", Kind::Gradients)?;
        let set = GradientSet::read(&g.dir)?;
        let variant = Variant::parse(args.str("variant")?)?;
        let (lambda, metric, split) = (
            args.float("lambda")?,
            args.str("metric")?,
            args.str("split")?,
        );
        let batch = args.int("batch")?.max(1) as usize;
        let n = set.tasks.len();
        let k = ((args.float("subset_size")? * n as f64).floor() as usize).clamp(1, n.max(1));
        let requested = args.int("subsets")?.max(1) as usize;
        let seed =
            cx.seed ^ (args.int("seed")? as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ SUBSET_SALT;
        let subsets = sample(n, k, requested, seed);
        let adapter = recorded_artifact(Kind::Adapter, &set.adapter)?;
        let ap = AdapterProbe::load(&adapter, &cx.device)?;
        if ap.params != set.params {
            return Err(OpError::new(
                CODE,
                "the adapter's factors differ from those the gradients were taken for",
            )
            .with_help("re-run `estimate gradients` for this adapter"));
        }
        let scorers = scorers(&ap, &set, split)?;
        let d = set.dim();
        let kk = subsets.len();
        let mut members = vec![0f64; kk * n];
        let mut table = vec![f64::NAN; kk * n];
        let (mut offset, mut w_norm, mut iters, mut fit_s, mut eval_s) = (
            vec![f64::NAN; kk],
            vec![0f64; kk],
            vec![0f64; kk],
            vec![0f64; kk],
            vec![0f64; kk],
        );
        let mut scores = Vec::with_capacity(kk);
        let bar = cx.progress.then(|| indicatif::ProgressBar::new(kk as u64));
        for (s, sub) in subsets.iter().enumerate() {
            let t0 = Instant::now();
            let (x, f) = stack(&set, sub);
            let sol = fit(&x, &f, d, lambda, variant)?;
            fit_s[s] = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            ap.set_params(&back_project(&set, &sol.w, &cx.device)?)?;
            let sc = sub
                .iter()
                .map(|&t| score(&ap, &scorers[t], metric, batch))
                .collect::<Result<Vec<f64>, OpError>>()?;
            eval_s[s] = t1.elapsed().as_secs_f64();
            for (&t, &v) in sub.iter().zip(&sc) {
                members[s * n + t] = 1.0;
                table[s * n + t] = v;
            }
            offset[s] = sol.c.unwrap_or(f64::NAN);
            w_norm[s] = sol.w.iter().map(|v| v * v).sum::<f64>().sqrt();
            iters[s] = sol.iterations as f64;
            scores.push(sc);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let (t, counts) = affinity(n, &subsets, &scores);
        let names: Vec<String> = set.tasks.iter().map(|t| t.name.clone()).collect();
        let (used, skipped) = set.coords();
        let m = Matrix::new2(
            "affinity.first_order",
            Axis::new("task", names.clone()),
            Axis::new("task", names),
            t,
        )?
        .with_extra("counts", vec![n, n], counts)
        .with_extra("members", vec![kk, n], members)
        .with_extra("scores", vec![kk, n], table)
        .with_extra("offset", vec![kk], offset)
        .with_extra("w_norm", vec![kk], w_norm)
        .with_extra("iterations", vec![kk], iters)
        .with_extra("fit_seconds", vec![kk], fit_s.clone())
        .with_extra("eval_seconds", vec![kk], eval_s)
        .with_meta("variant", json!(variant.name()))
        .with_meta("lambda", json!(lambda))
        .with_meta("subsets", json!(kk))
        .with_meta("subsets_requested", json!(requested))
        .with_meta("subsets_possible", json!(binomial(n, k)))
        .with_meta("subset_size", json!(k))
        .with_meta("metric", json!(metric))
        .with_meta("higher_is_better", json!(true))
        .with_meta("split", json!(split))
        .with_meta("dim", json!(set.projection.dim))
        .with_meta("D_used", json!(used))
        .with_meta("D_skipped", json!(skipped))
        .with_meta("rows", json!("task i (score of i)"))
        .with_meta("cols", json!("task j (co-member)"))
        .with_meta("op", json!(SIG.id))
        .with_meta("op_version", json!(SIG.version));
        let dir = cx.out_dir.join("matrix");
        m.write(&dir)?;
        let mut data = m.artifact_data();
        data["mean_fit_seconds"] = json!(fit_s.iter().sum::<f64>() / kk.max(1) as f64);
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir,
            key: cx.key,
            data,
        })))
    }
}
