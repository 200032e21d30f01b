//! Layers shared by zoetrope's model families, on candle.
//!
//! - [`checkpoint`]: memory-mapped safetensors, key remapping, errors naming file and tensor.
//! - [`conv3d`]: causal 3D convolution composed from candle ops.

pub mod checkpoint;
pub mod conv3d;

pub use checkpoint::{Checkpoint, CheckpointError};
