//! Running checked statements for the REPL: a fresh `Run`-mode evaluator per line that borrows
//! the REPL's bindings, realises every node it creates, and hands the bindings back realised.
//!
//! Kept apart from `mod.rs` because it is the one place that juggles the evaluator's borrows
//! (registry, store, fingerprint memo) and the roll-back of a failed line, including a panic
//! inside an operator (reported as an error instead of killing the session).

use super::Repl;
use crate::diag::Diagnostic;
use crate::eval::{Evaluator, ExpectOutcome, Mode, Node, Output, Status};
use crate::report::Table;
use crate::source::{SourceMap, Span};
use crate::syntax::ast::{Module, StmtKind};
use crate::types::check::CheckEnv;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

impl Repl {
    /// Evaluate `modules` in order. `echo`: describe each `let` of the last module and show its
    /// bare expressions' values. On error the bindings are restored to what they were before.
    pub(super) fn execute(
        &mut self,
        modules: &[Module],
        echo: bool,
    ) -> Result<Vec<String>, Diagnostic> {
        let saved = (self.globals.clone(), self.defs.clone());
        let mut ev = Evaluator::new(
            &self.session.reg,
            Some(&self.store),
            &mut self.fingerprints,
            Mode::Run,
            self.settings.clone(),
        );
        ev.globals = std::mem::take(&mut self.globals);
        ev.defs = std::mem::take(&mut self.defs);
        if self.settings.progress {
            ev.on_node = Some(Box::new(|n: &Node, done, total| {
                let status = match &n.status {
                    Status::Cached => "cached".to_string(),
                    Status::Ran { seconds } => format!("ran in {seconds:.2}s"),
                    s => format!("{s:?}").to_lowercase(),
                };
                eprintln!("[{done}/{total}] {:<24} {}  {status}", n.op, n.key.short());
            }));
        }
        let (env, sources) = (&self.session.env, &self.session.sources);
        let res = catch_unwind(AssertUnwindSafe(|| {
            run(&mut ev, modules, env, sources, echo)
        }));
        let res = res.unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(
                Diagnostic::global("smelt::repl::internal", format!("internal error: {what}"))
                    .with_help("this is a bug in smelt; the line was not applied"),
            )
        });
        let _ = ev.fingerprints.save();
        let graph = std::mem::take(&mut ev.graph);
        let (globals, defs) = (
            std::mem::take(&mut ev.globals),
            std::mem::take(&mut ev.defs),
        );
        drop(ev);
        self.record(&graph);
        match res {
            Ok(out) => {
                self.globals = globals;
                self.defs = defs;
                Ok(out)
            }
            Err(d) => {
                (self.globals, self.defs) = saved;
                Err(d)
            }
        }
    }
}

fn run(
    ev: &mut Evaluator,
    modules: &[Module],
    env: &CheckEnv,
    sources: &SourceMap,
    echo: bool,
) -> Result<Vec<String>, Diagnostic> {
    let mut out = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let echo = echo && i + 1 == modules.len();
        for s in &m.stmts {
            let value = ev.stmt(s)?;
            if !echo {
                continue;
            }
            match (value, &s.kind) {
                (Some(v), _) => out.push(ev.force_deep(&v)?.display()),
                (None, StmtKind::Let { name, .. }) => {
                    let ty = env
                        .globals
                        .get(&name.name)
                        .map(|(t, _)| t.to_string())
                        .unwrap_or_else(|| "?".into());
                    out.push(format!("{} : {ty}", name.name));
                }
                (None, StmtKind::Def { name, .. }) => {
                    if let Some(d) = env.defs.get(&name.name) {
                        out.push(format!("def {}", d.usage()));
                    }
                }
                _ => {}
            }
        }
    }
    ev.realise_all()?;
    // Bindings must not refer to this evaluator's graph once it is gone.
    let pending: Vec<String> = ev
        .globals
        .iter()
        .filter(|(_, v)| v.has_nodes())
        .map(|(k, _)| k.clone())
        .collect();
    for name in pending {
        let v = ev.force_deep(&ev.globals[&name].clone())?;
        ev.globals.insert(name, v);
    }
    for o in std::mem::take(&mut ev.outputs) {
        match o {
            Output::Report { name, value, .. } => {
                let v = ev.force_deep(&value)?;
                out.push(format!(
                    "report {name}:\n{}",
                    Table::from_value(&v).to_markdown().trim_end()
                ));
            }
            Output::Save { value, path, span } => {
                let v = ev.force_deep(&value)?;
                crate::run::save(&v, Path::new(&path)).map_err(|e| e.at_span(span))?;
                out.push(format!("saved {path}"));
            }
            Output::Plot { value, to, span } => {
                let v = ev.force_deep(&value)?;
                let path = to.unwrap_or_else(|| "plot.svg".into());
                crate::run::save(&v, Path::new(&path)).map_err(|e| e.at_span(span))?;
                out.push(format!("plotted {path}"));
            }
            Output::Expect { outcome, span } => match outcome {
                ExpectOutcome::Passed { .. } => {
                    out.push(format!("expectation holds: {}", sources.snippet(span)))
                }
                ExpectOutcome::Failed { lhs, rhs } => {
                    return Err(expect_failed(sources, span, lhs, rhs))
                }
                ExpectOutcome::Unknown => {}
            },
        }
    }
    Ok(out)
}

fn expect_failed(
    sources: &SourceMap,
    span: Span,
    lhs: Option<crate::value::Value>,
    rhs: Option<crate::value::Value>,
) -> Diagnostic {
    let values = match (lhs, rhs) {
        (Some(l), Some(r)) => format!("left side = {}, right side = {}", l.display(), r.display()),
        _ => "the claim evaluated to false".to_string(),
    };
    Diagnostic::error(
        "smelt::run::expect_failed",
        format!("expectation failed: {}", sources.snippet(span)),
        span,
    )
    .with_label(values.clone())
    .with_help(format!(
        "{values}; the claim does not hold for these results"
    ))
}
