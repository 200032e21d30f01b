//! `zoetrope world …` and `zoetrope eval …`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use zoetrope_video::{read_video, write_video, Format};
use zoetrope_world::{caption, eval, render, RenderOptions, Scene};

use crate::progress;

/// Frame size, length and rate shared by the commands that render the world.
#[derive(Args, Clone, Copy)]
pub struct ClipArgs {
    /// Frame size as WIDTHxHEIGHT (any aspect ratio; each side 16 to 4096).
    #[arg(long, value_parser = crate::args::parse_size, default_value = "128x128")]
    size: (u32, u32),
    /// Number of frames.
    #[arg(long, default_value_t = 33)]
    frames: usize,
    /// Frames per second.
    #[arg(long, default_value_t = 16.0)]
    fps: f64,
}

impl ClipArgs {
    fn options(&self) -> RenderOptions {
        RenderOptions {
            width: self.size.0,
            height: self.size.1,
            frames: self.frames,
            fps: self.fps,
        }
    }
}

#[derive(Subcommand)]
pub enum WorldCommand {
    /// Render one clip of the world and print its caption.
    Sample {
        /// Seed: the same seed always gives the same scene.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Render this caption's scene instead of a random one (the seed fills in what it leaves open).
        #[arg(long)]
        prompt: Option<String>,
        /// Output file; the format follows the extension (.mp4, .gif, .png, .y4m, or a folder/).
        #[arg(short, long, default_value = "clip.mp4")]
        output: PathBuf,
        #[command(flatten)]
        clip: ClipArgs,
    },
    /// Write many clips plus manifest.jsonl (caption, scene spec and seed of each clip).
    Dataset {
        /// Number of clips.
        #[arg(long)]
        count: usize,
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the first clip; clip i uses seed + i.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Container of each clip: mp4, gif, png (animated), or y4m.
        #[arg(long, default_value = "mp4")]
        format: String,
        /// Draw training scenes: never a held-out combination of colour, shape and motion (see
        /// `zoetrope world heldout`).
        #[arg(long)]
        training: bool,
        #[command(flatten)]
        clip: ClipArgs,
    },
    /// Parse a caption and print the scene it describes, as JSON.
    Parse {
        /// A caption, e.g. "a small red circle rolls right on black".
        caption: String,
    },
    /// Write the held-out prompts (combinations training never shows), one a line with `#`
    /// comments: the file crates/zoetrope-world/data/heldout_prompts.txt.
    Heldout {
        /// Output file; without it the prompts go to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Score videos of the procedural world against their prompts.
    World(EvalWorldArgs),
    /// Generate a clip for each prompt (default: the held-out prompts) with a world model and
    /// score them; `--reference` scores the ground truth or an untrained model the same way.
    Model(crate::eval_model::EvalModelArgs),
}

#[derive(Args)]
pub struct EvalWorldArgs {
    /// The video to score.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    video: Option<PathBuf>,
    /// What the video should show.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// A JSON-lines file of {"video": PATH, "prompt": TEXT} (a dataset's manifest.jsonl also works);
    /// relative paths are taken from the file's folder.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The scene to render and the caption to print: a random scene with its own caption, or the
/// scene a prompt describes (the seed filling in what the prompt leaves open).
fn scene_for(seed: u64, prompt: Option<&str>) -> anyhow::Result<(Scene, String)> {
    match prompt {
        None => Ok(zoetrope_world::dataset::sample_clip(seed)),
        Some(text) => {
            let spec = caption::parse(text)?.resolve(seed)?;
            Ok((Scene::from_spec(&spec, seed)?, text.to_string()))
        }
    }
}

pub fn run_world(cmd: WorldCommand) -> anyhow::Result<()> {
    match cmd {
        WorldCommand::Sample {
            seed,
            prompt,
            output,
            clip,
        } => {
            Format::from_path(&output)?;
            let (scene, caption) = scene_for(seed, prompt.as_deref())?;
            progress::with_spinner("rendering", || {
                render(&scene, &clip.options())
                    .map_err(anyhow::Error::from)
                    .and_then(|video| write_video(&output, &video).map_err(anyhow::Error::from))
            })?;
            println!("{caption}");
            Ok(())
        }
        WorldCommand::Dataset {
            count,
            out,
            seed,
            format,
            training,
            clip,
        } => {
            if count == 0 {
                bail!("--count must be at least 1");
            }
            let ext = format.trim_start_matches('.').to_ascii_lowercase();
            Format::from_path(Path::new(&format!("clip.{ext}")))?;
            let opts = clip.options();
            opts.validate()?;
            let pb = progress::bar(count as u64, "clips");
            let sampler = if training {
                zoetrope_world::dataset::sample_training_clip
            } else {
                zoetrope_world::dataset::sample_clip
            };
            zoetrope_world::dataset::write_dataset_from(
                &out,
                count,
                seed,
                &opts,
                &ext,
                sampler,
                &mut |i| pb.set_position(i as u64),
            )?;
            pb.finish_and_clear();
            eprintln!(
                "wrote {count} clips and manifest.jsonl to {}",
                out.display()
            );
            Ok(())
        }
        WorldCommand::Parse { caption: text } => {
            let query = caption::parse(&text)?;
            println!("{}", serde_json::to_string_pretty(&query)?);
            Ok(())
        }
        WorldCommand::Heldout { output } => {
            let text = zoetrope_world::heldout::heldout_prompt_file();
            match output {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "wrote {} held-out prompts to {}",
                        zoetrope_world::read_prompt_list(&text).len(),
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

pub fn run_eval(cmd: EvalCommand) -> anyhow::Result<()> {
    let args = match cmd {
        EvalCommand::World(args) => args,
        EvalCommand::Model(args) => return crate::eval_model::run(args),
    };
    match (&args.batch, &args.video, &args.prompt) {
        (Some(batch), _, _) => eval_batch(batch, args.json.as_deref()),
        (None, Some(video), Some(prompt)) => {
            let query = caption::parse(prompt)?;
            let mut report = progress::with_spinner("evaluating", || {
                read_video(video).map(|clip| eval::evaluate(&clip, &query))
            })?;
            report.prompt = Some(prompt.clone());
            print!("{}", report.table());
            if let Some(json) = &args.json {
                write_json(json, &report)?;
            }
            Ok(())
        }
        _ => bail!("give a VIDEO and --prompt, or --batch FILE"),
    }
}

#[derive(serde::Deserialize)]
struct BatchLine {
    #[serde(alias = "file")]
    video: PathBuf,
    #[serde(alias = "caption")]
    prompt: String,
}

#[derive(serde::Serialize)]
struct BatchOutput {
    summary: eval::BatchSummary,
    items: Vec<BatchItem>,
}

#[derive(serde::Serialize)]
struct BatchItem {
    video: PathBuf,
    report: eval::EvalReport,
}

fn eval_batch(batch: &Path, json: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(batch)
        .with_context(|| format!("cannot read batch file {}", batch.display()))?;
    let base = batch.parent().unwrap_or(Path::new("."));
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: BatchLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected a JSON object with \"video\" and \"prompt\"",
                batch.display(),
                n + 1
            )
        })?;
        lines.push(item);
    }
    if lines.is_empty() {
        bail!("{} has no entries", batch.display());
    }
    let pb = progress::bar(lines.len() as u64, "videos");
    let mut items = Vec::with_capacity(lines.len());
    for line in lines {
        let path = base.join(&line.video);
        let query = caption::parse(&line.prompt)
            .with_context(|| format!("prompt for {}", path.display()))?;
        let clip = read_video(&path)?;
        let mut report = eval::evaluate(&clip, &query);
        report.prompt = Some(line.prompt);
        items.push(BatchItem {
            video: line.video,
            report,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();

    let reports: Vec<eval::EvalReport> = items.iter().map(|i| i.report.clone()).collect();
    let summary = eval::summarize(&reports);
    print!("{}", summary.table());
    if let Some(json) = json {
        write_json(json, &BatchOutput { summary, items })?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write report {}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}
