//! Typing of calls: operator calls against their `Signature` (argument matching, types,
//! enum choices, literal ranges, equal list lengths) and `def` calls instantiated with the
//! argument types.

use super::calls::{did_you_mean, match_args, ParamSpec};
use super::check::{enum_words, literal_number, value_type, Checker, DefInfo};
use super::{accepts, unify, Ty, Type};
use crate::diag::Diagnostic;
use crate::sig::Signature;
use crate::source::Span;
use crate::syntax::ast::*;
use std::collections::HashMap;

impl Checker<'_> {
    pub(super) fn call(&mut self, callee: &Callee, args: &[Arg], span: Span) -> Type {
        let dotted = callee.dotted();
        // A plain name, or `VERB METHOD` naming a `def VERB METHOD(…)` composition.
        if let Some(def) = self.env.defs.get(&dotted).cloned() {
            return self.call_def(&def, args, span);
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

    pub(super) fn unknown_callee(&mut self, callee: &Callee) {
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

    pub(super) fn call_op(&mut self, sig: &'static Signature, args: &[Arg], span: Span) -> Type {
        let specs = ParamSpec::of_signature(sig);
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
    pub(super) fn arg(&mut self, sig: &Signature, p: &crate::sig::Param, e: &Expr) -> Type {
        // A bare word is an enum symbol when the parameter takes one and the name is unbound.
        if let Some(words) = enum_words(&p.ty) {
            let word_of = |e: &Expr| match &e.kind {
                ExprKind::Name(n) if self.lookup_name(&n.name).is_none() => {
                    Some((n.name.clone(), e.span))
                }
                ExprKind::Str(s) => Some((s.to_string(), e.span)),
                _ => None,
            };
            // A list of words for a list-of-choices parameter (`metric=[accuracy, mcc]`).
            let list: Option<Vec<(String, Span)>> = match &e.kind {
                ExprKind::List(items) if !items.is_empty() && takes_enum_list(&p.ty) => {
                    items.iter().map(word_of).collect()
                }
                _ => None,
            };
            let single = word_of(e).filter(|_| !matches!(p.ty, Ty::List(_)));
            let found: Option<Vec<(String, Span)>> = list.or(single.map(|w| vec![w]));
            if let Some(found) = found {
                for (w, span) in &found {
                    if words.contains(&w.as_str()) {
                        continue;
                    }
                    let mut d = Diagnostic::error(
                        "smelt::check::bad_choice",
                        format!(
                            "`{w}` is not a valid `{}` for `{}`",
                            p.name,
                            sig.call_syntax()
                        ),
                        *span,
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
                return match &e.kind {
                    ExprKind::List(items) => Type::List(Box::new(Type::Str), Some(items.len())),
                    _ => Type::Str,
                };
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

    pub(super) fn call_def(&mut self, def: &DefInfo, args: &[Arg], span: Span) -> Type {
        let specs = ParamSpec::of_def(&def.params);
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

/// Whether a parameter takes a list of enum words (`List<Enum>` or `Enum | List<Enum>`).
fn takes_enum_list(ty: &Ty) -> bool {
    match ty {
        Ty::List(inner) => matches!(inner, Ty::Enum(_)),
        Ty::Opt(t) => takes_enum_list(t),
        Ty::Either(a, b) => takes_enum_list(a) || takes_enum_list(b),
        _ => false,
    }
}
