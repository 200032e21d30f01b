//! zoetrope's procedural world: the universe the built-in model learns to simulate, and the
//! benchmark that scores how well a video matches a prompt.
//!
//! - [`spec`]: the vocabulary — colours, shapes, sizes, motions — and [`SceneSpec`].
//! - [`scene`]: a [`Scene`] adds what words leave open (start positions, speeds), from a seed.
//! - [`physics`]: where every object is at any time, independent of the frame rate.
//! - [`render`]: draws scenes as clips.
//! - [`caption`]: describes specs in varied words and parses captions back into a [`SceneQuery`].
//! - [`eval`]: the benchmark — scores how well a video shows what a prompt asks.
//! - [`dataset`]: writes rendered clips with a JSON-lines manifest for training.
//! - [`heldout`]: the object combinations kept out of training, and the prompts that ask for them.

pub mod caption;
pub mod dataset;
mod error;
pub mod eval;
pub mod heldout;
pub mod physics;
pub mod render;
pub mod scene;
pub mod spec;

pub use caption::{describe, parse, ObjectQuery, ParseError, SceneQuery};
pub use dataset::{sample_clip, sample_training_clip, write_dataset, ManifestEntry};
pub use error::WorldError;
pub use eval::{
    evaluate, evaluate_batch, evaluate_prompt, summarize, BatchReport, BatchSummary, Check,
    CheckSummary, EvalReport,
};
pub use heldout::{
    heldout_prompt_file, heldout_prompts, is_held_out, read_prompt_list, spec_is_held_out,
    HELDOUT_PROMPT_FILE,
};
pub use physics::ObjectState;
pub use render::{render, RenderOptions};
pub use scene::{Placement, Scene};
pub use spec::{Colour, Direction, Motion, ObjectSpec, SceneSpec, Shape, Side, Size};
