//! The pipeline façade: load a `.exp` file with its imports and stdlib modules, apply `--set`
//! overrides, type-check, and evaluate it in a chosen mode.
//!
//! This is where files are read; the stages below it are pure.

use crate::cache::{Fingerprinter, Store};
use crate::diag::Diagnostic;
use crate::eval::{Evaluator, Mode, Settings};
use crate::ops::{builtin_registry, Registry};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::ast::{Expr, ExprKind, Module, StmtKind};
use crate::types::calls::did_you_mean;
use crate::types::check::{check_module, type_of, CheckEnv, CheckOptions};
use crate::types::unify;
use std::path::{Path, PathBuf};

/// A loaded, checked program: modules in evaluation order (stdlib and imports first).
#[derive(Debug, Clone)]
pub struct Program {
    pub main: FileId,
    pub path: PathBuf,
    pub modules: Vec<Module>,
    /// Experiment name (file stem, or `config { name: … }`).
    pub name: String,
    pub overrides: Vec<(String, String)>,
}

pub struct Session {
    pub sources: SourceMap,
    pub reg: Registry,
    pub env: CheckEnv,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        Session {
            sources: SourceMap::new(),
            reg: builtin_registry(),
            env: CheckEnv::default(),
        }
    }

    /// Read, parse, override and check a program file.
    pub fn load(
        &mut self,
        path: &Path,
        overrides: &[(String, String)],
    ) -> Result<Program, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diagnostic::global(
                "smelt::io::missing_file",
                format!("cannot read `{}`: {e}", path.display()),
            )
            .with_help("give the path of an existing .exp file")]
        })?;
        self.load_source(&path.display().to_string(), &text, path, overrides)
    }

    /// Like [`Session::load`] with the text given (tests, REPL `:load`).
    pub fn load_source(
        &mut self,
        name: &str,
        text: &str,
        path: &Path,
        overrides: &[(String, String)],
    ) -> Result<Program, Vec<Diagnostic>> {
        let main = self.sources.add(name, text);
        let mut module = crate::syntax::parse(main, text).map_err(|d| vec![d])?;
        let mut modules = Vec::new();
        let mut diags = Vec::new();
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut seen = vec![path.to_path_buf()];
        self.resolve_deps(&module, &base_dir, &mut modules, &mut seen, &mut diags);
        if !diags.is_empty() {
            return Err(diags);
        }
        // Check dependencies first so their bindings are in scope.
        let std_names = crate::stdlib::names();
        for m in &modules {
            let opts = CheckOptions {
                allow_expr_stmts: false,
                std_modules: &std_names,
                allow_rebind: true,
            };
            diags.extend(check_module(&self.reg, &mut self.env, m, opts));
        }
        // Paper configs read their task data from `let data = …`: `$SMELT_DATA` replaces it
        // unless `--set data=…` does.
        let mut overrides = overrides.to_vec();
        let declares_data = module
            .stmts
            .iter()
            .any(|s| matches!(&s.kind, StmtKind::Let { name, .. } if name.name == "data"));
        if declares_data && !overrides.iter().any(|(k, _)| k == "data") {
            if let Ok(dir) = std::env::var("SMELT_DATA") {
                overrides.push(("data".into(), format!("{dir:?}")));
            }
        }
        let overrides = &overrides[..];
        if !overrides.is_empty() {
            // Type the original bindings first, so an override can be compared with them.
            let mut probe = self.env.clone();
            let opts = CheckOptions {
                allow_expr_stmts: false,
                std_modules: &std_names,
                allow_rebind: false,
            };
            let _ = check_module(&self.reg, &mut probe, &module, opts);
            for (k, v) in overrides {
                if let Err(d) = self.apply_override(&mut module, &mut probe, k, v) {
                    diags.push(d);
                }
            }
        }
        let opts = CheckOptions {
            allow_expr_stmts: false,
            std_modules: &std_names,
            allow_rebind: false,
        };
        diags.extend(check_module(&self.reg, &mut self.env, &module, opts));
        if diags.iter().any(|d| d.is_error()) {
            return Err(diags);
        }
        let name = config_name(&module).unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "experiment".into())
        });
        modules.push(module);
        Ok(Program {
            main,
            path: path.to_path_buf(),
            modules,
            name,
            overrides: overrides.to_vec(),
        })
    }

    fn resolve_deps(
        &mut self,
        module: &Module,
        base: &Path,
        out: &mut Vec<Module>,
        seen: &mut Vec<PathBuf>,
        diags: &mut Vec<Diagnostic>,
    ) {
        for s in &module.stmts {
            match &s.kind {
                StmtKind::Use { path } if path.len() == 2 && path[0].name == "std" => {
                    let name = &path[1].name;
                    let key = PathBuf::from(format!("<stdlib>/{name}.exp"));
                    if seen.contains(&key) {
                        continue;
                    }
                    // Unknown modules are reported by the checker with a suggestion.
                    if let Some(src) = crate::stdlib::source(name) {
                        seen.push(key.clone());
                        let id = self.sources.add(key.display().to_string(), src);
                        match crate::syntax::parse(id, src) {
                            Ok(m) => {
                                self.resolve_deps(&m, base, out, seen, diags);
                                out.push(m);
                            }
                            Err(d) => diags.push(d),
                        }
                    }
                }
                StmtKind::Import { path } => {
                    let ExprKind::Str(p) = &path.kind else {
                        diags.push(
                            Diagnostic::error(
                                "smelt::check::import_path",
                                "an import path must be a string literal",
                                path.span,
                            )
                            .with_label("not a literal")
                            .with_help("write `import \"other.exp\"`"),
                        );
                        continue;
                    };
                    let full = base.join(p);
                    if seen.contains(&full) {
                        continue;
                    }
                    seen.push(full.clone());
                    match std::fs::read_to_string(&full) {
                        Ok(text) => {
                            let id = self.sources.add(full.display().to_string(), text.as_str());
                            match crate::syntax::parse(id, &text) {
                                Ok(m) => {
                                    let dir =
                                        full.parent().map(Path::to_path_buf).unwrap_or_default();
                                    self.resolve_deps(&m, &dir, out, seen, diags);
                                    out.push(m);
                                }
                                Err(d) => diags.push(d),
                            }
                        }
                        Err(e) => diags.push(
                            Diagnostic::error(
                                "smelt::io::missing_file",
                                format!("cannot import `{}`: {e}", full.display()),
                                path.span,
                            )
                            .with_label("imported here")
                            .with_help("import paths are relative to the importing file"),
                        ),
                    }
                }
                _ => {}
            }
        }
    }

    /// Replace a top-level `let` (or a `config` key) by a `--set name=value` expression.
    fn apply_override(
        &mut self,
        module: &mut Module,
        probe: &mut CheckEnv,
        name: &str,
        raw: &str,
    ) -> Result<(), Diagnostic> {
        let file = self.sources.add(format!("--set {name}"), raw);
        let parsed = crate::syntax::parse_expr(file, raw).ok();
        let whole = Span::new(file, 0, raw.len());
        // A bare word (or anything that does not parse) is taken as a string.
        let expr = match parsed {
            Some(Expr {
                kind: ExprKind::Name(n),
                ..
            }) if !probe.globals.contains_key(&n.name) => Expr {
                kind: ExprKind::Str(raw.to_string()),
                span: whole,
            },
            Some(e) => e,
            None => Expr {
                kind: ExprKind::Str(raw.to_string()),
                span: whole,
            },
        };
        let mut names = Vec::new();
        for s in module.stmts.iter_mut() {
            match &mut s.kind {
                StmtKind::Let { name: n, value } => {
                    if n.name == name {
                        let (old, _) = type_of(&self.reg, &mut probe.clone(), value);
                        let (new, _) = type_of(&self.reg, probe, &expr);
                        if unify(&old, &new).is_none() {
                            return Err(Diagnostic::error(
                                "smelt::check::set_type",
                                format!("`--set {name}` gives {new}, but `{name}` is {old}"),
                                whole,
                            )
                            .with_label(format!("this is {new}"))
                            .with_help(format!("give a value of type {old}")));
                        }
                        *value = expr;
                        return Ok(());
                    }
                    names.push(n.name.clone());
                }
                StmtKind::Config { entries } => {
                    for (k, v) in entries.iter_mut() {
                        if k.name == name {
                            *v = expr;
                            return Ok(());
                        }
                        names.push(k.name.clone());
                    }
                }
                _ => {}
            }
        }
        if ["seed", "device", "dtype", "name"].contains(&name) {
            // A config key the file does not set: add it.
            let span = expr.span;
            let ident = crate::syntax::ast::Ident {
                name: name.into(),
                span,
            };
            module.stmts.insert(
                0,
                crate::syntax::ast::Stmt {
                    kind: StmtKind::Config {
                        entries: vec![(ident, expr)],
                    },
                    span,
                },
            );
            return Ok(());
        }
        let mut d = Diagnostic::error(
            "smelt::check::unknown_set",
            format!("`--set {name}`: the program has no top-level `let {name}`"),
            whole,
        )
        .with_label("not a binding of this program");
        d = match did_you_mean(name, names.iter().map(|s| s.as_str())) {
            Some(s) => d.with_help(format!("did you mean `--set {s}=…`?")),
            None => d.with_help(format!("settable names: {}", names.join(", "))),
        };
        Err(d)
    }

    /// Settings from the program's `config {}` statements.
    pub fn settings(&self, program: &Program) -> Settings {
        let mut s = Settings::default();
        for m in &program.modules {
            for st in &m.stmts {
                if let StmtKind::Config { entries } = &st.kind {
                    for (k, v) in entries {
                        let word = match &v.kind {
                            ExprKind::Name(n) => Some(n.name.clone()),
                            ExprKind::Str(x) => Some(x.clone()),
                            _ => None,
                        };
                        match (k.name.as_str(), &v.kind) {
                            ("seed", ExprKind::Int(i)) => s.seed = *i as u64,
                            ("dtype", _) => s.dtype = word.unwrap_or(s.dtype),
                            ("device", _) => s.device_name = word.unwrap_or(s.device_name),
                            _ => {}
                        }
                    }
                }
            }
        }
        s
    }

    /// Evaluate a checked program.
    pub fn evaluate<'a>(
        &'a self,
        program: &Program,
        mode: Mode,
        store: Option<&'a Store>,
        fingerprints: &'a mut Fingerprinter,
        settings: Settings,
        on_node: Option<crate::eval::OnNode<'a>>,
    ) -> (Evaluator<'a>, Result<(), Diagnostic>) {
        let mut ev = Evaluator::new(&self.reg, store, fingerprints, mode, settings);
        ev.on_node = on_node;
        let mut res = Ok(());
        for m in &program.modules {
            if let Err(d) = ev.exec_module(m) {
                res = Err(d);
                break;
            }
        }
        (ev, res)
    }
}

fn config_name(m: &Module) -> Option<String> {
    m.stmts.iter().find_map(|s| match &s.kind {
        StmtKind::Config { entries } => {
            entries
                .iter()
                .find(|(k, _)| k.name == "name")
                .and_then(|(_, v)| match &v.kind {
                    ExprKind::Str(s) => Some(s.clone()),
                    _ => None,
                })
        }
        _ => None,
    })
}

/// Pick the compute device named in `config { device: … }` / `--device`.
pub fn device(name: &str) -> Result<candle_core::Device, Diagnostic> {
    match name {
        "cpu" | "auto" if !cfg!(feature = "cuda") => Ok(candle_core::Device::Cpu),
        "cpu" => Ok(candle_core::Device::Cpu),
        "auto" => Ok(candle_core::Device::cuda_if_available(0).unwrap_or(candle_core::Device::Cpu)),
        d if d.starts_with("cuda") => {
            let idx: usize = d
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            candle_core::Device::new_cuda(idx).map_err(|e| {
                Diagnostic::global("smelt::run::device", format!("cannot use `{d}`: {e}"))
                    .with_help("build with `--features cuda` on a machine with an NVIDIA GPU, or use --device cpu")
            })
        }
        other => Err(
            Diagnostic::global("smelt::run::device", format!("unknown device `{other}`"))
                .with_help("use cpu, cuda, cuda:N or auto"),
        ),
    }
}
