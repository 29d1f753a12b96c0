//! Typing of expressions: literals, names, lists, records, comprehensions, field access,
//! indexing and operators (calls are in `check_call.rs`).

use super::calls::did_you_mean;
use super::check::{domain_fields, Checker};
use super::{accepts, unify, Ty, Type};
use crate::diag::Diagnostic;
use crate::source::Span;
use crate::syntax::ast::*;
use std::collections::{BTreeMap, HashMap};

impl Checker<'_> {
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

    pub(super) fn unknown_field(&mut self, on: &Type, field: &Ident, keys: &[&str]) -> Type {
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

    pub(super) fn bind_pattern(&mut self, p: &Pattern, t: Type, scope: &mut HashMap<String, Type>) {
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

    pub(super) fn binary(
        &mut self,
        op: BinOp,
        l: Type,
        r: Type,
        ls: Span,
        rs: Span,
        whole: Span,
    ) -> Type {
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
}
