//! Ensembles: the storage behind the language's `Ensemble` values (methods.md §1.11).
//!
//! An ensemble is M members on one shared base — PEFT adapters bound to the same base model
//! (optionally run on a quantized copy of it), or full models of one architecture — with
//! weight vectors: a default vector and one vector per task. The ensemble's class scores on a
//! task are `z = Σ_m w_m · z_m` with that task's vector (its default vector for other tasks);
//! weights are used as given, never normalised (as `EnsembleLoRAModule`).
//!
//! Per-task vectors are independent copies: appending a member appends exactly one weight to
//! each vector (the paper's code aliased one list across tasks, so each append landed once per
//! task — methods.md §1.17). The directory holds `ensemble.json`; members stay where they are
//! (store objects or user directories), referenced by directory, key and artifact payload.

use crate::cache::Key;
use crate::diag::OpError;
use crate::value::{Artifact, Kind, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const FILE: &str = "ensemble.json";
pub const FORMAT: &str = "smelt-ensemble";
const CODE: &str = "smelt::run::ensemble";

/// One member: an `Adapter` or a `Model` artifact, by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// `"adapter"` or `"model"`.
    pub kind: String,
    pub dir: PathBuf,
    /// The artifact's key (hex).
    pub key: String,
    pub label: String,
    /// The artifact's payload (what loading it needs: base, formats, quantization).
    pub data: serde_json::Value,
}

/// The shared base model of an adapter ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    pub dir: PathBuf,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    pub format: String,
    /// Adapter ensembles: the base every adapter is bound to; `None` for full models.
    pub base: Option<BaseRef>,
    /// Quantization of the shared base (`"nf4"`/`"int8"`), as the adapters were trained.
    pub quant: Option<String>,
    pub members: Vec<Member>,
    /// Weights for tasks without their own vector.
    pub default_weights: Vec<f64>,
    /// One independent weight vector per task name.
    pub task_weights: BTreeMap<String, Vec<f64>>,
    /// What made it (one entry per boosting round, with ε, α or the residual summary).
    pub history: Vec<serde_json::Value>,
}

fn err(msg: impl Into<String>) -> OpError {
    OpError::new(CODE, msg)
}

impl Member {
    pub fn of(a: &Artifact) -> Result<Member, OpError> {
        let kind = match a.kind {
            Kind::Adapter => "adapter",
            Kind::Model => "model",
            k => {
                return Err(err(format!(
                    "an ensemble member must be an Adapter or a Model, got a {k:?}"
                )))
            }
        };
        Ok(Member {
            kind: kind.into(),
            dir: a.dir.clone(),
            key: a.key.hex(),
            label: crate::ops::train::runnable::label_of(a),
            data: a.data.clone(),
        })
    }

    /// The member as an artifact again (for loading).
    pub fn artifact(&self) -> Artifact {
        Artifact {
            kind: if self.kind == "model" {
                Kind::Model
            } else {
                Kind::Adapter
            },
            dir: self.dir.clone(),
            key: Key::from_hex(&self.key).unwrap_or_else(|| Key::of_bytes(self.key.as_bytes())),
            data: self.data.clone(),
        }
    }

    pub fn is_adapter(&self) -> bool {
        self.kind == "adapter"
    }
}

impl Ensemble {
    /// An ensemble of `members` with `default_weights` and per-task vectors (each checked to
    /// have one weight per member). Adapters must share one base and quantization; models must
    /// be all models (their shapes are checked when they are run).
    pub fn new(
        members: Vec<Member>,
        default_weights: Vec<f64>,
        task_weights: BTreeMap<String, Vec<f64>>,
    ) -> Result<Ensemble, OpError> {
        if members.is_empty() {
            return Err(err("an ensemble needs at least one member"));
        }
        let adapters = members.iter().filter(|m| m.is_adapter()).count();
        let (base, quant) = if adapters == 0 {
            (None, None)
        } else if adapters < members.len() {
            return Err(err("an ensemble holds adapters of one base or full models, not both")
                .with_help("apply the adapters to the base first (`model apply`) to mix them with full models"));
        } else {
            let base_of = |m: &Member| -> Result<BaseRef, OpError> {
                Ok(BaseRef {
                    dir: m.data["base"]["dir"]
                        .as_str()
                        .map(PathBuf::from)
                        .ok_or_else(|| {
                            err(format!(
                                "adapter {} does not record its base model",
                                m.label
                            ))
                            .with_help("load it with `load adapter(path, base=model)`")
                        })?,
                    key: m.data["base"]["key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
            };
            let b0 = base_of(&members[0])?;
            let q0 = members[0].data["quant"].as_str().map(str::to_string);
            for m in &members[1..] {
                let b = base_of(m)?;
                if b.key != b0.key && b.dir != b0.dir {
                    return Err(err(format!(
                        "adapters {} and {} are bound to different base models ({} and {})",
                        members[0].label,
                        m.label,
                        b0.dir.display(),
                        b.dir.display()
                    ))
                    .with_help("an adapter ensemble runs every adapter on one shared base"));
                }
                let q = m.data["quant"].as_str().map(str::to_string);
                if q != q0 {
                    return Err(err(format!(
                        "adapters {} and {} were trained on differently quantized bases ({q0:?}, {q:?})",
                        members[0].label, m.label
                    )));
                }
            }
            (Some(b0), q0)
        };
        let e = Ensemble {
            format: FORMAT.into(),
            base,
            quant,
            members,
            default_weights,
            task_weights,
            history: Vec::new(),
        };
        e.validate()?;
        Ok(e)
    }

    /// Every weight vector has one finite weight per member.
    pub fn validate(&self) -> Result<(), OpError> {
        let m = self.members.len();
        let vectors = std::iter::once(("default", &self.default_weights))
            .chain(self.task_weights.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, v) in vectors {
            if v.len() != m {
                return Err(err(format!(
                    "the {name} weight vector has {} weights for {m} members",
                    v.len()
                ))
                .with_help("give one weight per member, in member order"));
            }
            if v.iter().any(|w| !w.is_finite()) {
                return Err(err(format!(
                    "the {name} weight vector has a non-finite weight"
                )));
            }
        }
        Ok(())
    }

    /// The weight vector used for `task`.
    pub fn weights_for(&self, task: &str) -> &[f64] {
        self.task_weights.get(task).unwrap_or(&self.default_weights)
    }

    /// Appends a member with weight `w` in the default vector and in every task's vector
    /// (each vector grows by exactly one).
    pub fn push(&mut self, member: Member, w: f64) -> Result<(), OpError> {
        if self.base.is_some() != member.is_adapter() {
            return Err(err("the new member does not match the ensemble's kind"));
        }
        self.members.push(member);
        self.default_weights.push(w);
        for v in self.task_weights.values_mut() {
            v.push(w);
        }
        self.validate()
    }

    /// `Σ_m w_m · z_m` row by row, accumulated in f64 (`scores[m][i]` = member m's class
    /// scores of example i).
    pub fn combine(weights: &[f64], scores: &[Vec<Vec<f32>>]) -> Result<Vec<Vec<f32>>, OpError> {
        if weights.len() != scores.len() || scores.is_empty() {
            return Err(err(format!(
                "{} weights for {} members' scores",
                weights.len(),
                scores.len()
            )));
        }
        let n = scores[0].len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let c = scores[0][i].len();
            let mut acc = vec![0f64; c];
            for (w, s) in weights.iter().zip(scores) {
                let row = s
                    .get(i)
                    .filter(|r| r.len() == c)
                    .ok_or_else(|| err("members disagree on the number of examples or classes"))?;
                for (a, &z) in acc.iter_mut().zip(row) {
                    *a += w * z as f64;
                }
            }
            out.push(acc.into_iter().map(|x| x as f32).collect());
        }
        Ok(out)
    }

    /// Writes `dir/ensemble.json`. Members stored beside it (under `dir`'s parent, the node's
    /// output — boosting writes its new adapters there) are recorded relative to that parent,
    /// so the store can move the node's directory.
    pub fn write(&self, dir: &Path) -> Result<(), OpError> {
        std::fs::create_dir_all(dir)?;
        let mut e = self.clone();
        if let Some(parent) = dir.parent() {
            for m in &mut e.members {
                if let Ok(rel) = m.dir.strip_prefix(parent) {
                    m.dir = rel.to_path_buf();
                }
            }
        }
        let text = serde_json::to_string_pretty(&e)
            .map_err(|e| err(format!("cannot serialise the ensemble: {e}")))?;
        std::fs::write(dir.join(FILE), text)?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Ensemble, OpError> {
        let p = dir.join(FILE);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| err(format!("cannot read {}: {e}", p.display())))?;
        let mut e: Ensemble = serde_json::from_str(&text)
            .map_err(|e| err(format!("{} is not an ensemble: {e}", p.display())))?;
        if let Some(parent) = dir.parent() {
            for m in &mut e.members {
                if m.dir.is_relative() {
                    m.dir = parent.join(&m.dir);
                }
            }
        }
        e.validate()?;
        Ok(e)
    }

    /// The artifact payload: members' labels, the weights, the base.
    pub fn artifact_data(&self) -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT,
            "label": format!("ensemble({})", self.members.iter().map(|m| m.label.as_str()).collect::<Vec<_>>().join(", ")),
            "members": self.members.iter().map(|m| &m.label).collect::<Vec<_>>(),
            "base": self.base,
            "quant": self.quant,
            "default_weights": self.default_weights,
            "task_weights": self.task_weights,
            "rounds": self.history.len(),
        })
    }

    /// Writes the ensemble under `out/ensemble` and returns it as a value.
    pub fn value(&self, out: &Path, key: Key) -> Result<Value, OpError> {
        let dir = out.join("ensemble");
        self.write(&dir)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Ensemble,
            dir,
            key,
            data: self.artifact_data(),
        })))
    }

    pub fn from_artifact(a: &Artifact) -> Result<Ensemble, OpError> {
        if a.kind != Kind::Ensemble {
            return Err(err(format!("expected an Ensemble, got a {:?}", a.kind)));
        }
        Ensemble::read(&a.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(label: &str, base: &str) -> Member {
        Member {
            kind: "adapter".into(),
            dir: PathBuf::from(format!("/x/{label}")),
            key: Key::of_bytes(label.as_bytes()).hex(),
            label: label.into(),
            data: json!({"base": {"dir": base, "key": base}}),
        }
    }

    #[test]
    fn per_task_vectors_grow_independently_and_round_trip() {
        let mut tw = BTreeMap::new();
        tw.insert("a".to_string(), vec![1.0, 0.0]);
        tw.insert("b".to_string(), vec![0.0, 1.0]);
        let mut e = Ensemble::new(
            vec![member("m0", "/base"), member("m1", "/base")],
            vec![0.5, 0.5],
            tw,
        )
        .unwrap();
        e.push(member("m2", "/base"), 0.2).unwrap();
        // one weight appended per vector, never one per task (the aliasing bug of §1.17)
        assert_eq!(e.weights_for("a"), &[1.0, 0.0, 0.2]);
        assert_eq!(e.weights_for("b"), &[0.0, 1.0, 0.2]);
        assert_eq!(e.weights_for("other"), &[0.5, 0.5, 0.2]);
        let dir = tempfile::tempdir().unwrap();
        e.write(dir.path()).unwrap();
        assert_eq!(Ensemble::read(dir.path()).unwrap(), e);
        // members written beside the ensemble follow the directory when it moves
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        e.members[2].dir = a.join("round0/adapter");
        e.write(&a.join("ensemble")).unwrap();
        std::fs::rename(&a, &b).unwrap();
        let moved = Ensemble::read(&b.join("ensemble")).unwrap();
        assert_eq!(moved.members[2].dir, b.join("round0/adapter"));
        assert_eq!(moved.members[0].dir, e.members[0].dir);
        assert_eq!(e.members[2].artifact().key.hex(), e.members[2].key);
    }

    #[test]
    fn mismatches_are_errors() {
        let e = Ensemble::new(
            vec![member("m0", "/b1"), member("m1", "/b2")],
            vec![1.0; 2],
            BTreeMap::new(),
        );
        assert!(e.unwrap_err().message.contains("different base"));
        let e = Ensemble::new(vec![member("m0", "/b")], vec![1.0, 2.0], BTreeMap::new());
        assert!(e.unwrap_err().message.contains("2 weights for 1 members"));
        assert!(Ensemble::new(vec![], vec![], BTreeMap::new()).is_err());
    }

    #[test]
    fn combine_is_the_weighted_sum() {
        let s = vec![
            vec![vec![1.0f32, 2.0], vec![0.0, -1.0]],
            vec![vec![3.0f32, -4.0], vec![2.0, 2.0]],
        ];
        let z = Ensemble::combine(&[0.5, 2.0], &s).unwrap();
        assert_eq!(z, vec![vec![6.5, -7.0], vec![4.0, 3.5]]);
        assert!(Ensemble::combine(&[1.0], &s).is_err());
    }
}
