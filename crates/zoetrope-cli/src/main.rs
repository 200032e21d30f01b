//! The `zoetrope` command: a thin layer of argument parsing and presentation over the libraries.

mod args;
mod eval_model;
mod generate;
mod progress;
mod serve_cmd;
mod train_cmd;
mod world_cmd;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// See the workspace Cargo.toml: glibc's allocator made a third to half of every tensor-heavy
/// step system time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Generate(generate::GenerateArgs),
    /// The procedural world: sample clips, write datasets, parse captions.
    #[command(subcommand)]
    World(world_cmd::WorldCommand),
    /// Score videos, or a world model's clips, against their prompts.
    #[command(subcommand)]
    Eval(world_cmd::EvalCommand),
    /// Train the built-in world model: `train vae`, then `train dit`, then `train export`.
    #[command(subcommand)]
    Train(train_cmd::TrainCommand),
    /// Serve the OpenAI Videos API, a job queue and a web page (see the README's server part).
    Serve(serve_cmd::ServeArgs),
    /// Run queued jobs from the same data dir / DATABASE_URL as a `zoetrope serve`.
    Worker(serve_cmd::WorkerArgs),
    /// API keys for `zoetrope serve`: create, list, revoke.
    #[command(subcommand)]
    Keys(serve_cmd::KeysCommand),
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::World(cmd) => world_cmd::run_world(cmd),
        Command::Eval(cmd) => world_cmd::run_eval(cmd),
        Command::Strip(args) => strip(args),
        Command::Train(cmd) => train_cmd::run(cmd),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Worker(args) => serve_cmd::worker(args),
        Command::Keys(cmd) => serve_cmd::keys(cmd),
    }
}

fn main() -> ExitCode {
    zoetrope_train::alloc::keep_freed_memory();
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
