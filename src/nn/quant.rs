//! Blockwise-quantized frozen weights (QLoRA's NF4 and 8-bit absmax) for training adapters on a
//! quantized base.
//!
//! Why not candle's `QMatMul`: it has no backward, so no gradient would reach a LoRA factor or
//! adapter placed before it (see `shared/design/candle-notes.md`). Here the quantized block is
//! plain storage and [`crate::nn::Linear`] dequantizes it to the compute dtype on every forward,
//! then runs the ordinary (differentiable) matmul; the frozen weight itself never gets a gradient.
//!
//! Formats (the row-major flattening of `W [out, in]` is cut into blocks of [`BLOCK`] = 64
//! values, the last block possibly shorter; each block stores its absmax as an f32):
//! * **NF4** (Dettmers et al. 2023): each value `x` becomes the index of the [`NF4_CODES`] entry
//!   nearest to `x / absmax`; two 4-bit indices per byte, the first element in the high nibble
//!   (bitsandbytes' order). Dequantized value `= NF4_CODES[i] · absmax`. 0.5625 bytes/param.
//! * **Int8**: `q = round(127 · x / absmax)` in `[-127, 127]`, dequantized `q · absmax / 127`.
//!   1.0625 bytes/param.
//!
//! Not done: double quantisation of the absmax constants (QLoRA's 8-bit absmax of absmax, which
//! would save another 0.37 bits/param); the absmax values stay f32. Error bounds (tested): NF4
//! `|x - x̂| ≤ ½ · max code gap · absmax` (max gap 0.3038, between −1 and −0.6962); Int8
//! `|x - x̂| ≤ absmax / 254`.

use crate::diag::OpError;
use crate::nn::LoadedModel;
use candle_core::{DType, Device, Tensor};

/// Values per quantization block (QLoRA / bitsandbytes `blocksize=64`).
pub const BLOCK: usize = 64;

/// The 16 NF4 code values (bitsandbytes `create_normal_map`, as listed in the QLoRA paper).
pub const NF4_CODES: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The quantization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantBits {
    Nf4,
    Int8,
}

impl QuantBits {
    pub fn name(self) -> &'static str {
        match self {
            QuantBits::Nf4 => "nf4",
            QuantBits::Int8 => "int8",
        }
    }
}

/// A quantized `[out, in]` weight: codes plus one f32 absmax per block.
#[derive(Debug, Clone)]
pub struct QuantTensor {
    pub bits: QuantBits,
    pub shape: Vec<usize>,
    /// NF4: packed nibbles (high nibble first); Int8: `i8` values stored as `u8`.
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
    device: Device,
}

/// Index of the NF4 code nearest to `v` (`v` in `[-1, 1]`).
fn nf4_index(v: f32) -> u8 {
    // The codes are sorted: the answer is the number of midpoints below `v`.
    let mut i = 0u8;
    while (i as usize) < 15 && v > 0.5 * (NF4_CODES[i as usize] + NF4_CODES[i as usize + 1]) {
        i += 1;
    }
    i
}

impl QuantTensor {
    /// Quantizes any float tensor (read as f32) into blocks of [`BLOCK`].
    pub fn quantize(t: &Tensor, bits: QuantBits) -> candle_core::Result<QuantTensor> {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            candle_core::bail!("cannot quantize a tensor holding NaN or infinity")
        }
        let absmax: Vec<f32> = v
            .chunks(BLOCK)
            .map(|b| b.iter().fold(0f32, |m, x| m.max(x.abs())))
            .collect();
        let scaled = |i: usize| {
            let a = absmax[i / BLOCK];
            if a > 0.0 {
                v[i] / a
            } else {
                0.0
            }
        };
        let codes = match bits {
            QuantBits::Nf4 => (0..v.len().div_ceil(2))
                .map(|j| {
                    let hi = nf4_index(scaled(2 * j));
                    let lo = if 2 * j + 1 < v.len() {
                        nf4_index(scaled(2 * j + 1))
                    } else {
                        7 // the code for 0.0 pads an odd tail
                    };
                    (hi << 4) | lo
                })
                .collect(),
            QuantBits::Int8 => (0..v.len())
                .map(|i| (scaled(i) * 127.0).round().clamp(-127.0, 127.0) as i8 as u8)
                .collect(),
        };
        Ok(QuantTensor {
            bits,
            shape: t.dims().to_vec(),
            codes,
            absmax,
            device: t.device().clone(),
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes held: codes plus the f32 absmax constants.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len()
    }

    /// The dequantized values, row-major (several threads for large weights).
    pub fn dequantize_vec(&self) -> Vec<f32> {
        let n = self.numel();
        let mut out = vec![0f32; n];
        let threads = if n >= 1 << 18 {
            std::thread::available_parallelism().map_or(1, |t| t.get().min(8))
        } else {
            1
        };
        // Chunks are whole numbers of blocks (BLOCK is even, so NF4 bytes never straddle).
        let per = n.div_ceil(threads).div_ceil(BLOCK).max(1) * BLOCK;
        std::thread::scope(|s| {
            for (c, dst) in out.chunks_mut(per).enumerate() {
                s.spawn(move || self.dequantize_into(c * per, dst));
            }
        });
        out
    }

    /// Dequantizes elements `start..start + dst.len()`; `start` is a multiple of [`BLOCK`].
    fn dequantize_into(&self, start: usize, dst: &mut [f32]) {
        for (j, out) in dst.chunks_mut(BLOCK).enumerate() {
            let i0 = start + j * BLOCK;
            let a = self.absmax[i0 / BLOCK];
            match self.bits {
                QuantBits::Nf4 => {
                    let lut = NF4_CODES.map(|c| c * a);
                    let bytes = &self.codes[i0 / 2..(i0 + out.len()).div_ceil(2)];
                    for (pair, &byte) in out.chunks_mut(2).zip(bytes) {
                        pair[0] = lut[(byte >> 4) as usize];
                        if let Some(x) = pair.get_mut(1) {
                            *x = lut[(byte & 15) as usize];
                        }
                    }
                }
                QuantBits::Int8 => {
                    let step = a / 127.0;
                    for (x, &q) in out.iter_mut().zip(&self.codes[i0..]) {
                        *x = f32::from(q as i8) * step;
                    }
                }
            }
        }
    }

    /// The dequantized weight as a `dtype` tensor on the original device.
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let t = Tensor::from_vec(self.dequantize_vec(), self.shape.as_slice(), &self.device)?;
        if dtype == DType::F32 {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSummary {
    pub bits: QuantBits,
    /// Number of linear layers quantized.
    pub layers: usize,
    /// Parameters held in quantized form.
    pub params: usize,
    /// Bytes of quantized storage (codes + absmax).
    pub quant_bytes: usize,
    /// Bytes the same weights take as f32.
    pub f32_bytes: usize,
}

/// Whether `name` is a projection inside a transformer block (not the pooler or the LM head).
fn in_block(name: &str) -> bool {
    name.starts_with("encoder.layer.") || name.starts_with("model.layers.")
}

/// Replaces the frozen weight of every transformer-block linear by quantized storage (biases,
/// embeddings, norms, pooler and heads stay f32). LoRA deltas and adapter hooks already on a
/// layer stay attached. A model that is already quantized is a `smelt::quant::already_quantized`
/// error.
pub fn quantize_model(model: &mut LoadedModel, bits: QuantBits) -> Result<QuantSummary, OpError> {
    let mut s = QuantSummary {
        bits,
        layers: 0,
        params: 0,
        quant_bytes: 0,
        f32_bytes: 0,
    };
    for (name, lin) in model.linears_mut() {
        if !in_block(&name) {
            continue;
        }
        if let Some(q) = &lin.quant {
            return Err(OpError::new(
                "smelt::quant::already_quantized",
                format!("{name} is already quantized ({})", q.bits.name()),
            )
            .with_help("quantize a freshly loaded model once"));
        }
        lin.quantize(bits)
            .map_err(|e| OpError::new("smelt::quant::failed", format!("{name}: {e}")))?;
        let q = lin.quant.as_ref().map_or(0, |q| q.storage_bytes());
        s.layers += 1;
        s.params += lin.out_dim() * lin.in_dim();
        s.quant_bytes += q;
        s.f32_bytes += 4 * lin.out_dim() * lin.in_dim();
    }
    if s.layers == 0 {
        return Err(OpError::new(
            "smelt::quant::nothing_to_quantize",
            "the model has no transformer-block linear layers",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal_blocks(n: usize, seed: u64) -> Tensor {
        let map = crate::nn::weights::synthetic(&[("w".into(), vec![n])], seed, &Device::Cpu);
        (map.unwrap()["w"].clone() * 20.0).unwrap() // synthetic is N(0, 0.05²): rescale to N(0, 1)
    }

    #[test]
    fn nf4_codes_are_reproduced_exactly() {
        let mut v: Vec<f32> = NF4_CODES.iter().map(|c| c * 3.5).collect();
        v.extend(NF4_CODES.iter().rev().map(|c| c * 3.5));
        let t = Tensor::from_vec(v.clone(), (2, 16), &Device::Cpu).unwrap();
        let q = QuantTensor::quantize(&t, QuantBits::Nf4).unwrap();
        assert_eq!(q.absmax, vec![3.5]);
        assert_eq!(q.codes[0], 0x01, "-1 → 0 (high nibble), -0.696 → 1");
        assert_eq!(q.dequantize_vec(), v);
        assert_eq!(NF4_CODES.len(), 16);
        assert!(NF4_CODES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nf4_error_is_within_half_the_largest_gap() {
        let t = normal_blocks(64 * 200 + 37, 1); // odd tail: a short last block and half a byte
        let q = QuantTensor::quantize(&t, QuantBits::Nf4).unwrap();
        assert_eq!(q.codes.len(), t.elem_count().div_ceil(2));
        let gap = NF4_CODES
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0f32, f32::max);
        assert!((gap - 0.303_807_2).abs() < 1e-6);
        let (x, y) = (t.to_vec1::<f32>().unwrap(), q.dequantize_vec());
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let bound = 0.5 * gap * q.absmax[i / BLOCK] * (1.0 + 1e-6);
            assert!((a - b).abs() <= bound, "{i}: {a} vs {b}");
        }
    }

    #[test]
    fn int8_error_is_within_half_a_step() {
        let t = normal_blocks(64 * 100 + 5, 2);
        let q = QuantTensor::quantize(&t, QuantBits::Int8).unwrap();
        let (x, y) = (t.to_vec1::<f32>().unwrap(), q.dequantize_vec());
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let bound = q.absmax[i / BLOCK] / 127.0 / 2.0 * (1.0 + 1e-5);
            assert!((a - b).abs() <= bound, "{i}: {a} vs {b}");
        }
        assert_eq!(q.storage_bytes(), 6405 + 4 * 101);
    }

    #[test]
    fn zero_blocks_and_bad_values() {
        let t = Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap();
        for bits in [QuantBits::Nf4, QuantBits::Int8] {
            let q = QuantTensor::quantize(&t, bits).unwrap();
            assert!(q.dequantize_vec().iter().all(|v| *v == 0.0));
        }
        let bad = Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap();
        assert!(QuantTensor::quantize(&bad, QuantBits::Nf4).is_err());
    }

    #[test]
    fn threaded_dequantization_matches_serial() {
        let t = normal_blocks(1 << 19, 3);
        let q = QuantTensor::quantize(&t, QuantBits::Nf4).unwrap();
        let mut serial = vec![0f32; q.numel()];
        q.dequantize_into(0, &mut serial);
        assert_eq!(q.dequantize_vec(), serial);
    }
}
