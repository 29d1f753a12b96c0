//! What a merged model keeps of its inputs' task heads and input formats.
//!
//! A model trained with a `cls` head (or a LoRA-with-head folded by `model apply`) keeps its
//! head in `heads.safetensors` and its tasks' input formats in `smelt.json`, beside the weights.
//! The weight merges stream `model.safetensors` only, so without this step a merged model
//! would lose every head and could no longer be evaluated on its tasks.
//!
//! Policy (the multi-task merging protocol of the Fisher and UBGM papers, where every task
//! keeps its own head): the merged model carries the **union** of its inputs' heads and
//! formats. A single-task head (`classifier.weight`) is renamed to its task
//! (`classifier.<task>.weight`) so heads of different tasks never collide. When several inputs
//! hold a head for the same task, the first input's is kept (inputs are in argument order: the
//! base first, then the models) and the choice is recorded in `smelt.json` under
//! `merge.heads` (task → input index) so nothing is silent. Heads are not averaged: a head is
//! specific to the features of the model it was trained with.

use crate::diag::OpError;
use crate::nn::peft::io::{read_json, read_safetensors, write_json, write_safetensors};
use crate::ops::train::runnable::INFO_FILE;
use crate::tensors::ModelDir;
use crate::train::delta::HEADS_FILE;
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The task a head tensor belongs to and its part (`weight`/`bias`), given the input's tasks.
fn head_key(name: &str, tasks: &[String]) -> Option<(String, String)> {
    let rest = name.strip_prefix("classifier.")?;
    match rest.rsplit_once('.') {
        Some((task, part)) => Some((task.to_string(), part.to_string())),
        // `classifier.weight` of a single-task model: its task is the only one it records.
        None if tasks.len() == 1 => Some((tasks[0].clone(), rest.to_string())),
        None => None,
    }
}

fn tasks_of(info: &Value) -> Vec<String> {
    info["tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies the union of the inputs' heads and formats into the merged model directory `out`;
/// returns the record written to its `smelt.json` (`Null` when no input has any).
pub fn carry_heads(inputs: &[ModelDir], out: &Path) -> Result<Value, OpError> {
    let mut heads: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut source: Map<String, Value> = Map::new();
    let mut formats: Map<String, Value> = Map::new();
    let mut tasks: Vec<String> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let dir = input.path();
        let info = read_json(&dir.join(INFO_FILE)).unwrap_or(Value::Null);
        let own_tasks = tasks_of(&info);
        if let Some(f) = info["formats"].as_object() {
            for (task, spec) in f {
                formats.entry(task.clone()).or_insert_with(|| spec.clone());
            }
        }
        let path = dir.join(HEADS_FILE);
        if !path.is_file() {
            continue;
        }
        let mut by_task: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, t) in read_safetensors(&path, &Device::Cpu)? {
            let Some((task, part)) = head_key(&name, &own_tasks) else {
                return Err(OpError::new(
                    "smelt::merge::head",
                    format!(
                        "{}: head tensor `{name}` names no task and the model records {} tasks",
                        path.display(),
                        own_tasks.len()
                    ),
                )
                .with_help("exclude the model's heads or re-train it with smelt"));
            };
            by_task.entry(task).or_default().push((part, t));
        }
        for (task, parts) in by_task {
            if source.contains_key(&task) {
                continue;
            }
            for (part, t) in parts {
                heads.insert(format!("classifier.{task}.{part}"), t);
            }
            source.insert(task.clone(), json!(i));
            tasks.push(task);
        }
    }
    if heads.is_empty() && formats.is_empty() {
        return Ok(Value::Null);
    }
    if !heads.is_empty() {
        write_safetensors(&out.join(HEADS_FILE), &heads, &[("format", "pt")])?;
    }
    let info = json!({
        "label": "merge",
        "tasks": tasks,
        "formats": formats,
        "merge": {"heads": source},
    });
    write_json(&out.join(INFO_FILE), &info)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::merge::testutil::tiny_model;
    use crate::tensors::header::Dtype;

    fn with_head(dir: &Path, task: &str, value: f32, single: bool) {
        tiny_model(dir, &[0.0; 4], &[0.0; 2], Dtype::F32);
        let name = |p: &str| match single {
            true => format!("classifier.{p}"),
            false => format!("classifier.{task}.{p}"),
        };
        let mut t = BTreeMap::new();
        t.insert(
            name("weight"),
            Tensor::new(&[[value; 3]], &Device::Cpu).unwrap(),
        );
        t.insert(name("bias"), Tensor::new(&[value], &Device::Cpu).unwrap());
        write_safetensors(&dir.join(HEADS_FILE), &t, &[]).unwrap();
        let info = json!({"tasks": [task], "formats": {task: {"head": "cls"}}});
        write_json(&dir.join(INFO_FILE), &info).unwrap();
    }

    #[test]
    fn union_of_heads_renamed_by_task_first_input_wins() {
        let t = tempfile::tempdir().unwrap();
        tiny_model(&t.path().join("base"), &[0.0; 4], &[0.0; 2], Dtype::F32);
        with_head(&t.path().join("a"), "movies", 1.0, true);
        with_head(&t.path().join("b"), "topics", 2.0, true);
        with_head(&t.path().join("c"), "movies", 3.0, false);
        let dirs: Vec<ModelDir> = ["base", "a", "b", "c"]
            .iter()
            .map(|d| ModelDir::open(t.path().join(d)).unwrap())
            .collect();
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let info = carry_heads(&dirs, &out).unwrap();
        assert_eq!(info["merge"]["heads"], json!({"movies": 1, "topics": 2}));
        assert_eq!(info["formats"]["topics"]["head"], "cls");
        let heads = read_safetensors(&out.join(HEADS_FILE), &Device::Cpu).unwrap();
        let names: Vec<_> = heads.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "classifier.movies.bias",
                "classifier.movies.weight",
                "classifier.topics.bias",
                "classifier.topics.weight"
            ]
        );
        let w: Vec<f32> = heads["classifier.movies.bias"].to_vec1().unwrap();
        assert_eq!(w, [1.0], "the first input holding a task's head wins");
    }

    #[test]
    fn inputs_without_heads_leave_nothing() {
        let t = tempfile::tempdir().unwrap();
        tiny_model(&t.path().join("a"), &[0.0; 4], &[0.0; 2], Dtype::F32);
        let dirs = vec![ModelDir::open(t.path().join("a")).unwrap()];
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        assert_eq!(carry_heads(&dirs, &out).unwrap(), Value::Null);
        assert!(!out.join(HEADS_FILE).exists() && !out.join(INFO_FILE).exists());
    }
}
