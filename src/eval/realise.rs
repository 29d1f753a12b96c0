//! Nodes: keying, de-duplication, validation and realisation through the store.

use super::expr::NEEDS_RUN;
use super::{Evaluator, Mode, Node, Status};
use crate::cache::{KeyBuilder, Meta};
use crate::diag::{Diagnostic, OpError};
use crate::ops::{Args, Determinism, OpCtx, Operator};
use crate::source::Span;
use crate::types::{Ty, Type};
use crate::value::{NodeRef, Value};
use std::sync::Arc;
use std::time::Instant;

fn is_path(ty: &Ty) -> bool {
    match ty {
        Ty::Path => true,
        Ty::Opt(t) | Ty::List(t) => is_path(t),
        _ => false,
    }
}

impl<'a> Evaluator<'a> {
    /// Create (or find) the node for an operator call.
    pub(crate) fn node(
        &mut self,
        op: &'a dyn Operator,
        args: Args,
        span: Span,
        ty: Type,
    ) -> Result<Value, Diagnostic> {
        if args.values.iter().any(|(_, v)| v.is_unknown()) {
            return Ok(Value::Unknown(ty));
        }
        let sig = op.signature();
        let mut kb = KeyBuilder::new();
        kb.str("node").str(sig.id).u64(sig.version as u64);
        let mut params = Vec::new();
        for (p, (name, v)) in sig.params.iter().zip(&args.values) {
            kb.str(name);
            if is_path(&p.ty) {
                let canon = self.path_keys(v).map_err(|e| e.at_span(span))?;
                kb.value(&canon);
            } else {
                kb.value(v);
            }
            params.push(format!("{name}={}", v.display()));
        }
        kb.str(&self.settings.dtype);
        if sig.determinism == Determinism::Seeded {
            kb.u64(self.settings.seed);
        }
        let key = kb.finish();
        if let Some(&id) = self.by_key.get(&key) {
            return Ok(Value::Node(NodeRef { id, key, ty }));
        }
        // Header-level validation with cheap inputs realised (model shapes, vocabularies).
        let shallow = self.force_cheap(&args)?;
        op.validate(&shallow).map_err(|e| e.at_span(span))?;
        let seed =
            (sig.determinism == Determinism::Seeded).then(|| key.derive_seed(self.settings.seed));
        let id = self.graph.len();
        self.graph.push(Node {
            op: sig.id,
            version: sig.version,
            key,
            args,
            span,
            seed,
            ty: ty.clone(),
            status: Status::Pending,
            params: params.join(", "),
        });
        self.by_key.insert(key, id);
        Ok(Value::Node(NodeRef { id, key, ty }))
    }

    /// Replace path strings by content fingerprints (stat-based in check mode).
    fn path_keys(&mut self, v: &Value) -> Result<Value, OpError> {
        Ok(match v {
            Value::Str(s) => {
                let path = std::path::Path::new(s.as_ref());
                if self.mode == Mode::Check {
                    let meta = std::fs::metadata(path).map_err(|e| {
                        OpError::new("smelt::io::missing_file", format!("cannot read `{s}`: {e}"))
                            .with_help("check the path (relative paths are resolved from the directory you run smelt in)")
                    })?;
                    Value::str(format!(
                        "stat:{s}:{}:{:?}",
                        meta.len(),
                        meta.modified().ok()
                    ))
                } else {
                    Value::str(self.fingerprints.path(path)?.hex())
                }
            }
            Value::List(xs) => Value::list(
                xs.iter()
                    .map(|x| self.path_keys(x))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Arguments with every cheap node realised (others left as nodes).
    fn force_cheap(&mut self, args: &Args) -> Result<Args, Diagnostic> {
        let mut out = Vec::with_capacity(args.values.len());
        for (n, v) in &args.values {
            out.push((*n, self.map_cheap(v)?));
        }
        Ok(Args::new(out))
    }

    fn map_cheap(&mut self, v: &Value) -> Result<Value, Diagnostic> {
        Ok(match v {
            Value::Node(n) => {
                let cheap = self
                    .reg
                    .get(self.graph[n.id].op)
                    .is_some_and(|o| o.signature().cheap);
                if cheap || self.results.contains_key(&n.id) {
                    self.realise(n.id)?
                } else {
                    v.clone()
                }
            }
            Value::List(xs) => Value::list(
                xs.iter()
                    .map(|x| self.map_cheap(x))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Realise the top level of a value (a node becomes its result).
    pub fn force(&mut self, v: &Value) -> Result<Value, Diagnostic> {
        match v {
            Value::Node(n) => self.realise(n.id),
            other => Ok(other.clone()),
        }
    }

    /// Realise a value and everything inside it.
    pub fn force_deep(&mut self, v: &Value) -> Result<Value, Diagnostic> {
        Ok(match v {
            Value::Node(n) => {
                let r = self.realise(n.id)?;
                self.force_deep(&r)?
            }
            Value::List(xs) => Value::list(
                xs.iter()
                    .map(|x| self.force_deep(x))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Tuple(xs) => Value::Tuple(Arc::new(
                xs.iter()
                    .map(|x| self.force_deep(x))
                    .collect::<Result<_, _>>()?,
            )),
            Value::Record(r) => Value::Record(Arc::new(
                r.iter()
                    .map(|(k, x)| Ok((k.clone(), self.force_deep(x)?)))
                    .collect::<Result<_, Diagnostic>>()?,
            )),
            other => other.clone(),
        })
    }

    /// Realise node `id`: from the store, by running it, or (dry modes) `Unknown`.
    pub fn realise(&mut self, id: usize) -> Result<Value, Diagnostic> {
        if let Some(v) = self.results.get(&id) {
            return Ok(v.clone());
        }
        let node = self.graph[id].clone();
        let mut forced = Vec::with_capacity(node.args.values.len());
        for (n, v) in &node.args.values {
            let f = self.force_deep(v)?;
            if f.is_unknown() {
                return Ok(Value::Unknown(node.ty.clone()));
            }
            forced.push((*n, f));
        }
        let args = Args::new(forced);
        let op = self.reg.get(node.op).expect("registered operator");
        let cheap = op.signature().cheap;
        if let Some(v) = self.store.and_then(|s| s.lookup(&node.key)) {
            self.finish(id, v.clone(), Status::Cached);
            return Ok(v);
        }
        if self.mode != Mode::Run && !cheap {
            return Ok(Value::Unknown(node.ty.clone()));
        }
        let dry = self.mode != Mode::Run || self.store.is_none();
        let out_dir = if dry {
            let scratch = match &self.scratch {
                Some(s) => s.path().to_path_buf(),
                None => {
                    let t = tempfile::tempdir().map_err(|e| OpError::from(e).at_span(node.span))?;
                    let p = t.path().to_path_buf();
                    self.scratch = Some(t);
                    p
                }
            };
            let d = scratch.join(node.key.hex());
            std::fs::create_dir_all(&d).map_err(|e| OpError::from(e).at_span(node.span))?;
            d
        } else {
            self.store
                .expect("store in run mode")
                .begin(&node.key)
                .map_err(|e| e.at_span(node.span))?
        };
        let mut cx = OpCtx {
            key: node.key,
            out_dir: out_dir.clone(),
            seed: node.seed.unwrap_or(0),
            device: self.settings.device.clone(),
            dtype: dtype_of(&self.settings.dtype),
            progress: self.settings.progress,
        };
        let start = Instant::now();
        let result = op.validate(&args).and_then(|_| op.run(&mut cx, &args));
        let seconds = start.elapsed().as_secs_f64();
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                self.graph[id].status = Status::Failed;
                if let (false, Some(store)) = (dry, self.store) {
                    store.abort(&out_dir);
                }
                if e.code == NEEDS_RUN {
                    return Ok(Value::Unknown(node.ty.clone()));
                }
                return Err(e.at_span(node.span));
            }
        };
        if dry {
            self.finish(id, value.clone(), Status::Dry);
            return Ok(value);
        }
        let store = self.store.expect("store in run mode");
        let meta = Meta {
            key: node.key.hex(),
            op: node.op.to_string(),
            op_version: node.version,
            params: node.params.clone(),
            inputs: input_keys(&node.args),
            seed: node.seed,
            seconds,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            smelt_version: env!("CARGO_PKG_VERSION").into(),
        };
        let stored = store
            .commit(&node.key, &out_dir, &value, &meta)
            .map_err(|e| e.at_span(node.span))?;
        self.finish(id, stored.clone(), Status::Ran { seconds });
        Ok(stored)
    }

    fn finish(&mut self, id: usize, v: Value, status: Status) {
        self.results.insert(id, v);
        self.graph[id].status = status;
        let done = self.results.len();
        let total = self.graph.len();
        if let Some(cb) = self.on_node.as_mut() {
            cb(&self.graph[id], done, total);
        }
    }
}

fn input_keys(args: &Args) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Node(n) => out.push(n.key.hex()),
            Value::Artifact(a) => out.push(a.key.hex()),
            Value::List(xs) | Value::Tuple(xs) => xs.iter().for_each(|x| walk(x, out)),
            Value::Record(r) => r.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    args.values.iter().for_each(|(_, v)| walk(v, &mut out));
    out
}

pub fn dtype_of(s: &str) -> candle_core::DType {
    match s {
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    }
}
