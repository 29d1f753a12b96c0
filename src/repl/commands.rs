//! REPL `:commands`: `:help [NAME]`, `:ops [FAMILY]`, `:type EXPR`, `:plan`, `:load FILE`,
//! `:quit`. Documentation is rendered from operator [`Signature`]s and `def` docs, so `:help`
//! says exactly what the checker enforces.

use super::{Repl, ReplOutput};
use crate::diag::Diagnostic;
use crate::eval::Status;
use crate::ops::{OpKind, Signature};
use crate::sig::Determinism;
use crate::types::calls::did_you_mean;
use crate::types::check::{type_of, DefInfo};
use std::path::Path;

/// `(name, alias, argument, what it does)` for every command.
pub(super) const COMMANDS: &[(&str, &str, &str, &str)] = &[
    (
        "help",
        "h",
        "[NAME]",
        "list commands, or document an operator (`merge linear`) or a def",
    ),
    ("ops", "", "[FAMILY]", "list operators with their summaries"),
    (
        "type",
        "t",
        "EXPR",
        "the static type of an expression, without running it",
    ),
    (
        "plan",
        "",
        "",
        "the nodes evaluated so far: ran / cached / pending",
    ),
    (
        "load",
        "",
        "FILE",
        "load and run a .exp file into this session",
    ),
    ("quit", "q", "", "leave the REPL (Ctrl-D also works)"),
];

impl Repl {
    pub(super) fn command(&mut self, cmd: &str) -> ReplOutput {
        let (name, arg) = match cmd.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (cmd, ""),
        };
        match name {
            "help" | "h" if arg.is_empty() => ReplOutput::ok(help_text()),
            "help" | "h" => self.help(arg),
            "ops" => self.ops(arg),
            "type" | "t" => self.type_cmd(arg),
            "plan" => ReplOutput::ok(self.plan_text()),
            "load" if arg.is_empty() => self.usage_error("load"),
            "load" => self.load_file(Path::new(arg.trim_matches('"'))),
            "quit" | "q" | "exit" => ReplOutput {
                quit: true,
                ..ReplOutput::default()
            },
            _ => {
                let names = COMMANDS
                    .iter()
                    .flat_map(|(n, a, _, _)| [*n, *a])
                    .filter(|n| !n.is_empty());
                let mut d = Diagnostic::global(
                    "smelt::repl::unknown_command",
                    format!("unknown command `:{name}`"),
                );
                d = match did_you_mean(name, names) {
                    Some(s) => {
                        d.with_help(format!("did you mean `:{s}`? (`:help` lists the commands)"))
                    }
                    None => d.with_help("`:help` lists the commands"),
                };
                self.errors(&[d])
            }
        }
    }

    fn usage_error(&self, name: &str) -> ReplOutput {
        let (_, _, arg, what) = COMMANDS
            .iter()
            .find(|c| c.0 == name)
            .expect("known command");
        let d = Diagnostic::global("smelt::repl::usage", format!("`:{name}` needs an argument"))
            .with_help(format!("usage: :{name} {arg} — {what}"));
        self.errors(&[d])
    }

    /// `:help merge.linear`, `:help merge linear`, `:help len`, `:help merge`, `:help my_def`.
    fn help(&self, arg: &str) -> ReplOutput {
        if let Some(c) = arg.strip_prefix(':') {
            if let Some((name, alias, a, what)) = COMMANDS
                .iter()
                .find(|x| x.0 == c || (!x.1.is_empty() && x.1 == c))
            {
                let alias = if alias.is_empty() {
                    String::new()
                } else {
                    format!(" (or :{alias})")
                };
                return ReplOutput::ok(format!(":{name} {a}{alias}\n  {what}"));
            }
        }
        let words: Vec<&str> = arg.split_whitespace().collect();
        let id = words.join(".");
        let reg = &self.session.reg;
        if let Some(op) = reg.get(&id) {
            return ReplOutput::ok(op_help(op.signature(), self.width));
        }
        if let Some(def) = self.session.env.defs.get(&id) {
            return ReplOutput::ok(def_help(def, None));
        }
        if let Some((module, def)) = stdlib_def(&id) {
            return ReplOutput::ok(def_help(&def, Some(module)));
        }
        if reg.families().contains(&id.as_str()) {
            return self.ops(&id);
        }
        let mut candidates: Vec<String> =
            reg.iter().map(|o| o.signature().id.to_string()).collect();
        candidates.extend(reg.families().iter().map(|f| f.to_string()));
        candidates.extend(self.session.env.defs.keys().cloned());
        let d = Diagnostic::global(
            "smelt::repl::unknown_help",
            format!("no operator or def named `{arg}`"),
        );
        let d = match did_you_mean(&id, candidates.iter().map(|s| s.as_str())) {
            Some(s) => d.with_help(format!("did you mean `:help {s}`?")),
            None => d.with_help("`:ops` lists the operators"),
        };
        self.errors(&[d])
    }

    /// `:ops` (grouped by family) or `:ops FAMILY`.
    pub(super) fn ops(&self, family: &str) -> ReplOutput {
        let reg = &self.session.reg;
        let families = reg.families();
        let mut groups: Vec<(&str, Vec<&'static Signature>)> = Vec::new();
        let helpers: Vec<_> = reg
            .iter()
            .map(|o| o.signature())
            .filter(|s| s.group() == "helpers")
            .collect();
        if family.is_empty() || family == "helpers" {
            groups.push(("helpers", helpers));
        }
        for f in &families {
            if family.is_empty() || family == *f {
                groups.push((
                    f,
                    reg.iter()
                        .map(|o| o.signature())
                        .filter(|s| s.group() == *f)
                        .collect(),
                ));
            }
        }
        if groups.is_empty() {
            let mut d = Diagnostic::global(
                "smelt::repl::unknown_family",
                format!("unknown operator family `{family}`"),
            );
            d = match did_you_mean(family, families.iter().copied().chain(["helpers"])) {
                Some(s) => d.with_help(format!("did you mean `:ops {s}`?")),
                None => d.with_help(format!("families: helpers, {}", families.join(", "))),
            };
            return self.errors(&[d]);
        }
        let width = groups
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.id.len()))
            .max()
            .unwrap_or(0);
        let mut out = Vec::new();
        for (name, sigs) in &groups {
            if groups.len() > 1 {
                out.push(format!("{name}:"));
            }
            for s in sigs {
                out.push(format!("  {:width$}  {}", s.id, s.summary));
            }
        }
        ReplOutput::ok(out.join("\n"))
    }

    /// `:type EXPR`: infer without evaluating.
    fn type_cmd(&mut self, src: &str) -> ReplOutput {
        if src.is_empty() {
            return self.usage_error("type");
        }
        let file = self.new_source(src);
        let expr = match crate::syntax::parse_expr(file, src) {
            Ok(e) => e,
            Err(d) => return self.errors(&[d]),
        };
        if let crate::syntax::ast::ExprKind::Name(n) = &expr.kind {
            if let (None, Some(d)) = (
                self.session.env.globals.get(&n.name),
                self.session.env.defs.get(&n.name),
            ) {
                return ReplOutput::ok(format!("def {}", d.usage()));
            }
        }
        let mut env = self.session.env.clone();
        let (ty, diags) = type_of(&self.session.reg, &mut env, &expr);
        if diags.iter().any(|d| d.is_error()) {
            return self.errors(&diags);
        }
        ReplOutput::ok(ty.to_string())
    }

    /// `:plan`: one row per distinct node.
    fn plan_text(&self) -> String {
        if self.plan.is_empty() {
            return "no operator nodes evaluated yet".into();
        }
        let ran = self.plan.iter().filter(|e| e.runs > 0).count();
        let hit = self.plan.iter().filter(|e| e.hits > 0).count();
        let rows: Vec<[String; 5]> = self
            .plan
            .iter()
            .map(|e| {
                let ran = match self.timings {
                    true => format!("ran {:.2}s", e.seconds),
                    false => "ran".to_string(),
                };
                let status = match (&e.node.status, e.runs, e.hits) {
                    (Status::Failed, ..) => "failed".to_string(),
                    (_, 0, 0) => "pending".to_string(),
                    (_, 0, _) => "cached".to_string(),
                    (_, _, 0) => ran,
                    (_, _, _) => format!("{ran}, then cached"),
                };
                let at = self.session.sources.get(e.node.span.file).name.clone();
                [
                    e.node.op.to_string(),
                    e.node.key.short(),
                    status,
                    at,
                    shorten(&e.node.params, 60),
                ]
            })
            .collect();
        let w: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = vec![format!(
            "{} nodes ({ran} ran, {hit} served from the store):",
            rows.len()
        )];
        for [op, key, status, at, params] in &rows {
            out.push(format!(
                "  {op:w0$}  {key:w1$}  {status:w2$}  {at:w3$}  {params}",
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            ));
        }
        out.join("\n")
    }
}

fn help_text() -> String {
    let mut out = vec!["commands:".to_string()];
    for (name, alias, arg, what) in COMMANDS {
        let alias = if alias.is_empty() {
            String::new()
        } else {
            format!("(:{alias})")
        };
        out.push(format!(
            "  {:<16} {alias:<5} {what}",
            format!(":{name} {arg}")
        ));
    }
    out.push(
        "type a statement (`let x = …`, `def f(a) = …`, `use std.merge`) or an expression.".into(),
    );
    out.join("\n")
}

/// The documentation of one operator, from its signature.
pub(super) fn op_help(s: &Signature, width: usize) -> String {
    let mut out = vec![
        format!("{} — {}", s.call_syntax(), s.summary),
        String::new(),
        format!("  {}", s.render()),
    ];
    let kind = match (s.kind, s.determinism) {
        (OpKind::Helper, _) => "helper: evaluated on the spot, never cached",
        (OpKind::Node, Determinism::Seeded) => "cached node; seeded from the experiment seed",
        (OpKind::Node, Determinism::Pure) => "cached node; deterministic",
    };
    out.push(format!("  ({kind}, version {})", s.version));
    if !s.doc.is_empty() {
        out.push(String::new());
        out.push(wrap(s.doc, width, ""));
    }
    if !s.params.is_empty() {
        out.push(String::new());
        out.push("parameters:".into());
        let name_w = s.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in s.params {
            let mut line = format!("  {:name_w$} : {}", p.name, p.ty);
            if let Some(d) = &p.default {
                line += &format!(" = {}", d.render());
            }
            if let Some((lo, hi)) = p.range {
                line += &format!(" in [{lo}, {hi}]");
            }
            out.push(format!("{line}\n{}", wrap(p.doc, width, "      ")));
        }
    }
    for (a, b) in s.same_length {
        out.push(format!("  `{a}` and `{b}` must have the same length"));
    }
    if let Some(r) = s.reference {
        out.push(String::new());
        out.push(format!("reference: {r}"));
    }
    for (i, ex) in s.examples.iter().enumerate() {
        out.push(String::new());
        out.push(if s.examples.len() > 1 {
            format!("example {}:", i + 1)
        } else {
            "example:".into()
        });
        out.extend(ex.lines().map(|l| format!("  {l}")));
    }
    out.join("\n")
}

/// The documentation of a `def`: usage and its `##` doc.
fn def_help(d: &DefInfo, module: Option<&str>) -> String {
    let mut out = vec![format!("def {}", d.usage())];
    if let Some(m) = module {
        out.push(format!(
            "  (from std.{m}: `use std.{m}` to bring it into scope)"
        ));
    }
    match &d.doc {
        Some(doc) => {
            out.push(String::new());
            out.push(doc.clone());
        }
        None => out.push("  (no `##` documentation)".into()),
    }
    out.join("\n")
}

/// A `def` of a stdlib module that has not been `use`d yet.
pub(super) fn stdlib_def(name: &str) -> Option<(&'static str, DefInfo)> {
    for (module, src) in crate::stdlib::MODULES {
        let Ok(m) = crate::syntax::parse(crate::source::FileId(u32::MAX), src) else {
            continue;
        };
        for s in m.stmts {
            if let crate::syntax::ast::StmtKind::Def {
                name: n,
                params,
                body,
                doc,
            } = s.kind
            {
                if n.name == name {
                    return Some((
                        module,
                        DefInfo {
                            name: n.name,
                            params,
                            body,
                            doc,
                            span: n.span,
                        },
                    ));
                }
            }
        }
    }
    None
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// Greedy word wrap of `text` to `width` columns, each line starting with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut lines = Vec::new();
    for para in text.lines() {
        let mut line = indent.to_string();
        for word in para.split_whitespace() {
            let len = line.chars().count();
            if len > indent.len() && len + 1 + word.chars().count() > width {
                lines.push(std::mem::replace(&mut line, indent.to_string()));
            }
            if line.len() > indent.len() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines.join("\n")
}
