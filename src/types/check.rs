//! The type checker (statements and environment; expressions in `check_expr.rs`, calls in
//! `check_call.rs`): resolves names and operator calls and checks every argument against the
//! operator's signature, collecting all errors (never stopping at the first).
//!
//! `def`s are checked twice: once at their definition (parameters typed by their annotations,
//! else unknown) and again at every call with the argument types (like a template), so a
//! stdlib composition gets the same precise errors as a built-in.

use super::calls::did_you_mean;
use super::{accepts, Ty, Type};
use crate::diag::Diagnostic;
use crate::sig::SigLookup;
use crate::source::Span;
use crate::syntax::ast::*;
use std::collections::HashMap;
use std::sync::Arc;

/// A user or stdlib `def`.
#[derive(Debug, Clone)]
pub struct DefInfo {
    pub name: String,
    pub params: Vec<DefParam>,
    pub body: Expr,
    pub doc: Option<String>,
    pub span: Span,
}

impl DefInfo {
    pub fn usage(&self) -> String {
        let ps: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let mut s = p.name.name.clone();
                if let Some(t) = &p.ty {
                    s += &format!(": {}", render_type_expr(t));
                }
                if p.default.is_some() {
                    s += " = …";
                }
                s
            })
            .collect();
        format!("{}({})", self.name, ps.join(", "))
    }
}

pub fn render_type_expr(t: &TypeExpr) -> String {
    if t.args.is_empty() {
        t.name.name.clone()
    } else {
        format!(
            "{}<{}>",
            t.name.name,
            t.args
                .iter()
                .map(render_type_expr)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Bindings that persist across modules (imports, stdlib) and REPL lines.
#[derive(Debug, Clone, Default)]
pub struct CheckEnv {
    pub globals: HashMap<String, (Type, Span)>,
    pub defs: HashMap<String, Arc<DefInfo>>,
}

pub struct CheckOptions<'a> {
    /// Accept bare expression statements (REPL).
    pub allow_expr_stmts: bool,
    /// Names valid after `use std.`.
    pub std_modules: &'a [&'a str],
    /// Allow re-binding a global (REPL lines, imported modules replaced).
    pub allow_rebind: bool,
}

/// Configuration keys and their allowed values.
pub const CONFIG_KEYS: &[(&str, &[&str])] = &[
    ("seed", &[]),
    ("device", &["auto", "cpu", "cuda"]),
    ("dtype", &["f32", "f16", "bf16"]),
    ("name", &[]),
];

/// Fields readable on domain values with `.field`.
pub fn domain_fields(ty: &Type) -> &'static [(&'static str, Ty)] {
    match ty {
        Type::Model => &[
            ("model_type", Ty::Str),
            ("parameters", Ty::Int),
            ("tensors", Ty::Int),
            ("vocab_size", Ty::Int),
        ],
        Type::Task => &[
            ("name", Ty::Str),
            ("n_train", Ty::Int),
            ("n_test", Ty::Int),
            ("labels", Ty::List(&Ty::Str)),
        ],
        _ => &[],
    }
}

pub struct Checker<'a> {
    pub(super) lookup: &'a dyn SigLookup,
    pub(super) env: &'a mut CheckEnv,
    pub(super) opts: CheckOptions<'a>,
    pub(super) diags: Vec<Diagnostic>,
    pub(super) scopes: Vec<HashMap<String, Type>>,
    pub(super) depth: usize,
}

/// Check one module into `env`; returns its diagnostics (empty = OK).
pub fn check_module(
    lookup: &dyn SigLookup,
    env: &mut CheckEnv,
    module: &Module,
    opts: CheckOptions<'_>,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        lookup,
        env,
        opts,
        diags: Vec::new(),
        scopes: Vec::new(),
        depth: 0,
    };
    for stmt in &module.stmts {
        c.stmt(stmt);
    }
    let mut seen = std::collections::HashSet::new();
    c.diags.retain(|d| {
        seen.insert((
            d.code,
            d.span.map(|s| (s.lo, s.hi, s.file)),
            d.message.clone(),
        ))
    });
    c.diags
}

/// Infer the type of one expression in `env` (REPL `:type`).
pub fn type_of(lookup: &dyn SigLookup, env: &mut CheckEnv, expr: &Expr) -> (Type, Vec<Diagnostic>) {
    let opts = CheckOptions {
        allow_expr_stmts: true,
        std_modules: &[],
        allow_rebind: true,
    };
    let mut c = Checker {
        lookup,
        env,
        opts,
        diags: Vec::new(),
        scopes: Vec::new(),
        depth: 0,
    };
    let t = c.expr(expr);
    (t, c.diags)
}

impl Checker<'_> {
    pub(super) fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match &stmt.kind {
            StmtKind::Let { name, value } => {
                let t = self.expr(value);
                if let Some((_, first)) = self.env.globals.get(&name.name) {
                    if !self.opts.allow_rebind {
                        let first = *first;
                        self.err(
                            Diagnostic::error(
                                "smelt::check::duplicate_binding",
                                format!("`{}` is already defined", name.name),
                                name.span,
                            )
                            .with_label("defined again here")
                            .with_secondary(first, "first defined here")
                            .with_help("bindings are immutable: choose another name"),
                        );
                    }
                }
                self.env.globals.insert(name.name.clone(), (t, name.span));
            }
            StmtKind::Def {
                name,
                params,
                body,
                doc,
            } => {
                if name.name.contains('.') && self.lookup.sig(&name.name).is_some() {
                    let (verb, method) = name.name.split_once('.').unwrap_or_default();
                    self.err(
                        Diagnostic::error(
                            "smelt::check::duplicate_def",
                            format!("`{verb} {method}` is a built-in operator"),
                            name.span,
                        )
                        .with_label("defined again here")
                        .with_help("choose another method name"),
                    );
                }
                if self.env.defs.contains_key(&name.name) && !self.opts.allow_rebind {
                    let first = self.env.defs[&name.name].span;
                    self.err(
                        Diagnostic::error(
                            "smelt::check::duplicate_def",
                            format!("`{}` is already defined", name.name),
                            name.span,
                        )
                        .with_label("defined again here")
                        .with_secondary(first, "first defined here")
                        .with_help("choose another name"),
                    );
                }
                let info = Arc::new(DefInfo {
                    name: name.name.clone(),
                    params: params.clone(),
                    body: body.clone(),
                    doc: doc.clone(),
                    span: name.span,
                });
                // Generic check of the body with annotated parameter types.
                let mut scope = HashMap::new();
                for p in params {
                    let t = match &p.ty {
                        Some(te) => self.type_expr(te),
                        None => p
                            .default
                            .as_ref()
                            .map(|d| self.expr(d))
                            .unwrap_or(Type::Unknown),
                    };
                    scope.insert(p.name.name.clone(), t);
                }
                self.env.defs.insert(name.name.clone(), info);
                self.scopes.push(scope);
                self.expr(body);
                self.scopes.pop();
            }
            StmtKind::Use { path } => {
                let names: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                let ok = names.len() == 2
                    && names[0] == "std"
                    && self.opts.std_modules.contains(&names[1]);
                if !ok {
                    let last = path.last().map(|i| i.name.as_str()).unwrap_or("");
                    let mut d = Diagnostic::error(
                        "smelt::check::unknown_module",
                        format!("unknown module `{}`", names.join(".")),
                        stmt.span,
                    )
                    .with_label("not a stdlib module");
                    d = match did_you_mean(last, self.opts.std_modules.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `std.{s}`?")),
                        None => d.with_help(format!(
                            "stdlib modules: {}",
                            self.opts
                                .std_modules
                                .iter()
                                .map(|m| format!("std.{m}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    };
                    self.err(d);
                }
            }
            StmtKind::Import { path } => {
                let t = self.expr(path);
                self.expect_type(&Ty::Str, &t, path.span, "an import path");
            }
            StmtKind::Config { entries } => {
                for (key, value) in entries {
                    match CONFIG_KEYS.iter().find(|(k, _)| *k == key.name) {
                        None => {
                            let mut d = Diagnostic::error(
                                "smelt::check::unknown_config",
                                format!("unknown config key `{}`", key.name),
                                key.span,
                            )
                            .with_label("unknown key");
                            let keys = CONFIG_KEYS.iter().map(|(k, _)| *k);
                            d = match did_you_mean(&key.name, keys) {
                                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                                None => d.with_help("config keys: seed, device, dtype, name"),
                            };
                            self.err(d);
                        }
                        Some((k, words)) => self.config_value(k, words, value),
                    }
                }
            }
            StmtKind::Report { value, name } => {
                self.expr(value);
                if let Some(n) = name {
                    let t = self.expr(n);
                    self.expect_type(&Ty::Str, &t, n.span, "a report name");
                }
            }
            StmtKind::Save { value, path } => {
                let t = self.expr(value);
                if !matches!(
                    t,
                    Type::Model
                        | Type::Adapter
                        | Type::Fisher
                        | Type::Table
                        | Type::Matrix
                        | Type::Partition
                        | Type::Figure
                        | Type::Unknown
                ) {
                    self.err(
                        Diagnostic::error(
                            "smelt::check::cannot_save",
                            format!("cannot save a value of type {t}"),
                            value.span,
                        )
                        .with_label(format!("this is {t}"))
                        .with_help("`save` writes models (HF directories), adapters (PEFT directories), Fishers, tables, matrices (a directory, or CSV for 2-D) and figures (SVG)"),
                    );
                }
                let t = self.expr(path);
                self.expect_type(&Ty::Path, &t, path.span, "a path");
            }
            StmtKind::Plot { call, to } => {
                let t = self.expr(call);
                self.expect_type(&Ty::Figure, &t, call.span, "a figure (`plot heatmap(…)`)");
                if let Some(p) = to {
                    let t = self.expr(p);
                    self.expect_type(&Ty::Path, &t, p.span, "a file name");
                }
            }
            StmtKind::Expect { cond, within } => {
                let t = self.expr(cond);
                self.expect_type(&Ty::Bool, &t, cond.span, "a claim");
                if let Some(w) = within {
                    let is_cmp = matches!(
                        &cond.kind,
                        ExprKind::Binary {
                            op: BinOp::Eq
                                | BinOp::Ne
                                | BinOp::Lt
                                | BinOp::Le
                                | BinOp::Gt
                                | BinOp::Ge,
                            ..
                        }
                    );
                    if !is_cmp {
                        self.err(
                            Diagnostic::error(
                                "smelt::check::within_needs_comparison",
                                "`within` needs a comparison",
                                cond.span,
                            )
                            .with_label("not a comparison")
                            .with_help("write e.g. `expect a >= b within 0.01`"),
                        );
                    }
                    let t = self.expr(w);
                    self.expect_type(&Ty::Float, &t, w.span, "a tolerance");
                }
            }
            StmtKind::Expr(e) => {
                self.expr(e);
                if !self.opts.allow_expr_stmts {
                    self.err(
                        Diagnostic::error(
                            "smelt::check::bare_expression",
                            "this expression's value is not used",
                            e.span,
                        )
                        .with_label("computed and dropped")
                        .with_help("bind it with `let name = …`, or `report` it"),
                    );
                }
            }
        }
    }

    fn config_value(&mut self, key: &str, words: &[&str], value: &Expr) {
        if key == "seed" {
            let t = self.expr(value);
            self.expect_type(&Ty::Int, &t, value.span, "the seed");
            return;
        }
        let word = match &value.kind {
            ExprKind::Name(n) if self.lookup_name(&n.name).is_none() => Some(n.name.clone()),
            ExprKind::Str(s) => Some(s.clone()),
            _ => {
                let t = self.expr(value);
                self.expect_type(&Ty::Str, &t, value.span, "a config value");
                None
            }
        };
        if let (Some(w), false) = (&word, words.is_empty()) {
            let ok = words.contains(&w.as_str()) || (key == "device" && w.starts_with("cuda:"));
            if !ok {
                let mut d = Diagnostic::error(
                    "smelt::check::bad_config",
                    format!("`{w}` is not a valid {key}"),
                    value.span,
                )
                .with_label("not allowed here");
                d = match did_you_mean(w, words.iter().copied()) {
                    Some(s) => {
                        d.with_help(format!("did you mean `{s}`? allowed: {}", words.join(", ")))
                    }
                    None => d.with_help(format!("allowed: {}", words.join(", "))),
                };
                self.err(d);
            }
        }
    }

    pub(super) fn type_expr(&mut self, te: &TypeExpr) -> Type {
        let args: Vec<Type> = te.args.iter().map(|a| self.type_expr(a)).collect();
        match Type::from_name(&te.name.name, &args) {
            Some(t) => t,
            None => {
                let mut d = Diagnostic::error(
                    "smelt::check::unknown_type",
                    format!("unknown type `{}`", render_type_expr(te)),
                    te.span,
                )
                .with_label("unknown type");
                if let Some(s) = did_you_mean(&te.name.name, Type::NAMES.iter().copied()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.err(d);
                Type::Unknown
            }
        }
    }

    pub(super) fn expect_type(&mut self, ty: &Ty, t: &Type, span: Span, what: &str) {
        if !accepts(ty, t) {
            self.err(
                Diagnostic::error(
                    "smelt::check::type_mismatch",
                    format!("expected {ty} for {what}, found {t}"),
                    span,
                )
                .with_label(format!("this is {t}"))
                .with_help(format!("{what} must be {ty}")),
            );
        }
    }

    pub(super) fn lookup_name(&self, name: &str) -> Option<Type> {
        for s in self.scopes.iter().rev() {
            if let Some(t) = s.get(name) {
                return Some(t.clone());
            }
        }
        self.env.globals.get(name).map(|(t, _)| t.clone())
    }

    pub(super) fn all_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
        v.extend(self.env.globals.keys().cloned());
        v.extend(self.env.defs.keys().cloned());
        v
    }
}

pub(super) fn enum_words(ty: &Ty) -> Option<&'static [&'static str]> {
    match ty {
        Ty::Enum(w) => Some(w),
        Ty::Opt(inner) | Ty::List(inner) => enum_words(inner),
        Ty::Either(a, b) => enum_words(a).or_else(|| enum_words(b)),
        _ => None,
    }
}

/// The value of a numeric literal, including a negated one.
pub fn literal_number(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Int(i) => Some(*i as f64),
        ExprKind::Float(x) => Some(*x),
        ExprKind::Unary {
            op: UnOp::Neg,
            operand,
        } => literal_number(operand).map(|x| -x),
        _ => None,
    }
}

/// The static type of a value: scalars, artifacts by kind, unrealised nodes by their
/// recorded type, lists by their first element (and their length).
pub fn value_type(v: &crate::value::Value) -> Type {
    use crate::value::Value;
    match v {
        Value::Int(_) => Type::Int,
        Value::Float(_) => Type::Float,
        Value::Bool(_) => Type::Bool,
        Value::Str(_) => Type::Str,
        Value::None => Type::None,
        Value::Node(n) => n.ty.clone(),
        Value::Artifact(a) => a.kind.ty(),
        Value::List(xs) => Type::List(
            Box::new(xs.first().map_or(Type::Unknown, value_type)),
            Some(xs.len()),
        ),
        Value::Tuple(xs) => Type::Tuple(xs.iter().map(value_type).collect()),
        _ => Type::Unknown,
    }
}
