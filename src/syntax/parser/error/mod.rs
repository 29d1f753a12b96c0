//! pest errors → one readable [`Diagnostic`].
//!
//! pest reports the furthest position it reached together with the rules it tried there.
//! [`syntax_error`] turns that into "expected `)`, found `x`"-style messages: rules are renamed
//! to readable text and operators that could merely continue an expression are dropped from
//! the list ([`expected`]). A few common mistakes get a message of their own (unterminated
//! strings, reserved words used as names, chained comparisons); the others get cheap hints
//! and a pointer to an unclosed bracket ([`hint`]). [`scan`] reads the source text around the
//! error position for all of them.

mod expected;
mod hint;
mod scan;

use super::{Rule, CODE, RESERVED};
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use pest::error::{ErrorVariant, InputLocation};

/// Where pest stopped, as the hints need it.
struct Found<'a> {
    src: &'a str,
    /// The byte offset pest stopped at.
    pos: usize,
    /// The byte range of the token at `pos`; `None` at the end of the text.
    token: Option<(usize, usize)>,
    /// The token's text (empty at the end of the text).
    text: &'a str,
    /// Whether the token is a reserved word.
    reserved: bool,
    /// The rules pest tried at `pos`.
    positives: &'a [Rule],
}

impl Found<'_> {
    fn has(&self, r: Rule) -> bool {
        self.positives.contains(&r)
    }
}

/// Turn pest's error into a readable diagnostic.
pub(super) fn syntax_error(file: FileId, src: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let at = |lo: usize, hi: usize| Span::new(file, lo, hi);
    let pos = match e.location {
        InputLocation::Pos(p) => p.min(src.len()),
        InputLocation::Span((lo, hi)) => {
            let msg = e.variant.message().into_owned();
            return Diagnostic::error(CODE, msg, at(lo.min(src.len()), hi.min(src.len())));
        }
    };
    let (positives, negatives) = match &e.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => (positives.clone(), negatives.clone()),
        // pest's own guards ("stack limit reached", "call limit reached").
        ErrorVariant::CustomError { message } => {
            return Diagnostic::error(
                CODE,
                "this is nested too deeply to parse",
                point(file, src, pos),
            )
            .with_label(format!("parser gave up here ({message})"))
            .with_help("split it into several `let` bindings");
        }
    };

    let token = scan::token_at(src, pos);
    let token_text = token.map_or("", |(lo, hi)| &src[lo..hi]);
    let f = Found {
        src,
        pos,
        token,
        text: token_text,
        reserved: RESERVED.contains(&token_text),
        positives: &positives,
    };
    if let Some(d) = common_mistake(file, &f) {
        return d;
    }

    let found = match token_text {
        "" => "end of input".to_string(),
        "\"" => "a string".to_string(),
        t => format!("`{t}`"),
    };
    let (main, names) = expected::expected(&positives);
    let expected = expected::join_or(&names);
    let (message, label) = if names == ["end of input"] {
        (
            format!("unexpected {found}"),
            "nothing more was expected here".to_string(),
        )
    } else if names.is_empty() && !negatives.is_empty() {
        (
            format!("unexpected {found}"),
            "not allowed here".to_string(),
        )
    } else {
        (
            format!("expected {expected}, found {found}"),
            format!("expected {expected}"),
        )
    };
    let mut d = Diagnostic::error(CODE, message, point(file, src, pos)).with_label(label);
    if let Some(h) = hint::help(&f, &names) {
        d = d.with_help(h);
    }
    hint::unclosed_bracket(d, file, &f, &main)
}

/// A mistake common enough for a message of its own: an unterminated string, a reserved word
/// where a name was expected, a chained comparison.
fn common_mistake(file: FileId, f: &Found) -> Option<Diagnostic> {
    let at = |lo: usize, hi: usize| Span::new(file, lo, hi);
    // An unterminated string: pest expected the closing quote at the end of the line.
    if f.has(Rule::str_close) {
        let lo = scan::open_string_start(f.src, f.pos).unwrap_or(f.pos);
        return Some(Diagnostic::error(CODE, "unterminated string", at(lo, f.pos))
            .with_label("this string is never closed")
            .with_help("add a closing `\"`; a string must end on the line it starts (write `\\n` for a newline)"));
    }

    // A reserved word where a name was expected.
    if (f.has(Rule::ident) || f.has(Rule::pattern)) && f.reserved {
        let (lo, hi) = f.token.expect("a reserved word is a token");
        return Some(
            Diagnostic::error(CODE, format!("`{}` is a reserved word", f.text), at(lo, hi))
                .with_label("a reserved word cannot be used as a name")
                .with_help(format!("pick another name, e.g. `{}_`", f.text)),
        );
    }

    // Chained comparisons: `a < b < c`.
    if matches!(f.text, "==" | "!=" | "<" | "<=" | ">" | ">=")
        && f.has(Rule::add_op)
        && !f.has(Rule::cmp_op)
    {
        let (lo, hi) = f.token.expect("an operator is a token");
        return Some(
            Diagnostic::error(CODE, "comparison operators cannot be chained", at(lo, hi))
                .with_label("a second comparison")
                .with_help("combine two comparisons with `and`, e.g. `a < b and b < c`"),
        );
    }
    None
}

/// A one-character span at `pos`, or an empty one at a line break or at the end of the text
/// (placed right after the last non-blank character, so that it shows next to the code).
fn point(file: FileId, src: &str, pos: usize) -> Span {
    if src[pos..].trim().is_empty() {
        let end = src.trim_end().len().min(pos);
        return Span::new(file, end, end);
    }
    let len = match src[pos..].chars().next() {
        None | Some('\n') | Some('\r') => 0,
        Some(c) => c.len_utf8(),
    };
    Span::new(file, pos, pos + len)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{parse_expr, CODE, RESERVED};
    use crate::source::Span;

    #[test]
    fn comparisons_do_not_chain() {
        let d = parse_expr(F, "a < b < c").unwrap_err();
        assert_eq!(d.message, "comparison operators cannot be chained");
        assert_eq!(d.span, Some(Span::new(F, 6, 7)));
    }

    #[test]
    fn reserved_words() {
        for kw in RESERVED {
            let d = err(&format!("let {kw} = 1"));
            assert_eq!(d.message, format!("`{kw}` is a reserved word"), "{kw}");
            assert_eq!(d.span, Some(Span::new(F, 4, 4 + kw.len())));
        }
        // Words that merely start with a keyword are names.
        assert_eq!(m("let letter = inside + format + nothing + ifx").len(), 1);
    }

    #[test]
    fn error_spans() {
        let d = err("let x = f(1, 2");
        assert_eq!(d.message, "expected `,` or `)`, found end of input");
        assert_eq!(d.span, Some(Span::new(F, 14, 14)));
        assert_eq!(d.secondary[0].span, Span::new(F, 9, 10));
        let d = err("let x = 1 +\n");
        assert_eq!(d.message, "expected an expression, found end of input");
        assert_eq!(d.span, Some(Span::new(F, 11, 11)));
        let d = err("let x 5");
        assert_eq!(d.message, "expected `=`, found `5`");
        assert_eq!(d.span, Some(Span::new(F, 6, 7)));
        let d = err("let s = \"abc\nlet t = 1");
        assert_eq!(d.message, "unterminated string");
        assert_eq!(d.span, Some(Span::new(F, 8, 12)));
        let d = err("let r = {lr 1}");
        assert_eq!(d.message, "expected `:`, found `1`");
        let d = err("x = 1");
        assert_eq!(d.message, "expected a statement, found `x`");
        assert_eq!(d.span, Some(Span::new(F, 0, 1)));
        assert!(d.help.unwrap().contains("let x ="));
        let d = err("let x = [1, 2");
        assert_eq!(d.message, "expected `,` or `]`, found end of input");
        let d = err("let = 3");
        assert_eq!(d.message, "expected a name, found `=`");
        assert!(d.code == CODE);
    }
}
