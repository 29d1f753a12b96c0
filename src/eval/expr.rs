//! Statement and expression evaluation (plain values on the spot, operator calls → nodes).

use super::{Evaluator, ExpectOutcome, Mode, Output};
use crate::diag::{Diagnostic, OpError};
use crate::ops::{Args, OpKind};
use crate::syntax::ast::*;
use crate::types::calls::{match_args, ParamSpec};
use crate::types::check::DefInfo;
use crate::types::{Ty, Type};
use crate::value::Value;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const NEEDS_RUN: &str = "smelt::plan::needs_run";

fn internal(msg: impl Into<String>, span: crate::source::Span) -> Diagnostic {
    Diagnostic::error("smelt::eval::internal", msg, span)
        .with_help("this is a bug in smelt's checker; please report it")
}

impl<'a> Evaluator<'a> {
    /// Evaluate every statement of a module in order.
    pub fn exec_module(&mut self, module: &Module) -> Result<(), Diagnostic> {
        for s in &module.stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    /// Evaluate one statement; a bare expression statement returns its value (REPL).
    pub fn stmt(&mut self, s: &Stmt) -> Result<Option<Value>, Diagnostic> {
        match &s.kind {
            StmtKind::Let { name, value } => {
                let v = self.eval(value)?;
                self.globals.insert(name.name.clone(), v);
            }
            StmtKind::Def {
                name,
                params,
                body,
                doc,
            } => {
                self.defs.insert(
                    name.name.clone(),
                    Arc::new(DefInfo {
                        name: name.name.clone(),
                        params: params.clone(),
                        body: body.clone(),
                        doc: doc.clone(),
                        span: name.span,
                    }),
                );
            }
            StmtKind::Use { .. } | StmtKind::Import { .. } | StmtKind::Config { .. } => {}
            StmtKind::Report { value, name } => {
                let v = self.eval(value)?;
                let name = match name {
                    Some(n) => self
                        .eval(n)?
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| "report".into()),
                    None => format!(
                        "report{}",
                        self.outputs
                            .iter()
                            .filter(|o| matches!(o, Output::Report { .. }))
                            .count()
                            + 1
                    ),
                };
                self.outputs.push(Output::Report {
                    name,
                    value: v,
                    span: s.span,
                });
            }
            StmtKind::Save { value, path } => {
                let v = self.eval(value)?;
                let p = self.eval(path)?;
                let path = p
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| internal("save path is not a string", path.span))?;
                self.outputs.push(Output::Save {
                    value: v,
                    path,
                    span: s.span,
                });
            }
            StmtKind::Plot { call, to } => {
                let value = self.eval(call)?;
                let to = match to {
                    Some(p) => Some(
                        self.eval(p)?
                            .as_str()
                            .map(String::from)
                            .ok_or_else(|| internal("plot path is not a string", p.span))?,
                    ),
                    None => None,
                };
                self.outputs.push(Output::Plot {
                    value,
                    to,
                    span: s.span,
                });
            }
            StmtKind::Expect { cond, within } => {
                let outcome = self.expect(cond, within.as_ref())?;
                self.outputs.push(Output::Expect {
                    outcome,
                    span: cond.span,
                });
            }
            StmtKind::Expr(e) => return self.eval(e).map(Some),
        }
        Ok(None)
    }

    fn expect(&mut self, cond: &Expr, within: Option<&Expr>) -> Result<ExpectOutcome, Diagnostic> {
        let tol = match within {
            Some(w) => match self.eval_forced(w)? {
                v if v.is_unknown() => return Ok(ExpectOutcome::Unknown),
                v => v.as_f64().unwrap_or(0.0),
            },
            None => 0.0,
        };
        if let ExprKind::Binary { op, lhs, rhs } = &cond.kind {
            if matches!(
                op,
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
            ) {
                let l = self.eval_forced(lhs)?;
                let r = self.eval_forced(rhs)?;
                if l.is_unknown() || r.is_unknown() {
                    return Ok(ExpectOutcome::Unknown);
                }
                let ok = match (l.as_f64(), r.as_f64()) {
                    (Some(a), Some(b)) => match op {
                        BinOp::Eq => (a - b).abs() <= tol,
                        BinOp::Ne => (a - b).abs() > tol,
                        BinOp::Lt => a < b + tol,
                        BinOp::Le => a <= b + tol,
                        BinOp::Gt => a > b - tol,
                        BinOp::Ge => a >= b - tol,
                        _ => unreachable!("comparison"),
                    },
                    _ => match op {
                        BinOp::Eq => l == r,
                        BinOp::Ne => l != r,
                        _ => compare(&l, &r).map(|o| cmp_holds(*op, o)).unwrap_or(false),
                    },
                };
                let (lhs, rhs) = (Some(l), Some(r));
                return Ok(if ok {
                    ExpectOutcome::Passed { lhs, rhs }
                } else {
                    ExpectOutcome::Failed { lhs, rhs }
                });
            }
        }
        Ok(match self.eval_forced(cond)? {
            Value::Bool(true) => ExpectOutcome::Passed {
                lhs: None,
                rhs: None,
            },
            Value::Bool(false) => ExpectOutcome::Failed {
                lhs: None,
                rhs: None,
            },
            _ => ExpectOutcome::Unknown,
        })
    }

    /// Evaluate and realise fully (`Unknown` in dry modes when something must run first).
    pub fn eval_forced(&mut self, e: &Expr) -> Result<Value, Diagnostic> {
        let v = self.eval(e)?;
        self.force_deep(&v)
    }

    fn lookup(&self, name: &str) -> Option<Value> {
        for s in self.scopes.iter().rev() {
            if let Some(v) = s.get(name) {
                return Some(v.clone());
            }
        }
        self.globals.get(name).cloned()
    }

    pub fn eval(&mut self, e: &Expr) -> Result<Value, Diagnostic> {
        Ok(match &e.kind {
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::Float(x) => Value::Float(*x),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Str(s) => Value::str(s),
            ExprKind::None => Value::None,
            ExprKind::Name(n) => self
                .lookup(&n.name)
                .ok_or_else(|| internal(format!("unbound `{}`", n.name), n.span))?,
            ExprKind::List(items) => Value::list(
                items
                    .iter()
                    .map(|x| self.eval(x))
                    .collect::<Result<_, _>>()?,
            ),
            ExprKind::Record(fields) => {
                let mut r = crate::value::Record::new();
                for (k, v) in fields {
                    r.insert(k.name.clone(), self.eval(v)?);
                }
                Value::Record(Arc::new(r))
            }
            ExprKind::Comprehension {
                body,
                pattern,
                iter,
                cond,
            } => {
                let it = self.eval(iter)?;
                let it = self.force(&it)?;
                let Some(items) = it.as_list().map(|l| l.to_vec()) else {
                    return Ok(Value::Unknown(Type::Unknown));
                };
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let mut scope = HashMap::new();
                    if !self.bind(pattern, item, &mut scope)? {
                        return Ok(Value::Unknown(Type::Unknown));
                    }
                    self.scopes.push(scope);
                    let keep = match cond {
                        Some(c) => match self.eval_forced(c) {
                            Ok(Value::Bool(b)) => Some(b),
                            Ok(_) => None,
                            Err(d) => {
                                self.scopes.pop();
                                return Err(d);
                            }
                        },
                        None => Some(true),
                    };
                    let res = match keep {
                        Some(true) => self.eval(body).map(Some),
                        Some(false) => Ok(None),
                        None => Ok(Some(Value::Unknown(Type::Unknown))),
                    };
                    self.scopes.pop();
                    if let Some(v) = res? {
                        out.push(v);
                    }
                }
                Value::list(out)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span)?,
            ExprKind::Field { base, field } => {
                let b = self.eval(base)?;
                let b = self.force(&b)?;
                match &b {
                    Value::Record(r) => r
                        .get(&field.name)
                        .cloned()
                        .ok_or_else(|| internal("missing field", field.span))?,
                    Value::Artifact(a) => json_value(&a.data[&field.name]),
                    _ => Value::Unknown(Type::Unknown),
                }
            }
            ExprKind::Index { base, index } => {
                let b = self.eval(base)?;
                let b = self.force(&b)?;
                let i = self.eval_forced(index)?;
                match (b.as_list(), &i) {
                    (Some(xs), Value::Int(i)) => {
                        let idx = if *i < 0 { xs.len() as i64 + i } else { *i };
                        xs.get(idx as usize).cloned().ok_or_else(|| {
                            Diagnostic::error(
                                "smelt::run::index_out_of_range",
                                format!("index {i} is out of range for a list of {}", xs.len()),
                                index.span,
                            )
                            .with_label("out of range")
                            .with_help(format!(
                                "valid indices are 0..{}",
                                xs.len().saturating_sub(1)
                            ))
                        })?
                    }
                    _ => Value::Unknown(Type::Unknown),
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.eval(lhs)?;
                let r = self.eval(rhs)?;
                self.binary(*op, l, r, e.span)?
            }
            ExprKind::Unary { op, operand } => match (op, self.eval_forced(operand)?) {
                (UnOp::Neg, Value::Int(i)) => Value::Int(-i),
                (UnOp::Neg, Value::Float(x)) => Value::Float(-x),
                (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                _ => Value::Unknown(Type::Unknown),
            },
            ExprKind::Block { lets, result } => {
                self.scopes.push(HashMap::new());
                let mut res = Ok(Value::None);
                for (name, value) in lets {
                    match self.eval(value) {
                        Ok(v) => {
                            self.scopes
                                .last_mut()
                                .expect("scope")
                                .insert(name.name.clone(), v);
                        }
                        Err(d) => {
                            res = Err(d);
                            break;
                        }
                    }
                }
                if res.is_ok() {
                    res = self.eval(result);
                }
                self.scopes.pop();
                res?
            }
        })
    }

    /// Bind a pattern; returns false when the value's structure is unknown (dry modes).
    fn bind(
        &mut self,
        p: &Pattern,
        v: Value,
        scope: &mut HashMap<String, Value>,
    ) -> Result<bool, Diagnostic> {
        match p {
            Pattern::Name(n) => {
                scope.insert(n.name.clone(), v);
                Ok(true)
            }
            Pattern::Tuple(ps, span) => {
                let v = self.force(&v)?;
                match v.as_list() {
                    Some(xs) if xs.len() == ps.len() => {
                        for (p, x) in ps.iter().zip(xs.to_vec()) {
                            if !self.bind(p, x, scope)? {
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    }
                    Some(xs) => Err(Diagnostic::error(
                        "smelt::run::pattern_mismatch",
                        format!("cannot unpack {} values into {} names", xs.len(), ps.len()),
                        *span,
                    )
                    .with_label("this pattern")),
                    None => Ok(false),
                }
            }
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: Value,
        r: Value,
        span: crate::source::Span,
    ) -> Result<Value, Diagnostic> {
        let l = self.force(&l)?;
        let r = self.force(&r)?;
        if op == BinOp::Concat {
            return Ok(match (l.as_list(), r.as_list()) {
                (Some(a), Some(b)) => Value::list(a.iter().chain(b).cloned().collect()),
                _ => Value::Unknown(Type::Unknown),
            });
        }
        let l = self.force_deep(&l)?;
        let r = self.force_deep(&r)?;
        if l.is_unknown() || r.is_unknown() {
            return Ok(Value::Unknown(Type::Unknown));
        }
        Ok(match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => match (&l, &r) {
                (Value::Str(a), Value::Str(b)) if op == BinOp::Add => Value::str(format!("{a}{b}")),
                (Value::Int(a), Value::Int(b)) if op != BinOp::Div => {
                    let res = match op {
                        BinOp::Add => a.checked_add(*b),
                        BinOp::Sub => a.checked_sub(*b),
                        _ => a.checked_mul(*b),
                    };
                    Value::Int(res.ok_or_else(|| {
                        Diagnostic::error("smelt::run::overflow", "integer overflow", span)
                            .with_label("overflows 64-bit integers")
                    })?)
                }
                _ => {
                    let (Some(a), Some(b)) = (l.as_f64(), r.as_f64()) else {
                        return Err(internal("arithmetic on non-numbers", span));
                    };
                    if op == BinOp::Div && b == 0.0 {
                        return Err(Diagnostic::error(
                            "smelt::run::division_by_zero",
                            "division by zero",
                            span,
                        )
                        .with_label("the divisor is 0")
                        .with_help("check the values feeding this expression"));
                    }
                    Value::Float(match op {
                        BinOp::Add => a + b,
                        BinOp::Sub => a - b,
                        BinOp::Mul => a * b,
                        _ => a / b,
                    })
                }
            },
            BinOp::Eq => Value::Bool(values_equal(&l, &r)),
            BinOp::Ne => Value::Bool(!values_equal(&l, &r)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                Value::Bool(compare(&l, &r).map(|o| cmp_holds(op, o)).unwrap_or(false))
            }
            BinOp::And => Value::Bool(l == Value::Bool(true) && r == Value::Bool(true)),
            BinOp::Or => Value::Bool(l == Value::Bool(true) || r == Value::Bool(true)),
            BinOp::Concat => unreachable!("handled above"),
        })
    }

    fn call(
        &mut self,
        callee: &Callee,
        args: &[Arg],
        span: crate::source::Span,
    ) -> Result<Value, Diagnostic> {
        let id = callee.dotted();
        if let Some(def) = self.defs.get(&id).cloned() {
            return self.call_def(&def, args, span);
        }
        let reg = self.reg;
        let op = reg
            .get(&id)
            .ok_or_else(|| internal(format!("unknown operator `{id}`"), span))?;
        let sig = op.signature();
        let specs = ParamSpec::of_signature(sig);
        let (slots, diags) = match_args(&id, &specs, args, span, "");
        if let Some(d) = diags.into_iter().next() {
            return Err(d);
        }
        let mut values = Vec::with_capacity(sig.params.len());
        for (p, slot) in sig.params.iter().zip(slots) {
            let v = match slot {
                None => p.default.map(|d| d.value()).unwrap_or(Value::None),
                Some(e) => match (&e.kind, is_enum(&p.ty)) {
                    (ExprKind::Name(n), true) if self.lookup(&n.name).is_none() => {
                        Value::str(&n.name)
                    }
                    (ExprKind::List(items), true)
                        if items.iter().all(|i| {
                            matches!(&i.kind, ExprKind::Name(n) if self.lookup(&n.name).is_none())
                                || matches!(i.kind, ExprKind::Str(_))
                        }) =>
                    {
                        let words = items.iter().map(|i| match &i.kind {
                            ExprKind::Name(n) => Ok(Value::str(&n.name)),
                            _ => self.eval(i),
                        });
                        Value::list(words.collect::<Result<Vec<_>, _>>()?)
                    }
                    _ => self.eval(e)?,
                },
            };
            values.push((p.name, v));
        }
        let args = Args::new(values);
        let ret = match sig.ret_fn {
            Some(f) => {
                let types: Vec<Type> = args
                    .values
                    .iter()
                    .map(|(_, v)| crate::types::check::value_type(v))
                    .collect();
                f(&types)
            }
            None => Type::from_ty(&sig.returns),
        };
        match sig.kind {
            OpKind::Helper => {
                let dry = self.mode != Mode::Run;
                let mut force = |v: &Value| -> Result<Value, OpError> {
                    match self.force(v) {
                        Ok(v) if v.is_unknown() => {
                            Err(OpError::new(NEEDS_RUN, "needs a value computed by running"))
                        }
                        Ok(v) => Ok(v),
                        Err(d) => Err(OpError {
                            code: d.code,
                            message: d.message,
                            help: d.help,
                        }),
                    }
                };
                match op.eval(&args, &mut force) {
                    Ok(v) => Ok(v),
                    Err(e) if e.code == NEEDS_RUN && dry => Ok(Value::Unknown(ret)),
                    Err(e) => Err(e.at_span(span)),
                }
            }
            OpKind::Node => self.node(op, args, span, ret),
        }
    }

    fn call_def(
        &mut self,
        def: &DefInfo,
        args: &[Arg],
        span: crate::source::Span,
    ) -> Result<Value, Diagnostic> {
        let specs = ParamSpec::of_def(&def.params);
        let (slots, diags) = match_args(&def.name, &specs, args, span, "");
        if let Some(d) = diags.into_iter().next() {
            return Err(d);
        }
        let mut scope = HashMap::new();
        for (p, slot) in def.params.iter().zip(slots) {
            let v = match (slot, &p.default) {
                (Some(e), _) => self.eval(e)?,
                (None, Some(d)) => self.eval(d)?,
                (None, None) => Value::None,
            };
            scope.insert(p.name.name.clone(), v);
        }
        let saved = std::mem::replace(&mut self.scopes, vec![scope]);
        let res = self.eval(&def.body);
        self.scopes = saved;
        res
    }
}

fn is_enum(ty: &Ty) -> bool {
    match ty {
        Ty::Enum(_) => true,
        Ty::Opt(t) | Ty::List(t) => is_enum(t),
        Ty::Either(a, b) => is_enum(a) || is_enum(b),
        _ => false,
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn cmp_holds(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        BinOp::Ge => o != Less,
        BinOp::Eq => o == Equal,
        BinOp::Ne => o != Equal,
        _ => false,
    }
}

/// A JSON payload field as a language value.
pub fn json_value(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Value::str(s),
        serde_json::Value::Array(xs) => Value::list(xs.iter().map(json_value).collect()),
        serde_json::Value::Object(m) => Value::Record(Arc::new(
            m.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        )),
    }
}
