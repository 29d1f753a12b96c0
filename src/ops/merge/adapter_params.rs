//! The shared surface of merges that take models or adapters (`merge average|linear|softmax`):
//! the `List<Model | Adapter>` parameter type and its result type, the `mode`/`rank` parameters,
//! check-time validation (model headers and name filters, or adapter bases, configurations and
//! filters) and the entry point that runs an adapter merge with the operator's name filter.

use super::adapter_set::{self, AdapterIn, Mode};
use super::adapter_space::{merge_adapters, Spec};
use super::{name_filter, validate_merge, NameFilter};
use crate::diag::OpError;
use crate::ops::{Args, Const, OpCtx, Param};
use crate::types::{Ty, Type};
use crate::value::{Artifact, Kind, Value};
use serde_json::{json, Value as Json};
use std::sync::Arc;

/// The input type of merges that take models or adapters, `List<Model | Adapter>`: a list
/// mixing both is refused by the checker's list typing (and again at run time).
pub const MERGEABLE: Ty = Ty::List(&MERGED);
/// Their declared result (the checker computes the exact one with [`follows_input`]).
pub const MERGED: Ty = Ty::Either(&Ty::Model, &Ty::Adapter);

pub const MODE_PARAM: Param = Param::opt(
    "mode",
    Ty::Enum(&["factors", "delta"]),
    Const::Str("factors"),
    "Adapters only: `factors` combines every adapter tensor on its own (LoRA A and B apart, as paper 2); `delta` merges LoRA exactly in ΔW = s·B·A space and re-factorises it by SVD.",
);

pub const RANK_PARAM: Param = Param::opt(
    "rank",
    Ty::Opt(&Ty::Int),
    Const::None,
    "`mode=delta`: rank of the merged LoRA (default: the sum of the input ranks, exact; smaller ranks record the truncation error).",
)
.range(1.0, 1e9);

/// Result type of a merge: `Adapter` for a list of adapters, `Model` for a list of models.
pub fn follows_input(args: &[Type]) -> Type {
    match args.first() {
        Some(Type::List(e, _)) if **e == Type::Adapter => Type::Adapter,
        Some(Type::List(e, _)) if **e == Type::Model => Type::Model,
        _ => Type::Unknown,
    }
}

/// The `mode` and `rank` arguments.
pub fn mode_arg(args: &Args) -> Result<Mode, OpError> {
    let rank = match args.get("rank")? {
        Value::None => None,
        _ => Some(args.int("rank")?),
    };
    match (args.str("mode")?, rank) {
        ("delta", Some(r)) if r < 1 => Err(OpError::new(
            "smelt::run::argument",
            format!("rank must be at least 1, got {r}"),
        )),
        ("delta", r) => Ok(Mode::Delta {
            rank: r.map(|r| r as usize),
        }),
        (_, Some(_)) => Err(OpError::new(
            "smelt::run::argument",
            "`rank` applies to mode=delta only",
        )
        .with_help("factor-wise merges keep the inputs' rank; add mode=delta to re-factorise")),
        _ => Ok(Mode::Factors),
    }
}

/// Check-time validation of a `List<Model | Adapter>` merge argument `param`: model
/// headers and name filters ([`validate_merge`]), or adapter bases, configurations and filters.
pub fn validate_inputs(args: &Args, param: &str) -> Result<(), OpError> {
    let values = args.list(param)?;
    validate_merge(args, &values.iter().collect::<Vec<_>>())?;
    adapter_set::validate(values, mode_arg(args)?)?;
    if let Some(Value::Artifact(a)) = values.first() {
        if a.kind == Kind::Adapter {
            adapter_filter(args, a)?;
        }
    }
    Ok(())
}

/// The `include`/`exclude` filter over the first adapter's tensor names (all of its files).
pub fn adapter_filter(args: &Args, first: &Arc<Artifact>) -> Result<NameFilter, OpError> {
    name_filter(args, &adapter_set::tensor_names(&AdapterIn::open(first)?)?)
}

/// The `include`/`exclude` patterns given to an operator (empty lists when absent).
fn patterns(args: &Args) -> [(&'static str, Vec<&str>); 2] {
    ["include", "exclude"].map(|p| {
        let list = args
            .list(p)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        (p, list)
    })
}

/// `, include=[…], exclude=[…]` for a model merge's provenance; empty without filters, so an
/// unfiltered merge writes the same metadata as before filters existed.
pub fn filter_provenance(args: &Args) -> String {
    let ps = patterns(args);
    if ps.iter().all(|(_, l)| l.is_empty()) {
        return String::new();
    }
    ps.iter().map(|(p, l)| format!(", {p}={l:?}")).collect()
}

/// An operator's adapter merge: the filter and mode from `args`, `weights`, and `record`
/// (extra fields for the `merge` record, e.g. softmax scores).
pub fn run_adapter_merge(
    cx: &OpCtx,
    args: &Args,
    arts: &[&Arc<Artifact>],
    (op, version): (&'static str, u32),
    weights: &[f64],
    mut record: Json,
) -> Result<Value, OpError> {
    let filter = adapter_filter(args, arts[0])?;
    let select = |n: &str| filter.selects(n);
    if !filter.is_all() {
        for (p, list) in patterns(args) {
            record[p] = json!(list);
        }
    }
    let spec = Spec {
        op,
        version,
        weights,
        mode: mode_arg(args)?,
        select: &select,
        record,
    };
    merge_adapters(cx, arts, &spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::adapter_fixtures::*;
    use crate::ops::merge::adapter_set::MAIN_FILE;

    #[test]
    fn name_filters_copy_unselected_tensors_from_the_first_adapter() {
        let t = tempfile::tempdir().unwrap();
        let dims = (4, 3);
        let (a1, b1, a2, b2) = (rand(6, 1), rand(8, 2), rand(6, 3), rand(8, 4));
        let two = |name: &str, a: &[f32], b: &[f32]| {
            let k = |f: &str| format!("base_model.model.m.{f}");
            adapter_dir(
                &t.path().join(name),
                lora_config(2, 4.0),
                &[
                    (&k("q.lora_A.weight"), vec![2, 3], a.to_vec()),
                    (&k("q.lora_B.weight"), vec![4, 2], b.to_vec()),
                    (&k("k.lora_A.weight"), vec![2, 3], a.to_vec()),
                    (&k("k.lora_B.weight"), vec![4, 2], b.to_vec()),
                ],
                "b",
                name,
            )
        };
        let (x, y) = (two("x", &a1, &b1), two("y", &a2, &b2));
        let args = |mode: &str, include: &[&str], exclude: &[&str]| {
            let strs = |p: &[&str]| Value::list(p.iter().map(Value::str).collect());
            Args::new(vec![
                ("include", strs(include)),
                ("exclude", strs(exclude)),
                ("mode", Value::str(mode)),
                ("rank", Value::None),
            ])
        };
        let run = |out: &str, a: Args| {
            let cx = OpCtx::for_test(t.path().join(out), 0);
            run_adapter_merge(
                &cx,
                &a,
                &[&x, &y],
                ("merge.linear", 1),
                &[0.5, 0.5],
                json!({}),
            )
        };
        let m = run("f", args("factors", &[], &["lora_B"])).unwrap();
        let got = tensors(&m, MAIN_FILE);
        let half: Vec<f32> = a1.iter().zip(&a2).map(|(p, q)| 0.5 * p + 0.5 * q).collect();
        assert_eq!((got[QA].clone(), got[QB].clone()), (half, b1.clone()));
        assert_eq!(
            m.as_artifact().unwrap().data["merge"]["exclude"],
            json!(["lora_B"])
        );
        // delta mode: unselected modules keep the first adapter's ΔW; half a module is an error
        let d = run("d", args("delta", &["lora_B"], &[]));
        assert_eq!(d.unwrap_err().code, "smelt::merge::split_factors");
        let d = run("d2", args("delta", &[], &["m.q"])).unwrap();
        let (w, r) = merged_delta(&d, dims);
        assert_eq!(r, 4);
        assert!(max_diff(&w, &dense(&a1, &b1, 2, dims, 2.0)) < 1e-6);
        // a pattern that matches nothing is named
        let e = run("e", args("factors", &["lora_C"], &[])).unwrap_err();
        assert!(e.message.contains("lora_C"), "{}", e.message);
    }

    #[test]
    fn rank_and_mode_arguments() {
        let args =
            |mode: &str, rank: Value| Args::new(vec![("mode", Value::str(mode)), ("rank", rank)]);
        assert_eq!(
            mode_arg(&args("factors", Value::None)).unwrap(),
            Mode::Factors
        );
        assert_eq!(
            mode_arg(&args("delta", Value::Int(4))).unwrap(),
            Mode::Delta { rank: Some(4) }
        );
        assert!(mode_arg(&args("factors", Value::Int(4))).is_err());
        assert!(mode_arg(&args("delta", Value::Int(0))).is_err());
    }
}
