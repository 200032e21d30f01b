//! Flow-matching Euler sampler, equal to diffusers' `FlowMatchEulerDiscreteScheduler` with a
//! static shift (the configuration Wan 2.1 ships).

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::{Result, SchedulerError};
use crate::schedule::{check_shift, linspace, shift_sigma, shift_sigma_f32};
use crate::{flow_add_noise, SamplerKind, Scheduler};

/// diffusers' class name of this scheduler.
pub const CLASS_NAME: &str = "FlowMatchEulerDiscreteScheduler";

/// The fields of a diffusers `FlowMatchEulerDiscreteScheduler` `scheduler_config.json`.
///
/// Missing fields take diffusers' defaults; fields this crate does not read are ignored.
/// [`FlowMatchEulerConfig::validate`] rejects settings that are not implemented.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerConfig {
    /// diffusers' constructor defaults (shift 1.0, i.e. no shift).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".to_string(),
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerConfig {
    /// Rejects settings this implementation does not cover; `origin` names the config in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let unsupported = |reason: String| SchedulerError::Unsupported {
            origin: origin.to_string(),
            class: CLASS_NAME,
            reason,
        };
        if self.num_train_timesteps == 0 {
            return Err(unsupported("num_train_timesteps must be at least 1".into()));
        }
        check_shift(self.shift).map_err(unsupported)?;
        let flags = [
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
            (self.invert_sigmas, "invert_sigmas"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.stochastic_sampling, "stochastic_sampling"),
        ];
        for (on, name) in flags {
            if on {
                return Err(unsupported(format!("{name} = true is not implemented")));
            }
        }
        // diffusers treats 0.0 like null here (`if self.config.shift_terminal:`).
        if self.shift_terminal.is_some_and(|t| t != 0.0) {
            return Err(unsupported("shift_terminal is not implemented".into()));
        }
        Ok(())
    }
}

/// Euler steps along the flow-matching velocity: `x_{i+1} = x_i + (σ_{i+1} − σ_i) · v`.
///
/// The schedule reproduces diffusers exactly, including its quirk of shifting the low end twice
/// (see [`FlowMatchEulerDiscrete::set_timesteps`]). The scheduler is stateless between steps, so
/// steps may be taken at any index of the schedule.
#[derive(Clone, Debug)]
pub struct FlowMatchEulerDiscrete {
    config: FlowMatchEulerConfig,
    /// σ of the last training timestep after the constructor's shift, as f32 (see `new`).
    sigma_min: f32,
    /// σ of the first training timestep after the constructor's shift, as f32.
    sigma_max: f32,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl FlowMatchEulerDiscrete {
    /// Builds the scheduler; call [`Scheduler::set_timesteps`] before stepping.
    pub fn new(config: FlowMatchEulerConfig) -> Result<Self> {
        config.validate("FlowMatchEulerDiscrete config")?;
        // The constructor builds the training sigmas t/N for t = N..1 in f32 and shifts them
        // (torch f32 arithmetic); only their ends survive, as sigma_max / sigma_min.
        let n = config.num_train_timesteps as f32;
        // The first training sigma is N/N = 1 exactly.
        let sigma_max = shift_sigma_f32(config.shift, 1.0);
        let sigma_min = shift_sigma_f32(config.shift, 1.0 / n);
        Ok(Self {
            config,
            sigma_min,
            sigma_max,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &FlowMatchEulerConfig {
        &self.config
    }

    /// The timesteps as the f32 values diffusers passes to the model.
    pub fn timesteps_f32(&self) -> Vec<f32> {
        self.timesteps.iter().map(|&t| t as f32).collect()
    }

    /// diffusers' name for [`Scheduler::add_noise`] on this scheduler: `σ·noise + (1 − σ)·sample`
    /// with σ = `sigmas()[step_index]`.
    pub fn scale_noise(
        &self,
        sample: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        self.add_noise(sample, noise, step_index)
    }
}

impl Scheduler for FlowMatchEulerDiscrete {
    /// Builds the schedule like diffusers' `set_timesteps`.
    ///
    /// Reference quirk: the timesteps are `linspace(σ_max·N, σ_min·N, n)` where σ_min is the
    /// *already shifted* smallest training sigma, and the result is shifted *again*. So the low
    /// end is shifted twice: with shift 3 and 4 steps the timesteps are
    /// `[1000, 857.69, 602.15, 8.93]` (not `… 2.99`). The linspace and shift run in f64 (numpy),
    /// the sigmas are then rounded to f32, and the timesteps are `σ_f32 · N` in f32 (torch).
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            return Err(SchedulerError::InvalidArgument(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        let n_train = self.config.num_train_timesteps as f64;
        let ts = linspace(
            self.sigma_max as f64 * n_train,
            self.sigma_min as f64 * n_train,
            num_inference_steps,
        );
        let mut sigmas: Vec<f32> = ts
            .iter()
            .map(|&t| shift_sigma(self.config.shift, t / n_train) as f32)
            .collect();
        let n_train_f32 = self.config.num_train_timesteps as f32;
        self.timesteps = sigmas.iter().map(|&s| (s * n_train_f32) as f64).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `sample + (σ_{i+1} − σ_i) · model_output`, in f32 like diffusers (which upcasts the
    /// sample). Returns f32.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        crate::schedule::check_step_index(self.timesteps.len(), step_index)?;
        // dt is formed in f32 (torch subtracts two f32 sigma scalars), then exactly widened.
        let dt = self.sigmas[step_index + 1] - self.sigmas[step_index];
        let sample = sample.to_dtype(DType::F32)?;
        let model_output = model_output.to_dtype(DType::F32)?;
        Ok((sample + model_output.affine(dt as f64, 0.0)?)?)
    }

    fn add_noise(&self, sample: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = *self.sigmas.get(step_index).ok_or_else(|| {
            SchedulerError::InvalidArgument(format!(
                "step index {step_index} is outside the schedule (call set_timesteps first?)"
            ))
        })?;
        flow_add_noise(sample, noise, sigma)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Euler
    }
}
