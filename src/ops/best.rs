//! `best(candidates, by=dev_accuracy)`: pick one model or adapter out of a grid.
//!
//! Grids are comprehensions (`[train lora(lm, t, lr=lr) for lr in [1e-4, 3e-4, 1e-3]]`);
//! `best` scores every candidate on the **dev** split and returns the winner itself, so the
//! rest of the program uses it like any model. Scores are the mean over tasks of the metric in
//! `by` (`dev_loss` is the mean cross-entropy, lower is better; the others higher is better);
//! `final_loss` needs no data and reads the training loss each candidate recorded. A tie goes to
//! the earliest candidate, so the choice is deterministic. Tasks: `tasks=` when given, else the
//! tasks each candidate was trained on (recorded by `train …`), fed in the recorded format.
//! Selecting on the test split is deliberately not offered.

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::{
    score, wants_text, Overrides, P_EBATCH, P_EMAX_LEN, P_MAX_NEW, RUNNABLE,
};
use crate::ops::train::runnable::{info_of, runnable_args, Runnable};
use crate::ops::train::{tasks_arg, TASKS_TY};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::{Ty, Type};
use crate::value::{Artifact, Kind, Value};

pub struct Best;

pub const CRITERIA: &[&str] = &[
    "dev_accuracy",
    "dev_macro_f1",
    "dev_mcc",
    "dev_loss",
    "dev_em",
    "dev_qa_f1",
    "dev_rouge_l",
    "final_loss",
];

fn ret(args: &[Type]) -> Type {
    match args.first() {
        Some(Type::List(e, _)) => (**e).clone(),
        _ => Type::Unknown,
    }
}

static SIG: Signature = Signature {
    id: "best",
    version: 1,
    summary: "The candidate with the best dev score (grid search over comprehensions).",
    doc: "Scores every candidate on the dev split of `tasks` (default: the tasks it was trained on) \
          and returns the best one. `by` is `dev_<metric>` for the metrics of `evaluate` \
          (`dev_loss` = cross-entropy, lower is better) or `final_loss` (the recorded training \
          loss, no data read). Ties go to the earliest candidate.",
    params: &[
        Param::req("candidates", Ty::List(&RUNNABLE), "Models or adapters to choose from (e.g. a comprehension over a grid)."),
        Param::opt("by", Ty::Enum(CRITERIA), Const::Str("dev_accuracy"), "Selection criterion."),
        Param::opt("tasks", Ty::Opt(&TASKS_TY), Const::None, "Tasks whose dev split scores the candidates; default: each candidate's training tasks."),
        P_EMAX_LEN, P_EBATCH, P_MAX_NEW,
    ],
    returns: Ty::Any,
    ret_fn: Some(ret),
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet grid = [train lora(lm, t, lr=lr, head=prompt) for lr in [3e-4, 1e-3]]\nlet a = best(grid, by=dev_accuracy)\nreport evaluate(a, t)"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// The tasks a candidate was trained on, from its `smelt.json`.
fn recorded_tasks(a: &Artifact) -> Result<Vec<TaskData>, OpError> {
    let info = info_of(&a.dir);
    let Some(map) = info["task_artifacts"].as_object() else {
        return Err(OpError::new(
            "smelt::run::best_tasks",
            format!(
                "`{}` records no training tasks",
                crate::ops::train::runnable::label_of(a)
            ),
        )
        .with_help("pass the tasks to score on: best(candidates, tasks=[…])"));
    };
    map.values()
        .map(|t| {
            let dir = t["dir"].as_str().unwrap_or_default();
            TaskData::from_artifact(&Artifact {
                kind: Kind::Task,
                dir: dir.into(),
                key: a.key,
                data: t["data"].clone(),
            })
        })
        .collect()
}

/// One candidate's score, oriented so that larger is better.
fn candidate_score(
    cx: &OpCtx,
    a: &Artifact,
    by: &str,
    given: Option<&[TaskData]>,
    o: &Overrides,
    batch: usize,
) -> Result<f64, OpError> {
    if by == "final_loss" {
        return info_of(&a.dir)["final_loss"]
            .as_f64()
            .map(|l| -l)
            .ok_or_else(|| {
                OpError::new(
                    "smelt::run::best_loss",
                    "a candidate records no training loss",
                )
                .with_help(
                    "final_loss ranks trained models and adapters; use by=dev_accuracy for others",
                )
            });
    }
    let metric = by.trim_start_matches("dev_");
    let metric = if metric == "loss" { "ce_loss" } else { metric };
    let recorded;
    let tasks = match given {
        Some(t) => t,
        None => {
            recorded = recorded_tasks(a)?;
            &recorded
        }
    };
    let run = Runnable::load(a, &cx.device)?;
    let mut total = 0.0;
    for t in tasks {
        let s = score(&run, t, "dev", o, batch, wants_text(&[metric]))
            .map_err(|e| e.context(format!("scoring {} on {}", run.label, t.name)))?;
        total += s.metric(metric)?;
    }
    let mean = total / tasks.len().max(1) as f64;
    Ok(if metric == "ce_loss" { -mean } else { mean })
}

impl Operator for Best {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let candidates = runnable_args(args.get("candidates")?, "candidates")?;
        if candidates.is_empty() {
            return Err(
                OpError::new("smelt::run::best_empty", "`best` of an empty list")
                    .with_help("give at least one candidate"),
            );
        }
        let by = args.str("by")?;
        let given = match args.get("tasks")? {
            Value::None => None,
            _ => Some(tasks_arg(args, "tasks")?),
        };
        let o = Overrides {
            head: "auto",
            template: None,
            words: None,
            max_len: args.int("max_len")?.max(1) as usize,
            max_new: args.int("max_new")?.max(1) as usize,
        };
        let batch = args.int("batch")?.max(1) as usize;
        let mut winner: Option<(f64, usize)> = None;
        for (i, a) in candidates.iter().enumerate() {
            let s = candidate_score(cx, a, by, given.as_deref(), &o, batch)?;
            if winner.is_none_or(|(w, _)| s > w) {
                winner = Some((s, i));
            }
        }
        let (_, i) = winner.expect("non-empty");
        Ok(Value::Artifact(candidates[i].clone()))
    }
}
