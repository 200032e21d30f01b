//! Training the world DiT and its text encoder together on VAE latents.
//!
//! Latents come from a cache of encoded clips, built in chunks of [`CHUNK`] clips, one clip shape
//! per chunk (shapes cycle through mixed sizes, aspect ratios and durations, as Sora trains on
//! native sizes); a batch is drawn from one chunk so its latents stack. The cache starts with
//! `initial_chunks` and grows by one chunk every `grow_every` steps, so early steps are not spent
//! waiting for the whole cache while later steps see ever more distinct clips. Captions are
//! written afresh at every use (random wording, from the clip's scene spec), dropped with
//! probability `caption_dropout` for classifier-free guidance; latent frames are given as
//! conditioning by random masks (first frame, first/last k, first and last, random).
//!
//! Every clip comes from [`zoetrope_world::dataset::sample_training_clip`], which never draws a
//! held-out colour/shape/motion combination, so the held-out prompts are unseen in training.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use zoetrope_models::world::dit::{
    caption_dropout, flow_matching_loss, flow_matching_loss_at, FlowBatch, FrameMaskConfig,
    TimestepSampler, WorldDit, WorldDitConfig,
};
use zoetrope_models::world::model::{SamplingDefaults, WorldModel, WorldModelManifest, FORMAT};
use zoetrope_models::world::text::{
    split_words, WorldTextConfig, WorldTextEncoder, WorldTokenizer,
};
use zoetrope_models::world::vae::{WorldVae, WorldVaeConfig};
use zoetrope_world::dataset::sample_training_clip;
use zoetrope_world::describe;

use crate::data::{item_seed, latent_foreground, render_clip, video_tensor, ClipShape};
use crate::events::{Meter, TrainEvent};
use crate::init::SeededVarMap;
use crate::optim::{AdamW, Ema, OptimConfig};
use crate::run::{averages, checkpoint_tensors, log_metrics, restore_vars, RunDir};
use crate::vae::{load_vae_source, vae_from_tensors};

/// Clips per cache chunk.
pub const CHUNK: usize = 128;
/// Training captions sampled to build the tokenizer's vocabulary.
const VOCAB_CAPTIONS: u64 = 20_000;
/// Seed salt of the cache's clips (distinct from the VAE's data).
const CACHE_SALT: u64 = 0xD17_CAC4E;

/// Settings of a DiT training run (saved in the run's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitTrainConfig {
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    /// Clip shapes of the cache chunks, cycled by chunk index.
    pub shapes: Vec<ClipShape>,
    pub initial_chunks: usize,
    pub max_chunks: usize,
    pub grow_every: usize,
    pub caption_dropout: f64,
    pub masks: FrameMaskConfig,
    pub timesteps: TimestepSampler,
    /// Timestep shift during training.
    pub shift: f64,
    /// Loss weight of latent cells that hold part of an object, relative to background cells
    /// (see [`latent_foreground`]); 1 is the plain mean. Runs saved before it existed read as 1.
    #[serde(default = "unit_weight")]
    pub foreground_weight: f64,
    pub optim: OptimConfig,
    pub ema_decay: f64,
    pub log_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}

impl Default for DitTrainConfig {
    fn default() -> Self {
        let s = ClipShape::new(64, 64, 17);
        Self {
            seed: 0,
            steps: 3000,
            batch: 16,
            shapes: vec![
                s,
                ClipShape::new(96, 64, 17),
                s,
                ClipShape::new(64, 96, 17),
                s,
                ClipShape::new(64, 64, 33),
                s,
                ClipShape::new(64, 64, 9),
                s,
                ClipShape::new(64, 64, 1),
            ],
            initial_chunks: 16,
            max_chunks: 96,
            grow_every: 50,
            caption_dropout: 0.1,
            masks: FrameMaskConfig::default(),
            timesteps: TimestepSampler::default(),
            // At shift 1 (logit-normal around t = 0.5) only ~1% of training times are above
            // 0.9, where the text alone decides the scene: the first runs learnt to denoise
            // but ignored the prompt. Shift 3 puts the median at 0.75 and ~14% above 0.9.
            shift: 3.0,
            foreground_weight: 1.0,
            optim: OptimConfig {
                lr: 5e-4,
                warmup: 200,
                weight_decay: 0.01,
                ..OptimConfig::default()
            },
            ema_decay: 0.999,
            log_every: 10,
            eval_every: 250,
            checkpoint_every: 50,
        }
    }
}

fn unit_weight() -> f64 {
    1.0
}

/// A pixel this far (on the [-1, 1] scale) from the background colour makes its latent cell
/// foreground (as in the VAE's loss).
const FOREGROUND_THRESHOLD: f32 = 0.1;

/// `[B, 1, T, H, W]` loss weights for latents `x0` of the clips `seeds` rendered at `shape`:
/// `weight` on cells that hold part of an object, 1 elsewhere.
fn foreground_cell_weights(
    seeds: &[u64],
    shape: ClipShape,
    x0: &Tensor,
    weight: f64,
) -> Result<Tensor> {
    let (_, _, tf, h, w) = x0.dims5()?;
    let masks = seeds
        .iter()
        .map(|&s| {
            let (scene, _) = sample_training_clip(s);
            let video = render_clip(&scene, shape)?;
            latent_foreground(&video, (tf, h, w), FOREGROUND_THRESHOLD, x0.device())
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&masks, 0)?.affine(weight - 1.0, 1.0)
}

/// `state.json` of a DiT run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DitRunState {
    pub kind: String,
    pub step: usize,
    pub config: DitTrainConfig,
    pub dit: WorldDitConfig,
    pub text: WorldTextConfig,
    /// The tokenizer (JSON of [`WorldTokenizer::to_json`]).
    pub tokenizer: serde_json::Value,
    /// The VAE the latents come from (its config, with `scaling_factor` set from the cache, or
    /// the warm start's).
    pub vae: WorldVaeConfig,
    /// Where the VAE's weights are: a VAE run or a world-model directory.
    pub vae_run: String,
    pub ema_updates: usize,
    pub elapsed_s: f64,
    pub val_loss: Option<f64>,
    /// The DiT run or world model whose weights this run started from (`--init-from`), if any.
    #[serde(default)]
    pub init_from: Option<String>,
    /// How those weights were made (the source run's steps and time, or the source model's
    /// `training.dit`), so an export can say what its DiT's training adds up to.
    #[serde(default)]
    pub init_provenance: serde_json::Value,
}

pub const DIT_RUN_KIND: &str = "world-dit";

/// Words of `VOCAB_CAPTIONS` training captions, sorted: the tokenizer's vocabulary. Words only
/// the parser knows (synonyms no caption uses) stay unknown, so a prompt using them gets the
/// warning instead of an untrained embedding.
pub fn training_vocabulary() -> Vec<String> {
    let mut words = BTreeSet::new();
    for seed in 0..VOCAB_CAPTIONS {
        let (_, caption) = sample_training_clip(seed);
        words.extend(split_words(&caption));
    }
    words.into_iter().collect()
}

/// The latent cache of a run: chunk files `cache/chunk_NNNNN.safetensors` holding `latents`
/// (posterior means, unscaled) and `seeds`.
struct LatentCache {
    dir: std::path::PathBuf,
    chunks: Vec<(ClipShape, Tensor, Vec<u64>)>,
}

impl LatentCache {
    fn chunk_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("chunk_{i:05}.safetensors"))
    }

    fn clip_seed(run_seed: u64, chunk: usize, i: usize) -> u64 {
        item_seed(run_seed ^ CACHE_SALT, chunk, i)
    }

    /// Loads or builds chunks up to `n`.
    fn ensure(
        &mut self,
        n: usize,
        cfg: &DitTrainConfig,
        vae: &WorldVae,
        events: &mut dyn FnMut(TrainEvent),
    ) -> Result<()> {
        let device = Device::Cpu;
        while self.chunks.len() < n {
            let i = self.chunks.len();
            let shape = cfg.shapes[i % cfg.shapes.len()];
            let path = self.chunk_path(i);
            if path.exists() {
                let t = candle_core::safetensors::load(&path, &device)?;
                let latents = t
                    .get("latents")
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!("{}: no latents", path.display()))
                    })?
                    .clone();
                let seeds: Vec<u64> = t
                    .get("seeds")
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!("{}: no seeds", path.display()))
                    })?
                    .to_vec1::<i64>()?
                    .into_iter()
                    .map(|s| s as u64)
                    .collect();
                self.chunks.push((shape, latents, seeds));
                continue;
            }
            let seeds: Vec<u64> = (0..CHUNK)
                .map(|j| Self::clip_seed(cfg.seed, i, j))
                .collect();
            let mut means = Vec::with_capacity(CHUNK);
            for (j, group) in seeds.chunks(8).enumerate() {
                let clips = group
                    .iter()
                    .map(|&s| {
                        let (scene, _) = sample_training_clip(s);
                        video_tensor(&render_clip(&scene, shape)?, None, &device)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (mean, _) = vae.encode(&Tensor::stack(&clips, 0)?)?;
                means.push(mean);
                events(TrainEvent::Prepare {
                    what: "encode",
                    done: i * CHUNK + (j + 1) * 8,
                    total: n * CHUNK,
                });
            }
            let latents = Tensor::cat(&means, 0)?;
            let seed_t = Tensor::new(
                seeds
                    .iter()
                    .map(|&s| s as i64)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &device,
            )?;
            let tmp = self.dir.join(format!(".chunk_{i:05}.tmp"));
            candle_core::safetensors::save(
                &HashMap::from([
                    ("latents".to_string(), latents.clone()),
                    ("seeds".into(), seed_t),
                ]),
                &tmp,
            )?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
            self.chunks.push((shape, latents, seeds));
        }
        Ok(())
    }
}

/// The live models of a run.
struct Models {
    varmap: VarMap,
    text: WorldTextEncoder,
    dit: WorldDit,
}

fn build_models(state: &DitRunState, seed: u64, device: &Device) -> Result<Models> {
    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, seed, device);
    let text = WorldTextEncoder::new(&state.text, vb.pp("text"))?;
    let dit = WorldDit::new(&state.dit, vb.pp("dit"))?;
    Ok(Models { varmap, text, dit })
}

/// Flow-matching loss of the averaged weights on a fixed validation batch (fixed clips, noise,
/// times spread over (0, 1), no conditioning): comparable across steps and runs.
fn validation_loss(
    state: &DitRunState,
    ema: &HashMap<String, Tensor>,
    tokenizer: &WorldTokenizer,
    cache: &LatentCache,
    device: &Device,
) -> Result<f64> {
    let vb = candle_nn::VarBuilder::from_tensors(ema.clone(), DType::F32, device);
    let text = WorldTextEncoder::new(&state.text, vb.pp("text"))?;
    let dit = WorldDit::new(&state.dit, vb.pp("dit"))?;
    let (_, latents, seeds) = &cache.chunks[0];
    let n = 16.min(latents.dim(0)?);
    let x0 = (latents.narrow(0, 0, n)? * state.vae.scaling_factor)?;
    let captions: Vec<String> = seeds[..n]
        .iter()
        .map(|&s| sample_training_clip(s).1)
        .collect();
    let (tokens, mask, _) = text.encode_prompts(tokenizer, &captions)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0x7A1);
    let noise = zoetrope_models::world::dit::randn_like(&x0, &mut rng)?;
    let t: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
    let loss = flow_matching_loss_at(&dit, &FlowBatch::new(&x0, &tokens, &mask), &noise, &t)?;
    loss.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Settings of a new DiT run that do not live in [`DitTrainConfig`].
pub struct NewDitRun<'a> {
    pub config: DitTrainConfig,
    pub dit: WorldDitConfig,
    /// Text encoder shape; its `vocab_size` is set from the vocabulary.
    pub text: WorldTextConfig,
    /// The VAE: a VAE run or a world-model directory (see [`load_vae_source`]).
    pub vae: &'a Path,
    /// Start from another DiT run's averaged weights, or an exported world model's DiT and text
    /// encoder, instead of a random initialisation (see [`warm_start`]).
    pub init_from: Option<&'a Path>,
}

/// The whole world model (VAE, text encoder, DiT) from a DiT run's state, its averaged weights
/// and the VAE's weights, for evaluation during training and for export.
pub fn world_model(
    state: &DitRunState,
    dit_and_text: &HashMap<String, Tensor>,
    vae: &HashMap<String, Tensor>,
    defaults: SamplingDefaults,
) -> Result<WorldModel> {
    let manifest = WorldModelManifest {
        format: FORMAT.into(),
        vae: state.vae.clone(),
        dit: state.dit.clone(),
        text: state.text.clone(),
        tokenizer: state.tokenizer.clone(),
        defaults,
        training: serde_json::Value::Null,
    };
    let mut tensors = dit_and_text.clone();
    tensors.extend(vae.iter().map(|(k, v)| (format!("vae.{k}"), v.clone())));
    WorldModel::from_var_builder(
        manifest,
        candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
}

/// Scores a model during training (e.g. generates a few prompts and runs the evaluator);
/// called with the step and the model built from the averaged weights at every evaluation.
pub type EvalHook<'a> = dyn FnMut(usize, WorldModel) -> Result<Vec<(&'static str, f64)>> + 'a;

/// Settings a resumed DiT run may change (each applies from the resumed step on and is
/// saved in the run's state).
#[derive(Debug, Clone, Copy, Default)]
pub struct DitResumeChanges {
    /// A new total of steps; the learning rate's cosine decay is stretched to end there.
    pub steps: Option<usize>,
    /// A new timestep shift for the training times (see [`DitTrainConfig::shift`]).
    pub shift: Option<f64>,
}

impl DitResumeChanges {
    /// Applies the changes to a run's settings; returns what changed, for the log.
    fn apply(&self, cfg: &mut DitTrainConfig) -> Vec<String> {
        let mut changed = vec![];
        if let Some(n) = self.steps.filter(|&n| n != cfg.steps) {
            changed.push(format!("steps {} → {n}", cfg.steps));
            cfg.steps = n;
            if cfg.optim.decay_until.is_some() {
                cfg.optim.decay_until = Some(n);
            }
        }
        if let Some(s) = self.shift.filter(|&s| s != cfg.shift) {
            changed.push(format!("timestep shift {} → {s}", cfg.shift));
            cfg.shift = s;
        }
        changed
    }
}

/// Trains (or resumes) the DiT in `run`; `eval_hook` adds metrics at every evaluation.
/// `changes` apply to a resumed run only.
pub fn train_dit(
    run: &RunDir,
    new: Option<NewDitRun<'_>>,
    changes: DitResumeChanges,
    stop_at: Option<usize>,
    mut eval_hook: Option<&mut EvalHook<'_>>,
    events: &mut dyn FnMut(TrainEvent),
) -> Result<DitRunState> {
    let device = Device::Cpu;
    let resume = new.is_none();
    let init_from = new.as_ref().and_then(|n| n.init_from);
    let (mut state, vae_tensors) = match new {
        None => {
            let mut s: DitRunState = run.load_state()?;
            run.expect_kind(&s.kind, DIT_RUN_KIND)?;
            for change in changes.apply(&mut s.config) {
                tracing::info!(
                    "resuming {} at step {}: {change}",
                    run.path().display(),
                    s.step
                );
            }
            let vae = load_vae_source(Path::new(&s.vae_run), &device)?;
            (s, vae.tensors)
        }
        Some(new) => {
            run.expect_new()?;
            let vae = load_vae_source(new.vae, &device)?;
            let vocab = training_vocabulary();
            let tokenizer = WorldTokenizer::new(vocab.iter().map(String::as_str));
            let mut text = new.text;
            text.vocab_size = tokenizer.vocab_size();
            let mut dit = new.dit;
            dit.latent_channels = vae.config.latent_channels;
            dit.text_dim = text.dim;
            dit.validate()?;
            text.validate()?;
            let tok_json: serde_json::Value = serde_json::from_str(&tokenizer.to_json())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (
                DitRunState {
                    kind: DIT_RUN_KIND.into(),
                    step: 0,
                    config: new.config,
                    dit,
                    text,
                    tokenizer: tok_json,
                    vae: vae.config,
                    vae_run: new.vae.display().to_string(),
                    ema_updates: 0,
                    elapsed_s: 0.0,
                    val_loss: None,
                    init_from: new.init_from.map(|p| p.display().to_string()),
                    init_provenance: serde_json::Value::Null,
                },
                vae.tensors,
            )
        }
    };
    let cfg = state.config.clone();
    let tokenizer = WorldTokenizer::from_json(&state.tokenizer.to_string())?;
    let vae = vae_from_tensors(&state.vae, vae_tensors.clone(), &device)?;
    let cache_dir = run.file("cache");
    std::fs::create_dir_all(&cache_dir)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", cache_dir.display())))?;
    let mut cache = LatentCache {
        dir: cache_dir,
        chunks: vec![],
    };
    let chunks_at =
        |step: usize| (cfg.initial_chunks + step / cfg.grow_every.max(1)).min(cfg.max_chunks);
    cache.ensure(chunks_at(state.step), &cfg, &vae, events)?;
    let source = init_from.map(|p| load_dit_source(p, &device)).transpose()?;
    if let Some(src) = &source {
        // The source DiT learnt latents at its own scale; keep it.
        state.vae.scaling_factor = src.scaling_factor;
        state.init_provenance = src.provenance.clone();
    } else if !resume {
        // Unit variance for the diffusion model: scale latents by 1/std of the first chunks.
        let all = Tensor::cat(
            &cache
                .chunks
                .iter()
                .take(4)
                .map(|(_, l, _)| l.flatten_all())
                .collect::<Result<Vec<_>>>()?,
            0,
        )?;
        let var = all.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        state.vae.scaling_factor = 1.0 / var.sqrt().max(1e-6);
    }

    let models = build_models(&state, cfg.seed, &device)?;
    if let Some(source) = &source {
        for note in warm_start(&models.varmap, &state, source)? {
            tracing::info!("{}: {note}", run.path().display());
        }
    }
    let mut opt = AdamW::new(&models.varmap, cfg.optim.clone())?;
    let mut ema = Ema::new(&models.varmap, cfg.ema_decay)?;
    if resume {
        let tensors = run.load_tensors(&device)?;
        restore_vars(&models.varmap, &tensors, "param.")?;
        opt.load_state(&tensors, state.step)?;
        let avg = averages(&tensors);
        ema.load(&avg, state.ema_updates)?;
    }
    let save = |state: &DitRunState, opt: &AdamW, ema: &Ema| -> Result<()> {
        run.save(state, &checkpoint_tensors(&models.varmap, opt, ema))
    };

    events(TrainEvent::Start {
        step: state.step,
        total: cfg.steps,
    });
    let mut meter = Meter::default();
    let mut clock = Instant::now();
    // `stop_at` ends this session early (after a checkpoint) without changing the schedule.
    let end = stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    while state.step < end {
        let step = state.step;
        let want = chunks_at(step);
        if want > cache.chunks.len() {
            cache.ensure(want, &cfg, &vae, &mut |_| {})?;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(item_seed(cfg.seed, step, usize::MAX >> 2));
        let ci = rng.random_range(0..cache.chunks.len());
        let (shape, latents, seeds) = &cache.chunks[ci];
        let idx: Vec<u32> = (0..cfg.batch)
            .map(|_| rng.random_range(0..seeds.len()) as u32)
            .collect();
        let x0 = (latents.index_select(&Tensor::new(idx.as_slice(), &device)?, 0)?
            * state.vae.scaling_factor)?;
        let captions: Vec<String> = idx
            .iter()
            .map(|&i| describe(&sample_training_clip(seeds[i as usize]).0.spec, &mut rng))
            .collect();
        let (captions, _) = caption_dropout(&captions, cfg.caption_dropout, &mut rng);
        let (tokens, tmask, _) = models.text.encode_prompts(&tokenizer, &captions)?;
        let frames = x0.dim(2)?;
        let (fmask, kinds) = cfg.masks.sample(cfg.batch, frames, &mut rng, &device)?;
        let conditioned = kinds
            .iter()
            .any(|k| !matches!(k, zoetrope_models::world::dit::FrameMaskKind::None));
        let cell_weight = if cfg.foreground_weight != 1.0 {
            let batch_seeds: Vec<u64> = idx.iter().map(|&i| seeds[i as usize]).collect();
            Some(foreground_cell_weights(
                &batch_seeds,
                *shape,
                &x0,
                cfg.foreground_weight,
            )?)
        } else {
            None
        };
        let loss = flow_matching_loss(
            &models.dit,
            &FlowBatch::new(&x0, &tokens, &tmask)
                .with_frame_mask(conditioned.then_some(&fmask))
                .with_cell_weight(cell_weight.as_ref()),
            cfg.timesteps,
            cfg.shift,
            &mut rng,
        )?;
        let info = opt.backward_step(&loss)?;
        ema.update()?;
        state.step += 1;
        state.ema_updates = ema.updates();
        meter.add("loss", loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        meter.add("grad_norm", info.grad_norm);
        meter.add("lr", info.lr);
        let now = Instant::now();
        state.elapsed_s += now.duration_since(clock).as_secs_f64();
        clock = now;

        let logged = state.step % cfg.log_every == 0 || state.step == end;
        let metrics = meter.means();
        if logged {
            let fields = [
                ("elapsed_s", state.elapsed_s.into()),
                ("cached_clips", (cache.chunks.len() * CHUNK).into()),
            ];
            log_metrics(run, state.step, &fields, "", &metrics)?;
            meter.reset();
        }
        events(TrainEvent::Step {
            step: state.step,
            total: cfg.steps,
            metrics,
            logged,
        });
        if state.step % cfg.eval_every == 0 || state.step == end {
            let averaged = ema.tensors();
            let v = validation_loss(&state, &averaged, &tokenizer, &cache, &device)?;
            state.val_loss = Some(v);
            let mut metrics = vec![("val_loss", v)];
            if let Some(hook) = eval_hook.as_deref_mut() {
                let model =
                    world_model(&state, &averaged, &vae_tensors, SamplingDefaults::default())?;
                metrics.extend(hook(state.step, model)?);
            }
            log_metrics(run, state.step, &[], "eval_", &metrics)?;
            events(TrainEvent::Eval {
                step: state.step,
                metrics,
            });
            clock = Instant::now();
        }
        if state.step % cfg.checkpoint_every == 0 || state.step == end {
            save(&state, &opt, &ema)?;
            events(TrainEvent::Checkpoint { step: state.step });
            clock = Instant::now();
        }
    }
    Ok(state)
}

/// The averaged DiT + text weights (`dit.*`, `text.*`) and state of a DiT run.
pub fn load_dit_run(
    run: &RunDir,
    device: &Device,
) -> Result<(DitRunState, HashMap<String, Tensor>)> {
    let state: DitRunState = run.load_state()?;
    run.expect_kind(&state.kind, DIT_RUN_KIND)?;
    Ok((state, averages(&run.load_tensors(device)?)))
}

/// A DiT and text encoder to start a run from: a DiT run's averaged weights or an exported world
/// model's.
pub struct DitSource {
    /// Where it was read from, for messages.
    pub path: String,
    pub dit: WorldDitConfig,
    pub text: WorldTextConfig,
    pub tokenizer: serde_json::Value,
    /// The latent scale the DiT was trained at.
    pub scaling_factor: f64,
    /// `dit.*` and `text.*` weights, f32.
    pub tensors: HashMap<String, Tensor>,
    /// How the weights were made.
    pub provenance: serde_json::Value,
}

/// Loads the DiT and text encoder at `path`: a world-model directory (`model.json`) or a DiT run.
pub fn load_dit_source(path: &Path, device: &Device) -> Result<DitSource> {
    let shown = path.display().to_string();
    if zoetrope_models::world::model::is_model_dir(path) {
        let (m, tensors) = zoetrope_models::world::model::read_model_dir(path, DType::F32, device)?;
        let tensors = tensors
            .into_iter()
            .filter(|(k, _)| k.starts_with("dit.") || k.starts_with("text."))
            .collect();
        return Ok(DitSource {
            provenance: serde_json::json!({
                "model": shown,
                "training": m.training.get("dit").cloned().unwrap_or_default(),
            }),
            path: shown,
            dit: m.dit,
            text: m.text,
            tokenizer: m.tokenizer,
            scaling_factor: m.vae.scaling_factor,
            tensors,
        });
    }
    let (state, tensors) = load_dit_run(&RunDir::open(path)?, device)?;
    Ok(DitSource {
        provenance: serde_json::json!({"run": shown, "steps": state.step,
            "train_seconds": state.elapsed_s, "val_loss": state.val_loss,
            "init": state.init_provenance}),
        path: shown,
        dit: state.dit,
        text: state.text,
        tokenizer: state.tokenizer,
        scaling_factor: state.vae.scaling_factor,
        tensors,
    })
}

/// Loads a DiT source's weights into a new run's variables. The text encoder, tokenizer and
/// transformer width must match; the spacetime patch may be finer than the source's by whole
/// factors (e.g. 1×4×4 → 1×2×2): the patch embedding and output projection are then resized by
/// [`shrink_patch_in`] / [`shrink_patch_out`], and every other tensor is copied. Returns notes on
/// what was resized, for the log.
pub fn warm_start(varmap: &VarMap, state: &DitRunState, src: &DitSource) -> Result<Vec<String>> {
    let tensors = &src.tensors;
    let from = &src.path;
    if src.tokenizer != state.tokenizer {
        candle_core::bail!(
            "--init-from {from}: its tokenizer's vocabulary differs from this run's; start \
             from a run made by this version of zoetrope"
        );
    }
    if src.text != state.text {
        candle_core::bail!(
            "--init-from {from}: its text encoder {:?} differs from this run's {:?}",
            src.text,
            state.text
        );
    }
    let same_but_patch_and_depth = WorldDitConfig {
        patch: state.dit.patch,
        depth: state.dit.depth,
        cross_attn_blocks: state.dit.cross_attn_blocks,
        ..src.dit.clone()
    };
    // The source's blocks keep their layout (cross-attention or not); added ones may differ.
    let same_source_blocks =
        (0..src.dit.depth).all(|i| src.dit.has_cross_attn(i) == state.dit.has_cross_attn(i));
    if same_but_patch_and_depth != state.dit
        || state.dit.depth < src.dit.depth
        || !same_source_blocks
    {
        candle_core::bail!(
            "--init-from {from}: its DiT {:?} differs from this run's {:?} in more than the patch \
             and added blocks",
            src.dit,
            state.dit
        );
    }
    let (old, new) = (src.dit.patch, state.dit.patch);
    let mut notes = vec![format!("initialised from the weights of {from}")];
    if state.dit.depth > src.dit.depth {
        notes.push(format!(
            "blocks {}..{} are new, appended after the source's {} (their gates and \
             cross-attention outputs start at zero, so the deeper DiT starts as the source){}",
            src.dit.depth,
            state.dit.depth,
            src.dit.depth,
            if state.dit.cross_attn_count() < state.dit.depth {
                format!(
                    "; blocks {}.. have no cross-attention",
                    state.dit.cross_attn_count()
                )
            } else {
                String::new()
            }
        ));
    }
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        if added_block(name, src.dit.depth) {
            continue;
        }
        let t = tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("--init-from {from}: its checkpoint has no {name}"))
        })?;
        let resized = match name.as_str() {
            _ if old == new => None,
            "dit.patch_embed.weight" => {
                Some(shrink_patch_in(t, state.dit.in_channels(), old, new)?)
            }
            "dit.proj_out.weight" | "dit.proj_out.bias" => {
                Some(shrink_patch_out(t, state.dit.latent_channels, old, new)?)
            }
            _ => None,
        };
        if resized.is_some() {
            notes.push(format!("{name} resized from patch {old:?} to {new:?}"));
        }
        let t = resized.unwrap_or_else(|| t.clone());
        if t.dims() != var.dims() {
            candle_core::bail!(
                "--init-from {from}: {name} has shape {:?}, this run's {:?}",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(notes)
}

/// Whether `name` is a parameter of a DiT block at index `depth` or beyond (one a source of that
/// depth does not have).
fn added_block(name: &str, depth: usize) -> bool {
    name.strip_prefix("dit.blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= depth)
}

/// How many source patch cells make one cell of the finer patch, per axis; errors unless each
/// axis of `old` is a whole multiple of `new`'s.
fn patch_factors(old: [usize; 3], new: [usize; 3]) -> Result<[usize; 3]> {
    if (0..3).any(|i| new[i] == 0 || !old[i].is_multiple_of(new[i])) {
        candle_core::bail!(
            "cannot resize patch {old:?} to {new:?}: each axis of the new patch must divide the \
             old one (e.g. [1, 4, 4] → [1, 2, 2])"
        );
    }
    Ok([old[0] / new[0], old[1] / new[1], old[2] / new[2]])
}

/// Patch-embedding weight `[dim, C·old]` → `[dim, C·new]` for a finer patch: each new cell's
/// column is the sum of the old columns it covers, so a finer patch embeds as the coarse one did
/// its nearest-neighbour enlargement (FlexiViT's resize for that upsampling).
pub fn shrink_patch_in(
    w: &Tensor,
    channels: usize,
    old: [usize; 3],
    new: [usize; 3],
) -> Result<Tensor> {
    let [ft, fh, fw] = patch_factors(old, new)?;
    let d = w.dim(0)?;
    w.reshape(vec![d, channels, new[0], ft, new[1], fh, new[2], fw])?
        .sum(7)?
        .sum(5)?
        .sum(3)?
        .reshape((d, channels * new.iter().product::<usize>()))
}

/// Output projection weight `[C·old, dim]` (or bias `[C·old]`) → `[C·new, …]`: each new cell is
/// the mean of the old cells it covers (the coarse patch's prediction, average-pooled).
pub fn shrink_patch_out(
    w: &Tensor,
    channels: usize,
    old: [usize; 3],
    new: [usize; 3],
) -> Result<Tensor> {
    let [ft, fh, fw] = patch_factors(old, new)?;
    let rest: Vec<usize> = w.dims()[1..].to_vec();
    let mut shape = vec![channels, new[0], ft, new[1], fh, new[2], fw];
    shape.extend(&rest);
    let mut out_shape = vec![channels * new.iter().product::<usize>()];
    out_shape.extend(&rest);
    (w.reshape(shape)?.sum(6)?.sum(4)?.sum(2)? / (ft * fh * fw) as f64)?.reshape(out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoetrope_nn::metrics::max_abs_diff;

    /// A finer patch's embedding of `x` equals the coarse embedding of `x` enlarged by nearest
    /// neighbour; its output equals the coarse output average-pooled.
    #[test]
    fn patch_resizes_match_nearest_enlargement_and_pooling() -> Result<()> {
        let dev = Device::Cpu;
        let (c, d) = (3usize, 5usize);
        let (old, new) = ([1, 4, 4], [1, 2, 2]);
        let w_in = Tensor::randn(0f32, 1.0, (d, c * 16), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (c, 1, 2, 2), &dev)?;
        // Nearest-neighbour 2× enlargement of each cell: [c, 1, 4, 4].
        let big = x
            .unsqueeze(3)?
            .unsqueeze(5)?
            .broadcast_as((c, 1, 2, 2, 2, 2))?
            .contiguous()?
            .reshape((c, 1, 4, 4))?;
        let coarse = w_in.matmul(&big.reshape((c * 16, 1))?)?;
        let fine = shrink_patch_in(&w_in, c, old, new)?.matmul(&x.reshape((c * 4, 1))?)?;
        let gap = max_abs_diff(&coarse, &fine)?;
        assert!(gap < 1e-4, "{gap}");

        let w_out = Tensor::randn(0f32, 1.0, (c * 16, d), &dev)?;
        let h = Tensor::randn(0f32, 1.0, (d, 1), &dev)?;
        let pooled = w_out
            .matmul(&h)?
            .reshape((c, 2, 2, 2, 2))?
            .mean(4)?
            .mean(2)?
            .reshape((c * 4, 1))?;
        let fine = shrink_patch_out(&w_out, c, old, new)?.matmul(&h)?;
        let gap = max_abs_diff(&pooled, &fine)?;
        assert!(gap < 1e-5, "{gap}");
        let bias = Tensor::randn(0f32, 1.0, c * 16, &dev)?;
        assert_eq!(shrink_patch_out(&bias, c, old, new)?.dims(), &[c * 4]);
        assert!(shrink_patch_in(&w_in, c, old, [1, 3, 3]).is_err());
        Ok(())
    }

    #[test]
    fn vocabulary_covers_training_captions() {
        let vocab = training_vocabulary();
        assert!(vocab.len() > 30, "{}", vocab.len());
        let tok = WorldTokenizer::new(vocab.iter().map(String::as_str));
        for seed in 50_000..50_200 {
            let (_, caption) = sample_training_clip(seed);
            let (_, unknown) = tok.encode(&caption);
            assert!(unknown.is_empty(), "{caption}: {unknown:?}");
        }
    }
}
