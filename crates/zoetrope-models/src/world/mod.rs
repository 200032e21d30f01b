//! zoetrope's own model family for the procedural world, following the Sora report's recipe: a
//! causal 3D VAE makes a spacetime latent, the latent is cut into spacetime patches, and a
//! diffusion transformer conditioned on text predicts the flow velocity.

pub mod dit;
pub mod model;
pub mod text;
pub mod vae;
