//! The pest parser: `.exp` text → spanned [`ast`](super::ast) nodes, or one readable
//! [`Diagnostic`].
//!
//! The grammar lives in `grammar/smelt.pest`; this module and its children are the only place
//! that sees pest types (`Pair`, `Rule`, pest errors). This file holds the entry points and the
//! pest wrapper; the walk over pest's tree is split by what it converts:
//!
//! * [`tree`]: the conversion context [`Cx`](tree::Cx), token filtering, tight spans and the
//!   nesting limit shared by every conversion;
//! * [`stmt`]: statements, `def` (doc comments, parameters, types, block bodies);
//! * [`expr`]: expressions; precedence levels are separate grammar rules and binary and
//!   postfix operators are folded to the left by one shared helper;
//! * [`literal`]: number and string literals (range checks, escapes);
//! * [`error`]: pest errors → "expected `)`, found `x`"-style diagnostics with hints.

// `Diagnostic` is large, but it is the crate-wide error type and the signatures are fixed.
#![allow(clippy::result_large_err)]

mod error;
mod expr;
mod literal;
mod stmt;
#[cfg(test)]
mod testing;
mod tree;

use super::ast::*;
use crate::diag::Diagnostic;
use crate::source::FileId;
use pest::iterators::Pairs;
use pest::Parser as _;
use tree::Cx;

#[derive(pest_derive::Parser)]
#[grammar = "grammar/smelt.pest"]
struct SmeltParser;

/// Diagnostic code of every parse error.
const CODE: &str = "smelt::parse::syntax";

/// Every reserved word; none of them can be used as a name.
const RESERVED: &[&str] = &[
    "let", "def", "use", "import", "config", "report", "as", "save", "to", "plot", "expect",
    "within", "for", "in", "if", "true", "false", "none", "and", "or", "not",
];

/// One REPL line: either statements or a single bare expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Stmts(Vec<Stmt>),
    Expr(Expr),
}

/// Parse a whole `.exp` file (statements only; a bare expression is a syntax error).
pub fn parse(file: FileId, src: &str) -> Result<Module, Diagnostic> {
    let (top, cx) = run(Rule::file, file, src)?;
    let stmts = top
        .filter(|p| p.as_rule() == Rule::stmt)
        .map(|p| cx.stmt(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Module { stmts })
}

/// Parse exactly one expression (e.g. the value of `--set name=value`).
pub fn parse_expr(file: FileId, src: &str) -> Result<Expr, Diagnostic> {
    let (mut top, cx) = run(Rule::expr_only, file, src)?;
    let e = top
        .find(|p| p.as_rule() == Rule::expr)
        .expect("grammar: expr_only has an expr");
    cx.expr(e)
}

/// Parse a REPL line: statements if it is one or more statements, or else a bare expression.
/// An empty (or comment-only) line is `Line::Stmts(vec![])`.
pub fn parse_line(file: FileId, src: &str) -> Result<Line, Diagnostic> {
    let (top, cx) = run(Rule::repl_line, file, src)?;
    let mut stmts = Vec::new();
    for p in top {
        match p.as_rule() {
            Rule::stmt => stmts.push(cx.stmt(p)?),
            Rule::expr => return Ok(Line::Expr(cx.expr(p)?)),
            _ => {}
        }
    }
    Ok(Line::Stmts(stmts))
}

type PResult<T> = Result<T, Diagnostic>;

/// Run pest from an entry rule: the children of the single top pair, and a context to convert
/// them in.
fn run(rule: Rule, file: FileId, src: &str) -> PResult<(Pairs<'_, Rule>, Cx<'_>)> {
    let mut pairs = SmeltParser::parse(rule, src).map_err(|e| error::syntax_error(file, src, e))?;
    let top = pairs.next().expect("pest: an entry rule yields one pair");
    Ok((top.into_inner(), Cx::new(file, src)))
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::source::Span;

    #[test]
    fn lines() {
        assert!(
            matches!(parse_line(F, "let x = 1 let y = 2").unwrap(), Line::Stmts(s) if s.len() == 2)
        );
        assert!(matches!(parse_line(F, "x + 1").unwrap(), Line::Expr(_)));
        assert!(matches!(
            parse_line(F, "load model(\"m\")").unwrap(),
            Line::Expr(_)
        ));
        assert_eq!(parse_line(F, "  # nothing").unwrap(), Line::Stmts(vec![]));
        assert!(parse_line(F, "let x = 1 x").is_err());
        let d = parse_line(F, "x = 1").unwrap_err();
        assert_eq!(d.message, "unexpected `=`");
        assert_eq!(
            d.help.as_deref(),
            Some("to define a name, write `let x = …`")
        );
        let d = parse_line(F, "x == 1 2").unwrap_err();
        assert_eq!(d.message, "unexpected `2`");
        assert_eq!(d.span, Some(Span::new(F, 7, 8)));
        // Files reject bare expressions.
        assert!(parse(F, "x + 1").is_err());
        assert_eq!(parse(F, "").unwrap(), Module { stmts: vec![] });
    }
}
