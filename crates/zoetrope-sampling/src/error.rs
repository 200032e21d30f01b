//! Errors of the samplers: config files that cannot be used, and misuse of a scheduler.

use std::path::PathBuf;

/// The scheduler classes (diffusers `_class_name`) this crate can build.
pub const SUPPORTED_CLASSES: &[&str] =
    &["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"];

/// What can go wrong reading a scheduler config, building a scheduler or stepping it.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config file could not be read.
    #[error("{}: cannot read scheduler config: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config is not valid JSON, or a field has the wrong type.
    #[error("{origin}: malformed scheduler config: {source}")]
    Json {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    /// The config has no `_class_name`, so the scheduler kind is unknown.
    #[error("{origin}: scheduler config has no `_class_name`; supported classes: {}", SUPPORTED_CLASSES.join(", "))]
    MissingClass { origin: String },
    /// `_class_name` names a scheduler this crate does not implement.
    #[error("{origin}: unsupported scheduler class `{class}`; supported classes: {}", SUPPORTED_CLASSES.join(", "))]
    UnknownClass { origin: String, class: String },
    /// A known class with a setting this crate does not implement.
    #[error("{origin}: {class}: unsupported setting: {reason}")]
    Unsupported {
        origin: String,
        class: &'static str,
        reason: String,
    },
    /// A bad argument to a scheduler method (zero steps, a step index past the end, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// `step` was called before `set_timesteps`.
    #[error("set_timesteps must be called before step")]
    NotInitialized,
    /// A multistep scheduler was stepped out of order.
    #[error("step index {got} is out of order: this multistep scheduler expects step {expected} next (call set_timesteps to start over)")]
    OutOfOrder { expected: usize, got: usize },
    /// A tensor operation failed (shape or dtype mismatch between sample and model output, …).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<SchedulerError> for candle_core::Error {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Candle(inner) => inner,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
