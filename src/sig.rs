//! Operator signatures: the one declaration of each operator's name, parameters, types,
//! defaults, ranges, docs, examples and version.
//!
//! Kept free of candle and IO so the checker (`types`) and `doc` can use it; the `Operator`
//! trait that runs operators lives in `ops`.

use crate::types::{Ty, Type};
use crate::value::Value;

/// A default value in a signature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    None,
    EmptyList,
}

impl Const {
    pub fn value(&self) -> Value {
        match self {
            Const::Int(i) => Value::Int(*i),
            Const::Float(x) => Value::Float(*x),
            Const::Bool(b) => Value::Bool(*b),
            Const::Str(s) => Value::str(s),
            Const::None => Value::None,
            Const::EmptyList => Value::list(vec![]),
        }
    }

    pub fn render(&self) -> String {
        match self {
            Const::Str(s) => format!("{s:?}"),
            other => other.value().display(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    /// `None` = required.
    pub default: Option<Const>,
    pub doc: &'static str,
    /// Inclusive numeric range checked on literal arguments.
    pub range: Option<(f64, f64)>,
}

impl Param {
    pub const fn req(name: &'static str, ty: Ty, doc: &'static str) -> Param {
        Param {
            name,
            ty,
            default: None,
            doc,
            range: None,
        }
    }

    pub const fn opt(name: &'static str, ty: Ty, default: Const, doc: &'static str) -> Param {
        Param {
            name,
            ty,
            default: Some(default),
            doc,
            range: None,
        }
    }

    pub const fn range(mut self, lo: f64, hi: f64) -> Param {
        self.range = Some((lo, hi));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Determinism {
    /// Same inputs, same output; no randomness.
    Pure,
    /// Draws random numbers from the node's derived seed.
    Seeded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A cached DAG node.
    Node,
    /// Evaluated on the spot, never cached.
    Helper,
}

/// Computes a generic helper's result type from its argument types (in parameter order).
pub type RetFn = fn(&[Type]) -> Type;

#[derive(Debug)]
pub struct Signature {
    /// `family.method` for `VERB METHOD(...)` calls, a bare name for helpers.
    pub id: &'static str,
    /// Bump when the semantics change: part of every cache key.
    pub version: u32,
    pub summary: &'static str,
    pub doc: &'static str,
    pub params: &'static [Param],
    pub returns: Ty,
    pub ret_fn: Option<RetFn>,
    /// Programs that must type-check (a registry test checks every one).
    pub examples: &'static [&'static str],
    pub reference: Option<&'static str>,
    pub determinism: Determinism,
    pub kind: OpKind,
    /// Pairs of list parameters that must have equal lengths.
    pub same_length: &'static [(&'static str, &'static str)],
    /// Cheap enough to run during `smelt check`/`plan` (reads headers only).
    pub cheap: bool,
}

impl Signature {
    pub fn family(&self) -> Option<&'static str> {
        self.id.split_once('.').map(|(f, _)| f)
    }

    /// Where `:ops` and `smelt doc` list it: the family, `helpers` for helpers, or the id of
    /// a plain-call node operator (`evaluate`).
    pub fn group(&self) -> &'static str {
        match (self.family(), self.kind) {
            (Some(f), _) => f,
            (None, OpKind::Helper) => "helpers",
            (None, OpKind::Node) => self.id,
        }
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// `merge linear(models: List<Model>, weights: List<Float>, dtype: … = "auto") -> Model`
    pub fn render(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("{}: {} = {}", p.name, p.ty, d.render()),
                None => format!("{}: {}", p.name, p.ty),
            })
            .collect();
        format!(
            "{}({}) -> {}",
            self.call_syntax(),
            params.join(", "),
            self.returns
        )
    }

    /// How the call is written in a program: `merge linear` or `len`.
    pub fn call_syntax(&self) -> String {
        self.id.replacen('.', " ", 1)
    }
}

/// Looks up signatures by id (implemented by `ops::Registry`).
pub trait SigLookup {
    fn sig(&self, id: &str) -> Option<&'static Signature>;
    fn ids(&self) -> Vec<&'static str>;
}
