//! `load.*`: operators that read user files. Their cache keys use the files' content
//! fingerprints (the evaluator replaces every `Path` argument by its fingerprint), never the
//! path string, so moving a checkpoint keeps the cache and editing one invalidates it.

pub mod adapter;
pub mod fisher;
pub mod kernel;
pub mod model;
pub mod task;
