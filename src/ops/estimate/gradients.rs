//! `estimate gradients(model, tasks, adapter=…, dim=400, seed=0, …)`: per-example gradients of
//! the clipped gold-token log-odds with respect to a LoRA adapter's factors, projected by a
//! seeded Rademacher matrix (methods.md §1.5–1.6, stage 1a of paper 1).
//!
//! Batched: one probed backward per `batch` examples gives every example's gradient
//! (`log_odds::AdapterProbe`), never one backward per example. The gradient rows of up to
//! `PROJECT_ROWS` examples are projected together, `P` regenerated chunk by chunk from its seed
//! (`tensors::gradients::Projection`; `D × d` never in memory). The projection depends on
//! `seed` alone — not on the node — so sets estimated with the same seed share `P` whatever
//! their batch size, tasks or examples. Coordinates whose gradient is structurally zero (LoRA
//! `A` at `B = 0`) are skipped and counted in the output (`D_skipped`).

use super::fisher::subset;
use super::log_odds::AdapterProbe;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::{P_EHEAD, P_EMAX_LEN, P_ETEMPLATE, P_EWORDS};
use crate::ops::train::TASKS_TY;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::gradients::{GradientSet, Projection, TaskGradients};
use crate::train::feed::Feed;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;

const CODE: &str = "smelt::run::gradients";
/// Gradient rows projected together (bounds memory at `PROJECT_ROWS · D` floats).
pub const PROJECT_ROWS: usize = 64;
/// Salt mixed into the user's seed for the projection stream.
pub const PROJECTION_SALT: u64 = 0x0050_524f_4a45_4354; // "PROJECT"

pub struct EstimateGradients;

static SIG: Signature = Signature {
    id: "estimate.gradients",
    version: 1,
    summary: "Per-example LoRA gradients of the gold-token log-odds, projected by a seeded Rademacher matrix.",
    doc: "For every example of `split` of each task: f = log(p/(1−p)) of the gold token's \
          full-vocabulary probability p (label word at the mask through the MLM decoder, first \
          token of the answer choice for a decoder, class softmax for a cls head), p clipped as \
          the paper code (p > 0.9 ⇒ p − 0.01, p < 0.001 ⇒ p + 0.01); g = ∇f over the LoRA \
          factors of `adapter` in eval mode, computed in batches by gradient probes (one backward \
          per batch). Features g̃ = g P with P ∈ {±1/√dim} generated on the fly in seeded chunks \
          of rows (never D × dim in memory); `dim=none` (or −1) stores the exact gradients. P \
          depends on `seed` only, so equal seeds give equal features whatever `batch`. LoRA A \
          factors of modules whose B is zero (PEFT init) have structurally zero gradients: they \
          are skipped (not projected, never moved by back-projection) and counted as D_skipped. \
          Result: a Gradients set (per task features [N, dim] f32, f0 [N], labels [N], example \
          ids) recording the adapter, so a surrogate's weights w map back to θ0 + P w.",
    params: &[
        Param::req("model", Ty::Model, "The base model the adapter is bound to."),
        Param::req("tasks", TASKS_TY, "A task or a list of tasks."),
        Param::req("adapter", Ty::Adapter, "A LoRA adapter on `model` (θ0; e.g. `train lora(lm, t, max_steps=0)` for the PEFT initialisation)."),
        Param::opt("dim", Ty::Opt(&Ty::Int), Const::Int(400), "Projection dimension d; none or −1: no projection (exact gradients)."),
        Param::opt("seed", Ty::Int, Const::Int(0), "Projection seed (also the example subset's)."),
        Param::opt("split", Ty::Enum(&["train", "dev", "test"]), Const::Str("train"), "Which split's examples."),
        Param::opt("examples", Ty::Opt(&Ty::Int), Const::None, "At most this many examples per task (a seeded subset); default all."),
        Param::opt("batch", Ty::Int, Const::Int(8), "Examples per probed backward pass.").range(1.0, 1e6),
        P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN,
    ],
    returns: Ty::Gradients,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet a0 = train lora(lm, ts, max_steps=0, head=prompt)\nlet g = estimate gradients(lm, ts, adapter=a0, dim=400, examples=64)"],
    reference: Some("methods.md §1.5–1.6 (EnsembleLoRA `fast_estimate_compute_gradients_glue.py`); Li et al., ACL 2025, arXiv:2505.21930"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

fn opt_str<'a>(args: &'a Args, name: &str) -> Result<Option<&'a str>, OpError> {
    match args.get(name)? {
        Value::None => Ok(None),
        _ => args.str(name).map(Some),
    }
}

/// `dim` as an optional positive size (`none` / −1: exact).
pub fn dim_arg(args: &Args) -> Result<Option<usize>, OpError> {
    match args.get("dim")? {
        Value::None => Ok(None),
        _ => match args.int("dim")? {
            -1 => Ok(None),
            d if d > 0 => Ok(Some(d as usize)),
            d => Err(OpError::new(CODE, format!("dim = {d} is not a dimension"))
                .with_help("use a positive dimension, or none (−1) for exact gradients")),
        },
    }
}

/// The task artifacts of `tasks` (one or a list).
pub fn task_artifacts<'a>(args: &'a Args, name: &str) -> Result<Vec<&'a Arc<Artifact>>, OpError> {
    match args.get(name)? {
        Value::List(_) => args.artifacts(name, Kind::Task),
        _ => Ok(vec![args.artifact(name, Kind::Task)?]),
    }
}

/// The projection seed for the user's `seed`.
pub fn projection_seed(seed: i64) -> u64 {
    (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ PROJECTION_SALT
}

/// What `estimate gradients` computes, outside the operator (tests and benchmarks call it).
pub struct Request<'a> {
    pub dim: Option<usize>,
    pub seed: i64,
    pub split: &'a str,
    pub examples: Option<usize>,
    pub batch: usize,
    pub head: &'a str,
    pub template: Option<&'a str>,
    pub words: Option<&'a str>,
    pub max_len: usize,
    pub progress: bool,
}

/// Per-example projected gradients of every task (the model, adapter and task artifacts are
/// recorded in the set).
pub fn estimate(
    ap: &AdapterProbe,
    tasks: &[&Arc<Artifact>],
    model: &Artifact,
    adapter: &Artifact,
    r: &Request,
) -> Result<GradientSet, OpError> {
    let start = std::time::Instant::now();
    let projection = Projection {
        seed: projection_seed(r.seed),
        dim: r.dim,
        rows: ap.used(),
    };
    let mut out = Vec::new();
    let mut total = 0;
    for a in tasks {
        let task = TaskData::from_artifact(a)?;
        let all = task.split(r.split);
        if all.is_empty() {
            return Err(OpError::new(
                CODE,
                format!("task `{}` has no `{}` examples", task.name, r.split),
            ));
        }
        let keep = subset(all.len(), r.examples, r.seed as u64);
        let examples: Vec<_> = keep.iter().map(|&i| all[i].clone()).collect();
        let spec = ap.format(&task, r.head, r.template, r.words, r.max_len)?;
        let feed = Feed::new(&ap.run.lm, &spec, &task, &examples)?;
        let gold = ap.gold(&spec, &task)?;
        let head = ap.run.head(&task.name)?.filter(|_| feed.needs_head());
        let bar = r
            .progress
            .then(|| indicatif::ProgressBar::new(feed.len() as u64));
        let mut features = Vec::with_capacity(feed.len() * projection.out_dim());
        let mut f0 = Vec::with_capacity(feed.len());
        let idx: Vec<usize> = (0..feed.len()).collect();
        let group = PROJECT_ROWS.max(r.batch);
        for block in idx.chunks(group) {
            let mut rows = Vec::with_capacity(block.len() * projection.rows);
            for chunk in block.chunks(r.batch.max(1)) {
                let (g, f) = ap.rows(&feed, &gold, head.as_ref(), chunk)?;
                rows.extend(g);
                f0.extend(f);
                if let Some(b) = &bar {
                    b.inc(chunk.len() as u64);
                }
            }
            features.extend(projection.project(&rows, block.len())?);
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        total += feed.len();
        out.push(TaskGradients {
            name: task.name.clone(),
            ids: examples.iter().map(|e| e.id.to_string()).collect(),
            features,
            f0,
            labels: feed.labels(),
            format: json!(spec),
            task: json!({"dir": a.dir, "key": a.key.hex(), "data": a.data}),
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(GradientSet {
        projection,
        params: ap.params.clone(),
        tasks: out,
        model: json!({"dir": model.dir, "key": model.key.hex()}),
        adapter: json!({"dir": adapter.dir, "key": adapter.key.hex(), "data": adapter.data}),
        meta: json!({
            "functional": "clipped gold-token log-odds (methods.md §1.5)",
            "split": r.split,
            "batch": r.batch,
            "user_seed": r.seed,
            "examples": total,
            "seconds": seconds,
            "examples_per_second": total as f64 / seconds.max(1e-9),
        }),
    })
}

impl Operator for EstimateGradients {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        dim_arg(args).map(|_| ())
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let adapter = args.artifact("adapter", Kind::Adapter)?;
        let base = crate::ops::train::runnable::base_dir(adapter)?;
        let same =
            |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            };
        if !same(&base, &model.dir) {
            return Err(OpError::new(
                CODE,
                format!(
                    "the adapter is bound to {}, not to `model` ({})",
                    base.display(),
                    model.dir.display()
                ),
            )
            .with_help("pass the adapter's own base model"));
        }
        let ap = AdapterProbe::load(adapter, &cx.device)?;
        let examples = match args.get("examples")? {
            Value::None => None,
            _ => Some(args.int("examples")?.max(1) as usize),
        };
        let r = Request {
            dim: dim_arg(args)?,
            seed: args.int("seed")?,
            split: args.str("split")?,
            examples,
            batch: args.int("batch")?.max(1) as usize,
            head: args.str("head")?,
            template: opt_str(args, "template")?,
            words: opt_str(args, "words")?,
            max_len: args.int("max_len")?.max(1) as usize,
            progress: cx.progress,
        };
        let tasks = task_artifacts(args, "tasks")?;
        let set = estimate(&ap, &tasks, model, adapter, &r)?;
        let dir = cx.out_dir.join("gradients");
        set.write(&dir)?;
        let mut data = set.summary();
        data["op"] = json!(SIG.id);
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Gradients,
            dir,
            key: cx.key,
            data,
        })))
    }
}
