//! Training the world VAE on clips rendered on the fly.
//!
//! Each step renders `batch` fresh scenes at a randomly chosen size and length, crops a random
//! `crop × crop` window (the VAE is fully convolutional, so small crops teach it the same local
//! statistics at a fraction of the cost of whole frames) and minimises mean squared error plus a
//! small KL term. Evaluation encodes and decodes whole held-out clips (64×64×17 and 96×64×17,
//! seeds never drawn in training) with the averaged weights and reports PSNR.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use zoetrope_models::world::vae::{psnr, weighted_mse, VaeLoss, WorldVae, WorldVaeConfig};
use zoetrope_world::Scene;

use crate::data::{
    foreground_weight, item_seed, random_crop, render_clip, video_tensor, ClipShape,
};
use crate::events::{Meter, TrainEvent};
use crate::init::SeededVarMap;
use crate::optim::{AdamW, Ema, OptimConfig};
use crate::run::{averages, checkpoint_tensors, log_metrics, restore_vars, RunDir};

/// First seed of the VAE's held-out evaluation clips (training seeds are hashes, see
/// [`item_seed`], and never land in this range in practice).
pub const VAE_EVAL_SEED: u64 = 9_000_000_000;

/// Settings of a VAE training run (saved in the run's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeTrainConfig {
    pub seed: u64,
    /// Total steps of the run.
    pub steps: usize,
    pub batch: usize,
    /// Side of the square training crop (a multiple of the VAE's spatial factor).
    pub crop: u32,
    /// Render sizes and lengths, drawn uniformly per step.
    pub shapes: Vec<ClipShape>,
    pub kl_weight: f64,
    pub optim: OptimConfig,
    pub ema_decay: f64,
    pub log_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Held-out clips per evaluation size.
    pub eval_clips: usize,
    /// Train the decoder only, on the posterior means of a frozen encoder (set to its averaged
    /// weights when freezing starts). A diffusion model trained on this VAE's latents stays
    /// valid, since the latents no longer change, while reconstructions keep improving.
    #[serde(default)]
    pub freeze_encoder: bool,
    /// Loss weight of foreground pixels (those off the clip's background colour, see
    /// [`foreground_weight`]); 1 weighs all pixels alike.
    #[serde(default = "unweighted")]
    pub foreground_weight: f64,
    /// Where a run that started from trained weights took them: a VAE run or a world-model
    /// folder (see [`load_vae_source`]); `None` for a run from random weights.
    #[serde(default)]
    pub init_from: Option<String>,
}

/// Runs saved before foreground weighting existed trained without it.
fn unweighted() -> f64 {
    1.0
}

/// A pixel this far (on the [-1, 1] scale) from the background colour in any channel is
/// foreground: well under the distance between two world colours, well above codec noise.
const FOREGROUND_THRESHOLD: f32 = 0.1;

impl Default for VaeTrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 2000,
            batch: 8,
            crop: 32,
            shapes: vec![
                ClipShape::new(64, 64, 17),
                ClipShape::new(64, 64, 17),
                ClipShape::new(96, 64, 17),
                ClipShape::new(64, 96, 17),
                ClipShape::new(64, 64, 9),
                ClipShape::new(80, 80, 17),
            ],
            kl_weight: 1e-4,
            // The first VAE (unweighted, 700 steps) blurred small objects into the background
            // and shifted their colours: 23.4 dB, and the evaluator passed only 39% of checks
            // on its reconstructions of the held-out scenes.
            foreground_weight: 6.0,
            optim: OptimConfig {
                lr: 1e-3,
                warmup: 50,
                weight_decay: 0.0,
                ..OptimConfig::default()
            },
            ema_decay: 0.995,
            log_every: 10,
            eval_every: 100,
            checkpoint_every: 50,
            eval_clips: 4,
            freeze_encoder: false,
            init_from: None,
        }
    }
}

/// `state.json` of a VAE run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeRunState {
    pub kind: String,
    pub step: usize,
    pub config: VaeTrainConfig,
    pub model: WorldVaeConfig,
    pub ema_updates: usize,
    /// Seconds spent training, over all sessions.
    pub elapsed_s: f64,
    /// The last evaluation's PSNR (dB) on held-out clips.
    pub eval_psnr: Option<f64>,
    /// How the weights a `init_from` run started from were made (null for other runs).
    #[serde(default)]
    pub init_provenance: serde_json::Value,
}

pub const VAE_RUN_KIND: &str = "world-vae";

/// Held-out evaluation clips, `[1, 3, T, H, W]` each.
pub fn vae_eval_clips(n: usize, device: &Device) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(2 * n);
    for (k, shape) in [ClipShape::new(64, 64, 17), ClipShape::new(96, 64, 17)]
        .into_iter()
        .enumerate()
    {
        for i in 0..n {
            let scene = Scene::sample(VAE_EVAL_SEED + (k * 1000 + i) as u64);
            let video = render_clip(&scene, shape)?;
            out.push(video_tensor(&video, None, device)?.unsqueeze(0)?);
        }
    }
    Ok(out)
}

/// Mean PSNR (dB, pixels in [0, 1]) of reconstructing `clips` from the posterior means.
pub fn reconstruction_psnr(vae: &WorldVae, clips: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for clip in clips {
        let (mean, _) = vae.encode(clip)?;
        let recon = vae.decode(&mean)?.clamp(-1f32, 1f32)?;
        total += psnr(&recon, clip)?;
    }
    Ok(total / clips.len().max(1) as f64)
}

/// A VAE built on a fixed set of tensors (the averaged weights) for evaluation and export.
pub fn vae_from_tensors(
    config: &WorldVaeConfig,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<WorldVae> {
    WorldVae::new(
        config.clone(),
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )
}

/// Trains (or resumes) a VAE in `run`. With `resume`, the saved state decides everything except
/// `steps_override` (a new total). A new run with `config.init_from` starts from that VAE's
/// weights (averaged ones for a run) and takes its shape, ignoring `model`; with
/// `freeze_encoder` it trains the decoder alone from the start, so latents a DiT was trained on
/// do not change. Returns the final state.
pub fn train_vae(
    run: &RunDir,
    config: VaeTrainConfig,
    model: WorldVaeConfig,
    resume: bool,
    steps_override: Option<usize>,
    stop_at: Option<usize>,
    events: &mut dyn FnMut(TrainEvent),
) -> Result<VaeRunState> {
    let freeze_now = config.freeze_encoder;
    let device = Device::Cpu;
    let mut source = None;
    let mut state = if resume {
        let mut s: VaeRunState = run.load_state()?;
        run.expect_kind(&s.kind, VAE_RUN_KIND)?;
        if let Some(n) = steps_override {
            s.config.steps = n;
        }
        s
    } else if freeze_now && config.init_from.is_none() {
        candle_core::bail!(
            "freezing the encoder needs trained weights: pass --resume, or --init-from a VAE run \
             or a world-model folder"
        )
    } else {
        run.expect_new()?;
        let mut init_provenance = serde_json::Value::Null;
        let model = match &config.init_from {
            Some(p) => {
                let s = load_vae_source(std::path::Path::new(p), &device)?;
                let m = s.config.clone();
                init_provenance = serde_json::json!({"from": p, "training": s.provenance});
                source = Some(s);
                m
            }
            None => model,
        };
        model.validate()?;
        let f = model.spatial_factor() as u32;
        if !config.crop.is_multiple_of(f) {
            candle_core::bail!(
                "crop {} is not a multiple of the VAE's spatial factor {f}",
                config.crop
            );
        }
        VaeRunState {
            kind: VAE_RUN_KIND.into(),
            step: 0,
            config,
            model,
            ema_updates: 0,
            elapsed_s: 0.0,
            eval_psnr: None,
            init_provenance,
        }
    };
    let start_freezing = resume && freeze_now && !state.config.freeze_encoder;
    if start_freezing {
        state.config.freeze_encoder = true;
    }
    let cfg = state.config.clone();
    let varmap = VarMap::new();
    let vae = WorldVae::new(
        state.model.clone(),
        SeededVarMap::var_builder(&varmap, cfg.seed, &device),
    )?;
    let trains = |name: &str| !cfg.freeze_encoder || name.starts_with("decoder.");
    let mut opt = AdamW::new_filtered(&varmap, cfg.optim.clone(), trains)?;
    if let (Some(source), Some(path)) = (&source, &cfg.init_from) {
        restore_vars(&varmap, &source.tensors, "")
            .map_err(|e| candle_core::Error::Msg(format!("--init-from {path}: {e}")))?;
    }
    let mut ema = Ema::new_filtered(&varmap, cfg.ema_decay, trains)?;
    if resume {
        let tensors = run.load_tensors(&device)?;
        restore_vars(&varmap, &tensors, "param.")?;
        let avg = averages(&tensors);
        if start_freezing {
            // The encoder is frozen at the averaged weights other models were trained with.
            let data = varmap.data().lock().expect("varmap lock");
            for (name, var) in data.iter().filter(|(n, _)| n.starts_with("encoder.")) {
                if let Some(t) = avg.get(name) {
                    var.set(t)?;
                }
            }
        }
        opt.load_state(&tensors, state.step)?;
        ema.load(&avg, state.ema_updates)?;
    }
    let eval_clips = vae_eval_clips(cfg.eval_clips, &device)?;
    let save = |state: &VaeRunState, opt: &AdamW, ema: &Ema| -> Result<()> {
        run.save(state, &checkpoint_tensors(&varmap, opt, ema))
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
        let mut rng = ChaCha8Rng::seed_from_u64(item_seed(cfg.seed, step, usize::MAX >> 1));
        let shape = *cfg.shapes.choose(&mut rng).expect("at least one shape");
        let mut clips = Vec::with_capacity(cfg.batch);
        let mut weights = Vec::with_capacity(cfg.batch);
        for i in 0..cfg.batch {
            let scene = Scene::sample(item_seed(cfg.seed, step, i));
            let video = render_clip(&scene, shape)?;
            let crop = random_crop(&mut rng, shape.width, shape.height, cfg.crop);
            let clip = video_tensor(&video, Some(crop), &device)?;
            if cfg.foreground_weight != 1.0 {
                weights.push(foreground_weight(
                    &clip,
                    cfg.foreground_weight as f32,
                    FOREGROUND_THRESHOLD,
                )?);
            }
            clips.push(clip);
        }
        let x = Tensor::stack(&clips, 0)?;
        let w = (!weights.is_empty())
            .then(|| Tensor::stack(&weights, 0))
            .transpose()?;
        let loss = if cfg.freeze_encoder {
            let (mean, _) = vae.encode(&x)?;
            let sq = (vae.decode(&mean.detach())? - &x)?.sqr()?;
            let (recon, mse) = weighted_mse(&sq, w.as_ref())?;
            let kl = Tensor::zeros((), DType::F32, &device)?;
            VaeLoss {
                total: recon.clone(),
                recon,
                mse,
                kl,
            }
        } else {
            vae.loss_weighted(&x, w.as_ref(), cfg.kl_weight, &mut rng)?
        };
        let info = opt.backward_step(&loss.total)?;
        ema.update()?;
        state.step += 1;
        state.ema_updates = ema.updates();
        let scalar = |t: &Tensor| t.to_dtype(DType::F64)?.to_scalar::<f64>();
        meter.add("loss", scalar(&loss.total)?);
        meter.add("recon_mse", scalar(&loss.mse)?);
        if w.is_some() {
            meter.add("recon_weighted", scalar(&loss.recon)?);
        }
        meter.add("kl", scalar(&loss.kl)?);
        meter.add("grad_norm", info.grad_norm);
        meter.add("lr", info.lr);
        let now = Instant::now();
        state.elapsed_s += now.duration_since(clock).as_secs_f64();
        clock = now;

        let logged = state.step % cfg.log_every == 0 || state.step == end;
        let metrics = meter.means();
        if logged {
            log_metrics(
                run,
                state.step,
                &[("elapsed_s", state.elapsed_s.into())],
                "",
                &metrics,
            )?;
            meter.reset();
        }
        events(TrainEvent::Step {
            step: state.step,
            total: cfg.steps,
            metrics,
            logged,
        });
        if state.step % cfg.eval_every == 0 || state.step == end {
            let averaged = vae_from_tensors(&state.model, ema.tensors(), &device)?;
            let p = reconstruction_psnr(&averaged, &eval_clips)?;
            state.eval_psnr = Some(p);
            run.log(&serde_json::json!({"step": state.step, "eval_psnr_db": p}))?;
            events(TrainEvent::Eval {
                step: state.step,
                metrics: vec![("psnr_db", p)],
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

/// A VAE's weights and config from wherever they live: a VAE training run or an exported world
/// model (whose `vae.*` weights a DiT run can be trained or fine-tuned on when the run that made
/// them is gone).
pub struct VaeSource {
    pub config: WorldVaeConfig,
    /// Weights without the `vae.` prefix, f32.
    pub tensors: HashMap<String, Tensor>,
    /// How the weights were made, for an export's manifest.
    pub provenance: serde_json::Value,
}

/// Loads the VAE at `path`: a world-model directory (`model.json`) or a VAE run (its averaged
/// weights).
pub fn load_vae_source(path: &std::path::Path, device: &Device) -> Result<VaeSource> {
    if zoetrope_models::world::model::is_model_dir(path) {
        let (manifest, tensors) =
            zoetrope_models::world::model::read_model_dir(path, DType::F32, device)?;
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("vae.").map(|n| (n.to_string(), v)))
            .collect();
        if tensors.is_empty() {
            candle_core::bail!("{}: the model has no vae.* weights", path.display());
        }
        let provenance = serde_json::json!({
            "model": path.display().to_string(),
            "training": manifest.training.get("vae").cloned().unwrap_or_default(),
        });
        return Ok(VaeSource {
            config: manifest.vae,
            tensors,
            provenance,
        });
    }
    let (state, tensors) = load_vae_run(&RunDir::open(path)?, device)?;
    let mut provenance = serde_json::json!({"steps": state.step,
        "train_seconds": state.elapsed_s, "eval_psnr_db": state.eval_psnr, "config": state.config});
    if !state.init_provenance.is_null() {
        provenance["init_from"] = state.init_provenance;
    }
    Ok(VaeSource {
        config: state.model,
        tensors,
        provenance,
    })
}

/// The averaged weights of a finished (or running) VAE run, and its config.
pub fn load_vae_run(
    run: &RunDir,
    device: &Device,
) -> Result<(VaeRunState, HashMap<String, Tensor>)> {
    let state: VaeRunState = run.load_state()?;
    run.expect_kind(&state.kind, VAE_RUN_KIND)?;
    Ok((state, averages(&run.load_tensors(device)?)))
}
