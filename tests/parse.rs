//! Data-driven parser tests.
//!
//! * `tests/data/parse/*.exp` must parse; the snapshot is an indented tree of the AST in which
//!   every node shows its kind, its byte span and the source text the span covers, so that
//!   spans can be reviewed by eye. The test also checks that every child span lies inside its
//!   parent's span.
//! * `tests/data/parse_err/*.exp` must fail; the snapshot is the rendered diagnostic.
//!
//! Update snapshots with `INSTA_UPDATE=always cargo test --release --test parse`.

use smelt::diag::render;
use smelt::source::{FileId, SourceMap, Span};
use smelt::syntax::ast::*;
use smelt::syntax::parse;
use std::fmt::Write as _;
use std::path::Path;

/// The file's name only (no directories), so snapshots do not depend on the checkout path.
fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn parse_ok() {
    insta::glob!("data/parse/*.exp", |path| {
        let src = read(path);
        let mut sources = SourceMap::new();
        let file = sources.add(file_name(path), src.as_str());
        let module = match parse(file, &src) {
            Ok(m) => m,
            Err(d) => panic!(
                "{} should parse:\n{}",
                path.display(),
                render(&d, &sources, false, 100)
            ),
        };
        insta::assert_snapshot!(Tree::render(&src, &module));
    });
}

#[test]
fn parse_err() {
    insta::glob!("data/parse_err/*.exp", |path| {
        let src = read(path);
        let mut sources = SourceMap::new();
        let file = sources.add(file_name(path), src.as_str());
        let diag = match parse(file, &src) {
            Ok(m) => panic!("{} should not parse, got {m:#?}", path.display()),
            Err(d) => d,
        };
        assert_eq!(diag.code, "smelt::parse::syntax");
        let span = diag.span.expect("a parse error has a span");
        assert_eq!(span.file, file);
        assert!(
            span.lo <= span.hi && span.hi as usize <= src.len(),
            "span {span:?} out of range"
        );
        insta::assert_snapshot!(render(&diag, &sources, false, 80));
    });
}

/// Renders an AST as an indented tree: `role: kind detail @lo..hi `source text``.
struct Tree<'a> {
    src: &'a str,
    out: String,
    /// Spans of the enclosing nodes (innermost last), to check nesting.
    stack: Vec<Span>,
}

impl<'a> Tree<'a> {
    fn render(src: &'a str, module: &Module) -> String {
        let mut t = Tree {
            src,
            out: String::new(),
            stack: Vec::new(),
        };
        for s in &module.stmts {
            t.stmt(s);
        }
        if module.stmts.is_empty() {
            t.out.push_str("(no statements)\n");
        }
        t.out
    }

    /// The source text of a span, on one line, shortened when long.
    fn snippet(&self, span: Span) -> String {
        assert_eq!(span.file, FileId(0));
        let text = self
            .src
            .get(span.lo as usize..span.hi as usize)
            .expect("span inside the file");
        let one_line = text.replace('\n', "⏎").replace('\t', "⇥");
        let chars: Vec<char> = one_line.chars().collect();
        if chars.len() <= 64 {
            one_line
        } else {
            let head: String = chars[..32].iter().collect();
            let tail: String = chars[chars.len() - 24..].iter().collect();
            format!("{head} … {tail}")
        }
    }

    /// Write one node line and run `children` one level deeper.
    fn node(&mut self, role: &str, what: &str, span: Span, children: impl FnOnce(&mut Self)) {
        if let Some(parent) = self.stack.last() {
            assert!(
                parent.lo <= span.lo && span.hi <= parent.hi,
                "{what} {span:?} is not inside its parent {parent:?}"
            );
        }
        let indent = "  ".repeat(self.stack.len());
        let role = if role.is_empty() {
            String::new()
        } else {
            format!("{role}: ")
        };
        let snippet = self.snippet(span);
        writeln!(
            self.out,
            "{indent}{role}{what} @{}..{} `{snippet}`",
            span.lo, span.hi
        )
        .unwrap();
        self.stack.push(span);
        children(self);
        self.stack.pop();
    }

    fn ident(&mut self, role: &str, i: &Ident) {
        self.node(role, &format!("ident {}", i.name), i.span, |_| {});
    }

    fn stmt(&mut self, s: &Stmt) {
        match &s.kind {
            StmtKind::Let { name, value } => self.node("", "let", s.span, |t| {
                t.ident("name", name);
                t.expr("value", value);
            }),
            StmtKind::Def {
                name,
                params,
                body,
                doc,
            } => self.node("", "def", s.span, |t| {
                t.ident("name", name);
                if let Some(doc) = doc {
                    let indent = "  ".repeat(t.stack.len());
                    writeln!(t.out, "{indent}doc: {doc:?}").unwrap();
                }
                for p in params {
                    let span = p
                        .name
                        .span
                        .to(p.ty.as_ref().map_or(p.name.span, |ty| ty.span));
                    let span = span.to(p.default.as_ref().map_or(span, |d| d.span));
                    t.node("param", &p.name.name, span, |t| {
                        t.ident("name", &p.name);
                        if let Some(ty) = &p.ty {
                            t.ty("type", ty);
                        }
                        if let Some(d) = &p.default {
                            t.expr("default", d);
                        }
                    });
                }
                t.expr("body", body);
            }),
            StmtKind::Use { path } => {
                let dotted = path
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                self.node("", &format!("use {dotted}"), s.span, |t| {
                    for i in path {
                        t.ident("", i);
                    }
                })
            }
            StmtKind::Import { path } => self.node("", "import", s.span, |t| t.expr("path", path)),
            StmtKind::Config { entries } => self.node("", "config", s.span, |t| {
                for (k, v) in entries {
                    t.ident("key", k);
                    t.expr("value", v);
                }
            }),
            StmtKind::Report { value, name } => self.node("", "report", s.span, |t| {
                t.expr("value", value);
                if let Some(n) = name {
                    t.expr("as", n);
                }
            }),
            StmtKind::Save { value, path } => self.node("", "save", s.span, |t| {
                t.expr("value", value);
                t.expr("to", path);
            }),
            StmtKind::Plot { call, to } => self.node("", "plot", s.span, |t| {
                t.expr("call", call);
                if let Some(to) = to {
                    t.expr("to", to);
                }
            }),
            StmtKind::Expect { cond, within } => self.node("", "expect", s.span, |t| {
                t.expr("cond", cond);
                if let Some(w) = within {
                    t.expr("within", w);
                }
            }),
            StmtKind::Expr(e) => self.node("", "expr-stmt", s.span, |t| t.expr("", e)),
        }
    }

    fn ty(&mut self, role: &str, ty: &TypeExpr) {
        self.node(role, &format!("type {}", ty.name.name), ty.span, |t| {
            t.ident("name", &ty.name);
            for a in &ty.args {
                t.ty("arg", a);
            }
        });
    }

    fn pattern(&mut self, role: &str, p: &Pattern) {
        match p {
            Pattern::Name(i) => self.ident(role, i),
            Pattern::Tuple(ps, span) => self.node(role, "tuple", *span, |t| {
                for p in ps {
                    t.pattern("", p);
                }
            }),
        }
    }

    fn expr(&mut self, role: &str, e: &Expr) {
        match &e.kind {
            ExprKind::Int(v) => self.node(role, &format!("int {v}"), e.span, |_| {}),
            ExprKind::Float(v) => self.node(role, &format!("float {v:?}"), e.span, |_| {}),
            ExprKind::Bool(v) => self.node(role, &format!("bool {v}"), e.span, |_| {}),
            ExprKind::Str(v) => self.node(role, &format!("str {v:?}"), e.span, |_| {}),
            ExprKind::None => self.node(role, "none", e.span, |_| {}),
            ExprKind::Name(i) => {
                assert_eq!(i.span, e.span);
                self.node(role, &format!("name {}", i.name), e.span, |_| {})
            }
            ExprKind::List(xs) => self.node(role, "list", e.span, |t| {
                for x in xs {
                    t.expr("", x);
                }
            }),
            ExprKind::Record(fields) => self.node(role, "record", e.span, |t| {
                for (k, v) in fields {
                    t.ident("key", k);
                    t.expr("value", v);
                }
            }),
            ExprKind::Comprehension {
                body,
                pattern,
                iter,
                cond,
            } => self.node(role, "comprehension", e.span, |t| {
                t.expr("body", body);
                t.pattern("for", pattern);
                t.expr("in", iter);
                if let Some(c) = cond {
                    t.expr("if", c);
                }
            }),
            ExprKind::Call { callee, args } => {
                self.node(role, &format!("call {}", callee.dotted()), e.span, |t| {
                    match callee {
                        Callee::Op { verb, method } => {
                            t.ident("verb", verb);
                            t.ident("method", method);
                        }
                        Callee::Name(n) => t.ident("callee", n),
                    }
                    for a in args {
                        let what = a
                            .name
                            .as_ref()
                            .map_or("arg".to_string(), |n| format!("arg {}=", n.name));
                        t.node("", &what, a.span, |t| {
                            if let Some(n) = &a.name {
                                t.ident("name", n);
                            }
                            t.expr("value", &a.value);
                        });
                    }
                })
            }
            ExprKind::Field { base, field } => {
                self.node(role, &format!("field .{}", field.name), e.span, |t| {
                    t.expr("base", base);
                    t.ident("field", field);
                })
            }
            ExprKind::Index { base, index } => self.node(role, "index", e.span, |t| {
                t.expr("base", base);
                t.expr("index", index);
            }),
            ExprKind::Binary { op, lhs, rhs } => {
                self.node(role, &format!("binary {}", op.symbol()), e.span, |t| {
                    t.expr("lhs", lhs);
                    t.expr("rhs", rhs);
                })
            }
            ExprKind::Unary { op, operand } => {
                let op = match op {
                    UnOp::Neg => "-",
                    UnOp::Not => "not",
                };
                self.node(role, &format!("unary {op}"), e.span, |t| {
                    t.expr("operand", operand)
                })
            }
            ExprKind::Block { lets, result } => self.node(role, "block", e.span, |t| {
                for (name, value) in lets {
                    t.ident("let", name);
                    t.expr("value", value);
                }
                t.expr("result", result);
            }),
        }
    }
}
