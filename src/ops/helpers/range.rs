//! `range(n)` / `range(start, stop)`: the integers `start, …, stop-1`.

use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Range;

static SIG: Signature = Signature {
    id: "range",
    version: 1,
    summary: "Integers from `start` (inclusive) to `stop` (exclusive).",
    doc: "`range(3)` is `[0, 1, 2]`; `range(2, 5)` is `[2, 3, 4]`. At most 10 million elements.",
    params: &[
        Param::req(
            "a",
            Ty::Int,
            "The stop (one argument) or the start (two arguments).",
        ),
        Param::opt(
            "b",
            Ty::Opt(&Ty::Int),
            Const::None,
            "The stop, when a start is given.",
        ),
    ],
    returns: Ty::List(&Ty::Int),
    ret_fn: None,
    examples: &["let xs = [i * 2 for i in range(4)]", "let ys = range(1, 3)"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

impl Operator for Range {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let int = |v: Value| match v {
            Value::Int(i) => Ok(i),
            v => Err(OpError::new(
                "smelt::run::argument",
                format!("`range` needs integers, got {}", v.display()),
            )),
        };
        let a = int(force(args.get("a")?)?)?;
        let (start, stop) = match force(args.get("b")?)? {
            Value::None => (0, a),
            b => (a, int(b)?),
        };
        if stop.saturating_sub(start) > 10_000_000 {
            return Err(OpError::new(
                "smelt::run::argument",
                "`range` would have more than 10 million elements",
            ));
        }
        Ok(Value::list(
            (start..stop.max(start)).map(Value::Int).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_two_arguments() {
        let f = &mut crate::ops::helpers::no_force;
        let r = Range
            .eval(
                &Args::new(vec![("a", Value::Int(3)), ("b", Value::None)]),
                f,
            )
            .unwrap();
        assert_eq!(
            r,
            Value::list(vec![Value::Int(0), Value::Int(1), Value::Int(2)])
        );
        let r = Range
            .eval(
                &Args::new(vec![("a", Value::Int(2)), ("b", Value::Int(4))]),
                f,
            )
            .unwrap();
        assert_eq!(r, Value::list(vec![Value::Int(2), Value::Int(3)]));
        let r = Range
            .eval(
                &Args::new(vec![("a", Value::Int(5)), ("b", Value::Int(1))]),
                f,
            )
            .unwrap();
        assert_eq!(r, Value::list(vec![]));
    }
}
