//! Layers shared by zoetrope's model families, on candle.
//!
//! - [`checkpoint`]: memory-mapped safetensors, key remapping, errors naming file and tensor.

pub mod checkpoint;

pub use checkpoint::{Checkpoint, CheckpointError};
