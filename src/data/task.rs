//! [`TaskData`]: a classification task in memory (label space, pair flag, named splits), saved
//! to / loaded from a directory (`labels.json` + one JSONL file per split) so a `Task` artifact
//! in the store is self-contained.
//!
//! A `Task` artifact's JSON payload ([`TaskData::summary`]) carries the fields the language
//! exposes (`name`, `n_train`, `n_test`, `labels`) plus `pair`, `n_dev`, `train_dist` and
//! `files` (split → file relative to the artifact's directory), which is all
//! [`TaskData::from_artifact`] needs to read the examples back from the artifact's directory
//! (for the built-in operators always their store object: `load task` copies its input there).
//! Reading the shared layout and TSV/CSV files is [`super::layout`]'s job.

use super::layout::read_labels_json;
pub use super::layout::{Layout, ReadOptions};
use crate::diag::OpError;
use crate::value::{Artifact, Kind};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// One labelled example. `id` is stable through sampling (its index in the file it was read
/// from, or an explicit `id` field), so per-example results can be joined back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub id: usize,
    pub text: String,
    pub text_b: Option<String>,
    pub label: usize,
}

/// A classification task: label names (index = label id), whether inputs are sentence pairs,
/// and splits by name (`train`, `dev`, `test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskData {
    pub name: String,
    pub labels: Vec<String>,
    pub is_pair: bool,
    pub splits: BTreeMap<String, Vec<Example>>,
}

/// One JSONL line as the store writes it (`id` only when it differs from the line index).
fn example_json(e: &Example, labels: &[String], index: usize) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if e.id != index {
        m.insert("id".into(), json!(e.id));
    }
    m.insert("text".into(), json!(e.text));
    if let Some(b) = &e.text_b {
        m.insert("text_b".into(), json!(b));
    }
    m.insert("label".into(), json!(e.label));
    m.insert("label_text".into(), json!(labels.get(e.label)));
    serde_json::Value::Object(m)
}

impl TaskData {
    pub fn new(name: impl Into<String>, labels: Vec<String>, is_pair: bool) -> TaskData {
        TaskData {
            name: name.into(),
            labels,
            is_pair,
            splits: BTreeMap::new(),
        }
    }

    /// Read a task directory or file (see [`Layout::locate`]).
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<TaskData, OpError> {
        Layout::locate(path, opts)?.read()
    }

    /// Read the task a `Task` artifact describes.
    pub fn from_artifact(a: &Artifact) -> Result<TaskData, OpError> {
        let corrupt = || {
            OpError::new(
                "smelt::cache::corrupt",
                format!("task artifact {} is unreadable", a.key.short()),
            )
            .with_help("`smelt cache gc` removes damaged objects; re-run to rebuild it")
        };
        if a.kind != Kind::Task {
            return Err(OpError::new(
                "smelt::run::argument",
                format!("expected a Task, got a {:?}", a.kind),
            ));
        }
        let d = &a.data;
        let files = d["files"]
            .as_object()
            .ok_or_else(corrupt)?
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(corrupt)?;
        let labels: Vec<String> =
            serde_json::from_value(d["labels"].clone()).map_err(|_| corrupt())?;
        let layout = Layout {
            dir: a.dir.clone(),
            name: d["name"].as_str().ok_or_else(corrupt)?.to_string(),
            files,
            labels: Some(labels),
            pair: Some(d["pair"].as_bool().ok_or_else(corrupt)?),
        };
        layout.read()
    }

    /// The examples of a split (empty when the task has no such split).
    pub fn split(&self, name: &str) -> &[Example] {
        self.splits.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn train(&self) -> &[Example] {
        self.split("train")
    }

    pub fn dev(&self) -> &[Example] {
        self.split("dev")
    }

    pub fn test(&self) -> &[Example] {
        self.split("test")
    }

    /// Number of examples per label in a split.
    pub fn label_counts(&self, split: &str) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for e in self.split(split) {
            if let Some(c) = counts.get_mut(e.label) {
                *c += 1;
            }
        }
        counts
    }

    /// The artifact payload: language-visible fields plus what [`TaskData::from_artifact`] needs.
    pub fn summary(&self, files: &BTreeMap<String, String>) -> serde_json::Value {
        json!({
            "name": self.name,
            "n_train": self.train().len(),
            "n_dev": self.dev().len(),
            "n_test": self.test().len(),
            "labels": self.labels,
            "pair": self.is_pair,
            "train_dist": self.label_counts("train"),
            "files": files,
        })
    }

    /// Write `labels.json` and one `<split>.jsonl` per split into `dir`; returns the payload
    /// ([`TaskData::summary`]) describing the written directory.
    pub fn save(&self, dir: &Path) -> Result<serde_json::Value, OpError> {
        std::fs::create_dir_all(dir)?;
        let labels = json!({ "labels": self.labels, "pair": self.is_pair });
        std::fs::write(dir.join("labels.json"), format!("{labels}\n"))?;
        let mut files = BTreeMap::new();
        for (split, examples) in &self.splits {
            let mut text = String::new();
            for (i, e) in examples.iter().enumerate() {
                text.push_str(&example_json(e, &self.labels, i).to_string());
                text.push('\n');
            }
            let file = format!("{split}.jsonl");
            std::fs::write(dir.join(&file), text)?;
            files.insert(split.clone(), file);
        }
        Ok(self.summary(&files))
    }

    /// Read a directory written by [`TaskData::save`]: `labels.json` and every `*.jsonl` (the
    /// file stem is the split name); the task is named after the directory unless `name` is set.
    pub fn load(dir: &Path, name: Option<&str>) -> Result<TaskData, OpError> {
        let (labels, pair) = read_labels_json(&dir.join("labels.json"))?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "jsonl") {
                if let (Some(stem), Some(file)) = (p.file_stem(), p.file_name()) {
                    files.insert(
                        stem.to_string_lossy().to_string(),
                        file.to_string_lossy().to_string(),
                    );
                }
            }
        }
        let name = name.map(str::to_string).unwrap_or_else(|| {
            dir.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        });
        Layout {
            dir: dir.to_path_buf(),
            name,
            files,
            labels: Some(labels),
            pair,
        }
        .read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TaskData {
        let mut t = TaskData::new("tiny", vec!["neg".into(), "pos".into()], false);
        let ex = |id, text: &str, label| Example {
            id,
            text: text.into(),
            text_b: None,
            label,
        };
        t.splits.insert(
            "train".into(),
            vec![ex(0, "bad", 0), ex(1, "good \"x\"", 1), ex(2, "fine", 1)],
        );
        t.splits.insert("test".into(), vec![ex(0, "awful", 0)]);
        t
    }

    #[test]
    fn save_load_round_trip_and_summary() {
        let d = tempfile::tempdir().unwrap();
        let t = tiny();
        let summary = t.save(d.path()).unwrap();
        assert_eq!(summary["n_train"], 3);
        assert_eq!(summary["n_test"], 1);
        assert_eq!(summary["train_dist"], json!([1, 2]));
        assert_eq!(summary["files"]["train"], "train.jsonl");
        let back = TaskData::load(d.path(), Some("tiny")).unwrap();
        assert_eq!(back, t);
        let art = Artifact {
            kind: Kind::Task,
            dir: d.path().to_path_buf(),
            key: crate::cache::Key::of_bytes(b"t"),
            data: summary,
        };
        assert_eq!(TaskData::from_artifact(&art).unwrap(), t);
    }
}
