//! `solve probe(model, train, eval, c=…|none, …)`: the linear-probing baseline of Malladi et al.
//! (ICML 2023; methods.md §4.2 step 5, §4.6 "Linear probing", LM-BFF's `LinearHeadTrainer`).
//!
//! The frozen model's features of the output projection's input (`features.rs`: the MLM
//! transform of the hidden state at the mask with a prompt, the `[CLS]` state without) are fitted
//! by multinomial L2 logistic regression with C chosen by 5-fold stratified cross-validation on
//! accuracy over `logspace(-4, 4, 10)` (`LogisticRegressionCV(multi_class="multinomial")`;
//! `multinomial.rs`), then the eval split's examples get the fitted class logits `W x + b`.
//! The paper writes that solution into the decoder's label-word rows (or the classifier); the
//! predictions are the same, so the result here is `Predictions` for `evaluate`.
//!
//! Binary tasks: scikit-learn fits the two-row softmax and keeps one row w, which LM-BFF turns
//! into `[−w/2, w/2]`; the two-row softmax logits reported here have the same argmax (their
//! difference is 2·w·x).

use super::features::features;
use super::logistic_fit::log_cs;
use super::multinomial::{argmax, cv_scores, fit, row_basis};
use super::predictions::Predictions;
use super::CODE;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::estimate::fisher::format;
use crate::ops::estimate::ProbedModel;
use crate::ops::evaluate::{P_EHEAD, P_EMAX_LEN, P_ETEMPLATE, P_EWORDS, SPLITS};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::train::feed::FormatSpec;
use crate::types::Ty;
use crate::value::{Kind, Value};
use nalgebra::{DMatrix, DVector};
use serde_json::{json, Map, Value as Json};

pub struct Probe;

static SIG: Signature = Signature {
    id: "solve.probe",
    version: 1,
    summary: "Linear probing: multinomial logistic regression on the frozen model's LM-head (or [CLS]) features.",
    doc: "Features: with a prompt (head=prompt) the input of the MLM decoder at the mask, \
          LayerNorm(act(dense(h_mask))); without (head=cls) the [CLS] hidden state (no pooler); \
          `auto` picks the format as `evaluate` does. The `train` split of `train` is fitted by \
          L2 multinomial logistic regression (intercepts unpenalised) with C from `cs` \
          log-spaced values in [1e-4, 1e4] by `folds`-fold stratified cross-validation on \
          accuracy (scikit-learn's `LogisticRegressionCV(multi_class=\"multinomial\")`), or \
          fixed with `c`; the `split` of `eval` gets the fitted class logits. Exact Newton on \
          the span of the training features (at most N_train dimensions).",
    params: &[
        Param::req("model", Ty::Model, "The frozen model (an HF directory: `load model`, `train full`, a merge)."),
        Param::req("train", Ty::Task, "The task whose `train` split is fitted."),
        Param::req("eval", Ty::Task, "The task whose `split` is predicted; the same label set as `train`."),
        Param::opt("split", Ty::Enum(SPLITS), Const::Str("test"), "Which split of `eval`."),
        Param::opt("c", Ty::Opt(&Ty::Float), Const::None, "Inverse regularisation strength; `none` cross-validates it.").range(1e-12, 1e12),
        Param::opt("cs", Ty::Int, Const::Int(10), "Size of the C grid logspace(-4, 4, cs).").range(1.0, 1000.0),
        Param::opt("folds", Ty::Int, Const::Int(5), "Cross-validation folds (StratifiedKFold, no shuffling).").range(2.0, 1000.0),
        Param::opt("batch", Ty::Int, Const::Int(16), "Examples per forward pass when extracting features.").range(1.0, 1e6),
        P_EHEAD,
        P_ETEMPLATE,
        P_EWORDS,
        P_EMAX_LEN,
    ],
    returns: Ty::Predictions,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet few = data kshot(t, k=16, seed=13)\nlet p = solve probe(lm, few, t, head=prompt)\nreport evaluate(p)"],
    reference: Some("Malladi et al., A Kernel-Based View of Language Model Fine-Tuning (ICML 2023), arXiv:2210.05643; LM-BFF `LinearHeadTrainer`"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Probe {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let train_task = TaskData::from_artifact(args.artifact("train", Kind::Task)?)?;
        let eval_task = TaskData::from_artifact(args.artifact("eval", Kind::Task)?)?;
        let split = args.str("split")?;
        if train_task.labels != eval_task.labels {
            return Err(OpError::new(
                CODE,
                format!(
                    "`{}` has labels {:?}, `{}` {:?}",
                    train_task.name, train_task.labels, eval_task.name, eval_task.labels
                ),
            )
            .with_help("probe and predict tasks with the same label set"));
        }
        let xx = eval_task.split(split);
        if xx.is_empty() {
            return Err(OpError::new(
                CODE,
                format!("task `{}` has no `{split}` examples", eval_task.name),
            )
            .with_help("choose another split, or make one with `data kshot`"));
        }
        let what = format!("solve probe of {} on {}", train_task.name, eval_task.name);
        let pm = ProbedModel::load(&model.dir, &cx.device).map_err(|e| e.context(&what))?;
        let has_head = pm.head(&train_task.name)?.is_some();
        let spec = format(args, &pm, &train_task, has_head)?;
        let fitted = fit_probe(&pm, &spec, &train_task, args)?;
        let x_eval = features(
            &pm.lm,
            &spec,
            &eval_task,
            xx,
            args.int("batch")?.max(1) as usize,
        )?;
        if x_eval.iter().any(|v| !v.is_finite()) {
            return Err(not_finite());
        }
        let z = fitted.logits(&x_eval);
        let mut meta = fitted.meta;
        meta.insert("format".into(), json!(spec));
        let p = Predictions {
            task: eval_task.name.clone(),
            split: split.to_string(),
            label: format!("probe({})", spec.head),
            classes: eval_task.labels.clone(),
            scores: z.row_iter().map(|r| r.iter().copied().collect()).collect(),
            gold: xx.iter().map(|e| e.label as u32).collect(),
            meta,
        };
        p.value(cx)
    }
}

/// A probe fitted on a task's training split: `z = W x + b` in the original feature space.
pub struct FittedProbe {
    /// `K × H`.
    pub w: DMatrix<f64>,
    pub b: DVector<f64>,
    /// C, the grid and CV accuracies, rank, training accuracy, Newton facts.
    pub meta: Map<String, Json>,
}

impl FittedProbe {
    /// Class logits `[n, K]` of feature rows `[n, H]`.
    pub fn logits(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        let mut z = x * self.w.transpose();
        for mut row in z.row_iter_mut() {
            row += self.b.transpose();
        }
        z
    }
}

fn not_finite() -> OpError {
    OpError::new(CODE, "the model's features are not finite").with_help("check the model's weights")
}

/// Extracts `task`'s training features in format `spec` and fits the multinomial probe with
/// `args`' `c` (or cross-validates it over `cs` with `folds`); `batch` sets the forward size.
pub(crate) fn fit_probe(
    pm: &ProbedModel,
    spec: &FormatSpec,
    task: &TaskData,
    args: &Args,
) -> Result<FittedProbe, OpError> {
    let tx = task.train();
    if tx.is_empty() {
        return Err(OpError::new(
            CODE,
            format!("task `{}` has no `train` examples", task.name),
        )
        .with_help("make a training split with `data kshot` / `data split`"));
    }
    let k = task.labels.len();
    let y: Vec<u32> = tx.iter().map(|e| e.label as u32).collect();
    if y.iter().all(|&l| l == y[0]) {
        return Err(OpError::new(
            CODE,
            "every training example has the same label; a probe needs two classes",
        )
        .with_help("the training split must contain more than one class"));
    }
    let x = features(&pm.lm, spec, task, tx, args.int("batch")?.max(1) as usize)?;
    if x.iter().any(|v| !v.is_finite()) {
        return Err(not_finite());
    }
    // Exact reduction to the span of the training features (multinomial.rs).
    let v = row_basis(&x);
    let r = &x * &v;
    let mut meta = Map::new();
    let c = match args.opt_float("c")? {
        Some(c) => c,
        None => {
            let cs = log_cs(args.int("cs")?.max(1) as usize);
            let folds = args.int("folds")?.max(2) as usize;
            let scores = cv_scores(&r, &y, k, &cs, folds)?;
            let best = scores
                .iter()
                .enumerate()
                .fold(0, |b, (i, &s)| if s > scores[b] { i } else { b });
            meta.insert("cs".into(), json!(cs));
            meta.insert(
                "cv_accuracy".into(),
                json!(scores.iter().map(|s| s / folds as f64).collect::<Vec<_>>()),
            );
            cs[best]
        }
    };
    let m = fit(&r, &y, k, c, None);
    let pred = argmax(&m.logits(&r));
    let acc = pred.iter().zip(&y).filter(|(p, g)| p == g).count() as f64 / y.len() as f64;
    meta.insert("solver".into(), json!("probe"));
    meta.insert("c".into(), json!(c));
    meta.insert("features".into(), json!(x.ncols()));
    meta.insert("rank".into(), json!(v.ncols()));
    meta.insert("train_accuracy".into(), json!(acc));
    meta.insert("newton_iters".into(), json!(m.iters));
    meta.insert("converged".into(), json!(m.converged));
    Ok(FittedProbe {
        w: &m.w * v.transpose(),
        b: m.b,
        meta,
    })
}
