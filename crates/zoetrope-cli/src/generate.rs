//! `zoetrope generate`: prompt in, video out, with zoetrope's world model (built in, or
//! `--model DIR` holding `model.json` + `model.safetensors`) or a diffusers-format Wan 2.1 folder.
//! The flags become a `zoetrope_engine::Job`; this file only parses and presents.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use zoetrope_engine::{family_of, Event, Family, Job, LoadOptions, Mode, Model, ModelSource};
use zoetrope_models::world::pipeline::{DEFAULT_CONTEXT_LATENTS, DEFAULT_EDIT_STRENGTH};
use zoetrope_video::{Format, Frame, Video};

use crate::args::{CacheArgs, DeviceArg, Dtype, Sampler};
use crate::progress;

/// Output file when `-o` is left out.
const DEFAULT_OUTPUT: &str = "out.mp4";
/// Output file when `-o` is left out and the result is a single frame.
const DEFAULT_STILL_OUTPUT: &str = "out.png";

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
    #[arg(long, value_parser = crate::args::parse_size)]
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
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    #[command(flatten)]
    device: DeviceArg,
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
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
    let source = match &args.model {
        None => ModelSource::Builtin,
        Some(dir) => ModelSource::Dir(dir.clone()),
    };
    let family = match &args.model {
        None => Family::World,
        Some(dir) => family_of(dir)?,
    };
    match family {
        Family::World => {
            if let Some(flag) = wan_only_flag(&args) {
                bail!("{flag} applies to Wan 2.1 folders only, not to zoetrope's world model");
            }
        }
        Family::Wan => {
            if let Some(flag) = world_only_flag(&args) {
                bail!(
                    "{flag} needs zoetrope's world model (leave out --model, or pass a world \
                     model folder): Wan 2.1 folders do text→video only"
                );
            }
        }
    }
    let job = job(&args)?;
    let opts = LoadOptions {
        precision: args.dtype.into(),
        device: args.device.device,
        transformer: args.transformer.clone(),
        tile_vae: args.tile_vae,
        text_length: args.text_length,
    };
    let model = progress::with_spinner("loading model", || Model::load(&source, &opts))?;
    // Check the job before the slow parts.
    model.check(&job)?;
    if let Some(warning) = model.prompt_warning(&job)? {
        eprintln!("warning: {warning}");
    }

    let info = model.info();
    let bar = progress::bar(job.steps.unwrap_or(info.steps) as u64, "text");
    let out = model.run(&job, &mut |event| match event {
        Event::EncodingText => bar.set_message("text"),
        Event::EncodingFrames => bar.set_message("encoding"),
        Event::Denoising { step, steps } => {
            bar.set_length(steps as u64);
            bar.set_message("denoising");
            bar.set_position(step as u64);
        }
        Event::Decoding { frame, frames } => {
            bar.set_length(frames as u64);
            bar.set_message("decoding");
            bar.set_position(frame as u64 + 1);
        }
    })?;
    bar.finish_and_clear();
    let video = &out.video;
    let output = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(if video.len() == 1 {
            DEFAULT_STILL_OUTPUT
        } else {
            DEFAULT_OUTPUT
        })
    });
    match (&out.frames_f32, is_safetensors(&output)) {
        (Some(frames), true) => candle_core::safetensors::save(
            &std::collections::HashMap::from([("video".to_string(), frames.clone())]),
            &output,
        )
        .with_context(|| format!("cannot write {}", output.display()))?,
        _ => zoetrope_video::write_video(&output, video)?,
    }
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

/// Reads an input clip, naming the flag it came from on failure.
fn read_clip(path: &Path, flag: &str) -> anyhow::Result<Video> {
    zoetrope_video::read_video(path).with_context(|| format!("cannot read the {flag} clip"))
}

/// The mode the flags ask for, with its input files read.
fn read_mode(args: &GenerateOptions) -> anyhow::Result<Mode> {
    let image: Option<Frame> = match &args.image {
        Some(path) => {
            Some(zoetrope_video::read_image(path).context("cannot read the --image picture")?)
        }
        None => None,
    };
    Ok(if let Some(path) = &args.extend {
        Mode::Extend {
            clip: read_clip(path, "--extend")?,
            backward: args.backward,
        }
    } else if let Some(paths) = &args.connect {
        Mode::Connect {
            first: read_clip(&paths[0], "--connect")?,
            second: read_clip(&paths[1], "--connect")?,
        }
    } else if let Some(path) = &args.edit {
        Mode::Edit {
            source: read_clip(path, "--edit")?,
            strength: args.strength,
        }
    } else if args.loop_ {
        Mode::Loop { first: image }
    } else if let Some(image) = image {
        Mode::Image(image)
    } else {
        Mode::Text
    })
}

/// The job the flags describe.
fn job(args: &GenerateOptions) -> anyhow::Result<Job> {
    Ok(Job {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        size: args.size.map(|(w, h)| (w as usize, h as usize)),
        frames: args.frames,
        fps: args.fps,
        steps: args.steps,
        guidance: args.guidance,
        shift: args.shift,
        sampler: args.sampler.map(Into::into),
        seed: args.seed,
        cache: args.cache.settings(),
        mode: read_mode(args)?,
        context_latents: args.context,
        latents: args.latents.as_deref().map(read_latents).transpose()?,
    })
}

/// Reads `--latents` on the CPU; the engine moves them to the model's device.
fn read_latents(path: &Path) -> anyhow::Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| {
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
