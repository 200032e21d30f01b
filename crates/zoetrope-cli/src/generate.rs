//! `zoetrope generate`: prompt in, video out, with zoetrope's world model (built in, or
//! `--model DIR` holding `model.json` + `model.safetensors`) or a diffusers-format Wan 2.1 folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use zoetrope_models::step_cache::{
    check_threshold, StepCacheLimits, DEFAULT_MAX_CONSECUTIVE_SKIPS, DEFAULT_WARMUP_STEPS,
};
use zoetrope_models::wan::pipeline::{Stage, WanPipeline, WanRequest};
use zoetrope_models::wan::vae::WanVaeTiling;
use zoetrope_models::world::model::{WorldModel, MANIFEST_FILE};
use zoetrope_models::world::pipeline::{
    self as world, Conditioning, WorldPipeline, WorldRequest, DEFAULT_CONTEXT_LATENTS,
    DEFAULT_EDIT_STRENGTH,
};
use zoetrope_sampling::SamplerKind;
use zoetrope_video::{Format, Frame, Video};

use crate::progress;

/// Output file when `-o` is left out.
const DEFAULT_OUTPUT: &str = "out.mp4";
/// Output file when `-o` is left out and the result is a single frame.
const DEFAULT_STILL_OUTPUT: &str = "out.png";
/// Wan's frame rate when `--fps` is left out (Wan 2.1 is trained at 16 fps).
const WAN_FPS: f64 = 16.0;

/// The arguments of `zoetrope generate`, boxed: they are many, and the command enum holds each
/// command's arguments by value.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    options: Box<GenerateOptions>,
}

#[derive(Args)]
struct GenerateOptions {
    /// What the video should show, e.g. "a red ball bounces to the right on a black background".
    prompt: String,
    /// Output file; the format follows the extension (.mp4, .gif, .png, .y4m, a folder/; Wan
    /// also .safetensors for the raw frames: tensor `video`, f32 [frames, 3, H, W] in [0, 1]).
    /// Default out.mp4, or out.png for a single frame.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Model folder to load instead of the built-in world model: a zoetrope world model
    /// (model.json + model.safetensors) or a diffusers-format Wan 2.1 folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// What the video should not show (used with --guidance other than 1).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Frame size as WIDTHxHEIGHT (default: the model's; with an input image or clip, its size
    /// when allowed. Wan: multiples of 16, default 832x480).
    #[arg(long, value_parser = crate::world_cmd::parse_size)]
    size: Option<(u32, u32)>,
    /// Number of frames, 1 + f·k for the model's temporal compression f (Wan: 4k+1) (default:
    /// the model's; Wan 81; with --edit, as much of the clip as fits).
    #[arg(long)]
    frames: Option<usize>,
    /// Frames per second of the output (default: the model's; Wan 16).
    #[arg(long)]
    fps: Option<f64>,
    /// Denoising steps (default: the model's; Wan 50).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns guidance off (default: the model's; Wan 5).
    #[arg(long)]
    guidance: Option<f64>,
    /// Start from this image: image→video (world model). With --loop, the loop's first frame.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["extend", "connect", "edit"])]
    image: Option<PathBuf>,
    /// Continue this clip: its last frames open the new clip; the output is the clip followed by
    /// the new frames (world model).
    #[arg(long, value_name = "VIDEO", conflicts_with_all = ["connect", "edit", "loop"])]
    extend: Option<PathBuf>,
    /// With --extend: generate what leads up to the clip instead (output: new frames, then the
    /// clip).
    #[arg(long, requires = "extend")]
    backward: bool,
    /// A seamless loop: the clip ends where it starts (world model; with --image, on that image).
    #[arg(id = "loop", long = "loop", conflicts_with_all = ["connect", "edit"])]
    loop_: bool,
    /// Join two clips with generated frames: A's last frames open the new clip and B's first
    /// frames close it; the output is A, the new frames, then B (world model).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "edit")]
    connect: Option<Vec<PathBuf>>,
    /// Redo this clip with the prompt (video→video, SDEdit; world model).
    #[arg(long, value_name = "VIDEO")]
    edit: Option<PathBuf>,
    // The help is built from the constant so that the default shown is the one used.
    #[arg(long, requires = "edit", help = format!(
        "With --edit: how much may change, in (0, 1]: the noise level sampling starts from \
         (1 keeps nothing of the clip) [default: {DEFAULT_EDIT_STRENGTH}]"
    ))]
    strength: Option<f64>,
    #[arg(long, help = format!(
        "With --extend or --connect: latent frames taken from each clip (the first stands for \
         1 frame, each further one for 4) [default: {DEFAULT_CONTEXT_LATENTS}]"
    ))]
    context: Option<usize>,
    /// Transformer weights from one .safetensors file (original Wan / ComfyUI key names or
    /// diffusers names) instead of the model folder's transformer/ (Wan).
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// Decode the VAE in overlapping 256-pixel tiles: less memory for large frames (Wan).
    #[arg(long)]
    tile_vae: bool,
    /// Random seed for the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    cache: CacheArgs,
    /// Start from this noise instead of seeded noise: a .safetensors file with tensor `latents`
    /// (f32, [1, C, T, h, w]), e.g. to compare exactly with a reference run (Wan).
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Sampler (default: the model's; Wan: the folder's scheduler).
    #[arg(long, value_enum)]
    sampler: Option<Sampler>,
    /// Timestep shift (default: the model's; Wan: the folder's scheduler).
    #[arg(long)]
    shift: Option<f64>,
    /// Text tokens the prompt is padded to (Wan; default 512). Wan's cross-attention is
    /// unmasked, so this changes results: keep the reference's 512 unless matching a run that
    /// used another length.
    #[arg(long, hide_short_help = true)]
    text_length: Option<usize>,
    /// Compute dtype of the model (Wan: of the transformer and text encoder; its VAE runs in
    /// f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Sampler {
    /// Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler).
    Euler,
    /// UniPC multistep in flow-prediction mode (Wan's default).
    Unipc,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

impl From<Sampler> for SamplerKind {
    fn from(s: Sampler) -> Self {
        match s {
            Sampler::Euler => SamplerKind::Euler,
            Sampler::Unipc => SamplerKind::UniPc,
        }
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Which model family a run uses.
enum Family<'a> {
    /// zoetrope's world model: the built-in one, or a model folder.
    World(Option<&'a Path>),
    /// A diffusers-format Wan 2.1 folder.
    Wan(&'a Path),
}

/// A world-model folder is one whose `model.json` says so; anything else with a
/// `model_index.json` is taken for a Wan folder.
fn family(model: Option<&Path>) -> anyhow::Result<Family<'_>> {
    let Some(dir) = model else {
        return Ok(Family::World(None));
    };
    let manifest = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok();
    let format = manifest
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json.get("format")?.as_str().map(str::to_string));
    if format.as_deref() == Some(zoetrope_models::world::model::FORMAT) {
        return Ok(Family::World(Some(dir)));
    }
    if dir.join("model_index.json").is_file() {
        return Ok(Family::Wan(dir));
    }
    bail!(
        "{} is not a model folder: expected a zoetrope world model ({MANIFEST_FILE} + \
         model.safetensors) or a diffusers-format Wan 2.1 folder with model_index.json",
        dir.display()
    );
}

/// The first flag given that only the world model takes.
fn world_only_flag(args: &GenerateOptions) -> Option<&'static str> {
    [
        (args.image.is_some(), "--image"),
        (args.extend.is_some(), "--extend"),
        (args.loop_, "--loop"),
        (args.connect.is_some(), "--connect"),
        (args.edit.is_some(), "--edit"),
        (args.context.is_some(), "--context"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

/// The first flag given that only Wan takes.
fn wan_only_flag(args: &GenerateOptions) -> Option<&'static str> {
    [
        (args.transformer.is_some(), "--transformer"),
        (args.tile_vae, "--tile-vae"),
        (args.latents.is_some(), "--latents"),
        (args.text_length.is_some(), "--text-length"),
        (
            args.output.as_deref().is_some_and(is_safetensors),
            "raw .safetensors output",
        ),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let args = *args.options;
    // Check what costs nothing before loading anything, so a typo costs nothing.
    if let Some(output) = &args.output {
        if !is_safetensors(output) {
            Format::from_path(output).context("or use .safetensors for raw frames (Wan)")?;
        }
    }
    if let Some(fps) = args.fps {
        if !(fps.is_finite() && fps > 0.0) {
            bail!("--fps must be a positive number, got {fps}");
        }
    }
    match family(args.model.as_deref())? {
        Family::World(dir) => {
            if let Some(flag) = wan_only_flag(&args) {
                bail!("{flag} applies to Wan 2.1 folders only, not to zoetrope's world model");
            }
            generate_world(&args, dir)
        }
        Family::Wan(dir) => {
            if let Some(flag) = world_only_flag(&args) {
                bail!(
                    "{flag} needs zoetrope's world model (leave out --model, or pass a world \
                     model folder): Wan 2.1 folders do text→video only"
                );
            }
            generate_wan(&args, dir)
        }
    }
}

/// Reads an input clip, naming the flag it came from on failure.
fn read_clip(path: &Path, flag: &str) -> anyhow::Result<Video> {
    zoetrope_video::read_video(path).with_context(|| format!("cannot read the {flag} clip"))
}

/// The conditioning the flags ask for, with its input files read.
fn read_conditioning(args: &GenerateOptions) -> anyhow::Result<Conditioning> {
    let image: Option<Frame> = match &args.image {
        Some(path) => {
            Some(zoetrope_video::read_image(path).context("cannot read the --image picture")?)
        }
        None => None,
    };
    Ok(if let Some(path) = &args.extend {
        let clip = read_clip(path, "--extend")?;
        if args.backward {
            Conditioning::ExtendBackward(clip)
        } else {
            Conditioning::ExtendForward(clip)
        }
    } else if let Some(paths) = &args.connect {
        Conditioning::Connect {
            first: read_clip(&paths[0], "--connect")?,
            second: read_clip(&paths[1], "--connect")?,
        }
    } else if let Some(path) = &args.edit {
        Conditioning::Edit {
            source: read_clip(path, "--edit")?,
            strength: args.strength.unwrap_or(DEFAULT_EDIT_STRENGTH),
        }
    } else if args.loop_ {
        Conditioning::Loop { first: image }
    } else if let Some(image) = image {
        Conditioning::Image(image)
    } else {
        Conditioning::None
    })
}

/// Step caching (First-Block Cache), shared by `generate` and `eval model`.
#[derive(Args, Clone, Copy)]
pub(crate) struct CacheArgs {
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
    pub fn limits(&self) -> StepCacheLimits {
        StepCacheLimits {
            max_consecutive_skips: self
                .cache_max_skips
                .unwrap_or(DEFAULT_MAX_CONSECUTIVE_SKIPS),
            ..StepCacheLimits::default()
        }
    }
}

fn parse_cache_threshold(s: &str) -> Result<f64, String> {
    let t: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number (try 0.05)"))?;
    check_threshold(t)?;
    Ok(t)
}

/// The sampling flags a world-model request takes from the command line (`generate`, `eval
/// model`); `None` keeps what the request already holds.
pub(crate) struct WorldOverrides {
    pub size: Option<(u32, u32)>,
    pub frames: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub shift: Option<f64>,
    pub sampler: Option<Sampler>,
    pub seed: u64,
    pub cache: CacheArgs,
}

impl WorldOverrides {
    pub fn apply(&self, req: &mut WorldRequest) {
        if let Some((w, h)) = self.size {
            (req.width, req.height) = (w as usize, h as usize);
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
            req.sampler = s.into();
        }
        req.seed = self.seed;
        req.cache_steps = self.cache.cache_steps;
        req.cache_limits = self.cache.limits();
    }
}

/// The request: the model's defaults (sized to fit an input image or clip), then the flags.
fn world_request(
    args: &GenerateOptions,
    pipe: &WorldPipeline,
    conditioning: Conditioning,
) -> anyhow::Result<WorldRequest> {
    let mut req = pipe.request(args.prompt.clone())?;
    req.negative_prompt = args.negative_prompt.clone();
    if let Some((w, h)) = conditioning.input_size() {
        (req.width, req.height) = pipe.size_for_input(w, h);
    }
    if let Conditioning::Edit { source, .. } = &conditioning {
        req.frames = pipe.frames_at_most(source.len());
    }
    WorldOverrides {
        size: args.size,
        frames: args.frames,
        steps: args.steps,
        guidance: args.guidance,
        shift: args.shift,
        sampler: args.sampler,
        seed: args.seed,
        cache: args.cache,
    }
    .apply(&mut req);
    if let Some(fps) = args.fps {
        req.fps = fps;
    }
    req.context_latents = args.context.unwrap_or(DEFAULT_CONTEXT_LATENTS);
    req.conditioning = conditioning;
    Ok(req)
}

fn generate_world(args: &GenerateOptions, dir: Option<&Path>) -> anyhow::Result<()> {
    let conditioning = read_conditioning(args)?;
    let device = Device::Cpu;
    let dtype = args.dtype.dtype();
    let model = progress::with_spinner("loading model", || match dir {
        Some(dir) => WorldModel::load_dir(dir, dtype, &device),
        None => WorldModel::builtin(dtype, &device),
    })?;
    let pipe = WorldPipeline::new(model);
    let req = world_request(args, &pipe, conditioning)?;
    // Check the request before the slow parts.
    pipe.check(&req)?;
    let unknown = pipe.request_unknown_words(&req);
    if let Some(warning) = pipe.model().tokenizer.unknown_words_warning(&unknown) {
        eprintln!("warning: {warning}");
    }

    let bar = progress::bar(req.steps as u64, "text");
    let out = pipe.generate(&req, &mut |stage| match stage {
        world::Stage::EncodingText => bar.set_message("text"),
        world::Stage::EncodingFrames => bar.set_message("encoding"),
        world::Stage::Denoising { step, steps } => {
            bar.set_length(steps as u64);
            bar.set_message("denoising");
            bar.set_position(step as u64);
        }
        world::Stage::Decoding { frame, frames } => {
            bar.set_length(frames as u64);
            bar.set_message("decoding");
            bar.set_position(frame as u64 + 1);
        }
    })?;
    bar.finish_and_clear();
    let video = out.video;
    let output = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(if video.len() == 1 {
            DEFAULT_STILL_OUTPUT
        } else {
            DEFAULT_OUTPUT
        })
    });
    zoetrope_video::write_video(&output, &video)?;
    eprintln!(
        "wrote {} ({} frame{}, {}x{}, {} fps)",
        output.display(),
        video.len(),
        if video.len() == 1 { "" } else { "s" },
        video.width(),
        video.height(),
        video.fps()
    );
    if let Some(report) = out.step_cache {
        eprintln!("step cache: {report}");
    }
    Ok(())
}

fn generate_wan(args: &GenerateOptions, model: &Path) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let mut req = WanRequest::new(args.prompt.clone());
    req.negative_prompt = args.negative_prompt.clone();
    if let Some((w, h)) = args.size {
        (req.width, req.height) = (w as usize, h as usize);
    }
    if let Some(f) = args.frames {
        req.frames = f;
    }
    if let Some(s) = args.steps {
        req.steps = s;
    }
    if let Some(g) = args.guidance {
        req.guidance = g;
    }
    req.seed = args.seed;
    req.shift = args.shift;
    req.sampler = args.sampler.map(SamplerKind::from);
    req.cache_steps = args.cache.cache_steps;
    req.cache_limits = args.cache.limits();
    if let Some(path) = &args.latents {
        req.latents = Some(read_latents(path, &device)?);
    }

    let mut pipe = progress::with_spinner("loading model", || {
        WanPipeline::load_with_transformer(
            model,
            args.transformer.as_deref(),
            args.dtype.dtype(),
            &device,
        )
    })?;
    pipe.set_vae_tiling(args.tile_vae.then(WanVaeTiling::default));
    let text_length = args
        .text_length
        .unwrap_or(zoetrope_models::wan::text::WAN_MAX_SEQUENCE_LENGTH);
    if text_length == 0 {
        bail!("--text-length must be at least 1 (Wan uses 512)");
    }
    pipe.set_max_sequence_length(text_length);
    // Check the request before the slow parts.
    pipe.initial_latents(&req)?;

    let bar = progress::bar(req.steps as u64, "denoising");
    let first_decode = std::cell::Cell::new(true);
    let out = pipe.generate(&req, &mut |stage| match stage {
        Stage::EncodingText => bar.set_message("text"),
        Stage::Denoising { step, .. } => {
            bar.set_message("denoising");
            bar.set_position(step as u64);
        }
        Stage::Decoding { frame, frames } => {
            if first_decode.replace(false) {
                bar.set_length(frames as u64);
            }
            bar.set_message("decoding");
            bar.set_position(frame as u64 + 1);
        }
    })?;
    bar.finish_and_clear();
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT));
    write_output(&output, &out.video, args.fps.unwrap_or(WAN_FPS))?;
    eprintln!("wrote {}", output.display());
    if let Some(report) = out.step_cache {
        eprintln!("step cache: {report}");
    }
    Ok(())
}

fn read_latents(path: &Path, device: &Device) -> anyhow::Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, device).with_context(|| {
        format!(
            "{}: cannot read latents (expected a .safetensors file)",
            path.display()
        )
    })?;
    let Some(latents) = tensors.get("latents") else {
        bail!(
            "{}: no tensor named 'latents' (found: {})",
            path.display(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    if latents.rank() != 5 {
        bail!(
            "{}: tensor 'latents' has shape {:?}; it must be [1, C, T, h, w]",
            path.display(),
            latents.dims()
        );
    }
    Ok(latents.to_dtype(DType::F32)?)
}

/// Writes frames `[F, 3, H, W]` in [0, 1]: raw to .safetensors, otherwise as 8-bit video.
fn write_output(path: &Path, video: &Tensor, fps: f64) -> anyhow::Result<()> {
    if is_safetensors(path) {
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("video".to_string(), video.clone())]),
            path,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(());
    }
    let (f, _, h, w) = video.dims4()?;
    // [F, 3, H, W] → [F, H, W, 3] bytes, rounding as image libraries do.
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
    zoetrope_video::write_video(path, &Video::new(frames, fps)?)?;
    Ok(())
}
