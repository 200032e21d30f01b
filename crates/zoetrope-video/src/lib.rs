//! Frames, colour and video files for zoetrope. No machine learning lives here.
//!
//! The container format follows the file's extension: see [`Format`].

mod frame;

pub use frame::{psnr, Frame, Video};

use std::path::PathBuf;

/// Errors from reading or writing frames and clips.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("a clip needs at least one frame")]
    NoFrames,
    #[error("impossible frame size {width}x{height}: width and height must be at least 1")]
    InvalidSize { width: u32, height: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
