//! Reading the source text around an error position: the token there, the token before it,
//! an unclosed bracket or string. pest's error says only where it stopped; these scans find
//! what the messages and hints talk about. They are rough on purpose (comments are skipped by
//! some and not others) and only ever run on the error path.

use super::super::RESERVED;

/// One- and two-character operators that read as one token.
const TWO_CHAR_OPS: [&str; 5] = ["==", "!=", "<=", ">=", "++"];

/// Whether `s` is one identifier (and not a reserved word).
pub(super) fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&s)
}

/// The byte range of the token starting at `pos` (a word, a number, a one- or two-character
/// operator), or `None` at the end of the text.
pub(super) fn token_at(src: &str, pos: usize) -> Option<(usize, usize)> {
    let rest = src.get(pos..)?;
    let first = rest.chars().next()?;
    let len = if first.is_ascii_alphanumeric() || first == '_' {
        rest.find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '_' || (first.is_ascii_digit() && c == '.'))
        })
        .unwrap_or(rest.len())
    } else if TWO_CHAR_OPS.iter().any(|op| rest.starts_with(op)) {
        2
    } else {
        first.len_utf8()
    };
    Some((pos, pos + len))
}

/// The text of the last token before `pos` (skipping whitespace; comments are not skipped).
pub(super) fn token_before(src: &str, pos: usize) -> &str {
    let before = src[..pos].trim_end();
    let end = before.len();
    let bytes = before.as_bytes();
    let Some(&last) = bytes.last() else { return "" };
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut start = end - 1;
    if is_word(last) {
        while start > 0 && is_word(bytes[start - 1]) {
            start -= 1;
        }
    } else if start > 0
        && before
            .get(start - 1..end)
            .is_some_and(|op| TWO_CHAR_OPS.contains(&op))
    {
        start -= 1;
    } else if !last.is_ascii() {
        return "";
    }
    &before[start..end]
}

/// The innermost bracket opened before `pos` and not yet closed (strings and comments skipped).
pub(super) fn unclosed_bracket(src: &str, pos: usize) -> Option<(usize, char)> {
    let mut stack = Vec::new();
    let mut chars = src[..pos].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '(' | '[' | '{' => stack.push((i, c)),
            ')' | ']' | '}' => {
                stack.pop();
            }
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    stack.pop()
}

/// The start of the string literal that is still open at `pos` (which is on the same line).
pub(super) fn open_string_start(src: &str, pos: usize) -> Option<usize> {
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    let mut open = None;
    let mut chars = src[line_start..pos].char_indices();
    while let Some((i, c)) = chars.next() {
        match (open, c) {
            (None, '#') => return None,
            (None, '"') => open = Some(line_start + i),
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(_), '"') => open = None,
            _ => {}
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_at_and_before() {
        let src = "let x1 = a <= 1.5e3 ++ é";
        assert_eq!(token_at(src, 4), Some((4, 6)));
        assert_eq!(token_at(src, 11), Some((11, 13)));
        assert_eq!(token_at(src, 14), Some((14, 19)));
        assert_eq!(token_at(src, src.len()), None);
        assert_eq!(token_before(src, 14), "<=");
        assert_eq!(token_before(src, 11), "a");
        assert_eq!(token_before(src, src.len()), "");
        assert_eq!(token_before("", 0), "");
        // An ASCII token right after a multi-byte character (this used to panic).
        assert_eq!(token_before("é.", 3), ".");
    }

    #[test]
    fn names_exclude_reserved_words() {
        assert!(is_name("x_1") && is_name("_"));
        assert!(!is_name("let") && !is_name("1x") && !is_name("a b") && !is_name(""));
    }

    #[test]
    fn open_brackets_and_strings() {
        let src = "f([1, \"(\" # (\n, {a: 2}";
        assert_eq!(unclosed_bracket(src, src.len()), Some((2, '[')));
        assert_eq!(unclosed_bracket("()", 2), None);
        assert_eq!(open_string_start("let s = \"ab\\\"c", 14), Some(8));
        assert_eq!(open_string_start("x # \"a", 6), None);
        assert_eq!(open_string_start("\"a\" b", 5), None);
    }
}
