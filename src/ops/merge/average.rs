//! `merge average(models)`: the uniform model soup θ = (1/n) Σᵢ θᵢ — of full models, or of
//! PEFT adapters of one base in adapter space (see [`super::adapter_space`]).

use super::adapter_params::{
    filter_provenance, follows_input, run_adapter_merge, validate_inputs, MERGEABLE, MERGED,
    MODE_PARAM, RANK_PARAM,
};
use super::adapter_set::{inputs, Inputs};
use super::Granularity;
use super::{
    open_models, out_dtype, provenance, stream_merge, DTYPE_PARAM, EXCLUDE_PARAM, INCLUDE_PARAM,
};
use crate::diag::OpError;
use crate::ops::{Args, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::value::{Kind, Value};

pub struct Average;

static SIG: Signature = Signature {
    id: "merge.average",
    version: 1,
    summary: "Elementwise mean of models, or of adapters of one base: θ = (1/n) Σ θᵢ.",
    doc:
        "The uniform soup. Models: sums in f32 in input order, then multiplies by 1/n; averaging one \
          model returns it bit for bit. Adapters (LoRA, bottleneck adapters, prefixes of one base \
          model) give an adapter: `mode=factors` averages every adapter tensor on its own (paper 2's \
          \"average of checkpoints\"), `mode=delta` averages LoRA weight deltas ΔW = s·B·A exactly \
          and re-factorises them to `rank`. Heads are averaged when every adapter has the same ones.",
    params: &[
        Param::req(
            "models",
            MERGEABLE,
            "Models with identical tensor names and shapes, or adapters of one base model.",
        ),
        INCLUDE_PARAM,
        EXCLUDE_PARAM,
        DTYPE_PARAM,
        MODE_PARAM,
        RANK_PARAM,
    ],
    returns: MERGED,
    ret_fn: Some(follows_input),
    examples: &[
        "let m = load model(\"assets/models/minilm-l3-v8k\")\nlet soup = merge average([m, m])",
        "let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nlet a = merge average(loras, mode=delta)",
    ],
    reference: Some("Wortsman et al., Model soups (ICML 2022), arXiv:2203.05482; Lv et al., Parameter-efficient weight ensembling (ACL 2023)"),
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
        validate_inputs(args, "models")
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        if let Inputs::Adapters(arts) = inputs(args.list("models")?, "merge average")? {
            let w = vec![1.0 / arts.len() as f64; arts.len()];
            let id = (SIG.id, SIG.version);
            return run_adapter_merge(cx, args, &arts, id, &w, serde_json::json!({}));
        }
        let models = args.artifacts("models", Kind::Model)?;
        let dirs = open_models(&models)?;
        let dtype = out_dtype(args, &dirs[0])?;
        let n = models.len() as f32;
        let params = filter_provenance(args);
        let meta = provenance(
            cx,
            SIG.id,
            SIG.version,
            &models,
            params.trim_start_matches(", "),
        );
        stream_merge(
            cx,
            args,
            &dirs,
            dtype,
            meta,
            Granularity::Elementwise,
            &mut |_, xs| {
                let mut out = xs[0].clone();
                for x in &xs[1..] {
                    out.iter_mut().zip(x).for_each(|(o, v)| *o += v);
                }
                if xs.len() > 1 {
                    out.iter_mut().for_each(|o| *o /= n);
                }
                Ok(out)
            },
        )
    }
}
