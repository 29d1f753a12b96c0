//! `merge average(models)`: the uniform model soup θ = (1/n) Σᵢ θᵢ.

use super::{open_models, out_dtype, provenance, stream_to_model, validate_models, DTYPE_PARAM};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};

pub struct Average;

static SIG: Signature = Signature {
    id: "merge.average",
    version: 1,
    summary: "Elementwise mean of models: θ = (1/n) Σ θᵢ.",
    doc:
        "The uniform soup. Sums in f32 in input order, then multiplies by 1/n. Averaging one model \
          returns it bit for bit.",
    params: &[
        Param::req(
            "models",
            Ty::List(&Ty::Model),
            "Models with identical tensor names and shapes.",
        ),
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &[
        "let m = load model(\"assets/models/minilm-l3-v8k\")\nlet soup = merge average([m, m])",
    ],
    reference: Some("Wortsman et al., Model soups (ICML 2022), arXiv:2203.05482"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

impl Operator for Average {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        validate_models(&args.list("models")?.iter().collect::<Vec<_>>())
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let models = args.artifacts("models", Kind::Model)?;
        if models.is_empty() {
            return Err(OpError::new(
                "smelt::run::argument",
                "`merge average` of an empty list",
            ));
        }
        let dirs = open_models(&models)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let n = models.len() as f32;
        let meta = provenance(cx, SIG.id, SIG.version, &models, "");
        stream_to_model(cx, &dirs, dtype, meta, &mut |_, xs| {
            let mut out = xs[0].clone();
            for x in &xs[1..] {
                out.iter_mut().zip(x).for_each(|(o, v)| *o += v);
            }
            if xs.len() > 1 {
                out.iter_mut().for_each(|o| *o /= n);
            }
            Ok(out)
        })
    }
}
