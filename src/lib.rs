//! smelt: a small typed language for multi-task fine-tuning experiments.
//!
//! Pipeline: `syntax` (pest → AST) → `types` (name resolution + checking against operator
//! signatures) → `eval` (builds a DAG of operator nodes with content keys) → `exec` (realises
//! nodes through the content-addressed `cache`). Operators live in `ops`, one file each.
//! Invariant: `syntax` and `types` never import candle or do IO.

// Diagnostics are large (spans, labels, help) but only travel on the error path, where
// their size costs nothing measurable; boxing them everywhere would obscure the code.
#![allow(clippy::result_large_err)]

pub mod bench;
pub mod cache;
pub mod data;
pub mod diag;
pub mod doc;
pub mod eval;
pub mod nn;
pub mod ops;
pub mod plan;
pub mod repl;
pub mod report;
pub mod run;
pub mod session;
pub mod sig;
pub mod source;
pub mod stdlib;
pub mod syntax;
pub mod tensors;
pub mod train;
pub mod types;
pub mod value;
