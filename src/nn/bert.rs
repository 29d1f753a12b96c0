//! BERT / RoBERTa encoder built from differentiable candle ops (post-LN, exact GELU).
//!
//! Matches HF `BertModel` / `RobertaModel` in eval mode: embeddings (word + token type +
//! position, then LayerNorm; RoBERTa positions start at `pad + 1` and skip padding), self
//! attention with an additive padding mask, FFN, post-LN residuals; optional pooler (tanh dense
//! on `[CLS]`), sequence-classification head and MLM head. Every projection is a
//! [`Linear`](crate::nn::linear::Linear) so LoRA deltas can be injected (see `linears_mut`).
//!
//! The heads live in [`crate::nn::heads`]; without `cls.predictions.*` weights (the committed
//! models have none) the MLM head is the **tied decoder only**: `logits = hidden · Eᵀ`.
//! No dropout: this is the eval-mode forward.
//!
//! Prefix tuning hooks in through `prefix` (see [`crate::nn::peft::prefix`]): per layer its
//! keys/values are prepended, the padding mask gets `P` leading ones and positions start at `P`
//! (as HF with `past_key_values`).
//!
//! Per-example gradients hook in through `set_probe` (see [`crate::nn::probe`]): every linear,
//! LayerNorm and the summed embedding lookups (word, token type, position) record their output
//! gradient and input, and the last hidden state is kept as the note `last_hidden_state`.

use crate::diag::OpError;
use crate::nn::config::{BertConfig, BertFlavor};
use crate::nn::heads::{ClassifierHead, MlmHead};
use crate::nn::linear::Linear;
use crate::nn::ops::{mask_rows, padding_bias, softmax_last, LayerNorm};
use crate::nn::peft::prefix::{prepend, PrefixHook};
use crate::nn::probe::{Probe, Tap};
use crate::nn::weights::Weights;
use candle_core::{DType, Tensor, D};

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

#[derive(Debug, Clone)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<Linear>,
    pub classifier: Option<ClassifierHead>,
    pub mlm: MlmHead,
    /// Prefix-tuning keys/values prepended in every layer's attention.
    pub prefix: Option<PrefixHook>,
    /// Gradient probe for per-example gradients (installed with [`BertModel::set_probe`]).
    pub probe: Option<Probe>,
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

/// Tensor names and shapes of a bare encoder checkpoint for `c` (no prefix, with a pooler, no
/// heads). Used with [`crate::nn::weights::synthetic`] to build tiny random encoders.
pub fn checkpoint_shapes(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let mut v = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![c.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![c.type_vocab_size, h],
        ),
    ];
    let linear = |v: &mut Vec<(String, Vec<usize>)>, n: String, o: usize, i: usize| {
        v.push((format!("{n}.weight"), vec![o, i]));
        v.push((format!("{n}.bias"), vec![o]));
    };
    let mut norm = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for n in ["query", "key", "value"] {
            linear(&mut v, format!("{p}.attention.self.{n}"), h, h);
        }
        linear(&mut v, format!("{p}.attention.output.dense"), h, h);
        linear(&mut v, format!("{p}.intermediate.dense"), f, h);
        linear(&mut v, format!("{p}.output.dense"), h, f);
        norm.push(format!("{p}.attention.output.LayerNorm"));
        norm.push(format!("{p}.output.LayerNorm"));
    }
    linear(&mut v, "pooler.dense".to_string(), h, h);
    for n in norm {
        v.push((format!("{n}.weight"), vec![h]));
        v.push((format!("{n}.bias"), vec![h]));
    }
    v
}

impl BertModel {
    /// Loads weights named as in HF checkpoints, with or without a `bert.`/`roberta.` prefix.
    pub fn load(w: &mut Weights, config: &BertConfig) -> Result<BertModel, OpError> {
        let c = config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        w.choose_prefix(
            &["", "bert.", "roberta.", "model."],
            "embeddings.word_embeddings.weight",
        );
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
            position: w.get_shape(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
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
                attn_norm: LayerNorm::load(
                    w,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), f, h, true)?,
                output: w.linear(&format!("{p}.output.dense"), h, f, true)?,
                out_norm: LayerNorm::load(
                    w,
                    &format!("{p}.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
            });
        }
        let pooler = if w.contains("pooler.dense.weight") {
            Some(w.linear("pooler.dense", h, h, true)?)
        } else {
            None
        };
        let classifier = ClassifierHead::load(w, h)?;
        let mlm = MlmHead::load(w, c, &embeddings.word)?;
        Ok(BertModel {
            config: c.clone(),
            embeddings,
            layers,
            pooler,
            classifier,
            mlm,
            prefix: None,
            probe: None,
        })
    }

    /// Installs (or removes) a gradient probe on every parameterised op: embeddings, norms,
    /// projections, pooler and heads.
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        for l in &mut self.layers {
            for lin in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                lin.probe = probe.clone();
            }
        }
        if let Some(p) = &mut self.pooler {
            p.probe = probe.clone();
        }
        if let Some(c) = &mut self.classifier {
            c.set_probe(probe.clone());
        }
        self.mlm.set_probe(probe.clone());
        self.probe = probe;
    }

    /// LayerNorm, probed when a probe is installed.
    fn norm(&self, n: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = n.forward(x)?;
        match &self.probe {
            Some(p) => p.layer_norm(&y, x, &n.weight, &n.bias, n.eps),
            None => Ok(y),
        }
    }

    /// Last hidden state `[B, T, H]`. `ids`, `type_ids`, `mask` are integer `[B, T]` tensors;
    /// `type_ids` defaults to zeros and `mask` to all ones.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, OpError> {
        Ok(self
            .forward_all(ids, type_ids, mask, false)?
            .last_hidden_state)
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
        let p = self.prefix.as_ref().map_or(0, |h| h.len);
        if t + p > self.position_limit() {
            return Err(OpError::new(
                "smelt::model::sequence_too_long",
                format!(
                    "sequence of {t} tokens (+ {p} prefix) exceeds the model's {} positions",
                    self.position_limit()
                ),
            )
            .with_help("truncate the inputs"));
        }
        let mut x = self.embed(ids, type_ids, mask, p)?;
        let kv = self.prefix.as_ref().map(|h| (h.kv)()).transpose()?;
        if kv.as_ref().is_some_and(|kv| kv.len() != self.layers.len()) {
            return Err(OpError::new(
                "smelt::peft::shape",
                "the prefix has a different number of layers than the model",
            ));
        }
        let bias = match mask {
            Some(m) if p > 0 => {
                let ones = Tensor::ones((b, p), m.dtype(), m.device())?;
                Some(padding_bias(&Tensor::cat(&[&ones, m], 1)?)?)
            }
            m => m.map(padding_bias).transpose()?,
        };
        let mut hidden_states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if all_hidden {
                hidden_states.push(x.clone());
            }
            let pre = kv.as_ref().map(|kv| &kv[i]);
            x = self.layer_forward(layer, &x, bias.as_ref(), pre, b, t)?;
        }
        if all_hidden {
            hidden_states.push(x.clone());
        }
        if let Some(probe) = &self.probe {
            probe.note("last_hidden_state", &x);
        }
        let pooled = match &self.pooler {
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(BertOutput {
            last_hidden_state: x,
            hidden_states,
            pooled,
        })
    }

    fn position_limit(&self) -> usize {
        let c = &self.config;
        match c.flavor {
            BertFlavor::Bert => c.max_position_embeddings,
            BertFlavor::Roberta => c
                .max_position_embeddings
                .saturating_sub(c.pad_token_id as usize + 1),
        }
    }

    fn embed(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
        offset: usize,
    ) -> Result<Tensor, OpError> {
        let (b, t) = ids.dims2()?;
        let e = &self.embeddings;
        let h = self.config.hidden_size;
        let mut x = e
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // What each table was indexed with, for the probe (all `[B, T]`).
        let probing = self.probe.is_some();
        let mut taps = vec![(&e.word, ids.clone())];
        if let Some(tt) = &e.token_type {
            x = match type_ids {
                Some(ty) => (x + tt.index_select(&ty.flatten_all()?, 0)?.reshape((b, t, h))?)?,
                None => x.broadcast_add(&tt.narrow(0, 0, 1)?)?,
            };
            if probing {
                let ty = match type_ids {
                    Some(ty) => ty.clone(),
                    None => Tensor::zeros((b, t), DType::U32, ids.device())?,
                };
                taps.push((tt, ty));
            }
        }
        x = match self.config.flavor {
            BertFlavor::Bert => {
                if probing {
                    let pos = Tensor::arange(offset as u32, (offset + t) as u32, ids.device())?;
                    taps.push((&e.position, pos.unsqueeze(0)?.repeat((b, 1))?));
                }
                x.broadcast_add(&e.position.narrow(0, offset, t)?)?
            }
            BertFlavor::Roberta => {
                let pos = roberta_positions(ids, mask, self.config.pad_token_id, offset)?;
                taps.push((&e.position, pos.reshape((b, t))?));
                (x + e.position.index_select(&pos, 0)?.reshape((b, t, h))?)?
            }
        };
        if let Some(p) = &self.probe {
            let taps = taps
                .into_iter()
                .map(|(table, ids)| Tap::Lookup {
                    table: table.id(),
                    ids,
                })
                .collect();
            x = p.tap(&x, taps)?;
        }
        Ok(self.norm(&e.norm, &x)?)
    }

    fn layer_forward(
        &self,
        l: &BertLayer,
        x: &Tensor,
        bias: Option<&Tensor>,
        prefix: Option<&(Tensor, Tensor)>,
        b: usize,
        t: usize,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (nh, hd) = (c.num_attention_heads, c.head_dim());
        let heads = |y: Tensor| y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous();
        let q = heads((l.query.forward(x)? * (1.0 / (hd as f64).sqrt()))?)?;
        let mut k = heads(l.key.forward(x)?)?;
        let mut v = heads(l.value.forward(x)?)?;
        if let Some((pk, pv)) = prefix {
            (k, v) = (prepend(pk, &k)?, prepend(pv, &v)?);
        }
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(m) = bias {
            scores = scores.broadcast_add(m)?;
        }
        let ctx = softmax_last(&scores)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let a = self.norm(&l.attn_norm, &(l.attn_out.forward(&ctx)? + x)?)?;
        let f = c.hidden_act.apply(&l.intermediate.forward(&a)?)?;
        self.norm(&l.out_norm, &(l.output.forward(&f)? + a)?)
    }

    /// Sequence-classification logits `[B, labels]`; errors when the checkpoint has no head.
    pub fn classify(&self, out: &BertOutput) -> Result<Tensor, OpError> {
        let cls = out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        match &self.classifier {
            Some(head) => Ok(head.forward(&cls, out.pooled.as_ref())?),
            None => Err(OpError::new(
                "smelt::model::no_head",
                "the checkpoint has no sequence-classification head (`classifier.*`)",
            )),
        }
    }

    /// Whether the MLM head is the tied decoder only (no `cls.predictions.*` weights).
    pub fn mlm_is_tied_only(&self) -> bool {
        self.mlm.is_tied_only()
    }

    /// MLM logits `[..., vocab]` for hidden states `[..., H]` (gather `[MASK]` rows first:
    /// the decoder is a `H × vocab` product per row).
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor, OpError> {
        Ok(self.mlm.forward(hidden)?)
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

/// HF `create_position_ids_from_input_ids`: `pad + offset + cumsum(non-pad)` on tokens, `pad` on
/// padding (`offset` = HF's `past_key_values_length`).
fn roberta_positions(
    ids: &Tensor,
    mask: Option<&Tensor>,
    pad: u32,
    offset: usize,
) -> Result<Tensor, OpError> {
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let keep = match mask {
        Some(m) => mask_rows(m)?,
        None => rows
            .iter()
            .map(|r| r.iter().map(|&i| i != pad).collect())
            .collect(),
    };
    let mut pos = Vec::with_capacity(rows.len() * rows.first().map_or(0, |r| r.len()));
    for (r, k) in rows.iter().zip(&keep) {
        let mut n = pad + offset as u32;
        for (&id, &kept) in r.iter().zip(k) {
            if id != pad && kept {
                n += 1;
                pos.push(n);
            } else {
                pos.push(pad);
            }
        }
    }
    Ok(Tensor::from_vec(
        pos,
        rows.len() * rows.first().map_or(0, |r| r.len()),
        ids.device(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::config::ArchConfig;
    use crate::nn::ops::max_abs_diff;
    use crate::nn::weights::synthetic;
    use candle_core::Device;

    fn tiny(model_type: &str) -> BertConfig {
        let cfg = format!(
            r#"{{"model_type":"{model_type}","vocab_size":30,"hidden_size":16,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":24,"max_position_embeddings":20,
            "type_vocab_size":2,"layer_norm_eps":1e-12}}"#
        );
        match ArchConfig::from_json(&cfg, "tiny/config.json").unwrap() {
            ArchConfig::Bert(c) => c,
            _ => unreachable!(),
        }
    }

    fn model(c: &BertConfig, extra: &[(&str, Vec<usize>)], prefix: &str) -> BertModel {
        let mut shapes = checkpoint_shapes(c);
        shapes
            .iter_mut()
            .for_each(|(n, _)| *n = format!("{prefix}{n}"));
        shapes.extend(extra.iter().map(|(n, s)| (n.to_string(), s.clone())));
        let map = synthetic(&shapes, 5, &Device::Cpu).unwrap();
        BertModel::load(&mut Weights::from_map(map, &Device::Cpu), c).unwrap()
    }

    #[test]
    fn right_padding_does_not_change_real_tokens() {
        for flavor in ["bert", "roberta"] {
            let c = tiny(flavor);
            let m = model(&c, &[], "");
            let pad = c.pad_token_id;
            let ids = Tensor::new(&[[3u32, 9, 4]], &Device::Cpu).unwrap();
            let h = m.forward(&ids, None, None).unwrap();
            let padded = Tensor::new(&[[3u32, 9, 4, pad, pad]], &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1u32, 1, 1, 0, 0]], &Device::Cpu).unwrap();
            let hp = m
                .forward(&padded, None, Some(&mask))
                .unwrap()
                .narrow(1, 0, 3)
                .unwrap();
            assert!(max_abs_diff(&h, &hp).unwrap() < 1e-5, "{flavor}");
        }
    }

    #[test]
    fn prefix_keeps_right_padding_invariance_and_uses_positions() {
        for flavor in ["bert", "roberta"] {
            let c = tiny(flavor);
            let mut m = model(&c, &[], "");
            let kv: Vec<(Tensor, Tensor)> = (0..2)
                .map(|_| {
                    let r = || Tensor::randn(0f32, 1.0, (4, 3, 4), &Device::Cpu).unwrap();
                    (r(), r())
                })
                .collect();
            m.prefix = Some(PrefixHook {
                len: 3,
                kv: std::sync::Arc::new(move || Ok(kv.clone())),
            });
            let pad = c.pad_token_id;
            let ids = Tensor::new(&[[3u32, 9, 4]], &Device::Cpu).unwrap();
            let h = m.forward(&ids, None, None).unwrap();
            let padded = Tensor::new(&[[3u32, 9, 4, pad, pad]], &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1u32, 1, 1, 0, 0]], &Device::Cpu).unwrap();
            let hp = m.forward(&padded, None, Some(&mask)).unwrap();
            let d = max_abs_diff(&h, &hp.narrow(1, 0, 3).unwrap()).unwrap();
            assert!(d < 1e-5, "{flavor}: {d}");
            // 20 positions (bert) / 18 (roberta): the prefix takes 3 of them.
            let n = m.position_limit() - 2;
            let long = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
            let e = m.forward(&long, None, None).unwrap_err();
            assert_eq!(e.code, "smelt::model::sequence_too_long");
        }
    }

    #[test]
    fn prefixed_checkpoint_with_heads() {
        let c = tiny("bert");
        let extra = [
            ("classifier.weight", vec![3, 16]),
            ("classifier.bias", vec![3]),
            ("cls.predictions.transform.dense.weight", vec![16, 16]),
            ("cls.predictions.transform.dense.bias", vec![16]),
            ("cls.predictions.transform.LayerNorm.weight", vec![16]),
            ("cls.predictions.transform.LayerNorm.bias", vec![16]),
            ("cls.predictions.bias", vec![30]),
        ];
        let mut m = model(&c, &extra, "bert.");
        assert!(!m.mlm_is_tied_only() && m.pooler.is_some());
        let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &Device::Cpu).unwrap();
        let out = m.forward_all(&ids, None, None, true).unwrap();
        assert_eq!(out.hidden_states.len(), 3);
        assert_eq!(m.classify(&out).unwrap().dims(), &[2, 3]);
        assert_eq!(
            m.mlm_logits(&out.last_hidden_state).unwrap().dims(),
            &[2, 3, 30]
        );
        assert_eq!(m.linears_mut().len(), 13);
        let long = Tensor::zeros((1, 21), DType::U32, &Device::Cpu).unwrap();
        assert_eq!(
            m.forward(&long, None, None).unwrap_err().code,
            "smelt::model::sequence_too_long"
        );
    }

    #[test]
    fn tied_mlm_head_is_hidden_times_embeddings() {
        let c = tiny("bert");
        let m = model(&c, &[], "");
        assert!(m.mlm_is_tied_only() && m.classifier.is_none());
        let h = Tensor::randn(0f32, 1.0, (2, 16), &Device::Cpu).unwrap();
        let want = h.matmul(&m.embeddings.word.t().unwrap()).unwrap();
        assert!(max_abs_diff(&m.mlm_logits(&h).unwrap(), &want).unwrap() < 1e-6);
    }

    #[test]
    fn roberta_positions_skip_padding() {
        let ids = Tensor::new(&[[0u32, 5, 6, 2, 1, 1]], &Device::Cpu).unwrap();
        let p = roberta_positions(&ids, None, 1, 0)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
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
