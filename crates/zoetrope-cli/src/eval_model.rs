//! `zoetrope eval model`: one clip per prompt from a world model, each scored against its prompt
//! by the world's evaluator; prints the per-check summary and the time per clip. `--reference`
//! runs the same command on the ground truth (each prompt's scene rendered) or on an untrained
//! model (the same VAE, a freshly initialised text encoder and DiT), so the three read side by
//! side. The loop itself is `zoetrope_models::world::score`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use serde::Serialize;
use zoetrope_engine::Job;
use zoetrope_models::world::model::{SamplingDefaults, WorldModel, WorldModelManifest};
use zoetrope_models::world::pipeline::{Stage, WorldPipeline};
use zoetrope_models::world::score::{
    score_ground_truth, score_prompts, score_reconstructed, BoxError, PromptScores, ScoreObserver,
    ScoredClip,
};
use zoetrope_world::{read_prompt_list, RenderOptions, HELDOUT_PROMPT_FILE};

use crate::args::{CacheArgs, Sampler};
use crate::progress;

/// Seed of the untrained reference's fresh weights: the same baseline on every run.
const UNTRAINED_INIT_SEED: u64 = 0;
/// Where `--save-dir` lists its clips (the format `zoetrope eval world --batch` reads).
const SAVED_LIST: &str = "prompts.jsonl";

/// What makes the clips that are scored.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reference {
    /// The model.
    Model,
    /// Each prompt's scene rendered by the world, seeded as the model's clips are: the best
    /// score the evaluator gives (needs no weights; size, frames and fps still default to the
    /// model's).
    GroundTruth,
    /// The model's VAE with a freshly initialised text encoder and DiT (fixed seed): where
    /// training starts.
    Untrained,
    /// The ground truth encoded and decoded by the model's VAE: the best a DiT on this VAE's
    /// latents could score.
    Reconstructed,
}

impl Reference {
    fn name(self) -> &'static str {
        match self {
            Reference::Model => "model",
            Reference::GroundTruth => "ground truth",
            Reference::Untrained => "untrained",
            Reference::Reconstructed => "ground truth through the VAE",
        }
    }
}

#[derive(Args)]
pub struct EvalModelArgs {
    /// Prompt file, one prompt a line, `#` comments (default: the built-in held-out prompts,
    /// crates/zoetrope-world/data/heldout_prompts.txt).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// World model folder (model.json + model.safetensors; default: the built-in model).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Frame size as WIDTHxHEIGHT (default: the model's).
    #[arg(long, value_parser = crate::args::parse_size)]
    size: Option<(u32, u32)>,
    /// Frames per clip (default: the model's).
    #[arg(long)]
    frames: Option<usize>,
    /// Denoising steps (default: the model's; not used by the ground truth).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns it off (default: the model's; not used by the
    /// ground truth).
    #[arg(long)]
    guidance: Option<f64>,
    /// Timestep shift of the sampling schedule (default: the model's).
    #[arg(long)]
    shift: Option<f64>,
    /// Sampler (default: the model's).
    #[arg(long, value_enum)]
    sampler: Option<Sampler>,
    /// Seed of the first prompt's clip; prompt i gets seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    device: crate::args::DeviceArg,
    /// Score only the first N prompts.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Write each clip here as NNN.mp4 (from 000) with prompts.jsonl listing video, prompt and
    /// seed (readable by `zoetrope eval world --batch`).
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
    /// Print the full report (settings, summary, every clip's checks and time) as JSON on
    /// standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// Score the model, the ground truth, or an untrained model.
    #[arg(long, value_enum, default_value_t = Reference::Model)]
    reference: Reference,
}

/// What the clips were made with, as shown and as written to JSON.
#[derive(Serialize)]
struct Settings {
    reference: &'static str,
    model: String,
    prompts: String,
    width: usize,
    height: usize,
    frames: usize,
    fps: f64,
    /// `None` when nothing was sampled (the ground truth, with or without the VAE).
    steps: Option<usize>,
    guidance: Option<f64>,
    shift: Option<f64>,
    sampler: Option<&'static str>,
    seed: u64,
    /// The step cache's threshold, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_steps: Option<f64>,
}

impl Settings {
    fn line(&self, clips: usize) -> String {
        let mut s = format!(
            "{}: {} | {clips} prompts from {} | {}x{}, {} frames at {} fps",
            self.reference,
            self.model,
            self.prompts,
            self.width,
            self.height,
            self.frames,
            self.fps
        );
        if let (Some(steps), Some(g)) = (self.steps, self.guidance) {
            s.push_str(&format!(" | {steps} steps, guidance {g}"));
        }
        if let (Some(shift), Some(sampler)) = (self.shift, self.sampler) {
            s.push_str(&format!(", {sampler}, shift {shift}"));
        }
        if let Some(t) = self.cache_steps {
            s.push_str(&format!(", step cache {t}"));
        }
        let last = self.seed.wrapping_add(clips.saturating_sub(1) as u64);
        s.push_str(&format!(" | seeds {}..={last}", self.seed));
        s
    }
}

#[derive(Serialize)]
struct JsonClip<'a> {
    index: usize,
    prompt: &'a str,
    seed: u64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    video: Option<String>,
    report: &'a zoetrope_world::EvalReport,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    settings: &'a Settings,
    summary: &'a zoetrope_world::BatchSummary,
    median_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_cache: Option<&'a zoetrope_models::step_cache::StepCacheReport>,
    clips: Vec<JsonClip<'a>>,
}

/// Shows progress and writes clips to `--save-dir`.
struct Observer {
    bar: ProgressBar,
    save: Option<(PathBuf, BufWriter<File>)>,
}

fn clip_name(index: usize) -> String {
    format!("{index:03}.mp4")
}

impl ScoreObserver for Observer {
    fn stage(&mut self, _index: usize, stage: Stage) {
        match stage {
            Stage::EncodingText => self.bar.set_message("text"),
            Stage::EncodingFrames => self.bar.set_message("encoding"),
            Stage::Denoising { step, steps } => {
                self.bar.set_message(format!("step {step}/{steps}"));
            }
            Stage::Decoding { .. } => self.bar.set_message("decoding"),
        }
    }

    fn clip(&mut self, clip: &ScoredClip) -> Result<(), BoxError> {
        if let Some((dir, list)) = &mut self.save {
            let name = clip_name(clip.index);
            let path = dir.join(&name);
            zoetrope_video::write_video(&path, clip.video)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let line = serde_json::json!({"video": name, "prompt": clip.prompt, "seed": clip.seed});
            writeln!(list, "{line}")
                .and_then(|()| list.flush())
                .map_err(|e| format!("cannot write {}: {e}", dir.join(SAVED_LIST).display()))?;
        }
        self.bar.inc(1);
        Ok(())
    }
}

/// The prompts to score and where they came from.
fn read_prompts(args: &EvalModelArgs) -> anyhow::Result<(Vec<String>, String)> {
    let (text, source) = match &args.prompts {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the prompt file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (HELDOUT_PROMPT_FILE.to_string(), "held-out".to_string()),
    };
    let mut prompts = read_prompt_list(&text);
    if prompts.is_empty() {
        bail!("{source} has no prompts (one a line; lines starting with # are comments)");
    }
    if let Some(limit) = args.limit {
        if limit == 0 {
            bail!("--limit must be at least 1");
        }
        prompts.truncate(limit);
    }
    Ok((prompts, source))
}

/// The model's sampling defaults without loading its weights (for the ground truth): from
/// `--model`'s manifest, the built-in model's, or the stock defaults when this build has none
/// (then `None`).
fn defaults_only(dir: Option<&Path>) -> anyhow::Result<Option<SamplingDefaults>> {
    let text = match dir {
        Some(dir) => {
            let path = dir.join(zoetrope_models::world::model::MANIFEST_FILE);
            std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read the world-model manifest {}", path.display())
            })?
        }
        None => match zoetrope_models::world::builtin() {
            Some((manifest, _)) => manifest.to_string(),
            None => return Ok(None),
        },
    };
    Ok(Some(WorldModelManifest::from_json(&text)?.defaults))
}

/// `model`'s VAE with a text encoder and DiT freshly initialised from [`UNTRAINED_INIT_SEED`].
fn untrained(model: WorldModel, dtype: DType, device: &Device) -> anyhow::Result<WorldModel> {
    let varmap = VarMap::new();
    let vb = zoetrope_train::init::SeededVarMap::var_builder(&varmap, UNTRAINED_INIT_SEED, device);
    // Built in a fixed order (text, then DiT), so the seed fixes every weight.
    zoetrope_models::world::text::WorldTextEncoder::new(&model.manifest.text, vb.pp("text"))?;
    zoetrope_models::world::dit::WorldDit::new(&model.manifest.dit, vb.pp("dit"))?;
    // Plain tensors, not variables: inference then takes candle's fused kernels.
    let tensors = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(model.with_text_and_dit_from(VarBuilder::from_tensors(tensors, dtype, device))?)
}

pub fn run(args: EvalModelArgs) -> anyhow::Result<()> {
    let (prompts, prompt_source) = read_prompts(&args)?;
    let model_name = args
        .model
        .as_ref()
        .map_or("built-in".to_string(), |d| d.display().to_string());
    let save = match &args.save_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --save-dir {}", dir.display()))?;
            let list = dir.join(SAVED_LIST);
            let file =
                File::create(&list).with_context(|| format!("cannot write {}", list.display()))?;
            Some((dir.clone(), BufWriter::new(file)))
        }
        None => None,
    };
    let mut observer = Observer {
        bar: progress::bar(prompts.len() as u64, "clips"),
        save,
    };

    let (settings, scores) = if args.reference == Reference::GroundTruth {
        let (d, model_name) = match defaults_only(args.model.as_deref())? {
            Some(d) => (d, model_name),
            None => (
                SamplingDefaults::default(),
                "stock defaults (no built-in model)".to_string(),
            ),
        };
        let (width, height) = args
            .size
            .map_or((d.width, d.height), |(w, h)| (w as usize, h as usize));
        let settings = Settings {
            reference: args.reference.name(),
            model: model_name,
            prompts: prompt_source,
            width,
            height,
            frames: args.frames.unwrap_or(d.frames),
            fps: d.fps,
            steps: None,
            guidance: None,
            shift: None,
            sampler: None,
            seed: args.seed,
            cache_steps: None,
        };
        let opts = RenderOptions {
            width: width as u32,
            height: height as u32,
            frames: settings.frames,
            fps: settings.fps,
        };
        observer.bar.set_message("rendering");
        let scores = score_ground_truth(&prompts, args.seed, &opts, &mut observer)?;
        (settings, scores)
    } else {
        let device = args.device.device.open()?;
        let dtype = DType::F32;
        let model = progress::with_spinner("loading model", || match &args.model {
            Some(dir) => WorldModel::load_dir(dir, dtype, &device),
            None => WorldModel::builtin(dtype, &device),
        })?;
        let model = match args.reference {
            Reference::Untrained => untrained(model, dtype, &device)?,
            _ => model,
        };
        let pipe = WorldPipeline::new(model);
        let mut req = pipe.request("")?;
        Job {
            size: args.size.map(|(w, h)| (w as usize, h as usize)),
            frames: args.frames,
            steps: args.steps,
            guidance: args.guidance,
            shift: args.shift,
            sampler: args.sampler.map(Into::into),
            seed: args.seed,
            cache: args.cache.settings(),
            ..Job::default()
        }
        .apply_to_world(&mut req);
        pipe.check(&req)?;
        warn_unknown_words(&pipe, &prompts);
        let sampled = args.reference != Reference::Reconstructed;
        let settings = Settings {
            reference: args.reference.name(),
            model: model_name,
            prompts: prompt_source,
            width: req.width,
            height: req.height,
            frames: req.frames,
            fps: req.fps,
            steps: sampled.then_some(req.steps),
            guidance: sampled.then_some(req.guidance),
            shift: sampled.then_some(req.shift),
            sampler: sampled.then_some(req.sampler.name()),
            seed: req.seed,
            cache_steps: req.cache_steps.filter(|_| sampled),
        };
        let scores = if sampled {
            score_prompts(&pipe, &prompts, &req, &mut observer)?
        } else {
            let opts = RenderOptions {
                width: req.width as u32,
                height: req.height as u32,
                frames: req.frames,
                fps: req.fps,
            };
            score_reconstructed(&pipe, &prompts, req.seed, &opts, &mut observer)?
        };
        (settings, scores)
    };
    observer.bar.finish_and_clear();
    if let Some(dir) = &args.save_dir {
        eprintln!(
            "wrote {} clips and {SAVED_LIST} to {}",
            prompts.len(),
            dir.display()
        );
    }
    if args.json {
        print_json(&settings, &scores, args.save_dir.is_some())
    } else {
        print_table(&settings, &scores);
        Ok(())
    }
}

/// One warning for all the prompts' words the model does not know (the held-out prompts use
/// only words that training captions use, so a trained model knows them all).
fn warn_unknown_words(pipe: &WorldPipeline, prompts: &[String]) {
    let mut unknown: Vec<String> = vec![];
    for p in prompts {
        for w in pipe.unknown_words(p) {
            if !unknown.contains(&w) {
                unknown.push(w);
            }
        }
    }
    if let Some(warning) = pipe.model().tokenizer.unknown_words_warning(&unknown) {
        eprintln!("warning: {warning}");
    }
}

fn print_table(settings: &Settings, scores: &PromptScores) {
    println!("{}", settings.line(scores.seconds.len()));
    print!("{}", scores.batch.summary.table());
    if let Some(median) = scores.median_seconds() {
        let min = scores.seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = scores.seconds.iter().copied().fold(0.0, f64::max);
        let what = if settings.steps.is_some() {
            "generating"
        } else {
            "rendering"
        };
        println!(
            "time {what}: median {} per clip (min {}, max {}, total {})",
            duration(median),
            duration(min),
            duration(max),
            duration(scores.seconds.iter().sum::<f64>())
        );
    }
    if let Some(report) = &scores.step_cache {
        println!("step cache: {report} (all clips)");
    }
}

/// Seconds for people: ms below a tenth of a second (rendering a clip takes a few ms).
fn duration(secs: f64) -> String {
    if secs < 0.1 {
        format!("{:.1} ms", 1e3 * secs)
    } else {
        format!("{secs:.2} s")
    }
}

fn print_json(settings: &Settings, scores: &PromptScores, saved: bool) -> anyhow::Result<()> {
    let clips = scores
        .batch
        .reports
        .iter()
        .enumerate()
        .map(|(i, report)| JsonClip {
            index: i,
            prompt: report.prompt.as_deref().unwrap_or_default(),
            seed: scores.seeds[i],
            seconds: scores.seconds[i],
            video: saved.then(|| clip_name(i)),
            report,
        })
        .collect();
    let out = JsonOutput {
        settings,
        summary: &scores.batch.summary,
        median_seconds: scores.median_seconds(),
        step_cache: scores.step_cache.as_ref(),
        clips,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    Ok(())
}
