//! Helpers for the parser's unit tests: parse-or-panic shorthands and [`sx`], a compact
//! S-expression of an expression that makes precedence and nesting easy to assert.

use super::parse_expr;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use crate::syntax::ast::*;

pub(super) const F: FileId = FileId(0);

/// Parse an expression or panic with the diagnostic.
pub(super) fn e(src: &str) -> Expr {
    parse_expr(F, src).unwrap_or_else(|d| panic!("{src:?}: {} {:?}", d.message, d.span))
}

/// Parse a file or panic with the diagnostic.
pub(super) fn m(src: &str) -> Vec<Stmt> {
    super::parse(F, src)
        .unwrap_or_else(|d| panic!("{src:?}: {} {:?}", d.message, d.span))
        .stmts
}

/// The diagnostic of a file that must not parse.
pub(super) fn err(src: &str) -> Diagnostic {
    super::parse(F, src).expect_err(src)
}

/// The source text a span covers.
pub(super) fn text(src: &str, span: Span) -> &str {
    &src[span.lo as usize..span.hi as usize]
}

/// A compact S-expression of an expression, for precedence tests.
pub(super) fn sx(e: &Expr) -> String {
    let list = |xs: &[Expr]| xs.iter().map(sx).collect::<Vec<_>>().join(" ");
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::None => "none".into(),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::List(xs) => format!("[{}]", list(xs)),
        ExprKind::Record(fs) => {
            let fs: Vec<String> = fs
                .iter()
                .map(|(k, v)| format!("{}:{}", k.name, sx(v)))
                .collect();
            format!("{{{}}}", fs.join(" "))
        }
        ExprKind::Comprehension {
            body,
            pattern,
            iter,
            cond,
        } => format!(
            "(for {} {} {}{})",
            pat(pattern),
            sx(iter),
            sx(body),
            cond.as_ref()
                .map(|c| format!(" if {}", sx(c)))
                .unwrap_or_default()
        ),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}={}", n.name, sx(&a.value)),
                    None => sx(&a.value),
                })
                .collect();
            format!(
                "({}{}{})",
                callee.dotted(),
                if args.is_empty() { "" } else { " " },
                args.join(" ")
            )
        }
        ExprKind::Field { base, field } => format!("(. {} {})", sx(base), field.name),
        ExprKind::Index { base, index } => format!("([] {} {})", sx(base), sx(index)),
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.symbol(), sx(lhs), sx(rhs))
        }
        ExprKind::Unary { op, operand } => format!(
            "({} {})",
            if *op == UnOp::Neg { "neg" } else { "not" },
            sx(operand)
        ),
        ExprKind::Block { lets, result } => format!(
            "{{{}{}}}",
            lets.iter()
                .map(|(n, v)| format!("let {} {}; ", n.name, sx(v)))
                .collect::<String>(),
            sx(result)
        ),
    }
}

/// A comprehension pattern: `x` or `(a (b c))`.
fn pat(p: &Pattern) -> String {
    match p {
        Pattern::Name(n) => n.name.clone(),
        Pattern::Tuple(ps, _) => {
            format!("({})", ps.iter().map(pat).collect::<Vec<_>>().join(" "))
        }
    }
}
