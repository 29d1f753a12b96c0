//! `data synthetic(name, kind, n, noise, seed)`: generate a small task with planted structure
//! into the store (`crate::data::synthetic`): `movies`/`products` share a sentiment lexicon,
//! `restaurants` shares half of it, `topics` is unrelated. The committed quickstart data in
//! `experiments/data/` is this operator's output with the default `n`, `noise` and `seed`.

use super::{seed_arg, seed_param, task_value};
use crate::data::synthetic::{generate, SynthSpec, KINDS};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Synthetic;

/// Train examples per task in the committed `experiments/data/` sets.
pub const DEFAULT_N: i64 = 240;

static SIG: Signature = Signature {
    id: "data.synthetic",
    version: 1,
    summary: "Generate a small synthetic classification task with planted, shared label signals.",
    doc: "Kinds: `movies` and `products` (sentiment, one shared lexicon, different nouns: related \
          tasks), `restaurants` (half of that lexicon plus its own words: partly related), `topics` \
          (sports vs science by nouns, sentiment words at random: unrelated). `n` train examples, \
          `n/4` dev and `n/2` test, labels balanced, a fraction `noise` of labels flipped. Every \
          word is a single token of the committed minilm-l3-v8k vocabulary.",
    params: &[
        Param::req("name", Ty::Str, "Task name."),
        Param::opt("kind", Ty::Enum(KINDS), Const::Str("movies"), "Which planted signal."),
        Param::opt("n", Ty::Int, Const::Int(DEFAULT_N), "Train examples (dev n/4, test n/2).")
            .range(2.0, 1e7),
        Param::opt("noise", Ty::Float, Const::Float(0.1), "Fraction of labels flipped.").range(0.0, 0.49),
        seed_param(0),
    ],
    returns: Ty::Task,
    ret_fn: None,
    examples: &[
        "let t = data synthetic(\"movies\", kind=movies, n=64)",
        "let ts = [data synthetic(k, kind=k) for k in [\"movies\", \"products\", \"restaurants\", \"topics\"]]",
    ],
    reference: None,
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Synthetic {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let n = args.int("n")?.max(2) as usize;
        let spec = SynthSpec::new(
            args.str("name")?,
            args.str("kind")?,
            n,
            args.float("noise")?,
            seed_arg(args, cx)?,
        );
        task_value(cx, &generate(&spec)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskData;

    #[test]
    fn writes_a_task_artifact() {
        let d = tempfile::tempdir().unwrap();
        let args = Args::new(vec![
            ("name", Value::str("x")),
            ("kind", Value::str("topics")),
            ("n", Value::Int(40)),
            ("noise", Value::Float(0.0)),
            ("seed", Value::Int(0)),
        ]);
        let mut cx = OpCtx::for_test(d.path().to_path_buf(), 0);
        let v = Synthetic.run(&mut cx, &args).unwrap();
        let a = v.as_artifact().unwrap();
        assert_eq!(a.data["n_train"], 40);
        assert_eq!(a.data["labels"], serde_json::json!(["sports", "science"]));
        let t = TaskData::from_artifact(a).unwrap();
        assert_eq!(
            (t.name.as_str(), t.dev().len(), t.test().len()),
            ("x", 10, 20)
        );
    }
}
