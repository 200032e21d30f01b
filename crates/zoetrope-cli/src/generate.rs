//! `zoetrope generate`: prompt in, video out.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use zoetrope_models::wan::pipeline::{Stage, WanPipeline, WanRequest};
use zoetrope_models::wan::vae::WanVaeTiling;
use zoetrope_sampling::SamplerKind;
use zoetrope_video::{Format, Frame, Video};

use crate::progress;

#[derive(Args)]
pub struct GenerateArgs {
    /// What the video should show, e.g. "a red ball bounces to the right on a black background".
    prompt: String,
    /// Output file; the format follows the extension (.mp4, .gif, .png, .y4m, a folder/, or
    /// .safetensors for the raw frames: tensor `video`, f32 [frames, 3, H, W] in [0, 1]).
    #[arg(short, long, default_value = "out.mp4")]
    output: PathBuf,
    /// Model folder to load instead of the built-in model (a diffusers-format Wan 2.1 folder).
    #[arg(long)]
    model: Option<PathBuf>,
    /// What the video should not show (used with --guidance above 1).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Frame size as WIDTHxHEIGHT (Wan: multiples of 16; default 832x480).
    #[arg(long, value_parser = crate::world_cmd::parse_size)]
    size: Option<(u32, u32)>,
    /// Number of frames (Wan: 4k+1, default 81).
    #[arg(long)]
    frames: Option<usize>,
    /// Frames per second of the output.
    #[arg(long, default_value_t = 16.0)]
    fps: f64,
    /// Denoising steps (Wan default 50).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns guidance off (Wan default 5).
    #[arg(long)]
    guidance: Option<f64>,
    /// Transformer weights from one .safetensors file (original Wan / ComfyUI key names or
    /// diffusers names) instead of the model folder's transformer/.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// Decode the VAE in overlapping 256-pixel tiles: less memory for large frames.
    #[arg(long)]
    tile_vae: bool,
    /// Random seed for the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from this noise instead of seeded noise: a .safetensors file with tensor `latents`
    /// (f32, [1, C, T, h, w]), e.g. to compare exactly with a reference run.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Sampler, overriding the model folder's scheduler.
    #[arg(long, value_enum)]
    sampler: Option<Sampler>,
    /// Timestep shift, overriding the model folder's scheduler.
    #[arg(long)]
    shift: Option<f64>,
    /// Text tokens the prompt is padded to. Wan's cross-attention is unmasked, so this changes
    /// results: keep the reference's 512 unless matching a run that used another length.
    #[arg(long, default_value_t = zoetrope_models::wan::text::WAN_MAX_SEQUENCE_LENGTH, hide_short_help = true)]
    text_length: usize,
    /// Compute dtype of the transformer and text encoder (the VAE runs in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sampler {
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

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Check the output before loading anything, so a typo costs nothing.
    if !is_safetensors(&args.output) {
        Format::from_path(&args.output).context("or use .safetensors for raw frames")?;
    }
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be a positive number, got {}", args.fps);
    }
    let Some(model) = &args.model else {
        bail!(
            "no built-in video model is available in this build yet (it is being trained): pass \
             --model DIR with a diffusers-format Wan 2.1 folder, or render a ground-truth clip of \
             the procedural world with `zoetrope world sample --prompt \"…\" -o clip.mp4`"
        );
    };
    if !model.join("model_index.json").is_file() {
        bail!(
            "{} is not a model folder: expected a diffusers-format Wan 2.1 folder with model_index.json",
            model.display()
        );
    }
    generate_wan(&args, model)
}

fn generate_wan(args: &GenerateArgs, model: &Path) -> anyhow::Result<()> {
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
    req.sampler = args.sampler.map(|s| match s {
        Sampler::Euler => SamplerKind::Euler,
        Sampler::Unipc => SamplerKind::UniPc,
    });
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
    if args.text_length == 0 {
        bail!("--text-length must be at least 1 (Wan uses 512)");
    }
    pipe.set_max_sequence_length(args.text_length);
    // Check the request before the slow parts.
    pipe.initial_latents(&req)?;

    let bar = progress::bar(req.steps as u64, "denoising");
    let first_decode = std::cell::Cell::new(true);
    let video = pipe.generate(&req, &mut |stage| match stage {
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
    write_output(&args.output, &video, args.fps)?;
    eprintln!("wrote {}", args.output.display());
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
