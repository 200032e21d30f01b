//! `zoetrope train`: the VAE, then the DiT + text encoder, then export of a model directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use zoetrope_models::world::vae::WorldVaeConfig;
use zoetrope_train::vae::{train_vae, VaeTrainConfig};
use zoetrope_train::{RunDir, TrainEvent};

use crate::progress;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train the world VAE (video compression network) on clips rendered on the fly.
    Vae(VaeArgs),
}

#[derive(Args)]
pub struct VaeArgs {
    /// Run directory: checkpoint, state and log go here.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run saved in --out (its settings are kept; --steps may raise the total).
    #[arg(long)]
    resume: bool,
    /// Total training steps.
    #[arg(long)]
    steps: Option<usize>,
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
    #[arg(long)]
    config: Option<PathBuf>,
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
        ..VaeTrainConfig::default()
    };
    config.optim.lr = args.lr;
    if let Some(s) = args.steps {
        config.steps = s;
    }
    // Cosine decay over the planned run.
    config.optim.decay_until = Some(config.steps);
    let mut reporter = Reporter::new();
    let state = train_vae(&run, config, model, args.resume, args.steps, &mut |e| {
        reporter.handle(e)
    })
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
