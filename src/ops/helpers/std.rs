//! `std(xs, ddof=0)`: standard deviation of a non-empty list of numbers (realises them).
//!
//! Papers report "mean (std) over seeds"; LM-Kernel-FT's `tools/gather_result.py` (methods.md
//! §4.2 step 6) takes `np.std`, the population deviation (`ddof = 0`), which is the default
//! here; `ddof=1` gives the sample deviation. Computed in two passes (mean, then squared
//! deviations) so a constant list gives exactly 0.

use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;

pub struct Std;

static SIG: Signature = Signature {
    id: "std",
    version: 1,
    summary: "Standard deviation of a list of numbers (population by default, as np.std).",
    doc: "Realises its argument. sqrt(Σ (x − mean)² / (n − ddof)); `ddof=0` (the default, \
          numpy's and the papers' `np.std`) is the population deviation, `ddof=1` the sample \
          deviation. An empty list, or n ≤ ddof, is an error.",
    params: &[
        Param::req("xs", Ty::List(&Ty::Float), "The numbers."),
        Param::opt(
            "ddof",
            Ty::Int,
            Const::Int(0),
            "Delta degrees of freedom: the divisor is n − ddof.",
        )
        .range(0.0, 1.0),
    ],
    returns: Ty::Float,
    ret_fn: None,
    examples: &[
        "let s = std([0.8, 0.9, 1.0])",
        "let s1 = std([1, 2, 3], ddof=1)",
    ],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Helper,
    same_length: &[],
    cheap: true,
};

/// `sqrt(Σ (x − x̄)² / (n − ddof))`, or `None` when n ≤ ddof.
pub fn std_dev(xs: &[f64], ddof: usize) -> Option<f64> {
    if xs.len() <= ddof || xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    Some((ss / (n - ddof as f64)).sqrt())
}

impl Operator for Std {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn eval(
        &self,
        args: &Args,
        force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        let xs = super::numbers("std", args.get("xs")?, force)?;
        let ddof = match args.get("ddof") {
            Ok(v) => force(v)?.as_f64().unwrap_or(0.0).max(0.0) as usize,
            Err(_) => 0,
        };
        std_dev(&xs, ddof).map(Value::Float).ok_or_else(|| {
            OpError::new(
                "smelt::run::argument",
                format!(
                    "`std` of {} number(s) with ddof={ddof} (needs more than {ddof})",
                    xs.len()
                ),
            )
            .with_help("give a longer list, or ddof=0")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(xs: &[f64]) -> Value {
        Value::list(xs.iter().map(|&x| Value::Float(x)).collect())
    }

    #[test]
    fn population_and_sample_deviations_match_hand_values() {
        let f = &mut crate::ops::helpers::no_force;
        // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, Σ(x − 5)² = 32 → population √4 = 2, sample √(32/7).
        let xs = list(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        let pop = Std.eval(&Args::new(vec![("xs", xs.clone())]), f).unwrap();
        assert_eq!(pop, Value::Float(2.0));
        let a = Args::new(vec![("xs", xs), ("ddof", Value::Int(1))]);
        let Value::Float(s) = Std.eval(&a, f).unwrap() else {
            panic!("a float")
        };
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-15);
        // A constant list is exactly 0; ints are numbers too.
        let c = Value::list(vec![Value::Int(3), Value::Float(3.0), Value::Int(3)]);
        assert_eq!(
            Std.eval(&Args::new(vec![("xs", c)]), f).unwrap(),
            Value::Float(0.0)
        );
    }

    #[test]
    fn too_short_lists_are_errors() {
        let f = &mut crate::ops::helpers::no_force;
        assert!(Std.eval(&Args::new(vec![("xs", list(&[]))]), f).is_err());
        let one = Args::new(vec![("xs", list(&[1.0])), ("ddof", Value::Int(1))]);
        assert!(Std.eval(&one, f).is_err());
        assert_eq!(std_dev(&[1.0], 0), Some(0.0));
    }
}
