//! Llama-family decoder (Llama, SmolLM2, Qwen2) built from differentiable candle ops.
//!
//! Matches HF `LlamaForCausalLM` / `Qwen2ForCausalLM` in eval mode: RMSNorm, RoPE with HF's
//! rotate-half convention (θ from config), grouped-query attention, SwiGLU MLP
//! (`down(silu(gate(x)) · up(x))`), causal plus key-padding mask, final norm and LM head (tied to
//! the embeddings when `lm_head.weight` is absent). GQA never copies K/V: the query heads of one
//! KV group are folded into the row dimension of one matmul. Positions are `0..T` (as HF's
//! forward without `position_ids`), so batches should be right-padded. There is no KV cache:
//! `generate` re-runs the full sequence per token, which is fine for short greedy checks.
//!
//! Prefix tuning hooks in through `prefix` (see [`crate::nn::peft::prefix`]): per layer `P`
//! key/value vectors per KV head are prepended after RoPE (prefix keys are not rotated), every
//! query sees them, and the real tokens take positions `P..P+T`, as HF with `past_key_values`.
//!
//! Per-example gradients hook in through `set_probe` (see [`crate::nn::probe`]): the embedding
//! lookup, every RMSNorm and every projection (the LM head included) record their output
//! gradient and input.

use crate::diag::OpError;
use crate::nn::config::LlamaConfig;
use crate::nn::linear::Linear;
use crate::nn::ops::{causal_bias, rms_norm, rope, softmax_last};
use crate::nn::peft::prefix::{prepend, PrefixHook};
use crate::nn::probe::{Probe, Tap};
use crate::nn::weights::Weights;
use candle_core::{DType, Device, Tensor, D};

#[derive(Debug, Clone)]
pub struct LlamaLayer {
    pub input_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub post_norm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<LlamaLayer>,
    pub norm: Tensor,
    /// The output projection; shares `embed_tokens` when `tied`.
    pub lm_head: Linear,
    pub tied: bool,
    /// Prefix-tuning keys/values prepended in every layer's attention.
    pub prefix: Option<PrefixHook>,
    /// Gradient probe for per-example gradients (installed with [`LlamaModel::set_probe`]).
    pub probe: Option<Probe>,
    /// RoPE tables `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

/// Decoder outputs before the LM head.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    /// Final hidden state after the last RMSNorm, `[B, T, H]`.
    pub last_hidden_state: Tensor,
    /// Embedding output then each layer's output (the last one post final norm, as HF), when asked.
    pub hidden_states: Vec<Tensor>,
}

/// Tensor names and shapes of a checkpoint for `c` (HF layout, `model.` prefix, no lm_head when
/// tied). Used with [`crate::nn::weights::synthetic`] to build tiny random models.
pub fn checkpoint_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for (n, o, inp) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            v.push((format!("{p}.self_attn.{n}.weight"), vec![o, inp]));
            if c.qkv_bias && n != "o_proj" {
                v.push((format!("{p}.self_attn.{n}.bias"), vec![o]));
            }
        }
        for (n, o, inp) in [("gate_proj", f, h), ("up_proj", f, h), ("down_proj", h, f)] {
            v.push((format!("{p}.mlp.{n}.weight"), vec![o, inp]));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    v
}

impl LlamaModel {
    /// Loads HF-named weights (`model.layers.N.self_attn.q_proj`, …; `model.` prefix optional).
    pub fn load(w: &mut Weights, config: &LlamaConfig) -> Result<LlamaModel, OpError> {
        let c = config;
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        w.choose_prefix(&["model.", ""], "embed_tokens.weight");
        let embed_tokens = w.get_shape("embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("layers.{i}");
            let b = c.qkv_bias;
            layers.push(LlamaLayer {
                input_norm: w.get_shape(&format!("{p}.input_layernorm.weight"), &[h])?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), q, h, b)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), kv, h, b)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), kv, h, b)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h, q, false)?,
                post_norm: w.get_shape(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), f, h, false)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), f, h, false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), h, f, false)?,
            });
        }
        let norm = w.get_shape("norm.weight", &[h])?;
        let (lm_head, tied) = if w.contains_raw("lm_head.weight") {
            (Linear::new(w.get_raw("lm_head.weight")?, None), false)
        } else {
            (Linear::new(embed_tokens.clone(), None), true)
        };
        if lm_head.weight.dims() != [c.vocab_size, h] {
            return Err(OpError::new(
                "smelt::model::weight_shape",
                "lm_head.weight does not match config.json",
            ));
        }
        let (cos, sin) = rope_tables(c, w.device())?;
        Ok(LlamaModel {
            config: c.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied,
            prefix: None,
            probe: None,
            cos,
            sin,
        })
    }

    /// The model with every weight cast to `dtype` (e.g. F64 for reference checks, BF16 for
    /// speed); LoRA deltas and the prefix are dropped.
    pub fn to_dtype(&self, dtype: DType) -> Result<LlamaModel, OpError> {
        let cast = |t: &Tensor| t.to_dtype(dtype);
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(LlamaLayer {
                input_norm: cast(&l.input_norm)?,
                q_proj: l.q_proj.to_dtype(dtype)?,
                k_proj: l.k_proj.to_dtype(dtype)?,
                v_proj: l.v_proj.to_dtype(dtype)?,
                o_proj: l.o_proj.to_dtype(dtype)?,
                post_norm: cast(&l.post_norm)?,
                gate_proj: l.gate_proj.to_dtype(dtype)?,
                up_proj: l.up_proj.to_dtype(dtype)?,
                down_proj: l.down_proj.to_dtype(dtype)?,
            });
        }
        let embed_tokens = cast(&self.embed_tokens)?;
        let lm_head = if self.tied {
            Linear::new(embed_tokens.clone(), None)
        } else {
            self.lm_head.to_dtype(dtype)?
        };
        Ok(LlamaModel {
            config: self.config.clone(),
            embed_tokens,
            layers,
            norm: cast(&self.norm)?,
            lm_head,
            tied: self.tied,
            prefix: None,
            probe: None,
            cos: cast(&self.cos)?,
            sin: cast(&self.sin)?,
        })
    }

    /// Installs (or removes) a gradient probe on the embedding lookup, every RMSNorm and every
    /// projection including the LM head.
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        for l in &mut self.layers {
            for lin in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ] {
                lin.probe = probe.clone();
            }
        }
        self.lm_head.probe = probe.clone();
        self.probe = probe;
    }

    /// RMSNorm with `weight`, probed when a probe is installed.
    fn norm(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let y = rms_norm(x, weight, eps)?;
        match &self.probe {
            Some(p) => p.rms_norm(&y, x, weight, eps),
            None => Ok(y),
        }
    }

    /// Full-sequence logits `[B, T, vocab]` for integer `ids [B, T]` and an optional 0/1
    /// key-padding `mask [B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, OpError> {
        let out = self.forward_hidden(ids, mask, false)?;
        Ok(self.lm_head.forward(&out.last_hidden_state)?)
    }

    /// Logits of the last position only, `[B, vocab]` (skips the LM head on other positions).
    pub fn last_logits(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, OpError> {
        let h = self.forward_hidden(ids, mask, false)?.last_hidden_state;
        let t = h.dim(1)?;
        Ok(self.lm_head.forward(&h.narrow(1, t - 1, 1)?.squeeze(1)?)?)
    }

    /// Hidden states before the LM head (post final RMSNorm).
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        all_hidden: bool,
    ) -> Result<LlamaOutput, OpError> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let p = self.prefix.as_ref().map_or(0, |h| h.len);
        if t == 0 || t + p > self.cos.dim(0)? {
            return Err(OpError::new(
                "smelt::model::sequence_too_long",
                format!(
                    "sequence of {t} tokens (+ {p} prefix) is outside 1..={}",
                    self.cos.dim(0)?
                ),
            ));
        }
        let mut x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        if let Some(p) = &self.probe {
            let tap = Tap::Lookup {
                table: self.embed_tokens.id(),
                ids: ids.clone(),
            };
            x = p.tap(&x, vec![tap])?;
        }
        let mut bias = causal_bias(b, t, mask, x.device())?.to_dtype(x.dtype())?;
        let kv = self.prefix.as_ref().map(|h| (h.kv)()).transpose()?;
        if kv.as_ref().is_some_and(|kv| kv.len() != self.layers.len()) {
            return Err(OpError::new(
                "smelt::peft::shape",
                "the prefix has a different number of layers than the model",
            ));
        }
        if p > 0 {
            let open = Tensor::zeros((b, 1, t, p), bias.dtype(), bias.device())?;
            bias = Tensor::cat(&[&open, &bias], 3)?;
        }
        let (cos, sin) = (self.cos.narrow(0, p, t)?, self.sin.narrow(0, p, t)?);
        let mut hidden_states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if all_hidden {
                hidden_states.push(x.clone());
            }
            let pre = kv.as_ref().map(|kv| &kv[i]);
            x = self.layer_forward(layer, &x, &bias, pre, &cos, &sin)?;
        }
        let x = self.norm(&x, &self.norm)?;
        if all_hidden {
            hidden_states.push(x.clone());
        }
        Ok(LlamaOutput {
            last_hidden_state: x,
            hidden_states,
        })
    }

    fn layer_forward(
        &self,
        l: &LlamaLayer,
        x: &Tensor,
        bias: &Tensor,
        prefix: Option<&(Tensor, Tensor)>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / nkv;
        let h = self.norm(x, &l.input_norm)?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
        let q = rope(&heads(l.q_proj.forward(&h)?, nh)?, cos, sin)?;
        let mut k = rope(&heads(l.k_proj.forward(&h)?, nkv)?, cos, sin)?;
        let mut v = heads(l.v_proj.forward(&h)?, nkv)?;
        if let Some((pk, pv)) = prefix {
            (k, v) = (prepend(pk, &k)?, prepend(pv, &v)?);
        }
        let s = k.dim(2)?; // keys: prefix + T
                           // Fold the `rep` query heads sharing one KV head into rows: [B, nkv, rep·T, hd].
        let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nkv, rep, t, s))?;
        let scores = scores.broadcast_add(&bias.unsqueeze(1)?)?;
        let probs = softmax_last(&scores)?.reshape((b, nkv, rep * t, s))?;
        let ctx = probs
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let x = (x + l.o_proj.forward(&ctx)?)?;
        let h = self.norm(&x, &l.post_norm)?;
        let m = (l.gate_proj.forward(&h)?.silu()? * l.up_proj.forward(&h)?)?;
        x + l.down_proj.forward(&m)?
    }

    /// Greedy decoding of `n` new tokens from one prompt (no EOS stop; re-runs the full
    /// sequence each step). Returns only the new tokens.
    pub fn generate(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>, OpError> {
        let mut seq = prompt.to_vec();
        let device = self.embed_tokens.device();
        for _ in 0..n {
            let ids = Tensor::new(seq.as_slice(), device)?.unsqueeze(0)?;
            let logits = self.last_logits(&ids, None)?;
            let next = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0];
            seq.push(next);
        }
        Ok(seq[prompt.len()..].to_vec())
    }

    /// Every injectable projection with its HF module name (`model.layers.0.self_attn.q_proj`).
    /// The LM head is excluded when tied to the embeddings.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.self_attn.q_proj"), &mut l.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &mut l.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &mut l.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &mut l.o_proj));
            v.push((format!("{p}.mlp.gate_proj"), &mut l.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut l.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut l.down_proj));
        }
        if !self.tied {
            v.push(("lm_head".into(), &mut self.lm_head));
        }
        v
    }
}

/// cos/sin tables as HF computes them in f32: `inv_freq = 1 / θ^(2i/d)`, angle = pos · inv_freq.
fn rope_tables(c: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor), OpError> {
    let half = c.head_dim / 2;
    let n = c.max_position_embeddings.min(1 << 15);
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (c.rope_theta as f32).powf((2 * i) as f32 / c.head_dim as f32))
        .collect();
    let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
    for p in 0..n {
        for f in &inv {
            let a = f64::from(p as f32 * f);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::config::{LlamaConfig, LlamaFlavor};
    use crate::nn::ops::max_abs_diff;
    use crate::nn::weights::synthetic;

    fn tiny(flavor: LlamaFlavor) -> LlamaConfig {
        LlamaConfig {
            flavor,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            vocab_size: 32,
            tie_word_embeddings: true,
            max_position_embeddings: 64,
            qkv_bias: flavor == LlamaFlavor::Qwen2,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    fn model(c: &LlamaConfig) -> LlamaModel {
        let map = synthetic(&checkpoint_shapes(c), 3, &Device::Cpu).unwrap();
        LlamaModel::load(&mut Weights::from_map(map, &Device::Cpu), c).unwrap()
    }

    #[test]
    fn causal_prefix_and_right_padding_do_not_change_logits() {
        let mut m = model(&tiny(LlamaFlavor::Qwen2));
        let ids = Tensor::new(&[[3u32, 7, 1, 9, 4]], &Device::Cpu).unwrap();
        let full = m.forward(&ids, None).unwrap();
        let prefix = m.forward(&ids.narrow(1, 0, 3).unwrap(), None).unwrap();
        assert!(max_abs_diff(&full.narrow(1, 0, 3).unwrap(), &prefix).unwrap() < 1e-5);
        let padded = Tensor::new(&[[3u32, 7, 1, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 0, 0]], &Device::Cpu).unwrap();
        let p = m.forward(&padded, Some(&mask)).unwrap();
        assert!(max_abs_diff(&p.narrow(1, 0, 3).unwrap(), &prefix).unwrap() < 1e-5);
        assert!(m.tied && m.linears_mut().len() == 14);
    }

    #[test]
    fn prefix_of_earlier_keys_values_equals_the_full_sequence() {
        // HF `past_key_values` semantics: a prefix holding the RoPE'd keys and the values of
        // tokens 0..P must give the later tokens (positions P..) the full-sequence logits.
        let mut m = model(&tiny(LlamaFlavor::Qwen2));
        let ids = Tensor::new(&[[3u32, 7, 1, 9, 4]], &Device::Cpu).unwrap();
        let full = m.forward(&ids, None).unwrap();
        let (p, c) = (2, m.config.clone());
        let hs = m
            .forward_hidden(&ids.narrow(1, 0, p).unwrap(), None, true)
            .unwrap()
            .hidden_states;
        let (cos, sin) = (
            m.cos.narrow(0, 0, p).unwrap(),
            m.sin.narrow(0, 0, p).unwrap(),
        );
        let heads = |y: Tensor| {
            y.reshape((1, p, c.num_key_value_heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let mut kv = Vec::new();
        for (i, l) in m.layers.iter().enumerate() {
            let h = rms_norm(&hs[i], &l.input_norm, c.rms_norm_eps).unwrap();
            let k = rope(&heads(l.k_proj.forward(&h).unwrap()).unwrap(), &cos, &sin).unwrap();
            let v = heads(l.v_proj.forward(&h).unwrap()).unwrap();
            kv.push((k.squeeze(0).unwrap(), v.squeeze(0).unwrap()));
        }
        m.prefix = Some(PrefixHook {
            len: p,
            kv: std::sync::Arc::new(move || Ok(kv.clone())),
        });
        let tail = m.forward(&ids.narrow(1, p, 3).unwrap(), None).unwrap();
        let d = max_abs_diff(&tail, &full.narrow(1, p, 3).unwrap()).unwrap();
        assert!(d < 1e-5, "prefix vs full sequence: {d}");
    }

    #[test]
    fn f64_copy_agrees_with_f32() {
        let m = model(&tiny(LlamaFlavor::Llama));
        let ids = Tensor::new(&[[4u32, 2, 8]], &Device::Cpu).unwrap();
        let a = m.forward(&ids, None).unwrap();
        let b = m.to_dtype(DType::F64).unwrap().forward(&ids, None).unwrap();
        assert_eq!(b.dtype(), DType::F64);
        assert!(max_abs_diff(&a, &b).unwrap() < 1e-5);
    }

    #[test]
    fn generate_is_deterministic_and_matches_argmax() {
        let m = model(&tiny(LlamaFlavor::Llama));
        let g = m.generate(&[1, 2, 3], 4).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(g, m.generate(&[1, 2, 3], 4).unwrap());
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let first = m
            .forward(&ids, None)
            .unwrap()
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .argmax(0)
            .unwrap();
        assert_eq!(first.to_scalar::<u32>().unwrap(), g[0]);
    }
}
