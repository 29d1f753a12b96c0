//! BERT / RoBERTa encoder built from differentiable candle ops (post-LN, exact GELU).
//!
//! Matches HF `BertModel` / `RobertaModel` in eval mode: embeddings (word + token type +
//! position, then LayerNorm; RoBERTa positions start at `pad + 1` and skip padding), self
//! attention with an additive padding mask, FFN, post-LN residuals; optional pooler (tanh dense
//! on `[CLS]`), sequence-classification head and MLM head. Every projection is a
//! [`Linear`](crate::nn::linear::Linear) so LoRA deltas can be injected (see `linears_mut`).
//!
//! MLM head: when the checkpoint has `cls.predictions.*` (BERT) or `lm_head.*` (RoBERTa) the full
//! head is used (transform dense + act + LayerNorm + decoder + bias). The committed models have
//! none; then the head is **tied decoder only**: `logits = hidden · Eᵀ` with `E` the word
//! embeddings and no transform or bias (nothing is initialised at random). `mlm_is_tied_only`
//! reports which case applies. No dropout: this is the eval-mode forward.

use crate::diag::OpError;
use crate::nn::config::{Activation, BertConfig, BertFlavor};
use crate::nn::linear::Linear;
use crate::nn::ops::{layer_norm, mask_rows, padding_bias, softmax_last};
use crate::nn::weights::Weights;
use candle_core::{DType, Tensor, D};

/// LayerNorm parameters.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, name: &str, h: usize, eps: f64) -> Result<LayerNorm, OpError> {
        let weight = w.get_shape(&format!("{name}.weight"), &[h])?;
        let bias = w.get_shape(&format!("{name}.bias"), &[h])?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Option<Tensor>,
    pub norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
}

/// Sequence-classification head.
#[derive(Debug, Clone)]
pub enum ClassifierHead {
    /// BERT: `classifier(pooled)` (on `[CLS]` when the model has no pooler).
    Linear(Linear),
    /// RoBERTa: `out_proj(tanh(dense(h[CLS])))`.
    Roberta { dense: Linear, out_proj: Linear },
}

/// Masked-LM head; `transform` is `None` for the tied-decoder-only case.
#[derive(Debug, Clone)]
pub struct MlmHead {
    pub transform: Option<(Linear, LayerNorm)>,
    pub decoder: Linear,
}

#[derive(Debug, Clone)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<Linear>,
    pub classifier: Option<ClassifierHead>,
    pub mlm: MlmHead,
}

/// Encoder outputs.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// `[B, T, H]`
    pub last_hidden_state: Tensor,
    /// Embedding output then each layer's output (`num_layers + 1` tensors) when requested.
    pub hidden_states: Vec<Tensor>,
    /// `tanh(dense(h[CLS]))` when the checkpoint has a pooler.
    pub pooled: Option<Tensor>,
}

impl BertModel {
    /// Loads weights named as in HF checkpoints, with or without a `bert.`/`roberta.` prefix.
    pub fn load(w: &mut Weights, config: &BertConfig) -> Result<BertModel, OpError> {
        let c = config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        w.choose_prefix(&["", "bert.", "roberta.", "model."], "embeddings.word_embeddings.weight");
        let token_type = match w.get_opt("embeddings.token_type_embeddings.weight")? {
            Some(t) if t.dims() != [c.type_vocab_size, h] => {
                return Err(OpError::new(
                    "smelt::model::weight_shape",
                    format!("token_type_embeddings {:?} do not match config", t.dims()),
                ))
            }
            t => t,
        };
        let embeddings = BertEmbeddings {
            word: w.get_shape("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: w.get_shape("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?,
            token_type,
            norm: LayerNorm::load(w, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                query: w.linear(&format!("{p}.attention.self.query"), h, h, true)?,
                key: w.linear(&format!("{p}.attention.self.key"), h, h, true)?,
                value: w.linear(&format!("{p}.attention.self.value"), h, h, true)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h, true)?,
                attn_norm: LayerNorm::load(w, &format!("{p}.attention.output.LayerNorm"), h, c.layer_norm_eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), f, h, true)?,
                output: w.linear(&format!("{p}.output.dense"), h, f, true)?,
                out_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        let pooler =
            if w.contains("pooler.dense.weight") { Some(w.linear("pooler.dense", h, h, true)?) } else { None };
        let classifier = load_classifier(w, h)?;
        let mlm = load_mlm(w, c, &embeddings.word)?;
        Ok(BertModel { config: c.clone(), embeddings, layers, pooler, classifier, mlm })
    }

    /// Last hidden state `[B, T, H]`. `ids`, `type_ids`, `mask` are integer `[B, T]` tensors;
    /// `type_ids` defaults to zeros and `mask` to all ones.
    pub fn forward(&self, ids: &Tensor, type_ids: Option<&Tensor>, mask: Option<&Tensor>) -> Result<Tensor, OpError> {
        Ok(self.forward_all(ids, type_ids, mask, false)?.last_hidden_state)
    }

    /// Full forward: last hidden state, optionally every hidden state, and the pooled output.
    pub fn forward_all(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
        all_hidden: bool,
    ) -> Result<BertOutput, OpError> {
        let (b, t) = ids.dims2()?;
        if t > self.position_limit() {
            return Err(OpError::new(
                "smelt::model::sequence_too_long",
                format!("sequence of {t} tokens exceeds the model's {} positions", self.position_limit()),
            )
            .with_help("truncate the inputs"));
        }
        let mut x = self.embed(ids, type_ids, mask)?;
        let bias = mask.map(padding_bias).transpose()?;
        let mut hidden_states = Vec::new();
        for layer in &self.layers {
            if all_hidden {
                hidden_states.push(x.clone());
            }
            x = self.layer_forward(layer, &x, bias.as_ref(), b, t)?;
        }
        if all_hidden {
            hidden_states.push(x.clone());
        }
        let pooled = match &self.pooler {
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(BertOutput { last_hidden_state: x, hidden_states, pooled })
    }

    fn position_limit(&self) -> usize {
        let c = &self.config;
        match c.flavor {
            BertFlavor::Bert => c.max_position_embeddings,
            BertFlavor::Roberta => c.max_position_embeddings.saturating_sub(c.pad_token_id as usize + 1),
        }
    }

    fn embed(&self, ids: &Tensor, type_ids: Option<&Tensor>, mask: Option<&Tensor>) -> Result<Tensor, OpError> {
        let (b, t) = ids.dims2()?;
        let e = &self.embeddings;
        let h = self.config.hidden_size;
        let mut x = e.word.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?;
        if let Some(tt) = &e.token_type {
            x = match type_ids {
                Some(ty) => (x + tt.index_select(&ty.flatten_all()?, 0)?.reshape((b, t, h))?)?,
                None => x.broadcast_add(&tt.narrow(0, 0, 1)?)?,
            };
        }
        x = match self.config.flavor {
            BertFlavor::Bert => x.broadcast_add(&e.position.narrow(0, 0, t)?)?,
            BertFlavor::Roberta => {
                let pos = roberta_positions(ids, mask, self.config.pad_token_id)?;
                (x + e.position.index_select(&pos, 0)?.reshape((b, t, h))?)?
            }
        };
        Ok(e.norm.forward(&x)?)
    }

    fn layer_forward(
        &self,
        l: &BertLayer,
        x: &Tensor,
        bias: Option<&Tensor>,
        b: usize,
        t: usize,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (nh, hd) = (c.num_attention_heads, c.head_dim());
        let heads = |y: Tensor| y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous();
        let q = heads((l.query.forward(x)? * (1.0 / (hd as f64).sqrt()))?)?;
        let k = heads(l.key.forward(x)?)?;
        let v = heads(l.value.forward(x)?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(m) = bias {
            scores = scores.broadcast_add(m)?;
        }
        let ctx = softmax_last(&scores)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + x)?)?;
        let f = c.hidden_act.apply(&l.intermediate.forward(&a)?)?;
        l.out_norm.forward(&(l.output.forward(&f)? + a)?)
    }

    /// Sequence-classification logits `[B, labels]`; errors when the checkpoint has no head.
    pub fn classify(&self, out: &BertOutput) -> Result<Tensor, OpError> {
        let cls = out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(match &self.classifier {
            Some(ClassifierHead::Linear(l)) => l.forward(out.pooled.as_ref().unwrap_or(&cls))?,
            Some(ClassifierHead::Roberta { dense, out_proj }) => out_proj.forward(&dense.forward(&cls)?.tanh()?)?,
            None => {
                return Err(OpError::new(
                    "smelt::model::no_head",
                    "the checkpoint has no sequence-classification head (`classifier.*`)",
                ))
            }
        })
    }

    /// Whether the MLM head is the tied decoder only (no `cls.predictions.*` weights).
    pub fn mlm_is_tied_only(&self) -> bool {
        self.mlm.transform.is_none()
    }

    /// MLM logits `[..., vocab]` for hidden states `[..., H]` (gather `[MASK]` rows first:
    /// the decoder is a `H × vocab` product per row).
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor, OpError> {
        let x = match &self.mlm.transform {
            Some((dense, norm)) => {
                let act = match self.config.flavor {
                    BertFlavor::Bert => self.config.hidden_act,
                    BertFlavor::Roberta => Activation::GeluErf,
                };
                norm.forward(&act.apply(&dense.forward(hidden)?)?)?
            }
            None => hidden.clone(),
        };
        Ok(self.mlm.decoder.forward(&x)?)
    }

    /// Every injectable projection with its HF module name (`encoder.layer.0.attention.self.query`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            v.push((format!("{p}.attention.self.query"), &mut l.query));
            v.push((format!("{p}.attention.self.key"), &mut l.key));
            v.push((format!("{p}.attention.self.value"), &mut l.value));
            v.push((format!("{p}.attention.output.dense"), &mut l.attn_out));
            v.push((format!("{p}.intermediate.dense"), &mut l.intermediate));
            v.push((format!("{p}.output.dense"), &mut l.output));
        }
        if let Some(p) = &mut self.pooler {
            v.push(("pooler.dense".into(), p));
        }
        v
    }
}

/// Mean of the unmasked rows: `(h · m).sum(1) / m.sum(1)` → `[B, H]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let s = hidden.broadcast_mul(&m)?.sum(1)?;
    s.broadcast_div(&m.sum(1)?)
}

/// HF `create_position_ids_from_input_ids`: `pad + cumsum(non-pad)` on tokens, `pad` on padding.
fn roberta_positions(ids: &Tensor, mask: Option<&Tensor>, pad: u32) -> Result<Tensor, OpError> {
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let keep = match mask {
        Some(m) => mask_rows(m)?,
        None => rows.iter().map(|r| r.iter().map(|&i| i != pad).collect()).collect(),
    };
    let mut pos = Vec::with_capacity(rows.len() * rows.first().map_or(0, |r| r.len()));
    for (r, k) in rows.iter().zip(&keep) {
        let mut n = pad;
        for (&id, &kept) in r.iter().zip(k) {
            if id != pad && kept {
                n += 1;
                pos.push(n);
            } else {
                pos.push(pad);
            }
        }
    }
    Ok(Tensor::from_vec(pos, rows.len() * rows.first().map_or(0, |r| r.len()), ids.device())?)
}

fn load_classifier(w: &Weights, h: usize) -> Result<Option<ClassifierHead>, OpError> {
    let raw = |n: &str| w.get_raw(n);
    if w.contains_raw("classifier.dense.weight") && w.contains_raw("classifier.out_proj.weight") {
        let dense = Linear::new(raw("classifier.dense.weight")?, Some(raw("classifier.dense.bias")?));
        let out_proj = Linear::new(raw("classifier.out_proj.weight")?, Some(raw("classifier.out_proj.bias")?));
        return Ok(Some(ClassifierHead::Roberta { dense, out_proj }));
    }
    if w.contains_raw("classifier.weight") {
        let weight = raw("classifier.weight")?;
        if weight.dims().len() != 2 || weight.dims()[1] != h {
            return Err(OpError::new("smelt::model::weight_shape", "classifier.weight does not match hidden_size"));
        }
        let bias = if w.contains_raw("classifier.bias") { Some(raw("classifier.bias")?) } else { None };
        return Ok(Some(ClassifierHead::Linear(Linear::new(weight, bias))));
    }
    Ok(None)
}

fn load_mlm(w: &Weights, c: &BertConfig, word: &Tensor) -> Result<MlmHead, OpError> {
    let h = c.hidden_size;
    let raw = |n: &str| w.get_raw(n);
    // (dense, LayerNorm, output bias, decoder weight) names for BERT and RoBERTa heads.
    let layouts = [
        (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.bias",
            "cls.predictions.decoder.weight",
        ),
        ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder.weight"),
    ];
    for (dense, norm, bias, dec) in layouts {
        if !w.contains_raw(&format!("{dense}.weight")) {
            continue;
        }
        let d = Linear::new(raw(&format!("{dense}.weight"))?, Some(raw(&format!("{dense}.bias"))?));
        let ln = LayerNorm {
            weight: raw(&format!("{norm}.weight"))?,
            bias: raw(&format!("{norm}.bias"))?,
            eps: c.layer_norm_eps,
        };
        let dec_w = if w.contains_raw(dec) { raw(dec)? } else { word.clone() };
        let b = if w.contains_raw(bias) { Some(raw(bias)?) } else { None };
        if d.out_dim() != h || dec_w.dims()[1] != h {
            return Err(OpError::new("smelt::model::weight_shape", format!("{dense} does not match hidden_size")));
        }
        return Ok(MlmHead { transform: Some((d, ln)), decoder: Linear::new(dec_w, b) });
    }
    Ok(MlmHead { transform: None, decoder: Linear::new(word.clone(), None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn roberta_positions_skip_padding() {
        let ids = Tensor::new(&[[0u32, 5, 6, 2, 1, 1]], &Device::Cpu).unwrap();
        let p = roberta_positions(&ids, None, 1).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(p, vec![2, 3, 4, 5, 1, 1]);
    }

    #[test]
    fn mean_pool_ignores_padding() {
        let h = Tensor::new(&[[[1f32, 2.0], [3.0, 4.0], [100.0, 100.0]]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let p = mean_pool(&h, &m).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![2.0, 3.0]]);
    }
}
