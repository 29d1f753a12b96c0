//! Reading a kernel pair for the solvers: layout and label checks, flattening to the
//! `(N·C) × (N·C)` / `(N·C) × (M·C)` matrices, targets, f0 offsets, class names and the
//! `Predictions` a solver returns.
//!
//! Contract with `kernel …` (src/ops/kernel): values `[N_train, C, N_X, C]`; side arrays
//! `train_labels`, `eval_labels` (±1 when C = 1, else class indices), `train_f0` / `eval_f0`
//! (`[N, C]`), `flipped` (asymmetric kernels); meta `train_task`, `eval_task`, `eval_split`.
//! Where the meta is present, the training kernel must be `split=train` of the same task.

use super::predictions::Predictions;
use super::CODE;
use crate::diag::OpError;
use crate::ops::{Args, OpCtx};
use crate::tensors::matrix::Matrix;
use crate::value::{Kind, Value};
use nalgebra::DMatrix;
use serde_json::{Map, Value as Json};

/// The f0 offsets `(train f0/s, eval f0/s)`, flattened (example, class).
pub type Offsets = (Vec<f64>, Vec<f64>);

/// A kernel pair read, checked and flattened for solving.
pub struct Problem {
    /// Training examples, classes (1 = binary logit difference), examples to predict.
    pub n: usize,
    pub c: usize,
    pub m: usize,
    /// `(N·C) × (N·C)`, rows and columns ordered (example, class).
    pub k_train: DMatrix<f64>,
    /// `(N·C) × (M·C)`.
    pub k_eval: DMatrix<f64>,
    /// The eval kernel's `flipped` side array (asymmetric kernels), flattened like `k_eval`.
    pub k_eval_flipped: Option<DMatrix<f64>>,
    pub train_labels: Vec<u32>,
    pub eval_labels: Vec<u32>,
    /// Pre-trained logits, flattened (example, class), when the kernels carry them.
    pub train_f0: Option<Vec<f64>>,
    pub eval_f0: Option<Vec<f64>>,
    pub task: String,
    pub split: String,
    pub classes: Vec<String>,
    /// What produced the eval kernel (e.g. `kernel.sgd`).
    pub kernel: String,
}

impl Problem {
    pub fn from_args(args: &Args) -> Result<Problem, OpError> {
        let train = Matrix::read(&args.artifact("train_kernel", Kind::Matrix)?.dir)?;
        let eval = Matrix::read(&args.artifact("eval_kernel", Kind::Matrix)?.dir)?;
        Problem::new(&train, &eval)
    }

    pub fn new(train: &Matrix, eval: &Matrix) -> Result<Problem, OpError> {
        let (n, c, n2, c2) = layout(train, "train_kernel")?;
        let (ne, ce, m, ce2) = layout(eval, "eval_kernel")?;
        if n != n2 || c != c2 {
            return Err(OpError::new(
                CODE,
                format!(
                    "train_kernel has shape {:?}, which is not train × train",
                    train.shape
                ),
            )
            .with_help("pass `kernel …(model, train, train)` as train_kernel"));
        }
        if ne != n || ce != c || ce2 != c {
            return Err(OpError::new(
                CODE,
                format!(
                    "eval_kernel {:?} does not match train_kernel {:?}: both need the same \
                     training examples (first axis) and classes",
                    eval.shape, train.shape
                ),
            )
            .with_help("compute both kernels from the same model and training set"));
        }
        check_provenance(train, eval)?;
        let train_labels = labels(
            train,
            &["train_labels", "eval_labels"],
            n,
            c,
            "train_kernel",
        )?;
        let eval_labels = labels(eval, &["eval_labels"], m, c, "eval_kernel")?;
        if let Ok(outer) = labels(eval, &["train_labels"], n, c, "eval_kernel") {
            if outer != train_labels {
                return Err(OpError::new(
                    CODE,
                    "the two kernels were computed on different training sets (their \
                     `train_labels` differ)",
                )
                .with_help("compute both kernels from the same training set"));
            }
        }
        let rows = n * c;
        let k_train = DMatrix::from_row_slice(rows, rows, &train.values);
        let k_eval = DMatrix::from_row_slice(rows, m * c, &eval.values);
        let k_eval_flipped = match eval.extra.get("flipped") {
            Some((shape, v)) if *shape == eval.shape => {
                Some(DMatrix::from_row_slice(rows, m * c, v))
            }
            Some((shape, _)) => {
                return Err(OpError::new(
                    CODE,
                    format!(
                        "eval_kernel's `flipped` has shape {shape:?}, expected {:?}",
                        eval.shape
                    ),
                ))
            }
            None => None,
        };
        let f0 = |mat: &Matrix, names: &[&str], len: usize| {
            names.iter().find_map(|name| match mat.extra.get(*name) {
                Some((_, v)) if v.len() == len * c => Some(v.clone()),
                _ => None,
            })
        };
        let classes = class_names(eval, c);
        Ok(Problem {
            n,
            c,
            m,
            k_train,
            k_eval,
            k_eval_flipped,
            train_f0: f0(train, &["train_f0", "eval_f0"], n),
            eval_f0: f0(eval, &["eval_f0"], m),
            task: meta_str(eval, &["eval_task", "task"]).unwrap_or_else(|| "unknown".into()),
            split: meta_str(eval, &["eval_split", "split"]).unwrap_or_else(|| "eval".into()),
            classes,
            train_labels,
            eval_labels,
            kernel: eval.what.clone(),
        })
    }

    pub fn binary(&self) -> bool {
        self.c == 1
    }

    /// The flattened regression targets: one-hot rows, or ±1 when C = 1.
    pub fn targets(&self) -> Vec<f64> {
        let mut y = Vec::with_capacity(self.n * self.c);
        for &l in &self.train_labels {
            if self.binary() {
                y.push(if l == 1 { 1.0 } else { -1.0 });
            } else {
                y.extend((0..self.c).map(|k| if k as u32 == l { 1.0 } else { 0.0 }));
            }
        }
        y
    }

    /// `(train f0/s, eval f0/s)` when `f0=true`, flattened (example, class).
    pub fn offsets(&self, args: &Args) -> Result<Option<Offsets>, OpError> {
        if !args.bool("f0")? {
            return Ok(None);
        }
        let s = args.float("f0_scale")?;
        match (&self.train_f0, &self.eval_f0) {
            (Some(t), Some(e)) => Ok(Some((
                t.iter().map(|v| v / s).collect(),
                e.iter().map(|v| v / s).collect(),
            ))),
            _ => Err(OpError::new(
                CODE,
                "f0=true needs the pre-trained logits, but the kernels carry no `train_f0` / \
                 `eval_f0` side arrays",
            )
            .with_help("compute the kernels with the model's logits, or use f0=false")),
        }
    }

    /// Flattened (example, class) predictions → per-example class scores.
    pub fn scores(&self, flat: &[f64]) -> Vec<Vec<f64>> {
        flat.chunks(self.c)
            .map(|row| {
                if self.binary() {
                    vec![-row[0], row[0]]
                } else {
                    row.to_vec()
                }
            })
            .collect()
    }

    /// The result artifact, labelled `solver(kernel)`.
    pub fn finish(
        &self,
        cx: &OpCtx,
        solver: &str,
        flat: &[f64],
        meta: Map<String, Json>,
    ) -> Result<Value, OpError> {
        let p = Predictions {
            task: self.task.clone(),
            split: self.split.clone(),
            label: format!("{solver}({})", self.kernel),
            classes: self.classes.clone(),
            scores: self.scores(flat),
            gold: self.eval_labels.clone(),
            meta,
        };
        p.value(cx)
    }
}

fn layout(m: &Matrix, name: &str) -> Result<(usize, usize, usize, usize), OpError> {
    match m.shape[..] {
        [a, b, c, d] if a > 0 && b > 0 && c > 0 && d > 0 => Ok((a, b, c, d)),
        _ => Err(OpError::new(
            CODE,
            format!(
                "{name} (`{}`) has shape {:?}; a kernel has the layout [N_train, C, N_X, C]",
                m.what, m.shape
            ),
        )
        .with_help("pass a kernel computed by `kernel sgd|signgd|asym_signgd`")),
    }
}

/// Class indices from the first side array of `names` with `len` entries. With C = 1 (the
/// binary logit difference) labels may be 0/1 or ±1: positive means class 1.
fn labels(
    m: &Matrix,
    names: &[&str],
    len: usize,
    c: usize,
    what: &str,
) -> Result<Vec<u32>, OpError> {
    let Some(values) = names.iter().find_map(|n| match m.extra.get(*n) {
        Some((_, v)) if v.len() == len => Some(v),
        _ => None,
    }) else {
        return Err(OpError::new(
            CODE,
            format!(
                "{what} carries no labels (side array `{}` of length {len})",
                names[0]
            ),
        )
        .with_help("compute the kernel with `kernel …`, which stores the labels"));
    };
    values
        .iter()
        .map(|&v| {
            if c == 1 {
                Ok(u32::from(v > 0.5))
            } else if v >= 0.0 && v.fract() == 0.0 && (v as usize) < c {
                Ok(v as u32)
            } else {
                Err(OpError::new(
                    CODE,
                    format!("{what}: label {v} is not a class index below {c}"),
                ))
            }
        })
        .collect()
}

fn meta_str(m: &Matrix, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| m.meta.get(*k).and_then(Json::as_str).map(str::to_string))
}

/// Class names: meta `classes`, else the class axis' labels; a binary kernel's single class
/// label `"pos-neg"` (as `kernel …` writes it) gives `[neg, pos]`; else indices.
fn class_names(m: &Matrix, c: usize) -> Vec<String> {
    let from_meta = m.meta.get("classes").and_then(Json::as_array).map(|a| {
        a.iter()
            .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_string))
            .collect::<Vec<_>>()
    });
    if let Some(names) = from_meta.filter(|l| l.len() == c.max(2)) {
        return names;
    }
    let axis = m.axes.get(1).map(|a| a.labels.clone()).unwrap_or_default();
    if c > 1 && axis.len() == c {
        return axis;
    }
    if c == 1 && axis.len() == 1 {
        if let Some((pos, neg)) = axis[0]
            .split_once('-')
            .filter(|_| axis[0].matches('-').count() == 1)
        {
            return vec![neg.to_string(), pos.to_string()];
        }
    }
    (0..c.max(2)).map(|i| i.to_string()).collect()
}

/// Where the kernels record their tasks and splits (`kernel …` does), the training kernel must
/// be train × train of the eval kernel's training task.
fn check_provenance(train: &Matrix, eval: &Matrix) -> Result<(), OpError> {
    let get = |m: &Matrix, k: &str| m.meta.get(k).and_then(Json::as_str).map(str::to_string);
    if let Some(s) = get(train, "eval_split").filter(|s| s != "train") {
        return Err(OpError::new(
            CODE,
            format!("train_kernel's columns are the `{s}` split, not the training examples"),
        )
        .with_help("compute it as `kernel …(model, train, train, split=train)`"));
    }
    let tasks = [
        get(train, "train_task"),
        get(train, "eval_task"),
        get(eval, "train_task"),
    ];
    let named: Vec<&String> = tasks.iter().flatten().collect();
    if named.windows(2).any(|w| w[0] != w[1]) {
        return Err(OpError::new(
            CODE,
            format!("the kernels disagree on the training task ({named:?})"),
        )
        .with_help(
            "compute both kernels with the same `train` task; train_kernel with eval = train",
        ));
    }
    Ok(())
}

/// Refuses kernels with NaN or infinite entries (they would give silent nonsense).
pub fn check_finite(p: &Problem) -> Result<(), OpError> {
    let bad = |m: &DMatrix<f64>| m.iter().any(|v| !v.is_finite());
    if bad(&p.k_train) || bad(&p.k_eval) || p.k_eval_flipped.as_ref().is_some_and(bad) {
        return Err(OpError::new(CODE, "the kernel has NaN or infinite entries")
            .with_help("recompute the kernel; check the model's outputs are finite"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn flattens_the_stored_layout_and_builds_one_hot_targets() {
        // N = 2, C = 2: entry [i, c, x, c'] = 1000i + 100c + 10x + c' (M = 2 and M = 1).
        let entries = |m: usize| {
            let mut v = Vec::new();
            for i in 0..2 {
                for c in 0..2 {
                    for x in 0..m {
                        for c2 in 0..2 {
                            v.push((1000 * i + 100 * c + 10 * x + c2) as f64);
                        }
                    }
                }
            }
            v
        };
        let train = kernel(2, 2, 2, entries(2), &[1.0, 0.0], &[1.0, 0.0]);
        let eval = kernel(2, 2, 1, entries(1), &[1.0, 0.0], &[1.0]);
        let p = Problem::new(&train, &eval).unwrap();
        assert_eq!(p.k_train[(3, 2)], 1110.0); // (i=1,c=1) × (x=1,c'=0)
        assert_eq!(p.k_eval[(2, 1)], 1001.0); // (i=1,c=0) × (x=0,c'=1)
        assert_eq!(p.targets(), vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!((p.task.as_str(), p.split.as_str()), ("toy", "test"));
    }

    #[test]
    fn binary_labels_accept_zero_one_and_plus_minus_one() {
        let t = kernel(2, 1, 2, vec![1.0, 0.0, 0.0, 1.0], &[-1.0, 1.0], &[0.0, 1.0]);
        let p = Problem::new(&t, &t.clone()).unwrap();
        assert_eq!(p.train_labels, vec![0, 1]);
        assert_eq!(p.targets(), vec![-1.0, 1.0]);
        assert_eq!(
            p.scores(&[0.5, -2.0]),
            vec![vec![-0.5, 0.5], vec![2.0, -2.0]]
        );
    }

    #[test]
    fn mismatched_kernels_are_clear_errors() {
        let t = kernel(2, 1, 2, vec![1.0, 0.0, 0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0]);
        let e3 = kernel(3, 1, 1, vec![1.0; 3], &[0.0, 1.0, 1.0], &[1.0]);
        let err = |r: Result<Problem, OpError>| r.err().expect("an error").message;
        assert!(err(Problem::new(&t, &e3)).contains("does not match"));
        let other = kernel(2, 1, 1, vec![1.0; 2], &[1.0, 1.0], &[1.0]);
        assert!(err(Problem::new(&t, &other)).contains("different training sets"));
        let bad = kernel(2, 2, 1, vec![1.0; 8], &[0.0, 2.0], &[1.0]);
        assert!(Problem::new(&bad, &bad.clone()).is_err());
    }

    #[test]
    fn a_training_kernel_must_be_train_by_train_of_one_task() {
        let t = kernel(2, 1, 2, vec![1.0, 0.0, 0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0]);
        let err = |r: Result<Problem, OpError>| r.err().expect("an error").message;
        let test_cols = t.clone().with_meta("eval_split", serde_json::json!("test"));
        assert!(err(Problem::new(&test_cols, &t)).contains("`test` split"));
        let a = t
            .clone()
            .with_meta("train_task", serde_json::json!("a"))
            .with_meta("eval_split", serde_json::json!("train"));
        let b = t.clone().with_meta("train_task", serde_json::json!("b"));
        assert!(err(Problem::new(&a, &b)).contains("disagree"));
        assert!(Problem::new(&a, &a.clone()).is_ok());
    }

    #[test]
    fn class_names_come_from_the_kernel_axes() {
        use crate::tensors::matrix::Axis;
        let axes = |c: Vec<String>| {
            vec![
                Axis::unlabelled("train"),
                Axis::new("class", c.clone()),
                Axis::unlabelled("eval"),
                Axis::new("class", c),
            ]
        };
        let bin = Matrix::new(
            "k",
            vec![1, 1, 1, 1],
            axes(vec!["great-terrible".into()]),
            vec![1.0],
        )
        .unwrap();
        assert_eq!(class_names(&bin, 1), vec!["terrible", "great"]);
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = Matrix::new("k", vec![1, 3, 1, 3], axes(three.clone()), vec![0.0; 9]).unwrap();
        assert_eq!(class_names(&m, 3), three);
        let plain = Matrix::new("k", vec![1, 1, 1, 1], axes(vec![]), vec![1.0]).unwrap();
        assert_eq!(class_names(&plain, 1), vec!["0", "1"]);
    }
}
