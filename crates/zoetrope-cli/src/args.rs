//! Flags shared by several commands (`generate`, `eval model`, `world …`), parsed into the
//! engine's and the models' own types.

use clap::{Args, ValueEnum};
use zoetrope_engine::{DeviceSpec, Precision, StepCacheSettings};
use zoetrope_models::step_cache::{
    check_threshold, DEFAULT_MAX_CONSECUTIVE_SKIPS, DEFAULT_WARMUP_STEPS,
};
use zoetrope_nn::DeviceError;
use zoetrope_sampling::SamplerKind;

/// `WIDTHxHEIGHT`.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("size '{s}' is not WIDTHxHEIGHT, e.g. 128x128 or 96x64");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let w: u32 = w.trim().parse().map_err(|_| err())?;
    let h: u32 = h.trim().parse().map_err(|_| err())?;
    Ok((w, h))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Sampler {
    /// Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler).
    Euler,
    /// UniPC multistep in flow-prediction mode (Wan's default).
    Unipc,
}

impl From<Sampler> for SamplerKind {
    fn from(s: Sampler) -> Self {
        match s {
            Sampler::Euler => SamplerKind::Euler,
            Sampler::Unipc => SamplerKind::UniPc,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl From<Dtype> for Precision {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => Precision::F32,
            Dtype::Bf16 => Precision::Bf16,
            Dtype::F16 => Precision::F16,
        }
    }
}

/// Step caching (First-Block Cache), shared by `generate` and `eval model`.
#[derive(Args, Clone, Copy)]
pub struct CacheArgs {
    // The help is built from the constants so that the limits shown are the ones used.
    #[arg(long, value_name = "THRESHOLD", value_parser = parse_cache_threshold, help = format!(
        "Step caching (off by default): reuse the transformer's blocks after the first on steps \
         whose first block changed less than THRESHOLD (relative L1; e.g. 0.05 or 0.1) since the \
         last computed step. Faster, not exact: larger values skip more and change the clip \
         more. Never skips the first {DEFAULT_WARMUP_STEPS} steps or more than \
         {DEFAULT_MAX_CONSECUTIVE_SKIPS} in a row (--cache-max-skips)"
    ))]
    pub cache_steps: Option<f64>,
    #[arg(long, value_name = "N", requires = "cache_steps", help = format!(
        "With --cache-steps: the most consecutive steps that may be skipped \
         [default: {DEFAULT_MAX_CONSECUTIVE_SKIPS}]"
    ))]
    pub cache_max_skips: Option<usize>,
}

impl CacheArgs {
    pub fn settings(&self) -> Option<StepCacheSettings> {
        self.cache_steps.map(|threshold| StepCacheSettings {
            threshold,
            max_consecutive_skips: self.cache_max_skips,
        })
    }
}

fn parse_cache_threshold(s: &str) -> Result<f64, String> {
    let t: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number (try 0.05)"))?;
    check_threshold(t)?;
    Ok(t)
}

/// `--device`, shared by `generate` and `eval model`.
#[derive(Args, Clone, Copy)]
pub struct DeviceArg {
    /// Where the model runs: cpu, or cuda / cuda:N in a build with the `cuda` feature (compiled,
    /// not yet tested on a GPU: see the README).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
}

fn parse_device(s: &str) -> Result<DeviceSpec, DeviceError> {
    s.parse()
}
