//! The pest parser: `.exp` text → spanned [`ast`](super::ast) nodes, or one readable
//! [`Diagnostic`].
//!
//! The grammar lives in `grammar/smelt.pest`; this module is the only place that sees pest types
//! (`Pair`, `Rule`, pest errors). Conversion is a straightforward walk over pest's tree:
//! precedence levels are separate grammar rules and binary operators are folded to the left here.
//!
//! Spans are byte offsets. pest may leave skipped whitespace and comments at the end of a
//! non-atomic rule, so a node's span is computed from its first and last token
//! ([`tight`]); every non-atomic rule in the grammar ends on a named token for that reason.
//!
//! Errors: pest reports the furthest position it reached together with the rules it tried there.
//! [`syntax_error`] turns that into "expected `)`, found `x`"-style messages (rules renamed to
//! readable text, operators that could merely continue an expression dropped from the list) and
//! adds cheap hints for common mistakes (unterminated strings, reserved words used as names,
//! chained comparisons, unclosed brackets, dangling operators).
//!
//! Nesting is limited to [`MAX_DEPTH`] levels so that pathological input (`((((…` ten thousand
//! deep) gives a diagnostic instead of overflowing the stack here or in later recursive passes.

// `Diagnostic` is large, but it is the crate-wide error type and the signatures are fixed.
#![allow(clippy::result_large_err)]

use super::ast::*;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;
use std::cell::Cell;

#[derive(pest_derive::Parser)]
#[grammar = "grammar/smelt.pest"]
struct SmeltParser;

/// Diagnostic code of every parse error.
const CODE: &str = "smelt::parse::syntax";

/// Every reserved word; none of them can be used as a name.
const RESERVED: &[&str] = &[
    "let", "def", "use", "import", "config", "report", "as", "save", "to", "plot", "expect",
    "within", "for", "in", "if", "true", "false", "none", "and", "or", "not",
];

/// One REPL line: either statements or a single bare expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Stmts(Vec<Stmt>),
    Expr(Expr),
}

/// Parse a whole `.exp` file (statements only; a bare expression is a syntax error).
pub fn parse(file: FileId, src: &str) -> Result<Module, Diagnostic> {
    let root = run(Rule::file, file, src)?;
    let cx = Cx::new(file, src);
    let stmts = root
        .into_inner()
        .filter(|p| p.as_rule() == Rule::stmt)
        .map(|p| cx.stmt(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Module { stmts })
}

/// Parse exactly one expression (e.g. the value of `--set name=value`).
pub fn parse_expr(file: FileId, src: &str) -> Result<Expr, Diagnostic> {
    let root = run(Rule::expr_only, file, src)?;
    let cx = Cx::new(file, src);
    let e = root
        .into_inner()
        .find(|p| p.as_rule() == Rule::expr)
        .expect("grammar: expr_only has an expr");
    cx.expr(e)
}

/// Parse a REPL line: statements if it is one or more statements, or else a bare expression.
/// An empty (or comment-only) line is `Line::Stmts(vec![])`.
pub fn parse_line(file: FileId, src: &str) -> Result<Line, Diagnostic> {
    let root = run(Rule::repl_line, file, src)?;
    let cx = Cx::new(file, src);
    let mut stmts = Vec::new();
    for p in root.into_inner() {
        match p.as_rule() {
            Rule::stmt => stmts.push(cx.stmt(p)?),
            Rule::expr => return Ok(Line::Expr(cx.expr(p)?)),
            _ => {}
        }
    }
    Ok(Line::Stmts(stmts))
}

type PResult<T> = Result<T, Diagnostic>;

/// Run pest from an entry rule and return the single top pair.
fn run(rule: Rule, file: FileId, src: &str) -> PResult<Pair<'_, Rule>> {
    let mut pairs = SmeltParser::parse(rule, src).map_err(|e| syntax_error(file, src, e))?;
    Ok(pairs.next().expect("pest: an entry rule yields one pair"))
}

// ---------------------------------------------------------------------------------------------
// Tree → AST
// ---------------------------------------------------------------------------------------------

/// Rules that only mark syntax (punctuation and keywords); skipped by [`sig`].
fn is_token(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::lparen
            | Rule::rparen
            | Rule::call_open
            | Rule::lbracket
            | Rule::rbracket
            | Rule::index_open
            | Rule::lbrace
            | Rule::rbrace
            | Rule::comma
            | Rule::colon
            | Rule::semi
            | Rule::dot
            | Rule::lt
            | Rule::gt
            | Rule::assign
            | Rule::arg_assign
            | Rule::str_close
            | Rule::EOI
            | Rule::kw_let
            | Rule::kw_def
            | Rule::kw_use
            | Rule::kw_import
            | Rule::kw_config
            | Rule::kw_report
            | Rule::kw_as
            | Rule::kw_save
            | Rule::kw_to
            | Rule::kw_plot_to
            | Rule::kw_plot
            | Rule::kw_expect
            | Rule::kw_within
            | Rule::kw_for
            | Rule::kw_in
            | Rule::kw_if
    )
}

/// The children of `p` that carry meaning (no punctuation, no keywords).
fn sig(p: Pair<'_, Rule>) -> Vec<Pair<'_, Rule>> {
    p.into_inner().filter(|c| !is_token(c.as_rule())).collect()
}

/// The byte range of `p` without skipped trivia at either end: atomic rules (no children) and
/// compound-atomic ones (no implicit whitespace inside) use their own span, others the span
/// from their first to their last child.
fn tight(p: &Pair<'_, Rule>) -> (usize, usize) {
    /// Descend through first (or last) children to a token; iterative, as trees can be deep.
    fn edge(p: &Pair<'_, Rule>, last: bool) -> usize {
        let mut p = p.clone();
        loop {
            let span = p.as_span();
            let own = if last { span.end() } else { span.start() };
            if matches!(
                p.as_rule(),
                Rule::string | Rule::doc_block | Rule::op_callee
            ) {
                return own;
            }
            let mut inner = p.clone().into_inner();
            let next = if last { inner.last() } else { inner.next() };
            match next {
                Some(c) => p = c,
                None => return own,
            }
        }
    }
    (edge(p, false), edge(p, true))
}

/// Skip precedence levels that hold a single operand (`expr` → `or_expr` → … → `postfix` →
/// the primary), iteratively, so that each level of nesting costs few stack frames.
fn skip_levels(mut p: Pair<'_, Rule>) -> Pair<'_, Rule> {
    loop {
        let mut inner = p.clone().into_inner();
        let (Some(first), None) = (inner.next(), inner.next()) else {
            return p;
        };
        let single = matches!(
            p.as_rule(),
            Rule::expr
                | Rule::or_expr
                | Rule::and_expr
                | Rule::not_expr
                | Rule::cmp_expr
                | Rule::add_expr
                | Rule::mul_expr
                | Rule::unary
                | Rule::postfix
        );
        if !single {
            return p;
        }
        p = first;
    }
}

/// The next child of a rule whose shape the grammar guarantees.
fn take<'i>(c: &mut impl Iterator<Item = Pair<'i, Rule>>) -> Pair<'i, Rule> {
    c.next().expect("grammar: rule shape")
}

/// The deepest nesting of expressions (and of types and patterns) a program may use. Deeper
/// trees would overflow the stack here or in later recursive passes (checker, evaluator, drop).
const MAX_DEPTH: usize = 100;

struct Cx<'s> {
    file: FileId,
    src: &'s str,
    /// An upper bound on the depth, below its statement, of the node being converted.
    depth: Cell<usize>,
}

impl<'s> Cx<'s> {
    fn new(file: FileId, src: &'s str) -> Cx<'s> {
        Cx {
            file,
            src,
            depth: Cell::new(0),
        }
    }

    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let (lo, hi) = tight(p);
        Span::new(self.file, lo, hi)
    }

    fn ident(&self, p: Pair<'_, Rule>) -> Ident {
        debug_assert_eq!(p.as_rule(), Rule::ident);
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    /// Run `f` `levels` deeper; fail cleanly once the tree would be too deep.
    fn nested<T>(
        &self,
        levels: usize,
        p: &Pair<'_, Rule>,
        f: impl FnOnce() -> PResult<T>,
    ) -> PResult<T> {
        let depth = self.depth.get() + levels;
        if depth > MAX_DEPTH {
            let lo = p.as_span().start();
            let hi = lo + self.src[lo..].chars().next().map_or(0, char::len_utf8);
            return Err(self
                .err(lo, hi, "this is nested too deeply")
                .with_label(format!("more than {MAX_DEPTH} levels of nesting"))
                .with_help("split it into several `let` bindings"));
        }
        self.depth.set(depth);
        let r = f();
        self.depth.set(depth - levels);
        r
    }

    fn opt_expr(&self, p: Option<Pair<'_, Rule>>) -> PResult<Option<Expr>> {
        p.map(|e| self.expr(e)).transpose()
    }

    fn err(&self, lo: usize, hi: usize, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(CODE, msg, Span::new(self.file, lo, hi))
    }

    // ---- statements ---------------------------------------------------------------------

    fn stmt(&self, p: Pair<'_, Rule>) -> PResult<Stmt> {
        let s = p.into_inner().next().expect("grammar: stmt has one child");
        let span = self.span(&s);
        let rule = s.as_rule();
        if rule == Rule::def_stmt {
            return self.def(s);
        }
        let mut c = sig(s).into_iter();
        let kind = match rule {
            Rule::let_stmt => StmtKind::Let {
                name: self.ident(take(&mut c)),
                value: self.expr(take(&mut c))?,
            },
            Rule::use_stmt => StmtKind::Use {
                path: c.map(|i| self.ident(i)).collect(),
            },
            Rule::import_stmt => StmtKind::Import {
                path: self.expr(take(&mut c))?,
            },
            Rule::config_stmt => StmtKind::Config {
                entries: c.map(|f| self.field(f)).collect::<PResult<_>>()?,
            },
            Rule::report_stmt => StmtKind::Report {
                value: self.expr(take(&mut c))?,
                name: self.opt_expr(c.next())?,
            },
            Rule::save_stmt => StmtKind::Save {
                value: self.expr(take(&mut c))?,
                path: self.expr(take(&mut c))?,
            },
            Rule::plot_stmt => StmtKind::Plot {
                call: self.plot_call(take(&mut c))?,
                to: self.opt_expr(c.next())?,
            },
            Rule::expect_stmt => StmtKind::Expect {
                cond: self.expr(take(&mut c))?,
                within: self.opt_expr(c.next())?,
            },
            r => unreachable!("grammar: unexpected statement rule {r:?}"),
        };
        Ok(Stmt { kind, span })
    }

    /// `## doc` lines, `def NAME(PARAMS)`, then `= EXPR` or a block. The statement's span starts
    /// at `def` (doc comments excluded).
    fn def(&self, p: Pair<'_, Rule>) -> PResult<Stmt> {
        let (_, hi) = tight(&p);
        let mut lo = p.as_span().start();
        let (mut doc, mut name, mut params, mut body) = (None, None, Vec::new(), None);
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::doc_block => doc = self.doc(c),
                Rule::kw_def => lo = c.as_span().start(),
                Rule::ident => name = Some(self.ident(c)),
                Rule::param => params.push(self.param(c)?),
                Rule::expr => body = Some(self.expr(c)?),
                Rule::block => body = Some(self.nested(1, &c.clone(), || self.block(c))?),
                _ => {}
            }
        }
        let kind = StmtKind::Def {
            name: name.expect("grammar: def has a name"),
            params,
            body: body.expect("grammar: def has a body"),
            doc,
        };
        Ok(Stmt {
            kind,
            span: Span::new(self.file, lo, hi),
        })
    }

    /// Join `##` lines: drop `##` and one following space, trim line ends. A first line that
    /// does not start its source line (`let x = 1 ## note`) is a trailing comment, not doc.
    fn doc(&self, p: Pair<'_, Rule>) -> Option<String> {
        let start = p.as_span().start();
        let line_start = self.src[..start].rfind('\n').map_or(0, |i| i + 1);
        let skip_first = !self.src[line_start..start].trim().is_empty();
        let lines: Vec<String> = p
            .into_inner()
            .skip(usize::from(skip_first))
            .map(|l| {
                let t = &l.as_str()[2..];
                t.strip_prefix(' ').unwrap_or(t).trim_end().to_string()
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    fn param(&self, p: Pair<'_, Rule>) -> PResult<DefParam> {
        let mut c = sig(p).into_iter();
        let name = self.ident(c.next().expect("grammar: param has a name"));
        let (mut ty, mut default) = (None, None);
        for x in c {
            match x.as_rule() {
                Rule::type_expr => ty = Some(self.type_expr(x)?),
                _ => default = Some(self.expr(x)?),
            }
        }
        Ok(DefParam { name, ty, default })
    }

    fn type_expr(&self, p: Pair<'_, Rule>) -> PResult<TypeExpr> {
        let span = self.span(&p);
        self.nested(1, &p.clone(), || {
            let mut c = sig(p).into_iter();
            let name = self.ident(c.next().expect("grammar: type has a name"));
            let args = c.map(|a| self.type_expr(a)).collect::<PResult<_>>()?;
            Ok(TypeExpr { name, args, span })
        })
    }

    fn block(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        let mut lets = Vec::new();
        let mut result = None;
        for c in sig(p) {
            match c.as_rule() {
                Rule::block_let => {
                    let mut l = sig(c).into_iter();
                    let name = self.ident(l.next().expect("grammar: let has a name"));
                    lets.push((
                        name,
                        self.expr(l.next().expect("grammar: let has a value"))?,
                    ));
                }
                _ => result = Some(self.expr(c)?),
            }
        }
        let result = Box::new(result.expect("grammar: block has a result"));
        Ok(Expr {
            kind: ExprKind::Block { lets, result },
            span,
        })
    }

    /// `plot KIND(args)` as a call of `plot.KIND`.
    fn plot_call(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        let mut verb = None;
        let mut method = None;
        let mut args = Vec::new();
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::kw_plot => {
                    verb = Some(Ident {
                        name: "plot".into(),
                        span: self.span(&c),
                    })
                }
                Rule::ident => method = Some(self.ident(c)),
                Rule::arg => args.push(self.arg(c)?),
                _ => {}
            }
        }
        let callee = Callee::Op {
            verb: verb.expect("grammar: plot keyword"),
            method: method.expect("grammar: plot kind"),
        };
        Ok(Expr {
            kind: ExprKind::Call { callee, args },
            span,
        })
    }

    fn field(&self, p: Pair<'_, Rule>) -> PResult<(Ident, Expr)> {
        let mut c = sig(p).into_iter();
        let name = self.ident(c.next().expect("grammar: field has a name"));
        Ok((
            name,
            self.expr(c.next().expect("grammar: field has a value"))?,
        ))
    }

    fn arg(&self, p: Pair<'_, Rule>) -> PResult<Arg> {
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

    // ---- expressions --------------------------------------------------------------------

    /// Convert an expression rule, counting one level of nesting for each node with children
    /// (binary and postfix chains count themselves in [`Cx::binary`] and [`Cx::postfix`]).
    fn expr(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
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
            Rule::not_expr | Rule::unary => {
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
                return Ok(Expr { kind, span });
            }
            _ => {}
        }
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::float => {
                let text = p.as_str().replace('_', "");
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => ExprKind::Float(v),
                    _ => {
                        return Err(self
                            .err(
                                span.lo as usize,
                                span.hi as usize,
                                "float literal out of range",
                            )
                            .with_label("too large for a 64-bit float"))
                    }
                }
            }
            Rule::int => match p.as_str().replace('_', "").parse::<i64>() {
                Ok(v) => ExprKind::Int(v),
                Err(_) => {
                    return Err(self
                        .err(
                            span.lo as usize,
                            span.hi as usize,
                            "integer literal too large",
                        )
                        .with_label("does not fit in a 64-bit integer")
                        .with_help("integers are 64-bit; write a float such as `1e20` instead"))
                }
            },
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
            Rule::list => {
                let mut items = Vec::new();
                let mut comp = None;
                for c in sig(p) {
                    match c.as_rule() {
                        Rule::comp_tail => comp = Some(c),
                        _ => items.push(self.expr(c)?),
                    }
                }
                match comp {
                    None => ExprKind::List(items),
                    Some(tail) => {
                        let body = Box::new(items.pop().expect("grammar: comprehension body"));
                        let mut t = sig(tail).into_iter();
                        let pattern =
                            self.pattern(t.next().expect("grammar: comprehension pattern"))?;
                        let iter = Box::new(
                            self.expr(t.next().expect("grammar: comprehension iterable"))?,
                        );
                        let cond = t.next().map(|c| self.expr(c).map(Box::new)).transpose()?;
                        ExprKind::Comprehension {
                            body,
                            pattern,
                            iter,
                            cond,
                        }
                    }
                }
            }
            Rule::record => ExprKind::Record(
                sig(p)
                    .into_iter()
                    .map(|f| self.field(f))
                    .collect::<PResult<_>>()?,
            ),
            Rule::op_call | Rule::call => {
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
                ExprKind::Call {
                    callee: callee.expect("grammar: call has a callee"),
                    args,
                }
            }
            r => unreachable!("grammar: unexpected expression rule {r:?}"),
        };
        Ok(Expr { kind, span })
    }

    /// A left fold over `operand (op operand)*`.
    fn binary(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let ops = p.clone().into_inner().count() / 2;
        if ops == 0 {
            return self.expr(
                p.into_inner()
                    .next()
                    .expect("grammar: binary has an operand"),
            );
        }
        self.nested(ops, &p.clone(), || self.binary_chain(p))
    }

    fn binary_chain(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let mut c = p.into_inner();
        let mut lhs = self.expr(c.next().expect("grammar: binary has an operand"))?;
        while let Some(op) = c.next() {
            let rhs = self.expr(c.next().expect("grammar: operator has a right operand"))?;
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
            lhs = Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            };
        }
        Ok(lhs)
    }

    /// `primary (.field | [index])*`, folded to the left.
    fn postfix(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let ops = p.clone().into_inner().count() - 1;
        if ops == 0 {
            return self.expr(
                p.into_inner()
                    .next()
                    .expect("grammar: postfix has a primary"),
            );
        }
        self.nested(ops, &p.clone(), || self.postfix_chain(p))
    }

    fn postfix_chain(&self, p: Pair<'_, Rule>) -> PResult<Expr> {
        let mut c = p.into_inner();
        let mut base = self.expr(c.next().expect("grammar: postfix has a primary"))?;
        for op in c {
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
            base = Expr { kind, span };
        }
        Ok(base)
    }

    /// The value of a string literal; escapes `\" \\ \n \t`.
    fn string(&self, p: Pair<'_, Rule>) -> PResult<String> {
        let inner = p
            .into_inner()
            .find(|c| c.as_rule() == Rule::str_inner)
            .expect("grammar: string body");
        let base = inner.as_span().start();
        let text = inner.as_str();
        let mut out = String::with_capacity(text.len());
        let mut chars = text.char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch != '\\' {
                out.push(ch);
                continue;
            }
            let (j, esc) = chars
                .next()
                .expect("grammar: a backslash is followed by a character");
            out.push(match esc {
                '"' => '"',
                '\\' => '\\',
                'n' => '\n',
                't' => '\t',
                _ => {
                    return Err(self
                        .err(
                            base + i,
                            base + j + esc.len_utf8(),
                            format!("unknown escape `\\{esc}` in string"),
                        )
                        .with_label("unknown escape")
                        .with_help("supported escapes are `\\\"`, `\\\\`, `\\n` and `\\t`"))
                }
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// How an expected rule reads in "expected …".
fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of input",
        Rule::file | Rule::repl_line | Rule::stmt => "a statement",
        Rule::let_stmt | Rule::block_let | Rule::kw_let => "`let`",
        Rule::def_stmt | Rule::kw_def | Rule::doc_block | Rule::doc_line => "`def`",
        Rule::use_stmt | Rule::kw_use => "`use`",
        Rule::import_stmt | Rule::kw_import => "`import`",
        Rule::config_stmt | Rule::kw_config => "`config`",
        Rule::report_stmt | Rule::kw_report => "`report`",
        Rule::save_stmt | Rule::kw_save => "`save`",
        Rule::plot_stmt | Rule::plot_call | Rule::kw_plot => "`plot`",
        Rule::expect_stmt | Rule::kw_expect => "`expect`",
        Rule::kw_as => "`as`",
        Rule::kw_to | Rule::kw_plot_to => "`to`",
        Rule::kw_within => "`within`",
        Rule::kw_for | Rule::comp_tail => "`for`",
        Rule::kw_in => "`in`",
        Rule::kw_if => "`if`",
        Rule::ident => "a name",
        Rule::param => "a parameter",
        Rule::type_expr => "a type",
        Rule::pattern => "a loop variable",
        Rule::field_init => "a field `name: value`",
        Rule::arg => "an argument",
        Rule::string | Rule::str_inner => "a string",
        Rule::str_close => "`\"`",
        Rule::block => "`{`",
        Rule::expr_only
        | Rule::expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::add_expr
        | Rule::mul_expr
        | Rule::unary
        | Rule::postfix
        | Rule::float
        | Rule::int
        | Rule::bool_lit
        | Rule::none_lit
        | Rule::list
        | Rule::record
        | Rule::paren
        | Rule::op_call
        | Rule::op_callee
        | Rule::call => "an expression",
        Rule::op_or => "`or`",
        Rule::op_and => "`and`",
        Rule::op_not => "`not`",
        Rule::cmp_op => "a comparison",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::neg => "`-`",
        Rule::field_access | Rule::dot => "`.`",
        Rule::index | Rule::index_open | Rule::lbracket => "`[`",
        Rule::lparen | Rule::call_open => "`(`",
        Rule::rparen => "`)`",
        Rule::rbracket => "`]`",
        Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::comma => "`,`",
        Rule::colon => "`:`",
        Rule::semi => "`;`",
        Rule::lt => "`<`",
        Rule::gt => "`>`",
        Rule::assign | Rule::arg_assign => "`=`",
        // Silent rules never appear in errors.
        Rule::WHITESPACE
        | Rule::COMMENT
        | Rule::hspace
        | Rule::doc_sep
        | Rule::doc_before_def
        | Rule::ident_char
        | Rule::ident_raw
        | Rule::op_head
        | Rule::keyword
        | Rule::primary
        | Rule::digits
        | Rule::exponent
        | Rule::params
        | Rule::args => "something else",
    }
}

/// Rules that could only have continued something already complete (an operator after an
/// operand, an optional trailing clause). They are left out of "expected …" when anything
/// else was expected at the same place.
fn is_continuation(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::add_op
            | Rule::mul_op
            | Rule::cmp_op
            | Rule::op_or
            | Rule::op_and
            | Rule::dot
            | Rule::field_access
            | Rule::index
            | Rule::index_open
            | Rule::call_open
            | Rule::arg_assign
            | Rule::kw_as
            | Rule::kw_within
            | Rule::kw_plot_to
            | Rule::kw_if
            | Rule::kw_for
            | Rule::comp_tail
            | Rule::semi
    )
}

/// `a, b, or c`.
fn join_or(items: &[&str]) -> String {
    match items {
        [] => "something else".into(),
        [a] => (*a).into(),
        [a, b] => format!("{a} or {b}"),
        [rest @ .., last] => format!("{}, or {last}", rest.join(", ")),
    }
}

/// Whether `s` is one identifier (and not a reserved word).
fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&s)
}

/// The byte range of the token starting at `pos` (a word, a number, a one- or two-character
/// operator), or `None` at the end of the text.
fn token_at(src: &str, pos: usize) -> Option<(usize, usize)> {
    let rest = src.get(pos..)?;
    let first = rest.chars().next()?;
    let len = if first.is_ascii_alphanumeric() || first == '_' {
        rest.find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '_' || (first.is_ascii_digit() && c == '.'))
        })
        .unwrap_or(rest.len())
    } else if ["==", "!=", "<=", ">=", "++"]
        .iter()
        .any(|op| rest.starts_with(op))
    {
        2
    } else {
        first.len_utf8()
    };
    Some((pos, pos + len))
}

/// The text of the last token before `pos` (skipping whitespace; comments are not skipped).
fn token_before(src: &str, pos: usize) -> &str {
    let before = src[..pos].trim_end();
    let end = before.len();
    let bytes = before.as_bytes();
    let Some(&last) = bytes.last() else { return "" };
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut start = end - 1;
    if is_word(last) {
        while start > 0 && is_word(bytes[start - 1]) {
            start -= 1;
        }
    } else if start > 0 && ["==", "!=", "<=", ">=", "++"].contains(&&before[start - 1..end]) {
        start -= 1;
    } else if !last.is_ascii() {
        return "";
    }
    &before[start..end]
}

/// The innermost bracket opened before `pos` and not yet closed (strings and comments skipped).
fn unclosed_bracket(src: &str, pos: usize) -> Option<(usize, char)> {
    let mut stack = Vec::new();
    let mut chars = src[..pos].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '(' | '[' | '{' => stack.push((i, c)),
            ')' | ']' | '}' => {
                stack.pop();
            }
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    stack.pop()
}

/// The start of the string literal that is still open at `pos` (which is on the same line).
fn open_string_start(src: &str, pos: usize) -> Option<usize> {
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    let mut open = None;
    let mut chars = src[line_start..pos].char_indices();
    while let Some((i, c)) = chars.next() {
        match (open, c) {
            (None, '#') => return None,
            (None, '"') => open = Some(line_start + i),
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(_), '"') => open = None,
            _ => {}
        }
    }
    open
}

/// Turn pest's error into a readable diagnostic.
fn syntax_error(file: FileId, src: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let at = |lo: usize, hi: usize| Span::new(file, lo, hi);
    let pos = match e.location {
        InputLocation::Pos(p) => p.min(src.len()),
        InputLocation::Span((lo, hi)) => {
            let msg = e.variant.message().into_owned();
            return Diagnostic::error(CODE, msg, at(lo.min(src.len()), hi.min(src.len())));
        }
    };
    let (positives, negatives) = match &e.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => (positives.clone(), negatives.clone()),
        // pest's own guards ("stack limit reached", "call limit reached").
        ErrorVariant::CustomError { message } => {
            return Diagnostic::error(
                CODE,
                "this is nested too deeply to parse",
                point(file, src, pos),
            )
            .with_label(format!("parser gave up here ({message})"))
            .with_help("split it into several `let` bindings");
        }
    };

    let token = token_at(src, pos);
    let token_text = token.map_or("", |(lo, hi)| &src[lo..hi]);
    let found = match token_text {
        "" => "end of input".to_string(),
        "\"" => "a string".to_string(),
        t => format!("`{t}`"),
    };
    let is_reserved = RESERVED.contains(&token_text);
    let has = |r: Rule| positives.contains(&r);

    // An unterminated string: pest expected the closing quote at the end of the line.
    if has(Rule::str_close) {
        let lo = open_string_start(src, pos).unwrap_or(pos);
        return Diagnostic::error(CODE, "unterminated string", at(lo, pos))
            .with_label("this string is never closed")
            .with_help("add a closing `\"`; a string must end on the line it starts (write `\\n` for a newline)");
    }

    // A reserved word where a name was expected.
    if (has(Rule::ident) || has(Rule::pattern)) && is_reserved {
        let (lo, hi) = token.expect("a reserved word is a token");
        return Diagnostic::error(
            CODE,
            format!("`{token_text}` is a reserved word"),
            at(lo, hi),
        )
        .with_label("a reserved word cannot be used as a name")
        .with_help(format!("pick another name, e.g. `{token_text}_`"));
    }

    // Chained comparisons: `a < b < c`.
    if matches!(token_text, "==" | "!=" | "<" | "<=" | ">" | ">=")
        && has(Rule::add_op)
        && !has(Rule::cmp_op)
    {
        let (lo, hi) = token.expect("an operator is a token");
        return Diagnostic::error(CODE, "comparison operators cannot be chained", at(lo, hi))
            .with_label("a second comparison")
            .with_help("combine two comparisons with `and`, e.g. `a < b and b < c`");
    }

    // What to list as expected: the most specific rules.
    let mut main: Vec<Rule> = positives
        .iter()
        .copied()
        .filter(|r| !is_continuation(*r) && *r != Rule::EOI)
        .collect();
    if main.is_empty() {
        main = if has(Rule::EOI) {
            vec![Rule::EOI]
        } else {
            positives.clone()
        };
    }
    // Closing brackets read best last: "expected `,` or `)`".
    main.sort_by_key(|r| matches!(r, Rule::rparen | Rule::rbracket | Rule::rbrace | Rule::gt));
    let mut names: Vec<&str> = Vec::new();
    for r in &main {
        let d = describe(*r);
        if !names.contains(&d) {
            names.push(d);
        }
    }
    let expected = join_or(&names);

    let (message, label) = if names == ["end of input"] {
        (
            format!("unexpected {found}"),
            "nothing more was expected here".to_string(),
        )
    } else if names.is_empty() && !negatives.is_empty() {
        (
            format!("unexpected {found}"),
            "not allowed here".to_string(),
        )
    } else {
        (
            format!("expected {expected}, found {found}"),
            format!("expected {expected}"),
        )
    };
    let mut d = Diagnostic::error(CODE, message, point(file, src, pos)).with_label(label);

    let expects = |s: &str| names.contains(&s);
    let prev = token_before(src, pos);
    let statement_kw = [
        "let", "def", "use", "import", "config", "report", "save", "plot", "expect",
    ];
    let help = if token_text == "=" && expects("`:`") {
        Some("record and config fields are written `name: value`".to_string())
    } else if token_text == "=" && is_name(src[..pos].trim()) {
        // A REPL line `x = 1`.
        Some(format!(
            "to define a name, write `let {} = …`",
            src[..pos].trim()
        ))
    } else if token_text == "=" && has(Rule::add_op) {
        Some("to compare two values use `==`".to_string())
    } else if names == ["`=`"] {
        Some("a binding is written `let name = value`".to_string())
    } else if expects("`=`") && expects("`{`") {
        Some("a def body is `= expression` or a `{ … }` block".to_string())
    } else if expects("`let`") && token_text == "}" {
        Some("a `{ … }` body must end with an expression: its value".to_string())
    } else if expects("an expression")
        && matches!(
            prev,
            "+" | "-"
                | "*"
                | "/"
                | "++"
                | "=="
                | "!="
                | "<"
                | "<="
                | ">"
                | ">="
                | "and"
                | "or"
                | "not"
        )
    {
        Some(format!("`{prev}` needs an expression on its right"))
    } else if is_reserved && statement_kw.contains(&token_text) && !expects("a statement") {
        Some(format!(
            "`{token_text}` starts a new statement; is something missing before it?"
        ))
    } else if is_reserved && expects("an expression") {
        Some(format!(
            "`{token_text}` is a reserved word and cannot be used as a name"
        ))
    } else if expects("a statement") && token.is_some() {
        let after = token.map_or("", |(_, hi)| src[hi..].trim_start());
        if token_text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && after.starts_with('=')
            && !after.starts_with("==")
        {
            Some(format!("to define a name, write `let {token_text} = …`"))
        } else {
            Some(
                "a file is a sequence of statements: `let`, `def`, `use`, `import`, `config`, `report`, \
                 `save`, `plot` or `expect` (to show a value, write `report …`)"
                    .to_string(),
            )
        }
    } else if expects("`,`")
        && token.is_some()
        && !is_reserved
        && !matches!(token_text, ")" | "]" | "}")
    {
        Some("separate items with `,`".to_string())
    } else {
        None
    };
    if let Some(h) = help {
        d = d.with_help(h);
    }

    // Point at the bracket that a missing closer belongs to; when the next statement (or the
    // end of the file) came first, the missing closer is the likely mistake.
    let closers = [
        (Rule::rparen, '(', ')'),
        (Rule::rbracket, '[', ']'),
        (Rule::rbrace, '{', '}'),
    ];
    if let Some((open_at, open)) = unclosed_bracket(src, pos) {
        if let Some((_, _, close)) = closers
            .iter()
            .find(|(r, o, _)| *o == open && main.contains(r))
        {
            d = d.with_secondary(at(open_at, open_at + 1), format!("unclosed `{open}`"));
            if token.is_none() || statement_kw.contains(&token_text) {
                d = d.with_help(format!("add the missing `{close}`"));
            }
        }
    }
    d
}

/// A one-character span at `pos`, or an empty one at a line break or at the end of the text
/// (placed right after the last non-blank character, so that it shows next to the code).
fn point(file: FileId, src: &str, pos: usize) -> Span {
    if src[pos..].trim().is_empty() {
        let end = src.trim_end().len().min(pos);
        return Span::new(file, end, end);
    }
    let len = match src[pos..].chars().next() {
        None | Some('\n') | Some('\r') => 0,
        Some(c) => c.len_utf8(),
    };
    Span::new(file, pos, pos + len)
}
