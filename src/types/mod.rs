//! Types of the `.exp` language.
//!
//! [`Ty`] is the static schema written in operator signatures (usable in `static`s);
//! [`Type`] is what the checker infers for expressions. `accepts(ty, t)` is the subtyping rule:
//! `Int ≤ Float`, `Str ≤ Path`, `Str ≤ Enum` (checked against the allowed words), lists are
//! covariant, `Unknown` (error recovery / not yet known) is accepted everywhere.

pub mod calls;
pub mod check;
mod check_call;
mod check_expr;

use std::collections::BTreeMap;
use std::fmt;

/// A parameter or return type as declared in a `Signature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ty {
    Int,
    Float,
    Bool,
    Str,
    Path,
    /// One of the listed words; written as a string or a bare word (`labels=sampled`).
    Enum(&'static [&'static str]),
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
    Record,
    List(&'static Ty),
    /// Either of two types (e.g. `Float | List<Float>`).
    Either(&'static Ty, &'static Ty),
    /// Optional: the type or `none`.
    Opt(&'static Ty),
    /// Any value (generic helpers compute their result type themselves).
    Any,
}

/// An inferred type.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Int,
    Float,
    Bool,
    Str,
    Path,
    None,
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
    /// A list with its element type and, when known statically, its length.
    List(Box<Type>, Option<usize>),
    Tuple(Vec<Type>),
    Record(BTreeMap<String, Type>),
    /// Unknown: an earlier error, or a value only known after running.
    Unknown,
}

impl Type {
    pub fn list(elem: Type) -> Type {
        Type::List(Box::new(elem), None)
    }

    /// The type a declared `Ty` produces (for return types).
    pub fn from_ty(ty: &Ty) -> Type {
        match ty {
            Ty::Int => Type::Int,
            Ty::Float => Type::Float,
            Ty::Bool => Type::Bool,
            Ty::Str | Ty::Enum(_) => Type::Str,
            Ty::Path => Type::Path,
            Ty::Model => Type::Model,
            Ty::Adapter => Type::Adapter,
            Ty::Delta => Type::Delta,
            Ty::Task => Type::Task,
            Ty::Fisher => Type::Fisher,
            Ty::Gradients => Type::Gradients,
            Ty::Matrix => Type::Matrix,
            Ty::Partition => Type::Partition,
            Ty::Ensemble => Type::Ensemble,
            Ty::Predictions => Type::Predictions,
            Ty::Metrics => Type::Metrics,
            Ty::Table => Type::Table,
            Ty::Figure => Type::Figure,
            Ty::Record => Type::Record(BTreeMap::new()),
            Ty::List(e) => Type::list(Type::from_ty(e)),
            Ty::Either(a, _) => Type::from_ty(a),
            Ty::Opt(a) => Type::from_ty(a),
            Ty::Any => Type::Unknown,
        }
    }

    /// Types a user may write in a `def` parameter annotation.
    pub fn from_name(name: &str, args: &[Type]) -> Option<Type> {
        Some(match (name, args) {
            ("Int", []) => Type::Int,
            ("Float", []) => Type::Float,
            ("Bool", []) => Type::Bool,
            ("Str", []) => Type::Str,
            ("Path", []) => Type::Path,
            ("Model", []) => Type::Model,
            ("Adapter", []) => Type::Adapter,
            ("Delta", []) => Type::Delta,
            ("Task", []) => Type::Task,
            ("Fisher", []) => Type::Fisher,
            ("Gradients", []) => Type::Gradients,
            ("Matrix", []) => Type::Matrix,
            ("Partition", []) => Type::Partition,
            ("Ensemble", []) => Type::Ensemble,
            ("Predictions", []) => Type::Predictions,
            ("Metrics", []) => Type::Metrics,
            ("Table", []) => Type::Table,
            ("Figure", []) => Type::Figure,
            ("Record", []) => Type::Record(BTreeMap::new()),
            ("Any", []) => Type::Unknown,
            ("List", [e]) => Type::list(e.clone()),
            _ => return None,
        })
    }

    /// Names accepted by [`Type::from_name`] (for "did you mean").
    pub const NAMES: &'static [&'static str] = &[
        "Int",
        "Float",
        "Bool",
        "Str",
        "Path",
        "Model",
        "Adapter",
        "Delta",
        "Task",
        "Fisher",
        "Gradients",
        "Matrix",
        "Partition",
        "Ensemble",
        "Predictions",
        "Metrics",
        "Table",
        "Figure",
        "Record",
        "Any",
        "List",
    ];

    pub fn is_numeric(&self) -> bool {
        matches!(self, Type::Int | Type::Float | Type::Unknown)
    }
}

/// Is a value of inferred type `t` acceptable where `ty` is declared?
pub fn accepts(ty: &Ty, t: &Type) -> bool {
    if matches!(t, Type::Unknown) {
        return true;
    }
    match (ty, t) {
        (Ty::Any, _) => true,
        (Ty::Float, Type::Int | Type::Float) => true,
        (Ty::Int, Type::Int) => true,
        (Ty::Bool, Type::Bool) => true,
        (Ty::Str, Type::Str) => true,
        (Ty::Path, Type::Str | Type::Path) => true,
        (Ty::Enum(_), Type::Str) => true,
        (Ty::Model, Type::Model) => true,
        (Ty::Adapter, Type::Adapter) => true,
        (Ty::Delta, Type::Delta) => true,
        (Ty::Task, Type::Task) => true,
        (Ty::Fisher, Type::Fisher) => true,
        (Ty::Gradients, Type::Gradients) => true,
        (Ty::Matrix, Type::Matrix) => true,
        (Ty::Partition, Type::Partition) => true,
        (Ty::Ensemble, Type::Ensemble) => true,
        (Ty::Predictions, Type::Predictions) => true,
        (Ty::Metrics, Type::Metrics) => true,
        (Ty::Table, Type::Table) => true,
        (Ty::Figure, Type::Figure) => true,
        (Ty::Record, Type::Record(_)) => true,
        (Ty::List(e), Type::List(te, _)) => accepts(e, te),
        (Ty::Either(a, b), t) => accepts(a, t) || accepts(b, t),
        (Ty::Opt(_), Type::None) => true,
        (Ty::Opt(a), t) => accepts(a, t),
        _ => false,
    }
}

/// Do two inferred types agree (for list elements and `==`)? Int and Float unify.
pub fn unify(a: &Type, b: &Type) -> Option<Type> {
    match (a, b) {
        (Type::Unknown, t) | (t, Type::Unknown) => Some(t.clone()),
        (Type::Int, Type::Float) | (Type::Float, Type::Int) => Some(Type::Float),
        (Type::Str, Type::Path) | (Type::Path, Type::Str) => Some(Type::Str),
        (Type::List(x, n), Type::List(y, m)) => Some(Type::List(
            Box::new(unify(x, y)?),
            if n == m { *n } else { None },
        )),
        (Type::Record(x), Type::Record(y)) => {
            if x.keys().eq(y.keys()) {
                let mut out = BTreeMap::new();
                for (k, v) in x {
                    out.insert(k.clone(), unify(v, &y[k])?);
                }
                Some(Type::Record(out))
            } else {
                None
            }
        }
        (Type::Tuple(x), Type::Tuple(y)) if x.len() == y.len() => Some(Type::Tuple(
            x.iter()
                .zip(y)
                .map(|(a, b)| unify(a, b))
                .collect::<Option<_>>()?,
        )),
        (a, b) if a == b => Some(a.clone()),
        _ => None,
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Enum(words) => write!(f, "{}", words.join("|")),
            Ty::List(e) => write!(f, "List<{e}>"),
            Ty::Either(a, b) => write!(f, "{a} | {b}"),
            Ty::Opt(a) => write!(f, "{a}?"),
            Ty::Any => write!(f, "Any"),
            other => write!(f, "{}", Type::from_ty(other)),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Type::Int => "Int",
            Type::Float => "Float",
            Type::Bool => "Bool",
            Type::Str => "Str",
            Type::Path => "Path",
            Type::None => "None",
            Type::Model => "Model",
            Type::Adapter => "Adapter",
            Type::Delta => "Delta",
            Type::Task => "Task",
            Type::Fisher => "Fisher",
            Type::Gradients => "Gradients",
            Type::Matrix => "Matrix",
            Type::Partition => "Partition",
            Type::Ensemble => "Ensemble",
            Type::Predictions => "Predictions",
            Type::Metrics => "Metrics",
            Type::Table => "Table",
            Type::Figure => "Figure",
            Type::Unknown => "?",
            Type::List(e, Some(n)) => return write!(f, "List<{e}>[{n}]"),
            Type::List(e, None) => return write!(f, "List<{e}>"),
            Type::Tuple(ts) => {
                let parts: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
                return write!(f, "({})", parts.join(", "));
            }
            Type::Record(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                return write!(f, "{{{}}}", parts.join(", "));
            }
        };
        write!(f, "{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtyping_rules() {
        assert!(accepts(&Ty::Float, &Type::Int));
        assert!(!accepts(&Ty::Int, &Type::Float));
        assert!(accepts(&Ty::Path, &Type::Str));
        assert!(accepts(
            &Ty::List(&Ty::Float),
            &Type::List(Box::new(Type::Int), Some(3))
        ));
        assert!(!accepts(&Ty::List(&Ty::Model), &Type::Model));
        assert!(accepts(&Ty::Opt(&Ty::Model), &Type::None));
        assert!(accepts(&Ty::Model, &Type::Unknown));
    }

    #[test]
    fn unify_numbers_and_lists() {
        assert_eq!(unify(&Type::Int, &Type::Float), Some(Type::Float));
        assert_eq!(unify(&Type::Model, &Type::Task), None);
        assert_eq!(
            unify(
                &Type::List(Box::new(Type::Int), Some(2)),
                &Type::List(Box::new(Type::Int), Some(3))
            ),
            Some(Type::List(Box::new(Type::Int), None))
        );
    }

    #[test]
    fn display() {
        assert_eq!(Ty::List(&Ty::Model).to_string(), "List<Model>");
        assert_eq!(Ty::Enum(&["a", "b"]).to_string(), "a|b");
        assert_eq!(
            Type::List(Box::new(Type::Float), Some(2)).to_string(),
            "List<Float>[2]"
        );
    }
}
