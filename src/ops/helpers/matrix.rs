//! `matrix(rows=[[…]], labels=[…])`: a `Matrix` from literal numbers — a task × task affinity
//! typed into a program (e.g. one copied from a paper), or a small test input for `cluster …`
//! and `plot heatmap`.
//!
//! A plain call, but a cached node (a Matrix lives in a directory, which only a node can
//! write). Rows must all have the same length. `labels` name the rows, and the columns too when
//! the matrix is square (a task × task matrix: both axes are called `task`); a non-square
//! matrix has `row` and `column` axes with unlabelled columns.

use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::{Axis, Matrix};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

pub struct MatrixLiteral;

static SIG: Signature = Signature {
    id: "matrix",
    version: 1,
    summary: "A Matrix from literal rows of numbers, optionally labelled (e.g. a task affinity).",
    doc: "`rows` is a list of equally long lists of numbers. `labels` (one per row) name the rows \
          and, for a square matrix, the columns too, so `cluster sdp(matrix(rows=…, \
          labels=[…]), k)` names its groups by them. `what` is recorded as the matrix's producer.",
    params: &[
        Param::req("rows", Ty::List(&Ty::List(&Ty::Float)), "The rows."),
        Param::opt(
            "labels",
            Ty::Opt(&Ty::List(&Ty::Str)),
            Const::None,
            "One name per row (and column, if square).",
        ),
        Param::opt(
            "what",
            Ty::Str,
            Const::Str("matrix"),
            "What the matrix is (shown in plots and errors).",
        ),
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let t = matrix(rows=[[1.0, 0.2], [0.3, 1.0]], labels=[\"cb\", \"rte\"])"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// The matrix the arguments describe.
pub fn literal(
    rows: &[Vec<f64>],
    labels: Option<Vec<String>>,
    what: &str,
) -> Result<Matrix, OpError> {
    let bad = |msg: String| {
        OpError::new("smelt::run::matrix_literal", msg)
            .with_help("write `matrix(rows=[[a, b], [c, d]], labels=[\"x\", \"y\"])`")
    };
    let cols = rows.first().map_or(0, |r| r.len());
    if rows.is_empty() || cols == 0 {
        return Err(bad("`matrix` needs at least one non-empty row".into()));
    }
    if let Some(i) = rows.iter().position(|r| r.len() != cols) {
        return Err(bad(format!(
            "row {i} has {} numbers but row 0 has {cols}",
            rows[i].len()
        )));
    }
    let labels = labels.unwrap_or_default();
    if !labels.is_empty() && labels.len() != rows.len() {
        return Err(bad(format!(
            "{} labels for {} rows",
            labels.len(),
            rows.len()
        )));
    }
    let square = cols == rows.len();
    let (row_axis, col_axis) = match square {
        true => (Axis::new("task", labels.clone()), Axis::new("task", labels)),
        false => (Axis::new("row", labels), Axis::unlabelled("column")),
    };
    Matrix::new(
        what,
        vec![rows.len(), cols],
        vec![row_axis, col_axis],
        rows.concat(),
    )
}

impl Operator for MatrixLiteral {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let rows: Vec<Vec<f64>> = args
            .list("rows")?
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.as_list()
                    .and_then(|xs| xs.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                    .ok_or_else(|| {
                        OpError::new(
                            "smelt::run::matrix_literal",
                            format!("row {i} of `matrix` is not a list of numbers"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let labels = match args.get("labels")? {
            Value::None => None,
            v => Some(
                v.as_list()
                    .unwrap_or(&[])
                    .iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect(),
            ),
        };
        let m = literal(&rows, labels, args.str("what")?)?;
        let dir = cx.out_dir.join("matrix");
        m.write(&dir)?;
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir,
            key: cx.key,
            data: m.artifact_data(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_matrices_label_both_axes_and_ragged_rows_are_refused() {
        let m = literal(
            &[vec![1.0, 2.0], vec![3.0, 4.0]],
            Some(vec!["cb".into(), "rte".into()]),
            "affinity",
        )
        .unwrap();
        assert_eq!(m.shape, vec![2, 2]);
        assert_eq!(m.get(1, 0), 3.0);
        assert_eq!(m.axes[1].labels, vec!["cb", "rte"]);
        let r = literal(&[vec![1.0, 2.0, 3.0]], Some(vec!["a".into()]), "m").unwrap();
        assert_eq!(
            (r.axes[0].name.as_str(), r.axes[1].labels.len()),
            ("row", 0)
        );
        let e = literal(&[vec![1.0], vec![1.0, 2.0]], None, "m").unwrap_err();
        assert!(e.message.contains("row 1 has 2"), "{}", e.message);
        assert!(literal(&[vec![1.0]], Some(vec![]), "m").is_ok());
        assert!(literal(&[vec![1.0]], Some(vec!["a".into(), "b".into()]), "m").is_err());
    }

    #[test]
    fn run_writes_a_matrix_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = OpCtx::for_test(dir.path().to_path_buf(), 0);
        let row = |xs: &[f64]| Value::list(xs.iter().map(|x| Value::Float(*x)).collect());
        let args = Args::new(vec![
            (
                "rows",
                Value::list(vec![row(&[1.0, 0.5]), row(&[0.5, 1.0])]),
            ),
            (
                "labels",
                Value::list(vec![Value::str("a"), Value::str("b")]),
            ),
            ("what", Value::str("affinity")),
        ]);
        let v = MatrixLiteral.run(&mut cx, &args).unwrap();
        let back = Matrix::read(&v.as_artifact().unwrap().dir).unwrap();
        assert_eq!(back.values, vec![1.0, 0.5, 0.5, 1.0]);
        assert_eq!(back.what, "affinity");
    }
}
