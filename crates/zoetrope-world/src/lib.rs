//! zoetrope's procedural world: the universe the built-in model learns to simulate, and the
//! benchmark that scores how well a video matches a prompt.
//!
//! - [`spec`]: the vocabulary — colours, shapes, sizes, motions — and [`SceneSpec`].

pub mod spec;

pub use spec::{Colour, Direction, Motion, ObjectSpec, SceneSpec, Shape, Side, Size};
