//! `groups(partition, tasks)`: the tasks of each group of a partition, as lists of the given
//! `Task` values — so `[train lora(lm, g) for g in groups(p, tasks)]` trains one multi-task
//! adapter per group (paper 1's group adapters, methods.md §1.10).
//!
//! Tasks are matched by name (a task's name is its directory name unless `load task(…,
//! name=…)` says otherwise). A task of the partition that is not in `tasks` is an error; tasks
//! in no group are left out. The result keeps the original values (unrealised nodes stay
//! nodes), so group training depends on the same task nodes as everything else.

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Groups;

static SIG: Signature = Signature {
    id: "groups",
    version: 1,
    summary: "The partition's groups as lists of the given tasks (matched by name).",
    doc: "Returns one list of tasks per group, in the partition's order, each task taken from \
          `tasks` by name. Every task the partition names must be in `tasks`.",
    params: &[
        Param::req("partition", Ty::Partition, "Groups of task names (from `cluster …`)."),
        Param::req("tasks", Ty::List(&Ty::Task), "The tasks to pick from."),
    ],
    returns: Ty::List(&Ty::List(&Ty::Task)),
    ret_fn: None,
    examples: &["let ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"movies\", \"restaurants\", \"topics\"])\nlet lm = load model(\"assets/models/minilm-l3-v8k\")\nlet adapters = [train lora(lm, g) for g in groups(cluster sdp(t, 2), ts)]"],
    reference: Some("Li et al. (ACL 2025) — one adapter per task group"),
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

/// Picks, for every group, the values whose name matches (`names[i]` names `values[i]`).
pub fn pick(p: &Partition, names: &[String], values: &[Value]) -> Result<Vec<Value>, OpError> {
    p.groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|t| {
                    names
                        .iter()
                        .position(|n| n == t)
                        .map(|i| values[i].clone())
                        .ok_or_else(|| {
                            OpError::new(
                                "smelt::run::unknown_task",
                                format!("the partition's task `{t}` is not among the given tasks"),
                            )
                            .with_help(format!("the given tasks are: {}", names.join(", ")))
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::list)
        })
        .collect()
}

impl Operator for Groups {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let p = force(args.get("partition")?)?;
        let p = Args::new(vec![("partition", p)]);
        let p = Partition::from_json(&p.artifact("partition", Kind::Partition)?.data).ok_or_else(
            || {
                OpError::new(
                    "smelt::run::partition",
                    "the partition's payload is damaged",
                )
            },
        )?;
        let tasks = force(args.get("tasks")?)?;
        let tasks = tasks
            .as_list()
            .ok_or_else(|| OpError::new("smelt::run::argument", "`groups` needs a list of tasks"))?
            .to_vec();
        let mut names = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let a = force(t)?;
            let a = Args::new(vec![("tasks", a)]);
            let a = a.artifact("tasks", Kind::Task)?;
            names.push(a.data["name"].as_str().unwrap_or_default().to_string());
        }
        pick(&p, &names, &tasks).map(Value::list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_tasks_by_name_and_refuses_missing_ones() {
        let names: Vec<String> = ["cb", "rte", "copa"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let values: Vec<Value> = (0..3).map(Value::Int).collect();
        let p = Partition {
            method: "cluster.sdp".into(),
            k: Some(2),
            tasks: vec!["copa".into(), "cb".into()],
            groups: vec![vec!["copa".into()], vec!["cb".into()]],
            objective: None,
            status: "solved".into(),
            iterations: 1,
            meta: Default::default(),
        };
        let got = pick(&p, &names, &values).unwrap();
        assert_eq!(
            got,
            vec![
                Value::list(vec![Value::Int(2)]),
                Value::list(vec![Value::Int(0)])
            ]
        );
        let mut q = p.clone();
        q.groups[0].push("boolq".into());
        let e = pick(&q, &names, &values).unwrap_err();
        assert_eq!(e.code, "smelt::run::unknown_task");
        assert!(e.message.contains("boolq"));
    }
}
