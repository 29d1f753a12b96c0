//! Verbalizers: one label word per label, each a single token of the model's tokenizer, plus
//! the LM-BFF prompt table (template and label words per task) from methods.md §4.3.
//!
//! A label word is encoded as `" " + word` without special tokens (LM-BFF; RoBERTa BPE then
//! yields `Ġword`, BERT WordPiece lower-cases and ignores the space) and must give exactly one
//! id: the logit of that id at `[MASK]` is the class score. A word that splits into several
//! pieces is an error that names the word and its pieces.

use super::TEMPLATE;
use crate::diag::OpError;
use crate::nn::tokenizer::Tok;

/// Label words in label order and their token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbalizer {
    pub words: Vec<String>,
    pub ids: Vec<u32>,
}

/// The single token id of `" " + word`, or an error naming the word and its tokens.
pub fn word_id(tok: &Tok, word: &str) -> Result<u32, OpError> {
    let enc = tok.inner().encode(format!(" {word}"), false).map_err(|e| {
        OpError::new(
            TEMPLATE,
            format!("cannot tokenize label word `{word}`: {e}"),
        )
    })?;
    match enc.get_ids() {
        [id] => Ok(*id),
        ids => Err(OpError::new(
            TEMPLATE,
            format!(
                "label word `{word}` is {} tokens: [{}]",
                ids.len(),
                enc.get_tokens().join(", ")
            ),
        )
        .with_help(
            "a label word must be one token (its logit at the mask is the class score); pick a \
             word that is in the vocabulary as a whole token",
        )),
    }
}

impl Verbalizer {
    /// Words given in label order; every word must be one token.
    pub fn new(tok: &Tok, words: &[String]) -> Result<Verbalizer, OpError> {
        let ids = words
            .iter()
            .map(|w| word_id(tok, w))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashMap::new();
        for (w, id) in words.iter().zip(&ids) {
            if let Some(prev) = seen.insert(*id, w) {
                return Err(OpError::new(
                    TEMPLATE,
                    format!("label words `{prev}` and `{w}` are the same token"),
                )
                .with_help("each label needs its own word"));
            }
        }
        Ok(Verbalizer {
            words: words.to_vec(),
            ids,
        })
    }

    /// Words from a `label → word` map; every label of the task must be mapped.
    pub fn from_map(
        tok: &Tok,
        labels: &[String],
        map: &[(String, String)],
    ) -> Result<Verbalizer, OpError> {
        Verbalizer::new(tok, &words_for(labels, map)?)
    }
}

/// Order a `label → word` map by the task's labels. Labels may be written by name or index.
pub fn words_for(labels: &[String], map: &[(String, String)]) -> Result<Vec<String>, OpError> {
    let mut words: Vec<Option<String>> = vec![None; labels.len()];
    for (label, word) in map {
        let i = labels
            .iter()
            .position(|l| l == label)
            .or_else(|| label.parse::<usize>().ok().filter(|&i| i < labels.len()))
            .ok_or_else(|| {
                OpError::new(
                    TEMPLATE,
                    format!("verbalizer maps `{label}`, which is not a label"),
                )
                .with_help(format!("labels: {}", labels.join(", ")))
            })?;
        words[i] = Some(word.clone());
    }
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            w.ok_or_else(|| {
                OpError::new(
                    TEMPLATE,
                    format!("verbalizer has no word for label `{}`", labels[i]),
                )
                .with_help("map every label to a word")
            })
        })
        .collect()
}

/// Parse `"negative:terrible, positive:great"` (or `"terrible, great"` in label order).
pub fn parse_words(spec: &str, labels: &[String]) -> Result<Vec<String>, OpError> {
    let items: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.iter().all(|s| !s.contains(':')) {
        if items.len() != labels.len() {
            return Err(OpError::new(
                TEMPLATE,
                format!("{} label words for {} labels", items.len(), labels.len()),
            )
            .with_help("give one word per label, in label order, or write label:word pairs"));
        }
        return Ok(items.iter().map(|s| s.to_string()).collect());
    }
    let map = items
        .iter()
        .map(|s| {
            let (l, w) = s
                .rsplit_once(':')
                .ok_or_else(|| OpError::new(TEMPLATE, format!("`{s}` is not a label:word pair")))?;
            Ok((l.trim().to_string(), w.trim().to_string()))
        })
        .collect::<Result<Vec<_>, OpError>>()?;
    words_for(labels, &map)
}

/// LM-BFF template and label words (in the label order of the shared task files) for a task.
pub fn lmbff_prompt(task: &str) -> Option<(&'static str, &'static [&'static str])> {
    const SENT: &str = "*cls**sent_0*_It_was*mask*.*sep+*";
    const NLI: &str = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*";
    Some(match task {
        "sst2" | "mr" | "cr" | "mpqa" | "yelp" | "imdb" => (SENT, &["terrible", "great"]),
        "sst5" => (SENT, &["terrible", "bad", "okay", "good", "great"]),
        "subj" => (
            "*cls**sent_0*_This_is*mask*.*sep+*",
            &["subjective", "objective"],
        ),
        "cola" => (
            "*cls**sent_0*_This_is*mask*.*sep+*",
            &["incorrect", "correct"],
        ),
        // Shared order: ABBR, ENTY, DESC, HUM, LOC, NUM.
        "trec" => (
            "*cls**mask*:*+sent_0**sep+*",
            &[
                "Expression",
                "Entity",
                "Description",
                "Human",
                "Location",
                "Number",
            ],
        ),
        "agnews" => (
            "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*",
            &["world", "sports", "business", "tech"],
        ),
        // Shared order: entailment, neutral, contradiction.
        "mnli" | "snli" => (NLI, &["Yes", "Maybe", "No"]),
        // Shared order: entailment, contradiction, neutral.
        "cb" => (NLI, &["Yes", "No", "Maybe"]),
        "rte" | "qnli" => (NLI, &["Yes", "No"]),
        "mrpc" | "qqp" => ("*cls**sent_0**mask*,*+sentl_1**sep+*", &["No", "Yes"]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["negative".into(), "positive".into()]
    }

    #[test]
    fn maps_and_specs_follow_label_order() {
        let map = vec![
            ("positive".to_string(), "great".to_string()),
            ("0".to_string(), "terrible".to_string()),
        ];
        assert_eq!(
            words_for(&labels(), &map).unwrap(),
            vec!["terrible", "great"]
        );
        assert_eq!(
            parse_words("positive:great, negative:terrible", &labels()).unwrap(),
            vec!["terrible", "great"]
        );
        assert_eq!(
            parse_words("bad,good", &labels()).unwrap(),
            vec!["bad", "good"]
        );
        assert!(parse_words("bad", &labels()).is_err());
        let e = parse_words("positive:great", &labels()).unwrap_err();
        assert!(
            e.message.contains("no word for label `negative`"),
            "{}",
            e.message
        );
        assert!(parse_words("neutral:meh, negative:bad, positive:good", &labels()).is_err());
    }

    #[test]
    fn committed_tokenizer_single_and_multi_token_words() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/minilm-l3-v8k");
        let tok = Tok::from_dir(&path, None).unwrap();
        let v = Verbalizer::new(&tok, &["terrible".into(), "Great".into()]).unwrap();
        assert_eq!(v.ids[1], tok.token_to_id("great").unwrap());
        let e = Verbalizer::new(&tok, &["incorrect".into(), "correct".into()]).unwrap_err();
        assert!(
            e.message
                .contains("`incorrect` is 4 tokens: [inc, ##or, ##re, ##ct]"),
            "{}",
            e.message
        );
        assert!(Verbalizer::new(&tok, &["good".into(), "Good".into()]).is_err());
    }

    #[test]
    fn lmbff_table_sizes() {
        assert_eq!(lmbff_prompt("sst5").unwrap().1.len(), 5);
        assert_eq!(lmbff_prompt("trec").unwrap().1.len(), 6);
        assert!(lmbff_prompt("nope").is_none());
    }
}
