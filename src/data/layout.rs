//! Where a task's examples live: locating the splits of a task directory (or a single file)
//! and reading them into a [`TaskData`], resolving labels and checking the pair flag line by
//! line, so every error names the file and the line.
//!
//! Directory layout (the shared one): `labels.json`, `train.*`, `test.*` (falling back to
//! `test_1k.*`), optional `dev.*`, each `.jsonl`, `.tsv` or `.csv`. A single file is a train-only
//! task whose label space comes from a `labels.json` beside it or is inferred from the file.

use super::read::{infer_labels, read_rows, resolve_label, Format};
use super::task::{Example, TaskData};
use super::{BAD_FILE, LAYOUT, LAYOUT_HELP};
use crate::diag::OpError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which files make up a task directory (`load task(path, name=…, train=…, test=…)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// Task name; default: the directory name (or the file stem).
    pub name: Option<String>,
    /// Train split file stem (or relative path), e.g. `train` or `k-shot/16-42`.
    pub train: String,
    /// Test split file stem; `test` falls back to `test_1k` when `test.*` is absent.
    pub test: String,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            name: None,
            train: "train".into(),
            test: "test".into(),
        }
    }
}

/// Where a task's examples live: a directory, one file per split, and what is known about the
/// label space before reading (`labels.json`, or an artifact's payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub name: String,
    /// Split name → file path relative to `dir`.
    pub files: BTreeMap<String, String>,
    /// `None`: infer from the train split (single files without `labels.json`).
    pub labels: Option<Vec<String>>,
    /// `None`: a pair task when the train split has `text_b`.
    pub pair: Option<bool>,
}

/// The file for split `stem` in `dir`: `stem` itself when it has an extension, else the first
/// of `stem.jsonl`, `stem.tsv`, `stem.csv` that exists.
fn find_split(dir: &Path, stem: &str) -> Option<String> {
    if Format::of(Path::new(stem)).is_some() && dir.join(stem).is_file() {
        return Some(stem.to_string());
    }
    Format::EXTENSIONS
        .iter()
        .map(|e| format!("{stem}.{e}"))
        .find(|f| dir.join(f).is_file())
}

/// Parse `labels.json`: `{"labels": [...], "pair": bool}` or a bare list of names.
pub(super) fn read_labels_json(path: &Path) -> Result<(Vec<String>, Option<bool>), OpError> {
    let bad = |what: String| OpError::new(BAD_FILE, what).with_help(LAYOUT_HELP);
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read `{}`: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("`{}` is not valid JSON ({e})", path.display())))?;
    let (list, pair) = match &v {
        serde_json::Value::Array(_) => (&v, None),
        serde_json::Value::Object(o) => (&o["labels"], o.get("pair").and_then(|p| p.as_bool())),
        _ => (&serde_json::Value::Null, None),
    };
    let labels: Option<Vec<String>> = list
        .as_array()
        .and_then(|xs| xs.iter().map(|x| x.as_str().map(str::to_string)).collect());
    match labels {
        Some(l) if !l.is_empty() => Ok((l, pair)),
        _ => Err(bad(format!(
            "`{}` has no non-empty list of label names",
            path.display()
        ))),
    }
}

impl Layout {
    /// Locate a task: a directory in the shared layout, or a single JSONL/TSV/CSV file (then the
    /// file is the train split and `labels.json` beside it is optional).
    pub fn locate(path: &Path, opts: &ReadOptions) -> Result<Layout, OpError> {
        if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let labels_json = dir.join("labels.json");
            let (labels, pair) = if labels_json.is_file() {
                let (l, p) = read_labels_json(&labels_json)?;
                (Some(l), p)
            } else {
                (None, None)
            };
            let parent = || dir.file_name().map(|f| f.to_string_lossy().to_string());
            let name = match &opts.name {
                Some(n) => n.clone(),
                // `sst2/train.jsonl` is the task `sst2`, `reviews.tsv` the task `reviews`.
                None if ["train", "dev", "test"].contains(&stem.as_str()) => {
                    parent().unwrap_or(stem)
                }
                None => stem,
            };
            let files = BTreeMap::from([("train".to_string(), file)]);
            return Ok(Layout {
                dir,
                name,
                files,
                labels,
                pair,
            });
        }
        if !path.is_dir() {
            return Err(OpError::new(
                "smelt::io::missing_file",
                format!("no task file or directory at `{}`", path.display()),
            )
            .with_help(LAYOUT_HELP));
        }
        let labels_json = path.join("labels.json");
        if !labels_json.is_file() {
            return Err(
                OpError::new(LAYOUT, format!("no labels.json in `{}`", path.display()))
                    .with_help(LAYOUT_HELP),
            );
        }
        let (labels, pair) = read_labels_json(&labels_json)?;
        let missing = |split: &str, stem: &str| {
            OpError::new(
                LAYOUT,
                format!(
                    "no {split} split in `{}` (looked for {stem}.jsonl, {stem}.tsv, {stem}.csv)",
                    path.display()
                ),
            )
            .with_help(LAYOUT_HELP)
        };
        let mut files = BTreeMap::new();
        let train = find_split(path, &opts.train).ok_or_else(|| missing("train", &opts.train))?;
        files.insert("train".to_string(), train);
        let test = find_split(path, &opts.test)
            .or_else(|| {
                (opts.test == "test")
                    .then(|| find_split(path, "test_1k"))
                    .flatten()
            })
            .ok_or_else(|| missing("test", &opts.test))?;
        files.insert("test".to_string(), test);
        if let Some(dev) = find_split(path, "dev") {
            files.insert("dev".to_string(), dev);
        }
        let name = opts.name.clone().unwrap_or_else(|| {
            let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            canon
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        });
        Ok(Layout {
            dir: path.to_path_buf(),
            name,
            files,
            labels: Some(labels),
            pair,
        })
    }

    /// Read every split, resolving labels and checking the pair flag line by line.
    pub fn read(&self) -> Result<TaskData, OpError> {
        let mut raw = BTreeMap::new();
        for (split, file) in &self.files {
            let path = self.dir.join(file);
            raw.insert(split.clone(), (read_rows(&path)?, path));
        }
        let labels = match &self.labels {
            Some(l) => l.clone(),
            None => infer_labels(raw.get("train").map(|(r, _)| r.as_slice()).unwrap_or(&[])),
        };
        let is_pair = self.pair.unwrap_or_else(|| {
            raw.get("train")
                .is_some_and(|(rows, _)| rows.iter().any(|r| r.text_b.is_some()))
        });
        let mut splits = BTreeMap::new();
        for (split, (rows, path)) in raw {
            let mut examples = Vec::with_capacity(rows.len());
            for (i, r) in rows.into_iter().enumerate() {
                let label = resolve_label(&r.label, &labels, &path, r.line)?;
                if is_pair != r.text_b.is_some() {
                    let what = if is_pair {
                        "has no `text_b`, but this is a pair task"
                    } else {
                        "has a `text_b`, but this is a single-sentence task"
                    };
                    return Err(OpError::new(
                        BAD_FILE,
                        format!("line {} of `{}` {what}", r.line, path.display()),
                    )
                    .with_help("set \"pair\" in labels.json to match the data"));
                }
                examples.push(Example {
                    id: r.id.unwrap_or(i),
                    text: r.text,
                    text_b: r.text_b,
                    label,
                });
            }
            splits.insert(split, examples);
        }
        Ok(TaskData {
            name: self.name.clone(),
            labels,
            is_pair,
            splits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_layout_errors_have_help() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("train.jsonl"),
            "{\"text\": \"a\", \"label\": 0}\n",
        )
        .unwrap();
        let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
        assert_eq!(e.code, LAYOUT);
        assert!(e.message.contains("labels.json") && e.help.unwrap().contains("train.jsonl"));
        std::fs::write(d.path().join("labels.json"), "[\"a\", \"b\"]").unwrap();
        let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
        assert!(e.message.contains("no test split"), "{}", e.message);
        std::fs::write(
            d.path().join("test_1k.jsonl"),
            "{\"text\": \"b\", \"text_b\": \"c\", \"label\": 1}\n",
        )
        .unwrap();
        let e = TaskData::open(d.path(), &ReadOptions::default()).unwrap_err();
        assert!(
            e.message.contains("line 1 of") && e.message.contains("text_b"),
            "{}",
            e.message
        );
    }

    #[test]
    fn single_tsv_file_infers_labels() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("reviews.tsv");
        std::fs::write(&f, "text\tlabel\nnice\tpos\nbad\tneg\n").unwrap();
        let t = TaskData::open(&f, &ReadOptions::default()).unwrap();
        assert_eq!(t.name, "reviews");
        assert_eq!(t.labels, vec!["neg", "pos"]);
        assert_eq!(t.train()[0].label, 1);
        assert!(t.test().is_empty());
    }
}
