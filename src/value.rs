//! Run-time values of the language.
//!
//! Scalars, lists, tuples and records are plain data. A [`Value::Node`] is a reference to an
//! operator call that has not been realised yet (evaluation builds the DAG, realisation runs
//! it). Realised domain objects (models, tables, …) are [`Artifact`]s: a kind, a directory in the
//! store (or the user's input directory) and a small JSON payload. Every value has a canonical
//! hash ([`crate::cache::key`]) so cache keys never depend on realisation.

use crate::cache::key::Key;
use crate::types::Type;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Arc<str>),
    None,
    List(Arc<Vec<Value>>),
    Tuple(Arc<Vec<Value>>),
    /// Fields in the order written (hashing sorts them, so order never changes a key).
    Record(Arc<Record>),
    /// A not-yet-realised operator result (index into the evaluator's graph + its key).
    Node(NodeRef),
    /// A realised domain object.
    Artifact(Arc<Artifact>),
    /// Only known after running something that `smelt plan` may not run.
    Unknown(Type),
}

/// A record's fields, in the order written.
pub type Record = indexmap::IndexMap<String, Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    pub id: usize,
    pub key: Key,
    pub ty: Type,
}

/// What kind of domain object an artifact is (mirrors the domain [`Type`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Model,
    Adapter,
    Delta,
    Task,
    Fisher,
    Gradients,
    Matrix,
    Partition,
    Ensemble,
    Predictions,
    Metrics,
    Table,
    Figure,
}

impl Kind {
    pub fn ty(self) -> Type {
        match self {
            Kind::Model => Type::Model,
            Kind::Adapter => Type::Adapter,
            Kind::Delta => Type::Delta,
            Kind::Task => Type::Task,
            Kind::Fisher => Type::Fisher,
            Kind::Gradients => Type::Gradients,
            Kind::Matrix => Type::Matrix,
            Kind::Partition => Type::Partition,
            Kind::Ensemble => Type::Ensemble,
            Kind::Predictions => Type::Predictions,
            Kind::Metrics => Type::Metrics,
            Kind::Table => Type::Table,
            Kind::Figure => Type::Figure,
        }
    }
}

/// A realised domain object: files under `dir` plus a JSON payload (e.g. a table's rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub kind: Kind,
    /// Where its files live: a store object directory or a user input directory.
    pub dir: PathBuf,
    /// Content identity (node key for computed artifacts, content fingerprint for inputs).
    pub key: Key,
    pub data: serde_json::Value,
}

impl Value {
    pub fn str(s: impl AsRef<str>) -> Value {
        Value::Str(Arc::from(s.as_ref()))
    }

    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(xs) | Value::Tuple(xs) => Some(xs),
            _ => None,
        }
    }

    pub fn as_artifact(&self) -> Option<&Artifact> {
        match self {
            Value::Artifact(a) => Some(a),
            _ => None,
        }
    }

    /// Does this value (or anything inside it) still need realisation?
    pub fn has_nodes(&self) -> bool {
        match self {
            Value::Node(_) => true,
            Value::List(xs) | Value::Tuple(xs) => xs.iter().any(Value::has_nodes),
            Value::Record(r) => r.values().any(Value::has_nodes),
            _ => false,
        }
    }

    pub fn is_unknown(&self) -> bool {
        match self {
            Value::Unknown(_) => true,
            Value::List(xs) | Value::Tuple(xs) => xs.iter().any(Value::is_unknown),
            Value::Record(r) => r.values().any(Value::is_unknown),
            _ => false,
        }
    }

    /// A short human rendering for the REPL and reports (floats to 4 decimals).
    pub fn display(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(x) => fmt_float(*x),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::None => "none".into(),
            Value::List(xs) => {
                format!(
                    "[{}]",
                    xs.iter().map(Value::display).collect::<Vec<_>>().join(", ")
                )
            }
            Value::Tuple(xs) => {
                format!(
                    "({})",
                    xs.iter().map(Value::display).collect::<Vec<_>>().join(", ")
                )
            }
            Value::Record(r) => format!(
                "{{{}}}",
                r.iter()
                    .map(|(k, v)| format!("{k}: {}", v.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Node(n) => format!("<{} {}>", n.ty, n.key.short()),
            Value::Artifact(a) => match a.kind {
                Kind::Table => crate::report::Table::from_json(&a.data)
                    .map(|t| t.to_markdown())
                    .unwrap_or_else(|| "<Table>".into()),
                k => format!("<{:?} {}>", k, a.key.short()),
            },
            Value::Unknown(t) => format!("<{t}: known after running>"),
        }
    }
}

/// Floats print with up to 4 decimals (scientific notation for very small/large values).
pub fn fmt_float(x: f64) -> String {
    if x == 0.0 || (x.abs() >= 1e-3 && x.abs() < 1e7) {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0');
        let s = s
            .strip_suffix('.')
            .map(|p| format!("{p}.0"))
            .unwrap_or_else(|| s.to_string());
        s
    } else {
        format!("{x:.4e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_formatting() {
        assert_eq!(fmt_float(0.5), "0.5");
        assert_eq!(fmt_float(1.0), "1.0");
        assert_eq!(fmt_float(1e-12), "1.0000e-12");
        assert_eq!(fmt_float(0.123456), "0.1235");
    }
}
