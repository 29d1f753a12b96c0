//! Evaluation: walks a checked program, computing plain values on the spot and turning every
//! operator call into a DAG [`Node`] with a content key; realisation ([`Evaluator::realise`])
//! runs nodes through the cache.
//!
//! Key = blake3(schema, op id, op version, [(param, canonical value)], dtype, experiment seed for
//! seeded ops); `Path` arguments are replaced by their content fingerprint. Because inputs are
//! keyed by *their* keys, keys never depend on names, comments or formatting.
//!
//! Modes: `Run` realises everything; `Plan` and `Check` realise only cheap operators (header
//! reads) and cached results, marking the rest as "to run" — values that depend on them are
//! `Unknown`.

mod expr;
mod realise;

use crate::cache::{Fingerprinter, Key, Store};
use crate::diag::Diagnostic;
use crate::ops::{Args, Registry};
use crate::source::Span;
use crate::types::check::DefInfo;
use crate::types::Type;
use crate::value::Value;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `smelt check`: header reads only, no store writes, cheap path fingerprints.
    Check,
    /// `smelt plan`: like check, but reports cached / to-run per node.
    Plan,
    /// `smelt run` and the REPL: realise everything.
    Run,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pending,
    Cached,
    Ran {
        seconds: f64,
    },
    /// Realised without the store (cheap ops in check/plan mode).
    Dry,
    Failed,
}

/// One operator call in the DAG.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: &'static str,
    pub version: u32,
    pub key: Key,
    pub args: Args,
    pub span: Span,
    pub seed: Option<u64>,
    pub ty: Type,
    pub status: Status,
    /// Canonical parameter rendering for humans.
    pub params: String,
}

/// Run-wide settings from `config {}` and the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub dtype: String,
    pub device: candle_core::Device,
    pub device_name: String,
    pub progress: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 0,
            dtype: "f32".into(),
            device: candle_core::Device::Cpu,
            device_name: "cpu".into(),
            progress: false,
        }
    }
}

/// Effects of statements, in program order.
#[derive(Debug, Clone)]
pub enum Output {
    Report {
        name: String,
        value: Value,
        span: Span,
    },
    Save {
        value: Value,
        path: String,
        span: Span,
    },
    Expect {
        outcome: ExpectOutcome,
        span: Span,
    },
    /// `plot KIND(args) [to "file.svg"]`: a `Figure` written next to the run's tables (and
    /// to `to` when given).
    Plot {
        value: Value,
        to: Option<String>,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExpectOutcome {
    Passed {
        lhs: Option<Value>,
        rhs: Option<Value>,
    },
    Failed {
        lhs: Option<Value>,
        rhs: Option<Value>,
    },
    /// Not known without running (plan/check).
    Unknown,
}

/// Called after each node finishes: (node, nodes finished, nodes known).
pub type OnNode<'a> = Box<dyn FnMut(&Node, usize, usize) + 'a>;

pub struct Evaluator<'a> {
    pub reg: &'a Registry,
    pub store: Option<&'a Store>,
    pub fingerprints: &'a mut Fingerprinter,
    pub mode: Mode,
    pub settings: Settings,
    pub graph: Vec<Node>,
    by_key: HashMap<Key, usize>,
    results: HashMap<usize, Value>,
    pub globals: HashMap<String, Value>,
    pub defs: HashMap<String, Arc<DefInfo>>,
    scopes: Vec<HashMap<String, Value>>,
    pub outputs: Vec<Output>,
    /// Called after each node finishes (progress display).
    pub on_node: Option<OnNode<'a>>,
    /// Cheap-op results in check/plan mode live in this scratch directory.
    scratch: Option<tempfile::TempDir>,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        reg: &'a Registry,
        store: Option<&'a Store>,
        fingerprints: &'a mut Fingerprinter,
        mode: Mode,
        settings: Settings,
    ) -> Self {
        Evaluator {
            reg,
            store,
            fingerprints,
            mode,
            settings,
            graph: Vec::new(),
            by_key: HashMap::new(),
            results: HashMap::new(),
            globals: HashMap::new(),
            defs: HashMap::new(),
            scopes: Vec::new(),
            outputs: Vec::new(),
            on_node: None,
            scratch: None,
        }
    }

    /// Number of nodes that ran an operator (not served from the cache).
    pub fn executed(&self) -> usize {
        self.graph
            .iter()
            .filter(|n| matches!(n.status, Status::Ran { .. }))
            .count()
    }

    pub fn cached(&self) -> usize {
        self.graph
            .iter()
            .filter(|n| n.status == Status::Cached)
            .count()
    }

    /// Mark nodes that were never forced but whose results are in the store (for `smelt plan`).
    pub fn mark_stored(&mut self) {
        if let Some(store) = self.store {
            for n in self.graph.iter_mut() {
                if n.status == Status::Pending && store.contains(&n.key) {
                    n.status = Status::Cached;
                }
            }
        }
    }

    /// Realise every node not yet realised (end of `smelt run`).
    pub fn realise_all(&mut self) -> Result<(), Diagnostic> {
        for id in 0..self.graph.len() {
            self.realise(id)?;
        }
        Ok(())
    }
}
