//! `evaluate(models, tasks, metric=…)`: a table over (model × task), and the scoring routine
//! `measure score` shares; also scores stored `Predictions` (kernel solvers' results).
//!
//! Each model (a `Model` or an `Adapter` on its base) is loaded once; each task is fed in the
//! input format chosen by, in order: explicit `head`/`template`/`words` arguments; the format
//! recorded when the model was trained on a task of that name; `cls` when the model carries a
//! trained head for the task; otherwise the default prompt (LM-BFF label words at the mask for
//! encoders, answer choices for decoders). Class scores are head logits or logits restricted
//! to the label words / first answer tokens; predictions are their argmax.
//!
//! `models` may instead hold `Predictions` (e.g. `solve lstsq(…)`): they already carry their
//! task, split, class scores and gold labels, so each gives one row with no model run, and
//! `tasks` may be left out. When `tasks` is given as well, each Predictions must be for one of
//! those tasks and for `split` (so a table never silently mixes splits or tasks).

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::solve::predictions::Predictions;
use crate::ops::train::runnable::{runnable_args, Runnable};
use crate::ops::train::{tasks_arg, HEADS, TASKS_TY};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::train::feed::{argmax, mean_ce, Feed, FormatSpec};
use crate::train::generate::greedy_answers;
use crate::train::text_metrics::{mean_text_metric, TEXT_METRICS};
use crate::train::{accuracy, macro_f1, mcc};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

pub struct Evaluate;

pub const METRICS: &[&str] = &[
    "accuracy", "macro_f1", "mcc", "ce_loss", "em", "qa_f1", "rouge_l",
];
pub const RUNNABLE: Ty = Ty::Either(&Ty::Model, &Ty::Adapter);
/// What `evaluate` scores: a runnable model, stored predictions, or an ensemble.
pub const EVALUABLE: Ty = Ty::Either(&RUNNABLE, &Ty::Either(&Ty::Predictions, &Ty::Ensemble));
pub const SPLITS: &[&str] = &["test", "dev", "train"];

pub const P_SPLIT: Param = Param::opt(
    "split",
    Ty::Enum(SPLITS),
    Const::Str("test"),
    "Which split to score.",
);
pub const P_EHEAD: Param = Param::opt("head", Ty::Enum(HEADS), Const::Str("auto"), "Override the input format (`auto`: as trained, else the model's head, else the default prompt).");
pub const P_ETEMPLATE: Param = Param::opt(
    "template",
    Ty::Opt(&Ty::Str),
    Const::None,
    "Override the prompt template.",
);
pub const P_EWORDS: Param = Param::opt(
    "words",
    Ty::Opt(&Ty::Str),
    Const::None,
    "Override the label words / answer choices.",
);
pub const P_EMAX_LEN: Param = Param::opt(
    "max_len",
    Ty::Int,
    Const::Int(128),
    "Maximum tokens per example.",
)
.range(8.0, 1e6);
pub const P_EBATCH: Param = Param::opt(
    "batch",
    Ty::Int,
    Const::Int(32),
    "Examples per forward pass.",
)
.range(1.0, 1e6);
pub const P_MAX_NEW: Param = Param::opt(
    "max_new",
    Ty::Int,
    Const::Int(16),
    "Most tokens a decoder generates per answer (text metrics em / qa_f1 / rouge_l).",
)
.range(1.0, 4096.0);

static SIG: Signature = Signature {
    id: "evaluate",
    version: 1,
    summary: "Score models and adapters on tasks: a table with one row per (model, task).",
    doc: "Columns: model, task, split, n, then one per metric (accuracy, macro_f1, mcc, ce_loss = mean \
          cross-entropy of the class scores). Rows follow the order of `models` then `tasks`. \
          Models are named by `names`, else by what made them (e.g. `lora(movies)`). \
          Text metrics compare an answer string with the gold answer (the gold label's answer \
          choice / label word): `em` (SQuAD exact match), `qa_f1` (SQuAD token F1), `rouge_l` \
          (rouge_score's LCS F-measure). A decoder with a prompt format generates its answer \
          greedily (up to `max_new` tokens, stopping at end-of-sequence or a newline); an encoder \
          or a classification head answers with the word of its predicted class, so there `em` \
          equals accuracy. `models` may also be Predictions (from `solve …`): one row each, scored \
          from the stored class scores and gold labels; `tasks` may then be omitted, and if given \
          must contain each Predictions' task, with `split` equal to its split. An Ensemble (`ensemble \
          weighted`, `ensemble boost_…`) is scored from its members' class scores summed with each \
          task's weights (predictions = argmax of the sum, ce_loss from the sum; text metrics use \
          the predicted class's word).",
    params: &[
        Param::req("models", Ty::Either(&EVALUABLE, &Ty::List(&EVALUABLE)), "A model or adapter, or a list of them; or Predictions, or a list of them; or Ensembles."),
        Param::opt("tasks", Ty::Opt(&TASKS_TY), Const::None, "A task or a list of tasks (required for models and adapters)."),
        Param::opt("metric", Ty::Either(&Ty::Enum(METRICS), &Ty::List(&Ty::Enum(METRICS))), Const::Str("accuracy"), "A metric or a list of metrics."),
        P_SPLIT,
        Param::opt("names", Ty::Opt(&Ty::List(&Ty::Str)), Const::None, "Row labels for the models."),
        P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN, P_EBATCH, P_MAX_NEW,
    ],
    returns: Ty::Table,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet a = train lora(lm, ts[0], head=prompt)\nreport evaluate([a], ts, metric=[accuracy, macro_f1])\nreport evaluate(lm, ts, metric=accuracy)", "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve lstsq(kernel sgd(lm, few, few, split=train), kernel sgd(lm, few, t))\nreport evaluate(p, metric=[accuracy, macro_f1, mcc])"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// Format overrides given to `evaluate` / `measure score`.
pub struct Overrides<'a> {
    pub head: &'a str,
    pub template: Option<&'a str>,
    pub words: Option<&'a str>,
    pub max_len: usize,
    /// Most generated tokens per answer (text metrics).
    pub max_new: usize,
}

impl<'a> Overrides<'a> {
    pub fn of(args: &'a Args) -> Result<Overrides<'a>, OpError> {
        let opt = |n: &str| -> Result<Option<&'a str>, OpError> {
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
            max_new: args.int("max_new")?.max(1) as usize,
        })
    }
}

/// Class scores and gold labels of one (model, task, split).
pub struct Scored {
    pub logits: Vec<Vec<f32>>,
    pub gold: Vec<u32>,
    /// Answer strings (generated, or the predicted class's word) when text metrics were asked.
    pub answers: Option<Vec<String>>,
    /// The gold answer of each example (its label's answer choice / word).
    pub gold_answers: Vec<String>,
}

impl Scored {
    pub fn metric(&self, name: &str) -> Result<f64, OpError> {
        let pred = argmax(&self.logits);
        match name {
            "accuracy" => accuracy(&pred, &self.gold),
            "macro_f1" => macro_f1(&pred, &self.gold),
            "mcc" => mcc(&pred, &self.gold),
            "ce_loss" => Ok(mean_ce(&self.logits, &self.gold)),
            m if TEXT_METRICS.contains(&m) => {
                let answers = self.answers.as_ref().ok_or_else(|| {
                    OpError::new(
                        "smelt::internal",
                        "answers were not generated for a text metric",
                    )
                })?;
                let gold: Vec<Vec<String>> =
                    self.gold_answers.iter().map(|g| vec![g.clone()]).collect();
                mean_text_metric(m, answers, &gold)
            }
            m => Err(
                OpError::new("smelt::eval::metric", format!("unknown metric `{m}`"))
                    .with_help(format!("metrics: {}", METRICS.join(", "))),
            ),
        }
    }
}

/// Whether any of `metrics` needs answer strings.
pub fn wants_text<S: AsRef<str>>(metrics: &[S]) -> bool {
    metrics.iter().any(|m| TEXT_METRICS.contains(&m.as_ref()))
}

/// Scores `run` on `task`'s `split`; `text` also produces answer strings for text metrics.
pub fn score(
    run: &Runnable,
    task: &TaskData,
    split: &str,
    o: &Overrides,
    batch: usize,
    text: bool,
) -> Result<Scored, OpError> {
    let examples = task.split(split);
    if examples.is_empty() {
        return Err(OpError::new(
            "smelt::eval::empty_split",
            format!("task `{}` has no `{split}` examples", task.name),
        ));
    }
    let head = run.head(&task.name)?;
    let spec = match (o.head, o.template, o.words, run.formats.get(&task.name)) {
        ("auto", None, None, Some(recorded)) => FormatSpec {
            max_len: o.max_len,
            ..recorded.clone()
        },
        ("auto", None, None, None) if head.is_some() => {
            FormatSpec::resolve(&run.lm, task, "cls", None, None, o.max_len)?
        }
        ("auto", None, None, None) => {
            FormatSpec::resolve(&run.lm, task, "prompt", None, None, o.max_len)?
        }
        (h, t, w, _) => FormatSpec::resolve(&run.lm, task, h, t, w, o.max_len)?,
    };
    let feed = Feed::new(&run.lm, &spec, task, examples)?;
    let logits = feed.all_logits(&run.lm, head.as_ref(), batch)?;
    let gold = feed.labels();
    let words = if spec.words.is_empty() {
        &task.labels
    } else {
        &spec.words
    };
    let word = |l: u32| words.get(l as usize).cloned().unwrap_or_default();
    let answers = match (text, feed.prompts().is_some()) {
        (false, _) => None,
        (true, true) => Some(greedy_answers(&run.lm, &feed, o.max_new)?),
        (true, false) => Some(argmax(&logits).into_iter().map(word).collect()),
    };
    Ok(Scored {
        logits,
        gold_answers: gold.iter().map(|&l| word(l)).collect(),
        gold,
        answers,
    })
}

fn metrics_arg(args: &Args) -> Result<Vec<String>, OpError> {
    Ok(match args.get("metric")? {
        Value::List(xs) => xs
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        v => vec![v.as_str().unwrap_or("accuracy").to_string()],
    })
}

impl Operator for Evaluate {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    /// Models and adapters need `tasks`; caught at check time when the types are known.
    fn validate(&self, args: &Args) -> Result<(), OpError> {
        if matches!(args.get("tasks")?, Value::None)
            && model_items(args.get("models")?).any(is_model)
        {
            return Err(missing_tasks());
        }
        Ok(())
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let items: Vec<&Value> = model_items(args.get("models")?).collect();
        let tasks = match args.get("tasks")? {
            Value::None => None,
            _ => Some(tasks_arg(args, "tasks")?),
        };
        let metrics = metrics_arg(args)?;
        let split = args.str("split")?;
        let o = Overrides::of(args)?;
        let batch = args.int("batch")?.max(1) as usize;
        let names: Option<Vec<String>> = match args.get("names")? {
            Value::None => None,
            _ => Some(
                args.list("names")?
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect(),
            ),
        };
        if let Some(n) = &names {
            if n.len() != items.len() {
                return Err(OpError::new(
                    "smelt::eval::names",
                    format!("{} names for {} models", n.len(), items.len()),
                ));
            }
        }
        let mut rows = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Some(a) = item.as_artifact().filter(|a| a.kind == Kind::Predictions) {
                let p = Predictions::from_artifact(a)?;
                let label = names.as_ref().map_or(p.label.clone(), |n| n[i].clone());
                if let Some(ts) = &tasks {
                    check_predictions(&p, &label, ts, split)?;
                }
                let mut row = vec![
                    label.into(),
                    p.task.clone().into(),
                    p.split.clone().into(),
                    p.gold.len().into(),
                ];
                for metric in &metrics {
                    row.push(serde_json::json!(p.metric(metric)?));
                }
                rows.push(row);
                continue;
            }
            if let Some(a) = item.as_artifact().filter(|a| a.kind == Kind::Ensemble) {
                let tasks = tasks.as_ref().ok_or_else(missing_tasks)?;
                let ens = crate::tensors::ensemble::Ensemble::from_artifact(a)?;
                let label = names.as_ref().map_or_else(
                    || a.data["label"].as_str().unwrap_or("ensemble").to_string(),
                    |n| n[i].clone(),
                );
                let s = crate::ops::ensemble::combine::score_ensemble(
                    &ens, tasks, split, &o, batch, &cx.device,
                )
                .map_err(|e| e.context(format!("evaluating {label}")))?;
                for (task, s) in tasks.iter().zip(&s.combined) {
                    let mut row = vec![
                        label.clone().into(),
                        task.name.clone().into(),
                        split.into(),
                        s.gold.len().into(),
                    ];
                    for metric in &metrics {
                        row.push(serde_json::json!(s.metric(metric)?));
                    }
                    rows.push(row);
                }
                continue;
            }
            let m = runnable_args(item, "models")?[0];
            let tasks = tasks.as_ref().ok_or_else(missing_tasks)?;
            let run = Runnable::load(m, &cx.device)?;
            let label = names.as_ref().map_or(run.label.clone(), |n| n[i].clone());
            for task in tasks {
                let s = score(&run, task, split, &o, batch, wants_text(&metrics))
                    .map_err(|e| e.context(format!("evaluating {label} on {}", task.name)))?;
                let mut row = vec![
                    label.clone().into(),
                    task.name.clone().into(),
                    split.into(),
                    s.gold.len().into(),
                ];
                for metric in &metrics {
                    row.push(serde_json::json!(s.metric(metric)?));
                }
                rows.push(row);
            }
        }
        let mut columns = vec![
            "model".to_string(),
            "task".into(),
            "split".into(),
            "n".into(),
        ];
        columns.extend(metrics);
        table_value(cx, columns, rows)
    }
}

/// The single value or the list elements of `models`.
fn model_items(v: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match v {
        Value::List(xs) => Box::new(xs.iter()),
        v => Box::new(std::iter::once(v)),
    }
}

/// A model, adapter or ensemble (something that needs `tasks`), realised or not.
fn is_model(v: &Value) -> bool {
    use crate::types::Type;
    match v {
        Value::Artifact(a) => matches!(a.kind, Kind::Model | Kind::Adapter | Kind::Ensemble),
        Value::Node(n) => matches!(n.ty, Type::Model | Type::Adapter | Type::Ensemble),
        Value::Unknown(t) => matches!(t, Type::Model | Type::Adapter | Type::Ensemble),
        _ => false,
    }
}

fn missing_tasks() -> OpError {
    OpError::new(
        "smelt::eval::tasks",
        "evaluating models or adapters needs `tasks`",
    )
    .with_help("pass the tasks to score on, e.g. `evaluate(models, [t1, t2])`; only Predictions carry their own task")
}

/// With `tasks` given, Predictions must be for one of them and for `split`.
fn check_predictions(
    p: &Predictions,
    label: &str,
    tasks: &[TaskData],
    split: &str,
) -> Result<(), OpError> {
    if !tasks.iter().any(|t| t.name == p.task) {
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        return Err(OpError::new(
            "smelt::eval::predictions",
            format!(
                "{label} holds predictions for task `{}`, which is not among the tasks {names:?}",
                p.task
            ),
        )
        .with_help("leave `tasks` out to score Predictions on their own task"));
    }
    if p.split != split {
        return Err(OpError::new(
            "smelt::eval::predictions",
            format!(
                "{label} holds predictions on the `{}` split, but split={split}",
                p.split
            ),
        )
        .with_help(format!("pass split={} (or leave `tasks` out)", p.split)));
    }
    Ok(())
}

/// A Table artifact from column names and rows of JSON cells (in column order).
pub fn table_value(
    cx: &OpCtx,
    columns: Vec<String>,
    rows: Vec<Vec<serde_json::Value>>,
) -> Result<Value, OpError> {
    let table =
        crate::report::Table::from_json(&serde_json::json!({"columns": columns, "rows": rows}))
            .ok_or_else(|| OpError::new("smelt::internal", "could not build the result table"))?;
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Table,
        dir: cx.out_dir.clone(),
        key: cx.key,
        data: table.to_json(),
    })))
}
