//! Gradient-safe tensor ops shared by the model files (norms, softmax, RoPE, GELU, masks).
//!
//! Several fused candle kernels (`layer_norm`, `rms_norm`, `softmax_last_dim`, fused rope) have
//! no backward pass: gradients silently stop at them (see `shared/design/candle-notes.md`). Every
//! op here therefore takes the differentiable composite path whenever any input is tracked by
//! autograd (`Tensor::track_op`: a `Var` or something computed from one), and the faster fused
//! kernel only on pure inference paths, where no gradient can be lost. Both paths agree to ~1e-6.
//! RMSNorm is the exception: it is always the composite, with f64 statistics (see [`rms_norm`]).
//! GELU is a multithreaded custom op with its own backward (see [`gelu_erf`]).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};

/// Whether the fused (no-backward) kernel may be used: nothing tracked, and a dtype the fused
/// CPU kernels implement.
fn fused_ok(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| !t.track_op() && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16))
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_ok(&[x, weight, bias]) {
        candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)
    } else {
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)
    }
}

/// LayerNorm parameters (`{name}.weight`, `{name}.bias`) with their epsilon.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `{name}.weight` and `{name}.bias`, both `[h]`.
    pub fn load(
        w: &crate::nn::weights::Weights,
        name: &str,
        h: usize,
        eps: f64,
    ) -> std::result::Result<LayerNorm, crate::diag::OpError> {
        let weight = w.get_shape(&format!("{name}.weight"), &[h])?;
        let bias = w.get_shape(&format!("{name}.bias"), &[h])?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm over the last dimension: `x · rsqrt(mean(x²) + eps) · weight` (HF Llama order).
///
/// Always the differentiable composite, with the mean of squares accumulated in f64: decoders
/// such as SmolLM2 carry "massive activations" (|x| ≈ 2·10⁴ in one channel), and candle's fused
/// kernel sums squares sequentially in f32, losing ~10⁻⁵ relative accuracy on every norm (it
/// pushed SmolLM2 logits past 1e-4 of the torch reference; with f64 statistics they are within
/// 8.2e-5). The cost is a few elementwise passes over `[B, T, H]`, negligible next to the matmuls.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.to_dtype(DType::F64)?.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight)
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fused_ok(&[x]) {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// HF-convention RoPE (`x·cos + rotate_half(x)·sin`, halves rotated, not interleaved) on
/// `x [B, H, T, D]` with `cos`/`sin` `[T, D/2]` (already narrowed to the sequence).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_ok(&[x, cos, sin]) {
        candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
    } else {
        candle_nn::rotary_emb::rope_slow(x, cos, sin)
    }
}

/// Exact (erf) GELU. On CPU f32 it is a custom op that splits the work across threads (candle's
/// unary ops run on one core, which made GELU a quarter of an encoder layer) and has an analytic
/// backward; its values are bit-identical to `Tensor::gelu_erf` (same erf routine).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

fn gelu_f32(v: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
fn gelu_grad_f32(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
    cdf + v * (-0.5 * v * v).exp() * 0.398_942_3
}

/// Elementwise `f` over a contiguous f32 storage, on all cores for large inputs.
fn par_map_f32(s: &CpuStorage, l: &Layout, f: fn(f32) -> f32) -> Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("expected f32 storage")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor")
    };
    let src = &v[a..b];
    let mut dst = vec![0f32; src.len()];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(src.len() / (1 << 15) + 1);
    if threads <= 1 {
        dst.iter_mut().zip(src).for_each(|(d, x)| *d = f(*x));
    } else {
        let chunk = src.len().div_ceil(threads);
        std::thread::scope(|sc| {
            for (d, x) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                sc.spawn(move || d.iter_mut().zip(x).for_each(|(d, x)| *d = f(*x)));
            }
        });
    }
    Ok((CpuStorage::F32(dst), l.shape().clone()))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "smelt-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        par_map_f32(s, l, gelu_f32)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.contiguous()?.apply_op1_no_bwd(&GeluErfGrad)?;
        Ok(Some(grad.mul(&d)?))
    }
}

struct GeluErfGrad;

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "smelt-gelu-erf-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        par_map_f32(s, l, gelu_grad_f32)
    }
}

/// Rows of a 0/1 attention mask (any numeric dtype, `[B, T]`) as booleans.
pub fn mask_rows(mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let m = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(m.into_iter()
        .map(|r| r.into_iter().map(|v| v != 0.0).collect())
        .collect())
}

/// Additive key-padding mask `[B, 1, 1, T]`: 0 where `mask` is 1, `f32::MIN` where it is 0
/// (HF's `finfo.min` convention; a fully masked row degrades to a uniform softmax, never NaN).
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((m - 1.0)? * f64::from(f32::MAX))?.reshape((b, 1, 1, t))
}

/// Additive causal (+ optional key-padding) mask `[B, 1, T, T]`: query `i` may see key `j` iff
/// `j <= i` and key `j` is not padding.
pub fn causal_bias(b: usize, t: usize, mask: Option<&Tensor>, device: &Device) -> Result<Tensor> {
    let rows = match mask {
        Some(m) => mask_rows(m)?,
        None => vec![vec![true; t]; b],
    };
    let mut data = vec![0f32; b * t * t];
    for (bi, row) in rows.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                if j > i || !row[j] {
                    data[(bi * t + i) * t + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(data, (b, 1, t, t), device)
}

/// Largest absolute elementwise difference between two tensors of the same shape (as f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: (usize, usize, usize)) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_and_slow_paths_agree() {
        let x = rand((2, 5, 16));
        let w = Tensor::randn(1f32, 0.1, 16, &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 0.1, 16, &Device::Cpu).unwrap();
        let fused = layer_norm(&x, &w, &bias, 1e-12).unwrap();
        let slow = candle_nn::ops::layer_norm_slow(&x, &w, &bias, 1e-12).unwrap();
        assert!(max_abs_diff(&fused, &slow).unwrap() < 1e-5);
        let ours = rms_norm(&x, &w, 1e-5).unwrap();
        let slow = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
        assert!(max_abs_diff(&ours, &slow).unwrap() < 1e-5);
        let fused = softmax_last(&x).unwrap();
        let slow = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert!(max_abs_diff(&fused, &slow).unwrap() < 1e-6);
    }

    #[test]
    fn gradients_flow_through_norms_and_softmax() {
        let v = Var::from_tensor(&rand((2, 3, 8))).unwrap();
        let w = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
        let y = layer_norm(v.as_tensor(), &w, &z, 1e-5).unwrap();
        let y = rms_norm(&(y * 1.5).unwrap(), &w, 1e-5).unwrap();
        let y = softmax_last(&y).unwrap();
        let probe = rand((2, 3, 8));
        let loss = (y * probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(v.as_tensor())
            .expect("gradient reaches the input");
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0);
    }

    #[test]
    fn rope_paths_agree_and_rotate_halves() {
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 4), &Device::Cpu).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (3, 2), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (3, 2), &Device::Cpu).unwrap();
        let fused = rope(&x, &cos, &sin).unwrap();
        let slow = candle_nn::rotary_emb::rope_slow(&x, &cos, &sin).unwrap();
        assert!(max_abs_diff(&fused, &slow).unwrap() < 1e-6);
        // x = [1, 0, 0, 0] at angle θ₀ with cos = 0, sin = 1 → [0, 0, 1, 0] (HF rotate_half).
        let x = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0]]]], &Device::Cpu).unwrap();
        let c = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
        let s = Tensor::new(&[[1f32, 0.0]], &Device::Cpu).unwrap();
        let y = rope(&x, &c, &s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn gelu_matches_candle_values_and_gradient() {
        let x = Tensor::randn(0f32, 2.0, (3, 40_000), &Device::Cpu).unwrap();
        let d = max_abs_diff(&gelu_erf(&x).unwrap(), &x.gelu_erf().unwrap()).unwrap();
        assert_eq!(d, 0.0);
        let v = Var::from_tensor(&x.narrow(1, 0, 50).unwrap()).unwrap();
        let g1 = gelu_erf(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = v
            .as_tensor()
            .gelu_erf()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(v.as_tensor()).unwrap(),
            g2.get(v.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(g1, g2).unwrap() < 1e-5);
    }

    #[test]
    fn masks_block_the_right_keys() {
        let m = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let p = padding_bias(&m)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p, vec![0.0, 0.0, f32::MIN]);
        let c = causal_bias(1, 3, Some(&m), &Device::Cpu).unwrap();
        let c = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let allowed: Vec<bool> = c.iter().map(|v| *v == 0.0).collect();
        let expect = [true, false, false, true, true, false, true, true, false];
        assert_eq!(allowed, expect);
    }
}
