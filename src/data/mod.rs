//! Task data: in-memory classification tasks, readers/writers, prompt templates, samplers and a
//! synthetic task generator.
//!
//! Kept free of the language: the `data` and `load task` operators (`ops::data`,
//! `ops::load::task`) are thin wrappers over this module, and training / kernel operators use
//! [`TaskData::from_artifact`] plus [`template`] to turn a `Task` artifact into token ids.
//!
//! - [`task`]: [`TaskData`] / [`Example`], the shared JSONL layout (`train.jsonl`, `test.jsonl`,
//!   `dev.jsonl`, `labels.json`), save/load of a self-contained task directory in the store.
//! - [`layout`]: locating a task's split files and reading them (labels resolved, pair flag
//!   checked line by line).
//! - [`read`]: line-level readers for JSONL and TSV/CSV files with a header.
//! - [`template`]: the LM-BFF `*cls**sent_0*_It_was*mask*.*sep+*` grammar and [`encode`];
//!   [`verbalizer`]: single-token label words and the LM-BFF prompt table; [`prompt`]:
//!   `{field}` prompts with answer choices for decoders.
//! - [`kshot`]: the LM-BFF k-shot sampler, stratified down-sampling and dev splits, each with its
//!   own explicit ChaCha8 stream.
//! - [`synthetic`]: small tasks with planted, shared or unrelated label signals.

pub mod kshot;
pub mod layout;
pub mod prompt;
pub mod read;
pub mod synthetic;
pub mod task;
pub mod template;
pub mod verbalizer;

pub use kshot::{kshot, split_dev, subsample};
pub use prompt::PromptTemplate;
pub use task::{Example, ReadOptions, TaskData};
pub use template::{encode, Encoded, Template};
pub use verbalizer::Verbalizer;

/// Error code for unreadable or malformed task files (bad JSON, missing columns).
pub const BAD_FILE: &str = "smelt::data::bad_file";
/// Error code for a label outside the task's label space.
pub const BAD_LABEL: &str = "smelt::data::bad_label";
/// Error code for a task directory that does not follow the expected layout.
pub const LAYOUT: &str = "smelt::data::layout";
/// Error code for template and verbalizer problems.
pub const TEMPLATE: &str = "smelt::data::template";
/// Error code for sampling requests the data cannot satisfy (k larger than a label's pool, …).
pub const SAMPLING: &str = "smelt::data::sampling";

/// The help line shown whenever a task directory is not in the expected layout.
pub const LAYOUT_HELP: &str = "a task directory holds `labels.json` \
     ({\"labels\": [\"negative\", \"positive\"], \"pair\": false}), `train.jsonl`, `test.jsonl` \
     (or `test_1k.jsonl`) and optionally `dev.jsonl`, one example per line: \
     {\"text\": …, \"text_b\": … (pair tasks only), \"label\": index or label name}; \
     `.tsv`/`.csv` files with a header row (text, text_b, label) work too";
