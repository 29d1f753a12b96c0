//! `ensemble weighted(adapters, weights=…, tasks=…)`: an ensemble of adapters on one shared
//! base (or of full models), its class scores the weighted sum of the members' (methods.md
//! §1.11, `EnsembleLoRAModule`).
//!
//! Weights are used as given (not normalised, as in the paper's code). Default: uniform `1/M`.
//! A list gives one weight per member, shared by every task as independent copies (so boosting
//! appends one weight to each task's vector — the paper's aliasing bug, §1.17, cannot happen);
//! a record `{task: [w…], default: [w…]}` or a Matrix (rows = task names, columns = members,
//! e.g. fitted weights) gives per-task vectors. `tasks` names the tasks that get their own
//! vector when `weights` is a list or left out.

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::train::TASKS_TY;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::ensemble::{Ensemble, Member};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Kind, Value};
use std::collections::BTreeMap;

pub struct Weighted;

pub const MEMBER: Ty = Ty::Either(&Ty::Adapter, &Ty::Model);
const WEIGHTS_TY: Ty = Ty::Opt(&Ty::Either(
    &Ty::List(&Ty::Float),
    &Ty::Either(&Ty::Record, &Ty::Matrix),
));
const CODE: &str = "smelt::run::ensemble";

static SIG: Signature = Signature {
    id: "ensemble.weighted",
    version: 1,
    summary: "An ensemble of adapters on one shared base (or of full models): class scores Σ w_m z_m.",
    doc: "Members are adapters bound to one base model (run on that one base, swapping adapters; \
          quantized as they were trained) or full models of one architecture. `evaluate` and \
          `measure score` run each member in its own recorded input format and add the class \
          scores with the task's weight vector; predictions are the argmax of the sum and \
          `ce_loss` is taken from the summed scores. Weights are not normalised. `weights`: none \
          (uniform 1/M), a list (one per member, copied for every task), a record \
          `{task: [..], default: [..]}`, or a Matrix with task-named rows and one column per member.",
    params: &[
        Param::req("adapters", Ty::List(&MEMBER), "The members: adapters of one base model, or full models."),
        Param::opt("weights", WEIGHTS_TY, Const::None, "Member weights: none (uniform 1/M), a list, a per-task record, or a task × member Matrix."),
        Param::opt("tasks", Ty::Opt(&TASKS_TY), Const::None, "Tasks that get their own (independent) weight vector when `weights` is none or a list."),
    ],
    returns: Ty::Ensemble,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"topics\"]]\nlet groups = [train lora(lm, t, head=prompt) for t in ts]\nlet e = ensemble weighted(groups, weights={movies: [1.0, 0.0], topics: [0.0, 1.0]})\nreport evaluate(e, ts)"],
    reference: Some("Li et al., Efficient Ensemble for Fine-tuning Language Models on Multiple Datasets (ACL 2025), §1.11"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

fn bad(msg: String) -> OpError {
    OpError::new(CODE, msg)
}

fn floats(name: &str, v: &Value) -> Result<Vec<f64>, OpError> {
    v.as_list()
        .ok_or_else(|| bad(format!("weights for `{name}` should be a list of numbers")))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| bad(format!("weights for `{name}` should be numbers")))
        })
        .collect()
}

/// One weight vector per task name.
pub type TaskWeights = BTreeMap<String, Vec<f64>>;

/// Default and per-task weight vectors from the `weights` and `tasks` arguments.
pub fn weight_vectors(
    weights: &Value,
    task_names: &[String],
    m: usize,
) -> Result<(Vec<f64>, TaskWeights), OpError> {
    let uniform = vec![1.0 / m as f64; m];
    let copies = |v: &[f64]| -> BTreeMap<String, Vec<f64>> {
        task_names.iter().map(|t| (t.clone(), v.to_vec())).collect()
    };
    Ok(match weights {
        Value::None => (uniform.clone(), copies(&uniform)),
        Value::List(_) => {
            let v = floats("every task", weights)?;
            (v.clone(), copies(&v))
        }
        Value::Record(r) => {
            let mut per = BTreeMap::new();
            let mut default = uniform;
            for (k, v) in r.iter() {
                let w = floats(k, v)?;
                if k == "default" {
                    default = w;
                } else {
                    per.insert(k.clone(), w);
                }
            }
            if let Some(t) = task_names.iter().find(|t| !per.contains_key(*t)) {
                return Err(bad(format!("the weight record has no vector for task `{t}`"))
                    .with_help("give every task in `tasks` a field, or add a `default` field and drop `tasks`"));
            }
            (default, per)
        }
        Value::Artifact(a) if a.kind == Kind::Matrix => {
            let mx = Matrix::read(&a.dir)?;
            if mx.shape.len() != 2 || mx.cols() != m || mx.axes[0].labels.len() != mx.rows() {
                return Err(bad(format!(
                    "a weight Matrix needs task-labelled rows and {m} columns (one per member), got shape {:?}",
                    mx.shape
                )));
            }
            let mut per = BTreeMap::new();
            let mut default = uniform;
            for (i, t) in mx.axes[0].labels.iter().enumerate() {
                if t == "default" {
                    default = mx.row(i).to_vec();
                } else {
                    per.insert(t.clone(), mx.row(i).to_vec());
                }
            }
            (default, per)
        }
        v => {
            return Err(bad(format!(
                "`weights` should be none, a list, a record or a Matrix, got {}",
                v.display()
            )))
        }
    })
}

/// The `tasks` argument's names (empty when none).
pub fn task_names(args: &Args, name: &str) -> Result<Vec<String>, OpError> {
    Ok(match args.get(name)? {
        Value::None => vec![],
        _ => crate::ops::train::tasks_arg(args, name)?
            .into_iter()
            .map(|t: TaskData| t.name)
            .collect(),
    })
}

impl Operator for Weighted {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let members = args
            .list("adapters")?
            .iter()
            .map(|v| match v {
                Value::Artifact(a) => Member::of(a),
                v => Err(bad(format!("not an adapter or a model: {}", v.display()))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names = task_names(args, "tasks")?;
        let (default, per) = weight_vectors(args.get("weights")?, &names, members.len().max(1))?;
        let e = Ensemble::new(members, default, per)?;
        e.value(&cx.out_dir, cx.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn weight_forms() {
        let names = vec!["a".to_string(), "b".to_string()];
        let (d, per) = weight_vectors(&Value::None, &names, 4).unwrap();
        assert_eq!(d, vec![0.25; 4]);
        assert_eq!(per["a"], vec![0.25; 4]);
        let l = Value::list(vec![Value::Float(2.0), Value::Int(-1)]);
        let (d, per) = weight_vectors(&l, &names, 2).unwrap();
        assert_eq!(
            (d.clone(), per["b"].clone()),
            (vec![2.0, -1.0], vec![2.0, -1.0])
        );
        let mut r = crate::value::Record::new();
        r.insert(
            "a".into(),
            Value::list(vec![Value::Float(1.0), Value::Float(0.0)]),
        );
        r.insert(
            "default".into(),
            Value::list(vec![Value::Float(0.3), Value::Float(0.7)]),
        );
        let (d, per) =
            weight_vectors(&Value::Record(Arc::new(r.clone())), &["a".into()], 2).unwrap();
        assert_eq!(
            (d, per.len(), per["a"].clone()),
            (vec![0.3, 0.7], 1, vec![1.0, 0.0])
        );
        let e = weight_vectors(&Value::Record(Arc::new(r)), &names, 2).unwrap_err();
        assert!(e.message.contains("task `b`"), "{}", e.message);
    }
}
