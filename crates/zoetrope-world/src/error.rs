//! The crate's error type.

use std::path::PathBuf;

use crate::caption::ParseError;

/// Everything that can go wrong while building, rendering or writing scenes.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A scene specification breaks one of the rules of [`crate::SceneSpec::validate`].
    #[error("invalid scene: {0}")]
    InvalidScene(String),
    /// Render options out of range; the message names the allowed range.
    #[error("invalid render options: {0}")]
    InvalidOptions(String),
    /// A caption could not be understood.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Encoding or writing a clip failed.
    #[error(transparent)]
    Video(#[from] zoetrope_video::VideoError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest line could not be read or written as JSON.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
