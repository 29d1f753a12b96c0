//! Which tensors a streaming merge combines, copies or leaves out — decided from headers only
//! (also by `smelt check`), before any tensor data is read.
//!
//! **Which tensors are merged** ([`plan_merge`]). The first input is the *reference* (a
//! merge's base, or its first model when it has none): the output has the reference's tensor
//! names, shapes and config. A tensor is *combined* when the
//! selection predicate ([`MergeOptions::select`], the `include=`/`exclude=` filters) selects
//! it, it is a float tensor and every input has it; the inputs then must agree on shape and on
//! float-ness. Otherwise it is *passed through*: copied from the reference without decoding the
//! other inputs or calling `combine` (bit for bit when the output dtype is the stored one,
//! converted otherwise). Integer tensors are always passed through.
//!
//! **Tensors that only some inputs have** ([`Partial`], the `partial=` option of merges):
//! - `error` (default): the merge is refused and the error lists every such tensor and the
//!   input lacking it — a missing tensor usually means a wrong checkpoint (a head-less base, a
//!   model saved with tied weights), which should not pass silently.
//! - `base`: keep the reference's layout — a tensor the reference has but some input lacks is
//!   copied from the reference unchanged (as if excluded); a tensor the reference lacks is left
//!   out. The result loads wherever the reference loads.
//! - `skip`: keep only the tensors every input has; the others are left out of the result.
//!
//! Tensors outside the selection are not checked against the other inputs at all (so
//! `exclude=["classifier"]` merges models whose heads differ in shape, keeping the reference's
//! head). The vocabulary sizes in `config.json` must always agree.

use super::model_dir::{ModelDir, INCOMPATIBLE};
use crate::diag::OpError;
use std::collections::BTreeSet;

/// What a merge does with a tensor that only some of its inputs have (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partial {
    #[default]
    Error,
    Base,
    Skip,
}

impl Partial {
    pub const NAMES: [&'static str; 3] = ["error", "base", "skip"];

    pub fn parse(s: &str) -> Option<Partial> {
        match s {
            "error" => Some(Partial::Error),
            "base" => Some(Partial::Base),
            "skip" => Some(Partial::Skip),
            _ => None,
        }
    }
}

/// Which tensors a merge combines, and what it does with partial ones.
#[derive(Clone, Copy, Default)]
pub struct MergeOptions<'a> {
    /// Tensors (by name) to combine; `None` selects every tensor. Unselected tensors are
    /// copied from the first input.
    pub select: Option<&'a dyn Fn(&str) -> bool>,
    pub partial: Partial,
    /// Combine tensors larger than this many elements in parts of at most this size (for
    /// elementwise merges; see [`super::merge::Part`]); `None`: whole tensors.
    pub chunk: Option<usize>,
}

impl MergeOptions<'_> {
    fn selects(&self, name: &str) -> bool {
        self.select.is_none_or(|f| f(name))
    }
}

/// How one output tensor is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Decode it from every input and call `combine`.
    Combine,
    /// Copy it from the first input (the reference).
    PassThrough,
}

/// One tensor of the output, in sorted name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub action: Action,
}

/// Decide, from headers only, which tensors the output has and which are combined (see the
/// module docs). Errors name every offending tensor.
pub fn plan_merge(inputs: &[&ModelDir], opts: &MergeOptions) -> Result<Vec<Planned>, OpError> {
    let Some(&first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let fail = |msg: String| {
        OpError::new(INCOMPATIBLE, msg).with_help(
            "merging needs models of one architecture and vocabulary (fine-tunes of one base)",
        )
    };
    let a = first.path().display();
    for other in &inputs[1..] {
        if let (Some(va), Some(vb)) = (first.vocab_size(), other.vocab_size()) {
            if va != vb {
                let b = other.path().display();
                return Err(fail(format!(
                    "vocabulary sizes differ: {a} has {va}, {b} has {vb}"
                )));
            }
        }
    }
    let names: BTreeSet<&String> = inputs.iter().flat_map(|m| m.tensors().keys()).collect();
    let mut plan = Vec::new();
    // (tensor, an input that has it, an input that lacks it)
    let mut partial: Vec<(&str, &ModelDir, &ModelDir)> = Vec::new();
    for name in names {
        let Some(x) = first.info(name) else {
            if opts.selects(name) {
                let has = inputs.iter().find(|m| m.info(name).is_some()).copied();
                partial.push((name, has.unwrap_or(first), first));
            }
            continue;
        };
        if !opts.selects(name) {
            plan.push(Planned::pass(name));
            continue;
        }
        if let Some(lacks) = inputs.iter().find(|m| m.info(name).is_none()) {
            partial.push((name, first, lacks));
            match opts.partial {
                Partial::Base => plan.push(Planned::pass(name)),
                Partial::Error | Partial::Skip => {}
            }
            continue;
        }
        for other in &inputs[1..] {
            let y = other.info(name).expect("presence checked above");
            let b = other.path().display();
            if x.shape != y.shape {
                return Err(fail(format!(
                    "tensor `{name}` has shape {:?} in {a} but {:?} in {b}",
                    x.shape, y.shape
                )));
            }
            if x.dtype.is_float() != y.dtype.is_float() {
                return Err(fail(format!(
                    "tensor `{name}` is {} in {a} but {} in {b}",
                    x.dtype, y.dtype
                )));
            }
        }
        plan.push(Planned {
            name: name.clone(),
            action: if x.dtype.is_float() {
                Action::Combine
            } else {
                Action::PassThrough
            },
        });
    }
    if opts.partial == Partial::Error && !partial.is_empty() {
        const SHOWN: usize = 8;
        let lines: Vec<String> = partial
            .iter()
            .take(SHOWN)
            .map(|(name, has, lacks)| {
                format!(
                    "tensor `{name}` is in {} but missing from {}",
                    has.path().display(),
                    lacks.path().display()
                )
            })
            .collect();
        let more = match partial.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        return Err(OpError::new(
            INCOMPATIBLE,
            format!(
                "{} tensor(s) are not in every input: {}{more}",
                partial.len(),
                lines.join("; ")
            ),
        )
        .with_help(
            "partial=base copies them from the base (first input), partial=skip leaves them out, \
             exclude=[...] copies named tensors from the base",
        ));
    }
    Ok(plan)
}

impl Planned {
    fn pass(name: &str) -> Planned {
        Planned {
            name: name.to_string(),
            action: Action::PassThrough,
        }
    }
}
