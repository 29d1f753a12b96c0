//! `data union(tasks, name)`: one task holding every example of several tasks, split by split
//! (multi-task training data, `data union([a, b])` for a pooled baseline).
//!
//! Label spaces are merged by name in order of first appearance, so tasks that share label
//! names (`negative`, `positive`) share labels; example ids are renumbered per split because the
//! inputs' ids collide. Pair and single-sentence tasks cannot be mixed.

use super::task_value;
use crate::data::{Example, TaskData, SAMPLING};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Union;

static SIG: Signature = Signature {
    id: "data.union",
    version: 1,
    summary: "Concatenate tasks split by split, merging label spaces by name.",
    doc: "Examples keep their input order (first task first) and get new ids 0..n per split. The \
          label space is the union of the inputs' label names in order of first appearance. The \
          name defaults to the inputs' names joined by `+`.",
    params: &[
        Param::req("tasks", Ty::List(&Ty::Task), "Tasks to pool (all pair or all single-sentence)."),
        Param::opt("name", Ty::Opt(&Ty::Str), Const::None, "Name of the pooled task."),
    ],
    returns: Ty::Task,
    ret_fn: None,
    examples: &["let a = load task(\"experiments/data/movies\")\nlet b = load task(\"experiments/data/products\")\nlet both = data union([a, b], name=\"reviews\")"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// Pool `tasks` (see the module docs).
pub fn union(tasks: &[TaskData], name: Option<&str>) -> Result<TaskData, OpError> {
    let first = tasks
        .first()
        .ok_or_else(|| OpError::new(SAMPLING, "`data union` of an empty list"))?;
    if let Some(t) = tasks.iter().find(|t| t.is_pair != first.is_pair) {
        return Err(OpError::new(
            SAMPLING,
            format!(
                "cannot pool `{}` and `{}`: one is a pair task, the other is not",
                first.name, t.name
            ),
        )
        .with_help(
            "pool pair tasks with pair tasks and single-sentence tasks with single-sentence tasks",
        ));
    }
    let mut labels: Vec<String> = Vec::new();
    for t in tasks {
        for l in &t.labels {
            if !labels.contains(l) {
                labels.push(l.clone());
            }
        }
    }
    let joined = tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let mut out = TaskData::new(
        name.map(str::to_string).unwrap_or(joined),
        labels,
        first.is_pair,
    );
    for t in tasks {
        let map: Vec<usize> = t
            .labels
            .iter()
            .map(|l| out.labels.iter().position(|x| x == l).unwrap_or(0))
            .collect();
        for (split, examples) in &t.splits {
            let dst = out.splits.entry(split.clone()).or_default();
            for e in examples {
                let id = dst.len();
                dst.push(Example {
                    id,
                    label: map[e.label],
                    ..e.clone()
                });
            }
        }
    }
    Ok(out)
}

impl Operator for Union {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let tasks = args
            .artifacts("tasks", Kind::Task)?
            .into_iter()
            .map(|a| TaskData::from_artifact(a))
            .collect::<Result<Vec<_>, _>>()?;
        let name = match args.get("name")? {
            Value::None => None,
            _ => Some(args.str("name")?),
        };
        task_value(cx, &union(&tasks, name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, labels: &[&str], pair: bool, n: usize) -> TaskData {
        let mut t = TaskData::new(name, labels.iter().map(|s| s.to_string()).collect(), pair);
        let b = pair.then(|| "b".to_string());
        let ex = (0..n).map(|i| Example {
            id: i,
            text: format!("{name}{i}"),
            text_b: b.clone(),
            label: i % labels.len(),
        });
        t.splits.insert("train".into(), ex.collect());
        t
    }

    #[test]
    fn merges_labels_by_name_and_renumbers() {
        let a = task("a", &["neg", "pos"], false, 4);
        let b = task("b", &["pos", "neutral"], false, 2);
        let u = union(&[a, b], None).unwrap();
        assert_eq!(u.name, "a+b");
        assert_eq!(u.labels, vec!["neg", "pos", "neutral"]);
        let ids: Vec<usize> = u.train().iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..6).collect::<Vec<_>>());
        assert_eq!((u.train()[4].label, u.train()[5].label), (1, 2));
        assert!(union(
            &[task("p", &["x"], true, 1), task("s", &["x"], false, 1)],
            None
        )
        .is_err());
        assert!(union(&[], None).is_err());
    }
}
