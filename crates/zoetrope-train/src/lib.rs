//! Training zoetrope's world model with zoetrope: the VAE first (on rendered clips), then the
//! diffusion transformer and text encoder together (on the VAE's latents), reproducibly from a
//! seed, with checkpoints a stopped run resumes from.

pub mod alloc;
pub mod data;
pub mod dit;
pub mod events;
pub mod export;
pub mod init;
pub mod optim;
pub mod run;
pub mod vae;

pub use events::TrainEvent;
pub use run::RunDir;
