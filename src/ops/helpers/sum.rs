//! `sum(xs)`: sum of a list of numbers; an all-integer list sums to an Int.

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::types::{Ty, Type};
use crate::value::Value;

pub struct Sum;

fn ret(args: &[Type]) -> Type {
    match &args[0] {
        Type::List(e, _) if **e == Type::Int => Type::Int,
        _ => Type::Float,
    }
}

static SIG: Signature = Signature {
    id: "sum",
    version: 1,
    summary: "Sum of a list of numbers.",
    doc: "Realises its argument. Integers sum to an integer; anything else to a float. `sum([])` is 0.",
    params: &[Param::req("xs", Ty::List(&Ty::Float), "The numbers.")],
    returns: Ty::Float,
    ret_fn: Some(ret),
    examples: &["let total = sum([1, 2, 3])"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

impl Operator for Sum {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let list = force(args.get("xs")?)?;
        let items = list.as_list().unwrap_or(&[]);
        let realised: Vec<Value> = items.iter().map(&mut *force).collect::<Result<_, _>>()?;
        if realised.iter().all(|x| matches!(x, Value::Int(_))) {
            let mut total: i64 = 0;
            for x in &realised {
                if let Value::Int(i) = x {
                    total = total.checked_add(*i).ok_or_else(|| {
                        OpError::new("smelt::run::overflow", "integer overflow in `sum`")
                    })?;
                }
            }
            return Ok(Value::Int(total));
        }
        Ok(Value::Float(
            super::numbers("sum", &list, force)?.iter().sum(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_and_floats() {
        let f = &mut crate::ops::helpers::no_force;
        let ints = Value::list(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(
            Sum.eval(&Args::new(vec![("xs", ints)]), f).unwrap(),
            Value::Int(3)
        );
        let mixed = Value::list(vec![Value::Int(1), Value::Float(0.5)]);
        assert_eq!(
            Sum.eval(&Args::new(vec![("xs", mixed)]), f).unwrap(),
            Value::Float(1.5)
        );
    }
}
