//! `measure score(model, task, metric=accuracy)`: one metric of one model or adapter on one
//! task, as a Float for `expect`s, sweeps and `best(…, by=…)`.
//!
//! Feeds the task exactly as `evaluate` does (see `ops::evaluate`), so a score and the matching
//! cell of an `evaluate` table agree.

use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::{
    score, wants_text, Overrides, EVALUABLE, METRICS, P_EBATCH, P_EHEAD, P_EMAX_LEN, P_ETEMPLATE,
    P_EWORDS, P_MAX_NEW, P_SPLIT,
};
use crate::ops::solve::predictions::Predictions;
use crate::ops::train::runnable::{runnable_args, Runnable};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Score;

static SIG: Signature = Signature {
    id: "measure.score",
    version: 1,
    summary: "One metric of a model or adapter on a task's split, as a number.",
    doc: "Same input formats and metrics as `evaluate` (accuracy, macro_f1, mcc, ce_loss, em, \
          qa_f1, rouge_l). `model` may also be Predictions (from `solve …`): they are scored as \
          stored, and must be for `task` and `split`. An Ensemble is scored from its members' summed \
          class scores (see `evaluate`).",
    params: &[
        Param::req("model", EVALUABLE, "A model or an adapter, Predictions from `solve …`, or an Ensemble."),
        Param::req("task", Ty::Task, "The task."),
        Param::opt("metric", Ty::Enum(METRICS), Const::Str("accuracy"), "The metric."),
        P_SPLIT, P_EHEAD, P_ETEMPLATE, P_EWORDS, P_EMAX_LEN, P_EBATCH, P_MAX_NEW,
    ],
    returns: Ty::Float,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet t = load task(\"experiments/data/movies\")\nlet a = train lora(lm, t, head=prompt)\nexpect measure score(a, t) > measure score(lm, t)"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Score {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let task = TaskData::from_artifact(args.artifact("task", Kind::Task)?)?;
        if let Ok(a) = args.artifact("model", Kind::Predictions) {
            let p = Predictions::from_artifact(a)?;
            let split = args.str("split")?;
            if p.task != task.name || p.split != split {
                return Err(OpError::new(
                    "smelt::eval::mismatch",
                    format!(
                        "the predictions are for `{}` ({} split), not `{}` ({split} split)",
                        p.task, p.split, task.name
                    ),
                )
                .with_help("pass the task and split the kernel's eval examples came from"));
            }
            return Ok(Value::Float(p.metric(args.str("metric")?)?));
        }
        if let Ok(a) = args.artifact("model", Kind::Ensemble) {
            let ens = crate::tensors::ensemble::Ensemble::from_artifact(a)?;
            let s = crate::ops::ensemble::combine::score_ensemble(
                &ens,
                std::slice::from_ref(&task),
                args.str("split")?,
                &Overrides::of(args)?,
                args.int("batch")?.max(1) as usize,
                &cx.device,
            )?;
            return Ok(Value::Float(s.combined[0].metric(args.str("metric")?)?));
        }
        let model = runnable_args(args.get("model")?, "model")?[0];
        let run = Runnable::load(model, &cx.device)?;
        let s = score(
            &run,
            &task,
            args.str("split")?,
            &Overrides::of(args)?,
            args.int("batch")?.max(1) as usize,
            wants_text(&[args.str("metric")?]),
        )?;
        Ok(Value::Float(s.metric(args.str("metric")?)?))
    }
}
