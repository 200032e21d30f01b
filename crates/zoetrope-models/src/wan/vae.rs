//! The Wan 2.1 video VAE (`AutoencoderKLWan` in diffusers), computed as diffusers 0.42.1 computes
//! it.
//!
//! Video is `[B, 3, F, H, W]` in [-1, 1]; latents are `[B, z_dim, 1 + (F-1)/4, H/8, W/8]`. Every
//! 3D convolution is causal, and both directions run chunk by chunk through a *feature cache*
//! (one slot per causal conv, holding the last `CACHE_T = 2` input frames of that conv), exactly
//! like diffusers' `feat_cache`/`feat_idx` lists:
//!
//! - encode: frames `[0]`, then `[1..5)`, `[5..9)`, … — one latent frame per chunk;
//! - decode: one latent frame at a time, so decoding never holds more than one latent frame's
//!   intermediate activations (plus the 2-frame caches).
//!
//! The temporal resamplers do not behave like a plain causal conv on the first chunks; those
//! quirks are replicated on purpose and described on the (private) `Resample` type.
//!
//! Large frames: [`AutoencoderKLWan::decode_tiled`] is diffusers' spatial tiling for decode.
//! Not implemented: tiled *encode*, Wan 2.2's residual up/down blocks (`is_residual`) and
//! `patch_size`.

use std::path::Path;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;
use zoetrope_nn::conv3d::{CausalConv3d, Conv3dConfig};
use zoetrope_nn::fast;
use zoetrope_nn::fast::{Bf16Products, Conv2d};

/// Frames each causal conv keeps from the previous chunk (diffusers' `CACHE_T`).
const CACHE_T: usize = 2;

fn default_channels() -> usize {
    3
}

/// `vae/config.json` of a diffusers Wan checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct WanVaeConfig {
    pub base_dim: usize,
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Spelled as in diffusers.
    pub temperal_downsample: Vec<bool>,
    #[serde(default)]
    pub dropout: f64,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default)]
    pub patch_size: Option<usize>,
}

impl WanVaeConfig {
    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.is_residual {
            return Err("is_residual (Wan 2.2 VAE) is not supported".into());
        }
        if self.patch_size.is_some_and(|p| p != 1) {
            return Err("patch_size (Wan 2.2 VAE) is not supported".into());
        }
        if self.dim_mult.is_empty() || self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            return Err("dim_mult / temperal_downsample lengths do not fit".into());
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!(
                "latents_mean/latents_std need z_dim = {} entries",
                self.z_dim
            ));
        }
        Ok(())
    }
}

/// One slot of diffusers' `feat_cache` list.
#[derive(Debug, Clone, Default)]
enum Slot {
    /// `None` in diffusers: this conv has not run yet.
    #[default]
    Empty,
    /// The string `"Rep"` that `upsample3d` stores after skipping its `time_conv` on the first
    /// chunk.
    Rep,
    /// The last input frames (at most [`CACHE_T`]).
    Frames(Tensor),
}

/// diffusers' `feat_cache` plus `feat_idx`: slots are visited in a fixed order on every chunk, and
/// the index is reset to 0 before each chunk.
#[derive(Debug, Default)]
struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatCache {
    fn current(&mut self) -> &mut Slot {
        if self.slots.len() <= self.idx {
            self.slots.resize(self.idx + 1, Slot::Empty);
        }
        &mut self.slots[self.idx]
    }
}

/// Last `n` frames of `x` (fewer if it has fewer), copied so the cache does not keep the whole
/// chunk's storage alive.
fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    let k = t.min(n);
    x.narrow(2, t - k, k)?.copy()
}

/// A causal conv run through the cache the way every `WanCausalConv3d` call site in diffusers
/// does: the new cache is the last 2 input frames, and when the chunk has only one frame the last
/// frame of the old cache is put in front of it.
fn cached_conv(conv: &CausalConv3d, x: &Tensor, cache: Option<&mut FeatCache>) -> Result<Tensor> {
    let Some(cache) = cache else {
        return conv.forward(x);
    };
    let slot = cache.current();
    let mut cache_x = last_frames(x, CACHE_T)?;
    let prev = match std::mem::take(slot) {
        Slot::Frames(p) => Some(p),
        Slot::Empty => None,
        Slot::Rep => candle_core::bail!("wan vae: 'Rep' cache slot reached a plain causal conv"),
    };
    if cache_x.dim(2)? < CACHE_T {
        if let Some(p) = &prev {
            cache_x = Tensor::cat(&[&last_frames(p, 1)?, &cache_x], 2)?;
        }
    }
    let y = conv.forward_with_cache(x, prev.as_ref())?;
    *slot = Slot::Frames(cache_x);
    cache.idx += 1;
    Ok(y)
}

/// `WanRMS_norm`: `F.normalize(x, dim=1) * sqrt(C) * gamma (+ bias)` — an L2 normalisation over
/// channels with `eps = 1e-12` on the norm, not mean-of-squares + eps.
#[derive(Debug, Clone)]
struct RmsNorm {
    gamma: Tensor,
    bias: Option<Tensor>,
    scale: f64,
}

impl RmsNorm {
    fn load(vb: VarBuilder, dim: usize, images: bool) -> Result<Self> {
        // images=False norms act on [B, C, T, H, W], images=True ones on [B*T, C, H, W].
        let (gamma, bias) = if images {
            (
                vb.get((dim, 1, 1), "gamma")?,
                vb.contains_tensor("bias")
                    .then(|| vb.get((dim, 1, 1), "bias"))
                    .transpose()?,
            )
        } else {
            (
                vb.get((dim, 1, 1, 1), "gamma")?,
                vb.contains_tensor("bias")
                    .then(|| vb.get((dim, 1, 1, 1), "bias"))
                    .transpose()?,
            )
        };
        Ok(Self {
            gamma,
            bias,
            scale: (dim as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// The norm, then SiLU when `silu` (fused into one pass on the CPU kernels).
    fn forward_act(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if let Some(y) =
            fast::channel_l2_norm(x, &self.gamma, self.bias.as_ref(), self.scale, silu)?
        {
            return Ok(y);
        }
        let y = self.forward_composite(x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        // diffusers normalises half-precision inputs in f32.
        let xf = if matches!(dtype, DType::F16 | DType::BF16) {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        let norm = xf
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        let y = (normalized * self.scale)?.broadcast_mul(&self.gamma)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `[B, C, T, H, W] -> [B*T, C, H, W]`.
fn frames_to_batch(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    x.permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((b * t, c, h, w))
}

/// `[B*T, C, H, W] -> [B, C, T, H, W]`.
fn batch_to_frames(x: &Tensor, b: usize) -> Result<Tensor> {
    let (bt, c, h, w) = x.dims4()?;
    x.reshape((b, bt / b, c, h, w))?.permute((0, 2, 1, 3, 4))
}

fn conv3d(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: (usize, usize, usize),
    cfg: Conv3dConfig,
) -> Result<CausalConv3d> {
    CausalConv3d::load(vb, cin, cout, k, cfg, true)
}

/// `WanResidualBlock`: RMS norm, SiLU, causal 3×3×3 conv, twice, plus a 1×1×1 shortcut when the
/// channel count changes. Dropout is a no-op at inference.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResBlock {
    fn load(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let c3 = Conv3dConfig::causal(3, 1);
        Ok(Self {
            norm1: RmsNorm::load(vb.pp("norm1"), cin, false)?,
            conv1: conv3d(vb.pp("conv1"), cin, cout, (3, 3, 3), c3)?,
            norm2: RmsNorm::load(vb.pp("norm2"), cout, false)?,
            conv2: conv3d(vb.pp("conv2"), cout, cout, (3, 3, 3), c3)?,
            shortcut: if cin != cout {
                Some(conv3d(
                    vb.pp("conv_shortcut"),
                    cin,
                    cout,
                    (1, 1, 1),
                    Conv3dConfig::causal(1, 0),
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, mut cache: Option<&mut FeatCache>) -> Result<Tensor> {
        // The shortcut is a 1×1×1 conv and is called without the cache in diffusers.
        let h = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let y = self.norm1.forward_act(x, true)?;
        let y = cached_conv(&self.conv1, &y, cache.as_deref_mut())?;
        let y = self.norm2.forward_act(&y, true)?;
        let y = cached_conv(&self.conv2, &y, cache)?;
        y + h
    }
}

/// `WanAttentionBlock`: single-head self-attention over the `H·W` positions of each frame, with
/// q, k, v from a 1×1 conv of the RMS-normed input.
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttnBlock {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let cfg = Conv2dConfig::default();
        Ok(Self {
            norm: RmsNorm::load(vb.pp("norm"), dim, true)?,
            to_qkv: Conv2d::new(candle_nn::conv2d(dim, dim * 3, 1, cfg, vb.pp("to_qkv"))?),
            proj: Conv2d::new(candle_nn::conv2d(dim, dim, 1, cfg, vb.pp("proj"))?),
            dim,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, h, w) = x.dims5()?;
        let xf = frames_to_batch(x)?;
        let bt = xf.dim(0)?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&xf)?)?;
        // [BT, 3C, HW] -> [BT, HW, 3C]; q, k, v are consecutive channel thirds.
        let qkv = qkv.reshape((bt, 3 * c, h * w))?.transpose(1, 2)?;
        let q = qkv.narrow(2, 0, c)?.contiguous()?;
        let k = qkv.narrow(2, c, c)?.contiguous()?;
        let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
        let scale = 1.0 / (self.dim as f64).sqrt();
        let att = (q.matmul(&k.transpose(1, 2)?)? * scale)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [BT, HW, C]
        let y = y.transpose(1, 2)?.reshape((bt, c, h, w))?;
        let y = self.proj.forward(&y)?;
        batch_to_frames(&y, b)? + x
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: spatial ×2 up/down per frame, and for the 3D modes a temporal `time_conv`.
///
/// Reference quirks kept on purpose (diffusers 0.42.1 `WanResample.forward`):
/// - `downsample3d`: on the first chunk the `time_conv` is *skipped* (the cache just stores the
///   chunk), so the first frame passes through unchanged in time. Later chunks run the stride-2,
///   unpadded `(3,1,1)` conv over `[last cached frame, chunk]`.
/// - `upsample3d`: on the first chunk the `time_conv` is *skipped* and the slot is marked `"Rep"`
///   (one frame in, one frame out). On the second chunk the conv runs with plain zero padding
///   instead of a cached frame, and the cache stored for the third chunk is `[zeros, frame 1]` —
///   frame 0 never reaches the `time_conv`. After that it is an ordinary causal conv. The conv
///   doubles the channels; channel halves become consecutive output frames.
/// - without a cache (not used by this crate) diffusers skips `time_conv` altogether.
#[derive(Debug, Clone)]
struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    fn load(
        vb: VarBuilder,
        dim: usize,
        mode: ResampleMode,
        upsample_out_dim: usize,
    ) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let cfg = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                let conv = Conv2d::new(candle_nn::conv2d(
                    dim,
                    upsample_out_dim,
                    3,
                    cfg,
                    vb.pp("resample.1"),
                )?);
                let tc = (mode == ResampleMode::Upsample3d)
                    .then(|| {
                        conv3d(
                            vb.pp("time_conv"),
                            dim,
                            dim * 2,
                            (3, 1, 1),
                            Conv3dConfig::causal(3, 0),
                        )
                    })
                    .transpose()?;
                (conv, tc)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let cfg = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                let conv = Conv2d::new(candle_nn::conv2d(dim, dim, 3, cfg, vb.pp("resample.1"))?);
                let tc_cfg = Conv3dConfig {
                    time_pad: 0,
                    spatial_pad: 0,
                    time_stride: 2,
                    spatial_stride: 1,
                };
                let tc = (mode == ResampleMode::Downsample3d)
                    .then(|| conv3d(vb.pp("time_conv"), dim, dim, (3, 1, 1), tc_cfg))
                    .transpose()?;
                (conv, tc)
            }
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    fn forward(&self, x: &Tensor, mut cache: Option<&mut FeatCache>) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Upsample3d, Some(cache), Some(tc)) =
            (self.mode, cache.as_deref_mut(), &self.time_conv)
        {
            let slot = cache.current();
            match std::mem::take(slot) {
                Slot::Empty => *slot = Slot::Rep,
                prev => {
                    let mut cache_x = last_frames(&x, CACHE_T)?;
                    if cache_x.dim(2)? < CACHE_T {
                        let front = match &prev {
                            Slot::Frames(p) => last_frames(p, 1)?,
                            // Quirk: after "Rep" the cache is padded with a zero frame.
                            _ => cache_x.zeros_like()?,
                        };
                        cache_x = Tensor::cat(&[&front, &cache_x], 2)?;
                    }
                    let y = match &prev {
                        Slot::Frames(p) => tc.forward_with_cache(&x, Some(p))?,
                        // Quirk: the second chunk is zero-padded, the first frame is not used.
                        _ => tc.forward(&x)?,
                    };
                    *slot = Slot::Frames(cache_x);
                    let (b, c2, t, h, w) = y.dims5()?;
                    let c = c2 / 2;
                    // [B, 2, C, T, H, W] -> stack the halves after T -> [B, C, 2T, H, W].
                    let y = y.reshape((b, 2, c, t, h, w))?;
                    let y = Tensor::stack(
                        &[
                            y.narrow(1, 0, 1)?.squeeze(1)?,
                            y.narrow(1, 1, 1)?.squeeze(1)?,
                        ],
                        3,
                    )?;
                    x = y.reshape((b, c, 2 * t, h, w))?;
                }
            }
            cache.idx += 1;
        }

        let b = x.dim(0)?;
        let xf = frames_to_batch(&x)?;
        let yf = match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                // nearest-exact ×2 is plain pixel duplication for an integer factor.
                let (_, _, h, w) = xf.dims4()?;
                let up = xf.upsample_nearest2d(2 * h, 2 * w)?;
                self.conv.forward(&up)?
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                // ZeroPad2d((0, 1, 0, 1)): one zero column on the right, one zero row at the bottom.
                let padded = xf.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
                self.conv.forward(&padded)?
            }
        };
        let mut x = batch_to_frames(&yf, b)?;

        if let (ResampleMode::Downsample3d, Some(cache), Some(tc)) =
            (self.mode, cache, &self.time_conv)
        {
            let slot = cache.current();
            match std::mem::take(slot) {
                // Quirk: the first chunk skips the time_conv and caches the whole chunk.
                Slot::Empty => *slot = Slot::Frames(x.copy()?),
                Slot::Frames(p) => {
                    let cache_x = last_frames(&x, 1)?;
                    x = tc.forward(&Tensor::cat(&[&last_frames(&p, 1)?, &x], 2)?)?;
                    *slot = Slot::Frames(cache_x);
                }
                Slot::Rep => candle_core::bail!("wan vae: 'Rep' cache slot in downsample3d"),
            }
            cache.idx += 1;
        }
        Ok(x)
    }
}

/// `WanMidBlock`: resnet, attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    res0: ResBlock,
    attn: AttnBlock,
    res1: ResBlock,
}

impl MidBlock {
    fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            res0: ResBlock::load(vb.pp("resnets.0"), dim, dim)?,
            attn: AttnBlock::load(vb.pp("attentions.0"), dim)?,
            res1: ResBlock::load(vb.pp("resnets.1"), dim, dim)?,
        })
    }

    fn forward(&self, x: &Tensor, mut cache: Option<&mut FeatCache>) -> Result<Tensor> {
        let x = self.res0.forward(x, cache.as_deref_mut())?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, cache)
    }
}

#[derive(Debug, Clone)]
enum DownLayer {
    Res(ResBlock),
    Attn(AttnBlock),
    Resample(Resample),
}

/// `WanEncoder3d` (non-residual, Wan 2.1).
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: CausalConv3d,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    fn load(vb: VarBuilder, cfg: &WanVaeConfig) -> Result<Self> {
        let c3 = Conv3dConfig::causal(3, 1);
        let dim = cfg.base_dim;
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|u| dim * u)
            .collect();
        let conv_in = conv3d(vb.pp("conv_in"), cfg.in_channels, dims[0], (3, 3, 3), c3)?;
        let mut down = Vec::new();
        let vbd = vb.pp("down_blocks");
        let mut scale = 1.0f64;
        let n = cfg.dim_mult.len();
        for i in 0..n {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                down.push(DownLayer::Res(ResBlock::load(
                    vbd.pp(down.len().to_string()),
                    cin,
                    cout,
                )?));
                if cfg.attn_scales.contains(&scale) {
                    down.push(DownLayer::Attn(AttnBlock::load(
                        vbd.pp(down.len().to_string()),
                        cout,
                    )?));
                }
                cin = cout;
            }
            if i != n - 1 {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                down.push(DownLayer::Resample(Resample::load(
                    vbd.pp(down.len().to_string()),
                    cout,
                    mode,
                    cout,
                )?));
                scale /= 2.0;
            }
        }
        let out_dim = dims[n];
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::load(vb.pp("mid_block"), out_dim)?,
            norm_out: RmsNorm::load(vb.pp("norm_out"), out_dim, false)?,
            conv_out: conv3d(vb.pp("conv_out"), out_dim, cfg.z_dim * 2, (3, 3, 3), c3)?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        cache.idx = 0;
        let mut x = cached_conv(&self.conv_in, x, Some(cache))?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Res(r) => r.forward(&x, Some(cache))?,
                DownLayer::Attn(a) => a.forward(&x)?,
                DownLayer::Resample(r) => r.forward(&x, Some(cache))?,
            };
        }
        let x = self.mid.forward(&x, Some(cache))?;
        let x = self.norm_out.forward_act(&x, true)?;
        cached_conv(&self.conv_out, &x, Some(cache))
    }
}

/// `WanUpBlock`: `num_res_blocks + 1` resnets and an optional upsampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResBlock>,
    upsampler: Option<Resample>,
}

/// `WanDecoder3d` (non-residual, Wan 2.1).
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    fn load(vb: VarBuilder, cfg: &WanVaeConfig) -> Result<Self> {
        let c3 = Conv3dConfig::causal(3, 1);
        let dim = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let n = cfg.dim_mult.len();
        let dims: Vec<usize> = std::iter::once(cfg.dim_mult[n - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|u| dim * u)
            .collect();
        // temperal_upsample = temperal_downsample reversed.
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            // Wan 2.1: every upsampler halves the channels, so later blocks take half.
            let in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let vbu = vb.pp(format!("up_blocks.{i}"));
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut cur = in_dim;
            for j in 0..=cfg.num_res_blocks {
                resnets.push(ResBlock::load(
                    vbu.pp(format!("resnets.{j}")),
                    cur,
                    out_dim,
                )?);
                cur = out_dim;
            }
            let upsampler = if i != n - 1 {
                let mode = if temperal_upsample[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::load(
                    vbu.pp("upsamplers.0"),
                    out_dim,
                    mode,
                    out_dim / 2,
                )?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsampler });
        }
        let out_dim = dims[n];
        Ok(Self {
            conv_in: conv3d(vb.pp("conv_in"), cfg.z_dim, dims[0], (3, 3, 3), c3)?,
            mid: MidBlock::load(vb.pp("mid_block"), dims[0])?,
            up,
            norm_out: RmsNorm::load(vb.pp("norm_out"), out_dim, false)?,
            conv_out: conv3d(vb.pp("conv_out"), out_dim, cfg.out_channels, (3, 3, 3), c3)?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        cache.idx = 0;
        let x = cached_conv(&self.conv_in, x, Some(cache))?;
        let mut x = self.mid.forward(&x, Some(cache))?;
        for block in &self.up {
            for r in &block.resnets {
                x = r.forward(&x, Some(cache))?;
            }
            if let Some(u) = &block.upsampler {
                x = u.forward(&x, Some(cache))?;
            }
        }
        let x = self.norm_out.forward_act(&x, true)?;
        cached_conv(&self.conv_out, &x, Some(cache))
    }
}

/// Tile sizes for [`AutoencoderKLWan::decode_tiled`], in video pixels (diffusers'
/// `tile_sample_min_*` / `tile_sample_stride_*`; defaults 256 and 192).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanVaeTiling {
    pub min_height: usize,
    pub min_width: usize,
    pub stride_height: usize,
    pub stride_width: usize,
}

impl Default for WanVaeTiling {
    fn default() -> Self {
        Self {
            min_height: 256,
            min_width: 256,
            stride_height: 192,
            stride_width: 192,
        }
    }
}

/// diffusers' `blend_v` (`dim` 3) / `blend_h` (`dim` 4): the first `extent` rows/columns of `b`
/// become `a[-extent + y] * (1 - y/extent) + b[y] * (y/extent)`.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let ramp: Vec<f32> = (0..extent)
        .map(|y| (y as f64 / extent as f64) as f32)
        .collect();
    let inv: Vec<f32> = (0..extent)
        .map(|y| (1.0 - y as f64 / extent as f64) as f32)
        .collect();
    let mut shape = vec![1usize; 5];
    shape[dim] = extent;
    let ramp = Tensor::from_vec(ramp, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let inv = Tensor::from_vec(inv, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let a_tail = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_head = b.narrow(dim, 0, extent)?;
    let mixed = (a_tail.broadcast_mul(&inv)? + b_head.broadcast_mul(&ramp)?)?;
    let rest = b.dim(dim)? - extent;
    if rest == 0 {
        Ok(mixed)
    } else {
        Tensor::cat(&[&mixed, &b.narrow(dim, extent, rest)?], dim)
    }
}

/// The Wan 2.1 VAE.
#[derive(Debug, Clone)]
pub struct AutoencoderKLWan {
    config: WanVaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
}

impl AutoencoderKLWan {
    /// Builds the VAE from weights under diffusers' key names (`encoder.*`, `decoder.*`,
    /// `quant_conv.*`, `post_quant_conv.*`).
    pub fn new(config: WanVaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let z = config.z_dim;
        let c1 = Conv3dConfig::causal(1, 0);
        Ok(Self {
            encoder: Encoder::load(vb.pp("encoder"), &config)?,
            quant_conv: conv3d(vb.pp("quant_conv"), 2 * z, 2 * z, (1, 1, 1), c1)?,
            post_quant_conv: conv3d(vb.pp("post_quant_conv"), z, z, (1, 1, 1), c1)?,
            decoder: Decoder::load(vb.pp("decoder"), &config)?,
            config,
        })
    }

    /// Loads a diffusers `vae/` folder (`config.json` + safetensors) in `dtype` on `device`.
    pub fn load_dir(dir: &Path, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let config = WanVaeConfig::from_file(&dir.join("config.json"))?;
        let vb = zoetrope_nn::Checkpoint::open_dir(dir)
            .map_err(candle_core::Error::from)?
            .var_builder(dtype, device);
        Self::new(config, vb)
    }

    /// The configuration.
    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// The raw posterior parameters `[B, 2·z_dim, 1 + (F-1)/4, H/8, W/8]` (`quant_conv` output)
    /// of a video `[B, 3, F, H, W]` in [-1, 1].
    ///
    /// Like diffusers, the frames are taken in chunks `[0]`, `[1..5)`, `[5..9)`, …, and
    /// `1 + (F-1)/4` chunks are run, so trailing frames beyond `1 + 4k` are ignored.
    pub fn encode_moments(&self, video: &Tensor) -> Result<Tensor> {
        let (_, _, f, _, _) = video.dims5()?;
        if f == 0 {
            candle_core::bail!("wan vae encode: the video has no frames");
        }
        let mut cache = FeatCache::default();
        let mut outs = Vec::with_capacity(1 + (f - 1) / 4);
        for i in 0..=(f - 1) / 4 {
            let chunk = if i == 0 {
                video.narrow(2, 0, 1)?
            } else {
                video.narrow(2, 1 + 4 * (i - 1), 4)?
            };
            outs.push(self.encoder.forward(&chunk, &mut cache)?);
        }
        let out = Tensor::cat(&outs, 2)?;
        self.quant_conv.forward(&out)
    }

    /// Encodes a video `[B, 3, F, H, W]` in [-1, 1] to the posterior `(mean, logvar)`, each
    /// `[B, z_dim, 1 + (F-1)/4, H/8, W/8]`; `logvar` is clamped to [-30, 20] as in diffusers'
    /// `DiagonalGaussianDistribution`. `mean` is the posterior mode (`latent_dist.mode()`).
    pub fn encode(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        let moments = self.encode_moments(video)?;
        let z = self.config.z_dim;
        let mean = moments.narrow(1, 0, z)?;
        let logvar = moments.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// Decodes latents `[B, z_dim, T, h, w]` (un-normalised, i.e. after
    /// [`denormalize_latents`](Self::denormalize_latents)) chunk by chunk, calling `sink` with
    /// each decoded chunk `[B, 3, n, 8h, 8w]` clamped to [-1, 1] (n = 1 for the first latent
    /// frame, 4 after). Only one latent frame's activations are alive at a time.
    pub fn decode_with(
        &self,
        z: &Tensor,
        mut sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        self.decode_raw(z, |x| sink(x.clamp(-1f32, 1f32)?))
    }

    /// [`decode_with`](Self::decode_with) without the final clamp (tiling blends before it).
    fn decode_raw(&self, z: &Tensor, mut sink: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        let (_, _, t, _, _) = z.dims5()?;
        let mut cache = FeatCache::default();
        for i in 0..t {
            // post_quant_conv is 1×1×1, so running it per frame equals diffusers' single call.
            let zi = self.post_quant_conv.forward(&z.narrow(2, i, 1)?)?;
            sink(self.decoder.forward(&zi, &mut cache)?)?;
        }
        Ok(())
    }

    /// Spatial downscale factor between video and latents (8 for Wan 2.1).
    pub fn spatial_compression(&self) -> usize {
        1 << (self.config.dim_mult.len() - 1)
    }

    /// diffusers' tiled decode (`enable_tiling` + `decode`): when the latent is larger than one
    /// tile, it is cut into overlapping tiles, each decoded over all frames with its own cache,
    /// and neighbouring tiles are blended linearly over `min - stride` pixels (in place, so a
    /// tile blends with its already-blended upper and left neighbours, as in diffusers). Smaller
    /// latents decode untiled, like diffusers. Output as [`decode`](Self::decode).
    pub fn decode_tiled(&self, z: &Tensor, tiling: &WanVaeTiling) -> Result<Tensor> {
        let (_, _, _, height, width) = z.dims5()?;
        let r = self.spatial_compression();
        let (tl_h, tl_w) = (tiling.min_height / r, tiling.min_width / r);
        if width <= tl_w && height <= tl_h {
            return self.decode(z);
        }
        let (ts_h, ts_w) = (tiling.stride_height / r, tiling.stride_width / r);
        if ts_h == 0 || ts_w == 0 || tl_h == 0 || tl_w == 0 {
            candle_core::bail!("wan vae tiling: tiles must be at least {r} pixels");
        }
        let blend_h = tiling.min_height.saturating_sub(tiling.stride_height);
        let blend_w = tiling.min_width.saturating_sub(tiling.stride_width);
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..height).step_by(ts_h) {
            let mut row: Vec<Tensor> = Vec::new();
            for j in (0..width).step_by(ts_w) {
                let tile =
                    z.narrow(3, i, tl_h.min(height - i))?
                        .narrow(4, j, tl_w.min(width - j))?;
                let mut frames = Vec::new();
                self.decode_raw(&tile, |x| {
                    frames.push(x);
                    Ok(())
                })?;
                let mut tile = Tensor::cat(&frames, 2)?;
                if let Some(above) = rows.last() {
                    tile = blend(&above[row.len()], &tile, blend_h, 3)?;
                }
                if let Some(left) = row.last() {
                    tile = blend(left, &tile, blend_w, 4)?;
                }
                row.push(tile);
            }
            rows.push(row);
        }
        let mut result_rows = Vec::with_capacity(rows.len());
        for row in &rows {
            let parts = row
                .iter()
                .map(|t| {
                    let h = t.dim(3)?.min(tiling.stride_height);
                    let w = t.dim(4)?.min(tiling.stride_width);
                    t.narrow(3, 0, h)?.narrow(4, 0, w)
                })
                .collect::<Result<Vec<_>>>()?;
            result_rows.push(Tensor::cat(&parts, 4)?);
        }
        let dec = Tensor::cat(&result_rows, 3)?;
        let dec = dec.narrow(3, 0, (height * r).min(dec.dim(3)?))?.narrow(
            4,
            0,
            (width * r).min(dec.dim(4)?),
        )?;
        dec.clamp(-1f32, 1f32)
    }

    /// Decodes latents `[B, z_dim, T, h, w]` to video `[B, 3, 1 + 4(T-1), 8h, 8w]` in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut outs = Vec::new();
        self.decode_with(z, |x| {
            outs.push(x);
            Ok(())
        })?;
        Tensor::cat(&outs, 2)
    }

    fn stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.config.z_dim;
        let mean: Vec<f32> = self.config.latents_mean.iter().map(|&v| v as f32).collect();
        // The pipeline builds `1.0 / torch.tensor(latents_std)` in f32 and divides by it.
        let inv_std: Vec<f32> = self
            .config
            .latents_std
            .iter()
            .map(|&v| 1.0f32 / v as f32)
            .collect();
        let shape = (1, z, 1, 1, 1);
        let mean = Tensor::from_vec(mean, shape, like.device())?.to_dtype(like.dtype())?;
        let inv_std = Tensor::from_vec(inv_std, shape, like.device())?.to_dtype(like.dtype())?;
        Ok((mean, inv_std))
    }

    /// The diffusion model's latent space from the VAE's: `(z - mean) * (1/std)`, as Wan's
    /// pipelines normalise encoded latents.
    pub fn normalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.stats(z)?;
        z.broadcast_sub(&mean)?.broadcast_mul(&inv_std)
    }

    /// The VAE's latent space from the diffusion model's: `WanPipeline` decodes
    /// `latents / (1/std) + mean` (it divides by the f32 reciprocal, reproduced here bit for bit).
    pub fn denormalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.stats(z)?;
        z.broadcast_div(&inv_std)?.broadcast_add(&mean)
    }
}

// bf16 products for every convolution of the VAE (`AutoencoderKLWan::set_bf16_products`).

impl Bf16Products for ResBlock {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.conv1.set_bf16_products(on)?;
        self.conv2.set_bf16_products(on)?;
        if let Some(s) = &mut self.shortcut {
            s.set_bf16_products(on)?;
        }
        Ok(())
    }
}

impl Bf16Products for AttnBlock {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.to_qkv.set_bf16_products(on)?;
        self.proj.set_bf16_products(on)
    }
}

impl Bf16Products for Resample {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.conv.set_bf16_products(on)?;
        if let Some(t) = &mut self.time_conv {
            t.set_bf16_products(on)?;
        }
        Ok(())
    }
}

impl Bf16Products for MidBlock {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.res0.set_bf16_products(on)?;
        self.attn.set_bf16_products(on)?;
        self.res1.set_bf16_products(on)
    }
}

impl Bf16Products for Encoder {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.conv_in.set_bf16_products(on)?;
        for layer in &mut self.down {
            match layer {
                DownLayer::Res(r) => r.set_bf16_products(on)?,
                DownLayer::Attn(a) => a.set_bf16_products(on)?,
                DownLayer::Resample(r) => r.set_bf16_products(on)?,
            }
        }
        self.mid.set_bf16_products(on)?;
        self.conv_out.set_bf16_products(on)
    }
}

impl Bf16Products for Decoder {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.conv_in.set_bf16_products(on)?;
        self.mid.set_bf16_products(on)?;
        for block in &mut self.up {
            for r in &mut block.resnets {
                r.set_bf16_products(on)?;
            }
            if let Some(u) = &mut block.upsampler {
                u.set_bf16_products(on)?;
            }
        }
        self.conv_out.set_bf16_products(on)
    }
}

impl Bf16Products for AutoencoderKLWan {
    /// Every convolution with bf16 products on AMX (inputs and weights rounded to bf16, f32
    /// sums, norms and activations in f32): the `--dtype bf16` VAE. A no-op without AMX.
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.encoder.set_bf16_products(on)?;
        self.quant_conv.set_bf16_products(on)?;
        self.post_quant_conv.set_bf16_products(on)?;
        self.decoder.set_bf16_products(on)
    }
}
