//! Statements: `let`, `def`, `use`, `import`, `config`, `report`, `save`, `plot`, `expect`.
//!
//! `def` carries the most structure (doc comments, parameters with types and defaults, an
//! `= EXPR` or `{ … }` body), so its parts are converted here too: [`Cx::doc`],
//! [`Cx::param`], [`Cx::type_expr`] and [`Cx::block`].

use super::tree::{sig, take, tight, Cx};
use super::{PResult, Rule};
use crate::source::Span;
use crate::syntax::ast::*;
use pest::iterators::Pair;

impl Cx<'_> {
    pub(super) fn stmt(&self, p: Pair<'_, Rule>) -> PResult<Stmt> {
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
        let (mut doc, mut name, mut params, mut body) = (None, None::<Ident>, Vec::new(), None);
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::doc_block => doc = self.doc(c),
                Rule::kw_def => lo = c.as_span().start(),
                // `def VERB METHOD(…)` names the def `VERB.METHOD`.
                Rule::ident => {
                    let m = self.ident(c);
                    name = Some(match name.take() {
                        None => m,
                        Some(v) => Ident {
                            name: format!("{}.{}", v.name, m.name),
                            span: v.span.to(m.span),
                        },
                    });
                }
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

    /// A `{ let …; … result }` body.
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::syntax::ast::*;

    #[test]
    fn doc_comments_attach_to_def() {
        let src = "# plain\n## Leave-one-out.\n##   indented\n##\ndef f(x) = x\n## stray\n\ndef g() = 1\n";
        let s = m(src);
        let StmtKind::Def { doc, name, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(name.name, "f");
        assert_eq!(doc.as_deref(), Some("Leave-one-out.\n  indented\n"));
        assert_eq!(text(src, s[0].span), "def f(x) = x");
        let StmtKind::Def { doc, .. } = &s[1].kind else {
            panic!()
        };
        assert_eq!(doc, &None);
        // `##` elsewhere is a comment; `##` before something else than `def` too.
        let s = m("## top\nlet a = 1 ## trailing\nlet b = 2\n## not doc\nlet c = 3");
        assert_eq!(s.len(), 3);
        // A trailing `##` comment on the line before a `def` is not its doc.
        let s = m("let a = 1 ## trailing\ndef f() = 1");
        let StmtKind::Def { doc, .. } = &s[1].kind else {
            panic!()
        };
        assert_eq!(doc, &None);
        let s = m("let a = 1 ## trailing\n## real\ndef f() = 1");
        let StmtKind::Def { doc, .. } = &s[1].kind else {
            panic!()
        };
        assert_eq!(doc.as_deref(), Some("real"));
    }

    #[test]
    fn def_forms() {
        let src = "def f(a, b: Int, c = 1, d: List<Model> = [],) { let n = 1; let m = 2\n n + m }";
        let s = m(src);
        let StmtKind::Def { params, body, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(params.len(), 4);
        assert_eq!(params[1].ty.as_ref().unwrap().name.name, "Int");
        let ty = params[3].ty.as_ref().unwrap();
        assert_eq!(text(src, ty.span), "List<Model>");
        assert_eq!(ty.args[0].name.name, "Model");
        assert!(params[2].ty.is_none() && params[2].default.is_some());
        assert_eq!(sx(body), "{let n 1; let m 2; (+ n m)}");
        assert_eq!(text(src, body.span), "{ let n = 1; let m = 2\n n + m }");
        // The result of a block can start on the next line with a `(` or `[`: in `let n = xs\n[…]`
        // a list result is taken as an index only if it parses as one.
        let s = m("def g(xs) {\n let n = len(xs)\n [x for x in xs if n > 1]\n}");
        let StmtKind::Def { body, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(sx(body), "{let n (len xs); (for x xs x if (> n 1))}");
        // A plain call on the next line is not an operator call.
        let s = m("def h(xs) {\n let n = xs\n len(n)\n}");
        let StmtKind::Def { body, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(sx(body), "{let n xs; (len n)}");
        let s = m("def k(t: Map<Str, List<Int>>) = {a: 1}");
        let StmtKind::Def { params, body, .. } = &s[0].kind else {
            panic!()
        };
        assert_eq!(params[0].ty.as_ref().unwrap().args.len(), 2);
        assert_eq!(sx(body), "{a:1}");
    }

    #[test]
    fn statements() {
        let s = m("use std.merge\nimport \"lib.exp\"\nconfig { seed: 42, device: auto, }\nreport x\nreport y as \"n\"\n\
                   save m to \"out\"\nplot heatmap(ws) to \"w.svg\"\nplot curve(a)\nexpect a >= b within 0.01\nexpect ok");
        assert_eq!(s.len(), 10);
        let StmtKind::Use { path } = &s[0].kind else {
            panic!()
        };
        assert_eq!(
            path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["std", "merge"]
        );
        let StmtKind::Config { entries } = &s[2].kind else {
            panic!()
        };
        assert_eq!(entries.len(), 2);
        assert!(matches!(entries[1].1.kind, ExprKind::Name(_)));
        let StmtKind::Plot { call, to } = &s[6].kind else {
            panic!()
        };
        assert_eq!(sx(call), "(plot.heatmap ws)");
        assert!(to.is_some());
        let StmtKind::Plot { to, .. } = &s[7].kind else {
            panic!()
        };
        assert!(to.is_none());
    }
}
