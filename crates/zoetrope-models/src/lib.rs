//! Model families. Each module wires a family's parts (text encoder, transformer, VAE) to the
//! shared samplers.

pub mod step_cache;
pub mod wan;
pub mod world;
