//! Parameter-efficient fine-tuning modules injected into the frozen models of [`crate::nn`].
//!
//! * [`lora`]: LoRA, `y = x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ` with `s = α/r` (or `α/√r` for rsLoRA),
//!   PEFT initialisation, merge/unmerge; [`peft_format`]: the PEFT adapter directory format.
//! * [`adapter`]: Houlsby bottleneck adapters `y ↦ y + U · act(D · y)` after the attention output
//!   projection and after the FFN output projection.
//! * [`pattern`]: PEFT's `target_modules` matching (suffix on a `.` boundary, or a full-match
//!   regex written `re:<regex>`), with the `smelt::peft::no_match` error.
//!
//! Frozen weights stay plain tensors; every trainable tensor is a `candle_core::Var` held in a
//! `candle_nn::VarMap` under a stable name, and all random initialisation draws from a ChaCha8
//! stream seeded by the module's `seed` (never a global RNG). Both modules hook into
//! [`crate::nn::Linear`] (`lora`, `lora_input`, `output`), so they work for every architecture
//! whose projections `linears_mut()` lists. [`prefix`]: prefix tuning (virtual key/value
//! tokens per layer, MLP re-parameterised) through a prefix slot in the attention of
//! `bert.rs`/`llama.rs`.

pub mod adapter;
pub mod adapter_format;
pub mod io;
pub mod lora;
pub mod pattern;
pub mod peft_format;
pub mod prefix;

pub use adapter::{AdapterActivation, AdapterConfig, AdapterInit, AdapterSize, Adapters};
pub use lora::{Lora, LoraConfig, LoraModule};
pub use pattern::ModulePattern;
pub use peft_format::config_from_json;
pub use prefix::{Prefix, PrefixConfig};

use crate::diag::OpError;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};

/// `n` draws from `U(-bound, bound)`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// `n` draws from `N(0, std²)` (Box–Muller on the ChaCha stream).
pub(crate) fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos() * std) as f32);
        out.push((r * t.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

/// Inverted dropout `x · m / (1 - p)`, `m ~ Bernoulli(1 - p)` from a shared seeded stream.
pub(crate) fn dropout(x: &Tensor, p: f64, rng: &Mutex<ChaCha8Rng>) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = {
        let mut g = rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout RNG lock poisoned".into()))?;
        (0..n)
            .map(|_| if g.random::<f64>() < p { 0.0 } else { keep })
            .collect()
    };
    let m = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&m)
}

/// The training flag shared by the hooks of one PEFT module set.
pub(crate) type Flag = Arc<std::sync::atomic::AtomicBool>;

/// Checks a probability in `[0, 1)`.
pub(crate) fn check_dropout(p: f64, what: &str) -> Result<(), OpError> {
    if !(0.0..1.0).contains(&p) {
        return Err(OpError::new(
            "smelt::peft::bad_config",
            format!("{what} dropout must be in [0, 1), got {p}"),
        )
        .with_help("0.0 turns dropout off; PEFT's default is 0.0, the papers use 0.1"));
    }
    Ok(())
}

/// The device of the first listed projection (CPU when the list is empty).
pub(crate) fn device_of(linears: &[(String, &mut crate::nn::Linear)]) -> Device {
    linears
        .first()
        .map(|(_, l)| l.weight.device().clone())
        .unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seeded_draws_are_reproducible_and_scaled() {
        let a = normal(&mut ChaCha8Rng::seed_from_u64(3), 20_001, 0.02);
        let b = normal(&mut ChaCha8Rng::seed_from_u64(3), 20_001, 0.02);
        assert_eq!(a, b);
        let var = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 0.02).abs() < 0.001, "std {}", var.sqrt());
        let u = uniform(&mut ChaCha8Rng::seed_from_u64(1), 1000, 0.5);
        assert!(u.iter().all(|x| x.abs() <= 0.5));
    }

    #[test]
    fn dropout_keeps_expectation() {
        let rng = Mutex::new(ChaCha8Rng::seed_from_u64(0));
        let x = Tensor::ones(10_000, candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = dropout(&x, 0.25, &rng).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count();
        assert!((2200..2800).contains(&zeros), "{zeros}");
        let mean = y.iter().sum::<f32>() / y.len() as f32;
        assert!((mean - 1.0).abs() < 0.05);
        assert!(check_dropout(1.0, "LoRA").is_err());
    }
}
