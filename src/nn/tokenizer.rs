//! `tokenizer.json` loading and encoding (single, pair, padded batch) for the model files.
//!
//! Padding and truncation stored in the file are disabled on load (all-MiniLM-L6-v2's file pads
//! every input to 128): encodings are exactly what HF returns without `padding=`/`truncation=`.
//! Batches are right-padded to the longest input with the model's pad id, attention mask 0 and
//! type id 0 on the padding, matching `tok(texts, padding=True)`.

use crate::diag::OpError;
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

const TOK: &str = "smelt::model::tokenizer";

/// One encoded input (no padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A right-padded batch as `[B, T]` u32 tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
}

/// A loaded tokenizer with padding/truncation disabled and a known pad id.
#[derive(Debug, Clone)]
pub struct Tok {
    inner: Tokenizer,
    pad_id: u32,
}

impl Tok {
    /// Loads `dir/tokenizer.json`; `config_pad` (from config.json) takes precedence for the pad id.
    pub fn from_dir(dir: &Path, config_pad: Option<u32>) -> Result<Tok, OpError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(missing_tokenizer(dir));
        }
        Tok::from_file(&path, config_pad)
    }

    pub fn from_file(path: &Path, config_pad: Option<u32>) -> Result<Tok, OpError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| OpError::new(TOK, format!("cannot load {}: {e}", path.display())))?;
        let file_pad = inner.get_padding().map(|p| p.pad_id);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| OpError::new(TOK, format!("{}: {e}", path.display())))?;
        let named_pad = ["[PAD]", "<pad>", "<|pad|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t));
        let pad_id = config_pad.or(file_pad).or(named_pad).unwrap_or(0);
        Ok(Tok { inner, pad_id })
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn set_pad_id(&mut self, id: u32) {
        self.pad_id = id;
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Errors when the tokenizer can produce ids outside the model's embedding table.
    pub fn check_vocab(&self, config_vocab: usize) -> Result<(), OpError> {
        let n = self.vocab_size();
        if n > config_vocab {
            return Err(OpError::new(
                "smelt::model::vocab_mismatch",
                format!(
                    "tokenizer.json has {n} tokens but config.json vocab_size is {config_vocab}"
                ),
            )
            .with_help(
                "the tokenizer belongs to a different model (or the vocabulary was pruned)",
            ));
        }
        Ok(())
    }

    /// Encodes one text with the special-token template (`[CLS] … [SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Encoded, OpError> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| OpError::new(TOK, e.to_string()))?;
        Ok(convert(&e))
    }

    /// Encodes a pair (`[CLS] a [SEP] b [SEP]`, type ids 0 then 1).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoded, OpError> {
        let e = self
            .inner
            .encode((a, b), true)
            .map_err(|e| OpError::new(TOK, e.to_string()))?;
        Ok(convert(&e))
    }

    /// Encodes `(text, optional pair)` items and pads them into one batch.
    pub fn encode_batch(
        &self,
        items: &[(&str, Option<&str>)],
        device: &Device,
    ) -> Result<Batch, OpError> {
        let encs = items
            .iter()
            .map(|(a, b)| match b {
                Some(b) => self.encode_pair(a, b),
                None => self.encode(a),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.pad(&encs, device)
    }

    /// Right-pads encodings to the longest one.
    pub fn pad(&self, encs: &[Encoded], device: &Device) -> Result<Batch, OpError> {
        pad_batch(encs, self.pad_id, device)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, OpError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| OpError::new(TOK, e.to_string()))
    }
}

/// The `smelt::model::missing_tokenizer` error for a directory without `tokenizer.json`.
pub fn missing_tokenizer(dir: &Path) -> OpError {
    OpError::new(
        "smelt::model::missing_tokenizer",
        format!("no tokenizer.json in {}", dir.display()),
    )
    .with_help(
        "save the fast tokenizer beside the model (`AutoTokenizer.from_pretrained(..)\
             .save_pretrained(dir)` writes tokenizer.json); vocab.txt alone is not enough",
    )
}

fn convert(e: &tokenizers::Encoding) -> Encoded {
    Encoded {
        ids: e.get_ids().to_vec(),
        type_ids: e.get_type_ids().to_vec(),
        attention_mask: e.get_attention_mask().to_vec(),
    }
}

/// Right-pads encodings to the longest with `pad_id` (mask 0, type id 0).
pub fn pad_batch(encs: &[Encoded], pad_id: u32, device: &Device) -> Result<Batch, OpError> {
    if encs.is_empty() {
        return Err(OpError::new(
            "smelt::model::bad_input",
            "cannot build an empty batch",
        ));
    }
    let t = encs.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let b = encs.len();
    let (mut ids, mut tt, mut am) = (vec![pad_id; b * t], vec![0u32; b * t], vec![0u32; b * t]);
    for (i, e) in encs.iter().enumerate() {
        let r = i * t;
        ids[r..r + e.len()].copy_from_slice(&e.ids);
        tt[r..r + e.len()].copy_from_slice(&e.type_ids);
        am[r..r + e.len()].copy_from_slice(&e.attention_mask);
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        type_ids: Tensor::from_vec(tt, (b, t), device)?,
        attention_mask: Tensor::from_vec(am, (b, t), device)?,
        lengths: encs.iter().map(|e| e.len()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/assets/models")
            .join(name)
    }

    #[test]
    fn padding_in_file_is_disabled() {
        let dir = model_dir("all-minilm-l6-v2");
        if !dir.is_dir() {
            eprintln!("skipping: {} absent", dir.display());
            return;
        }
        let tok = Tok::from_dir(&dir, Some(0)).unwrap();
        let e = tok.encode("the movie was great").unwrap();
        assert_eq!(e.ids, vec![101, 1996, 3185, 2001, 2307, 102]);
        let p = tok.encode_pair("a b", "c").unwrap();
        assert_eq!(p.type_ids.last(), Some(&1));
        tok.check_vocab(30522).unwrap();
        assert_eq!(
            tok.check_vocab(1000).unwrap_err().code,
            "smelt::model::vocab_mismatch"
        );
    }

    #[test]
    fn batch_is_right_padded() {
        let encs = [
            Encoded {
                ids: vec![5, 6, 7],
                type_ids: vec![0, 0, 1],
                attention_mask: vec![1, 1, 1],
            },
            Encoded {
                ids: vec![8],
                type_ids: vec![0],
                attention_mask: vec![1],
            },
        ];
        let b = pad_batch(&encs, 9, &Device::Cpu).unwrap();
        assert_eq!(
            b.ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 9, 9]]
        );
        assert_eq!(
            b.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 0, 0]]
        );
        assert_eq!(b.type_ids.to_vec2::<u32>().unwrap()[0], vec![0, 0, 1]);
        assert_eq!(b.lengths, vec![3, 1]);
    }

    #[test]
    fn missing_tokenizer_has_a_code_and_hint() {
        let d = tempfile::tempdir().unwrap();
        let e = Tok::from_dir(d.path(), None).unwrap_err();
        assert_eq!(e.code, "smelt::model::missing_tokenizer");
        assert!(e.help.is_some());
    }
}
