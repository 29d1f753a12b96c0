//! Typed access to an operator's arguments by declared parameter name.
//!
//! The checker has already matched positional and named arguments to parameters and filled
//! defaults, so accessors only fail on internal mistakes (a name not in the signature) or on
//! values only known at run time (an artifact of the wrong kind), with a clear error.

use crate::diag::OpError;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Args {
    pub values: Vec<(&'static str, Value)>,
}

impl Args {
    pub fn new(values: Vec<(&'static str, Value)>) -> Args {
        Args { values }
    }

    pub fn get(&self, name: &str) -> Result<&Value, OpError> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| OpError::new("smelt::internal", format!("no argument `{name}`")))
    }

    pub fn float(&self, name: &str) -> Result<f64, OpError> {
        let v = self.get(name)?;
        v.as_f64().ok_or_else(|| wrong(name, "a number", v))
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f64>, OpError> {
        match self.get(name)? {
            Value::None => Ok(None),
            _ => self.float(name).map(Some),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64, OpError> {
        match self.get(name)? {
            Value::Int(i) => Ok(*i),
            v => Err(wrong(name, "an integer", v)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, OpError> {
        match self.get(name)? {
            Value::Bool(b) => Ok(*b),
            v => Err(wrong(name, "a boolean", v)),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, OpError> {
        let v = self.get(name)?;
        v.as_str().ok_or_else(|| wrong(name, "a string", v))
    }

    pub fn list(&self, name: &str) -> Result<&[Value], OpError> {
        let v = self.get(name)?;
        v.as_list().ok_or_else(|| wrong(name, "a list", v))
    }

    pub fn floats(&self, name: &str) -> Result<Vec<f64>, OpError> {
        self.list(name)?
            .iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| wrong(name, "a list of numbers", v))
            })
            .collect()
    }

    /// A realised artifact of the given kind.
    pub fn artifact(&self, name: &str, kind: Kind) -> Result<&Arc<Artifact>, OpError> {
        as_artifact(name, self.get(name)?, kind)
    }

    /// A list of realised artifacts of the given kind.
    pub fn artifacts(&self, name: &str, kind: Kind) -> Result<Vec<&Arc<Artifact>>, OpError> {
        self.list(name)?
            .iter()
            .map(|v| as_artifact(name, v, kind))
            .collect()
    }
}

fn as_artifact<'a>(name: &str, v: &'a Value, kind: Kind) -> Result<&'a Arc<Artifact>, OpError> {
    match v {
        Value::Artifact(a) if a.kind == kind => Ok(a),
        v => Err(wrong(name, &format!("a {kind:?}"), v)),
    }
}

fn wrong(name: &str, want: &str, got: &Value) -> OpError {
    OpError::new(
        "smelt::run::argument",
        format!("argument `{name}` should be {want}, got {}", got.display()),
    )
}
