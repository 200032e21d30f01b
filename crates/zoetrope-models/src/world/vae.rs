//! zoetrope's own video compression network for the procedural world: a causal 3D convolutional
//! VAE, KL-regularised (the Sora report's "video compression network").
//!
//! Video is `[B, 3, T, H, W]` in [-1, 1] with `T = 1 + f·k` (`f` the temporal factor, 4 by
//! default) and `H`, `W` multiples of the spatial factor (8 by default); latents are
//! `[B, latent_channels, 1 + k, H/s, W/s]`. Latent frame 0 encodes frame 0 alone, latent frame `j`
//! the group `f·(j-1)+1 ..= f·j`, and nothing ever looks forward in time:
//!
//! - every 3D convolution is a [`CausalConv3d`] (zero frames only in front);
//! - normalisation is an RMS norm over channels at each position (a GroupNorm would mix frames);
//! - a temporal downsample is a stride-2 causal conv with `kt = 3` and two zero frames in front,
//!   so `1 + 2m` frames become `1 + m` and output `j` reads inputs `2j-2, 2j-1, 2j`;
//! - a temporal upsample is a causal `(3,1,1)` conv to twice the channels, the two halves
//!   interleaved as two frames, and the very first frame dropped (`1 + m` → `1 + 2m`).
//!
//! Because of that, [`WorldVae::decode_stream`] can decode one latent frame at a time with a small
//! per-conv frame cache and gives the same frames as [`WorldVae::decode`].
//!
//! Design choices for the CPU budget (decode of 17×64×64 well under a second on 2 cores): the
//! second conv of each residual block is spatial only (`1×3×3`), so a block mixes time once; the
//! first 2× of spatial compression is a space-to-depth `patch_size` so no conv runs at full
//! resolution; time is halved at the finest transitions so the wide coarse levels see few frames.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use zoetrope_nn::conv3d::{CausalConv3d, Conv3dConfig};
use zoetrope_nn::Checkpoint;

/// Temporal kernel of the stride-2 downsampling conv and of the upsampling `time_conv`.
const RESAMPLE_KT: usize = 3;
/// `logvar` is clamped to this range before use (as diffusers' `DiagonalGaussianDistribution`).
const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);
/// Added to the encoder's raw `logvar` output, so a freshly initialised encoder starts with a
/// posterior standard deviation of about e^-3 ≈ 0.05 instead of 1. With unit noise on every latent
/// at the start, the decoder first learns to reconstruct from noise and the encoder inflates its
/// means to beat it (a first run was still at 16 dB PSNR after 200 steps, its KL rising); the
/// offset is a fixed reparameterisation, the same at training and inference.
const LOGVAR_OFFSET: f64 = -6.0;
/// Epsilon of the channel RMS norm.
const NORM_EPS: f64 = 1e-6;

fn default_temporal_kernel() -> usize {
    3
}

fn default_scaling_factor() -> f64 {
    1.0
}

fn default_patch_size() -> usize {
    1
}

/// Shape of a [`WorldVae`], stored as JSON next to the weights.
///
/// Levels go from full resolution (`channels[0]`) to the latent resolution (`channels[L-1]`);
/// transition `i` (from level `i` to `i+1` in the encoder, mirrored in the decoder) halves the
/// size where `spatial_down[i]` and halves time where `temporal_down[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldVaeConfig {
    /// Channels of the video (3 for RGB).
    pub in_channels: usize,
    /// Channels of the latent.
    pub latent_channels: usize,
    /// Pixels folded into channels before the first conv (`p×p` blocks, space-to-depth) and
    /// unfolded after the last: the cheapest first 2× of spatial compression, since no conv then
    /// runs at full resolution (as Wan 2.2's VAE `patch_size`).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Feature channels per level, finest first.
    pub channels: Vec<usize>,
    /// Per transition (`channels.len() - 1` entries): halve height and width.
    pub spatial_down: Vec<bool>,
    /// Per transition (`channels.len() - 1` entries): halve time (first frame alone).
    pub temporal_down: Vec<bool>,
    /// Residual blocks per level in the encoder.
    pub encoder_blocks: usize,
    /// Residual blocks per level in the decoder.
    pub decoder_blocks: usize,
    /// Temporal kernel size of the time-mixing convs (`conv_in`, `conv_out`, each block's
    /// `conv1`); 1 makes the model frame-by-frame apart from the resamplers.
    #[serde(default = "default_temporal_kernel")]
    pub temporal_kernel: usize,
    /// Latents are multiplied by this before the diffusion model sees them (set from the trained
    /// model's latent statistics; 1 until then). Not applied by `encode`/`decode`.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
}

impl Default for WorldVaeConfig {
    /// Sized for the generation budget: 8× spatial (patch 2, then two 2× stages), 4× temporal,
    /// 8 latent channels; 0.80 M parameters (encoder 0.43 M, decoder 0.37 M, 1.6 MB in f16).
    /// Decode of 17×64×64 took 0.34–0.39 s on the shared 2-core CPU under load
    /// (`examples/world_vae_speed.rs`).
    fn default() -> Self {
        Self {
            in_channels: 3,
            latent_channels: 8,
            patch_size: 2,
            channels: vec![32, 48, 64],
            spatial_down: vec![true, true],
            temporal_down: vec![true, true],
            encoder_blocks: 1,
            decoder_blocks: 1,
            temporal_kernel: 3,
            scaling_factor: 1.0,
        }
    }
}

impl WorldVaeConfig {
    /// A very small model for tests: 4× spatial, 4× temporal, 4 latent channels.
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            latent_channels: 4,
            patch_size: 1,
            channels: vec![8, 16, 16],
            spatial_down: vec![true, true],
            temporal_down: vec![true, true],
            encoder_blocks: 1,
            decoder_blocks: 1,
            temporal_kernel: 3,
            scaling_factor: 1.0,
        }
    }

    /// Height and width are divided by this.
    pub fn spatial_factor(&self) -> usize {
        self.patch_size << self.spatial_down.iter().filter(|&&d| d).count()
    }

    /// Frames after the first are divided by this.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_down.iter().filter(|&&d| d).count()
    }

    /// Latent frames for `frames` video frames (`1 + (frames-1)/f`), or an error naming the
    /// allowed counts.
    pub fn latent_frames(&self, frames: usize) -> Result<usize> {
        let f = self.temporal_factor();
        if frames == 0 || !(frames - 1).is_multiple_of(f) {
            let below = if frames == 0 {
                1
            } else {
                1 + (frames - 1) / f * f
            };
            candle_core::bail!(
                "world vae: {frames} frames cannot be encoded; the frame count must be 1 + {f}·k \
                 (1, {}, {}, {}, …): use {below} or {}",
                1 + f,
                1 + 2 * f,
                1 + 4 * f,
                below + f
            );
        }
        Ok(1 + (frames - 1) / f)
    }

    /// Video frames decoded from `latent_frames` latent frames.
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        1 + self.temporal_factor() * latent_frames.saturating_sub(1)
    }

    /// Checks that `height` × `width` can be encoded, with an error naming the nearest sizes.
    pub fn check_size(&self, height: usize, width: usize) -> Result<()> {
        let s = self.spatial_factor();
        for (name, v) in [("height", height), ("width", width)] {
            if v == 0 || v % s != 0 {
                let below = v / s * s;
                let above = below + s;
                let hint = if below == 0 {
                    format!("use {above}")
                } else {
                    format!("use {below} or {above}")
                };
                candle_core::bail!(
                    "world vae: {name} {v} is not a positive multiple of the spatial factor {s}: {hint}"
                );
            }
        }
        Ok(())
    }

    /// Checks the config is consistent.
    pub fn validate(&self) -> Result<()> {
        let l = self.channels.len();
        if l == 0 || self.channels.contains(&0) {
            candle_core::bail!("world vae config: `channels` must be non-empty and positive");
        }
        if self.spatial_down.len() + 1 != l || self.temporal_down.len() + 1 != l {
            candle_core::bail!(
                "world vae config: `spatial_down` and `temporal_down` need {} entries (one per \
                 transition between the {l} levels of `channels`), got {} and {}",
                l - 1,
                self.spatial_down.len(),
                self.temporal_down.len()
            );
        }
        if self.in_channels == 0
            || self.latent_channels == 0
            || self.temporal_kernel == 0
            || self.patch_size == 0
        {
            candle_core::bail!(
                "world vae config: `in_channels`, `latent_channels`, `patch_size` and \
                 `temporal_kernel` must be positive"
            );
        }
        Ok(())
    }

    /// Reads and checks a config JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: cannot read world vae config: {e}",
                path.display()
            ))
        })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Writes the config as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }
}

/// The config file that goes with a weights file: `vae.safetensors` → `vae.json`.
pub fn config_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Saves the variables of `varmap` (a [`WorldVae`] built on it) as safetensors in `dtype` (f16 for
/// shipping, f32 for training checkpoints), and `config` as JSON next to it ([`config_path`]).
pub fn save(varmap: &VarMap, config: &WorldVaeConfig, weights: &Path, dtype: DType) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut tensors = HashMap::with_capacity(data.len());
    for (name, var) in data.iter() {
        tensors.insert(name.clone(), var.as_tensor().to_dtype(dtype)?);
    }
    drop(data);
    candle_core::safetensors::save(&tensors, weights)?;
    config.save(&config_path(weights))
}

// ---------------------------------------------------------------------------------------------
// Layers

/// Per-conv frame caches for streaming decode: slots are visited in a fixed order on every chunk.
#[derive(Debug, Default)]
struct FrameCache {
    slots: Vec<Option<Tensor>>,
    idx: usize,
    /// True while the first chunk (which holds latent frame 0) is being decoded.
    first: bool,
}

impl FrameCache {
    fn next_slot(&mut self) -> &mut Option<Tensor> {
        if self.idx == self.slots.len() {
            self.slots.push(None);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// Runs a stride-1 causal conv, through the cache when streaming: the cache holds the last
/// `kt - 1` input frames seen so far (fewer at the start, where zeros stand in).
fn cached_conv(conv: &CausalConv3d, x: &Tensor, cache: Option<&mut FrameCache>) -> Result<Tensor> {
    let kt = conv.weight().dim(2)?;
    let Some(cache) = cache.filter(|_| kt > 1) else {
        return conv.forward(x);
    };
    let slot = cache.next_slot();
    let y = conv.forward_with_cache(x, slot.as_ref())?;
    let history = match slot.as_ref() {
        Some(prev) => Tensor::cat(&[prev, x], 2)?,
        None => x.clone(),
    };
    let n = history.dim(2)?;
    let keep = n.min(kt - 1);
    *slot = Some(history.narrow(2, n - keep, keep)?.contiguous()?);
    Ok(y)
}

fn conv3d(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    kernel: (usize, usize, usize),
    config: Conv3dConfig,
) -> Result<CausalConv3d> {
    // Fetched with an init hint first so a fresh `VarMap` gets Kaiming weights (a plain `get`
    // would make zeros); a checkpoint ignores the hint. `load` then reads the same tensors.
    let _ = vb.get_with_hints(
        (cout, cin, kernel.0, kernel.1, kernel.2),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let _ = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    CausalConv3d::load(vb, cin, cout, kernel, config, true)
}

/// A same-size causal conv `(kt, 3, 3)`.
fn conv_same(vb: VarBuilder, cin: usize, cout: usize, kt: usize) -> Result<CausalConv3d> {
    conv3d(vb, cin, cout, (kt, 3, 3), Conv3dConfig::causal(kt, 1))
}

/// RMS norm over channels at each (frame, pixel), with a learned gain.
#[derive(Debug, Clone)]
struct ChannelNorm {
    gamma: Tensor,
}

impl ChannelNorm {
    fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        let gamma = vb.get_with_hints(c, "gamma", Init::Const(1.0))?;
        Ok(Self {
            gamma: gamma.reshape((1, c, 1, 1, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(1)?;
        let inv = (ms + NORM_EPS)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.gamma)
    }
}

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`; `conv1` mixes time, `conv2` is `1×3×3`.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: ChannelNorm,
    conv1: CausalConv3d,
    norm2: ChannelNorm,
    conv2: CausalConv3d,
}

impl ResBlock {
    fn load(vb: VarBuilder, c: usize, kt: usize) -> Result<Self> {
        Ok(Self {
            norm1: ChannelNorm::load(vb.pp("norm1"), c)?,
            conv1: conv_same(vb.pp("conv1"), c, c, kt)?,
            norm2: ChannelNorm::load(vb.pp("norm2"), c)?,
            conv2: conv_same(vb.pp("conv2"), c, c, 1)?,
        })
    }

    fn forward(&self, x: &Tensor, mut cache: Option<&mut FrameCache>) -> Result<Tensor> {
        let h = self.norm1.forward(x)?.silu()?;
        let h = cached_conv(&self.conv1, &h, cache.as_deref_mut())?;
        let h = self.norm2.forward(&h)?.silu()?;
        let h = cached_conv(&self.conv2, &h, cache)?;
        x + h
    }
}

/// Encoder transition: one strided conv, `(3,3,3)` with two zero frames in front and time stride
/// 2 when time is halved, `(1,3,3)` otherwise; spatial stride 2 when space is halved.
#[derive(Debug, Clone)]
struct Down {
    conv: CausalConv3d,
}

impl Down {
    fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        spatial: bool,
        temporal: bool,
    ) -> Result<Self> {
        let kt = if temporal { RESAMPLE_KT } else { 1 };
        let cfg = Conv3dConfig {
            time_pad: kt - 1,
            spatial_pad: 1,
            time_stride: if temporal { 2 } else { 1 },
            spatial_stride: if spatial { 2 } else { 1 },
        };
        Ok(Self {
            conv: conv3d(vb.pp("conv"), cin, cout, (kt, 3, 3), cfg)?,
        })
    }
}

/// Decoder transition: optional temporal upsample (`time_conv` to 2× channels, halves
/// interleaved as frames, the very first frame dropped), optional nearest 2× spatial upsample,
/// then a `1×3×3` conv to the next level's channels.
#[derive(Debug, Clone)]
struct Up {
    time_conv: Option<CausalConv3d>,
    spatial: bool,
    conv: CausalConv3d,
}

impl Up {
    fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        spatial: bool,
        temporal: bool,
    ) -> Result<Self> {
        let time_conv = if temporal {
            Some(conv3d(
                vb.pp("time_conv"),
                cin,
                2 * cin,
                (RESAMPLE_KT, 1, 1),
                Conv3dConfig::causal(RESAMPLE_KT, 0),
            )?)
        } else {
            None
        };
        Ok(Self {
            time_conv,
            spatial,
            conv: conv_same(vb.pp("conv"), cin, cout, 1)?,
        })
    }

    fn forward(&self, x: &Tensor, mut cache: Option<&mut FrameCache>) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(tc) = &self.time_conv {
            let first = cache.as_ref().is_none_or(|c| c.first);
            let y = cached_conv(tc, &x, cache.as_deref_mut())?;
            let (b, c2, t, h, w) = y.dims5()?;
            let c = c2 / 2;
            // [B, 2C, T, H, W] -> [B, C, T, 2, H, W] -> [B, C, 2T, H, W]: frame 2j+s is half s.
            x = y
                .reshape((b, 2, c, t, h, w))?
                .permute((0, 2, 3, 1, 4, 5))?
                .reshape((b, c, 2 * t, h, w))?;
            if first {
                // Latent frame 0 stands for video frame 0 alone.
                x = x.narrow(2, 1, 2 * t - 1)?;
            }
        }
        if self.spatial {
            x = upsample2x(&x)?;
        }
        cached_conv(&self.conv, &x, cache)
    }
}

/// Space-to-depth: `[B, C, T, H, W]` → `[B, C·p², T, H/p, W/p]`, channel `c·p² + py·p + px`.
fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, c, t, h, w) = x.dims5()?;
    let (hp, wp) = (h / p, w / p);
    x.reshape((b * c * t, hp, p, wp, p))?
        .permute((0, 2, 4, 1, 3))?
        .reshape((b * c, t, p * p, hp, wp))?
        .permute((0, 2, 1, 3, 4))?
        .reshape((b, c * p * p, t, hp, wp))
}

/// Depth-to-space, the inverse of [`patchify`].
fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, cpp, t, hp, wp) = x.dims5()?;
    let c = cpp / (p * p);
    x.reshape((b * c, p * p, t, hp, wp))?
        .permute((0, 2, 1, 3, 4))?
        .reshape((b * c * t, p, p, hp, wp))?
        .permute((0, 3, 1, 4, 2))?
        .reshape((b, c, t, hp * p, wp * p))
}

/// Nearest-neighbour 2× upsampling of height and width of `[B, C, T, H, W]`.
fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    x.reshape((b * c * t, h, 1, w, 1))?
        .broadcast_as((b * c * t, h, 2, w, 2))?
        .reshape((b, c, t, 2 * h, 2 * w))
}

#[derive(Debug, Clone)]
struct EncoderLevel {
    blocks: Vec<ResBlock>,
    down: Option<Down>,
}

#[derive(Debug, Clone)]
struct Encoder {
    patch_size: usize,
    conv_in: CausalConv3d,
    levels: Vec<EncoderLevel>,
    norm_out: ChannelNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    fn load(vb: VarBuilder, cfg: &WorldVaeConfig) -> Result<Self> {
        let kt = cfg.temporal_kernel;
        let ch = &cfg.channels;
        let l = ch.len();
        let pixels = cfg.in_channels * cfg.patch_size * cfg.patch_size;
        let conv_in = conv_same(vb.pp("conv_in"), pixels, ch[0], kt)?;
        let mut levels = Vec::with_capacity(l);
        for i in 0..l {
            let vbl = vb.pp(format!("levels.{i}"));
            let blocks = (0..cfg.encoder_blocks)
                .map(|j| ResBlock::load(vbl.pp(format!("blocks.{j}")), ch[i], kt))
                .collect::<Result<Vec<_>>>()?;
            let down = if i + 1 < l {
                Some(Down::load(
                    vbl.pp("down"),
                    ch[i],
                    ch[i + 1],
                    cfg.spatial_down[i],
                    cfg.temporal_down[i],
                )?)
            } else {
                None
            };
            levels.push(EncoderLevel { blocks, down });
        }
        Ok(Self {
            patch_size: cfg.patch_size,
            conv_in,
            levels,
            norm_out: ChannelNorm::load(vb.pp("norm_out"), ch[l - 1])?,
            conv_out: conv_same(vb.pp("conv_out"), ch[l - 1], 2 * cfg.latent_channels, kt)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(&patchify(x, self.patch_size)?)?;
        for level in &self.levels {
            for b in &level.blocks {
                x = b.forward(&x, None)?;
            }
            if let Some(d) = &level.down {
                x = d.conv.forward(&x)?;
            }
        }
        let x = self.norm_out.forward(&x)?.silu()?;
        self.conv_out.forward(&x)
    }
}

#[derive(Debug, Clone)]
struct DecoderLevel {
    blocks: Vec<ResBlock>,
    up: Option<Up>,
}

#[derive(Debug, Clone)]
struct Decoder {
    patch_size: usize,
    conv_in: CausalConv3d,
    /// Coarsest level first (the order they run in); `levels[k]` is stored as
    /// `levels.{L-1-k}` so a level has the same index in encoder and decoder keys.
    levels: Vec<DecoderLevel>,
    norm_out: ChannelNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    fn load(vb: VarBuilder, cfg: &WorldVaeConfig) -> Result<Self> {
        let kt = cfg.temporal_kernel;
        let ch = &cfg.channels;
        let l = ch.len();
        let conv_in = conv_same(vb.pp("conv_in"), cfg.latent_channels, ch[l - 1], kt)?;
        let mut levels = Vec::with_capacity(l);
        for i in (0..l).rev() {
            let vbl = vb.pp(format!("levels.{i}"));
            let blocks = (0..cfg.decoder_blocks)
                .map(|j| ResBlock::load(vbl.pp(format!("blocks.{j}")), ch[i], kt))
                .collect::<Result<Vec<_>>>()?;
            let up = if i > 0 {
                Some(Up::load(
                    vbl.pp("up"),
                    ch[i],
                    ch[i - 1],
                    cfg.spatial_down[i - 1],
                    cfg.temporal_down[i - 1],
                )?)
            } else {
                None
            };
            levels.push(DecoderLevel { blocks, up });
        }
        Ok(Self {
            patch_size: cfg.patch_size,
            conv_in,
            levels,
            norm_out: ChannelNorm::load(vb.pp("norm_out"), ch[0])?,
            conv_out: conv_same(
                vb.pp("conv_out"),
                ch[0],
                cfg.in_channels * cfg.patch_size * cfg.patch_size,
                kt,
            )?,
        })
    }

    fn forward(&self, z: &Tensor, mut cache: Option<&mut FrameCache>) -> Result<Tensor> {
        if let Some(c) = cache.as_deref_mut() {
            c.idx = 0;
        }
        let mut x = cached_conv(&self.conv_in, z, cache.as_deref_mut())?;
        for level in &self.levels {
            for b in &level.blocks {
                x = b.forward(&x, cache.as_deref_mut())?;
            }
            if let Some(u) = &level.up {
                x = u.forward(&x, cache.as_deref_mut())?;
            }
        }
        let x = self.norm_out.forward(&x)?.silu()?;
        unpatchify(&cached_conv(&self.conv_out, &x, cache)?, self.patch_size)
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// The three parts of the training loss, each a scalar tensor.
#[derive(Debug, Clone)]
pub struct VaeLoss {
    /// `recon + kl_weight · kl`.
    pub total: Tensor,
    /// The reconstruction term: mean squared error (pixels in [-1, 1]), weighted per pixel when
    /// the loss was given weights.
    pub recon: Tensor,
    /// Plain (unweighted) mean squared error of the reconstruction.
    pub mse: Tensor,
    /// KL divergence to N(0, I), averaged over latent elements.
    pub kl: Tensor,
}

/// The causal 3D convolutional VAE. See the module docs.
#[derive(Debug, Clone)]
pub struct WorldVae {
    config: WorldVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
}

impl WorldVae {
    /// Builds the model from `vb` (a `VarMap` for training, a checkpoint for inference). Keys are
    /// `encoder.*` and `decoder.*`.
    pub fn new(config: WorldVaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let encoder = Encoder::load(vb.pp("encoder"), &config)?;
        let decoder = Decoder::load(vb.pp("decoder"), &config)?;
        Ok(Self {
            config,
            encoder,
            decoder,
        })
    }

    /// Loads weights saved by [`save`] (any float dtype, computed in `dtype`) with the config
    /// from [`config_path`].
    pub fn load(weights: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = WorldVaeConfig::from_file(&config_path(weights))?;
        Self::load_with_config(config, weights, dtype, device)
    }

    /// Loads weights with a given config.
    pub fn load_with_config(
        config: WorldVaeConfig,
        weights: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let vb = Checkpoint::open(&[weights])?.var_builder(dtype, device);
        Self::new(config, vb)
    }

    /// The model's shape.
    pub fn config(&self) -> &WorldVaeConfig {
        &self.config
    }

    /// Checks a video `[B, C, T, H, W]` fits the model; returns the latent frame count.
    fn check_video(&self, video: &Tensor) -> Result<usize> {
        let Ok((_, c, t, h, w)) = video.dims5() else {
            candle_core::bail!(
                "world vae: video must be [batch, channels, frames, height, width], got {:?}",
                video.dims()
            );
        };
        if c != self.config.in_channels {
            candle_core::bail!(
                "world vae: video has {c} channels, the model takes {}",
                self.config.in_channels
            );
        }
        self.config.check_size(h, w)?;
        self.config.latent_frames(t)
    }

    /// Encodes `video` `[B, 3, 1+f·k, H, W]` in [-1, 1] to the posterior's `(mean, logvar)`, each
    /// `[B, latent_channels, 1+k, H/s, W/s]`; `logvar` is clamped to a safe range.
    pub fn encode(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_video(video)?;
        let moments = self.encoder.forward(video)?;
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?;
        let logvar =
            (moments.narrow(1, lc, lc)? + LOGVAR_OFFSET)?.clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?;
        Ok((mean, logvar))
    }

    /// Draws `mean + exp(logvar / 2) · ε`, `ε ~ N(0, I)` from `rng` (the reparameterisation
    /// trick: gradients flow to `mean` and `logvar`).
    pub fn sample<R: Rng + ?Sized>(mean: &Tensor, logvar: &Tensor, rng: &mut R) -> Result<Tensor> {
        let n = mean.elem_count();
        let eps: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let eps = Tensor::from_vec(eps, mean.shape(), mean.device())?.to_dtype(mean.dtype())?;
        let std = (logvar * 0.5)?.exp()?;
        mean + (std * eps)?
    }

    fn check_latent(&self, z: &Tensor) -> Result<()> {
        let Ok((_, c, t, _, _)) = z.dims5() else {
            candle_core::bail!(
                "world vae: latents must be [batch, channels, frames, height, width], got {:?}",
                z.dims()
            );
        };
        if c != self.config.latent_channels || t == 0 {
            candle_core::bail!(
                "world vae: latents {:?} need {} channels and at least one frame",
                z.dims(),
                self.config.latent_channels
            );
        }
        Ok(())
    }

    /// Decodes latents `[B, latent_channels, T', h, w]` (starting at latent frame 0) to video
    /// `[B, 3, 1+f·(T'-1), h·s, w·s]`, in one pass.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latent(z)?;
        self.decoder.forward(z, None)
    }

    /// A decoder that takes latent frames a chunk at a time (starting at latent frame 0) and
    /// returns each chunk's video frames; the frames equal [`WorldVae::decode`]'s.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            vae: self,
            cache: FrameCache {
                first: true,
                ..FrameCache::default()
            },
        }
    }

    /// [`WorldVae::decode`] one latent frame at a time, holding only one latent frame's
    /// activations (plus small frame caches) at once.
    pub fn decode_streaming(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latent(z)?;
        let mut stream = self.decode_stream();
        let frames = (0..z.dim(2)?)
            .map(|j| stream.push(&z.narrow(2, j, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&frames, 2)
    }

    /// Encodes, samples the posterior with `rng`, decodes, and returns the training loss:
    /// `recon` = mean squared error, `kl` = `0.5 · mean(μ² + σ² − 1 − log σ²)` over latent
    /// elements, `total = recon + kl_weight · kl`.
    pub fn loss<R: Rng + ?Sized>(
        &self,
        video: &Tensor,
        kl_weight: f64,
        rng: &mut R,
    ) -> Result<VaeLoss> {
        self.loss_weighted(video, None, kl_weight, rng)
    }

    /// [`loss`](Self::loss) with the reconstruction error weighted per pixel by
    /// `pixel_weight [B, 1, T, H, W]` (a weighted mean; `None`: all pixels alike).
    pub fn loss_weighted<R: Rng + ?Sized>(
        &self,
        video: &Tensor,
        pixel_weight: Option<&Tensor>,
        kl_weight: f64,
        rng: &mut R,
    ) -> Result<VaeLoss> {
        let (mean, logvar) = self.encode(video)?;
        let z = Self::sample(&mean, &logvar, rng)?;
        let sq = (self.decode(&z)? - video)?.sqr()?;
        let (recon, mse) = weighted_mse(&sq, pixel_weight)?;
        let kl = kl_divergence(&mean, &logvar)?;
        let total = (&recon + (&kl * kl_weight)?)?;
        Ok(VaeLoss {
            total,
            recon,
            mse,
            kl,
        })
    }
}

/// `(weighted mean, plain mean)` of squared errors `sq [B, C, T, H, W]` under per-pixel weights
/// `[B, 1, T, H, W]` (both the plain mean without weights).
pub fn weighted_mse(sq: &Tensor, pixel_weight: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let mse = sq.mean_all()?;
    let Some(w) = pixel_weight else {
        return Ok((mse.clone(), mse));
    };
    let c = sq.dim(1)? as f64;
    let w = w.to_dtype(sq.dtype())?;
    let total_weight = (w.sum_all()? * c)?;
    let weighted = sq.broadcast_mul(&w)?.sum_all()?.div(&total_weight)?;
    Ok((weighted, mse))
}

/// `0.5 · mean(μ² + exp(logvar) − 1 − logvar)`: KL(N(μ, σ²) ‖ N(0, 1)) per latent element.
pub fn kl_divergence(mean: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let kl = ((mean.sqr()? + logvar.exp()?)? - logvar)?;
    ((kl - 1.0)?.mean_all()? * 0.5)?.to_dtype(DType::F32)
}

/// Peak signal-to-noise ratio in dB of two videos in [-1, 1] (computed on the [0, 1] scale).
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    let mse = ((a - b)? * 0.5)?
        .sqr()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(-10.0 * mse.max(1e-20).log10())
}

/// Streaming decoder from [`WorldVae::decode_stream`].
#[derive(Debug)]
pub struct DecodeStream<'a> {
    vae: &'a WorldVae,
    cache: FrameCache,
}

impl DecodeStream<'_> {
    /// Decodes the next `n` latent frames `[B, C, n, h, w]`; returns their video frames (1 + f·(n−1)
    /// for the first chunk, f·n after).
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        self.vae.check_latent(z)?;
        let y = self.vae.decoder.forward(z, Some(&mut self.cache))?;
        self.cache.first = false;
        Ok(y)
    }
}

/// Parameter count of the variables in `varmap` whose names start with `prefix` (`""` for all).
pub fn param_count(varmap: &VarMap, prefix: &str) -> usize {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.elem_count())
        .sum()
}
