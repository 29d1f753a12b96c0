//! Text metrics for generated answers (methods.md §5.14): exact match, QA-F1 and Rouge-L.
//!
//! * **EM** and **QA-F1** follow the SQuAD v1.1 evaluation script (also used by CrossFit and
//!   paper 2): answers are normalised by lower-casing, removing ASCII punctuation, removing the
//!   articles `a`, `an`, `the` and collapsing whitespace. EM is 1 when the normalised strings
//!   are equal; QA-F1 is the F1 of the bag-of-tokens overlap of the normalised answers (0 when
//!   either side has no token, 1 when both are empty).
//! * **Rouge-L** follows Google's `rouge_score` package (`RougeScorer(["rougeL"])` without
//!   stemming): text is lower-cased, every non-alphanumeric character becomes a space, tokens
//!   are split on whitespace, and the score is the F-measure `2PR/(P+R)` of the longest common
//!   subsequence, `P = LCS/|pred|`, `R = LCS/|gold|` (0 when either side is empty).
//!
//! With several gold answers a metric takes the maximum over them, as both scripts do.
//! Corpus-level values are means over examples ([`mean_text_metric`]).

use crate::diag::OpError;
use std::collections::HashMap;

/// SQuAD answer normalisation.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD exact match of one prediction against one gold answer (0 or 1).
pub fn exact_match(pred: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize_answer(pred) == normalize_answer(gold)))
}

/// SQuAD token-level F1.
pub fn qa_f1(pred: &str, gold: &str) -> f64 {
    let p = normalize_answer(pred);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p == g));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `rouge_score`'s default tokenizer: lower-case, non-alphanumerics to spaces, split.
fn rouge_tokens(s: &str) -> Vec<String> {
    let cleaned: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// Length of the longest common subsequence (O(n·m) time, O(m) memory).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Rouge-L F-measure of one prediction against one reference.
pub fn rouge_l(pred: &str, gold: &str) -> f64 {
    let p = rouge_tokens(pred);
    let g = rouge_tokens(gold);
    if p.is_empty() || g.is_empty() {
        return 0.0;
    }
    let l = lcs_len(&p, &g) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (l / p.len() as f64, l / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// The text metrics by name, as `evaluate` spells them.
pub const TEXT_METRICS: &[&str] = &["em", "qa_f1", "rouge_l"];

/// Mean of a text metric over examples; each example's score is the maximum over its gold
/// answers.
pub fn mean_text_metric(name: &str, pred: &[String], gold: &[Vec<String>]) -> Result<f64, OpError> {
    let f: fn(&str, &str) -> f64 = match name {
        "em" => exact_match,
        "qa_f1" => qa_f1,
        "rouge_l" => rouge_l,
        other => {
            return Err(OpError::new(
                "smelt::eval::metric",
                format!("`{other}` is not a text metric"),
            )
            .with_help(format!("text metrics: {}", TEXT_METRICS.join(", "))))
        }
    };
    if pred.len() != gold.len() || pred.is_empty() {
        return Err(OpError::new(
            "smelt::train::metric",
            format!("{} predictions for {} gold answers", pred.len(), gold.len()),
        ));
    }
    let total: f64 = pred
        .iter()
        .zip(gold)
        .map(|(p, gs)| gs.iter().map(|g| f(p, g)).fold(0.0, f64::max))
        .sum();
    Ok(total / pred.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_squad() {
        assert_eq!(
            normalize_answer("The  Quick, brown fox!"),
            "quick brown fox"
        );
        assert_eq!(normalize_answer("An apple a day"), "apple day");
        assert_eq!(normalize_answer("  "), "");
    }

    #[test]
    fn exact_match_ignores_case_punctuation_and_articles() {
        assert_eq!(exact_match("The Eiffel Tower.", "eiffel tower"), 1.0);
        assert_eq!(exact_match("Eiffel", "eiffel tower"), 0.0);
    }

    #[test]
    fn qa_f1_by_hand() {
        // pred {eiffel, tower, paris}, gold {eiffel, tower}: P = 2/3, R = 1, F1 = 0.8
        assert!((qa_f1("the Eiffel Tower, Paris", "Eiffel Tower") - 0.8).abs() < 1e-12);
        // tokens count with multiplicity: pred {cat ×2}, gold {cat}: common 1, P = 1/2, R = 1
        assert!((qa_f1("cat cat", "cat") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(qa_f1("dog", "cat"), 0.0);
        assert_eq!(qa_f1("the", "a"), 1.0); // both normalise to nothing
        assert_eq!(qa_f1("the", "cat"), 0.0);
    }

    #[test]
    fn rouge_l_by_hand() {
        // LCS("police killed the gunman", "police kill the gunman") = police the gunman = 3
        let r = rouge_l("police killed the gunman", "police kill the gunman");
        assert!((r - 0.75).abs() < 1e-12, "{r}");
        // pred 3 tokens, gold 6 tokens, LCS 2 (a c): P = 2/3, R = 1/3, F = 4/9
        let r = rouge_l("a x c", "a b c d e f");
        assert!((r - 4.0 / 9.0).abs() < 1e-12, "{r}");
        assert_eq!(rouge_l("Same text!", "same  TEXT"), 1.0);
        assert_eq!(rouge_l("", "x"), 0.0);
    }

    #[test]
    fn lcs_is_order_sensitive() {
        let t = |s: &str| rouge_tokens(s);
        assert_eq!(lcs_len(&t("a b c"), &t("c b a")), 1);
        assert_eq!(lcs_len(&t("a b c d"), &t("a c d")), 3);
    }

    #[test]
    fn means_take_the_best_gold_answer() {
        let pred = vec!["paris".to_string(), "rome".into()];
        let gold = vec![
            vec!["London".to_string(), "Paris".into()],
            vec!["Milan".to_string()],
        ];
        assert_eq!(mean_text_metric("em", &pred, &gold).unwrap(), 0.5);
        assert!(mean_text_metric("bleu", &pred, &gold).is_err());
        assert!(mean_text_metric("em", &pred[..1], &gold).is_err());
    }
}
