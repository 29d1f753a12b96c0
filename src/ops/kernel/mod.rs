//! `kernel.*`: empirical-NTK kernels of a model's class scores (Malladi et al., ICML 2023;
//! methods.md §4.4–4.5, §4.8), block by block.
//!
//! What the three operators share lives here: the parameter selection (`params=`), the model
//! output `f` (label-word logits at the mask, the cls head, or the scalar `f₁ − f₀` with ±1
//! labels for binary tasks), the block loop and the `Matrix` it writes. Per block of `block`
//! examples, one probed forward and one backward per output give every example's Jacobian
//! (`nn::per_example::JacobianBlock`); a training block is held while every evaluation block is
//! recomputed against it, so memory is two blocks of `block·C·D` values, never `N·D` or
//! `N²·D`. Products and their sums are in f64.
//!
//! The result is a `Matrix` `[N_train, C, N_X, C]` (axes train, class, eval, class) with side
//! arrays `train_labels`, `eval_labels` (±1 for binary, else class indices), `train_f0` /
//! `eval_f0` (the model's outputs `f`, `[N, C]`, for `--adjust_for_init`) and, for the
//! asymmetric kernel, `flipped` (§4.5). `meta` records the layout, the selection, `D`, the
//! format and the tasks.

pub mod asym_signgd;
mod blocks;
pub mod sgd;
pub mod signgd;

pub use blocks::{compute, KernelModel, KernelValues};

use crate::data::{Example, TaskData};
use crate::diag::OpError;
use crate::ops::estimate::fisher::format;
use crate::ops::estimate::ProbedModel;
use crate::ops::evaluate::{P_EHEAD, P_EMAX_LEN, P_ETEMPLATE, P_EWORDS, SPLITS};
use crate::ops::{Args, Const, OpCtx, Param, Signature};
use crate::tensors::matrix::{Axis, Matrix};
use crate::train::feed::Feed;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use serde_json::json;
use std::sync::Arc;

const CODE: &str = "smelt::run::kernel";

pub const SELECTIONS: &[&str] = &["all", "lora", "biases", "no_embeddings", "no_head"];

/// The parameters shared by `kernel sgd|signgd|asym_signgd`.
pub static PARAMS: &[Param] = &[
    Param::req("model", Ty::Model, "The model whose eNTK is taken (an HF directory: `load model`, `train full`, a merge)."),
    Param::req("train", Ty::Task, "The task whose `train` split indexes the kernel's rows (x_i)."),
    Param::req("eval", Ty::Task, "The task whose `split` indexes the columns (x); the same label set as `train`."),
    Param::opt("split", Ty::Enum(SPLITS), Const::Str("test"), "Which split of `eval` (use `train` with eval = train for the training kernel)."),
    Param::opt("params", Ty::Enum(SELECTIONS), Const::Str("all"), "Parameters θ: `all`; `biases` (BitFit); `no_embeddings` (names with `embeddings`/`embed_tokens`; a decoder tied to them goes too); `no_head` (`cls.*`, `lm_head.*`, `classifier*`); `lora` is not available (see doc)."),
    Param::opt("block", Ty::Int, Const::Int(8), "Examples per Jacobian block: memory is two blocks of block·C·D floats.").range(1.0, 1e6),
    Param::opt("binary", Ty::Bool, Const::Bool(true), "For 2-class tasks, the scalar f = f₁ − f₀ with ±1 labels (C = 1), as `--binary_classification`."),
    P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN,
];

pub const DOC_COMMON: &str = "Per-example Jacobians of the class scores f in eval mode: \
    label-word logits at the mask (head=prompt, the prompt kernel) or the cls head on [CLS] \
    (head=cls, the no-prompt kernel); the format is chosen as `evaluate` chooses it. For 2-class \
    tasks with binary=true, f = f₁ − f₀ and labels are ±1 (C = 1). Rows: the `train` split of \
    `train`; columns: `split` of `eval`. Computed block by block (memory: two blocks of \
    block·C·D floats, not N·D), products summed in f64; with eval = train and split=train the \
    kernel is one symmetric problem (diagonal blocks reused, the lower triangle mirrored). \
    Result: a Matrix [N_train, C, N_X, C] (axes train, class, eval, class) with side arrays \
    train_labels, eval_labels, train_f0, eval_f0 (the model's f, for the init correction) and \
    meta (layout, params, D, format). params=lora is refused here (kernels take a Model, not \
    an Adapter); per-example LoRA gradients, whose Gram is the LoRA kernel, come from \
    `estimate gradients(…, dim=none)`.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// `⟨∇f_c(x_i), ∇f_c'(x)⟩`.
    Sgd,
    /// `⟨sign ∇f_c(x_i), sign ∇f_c'(x)⟩`.
    SignGd,
    /// `⟨sign ∇f(x_i), ∇f(x)⟩` and its flip `⟨sign ∇f(x), ∇f(x_i)⟩`.
    AsymSignGd,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Sgd => "sgd",
            KernelKind::SignGd => "signgd",
            KernelKind::AsymSignGd => "asym_signgd",
        }
    }
}

/// Whether checkpoint parameter `name` belongs to the selection (methods.md §4.4).
pub fn selected(selection: &str, name: &str) -> bool {
    let embedding = name.contains("embeddings") || name.contains("embed_tokens");
    let head = name.starts_with("cls.")
        || name.contains(".cls.")
        || name.contains("lm_head")
        || name.contains("classifier");
    match selection {
        "biases" => name.ends_with(".bias") || name.ends_with("_bias"),
        "no_embeddings" => !embedding,
        "no_head" => !head,
        _ => true,
    }
}

pub(crate) fn lora_error() -> OpError {
    OpError::new(CODE, "`params=lora` is not available: kernels take a Model, which has no LoRA factors")
        .with_help("per-example LoRA gradients come from `estimate gradients(model, tasks, adapter=…, dim=none)`; or take the kernel of the model with the adapter applied (`model apply`)")
}

/// Checks that need no tensors: the refused selection and the binary-only kernel.
pub fn validate(kind: KernelKind, args: &Args) -> Result<(), OpError> {
    if let Ok("lora") = args.str("params") {
        return Err(lora_error());
    }
    if kind == KernelKind::AsymSignGd && matches!(args.get("binary")?, Value::Bool(false)) {
        return Err(binary_only());
    }
    Ok(())
}

fn binary_only() -> OpError {
    OpError::new(
        CODE,
        "the asymmetric SignGD kernel needs a binary task with binary=true",
    )
    .with_help("its solver (`solve asym`) is the binary LS-SVM; use kernel signgd for more classes")
}

fn labels(feed: &Feed, binary: bool) -> Vec<f64> {
    feed.labels()
        .into_iter()
        .map(|y| match binary {
            true => 2.0 * y as f64 - 1.0,
            false => y as f64,
        })
        .collect()
}

fn ids(examples: &[Example]) -> Vec<String> {
    examples.iter().map(|e| e.id.to_string()).collect()
}

/// Runs `kernel <kind>` on realised arguments and writes the Matrix.
pub fn run_kernel(
    kind: KernelKind,
    sig: &Signature,
    cx: &mut OpCtx,
    args: &Args,
) -> Result<Value, OpError> {
    validate(kind, args)?;
    let model = args.artifact("model", Kind::Model)?;
    let train_task = TaskData::from_artifact(args.artifact("train", Kind::Task)?)?;
    let eval_task = TaskData::from_artifact(args.artifact("eval", Kind::Task)?)?;
    let split = args.str("split")?;
    let selection = args.str("params")?;
    let block = args.int("block")?.max(1) as usize;
    if train_task.labels.len() != eval_task.labels.len() {
        return Err(OpError::new(
            CODE,
            format!(
                "`{}` has {} labels, `{}` {}",
                train_task.name,
                train_task.labels.len(),
                eval_task.name,
                eval_task.labels.len()
            ),
        )
        .with_help("the kernel's class axes are shared: use tasks with the same label set"));
    }
    let binary = args.bool("binary")? && train_task.labels.len() == 2;
    if kind == KernelKind::AsymSignGd && !binary {
        return Err(binary_only());
    }
    let (tx, xx) = (train_task.train(), eval_task.split(split));
    for (t, s, xs) in [(&train_task, "train", tx), (&eval_task, split, xx)] {
        if xs.is_empty() {
            return Err(
                OpError::new(CODE, format!("task `{}` has no `{s}` examples", t.name)).with_help(
                    "choose another split, or make one with `data kshot` / `data split`",
                ),
            );
        }
    }
    let what = format!(
        "kernel {} of {} × {}",
        kind.name(),
        train_task.name,
        eval_task.name
    );
    let pm = ProbedModel::load(&model.dir, &cx.device).map_err(|e| e.context(&what))?;
    let head = pm.head(&train_task.name)?;
    let spec = format(args, &pm, &train_task, head.is_some())?;
    let train = Feed::new(&pm.lm, &spec, &train_task, tx)?;
    // The training kernel (the same examples on both sides) is computed as one symmetric
    // problem: `compute` recognises the shared feed.
    let same = args.artifact("train", Kind::Task)?.key == args.artifact("eval", Kind::Task)?.key
        && split == "train";
    let eval = match same {
        true => None,
        false => Some(Feed::new(&pm.lm, &spec, &eval_task, xx)?),
    };
    let eval = eval.as_ref().unwrap_or(&train);
    let head = head.filter(|_| train.needs_head());
    let km = KernelModel::new(pm, head, selection)?;
    let kv = compute(kind, &km, &train, eval, binary, block, cx.progress)
        .map_err(|e| e.context(&what))?;
    let (nt, nx, c) = (train.len(), eval.len(), kv.c);
    let classes = match binary {
        true => vec![format!("{}-{}", train_task.labels[1], train_task.labels[0])],
        false => train_task.labels.clone(),
    };
    let axes = vec![
        Axis::new("train", ids(tx)),
        Axis::new("class", classes.clone()),
        Axis::new("eval", ids(xx)),
        Axis::new("class", classes),
    ];
    let mut m = Matrix::new(
        format!("kernel.{}", kind.name()),
        vec![nt, c, nx, c],
        axes,
        kv.values,
    )?
    .with_extra("train_labels", vec![nt], labels(&train, binary))
    .with_extra("eval_labels", vec![nx], labels(eval, binary))
    .with_extra("train_f0", vec![nt, c], kv.train_f0)
    .with_extra("eval_f0", vec![nx, c], kv.eval_f0)
    .with_meta("kernel", json!(kind.name()))
    .with_meta("layout", json!("[N_train, C, N_X, C]"))
    .with_meta("params", json!(selection))
    .with_meta("D", json!(km.params()))
    .with_meta("block", json!(block))
    .with_meta("binary", json!(binary))
    .with_meta("labels", json!(if binary { "pm1" } else { "index" }))
    .with_meta("format", json!(spec))
    .with_meta("train_task", json!(train_task.name))
    .with_meta("eval_task", json!(eval_task.name))
    .with_meta("eval_split", json!(split))
    .with_meta("model", json!({"dir": model.dir, "key": model.key.hex()}))
    .with_meta("op", json!(sig.id))
    .with_meta("op_version", json!(sig.version));
    if let Some(fl) = kv.flipped {
        m = m.with_extra("flipped", vec![nt, c, nx, c], fl).with_meta(
            "flipped",
            json!("flipped[i,c,x,c'] = <sign grad f_c'(x), grad f_c(x_i)>"),
        );
    }
    let dir = cx.out_dir.join("matrix");
    m.write(&dir)?;
    let mut data = m.artifact_data();
    let entries = (nt * c * nx * c) as f64;
    data["seconds"] = json!(kv.seconds);
    data["entries_per_second"] = json!(entries / kv.seconds.max(1e-9));
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Matrix,
        dir,
        key: cx.key,
        data,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_follow_the_paper_flags() {
        let names = [
            "embeddings.word_embeddings.weight",
            "embeddings.LayerNorm.bias",
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.output.dense.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.bias",
            "lm_head.dense.bias",
            "classifier.weight",
            "model.embed_tokens.weight",
        ];
        let keep = |sel: &str| -> Vec<bool> { names.iter().map(|n| selected(sel, n)).collect() };
        assert!(keep("all").iter().all(|&k| k));
        let (t, f) = (true, false);
        assert_eq!(keep("biases"), [f, t, f, t, f, t, t, f, f]);
        assert_eq!(keep("no_embeddings"), [f, f, t, t, t, t, t, t, f]);
        assert_eq!(keep("no_head"), [t, t, t, t, f, f, f, f, t]);
    }
}
