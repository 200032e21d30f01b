//! The engine's one error type: [`EngineError::is_request_error`] separates "the job asks for
//! something this model cannot do" (an HTTP 400, a command-line usage error) from failures.

use zoetrope_models::wan::pipeline::WanError;
use zoetrope_models::world::pipeline::WorldPipelineError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job is impossible for this model (size, frame count, mode, numbers); the message
    /// names what is allowed.
    #[error("{0}")]
    Request(String),
    /// The model folder cannot be used; the message names the file.
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Device(#[from] zoetrope_nn::DeviceError),
    #[error(transparent)]
    World(#[from] WorldPipelineError),
    #[error(transparent)]
    Wan(#[from] WanError),
    #[error(transparent)]
    Video(#[from] zoetrope_video::VideoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    /// Whether the job itself is at fault (the caller should change it), not the model or
    /// the machine.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            EngineError::Request(_)
                | EngineError::World(WorldPipelineError::Request(_))
                | EngineError::Wan(WanError::Request(_))
        )
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
