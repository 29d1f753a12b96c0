//! Frozen features for linear probing (`solve probe`, methods.md §4.6 "Linear probing"): the
//! input of the model's output projection, as LM-BFF's `LinearHeadTrainer` takes it.
//!
//! * `prompt` — the LM-BFF template is realised with one `*mask*`; the feature is the MLM head's
//!   transform of the hidden state at the mask, `LayerNorm(act(dense(h_mask)))`, i.e. the input
//!   of the (tied) vocabulary decoder whose label-word rows give the prompt logits. A checkpoint
//!   without a transform (tied decoder only) gives `h_mask` itself.
//! * `cls` — `[CLS] text [SEP] (text_b [SEP])`, the last hidden state of `[CLS]` (no pooler),
//!   the input of the no-prompt classifier `W·h_[CLS] + b` (§4.4).
//!
//! Encoding follows `train::feed::Feed` exactly (same template engine, verbalizer check, mask
//! lookup and keep-the-last-token truncation for `cls`), so a probe sees the examples as the
//! prompt-based fine-tuning and the kernels do. Eval mode (no dropout), f32 forward, features
//! returned in f64.

use super::CODE;
use crate::data::{self, Example, TaskData, Template, Verbalizer};
use crate::diag::OpError;
use crate::nn::tokenizer::{pad_batch, Encoded};
use crate::nn::{LoadedModel, Model};
use crate::train::classify::mask_positions;
use crate::train::feed::{FormatSpec, ENCODER_SINGLE};
use candle_core::{DType, Tensor};
use nalgebra::DMatrix;

/// One row per example, `H` columns.
pub fn features(
    lm: &LoadedModel,
    spec: &FormatSpec,
    task: &TaskData,
    examples: &[Example],
    batch: usize,
) -> Result<DMatrix<f64>, OpError> {
    let Model::Bert(bert) = &lm.model else {
        return Err(OpError::new(
            CODE,
            "linear probing reads an encoder's MLM-head or [CLS] features; this is a decoder",
        )
        .with_help("probe an encoder (BERT/RoBERTa family)"));
    };
    let tok = lm.tokenizer()?;
    let prompt = spec.head == "prompt";
    let encs: Vec<Encoded> = if prompt {
        let src = spec.template.as_deref().unwrap_or(ENCODER_SINGLE);
        let tpl = Template::parse(src)?
            .with_max_len(spec.max_len)
            .with_label_words(spec.words.clone());
        tpl.check(task.is_pair, task.labels.len())?;
        if !tpl.has_mask() {
            return Err(
                OpError::new(CODE, format!("template `{src}` has no *mask*"))
                    .with_help("the prompt feature is the hidden state at the mask: add *mask*"),
            );
        }
        // The words are not used by the features, but a probe stands for prompt-based
        // fine-tuning with them: refuse words that are not single tokens, as training does.
        Verbalizer::new(tok, &spec.words)?;
        examples
            .iter()
            .map(|ex| {
                let e = data::encode(tok, &tpl, ex)?;
                let len = e.ids.len();
                Ok(Encoded {
                    ids: e.ids,
                    type_ids: e.type_ids,
                    attention_mask: vec![1; len],
                })
            })
            .collect::<Result<_, OpError>>()?
    } else {
        examples
            .iter()
            .map(|ex| {
                let mut e = match &ex.text_b {
                    Some(b) => tok.encode_pair(&ex.text, b)?,
                    None => tok.encode(&ex.text)?,
                };
                truncate_keep_last(&mut e, spec.max_len);
                Ok(e)
            })
            .collect::<Result<_, OpError>>()?
    };
    let mask_id = match prompt {
        true => Some(data::template::special_id(
            tok,
            "mask",
            &["[MASK]", "<mask>"],
        )?),
        false => None,
    };
    let h = bert.config.hidden_size;
    let mut out = DMatrix::<f64>::zeros(examples.len(), h);
    let mut row = 0;
    for chunk in encs.chunks(batch.max(1)) {
        let b = pad_batch(chunk, tok.pad_id(), lm.device())?;
        let hidden = bert.forward(&b.ids, Some(&b.type_ids), Some(&b.attention_mask))?;
        let pos = match mask_id {
            Some(id) => mask_positions(&b, id)?,
            None => vec![0; chunk.len()],
        };
        let mut x = gather_rows(&hidden, &pos)?;
        if prompt {
            if let Some((dense, norm)) = &bert.mlm.transform {
                x = norm.forward(&bert.mlm.act.apply(&dense.forward(&x)?)?)?;
            }
        }
        let v = x.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for r in v {
            for (j, val) in r.into_iter().enumerate() {
                out[(row, j)] = val;
            }
            row += 1;
        }
    }
    Ok(out)
}

/// Cuts to `max` tokens keeping the final special token (as `Feed` does for `cls`).
fn truncate_keep_last(e: &mut Encoded, max: usize) {
    if e.len() > max && max > 0 {
        let last = *e.ids.last().unwrap_or(&0);
        e.ids.truncate(max);
        e.type_ids.truncate(max);
        e.attention_mask.truncate(max);
        e.ids[max - 1] = last;
    }
}

/// Rows `[B, H]` of `[B, T, H]` at one position per row.
fn gather_rows(h: &Tensor, pos: &[usize]) -> Result<Tensor, OpError> {
    let (b, t, hd) = h.dims3()?;
    if pos.len() != b || pos.iter().any(|&p| p >= t) {
        return Err(OpError::new(CODE, "mask positions do not fit the batch"));
    }
    let flat: Vec<u32> = pos
        .iter()
        .enumerate()
        .map(|(r, &p)| (r * t + p) as u32)
        .collect();
    Ok(h.reshape((b * t, hd))?
        .index_select(&Tensor::new(flat.as_slice(), h.device())?, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_final_token_and_gather_picks_rows() {
        let mut e = Encoded {
            ids: vec![1, 5, 6, 7, 2],
            type_ids: vec![0; 5],
            attention_mask: vec![1; 5],
        };
        truncate_keep_last(&mut e, 3);
        assert_eq!(e.ids, vec![1, 5, 2]);
        assert_eq!(e.attention_mask.len(), 3);
        let dev = candle_core::Device::Cpu;
        let h = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let g = gather_rows(&h, &[2, 0]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![4.0, 5.0], vec![6.0, 7.0]]);
        assert!(gather_rows(&h, &[3, 0]).is_err());
    }
}
