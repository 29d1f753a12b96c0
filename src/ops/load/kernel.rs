//! `load kernel(path)`: a kernel saved on disk, as the `Matrix` that `kernel sgd|signgd|
//! asym_signgd` return.
//!
//! Reads smelt's matrix directory (`matrix.json` + `matrix.safetensors`, f64 `values`
//! `[N_train, C, N_X, C]` with the side arrays `train_labels`, `eval_labels`, `train_f0`,
//! `eval_f0` and, for the asymmetric kernel, `flipped`), given directly or as the `matrix/`
//! folder inside it. The paper code's saved kernels (`{mode}_kernels_{task}.pt`,
//! methods.md §4.8) are `torch.save` pickles: they are not read (no torch-free reader); convert
//! them with `safetensors.numpy.save_file({"values": k.numpy()}, …)` plus a `matrix.json`, or
//! recompute with `kernel …`. Checks the layout (rank 4, square class axes, the side arrays'
//! lengths) so solvers get a consistent kernel.

use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct LoadKernel;

const CODE: &str = "smelt::io::bad_kernel";

static SIG: Signature = Signature {
    id: "load.kernel",
    version: 1,
    summary: "Load a kernel Matrix saved by smelt (matrix.json + matrix.safetensors).",
    doc: "Reads smelt's matrix directory (or its `matrix/` folder) holding a kernel \
          [N_train, C, N_X, C] with its side arrays (train/eval labels and f0, `flipped` for the \
          asymmetric kernel), as written by `kernel …` and `save`. The layout is checked. The \
          paper code's `.pt` kernels are torch pickles and are not read: recompute them, or \
          convert them to safetensors with a matrix.json.",
    params: &[Param::req(
        "path",
        Ty::Path,
        "A matrix directory holding a kernel (or a folder with it in `matrix/`).",
    )],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let k = load kernel(\"runs/kernels/sst2-16-13-train\")"],
    reference: Some("methods.md §4.8"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// The directory holding `matrix.json`: `path` or `path/matrix`.
fn locate(path: &Path) -> Result<PathBuf, OpError> {
    for dir in [path.to_path_buf(), path.join("matrix")] {
        if dir.join("matrix.json").is_file() {
            return Ok(dir);
        }
    }
    let torch = path.extension().is_some_and(|e| e == "pt");
    Err(OpError::new(
        "smelt::io::missing_file",
        format!("{}: no matrix.json here or in matrix/", path.display()),
    )
    .with_help(if torch {
        "the paper code's kernels are torch pickles, which smelt does not read: recompute with `kernel …` or convert to safetensors + matrix.json"
    } else {
        "point at the output of `kernel …` or `save` of a kernel"
    }))
}

/// Reads and checks a kernel matrix.
pub fn open_kernel(path: &Path) -> Result<(PathBuf, Matrix), OpError> {
    let dir = locate(path)?;
    let m = Matrix::read(&dir)?;
    let bad = |msg: String| {
        OpError::new(CODE, format!("{}: {msg}", dir.display()))
            .with_help("a kernel is [N_train, C, N_X, C] with train/eval labels and f0 side arrays")
    };
    let [nt, c, nx, c2] = m.shape[..] else {
        return Err(bad(format!("shape {:?} is not rank 4", m.shape)));
    };
    if c != c2 {
        return Err(bad(format!("class axes of {c} and {c2}")));
    }
    let want = [
        ("train_labels", vec![nt]),
        ("eval_labels", vec![nx]),
        ("train_f0", vec![nt, c]),
        ("eval_f0", vec![nx, c]),
    ];
    for (name, shape) in want {
        match m.extra.get(name) {
            Some((s, _)) if *s == shape => {}
            Some((s, _)) => {
                return Err(bad(format!("`{name}` has shape {s:?}, expected {shape:?}")))
            }
            None => return Err(bad(format!("no `{name}` side array"))),
        }
    }
    match (m.what == "kernel.asym_signgd", m.extra.get("flipped")) {
        (true, None) => return Err(bad("an asymmetric kernel without `flipped`".into())),
        (_, Some((s, _))) if *s != m.shape => {
            return Err(bad(format!(
                "`flipped` has shape {s:?}, the kernel {:?}",
                m.shape
            )))
        }
        _ => {}
    }
    Ok((dir, m))
}

impl Operator for LoadKernel {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let (dir, m) = open_kernel(Path::new(args.str("path")?))?;
        let mut data = m.artifact_data();
        data["loaded_from"] = json!(dir);
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Matrix,
            dir: std::fs::canonicalize(&dir)?,
            key: cx.key,
            data,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::matrix::Axis;

    fn kernel(what: &str, flipped: bool) -> Matrix {
        let ax = |n: &str| Axis::unlabelled(n);
        let m = Matrix::new(
            what,
            vec![2, 1, 3, 1],
            vec![ax("train"), ax("class"), ax("eval"), ax("class")],
            (0..6).map(f64::from).collect(),
        )
        .unwrap()
        .with_extra("train_labels", vec![2], vec![1.0, -1.0])
        .with_extra("eval_labels", vec![3], vec![1.0, 1.0, -1.0])
        .with_extra("train_f0", vec![2, 1], vec![0.5, 0.25])
        .with_extra("eval_f0", vec![3, 1], vec![0.0; 3]);
        match flipped {
            true => m.with_extra("flipped", vec![2, 1, 3, 1], vec![1.0; 6]),
            false => m,
        }
    }

    #[test]
    fn reads_kernels_and_checks_their_layout() {
        let d = tempfile::tempdir().unwrap();
        let k = kernel("kernel.sgd", false);
        k.write(&d.path().join("a/matrix")).unwrap();
        let (dir, back) = open_kernel(&d.path().join("a")).unwrap();
        assert!(dir.ends_with("a/matrix"));
        assert_eq!(back, k);
        assert_eq!(open_kernel(&dir).unwrap().1, k);
        // An asymmetric kernel needs its flip.
        kernel("kernel.asym_signgd", false)
            .write(&d.path().join("b"))
            .unwrap();
        assert_eq!(open_kernel(&d.path().join("b")).unwrap_err().code, CODE);
        kernel("kernel.asym_signgd", true)
            .write(&d.path().join("c"))
            .unwrap();
        assert!(open_kernel(&d.path().join("c")).is_ok());
        // Missing side arrays, wrong rank, nothing there, a torch file.
        let mut m = kernel("kernel.sgd", false);
        m.extra.remove("eval_f0");
        m.write(&d.path().join("e")).unwrap();
        let e = open_kernel(&d.path().join("e")).unwrap_err();
        assert!(e.message.contains("eval_f0"), "{}", e.message);
        let ax = Axis::unlabelled("r");
        let flat = Matrix::new("kernel.sgd", vec![2], vec![ax], vec![1.0, 2.0]).unwrap();
        flat.write(&d.path().join("f")).unwrap();
        assert!(open_kernel(&d.path().join("f"))
            .unwrap_err()
            .message
            .contains("rank 4"));
        let e = open_kernel(&d.path().join("train_kernels_sst2.pt")).unwrap_err();
        assert_eq!(e.code, "smelt::io::missing_file");
        assert!(e.help.unwrap_or_default().contains("torch"));
    }
}
