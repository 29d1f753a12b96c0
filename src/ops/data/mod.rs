//! `data.*`: operators that derive tasks from tasks (k-shot splits, down-sampling, unions, dev
//! splits) or generate them (`data synthetic`). Thin wrappers over [`crate::data`].
//!
//! Every result is a `Task` artifact whose examples are written under the node's store object
//! (`task/`: `labels.json` + one JSONL file per split), so it is self-contained. Samplers take
//! an explicit `seed` (default fixed, as in the papers), which alone decides the split, so
//! LM-BFF seeds give the same split in every experiment; `seed=none` draws from the node seed
//! (derived from the experiment seed) instead.

pub mod kshot;
pub mod split;
pub mod subsample;
pub mod synthetic;
pub mod union;

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::{Args, OpCtx, Param};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

/// Write `task` into the node's output directory and return it as a `Task` artifact.
pub fn task_value(cx: &OpCtx, task: &TaskData) -> Result<Value, OpError> {
    Ok(Value::Artifact(Arc::new(task_artifact(
        cx, task, "task", cx.key,
    )?)))
}

/// Write `task` under `out_dir/sub` as an artifact with the given key.
pub fn task_artifact(
    cx: &OpCtx,
    task: &TaskData,
    sub: &str,
    key: crate::cache::Key,
) -> Result<Artifact, OpError> {
    let dir = cx.out_dir.join(sub);
    let data = task.save(&dir)?;
    Ok(Artifact {
        kind: Kind::Task,
        dir,
        key,
        data,
    })
}

/// Read the examples of the `Task` argument `name`.
pub fn task_arg(args: &Args, name: &str) -> Result<TaskData, OpError> {
    TaskData::from_artifact(args.artifact(name, Kind::Task)?)
}

/// The sampler seed: the explicit `seed` argument, or the node's seed when it is `none`.
pub fn seed_arg(args: &Args, cx: &OpCtx) -> Result<u64, OpError> {
    match args.get("seed")? {
        Value::None => Ok(cx.seed),
        _ => Ok(args.int("seed")? as u64),
    }
}

/// The `seed` parameter shared by the samplers, with its default.
pub const fn seed_param(default: i64) -> Param {
    Param::opt(
        "seed",
        Ty::Opt(&Ty::Int),
        crate::sig::Const::Int(default),
        "Sampling seed. The result depends only on it and the task's content (not on the \
         experiment seed); `none` draws from the node seed, derived from the experiment seed.",
    )
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Task artifacts and contexts for operator unit tests.
    use super::*;
    use crate::data::synthetic::{generate, SynthSpec};

    /// A synthetic `movies` task written as a Task artifact under `dir`.
    pub fn movies(dir: &std::path::Path, n: usize) -> Value {
        let task = generate(&SynthSpec::new("movies", "movies", n, 0.1, 0)).unwrap();
        let cx = OpCtx::for_test(dir.to_path_buf(), 0);
        task_value(&cx, &task).unwrap()
    }
}
