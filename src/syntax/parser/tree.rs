//! Walking pest's tree: the conversion context [`Cx`] and the helpers every conversion shares.
//!
//! Spans are byte offsets. pest may leave skipped whitespace and comments at the end of a
//! non-atomic rule, so a node's span is computed from its first and last token ([`tight`]);
//! every non-atomic rule in the grammar ends on a named token for that reason.
//!
//! Nesting is limited to [`MAX_DEPTH`] levels so that pathological input (`((((…` ten thousand
//! deep) gives a diagnostic instead of overflowing the stack here or in later recursive passes.
//! Helpers that descend through the tree ([`tight`], [`skip_levels`]) are iterative for the
//! same reason.

use super::{PResult, Rule, CODE};
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use crate::syntax::ast::*;
use pest::iterators::Pair;
use std::cell::Cell;

/// Rules that only mark syntax (punctuation and keywords); skipped by [`sig`].
fn is_token(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::lparen
            | Rule::rparen
            | Rule::call_open
            | Rule::lbracket
            | Rule::rbracket
            | Rule::index_open
            | Rule::lbrace
            | Rule::rbrace
            | Rule::comma
            | Rule::colon
            | Rule::semi
            | Rule::dot
            | Rule::lt
            | Rule::gt
            | Rule::assign
            | Rule::arg_assign
            | Rule::str_close
            | Rule::EOI
            | Rule::kw_let
            | Rule::kw_def
            | Rule::kw_use
            | Rule::kw_import
            | Rule::kw_config
            | Rule::kw_report
            | Rule::kw_as
            | Rule::kw_save
            | Rule::kw_to
            | Rule::kw_plot_to
            | Rule::kw_plot
            | Rule::kw_expect
            | Rule::kw_within
            | Rule::kw_for
            | Rule::kw_in
            | Rule::kw_if
    )
}

/// The children of `p` that carry meaning (no punctuation, no keywords).
pub(super) fn sig(p: Pair<'_, Rule>) -> Vec<Pair<'_, Rule>> {
    p.into_inner().filter(|c| !is_token(c.as_rule())).collect()
}

/// The byte range of `p` without skipped trivia at either end: atomic rules (no children) and
/// compound-atomic ones (no implicit whitespace inside) use their own span, others the span
/// from their first to their last child.
pub(super) fn tight(p: &Pair<'_, Rule>) -> (usize, usize) {
    /// Descend through first (or last) children to a token; iterative, as trees can be deep.
    fn edge(p: &Pair<'_, Rule>, last: bool) -> usize {
        let mut p = p.clone();
        loop {
            let span = p.as_span();
            let own = if last { span.end() } else { span.start() };
            if matches!(
                p.as_rule(),
                Rule::string | Rule::doc_block | Rule::op_callee
            ) {
                return own;
            }
            let mut inner = p.clone().into_inner();
            let next = if last { inner.last() } else { inner.next() };
            match next {
                Some(c) => p = c,
                None => return own,
            }
        }
    }
    (edge(p, false), edge(p, true))
}

/// Skip precedence levels that hold a single operand (`expr` → `or_expr` → … → `postfix` →
/// the primary), iteratively, so that each level of nesting costs few stack frames.
pub(super) fn skip_levels(mut p: Pair<'_, Rule>) -> Pair<'_, Rule> {
    loop {
        let mut inner = p.clone().into_inner();
        let (Some(first), None) = (inner.next(), inner.next()) else {
            return p;
        };
        let single = matches!(
            p.as_rule(),
            Rule::expr
                | Rule::or_expr
                | Rule::and_expr
                | Rule::not_expr
                | Rule::cmp_expr
                | Rule::add_expr
                | Rule::mul_expr
                | Rule::unary
                | Rule::postfix
        );
        if !single {
            return p;
        }
        p = first;
    }
}

/// The next child of a rule whose shape the grammar guarantees.
pub(super) fn take<'i>(c: &mut impl Iterator<Item = Pair<'i, Rule>>) -> Pair<'i, Rule> {
    c.next().expect("grammar: rule shape")
}

/// The deepest nesting of expressions (and of types and patterns) a program may use. Deeper
/// trees would overflow the stack here or in later recursive passes (checker, evaluator, drop).
pub(super) const MAX_DEPTH: usize = 100;

/// What every conversion needs: the file (for spans), its text, and the current depth.
pub(super) struct Cx<'s> {
    pub(super) file: FileId,
    pub(super) src: &'s str,
    /// An upper bound on the depth, below its statement, of the node being converted.
    depth: Cell<usize>,
}

impl<'s> Cx<'s> {
    pub(super) fn new(file: FileId, src: &'s str) -> Cx<'s> {
        Cx {
            file,
            src,
            depth: Cell::new(0),
        }
    }

    pub(super) fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let (lo, hi) = tight(p);
        Span::new(self.file, lo, hi)
    }

    pub(super) fn ident(&self, p: Pair<'_, Rule>) -> Ident {
        debug_assert_eq!(p.as_rule(), Rule::ident);
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    /// Run `f` `levels` deeper; fail cleanly once the tree would be too deep.
    pub(super) fn nested<T>(
        &self,
        levels: usize,
        p: &Pair<'_, Rule>,
        f: impl FnOnce() -> PResult<T>,
    ) -> PResult<T> {
        let depth = self.depth.get() + levels;
        if depth > MAX_DEPTH {
            let lo = p.as_span().start();
            let hi = lo + self.src[lo..].chars().next().map_or(0, char::len_utf8);
            return Err(self
                .err(lo, hi, "this is nested too deeply")
                .with_label(format!("more than {MAX_DEPTH} levels of nesting"))
                .with_help("split it into several `let` bindings"));
        }
        self.depth.set(depth);
        let r = f();
        self.depth.set(depth - levels);
        r
    }

    pub(super) fn opt_expr(&self, p: Option<Pair<'_, Rule>>) -> PResult<Option<Expr>> {
        p.map(|e| self.expr(e)).transpose()
    }

    pub(super) fn err(&self, lo: usize, hi: usize, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(CODE, msg, Span::new(self.file, lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{parse, parse_expr};
    use super::MAX_DEPTH;
    use crate::syntax::ast::*;

    #[test]
    fn spans_exclude_trailing_trivia() {
        let src = "let x = (a + b) * c   # comment\n\nlet y = f(x)  \n";
        let s = m(src);
        assert_eq!(text(src, s[0].span), "let x = (a + b) * c");
        assert_eq!(text(src, s[1].span), "let y = f(x)");
        let StmtKind::Let { value, .. } = &s[0].kind else {
            panic!()
        };
        let ExprKind::Binary { lhs, .. } = &value.kind else {
            panic!()
        };
        assert_eq!(text(src, lhs.span), "(a + b)");
        let src = "report [x.y for x in xs]  as  \"n\"  ";
        let s = m(src);
        assert_eq!(text(src, s[0].span), "report [x.y for x in xs]  as  \"n\"");
    }

    /// Nestings `n` deep that every test below uses: parentheses, lists, prefix and binary
    /// operators, calls.
    fn nestings(n: usize) -> Vec<String> {
        vec![
            format!("{}1{}", "(".repeat(n), ")".repeat(n)),
            format!("{}1{}", "[".repeat(n), "]".repeat(n)),
            format!("{}1", "-".repeat(n)),
            format!("{}x", "not ".repeat(n)),
            format!("1{}", " + 1".repeat(n)),
            format!("{}1{}", "f(".repeat(n), ")".repeat(n)),
        ]
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
        assert_eq!(e(&ok).kind, ExprKind::Int(1));
        let ok = format!("let x = {}1{}", "[".repeat(50), "]".repeat(50));
        assert_eq!(m(&ok).len(), 1);
        // Just below the limit, every kind of nesting still fits a test thread's 2 MiB stack.
        let n = MAX_DEPTH - 2;
        let mut below = nestings(n);
        below.extend([
            format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
            format!("{}1{}", "m f(".repeat(n), ")".repeat(n)),
            format!("{}1{}", "(- [f(".repeat(n / 4), ")])".repeat(n / 4)),
            format!("{}x{}", "[y for y in ".repeat(n / 2), "]".repeat(n / 2)),
        ]);
        for src in below {
            parse_expr(F, &src).unwrap_or_else(|d| panic!("{}: {}", &src[..20], d.message));
        }
        for n in [300, 1_000, 100_000] {
            let mut cases = nestings(n);
            cases.extend([
                format!("xs{}", "[0]".repeat(n)),
                format!("[x for {}x{} in xs]", "(".repeat(n), ")".repeat(n)),
            ]);
            for src in cases {
                let d = parse_expr(F, &src).expect_err(&src[..20]);
                assert!(
                    d.message.contains("nested too deeply"),
                    "{}: {}",
                    &src[..20],
                    d.message
                );
            }
        }
        let d = parse(
            F,
            &format!(
                "def f(x: {}Int{}) = x",
                "List<".repeat(300),
                ">".repeat(300)
            ),
        )
        .unwrap_err();
        assert!(d.message.contains("nested too deeply"), "{}", d.message);
    }
}
