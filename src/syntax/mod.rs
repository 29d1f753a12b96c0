//! The pest boundary: `.exp` text → spanned [`ast`].
//!
//! Invariant: pest types (`Pair`, `Rule`) never leave this module. Parsing reports one error
//! (pest stops at the first); the checker collects all later errors.

pub mod ast;
mod parser;

pub use parser::{parse, parse_expr, parse_line, Line};
