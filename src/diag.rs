//! Diagnostics: one error type for every stage, rendered by miette at the edge.
//!
//! Stages produce [`Diagnostic`] values that carry a code (`smelt::<stage>::<what>`), a message,
//! a primary [`Span`] with a label, an optional help line and optional secondary labels. Operators
//! return span-free [`OpError`]s; the executor attaches the call site with [`At::at`]. The
//! [`render`] function turns a diagnostic plus the [`SourceMap`] into miette's graphical report
//! (no colour, fixed width in tests).

use crate::source::{SourceMap, Span};
use std::fmt;

/// A secondary label pointing at another place in the same file.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// A located error or warning.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code such as `smelt::check::unknown_param`.
    pub code: &'static str,
    pub message: String,
    /// Primary location; `None` for errors with no source position (e.g. a missing file given
    /// on the command line).
    pub span: Option<Span>,
    pub label: String,
    pub help: Option<String>,
    pub secondary: Vec<Label>,
    pub severity: Severity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            span: Some(span),
            label: String::new(),
            help: None,
            secondary: Vec::new(),
            severity: Severity::Error,
        }
    }

    /// An error with no source location.
    pub fn global(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
            secondary: Vec::new(),
            severity: Severity::Error,
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_secondary(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn warning(mut self) -> Diagnostic {
        self.severity = Severity::Warning;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// An error raised by an operator at run time, before the call site is known.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

impl OpError {
    pub fn new(code: &'static str, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            help: None,
        }
    }

    /// A generic run-time failure (`smelt::run::failed`).
    pub fn msg(message: impl Into<String>) -> OpError {
        OpError::new("smelt::run::failed", message)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> OpError {
        self.help = Some(help.into());
        self
    }

    /// Prefix the message with context ("while merging tensor X: …").
    pub fn context(mut self, ctx: impl fmt::Display) -> OpError {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for OpError {}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> OpError {
        OpError::new(
            "smelt::run::tensor",
            format!("tensor operation failed: {e}"),
        )
    }
}

impl From<std::io::Error> for OpError {
    fn from(e: std::io::Error) -> OpError {
        OpError::new("smelt::run::io", format!("I/O error: {e}"))
    }
}

/// Attach a source span to a span-free error (typst's `At`).
pub trait At<T> {
    fn at(self, span: Span) -> Result<T, Diagnostic>;
}

impl<T> At<T> for Result<T, OpError> {
    fn at(self, span: Span) -> Result<T, Diagnostic> {
        self.map_err(|e| e.at_span(span))
    }
}

impl OpError {
    pub fn at_span(self, span: Span) -> Diagnostic {
        Diagnostic {
            code: self.code,
            message: self.message,
            span: Some(span),
            label: "in this call".into(),
            help: self.help,
            secondary: Vec::new(),
            severity: Severity::Error,
        }
    }
}

/// A miette view of one diagnostic with its source file.
#[derive(Debug)]
struct Report<'a> {
    diag: &'a Diagnostic,
    src: Option<miette::NamedSource<String>>,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let primary = self.diag.span?;
        let mut labels = vec![miette::LabeledSpan::new_primary_with_span(
            (!self.diag.label.is_empty()).then(|| self.diag.label.clone()),
            (primary.lo as usize, primary.len()),
        )];
        for l in &self.diag.secondary {
            if l.span.file == primary.file {
                labels.push(miette::LabeledSpan::new_with_span(
                    Some(l.text.clone()),
                    (l.span.lo as usize, l.span.len()),
                ));
            }
        }
        Some(Box::new(labels.into_iter()))
    }
}

/// Render a diagnostic as text. `color = false` and a fixed `width` give stable snapshots.
pub fn render(diag: &Diagnostic, sources: &SourceMap, color: bool, width: usize) -> String {
    let src = diag
        .span
        .filter(|s| (s.file.0 as usize) < sources.len())
        .map(|s| {
            let f = sources.get(s.file);
            miette::NamedSource::new(f.name.clone(), f.text.to_string())
        });
    let report = Report { diag, src };
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(width);
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        out = format!("error[{}]: {}", diag.code, diag.message);
    }
    out
}

/// Render many diagnostics, separated by blank lines.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap, color: bool, width: usize) -> String {
    diags
        .iter()
        .map(|d| render(d, sources, color, width))
        .collect::<Vec<_>>()
        .join("\n")
}
