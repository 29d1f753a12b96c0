//! Greedy answer generation for decoder prompts, feeding the text metrics (EM, QA-F1,
//! Rouge-L) of `evaluate`.
//!
//! Each example's input (its prompt up to where the answer starts, exactly as training and
//! the choice scorer see it) is extended one argmax token at a time. Generation stops after
//! `max_new` tokens, at the model's end-of-sequence token (`eos_token_id` in `config.json`, or
//! a tokenizer token such as `</s>` / `<|endoftext|>` / `<|im_end|>`), or once the decoded text
//! contains a newline; the answer is the decoded text before the first newline, trimmed.
//! There is no KV cache: every step re-runs the whole sequence (answers are a few tokens, so
//! this costs `max_new` forwards per example), which keeps the code to the one forward that
//! the parity tests check. The model's prefix/LoRA modules take part as in any forward.

use crate::diag::OpError;
use crate::nn::{LoadedModel, Model};
use crate::train::feed::Feed;
use candle_core::{Tensor, D};

const EOS_TOKENS: &[&str] = &[
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<eos>",
    "<|end_of_text|>",
];

/// Generated answers (one per example of `feed`, in order), for a decoder prompt feed.
pub fn greedy_answers(
    model: &LoadedModel,
    feed: &Feed,
    max_new: usize,
) -> Result<Vec<String>, OpError> {
    let Model::Llama(lm) = &model.model else {
        return Err(OpError::new(
            "smelt::eval::generate",
            "text generation needs a decoder model",
        ));
    };
    let prompts = feed.prompts().ok_or_else(|| {
        OpError::new(
            "smelt::eval::generate",
            "text generation needs a decoder prompt format",
        )
        .with_help("use head=prompt with a `{field}` template")
    })?;
    let tok = model.tokenizer()?;
    let mut stop: Vec<u32> = EOS_TOKENS
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .collect();
    stop.extend(lm.config.eos_token_id);
    let device = model.device();
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let mut seq = prompt.to_vec();
        let mut text = String::new();
        for _ in 0..max_new {
            let ids = Tensor::new(seq.as_slice(), device)?.unsqueeze(0)?;
            let logits = lm.last_logits(&ids, None)?;
            let next = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0];
            if stop.contains(&next) {
                break;
            }
            seq.push(next);
            text = tok.decode(&seq[prompt.len()..], true)?;
            if text.contains('\n') {
                break;
            }
        }
        let answer = text.split('\n').next().unwrap_or_default().trim();
        out.push(answer.to_string());
    }
    Ok(out)
}
