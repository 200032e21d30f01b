//! What one generation asks for, independent of the model it runs on. `None` everywhere means
//! "the model's default", so the same job means the same thing from the command line and from
//! the server.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use zoetrope_sampling::SamplerKind;
use zoetrope_video::{Frame, Video};

/// The compute dtype of a model's weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "float16" => Ok(Precision::F16),
            _ => Err(format!("'{s}' is not a dtype: use f32, bf16 or f16")),
        }
    }
}

/// Which frames are given besides the prompt: the Sora report's modes, all one sampler with a
/// different choice of given latent frames (see `zoetrope_models::world::pipeline`).
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// Text→video (a single image when the job asks for one frame).
    #[default]
    Text,
    /// Image→video: the image is the first frame.
    Image(Frame),
    /// Continue `clip` (forward: the output is the clip, then new frames) or lead up to it
    /// (backward: new frames, then the clip).
    Extend { clip: Video, backward: bool },
    /// A seamless loop, starting and ending on `first` (or on a generated first frame).
    Loop { first: Option<Frame> },
    /// Join two clips: `first`, generated frames, then `second`.
    Connect { first: Video, second: Video },
    /// Video→video (SDEdit): redo `source` with the prompt; `strength` in (0, 1] is how much may
    /// change (the model's default when `None`).
    Edit {
        source: Video,
        strength: Option<f64>,
    },
}

impl Mode {
    /// The mode's name in messages and in the server's JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Text => "text",
            Mode::Image(_) => "image",
            Mode::Extend {
                backward: false, ..
            } => "extend",
            Mode::Extend { backward: true, .. } => "extend_backward",
            Mode::Loop { .. } => "loop",
            Mode::Connect { .. } => "connect",
            Mode::Edit { .. } => "edit",
        }
    }
}

/// First-Block Cache settings (`--cache-steps`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCacheSettings {
    /// Skip a step's later blocks when the first block changed less than this (relative L1).
    pub threshold: f64,
    /// The most consecutive skipped steps (the model crate's default when `None`).
    pub max_consecutive_skips: Option<usize>,
}

/// One generation. Build it with [`Job::new`] and set what differs from the model's defaults.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub prompt: String,
    /// What the video should not show (used when guidance is on).
    pub negative_prompt: String,
    /// `(width, height)`; default: the model's, or an input's own size where the model allows
    /// it.
    pub size: Option<(usize, usize)>,
    /// Frame count (1 + f·k for the model's temporal factor f).
    pub frames: Option<usize>,
    pub fps: Option<f64>,
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns guidance off.
    pub guidance: Option<f64>,
    pub shift: Option<f64>,
    pub sampler: Option<SamplerKind>,
    /// Seed of the initial noise.
    pub seed: u64,
    pub cache: Option<StepCacheSettings>,
    pub mode: Mode,
    /// Latent frames taken from each input clip with extend / connect.
    pub context_latents: Option<usize>,
    /// Start from this noise `[1, C, T, h, w]` instead of seeded noise (Wan; for exact
    /// comparisons with a reference run).
    pub latents: Option<Tensor>,
}

impl Job {
    /// A text→video job with the model's defaults and seed 0.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }
}
