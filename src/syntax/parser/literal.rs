//! Literal values: numbers (`25_000`, `1e-12`) and strings (`"a\tb"`).
//!
//! pest only checks their shape; whether a number fits its 64-bit type and whether a string's
//! escapes are known is decided here, with a diagnostic that points at the literal (or at the
//! single bad escape) rather than at a pest position.

use super::tree::Cx;
use super::{PResult, Rule};
use crate::source::Span;
use crate::syntax::ast::ExprKind;
use pest::iterators::Pair;

impl Cx<'_> {
    /// The value of an `int` or `float` literal spanning `span` (`_` separators dropped).
    pub(super) fn number(&self, p: &Pair<'_, Rule>, span: Span) -> PResult<ExprKind> {
        let text = p.as_str().replace('_', "");
        let too_large = |msg: &str, label: &str| {
            self.err(span.lo as usize, span.hi as usize, msg)
                .with_label(label)
        };
        if p.as_rule() == Rule::float {
            return match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(ExprKind::Float(v)),
                _ => Err(too_large(
                    "float literal out of range",
                    "too large for a 64-bit float",
                )),
            };
        }
        text.parse::<i64>().map(ExprKind::Int).map_err(|_| {
            too_large(
                "integer literal too large",
                "does not fit in a 64-bit integer",
            )
            .with_help("integers are 64-bit; write a float such as `1e20` instead")
        })
    }

    /// The value of a string literal; escapes `\" \\ \n \t`.
    pub(super) fn string(&self, p: Pair<'_, Rule>) -> PResult<String> {
        let inner = p
            .into_inner()
            .find(|c| c.as_rule() == Rule::str_inner)
            .expect("grammar: string body");
        let base = inner.as_span().start();
        let text = inner.as_str();
        let mut out = String::with_capacity(text.len());
        let mut chars = text.char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch != '\\' {
                out.push(ch);
                continue;
            }
            let (j, esc) = chars
                .next()
                .expect("grammar: a backslash is followed by a character");
            out.push(match esc {
                '"' => '"',
                '\\' => '\\',
                'n' => '\n',
                't' => '\t',
                _ => {
                    return Err(self
                        .err(
                            base + i,
                            base + j + esc.len_utf8(),
                            format!("unknown escape `\\{esc}` in string"),
                        )
                        .with_label("unknown escape")
                        .with_help("supported escapes are `\\\"`, `\\\\`, `\\n` and `\\t`"))
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_expr;
    use super::super::testing::*;
    use crate::source::Span;
    use crate::syntax::ast::*;

    #[test]
    fn literals() {
        assert_eq!(e("25_000").kind, ExprKind::Int(25_000));
        assert_eq!(e("42").kind, ExprKind::Int(42));
        assert_eq!(e("1e-12").kind, ExprKind::Float(1e-12));
        assert_eq!(e("5e-6").kind, ExprKind::Float(5e-6));
        assert_eq!(e("1.0").kind, ExprKind::Float(1.0));
        assert_eq!(e("0.5").kind, ExprKind::Float(0.5));
        assert_eq!(e("2E+3").kind, ExprKind::Float(2000.0));
        assert_eq!(e("true").kind, ExprKind::Bool(true));
        assert_eq!(e("false").kind, ExprKind::Bool(false));
        assert_eq!(e("none").kind, ExprKind::None);
        assert_eq!(
            e(r#""a\"b\\c\nd\te""#).kind,
            ExprKind::Str("a\"b\\c\nd\te".into())
        );
        assert_eq!(e(r#""""#).kind, ExprKind::Str(String::new()));
        assert!(matches!(e("truex").kind, ExprKind::Name(_)));
        assert!(matches!(e("none_").kind, ExprKind::Name(_)));
        assert_eq!(e("[]").kind, ExprKind::List(vec![]));
        assert_eq!(e("{}").kind, ExprKind::Record(vec![]));
        assert_eq!(sx(&e("[1, 2,]")), "[1 2]");
        assert_eq!(sx(&e("{lr: 1e-4, r: 8,}")), "{lr:0.0001 r:8}");
    }

    #[test]
    fn literal_errors() {
        let d = parse_expr(F, "99999999999999999999").unwrap_err();
        assert_eq!(d.message, "integer literal too large");
        assert_eq!(d.span, Some(Span::new(F, 0, 20)));
        let d = parse_expr(F, r#""ab\qc""#).unwrap_err();
        assert_eq!(d.message, "unknown escape `\\q` in string");
        assert_eq!(d.span, Some(Span::new(F, 3, 5)));
        let d = parse_expr(F, "1e999").unwrap_err();
        assert_eq!(d.message, "float literal out of range");
    }
}
