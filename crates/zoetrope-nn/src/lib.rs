//! Layers shared by zoetrope's model families, on candle.
//!
//! - [`checkpoint`]: memory-mapped safetensors, key remapping, errors naming file and tensor.
//! - [`conv3d`]: causal 3D convolution composed from candle ops.
//! - [`device`]: `cpu` / `cuda:N` as the user names them; CUDA behind the `cuda` feature.
//! - [`fused`]: fused CPU kernels with their own backward (GELU, softmax, LayerNorm, RMSNorm,
//!   rotary embedding), so training steps don't pay for candle's composite ops.
//! - [`im2col`]: spacetime im2col custom op with a col2im backward, for training convs on CPU.

pub mod checkpoint;
pub mod conv3d;
pub mod device;
pub mod fast;
pub mod fused;
pub mod im2col;
pub mod metrics;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use device::{DeviceError, DeviceSpec};
pub use metrics::{max_abs, max_abs_diff};
