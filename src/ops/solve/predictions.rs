//! `Predictions` values: per-example class scores of one task split, with the gold labels.
//!
//! Produced by the kernel solvers (`solve …`) and scored by `evaluate`. Stored as
//! `predictions.json` in the node's directory; the artifact payload carries the task, split,
//! label, classes, solver facts and — for up to [`INLINE_MAX`] scores — the scores, predicted
//! and gold classes themselves, so small results need no file read. The predicted class is the
//! first maximum of an example's scores (as `argmax` everywhere else in smelt).

use super::CODE;
use crate::diag::OpError;
use crate::ops::OpCtx;
use crate::tensors::matrix::INLINE_MAX;
use crate::train::text_metrics::{mean_text_metric, TEXT_METRICS};
use crate::train::{accuracy, macro_f1, mcc};
use crate::value::{Artifact, Kind, Value};
use serde_json::{json, Map, Value as Json};
use std::sync::Arc;

pub const FILE: &str = "predictions.json";

#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub task: String,
    pub split: String,
    /// What produced them, e.g. `lstsq(kernel.sgd)`; the row label in `evaluate`.
    pub label: String,
    /// Class names (label words or indices), one per score column.
    pub classes: Vec<String>,
    /// One row of class scores per example.
    pub scores: Vec<Vec<f64>>,
    pub gold: Vec<u32>,
    /// Solver facts (parameters, chosen C, rank, training loss, …).
    pub meta: Map<String, Json>,
}

impl Predictions {
    /// The first maximum of each row.
    pub fn predicted(&self) -> Vec<u32> {
        self.scores
            .iter()
            .map(|row| {
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = k;
                    }
                }
                best as u32
            })
            .collect()
    }

    fn head(&self) -> Json {
        json!({
            "task": self.task,
            "split": self.split,
            "label": self.label,
            "classes": self.classes,
            "n": self.gold.len(),
            "meta": self.meta,
        })
    }

    pub fn to_json(&self) -> Json {
        let mut v = self.head();
        v["scores"] = json!(self.scores);
        v["pred"] = json!(self.predicted());
        v["gold"] = json!(self.gold);
        v
    }

    pub fn from_json(v: &Json) -> Result<Predictions, OpError> {
        let bad = |what: &str| {
            OpError::new(
                CODE,
                format!("predictions: `{what}` is missing or malformed"),
            )
            .with_help("the stored predictions are damaged; delete the node and re-run")
        };
        let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| bad(k));
        let scores: Vec<Vec<f64>> =
            serde_json::from_value(v["scores"].clone()).map_err(|_| bad("scores"))?;
        let gold: Vec<u32> = serde_json::from_value(v["gold"].clone()).map_err(|_| bad("gold"))?;
        let classes: Vec<String> =
            serde_json::from_value(v["classes"].clone()).map_err(|_| bad("classes"))?;
        if scores.len() != gold.len() || scores.iter().any(|r| r.len() != classes.len()) {
            return Err(bad("scores"));
        }
        Ok(Predictions {
            task: s("task")?,
            split: s("split")?,
            label: s("label")?,
            classes,
            scores,
            gold,
            meta: v["meta"].as_object().cloned().unwrap_or_default(),
        })
    }

    /// Writes `predictions.json` into the node's directory and returns the artifact.
    pub fn value(&self, cx: &OpCtx) -> Result<Value, OpError> {
        std::fs::create_dir_all(&cx.out_dir).map_err(|e| io(&cx.out_dir, e))?;
        let path = cx.out_dir.join(FILE);
        let full = self.to_json();
        std::fs::write(&path, serde_json::to_string(&full).expect("json"))
            .map_err(|e| io(&path, e))?;
        let cells: usize = self.scores.iter().map(Vec::len).sum();
        let data = if cells <= INLINE_MAX {
            full
        } else {
            self.head()
        };
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Predictions,
            dir: cx.out_dir.clone(),
            key: cx.key,
            data,
        })))
    }

    /// Reads the payload, or `predictions.json` when the scores were not inlined.
    pub fn from_artifact(a: &Artifact) -> Result<Predictions, OpError> {
        if a.data.get("scores").is_some() {
            return Predictions::from_json(&a.data);
        }
        let path = a.dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let v: Json = serde_json::from_str(&text).map_err(|e| {
            OpError::new(CODE, format!("{} is not valid JSON: {e}", path.display()))
        })?;
        Predictions::from_json(&v)
    }

    /// One metric: accuracy, macro_f1, mcc, ce_loss (mean cross-entropy of the scores as
    /// logits), or a text metric on the predicted and gold class names (equal to accuracy-like
    /// matching of the words, as `evaluate` does for encoders).
    pub fn metric(&self, name: &str) -> Result<f64, OpError> {
        if self.gold.is_empty() {
            return Err(OpError::new(CODE, "predictions hold no examples"));
        }
        let pred = self.predicted();
        match name {
            "accuracy" => accuracy(&pred, &self.gold),
            "macro_f1" => macro_f1(&pred, &self.gold),
            "mcc" => mcc(&pred, &self.gold),
            "ce_loss" => Ok(self.mean_ce()),
            m if TEXT_METRICS.contains(&m) => {
                let word = |l: u32| self.classes.get(l as usize).cloned().unwrap_or_default();
                let answers: Vec<String> = pred.iter().map(|&l| word(l)).collect();
                let gold: Vec<Vec<String>> = self.gold.iter().map(|&l| vec![word(l)]).collect();
                mean_text_metric(m, &answers, &gold)
            }
            m => Err(OpError::new(
                "smelt::eval::metric",
                format!("unknown metric `{m}`"),
            )),
        }
    }

    fn mean_ce(&self) -> f64 {
        let mut total = 0.0;
        for (z, &y) in self.scores.iter().zip(&self.gold) {
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
            total += lse - z[y as usize];
        }
        total / self.gold.len() as f64
    }
}

fn io(path: &std::path::Path, e: std::io::Error) -> OpError {
    OpError::new(CODE, format!("cannot access {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(scores: Vec<Vec<f64>>, gold: Vec<u32>) -> Predictions {
        Predictions {
            task: "toy".into(),
            split: "test".into(),
            label: "lstsq(kernel.sgd)".into(),
            classes: vec!["terrible".into(), "great".into()],
            scores,
            gold,
            meta: Map::new(),
        }
    }

    #[test]
    fn metrics_match_hand_counts() {
        // The tie [2, 2] goes to the first class: pred = [1, 0, 0, 1].
        let p = preds(
            vec![
                vec![0.0, 1.0],
                vec![3.0, -1.0],
                vec![2.0, 2.0],
                vec![-1.0, 0.5],
            ],
            vec![1, 0, 1, 0],
        );
        assert_eq!(p.predicted(), vec![1, 0, 0, 1]);
        // 2 of 4 right.
        assert_eq!(p.metric("accuracy").unwrap(), 0.5);
        // Class 0: tp 1, fp 1, fn 1 → F1 ½; class 1: same → macro ½.
        assert_eq!(p.metric("macro_f1").unwrap(), 0.5);
        // tp=1 tn=1 fp=1 fn=1 → MCC 0.
        assert_eq!(p.metric("mcc").unwrap(), 0.0);
        assert_eq!(p.metric("em").unwrap(), 0.5);
        let ce = [
            (1.0f64.exp() + 1.0).ln() - 1.0,
            (3.0f64.exp() + (-1.0f64).exp()).ln() - 3.0,
            2.0f64.ln(),
            ((-1.0f64).exp() + 0.5f64.exp()).ln() + 1.0,
        ];
        let want = ce.iter().sum::<f64>() / 4.0;
        assert!((p.metric("ce_loss").unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn round_trips_inline_and_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cx = OpCtx::for_test(dir.path().to_path_buf(), 0);
        let small = preds(vec![vec![0.1, 1.0 / 3.0]], vec![1]);
        let v = small.value(&cx).unwrap();
        let a = v.as_artifact().unwrap();
        assert!(a.data.get("scores").is_some());
        assert_eq!(Predictions::from_artifact(a).unwrap(), small);
        let big = preds(vec![vec![0.5, -0.25]; INLINE_MAX], vec![0; INLINE_MAX]);
        let v = big.value(&cx).unwrap();
        let a = v.as_artifact().unwrap();
        assert!(a.data.get("scores").is_none());
        assert_eq!(a.data["n"], json!(INLINE_MAX));
        assert_eq!(Predictions::from_artifact(a).unwrap(), big);
    }
}
