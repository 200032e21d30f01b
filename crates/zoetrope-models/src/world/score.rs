//! Scoring a world model with the procedural world's evaluator: one clip per prompt (prompt `i`
//! with seed `seed + i`), each scored against its prompt, then summarised per check.
//!
//! The same loop scores the ground truth — each prompt's scene resolved from the same seed and
//! rendered at the same size, length and frame rate — so a model's numbers can be read against
//! the best the evaluator gives. `zoetrope eval model` runs it, and a training loop can call
//! [`score_prompts`] on a few prompts to watch the scores move.
//!
//! Clips are scored as generated (8-bit frames, no video codec in between); the evaluator's
//! tolerances cover H.264 noise, so a clip written to MP4 and scored again gives nearly the same
//! numbers.

use std::time::Instant;

use serde::Serialize;
use zoetrope_video::Video;
use zoetrope_world::eval::{evaluate, summarize, BatchReport, EvalReport};
use zoetrope_world::{parse, render, ParseError, RenderOptions, Scene, SceneQuery};

use super::pipeline::{Stage, WorldPipeline, WorldPipelineError, WorldRequest};
use crate::step_cache::StepCacheReport;

/// What a clip maker or an observer can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the clip for a job, reporting its stages (see [`score_clips`]).
pub type ClipMaker<'a> = dyn FnMut(&ClipJob, &mut dyn FnMut(Stage)) -> Result<Video, BoxError> + 'a;

/// Errors from scoring; each names the prompt it happened on.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A prompt the evaluator cannot read (so no clip could be scored against it).
    #[error("prompt {} ({prompt:?}) is not a scene the evaluator understands", index + 1)]
    Prompt {
        /// 0-based position in the list.
        index: usize,
        prompt: String,
        #[source]
        source: ParseError,
    },
    /// The request every clip is made from is invalid (size, frames, steps…).
    #[error(transparent)]
    Request(#[from] WorldPipelineError),
    /// The ground truth's render options are invalid.
    #[error(transparent)]
    Render(#[from] zoetrope_world::WorldError),
    /// Making the clip for a prompt failed.
    #[error("making the clip for prompt {} ({prompt:?}) failed", index + 1)]
    Clip {
        index: usize,
        prompt: String,
        #[source]
        source: BoxError,
    },
    /// The observer stopped the run (e.g. it could not save a clip).
    #[error("{0}")]
    Observer(BoxError),
}

/// One clip to make: which prompt, its parsed scene, and the seed it gets.
#[derive(Clone, Copy, Debug)]
pub struct ClipJob<'a> {
    pub index: usize,
    pub prompt: &'a str,
    pub query: &'a SceneQuery,
    pub seed: u64,
}

/// A clip made and scored.
#[derive(Clone, Copy, Debug)]
pub struct ScoredClip<'a> {
    pub index: usize,
    pub prompt: &'a str,
    pub seed: u64,
    pub video: &'a Video,
    pub report: &'a EvalReport,
    /// Seconds spent making the clip (generation or rendering; scoring not included).
    pub seconds: f64,
}

/// Follows a scoring run: progress within a clip, and each clip once scored (to show or save
/// it). `()` ignores everything.
pub trait ScoreObserver {
    /// Clip `index` is at `stage` (model clips only).
    fn stage(&mut self, index: usize, stage: Stage) {
        let _ = (index, stage);
    }

    /// Clip `clip.index` is made and scored; an error stops the run.
    fn clip(&mut self, clip: &ScoredClip) -> Result<(), BoxError> {
        let _ = clip;
        Ok(())
    }
}

impl ScoreObserver for () {}

/// The reports of a run, their summary and how long each clip took to make.
#[derive(Clone, Debug, Serialize)]
pub struct PromptScores {
    /// One report per prompt (with its prompt) and the per-check summary.
    pub batch: BatchReport,
    /// Seed of each clip.
    pub seeds: Vec<u64>,
    /// Seconds to make each clip.
    pub seconds: Vec<f64>,
    /// What the step cache skipped over all clips, when the clips were sampled with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_cache: Option<StepCacheReport>,
}

impl PromptScores {
    /// Median seconds to make a clip (`None` without clips).
    pub fn median_seconds(&self) -> Option<f64> {
        median(&self.seconds)
    }

    /// Mean of the clips' total scores, in [0, 1].
    pub fn mean_total(&self) -> f64 {
        self.batch.summary.mean_total
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// Parses every prompt first (so a typo fails before anything slow runs), then makes clip `i`
/// with seed `seed + i` and scores it against prompt `i`.
pub fn score_clips(
    prompts: &[String],
    seed: u64,
    make: &mut ClipMaker,
    observer: &mut dyn ScoreObserver,
) -> Result<PromptScores, ScoreError> {
    let queries = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| {
            parse(prompt).map_err(|source| ScoreError::Prompt {
                index,
                prompt: prompt.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = prompts.len();
    let (mut reports, mut seeds, mut seconds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (index, (prompt, query)) in prompts.iter().zip(&queries).enumerate() {
        let job = ClipJob {
            index,
            prompt,
            query,
            seed: seed.wrapping_add(index as u64),
        };
        let start = Instant::now();
        let video = make(&job, &mut |stage| observer.stage(index, stage)).map_err(|source| {
            ScoreError::Clip {
                index,
                prompt: prompt.clone(),
                source,
            }
        })?;
        let secs = start.elapsed().as_secs_f64();
        let mut report = evaluate(&video, query);
        report.prompt = Some(prompt.clone());
        observer
            .clip(&ScoredClip {
                index,
                prompt,
                seed: job.seed,
                video: &video,
                report: &report,
                seconds: secs,
            })
            .map_err(ScoreError::Observer)?;
        reports.push(report);
        seeds.push(job.seed);
        seconds.push(secs);
    }
    let summary = summarize(&reports);
    Ok(PromptScores {
        batch: BatchReport { reports, summary },
        seeds,
        seconds,
        step_cache: None,
    })
}

/// Generates one clip per prompt with `pipe` — `template` with its prompt replaced and seed
/// `template.seed + i` — and scores each against its prompt. The template is checked first.
///
/// ```no_run
/// # use zoetrope_models::world::{pipeline::WorldPipeline, score::score_prompts};
/// # fn f(pipe: &WorldPipeline, prompts: &[String]) -> Result<(), Box<dyn std::error::Error>> {
/// let mut req = pipe.request("")?; // the model's defaults
/// req.steps = 10;
/// let scores = score_prompts(pipe, prompts, &req, &mut ())?;
/// println!("{:.1}%", 100.0 * scores.mean_total());
/// # Ok(()) }
/// ```
pub fn score_prompts(
    pipe: &WorldPipeline,
    prompts: &[String],
    template: &WorldRequest,
    observer: &mut dyn ScoreObserver,
) -> Result<PromptScores, ScoreError> {
    pipe.check(template)?;
    let mut step_cache: Option<StepCacheReport> = None;
    let mut scores = score_clips(
        prompts,
        template.seed,
        &mut |job, progress| {
            let mut req = template.clone();
            req.prompt = job.prompt.to_string();
            req.seed = job.seed;
            let out = pipe.generate(&req, progress)?;
            if let Some(r) = out.step_cache {
                *step_cache.get_or_insert_with(StepCacheReport::default) += r;
            }
            Ok(out.video)
        },
        observer,
    )?;
    scores.step_cache = step_cache;
    Ok(scores)
}

/// The ground truth for a prompt: its scene resolved from `seed` (what the prompt leaves open:
/// background, sizes, motions, start positions) and rendered with `opts`.
pub fn ground_truth_clip(
    query: &SceneQuery,
    seed: u64,
    opts: &RenderOptions,
) -> Result<Video, zoetrope_world::WorldError> {
    let spec = query.resolve(seed)?;
    render(&Scene::from_spec(&spec, seed)?, opts)
}

/// [`score_prompts`] for the ground truth: each prompt's scene rendered with `opts`
/// ([`ground_truth_clip`]), seeds `seed + i`.
pub fn score_ground_truth(
    prompts: &[String],
    seed: u64,
    opts: &RenderOptions,
    observer: &mut dyn ScoreObserver,
) -> Result<PromptScores, ScoreError> {
    score_rendered(prompts, seed, opts, observer, &mut |truth, _| Ok(truth))
}

/// What [`score_rendered`] does to each rendered clip before scoring it.
type ClipFilter<'a> = dyn FnMut(Video, &mut dyn FnMut(Stage)) -> Result<Video, BoxError> + 'a;

/// Scores each prompt's rendered ground truth after `through` (the identity, or a VAE round
/// trip).
fn score_rendered(
    prompts: &[String],
    seed: u64,
    opts: &RenderOptions,
    observer: &mut dyn ScoreObserver,
    through: &mut ClipFilter<'_>,
) -> Result<PromptScores, ScoreError> {
    opts.validate()?;
    score_clips(
        prompts,
        seed,
        &mut |job, progress| through(ground_truth_clip(job.query, job.seed, opts)?, progress),
        observer,
    )
}

/// [`score_ground_truth`] through the model's VAE: each prompt's rendered scene encoded and
/// decoded. What a perfect DiT could score with this VAE (the VAE's share of the gap to the
/// ground truth).
pub fn score_reconstructed(
    pipe: &WorldPipeline,
    prompts: &[String],
    seed: u64,
    opts: &RenderOptions,
    observer: &mut dyn ScoreObserver,
) -> Result<PromptScores, ScoreError> {
    score_rendered(prompts, seed, opts, observer, &mut |truth, progress| {
        let latents = pipe.encode_frames(truth.frames())?;
        let frames = pipe.decode(&latents, progress)?;
        Ok(Video::new(frames, opts.fps)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn prompts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ground_truth_scores_high_and_seeds_count_up() {
        let opts = RenderOptions {
            width: 64,
            height: 64,
            frames: 17,
            fps: 8.0,
        };
        let list = prompts(&[
            "a large red circle slides right on black",
            "a small blue square falls on white",
        ]);
        let mut seen = vec![];
        struct Seen<'a>(&'a mut Vec<(usize, u64)>);
        impl ScoreObserver for Seen<'_> {
            fn clip(&mut self, clip: &ScoredClip) -> Result<(), BoxError> {
                self.0.push((clip.index, clip.seed));
                assert_eq!(clip.video.len(), 17);
                Ok(())
            }
        }
        let scores = score_ground_truth(&list, 10, &opts, &mut Seen(&mut seen)).unwrap();
        assert_eq!(seen, vec![(0, 10), (1, 11)]);
        assert_eq!(scores.seeds, vec![10, 11]);
        assert_eq!(scores.batch.reports.len(), 2);
        assert_eq!(scores.seconds.len(), 2);
        assert!(
            scores.mean_total() > 0.9,
            "{}",
            scores.batch.summary.table()
        );
    }

    #[test]
    fn a_bad_prompt_fails_before_any_clip_is_made() {
        let list = prompts(&["a red circle", "a purple zeppelin"]);
        let mut made = 0;
        let err = score_clips(
            &list,
            0,
            &mut |_, _| {
                made += 1;
                Err("unreachable".into())
            },
            &mut (),
        )
        .unwrap_err();
        assert_eq!(made, 0);
        assert!(matches!(err, ScoreError::Prompt { index: 1, .. }), "{err}");
        assert!(err.to_string().contains("prompt 2"), "{err}");
    }

    #[test]
    fn observer_errors_stop_the_run() {
        struct Fail;
        impl ScoreObserver for Fail {
            fn clip(&mut self, _: &ScoredClip) -> Result<(), BoxError> {
                Err("disk full".into())
            }
        }
        let opts = RenderOptions {
            width: 32,
            height: 32,
            frames: 5,
            fps: 8.0,
        };
        let list = prompts(&["a red circle", "a blue square"]);
        let err = score_ground_truth(&list, 0, &opts, &mut Fail).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }
}
