//! The standard library: `.exp` modules embedded in the binary, loaded by `use std.NAME`.
//!
//! They are compositions of built-in operators with `##` docs; they are parsed and checked like
//! user files (as virtual files `<stdlib>/NAME.exp`, so diagnostics point into them) and
//! evaluate down to built-in nodes, so editing a stdlib comment never changes a cache key.

/// `(module name, source)` for every stdlib module.
pub const MODULES: &[(&str, &str)] = &[
    ("merge", include_str!("../stdlib/merge.exp")),
    ("transfer", include_str!("../stdlib/transfer.exp")),
    ("affinity", include_str!("../stdlib/affinity.exp")),
    ("kernel", include_str!("../stdlib/kernel.exp")),
];

pub fn names() -> Vec<&'static str> {
    MODULES.iter().map(|(n, _)| *n).collect()
}

pub fn source(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
