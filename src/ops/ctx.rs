//! The context an operator runs in: its scratch directory, derived seed, device and dtype.
//!
//! Operators never pick devices, read clocks or draw from global randomness: everything comes
//! through here, so a node's result is a function of its key.

use crate::cache::Key;
use candle_core::{DType, Device};
use std::path::PathBuf;

pub struct OpCtx {
    /// The node's key.
    pub key: Key,
    /// Where the operator writes its files (becomes the store object on success).
    pub out_dir: PathBuf,
    /// Seed derived from the node key and the experiment seed.
    pub seed: u64,
    pub device: Device,
    /// Compute dtype from `config { dtype: … }`.
    pub dtype: DType,
    /// Show progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

impl OpCtx {
    /// A context for unit tests: CPU, f32, scratch dir given.
    pub fn for_test(out_dir: PathBuf, seed: u64) -> OpCtx {
        OpCtx {
            key: Key::of_bytes(b"test"),
            out_dir,
            seed,
            device: Device::Cpu,
            dtype: DType::F32,
            progress: false,
        }
    }
}
