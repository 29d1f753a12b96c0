//! The type checker: resolves names and operator calls and checks every argument against the
//! operator's signature, collecting all errors (never stopping at the first).
//!
//! `def`s are checked twice: once at their definition (parameters typed by their annotations,
//! else unknown) and again at every call with the argument types (like a template), so a
//! stdlib composition gets the same precise errors as a built-in.

use super::calls::{did_you_mean, match_args, ParamSpec};
use super::{accepts, unify, Ty, Type};
use crate::diag::Diagnostic;
use crate::sig::{SigLookup, Signature};
use crate::source::Span;
use crate::syntax::ast::*;
use std::collections::{BTreeMap, HashMap};
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
    lookup: &'a dyn SigLookup,
    env: &'a mut CheckEnv,
    opts: CheckOptions<'a>,
    diags: Vec<Diagnostic>,
    scopes: Vec<HashMap<String, Type>>,
    depth: usize,
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
    fn err(&mut self, d: Diagnostic) {
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
                if !matches!(t, Type::Model | Type::Table | Type::Unknown) {
                    self.err(
                        Diagnostic::error(
                            "smelt::check::cannot_save",
                            format!("cannot save a value of type {t}"),
                            value.span,
                        )
                        .with_label(format!("this is {t}"))
                        .with_help("`save` writes models (HF directories) and tables"),
                    );
                }
                let t = self.expr(path);
                self.expect_type(&Ty::Path, &t, path.span, "a path");
            }
            StmtKind::Plot { call, to } => {
                self.expr(call);
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

    fn type_expr(&mut self, te: &TypeExpr) -> Type {
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

    fn expect_type(&mut self, ty: &Ty, t: &Type, span: Span, what: &str) {
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

    fn lookup_name(&self, name: &str) -> Option<Type> {
        for s in self.scopes.iter().rev() {
            if let Some(t) = s.get(name) {
                return Some(t.clone());
            }
        }
        self.env.globals.get(name).map(|(t, _)| t.clone())
    }

    fn all_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
        v.extend(self.env.globals.keys().cloned());
        v.extend(self.env.defs.keys().cloned());
        v
    }

    pub(crate) fn expr(&mut self, e: &Expr) -> Type {
        match &e.kind {
            ExprKind::Int(_) => Type::Int,
            ExprKind::Float(_) => Type::Float,
            ExprKind::Bool(_) => Type::Bool,
            ExprKind::Str(_) => Type::Str,
            ExprKind::None => Type::None,
            ExprKind::Name(n) => match self.lookup_name(&n.name) {
                Some(t) => t,
                None => {
                    let names = self.all_names();
                    let mut d = Diagnostic::error(
                        "smelt::check::unknown_name",
                        format!("unknown name `{}`", n.name),
                        n.span,
                    )
                    .with_label("not defined");
                    d = match did_you_mean(&n.name, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None if self.env.defs.contains_key(&n.name) => {
                            d.with_help("a `def` must be called: add `(…)`")
                        }
                        None => d.with_help("define it with `let` before using it"),
                    };
                    self.err(d);
                    Type::Unknown
                }
            },
            ExprKind::List(items) => {
                let mut elem = Type::Unknown;
                for it in items {
                    let t = self.expr(it);
                    match unify(&elem, &t) {
                        Some(u) => elem = u,
                        None => {
                            self.err(
                                Diagnostic::error(
                                    "smelt::check::mixed_list",
                                    format!("list elements have different types: {elem} and {t}"),
                                    it.span,
                                )
                                .with_label(format!("this is {t}"))
                                .with_help("all elements of a list must have one type; use a record to group different things"),
                            );
                        }
                    }
                }
                Type::List(Box::new(elem), Some(items.len()))
            }
            ExprKind::Record(fields) => {
                let mut out = BTreeMap::new();
                for (k, v) in fields {
                    let t = self.expr(v);
                    if out.insert(k.name.clone(), t).is_some() {
                        self.err(
                            Diagnostic::error(
                                "smelt::check::duplicate_field",
                                format!("field `{}` given twice", k.name),
                                k.span,
                            )
                            .with_label("duplicate field")
                            .with_help("remove one of them"),
                        );
                    }
                }
                Type::Record(out)
            }
            ExprKind::Comprehension {
                body,
                pattern,
                iter,
                cond,
            } => {
                let it = self.expr(iter);
                let (elem, len) = match it {
                    Type::List(e, n) => (*e, n),
                    Type::Unknown => (Type::Unknown, None),
                    other => {
                        self.err(
                            Diagnostic::error(
                                "smelt::check::not_iterable",
                                format!("cannot iterate over {other}"),
                                iter.span,
                            )
                            .with_label(format!("this is {other}"))
                            .with_help("`for` iterates over lists"),
                        );
                        (Type::Unknown, None)
                    }
                };
                let mut scope = HashMap::new();
                self.bind_pattern(pattern, elem, &mut scope);
                self.scopes.push(scope);
                if let Some(c) = cond {
                    let t = self.expr(c);
                    self.expect_type(&Ty::Bool, &t, c.span, "a filter condition");
                }
                let bt = self.expr(body);
                self.scopes.pop();
                Type::List(Box::new(bt), if cond.is_some() { None } else { len })
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span),
            ExprKind::Field { base, field } => {
                let bt = self.expr(base);
                match &bt {
                    Type::Unknown => Type::Unknown,
                    Type::Record(fs) if fs.is_empty() => Type::Unknown,
                    Type::Record(fs) => match fs.get(&field.name) {
                        Some(t) => t.clone(),
                        None => {
                            let keys: Vec<&str> = fs.keys().map(|s| s.as_str()).collect();
                            self.unknown_field(&bt, field, &keys)
                        }
                    },
                    other => {
                        let fields = domain_fields(other);
                        match fields.iter().find(|(n, _)| *n == field.name) {
                            Some((_, ty)) => Type::from_ty(ty),
                            None => {
                                let keys: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                                self.unknown_field(other, field, &keys)
                            }
                        }
                    }
                }
            }
            ExprKind::Index { base, index } => {
                let bt = self.expr(base);
                let it = self.expr(index);
                self.expect_type(&Ty::Int, &it, index.span, "an index");
                match bt {
                    Type::List(e, n) => {
                        if let (ExprKind::Int(i), Some(n)) = (&index.kind, n) {
                            if *i < 0 || *i as usize >= n {
                                self.err(
                                    Diagnostic::error(
                                        "smelt::check::index_out_of_range",
                                        format!("index {i} is out of range for a list of {n}"),
                                        index.span,
                                    )
                                    .with_label("out of range")
                                    .with_help(format!(
                                        "valid indices are 0..{}",
                                        n.saturating_sub(1)
                                    )),
                                );
                            }
                        }
                        *e
                    }
                    Type::Tuple(ts) => match &index.kind {
                        ExprKind::Int(i) if (*i as usize) < ts.len() && *i >= 0 => {
                            ts[*i as usize].clone()
                        }
                        _ => Type::Unknown,
                    },
                    Type::Unknown => Type::Unknown,
                    other => {
                        self.err(
                            Diagnostic::error(
                                "smelt::check::not_indexable",
                                format!("cannot index into {other}"),
                                base.span,
                            )
                            .with_label(format!("this is {other}"))
                            .with_help("only lists and tuples can be indexed"),
                        );
                        Type::Unknown
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs);
                let r = self.expr(rhs);
                self.binary(*op, l, r, lhs.span, rhs.span, e.span)
            }
            ExprKind::Unary { op, operand } => {
                let t = self.expr(operand);
                match op {
                    UnOp::Neg => {
                        self.expect_type(&Ty::Float, &t, operand.span, "`-`");
                        if t == Type::Int {
                            Type::Int
                        } else {
                            Type::Float
                        }
                    }
                    UnOp::Not => {
                        self.expect_type(&Ty::Bool, &t, operand.span, "`not`");
                        Type::Bool
                    }
                }
            }
            ExprKind::Block { lets, result } => {
                self.scopes.push(HashMap::new());
                for (name, value) in lets {
                    let t = self.expr(value);
                    self.scopes
                        .last_mut()
                        .expect("scope")
                        .insert(name.name.clone(), t);
                }
                let t = self.expr(result);
                self.scopes.pop();
                t
            }
        }
    }

    fn unknown_field(&mut self, on: &Type, field: &Ident, keys: &[&str]) -> Type {
        let mut d = Diagnostic::error(
            "smelt::check::unknown_field",
            format!("{on} has no field `{}`", field.name),
            field.span,
        )
        .with_label("unknown field");
        d = match did_you_mean(&field.name, keys.iter().copied()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if keys.is_empty() => d.with_help(format!("{on} has no fields")),
            None => d.with_help(format!("fields: {}", keys.join(", "))),
        };
        self.err(d);
        Type::Unknown
    }

    fn bind_pattern(&mut self, p: &Pattern, t: Type, scope: &mut HashMap<String, Type>) {
        match p {
            Pattern::Name(n) => {
                scope.insert(n.name.clone(), t);
            }
            Pattern::Tuple(ps, span) => match t {
                Type::Tuple(ts) if ts.len() == ps.len() => {
                    for (p, t) in ps.iter().zip(ts) {
                        self.bind_pattern(p, t, scope);
                    }
                }
                Type::Unknown => {
                    for p in ps {
                        self.bind_pattern(p, Type::Unknown, scope);
                    }
                }
                other => {
                    self.err(
                        Diagnostic::error(
                            "smelt::check::pattern_mismatch",
                            format!("cannot unpack {other} into {} names", ps.len()),
                            *span,
                        )
                        .with_label("this pattern")
                        .with_help("tuple patterns unpack the pairs made by `zip(xs, ys)`"),
                    );
                    for p in ps {
                        self.bind_pattern(p, Type::Unknown, scope);
                    }
                }
            },
        }
    }

    fn binary(&mut self, op: BinOp, l: Type, r: Type, ls: Span, rs: Span, whole: Span) -> Type {
        let mismatch = |c: &mut Self, help: &str| {
            c.err(
                Diagnostic::error(
                    "smelt::check::bad_operands",
                    format!("cannot apply `{}` to {l} and {r}", op.symbol()),
                    whole,
                )
                .with_label(format!("{l} {} {r}", op.symbol()))
                .with_help(help.to_string()),
            );
        };
        let unknown = matches!(l, Type::Unknown) || matches!(r, Type::Unknown);
        match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                if op == BinOp::Add
                    && matches!((&l, &r), (Type::Str | Type::Path, Type::Str | Type::Path))
                {
                    return Type::Str;
                }
                if l.is_numeric() && r.is_numeric() {
                    return if op != BinOp::Div && l == Type::Int && r == Type::Int {
                        Type::Int
                    } else if unknown && op != BinOp::Div {
                        Type::Unknown
                    } else {
                        Type::Float
                    };
                }
                if unknown && (matches!(l, Type::Str) || matches!(r, Type::Str)) && op == BinOp::Add
                {
                    return Type::Str;
                }
                if matches!((&l, &r), (Type::List(..), Type::List(..))) && op == BinOp::Add {
                    mismatch(self, "concatenate lists with `++`");
                } else if matches!(l, Type::Str) || matches!(r, Type::Str) {
                    mismatch(
                        self,
                        "`+` joins two strings; numbers are not converted implicitly",
                    );
                } else {
                    mismatch(self, "arithmetic works on Int and Float");
                }
                Type::Unknown
            }
            BinOp::Concat => match (&l, &r) {
                (Type::List(a, n), Type::List(b, m)) => match unify(a, b) {
                    Some(e) => Type::List(Box::new(e), n.zip(*m).map(|(n, m)| n + m)),
                    None => {
                        mismatch(self, "both lists must have the same element type");
                        Type::Unknown
                    }
                },
                (Type::Unknown, t @ Type::List(..)) | (t @ Type::List(..), Type::Unknown) => {
                    let Type::List(e, _) = t else {
                        unreachable!("matched a list")
                    };
                    Type::List(e.clone(), None)
                }
                (Type::Unknown, Type::Unknown) => Type::Unknown,
                _ => {
                    let _ = (ls, rs);
                    mismatch(
                        self,
                        "`++` concatenates two lists; wrap a single value in `[…]`",
                    );
                    Type::Unknown
                }
            },
            BinOp::Eq | BinOp::Ne => {
                if unify(&l, &r).is_none() {
                    mismatch(self, "compare values of the same type");
                }
                Type::Bool
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ok = (l.is_numeric() && r.is_numeric())
                    || (matches!(l, Type::Str) && matches!(r, Type::Str));
                if !ok {
                    mismatch(self, "ordering comparisons need two numbers or two strings");
                }
                Type::Bool
            }
            BinOp::And | BinOp::Or => {
                if !(accepts(&Ty::Bool, &l) && accepts(&Ty::Bool, &r)) {
                    mismatch(self, "`and`/`or` need booleans");
                }
                Type::Bool
            }
        }
    }

    fn call(&mut self, callee: &Callee, args: &[Arg], span: Span) -> Type {
        let dotted = callee.dotted();
        if let Callee::Name(n) = callee {
            if let Some(def) = self.env.defs.get(&n.name).cloned() {
                return self.call_def(&def, args, span);
            }
        }
        match self.lookup.sig(&dotted) {
            Some(sig) => self.call_op(sig, args, span),
            None => {
                self.unknown_callee(callee);
                for a in args {
                    self.expr(&a.value);
                }
                Type::Unknown
            }
        }
    }

    fn unknown_callee(&mut self, callee: &Callee) {
        let ids = self.lookup.ids();
        let d = match callee {
            Callee::Op { verb, method } => {
                let methods: Vec<&str> = ids
                    .iter()
                    .filter_map(|id| id.strip_prefix(&format!("{}.", verb.name)))
                    .collect();
                if methods.is_empty() {
                    let mut families: Vec<&str> = ids
                        .iter()
                        .filter_map(|id| id.split_once('.').map(|(f, _)| f))
                        .collect();
                    families.dedup();
                    let d = Diagnostic::error(
                        "smelt::check::unknown_operator",
                        format!("unknown operator family `{}`", verb.name),
                        verb.span,
                    )
                    .with_label("no such family");
                    match did_you_mean(&verb.name, families.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s} {}`?", method.name)),
                        None => d.with_help(format!("operator families: {}", families.join(", "))),
                    }
                } else {
                    let d = Diagnostic::error(
                        "smelt::check::unknown_operator",
                        format!("`{}` has no method `{}`", verb.name, method.name),
                        method.span,
                    )
                    .with_label("unknown method");
                    match did_you_mean(&method.name, methods.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{} {s}`?", verb.name)),
                        None => d.with_help(format!(
                            "methods of `{}`: {}",
                            verb.name,
                            methods.join(", ")
                        )),
                    }
                }
            }
            Callee::Name(n) => {
                let mut names: Vec<String> = ids
                    .iter()
                    .filter(|i| !i.contains('.'))
                    .map(|s| s.to_string())
                    .collect();
                names.extend(self.env.defs.keys().cloned());
                let d = Diagnostic::error(
                    "smelt::check::unknown_function",
                    format!("unknown function `{}`", n.name),
                    n.span,
                )
                .with_label("not defined");
                match did_you_mean(&n.name, names.iter().map(|s| s.as_str())) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None if ids.iter().any(|i| i.starts_with(&format!("{}.", n.name))) => d
                        .with_help(format!(
                            "`{}` is an operator family: write `{} METHOD(…)`",
                            n.name, n.name
                        )),
                    None => d.with_help("define it with `def`, or see `smelt doc` for built-ins"),
                }
            }
        };
        self.err(d);
    }

    fn call_op(&mut self, sig: &'static Signature, args: &[Arg], span: Span) -> Type {
        let specs: Vec<ParamSpec> = sig
            .params
            .iter()
            .map(|p| ParamSpec {
                name: p.name,
                has_default: p.default.is_some(),
            })
            .collect();
        let usage = sig.render();
        let (slots, diags) = match_args(&sig.call_syntax(), &specs, args, span, &usage);
        self.diags.extend(diags);
        // Arguments not matched to a parameter are still checked for their own errors.
        for a in args {
            if !slots
                .iter()
                .any(|s| s.is_some_and(|e| std::ptr::eq(e, &a.value)))
            {
                self.expr(&a.value);
            }
        }
        let mut types = Vec::with_capacity(sig.params.len());
        let mut lens: HashMap<&str, (Option<usize>, Span)> = HashMap::new();
        for (p, slot) in sig.params.iter().zip(&slots) {
            let t = match slot {
                None => p
                    .default
                    .map(|d| value_type(&d.value()))
                    .unwrap_or(Type::Unknown),
                Some(e) => {
                    let t = self.arg(sig, p, e);
                    if let Type::List(_, n) = &t {
                        lens.insert(p.name, (*n, e.span));
                    }
                    t
                }
            };
            types.push(t);
        }
        for (a, b) in sig.same_length {
            if let (Some((Some(n), sa)), Some((Some(m), sb))) = (lens.get(a), lens.get(b)) {
                if n != m {
                    self.err(
                        Diagnostic::error(
                            "smelt::check::length_mismatch",
                            format!("`{a}` has {n} elements but `{b}` has {m}"),
                            *sb,
                        )
                        .with_label(format!("{m} elements"))
                        .with_secondary(*sa, format!("{n} elements"))
                        .with_help(format!(
                            "`{}` needs one `{b}` entry per `{a}` entry",
                            sig.call_syntax()
                        )),
                    );
                }
            }
        }
        match sig.ret_fn {
            Some(f) => f(&types),
            None => Type::from_ty(&sig.returns),
        }
    }

    /// Check one argument against its parameter; returns the argument's type.
    fn arg(&mut self, sig: &Signature, p: &crate::sig::Param, e: &Expr) -> Type {
        // A bare word is an enum symbol when the parameter takes one and the name is unbound.
        if let Some(words) = enum_words(&p.ty) {
            let word = match &e.kind {
                ExprKind::Name(n) if self.lookup_name(&n.name).is_none() => Some(n.name.as_str()),
                ExprKind::Str(s) => Some(s.as_str()),
                _ => None,
            };
            if let Some(w) = word {
                if !words.contains(&w) {
                    let mut d = Diagnostic::error(
                        "smelt::check::bad_choice",
                        format!(
                            "`{w}` is not a valid `{}` for `{}`",
                            p.name,
                            sig.call_syntax()
                        ),
                        e.span,
                    )
                    .with_label("not one of the choices");
                    d = match did_you_mean(w, words.iter().copied()) {
                        Some(s) => d.with_help(format!(
                            "did you mean `{s}`? choices: {}",
                            words.join(", ")
                        )),
                        None => d.with_help(format!("choices: {}", words.join(", "))),
                    };
                    self.err(d);
                }
                return Type::Str;
            }
        }
        let t = self.expr(e);
        if !accepts(&p.ty, &t) {
            let hint = match (&p.ty, &t) {
                (Ty::List(inner), t) if accepts(inner, t) => {
                    format!("wrap it in a list: `[{}]`", "…")
                }
                _ => format!("`{}` takes {}", p.name, p.ty),
            };
            self.err(
                Diagnostic::error(
                    "smelt::check::type_mismatch",
                    format!(
                        "`{}` of `{}` expects {}, found {t}",
                        p.name,
                        sig.call_syntax(),
                        p.ty
                    ),
                    e.span,
                )
                .with_label(format!("this is {t}"))
                .with_help(hint),
            );
        }
        if let (Some((lo, hi)), Some(x)) = (p.range, literal_number(e)) {
            if x < lo || x > hi {
                self.err(
                    Diagnostic::error(
                        "smelt::check::out_of_range",
                        format!(
                            "`{}` = {x} is out of range for `{}`",
                            p.name,
                            sig.call_syntax()
                        ),
                        e.span,
                    )
                    .with_label(format!("must be in [{lo}, {hi}]"))
                    .with_help(p.doc.to_string()),
                );
            }
        }
        t
    }

    fn call_def(&mut self, def: &DefInfo, args: &[Arg], span: Span) -> Type {
        let specs: Vec<ParamSpec> = def
            .params
            .iter()
            .map(|p| ParamSpec {
                name: &p.name.name,
                has_default: p.default.is_some(),
            })
            .collect();
        let usage = def.usage();
        let (slots, diags) = match_args(&def.name, &specs, args, span, &usage);
        self.diags.extend(diags);
        let mut scope = HashMap::new();
        for (p, slot) in def.params.iter().zip(&slots) {
            let t = match slot {
                Some(e) => self.expr(e),
                None => p
                    .default
                    .as_ref()
                    .map(|d| self.expr(d))
                    .unwrap_or(Type::Unknown),
            };
            if let Some(te) = &p.ty {
                let want = self.type_expr(te);
                if unify(&want, &t).is_none() {
                    let at = slot.map(|e| e.span).unwrap_or(span);
                    self.err(
                        Diagnostic::error(
                            "smelt::check::type_mismatch",
                            format!(
                                "`{}` of `{}` expects {want}, found {t}",
                                p.name.name, def.name
                            ),
                            at,
                        )
                        .with_label(format!("this is {t}"))
                        .with_help(format!("usage: {usage}")),
                    );
                }
            }
            scope.insert(p.name.name.clone(), t);
        }
        if self.depth > 32 {
            self.err(
                Diagnostic::error(
                    "smelt::check::recursion",
                    format!("`{}` calls itself", def.name),
                    span,
                )
                .with_label("recursive call")
                .with_help("defs cannot be recursive; use a comprehension"),
            );
            return Type::Unknown;
        }
        // Errors inside the body are reported at the body (already done at definition time
        // for type-independent ones); here we only need the result type.
        let saved_scopes = std::mem::take(&mut self.scopes);
        self.scopes.push(scope);
        self.depth += 1;
        let before = self.diags.len();
        let t = self.expr(&def.body);
        self.depth -= 1;
        let body_diags: Vec<Diagnostic> = self.diags.drain(before..).collect();
        self.scopes = saved_scopes;
        if let Some(first) = body_diags.into_iter().next() {
            self.err(
                Diagnostic::error(
                    "smelt::check::def_body",
                    format!("in this call of `{}`: {}", def.name, first.message),
                    span,
                )
                .with_label("the error happens inside this call")
                .with_help(first.help.unwrap_or_else(|| format!("usage: {usage}"))),
            );
        }
        t
    }
}

fn enum_words(ty: &Ty) -> Option<&'static [&'static str]> {
    match ty {
        Ty::Enum(w) => Some(w),
        Ty::Opt(inner) => enum_words(inner),
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

fn value_type(v: &crate::value::Value) -> Type {
    use crate::value::Value;
    match v {
        Value::Int(_) => Type::Int,
        Value::Float(_) => Type::Float,
        Value::Bool(_) => Type::Bool,
        Value::Str(_) => Type::Str,
        Value::None => Type::None,
        Value::List(_) => Type::List(Box::new(Type::Unknown), Some(0)),
        _ => Type::Unknown,
    }
}
