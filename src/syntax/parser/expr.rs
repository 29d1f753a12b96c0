//! Expressions: precedence levels, prefix, binary and postfix operators, lists and
//! comprehensions, records, calls (plain and `verb method(…)` operator calls), and the pieces
//! shared with statements ([`Cx::arg`], [`Cx::field`]).
//!
//! Precedence is encoded by the grammar as one rule per level; [`skip_levels`] jumps over
//! levels that hold a single operand, and every binary or postfix chain is folded to the left
//! by [`Cx::fold_left`], which also counts each operator as one level of nesting.

use super::tree::{sig, skip_levels, take, tight, Cx};
use super::{PResult, Rule};
use crate::source::Span;
use crate::syntax::ast::*;
use pest::iterators::{Pair, Pairs};

impl Cx<'_> {
    /// Convert an expression rule, counting one level of nesting for each node with children
    /// (binary and postfix chains count themselves in [`Cx::fold_left`]).
    pub(super) fn expr(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let p = skip_levels(p);
        let adds_node = match p.as_rule() {
            Rule::not_expr | Rule::unary => {
                matches!(
                    p.clone().into_inner().next().map(|c| c.as_rule()),
                    Some(Rule::op_not | Rule::neg)
                )
            }
            Rule::list | Rule::record | Rule::op_call | Rule::call | Rule::paren => true,
            _ => false,
        };
        if adds_node {
            self.nested(1, &p.clone(), || self.expr_node(p))
        } else {
            self.expr_node(p)
        }
    }

    fn expr_node(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        // Precedence levels and prefix operators: no span of their own is needed (computing
        // one would walk down the whole operand chain).
        match p.as_rule() {
            Rule::expr => {
                return self.expr(p.into_inner().next().expect("grammar: expr has a child"))
            }
            Rule::or_expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr => {
                return self.binary(p)
            }
            Rule::postfix => return self.postfix(p),
            Rule::not_expr | Rule::unary => return self.prefix(p),
            _ => {}
        }
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::float | Rule::int => self.number(&p, span)?,
            Rule::string => ExprKind::Str(self.string(p)?),
            Rule::bool_lit => ExprKind::Bool(p.as_str() == "true"),
            Rule::none_lit => ExprKind::None,
            Rule::ident => ExprKind::Name(self.ident(p)),
            Rule::paren => {
                let inner = sig(p)
                    .into_iter()
                    .next()
                    .expect("grammar: paren has an expr");
                let mut e = self.expr(inner)?;
                e.span = span;
                return Ok(e);
            }
            Rule::list => self.list(p)?,
            Rule::record => ExprKind::Record(
                sig(p)
                    .into_iter()
                    .map(|f| self.field(f))
                    .collect::<PResult<_>>()?,
            ),
            Rule::op_call | Rule::call => self.call(p)?,
            r => unreachable!("grammar: unexpected expression rule {r:?}"),
        };
        Ok(Expr { kind, span })
    }

    /// `not x` or `-x`, or a level that merely passes its operand through.
    fn prefix(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let mut c = p.into_inner();
        let first = c.next().expect("grammar: prefix expression has a child");
        let op = match first.as_rule() {
            Rule::op_not => UnOp::Not,
            Rule::neg => UnOp::Neg,
            _ => return self.expr(first),
        };
        let operand = self.expr(c.next().expect("grammar: prefix operand"))?;
        let span = Span::new(self.file, first.as_span().start(), operand.span.hi as usize);
        let kind = ExprKind::Unary {
            op,
            operand: Box::new(operand),
        };
        Ok(Expr { kind, span })
    }

    /// `[a, b, …]` or `[body for pattern in iter if cond]`.
    fn list(&self, p: Pair<'_, Rule>) -> PResult<ExprKind> {
        let mut items = Vec::new();
        let mut comp = None;
        for c in sig(p) {
            match c.as_rule() {
                Rule::comp_tail => comp = Some(c),
                _ => items.push(self.expr(c)?),
            }
        }
        let Some(tail) = comp else {
            return Ok(ExprKind::List(items));
        };
        let body = Box::new(items.pop().expect("grammar: comprehension body"));
        let mut t = sig(tail).into_iter();
        let pattern = self.pattern(t.next().expect("grammar: comprehension pattern"))?;
        let iter = Box::new(self.expr(t.next().expect("grammar: comprehension iterable"))?);
        let cond = t.next().map(|c| self.expr(c).map(Box::new)).transpose()?;
        Ok(ExprKind::Comprehension {
            body,
            pattern,
            iter,
            cond,
        })
    }

    /// `name(args)` or `verb method(args)`.
    fn call(&self, p: Pair<'_, Rule>) -> PResult<ExprKind> {
        let mut callee = None;
        let mut args = Vec::new();
        for c in sig(p) {
            match c.as_rule() {
                Rule::op_callee => {
                    let mut w = c.into_inner();
                    let verb = self.ident(w.next().expect("grammar: verb"));
                    let method = self.ident(w.next().expect("grammar: method"));
                    callee = Some(Callee::Op { verb, method });
                }
                Rule::ident => callee = Some(Callee::Name(self.ident(c))),
                _ => args.push(self.arg(c)?),
            }
        }
        Ok(ExprKind::Call {
            callee: callee.expect("grammar: call has a callee"),
            args,
        })
    }

    /// A left fold over the children of `p`, `first (op …)*`: `step` turns the value so far and
    /// one operator (taking its right operand, if any, from the remaining children) into the
    /// next value. The chain's `ops` operators count as that many levels of nesting.
    fn fold_left<'i>(
        &self,
        p: Pair<'i, Rule>,
        ops: usize,
        mut step: impl FnMut(Expr, Pair<'i, Rule>, &mut Pairs<'i, Rule>) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut c = p.clone().into_inner();
        let first = take(&mut c);
        if ops == 0 {
            return self.expr(first);
        }
        self.nested(ops, &p, || {
            let mut acc = self.expr(first)?;
            while let Some(op) = c.next() {
                acc = step(acc, op, &mut c)?;
            }
            Ok(acc)
        })
    }

    /// `operand (op operand)*`, folded to the left.
    fn binary(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let ops = p.clone().into_inner().count() / 2;
        self.fold_left(p, ops, |lhs, op, rest| {
            let rhs = self.expr(take(rest))?;
            let op = match op.as_str() {
                "or" => BinOp::Or,
                "and" => BinOp::And,
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "++" => BinOp::Concat,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                o => unreachable!("grammar: unknown operator {o:?}"),
            };
            let span = lhs.span.to(rhs.span);
            let kind = ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
            Ok(Expr { kind, span })
        })
    }

    /// `primary (.field | [index])*`, folded to the left.
    fn postfix(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let ops = p.clone().into_inner().count() - 1;
        self.fold_left(p, ops, |base, op, _| {
            let hi = tight(&op).1;
            let span = Span::new(self.file, base.span.lo as usize, hi);
            let rule = op.as_rule();
            let inner = sig(op)
                .into_iter()
                .next()
                .expect("grammar: postfix operand");
            let kind = match rule {
                Rule::field_access => ExprKind::Field {
                    base: Box::new(base),
                    field: self.ident(inner),
                },
                _ => ExprKind::Index {
                    base: Box::new(base),
                    index: Box::new(self.expr(inner)?),
                },
            };
            Ok(Expr { kind, span })
        })
    }

    /// `name: value` in a record or `config { … }`.
    pub(super) fn field(&self, p: Pair<'_, Rule>) -> PResult<(Ident, Expr)> {
        let mut c = sig(p).into_iter();
        let name = self.ident(c.next().expect("grammar: field has a name"));
        Ok((
            name,
            self.expr(c.next().expect("grammar: field has a value"))?,
        ))
    }

    /// A call argument, `value` or `name = value`.
    pub(super) fn arg(&self, p: Pair<'_, Rule>) -> PResult<Arg> {
        let span = self.span(&p);
        let mut name = None;
        let mut value = None;
        for c in sig(p) {
            match c.as_rule() {
                Rule::ident => name = Some(self.ident(c)),
                _ => value = Some(self.expr(c)?),
            }
        }
        Ok(Arg {
            name,
            value: value.expect("grammar: argument has a value"),
            span,
        })
    }

    /// A comprehension's loop variable: a name or a (nested) tuple of names.
    fn pattern(&self, p: Pair<'_, Rule>) -> PResult<Pattern> {
        let span = self.span(&p);
        let c = sig(p.clone());
        match c.first() {
            Some(first) if c.len() == 1 && first.as_rule() == Rule::ident => {
                Ok(Pattern::Name(self.ident(first.clone())))
            }
            _ => self.nested(1, &p, || {
                let items = c
                    .into_iter()
                    .map(|x| self.pattern(x))
                    .collect::<PResult<_>>()?;
                Ok(Pattern::Tuple(items, span))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_expr;
    use super::super::testing::*;
    use crate::source::Span;
    use crate::syntax::ast::*;

    #[test]
    fn precedence() {
        assert_eq!(sx(&e("1 + 2 * 3")), "(+ 1 (* 2 3))");
        assert_eq!(sx(&e("(1 + 2) * 3")), "(* (+ 1 2) 3)");
        assert_eq!(sx(&e("a - b - c")), "(- (- a b) c)");
        assert_eq!(sx(&e("a ++ b ++ c")), "(++ (++ a b) c)");
        assert_eq!(sx(&e("a ++ b + c")), "(+ (++ a b) c)");
        assert_eq!(sx(&e("a / b * c")), "(* (/ a b) c)");
        assert_eq!(sx(&e("a or b and c")), "(or a (and b c))");
        assert_eq!(sx(&e("not a == b and c")), "(and (not (== a b)) c)");
        assert_eq!(sx(&e("not not a")), "(not (not a))");
        assert_eq!(sx(&e("-a.b[0] * 2")), "(* (neg ([] (. a b) 0)) 2)");
        assert_eq!(sx(&e("- - 1")), "(neg (neg 1))");
        assert_eq!(
            sx(&e("a + 1 >= b * 2 or x != y")),
            "(or (>= (+ a 1) (* b 2)) (!= x y))"
        );
        assert_eq!(sx(&e("xs[i + 1].name")), "(. ([] xs (+ i 1)) name)");
        // Only names and operator calls can be called.
        assert!(parse_expr(F, "f(x)(1)").is_err());
    }

    #[test]
    fn comprehension_with_in_range() {
        assert_eq!(
            sx(&e("[f(x) for x in range(3)]")),
            "(for x (range 3) (f x))"
        );
        assert_eq!(
            sx(&e("[x for x in xs if x > 1]")),
            "(for x xs x if (> x 1))"
        );
        assert_eq!(
            sx(&e("[a + b for (a, b) in zip(xs, ys)]")),
            "(for (a b) (zip xs ys) (+ a b))"
        );
        assert_eq!(sx(&e("[a for (a, (b, c)) in ps]")), "(for (a (b c)) ps a)");
        assert_eq!(
            sx(&e("[[y for y in x] for x in xss]")),
            "(for x xss (for y x y))"
        );
        let c = e("[t for (m, t) in zip(a, b)]");
        let ExprKind::Comprehension {
            pattern: Pattern::Tuple(ps, span),
            ..
        } = c.kind
        else {
            panic!()
        };
        assert_eq!(ps.len(), 2);
        assert_eq!(span, Span::new(F, 7, 13));
    }

    #[test]
    fn operator_calls() {
        assert_eq!(
            sx(&e("merge uncertainty(models, hessians, delta0=1e-12)")),
            "(merge.uncertainty models hessians delta0=1e-12)"
        );
        assert_eq!(
            sx(&e("cluster affinity(tasks, k=5)")),
            "(cluster.affinity tasks k=5)"
        );
        assert_eq!(sx(&e("load model(\"m\")")), "(load.model \"m\")");
        assert_eq!(sx(&e("len(xs)")), "(len xs)");
        assert_eq!(sx(&e("f()")), "(f)");
        // Named before positional parses (the checker rejects it).
        assert_eq!(sx(&e("f(k=1, x,)")), "(f k=1 x)");
        assert_eq!(sx(&e("f(a == b)")), "(f (== a b))");
        // The verb may be any non-reserved word; `in` is reserved.
        assert_eq!(sx(&e("foo bar(1)")), "(foo.bar 1)");
    }

    #[test]
    fn call_and_arg_spans() {
        let src = "let x = merge ties(ms, k = 5) + 1";
        let s = m(src);
        let StmtKind::Let { value, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(text(src, s[0].span), src);
        let ExprKind::Binary { lhs, .. } = &value.kind else {
            panic!()
        };
        assert_eq!(text(src, lhs.span), "merge ties(ms, k = 5)");
        let ExprKind::Call { callee, args } = &lhs.kind else {
            panic!()
        };
        assert_eq!(text(src, callee.span()), "merge ties");
        assert_eq!(callee.dotted(), "merge.ties");
        assert_eq!(text(src, args[0].span), "ms");
        assert_eq!(text(src, args[1].span), "k = 5");
        assert_eq!(text(src, args[1].name.as_ref().unwrap().span), "k");
        assert_eq!(text(src, args[1].value.span), "5");
    }
}
