//! `similarity block(scores, block)`: one block's (or sub-layer's) target × source scores out of
//! a granular score array (`similarity grand(…, granularity=block|layer)`,
//! `similarity block_cosine`), as an ordinary score matrix.
//!
//! Paper 2's granularity analysis (methods.md §2.7) computes one weight vector per block from
//! that block's score and merges the *whole* delta with it; taking the slice here keeps
//! `merge softmax` and `similarity weights` unchanged: the slice carries the array's direction
//! and temperature and records which block it is (`meta.block` / `meta.layer`). The block is
//! named by its index or by its label (`"block 2"`, or a sub-layer's module name, as the
//! array's first axis lists them).

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

pub struct SimilarityBlock;

static SIG: Signature = Signature {
    id: "similarity.block",
    version: 1,
    summary: "One block's target × source scores from a per-block (or per-layer) score array.",
    doc: "Takes entry `block` (an index from 0, or a label such as \"block 2\") along the first \
          axis of a `[block|layer, target, source]` array from `similarity grand(…, \
          granularity=block|layer)` or `similarity block_cosine`, giving a target × source \
          matrix with the array's sign and temperature, ready for `merge softmax` and \
          `similarity weights` (methods.md §2.7: each block's weights merge the whole delta).",
    params: &[
        Param::req("scores", Ty::Matrix, "A [block|layer, target, source] score array."),
        Param::req("block", Ty::Either(&Ty::Int, &Ty::Str), "Index along the first axis (from 0), or its label."),
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet per_block = similarity grand(loras, ts, granularity=block)\nlet inits = [merge softmax(loras, similarity block(per_block, b), target=ts[0].name) for b in range(3)]"],
    reference: Some("Lv et al. (ACL 2023), granularity analysis; methods.md §2.7"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// The first-axis index that `block` (an index or a label) names in `m`.
pub fn block_index(m: &Matrix, block: &Value) -> Result<usize, OpError> {
    let axis = m.axes.first().map(|a| a.name.as_str()).unwrap_or("first");
    if m.shape.len() != 3 {
        return Err(OpError::new(
            "smelt::run::argument",
            format!(
                "`{}` is a rank-{} array, not a [block, target, source] score array",
                m.what,
                m.shape.len()
            ),
        )
        .with_help("compute scores with granularity=block or granularity=layer"));
    }
    let labels = &m.axes[0].labels;
    let i = match block {
        Value::Int(i) if *i >= 0 && (*i as usize) < m.shape[0] => *i as usize,
        Value::Int(i) => {
            return Err(OpError::new(
                "smelt::run::argument",
                format!(
                    "{axis} {i} is out of range: the scores have {} {axis}s",
                    m.shape[0]
                ),
            )
            .with_help(format!("use 0..{}", m.shape[0].saturating_sub(1))))
        }
        Value::Str(s) => labels.iter().position(|l| l == s.as_ref()).ok_or_else(|| {
            OpError::new(
                "smelt::run::argument",
                format!("`{s}` is not a {axis} of the scores"),
            )
            .with_help(format!("{axis}s: {}", labels.join(", ")))
        })?,
        _ => {
            return Err(OpError::new(
                "smelt::run::argument",
                "`block` must be an index or a label",
            ))
        }
    };
    Ok(i)
}

impl Operator for SimilarityBlock {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let a = args.artifact("scores", Kind::Matrix)?;
        let m = Matrix::read(&a.dir)?;
        let i = block_index(&m, args.get("block")?)?;
        let s = m.slice(i)?;
        let dir = cx.out_dir.join("matrix");
        s.write(&dir)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir,
            key: cx.key,
            data: s.artifact_data(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::matrix::Axis;

    fn array(dir: &std::path::Path) -> Value {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = Matrix::new(
            "similarity.grand",
            vec![2, 2, 2],
            vec![
                Axis::new("block", l(&["block 0", "block 1"])),
                Axis::new("target", l(&["a", "b"])),
                Axis::new("source", l(&["a", "b"])),
            ],
            vec![f64::NAN, 1.0, 2.0, f64::NAN, f64::NAN, 3.0, 4.0, f64::NAN],
        )
        .unwrap()
        .with_meta("sign", serde_json::json!("negative"));
        m.write(dir).unwrap();
        Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir: dir.to_path_buf(),
            key: crate::cache::Key::of_bytes(b"array"),
            data: m.artifact_data(),
        }))
    }

    fn run(t: &std::path::Path, scores: &Value, block: Value) -> Result<Matrix, OpError> {
        let args = Args::new(vec![("scores", scores.clone()), ("block", block)]);
        let v = SimilarityBlock.run(&mut OpCtx::for_test(t.join("out"), 0), &args)?;
        Matrix::read(&v.as_artifact().unwrap().dir)
    }

    #[test]
    fn slices_by_index_and_label_keeping_the_direction() {
        let t = tempfile::tempdir().unwrap();
        let s = array(&t.path().join("m"));
        let by_index = run(t.path(), &s, Value::Int(1)).unwrap();
        assert_eq!(by_index.shape, vec![2, 2]);
        assert_eq!(by_index.get(0, 1), 3.0);
        assert_eq!(by_index.get(1, 0), 4.0);
        assert_eq!(by_index.meta["sign"], "negative");
        assert_eq!(by_index.meta["block"], "block 1");
        assert_eq!(by_index.axes[0].labels, vec!["a", "b"]);
        let by_label = run(t.path(), &s, Value::str("block 0")).unwrap();
        assert_eq!(by_label.get(0, 1), 1.0);
    }

    #[test]
    fn bad_blocks_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let s = array(&t.path().join("m"));
        let e = run(t.path(), &s, Value::Int(2)).unwrap_err();
        assert!(e.message.contains("out of range"), "{}", e.message);
        let e = run(t.path(), &s, Value::str("block 9")).unwrap_err();
        assert!(e.help.as_deref().unwrap().contains("block 0, block 1"));
    }
}
