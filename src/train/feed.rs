//! How a task's examples reach a model and come back as class scores: the input *format*.
//!
//! Three formats, chosen once per (model, task) and recorded with every trained artifact so
//! evaluation feeds examples exactly as training did:
//! * `cls` — encoder, `[CLS] text [SEP] (text_b [SEP])`, a linear head on the `[CLS]` state
//!   (no pooler, methods.md §4.4); the loss is cross-entropy over the head's classes.
//! * `prompt` on an encoder — an LM-BFF template with one `*mask*` and a verbalizer of
//!   single-token label words; class scores are the MLM logits of the label words at the mask
//!   (§4.3–4.4), the loss is cross-entropy over those restricted logits.
//! * `prompt` on a decoder — a `{field}` template with answer choices (§1.3): training is the
//!   causal-LM loss on the answer tokens only (source positions masked, as the S1 collator),
//!   prediction is the argmax of the next-token logits restricted to the first token of each
//!   `" " + choice` (§1.3 "answer-choice token ids").
//!
//! The spec (`FormatSpec`) is plain data; `Feed::new` resolves it against a tokenizer and
//! encodes a split once, so batches are only padding and a forward.

use crate::data::template::encode_plain;
use crate::data::{self, Example, PromptTemplate, TaskData, Template, Verbalizer};
use crate::diag::OpError;
use crate::nn::tokenizer::{pad_batch, Batch, Encoded};
use crate::nn::{LoadedModel, Model};
use crate::train::classify::{
    choice_logits, cls_logits, cross_entropy, log_softmax, mlm_label_logits, ClsHead,
};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

const FEED: &str = "smelt::train::format";

/// A task's input format as the user gave it (after defaults): stored with artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatSpec {
    /// `cls` or `prompt`.
    pub head: String,
    pub template: Option<String>,
    /// Label words (encoder prompt) or answer choices (decoder prompt), in label order.
    pub words: Vec<String>,
    pub max_len: usize,
}

/// Default decoder prompt: the text, then an `Answer:` slot.
pub const DECODER_SINGLE: &str = "{text}\nAnswer: ||| {answer}";
pub const DECODER_PAIR: &str = "{text}\n{text_b}\nAnswer: ||| {answer}";
/// Default encoder prompt (LM-BFF's sentiment template) for tasks outside the LM-BFF table.
pub const ENCODER_SINGLE: &str = "*cls**sent_0*_It_was*mask*.*sep+*";
pub const ENCODER_PAIR: &str = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*";

impl FormatSpec {
    /// Applies defaults: `head = auto` is `prompt` for decoders or when a template is given,
    /// else `cls`; templates and words default per task (LM-BFF table, then the label names).
    pub fn resolve(
        model: &LoadedModel,
        task: &TaskData,
        head: &str,
        template: Option<&str>,
        words: Option<&str>,
        max_len: usize,
    ) -> Result<FormatSpec, OpError> {
        let decoder = matches!(model.model, Model::Llama(_));
        let head = match (head, decoder) {
            ("cls", true) => {
                return Err(
                    OpError::new(FEED, "a decoder has no classification head here").with_help(
                        "decoders classify by answer choices: use head=prompt (the default)",
                    ),
                )
            }
            ("auto", true) => "prompt",
            ("auto", false) if template.is_some() => "prompt",
            ("auto", false) => "cls",
            (h @ ("cls" | "prompt"), _) => h,
            (h, _) => {
                return Err(OpError::new(FEED, format!("unknown head `{h}`"))
                    .with_help("heads: auto, cls, prompt"))
            }
        };
        if head == "cls" {
            if template.is_some() || words.is_some() {
                return Err(
                    OpError::new(FEED, "template/words given with head=cls").with_help(
                        "prompt-based classification needs head=prompt (or leave head=auto)",
                    ),
                );
            }
            return Ok(FormatSpec {
                head: "cls".into(),
                template: None,
                words: vec![],
                max_len,
            });
        }
        let table = if decoder {
            None
        } else {
            data::verbalizer::lmbff_prompt(&task.name)
        };
        let template = match (template, table, decoder, task.is_pair) {
            (Some(t), ..) => t.to_string(),
            (None, Some((t, _)), ..) => t.to_string(),
            (None, None, true, false) => DECODER_SINGLE.into(),
            (None, None, true, true) => DECODER_PAIR.into(),
            (None, None, false, false) => ENCODER_SINGLE.into(),
            (None, None, false, true) => ENCODER_PAIR.into(),
        };
        let words = match (words, table) {
            (Some(w), _) => data::verbalizer::parse_words(w, &task.labels)?,
            (None, Some((_, ws))) if ws.len() == task.labels.len() => {
                ws.iter().map(|s| s.to_string()).collect()
            }
            _ => task.labels.clone(),
        };
        Ok(FormatSpec {
            head: "prompt".into(),
            template: Some(template),
            words,
            max_len,
        })
    }
}

/// A resolved format.
#[derive(Debug, Clone)]
enum Format {
    Cls,
    Mlm { mask_id: u32, word_ids: Vec<u32> },
    Choice { choice_ids: Vec<u32> },
}

/// One encoded example: the full sequence, its label and where the answer starts (decoder).
#[derive(Debug, Clone)]
struct Item {
    enc: Encoded,
    label: u32,
    target_start: usize,
}

/// A split encoded for a model.
pub struct Feed {
    format: Format,
    items: Vec<Item>,
    pad_id: u32,
    pub classes: usize,
}

fn truncate_keep_last(e: &mut Encoded, max: usize) {
    if e.len() > max && max > 0 {
        let last = *e.ids.last().unwrap_or(&0);
        e.ids.truncate(max);
        e.type_ids.truncate(max);
        e.attention_mask.truncate(max);
        e.ids[max - 1] = last;
    }
}

impl Feed {
    pub fn new(
        model: &LoadedModel,
        spec: &FormatSpec,
        task: &TaskData,
        examples: &[Example],
    ) -> Result<Feed, OpError> {
        let tok = model.tokenizer()?;
        let n = task.labels.len();
        let decoder = matches!(model.model, Model::Llama(_));
        let label = |ex: &Example| ex.label as u32;
        let (format, items) = match (spec.head.as_str(), decoder) {
            ("cls", false) => {
                let items = examples
                    .iter()
                    .map(|ex| {
                        let mut enc = match &ex.text_b {
                            Some(b) => tok.encode_pair(&ex.text, b)?,
                            None => tok.encode(&ex.text)?,
                        };
                        truncate_keep_last(&mut enc, spec.max_len);
                        Ok(Item {
                            enc,
                            label: label(ex),
                            target_start: 0,
                        })
                    })
                    .collect::<Result<Vec<_>, OpError>>()?;
                (Format::Cls, items)
            }
            ("prompt", false) => {
                let src = spec.template.as_deref().unwrap_or(ENCODER_SINGLE);
                let tpl = Template::parse(src)?
                    .with_max_len(spec.max_len)
                    .with_label_words(spec.words.clone());
                tpl.check(task.is_pair, n)?;
                if !tpl.has_mask() {
                    return Err(
                        OpError::new(FEED, format!("template `{src}` has no *mask*")).with_help(
                            "an encoder prompt scores label words at the mask: add *mask*",
                        ),
                    );
                }
                let verb = Verbalizer::new(tok, &spec.words)?;
                let mask_id = data::template::special_id(tok, "mask", &["[MASK]", "<mask>"])?;
                let items = examples
                    .iter()
                    .map(|ex| {
                        let e = data::encode(tok, &tpl, ex)?;
                        if e.mask_pos.is_none() {
                            return Err(OpError::new(
                                FEED,
                                format!("example {} lost its mask to truncation", ex.id),
                            )
                            .with_help("raise max_len or limit the sentence lengths"));
                        }
                        let len = e.ids.len();
                        Ok(Item {
                            enc: Encoded {
                                ids: e.ids,
                                type_ids: e.type_ids,
                                attention_mask: vec![1; len],
                            },
                            label: label(ex),
                            target_start: 0,
                        })
                    })
                    .collect::<Result<Vec<_>, OpError>>()?;
                (
                    Format::Mlm {
                        mask_id,
                        word_ids: verb.ids,
                    },
                    items,
                )
            }
            ("prompt", true) => {
                let src = spec.template.as_deref().unwrap_or(DECODER_SINGLE);
                let prompt = PromptTemplate::parse(src, spec.words.clone())?;
                prompt.check(task.is_pair, n)?;
                let choice_ids = first_tokens(&prompt.choice_ids(tok, &task.labels)?, &spec.words)?;
                let items = examples
                    .iter()
                    .map(|ex| {
                        let r = prompt.render(ex, &task.labels)?;
                        let mut src_ids = tok.encode(&r.input)?.ids;
                        let tgt = encode_plain(tok, &format!(" {}", r.target))?;
                        let keep = spec.max_len.saturating_sub(tgt.len()).max(1);
                        if src_ids.len() > keep {
                            src_ids.drain(..src_ids.len() - keep);
                        }
                        let target_start = src_ids.len();
                        let ids: Vec<u32> = src_ids.into_iter().chain(tgt).collect();
                        let len = ids.len();
                        Ok(Item {
                            enc: Encoded {
                                ids,
                                type_ids: vec![0; len],
                                attention_mask: vec![1; len],
                            },
                            label: label(ex),
                            target_start,
                        })
                    })
                    .collect::<Result<Vec<_>, OpError>>()?;
                (Format::Choice { choice_ids }, items)
            }
            (h, _) => {
                return Err(OpError::new(
                    FEED,
                    format!("head `{h}` does not fit a {} model", model.config.name()),
                ))
            }
        };
        if let Some(bad) = items.iter().find(|i| i.label as usize >= n) {
            return Err(OpError::new(
                FEED,
                format!("label {} outside the task's {n} labels", bad.label),
            ));
        }
        Ok(Feed {
            format,
            items,
            pad_id: tok.pad_id(),
            classes: n,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn labels(&self) -> Vec<u32> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// Each example's prompt (the tokens before its answer) for decoder prompt formats.
    pub fn prompts(&self) -> Option<Vec<&[u32]>> {
        matches!(self.format, Format::Choice { .. }).then(|| {
            self.items
                .iter()
                .map(|i| &i.enc.ids[..i.target_start])
                .collect()
        })
    }

    /// Whether this format trains a classification head.
    pub fn needs_head(&self) -> bool {
        matches!(self.format, Format::Cls)
    }

    fn batch(
        &self,
        idx: &[usize],
        inputs_only: bool,
        model: &LoadedModel,
    ) -> Result<Batch, OpError> {
        let encs: Vec<Encoded> = idx
            .iter()
            .map(|&i| {
                let it = &self.items[i];
                if inputs_only && it.target_start > 0 {
                    let t = it.target_start;
                    Encoded {
                        ids: it.enc.ids[..t].to_vec(),
                        type_ids: it.enc.type_ids[..t].to_vec(),
                        attention_mask: it.enc.attention_mask[..t].to_vec(),
                    }
                } else {
                    it.enc.clone()
                }
            })
            .collect();
        pad_batch(&encs, self.pad_id, model.device())
    }

    /// The output of every block for the inputs of the examples `idx` (the embedding output
    /// excluded: entry `l` is block `l`'s output, `[b, T, H]`), with each row's unpadded length.
    pub fn block_states(
        &self,
        model: &LoadedModel,
        idx: &[usize],
    ) -> Result<(Vec<Tensor>, Vec<usize>), OpError> {
        let batch = self.batch(idx, true, model)?;
        let mut states = match &model.model {
            Model::Bert(b) => {
                b.forward_all(
                    &batch.ids,
                    Some(&batch.type_ids),
                    Some(&batch.attention_mask),
                    true,
                )?
                .hidden_states
            }
            Model::Llama(l) => {
                l.forward_hidden(&batch.ids, Some(&batch.attention_mask), true)?
                    .hidden_states
            }
        };
        states.remove(0);
        Ok((states, batch.lengths))
    }

    /// Class scores `[b, C]` of the examples `idx` (restricted logits or head logits).
    pub fn logits(
        &self,
        model: &LoadedModel,
        head: Option<&ClsHead>,
        idx: &[usize],
    ) -> Result<Tensor, OpError> {
        let batch = self.batch(idx, true, model)?;
        match (&self.format, &model.model) {
            (Format::Cls, Model::Bert(b)) => {
                let head = head.ok_or_else(|| {
                    OpError::new(FEED, "this model has no classification head for the task")
                        .with_help("train with head=cls first, or evaluate by prompt (template=…)")
                })?;
                if head.classes() != self.classes {
                    return Err(OpError::new(
                        FEED,
                        format!(
                            "the head has {} classes, the task {}",
                            head.classes(),
                            self.classes
                        ),
                    ));
                }
                cls_logits(b, head, &batch)
            }
            (Format::Mlm { mask_id, word_ids }, Model::Bert(b)) => {
                mlm_label_logits(b, &batch, *mask_id, word_ids)
            }
            (Format::Choice { choice_ids }, Model::Llama(l)) => {
                choice_logits(l, &batch, choice_ids)
            }
            _ => Err(OpError::new(FEED, "format and architecture do not match")),
        }
    }

    /// Per-example training losses `[b]`.
    pub fn loss(
        &self,
        model: &LoadedModel,
        head: Option<&ClsHead>,
        idx: &[usize],
    ) -> Result<Tensor, OpError> {
        match (&self.format, &model.model) {
            (Format::Choice { .. }, Model::Llama(l)) => {
                let batch = self.batch(idx, false, model)?;
                let out = l.forward_hidden(&batch.ids, Some(&batch.attention_mask), false)?;
                let h = out.last_hidden_state;
                let (b, t, hd) = h.dims3()?;
                // positions p predict token p + 1: the answer tokens target_start..len
                let (mut rows, mut gold, mut owner) = (vec![], vec![], vec![]);
                for (r, &i) in idx.iter().enumerate() {
                    let it = &self.items[i];
                    for p in it.target_start.max(1)..it.enc.len() {
                        rows.push((r * t + p - 1) as u32);
                        gold.push(it.enc.ids[p]);
                        owner.push(r);
                    }
                }
                let sel = h
                    .reshape((b * t, hd))?
                    .index_select(&Tensor::new(rows.as_slice(), h.device())?, 0)?;
                let logp = log_softmax(&l.lm_head.forward(&sel)?)?;
                let nll = logp
                    .gather(&Tensor::new(gold.as_slice(), h.device())?.unsqueeze(1)?, 1)?
                    .squeeze(1)?
                    .neg()?;
                // per-example mean over its answer tokens: [b, n] averaging matrix · nll
                let n = owner.len();
                let mut avg = vec![0f32; b * n];
                for r in 0..b {
                    let cnt = owner.iter().filter(|&&o| o == r).count().max(1) as f32;
                    for (j, &o) in owner.iter().enumerate() {
                        if o == r {
                            avg[r * n + j] = 1.0 / cnt;
                        }
                    }
                }
                let avg = Tensor::from_vec(avg, (b, n), h.device())?;
                Ok(avg.matmul(&nll.unsqueeze(1)?)?.squeeze(1)?)
            }
            _ => {
                let labels: Vec<u32> = idx.iter().map(|&i| self.items[i].label).collect();
                cross_entropy(&self.logits(model, head, idx)?, &labels)
            }
        }
    }

    /// Class scores of every example, in batches of `batch` (no gradients are built).
    pub fn all_logits(
        &self,
        model: &LoadedModel,
        head: Option<&ClsHead>,
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, OpError> {
        let mut out = Vec::with_capacity(self.len());
        let idx: Vec<usize> = (0..self.len()).collect();
        for chunk in idx.chunks(batch.max(1)) {
            let z = self.logits(model, head, chunk)?.detach();
            out.extend(z.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

/// First token of each answer choice; two choices starting alike cannot be told apart.
fn first_tokens(ids: &[Vec<u32>], choices: &[String]) -> Result<Vec<u32>, OpError> {
    let mut out: Vec<u32> = Vec::with_capacity(ids.len());
    for (c, t) in choices.iter().zip(ids) {
        let id = *t.first().ok_or_else(|| {
            OpError::new(FEED, format!("answer choice `{c}` encodes to no token"))
        })?;
        if out.contains(&id) {
            return Err(OpError::new(
                FEED,
                format!("answer choice `{c}` starts with the same token as another"),
            )
            .with_help(
                "restricted argmax scores the first token only: make the choices start differently",
            ));
        }
        out.push(id);
    }
    Ok(out)
}

/// Mean cross-entropy of class scores against gold labels (the `ce_loss` metric).
pub fn mean_ce(logits: &[Vec<f32>], gold: &[u32]) -> f64 {
    let mut total = 0.0;
    for (z, &y) in logits.iter().zip(gold) {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
        total += lse - z[y as usize] as f64;
    }
    total / gold.len().max(1) as f64
}

/// Row-wise argmax.
pub fn argmax(logits: &[Vec<f32>]) -> Vec<u32> {
    logits
        .iter()
        .map(|z| {
            z.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0 as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ce_of_uniform_scores_is_log_classes_and_argmax_takes_the_first_maximum() {
        let z = vec![vec![0.0f32; 4], vec![2.0, 2.0, 1.0, 0.0]];
        assert!((mean_ce(&z[..1], &[3]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(argmax(&z), vec![0, 0]);
        // a confident correct score has CE ≈ 0
        assert!(mean_ce(&[vec![50.0, 0.0]], &[0]) < 1e-12);
    }
}
