//! Module-name patterns with PEFT's `target_modules` semantics.
//!
//! A plain pattern `p` matches module `m` when `m == p` or `m` ends with `"." + p` (PEFT's
//! `check_target_module_exists`: `query` matches `encoder.layer.0.attention.self.query`, never
//! `encoder.layer.0.attention.self.xquery`). A pattern written `re:<regex>` is a regular
//! expression that must match the **whole** name (PEFT applies `re.fullmatch` when
//! `target_modules` is a string). The crate has no regex dependency, so this file carries a small
//! backtracking matcher: literals, `.`, classes `[a-z0-9_]`/`[^…]`, escapes `\d \w \s \D \W \S`
//! and escaped metacharacters, groups `( )`/`(?: )` with `|`, quantifiers `* + ? {m} {m,} {m,n}`
//! (lazy suffixes accepted: greediness cannot change a full-match answer) and anchors `^ $`.
//! Matching has a step budget, so a pathological pattern is an error instead of a hang.

use crate::diag::OpError;

const BAD: &str = "smelt::peft::bad_pattern";
const STEP_LIMIT: usize = 1_000_000;

/// A parsed `target_modules` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ModulePattern {
    Suffix(String),
    Regex {
        source: String,
        alts: Vec<Vec<Node>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Char(char),
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    Start,
    End,
    Group(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: usize,
        max: Option<usize>,
    },
}

impl ModulePattern {
    /// Parses `re:<regex>` or a plain suffix; an empty pattern or a bad regex is an error.
    pub fn parse(p: &str) -> Result<ModulePattern, OpError> {
        if let Some(re) = p.strip_prefix("re:") {
            let chars: Vec<char> = re.chars().collect();
            let mut parser = Parser { c: &chars, i: 0 };
            let alts = parser.alt()?;
            if parser.i != chars.len() {
                return Err(bad(re, "unbalanced `)`"));
            }
            return Ok(ModulePattern::Regex {
                source: re.to_string(),
                alts,
            });
        }
        if p.is_empty() || p.starts_with('.') || p.ends_with('.') {
            return Err(
                OpError::new(BAD, format!("`{p}` is not a module name pattern")).with_help(
                    "use a name suffix such as `query`, or `re:<regex>` for a full-match regex",
                ),
            );
        }
        Ok(ModulePattern::Suffix(p.to_string()))
    }

    /// Whether the pattern selects module `name`.
    pub fn matches(&self, name: &str) -> Result<bool, OpError> {
        match self {
            ModulePattern::Suffix(p) => Ok(name == p
                || (name.len() > p.len()
                    && name.ends_with(p.as_str())
                    && name.as_bytes()[name.len() - p.len() - 1] == b'.')),
            ModulePattern::Regex { source, alts } => {
                let text: Vec<char> = name.chars().collect();
                let mut m = Matcher { t: &text, steps: 0 };
                let n = text.len();
                let hit = m.group(alts, 0, &mut |_, j| j == n);
                if m.steps > STEP_LIMIT {
                    return Err(bad(source, "too expensive to match (nested quantifiers?)"));
                }
                Ok(hit)
            }
        }
    }
}

/// Indices of `names` selected by any pattern; a pattern selecting nothing is
/// `smelt::peft::no_match`, listing example names.
pub fn select(
    names: &[&str],
    patterns: &[ModulePattern],
    what: &str,
) -> Result<Vec<usize>, OpError> {
    let mut hit = vec![false; names.len()];
    for p in patterns {
        let mut any = false;
        for (i, n) in names.iter().enumerate() {
            if p.matches(n)? {
                hit[i] = true;
                any = true;
            }
        }
        if !any {
            let shown = p.to_string();
            let examples: Vec<&str> = names.iter().take(7).copied().collect();
            return Err(OpError::new(
                "smelt::peft::no_match",
                format!("{what} target `{shown}` matches no module of the model"),
            )
            .with_help(format!(
                "module names look like: {}{} (a plain pattern matches a whole `.`-separated suffix; \
                 `re:` patterns must match the full name)",
                examples.join(", "),
                if names.len() > 7 { ", …" } else { "" }
            )));
        }
    }
    Ok((0..names.len()).filter(|&i| hit[i]).collect())
}

impl std::fmt::Display for ModulePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModulePattern::Suffix(s) => f.write_str(s),
            ModulePattern::Regex { source, .. } => write!(f, "re:{source}"),
        }
    }
}

fn bad(re: &str, why: &str) -> OpError {
    OpError::new(BAD, format!("bad regex `{re}`: {why}"))
        .with_help("supported: literals . [] [^] \\d \\w \\s ( ) (?: ) | * + ? {m,n} ^ $")
}

struct Parser<'a> {
    c: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn src(&self) -> String {
        self.c.iter().collect()
    }

    fn alt(&mut self) -> Result<Vec<Vec<Node>>, OpError> {
        let mut alts = vec![self.seq()?];
        while self.c.get(self.i) == Some(&'|') {
            self.i += 1;
            alts.push(self.seq()?);
        }
        Ok(alts)
    }

    fn seq(&mut self) -> Result<Vec<Node>, OpError> {
        let mut seq = Vec::new();
        while let Some(&ch) = self.c.get(self.i) {
            if ch == '|' || ch == ')' {
                break;
            }
            self.i += 1;
            let atom = match ch {
                '(' => {
                    if self.c[self.i..].starts_with(&['?', ':']) {
                        self.i += 2;
                    }
                    let g = self.alt()?;
                    if self.c.get(self.i) != Some(&')') {
                        return Err(bad(&self.src(), "unclosed `(`"));
                    }
                    self.i += 1;
                    Node::Group(g)
                }
                '[' => self.class()?,
                '.' => Node::Any,
                '^' => Node::Start,
                '$' => Node::End,
                '\\' => self.escape()?,
                '*' | '+' | '?' | '{' => return Err(bad(&self.src(), "nothing to repeat")),
                c => Node::Char(c),
            };
            seq.push(self.quantified(atom)?);
        }
        Ok(seq)
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, OpError> {
        let (min, max) = match self.c.get(self.i) {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                let close = self.c[self.i..].iter().position(|&c| c == '}');
                let body: String = match close {
                    Some(k) => self.c[self.i + 1..self.i + k].iter().collect(),
                    None => return Err(bad(&self.src(), "unclosed `{`")),
                };
                let num = |s: &str| s.trim().parse::<usize>().ok();
                let (lo, hi) = match body.split_once(',') {
                    None => (num(&body), num(&body)),
                    Some((a, "")) => (num(a), None),
                    Some((a, b)) => (
                        num(a),
                        Some(num(b).ok_or_else(|| bad(&self.src(), "bad `{m,n}`"))?),
                    ),
                };
                let lo = lo.ok_or_else(|| bad(&self.src(), "bad `{m,n}`"))?;
                self.i += body.chars().count() + 1;
                (lo, hi)
            }
            _ => return Ok(atom),
        };
        self.i += 1;
        if self.c.get(self.i) == Some(&'?') {
            self.i += 1;
        }
        if max.is_some_and(|m| m < min) {
            return Err(bad(&self.src(), "`{m,n}` with n < m"));
        }
        Ok(Node::Repeat {
            node: Box::new(atom),
            min,
            max,
        })
    }

    fn escape(&mut self) -> Result<Node, OpError> {
        let Some(&e) = self.c.get(self.i) else {
            return Err(bad(&self.src(), "trailing `\\`"));
        };
        self.i += 1;
        let class = |ranges: Vec<(char, char)>, negated| Node::Class { ranges, negated };
        Ok(match e {
            'd' | 'D' => class(vec![('0', '9')], e == 'D'),
            'w' | 'W' => class(
                vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')],
                e == 'W',
            ),
            's' | 'S' => class(vec![(' ', ' '), ('\t', '\r')], e == 'S'),
            c if c.is_ascii_alphanumeric() => return Err(bad(&self.src(), "unsupported escape")),
            c => Node::Char(c),
        })
    }

    fn class(&mut self) -> Result<Node, OpError> {
        let negated = self.c.get(self.i) == Some(&'^');
        if negated {
            self.i += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(&c) = self.c.get(self.i) else {
                return Err(bad(&self.src(), "unclosed `[`"));
            };
            self.i += 1;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = if c == '\\' {
                match self.escape()? {
                    Node::Char(x) => x,
                    Node::Class {
                        ranges: r,
                        negated: false,
                    } => {
                        ranges.extend(r);
                        continue;
                    }
                    _ => return Err(bad(&self.src(), "negated escape inside `[]`")),
                }
            } else {
                c
            };
            if self.c.get(self.i) == Some(&'-') && self.c.get(self.i + 1).is_some_and(|&x| x != ']')
            {
                let hi = self.c[self.i + 1];
                self.i += 2;
                if hi < lo {
                    return Err(bad(&self.src(), "reversed range in `[]`"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        Ok(Node::Class { ranges, negated })
    }
}

type Cont<'k> = dyn FnMut(&mut Matcher, usize) -> bool + 'k;

struct Matcher<'a> {
    t: &'a [char],
    steps: usize,
}

impl Matcher<'_> {
    fn group(&mut self, alts: &[Vec<Node>], i: usize, k: &mut Cont) -> bool {
        alts.iter().any(|seq| self.seq(seq, i, k))
    }

    fn seq(&mut self, seq: &[Node], i: usize, k: &mut Cont) -> bool {
        self.steps += 1;
        if self.steps > STEP_LIMIT {
            return false;
        }
        match seq.split_first() {
            None => k(self, i),
            Some((n, rest)) => self.node(n, i, &mut |m: &mut Matcher, j| m.seq(rest, j, k)),
        }
    }

    fn node(&mut self, n: &Node, i: usize, k: &mut Cont) -> bool {
        let cur = self.t.get(i).copied();
        match n {
            Node::Char(c) => cur == Some(*c) && k(self, i + 1),
            Node::Any => cur.is_some() && k(self, i + 1),
            Node::Class { ranges, negated } => match cur {
                Some(c) => {
                    let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    inside != *negated && k(self, i + 1)
                }
                None => false,
            },
            Node::Start => i == 0 && k(self, i),
            Node::End => i == self.t.len() && k(self, i),
            Node::Group(alts) => self.group(alts, i, k),
            Node::Repeat { node, min, max } => self.repeat(node, *min, *max, 0, i, k),
        }
    }

    fn repeat(
        &mut self,
        n: &Node,
        min: usize,
        max: Option<usize>,
        count: usize,
        i: usize,
        k: &mut Cont,
    ) -> bool {
        if self.steps > STEP_LIMIT {
            return false;
        }
        self.steps += 1;
        if max.is_none_or(|m| count < m) {
            let more = self.node(n, i, &mut |m: &mut Matcher, j| {
                (j > i || count < min) && m.repeat(n, min, max, count + 1, j, k)
            });
            if more {
                return true;
            }
        }
        count >= min && k(self, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        ModulePattern::parse(p).unwrap().matches(name).unwrap()
    }

    #[test]
    fn suffix_matches_on_dot_boundaries_only() {
        let n = "encoder.layer.0.attention.self.query";
        assert!(m("query", n) && m("self.query", n) && m(n, n));
        assert!(!m("uery", n) && !m("key", n));
        assert!(m("output.dense", "encoder.layer.1.attention.output.dense"));
        assert!(ModulePattern::parse("").is_err() && ModulePattern::parse(".q").is_err());
    }

    #[test]
    fn regexes_are_full_matches() {
        let n = "encoder.layer.2.attention.self.value";
        assert!(m(r"re:.*\.(query|value)", n));
        assert!(m(r"re:encoder\.layer\.[0-2]\..*self\.(?:query|value)", n));
        assert!(!m(r"re:encoder\.layer\.[01]\..*", n));
        assert!(!m("re:value", n), "full match, not search");
        assert!(m(r"re:^encoder\.layer\.\d+\.attention\.self\.\w{5}$", n));
        assert!(m(r"re:[^x]+", n) && !m(r"re:[^.]+", n));
        assert!(m("re:(a|b)*c?", "abba") && !m("re:a{2,3}", "aaaa") && m("re:a{2,}", "aaaa"));
    }

    #[test]
    fn bad_regexes_are_errors_not_panics() {
        for p in [
            "re:(",
            "re:a)",
            "re:*",
            "re:[a",
            "re:a{3,1}",
            "re:\\q",
            "re:[z-a]",
            "re:x{",
        ] {
            assert_eq!(ModulePattern::parse(p).unwrap_err().code, BAD, "{p}");
        }
        let evil = ModulePattern::parse("re:(a*)*(a*)*(a*)*b").unwrap();
        let r = evil.matches(&"a".repeat(60));
        assert!(matches!(r, Err(ref e) if e.code == BAD) || r == Ok(false));
    }

    #[test]
    fn select_reports_unmatched_patterns_with_examples() {
        let names = [
            "encoder.layer.0.attention.self.query",
            "encoder.layer.0.attention.self.value",
        ];
        let ps = [ModulePattern::parse("value").unwrap()];
        assert_eq!(select(&names, &ps, "LoRA").unwrap(), vec![1]);
        let ps = [ModulePattern::parse("q_proj").unwrap()];
        let e = select(&names, &ps, "LoRA").unwrap_err();
        assert_eq!(e.code, "smelt::peft::no_match");
        assert!(e.help.unwrap().contains("attention.self.query"));
    }
}
