//! Tensor files: validated safetensors headers, streaming readers/writers, HF model directories.
//!
//! `header` validates untrusted safetensors headers without reading data; `model_dir` opens a
//! Hugging Face directory (single file or sharded) and reads tensors from mmaps as f32;
//! `writer` streams tensors into (sharded) safetensors; `merge` combines N models tensor by
//! tensor with bounded memory; `convert` holds the byte ⇄ f32 conversions they share.

pub mod convert;
pub mod dtype;
pub mod ensemble;
pub mod gradients;
pub mod header;
pub mod matrix;
pub mod merge;
pub mod merge_plan;
pub mod model_dir;
pub mod partition;
mod pipeline;
pub mod writer;

pub use dtype::Dtype;
pub use header::{read_header, Header, TensorInfo};
pub use merge::{merge_streaming, MergeStats};
pub use model_dir::ModelDir;
pub use writer::{SafetensorsWriter, WriterOptions, Written};
