//! Samplers for flow-matching models: schedulers with `timesteps()` and `step()`, in the style of
//! diffusers, independent of any model family.

pub mod flow_euler;
pub mod unipc;
