//! `load task(path)` and `load tasks(dir, names)`: classification tasks from the shared layout
//! (`labels.json`, `train.jsonl`, `test.jsonl`/`test_1k.jsonl`, optional `dev.jsonl`), from TSV/CSV
//! files with a header, or from a single file.
//!
//! Every line is read and checked (bad JSON and labels outside the label space are reported
//! with file and line, already by `smelt check`, since loading is cheap), then the examples are
//! copied, normalised to JSONL, into the node's store object. The Task is therefore
//! self-contained: a cached result never points at a directory that has since moved. Like every
//! `load`, the node key is the content fingerprint of the path, not the path string (for a
//! single file that is the file alone: a `labels.json` beside it is read but not fingerprinted).

use crate::cache::KeyBuilder;
use crate::data::{ReadOptions, TaskData, LAYOUT, LAYOUT_HELP};
use crate::diag::OpError;
use crate::ops::data::{task_artifact, task_value};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::Value;
use std::path::Path;
use std::sync::Arc;

pub struct LoadTask;
pub struct LoadTasks;

const TEST_DOC: &str =
    "Test split file stem (`test` falls back to `test_1k` when `test.*` is absent).";

static SIG: Signature = Signature {
    id: "load.task",
    version: 1,
    summary: "Load a classification task (labels.json + train/test JSONL, TSV or CSV).",
    doc: "A directory holds `labels.json` ({\"labels\": [...], \"pair\": bool}), a train split, a test \
          split and optionally `dev.*`; each split is `.jsonl` ({\"text\", \"text_b\"?, \"label\"}) or \
          `.tsv`/`.csv` with a header row (text, text_b?, label). Labels are indices or label names. \
          A single file is a train-only task (labels from a `labels.json` beside it, or inferred). \
          `train=\"k-shot/16-42\"` loads a prepared k-shot file as the train split. Fields: `.name`, \
          `.n_train`, `.n_test`, `.labels`.",
    params: &[
        Param::req("path", Ty::Path, "Task directory, or one JSONL/TSV/CSV file."),
        Param::opt("name", Ty::Opt(&Ty::Str), Const::None, "Task name (default: the directory name)."),
        Param::opt("test", Ty::Str, Const::Str("test"), TEST_DOC),
        Param::opt("train", Ty::Str, Const::Str("train"), "Train split file stem or relative path."),
    ],
    returns: Ty::Task,
    ret_fn: None,
    examples: &[
        "let t = load task(\"experiments/data/movies\")\nlet n = t.n_train",
        "let t = load task(\"experiments/data/topics\", name=\"topics\", test=\"test\")\nlet labels = t.labels",
    ],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

static SIG_MANY: Signature = Signature {
    id: "load.tasks",
    version: 1,
    summary: "Load several tasks from subdirectories of one directory.",
    doc: "`names` lists the subdirectories to load, in order; empty loads every subdirectory that \
          has a `labels.json`, sorted by name. Each is read as by `load task`.",
    params: &[
        Param::req("dir", Ty::Path, "Directory whose subdirectories are tasks."),
        Param::opt("names", Ty::List(&Ty::Str), Const::EmptyList, "Task subdirectories (empty: all)."),
        Param::opt("test", Ty::Str, Const::Str("test"), TEST_DOC),
    ],
    returns: Ty::List(&Ty::Task),
    ret_fn: None,
    examples: &[
        "let ts = load tasks(\"experiments/data\", names=[\"movies\", \"products\"])\nlet first = ts[0].name",
        "let all = load tasks(\"experiments/data\")",
    ],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

fn options(args: &Args, name: Option<String>) -> Result<ReadOptions, OpError> {
    let train = match args.get("train") {
        Ok(_) => args.str("train")?.to_string(),
        Err(_) => "train".to_string(),
    };
    Ok(ReadOptions {
        name,
        train,
        test: args.str("test")?.to_string(),
    })
}

impl Operator for LoadTask {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let name = match args.get("name")? {
            Value::None => None,
            _ => Some(args.str("name")?.to_string()),
        };
        let task = TaskData::open(Path::new(args.str("path")?), &options(args, name)?)?;
        task_value(cx, &task)
    }
}

/// Subdirectories of `dir` that hold a `labels.json`, sorted.
fn task_dirs(dir: &Path) -> Result<Vec<String>, OpError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        OpError::new(
            "smelt::io::missing_file",
            format!("cannot read `{}`: {e}", dir.display()),
        )
        .with_help(
            "check the path (relative paths are resolved from the directory you run smelt in)",
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let p = entry?.path();
        if p.join("labels.json").is_file() {
            names.extend(p.file_name().map(|f| f.to_string_lossy().to_string()));
        }
    }
    names.sort();
    Ok(names)
}

impl Operator for LoadTasks {
    fn signature(&self) -> &'static Signature {
        &SIG_MANY
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let dir = Path::new(args.str("dir")?);
        let mut names = Vec::new();
        for v in args.list("names")? {
            let s = v
                .as_str()
                .ok_or_else(|| OpError::new("smelt::run::argument", "`names` must be strings"))?;
            names.push(s.to_string());
        }
        if names.is_empty() {
            names = task_dirs(dir)?;
            if names.is_empty() {
                return Err(OpError::new(
                    LAYOUT,
                    format!("no task directories in `{}`", dir.display()),
                )
                .with_help(LAYOUT_HELP));
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let task = TaskData::open(&dir.join(name), &options(args, Some(name.clone()))?)?;
            // Each task gets its own identity, so `ts[0]` and `ts[1]` key downstream nodes apart.
            let key = KeyBuilder::new()
                .key(&cx.key)
                .str(name)
                .u64(i as u64)
                .finish();
            let art = task_artifact(cx, &task, &format!("task-{i}"), key)?;
            out.push(Value::Artifact(Arc::new(art)));
        }
        Ok(Value::list(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(p)
            .display()
            .to_string()
    }

    #[test]
    fn loads_the_committed_synthetic_task() {
        let d = tempfile::tempdir().unwrap();
        let args = Args::new(vec![
            ("path", Value::str(repo("experiments/data/movies"))),
            ("name", Value::None),
            ("test", Value::str("test")),
            ("train", Value::str("train")),
        ]);
        let mut cx = OpCtx::for_test(d.path().to_path_buf(), 0);
        let v = LoadTask.run(&mut cx, &args).unwrap();
        let a = v.as_artifact().unwrap();
        assert_eq!(a.data["name"], "movies");
        assert!(
            a.dir.starts_with(d.path()),
            "copied into the node's directory"
        );
        assert_eq!(
            a.data["n_train"],
            TaskData::from_artifact(a).unwrap().train().len()
        );
    }

    #[test]
    fn loads_all_task_subdirectories_with_distinct_keys() {
        let d = tempfile::tempdir().unwrap();
        let args = Args::new(vec![
            ("dir", Value::str(repo("experiments/data"))),
            ("names", Value::list(vec![])),
            ("test", Value::str("test")),
        ]);
        let mut cx = OpCtx::for_test(d.path().to_path_buf(), 0);
        let v = LoadTasks.run(&mut cx, &args).unwrap();
        let ts: Vec<_> = v
            .as_list()
            .unwrap()
            .iter()
            .map(|t| t.as_artifact().unwrap().clone())
            .collect();
        let names: Vec<_> = ts
            .iter()
            .map(|a| a.data["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["movies", "products", "restaurants", "topics"]);
        assert_ne!(ts[0].key, ts[1].key);
        let bad = Args::new(vec![
            ("dir", Value::str(repo("experiments"))),
            ("names", Value::list(vec![Value::str("nope")])),
            ("test", Value::str("test")),
        ]);
        assert!(LoadTasks.run(&mut cx, &bad).is_err());
    }
}
