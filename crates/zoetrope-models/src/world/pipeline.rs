//! The world model's sampling pipeline, top to bottom: prompt → tokenizer + text encoder;
//! conditioning frames → VAE encoder; seeded noise → DiT + flow sampler with classifier-free
//! guidance → VAE decoder → frames.
//!
//! Every mode of the Sora report is the same sampler with a different choice of which latent
//! frames are given (the DiT's frame mask, see [`super::dit`]) and where sampling starts; none
//! needs retraining. Given latents are put into `x_t` before every model call (training saw them
//! clean) and copied exactly into the final latent.
//!
//! | [`Conditioning`] | given latent frames | output |
//! |---|---|---|
//! | `None` (text→video, or a still with `frames = 1`) | none | the clip |
//! | `Image` (image→video) | frame 0 = the image | the clip |
//! | `ExtendForward` | the first `k` = the clip's last `1 + f·(k−1)` frames, encoded afresh | clip + new frames |
//! | `ExtendBackward` | the last `k` = the clip's first `1 + f·k` frames encoded, minus latent 0 | new frames + clip |
//! | `Loop` | frame 0 and one extra last frame, both the same first frame | the clip without the extra tail |
//! | `Connect` | A's last frames first, B's first frames last (as the two above) | A + new frames + B |
//! | `Edit` (SDEdit) | none; sampling starts from the encoded source noised to `t = strength` | the edited clip |
//!
//! (`f` is the VAE's temporal factor, 4, and `k` the request's `context_latents`, clamped to what
//! the clip and the request allow.)
//!
//! Why the start and the end are encoded differently: the VAE is causal and its latent frame 0
//! encodes one frame alone while every later latent frame encodes `f` frames. Given frames at the
//! start of the new clip must look like a clip's opening latents, so the context frames are
//! encoded as a clip of their own. Given frames at the end must look like later latents, so a clip
//! is encoded whole and its last latent frames are taken; its frame 0 (which latent 0 holds) is
//! the one frame the new clip regenerates right before them, and the output puts the original
//! back in its place. A clip shorter than `1 + f` frames is padded by repeating its last frame
//! (so an image works as a clip everywhere).
//!
//! Conditioning images and clips of another size are scaled to cover the requested size
//! (keeping their aspect ratio) and centre-cropped: see [`fit_frame`]. Clips that end up in the
//! output (extend, connect) appear there at the requested size.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_sampling::{
    FlowMatchEulerConfig, SamplerKind, Scheduler, SchedulerConfig, SchedulerError, UniPcConfig,
};
use zoetrope_video::{Frame, Video, VideoError};

use super::dit::{apply_given_frames, patch_grid, randn_like, EMPTY_CAPTION};
use super::model::{SamplingDefaults, WorldModel};
use crate::step_cache::{StepCache, StepCacheConfig, StepCacheLimits, StepCacheReport};

/// Latent frames a clip gives for extending and connecting (each covers 4 frames after the
/// first): enough to carry motion over, few enough to leave the model room.
pub const DEFAULT_CONTEXT_LATENTS: usize = 2;
/// How much of the source an edit keeps by default: sampling starts at `t = 0.6`.
pub const DEFAULT_EDIT_STRENGTH: f64 = 0.6;
/// An input image or clip of an allowed size is generated at its own size up to this many times
/// the model's default area; larger ones are scaled down to the default area
/// ([`WorldPipeline::size_for_input`]).
pub const MAX_INPUT_AREA_FACTOR: usize = 4;
/// The longest schedule searched when fitting an edit's steps below its strength.
const MAX_EDIT_SCHEDULE: usize = 1 << 20;
/// ChaCha stream of the noise for a loop's generated first frame (the main noise is stream 0),
/// so one seed gives both without the two overlapping.
const FIRST_FRAME_STREAM: u64 = 1;

/// Errors from checking or running a request; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WorldPipelineError {
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = WorldPipelineError> = std::result::Result<T, E>;

fn request_error(msg: impl Into<String>) -> WorldPipelineError {
    WorldPipelineError::Request(msg.into())
}

/// What is given besides the prompt (see the module docs for how each mode works).
#[derive(Clone, Debug, Default)]
pub enum Conditioning {
    /// Text→video (a single image when `frames = 1`).
    #[default]
    None,
    /// Image→video: the image is the first frame.
    Image(Frame),
    /// Continue a clip: output is the clip followed by the new frames.
    ExtendForward(Video),
    /// Generate what leads up to a clip: output is the new frames followed by the clip.
    ExtendBackward(Video),
    /// A seamless loop starting (and ending) on `first`, or on a first frame generated from the
    /// prompt when `None`.
    Loop { first: Option<Frame> },
    /// Join two clips: output is `first`, the new frames, then `second`.
    Connect { first: Video, second: Video },
    /// Video→video (SDEdit): the source noised to `t = strength` in (0, 1] is denoised with the
    /// prompt; small strengths keep more of the source.
    Edit { source: Video, strength: f64 },
}

impl Conditioning {
    /// The mode's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Conditioning::None => "text→video",
            Conditioning::Image(_) => "image→video",
            Conditioning::ExtendForward(_) => "extending forward",
            Conditioning::ExtendBackward(_) => "extending backward",
            Conditioning::Loop { .. } => "a loop",
            Conditioning::Connect { .. } => "connecting two clips",
            Conditioning::Edit { .. } => "editing a clip",
        }
    }

    /// The first picture or clip given, if any (for choosing a size that fits it).
    pub fn input_size(&self) -> Option<(usize, usize)> {
        let frame = match self {
            Conditioning::None | Conditioning::Loop { first: None } => return None,
            Conditioning::Image(f) | Conditioning::Loop { first: Some(f) } => f,
            Conditioning::ExtendForward(v)
            | Conditioning::ExtendBackward(v)
            | Conditioning::Connect { first: v, .. }
            | Conditioning::Edit { source: v, .. } => &v.frames()[0],
        };
        Some((frame.width() as usize, frame.height() as usize))
    }
}

/// One generation: what the CLI and the server hand to the pipeline.
#[derive(Clone, Debug)]
pub struct WorldRequest {
    pub prompt: String,
    /// The unconditional branch of guidance; [`EMPTY_CAPTION`] (what training dropped captions
    /// to) unless something specific should be steered away from.
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    /// Frames of the generated clip, `1 + f·k` for the VAE's temporal factor `f` (for extend and
    /// connect this includes the frames the given clips cover; see [`Conditioning`]).
    pub frames: usize,
    pub fps: f64,
    /// Denoising steps (model calls; an edit runs about this many below its strength).
    pub steps: usize,
    /// Classifier-free guidance scale: `v = v_uncond + g·(v_cond − v_uncond)`; exactly 1 skips
    /// the unconditional branch.
    pub guidance: f64,
    /// SD3 time shift of the schedule.
    pub shift: f64,
    pub sampler: SamplerKind,
    /// Seeds the initial noise (ChaCha8).
    pub seed: u64,
    pub conditioning: Conditioning,
    /// Latent frames taken from a clip when extending or connecting.
    pub context_latents: usize,
    /// First-Block Cache threshold ([`crate::step_cache`]): `None` runs every block at every
    /// step; a value reuses the DiT's later blocks on steps whose first block changed less than
    /// this (relative L1), trading exactness for speed.
    pub cache_steps: Option<f64>,
    /// Where the cache may skip, whatever the threshold.
    pub cache_limits: StepCacheLimits,
}

impl WorldRequest {
    /// A text→video request with the model's sampling defaults and seed 0.
    pub fn new(prompt: impl Into<String>, defaults: &SamplingDefaults) -> Result<Self> {
        let sampler = defaults
            .sampler
            .parse::<SamplerKind>()
            .map_err(|e| request_error(format!("the model's default sampler is invalid: {e}")))?;
        Ok(Self {
            prompt: prompt.into(),
            negative_prompt: EMPTY_CAPTION.to_string(),
            width: defaults.width,
            height: defaults.height,
            frames: defaults.frames,
            fps: defaults.fps,
            steps: defaults.steps,
            guidance: defaults.guidance,
            shift: defaults.shift,
            sampler,
            seed: 0,
            conditioning: Conditioning::None,
            context_latents: DEFAULT_CONTEXT_LATENTS,
            cache_steps: None,
            cache_limits: StepCacheLimits::default(),
        })
    }

    /// The step cache's settings, if caching is on (and the threshold is valid).
    pub fn step_cache(&self) -> Result<Option<StepCacheConfig>> {
        self.cache_steps
            .map(|t| StepCacheConfig::new(t, self.cache_limits).map_err(request_error))
            .transpose()
    }
}

/// Where the pipeline is, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    EncodingText,
    /// VAE-encoding the conditioning image or clips.
    EncodingFrames,
    /// `step` model calls of `steps` done (a loop without an image counts both of its passes).
    Denoising {
        step: usize,
        steps: usize,
    },
    /// Decoding latent frame `frame` of `frames`.
    Decoding {
        frame: usize,
        frames: usize,
    },
}

/// Encoded prompts: batch 1 (the prompt) or 2 (prompt, then negative prompt) when guiding.
#[derive(Clone, Debug)]
pub struct PromptEmbeddings {
    /// `[B, L, text_dim]`.
    pub tokens: Tensor,
    /// `[B, L]`, 1 = token, 0 = padding.
    pub mask: Tensor,
    /// Words of the prompt and negative prompt the model does not know (each once).
    pub unknown_words: Vec<String>,
}

impl PromptEmbeddings {
    /// Whether the negative prompt is encoded (the batch holds both branches).
    pub fn guided(&self) -> bool {
        self.tokens.dim(0).is_ok_and(|b| b == 2)
    }
}

/// Latent frames given to the DiT.
#[derive(Clone, Debug)]
pub struct GivenFrames {
    /// `[1, C, T, h, w]` in the DiT's (scaled) latent space; zero where not given.
    pub latents: Tensor,
    /// `[1, T]`, 1 = given.
    pub mask: Tensor,
    /// Which latent frames are given.
    pub given: Vec<bool>,
}

impl GivenFrames {
    /// Places `parts` (start position, latents `[1, C, n, h, w]`) on a grid of `frames` latent
    /// frames shaped like `like` in every other dimension.
    fn place(frames: usize, like: &Tensor, parts: &[(usize, Tensor)]) -> Result<Self> {
        let (_, c, _, h, w) = like.dims5()?;
        let zero = Tensor::zeros((1, c, 1, h, w), DType::F32, like.device())?;
        let mut slots: Vec<Tensor> = vec![zero; frames];
        let mut given = vec![false; frames];
        for (start, latents) in parts {
            for j in 0..latents.dim(2)? {
                slots[start + j] = latents.narrow(2, j, 1)?.to_dtype(DType::F32)?;
                given[start + j] = true;
            }
        }
        let mask: Vec<f32> = given.iter().map(|&g| if g { 1.0 } else { 0.0 }).collect();
        Ok(Self {
            latents: Tensor::cat(&slots, 2)?,
            mask: Tensor::from_vec(mask, (1, frames), like.device())?,
            given,
        })
    }

    fn all_given(&self) -> bool {
        self.given.iter().all(|&g| g)
    }
}

/// What [`WorldPipeline::generate`] returns.
#[derive(Clone, Debug)]
pub struct WorldOutput {
    /// The frames at the request's size and frame rate (with the given clips spliced in for
    /// extend and connect).
    pub video: Video,
    /// Final latents of the sampled clip `[1, C, T, h, w]`, in the DiT's (scaled) space.
    pub latents: Tensor,
    /// The latent frames that were given, if any.
    pub given: Option<GivenFrames>,
    /// Words of the prompts the model does not know.
    pub unknown_words: Vec<String>,
    /// Steps the step cache skipped, per guidance branch (all passes together), when caching
    /// was on.
    pub step_cache: Option<StepCacheReport>,
}

/// A request checked and turned into latent shapes.
#[derive(Clone, Debug)]
struct Plan {
    /// Latent grid `[T, h, w]` that is sampled (a loop samples one latent frame more than
    /// requested).
    grid: [usize; 3],
    /// Latent frames given at the start from a clip (extend forward, connect).
    head: usize,
    /// Latent frames given at the end from a clip (extend backward, connect).
    tail: usize,
    /// For an edit: the schedule length and the index sampling starts at.
    edit: Option<(usize, usize)>,
    /// Model calls in all, for progress.
    model_calls: usize,
}

/// Counts model calls across passes and reports them; adds up the passes' step-cache reports.
struct StepProgress<'a> {
    report: &'a mut dyn FnMut(Stage),
    done: usize,
    total: usize,
    step_cache: Option<StepCacheReport>,
}

impl StepProgress<'_> {
    fn show(&mut self) {
        (self.report)(Stage::Denoising {
            step: self.done,
            steps: self.total,
        });
    }

    fn advance(&mut self) {
        self.done += 1;
        self.show();
    }
}

/// A loaded world model wired to the samplers.
pub struct WorldPipeline {
    model: WorldModel,
}

impl WorldPipeline {
    pub fn new(model: WorldModel) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &WorldModel {
        &self.model
    }

    pub fn device(&self) -> &Device {
        self.model.dit.device()
    }

    fn dtype(&self) -> DType {
        self.model.dit.dtype()
    }

    /// A text→video request for `prompt` with the model's sampling defaults.
    pub fn request(&self, prompt: impl Into<String>) -> Result<WorldRequest> {
        WorldRequest::new(prompt, &self.model.manifest.defaults)
    }

    /// Frames after the first are compressed by this in time (4).
    pub fn temporal_factor(&self) -> usize {
        self.model.manifest.vae.temporal_factor()
    }

    /// Widths and heights must be multiples of these: the VAE's spatial factor times the DiT's
    /// patch, `(width multiple, height multiple)`.
    pub fn size_multiples(&self) -> (usize, usize) {
        let s = self.model.manifest.vae.spatial_factor();
        let patch = self.model.manifest.dit.patch;
        (s * patch[2], s * patch[1])
    }

    /// The largest allowed frame count not above `frames` (at least 1).
    pub fn frames_at_most(&self, frames: usize) -> usize {
        let pt = self.model.manifest.dit.patch[0];
        let latents = self
            .model
            .manifest
            .vae
            .latent_frames(frames)
            .unwrap_or_else(|_| 1 + frames.saturating_sub(1) / self.temporal_factor());
        let latents = (latents / pt * pt).max(pt);
        self.model.manifest.vae.video_frames(latents)
    }

    /// A size for generating from an input of `width`×`height`: the input's own size when the
    /// model allows it and it is at most [`MAX_INPUT_AREA_FACTOR`] times the default area,
    /// otherwise the input's aspect ratio at (up to) that area, rounded to allowed sizes.
    pub fn size_for_input(&self, width: usize, height: usize) -> (usize, usize) {
        let (mw, mh) = self.size_multiples();
        let d = &self.model.manifest.defaults;
        let max_area = (MAX_INPUT_AREA_FACTOR * d.width * d.height) as f64;
        let area = (width.max(1) * height.max(1)) as f64;
        if width > 0
            && height > 0
            && width.is_multiple_of(mw)
            && height.is_multiple_of(mh)
            && area <= max_area
        {
            return (width, height);
        }
        let scale = if area > max_area {
            ((d.width * d.height) as f64 / area).sqrt()
        } else {
            1.0
        };
        let round = |v: usize, m: usize| {
            (((v.max(1) as f64 * scale) / m as f64).round() as usize).max(1) * m
        };
        (round(width, mw), round(height, mh))
    }

    /// The latent grid `[T, h, w]` for a size and frame count, or an error naming the allowed
    /// values.
    pub fn latent_grid(&self, width: usize, height: usize, frames: usize) -> Result<[usize; 3]> {
        let (mw, mh) = self.size_multiples();
        if width == 0 || height == 0 || !width.is_multiple_of(mw) || !height.is_multiple_of(mh) {
            let round = |v: usize, m: usize| ((v + m / 2) / m).max(1) * m;
            let rule = if mw == mh {
                format!("width and height must be multiples of {mw}")
            } else {
                format!("width must be a multiple of {mw} and height a multiple of {mh}")
            };
            return Err(request_error(format!(
                "size {width}x{height} is impossible for this world model: {rule} (the VAE's {}× \
                 downsampling times the DiT's patch); the nearest allowed size is {}x{}",
                self.model.manifest.vae.spatial_factor(),
                round(width, mw),
                round(height, mh)
            )));
        }
        let f = self.temporal_factor();
        let pt = self.model.manifest.dit.patch[0];
        let latents_ok = frames > 0
            && (frames - 1).is_multiple_of(f)
            && (1 + (frames - 1) / f).is_multiple_of(pt);
        if !latents_ok {
            let below = self.frames_at_most(frames.max(1));
            let above = self
                .model
                .manifest
                .vae
                .video_frames(self.model.manifest.vae.latent_frames(below).unwrap_or(1) + pt);
            let examples: Vec<String> = (1..=4)
                .map(|i| self.model.manifest.vae.video_frames(i * pt).to_string())
                .collect();
            let rule = if pt == 1 {
                format!("1 + {f}k")
            } else {
                format!("1 + {f}k with 1 + k a multiple of {pt}")
            };
            let hint = if frames < below {
                format!("try {below}")
            } else {
                format!("try {below} or {above}")
            };
            return Err(request_error(format!(
                "{frames} frames is impossible for this world model: the frame count must be \
                 {rule} ({}, …); {hint}",
                examples.join(", ")
            )));
        }
        let s = self.model.manifest.vae.spatial_factor();
        let grid = [1 + (frames - 1) / f, height / s, width / s];
        patch_grid(grid, self.model.manifest.dit.patch)
            .map_err(|e| request_error(e.to_string()))?;
        Ok(grid)
    }

    /// Checks a request without running anything slow: sizes, numbers, and what the conditioning
    /// needs.
    pub fn check(&self, req: &WorldRequest) -> Result<()> {
        self.plan(req).map(|_| ())
    }

    fn plan(&self, req: &WorldRequest) -> Result<Plan> {
        if req.steps == 0 {
            return Err(request_error("steps must be at least 1"));
        }
        if !req.guidance.is_finite() {
            return Err(request_error(format!(
                "guidance must be a finite number, got {}",
                req.guidance
            )));
        }
        if !(req.shift.is_finite() && req.shift > 0.0) {
            return Err(request_error(format!(
                "shift must be a positive number, got {}",
                req.shift
            )));
        }
        if !(req.fps.is_finite() && req.fps > 0.0) {
            return Err(request_error(format!(
                "fps must be a positive number, got {}",
                req.fps
            )));
        }
        if req.context_latents == 0 {
            return Err(request_error("context must be at least 1 latent frame"));
        }
        req.step_cache()?;
        let mut grid = self.latent_grid(req.width, req.height, req.frames)?;
        let t = grid[0];
        let f = self.temporal_factor();
        let ctx = req.context_latents;
        let need_latents = |n: usize| -> Result<()> {
            if t < n {
                return Err(request_error(format!(
                    "{} needs at least {} frames ({n} latent frames: given and generated ones), \
                     got {}",
                    req.conditioning.name(),
                    1 + f * (n - 1),
                    req.frames
                )));
            }
            Ok(())
        };
        // Latent frames that a clip's first frames fill at the start of a clip, and that its
        // first frames fill at the end (latent 0 is dropped there; short clips are padded).
        let opening = |len: usize| 1 + (len - 1) / f;
        let closing = |len: usize| ((len - 1) / f).max(1);
        let (mut head, mut tail, mut edit) = (0, 0, None);
        let mut model_calls = req.steps;
        match &req.conditioning {
            Conditioning::None => {}
            Conditioning::Image(_) => {
                if t == 1 {
                    model_calls = 0;
                }
            }
            Conditioning::ExtendForward(clip) => {
                need_latents(2)?;
                head = ctx.min(opening(clip.len())).min(t - 1);
            }
            Conditioning::ExtendBackward(clip) => {
                // The generated latent frame right before the given ones ends on the clip's
                // frame 0, which the clip replaces: new frames need a latent frame before it.
                need_latents(3)?;
                tail = ctx.min(closing(clip.len())).min(t - 2);
            }
            Conditioning::Connect { first, second } => {
                need_latents(3)?;
                head = ctx.min(opening(first.len()));
                tail = ctx.min(closing(second.len()));
                // Leave at least one latent frame to generate between the two.
                while head + tail + 1 > t {
                    if head >= tail {
                        head -= 1;
                    } else {
                        tail -= 1;
                    }
                }
            }
            Conditioning::Loop { first } => {
                need_latents(2)?;
                grid = self.latent_grid(req.width, req.height, req.frames + f)?;
                if first.is_none() {
                    model_calls += req.steps;
                }
            }
            Conditioning::Edit { source, strength } => {
                if source.len() < req.frames {
                    return Err(request_error(format!(
                        "the clip to edit has {} frames, fewer than the {} requested: ask for at \
                         most {} frames",
                        source.len(),
                        req.frames,
                        self.frames_at_most(source.len())
                    )));
                }
                let (n, start) = self.edit_schedule(req, *strength)?;
                model_calls = n - start;
                edit = Some((n, start));
            }
        }
        Ok(Plan {
            grid,
            head,
            tail,
            edit,
            model_calls,
        })
    }

    /// The sampler of a request, before `set_timesteps`.
    fn scheduler(&self, req: &WorldRequest) -> Result<Box<dyn Scheduler>> {
        let config = match req.sampler {
            SamplerKind::Euler => SchedulerConfig::FlowMatchEuler(FlowMatchEulerConfig {
                shift: req.shift,
                ..FlowMatchEulerConfig::default()
            }),
            SamplerKind::UniPc => SchedulerConfig::UniPc(UniPcConfig::flow(req.shift)),
        };
        Ok(config.build()?)
    }

    /// An edit's schedule: the shortest one with at least `steps` noise levels at or below
    /// `strength`, and the index of the first of them. Sampling there starts at `t ≤ strength`
    /// (the nearest level) and still takes about the requested number of steps, whatever the
    /// shift does to the spacing.
    fn edit_schedule(&self, req: &WorldRequest, strength: f64) -> Result<(usize, usize)> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(request_error(format!(
                "edit strength must be in (0, 1] (the noise level sampling starts from), got \
                 {strength}"
            )));
        }
        let mut scheduler = self.scheduler(req)?;
        let levels_below = |s: &dyn Scheduler| {
            let n = s.num_inference_steps();
            s.sigmas()[..n]
                .iter()
                .filter(|&&sigma| sigma as f64 <= strength)
                .count()
        };
        let mut n = req.steps;
        scheduler.set_timesteps(n)?;
        loop {
            let count = levels_below(scheduler.as_ref());
            if count >= req.steps {
                return Ok((n, n - count));
            }
            if n >= MAX_EDIT_SCHEDULE {
                let lowest = scheduler.sigmas()[n - 1];
                return Err(request_error(format!(
                    "edit strength {strength} is too small for {} steps: the sampler's noise \
                     levels end at {lowest:.4}; use a larger strength or fewer steps",
                    req.steps
                )));
            }
            // The count grows about in proportion to n; aim straight at `steps`.
            n = (n * req.steps)
                .div_ceil(count.max(1))
                .max(n + 1)
                .min(MAX_EDIT_SCHEDULE);
            scheduler.set_timesteps(n)?;
        }
    }

    /// The words of `text` the model does not know (each once).
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        self.model.tokenizer.encode(text).1
    }

    /// The words of a request's prompt, and of its negative prompt when guiding, that the model
    /// does not know: what [`generate`](Self::generate) reports, known before running it.
    pub fn request_unknown_words(&self, req: &WorldRequest) -> Vec<String> {
        let mut words = self.unknown_words(&req.prompt);
        if uses_negative_prompt(req.guidance) {
            push_new(&mut words, self.unknown_words(&req.negative_prompt));
        }
        words
    }

    /// Encodes the prompt, and the negative prompt when guiding (guidance ≠ 1), in one batch.
    /// Unknown words are logged with `tracing::warn!` and returned.
    pub fn encode_text(
        &self,
        prompt: &str,
        negative_prompt: &str,
        guidance: f64,
    ) -> Result<PromptEmbeddings> {
        let prompts: Vec<&str> = if uses_negative_prompt(guidance) {
            vec![prompt, negative_prompt]
        } else {
            vec![prompt]
        };
        let (tokens, mask, unknown) = self
            .model
            .text
            .encode_prompts(&self.model.tokenizer, &prompts)?;
        let mut unknown_words: Vec<String> = vec![];
        push_new(&mut unknown_words, unknown.into_iter().flatten());
        if let Some(warning) = self.model.tokenizer.unknown_words_warning(&unknown_words) {
            tracing::warn!("{warning}");
        }
        Ok(PromptEmbeddings {
            tokens,
            mask,
            unknown_words,
        })
    }

    /// The guided velocity at latents `x_t [1, C, T, h, w]` and flow time `t ∈ [0, 1]`:
    /// `v_u + g·(v_c − v_u)`, with the conditional and unconditional branches in one batch-2
    /// forward pass; without a negative prompt in `text` (guidance 1) just `v_c`.
    pub fn velocity(
        &self,
        x_t: &Tensor,
        t: f64,
        text: &PromptEmbeddings,
        guidance: f64,
        given: Option<&GivenFrames>,
    ) -> Result<Tensor> {
        self.velocity_with(x_t, t, text, guidance, given, None)
    }

    /// [`velocity`](Self::velocity) through the DiT's step cache: `caches` holds one cache per
    /// branch, `[cond]` or (guided) `[cond, uncond]`.
    pub fn velocity_cached(
        &self,
        x_t: &Tensor,
        t: f64,
        text: &PromptEmbeddings,
        guidance: f64,
        given: Option<&GivenFrames>,
        caches: &mut [StepCache],
    ) -> Result<Tensor> {
        self.velocity_with(x_t, t, text, guidance, given, Some(caches))
    }

    fn velocity_with(
        &self,
        x_t: &Tensor,
        t: f64,
        text: &PromptEmbeddings,
        guidance: f64,
        given: Option<&GivenFrames>,
        caches: Option<&mut [StepCache]>,
    ) -> Result<Tensor> {
        let dit = &self.model.dit;
        let t = Tensor::new(&[t as f32], self.device())?;
        let forward = |x: &Tensor, cond: Option<(&Tensor, &Tensor)>| match caches {
            Some(caches) => dit.forward_cached(x, &t, &text.tokens, &text.mask, cond, caches),
            None => dit.forward(x, &t, &text.tokens, &text.mask, cond),
        };
        if !text.guided() {
            let cond = given.map(|g| (&g.latents, &g.mask));
            return Ok(forward(x_t, cond)?.to_dtype(DType::F32)?);
        }
        let x = Tensor::cat(&[x_t, x_t], 0)?;
        let given2 = match given {
            Some(g) => Some((
                Tensor::cat(&[&g.latents, &g.latents], 0)?,
                Tensor::cat(&[&g.mask, &g.mask], 0)?,
            )),
            None => None,
        };
        let v = forward(&x, given2.as_ref().map(|(l, m)| (l, m)))?.to_dtype(DType::F32)?;
        let v_cond = v.narrow(0, 0, 1)?;
        let v_uncond = v.narrow(0, 1, 1)?;
        Ok((&v_uncond + ((v_cond - &v_uncond)? * guidance)?)?)
    }

    /// Standard normal noise `[1, C, T, h, w]` from `rng`.
    fn noise(&self, grid: [usize; 3], rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let c = self.model.manifest.dit.latent_channels;
        let shape = (1, c, grid[0], grid[1], grid[2]);
        let like = Tensor::zeros(shape, DType::F32, self.device())?;
        Ok(randn_like(&like, rng)?)
    }

    /// Runs the sampler from `(x, start)` (a sample at the schedule's index `start`) to the end,
    /// putting the given frames into `x_t` before every model call and into the result.
    fn denoise(
        &self,
        req: &WorldRequest,
        text: &PromptEmbeddings,
        (mut x, start): (Tensor, usize),
        given: Option<&GivenFrames>,
        scheduler: &mut dyn Scheduler,
        progress: &mut StepProgress,
    ) -> Result<Tensor> {
        let sigmas = scheduler.sigmas().to_vec();
        let steps = scheduler.num_inference_steps();
        // One cache per guidance branch, fresh for each pass (a pass may sample another grid).
        let mut caches: Option<Vec<StepCache>> = req
            .step_cache()?
            .map(|config| vec![StepCache::new(config); text.tokens.dim(0).unwrap_or(1)]);
        for (i, &sigma) in sigmas.iter().enumerate().take(steps).skip(start) {
            if let Some(g) = given {
                x = apply_given_frames(&x, &g.latents, &g.mask)?;
            }
            let v = self.velocity_with(
                &x,
                sigma as f64,
                text,
                req.guidance,
                given,
                caches.as_deref_mut(),
            )?;
            x = scheduler.step(&v, i, &x)?;
            progress.advance();
        }
        if let Some(caches) = &caches {
            let report = StepCacheReport::from_caches(caches);
            match &mut progress.step_cache {
                Some(total) => *total += report,
                None => progress.step_cache = Some(report),
            }
        }
        if let Some(g) = given {
            x = apply_given_frames(&x, &g.latents, &g.mask)?;
        }
        Ok(x)
    }

    /// Samples a clip on `grid` from seeded noise (the whole schedule).
    fn sample(
        &self,
        req: &WorldRequest,
        text: &PromptEmbeddings,
        noise: Tensor,
        given: Option<&GivenFrames>,
        progress: &mut StepProgress,
    ) -> Result<Tensor> {
        if given.is_some_and(GivenFrames::all_given) {
            // Nothing left to generate (an image as a one-frame clip).
            let g = given.expect("checked above");
            return Ok(apply_given_frames(&noise, &g.latents, &g.mask)?);
        }
        let mut scheduler = self.scheduler(req)?;
        scheduler.set_timesteps(req.steps)?;
        self.denoise(req, text, (noise, 0), given, scheduler.as_mut(), progress)
    }

    /// VAE-encodes frames (`1 + f·k` of them, at one size) to the DiT's latent space:
    /// the posterior mean times the VAE's `scaling_factor`, `[1, C, 1 + k, h, w]` f32.
    pub fn encode_frames(&self, frames: &[Frame]) -> Result<Tensor> {
        let video = frames_to_tensor(frames, self.device())?.to_dtype(self.dtype())?;
        let (mean, _) = self.model.vae.encode(&video)?;
        let scale = self.model.manifest.vae.scaling_factor;
        Ok((mean.to_dtype(DType::F32)? * scale)?)
    }

    /// Decodes latents `[1, C, T, h, w]` (DiT space) one latent frame at a time to frames.
    pub fn decode(&self, latents: &Tensor, progress: &mut dyn FnMut(Stage)) -> Result<Vec<Frame>> {
        let scale = self.model.manifest.vae.scaling_factor;
        let z = (latents.to_dtype(DType::F32)? / scale)?.to_dtype(self.dtype())?;
        let n = z.dim(2)?;
        let mut stream = self.model.vae.decode_stream();
        let mut frames = Vec::with_capacity(self.model.manifest.vae.video_frames(n));
        for j in 0..n {
            progress(Stage::Decoding {
                frame: j,
                frames: n,
            });
            frames.extend(tensor_to_frames(&stream.push(&z.narrow(2, j, 1)?)?)?);
        }
        Ok(frames)
    }

    /// Runs a request: see the module docs for what each conditioning mode does.
    pub fn generate(
        &self,
        req: &WorldRequest,
        progress: &mut dyn FnMut(Stage),
    ) -> Result<WorldOutput> {
        let plan = self.plan(req)?;
        let f = self.temporal_factor();
        let (w, h) = (req.width, req.height);
        let fit = |frames: &[Frame]| -> Result<Vec<Frame>> {
            frames.iter().map(|fr| fit_frame(fr, w, h)).collect()
        };

        progress(Stage::EncodingText);
        let text = self.encode_text(&req.prompt, &req.negative_prompt, req.guidance)?;
        let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
        let noise = self.noise(plan.grid, &mut rng)?;
        let t = plan.grid[0];
        let mut steps = StepProgress {
            report: progress,
            done: 0,
            total: plan.model_calls,
            step_cache: None,
        };

        let (latents, given, frames) = match &req.conditioning {
            Conditioning::None => {
                steps.show();
                let latents = self.sample(req, &text, noise, None, &mut steps)?;
                let frames = self.decode(&latents, steps.report)?;
                (latents, None, frames)
            }
            Conditioning::Image(image) => {
                (steps.report)(Stage::EncodingFrames);
                let z = self.encode_frames(&fit(std::slice::from_ref(image))?)?;
                let given = GivenFrames::place(t, &noise, &[(0, z)])?;
                steps.show();
                let latents = self.sample(req, &text, noise, Some(&given), &mut steps)?;
                let frames = self.decode(&latents, steps.report)?;
                (latents, Some(given), frames)
            }
            Conditioning::ExtendForward(clip) => {
                (steps.report)(Stage::EncodingFrames);
                let clip = fit(clip.frames())?;
                let context = 1 + f * (plan.head - 1);
                let z = self.encode_frames(&clip[clip.len() - context..])?;
                let given = GivenFrames::place(t, &noise, &[(0, z)])?;
                steps.show();
                let latents = self.sample(req, &text, noise, Some(&given), &mut steps)?;
                let new = self.decode(&latents, steps.report)?;
                let frames = clip.into_iter().chain(new.into_iter().skip(context));
                (latents, Some(given), frames.collect())
            }
            Conditioning::ExtendBackward(clip) => {
                (steps.report)(Stage::EncodingFrames);
                let clip = fit(clip.frames())?;
                let z = self.closing_latents(&clip, plan.tail)?;
                let given = GivenFrames::place(t, &noise, &[(t - plan.tail, z)])?;
                steps.show();
                let latents = self.sample(req, &text, noise, Some(&given), &mut steps)?;
                let mut frames = self.decode(&latents, steps.report)?;
                // The last frame before the given ones is the model's version of the clip's
                // frame 0: the clip itself takes over from there.
                frames.truncate(frames.len() - f * plan.tail - 1);
                frames.extend(clip);
                (latents, Some(given), frames)
            }
            Conditioning::Connect { first, second } => {
                (steps.report)(Stage::EncodingFrames);
                let (a, b) = (fit(first.frames())?, fit(second.frames())?);
                let context = 1 + f * (plan.head - 1);
                let za = self.encode_frames(&a[a.len() - context..])?;
                let zb = self.closing_latents(&b, plan.tail)?;
                let given = GivenFrames::place(t, &noise, &[(0, za), (t - plan.tail, zb)])?;
                steps.show();
                let latents = self.sample(req, &text, noise, Some(&given), &mut steps)?;
                let new = self.decode(&latents, steps.report)?;
                let end = new.len() - f * plan.tail - 1;
                let frames = a
                    .into_iter()
                    .chain(new[context..end].iter().cloned())
                    .chain(b)
                    .collect();
                (latents, Some(given), frames)
            }
            Conditioning::Loop { first } => {
                let first = match first {
                    Some(image) => fit_frame(image, w, h)?,
                    None => {
                        // A one-frame clip from the prompt: the single-image mode.
                        let mut first_rng = ChaCha8Rng::seed_from_u64(req.seed);
                        first_rng.set_stream(FIRST_FRAME_STREAM);
                        let noise1 = self.noise([1, plan.grid[1], plan.grid[2]], &mut first_rng)?;
                        steps.show();
                        let z = self.sample(req, &text, noise1, None, &mut steps)?;
                        self.decode(&z, steps.report)?.swap_remove(0)
                    }
                };
                (steps.report)(Stage::EncodingFrames);
                // The first frame held still: its latent 0 opens the clip, its latent 1 (the
                // frame shown f times) closes it, so the clip comes back to where it started.
                let still = self.encode_frames(&vec![first; 1 + f])?;
                let given = GivenFrames::place(
                    t,
                    &noise,
                    &[(0, still.narrow(2, 0, 1)?), (t - 1, still.narrow(2, 1, 1)?)],
                )?;
                steps.show();
                let latents = self.sample(req, &text, noise, Some(&given), &mut steps)?;
                let mut frames = self.decode(&latents, steps.report)?;
                // Drop the extra latent frame's f frames: they repeat frame 0.
                frames.truncate(req.frames);
                (latents, Some(given), frames)
            }
            Conditioning::Edit { source, .. } => {
                (steps.report)(Stage::EncodingFrames);
                let source = fit(&source.frames()[..req.frames])?;
                let x0 = self.encode_frames(&source)?;
                let (n, start) = plan.edit.expect("an edit plan has a schedule");
                let mut scheduler = self.scheduler(req)?;
                scheduler.set_timesteps(n)?;
                let x = scheduler.add_noise(&x0, &noise, start)?;
                steps.show();
                let latents =
                    self.denoise(req, &text, (x, start), None, scheduler.as_mut(), &mut steps)?;
                let frames = self.decode(&latents, steps.report)?;
                (latents, None, frames)
            }
        };
        Ok(WorldOutput {
            video: Video::new(frames, req.fps)?,
            latents,
            given,
            unknown_words: text.unknown_words,
            step_cache: steps.step_cache,
        })
    }

    /// The latents of a clip's first `1 + f·k` frames as later latent frames: the clip (padded
    /// by repeating its last frame if short) encoded whole, latent 0 dropped, `[1, C, k, h, w]`.
    fn closing_latents(&self, clip: &[Frame], k: usize) -> Result<Tensor> {
        let n = 1 + self.temporal_factor() * k;
        let last = clip.last().expect("a clip has frames");
        let frames: Vec<Frame> = clip
            .iter()
            .chain(std::iter::repeat(last))
            .take(n)
            .cloned()
            .collect();
        Ok(self.encode_frames(&frames)?.narrow(2, 1, k)?)
    }
}

/// Guidance 1 is `v_cond` alone: the unconditional branch is not run.
fn uses_negative_prompt(guidance: f64) -> bool {
    guidance != 1.0
}

/// Appends the words not already in `list`.
fn push_new(list: &mut Vec<String>, words: impl IntoIterator<Item = String>) {
    for w in words {
        if !list.contains(&w) {
            list.push(w);
        }
    }
}

/// Scales `frame` to cover `width`×`height` (keeping its aspect ratio, triangle filter) and crops
/// the centre: the rule for conditioning inputs of another size.
pub fn fit_frame(frame: &Frame, width: usize, height: usize) -> Result<Frame> {
    let (fw, fh) = (frame.width(), frame.height());
    let (w, h) = (width as u32, height as u32);
    if (fw, fh) == (w, h) {
        return Ok(frame.clone());
    }
    let scale = f64::max(w as f64 / fw as f64, h as f64 / fh as f64);
    let sw = ((fw as f64 * scale).round() as u32).max(w);
    let sh = ((fh as f64 * scale).round() as u32).max(h);
    let image = image::RgbImage::from_raw(fw, fh, frame.data().to_vec())
        .ok_or_else(|| request_error("frame buffer does not match its size"))?;
    let scaled = image::imageops::resize(&image, sw, sh, image::imageops::FilterType::Triangle);
    let cropped = image::imageops::crop_imm(&scaled, (sw - w) / 2, (sh - h) / 2, w, h).to_image();
    Ok(Frame::from_rgb(w, h, cropped.into_raw())?)
}

/// Frames (one size) → `[1, 3, n, H, W]` f32 in [-1, 1], the VAE's input.
fn frames_to_tensor(frames: &[Frame], device: &Device) -> Result<Tensor> {
    let first = frames
        .first()
        .ok_or_else(|| request_error("no frames to encode"))?;
    let (w, h) = (first.width() as usize, first.height() as usize);
    let mut bytes = Vec::with_capacity(frames.len() * w * h * 3);
    for f in frames {
        bytes.extend_from_slice(f.data());
    }
    let x = Tensor::from_vec(bytes, (frames.len(), h, w, 3), device)?
        .to_dtype(DType::F32)?
        .permute((3, 0, 1, 2))?
        .unsqueeze(0)?
        .affine(2.0 / 255.0, -1.0)?;
    Ok(x.contiguous()?)
}

/// Decoded video `[1, 3, n, H, W]` in [-1, 1] → frames, rounding to 8 bits.
fn tensor_to_frames(video: &Tensor) -> Result<Vec<Frame>> {
    let (_, _, n, h, w) = video.dims5()?;
    let bytes = video
        .to_dtype(DType::F32)?
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        .affine(127.5, 127.5)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let len = h * w * 3;
    (0..n)
        .map(|i| {
            Ok(Frame::from_rgb(
                w as u32,
                h as u32,
                bytes[i * len..(i + 1) * len].to_vec(),
            )?)
        })
        .collect()
}
