//! One generation as a library: a [`Job`] in, progress [`Event`]s out, a [`Finished`] video
//! back. The `zoetrope` command and `zoetrope serve` both go through it, so the two can never
//! disagree about what a request means, which sizes a model allows or what an error says.
//!
//! ```no_run
//! use zoetrope_engine::{Job, LoadOptions, Model, ModelSource};
//!
//! let model = Model::load(&ModelSource::Builtin, &LoadOptions::default())?;
//! let job = Job::new("a red ball bounces to the right on a black background");
//! model.check(&job)?; // cheap: sizes, frame counts, what the mode needs
//! let done = model.run(&job, &mut |event| eprintln!("{:.0}%", 100.0 * event.progress()))?;
//! zoetrope_video::write_video(std::path::Path::new("ball.mp4"), &done.video)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`Model`] is loaded once and runs any number of jobs (the server keeps one per installed
//! model); it is `Send + Sync`, and `run` takes `&self`.

mod error;
mod job;
mod model;

pub use error::{EngineError, Result};
pub use job::{Job, Mode, Precision, StepCacheSettings};
pub use model::{
    family_of, Event, Family, Finished, LoadOptions, Model, ModelInfo, ModelSource, WAN_FPS,
};
pub use zoetrope_nn::DeviceSpec;
