//! LM-BFF prompt templates (`*cls**sent_0*_It_was*mask*.*sep+*`) parsed into parts and realised
//! as token ids by a tokenizer, with max-length truncation of the sentence parts only.
//!
//! Grammar (methods.md §4.3, LM-BFF `src/dataset.py::tokenize_multipart_input`): the template is
//! split on `*`; each piece is a keyword or literal text (`_` = space):
//! `cls`, `mask`, `sep`, `sep+` (special tokens; `sep+` also starts the next segment id),
//! `sent_i` (sentence i: 0 = `text`, 1 = `text_b`), with modifiers `+sent_i` (leading space),
//! `sent-_i` (drop the last character), `sentl_i` / `sentu_i` (lower/upper-case the first
//! character), combinable as `+sentl-_1`; `label_i` (the verbalizer word of label i).
//! A literal piece of one character is looked up as a token first (as LM-BFF does), longer ones
//! are tokenized without special tokens. Sentence pieces are cut by the per-sentence limits,
//! then longest-first until the whole input fits `max_len`; template tokens are never cut.

use super::task::Example;
use super::TEMPLATE;
use crate::diag::OpError;
use crate::nn::tokenizer::Tok;

/// Case change applied to a sentence's first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Keep,
    Lower,
    Upper,
}

/// A `*sent…_i*` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentPart {
    pub index: usize,
    /// `+sent_i`: prefix a space.
    pub space: bool,
    /// `sent-_i`: drop the last character.
    pub drop_last: bool,
    pub case: Case,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Cls,
    Mask,
    /// `plus`: the segment (type) id increases after this token.
    Sep {
        plus: bool,
    },
    Sent(SentPart),
    /// The verbalizer word of label i.
    Label(usize),
    /// Literal text (`_` already replaced by spaces).
    Text(String),
}

/// A parsed LM-BFF template plus its length settings and (for `*label_i*`) label words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
    /// Maximum sequence length (LM-BFF default 128).
    pub max_len: usize,
    /// Token limit of sentence 0 (`first_sent_limit`).
    pub first_sent_limit: Option<usize>,
    /// Token limit of the other sentences (`other_sent_limit`).
    pub other_sent_limit: Option<usize>,
    /// Words for `*label_i*` parts (label order).
    pub label_words: Vec<String>,
}

/// A template realised for one example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Position of the `*mask*` token, when the template has one.
    pub mask_pos: Option<usize>,
}

fn err(msg: impl Into<String>) -> OpError {
    OpError::new(TEMPLATE, msg)
}

/// `[+]sent[l|u][-]_<i>`; `None` when the piece is not a sentence reference.
fn parse_sent(p: &str) -> Option<SentPart> {
    let (space, rest) = match p.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, p),
    };
    let rest = rest.strip_prefix("sent")?;
    let (case, rest) = match rest.chars().next()? {
        'l' => (Case::Lower, &rest[1..]),
        'u' => (Case::Upper, &rest[1..]),
        _ => (Case::Keep, rest),
    };
    let (drop_last, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let index = rest.strip_prefix('_')?.parse().ok()?;
    Some(SentPart {
        index,
        space,
        drop_last,
        case,
    })
}

impl Template {
    /// Parse an LM-BFF template string.
    pub fn parse(source: &str) -> Result<Template, OpError> {
        let mut parts = Vec::new();
        for p in source.split('*').filter(|p| !p.is_empty()) {
            let part = match p {
                "cls" => Part::Cls,
                "mask" => Part::Mask,
                "sep" => Part::Sep { plus: false },
                "sep+" => Part::Sep { plus: true },
                _ => {
                    if let Some(s) = parse_sent(p) {
                        Part::Sent(s)
                    } else if let Some(i) = p.strip_prefix("label_").and_then(|i| i.parse().ok()) {
                        Part::Label(i)
                    } else if p.trim_start_matches('+').starts_with("sent")
                        || p.starts_with("label")
                    {
                        return Err(err(format!("unknown template variable `*{p}*` in `{source}`"))
                            .with_help(
                                "variables: *cls*, *mask*, *sep*, *sep+*, *sent_0*, *+sent_1*, \
                                 *sent-_0*, *sentl_1*, *sentu_0*, *label_0*; `_` in text is a space",
                            ));
                    } else {
                        Part::Text(p.replace('_', " "))
                    }
                }
            };
            parts.push(part);
        }
        if parts.is_empty() {
            return Err(err("empty template"));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
            max_len: 128,
            first_sent_limit: None,
            other_sent_limit: None,
            label_words: Vec::new(),
        })
    }

    pub fn with_max_len(mut self, max_len: usize) -> Template {
        self.max_len = max_len;
        self
    }

    pub fn with_sent_limits(mut self, first: Option<usize>, other: Option<usize>) -> Template {
        self.first_sent_limit = first;
        self.other_sent_limit = other;
        self
    }

    pub fn with_label_words(mut self, words: Vec<String>) -> Template {
        self.label_words = words;
        self
    }

    pub fn has_mask(&self) -> bool {
        self.parts.contains(&Part::Mask)
    }

    /// Check the template against a task: sentence indices exist (`*sent_1*` needs a pair task)
    /// and `*label_i*` indices are labels with a word.
    pub fn check(&self, is_pair: bool, n_labels: usize) -> Result<(), OpError> {
        let n_sent = if is_pair { 2 } else { 1 };
        for p in &self.parts {
            match p {
                Part::Sent(s) if s.index >= n_sent => {
                    let what = if is_pair {
                        "a pair task has sentences 0 and 1"
                    } else {
                        "this task has one sentence (*sent_0*)"
                    };
                    return Err(err(format!(
                        "template `{}` refers to sentence {}, but {what}",
                        self.source, s.index
                    ))
                    .with_help("use *sent_1* / *+sent_1* only with pair tasks (text_b)"));
                }
                Part::Label(i) if *i >= n_labels || *i >= self.label_words.len() => {
                    return Err(err(format!(
                        "template `{}` uses *label_{i}*, but there are {n_labels} labels and {} label words",
                        self.source,
                        self.label_words.len()
                    )));
                }
                _ => {}
            }
        }
        if self.parts.iter().filter(|p| **p == Part::Mask).count() > 1 {
            return Err(err(format!(
                "template `{}` has more than one *mask*",
                self.source
            )));
        }
        Ok(())
    }
}

/// Token ids of `text` without special tokens.
pub fn encode_plain(tok: &Tok, text: &str) -> Result<Vec<u32>, OpError> {
    let e = tok
        .inner()
        .encode(text, false)
        .map_err(|e| err(format!("cannot tokenize {text:?}: {e}")))?;
    Ok(e.get_ids().to_vec())
}

/// The id of the first of `names` the tokenizer knows (`[MASK]` / `<mask>`, …).
pub fn special_id(tok: &Tok, what: &str, names: &[&str]) -> Result<u32, OpError> {
    names
        .iter()
        .find_map(|n| tok.token_to_id(n))
        .ok_or_else(|| {
            err(format!(
                "the tokenizer has no {what} token (looked for {})",
                names.join(", ")
            ))
            .with_help("use a template without this special token, or a tokenizer that has it")
        })
}

/// Apply a sentence part's modifiers to its text.
fn sentence_text(s: &SentPart, ex: &Example) -> Result<String, OpError> {
    let raw = match s.index {
        0 => ex.text.as_str(),
        1 => ex.text_b.as_deref().ok_or_else(|| {
            err(format!("example {} has no text_b for *sent_1*", ex.id))
                .with_help("*sent_1* needs a pair task")
        })?,
        i => {
            return Err(err(format!(
                "sentence {i} does not exist (only 0 = text and 1 = text_b)"
            )))
        }
    };
    let mut t: String = raw.to_string();
    if s.drop_last {
        t.pop();
    }
    let mut chars = t.chars();
    if let Some(c) = chars.next() {
        t = match s.case {
            Case::Keep => t,
            Case::Lower => c.to_lowercase().chain(chars).collect(),
            Case::Upper => c.to_uppercase().chain(chars).collect(),
        };
    }
    Ok(if s.space { format!(" {t}") } else { t })
}

/// Realise `tpl` for `ex`: token ids, segment ids and the mask position.
pub fn encode(tok: &Tok, tpl: &Template, ex: &Example) -> Result<Encoded, OpError> {
    // (ids, segment, sentence index when the piece may be truncated)
    let mut pieces: Vec<(Vec<u32>, u32, Option<usize>)> = Vec::with_capacity(tpl.parts.len());
    let mut segment = 0u32;
    let mut mask_piece = None;
    for part in &tpl.parts {
        let (ids, sent) = match part {
            Part::Cls => (vec![special_id(tok, "CLS", &["[CLS]", "<s>"])?], None),
            Part::Sep { .. } => (vec![special_id(tok, "SEP", &["[SEP]", "</s>"])?], None),
            Part::Mask => {
                mask_piece = Some(pieces.len());
                (vec![special_id(tok, "mask", &["[MASK]", "<mask>"])?], None)
            }
            Part::Label(i) => {
                let word = tpl
                    .label_words
                    .get(*i)
                    .ok_or_else(|| err(format!("no label word for *label_{i}*")))?;
                (vec![super::verbalizer::word_id(tok, word)?], None)
            }
            Part::Text(t) => match (t.chars().count(), tok.token_to_id(t)) {
                (1, Some(id)) => (vec![id], None),
                _ => (encode_plain(tok, t)?, None),
            },
            Part::Sent(s) => {
                let mut ids = encode_plain(tok, &sentence_text(s, ex)?)?;
                let limit = if s.index == 0 {
                    tpl.first_sent_limit
                } else {
                    tpl.other_sent_limit
                };
                if let Some(l) = limit {
                    ids.truncate(l);
                }
                (ids, Some(s.index))
            }
        };
        pieces.push((ids, segment, sent));
        if *part == (Part::Sep { plus: true }) {
            segment += 1;
        }
    }
    let fixed: usize = pieces
        .iter()
        .filter(|p| p.2.is_none())
        .map(|p| p.0.len())
        .sum();
    if fixed > tpl.max_len {
        return Err(err(format!(
            "template `{}` alone is {fixed} tokens, more than max_len {}",
            tpl.source, tpl.max_len
        )));
    }
    // Longest-first truncation of the sentence pieces (ties: the later piece loses a token).
    let mut total: usize = pieces.iter().map(|p| p.0.len()).sum();
    while total > tpl.max_len {
        let longest = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.2.is_some())
            .max_by_key(|(i, p)| (p.0.len(), *i))
            .map(|(i, _)| i);
        match longest {
            Some(i) if !pieces[i].0.is_empty() => {
                pieces[i].0.pop();
                total -= 1;
            }
            _ => break,
        }
    }
    let mut out = Encoded {
        ids: Vec::with_capacity(total),
        type_ids: Vec::with_capacity(total),
        mask_pos: None,
    };
    for (i, (ids, seg, _)) in pieces.iter().enumerate() {
        if Some(i) == mask_piece {
            out.mask_pos = Some(out.ids.len());
        }
        out.ids.extend_from_slice(ids);
        out.type_ids.extend(std::iter::repeat_n(*seg, ids.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lmbff_templates() {
        let t = Template::parse("*cls**sent_0*_It_was*mask*.*sep+*").unwrap();
        assert_eq!(t.parts.len(), 6);
        assert_eq!(t.parts[2], Part::Text(" It was".into()));
        assert_eq!(t.parts[5], Part::Sep { plus: true });
        let t = Template::parse("*cls**sent-_0*?*mask*,*+sentl_1**sep+*").unwrap();
        let s = SentPart {
            index: 1,
            space: true,
            drop_last: false,
            case: Case::Lower,
        };
        assert_eq!(t.parts[5], Part::Sent(s));
        assert!(matches!(
            t.parts[1],
            Part::Sent(SentPart {
                drop_last: true,
                index: 0,
                ..
            })
        ));
        assert!(Template::parse("*cls**label_1**sep*")
            .unwrap()
            .parts
            .contains(&Part::Label(1)));
        let e = Template::parse("*cls**sent0**mask*").unwrap_err();
        assert!(e.message.contains("`*sent0*`"), "{}", e.message);
        assert!(Template::parse("**").is_err());
    }

    #[test]
    fn checks_sentences_against_the_task() {
        let t = Template::parse("*cls**sent_0**mask*,*+sent_1**sep+*").unwrap();
        assert!(t.check(true, 2).is_ok());
        let e = t.check(false, 2).unwrap_err();
        assert!(e.message.contains("sentence 1"), "{}", e.message);
        let t = Template::parse("*cls**label_2**sep*")
            .unwrap()
            .with_label_words(vec!["a".into(), "b".into()]);
        assert!(t.check(false, 2).is_err());
    }

    #[test]
    fn sentence_modifiers() {
        let ex = Example {
            id: 0,
            text: "Hello there.".into(),
            text_b: Some("World".into()),
            label: 0,
        };
        let s = |index, space, drop_last, case| SentPart {
            index,
            space,
            drop_last,
            case,
        };
        assert_eq!(
            sentence_text(&s(0, false, true, Case::Keep), &ex).unwrap(),
            "Hello there"
        );
        assert_eq!(
            sentence_text(&s(1, true, false, Case::Lower), &ex).unwrap(),
            " world"
        );
        assert_eq!(
            sentence_text(&s(0, false, false, Case::Upper), &ex).unwrap(),
            "Hello there."
        );
        let single = Example { text_b: None, ..ex };
        assert!(sentence_text(&s(1, false, false, Case::Keep), &single).is_err());
    }
}
