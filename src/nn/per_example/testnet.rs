//! A tiny network for the per-example tests: every tap kind (lookup, LayerNorm, linear,
//! RMSNorm) and a tied embedding / decoder restricted to a few label words, in any float dtype.

use crate::nn::probe::{Probe, Tap};
use candle_core::{DType, Device, Tensor};

/// Seeded N(0, 1) values of `shape` in `dtype`.
pub fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    use rand::SeedableRng;
    let n = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v = crate::ops::model::perturb::gaussian(&mut rng, n);
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A tiny network using every tap kind, with a tied embedding / decoder: ids → E[ids] →
/// LayerNorm → Linear → RMSNorm → mean over positions → decoder Eᵀ restricted to `words`.
pub fn forward(
    words: &[u32],
    e: &Tensor,
    ln: (&Tensor, &Tensor),
    lin: (&Tensor, &Tensor),
    rms: &Tensor,
    ids: &Tensor,
    probe: Option<&Probe>,
) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let mut x = e.index_select(&ids.flatten_all().unwrap(), 0).unwrap();
    x = x.reshape((b, t, e.dim(1).unwrap())).unwrap();
    if let Some(p) = probe {
        let taps = vec![Tap::Lookup {
            table: e.id(),
            ids: ids.clone(),
        }];
        x = p.tap(&x, taps).unwrap();
    }
    let mut y = candle_nn::ops::layer_norm_slow(&x, ln.0, ln.1, 1e-5).unwrap();
    if let Some(p) = probe {
        y = p.layer_norm(&y, &x, ln.0, ln.1, 1e-5).unwrap();
    }
    let mut z = y
        .broadcast_matmul(&lin.0.t().unwrap())
        .unwrap()
        .broadcast_add(lin.1)
        .unwrap();
    if let Some(p) = probe {
        z = p.linear(&z, &y, lin.0, Some(lin.1)).unwrap();
    }
    let mut r = crate::nn::ops::rms_norm(&z, rms, 1e-6).unwrap();
    if let Some(p) = probe {
        r = p.rms_norm(&r, &z, rms, 1e-6).unwrap();
    }
    let pooled = r.mean(1).unwrap();
    let mut logits = pooled.matmul(&e.t().unwrap()).unwrap();
    if let Some(p) = probe {
        logits = p.linear(&logits, &pooled, e, None).unwrap();
    }
    let words = Tensor::new(words, &Device::Cpu).unwrap();
    logits.index_select(&words, 1).unwrap()
}
