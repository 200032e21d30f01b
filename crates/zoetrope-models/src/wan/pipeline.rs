//! Wan 2.1 text-to-video, top to bottom: prompt → umT5 → transformer + sampler → VAE → frames.
//!
//! Computes what diffusers' `WanPipeline.__call__` computes, so that given the same initial
//! latents the two produce the same video (tests/wan_pipeline.rs checks this on the tiny model).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use zoetrope_sampling::{SamplerKind, SchedulerConfig};

use super::text::{TextEncoder, TextError, WAN_MAX_SEQUENCE_LENGTH};
use super::transformer::{WanTransformer3DModel, WanTransformerConfig};
use super::vae::{AutoencoderKLWan, WanVaeTiling};
use crate::step_cache::{
    check_threshold, StepCache, StepCacheConfig, StepCacheLimits, StepCacheReport,
};

/// The VAE's spatial and temporal compression (8× in space, 4× in time, first frame alone).
pub const VAE_SCALE_SPATIAL: usize = 8;
pub const VAE_SCALE_TEMPORAL: usize = 4;

/// Errors from loading or running the Wan pipeline; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Scheduler(#[from] zoetrope_sampling::SchedulerError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = WanError> = std::result::Result<T, E>;

/// One generation: what the CLI and the server hand to the pipeline.
#[derive(Clone, Debug)]
pub struct WanRequest {
    pub prompt: String,
    /// Used only with guidance > 1; empty means "" as in diffusers.
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off (one transformer call a step).
    pub guidance: f64,
    pub seed: u64,
    /// Initial noise `[1, C, T, h, w]`; drawn from `seed` when absent.
    pub latents: Option<Tensor>,
    /// Override the folder's scheduler.
    pub sampler: Option<SamplerKind>,
    pub shift: Option<f64>,
    /// First-Block Cache threshold ([`crate::step_cache`]): `None` runs every block at every
    /// step; a value reuses the transformer's later blocks on steps whose first block changed
    /// less than this (relative L1), trading exactness for speed.
    pub cache_steps: Option<f64>,
    /// Where the cache may skip, whatever the threshold.
    pub cache_limits: StepCacheLimits,
}

impl WanRequest {
    /// Defaults of Wan2.1-T2V-1.3B's reference settings: 832×480, 81 frames, 50 steps, guidance 5.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width: 832,
            height: 480,
            frames: 81,
            steps: 50,
            guidance: 5.0,
            seed: 0,
            latents: None,
            sampler: None,
            shift: None,
            cache_steps: None,
            cache_limits: StepCacheLimits::default(),
        }
    }

    /// The step cache's settings, if caching is on (and the threshold is valid).
    pub fn step_cache(&self) -> Result<Option<StepCacheConfig>> {
        self.cache_steps
            .map(|t| StepCacheConfig::new(t, self.cache_limits).map_err(WanError::Request))
            .transpose()
    }

    /// The latent grid `(T, h, w)` for this request, or an error naming the allowed values.
    pub fn latent_grid(&self, patch: (usize, usize)) -> Result<(usize, usize, usize)> {
        let (sh, sw) = (VAE_SCALE_SPATIAL * patch.0, VAE_SCALE_SPATIAL * patch.1);
        if self.width == 0
            || self.height == 0
            || !self.width.is_multiple_of(sw)
            || !self.height.is_multiple_of(sh)
        {
            let round = |v: usize, m: usize| ((v + m / 2) / m).max(1) * m;
            return Err(WanError::Request(format!(
                "size {}x{} is impossible for Wan: width must be a multiple of {sw} and height a multiple of {sh}; \
                 the nearest allowed size is {}x{}",
                self.width,
                self.height,
                round(self.width, sw),
                round(self.height, sh)
            )));
        }
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(VAE_SCALE_TEMPORAL) {
            let lower = self.frames.saturating_sub(1) / VAE_SCALE_TEMPORAL * VAE_SCALE_TEMPORAL + 1;
            return Err(WanError::Request(format!(
                "{} frames is impossible for Wan: the frame count must be 4k+1 (1, 5, 9, …, 81); try {} or {}",
                self.frames,
                lower,
                lower + VAE_SCALE_TEMPORAL
            )));
        }
        if self.steps == 0 {
            return Err(WanError::Request(
                "steps must be at least 1 (Wan's reference uses 50)".into(),
            ));
        }
        if let Some(t) = self.cache_steps {
            check_threshold(t).map_err(WanError::Request)?;
        }
        Ok((
            (self.frames - 1) / VAE_SCALE_TEMPORAL + 1,
            self.height / VAE_SCALE_SPATIAL,
            self.width / VAE_SCALE_SPATIAL,
        ))
    }
}

/// What [`WanPipeline::generate`] returns.
#[derive(Clone, Debug)]
pub struct WanOutput {
    /// Frames `[F, 3, H, W]`, f32 in [0, 1].
    pub video: Tensor,
    /// The final latents `[1, C, T, h, w]` (f32, the diffusion model's normalised space).
    pub latents: Tensor,
    /// Steps the step cache skipped, per guidance branch, when caching was on.
    pub step_cache: Option<StepCacheReport>,
}

/// Where the pipeline is, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    EncodingText,
    Denoising { step: usize, steps: usize },
    Decoding { frame: usize, frames: usize },
}

/// A loaded Wan 2.1 pipeline. The text encoder is loaded for each request and dropped before the
/// denoising loop, so its weights (umT5-XXL: ~11 GB in bf16) never sit beside the transformer's
/// activations.
pub struct WanPipeline {
    dir: PathBuf,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    scheduler: SchedulerConfig,
    device: Device,
    dtype: DType,
    max_sequence_length: usize,
    vae_tiling: Option<WanVaeTiling>,
}

impl WanPipeline {
    /// Loads a diffusers-format folder (model_index.json, transformer/, vae/, text_encoder/,
    /// tokenizer/, scheduler/). `dtype` is the compute dtype of the transformer and text encoder;
    /// the VAE runs in f32, as Wan's reference does.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_transformer(dir, None, dtype, device)
    }

    /// [`load`](Self::load), but with the transformer from a single safetensors file (original
    /// Wan / ComfyUI key names, or diffusers names) instead of `dir/transformer/`. Its config is
    /// `dir/transformer/config.json` when present, else inferred from the tensor shapes.
    pub fn load_with_transformer(
        dir: &Path,
        transformer_file: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let index = dir.join("model_index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| WanError::Model {
            path: index.clone(),
            reason: format!("{e}: pass a diffusers-format Wan folder (it holds model_index.json)"),
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| WanError::Model {
            path: index.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let class = json
            .get("_class_name")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if class != "WanPipeline" {
            return Err(WanError::Model {
                path: index,
                reason: format!(
                    "pipeline class is '{class}', but only WanPipeline (Wan 2.1 text-to-video) is supported"
                ),
            });
        }
        if json
            .get("transformer_2")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.first().is_some_and(|c| !c.is_null()))
        {
            return Err(WanError::Model {
                path: index,
                reason: "this folder has a second transformer (Wan 2.2's two experts), which is not supported yet".into(),
            });
        }
        let transformer_dir = dir.join("transformer");
        let transformer = match transformer_file {
            None => WanTransformer3DModel::load_diffusers(&transformer_dir, dtype, device)
                .map_err(|e| model_error(dir, "transformer", e))?,
            Some(file) => {
                let config_path = transformer_dir.join("config.json");
                let config = if config_path.is_file() {
                    Some(
                        WanTransformerConfig::from_json_file(&config_path)
                            .map_err(|e| model_error(dir, "transformer/config.json", e))?,
                    )
                } else {
                    None
                };
                WanTransformer3DModel::load_single_file(file, config, dtype, device).map_err(
                    |e| WanError::Model {
                        path: file.to_path_buf(),
                        reason: e.to_string(),
                    },
                )?
            }
        };
        // The VAE keeps f32 weights and activations; with a bf16 model its convolutions take
        // bf16 products on AMX (f32 sums), where the CPU has it.
        let mut vae = AutoencoderKLWan::load_dir(&dir.join("vae"), DType::F32, device)
            .map_err(|e| model_error(dir, "vae", e))?;
        if dtype == DType::BF16 {
            zoetrope_nn::fast::Bf16Products::set_bf16_products(&mut vae, true)
                .map_err(|e| model_error(dir, "vae", e))?;
        }
        let scheduler =
            SchedulerConfig::from_file(dir.join("scheduler").join("scheduler_config.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            transformer,
            vae,
            scheduler,
            device: device.clone(),
            dtype,
            max_sequence_length: WAN_MAX_SEQUENCE_LENGTH,
            vae_tiling: None,
        })
    }

    /// Text length the prompts are padded to (512 for real Wan; the tiny test model uses less).
    pub fn set_max_sequence_length(&mut self, len: usize) {
        self.max_sequence_length = len;
    }

    /// Decode in overlapping spatial tiles (diffusers' `enable_tiling`), bounding the VAE's
    /// memory for large frames; `None` decodes whole frames.
    pub fn set_vae_tiling(&mut self, tiling: Option<WanVaeTiling>) {
        self.vae_tiling = tiling;
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn transformer_config(&self) -> &WanTransformerConfig {
        self.transformer.config()
    }

    pub fn transformer(&self) -> &WanTransformer3DModel {
        &self.transformer
    }

    pub fn vae(&self) -> &AutoencoderKLWan {
        &self.vae
    }

    /// Encodes the prompt (and the negative prompt when guiding) with a text encoder that is
    /// loaded now and dropped on return.
    pub fn encode_prompts(&self, req: &WanRequest) -> Result<(Tensor, Option<Tensor>)> {
        let text = TextEncoder::from_pipeline_dir(
            &self.dir,
            self.dtype,
            &self.device,
            self.max_sequence_length,
        )?;
        let cond = text.encode(&[req.prompt.as_str()])?.to_dtype(self.dtype)?;
        let uncond = if req.guidance > 1.0 {
            Some(
                text.encode(&[req.negative_prompt.as_str()])?
                    .to_dtype(self.dtype)?,
            )
        } else {
            None
        };
        Ok((cond, uncond))
    }

    /// Initial noise for a request: given latents (checked against the request's grid) or
    /// standard normal noise from the seed.
    pub fn initial_latents(&self, req: &WanRequest) -> Result<Tensor> {
        let cfg = self.transformer.config();
        let (t, h, w) = req.latent_grid((cfg.patch_size[1], cfg.patch_size[2]))?;
        let shape = [1, cfg.in_channels, t, h, w];
        match &req.latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(WanError::Request(format!(
                        "given latents have shape {:?}, but {}x{} with {} frames needs {:?}",
                        l.dims(),
                        req.width,
                        req.height,
                        req.frames,
                        shape
                    )));
                }
                Ok(l.to_dtype(DType::F32)?.to_device(&self.device)?)
            }
            None => {
                let n: usize = shape.iter().product();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(req.seed);
                let noise: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
                Ok(Tensor::from_vec(noise, &shape[..], &self.device)?)
            }
        }
    }

    /// Runs the sampler from `latents` with the given text embeddings; returns the final latents
    /// (f32, the diffusion model's normalised space).
    pub fn denoise(
        &self,
        req: &WanRequest,
        latents: Tensor,
        cond: &Tensor,
        uncond: Option<&Tensor>,
        progress: &mut dyn FnMut(Stage),
    ) -> Result<Tensor> {
        Ok(self
            .denoise_with_report(req, latents, cond, uncond, progress)?
            .0)
    }

    /// [`denoise`](Self::denoise), also returning what the step cache skipped when the request
    /// turns it on (`req.cache_steps`); the two guidance branches have a cache each.
    pub fn denoise_with_report(
        &self,
        req: &WanRequest,
        mut latents: Tensor,
        cond: &Tensor,
        uncond: Option<&Tensor>,
        progress: &mut dyn FnMut(Stage),
    ) -> Result<(Tensor, Option<StepCacheReport>)> {
        // [cond, uncond]: the branches see different text, so their block outputs differ.
        let mut caches: Option<Vec<StepCache>> = req.step_cache()?.map(|config| {
            let branches = if uncond.is_some() { 2 } else { 1 };
            vec![StepCache::new(config); branches]
        });
        let mut scheduler = self
            .scheduler
            .clone()
            .with_overrides(req.sampler, req.shift)
            .build()?;
        scheduler.set_timesteps(req.steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            progress(Stage::Denoising {
                step: i,
                steps: timesteps.len(),
            });
            let x = latents.to_dtype(self.dtype)?;
            let t = Tensor::new(&[t as f32], &self.device)?;
            let model =
                |text: &Tensor, branch: usize, caches: &mut Option<Vec<StepCache>>| match caches {
                    Some(c) => self
                        .transformer
                        .forward_cached(&x, &t, text, &mut c[branch]),
                    None => self.transformer.forward(&x, &t, text),
                };
            let mut v = model(cond, 0, &mut caches)?;
            if let Some(uncond) = uncond {
                // uncond + g·(cond − uncond), two separate calls, as the reference does.
                let v_uncond = model(uncond, 1, &mut caches)?;
                v = (&v_uncond + ((v - &v_uncond)? * req.guidance)?)?;
            }
            latents = scheduler.step(&v, i, &latents)?;
        }
        progress(Stage::Denoising {
            step: timesteps.len(),
            steps: timesteps.len(),
        });
        let report = caches.as_deref().map(StepCacheReport::from_caches);
        Ok((latents, report))
    }

    /// Decodes final latents to frames `[F, 3, H, W]`, f32 in [0, 1], one latent frame at a time.
    pub fn decode(&self, latents: &Tensor, progress: &mut dyn FnMut(Stage)) -> Result<Tensor> {
        let z = self
            .vae
            .denormalize_latents(&latents.to_dtype(DType::F32)?)?;
        let latent_frames = z.dim(2)?;
        let to_frames = |x: Tensor| -> candle_core::Result<Tensor> {
            // [1, 3, n, H, W] in [-1, 1] → [n, 3, H, W] in [0, 1].
            let x = ((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
            x.squeeze(0)?.permute((1, 0, 2, 3))?.contiguous()
        };
        if let Some(tiling) = &self.vae_tiling {
            progress(Stage::Decoding {
                frame: 0,
                frames: latent_frames,
            });
            let video = to_frames(self.vae.decode_tiled(&z, tiling)?)?;
            progress(Stage::Decoding {
                frame: latent_frames - 1,
                frames: latent_frames,
            });
            return Ok(video);
        }
        let mut chunks = Vec::with_capacity(latent_frames);
        self.vae.decode_with(&z, |x| {
            progress(Stage::Decoding {
                frame: chunks.len(),
                frames: latent_frames,
            });
            chunks.push(to_frames(x)?);
            Ok(())
        })?;
        Ok(Tensor::cat(&chunks, 0)?)
    }

    /// Text → video: frames `[F, 3, H, W]`, f32 in [0, 1], with the final latents and what the
    /// step cache skipped.
    pub fn generate(&self, req: &WanRequest, progress: &mut dyn FnMut(Stage)) -> Result<WanOutput> {
        let latents = self.initial_latents(req)?;
        progress(Stage::EncodingText);
        let (cond, uncond) = self.encode_prompts(req)?;
        let (latents, step_cache) =
            self.denoise_with_report(req, latents, &cond, uncond.as_ref(), progress)?;
        let video = self.decode(&latents, progress)?;
        Ok(WanOutput {
            video,
            latents,
            step_cache,
        })
    }
}

fn model_error(dir: &Path, part: &str, e: candle_core::Error) -> WanError {
    WanError::Model {
        path: dir.join(part),
        reason: e.to_string(),
    }
}
