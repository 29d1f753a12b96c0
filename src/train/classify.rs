//! Classification heads and losses on the encoder and decoder models.
//!
//! * Sequence classification (BERT/RoBERTa): `f(x) = W · h_[CLS] + b` on the last hidden
//!   state of the first token (LM-BFF's no-prompt `f`, methods.md §4.4; no pooler), with a fresh
//!   head `W ~ N(0, 0.02²)` (HF `initializer_range`), `b = 0`, drawn from a seeded ChaCha8
//!   stream; trained with per-example cross-entropy `ℓ = logsumexp(z) − z_y`.
//! * Prompt-based classification: `f_c(x) = MLM logit of label word c at the [MASK] position`,
//!   restricted to the label-word ids (LM-BFF `ModelForPromptFinetuning`).
//! * Decoder answer choices: logits of the next token after the last real prompt token,
//!   restricted to the first token of each choice; prediction = restricted argmax.
//!
//! Everything is built from differentiable ops (log-softmax as `z − max − log Σ exp(z − max)`,
//! never a fused kernel), so gradients reach LoRA/adapter vars. Metrics live in
//! [`crate::train::metrics`].

use crate::diag::OpError;
use crate::nn::tokenizer::{Batch, Tok};
use crate::nn::{BertModel, LlamaModel};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const CLS: &str = "smelt::train::classify";

/// A linear classification head on `[CLS]`: `[C, H]` weight and `[C]` bias, both trainable.
#[derive(Debug, Clone)]
pub struct ClsHead {
    pub weight: Var,
    pub bias: Var,
}

impl ClsHead {
    /// HF-style init: `W ~ N(0, 0.02²)` from `seed`, `b = 0`.
    pub fn new(
        hidden: usize,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<ClsHead, OpError> {
        if hidden == 0 || classes < 2 {
            return Err(OpError::new(
                CLS,
                format!("a head needs hidden > 0 and ≥ 2 classes (got {hidden}, {classes})"),
            ));
        }
        let w =
            crate::nn::peft::normal(&mut ChaCha8Rng::seed_from_u64(seed), classes * hidden, 0.02);
        Ok(ClsHead {
            weight: Var::from_tensor(&Tensor::from_vec(w, (classes, hidden), device)?)?,
            bias: Var::zeros(classes, DType::F32, device)?,
        })
    }

    /// A head from existing tensors (e.g. `classifier.weight`/`.bias` loaded with an adapter).
    pub fn from_vars(weight: Var, bias: Var) -> Result<ClsHead, OpError> {
        match (weight.dims(), bias.dims()) {
            ([c, _], [c2]) if c == c2 => Ok(ClsHead { weight, bias }),
            (w, b) => Err(OpError::new(
                CLS,
                format!("classifier weight {w:?} and bias {b:?} do not fit"),
            )),
        }
    }

    pub fn classes(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `[B, H]` → `[B, C]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor, OpError> {
        Ok(h.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }

    /// `[("classifier.weight", W), ("classifier.bias", b)]` (HF / PEFT `modules_to_save` names).
    pub fn named_vars(&self) -> Vec<(&'static str, Var)> {
        vec![
            ("classifier.weight", self.weight.clone()),
            ("classifier.bias", self.bias.clone()),
        ]
    }

    pub fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

/// `[CLS]` hidden state `[B, H]` of a padded batch.
pub fn cls_hidden(bert: &BertModel, batch: &Batch) -> Result<Tensor, OpError> {
    let h = bert.forward(
        &batch.ids,
        Some(&batch.type_ids),
        Some(&batch.attention_mask),
    )?;
    Ok(h.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Sequence-classification logits `[B, C]`.
pub fn cls_logits(bert: &BertModel, head: &ClsHead, batch: &Batch) -> Result<Tensor, OpError> {
    head.forward(&cls_hidden(bert, batch)?)
}

/// Differentiable log-softmax over the last dim.
pub fn log_softmax(z: &Tensor) -> Result<Tensor, OpError> {
    let m = z.max_keepdim(D::Minus1)?.detach();
    let s = z.broadcast_sub(&m)?;
    let lse = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(s.broadcast_sub(&lse)?)
}

/// Per-example cross-entropy `[B]` of logits `[B, C]` against class ids.
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor, OpError> {
    let (b, c) = logits.dims2()?;
    if labels.len() != b || labels.iter().any(|&y| y as usize >= c) {
        return Err(OpError::new(
            CLS,
            format!(
                "{} labels for {b} rows with {c} classes (labels must be < {c})",
                labels.len()
            ),
        )
        .with_help("labels are class indices 0..C-1"));
    }
    let idx = Tensor::new(labels, logits.device())?.unsqueeze(1)?;
    Ok(log_softmax(logits)?.gather(&idx, 1)?.squeeze(1)?.neg()?)
}

/// Position of the (single) `mask_id` token in each row.
pub fn mask_positions(batch: &Batch, mask_id: u32) -> Result<Vec<usize>, OpError> {
    let rows = batch.ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    rows.iter()
        .enumerate()
        .map(|(r, row)| {
            let hits: Vec<usize> = row
                .iter()
                .enumerate()
                .filter(|(_, &t)| t == mask_id)
                .map(|(i, _)| i)
                .collect();
            match hits.as_slice() {
                [p] => Ok(*p),
                _ => Err(OpError::new(
                    CLS,
                    format!(
                        "row {r} has {} mask tokens (id {mask_id}), expected exactly one",
                        hits.len()
                    ),
                )
                .with_help("the prompt template must contain one [MASK] and survive truncation")),
            }
        })
        .collect()
}

/// Token ids of label words: each word (tried as-is, then with a leading space as LM-BFF's
/// `" " + word`) must encode to exactly one token.
pub fn label_word_ids(tok: &Tok, words: &[&str]) -> Result<Vec<u32>, OpError> {
    let mut ids = Vec::with_capacity(words.len());
    for w in words {
        let one = |text: &str| -> Option<u32> {
            let e = tok.inner().encode(text, false).ok()?;
            match e.get_ids() {
                [id] => Some(*id),
                _ => None,
            }
        };
        let id = one(&format!(" {w}")).or_else(|| one(w)).ok_or_else(|| {
            OpError::new(CLS, format!("label word `{w}` is not a single token"))
                .with_help("choose label words that are single tokens of this vocabulary")
        })?;
        if ids.contains(&id) {
            return Err(OpError::new(
                CLS,
                format!("label word `{w}` shares its token with another label"),
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Gathers rows `[B, H]` from `[B, T, H]` at one position per row.
fn gather_rows(h: &Tensor, pos: &[usize]) -> Result<Tensor, OpError> {
    let (b, t, hd) = h.dims3()?;
    if pos.len() != b || pos.iter().any(|&p| p >= t) {
        return Err(OpError::new(CLS, "positions do not fit the batch"));
    }
    let flat: Vec<u32> = pos
        .iter()
        .enumerate()
        .map(|(r, &p)| (r * t + p) as u32)
        .collect();
    Ok(h.reshape((b * t, hd))?
        .index_select(&Tensor::new(flat.as_slice(), h.device())?, 0)?)
}

/// Prompt logits `[B, C]`: MLM logits at the `[MASK]` position restricted to `label_ids`.
pub fn mlm_label_logits(
    bert: &BertModel,
    batch: &Batch,
    mask_id: u32,
    label_ids: &[u32],
) -> Result<Tensor, OpError> {
    let pos = mask_positions(batch, mask_id)?;
    let h = bert.forward(
        &batch.ids,
        Some(&batch.type_ids),
        Some(&batch.attention_mask),
    )?;
    let logits = bert.mlm_logits(&gather_rows(&h, &pos)?)?;
    select_columns(&logits, label_ids)
}

/// Decoder choice logits `[B, C]`: next-token logits after the last real token of each row,
/// restricted to `choice_ids` (first token of each answer).
pub fn choice_logits(
    model: &LlamaModel,
    batch: &Batch,
    choice_ids: &[u32],
) -> Result<Tensor, OpError> {
    let out = model.forward_hidden(&batch.ids, Some(&batch.attention_mask), false)?;
    let last: Vec<usize> = batch.lengths.iter().map(|&l| l.saturating_sub(1)).collect();
    let logits = model
        .lm_head
        .forward(&gather_rows(&out.last_hidden_state, &last)?)?;
    select_columns(&logits, choice_ids)
}

/// First token id of each answer choice (with a leading space when `space`); distinct ids required.
pub fn choice_token_ids(tok: &Tok, choices: &[&str], space: bool) -> Result<Vec<u32>, OpError> {
    let mut ids = Vec::new();
    for c in choices {
        let text = if space {
            format!(" {c}")
        } else {
            c.to_string()
        };
        let e = tok
            .inner()
            .encode(text.as_str(), false)
            .map_err(|e| OpError::new(CLS, e.to_string()))?;
        let id = *e
            .get_ids()
            .first()
            .ok_or_else(|| OpError::new(CLS, format!("choice `{c}` encodes to no token")))?;
        if ids.contains(&id) {
            return Err(OpError::new(
                CLS,
                format!("choice `{c}` starts with the same token as another choice"),
            )
            .with_help(
                "restricted argmax scores only the first token: make the choices start differently",
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn select_columns(logits: &Tensor, ids: &[u32]) -> Result<Tensor, OpError> {
    let v = logits.dim(D::Minus1)?;
    if ids.is_empty() || ids.iter().any(|&i| i as usize >= v) {
        return Err(OpError::new(
            CLS,
            format!("label/choice ids {ids:?} outside the vocabulary of {v}"),
        ));
    }
    Ok(logits.index_select(&Tensor::new(ids, logits.device())?, D::Minus1)?)
}

/// Row-wise argmax of `[B, C]` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>, OpError> {
    Ok(logits
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_hand_values_and_has_gradients() {
        let z = Var::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let l = cross_entropy(z.as_tensor(), &[2, 0]).unwrap();
        let v = l.to_vec1::<f32>().unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((v[0] - (lse - 3.0)).abs() < 1e-6 && (v[1] - 3f32.ln()).abs() < 1e-6);
        let g = l.sum_all().unwrap().backward().unwrap();
        let gz = g.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!((gz[1][0] - (1.0 / 3.0 - 1.0)).abs() < 1e-6);
        assert!(cross_entropy(z.as_tensor(), &[3, 0]).is_err());
    }

    #[test]
    fn head_init_is_seeded_and_shapes_checked() {
        let a = ClsHead::new(4, 2, 9, &Device::Cpu).unwrap();
        let b = ClsHead::new(4, 2, 9, &Device::Cpu).unwrap();
        assert_eq!(
            a.weight.as_tensor().to_vec2::<f32>().unwrap(),
            b.weight.as_tensor().to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            a.forward(&Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap())
                .unwrap()
                .dims(),
            &[3, 2]
        );
        assert!(ClsHead::new(4, 1, 0, &Device::Cpu).is_err());
        assert!(ClsHead::from_vars(
            a.weight.clone(),
            Var::zeros(3, DType::F32, &Device::Cpu).unwrap()
        )
        .is_err());
        let t = Tensor::new(&[[0.1f32, 0.9], [2.0, -1.0]], &Device::Cpu).unwrap();
        assert_eq!(argmax_rows(&t).unwrap(), vec![1, 0]);
        assert!(select_columns(&t, &[2]).is_err());
    }
}
