//! `{field}` prompt templates for decoder models with answer choices (methods.md §1.3): the
//! input is rendered from the example, the target is the answer choice of its label.
//!
//! Syntax: literal text with `{text}`, `{text_b}`, `{label}` (gold label name), `{answer}`
//! (answer choice of the gold label) and `{choices}` (all choices joined with " or "); without
//! answer choices the label names serve as choices. `{{` and
//! `}}` are literal braces. `|||` separates input and target, as in the promptsource templates
//! (`"{text} … Answer: ||| {answer}"`); without it the target is `{answer}`. The full training
//! sequence is `input + " " + target` (both trimmed at the join), as the S1 collator builds it.

use super::task::Example;
use super::TEMPLATE;
use crate::diag::OpError;
use crate::nn::tokenizer::Tok;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Text,
    TextB,
    Label,
    Answer,
    Choices,
}

const FIELDS: &[(&str, Field)] = &[
    ("text", Field::Text),
    ("text_b", Field::TextB),
    ("label", Field::Label),
    ("answer", Field::Answer),
    ("choices", Field::Choices),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Field(Field),
}

/// A parsed prompt: input pieces, target pieces and one answer choice per label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    pub source: String,
    pub input: Vec<Piece>,
    pub target: Vec<Piece>,
    pub choices: Vec<String>,
}

/// A rendered example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub input: String,
    pub target: String,
}

impl Rendered {
    /// `input + " " + target`.
    pub fn full(&self) -> String {
        format!("{} {}", self.input.trim_end(), self.target.trim_start())
    }
}

fn pieces(src: &str, whole: &str) -> Result<Vec<Piece>, OpError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let field = FIELDS
                    .iter()
                    .find(|(n, _)| *n == name.trim())
                    .map(|(_, f)| *f);
                let field = field.ok_or_else(|| {
                    let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                    OpError::new(
                        TEMPLATE,
                        format!("unknown field `{{{name}}}` in prompt `{whole}`"),
                    )
                    .with_help(format!(
                        "fields: {}; write {{{{ for a literal brace",
                        names.join(", ")
                    ))
                })?;
                if !lit.is_empty() {
                    out.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                out.push(Piece::Field(field));
            }
            '}' => {
                return Err(
                    OpError::new(TEMPLATE, format!("unmatched `}}` in prompt `{whole}`"))
                        .with_help("write }} for a literal brace"),
                )
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

impl PromptTemplate {
    pub fn parse(source: &str, choices: Vec<String>) -> Result<PromptTemplate, OpError> {
        let (input, target) = match source.split_once("|||") {
            Some((i, t)) => (pieces(i, source)?, pieces(t, source)?),
            None => (pieces(source, source)?, vec![Piece::Field(Field::Answer)]),
        };
        Ok(PromptTemplate {
            source: source.to_string(),
            input,
            target,
            choices,
        })
    }

    fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.input
            .iter()
            .chain(&self.target)
            .filter_map(|p| match p {
                Piece::Field(f) => Some(*f),
                Piece::Lit(_) => None,
            })
    }

    /// `{text_b}` needs a pair task; one answer choice per label when choices are used.
    pub fn check(&self, is_pair: bool, n_labels: usize) -> Result<(), OpError> {
        if !is_pair && self.fields().any(|f| f == Field::TextB) {
            return Err(OpError::new(
                TEMPLATE,
                format!(
                    "prompt `{}` uses {{text_b}}, but the task has one sentence",
                    self.source
                ),
            )
            .with_help("{text_b} is only available for pair tasks"));
        }
        let uses_choices = self
            .fields()
            .any(|f| matches!(f, Field::Answer | Field::Choices));
        if uses_choices && !self.choices.is_empty() && self.choices.len() != n_labels {
            return Err(OpError::new(
                TEMPLATE,
                format!(
                    "{} answer choices for {n_labels} labels",
                    self.choices.len()
                ),
            )
            .with_help("give one answer choice per label, in label order"));
        }
        Ok(())
    }

    fn render_pieces(
        &self,
        ps: &[Piece],
        ex: &Example,
        labels: &[String],
    ) -> Result<String, OpError> {
        let mut s = String::new();
        for p in ps {
            match p {
                Piece::Lit(l) => s.push_str(l),
                Piece::Field(Field::Text) => s.push_str(&ex.text),
                Piece::Field(Field::TextB) => {
                    s.push_str(ex.text_b.as_deref().ok_or_else(|| {
                        OpError::new(
                            TEMPLATE,
                            format!("example {} has no text_b for {{text_b}}", ex.id),
                        )
                    })?)
                }
                Piece::Field(Field::Label) => {
                    s.push_str(labels.get(ex.label).map(String::as_str).unwrap_or(""))
                }
                Piece::Field(Field::Answer) => {
                    s.push_str(self.choices_or(labels).get(ex.label).ok_or_else(|| {
                        OpError::new(TEMPLATE, format!("no answer choice for label {}", ex.label))
                    })?)
                }
                Piece::Field(Field::Choices) => s.push_str(&self.choices_or(labels).join(" or ")),
            }
        }
        Ok(s)
    }

    /// The answer choices, or the label names when none were given.
    fn choices_or<'a>(&'a self, labels: &'a [String]) -> &'a [String] {
        if self.choices.is_empty() {
            labels
        } else {
            &self.choices
        }
    }

    pub fn render(&self, ex: &Example, labels: &[String]) -> Result<Rendered, OpError> {
        Ok(Rendered {
            input: self
                .render_pieces(&self.input, ex, labels)?
                .trim_end()
                .to_string(),
            target: self
                .render_pieces(&self.target, ex, labels)?
                .trim()
                .to_string(),
        })
    }

    /// Token ids of each answer choice as it follows the input (`" " + choice`, no specials).
    pub fn choice_ids(&self, tok: &Tok, labels: &[String]) -> Result<Vec<Vec<u32>>, OpError> {
        self.choices_or(labels)
            .iter()
            .map(|c| super::template::encode_plain(tok, &format!(" {c}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex() -> Example {
        Example {
            id: 3,
            text: "It rains.".into(),
            text_b: Some("It is wet".into()),
            label: 1,
        }
    }

    #[test]
    fn renders_input_and_target() {
        let labels = vec!["entailment".to_string(), "not_entailment".to_string()];
        let p = PromptTemplate::parse(
            "{text} Based on the sentences, is it true that {text_b}? {choices}?\nAnswer: ||| {answer}",
            vec!["Yes".into(), "No".into()],
        )
        .unwrap();
        p.check(true, 2).unwrap();
        let r = p.render(&ex(), &labels).unwrap();
        assert_eq!(
            r.input,
            "It rains. Based on the sentences, is it true that It is wet? Yes or No?\nAnswer:"
        );
        assert_eq!(r.target, "No");
        assert!(r.full().ends_with("Answer: No"));
        let q = PromptTemplate::parse("{{literal}} {label}", vec![]).unwrap();
        let r = q.render(&ex(), &labels).unwrap();
        assert_eq!(
            (r.input.as_str(), r.target.as_str()),
            ("{literal} not_entailment", "not_entailment")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = PromptTemplate::parse("{txt}", vec![]).unwrap_err();
        assert!(e.message.contains("`{txt}`"), "{}", e.message);
        let p = PromptTemplate::parse("{text_b}", vec!["a".into()]).unwrap();
        assert!(p.check(false, 1).unwrap_err().message.contains("text_b"));
        assert!(p
            .check(true, 2)
            .unwrap_err()
            .message
            .contains("1 answer choices"));
        assert!(PromptTemplate::parse("a } b", vec![]).is_err());
    }
}
