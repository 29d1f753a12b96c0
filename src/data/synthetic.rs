//! Small synthetic classification tasks with planted structure, for the quickstart, tests and
//! benchmarks (the shared task data may never be committed).
//!
//! Four kinds. `movies` and `products` are binary sentiment tasks that share one sentiment
//! lexicon (the label signal) and differ only in their topic nouns: closely related tasks.
//! `restaurants` keeps half of that lexicon and adds its own words: partly related. `topics`
//! labels sports vs science by its nouns, while sentiment words appear at random, so the others'
//! signal is noise there: an unrelated task. Sentences come from a few short patterns over
//! words that are single tokens of the committed `minilm-l3-v8k` vocabulary (checked by a test);
//! a fraction `noise` of labels is flipped so no task is trivially separable. Labels are
//! balanced; everything is drawn from one ChaCha8 stream seeded by (kind, name, seed).

use super::kshot::{shuffle, stream};
use super::task::{Example, TaskData};
use super::SAMPLING;
use crate::diag::OpError;
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

/// The kinds `data synthetic(kind=…)` accepts.
pub const KINDS: &[&str] = &["movies", "products", "restaurants", "topics"];

const POSITIVE: &[&str] = &[
    "great",
    "good",
    "excellent",
    "wonderful",
    "amazing",
    "perfect",
    "fantastic",
    "lovely",
    "brilliant",
    "enjoyable",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "horrible",
    "boring",
    "poor",
    "worst",
    "disappointing",
    "dull",
    "weak",
];
const RESTAURANT_POS: &[&str] = &[
    "great",
    "good",
    "excellent",
    "wonderful",
    "perfect",
    "delicious",
    "fresh",
    "friendly",
    "clean",
    "generous",
];
const RESTAURANT_NEG: &[&str] = &[
    "bad", "terrible", "awful", "horrible", "poor", "bland", "cold", "rude", "dirty", "stale",
];
const MOVIES: &[&str] = &[
    "film", "movie", "story", "plot", "actor", "acting", "script", "scene", "director", "cast",
    "ending", "music",
];
const PRODUCTS: &[&str] = &[
    "phone", "battery", "screen", "price", "design", "camera", "device", "quality", "product",
    "service", "delivery", "case",
];
const RESTAURANTS: &[&str] = &[
    "food",
    "meal",
    "dinner",
    "menu",
    "staff",
    "kitchen",
    "dish",
    "pizza",
    "coffee",
    "chicken",
    "restaurant",
    "table",
];
const SPORTS: &[&str] = &[
    "game",
    "team",
    "player",
    "season",
    "coach",
    "match",
    "league",
    "football",
    "tennis",
    "stadium",
    "championship",
    "tournament",
];
const SCIENCE: &[&str] = &[
    "research",
    "study",
    "scientists",
    "data",
    "theory",
    "energy",
    "space",
    "lab",
    "cells",
    "climate",
    "chemistry",
    "discovery",
];
const ADVERBS: &[&str] = &[
    "really", "very", "quite", "so", "pretty", "rather", "fairly",
];
const NEUTRAL: &[&str] = &[
    "long", "new", "short", "old", "big", "small", "simple", "fine",
];

/// Every word the generator can emit (for the vocabulary test).
pub fn vocabulary() -> Vec<&'static str> {
    let lists: [&[&str]; 11] = [
        POSITIVE,
        NEGATIVE,
        RESTAURANT_POS,
        RESTAURANT_NEG,
        MOVIES,
        PRODUCTS,
        RESTAURANTS,
        SPORTS,
        SCIENCE,
        ADVERBS,
        NEUTRAL,
    ];
    let glue = [
        "the", "a", "this", "was", "is", "and", "but", "i", "thought", "we", "found", "overall",
        "felt", "it", "also", ".",
    ];
    lists
        .iter()
        .flat_map(|l| l.iter().copied())
        .chain(glue)
        .collect()
}

/// Sizes and seed of one generated task.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub name: String,
    pub kind: String,
    pub n_train: usize,
    pub n_dev: usize,
    pub n_test: usize,
    /// Fraction of labels flipped.
    pub noise: f64,
    pub seed: u64,
}

impl SynthSpec {
    /// `n` train examples, `n/4` dev and `n/2` test.
    pub fn new(name: &str, kind: &str, n: usize, noise: f64, seed: u64) -> SynthSpec {
        SynthSpec {
            name: name.into(),
            kind: kind.into(),
            n_train: n,
            n_dev: n / 4,
            n_test: n / 2,
            noise,
            seed,
        }
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[(rng.next_u64() % xs.len() as u64) as usize]
}

/// One sentence: `signal` words carry the label, `nouns` the domain.
fn sentence(rng: &mut ChaCha8Rng, nouns: &[&str], signal: &[&str]) -> String {
    let (n1, n2) = (pick(rng, nouns), pick(rng, nouns));
    let (s1, s2) = (pick(rng, signal), pick(rng, signal));
    let (a, f) = (pick(rng, ADVERBS), pick(rng, NEUTRAL));
    match rng.next_u64() % 8 {
        0 => format!("the {n1} was {a} {s1}"),
        1 => format!("{s1} {n1} and a {f} {n2}"),
        2 => format!("i thought the {n1} was {s1}"),
        3 => format!("the {n1} is {f} but the {n2} is {s1}"),
        4 => format!("overall a {s1} {n1}"),
        5 => format!("this {n1} was {a} {s1} . the {n2} was {f}"),
        6 => format!("{s1} {n1} , {s2} {n2}"),
        _ => format!("we found the {n1} {a} {s1} and it also felt {f}"),
    }
}

/// Generate a task (splits train/dev/test, balanced labels, `noise` of labels flipped).
pub fn generate(spec: &SynthSpec) -> Result<TaskData, OpError> {
    if !(0.0..0.5).contains(&spec.noise) {
        return Err(OpError::new(
            SAMPLING,
            format!("noise {} must be in [0, 0.5)", spec.noise),
        ));
    }
    let all_sentiment: Vec<&str> = POSITIVE.iter().chain(NEGATIVE).copied().collect();
    let (labels, nouns_by_label, signal_by_label): (Vec<&str>, [&[&str]; 2], [&[&str]; 2]) =
        match spec.kind.as_str() {
            "movies" => (
                vec!["negative", "positive"],
                [MOVIES, MOVIES],
                [NEGATIVE, POSITIVE],
            ),
            "products" => (
                vec!["negative", "positive"],
                [PRODUCTS, PRODUCTS],
                [NEGATIVE, POSITIVE],
            ),
            "restaurants" => (
                vec!["negative", "positive"],
                [RESTAURANTS, RESTAURANTS],
                [RESTAURANT_NEG, RESTAURANT_POS],
            ),
            "topics" => (
                vec!["sports", "science"],
                [SPORTS, SCIENCE],
                [&all_sentiment, &all_sentiment],
            ),
            other => {
                return Err(
                    OpError::new(SAMPLING, format!("unknown synthetic kind `{other}`"))
                        .with_help(format!("kinds: {}", KINDS.join(", "))),
                )
            }
        };
    let mut rng = stream(&format!("synthetic.{}.{}", spec.kind, spec.name), spec.seed);
    let labels: Vec<String> = labels.into_iter().map(String::from).collect();
    let mut task = TaskData::new(spec.name.clone(), labels, false);
    for (split, n) in [
        ("train", spec.n_train),
        ("dev", spec.n_dev),
        ("test", spec.n_test),
    ] {
        let mut gold: Vec<usize> = (0..n).map(|i| i % 2).collect();
        shuffle(&mut rng, &mut gold);
        let examples = gold
            .into_iter()
            .enumerate()
            .map(|(id, y)| {
                let mut text = sentence(&mut rng, nouns_by_label[y], signal_by_label[y]);
                if rng.next_u64().is_multiple_of(3) {
                    // A second, label-free clause as a distractor.
                    let n = pick(&mut rng, nouns_by_label[y]);
                    text = format!("{text} . the {n} was {}", pick(&mut rng, NEUTRAL));
                }
                let flip = (rng.next_u64() as f64 / u64::MAX as f64) < spec.noise;
                Example {
                    id,
                    text,
                    text_b: None,
                    label: if flip { 1 - y } else { y },
                }
            })
            .collect();
        task.splits.insert(split.to_string(), examples);
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_noisy() {
        let spec = SynthSpec::new("m", "movies", 200, 0.1, 7);
        let a = generate(&spec).unwrap();
        assert_eq!(a, generate(&spec).unwrap());
        assert_ne!(
            a,
            generate(&SynthSpec {
                seed: 8,
                ..spec.clone()
            })
            .unwrap()
        );
        assert_eq!(
            (a.train().len(), a.dev().len(), a.test().len()),
            (200, 50, 100)
        );
        let c = a.label_counts("train");
        assert!(c[0].abs_diff(c[1]) < 50, "{c:?}");
        // Planted signal: most examples contain a word of their label's lexicon.
        let agree = a
            .train()
            .iter()
            .filter(|e| {
                let lex = if e.label == 1 { POSITIVE } else { NEGATIVE };
                e.text.split(' ').any(|w| lex.contains(&w))
            })
            .count();
        assert!(agree > 160 && agree < 200, "{agree}");
        assert!(generate(&SynthSpec::new("x", "poems", 10, 0.0, 0)).is_err());
    }

    #[test]
    fn words_are_single_tokens_of_the_committed_vocabulary() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/minilm-l3-v8k");
        let tok = crate::nn::tokenizer::Tok::from_dir(&path, None).unwrap();
        for w in vocabulary() {
            assert!(
                tok.token_to_id(w).is_some(),
                "`{w}` is not in the vocabulary"
            );
        }
    }
}
