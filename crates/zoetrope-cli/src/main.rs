//! The `zoetrope` command: a thin layer of argument parsing and presentation over the libraries.

mod progress;
mod world_cmd;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Text-to-video generation, built the way Sora is built.
#[derive(Parser)]
#[command(name = "zoetrope", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from a text prompt.
    Generate(GenerateArgs),
    /// The procedural world: sample clips, write datasets, parse captions.
    #[command(subcommand)]
    World(world_cmd::WorldCommand),
    /// Score videos against their prompts.
    #[command(subcommand)]
    Eval(world_cmd::EvalCommand),
    /// Make a contact sheet: evenly spaced frames of each video in a row, one row per video.
    Strip(StripArgs),
}

#[derive(Args)]
struct StripArgs {
    /// Videos (or images), one row each.
    #[arg(required = true)]
    videos: Vec<std::path::PathBuf>,
    /// Output image; .png gives a plain still.
    #[arg(short, long, default_value = "strip.png")]
    output: std::path::PathBuf,
    /// Frames per row (first and last included).
    #[arg(long, default_value_t = 8)]
    frames: usize,
}

fn strip(args: StripArgs) -> anyhow::Result<()> {
    const GAP_RGB: [u8; 3] = [255, 255, 255];
    let mut rows = Vec::with_capacity(args.videos.len());
    for path in &args.videos {
        let video = zoetrope_video::read_video(path)?;
        rows.push(zoetrope_video::frame_strip(&video, args.frames, GAP_RGB)?);
    }
    let sheet = zoetrope_video::stack_rows(&rows, GAP_RGB)?;
    // A one-frame clip written as .png is a plain still image.
    let still = zoetrope_video::Video::new(vec![sheet], 1.0)?;
    zoetrope_video::write_video(&args.output, &still)?;
    Ok(())
}

#[derive(Args)]
struct GenerateArgs {
    /// What the video should show, e.g. "a red ball bounces to the right on a black background".
    prompt: String,
    /// Output file; the format follows the extension (.mp4, .gif, .png, .y4m, or a folder/).
    #[arg(short, long, default_value = "out.mp4")]
    output: std::path::PathBuf,
    /// Model folder to load instead of the built-in model.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Frame size as WIDTHxHEIGHT.
    #[arg(long, value_parser = world_cmd::parse_size)]
    size: Option<(u32, u32)>,
    /// Number of frames.
    #[arg(long)]
    frames: Option<usize>,
    /// Frames per second of the output.
    #[arg(long)]
    fps: Option<f64>,
    /// Denoising steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    guidance: Option<f64>,
    /// Random seed for the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    // Validate what can be validated now, so the user learns about bad input before anything else.
    zoetrope_video::Format::from_path(&args.output)?;
    if let Some(model) = &args.model {
        if !model.exists() {
            anyhow::bail!(
                "model folder {} does not exist: pass the folder that holds the model's config and weights",
                model.display()
            );
        }
    }
    anyhow::bail!(
        "no video model is available in this build yet: the built-in world model and Wan 2.1 loading are \
         still being written. Meanwhile `zoetrope world sample -o clip.mp4` renders a ground-truth clip \
         of the procedural world"
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::World(cmd) => world_cmd::run_world(cmd),
        Command::Eval(cmd) => world_cmd::run_eval(cmd),
        Command::Strip(args) => strip(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, no backtrace.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
