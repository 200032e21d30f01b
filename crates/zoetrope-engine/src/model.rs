//! Loading a model once and running jobs on it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use zoetrope_models::step_cache::{
    StepCacheLimits, StepCacheReport, DEFAULT_MAX_CONSECUTIVE_SKIPS,
};
use zoetrope_models::wan::pipeline::{
    Stage as WanStage, WanPipeline, WanRequest, VAE_SCALE_SPATIAL, VAE_SCALE_TEMPORAL,
};
use zoetrope_models::wan::vae::WanVaeTiling;
use zoetrope_models::world::model::{WorldModel, FORMAT as WORLD_FORMAT, MANIFEST_FILE};
use zoetrope_models::world::pipeline::{
    Conditioning, Stage as WorldStage, WorldPipeline, WorldRequest, DEFAULT_CONTEXT_LATENTS,
    DEFAULT_EDIT_STRENGTH,
};
use zoetrope_nn::DeviceSpec;
use zoetrope_video::{Frame, Video};

use crate::error::{EngineError, Result};
use crate::job::{Job, Mode, Precision};

/// Wan's frame rate when a job gives none (Wan 2.1 is trained at 16 fps).
pub const WAN_FPS: f64 = 16.0;

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// zoetrope's own world model, embedded in the binary.
    Builtin,
    /// A model folder: a zoetrope world model (`model.json` + `model.safetensors`) or a
    /// diffusers-format Wan 2.1 folder (`model_index.json`).
    Dir(PathBuf),
}

/// A model family: what a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    World,
    Wan,
}

/// What a folder holds: a world-model folder is one whose `model.json` says so; anything else
/// with a `model_index.json` is taken for a Wan folder.
pub fn family_of(dir: &Path) -> Result<Family> {
    let manifest = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok();
    let format = manifest
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json.get("format")?.as_str().map(str::to_string));
    if format.as_deref() == Some(WORLD_FORMAT) {
        return Ok(Family::World);
    }
    if dir.join("model_index.json").is_file() {
        return Ok(Family::Wan);
    }
    Err(EngineError::Model(format!(
        "{} is not a model folder: expected a zoetrope world model ({MANIFEST_FILE} + \
         model.safetensors) or a diffusers-format Wan 2.1 folder with model_index.json",
        dir.display()
    )))
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub precision: Precision,
    pub device: DeviceSpec,
    /// Wan: transformer weights from one .safetensors file (original Wan / ComfyUI or diffusers
    /// key names) instead of the folder's `transformer/`.
    pub transformer: Option<PathBuf>,
    /// Wan: decode in overlapping 256-pixel tiles (less memory for large frames).
    pub tile_vae: bool,
    /// Wan: text tokens the prompt is padded to (default 512, the reference's).
    pub text_length: Option<usize>,
}

/// Where a job is, for progress bars and the server's `progress` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    EncodingText,
    /// Encoding the given frames (image, clips) into latents.
    EncodingFrames,
    Denoising {
        step: usize,
        steps: usize,
    },
    /// `frame` of `frames` decoded (0-based).
    Decoding {
        frame: usize,
        frames: usize,
    },
}

/// Share of a job's time before denoising starts, and the share denoising ends at: decoding
/// takes the rest. Rough, but it moves steadily and only forward.
const PROGRESS_DENOISE_START: f64 = 0.05;
const PROGRESS_DENOISE_END: f64 = 0.9;

impl Event {
    /// The fraction of the job done when this event arrives, in [0, 1).
    pub fn progress(&self) -> f64 {
        let frac = |i: usize, n: usize| if n == 0 { 0.0 } else { i as f64 / n as f64 };
        match *self {
            Event::EncodingText => 0.0,
            Event::EncodingFrames => PROGRESS_DENOISE_START / 2.0,
            Event::Denoising { step, steps } => {
                PROGRESS_DENOISE_START
                    + (PROGRESS_DENOISE_END - PROGRESS_DENOISE_START) * frac(step, steps)
            }
            Event::Decoding { frame, frames } => {
                PROGRESS_DENOISE_END + (1.0 - PROGRESS_DENOISE_END) * frac(frame, frames + 1)
            }
        }
    }
}

/// A finished job.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The frames, 8-bit RGB, at the job's frame rate.
    pub video: Video,
    /// Wan: the decoded frames before 8-bit rounding, `[F, 3, H, W]` f32 in [0, 1].
    pub frames_f32: Option<Tensor>,
    /// Steps the step cache skipped, when it was on.
    pub step_cache: Option<StepCacheReport>,
    /// Prompt words the model never saw in training (world model).
    pub unknown_words: Vec<String>,
}

/// What a loaded model allows and defaults to (the server's validation and model list).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub family: Family,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub fps: f64,
    pub steps: usize,
    pub guidance: f64,
    /// Widths and heights must be multiples of these `(width, height)`.
    pub size_multiples: (usize, usize),
    /// Frame counts are 1 + k · this.
    pub temporal_factor: usize,
    /// The [`Mode`] names the model runs.
    pub modes: &'static [&'static str],
}

impl ModelInfo {
    /// The frame count closest to `seconds` at `fps` that the model allows (at least 1 + the
    /// temporal factor).
    pub fn frames_for_seconds(&self, seconds: f64, fps: f64) -> usize {
        let f = self.temporal_factor.max(1);
        let k = ((seconds * fps - 1.0) / f as f64).round().max(1.0) as usize;
        1 + k * f
    }
}

enum Loaded {
    World(Box<WorldPipeline>),
    Wan(Box<WanPipeline>),
}

/// A loaded model: load once, run many jobs.
pub struct Model {
    loaded: Loaded,
}

/// Every mode the world model runs.
const WORLD_MODES: &[&str] = &[
    "text",
    "image",
    "extend",
    "extend_backward",
    "loop",
    "connect",
    "edit",
];
const WAN_MODES: &[&str] = &["text"];

impl Model {
    /// Loads the model's weights onto the device (memory-mapped where the format allows).
    pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        let device = opts.device.open()?;
        let dtype = opts.precision.dtype();
        let loaded = match source {
            ModelSource::Builtin => {
                Self::no_wan_options(opts, "the built-in world model")?;
                Loaded::World(Box::new(WorldPipeline::new(WorldModel::builtin(
                    dtype, &device,
                )?)))
            }
            ModelSource::Dir(dir) => match family_of(dir)? {
                Family::World => {
                    Self::no_wan_options(opts, "a zoetrope world model")?;
                    let model = WorldModel::load_dir(dir, dtype, &device)?;
                    Loaded::World(Box::new(WorldPipeline::new(model)))
                }
                Family::Wan => {
                    let mut pipe = WanPipeline::load_with_transformer(
                        dir,
                        opts.transformer.as_deref(),
                        dtype,
                        &device,
                    )?;
                    pipe.set_vae_tiling(opts.tile_vae.then(WanVaeTiling::default));
                    let len = opts
                        .text_length
                        .unwrap_or(zoetrope_models::wan::text::WAN_MAX_SEQUENCE_LENGTH);
                    if len == 0 {
                        return Err(EngineError::Request(
                            "the text length must be at least 1 (Wan uses 512)".into(),
                        ));
                    }
                    pipe.set_max_sequence_length(len);
                    Loaded::Wan(Box::new(pipe))
                }
            },
        };
        Ok(Self { loaded })
    }

    fn no_wan_options(opts: &LoadOptions, what: &str) -> Result<()> {
        let flag = [
            (opts.transformer.is_some(), "a single-file transformer"),
            (opts.tile_vae, "VAE tiling"),
            (opts.text_length.is_some(), "a text length"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        match flag {
            Some(flag) => Err(EngineError::Request(format!(
                "{flag} applies to Wan 2.1 folders only, not to {what}"
            ))),
            None => Ok(()),
        }
    }

    pub fn family(&self) -> Family {
        match self.loaded {
            Loaded::World(_) => Family::World,
            Loaded::Wan(_) => Family::Wan,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.loaded {
            Loaded::World(p) => p.device(),
            Loaded::Wan(p) => p.device(),
        }
    }

    pub fn info(&self) -> ModelInfo {
        match &self.loaded {
            Loaded::World(p) => {
                let d = &p.model().manifest.defaults;
                ModelInfo {
                    family: Family::World,
                    width: d.width,
                    height: d.height,
                    frames: d.frames,
                    fps: d.fps,
                    steps: d.steps,
                    guidance: d.guidance,
                    size_multiples: p.size_multiples(),
                    temporal_factor: p.temporal_factor(),
                    modes: WORLD_MODES,
                }
            }
            Loaded::Wan(p) => {
                let d = WanRequest::new("");
                let patch = p.transformer_config().patch_size;
                ModelInfo {
                    family: Family::Wan,
                    width: d.width,
                    height: d.height,
                    frames: d.frames,
                    fps: WAN_FPS,
                    steps: d.steps,
                    guidance: d.guidance,
                    size_multiples: (VAE_SCALE_SPATIAL * patch[2], VAE_SCALE_SPATIAL * patch[1]),
                    temporal_factor: VAE_SCALE_TEMPORAL,
                    modes: WAN_MODES,
                }
            }
        }
    }

    /// Checks a job without running anything slow: sizes, frame counts, numbers, and whether
    /// the model runs the job's mode. Errors are [request errors](EngineError::is_request_error)
    /// naming the allowed values.
    pub fn check(&self, job: &Job) -> Result<()> {
        match &self.loaded {
            Loaded::World(p) => Ok(p.check(&world_request(p, job)?)?),
            Loaded::Wan(p) => {
                p.initial_latents(&self.wan_request(job)?)?;
                Ok(())
            }
        }
    }

    /// A warning about prompt words the model never saw, naming them (world model).
    pub fn prompt_warning(&self, job: &Job) -> Result<Option<String>> {
        match &self.loaded {
            Loaded::World(p) => {
                let req = world_request(p, job)?;
                let unknown = p.request_unknown_words(&req);
                Ok(p.model().tokenizer.unknown_words_warning(&unknown))
            }
            Loaded::Wan(_) => Ok(None),
        }
    }

    /// Runs a job, reporting progress to `events`.
    pub fn run(&self, job: &Job, events: &mut dyn FnMut(Event)) -> Result<Finished> {
        match &self.loaded {
            Loaded::World(p) => {
                let req = world_request(p, job)?;
                p.check(&req)?;
                let out = p.generate(&req, &mut |stage| {
                    events(match stage {
                        WorldStage::EncodingText => Event::EncodingText,
                        WorldStage::EncodingFrames => Event::EncodingFrames,
                        WorldStage::Denoising { step, steps } => Event::Denoising { step, steps },
                        WorldStage::Decoding { frame, frames } => Event::Decoding { frame, frames },
                    })
                })?;
                Ok(Finished {
                    video: out.video,
                    frames_f32: None,
                    step_cache: out.step_cache,
                    unknown_words: out.unknown_words,
                })
            }
            Loaded::Wan(p) => {
                let req = self.wan_request(job)?;
                let out = p.generate(&req, &mut |stage| {
                    events(match stage {
                        WanStage::EncodingText => Event::EncodingText,
                        WanStage::Denoising { step, steps } => Event::Denoising { step, steps },
                        WanStage::Decoding { frame, frames } => Event::Decoding { frame, frames },
                    })
                })?;
                let video = video_from_tensor(&out.video, job.fps.unwrap_or(WAN_FPS))?;
                Ok(Finished {
                    video,
                    frames_f32: Some(out.video),
                    step_cache: out.step_cache,
                    unknown_words: Vec::new(),
                })
            }
        }
    }

    fn wan_request(&self, job: &Job) -> Result<WanRequest> {
        if !matches!(job.mode, Mode::Text) {
            return Err(EngineError::Request(format!(
                "the {} mode needs zoetrope's world model: Wan 2.1 folders do text→video only",
                job.mode.name()
            )));
        }
        if job.context_latents.is_some() {
            return Err(EngineError::Request(
                "context latents apply to extend and connect, which Wan 2.1 folders do not run"
                    .into(),
            ));
        }
        check_fps(job.fps)?;
        let mut req = WanRequest::new(job.prompt.clone());
        req.negative_prompt = job.negative_prompt.clone();
        if let Some((w, h)) = job.size {
            (req.width, req.height) = (w, h);
        }
        if let Some(f) = job.frames {
            req.frames = f;
        }
        if let Some(s) = job.steps {
            req.steps = s;
        }
        if let Some(g) = job.guidance {
            req.guidance = g;
        }
        req.seed = job.seed;
        req.shift = job.shift;
        req.sampler = job.sampler;
        (req.cache_steps, req.cache_limits) = cache_settings(job);
        if let Some(latents) = &job.latents {
            req.latents = Some(latents.to_dtype(DType::F32)?.to_device(self.device())?);
        }
        Ok(req)
    }
}

fn check_fps(fps: Option<f64>) -> Result<()> {
    match fps {
        Some(fps) if !(fps.is_finite() && fps > 0.0) => Err(EngineError::Request(format!(
            "the frame rate must be a positive number, got {fps}"
        ))),
        _ => Ok(()),
    }
}

fn cache_settings(job: &Job) -> (Option<f64>, StepCacheLimits) {
    let limits = StepCacheLimits {
        max_consecutive_skips: job
            .cache
            .and_then(|c| c.max_consecutive_skips)
            .unwrap_or(DEFAULT_MAX_CONSECUTIVE_SKIPS),
        ..StepCacheLimits::default()
    };
    (job.cache.map(|c| c.threshold), limits)
}

/// The world pipeline's request for a job: the model's defaults (sized to fit an input image or
/// clip), then what the job sets.
fn world_request(pipe: &WorldPipeline, job: &Job) -> Result<WorldRequest> {
    check_fps(job.fps)?;
    let conditioning = match &job.mode {
        Mode::Text => Conditioning::None,
        Mode::Image(frame) => Conditioning::Image(frame.clone()),
        Mode::Extend {
            clip,
            backward: false,
        } => Conditioning::ExtendForward(clip.clone()),
        Mode::Extend {
            clip,
            backward: true,
        } => Conditioning::ExtendBackward(clip.clone()),
        Mode::Loop { first } => Conditioning::Loop {
            first: first.clone(),
        },
        Mode::Connect { first, second } => Conditioning::Connect {
            first: first.clone(),
            second: second.clone(),
        },
        Mode::Edit { source, strength } => Conditioning::Edit {
            source: source.clone(),
            strength: strength.unwrap_or(DEFAULT_EDIT_STRENGTH),
        },
    };
    let mut req = pipe.request(job.prompt.clone())?;
    req.negative_prompt = job.negative_prompt.clone();
    if let Some((w, h)) = conditioning.input_size() {
        (req.width, req.height) = pipe.size_for_input(w, h);
    }
    if let Conditioning::Edit { source, .. } = &conditioning {
        req.frames = pipe.frames_at_most(source.len());
    }
    job.apply_to_world(&mut req);
    req.context_latents = job.context_latents.unwrap_or(DEFAULT_CONTEXT_LATENTS);
    req.conditioning = conditioning;
    Ok(req)
}

impl Job {
    /// Sets a world-model request's sampling settings to the job's where the job gives them:
    /// size, frames, steps, guidance, shift, sampler, fps, seed and the step cache (not the
    /// prompts or the mode). `eval model` uses it for its shared settings.
    pub fn apply_to_world(&self, req: &mut WorldRequest) {
        if let Some((w, h)) = self.size {
            (req.width, req.height) = (w, h);
        }
        if let Some(f) = self.frames {
            req.frames = f;
        }
        if let Some(s) = self.steps {
            req.steps = s;
        }
        if let Some(g) = self.guidance {
            req.guidance = g;
        }
        if let Some(s) = self.shift {
            req.shift = s;
        }
        if let Some(s) = self.sampler {
            req.sampler = s;
        }
        if let Some(fps) = self.fps {
            req.fps = fps;
        }
        req.seed = self.seed;
        (req.cache_steps, req.cache_limits) = cache_settings(self);
    }
}

/// Frames `[F, 3, H, W]` in [0, 1] as 8-bit video, rounding as image libraries do.
pub(crate) fn video_from_tensor(video: &Tensor, fps: f64) -> Result<Video> {
    let (f, _, h, w) = video.dims4()?;
    let bytes = (video.permute((0, 2, 3, 1))? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let frame_len = h * w * 3;
    let frames = (0..f)
        .map(|i| {
            Frame::from_rgb(
                w as u32,
                h as u32,
                bytes[i * frame_len..(i + 1) * frame_len].to_vec(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Video::new(frames, fps)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Option<Model> {
        // Builds without the shipped weights have no built-in model; those tests then say so.
        zoetrope_models::world::builtin()?;
        Some(Model::load(&ModelSource::Builtin, &LoadOptions::default()).unwrap())
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut events = vec![Event::EncodingText, Event::EncodingFrames];
        events.extend((0..20).map(|step| Event::Denoising { step, steps: 20 }));
        events.extend((0..5).map(|frame| Event::Decoding { frame, frames: 5 }));
        let p: Vec<f64> = events.iter().map(Event::progress).collect();
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
        assert!(p[0] >= 0.0 && *p.last().unwrap() < 1.0, "{p:?}");
    }

    #[test]
    fn the_builtin_model_checks_jobs_and_names_allowed_values() {
        let Some(model) = builtin() else {
            eprintln!("no built-in world model in this build; skipped");
            return;
        };
        let info = model.info();
        assert_eq!(info.family, Family::World);
        assert!(info.modes.contains(&"connect"));
        model.check(&Job::new("a red ball")).unwrap();
        let mut job = Job::new("a red ball");
        job.size = Some((info.width + 1, info.height));
        let err = model.check(&job).unwrap_err();
        assert!(err.is_request_error(), "{err}");
        assert!(
            err.to_string().contains(&info.size_multiples.0.to_string()),
            "{err}"
        );
        job.size = None;
        job.frames = Some(info.temporal_factor + 2);
        let err = model.check(&job).unwrap_err();
        assert!(err.is_request_error(), "{err}");
        job.frames = None;
        job.fps = Some(0.0);
        assert!(model.check(&job).unwrap_err().is_request_error());
    }

    #[test]
    fn frames_for_seconds_are_allowed_counts() {
        let info = ModelInfo {
            family: Family::World,
            width: 64,
            height: 64,
            frames: 17,
            fps: 8.0,
            steps: 20,
            guidance: 3.0,
            size_multiples: (8, 8),
            temporal_factor: 4,
            modes: WORLD_MODES,
        };
        assert_eq!(info.frames_for_seconds(2.0, 8.0), 17);
        assert_eq!(info.frames_for_seconds(4.0, 8.0), 33);
        assert_eq!(info.frames_for_seconds(0.1, 8.0), 5);
        for s in [1.0, 3.3, 8.0, 12.0] {
            assert_eq!((info.frames_for_seconds(s, 8.0) - 1) % 4, 0);
        }
    }

    #[test]
    fn a_folder_that_is_no_model_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = family_of(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("model_index.json"), "{err}");
    }
}
