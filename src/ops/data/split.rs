//! `data split(task, dev_fraction, seed)`: carve a stratified dev split out of train
//! (methods.md §1.3: `StratifiedShuffleSplit(test_size=0.1, random_state=0)`, hence the defaults
//! 0.1 and seed 0). Any existing dev split is replaced.

use super::{seed_arg, seed_param, task_arg, task_value};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Split;

static SIG: Signature = Signature {
    id: "data.split",
    version: 1,
    summary: "Move a stratified fraction of train into a dev split.",
    doc: "`⌈dev_fraction · n_train⌉` examples, shared among labels in proportion (largest remainder), \
          chosen by a seeded permutation, become the dev split; the rest stay train. Both keep file \
          order and example ids. An existing dev split is replaced; test is unchanged.",
    params: &[
        Param::req("task", Ty::Task, "The task whose train split is divided."),
        Param::opt("dev_fraction", Ty::Float, Const::Float(0.1), "Fraction of train that becomes dev.")
            .range(0.0, 1.0),
        seed_param(0),
    ],
    returns: Ty::Task,
    ret_fn: None,
    examples: &["let t = load task(\"experiments/data/restaurants\")\nlet t2 = data split(t, dev_fraction=0.2)\nlet n = t2.n_train"],
    reference: None,
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Split {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let task = task_arg(args, "task")?;
        let out = crate::data::split_dev(&task, args.float("dev_fraction")?, seed_arg(args, cx)?)?;
        task_value(cx, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskData;
    use crate::ops::data::testutil::movies;

    #[test]
    fn moves_a_fraction_into_dev() {
        let d = tempfile::tempdir().unwrap();
        let t = movies(&d.path().join("src"), 100);
        let args = |f: f64| {
            Args::new(vec![
                ("task", t.clone()),
                ("dev_fraction", Value::Float(f)),
                ("seed", Value::Int(0)),
            ])
        };
        let mut cx = OpCtx::for_test(d.path().join("out"), 0);
        let v = Split.run(&mut cx, &args(0.2)).unwrap();
        let s = TaskData::from_artifact(v.as_artifact().unwrap()).unwrap();
        assert_eq!((s.train().len(), s.dev().len()), (80, 20));
        let e = Split.run(&mut cx, &args(0.0)).unwrap_err();
        assert!(e.message.contains("fraction 0"), "{}", e.message);
    }
}
