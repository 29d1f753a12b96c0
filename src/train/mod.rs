//! Training: optimisers, schedules, a generic loop, classification heads and metrics.
//!
//! Nothing here knows the language: operators build a loss closure over their model and data
//! and call [`train`]. The pieces, each with its equations in its file header:
//! * [`optim`]: AdamW, SGD (+momentum/Nesterov), SignGD, Adafactor over `candle_core::Var`s;
//! * [`schedule`]: constant / linear / cosine (with warmup) multipliers, clipping by global
//!   norm, gradient accumulation;
//! * [`trainer`]: the loop — seeded data order, weighted mean loss, accumulation, clipping,
//!   early stopping on a dev metric, NaN/Inf detection (`smelt::train::nan_loss`);
//! * [`classify`]: `[CLS]` head, MLM label-word logits, decoder answer-choice logits,
//!   cross-entropy; [`metrics`]: accuracy, macro-F1, MCC; [`text_metrics`]: EM, QA-F1,
//!   Rouge-L of answers [`generate`]d greedily by decoders.
//!
//! Determinism: every random choice (head init, data order) comes from its own
//! `ChaCha8Rng::seed_from_u64`, so a run is reproducible bit for bit on one machine.

pub mod classify;
pub mod delta;
pub mod feed;
pub mod generate;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod text_metrics;
pub mod trainer;

pub use classify::{cls_logits, cross_entropy, ClsHead};
pub use metrics::{accuracy, macro_f1, mcc};
pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::{clip_grad_norm, GradAccumulator, Schedule, ScheduleKind};
pub use trainer::{train, TrainConfig, TrainReport};
