//! The REPL core, free of any terminal: one [`Repl`] per session, fed one line at a time.
//!
//! Each line becomes a source file `<repl:N>`, is parsed with `parse_line`, checked into the
//! session's persistent `CheckEnv` (bare expressions and re-binding allowed) and evaluated in
//! `Run` mode against the persistent store. The evaluator borrows the registry, store and
//! fingerprint memo, so a fresh one is made per line: the REPL keeps `globals`/`defs` and moves
//! them in and out. Every node a line creates is realised before the line ends and bound values
//! are stored realised, so nothing refers to a dead evaluator's graph; re-computing something
//! already computed is a store hit (nodes are keyed by content). A line is atomic: when it fails,
//! the checker environment and the bindings are rolled back.
//!
//! Commands (`:help`, `:type`, …) live in `commands`, tab completion in `complete`, and the
//! rustyline front end in [`terminal`].

// `Diagnostic` is the crate-wide error type (136 bytes); boxing it here alone would buy nothing.
#![allow(clippy::result_large_err)]

mod commands;
mod complete;
mod exec;
pub mod terminal;

use crate::cache::{Fingerprinter, Store};
use crate::diag::{self, Diagnostic};
use crate::eval::{Node, Settings, Status};
use crate::session::Session;
use crate::syntax::ast::{ExprKind, Module, Stmt, StmtKind};
use crate::syntax::{parse_line, Line};
use crate::types::check::{check_module, CheckOptions, DefInfo};
use crate::value::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What one input line produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplOutput {
    /// Text to show (no trailing newline; empty when there is nothing to show).
    pub text: String,
    /// The text is an error report (print it to stderr).
    pub is_error: bool,
    /// The user asked to leave (`:quit`).
    pub quit: bool,
}

impl ReplOutput {
    fn ok(text: impl Into<String>) -> ReplOutput {
        ReplOutput {
            text: text.into().trim_end().to_string(),
            is_error: false,
            quit: false,
        }
    }
}

/// One distinct operator node evaluated in this session (for `:plan`).
#[derive(Debug, Clone)]
pub struct PlanEntry {
    /// The node as first seen, with the status of the last line that used it.
    pub node: Node,
    /// How many times the operator ran (not served from the store).
    pub runs: usize,
    /// How many times its result was served from the store.
    pub hits: usize,
    /// Seconds spent running it, summed.
    pub seconds: f64,
}

/// A REPL session: checker state, bindings, store and the nodes seen so far.
pub struct Repl {
    session: Session,
    store: Store,
    fingerprints: Fingerprinter,
    settings: Settings,
    globals: HashMap<String, Value>,
    defs: HashMap<String, Arc<DefInfo>>,
    plan: Vec<PlanEntry>,
    /// Stdlib modules already brought in by `use std.NAME`.
    used_std: Vec<String>,
    lines: usize,
    /// Render diagnostics with colour.
    pub color: bool,
    /// Width diagnostics are wrapped to.
    pub width: usize,
    /// Show seconds in `:plan` (off for stable transcripts).
    pub timings: bool,
}

impl Repl {
    /// A REPL over the store at `store_dir` (created if missing).
    pub fn new(store_dir: &Path) -> Result<Repl, Diagnostic> {
        let store = Store::open(store_dir).map_err(|e| {
            let d = Diagnostic::global(e.code, e.message);
            match e.help {
                Some(h) => d.with_help(h),
                None => d,
            }
        })?;
        let fingerprints = Fingerprinter::open(&store.fingerprint_file());
        Ok(Repl {
            session: Session::new(),
            store,
            fingerprints,
            settings: Settings::default(),
            globals: HashMap::new(),
            defs: HashMap::new(),
            plan: Vec::new(),
            used_std: Vec::new(),
            lines: 0,
            color: false,
            width: 100,
            timings: true,
        })
    }

    /// The underlying session (sources, registry, checker environment).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Run-wide settings used for the next lines (seed, dtype, device, progress).
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// Every distinct node evaluated so far, in first-seen order.
    pub fn plan(&self) -> &[PlanEntry] {
        &self.plan
    }

    /// The current value bound to `name`, if any.
    pub fn binding(&self, name: &str) -> Option<&Value> {
        self.globals.get(name)
    }

    /// Evaluate one input line: a `:command`, statements, or a bare expression.
    pub fn eval_line(&mut self, line: &str) -> ReplOutput {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return ReplOutput::default();
        }
        if let Some(cmd) = trimmed.strip_prefix(':') {
            return self.command(cmd);
        }
        self.eval_source(line)
    }

    /// Load a `.exp` file (with its imports) and run it into this session (`:load`).
    pub fn load_file(&mut self, path: &Path) -> ReplOutput {
        // A file is a self-contained program: check it on its own, then add its bindings.
        let saved = std::mem::take(&mut self.session.env);
        let loaded = self.session.load(path, &[]);
        let file_env = std::mem::replace(&mut self.session.env, saved);
        let program = match loaded {
            Ok(p) => p,
            Err(diags) => return self.errors(&diags),
        };
        // The file's `config {}` keys are adopted for the rest of the session.
        let before = self.settings.clone();
        if let Some(d) = program
            .modules
            .iter()
            .find_map(|m| self.apply_config(m).err())
        {
            self.settings = before;
            return self.errors(&[d]);
        }
        let mut env = self.session.env.clone();
        env.globals.extend(file_env.globals.clone());
        env.defs.extend(file_env.defs.clone());
        let saved_env = std::mem::replace(&mut self.session.env, env);
        match self.execute(&program.modules, false) {
            Ok(lines) => {
                let mut names: Vec<&String> = file_env
                    .globals
                    .keys()
                    .chain(file_env.defs.keys())
                    .collect();
                names.sort();
                names.dedup();
                let list: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                let mut text = format!(
                    "loaded {} ({} names: {})",
                    path.display(),
                    list.len(),
                    list.join(", ")
                );
                for l in lines {
                    text.push('\n');
                    text.push_str(&l);
                }
                ReplOutput::ok(text)
            }
            Err(d) => {
                self.session.env = saved_env;
                self.settings = before;
                self.errors(&[d])
            }
        }
    }

    fn eval_source(&mut self, line: &str) -> ReplOutput {
        let file = self.new_source(line);
        let stmts = match parse_line(file, line) {
            Ok(Line::Stmts(s)) => s,
            Ok(Line::Expr(e)) => vec![Stmt {
                span: e.span,
                kind: StmtKind::Expr(e),
            }],
            Err(d) => return self.errors(&[d]),
        };
        if stmts.is_empty() {
            return ReplOutput::default();
        }
        let mut new_std = Vec::new();
        if let Err(d) = self.stdlib_modules(&stmts, &mut new_std, &mut Vec::new()) {
            return self.errors(&[d]);
        }
        let (std_loaded, mut modules): (Vec<String>, Vec<Module>) = new_std.into_iter().unzip();
        let saved_env = self.session.env.clone();
        let std_names = crate::stdlib::names();
        let mut diags = Vec::new();
        for m in &modules {
            let opts = CheckOptions {
                allow_expr_stmts: false,
                std_modules: &std_names,
                allow_rebind: true,
            };
            diags.extend(check_module(
                &self.session.reg,
                &mut self.session.env,
                m,
                opts,
            ));
        }
        let module = Module { stmts };
        let opts = CheckOptions {
            allow_expr_stmts: true,
            std_modules: &std_names,
            allow_rebind: true,
        };
        diags.extend(check_module(
            &self.session.reg,
            &mut self.session.env,
            &module,
            opts,
        ));
        if diags.iter().any(|d| d.is_error()) {
            self.session.env = saved_env;
            return self.errors(&diags);
        }
        let warnings = diag::render_all(&diags, &self.session.sources, self.color, self.width);
        let before = self.settings.clone();
        if let Err(d) = self.apply_config(&module) {
            self.session.env = saved_env;
            return self.errors(&[d]);
        }
        modules.push(module);
        match self.execute(&modules, true) {
            Ok(lines) => {
                let mut text: Vec<String> = std_loaded
                    .iter()
                    .zip(&modules)
                    .map(|(name, m)| {
                        let defs: Vec<&str> = m.stmts.iter().filter_map(def_name).collect();
                        format!("std.{name}: {}", defs.join(", "))
                    })
                    .collect();
                text.extend(lines);
                self.used_std.extend(std_loaded);
                let mut text = text.join("\n");
                if !warnings.is_empty() {
                    text = format!("{}\n{text}", warnings.trim_end());
                }
                ReplOutput::ok(text)
            }
            Err(d) => {
                self.session.env = saved_env;
                self.settings = before;
                self.errors(&[d])
            }
        }
    }

    /// Parse the stdlib modules named by `use std.NAME` that are not loaded yet (and theirs).
    /// `out` gets them in dependency order; `seen` guards against cycles.
    fn stdlib_modules(
        &mut self,
        stmts: &[Stmt],
        out: &mut Vec<(String, Module)>,
        seen: &mut Vec<String>,
    ) -> Result<(), Diagnostic> {
        for s in stmts {
            let StmtKind::Use { path } = &s.kind else {
                continue;
            };
            if path.len() != 2 || path[0].name != "std" {
                continue;
            }
            let name = &path[1].name;
            if self.used_std.contains(name) || seen.contains(name) {
                continue;
            }
            // Unknown modules are reported by the checker with a suggestion.
            let Some(src) = crate::stdlib::source(name) else {
                continue;
            };
            seen.push(name.clone());
            let id = self
                .session
                .sources
                .add(format!("<stdlib>/{name}.exp"), src);
            let m = crate::syntax::parse(id, src)?;
            self.stdlib_modules(&m.stmts, out, seen)?;
            out.push((name.clone(), m));
        }
        Ok(())
    }

    /// Apply `config { seed: …, dtype: …, device: … }` lines to the settings.
    fn apply_config(&mut self, module: &Module) -> Result<(), Diagnostic> {
        for s in &module.stmts {
            let StmtKind::Config { entries } = &s.kind else {
                continue;
            };
            for (k, v) in entries {
                let word = match &v.kind {
                    ExprKind::Name(n) => Some(n.name.clone()),
                    ExprKind::Str(x) => Some(x.clone()),
                    _ => None,
                };
                match (k.name.as_str(), &v.kind, word) {
                    ("seed", ExprKind::Int(i), _) => self.settings.seed = *i as u64,
                    ("dtype", _, Some(w)) => self.settings.dtype = w,
                    ("device", _, Some(w)) => {
                        self.set_device(&w).map_err(|d| relocate(d, v.span))?
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn set_device(&mut self, name: &str) -> Result<(), Diagnostic> {
        if name != self.settings.device_name {
            self.settings.device = crate::session::device(name)?;
            self.settings.device_name = name.to_string();
        }
        Ok(())
    }

    fn new_source(&mut self, text: &str) -> crate::source::FileId {
        self.lines += 1;
        self.session
            .sources
            .add(format!("<repl:{}>", self.lines), text)
    }

    /// Render diagnostics exactly like the command line does.
    fn errors(&self, diags: &[Diagnostic]) -> ReplOutput {
        let text = diag::render_all(diags, &self.session.sources, self.color, self.width);
        ReplOutput {
            text: text.trim_end().to_string(),
            is_error: diags.iter().any(|d| d.is_error()),
            quit: false,
        }
    }

    /// Fold one evaluator's graph into the session's plan.
    fn record(&mut self, graph: &[Node]) {
        for n in graph {
            let (runs, hits, secs) = match n.status {
                Status::Ran { seconds } => (1, 0, seconds),
                Status::Cached => (0, 1, 0.0),
                _ => (0, 0, 0.0),
            };
            match self.plan.iter_mut().find(|e| e.node.key == n.key) {
                Some(e) => {
                    e.runs += runs;
                    e.hits += hits;
                    e.seconds += secs;
                    e.node.status = n.status.clone();
                }
                None => self.plan.push(PlanEntry {
                    node: n.clone(),
                    runs,
                    hits,
                    seconds: secs,
                }),
            }
        }
    }
}

fn def_name(s: &Stmt) -> Option<&str> {
    match &s.kind {
        StmtKind::Def { name, .. } => Some(name.name.as_str()),
        _ => None,
    }
}

/// Give a span-less diagnostic (e.g. from `session::device`) a place in the line.
fn relocate(mut d: Diagnostic, span: crate::source::Span) -> Diagnostic {
    if d.span.is_none() {
        d.span = Some(span);
        d.label = "this device".into();
    }
    d
}
