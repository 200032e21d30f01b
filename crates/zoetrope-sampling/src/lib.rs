//! Samplers for flow-matching models: schedulers with `set_timesteps`, `timesteps`, `sigmas` and
//! `step`, in the style of diffusers, independent of any model family.
//!
//! - [`FlowMatchEulerDiscrete`]: Euler steps along the predicted velocity (diffusers'
//!   `FlowMatchEulerDiscreteScheduler`).
//! - [`UniPcMultistep`]: UniPC predictor-corrector in flow-prediction mode (diffusers'
//!   `UniPCMultistepScheduler` with `flow_prediction` and `use_flow_sigmas`), Wan 2.1's default.
//! - [`SchedulerConfig`]: reads a diffusers `scheduler_config.json` (its `_class_name` picks the
//!   scheduler), with overrides for the sampler kind and the shift, and builds a
//!   [`Scheduler`].
//!
//! Both schedulers are checked number for number against diffusers 0.42.1 by the fixtures in
//! `tests/fixtures/wan/` (see `tools/parity/README.md`).
//!
//! A denoising loop:
//!
//! ```no_run
//! # use zoetrope_sampling::{Scheduler, SchedulerConfig};
//! # fn model(x: &candle_core::Tensor, t: f64) -> candle_core::Tensor { x.clone() }
//! # fn run(mut latents: candle_core::Tensor) -> Result<(), Box<dyn std::error::Error>> {
//! let mut scheduler = SchedulerConfig::from_file("scheduler/scheduler_config.json")?.build()?;
//! scheduler.set_timesteps(50)?;
//! for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
//!     let velocity = model(&latents, t);
//!     latents = scheduler.step(&velocity, i, &latents)?;
//! }
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod flow_euler;
pub mod schedule;
pub mod unipc;

use candle_core::{DType, Tensor};

pub use config::{SamplerKind, SchedulerConfig};
pub use error::{Result, SchedulerError, SUPPORTED_CLASSES};
pub use flow_euler::{FlowMatchEulerConfig, FlowMatchEulerDiscrete};
pub use unipc::{UniPcConfig, UniPcMultistep};

/// A diffusers-style sampler for flow-matching models.
///
/// Usage: [`set_timesteps`](Scheduler::set_timesteps), then for each index `i` of
/// [`timesteps`](Scheduler::timesteps) run the model at `timesteps()[i]` on the current sample
/// and pass its output to [`step`](Scheduler::step) with the same `i`. Samples and model outputs
/// may be any float dtype; the schedulers compute in f32 and return f32.
pub trait Scheduler: Send + std::fmt::Debug {
    /// Prepares a schedule of `num_inference_steps` steps and resets any multistep state.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The timesteps to give the model, one per step. UniPC's are integer-valued (diffusers
    /// passes int64), Euler's are f32 values (diffusers passes float32); both are exact here.
    fn timesteps(&self) -> &[f64];

    /// The noise levels σ, one per step plus the final one (`timesteps().len() + 1` values),
    /// exactly the f32 values diffusers stores.
    fn sigmas(&self) -> &[f32];

    /// Number of steps of the current schedule (0 before `set_timesteps`).
    fn num_inference_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// Advances `sample` (at `sigmas()[step_index]`) to `sigmas()[step_index + 1]` using the
    /// model's output (the flow velocity, noise − data) at that sample.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor)
        -> Result<Tensor>;

    /// The flow-matching forward process at `sigmas()[step_index]`:
    /// `x_t = (1 − σ)·sample + σ·noise` (for starting part-way into the schedule, e.g.
    /// video-to-video).
    fn add_noise(&self, sample: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;

    /// The index of `timestep` in [`timesteps`](Scheduler::timesteps), if it is one of them.
    fn index_for_timestep(&self, timestep: f64) -> Option<usize> {
        self.timesteps().iter().position(|&t| t == timestep)
    }

    /// Scale of the initial noise (1 for flow matching: the first sample is pure noise).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Which sampler this is.
    fn kind(&self) -> SamplerKind;
}

/// `σ·noise + (1 − σ)·sample` in f32, in diffusers' operation order (used by both schedulers'
/// `add_noise`). Returns f32.
pub fn flow_add_noise(sample: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    let sample = sample.to_dtype(DType::F32)?;
    let noise = noise.to_dtype(DType::F32)?;
    Ok((noise.affine(sigma as f64, 0.0)? + sample.affine((1.0 - sigma) as f64, 0.0)?)?)
}
