//! Helpers on plain values (`len`, `zip`, `range`, `mean`, `sum`): evaluated on the spot by the
//! evaluator, never cached. They realise an argument only when they need its value (`mean` needs
//! the numbers, `len` and `zip` only the list structure), so `smelt plan` sees through them.

pub mod average_density;
pub mod groups;
pub mod len;
pub mod matrix;
pub mod mean;
pub mod range;
pub mod std;
pub mod sum;
pub mod zip;

use crate::diag::OpError;
use crate::value::Value;

/// Realise `v` and read it as a list of numbers.
pub(crate) fn numbers(
    name: &str,
    v: &Value,
    force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
) -> Result<Vec<f64>, OpError> {
    let v = force(v)?;
    let items = v.as_list().ok_or_else(|| {
        OpError::new(
            "smelt::run::argument",
            format!("`{name}` needs a list of numbers"),
        )
    })?;
    items
        .iter()
        .map(|x| {
            force(x)?.as_f64().ok_or_else(|| {
                OpError::new(
                    "smelt::run::argument",
                    format!("`{name}` needs numbers, found {}", x.display()),
                )
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) fn no_force(v: &Value) -> Result<Value, OpError> {
    Ok(v.clone())
}
