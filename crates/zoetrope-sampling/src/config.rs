//! Reading a diffusers `scheduler_config.json` and choosing the sampler.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Result, SchedulerError, SUPPORTED_CLASSES};
use crate::flow_euler::{self, FlowMatchEulerConfig, FlowMatchEulerDiscrete};
use crate::unipc::{self, UniPcConfig, UniPcMultistep};
use crate::Scheduler;

/// The samplers this crate offers (the CLI's `--sampler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// Flow-matching Euler (`FlowMatchEulerDiscreteScheduler`).
    Euler,
    /// UniPC in flow mode (`UniPCMultistepScheduler`).
    UniPc,
}

impl SamplerKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [SamplerKind; 2] = [SamplerKind::Euler, SamplerKind::UniPc];

    /// The CLI name: `euler` or `unipc`.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::UniPc => "unipc",
        }
    }

    /// diffusers' `_class_name` of this sampler.
    pub fn class_name(self) -> &'static str {
        match self {
            SamplerKind::Euler => flow_euler::CLASS_NAME,
            SamplerKind::UniPc => unipc::CLASS_NAME,
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = String;

    /// Accepts `euler` / `unipc` (any case), and diffusers' class names.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "euler" | "flow-euler" | "flow_match_euler" | "flowmatcheulerdiscretescheduler" => {
                Ok(SamplerKind::Euler)
            }
            "unipc" | "uni-pc" | "unipcmultistepscheduler" => Ok(SamplerKind::UniPc),
            _ => Err(format!(
                "unknown sampler `{s}`; expected one of: euler, unipc"
            )),
        }
    }
}

/// A scheduler config as read from a diffusers `scheduler_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulerConfig {
    /// `"_class_name": "FlowMatchEulerDiscreteScheduler"`.
    FlowMatchEuler(FlowMatchEulerConfig),
    /// `"_class_name": "UniPCMultistepScheduler"`.
    UniPc(UniPcConfig),
}

impl SchedulerConfig {
    /// Reads and validates a `scheduler_config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses and validates a config from JSON text; `origin` (a file name, say) names it in
    /// errors. `_class_name` decides the scheduler; fields this crate does not use are ignored,
    /// missing ones take diffusers' defaults.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let json_err = |source| SchedulerError::Json {
            origin: origin.to_string(),
            source,
        };
        let value: Value = serde_json::from_str(text).map_err(json_err)?;
        let class = match value.get("_class_name") {
            Some(Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(SchedulerError::UnknownClass {
                    origin: origin.to_string(),
                    class: other.to_string(),
                })
            }
            None => {
                return Err(SchedulerError::MissingClass {
                    origin: origin.to_string(),
                })
            }
        };
        let config = match class.as_str() {
            flow_euler::CLASS_NAME => {
                SchedulerConfig::FlowMatchEuler(serde_json::from_value(value).map_err(json_err)?)
            }
            unipc::CLASS_NAME => {
                SchedulerConfig::UniPc(serde_json::from_value(value).map_err(json_err)?)
            }
            _ => {
                debug_assert!(!SUPPORTED_CLASSES.contains(&class.as_str()));
                return Err(SchedulerError::UnknownClass {
                    origin: origin.to_string(),
                    class,
                });
            }
        };
        config.validate(origin)?;
        Ok(config)
    }

    /// Rejects settings this crate does not implement.
    pub fn validate(&self, origin: &str) -> Result<()> {
        match self {
            SchedulerConfig::FlowMatchEuler(c) => c.validate(origin),
            SchedulerConfig::UniPc(c) => c.validate(origin),
        }
    }

    /// Which sampler this config builds.
    pub fn kind(&self) -> SamplerKind {
        match self {
            SchedulerConfig::FlowMatchEuler(_) => SamplerKind::Euler,
            SchedulerConfig::UniPc(_) => SamplerKind::UniPc,
        }
    }

    /// The time shift (`shift` for Euler, `flow_shift` for UniPC).
    pub fn shift(&self) -> f64 {
        match self {
            SchedulerConfig::FlowMatchEuler(c) => c.shift,
            SchedulerConfig::UniPc(c) => c.flow_shift,
        }
    }

    /// The same config with another time shift (the CLI's `--shift`).
    pub fn with_shift(mut self, shift: f64) -> Self {
        match &mut self {
            SchedulerConfig::FlowMatchEuler(c) => c.shift = shift,
            SchedulerConfig::UniPc(c) => c.flow_shift = shift,
        }
        self
    }

    /// The config for another sampler (the CLI's `--sampler`), keeping the shift and the number
    /// of training timesteps. Switching to UniPC uses Wan's flow settings ([`UniPcConfig::flow`]);
    /// switching to Euler uses diffusers' defaults with the shift carried over. The same kind
    /// returns the config unchanged.
    pub fn with_kind(self, kind: SamplerKind) -> Self {
        if self.kind() == kind {
            return self;
        }
        let shift = self.shift();
        let n_train = match &self {
            SchedulerConfig::FlowMatchEuler(c) => c.num_train_timesteps,
            SchedulerConfig::UniPc(c) => c.num_train_timesteps,
        };
        match kind {
            SamplerKind::Euler => SchedulerConfig::FlowMatchEuler(FlowMatchEulerConfig {
                num_train_timesteps: n_train,
                shift,
                ..FlowMatchEulerConfig::default()
            }),
            SamplerKind::UniPc => SchedulerConfig::UniPc(UniPcConfig {
                num_train_timesteps: n_train,
                ..UniPcConfig::flow(shift)
            }),
        }
    }

    /// Applies the optional CLI overrides: first the sampler kind, then the shift.
    pub fn with_overrides(self, kind: Option<SamplerKind>, shift: Option<f64>) -> Self {
        let config = match kind {
            Some(k) => self.with_kind(k),
            None => self,
        };
        match shift {
            Some(s) => config.with_shift(s),
            None => config,
        }
    }

    /// Builds the scheduler (validating the config again, as overrides may have changed it).
    pub fn build(&self) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerConfig::FlowMatchEuler(c) => Box::new(FlowMatchEulerDiscrete::new(c.clone())?),
            SchedulerConfig::UniPc(c) => Box::new(UniPcMultistep::new(c.clone())?),
        })
    }
}
