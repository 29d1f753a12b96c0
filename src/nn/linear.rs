//! A frozen linear layer with a slot for a trainable LoRA delta.
//!
//! The base weight `W [out, in]` and bias are plain `Tensor`s (never `Var`s), so they get no
//! gradient buffers. PEFT code injects a [`LoraDelta`] (`A [r, in]`, `B [out, r]`, `scale`) whose
//! tensors are usually `Var`s; the forward then adds `scale · (x Aᵀ) Bᵀ` to the frozen output,
//! never materialising `B·A`. `merged_weight` folds the delta into `W` for export or fast
//! inference; the invariants (B = 0 ⇒ base output; merged ≡ unmerged) are tested below.
//!
//! Two optional hooks serve the PEFT modules in `nn::peft`: `lora_input` transforms `x` on the
//! LoRA path only (PEFT's `lora_dropout`: `y = xWᵀ + b + s·(drop(x) Aᵀ) Bᵀ`), and `output`
//! maps the whole output `y ↦ h(y)` (Houlsby bottleneck adapters after a sublayer's projection).
//!
//! Quantized base (QLoRA): [`Linear::quantize`] moves the frozen weight into a
//! [`QuantTensor`] (`quant`), and `weight` becomes a stride-0 placeholder of the right shape,
//! dtype and device (no storage). Read the frozen values through [`Linear::frozen_weight`]
//! (dequantized on demand) and replace them with [`Linear::set_frozen_weight`] (re-quantized in
//! the same format, as PEFT's merge into a 4-bit layer, so merging there is lossy). The forward
//! dequantizes and then runs the ordinary matmul, so gradients reach LoRA/adapters exactly as on
//! a dense layer.
//!
//! Per-example gradients: with a [`Probe`] in `probe`, the frozen output `x Wᵀ + b` gets a zero
//! probe variable added and the input recorded (see [`crate::nn::probe`]), before any LoRA delta
//! or output hook, so the probe measures `∂L/∂(x Wᵀ + b)`. The LoRA factors are probed on
//! their own path (`u = x Aᵀ`, then `(s·u) Bᵀ`; PEFT's dropout hook applies first, so in eval
//! mode `x` itself), and the layer reports its final output to [`Probe::output`] (kept only
//! when the probe watches this weight, e.g. the full-vocabulary logits of an LM head).

use crate::nn::probe::Probe;
use crate::nn::quant::{QuantBits, QuantTensor};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// The function behind a [`LinearHook`].
pub type HookFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// A tensor transform installed on a [`Linear`] by PEFT code (dropout, adapters).
#[derive(Clone)]
pub struct LinearHook(pub Arc<HookFn>);

impl std::fmt::Debug for LinearHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinearHook")
    }
}

/// A low-rank update `ΔW = scale · B · A`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
}

impl LoraDelta {
    /// Checks that `a` is `[r, in]` and `b` is `[out, r]` for a layer of the given shape.
    pub fn new(a: Tensor, b: Tensor, scale: f64, in_dim: usize, out_dim: usize) -> Result<Self> {
        let (r, i) = a.dims2()?;
        let (o, r2) = b.dims2()?;
        if i != in_dim || o != out_dim || r != r2 {
            candle_core::bail!(
                "LoRA shapes A {:?} B {:?} do not fit a [{out_dim}, {in_dim}] layer",
                a.dims(),
                b.dims()
            )
        }
        Ok(LoraDelta { a, b, scale })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `scale · (x Aᵀ) Bᵀ` for `x [N, in]`.
    fn forward_2d(&self, x: &Tensor) -> Result<Tensor> {
        let xa = x.matmul(&self.a.t()?)?;
        xa.matmul(&self.b.t()?)? * self.scale
    }

    /// [`LoraDelta::forward_2d`] with both factors probed: `u = x Aᵀ` (weight `A`, input `x`)
    /// and `z = (s·u) Bᵀ` (weight `B`, input `s·u`), see [`crate::nn::probe`].
    fn forward_probed(&self, x: &Tensor, probe: &Probe) -> Result<Tensor> {
        let u = probe.lora(&x.matmul(&self.a.t()?)?, x, &self.a)?;
        let su = (u * self.scale)?;
        probe.lora(&su.matmul(&self.b.t()?)?, &su, &self.b)
    }

    /// `scale · B · A`, shape `[out, in]`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// `y = x Wᵀ + b (+ LoRA)`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, frozen. A storage-less placeholder when `quant` is set: use
    /// [`Linear::frozen_weight`] to read the values.
    pub weight: Tensor,
    /// `[out]`, frozen.
    pub bias: Option<Tensor>,
    /// Optional trainable low-rank delta.
    pub lora: Option<LoraDelta>,
    /// Applied to `x` before the LoRA delta only (e.g. LoRA dropout in training).
    pub lora_input: Option<LinearHook>,
    /// Applied to the full output `[N, out]` (e.g. a bottleneck adapter with its residual).
    pub output: Option<LinearHook>,
    /// The frozen weight in quantized form (then `weight` is a placeholder).
    pub quant: Option<Arc<QuantTensor>>,
    /// Records the frozen output's gradient for per-example parameter gradients.
    pub probe: Option<Probe>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear {
            weight,
            bias,
            lora: None,
            lora_input: None,
            output: None,
            quant: None,
            probe: None,
        }
    }

    /// The frozen weight `[out, in]`: `weight`, or the quantized block dequantized to
    /// `weight`'s dtype.
    pub fn frozen_weight(&self) -> Result<Tensor> {
        match &self.quant {
            Some(q) => q.dequantize(self.weight.dtype()),
            None => Ok(self.weight.clone()),
        }
    }

    /// Replaces the frozen weight (same shape), re-quantizing it when the layer is quantized.
    pub fn set_frozen_weight(&mut self, w: Tensor) -> Result<()> {
        if w.dims() != self.weight.dims() {
            candle_core::bail!(
                "new weight {:?} does not fit a {:?} layer",
                w.dims(),
                self.weight.dims()
            )
        }
        match self.quant.as_ref().map(|q| q.bits) {
            Some(bits) => self.quantize_from(&w, bits),
            None => {
                self.weight = w;
                Ok(())
            }
        }
    }

    /// Stores the frozen weight blockwise-quantized (see [`crate::nn::quant`]).
    pub fn quantize(&mut self, bits: QuantBits) -> Result<()> {
        let w = self.frozen_weight()?;
        self.quantize_from(&w, bits)
    }

    fn quantize_from(&mut self, w: &Tensor, bits: QuantBits) -> Result<()> {
        let q = QuantTensor::quantize(w, bits)?;
        self.weight = Tensor::zeros((), w.dtype(), w.device())?.broadcast_as(w.dims())?;
        self.quant = Some(Arc::new(q));
        Ok(())
    }

    /// Bytes held by the frozen weight (quantized storage, or the dense tensor).
    pub fn frozen_bytes(&self) -> usize {
        match &self.quant {
            Some(q) => q.storage_bytes(),
            None => self.weight.elem_count() * self.weight.dtype().size_in_bytes(),
        }
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Installs (or replaces) the LoRA delta, checking its shapes; returns the previous one.
    pub fn set_lora(&mut self, delta: LoraDelta) -> Result<Option<LoraDelta>> {
        let delta = LoraDelta::new(delta.a, delta.b, delta.scale, self.in_dim(), self.out_dim())?;
        Ok(self.lora.replace(delta))
    }

    pub fn take_lora(&mut self) -> Option<LoraDelta> {
        self.lora.take()
    }

    /// Output of the frozen layer only (LoRA and hooks ignored).
    pub fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let (x2, lead) = flatten(x)?;
        let y = self.base_2d(&x2)?;
        unflatten(y, &lead)
    }

    /// Full forward: frozen output plus the LoRA delta when present. `x` is `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x2, lead) = flatten(x)?;
        let mut y = self.base_2d(&x2)?;
        if let Some(p) = &self.probe {
            y = p.linear(&y, &x2, &self.weight, self.bias.as_ref())?;
        }
        if let Some(l) = &self.lora {
            let xl = match &self.lora_input {
                Some(h) => (h.0)(&x2)?,
                None => x2.clone(),
            };
            y = match &self.probe {
                Some(p) => (y + l.forward_probed(&xl, p)?)?,
                None => (y + l.forward_2d(&xl)?)?,
            };
        }
        if let Some(h) = &self.output {
            y = (h.0)(&y)?;
        }
        if let Some(p) = &self.probe {
            p.output(&self.weight, &y);
        }
        unflatten(y, &lead)
    }

    fn base_2d(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.frozen_weight()?;
        let plain = |x: &Tensor| {
            let y = x.matmul(&weight.t()?)?;
            match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        if !(x.track_op() && x.device().is_cpu()) || weight.track_op() {
            return plain(x);
        }
        // Tracked input, frozen weight: candle's matmul backward would also compute the unused
        // `∂L/∂W = gᵀx` (as much work as the forward product) and the bias sum; this op keeps
        // only `∂L/∂x = g·W`.
        let y = plain(&x.detach())?.contiguous()?;
        x.apply_op1(FrozenLinear { weight, y })
    }

    /// The frozen layer cast to `dtype` (the LoRA delta, if any, is dropped: re-attach it). A
    /// quantized layer stays quantized and dequantizes to `dtype`.
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Linear> {
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        let weight = match &self.quant {
            // keep the placeholder storage-less
            Some(_) => {
                Tensor::zeros((), dtype, self.weight.device())?.broadcast_as(self.weight.dims())?
            }
            None => self.weight.to_dtype(dtype)?,
        };
        let mut l = Linear::new(weight, bias);
        l.quant = self.quant.clone();
        Ok(l)
    }

    /// `W + scale · B · A` (just `W` without a delta; `W` dequantized when quantized).
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = self.frozen_weight()?;
        match &self.lora {
            Some(l) => w.add(&l.delta_weight()?),
            None => Ok(w),
        }
    }

    /// A copy with the delta folded into a new frozen weight (detached from autograd); the
    /// `output` hook is kept, the LoRA input hook goes with the delta. The copy is dense even
    /// when `self` is quantized (so merged ≡ unmerged holds to f32 rounding).
    pub fn merged(&self) -> Result<Linear> {
        let mut m = Linear::new(self.merged_weight()?.detach(), self.bias.clone());
        m.output = self.output.clone();
        Ok(m)
    }
}

/// `x ↦ x Wᵀ + b` for a frozen `W`, `b`: the output is computed outside autograd (`y`), and the
/// backward returns only the input gradient `g · W`.
struct FrozenLinear {
    weight: Tensor,
    y: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "smelt-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _s: &candle_core::CpuStorage,
        _l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (storage, layout) = self.y.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("frozen linear: expected a CPU tensor")
        };
        match layout.contiguous_offsets() {
            Some((0, n)) if n == cpu.as_slice::<f32>().map_or(n, |v| v.len()) => {
                Ok((cpu.clone(), layout.shape().clone()))
            }
            _ => candle_core::bail!("frozen linear: expected a compact contiguous output"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `[d0, …, dk, in]` → (`[d0·…·dk, in]` contiguous, leading dims).
fn flatten(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let (lead, last) = dims.split_at(dims.len().saturating_sub(1));
    let n: usize = lead.iter().product();
    let x2 = x.contiguous()?.reshape((n, last[0]))?;
    Ok((x2, lead.to_vec()))
}

fn unflatten(y: Tensor, lead: &[usize]) -> Result<Tensor> {
    let mut shape = lead.to_vec();
    shape.push(y.dims()[1]);
    y.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::max_abs_diff;
    use candle_core::{DType, Device, Var};

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    fn layer() -> Linear {
        Linear::new(randn(&[6, 4]), Some(randn(&[6])))
    }

    #[test]
    fn forward_matches_broadcast_matmul() {
        let l = layer();
        let x = randn(&[2, 3, 4]);
        let want = x
            .broadcast_matmul(&l.weight.t().unwrap())
            .unwrap()
            .broadcast_add(l.bias.as_ref().unwrap())
            .unwrap();
        let got = l.forward(&x).unwrap();
        assert_eq!(got.dims(), &[2, 3, 6]);
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-5);
    }

    #[test]
    fn zero_b_gives_base_output() {
        let mut l = layer();
        let b = Tensor::zeros((6, 2), DType::F32, &Device::Cpu).unwrap();
        l.set_lora(LoraDelta {
            a: randn(&[2, 4]),
            b,
            scale: 2.0,
        })
        .unwrap();
        let x = randn(&[5, 4]);
        let d = max_abs_diff(&l.forward(&x).unwrap(), &l.forward_base(&x).unwrap()).unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn merged_equals_unmerged() {
        let mut l = layer();
        l.set_lora(LoraDelta {
            a: randn(&[3, 4]),
            b: randn(&[6, 3]),
            scale: 0.5,
        })
        .unwrap();
        let x = randn(&[2, 7, 4]);
        let merged = l.merged().unwrap();
        assert!(merged.lora.is_none());
        let d = max_abs_diff(&l.forward(&x).unwrap(), &merged.forward(&x).unwrap()).unwrap();
        assert!(d < 1e-5, "merged vs unmerged: {d}");
    }

    #[test]
    fn bad_lora_shapes_are_rejected() {
        let mut l = layer();
        let r = l.set_lora(LoraDelta {
            a: randn(&[2, 5]),
            b: randn(&[6, 2]),
            scale: 1.0,
        });
        assert!(r.is_err());
        assert!(l.lora.is_none());
    }

    #[test]
    fn quantized_layer_dequantizes_and_trains_lora() {
        use crate::nn::quant::QuantBits;
        let mut l = Linear::new(randn(&[8, 64]), Some(randn(&[8])));
        let dense = l.clone();
        l.quantize(QuantBits::Int8).unwrap();
        assert_eq!((l.out_dim(), l.in_dim()), (8, 64));
        assert_eq!(l.frozen_bytes(), 8 * 64 + 8 * 4);
        let x = randn(&[3, 64]);
        let want = dense.forward(&x).unwrap();
        let d = max_abs_diff(&l.forward(&x).unwrap(), &want).unwrap();
        assert!(d > 0.0 && d < 0.2, "int8 vs dense: {d}");
        let a = Var::from_tensor(&randn(&[2, 64])).unwrap();
        let b = Var::from_tensor(&randn(&[8, 2])).unwrap();
        let delta = LoraDelta::new(a.as_tensor().clone(), b.as_tensor().clone(), 0.5, 64, 8);
        l.set_lora(delta.unwrap()).unwrap();
        let loss = l.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(a.as_tensor()).is_some() && g.get(b.as_tensor()).is_some());
        assert!(g.get(&l.weight).is_none());
        let merged = l.merged().unwrap();
        assert!(merged.quant.is_none());
        let d = max_abs_diff(&l.forward(&x).unwrap(), &merged.forward(&x).unwrap()).unwrap();
        assert!(d < 1e-4, "merged vs unmerged: {d}");
        // Replacing the frozen weight re-quantizes; a cast stays quantized.
        l.set_frozen_weight(dense.weight.clone()).unwrap();
        assert!(l.quant.is_some());
        let l64 = l.to_dtype(DType::F64).unwrap();
        assert!(l64.quant.is_some() && l64.frozen_weight().unwrap().dtype() == DType::F64);
        assert!(l.set_frozen_weight(randn(&[8, 63])).is_err());
    }

    #[test]
    fn gradient_reaches_a_and_b_but_not_w() {
        let mut l = layer();
        let a = Var::from_tensor(&randn(&[2, 4])).unwrap();
        let b = Var::from_tensor(&randn(&[6, 2])).unwrap();
        l.set_lora(LoraDelta {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 1.0,
        })
        .unwrap();
        let loss = l
            .forward(&randn(&[3, 4]))
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(a.as_tensor()).is_some());
        assert!(g.get(b.as_tensor()).is_some());
        assert!(g.get(&l.weight).is_none());
    }
}
