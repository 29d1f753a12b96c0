//! The untyped, spanned syntax tree of a `.exp` file.
//!
//! Produced once from pest's parse tree by `syntax::parser`; nothing outside `syntax` ever sees
//! pest types. Every node carries a [`Span`] so later stages can point at the exact source text.

use crate::source::Span;

/// A whole `.exp` file (or a REPL line, or a stdlib module).
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    pub stmts: Vec<Stmt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StmtKind {
    /// `let NAME = EXPR`
    Let { name: Ident, value: Expr },
    /// `## doc…` lines then `def NAME(PARAMS) = EXPR` or `def NAME(PARAMS) { let…; EXPR }`
    /// (a block body is an [`ExprKind::Block`]).
    Def {
        name: Ident,
        params: Vec<DefParam>,
        body: Expr,
        doc: Option<String>,
    },
    /// `use std.merge` → `path = ["std", "merge"]`
    Use { path: Vec<Ident> },
    /// `import "other.exp"`
    Import { path: Expr },
    /// `config { seed: 42, device: auto }` — a bare word value is parsed as [`ExprKind::Name`].
    Config { entries: Vec<(Ident, Expr)> },
    /// `report EXPR [as "name"]`
    Report { value: Expr, name: Option<Expr> },
    /// `save EXPR to "path"`
    Save { value: Expr, path: Expr },
    /// `plot KIND(args) [to "file.svg"]`; `call` is an [`ExprKind::Call`] with
    /// `Callee::Op { verb: "plot", method: KIND }`.
    Plot { call: Expr, to: Option<Expr> },
    /// `expect EXPR [within TOL]`
    Expect { cond: Expr, within: Option<Expr> },
    /// A bare expression (REPL lines only; files reject it in the checker).
    Expr(Expr),
}

/// A parameter of a `def`: `name`, `name: Type`, `name = default`, `name: Type = default`.
#[derive(Debug, Clone, PartialEq)]
pub struct DefParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
}

/// A written type such as `Int`, `List<Model>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeExpr {
    pub name: Ident,
    pub args: Vec<TypeExpr>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    Name(Ident),
    List(Vec<Expr>),
    Record(Vec<(Ident, Expr)>),
    /// `[body for pattern in iter if cond]`
    Comprehension {
        body: Box<Expr>,
        pattern: Pattern,
        iter: Box<Expr>,
        cond: Option<Box<Expr>>,
    },
    /// `verb method(args)` or `name(args)`
    Call {
        callee: Callee,
        args: Vec<Arg>,
    },
    /// `base.field`
    Field {
        base: Box<Expr>,
        field: Ident,
    },
    /// `base[index]`
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Unary {
        op: UnOp,
        operand: Box<Expr>,
    },
    /// `{ let a = …; let b = …; result }` (def bodies)
    Block {
        lets: Vec<(Ident, Expr)>,
        result: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Callee {
    /// `merge ties(...)`: the operator family and the method.
    Op { verb: Ident, method: Ident },
    /// `len(xs)`, `evaluate(...)`, a stdlib or user `def`.
    Name(Ident),
}

impl Callee {
    /// The dotted name as written: `merge.ties` or `len`.
    pub fn dotted(&self) -> String {
        match self {
            Callee::Op { verb, method } => format!("{}.{}", verb.name, method.name),
            Callee::Name(n) => n.name.clone(),
        }
    }

    pub fn span(&self) -> Span {
        match self {
            Callee::Op { verb, method } => verb.span.to(method.span),
            Callee::Name(n) => n.span,
        }
    }
}

/// One call argument, positional (`name = None`) or named (`k=5`).
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Name(Ident),
    Tuple(Vec<Pattern>, Span),
}

impl Pattern {
    pub fn span(&self) -> Span {
        match self {
            Pattern::Name(i) => i.span,
            Pattern::Tuple(_, s) => *s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `++` list concatenation
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Concat => "++",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}
