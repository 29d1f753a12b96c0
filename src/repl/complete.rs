//! Tab completion for the REPL, on plain text (no terminal types): `:commands`, operator
//! families and their methods after a verb (`merge av` → `average`), helper, bound and `def`
//! names, parameter names inside a call (`merge linear(xs, nor` → `normalize=`), fields after
//! `.`, stdlib modules after `use std.`, and file paths inside strings and after `:load`.

use super::commands::COMMANDS;
use super::Repl;
use crate::types::check::domain_fields;
use crate::types::Type;

/// Words that start a statement (offered at the start of a line).
const STMT_WORDS: &[&str] = &[
    "let", "def", "use", "import", "config", "report", "save", "plot", "expect",
];
/// Words valid inside expressions.
const EXPR_WORDS: &[&str] = &[
    "true", "false", "none", "not", "and", "or", "for", "in", "if",
];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Start of the identifier that ends at `end`.
fn word_start(s: &str, end: usize) -> usize {
    s[..end].rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1)
}

impl Repl {
    /// Completions for `line` with the cursor at byte `pos`: where the replaced word starts, and
    /// the candidates (sorted, without duplicates).
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let mut pos = pos.min(line.len());
        while !line.is_char_boundary(pos) {
            pos -= 1;
        }
        let before = &line[..pos];
        let lead = before.len() - before.trim_start().len();
        let Some(cmd_text) = before[lead..].strip_prefix(':') else {
            return self.complete_expr(before, 0);
        };
        let offset = lead + 1;
        let Some(sp) = cmd_text.find(char::is_whitespace) else {
            let names = COMMANDS.iter().map(|c| format!(":{}", c.0));
            return (lead, filter(names, &before[lead..]));
        };
        let (cmd, rest) = cmd_text.split_at(sp);
        let arg_at = offset + sp + (rest.len() - rest.trim_start().len());
        match cmd {
            "help" | "h" => {
                let start = word_start(before, pos).max(arg_at);
                let prefix = &before[start..];
                let head = &before[arg_at..start];
                let dotted = head.strip_suffix('.').filter(|v| self.is_family(v));
                if let Some(verb) = dotted.or(preceding_word(head).filter(|v| self.is_family(v))) {
                    return (start, filter(self.methods(verb), prefix));
                }
                let reg = &self.session.reg;
                let mut names: Vec<String> =
                    reg.iter().map(|o| o.signature().call_syntax()).collect();
                names.retain(|n| !n.contains(' '));
                names.extend(reg.families().iter().map(|f| f.to_string()));
                names.extend(self.session.env.defs.keys().cloned());
                (start, filter(names, prefix))
            }
            "ops" => {
                let start = word_start(before, pos).max(arg_at);
                let fams = self
                    .session
                    .reg
                    .families()
                    .into_iter()
                    .map(String::from)
                    .chain(["helpers".into()]);
                (start, filter(fams, &before[start..]))
            }
            "load" => complete_path(before, arg_at),
            "type" | "t" => self.complete_expr(before, arg_at),
            _ => (pos, Vec::new()),
        }
    }

    /// Completion inside an expression or statement that starts at byte `from` of `before`.
    fn complete_expr(&self, before: &str, from: usize) -> (usize, Vec<String>) {
        if let Some(q) = open_string(&before[from..]) {
            return complete_path(before, from + q + 1);
        }
        let start = word_start(before, before.len()).max(from);
        let prefix = &before[start..];
        let head = &before[from..start];
        // `base.fie`: fields of a bound value; `use std.me`: stdlib modules.
        if let Some(base_part) = head.strip_suffix('.') {
            let base = &base_part[word_start(base_part, base_part.len())..];
            let fields: Vec<String> = if base == "std" {
                crate::stdlib::names()
                    .into_iter()
                    .map(String::from)
                    .collect()
            } else {
                self.fields_of(base)
            };
            return (start, filter(fields, prefix));
        }
        // `merge av`: methods of an operator family.
        if let Some(verb) = preceding_word(head).filter(|v| self.is_family(v)) {
            return (start, filter(self.methods(verb), prefix));
        }
        let mut names = Vec::new();
        // Inside `callee(…`: the callee's parameter names first.
        if let Some(params) = self.open_call_params(head) {
            names.extend(params.into_iter().map(|p| format!("{p}=")));
        }
        let mut rest: Vec<String> = self.session.env.globals.keys().cloned().collect();
        rest.extend(self.session.env.defs.keys().cloned());
        let reg = &self.session.reg;
        rest.extend(
            reg.iter()
                .map(|o| o.signature().id)
                .filter(|id| !id.contains('.'))
                .map(String::from),
        );
        rest.extend(reg.families().into_iter().map(String::from));
        rest.extend(EXPR_WORDS.iter().map(|w| w.to_string()));
        if head.trim().is_empty() {
            rest.extend(STMT_WORDS.iter().map(|w| w.to_string()));
        }
        let mut names = filter(names, prefix);
        names.extend(
            filter(rest, prefix)
                .into_iter()
                .filter(|n| !names.contains(n))
                .collect::<Vec<_>>(),
        );
        (start, names)
    }

    fn is_family(&self, word: &str) -> bool {
        self.session.reg.families().contains(&word)
    }

    fn methods(&self, family: &str) -> Vec<String> {
        let reg = &self.session.reg;
        reg.iter()
            .filter_map(|o| {
                o.signature()
                    .id
                    .strip_prefix(family)?
                    .strip_prefix('.')
                    .map(String::from)
            })
            .collect()
    }

    fn fields_of(&self, name: &str) -> Vec<String> {
        match self.session.env.globals.get(name).map(|(t, _)| t) {
            Some(Type::Record(fs)) => fs.keys().cloned().collect(),
            Some(t) => domain_fields(t)
                .iter()
                .map(|(n, _)| n.to_string())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Parameters not yet named of the innermost unclosed call in `head`.
    fn open_call_params(&self, head: &str) -> Option<Vec<String>> {
        let paren = innermost_open_paren(head)?;
        let callee_end = head[..paren].trim_end().len();
        let method = &head[word_start(head, callee_end)..callee_end];
        if method.is_empty() {
            return None;
        }
        let before_method = &head[..callee_end - method.len()];
        let dotted = match preceding_word(before_method) {
            Some(verb) if self.is_family(verb) => format!("{verb}.{method}"),
            _ => method.to_string(),
        };
        let args = &head[paren + 1..];
        let given = |p: &str| {
            args.match_indices(p).any(|(i, _)| {
                let after = args[i + p.len()..].trim_start();
                (i == 0 || !is_ident(args[..i].chars().last().unwrap_or(' ')))
                    && after.starts_with('=')
                    && !after.starts_with("==")
            })
        };
        let params: Vec<String> = if let Some(op) = self.session.reg.get(&dotted) {
            op.signature()
                .params
                .iter()
                .map(|p| p.name.to_string())
                .collect()
        } else if let Some(d) = self.session.env.defs.get(&dotted) {
            d.params.iter().map(|p| p.name.name.clone()).collect()
        } else {
            return None;
        };
        Some(params.into_iter().filter(|p| !given(p)).collect())
    }
}

/// The identifier right before `s`'s trailing spaces, when there are such spaces.
fn preceding_word(s: &str) -> Option<&str> {
    let t = s.trim_end_matches([' ', '\t']);
    if t.len() == s.len() {
        return None;
    }
    let w = &t[word_start(t, t.len())..];
    (!w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit())).then_some(w)
}

/// Byte index of the opening quote when `s` ends inside a string literal.
fn open_string(s: &str) -> Option<usize> {
    let mut open = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (open, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(_), '"') if !escaped => open = None,
            (None, '"') => open = Some(i),
            (None, '#') => return None,
            _ => {}
        }
        escaped = false;
    }
    open
}

/// Byte index of the innermost `(` not closed in `s` (strings skipped).
fn innermost_open_paren(s: &str) -> Option<usize> {
    let mut stack = Vec::new();
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => in_str = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => stack.push((c, i)),
            ')' | ']' | '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    match stack.last() {
        Some(('(', i)) => Some(*i),
        _ => None,
    }
}

/// File and directory names completing the path that starts at byte `start` of `before`.
fn complete_path(before: &str, start: usize) -> (usize, Vec<String>) {
    let partial = &before[start.min(before.len())..];
    let (dir, file) = match partial.rfind('/') {
        Some(i) => (&partial[..=i], &partial[i + 1..]),
        None => ("", partial),
    };
    let read = if dir.is_empty() { "." } else { dir };
    let Ok(entries) = std::fs::read_dir(read) else {
        return (start, Vec::new());
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(file) || (name.starts_with('.') && !file.starts_with('.')) {
                return None;
            }
            let slash = if e.path().is_dir() { "/" } else { "" };
            Some(format!("{dir}{name}{slash}"))
        })
        .collect();
    out.sort();
    (start, out)
}

/// Candidates starting with `prefix`, sorted and de-duplicated.
fn filter(names: impl IntoIterator<Item = String>, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v.dedup();
    v
}
