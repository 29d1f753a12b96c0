//! Hints for syntax errors: a `help` line for common mistakes (`=` for `:` or `==`, a missing
//! `let`, a dangling operator, a reserved word, a missing `,`) and a secondary label at the
//! bracket that a missing closer belongs to.
//!
//! They are cheap guesses from the text around the error position and the "expected …" list;
//! the first one that fits is used.

use super::super::Rule;
use super::{scan, Found};
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};

/// Words that start a statement.
const STATEMENT_KW: [&str; 9] = [
    "let", "def", "use", "import", "config", "report", "save", "plot", "expect",
];

/// Operators that need an expression on their right.
const OPERATORS: [&str; 14] = [
    "+", "-", "*", "/", "++", "==", "!=", "<", "<=", ">", ">=", "and", "or", "not",
];

/// The help line for an error at `f`, given the readable names of what was expected.
pub(super) fn help(f: &Found, names: &[&str]) -> Option<String> {
    let expects = |s: &str| names.contains(&s);
    let (src, pos, token_text) = (f.src, f.pos, f.text);
    let prev = scan::token_before(src, pos);
    if token_text == "=" && expects("`:`") {
        Some("record and config fields are written `name: value`".to_string())
    } else if token_text == "=" && scan::is_name(src[..pos].trim()) {
        // A REPL line `x = 1`.
        Some(format!(
            "to define a name, write `let {} = …`",
            src[..pos].trim()
        ))
    } else if token_text == "=" && f.has(Rule::add_op) {
        Some("to compare two values use `==`".to_string())
    } else if names == ["`=`"] {
        Some("a binding is written `let name = value`".to_string())
    } else if expects("`=`") && expects("`{`") {
        Some("a def body is `= expression` or a `{ … }` block".to_string())
    } else if expects("`let`") && token_text == "}" {
        Some("a `{ … }` body must end with an expression: its value".to_string())
    } else if expects("an expression") && OPERATORS.contains(&prev) {
        Some(format!("`{prev}` needs an expression on its right"))
    } else if f.reserved && STATEMENT_KW.contains(&token_text) && !expects("a statement") {
        Some(format!(
            "`{token_text}` starts a new statement; is something missing before it?"
        ))
    } else if f.reserved && expects("an expression") {
        Some(format!(
            "`{token_text}` is a reserved word and cannot be used as a name"
        ))
    } else if expects("a statement") && f.token.is_some() {
        let after = f.token.map_or("", |(_, hi)| src[hi..].trim_start());
        if token_text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && after.starts_with('=')
            && !after.starts_with("==")
        {
            Some(format!("to define a name, write `let {token_text} = …`"))
        } else {
            Some(
                "a file is a sequence of statements: `let`, `def`, `use`, `import`, `config`, `report`, \
                 `save`, `plot` or `expect` (to show a value, write `report …`)"
                    .to_string(),
            )
        }
    } else if expects("`,`")
        && f.token.is_some()
        && !f.reserved
        && !matches!(token_text, ")" | "]" | "}")
    {
        Some("separate items with `,`".to_string())
    } else {
        None
    }
}

/// Point at the bracket that a missing closer belongs to (when a closer is among the `main`
/// expected rules); when the next statement (or the end of the file) came first, the missing
/// closer is the likely mistake and gets a help line too.
pub(super) fn unclosed_bracket(
    mut d: Diagnostic,
    file: FileId,
    f: &Found,
    main: &[Rule],
) -> Diagnostic {
    let closers = [
        (Rule::rparen, '(', ')'),
        (Rule::rbracket, '[', ']'),
        (Rule::rbrace, '{', '}'),
    ];
    if let Some((open_at, open)) = scan::unclosed_bracket(f.src, f.pos) {
        if let Some((_, _, close)) = closers
            .iter()
            .find(|(r, o, _)| *o == open && main.contains(r))
        {
            d = d.with_secondary(
                Span::new(file, open_at, open_at + 1),
                format!("unclosed `{open}`"),
            );
            if f.token.is_none() || STATEMENT_KW.contains(&f.text) {
                d = d.with_help(format!("add the missing `{close}`"));
            }
        }
    }
    d
}
