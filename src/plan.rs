//! `smelt plan`: the DAG with each node marked cached / to run, and a cost estimate from
//! headers only (bytes of tensor data read, peak memory of a streamed merge).

use crate::eval::{Node, Status};
use crate::tensors::merge::CHUNK;
use crate::tensors::model_dir::ModelDir;
use crate::types::Type;
use crate::value::{Kind, Value};

/// Merges whose combine needs a whole tensor at once (the others stream large ones in parts).
const WHOLE_TENSOR_MERGES: &[&str] = &["merge.slerp"];

/// Cost estimate of one node from its realised model inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub bytes_read: u64,
    /// Peak working memory of a streamed pass: the merge engine keeps two f32 buffers (one per
    /// thread) for each input and the output: 2 × (inputs + 1) × the largest unit, where a unit
    /// is the largest tensor, or for the merges that stream large tensors in parts at most
    /// [`CHUNK`] elements.
    pub peak_bytes: u64,
    pub known: bool,
}

pub fn estimate(node: &Node) -> Estimate {
    let mut dirs = Vec::new();
    let mut unknown = false;
    fn walk(v: &Value, dirs: &mut Vec<std::path::PathBuf>, unknown: &mut bool) {
        match v {
            // Fishers are model-shaped weight files and stream beside the models.
            Value::Artifact(a) if matches!(a.kind, Kind::Model | Kind::Fisher) => {
                dirs.push(a.dir.clone())
            }
            Value::Node(n) if matches!(n.ty, Type::Model | Type::Fisher) => *unknown = true,
            Value::List(xs) | Value::Tuple(xs) => xs.iter().for_each(|x| walk(x, dirs, unknown)),
            _ => {}
        }
    }
    node.args
        .values
        .iter()
        .for_each(|(_, v)| walk(v, &mut dirs, &mut unknown));
    let mut e = Estimate {
        known: !unknown,
        ..Default::default()
    };
    let mut largest = 0u64;
    for d in &dirs {
        if let Ok(m) = ModelDir::open(d) {
            e.bytes_read += m.data_bytes();
            largest = largest.max(
                m.tensors()
                    .values()
                    .map(|(_, t)| t.numel() as u64)
                    .max()
                    .unwrap_or(0),
            );
        }
    }
    if node.op.starts_with("merge.") && !WHOLE_TENSOR_MERGES.contains(&node.op) {
        largest = largest.min(CHUNK as u64);
    }
    e.peak_bytes = 2 * largest * 4 * (dirs.len() as u64 + 1);
    e
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1000.0 && i < UNITS.len() - 1 {
        x /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[i])
    }
}

/// One line per node: status, operator, key, where, estimate.
pub fn render(nodes: &[Node], sources: &crate::source::SourceMap) -> String {
    let mut out = String::new();
    let (mut to_run, mut cached) = (0, 0);
    for n in nodes {
        let status = match n.status {
            Status::Cached => {
                cached += 1;
                "cached"
            }
            Status::Dry => "header",
            _ => {
                to_run += 1;
                "to run"
            }
        };
        let est = estimate(n);
        let cost = if est.bytes_read > 0 {
            format!(
                "reads {}, peak ~{}",
                human_bytes(est.bytes_read),
                human_bytes(est.peak_bytes)
            )
        } else if !est.known {
            "inputs computed upstream".into()
        } else {
            String::new()
        };
        out += &format!(
            "{status:<7} {:<24} {}  {:<28} {cost}\n",
            n.op,
            n.key.short(),
            sources.location(n.span)
        );
    }
    out += &format!("{} nodes: {cached} cached, {to_run} to run\n", nodes.len());
    out
}
