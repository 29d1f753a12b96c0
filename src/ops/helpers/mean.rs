//! `mean(xs)`: arithmetic mean of a non-empty list of numbers (realises them).

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Mean;

static SIG: Signature = Signature {
    id: "mean",
    version: 1,
    summary: "Arithmetic mean of a list of numbers.",
    doc: "Realises its argument. An empty list is an error.",
    params: &[Param::req("xs", Ty::List(&Ty::Float), "The numbers.")],
    returns: Ty::Float,
    ret_fn: None,
    examples: &["let m = mean([1, 2, 3.5])"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

impl Operator for Mean {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let xs = super::numbers("mean", args.get("xs")?, force)?;
        if xs.is_empty() {
            return Err(OpError::new(
                "smelt::run::argument",
                "`mean` of an empty list",
            ));
        }
        Ok(Value::Float(xs.iter().sum::<f64>() / xs.len() as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_empty() {
        let f = &mut crate::ops::helpers::no_force;
        let xs = Value::list(vec![Value::Int(1), Value::Float(2.0), Value::Int(3)]);
        assert_eq!(
            Mean.eval(&Args::new(vec![("xs", xs)]), f).unwrap(),
            Value::Float(2.0)
        );
        assert!(Mean
            .eval(&Args::new(vec![("xs", Value::list(vec![]))]), f)
            .is_err());
    }
}
