//! `model perturb(model, std)`: θ + ε with ε ~ N(0, std²) per element, from the node's seed.
//!
//! Used to make distinct-but-related checkpoints for merge benchmarks, tests and the
//! quickstart. Each tensor draws from its own stream seeded by (node seed, tensor name), so
//! results do not depend on tensor order or sharding.

use crate::diag::OpError;
use crate::ops::merge::Granularity;
use crate::ops::merge::{open_models, out_dtype, provenance, stream_to_model, DTYPE_PARAM};
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::types::Ty;
use crate::value::{Kind, Value};
use rand::{Rng, SeedableRng};

pub struct Perturb;

static SIG: Signature = Signature {
    id: "model.perturb",
    version: 1,
    summary: "Add seeded Gaussian noise N(0, std²) to every float weight.",
    doc: "The noise is drawn per tensor from a ChaCha8 stream seeded by the node seed and the tensor \
          name (Box–Muller), so the same program and experiment seed give the same weights.",
    params: &[
        Param::req("model", Ty::Model, "The model to perturb."),
        Param::opt("std", Ty::Float, Const::Float(1e-3), "Standard deviation of the noise.").range(0.0, 1e3),
        Param::opt("seed", Ty::Int, Const::Int(0), "Extra seed, to make several copies from one model."),
        DTYPE_PARAM,
    ],
    returns: Ty::Model,
    ret_fn: None,
    examples: &["let m = load model(\"assets/models/minilm-l3-v8k\")\nlet copies = [model perturb(m, std=0.01, seed=i) for i in range(3)]"],
    reference: None,
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// Standard normal samples by Box–Muller.
pub fn gaussian(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl Operator for Perturb {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let model = args.artifact("model", Kind::Model)?;
        let std = args.float("std")? as f32;
        let dirs = open_models(&[model])?;
        let dtype = out_dtype(args, &dirs[0])?;
        let seed = cx.seed;
        let meta = provenance(cx, SIG.id, SIG.version, &[model], &format!("std={std}"));
        stream_to_model(
            cx,
            &dirs,
            dtype,
            meta,
            Granularity::Whole,
            &mut |part, xs| {
                let name = part.name;
                let mut h = blake3::Hasher::new();
                h.update(&seed.to_le_bytes());
                h.update(name.as_bytes());
                let mut rng = rand_chacha::ChaCha8Rng::from_seed(*h.finalize().as_bytes());
                let noise = gaussian(&mut rng, xs[0].len());
                Ok(xs[0].iter().zip(noise).map(|(x, e)| x + std * e).collect())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_moments() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let xs = gaussian(&mut rng, 100_000);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
