//! `len(xs)`: the number of elements of a list (does not realise the elements).

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Len;

static SIG: Signature = Signature {
    id: "len",
    version: 1,
    summary: "Number of elements of a list.",
    doc: "Counts the elements without realising them, so `len([train lora(m, t) for t in ts])` costs nothing.",
    params: &[Param::req("xs", Ty::List(&Ty::Any), "The list.")],
    returns: Ty::Int,
    ret_fn: None,
    examples: &["let n = len([1, 2, 3])"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

impl Operator for Len {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let xs = force(args.get("xs")?)?;
        let n = xs
            .as_list()
            .map(|l| l.len())
            .ok_or_else(|| OpError::new("smelt::run::argument", "`len` needs a list"))?;
        Ok(Value::Int(n as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let args = Args::new(vec![(
            "xs",
            Value::list(vec![Value::Int(1), Value::Int(2)]),
        )]);
        assert_eq!(
            Len.eval(&args, &mut crate::ops::helpers::no_force).unwrap(),
            Value::Int(2)
        );
    }
}
