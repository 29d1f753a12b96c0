//! Gradient probes: what a forward pass records so that one backward gives per-example
//! parameter gradients (the "probe trick" of `shared/design/candle-notes.md`).
//!
//! A [`Probe`] installed on a model (`BertModel::set_probe`, `LlamaModel::set_probe`) makes every
//! parameterised op add a zero `Var` of its output's shape to that output and record a [`Tap`]:
//! which parameters the op used and the (detached) input it saw. After `loss.backward()` the
//! probe's gradient is `∂L/∂y` of that op, per example, because the examples of a batch do not
//! interact in an eval-mode forward and `L = Σ_b ℓ_b`. [`crate::nn::per_example`] turns those
//! output gradients and inputs back into per-example parameter gradients:
//!
//! * Linear `y = x Wᵀ + b`: `∂ℓ_b/∂W = Σ_t g_btᵀ x_bt`, `∂ℓ_b/∂b = Σ_t g_bt`;
//! * LayerNorm `y = x̂ ⊙ w + b`: `∂ℓ_b/∂w = Σ_t g_bt ⊙ x̂_bt`, `∂ℓ_b/∂b = Σ_t g_bt`;
//! * RMSNorm `y = x · rsqrt(mean x² + ε) ⊙ w`: `∂ℓ_b/∂w = Σ_t g_bt ⊙ x_bt · rsqrt(…)`;
//! * embedding lookups `y = E[ids]`: row `ids_bt` of `∂ℓ_b/∂E` gains `g_bt` (a scatter-add).
//!
//! Convention: dimension 0 of every tapped activation indexes the examples of the batch (all
//! activations of the encoder and decoder forwards are `[B, T, ·]` or `[B, ·]`). Parameters are
//! named by their tensor's [`TensorId`]; tied weights (a decoder sharing the embedding matrix)
//! therefore add up before squaring, as in one ordinary backward.
//!
//! Without a probe nothing changes: the hooks are `if let Some(..)` checks.

use candle_core::{Result, Tensor, TensorId, Var};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One parameterised use recorded during a forward pass.
#[derive(Debug, Clone)]
pub enum Tap {
    /// `y = x Wᵀ + b` over the last dimension; `input` is `x` (detached).
    Linear {
        weight: TensorId,
        bias: Option<TensorId>,
        input: Tensor,
    },
    /// `y = LayerNorm(x) ⊙ w + b` over the last dimension; `input` is `x` before the norm.
    LayerNorm {
        weight: TensorId,
        bias: TensorId,
        eps: f64,
        input: Tensor,
    },
    /// `y = x · rsqrt(mean(x²) + ε) ⊙ w` (statistics in f64, as `nn::ops::rms_norm`).
    RmsNorm {
        weight: TensorId,
        eps: f64,
        input: Tensor,
    },
    /// One term `table[ids]` of the output; `ids` is an integer `[B, T]` tensor.
    Lookup { table: TensorId, ids: Tensor },
}

/// A probe variable and the taps whose output gradient it measures.
#[derive(Debug)]
pub struct Site {
    pub probe: Var,
    pub taps: Vec<Tap>,
}

/// What one forward pass recorded.
#[derive(Debug, Default)]
pub struct Recording {
    pub sites: Vec<Site>,
    /// Named activations kept for the caller (e.g. `last_hidden_state` of an encoder).
    pub notes: BTreeMap<&'static str, Tensor>,
}

/// A shared recorder; clones record into the same place.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    inner: Arc<Mutex<Recording>>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A panic while recording cannot leave the recording half-updated in a harmful way
        // (pushes are atomic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `y + p` for a fresh zero `Var` `p` of `y`'s shape, recording `taps` against `p`.
    pub fn tap(&self, y: &Tensor, taps: Vec<Tap>) -> Result<Tensor> {
        let p = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let out = y.add(p.as_tensor())?;
        self.lock().sites.push(Site { probe: p, taps });
        Ok(out)
    }

    /// Probes a linear layer's output `y` computed from `x`.
    pub fn linear(
        &self,
        y: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.tap(
            y,
            vec![Tap::Linear {
                weight: weight.id(),
                bias: bias.map(Tensor::id),
                input: x.detach(),
            }],
        )
    }

    /// Probes a LayerNorm output `y = LN(x) ⊙ weight + bias`.
    pub fn layer_norm(
        &self,
        y: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.tap(
            y,
            vec![Tap::LayerNorm {
                weight: weight.id(),
                bias: bias.id(),
                eps,
                input: x.detach(),
            }],
        )
    }

    /// Probes an RMSNorm output `y = rms_norm(x) ⊙ weight`.
    pub fn rms_norm(&self, y: &Tensor, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        self.tap(
            y,
            vec![Tap::RmsNorm {
                weight: weight.id(),
                eps,
                input: x.detach(),
            }],
        )
    }

    /// Keeps an activation under `name` (detached) for the caller.
    pub fn note(&self, name: &'static str, t: &Tensor) {
        self.lock().notes.insert(name, t.detach());
    }

    /// The activation noted under `name` in the current recording.
    pub fn noted(&self, name: &str) -> Option<Tensor> {
        self.lock().notes.get(name).cloned()
    }

    /// Takes everything recorded so far, leaving the probe empty for the next batch.
    pub fn take(&self) -> Recording {
        std::mem::take(&mut *self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn tap_is_the_identity_and_its_gradient_is_the_output_gradient() {
        let dev = Device::Cpu;
        let probe = Probe::new();
        let x = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let w = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
        let y = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let yp = probe.linear(&y, x.as_tensor(), &w, None).unwrap();
        assert_eq!(
            yp.to_vec2::<f32>().unwrap(),
            y.to_vec2::<f32>().unwrap(),
            "a zero probe does not change the forward"
        );
        // L = Σ c ⊙ y  ⇒  ∂L/∂y = c.
        let c = Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &dev).unwrap();
        let grads = (yp * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let rec = probe.take();
        assert_eq!(rec.sites.len(), 1);
        let g = grads.get(rec.sites[0].probe.as_tensor()).unwrap();
        assert_eq!(g.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
        match &rec.sites[0].taps[0] {
            Tap::Linear {
                weight,
                bias,
                input,
            } => {
                assert_eq!(*weight, w.id());
                assert!(bias.is_none() && !input.track_op());
            }
            t => panic!("unexpected tap {t:?}"),
        }
        assert!(probe.take().sites.is_empty(), "take empties the recording");
        probe.note("h", &Tensor::zeros(2, DType::F32, &dev).unwrap());
        assert!(probe.noted("h").is_some());
        assert!(probe.take().notes.contains_key("h"));
        assert!(probe.noted("h").is_none());
    }
}
