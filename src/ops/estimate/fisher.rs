//! `estimate fisher(model, task, labels=sampled|empirical, …)`: the diagonal Fisher of a model's
//! class distribution on a task's examples (methods.md §3.4), with respect to every float
//! parameter — embeddings, LayerNorms, projections, pooler and heads.
//!
//! `F = (1/N) Σ_i (∂/∂θ −log p(ŷ_i | x_i))²` in eval mode, with `ŷ_i ~ p(·|x_i)` (inverse CDF
//! of one uniform per example from a stream seeded by the node) or the gold label. Batch-size-1
//! semantics — squares of per-example gradients, not of a batch mean — computed with gradient
//! probes: one backward per batch, per-example gradients rebuilt from the probes
//! (`nn::probe`, `nn::per_example`). `p(y|x)` is the softmax of the task's class scores in the
//! format `evaluate` would use (cls head, label words at the mask, or decoder answer choices).

use super::{diagonal_fisher, write_fisher_dir, LabelMode, ProbedModel, FISHER_FORMAT};
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::{P_EHEAD, P_EMAX_LEN, P_ETEMPLATE, P_EWORDS};
use crate::ops::train::lora::run_seed;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::model_dir::ModelDir;
use crate::train::feed::{Feed, FormatSpec};
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

pub struct EstimateFisher;

static SIG: Signature = Signature {
    id: "estimate.fisher",
    version: 1,
    summary: "Diagonal Fisher F = mean over examples of squared per-example NLL gradients.",
    doc: "Gradients of −log p(ŷ|x) with respect to every float parameter (embeddings, norms, \
          projections, pooler, heads; a parameter that does not reach the class scores gets 0), \
          model in eval mode. `labels=sampled`: ŷ ~ p(y|x) by inverse CDF from a seeded stream \
          (the Fisher of the paper code); `empirical`: the gold label. p(y|x) is the softmax of \
          the task's class scores in the format `evaluate` uses (as trained, else the model's cls \
          head, else the default prompt; `head`/`template`/`words` override). Batch-size-1 \
          semantics from one backward per `batch` (gradient probes); `batch` changes nothing \
          but float rounding. The result is a Fisher directory with the model's tensor names \
          (f32 values, integer buffers copied) and `fisher.json` recording N = `examples`, which \
          merges use as the default scale.",
    params: &[
        Param::req("model", Ty::Model, "The model (an HF directory: `load model`, `train full`, a merge)."),
        Param::req("task", Ty::Task, "The task whose examples are averaged over."),
        Param::opt("labels", Ty::Enum(&["sampled", "empirical"]), Const::Str("sampled"), "Sampled labels (true Fisher) or gold labels (empirical Fisher)."),
        Param::opt("examples", Ty::Opt(&Ty::Int), Const::None, "How many examples to average: a seeded random subset of the split when fewer than it has; default all."),
        Param::opt("split", Ty::Enum(&["train", "dev", "test"]), Const::Str("train"), "Which split's examples."),
        Param::opt("batch", Ty::Int, Const::Int(8), "Examples per probed backward pass.").range(1.0, 1e6),
        Param::opt("seed", Ty::Int, Const::Int(0), "Extra seed for the label draws and the subset."),
        P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN,
    ],
    returns: Ty::Fisher,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet f = estimate fisher(lm, t, labels=sampled, examples=64)"],
    reference: Some("methods.md §3.4 (CustomTrainerForSquaredGradients); Daheim et al., ICLR 2024, arXiv:2310.12808"),
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

const SUBSET_SALT: u64 = 0x5355_4253_4554; // "SUBSET"

/// Indices of `n` examples out of `len`: all when `n ≥ len`, else a seeded partial
/// Fisher–Yates draw, returned in split order.
pub fn subset(len: usize, n: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let Some(n) = n.filter(|&n| n < len) else {
        return idx;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ SUBSET_SALT);
    for i in 0..n {
        let j = rng.random_range(i..len);
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

fn opt_str<'a>(args: &'a Args, name: &str) -> Result<Option<&'a str>, OpError> {
    match args.get(name)? {
        Value::None => Ok(None),
        _ => args.str(name).map(Some),
    }
}

/// The input format, chosen as `evaluate` chooses it: explicit overrides; the format recorded
/// when the model was trained on this task; `cls` when it has a head for the task; else the
/// default prompt. Shared with the kernels (`kernel sgd|…`).
pub(crate) fn format(
    args: &Args,
    pm: &ProbedModel,
    task: &TaskData,
    has_head: bool,
) -> Result<FormatSpec, OpError> {
    let max_len = args.int("max_len")?.max(1) as usize;
    let (head, template, words) = (
        args.str("head")?,
        opt_str(args, "template")?,
        opt_str(args, "words")?,
    );
    let info = crate::nn::peft::io::read_json(&pm.lm.dir.join("smelt.json")).unwrap_or_default();
    let recorded: Option<FormatSpec> = info["formats"]
        .get(&task.name)
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let lm = &pm.lm;
    match (head, template, words, recorded) {
        ("auto", None, None, Some(r)) => Ok(FormatSpec { max_len, ..r }),
        ("auto", None, None, None) if has_head => {
            FormatSpec::resolve(lm, task, "cls", None, None, max_len)
        }
        ("auto", None, None, None) => FormatSpec::resolve(lm, task, "prompt", None, None, max_len),
        (h, t, w, _) => FormatSpec::resolve(lm, task, h, t, w, max_len),
    }
}

impl Operator for EstimateFisher {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let task = TaskData::from_artifact(args.artifact("task", Kind::Task)?)?;
        let labels = match args.str("labels")? {
            "empirical" => LabelMode::Empirical,
            _ => LabelMode::Sampled,
        };
        let split = args.str("split")?;
        let seed = run_seed(args, cx)?;
        let wanted = match args.get("examples")? {
            Value::None => None,
            _ => match args.int("examples")? {
                n if n >= 1 => Some(n as usize),
                n => {
                    return Err(OpError::new(
                        "smelt::run::argument",
                        format!("`examples={n}`: a Fisher needs at least one example"),
                    ))
                }
            },
        };
        let pool = task.split(split);
        if pool.is_empty() {
            return Err(OpError::new(
                "smelt::estimate::no_data",
                format!("task `{}` has no `{split}` examples", task.name),
            )
            .with_help("choose another split, or make one with `data split`"));
        }
        let examples: Vec<_> = subset(pool.len(), wanted, seed)
            .into_iter()
            .map(|i| pool[i].clone())
            .collect();
        let what = format!("estimating the Fisher on {}", task.name);
        let mut pm = ProbedModel::load(&model.dir, &cx.device).map_err(|e| e.context(&what))?;
        let head = pm.head(&task.name)?;
        let spec = format(args, &pm, &task, head.is_some())?;
        let feed = Feed::new(&pm.lm, &spec, &task, &examples)?;
        let head = head.filter(|_| feed.needs_head());
        let batch = args.int("batch")?.max(1) as usize;
        let values = diagonal_fisher(
            &mut pm,
            &feed,
            head.as_ref(),
            labels,
            seed,
            batch,
            cx.progress,
        )
        .map_err(|e| e.context(&what))?;
        let src = ModelDir::open(&model.dir)?;
        let info = json!({
            "format": FISHER_FORMAT,
            "examples": values.examples,
            "labels": labels.name(),
            "seed": seed,
            "task": task.name,
            "split": split,
            "input_format": spec,
            "model": {"dir": model.dir, "key": model.key.hex()},
            "op": SIG.id,
            "op_version": SIG.version,
            "node": cx.key.hex(),
        });
        let out = cx.out_dir.join("fisher");
        let meta = crate::ops::merge::provenance(
            cx,
            SIG.id,
            SIG.version,
            &[model],
            &format!("labels={},examples={}", labels.name(), values.examples),
        );
        write_fisher_dir(&out, &src, &values.tensors, &info, meta)?;
        let mut data = info;
        data["seconds"] = json!(values.seconds);
        data["examples_per_second"] = json!(values.examples as f64 / values.seconds.max(1e-9));
        data["tensors"] = json!(src.tensors().len());
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Fisher,
            dir: out,
            key: cx.key,
            data,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_seeded_sorted_and_complete_when_large() {
        assert_eq!(subset(5, None, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(subset(5, Some(9), 1), vec![0, 1, 2, 3, 4]);
        let a = subset(100, Some(10), 7);
        assert_eq!(a, subset(100, Some(10), 7));
        assert_ne!(a, subset(100, Some(10), 8));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }
}
