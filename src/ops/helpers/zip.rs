//! `zip(xs, ys)`: pairs of corresponding elements, for `for (a, b) in zip(xs, ys)`.
//! Lists of different lengths are an error (silently truncating would hide a bug).

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::types::{Ty, Type};
use crate::value::Value;
use std::sync::Arc;

pub struct Zip;

fn ret(args: &[Type]) -> Type {
    let elem = |t: &Type| match t {
        Type::List(e, _) => (**e).clone(),
        _ => Type::Unknown,
    };
    let len = match (&args[0], &args[1]) {
        (Type::List(_, Some(n)), Type::List(_, Some(m))) if n == m => Some(*n),
        _ => None,
    };
    Type::List(
        Box::new(Type::Tuple(vec![elem(&args[0]), elem(&args[1])])),
        len,
    )
}

static SIG: Signature = Signature {
    id: "zip",
    version: 1,
    summary: "Pair up two lists of equal length.",
    doc: "Returns a list of pairs `(xs[i], ys[i])`. The lists must have the same length.",
    params: &[
        Param::req("xs", Ty::List(&Ty::Any), "First list."),
        Param::req("ys", Ty::List(&Ty::Any), "Second list."),
    ],
    returns: Ty::List(&Ty::Any),
    ret_fn: Some(ret),
    examples: &["let ps = [a + b for (a, b) in zip([1, 2], [3, 4])]"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[("xs", "ys")],
    cheap: true,
};

impl Operator for Zip {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let xs = force(args.get("xs")?)?;
        let ys = force(args.get("ys")?)?;
        let (Some(xs), Some(ys)) = (xs.as_list(), ys.as_list()) else {
            return Err(OpError::new(
                "smelt::run::argument",
                "`zip` needs two lists",
            ));
        };
        if xs.len() != ys.len() {
            return Err(OpError::new(
                "smelt::run::length_mismatch",
                format!(
                    "`zip` of lists with different lengths ({} and {})",
                    xs.len(),
                    ys.len()
                ),
            ));
        }
        Ok(Value::list(
            xs.iter()
                .zip(ys)
                .map(|(a, b)| Value::Tuple(Arc::new(vec![a.clone(), b.clone()])))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_rejects_unequal() {
        let l = |v: Vec<i64>| Value::list(v.into_iter().map(Value::Int).collect());
        let args = Args::new(vec![("xs", l(vec![1, 2])), ("ys", l(vec![3, 4]))]);
        let out = Zip.eval(&args, &mut crate::ops::helpers::no_force).unwrap();
        assert_eq!(out.as_list().unwrap().len(), 2);
        let bad = Args::new(vec![("xs", l(vec![1])), ("ys", l(vec![3, 4]))]);
        assert_eq!(
            Zip.eval(&bad, &mut crate::ops::helpers::no_force)
                .unwrap_err()
                .code,
            "smelt::run::length_mismatch"
        );
    }
}
