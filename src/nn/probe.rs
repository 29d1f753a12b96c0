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
//! LoRA factors are tapped too ([`Probe::lora`], called by `nn::linear::Linear::forward`): the
//! LoRA path `s·(x Aᵀ) Bᵀ` is two linear uses, `u = x Aᵀ` (weight `A`, input `x`) and
//! `z = (s·u) Bᵀ` (weight `B`, input `s·u`), so `∂ℓ_b/∂A = Σ_t g_u,btᵀ x_bt` and
//! `∂ℓ_b/∂B = Σ_t g_z,btᵀ s·u_bt` come from the same rebuild as any linear weight. A probe made
//! with [`Probe::lora_only`] taps only those (frozen ops add no probe variable), which is all
//! an adapter's per-example gradients need. [`Probe::watch`] keeps the tracked output of one
//! linear layer (e.g. the full-vocabulary logits of a decoder or MLM head) for the caller.
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
    /// Tap only LoRA factors (frozen ops pass through untouched).
    lora_only: bool,
    /// The linear weight whose tracked output is kept, and that output.
    watch: Arc<Mutex<(Option<TensorId>, Option<Tensor>)>>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe::default()
    }

    /// A probe that records LoRA factor taps only (see the module doc).
    pub fn lora_only() -> Probe {
        Probe {
            lora_only: true,
            ..Probe::default()
        }
    }

    /// Whether frozen ops (base linears, norms, lookups) are left untapped.
    pub fn is_lora_only(&self) -> bool {
        self.lora_only
    }

    /// Keeps the tracked output of the linear layer whose weight is `weight` (the last one
    /// computed), for [`Probe::watched`].
    pub fn watch(&self, weight: &Tensor) {
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = (Some(weight.id()), None);
    }

    /// Called by a linear layer with its full output `y`; kept when `weight` is watched.
    pub fn output(&self, weight: &Tensor, y: &Tensor) {
        let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if w.0 == Some(weight.id()) {
            w.1 = Some(y.clone());
        }
    }

    /// Takes the watched layer's last tracked output.
    pub fn watched(&self) -> Option<Tensor> {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A panic while recording cannot leave the recording half-updated in a harmful way
        // (pushes are atomic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `y + p` for a fresh zero `Var` `p` of `y`'s shape, recording `taps` against `p` (a
    /// LoRA-only probe returns `y` unchanged: this is how frozen ops are tapped).
    pub fn tap(&self, y: &Tensor, taps: Vec<Tap>) -> Result<Tensor> {
        if self.lora_only {
            return Ok(y.clone());
        }
        self.record(y, taps)
    }

    fn record(&self, y: &Tensor, taps: Vec<Tap>) -> Result<Tensor> {
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

    /// Probes one factor of a LoRA path: `y = x Fᵀ` with `F` = `A` (input `x`) or `B` (input
    /// `s·u`). Recorded by every probe, LoRA-only or not.
    pub fn lora(&self, y: &Tensor, x: &Tensor, factor: &Tensor) -> Result<Tensor> {
        self.record(
            y,
            vec![Tap::Linear {
                weight: factor.id(),
                bias: None,
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
