//! zoetrope's own model family for the procedural world, following the Sora report's recipe: a
//! causal 3D VAE makes a spacetime latent, the latent is cut into spacetime patches, and a
//! diffusion transformer conditioned on text predicts the flow velocity.

pub mod dit;
pub mod model;
pub mod pipeline;
pub mod score;
pub mod text;
pub mod vae;

/// Where the built-in model's two files live in the source tree (relative to the workspace).
pub const BUILTIN_DIR: &str = "crates/zoetrope-models/weights/world";

#[cfg(zoetrope_builtin_world)]
const BUILTIN: Option<(&str, &[u8])> = Some((
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/weights/world/model.json"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/weights/world/model.safetensors"
    )),
));
#[cfg(not(zoetrope_builtin_world))]
const BUILTIN: Option<(&str, &[u8])> = None;

/// The built-in world model's `model.json` text and `model.safetensors` bytes, embedded in the
/// binary when both files were in [`BUILTIN_DIR`] at build time (build.rs checks); `None` in a
/// build without them. Load it with [`model::WorldModel::builtin`].
pub fn builtin() -> Option<(&'static str, &'static [u8])> {
    BUILTIN
}
