//! `measure distance(a, b)`: ‖θ_a − θ_b‖₂ over all float tensors (or a relative version).
//!
//! Streams one tensor at a time, accumulating in f64.

use crate::diag::OpError;
use crate::ops::merge::{open_models, validate_models};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Distance;

static SIG: Signature = Signature {
    id: "measure.distance",
    version: 1,
    summary: "L2 distance between two models' weights.",
    doc: "`relative=true` divides by ‖θ_b‖₂. Integer buffers are skipped. The two models must have the \
          same tensor names and shapes.",
    params: &[
        Param::req("a", Ty::Model, "First model."),
        Param::req("b", Ty::Model, "Second model (the reference when relative)."),
        Param::opt("relative", Ty::Bool, Const::Bool(false), "Divide by the norm of `b`."),
    ],
    returns: Ty::Float,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet d = measure distance(m, m)"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Distance {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_models(&[args.get("a")?, args.get("b")?])
    }

    fn run(&self, _cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let a = args.artifact("a", Kind::Model)?;
        let b = args.artifact("b", Kind::Model)?;
        let dirs = open_models(&[a, b])?;
        dirs[0].check_compatible(&dirs[1])?;
        let (mut diff, mut norm) = (0f64, 0f64);
        for (name, (_, info)) in dirs[0].tensors() {
            if !info.dtype.is_float() {
                continue;
            }
            let x = dirs[0].read_f32(name)?;
            let y = dirs[1].read_f32(name)?;
            for (u, v) in x.iter().zip(&y) {
                diff += ((u - v) as f64).powi(2);
                norm += (*v as f64).powi(2);
            }
        }
        let d = diff.sqrt();
        Ok(Value::Float(if args.bool("relative")? {
            d / norm.sqrt().max(f64::MIN_POSITIVE)
        } else {
            d
        }))
    }
}
