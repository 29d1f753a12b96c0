//! `solve probe_head(model, train, c=…|none, …)`: the model with a linear probe as its
//! classification head — LM-BFF's `--from_linearhead` initialisation of the "no prompt" model
//! (Malladi et al., ICML 2023; methods.md §4.2 step 5, §4.6 "Linear probing").
//!
//! The paper's no-prompt kernel uses `f(x) = W·h_[CLS] + b` with the head initialised by linear
//! probing on the few-shot training set (a random head would make the kernel's head block and
//! its body gradients arbitrary). This fits the same multinomial probe as `solve probe` on the
//! `[CLS]` features (`probe.rs`) and writes a model directory: the input model's files (hard
//! links, copies where linking fails) plus `heads.safetensors` (`classifier.weight` `[K, H]`,
//! `classifier.bias` `[K]`, f32) and `smelt.json` recording the `cls` format for the task, so
//! `kernel sgd|signgd|asym_signgd`, `evaluate` and `train full` use that head for the task.

use super::probe::fit_probe;
use super::CODE;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::estimate::ProbedModel;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::train::classify::ClsHead;
use crate::train::delta::{save_heads, HEADS_FILE};
use crate::train::feed::FormatSpec;
use crate::types::Ty;
use crate::value::{Artifact, Kind, Value};
use candle_core::{Tensor, Var};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

pub struct ProbeHead;

static SIG: Signature = Signature {
    id: "solve.probe_head",
    version: 1,
    summary: "The model with a linear probe on [CLS] as its classification head (LM-BFF --from_linearhead).",
    doc: "Fits `solve probe`'s multinomial logistic regression on the [CLS] features of the \
          `train` split of `train` (C by stratified cross-validation, or `c`) and returns the \
          model with that solution as its head for the task (`heads.safetensors`, \
          `classifier.weight`/`.bias`) and the `cls` input format recorded, so `kernel …`, \
          `evaluate` and `train full` use it: the paper's no-prompt model. The weights are the \
          input model's, unchanged (linked, not copied, where the file system allows).",
    params: &[
        Param::req("model", Ty::Model, "An encoder (HF directory)."),
        Param::req("train", Ty::Task, "The task whose `train` split is fitted; the head is recorded under its name."),
        Param::opt("c", Ty::Opt(&Ty::Float), Const::None, "Inverse regularisation strength; `none` cross-validates it.").range(1e-12, 1e12),
        Param::opt("cs", Ty::Int, Const::Int(10), "Size of the C grid logspace(-4, 4, cs).").range(1.0, 1000.0),
        Param::opt("folds", Ty::Int, Const::Int(5), "Cross-validation folds (StratifiedKFold, no shuffling).").range(2.0, 1000.0),
        Param::opt("batch", Ty::Int, Const::Int(16), "Examples per forward pass when extracting features.").range(1.0, 1e6),
        Param::opt("max_len", Ty::Int, Const::Int(128), "Maximum tokens per example.").range(8.0, 1e6),
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet few = data kshot(load task(\"experiments/data/movies\"), k=16, seed=13)\nlet np = solve probe_head(lm, few)\nlet k = kernel sgd(np, few, few, split=train, head=cls)"],
    reference: Some("Malladi et al., A Kernel-Based View of Language Model Fine-Tuning (ICML 2023), arXiv:2210.05643; LM-BFF `LinearHeadTrainer`"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

fn io(path: &Path, e: std::io::Error) -> OpError {
    OpError::new(CODE, format!("cannot write {}: {e}", path.display()))
}

/// Links (or copies) every file of `src` into `dst` except the head and record files.
fn link_model(src: &Path, dst: &Path) -> Result<(), OpError> {
    std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let entry = entry.map_err(|e| io(src, e))?;
        let name = entry.file_name();
        let n = name.to_string_lossy();
        if !entry.path().is_file() || n == HEADS_FILE || n == "smelt.json" {
            continue;
        }
        let to = dst.join(&name);
        if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to).map_err(|e| io(&to, e))?;
        }
    }
    Ok(())
}

impl Operator for ProbeHead {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let task = TaskData::from_artifact(args.artifact("train", Kind::Task)?)?;
        let what = format!("solve probe_head on {}", task.name);
        let pm = ProbedModel::load(&model.dir, &cx.device).map_err(|e| e.context(&what))?;
        let spec = FormatSpec::resolve(
            &pm.lm,
            &task,
            "cls",
            None,
            None,
            args.int("max_len")?.max(1) as usize,
        )?;
        let fitted = fit_probe(&pm, &spec, &task, args)?;
        let (k, h) = (fitted.w.nrows(), fitted.w.ncols());
        let dev = &candle_core::Device::Cpu;
        let w: Vec<f32> = (0..k)
            .flat_map(|i| (0..h).map(move |j| (i, j)))
            .map(|(i, j)| fitted.w[(i, j)] as f32)
            .collect();
        let b: Vec<f32> = fitted.b.iter().map(|&v| v as f32).collect();
        let head = ClsHead::from_vars(
            Var::from_tensor(&Tensor::from_vec(w, (k, h), dev)?)?,
            Var::from_tensor(&Tensor::from_vec(b, k, dev)?)?,
        )?;
        let dir = cx.out_dir.join("model");
        link_model(&model.dir, &dir)?;
        save_heads(&dir, &[(task.name.clone(), head)], 1)?;
        let mut probe = fitted.meta;
        probe.insert("task".into(), json!(task.name));
        let info = json!({
            "method": "linear_probe",
            "tasks": [task.name],
            "formats": {task.name.clone(): spec},
            "probe": probe,
            "base": {"dir": model.dir, "key": model.key.hex()},
        });
        let path = dir.join("smelt.json");
        std::fs::write(&path, serde_json::to_string_pretty(&info).expect("json"))
            .map_err(|e| io(&path, e))?;
        let mut data = model.data.clone();
        if !data.is_object() {
            data = json!({});
        }
        data["label"] = json!(format!("probe_head({})", task.name));
        data["formats"] = info["formats"].clone();
        Ok(Value::Artifact(Arc::new(Artifact {
            kind: Kind::Model,
            dir,
            key: cx.key,
            data,
        })))
    }
}
