//! `data subsample(task, n, stratified, split, seed)`: keep `n` examples of one split, label
//! proportions kept when stratified (methods.md §1.3 down-sampling; S1 keeps
//! `max(min_samples, ⌊ratio·n⌋)` examples with `random_state=0`, hence the default seed 0).

use super::{seed_arg, seed_param, task_arg, task_value};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Subsample;

static SIG: Signature = Signature {
    id: "data.subsample",
    version: 1,
    summary: "Keep n examples of a split (stratified by label by default).",
    doc: "Draws a seeded permutation of the split and keeps `n` examples: with `stratified=true` each \
          label keeps its share of `n` (largest remainder), otherwise the first `n` of the \
          permutation. Kept examples stay in file order with their ids; other splits are unchanged. \
          An `n` at least the split's size keeps every example.",
    params: &[
        Param::req("task", Ty::Task, "The task to down-sample."),
        Param::req("n", Ty::Int, "How many examples to keep.").range(1.0, 1e12),
        Param::opt("stratified", Ty::Bool, Const::Bool(true), "Keep the label proportions."),
        Param::opt(
            "split",
            Ty::Enum(&["train", "dev", "test"]),
            Const::Str("train"),
            "Which split to down-sample.",
        ),
        seed_param(0),
    ],
    returns: Ty::Task,
    ret_fn: None,
    examples: &[
        "let t = load task(\"experiments/data/movies\")\nlet small = data subsample(t, 100)",
        "let t = load task(\"experiments/data/topics\")\nlet s = data subsample(t, 50, stratified=false, split=test, seed=3)",
    ],
    reference: None,
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Subsample {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let task = task_arg(args, "task")?;
        let n = args.int("n")?.max(0) as usize;
        let split = args.str("split")?;
        let small = crate::data::subsample(
            &task,
            split,
            n,
            args.bool("stratified")?,
            seed_arg(args, cx)?,
        )?;
        task_value(cx, &small)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskData;
    use crate::ops::data::testutil::movies;

    #[test]
    fn keeps_n_stratified() {
        let d = tempfile::tempdir().unwrap();
        let t = movies(&d.path().join("src"), 100);
        let args = Args::new(vec![
            ("task", t),
            ("n", Value::Int(20)),
            ("stratified", Value::Bool(true)),
            ("split", Value::str("train")),
            ("seed", Value::Int(0)),
        ]);
        let mut cx = OpCtx::for_test(d.path().join("out"), 0);
        let v = Subsample.run(&mut cx, &args).unwrap();
        let s = TaskData::from_artifact(v.as_artifact().unwrap()).unwrap();
        assert_eq!(s.train().len(), 20);
        assert_eq!(s.test().len(), 50);
        let c = s.label_counts("train");
        assert!(c[0].abs_diff(c[1]) <= 4, "{c:?}");
    }
}
