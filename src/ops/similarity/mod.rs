//! `similarity loss|kl|el2n|cosine_logits|grand|cosine_weights|euclidean|performance`: task
//! similarity scores `s_ij` between a target task `i` and a source delta `j` (paper 2 §2.5,
//! Lv et al. 2023), as a labelled target × source `Matrix`.
//!
//! Shape of every call: `similarity METHOD(deltas, tasks, …)` where `deltas[j]` was trained on
//! `tasks[j]`. Every task is a target (rows, axis `target`) and every delta a source (columns,
//! axis `source`, labelled with the name of the task it was trained on), so the matrix is
//! square and leave-one-out ready. **The diagonal is NaN**: a task is not its own source, and
//! NaN cannot be mistaken for a score (the inline JSON payload shows it as `null`). `merge
//! softmax(deltas, S, target=NAME)` reads one row, drops the target's own column and uses the
//! direction and temperature recorded in the matrix's `meta` (`sign`, `temperature`) unless it
//! is given its own.
//!
//! How the paper's T5 quantities map onto smelt's models: the data-based scores look at the
//! target's examples fed the way `evaluate` feeds them (the format recorded when the source was
//! trained on a task of that name, else its head, else the default prompt; `head`/`template`/
//! `words` override). "Probabilities" are the softmax of the *class scores* (label-word logits at
//! the mask, head logits, or the first token of each answer choice) — one position per example,
//! where T5 has one per label token. Loss and GraNd use the training loss (`Feed::loss`: the
//! class cross-entropy, or the causal-LM loss on the answer tokens for decoders).
//!
//! Shared here: the parameters, the (target, source) loop, the target feed, class
//! probabilities and the matrix writer.

pub mod block;
pub mod block_cosine;
pub mod cosine_logits;
pub mod cosine_weights;
pub mod el2n;
pub mod euclidean;
pub mod grand;
pub mod granular;
pub mod kl;
pub mod loss;
pub mod performance;
mod tune;
pub mod weights;

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::{
    Overrides, P_EBATCH, P_EHEAD, P_EMAX_LEN, P_ETEMPLATE, P_EWORDS, RUNNABLE, SPLITS,
};
use crate::ops::merge::softmax::SIGNS;
use crate::ops::train::runnable::{runnable_args, Runnable};
use crate::ops::{Args, Const, OpCtx, Param};
use crate::train::classify::ClsHead;
use crate::train::delta::Delta;
use crate::train::feed::{Feed, FormatSpec};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use candle_core::{Tensor, Var};
use serde_json::json;
use std::sync::Arc;

pub const P_DELTAS: Param = Param::req(
    "deltas",
    Ty::List(&RUNNABLE),
    "Source deltas: adapters (or fine-tuned models); `deltas[j]` was trained on `tasks[j]`.",
);
pub const P_ADAPTERS: Param = Param::req(
    "deltas",
    Ty::List(&Ty::Adapter),
    "Source adapters of one base; `deltas[j]` was trained on `tasks[j]`.",
);
pub const P_TASKS: Param = Param::req(
    "tasks",
    Ty::List(&Ty::Task),
    "One task per delta: every task is a target (a row), and names the source trained on it (a column).",
);
pub const P_TUNED: Param = Param::req(
    "tuned",
    Ty::List(&RUNNABLE),
    "One per task: the target's delta tuned from random init on its own (few-shot) data (paper 2's \"64_tune\" checkpoints).",
);
pub const P_SPLIT: Param = Param::opt(
    "split",
    Ty::Enum(SPLITS),
    Const::Str("dev"),
    "The target's split the score looks at (paper 2: dev).",
);
pub const P_EXAMPLES: Param = Param::opt(
    "examples",
    Ty::Opt(&Ty::Int),
    Const::Int(50),
    "Use the first this many examples of the split, in order (paper 2: the first dev batch of 50); `none` = all.",
)
.range(1.0, 1e9);
pub const P_ALL_EXAMPLES: Param = Param::opt(
    "examples",
    Ty::Opt(&Ty::Int),
    Const::None,
    "Use the first this many examples of the split, in order; `none` = all (paper 2 uses every dev batch here).",
)
.range(1.0, 1e9);

/// The direction parameter with a method's default.
pub const fn p_sign(default: &'static str) -> Param {
    Param::opt("sign", Ty::Enum(SIGNS), Const::Str(default), "How the score enters `merge softmax` (recorded in the matrix): `negative` = lower is more similar (losses, distances), `positive` = higher is.")
}

/// The temperature parameter with a method's default.
pub const fn p_temperature(default: f64) -> Param {
    Param::opt(
        "temperature",
        Ty::Float,
        Const::Float(default),
        "Softmax temperature τ recorded for `merge softmax` (paper 2's value for this score as the default).",
    )
    .range(0.0, 1e300)
}

/// The format overrides every data-based score takes (those of `evaluate`).
pub const FORMAT_PARAMS: [Param; 5] = [P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN, P_EBATCH];

const LEN: &str = "smelt::run::length_mismatch";

/// The sources and targets of a call.
pub struct Pairs<'a> {
    pub sources: Vec<&'a Arc<Artifact>>,
    pub tasks: Vec<TaskData>,
    pub labels: Vec<String>,
}

impl<'a> Pairs<'a> {
    /// `deltas` and `tasks`, checked: equal lengths, distinct task names, at least two tasks.
    pub fn of(args: &'a Args) -> Result<Pairs<'a>, OpError> {
        let sources = runnable_args(args.get("deltas")?, "deltas")?;
        let tasks: Vec<TaskData> = args
            .artifacts("tasks", Kind::Task)?
            .into_iter()
            .map(|a| TaskData::from_artifact(a))
            .collect::<Result<_, _>>()?;
        if sources.len() != tasks.len() {
            return Err(OpError::new(
                LEN,
                format!("{} deltas but {} tasks", sources.len(), tasks.len()),
            )
            .with_help("give one task per delta: the task that delta was trained on"));
        }
        if tasks.len() < 2 {
            return Err(OpError::new(
                "smelt::run::argument",
                "a similarity matrix needs at least two tasks",
            )
            .with_help("every task is a target whose sources are the other tasks' deltas"));
        }
        let labels: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
        for (i, l) in labels.iter().enumerate() {
            if labels[..i].contains(l) {
                return Err(OpError::new(
                    "smelt::run::argument",
                    format!("task `{l}` appears twice; the matrix is labelled by task name"),
                ));
            }
        }
        Ok(Pairs {
            sources,
            tasks,
            labels,
        })
    }

    pub fn n(&self) -> usize {
        self.tasks.len()
    }

    /// The matrix values from `f(source j, loaded once, target i)` for every `i ≠ j`; NaN on the
    /// diagonal.
    pub fn each(
        &self,
        cx: &OpCtx,
        f: &mut dyn FnMut(&Runnable, usize, usize) -> Result<f64, OpError>,
    ) -> Result<Vec<f64>, OpError> {
        let n = self.n();
        let mut v = vec![f64::NAN; n * n];
        for (j, src) in self.sources.iter().enumerate() {
            let run = Runnable::load(src, &cx.device)?;
            for i in (0..n).filter(|&i| i != j) {
                v[i * n + j] = f(&run, i, j).map_err(|e| {
                    e.context(format!(
                        "scoring source {} on target {}",
                        self.labels[j], self.labels[i]
                    ))
                })?;
            }
        }
        Ok(v)
    }
}

/// The `tuned` list (one per task), checked against the number of tasks.
pub fn tuned_args(args: &Args, n: usize) -> Result<Vec<&Arc<Artifact>>, OpError> {
    let t = runnable_args(args.get("tuned")?, "tuned")?;
    if t.len() != n {
        return Err(OpError::new(
            LEN,
            format!("{} tuned target deltas for {n} tasks", t.len()),
        )
        .with_help("give one delta per task, tuned from random init on that task"));
    }
    Ok(t)
}

/// The format overrides from the `FORMAT_PARAMS` arguments.
pub fn overrides(args: &Args) -> Result<Overrides<'_>, OpError> {
    let opt = |n: &str| -> Result<Option<&str>, OpError> {
        match args.get(n)? {
            Value::None => Ok(None),
            _ => args.str(n).map(Some),
        }
    };
    Ok(Overrides {
        head: args.str("head")?,
        template: opt("template")?,
        words: opt("words")?,
        max_len: args.int("max_len")?.max(1) as usize,
        max_new: 1,
    })
}

/// The input format of `task` for `run`, resolved as `evaluate` resolves it.
pub fn format_for(run: &Runnable, task: &TaskData, o: &Overrides) -> Result<FormatSpec, OpError> {
    let has_head = run.head(&task.name)?.is_some();
    match (o.head, o.template, o.words, run.formats.get(&task.name)) {
        ("auto", None, None, Some(recorded)) => Ok(FormatSpec {
            max_len: o.max_len,
            ..recorded.clone()
        }),
        ("auto", None, None, None) if has_head => {
            FormatSpec::resolve(&run.lm, task, "cls", None, None, o.max_len)
        }
        ("auto", None, None, None) => {
            FormatSpec::resolve(&run.lm, task, "prompt", None, None, o.max_len)
        }
        (h, t, w, _) => FormatSpec::resolve(&run.lm, task, h, t, w, o.max_len),
    }
}

/// The first `examples` (all when `None`) of `task`'s `split`, fed for `run`, and its head.
pub fn target_feed(
    run: &Runnable,
    task: &TaskData,
    split: &str,
    examples: Option<usize>,
    o: &Overrides,
) -> Result<(Feed, Option<ClsHead>), OpError> {
    let all = task.split(split);
    let take = examples.map_or(all.len(), |n| n.min(all.len()));
    if take == 0 {
        return Err(OpError::new(
            "smelt::eval::empty_split",
            format!("task `{}` has no `{split}` examples", task.name),
        ));
    }
    let spec = format_for(run, task, o)?;
    let feed = Feed::new(&run.lm, &spec, task, &all[..take])?;
    Ok((feed, run.head(&task.name)?))
}

/// The `examples` argument.
pub fn examples_arg(args: &Args) -> Result<Option<usize>, OpError> {
    match args.get("examples")? {
        Value::None => Ok(None),
        _ => Ok(Some(args.int("examples")?.max(1) as usize)),
    }
}

/// Softmax of each row of class scores, in f64.
pub fn softmax_rows(logits: &[Vec<f32>]) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|z| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        })
        .collect()
}

/// Class probabilities and gold labels of the target's first examples under `run`.
pub fn class_probs(
    run: &Runnable,
    task: &TaskData,
    args: &Args,
) -> Result<(Vec<Vec<f64>>, Vec<u32>), OpError> {
    let o = overrides(args)?;
    let (feed, head) = target_feed(run, task, args.str("split")?, examples_arg(args)?, &o)?;
    let batch = args.int("batch")?.max(1) as usize;
    let logits = feed.all_logits(&run.lm, head.as_ref(), batch)?;
    Ok((softmax_rows(&logits), feed.labels()))
}

/// A delta's trainable tensors by name (adapter file names; heads excluded).
pub fn named_vars(delta: &Delta) -> Vec<(String, Var)> {
    match delta {
        Delta::Full(v) => v.clone(),
        Delta::Lora(l) => l.named_vars(),
        Delta::Adapter(a) => a.named_vars(),
        Delta::Prefix(p) => p.named_vars(),
    }
}

/// The loaded delta of a source, or a clear error for a full model.
pub fn delta_of<'a>(run: &'a Runnable, what: &str) -> Result<&'a Delta, OpError> {
    run.delta.as_ref().ok_or_else(|| {
        OpError::new(
            "smelt::run::argument",
            format!(
                "`{what}` needs adapters (LoRA, bottleneck adapter or prefix), got a full model"
            ),
        )
        .with_help("train the sources with `train lora|adapter|prefix`")
    })
}

/// Detached copies of tensors (a snapshot that later updates of the vars do not change).
pub fn snapshot(vars: &[(String, Var)]) -> Result<Vec<(String, Tensor)>, OpError> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_detached_tensor().copy()?)))
        .collect()
}

/// Writes the target × source matrix into the node and returns it as a `Matrix` value.
/// `meta` gets the method, direction, temperature and diagonal convention added.
pub fn matrix_value(
    cx: &OpCtx,
    what: &str,
    labels: &[String],
    values: Vec<f64>,
    args: &Args,
    meta: serde_json::Map<String, serde_json::Value>,
) -> Result<Value, OpError> {
    granular_value(cx, what, "model", vec![], labels, vec![values], args, meta)
}

/// As [`matrix_value`] for one score matrix per group of a granularity
/// ([`granular::GRANULARITIES`]): `model` gives the target × source matrix, `block`/`layer` a
/// `[group, target, source]` array whose slices `similarity block` takes out.
#[allow(clippy::too_many_arguments)]
pub fn granular_value(
    cx: &OpCtx,
    what: &str,
    granularity: &str,
    groups: Vec<String>,
    labels: &[String],
    per_group: Vec<Vec<f64>>,
    args: &Args,
    mut meta: serde_json::Map<String, serde_json::Value>,
) -> Result<Value, OpError> {
    let temperature = args.float("temperature")?;
    crate::ops::merge::softmax::softmax_weights(&[], temperature, 1.0)?;
    meta.insert("sign".into(), json!(args.str("sign")?));
    meta.insert("temperature".into(), json!(temperature));
    meta.insert(
        "diagonal".into(),
        json!("NaN: a task is not its own source (merge softmax drops it)"),
    );
    meta.insert("rows".into(), json!("target task i (its data is scored)"));
    meta.insert(
        "columns".into(),
        json!("source delta j, labelled by the task it was trained on"),
    );
    meta.insert("granularity".into(), json!(granularity));
    let mut m = granular::stack(what, granularity, groups, labels, per_group)?;
    m.meta = meta;
    let dir = cx.out_dir.join("matrix");
    m.write(&dir)?;
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Matrix,
        dir,
        key: cx.key,
        data: m.artifact_data(),
    })))
}

/// The meta entries of a data-based score: split, examples, formula.
pub fn data_meta(
    args: &Args,
    formula: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, OpError> {
    let mut m = serde_json::Map::new();
    m.insert("formula".into(), json!(formula));
    m.insert("split".into(), json!(args.str("split")?));
    m.insert(
        "examples".into(),
        match examples_arg(args)? {
            Some(n) => json!(n),
            None => json!("all"),
        },
    );
    Ok(m)
}

#[cfg(test)]
pub(crate) mod testutil;
