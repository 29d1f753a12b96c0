//! Partitions of tasks into groups: the storage behind the language's `Partition` values.
//!
//! `cluster sdp|spectral|coclustering|kmeans` return one. A partition is a directory holding
//! `partition.json`: the groups (lists of task names, in the order the method found them), every
//! task that was clustered (the matrix's order), the method, the requested `k`, the objective
//! value, the solver's status and iteration count, and free-form metadata (e.g. the SDP's
//! relaxed solution X). The same JSON is the artifact payload, so `report p`, `groups(p, tasks)`
//! and `average_density(T, p)` never read the file. Groups are usually disjoint; spectral
//! co-clustering can put a task in two groups (its row and its column cluster), and says so
//! with `overlapping: true`.

use crate::diag::OpError;
use crate::report::Table;
use crate::value::Value;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

const CODE: &str = "smelt::run::partition";
pub const PARTITION_FORMAT: &str = "smelt-partition";
/// The file a `Partition` directory holds.
pub const PARTITION_FILE: &str = "partition.json";

/// Groups of tasks, with how they were found.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// The operator that produced it, e.g. `cluster.sdp`.
    pub method: String,
    /// The number of groups asked for (`None` for the size-penalised SDP).
    pub k: Option<usize>,
    /// Every clustered task, in the matrix's order.
    pub tasks: Vec<String>,
    /// The groups, each a list of task names.
    pub groups: Vec<Vec<String>>,
    /// The method's objective at its solution (⟨T, X⟩ for the SDP, inertia for k-means).
    pub objective: Option<f64>,
    /// The solver's final status (`solved`, `almost_solved`, `converged`, …).
    pub status: String,
    /// Solver iterations (interior-point steps, or Lloyd iterations of the best restart).
    pub iterations: usize,
    /// Free-form facts (penalty, restarts, the relaxed solution, …).
    pub meta: Map<String, Json>,
}

impl Partition {
    /// Do any two groups share a task?
    pub fn overlapping(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        self.groups
            .iter()
            .flatten()
            .any(|t| !seen.insert(t.as_str()))
    }

    /// Group index of every task (its first group), `None` for tasks in no group.
    pub fn assignment(&self) -> Vec<Option<usize>> {
        self.tasks
            .iter()
            .map(|t| self.groups.iter().position(|g| g.contains(t)))
            .collect()
    }

    pub fn to_json(&self) -> Json {
        json!({
            "format": PARTITION_FORMAT,
            "method": self.method,
            "k": self.k,
            "groups": self.groups,
            "tasks": self.tasks,
            "objective": self.objective.filter(|x| x.is_finite()),
            "solver": {"status": self.status, "iterations": self.iterations},
            "overlapping": self.overlapping(),
            "meta": self.meta,
        })
    }

    /// Reads the payload written by [`Partition::to_json`].
    pub fn from_json(j: &Json) -> Option<Partition> {
        if j.get("format")? != PARTITION_FORMAT {
            return None;
        }
        let strings = |v: &Json| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect()
        };
        Some(Partition {
            method: j.get("method")?.as_str()?.to_string(),
            k: j.get("k").and_then(Json::as_u64).map(|k| k as usize),
            tasks: strings(j.get("tasks")?)?,
            groups: j
                .get("groups")?
                .as_array()?
                .iter()
                .map(strings)
                .collect::<Option<_>>()?,
            objective: j.get("objective").and_then(Json::as_f64),
            status: j["solver"]["status"].as_str().unwrap_or("").to_string(),
            iterations: j["solver"]["iterations"].as_u64().unwrap_or(0) as usize,
            meta: j
                .get("meta")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Writes `partition.json` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), OpError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create", e))?;
        let path = dir.join(PARTITION_FILE);
        let text = serde_json::to_string_pretty(&self.to_json()).expect("json");
        std::fs::write(&path, text).map_err(|e| io_err(&path, "write", e))
    }

    /// Reads a partition written by [`Partition::write`].
    pub fn read(dir: &Path) -> Result<Partition, OpError> {
        let path = dir.join(PARTITION_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, "read", e))?;
        serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|j| Partition::from_json(&j))
            .ok_or_else(|| {
                OpError::new(CODE, format!("{} is not a smelt partition", path.display()))
                    .with_help("the partition directory is damaged; delete it and re-run")
            })
    }

    /// One row per group: its number (from 1), size and tasks.
    pub fn table(&self) -> Table {
        Table {
            columns: vec!["group".into(), "size".into(), "tasks".into()],
            rows: self
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    vec![
                        Value::Int(i as i64 + 1),
                        Value::Int(g.len() as i64),
                        Value::str(g.join(", ")),
                    ]
                })
                .collect(),
        }
    }
}

fn io_err(path: &Path, verb: &str, e: std::io::Error) -> OpError {
    OpError::new(CODE, format!("cannot {verb} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn sample() -> Partition {
        Partition {
            method: "cluster.sdp".into(),
            k: Some(2),
            tasks: names(&["cb", "rte", "copa", "wic"]),
            groups: vec![names(&["cb", "rte"]), names(&["copa", "wic"])],
            objective: Some(3.25),
            status: "solved".into(),
            iterations: 9,
            meta: Map::new(),
        }
    }

    #[test]
    fn round_trips_through_the_file_and_renders_one_row_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = sample();
        p.write(dir.path()).unwrap();
        let back = Partition::read(dir.path()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.assignment(), vec![Some(0), Some(0), Some(1), Some(1)]);
        let md = p.table().to_markdown();
        assert!(md.contains("| 1 "), "{md}");
        assert!(md.contains("copa, wic"), "{md}");
        assert!(!p.overlapping());
        let raw: Json = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(PARTITION_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["solver"]["iterations"], 9);
        assert_eq!(raw["groups"][1][0], "copa");
    }

    #[test]
    fn overlap_is_detected_and_damage_is_a_clear_error() {
        let mut p = sample();
        p.groups[1].push("rte".into());
        assert!(p.overlapping());
        assert_eq!(p.to_json()["overlapping"], true);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PARTITION_FILE), "{}").unwrap();
        let e = Partition::read(dir.path()).unwrap_err();
        assert!(e.message.contains("not a smelt partition"), "{}", e.message);
    }
}
