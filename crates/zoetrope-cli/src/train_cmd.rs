//! `zoetrope train`: the VAE, then the DiT + text encoder, then export of a model directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use zoetrope_models::world::dit::{TimestepSampler, WorldDitConfig};
use zoetrope_models::world::model::{SamplingDefaults, WorldModel};
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_models::world::score::score_prompts;
use zoetrope_models::world::text::WorldTextConfig;
use zoetrope_models::world::vae::WorldVaeConfig;
use zoetrope_train::dit::{train_dit, DitResumeChanges, DitTrainConfig, EvalHook, NewDitRun};
use zoetrope_train::export::export_model;
use zoetrope_train::vae::{train_vae, VaeTrainConfig};
use zoetrope_train::{RunDir, TrainEvent};
use zoetrope_world::dataset::sample_training_clip;

use crate::progress;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train the world VAE (video compression network) on clips rendered on the fly.
    Vae(VaeArgs),
    /// Train the diffusion transformer and text encoder on latents of a trained VAE.
    Dit(DitArgs),
    /// Write a VAE run and a DiT run as a model directory (model.safetensors + model.json).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct DitArgs {
    /// Run directory: checkpoint, state, log and latent cache go here.
    #[arg(long)]
    out: PathBuf,
    /// The VAE whose weights make the latents: a VAE run (its averaged weights) or a world-model
    /// folder (model.json + model.safetensors, e.g. crates/zoetrope-models/weights/world).
    #[arg(long, required_unless_present = "resume")]
    vae: Option<PathBuf>,
    /// Continue the run saved in --out (its settings are kept, except what --steps and
    /// --timestep-shift change from the resumed step on).
    #[arg(long)]
    resume: bool,
    /// Total training steps (the learning-rate schedule runs over them; on --resume, its
    /// decay is stretched to the new total).
    #[arg(long)]
    steps: Option<usize>,
    /// Stop this session after this step (with a checkpoint), keeping the schedule of --steps;
    /// --resume continues.
    #[arg(long)]
    stop_at: Option<usize>,
    /// Timestep shift of the training times, `t' = s·t / (1 + (s − 1)·t)`: above 1 trains
    /// more at high noise, where the text decides the scene (default: the run's, 3 for a new
    /// run).
    #[arg(long)]
    timestep_shift: Option<f64>,
    /// How training times are drawn before the shift: logit-normal (most steps near the middle)
    /// or uniform (as many steps near t = 0, where detail is drawn, as anywhere). A new run's
    /// setting (default logit-normal); a resumed run keeps its own.
    #[arg(long, value_enum, conflicts_with = "resume")]
    timesteps: Option<TimestepDraw>,
    /// Loss weight of latent cells that hold part of an object, relative to the flat background
    /// (objects cover a few percent of a clip; with weight 1 most of the loss is background). A
    /// new run's setting (default 1); a resumed run keeps its own.
    #[arg(long, conflicts_with = "resume")]
    foreground_weight: Option<f64>,
    /// Clips per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Seed of the initial weights and of the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Upper bound of the latent cache, in chunks of 128 clips.
    #[arg(long)]
    max_chunks: Option<usize>,
    /// DiT shape as JSON (a WorldDitConfig file); the shipped default otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from the averaged weights of another DiT run, or from a world-model folder's DiT
    /// and text encoder (fine-tuning), instead of random ones (same text encoder and width; the
    /// latent scale is the source's); --config may use a finer spacetime patch (e.g. [1, 2, 2]
    /// from [1, 4, 4]), whose patch embedding and output layer are resized from the source's,
    /// and more blocks (the new ones are appended and start as the identity).
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Clips generated and scored at every evaluation (captions of training-distribution
    /// scenes); 0 logs only the validation loss.
    #[arg(long, default_value_t = 6)]
    eval_prompts: usize,
}

/// How a DiT run draws its training times (before the shift).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimestepDraw {
    /// `sigmoid(n)`, `n ~ N(0, 1)`.
    LogitNormal,
    /// Uniform on (0, 1).
    Uniform,
}

impl From<TimestepDraw> for TimestepSampler {
    fn from(d: TimestepDraw) -> Self {
        match d {
            TimestepDraw::LogitNormal => TimestepSampler::default(),
            TimestepDraw::Uniform => TimestepSampler::Uniform,
        }
    }
}

/// Seeds of the scenes whose captions are scored during training.
const TRAIN_EVAL_SEED: u64 = 7_000_000_000;
/// Evaluator checks logged during training.
const CHECKS: [&str; 7] = [
    "background",
    "colour",
    "shape",
    "size",
    "permanence",
    "motion",
    "physics",
];

#[derive(Args)]
pub struct ExportArgs {
    /// The VAE: a VAE run, or a world-model folder whose VAE the DiT run was trained on.
    #[arg(long)]
    vae: PathBuf,
    /// The DiT run.
    #[arg(long)]
    dit: PathBuf,
    /// Output model directory.
    #[arg(short, long)]
    output: PathBuf,
    /// Weight precision: f16 (shipping) or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// A note on how the runs were made (machine, commands), stored in model.json.
    #[arg(long)]
    note: Option<String>,
    /// The classifier-free guidance scale stored in model.json as the model's default: what
    /// `generate` and `eval model` use without --guidance (the best scale depends on the
    /// weights; choose it on training captions, e.g. with `eval model --prompts`).
    #[arg(long, default_value_t = SamplingDefaults::default().guidance)]
    guidance: f64,
}

#[derive(Args)]
pub struct VaeArgs {
    /// Run directory: checkpoint, state and log go here.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run saved in --out (its settings are kept; --steps may raise the total).
    #[arg(long)]
    resume: bool,
    /// Total training steps (the learning-rate schedule runs over them).
    #[arg(long)]
    steps: Option<usize>,
    /// Stop this session after this step (with a checkpoint), keeping the schedule of --steps;
    /// --resume continues.
    #[arg(long)]
    stop_at: Option<usize>,
    /// Clips per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Side of the square training crop.
    #[arg(long, default_value_t = 32)]
    crop: u32,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the initial weights and of the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// VAE shape as JSON (a WorldVaeConfig file); the shipped default otherwise.
    #[arg(long, conflicts_with = "init_from")]
    config: Option<PathBuf>,
    /// Start a new run from the weights (and shape) of a trained VAE: a VAE run (its averaged
    /// weights) or a world-model folder (e.g. crates/zoetrope-models/weights/world). With
    /// --freeze-encoder this polishes a shipped model's decoder without changing its latents.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Train only the decoder, the encoder frozen (with --resume: at the run's averaged weights
    /// from now on; with --init-from: at the source's), so a DiT trained on this VAE's latents
    /// stays valid.
    #[arg(long)]
    freeze_encoder: bool,
    /// Loss weight of foreground pixels (off the clip's background colour) relative to the
    /// background; 1 weighs all pixels alike (new runs only).
    #[arg(long, default_value_t = 6.0)]
    foreground_weight: f64,
}

/// Draws training events as a progress bar with the latest metrics, and prints a line per log,
/// evaluation and checkpoint.
pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub(crate) fn new() -> Self {
        Self { bar: None }
    }

    pub(crate) fn handle(&mut self, event: TrainEvent) {
        let fmt = |m: &[(&str, f64)]| {
            m.iter()
                .map(|(k, v)| format!("{k} {}", short(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match event {
            TrainEvent::Start { step, total } => {
                let bar = progress::bar(total as u64, "train");
                bar.set_position(step as u64);
                self.bar = Some(bar);
            }
            TrainEvent::Step {
                step,
                metrics,
                logged,
                ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step as u64);
                    if logged {
                        bar.println(format!("step {step}: {}", fmt(&metrics)));
                    }
                }
            }
            TrainEvent::Eval { step, metrics } => {
                self.println(format!("eval at step {step}: {}", fmt(&metrics)))
            }
            TrainEvent::Checkpoint { step } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("saved {step}"));
                }
            }
            TrainEvent::Prepare { what, done, total } => match &self.bar {
                Some(bar) if bar.length() == Some(total as u64) => bar.set_position(done as u64),
                _ => {
                    let bar = progress::bar(total as u64, what);
                    bar.set_position(done as u64);
                    self.bar = Some(bar);
                }
            },
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Four significant digits, scientific for very small or large values.
fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Vae(args) => vae(args),
        TrainCommand::Dit(args) => dit(args),
        TrainCommand::Export(args) => export(args),
    }
}

fn vae(args: VaeArgs) -> anyhow::Result<()> {
    let run = RunDir::create(&args.out)?;
    let model = match &args.config {
        Some(p) => WorldVaeConfig::from_file(p)?,
        None => WorldVaeConfig::default(),
    };
    let mut config = VaeTrainConfig {
        seed: args.seed,
        batch: args.batch,
        crop: args.crop,
        freeze_encoder: args.freeze_encoder,
        foreground_weight: args.foreground_weight,
        init_from: args.init_from.as_ref().map(|p| p.display().to_string()),
        ..VaeTrainConfig::default()
    };
    config.optim.lr = args.lr;
    if let Some(s) = args.steps {
        config.steps = s;
    }
    // Cosine decay over the planned run.
    config.optim.decay_until = Some(config.steps);
    let mut reporter = Reporter::new();
    let state = train_vae(
        &run,
        config,
        model,
        args.resume,
        args.steps,
        args.stop_at,
        &mut |e| reporter.handle(e),
    )
    .with_context(|| format!("training the VAE in {}", args.out.display()))?;
    reporter.finish();
    eprintln!(
        "VAE: {} steps in {:.0} s of training; held-out PSNR {}; run in {}",
        state.step,
        state.elapsed_s,
        state
            .eval_psnr
            .map(|p| format!("{p:.2} dB"))
            .unwrap_or_else(|| "not measured".into()),
        args.out.display()
    );
    Ok(())
}

fn dit(args: DitArgs) -> anyhow::Result<()> {
    let run = RunDir::create(&args.out)?;
    let new = if args.resume {
        None
    } else {
        let vae_dir = args
            .vae
            .as_ref()
            .expect("clap requires --vae without --resume");
        let mut config = DitTrainConfig {
            seed: args.seed,
            batch: args.batch,
            ..DitTrainConfig::default()
        };
        config.optim.lr = args.lr;
        if let Some(s) = args.steps {
            config.steps = s;
        }
        if let Some(m) = args.max_chunks {
            config.max_chunks = m;
        }
        if let Some(s) = args.timestep_shift {
            config.shift = s;
        }
        if let Some(d) = args.timesteps {
            config.timesteps = d.into();
        }
        if let Some(w) = args.foreground_weight {
            if !(w.is_finite() && w > 0.0) {
                anyhow::bail!("--foreground-weight must be a positive number, got {w}");
            }
            config.foreground_weight = w;
        }
        config.optim.decay_until = Some(config.steps);
        let dit = match &args.config {
            Some(p) => WorldDitConfig::from_json(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )?,
            None => WorldDitConfig::default(),
        };
        Some((config, dit, vae_dir.clone(), args.init_from.clone()))
    };
    // Every evaluation also generates a few clips from training-distribution captions (not the
    // held-out prompts, which stay for the final evaluation) and scores them.
    let prompts: Vec<String> = (0..args.eval_prompts as u64)
        .map(|i| sample_training_clip(TRAIN_EVAL_SEED + i).1)
        .collect();
    let mut hook =
        |_step: usize, model: WorldModel| -> candle_core::Result<Vec<(&'static str, f64)>> {
            let pipe = WorldPipeline::new(model);
            let mut req = pipe
                .request("")
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            req.seed = 0;
            let scores = score_prompts(&pipe, &prompts, &req, &mut ())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut metrics = vec![("score", scores.mean_total())];
            for c in &scores.batch.summary.checks {
                if let Some(name) = CHECKS.iter().find(|n| **n == c.name) {
                    metrics.push((name, c.mean_score));
                }
            }
            Ok(metrics)
        };
    let hook: Option<&mut EvalHook<'_>> = if prompts.is_empty() {
        None
    } else {
        Some(&mut hook)
    };
    let mut reporter = Reporter::new();
    let state = train_dit(
        &run,
        new.as_ref().map(|(config, dit, vae_run, init)| NewDitRun {
            config: config.clone(),
            dit: dit.clone(),
            text: WorldTextConfig::default(),
            vae: vae_run,
            init_from: init.as_deref(),
        }),
        DitResumeChanges {
            steps: args.steps,
            shift: args.timestep_shift,
        },
        args.stop_at,
        hook,
        &mut |e| reporter.handle(e),
    )
    .with_context(|| format!("training the DiT in {}", args.out.display()))?;
    reporter.finish();
    eprintln!(
        "DiT: {} steps in {:.0} s of training; validation loss {}; run in {}",
        state.step,
        state.elapsed_s,
        state
            .val_loss
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "not measured".into()),
        args.out.display()
    );
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let dtype = match args.dtype.as_str() {
        "f16" => candle_core::DType::F16,
        "f32" => candle_core::DType::F32,
        other => anyhow::bail!("--dtype {other} is not supported: use f16 or f32"),
    };
    if !(args.guidance.is_finite() && args.guidance > 0.0) {
        anyhow::bail!(
            "--guidance {} is not a guidance scale: give a positive number (1 turns guidance off)",
            args.guidance
        );
    }
    let defaults = SamplingDefaults {
        guidance: args.guidance,
        ..SamplingDefaults::default()
    };
    let training = serde_json::json!({
        "note": args.note.unwrap_or_default(),
        "zoetrope_version": env!("CARGO_PKG_VERSION"),
    });
    let manifest = export_model(
        &args.vae,
        &RunDir::create(&args.dit)?,
        &args.output,
        dtype,
        defaults,
        training,
    )
    .with_context(|| format!("exporting to {}", args.output.display()))?;
    let size: u64 = ["model.safetensors", "model.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(args.output.join(f)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "wrote {} ({:.1} MB; DiT {} blocks of width {}, VAE {} latent channels)",
        args.output.display(),
        size as f64 / 1e6,
        manifest.dit.depth,
        manifest.dit.dim,
        manifest.vae.latent_channels
    );
    Ok(())
}
