//! zoetrope's own diffusion transformer for the procedural world (issue 3), with the pieces its
//! training needs: spacetime patches, the flow-matching loss, frame-conditioning masks and caption
//! dropout.
//!
//! Shape of the computation, for latents `x_t [B, C, T, H, W]` and patch `(pt, ph, pw)`:
//!
//! 1. frame conditioning: the input is `[x_t, given · m, m]` along channels (`2C + 1`), where `m`
//!    marks the latent frames that are given (all zero without conditioning), so one model serves
//!    text→video, image→video, extension forward/backward, loops and connecting clips;
//! 2. [`patchify`] into `N = T/pt · H/ph · W/pw` spacetime tokens (frame, row, column order), a
//!    linear patch embedding to `dim`, plus a fixed 3D sin-cos position embedding
//!    ([`sincos_3d`], `abs_pos`);
//! 3. conditioning vector `c = MLP(sinusoid(1000·t)) + Linear(masked mean of the text)`;
//! 4. `depth` blocks (DiT with cross-attention, as PixArt-α): adaLN-Zero modulated LayerNorm →
//!    self-attention over all tokens (QK RMSNorm, 3D RoPE over (t, h, w)) → gated residual;
//!    LayerNorm → cross-attention to the text tokens (padding masked out) → residual (in the
//!    first `cross_attn_blocks` blocks; all by default);
//!    modulated LayerNorm → GELU MLP → gated residual;
//! 5. final adaLN-modulated LayerNorm and a zero-initialised linear, [`unpatchify`].
//!
//! adaLN-Zero (Peebles & Xie, "Scalable Diffusion Models with Transformers", §3.2): every
//! modulation linear and the output projection start at zero, so a fresh model predicts exactly
//! zero velocity and every block starts as the identity on its gated paths.
//!
//! Positions are rotary and computed from the patch grid of each call, never from a learned
//! table, so any size, aspect ratio and duration that the patch divides works at training and at
//! sampling time.
//!
//! Training: [`flow_matching_loss`] (rectified flow, `x_t = (1 − t)·x0 + t·ε`, velocity target
//! `ε − x0`, SD3's timestep shift), [`FrameMaskConfig`] for random conditioning masks and
//! [`caption_dropout`] for classifier-free guidance. For f32 on the CPU the norms, softmax, RoPE
//! and GELU run `zoetrope_nn::fused`'s kernels, which have a backward, in training and inference
//! alike; elsewhere the layers use differentiable candle ops whenever a tensor is tracked for
//! gradients (a model built from a `VarMap`), and candle's fused kernels (which have no backward)
//! otherwise.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use zoetrope_nn::fused;

use crate::step_cache::{forward_rows, StepCache};

/// Timesteps `t ∈ [0, 1]` are scaled by this before the sinusoidal embedding, so its frequencies
/// see the 0–1000 range they were designed for (as SD3 does).
pub const TIMESTEP_SCALE: f64 = 1000.0;

/// Added to the attention scores of masked-out keys. Finite (not −∞) so that a row whose keys are
/// all masked gives a uniform average instead of NaN; `exp(−1e4)` is exactly 0 in f32, so masked
/// keys contribute nothing otherwise.
pub const MASKED_SCORE: f64 = -1e4;

/// The caption that [`caption_dropout`] substitutes: the unconditional input of classifier-free
/// guidance.
pub const EMPTY_CAPTION: &str = "";

pub(crate) fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(msg.to_string())
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Configuration of [`WorldDit`], shipped as JSON next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldDitConfig {
    /// Channels of the VAE latent (`C`); the patch embedding sees `2C + 1` (frame conditioning).
    pub latent_channels: usize,
    /// Spacetime patch `(pt, ph, pw)` in latent frames, rows and columns.
    pub patch: [usize; 3],
    /// Width of the residual stream.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; `dim / heads` must be even and at least 6 (3D RoPE rotates pairs).
    pub heads: usize,
    /// Width of the text encoder's tokens.
    pub text_dim: usize,
    /// Hidden width of the MLP as a multiple of `dim`.
    pub mlp_ratio: f64,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    /// RoPE base period.
    pub rope_theta: f64,
    /// Epsilon of the LayerNorms and QK RMSNorms.
    pub eps: f64,
    /// Adds a projection of the masked mean of the text tokens to the timestep embedding (global
    /// conditioning next to cross-attention, as SD3's pooled text).
    pub pooled_text: bool,
    /// Adds a fixed 3D sin-cos embedding of each token's (t, h, w) grid position after the patch
    /// embedding (as DiT's 2D sin-cos), besides RoPE. RoPE alone tells attention only relative
    /// offsets; a small model learns absolute layout (where things start, the frame edges) far
    /// faster with it. Computed from the grid, so every size still works.
    pub abs_pos: bool,
    /// How many blocks, counted from the first, cross-attend to the text tokens; `None` (the
    /// default, and what older configs mean) is all of them. The blocks after them have
    /// self-attention and MLP only (the text still reaches them through the residual stream and
    /// the pooled-text modulation): at width 256 such a block is ~0.4 MB smaller in f16, which is
    /// what lets a sixth block fit the built-in model's size budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_attn_blocks: Option<usize>,
}

impl Default for WorldDitConfig {
    /// The shipping size: about 5.9 M parameters (11.7 MB in f16), 80 tokens for a 64×64×17 clip.
    fn default() -> Self {
        Self {
            latent_channels: 8,
            patch: [1, 2, 2],
            dim: 256,
            depth: 4,
            heads: 4,
            text_dim: 128,
            mlp_ratio: 4.0,
            freq_dim: 256,
            rope_theta: 10_000.0,
            eps: 1e-6,
            pooled_text: true,
            abs_pos: true,
            cross_attn_blocks: None,
        }
    }
}

impl WorldDitConfig {
    /// A very small model for tests.
    pub fn tiny() -> Self {
        Self {
            latent_channels: 4,
            patch: [1, 2, 2],
            dim: 48,
            depth: 2,
            heads: 2,
            text_dim: 32,
            mlp_ratio: 2.0,
            freq_dim: 32,
            ..Self::default()
        }
    }

    /// Reads a config from JSON, then [`validate`](Self::validate)s it.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| err(format!("not a world DiT config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Channels the patch embedding sees per latent position: `x_t`, the given latents and the
    /// frame mask.
    pub fn in_channels(&self) -> usize {
        2 * self.latent_channels + 1
    }

    /// `pt · ph · pw`.
    pub fn patch_volume(&self) -> usize {
        self.patch.iter().product()
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Whether block `i` has cross-attention (see [`cross_attn_blocks`](Self::cross_attn_blocks)).
    pub fn has_cross_attn(&self, i: usize) -> bool {
        self.cross_attn_blocks.is_none_or(|n| i < n)
    }

    /// Number of blocks with cross-attention.
    pub fn cross_attn_count(&self) -> usize {
        self.cross_attn_blocks
            .map_or(self.depth, |n| n.min(self.depth))
    }

    pub fn mlp_dim(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio).round() as usize
    }

    /// How a head's channels are split between the (t, h, w) rotary axes: `h = w = 2·⌊hd/6⌋`,
    /// `t = hd − h − w` (as Wan; time gets the remainder).
    pub fn rope_split(&self) -> [usize; 3] {
        let hd = self.head_dim();
        let hw = 2 * (hd / 6);
        [hd - 2 * hw, hw, hw]
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("latent_channels", self.latent_channels),
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(err(format!("world DiT config: {name} must be > 0")));
            }
        }
        if self.patch.contains(&0) {
            return Err(err(format!(
                "world DiT config: patch {:?} entries must be > 0",
                self.patch
            )));
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(err(format!(
                "world DiT config: dim {} is not a multiple of heads {}",
                self.dim, self.heads
            )));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) || hd < 6 {
            return Err(err(format!(
                "world DiT config: head size dim/heads = {hd} must be even and at least 6 \
                 (3D RoPE rotates pairs over three axes)"
            )));
        }
        if !self.freq_dim.is_multiple_of(2) {
            return Err(err(format!(
                "world DiT config: freq_dim {} must be even",
                self.freq_dim
            )));
        }
        if let Some(n) = self.cross_attn_blocks.filter(|&n| n > self.depth) {
            return Err(err(format!(
                "world DiT config: cross_attn_blocks {n} is more than depth {}; give at most the \
                 number of blocks (or leave it out for all)",
                self.depth
            )));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(err(format!(
                "world DiT config: mlp_ratio {} must be > 0",
                self.mlp_ratio
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(err(format!(
                "world DiT config: rope_theta {} must be > 1",
                self.rope_theta
            )));
        }
        Ok(())
    }

    /// Number of parameters [`WorldDit::new`] creates.
    pub fn param_count(&self) -> usize {
        let lin = |i: usize, o: usize| i * o + o;
        let (d, td, hd, m) = (self.dim, self.text_dim, self.head_dim(), self.mlp_dim());
        let p = self.patch_volume();
        let block = lin(d, 6 * d) // adaLN modulation
            + lin(d, 3 * d) + lin(d, d) + 2 * hd // self-attention
            + lin(d, m) + lin(m, d); // MLP
        let cross = 2 * d // cross-attention LayerNorm
            + lin(d, d) + lin(td, 2 * d) + lin(d, d) + 2 * hd; // cross-attention
        lin(self.in_channels() * p, d)
            + lin(self.freq_dim, d)
            + lin(d, d)
            + if self.pooled_text { lin(td, d) } else { 0 }
            + self.depth * block
            + self.cross_attn_count() * cross
            + lin(d, 2 * d)
            + lin(d, self.latent_channels * p)
    }
}

// ---------------------------------------------------------------------------------------------
// Spacetime patches
// ---------------------------------------------------------------------------------------------

fn allowed_sizes(n: usize, p: usize) -> String {
    let below = n / p * p;
    let above = below + p;
    if below == 0 {
        format!("{above}, {}, {}, …", 2 * p, 3 * p)
    } else {
        format!("multiples of {p}, e.g. {below} or {above}")
    }
}

/// The patch grid `(T/pt, H/ph, W/pw)` of a latent of `(T, H, W)` frames, rows and columns;
/// errors naming the allowed sizes when one is not a multiple of the patch.
pub fn patch_grid(size: [usize; 3], patch: [usize; 3]) -> Result<[usize; 3]> {
    if patch.contains(&0) {
        return Err(err(format!("patch {patch:?} entries must be > 0")));
    }
    let names = ["frames", "height", "width"];
    let bad: Vec<String> = (0..3)
        .filter(|&i| size[i] == 0 || !size[i].is_multiple_of(patch[i]))
        .map(|i| {
            format!(
                "{} {} is not a multiple of {} (allowed: {})",
                names[i],
                size[i],
                patch[i],
                allowed_sizes(size[i], patch[i])
            )
        })
        .collect();
    if !bad.is_empty() {
        return Err(err(format!(
            "latent size {}×{}×{} (frames×height×width) does not fit the spacetime patch \
             {}×{}×{}: {}",
            size[0],
            size[1],
            size[2],
            patch[0],
            patch[1],
            patch[2],
            bad.join("; ")
        )));
    }
    Ok([size[0] / patch[0], size[1] / patch[1], size[2] / patch[2]])
}

/// Cuts latents `[B, C, T, H, W]` into spacetime patches: tokens `[B, N, C·pt·ph·pw]` in frame,
/// row, column order (features in channel, frame, row, column order), and the patch grid.
pub fn patchify(latent: &Tensor, patch: [usize; 3]) -> Result<(Tensor, [usize; 3])> {
    let [b, c, t, h, w] = latent_dims(latent)?;
    let grid = patch_grid([t, h, w], patch)?;
    let [gt, gh, gw] = grid;
    let [pt, ph, pw] = patch;
    let tokens = latent
        .reshape(vec![b, c, gt, pt, gh, ph, gw, pw])?
        .permute([0, 2, 4, 6, 1, 3, 5, 7])?
        .contiguous()?
        .reshape((b, gt * gh * gw, c * pt * ph * pw))?;
    Ok((tokens, grid))
}

/// The exact inverse of [`patchify`]: tokens `[B, N, C·pt·ph·pw]` on `grid` → `[B, C, T, H, W]`.
pub fn unpatchify(tokens: &Tensor, grid: [usize; 3], patch: [usize; 3]) -> Result<Tensor> {
    let (b, n, f) = tokens.dims3()?;
    let [gt, gh, gw] = grid;
    let [pt, ph, pw] = patch;
    let vol = pt * ph * pw;
    if n != gt * gh * gw || vol == 0 || f % vol != 0 {
        return Err(err(format!(
            "tokens {:?} do not fit grid {grid:?} and patch {patch:?}",
            tokens.dims()
        )));
    }
    let c = f / vol;
    tokens
        .reshape(vec![b, gt, gh, gw, c, pt, ph, pw])?
        .permute([0, 4, 1, 5, 2, 6, 3, 7])?
        .contiguous()?
        .reshape((b, c, gt * pt, gh * ph, gw * pw))
}

// ---------------------------------------------------------------------------------------------
// 3D rotary positions
// ---------------------------------------------------------------------------------------------

/// RoPE tables for a patch grid: `(cos, sin)`, each `[N, head_dim/2]` f32 (one angle per
/// interleaved pair), tokens in frame, row, column order. The pairs of a head are split between
/// the axes by `split` (channels per axis, each even); axis `a` of width `d` rotates pair `i` by
/// `pos · θ^(−2i/d)`.
pub fn rope_3d(
    grid: [usize; 3],
    split: [usize; 3],
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let freqs: Vec<Vec<f64>> = split
        .iter()
        .map(|&d| {
            (0..d / 2)
                .map(|i| theta.powf(-((2 * i) as f64) / d as f64))
                .collect()
        })
        .collect();
    let half: usize = split.iter().map(|d| d / 2).sum();
    let n: usize = grid.iter().product();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for t in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                for (f, pos) in freqs.iter().zip([t, h, w]) {
                    for &fr in f {
                        let a = pos as f64 * fr;
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// Fixed 3D sin-cos position embedding `[N, dim]` for a patch grid (tokens in frame, row, column
/// order): the channels are split between the axes as `split` (each even) and each part is
/// `[sin(pos·ω_i), cos(pos·ω_i)]` with `ω_i = θ^(−2i/d)`, as DiT's 2D embedding per axis.
pub fn sincos_3d(
    grid: [usize; 3],
    split: [usize; 3],
    theta: f64,
    device: &Device,
) -> Result<Tensor> {
    let dim: usize = split.iter().sum();
    let n: usize = grid.iter().product();
    let mut out = Vec::with_capacity(n * dim);
    for t in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                for (&d, pos) in split.iter().zip([t, h, w]) {
                    let half = d / 2;
                    let angle = |i: usize| pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
                    out.extend((0..half).map(|i| angle(i).sin() as f32));
                    out.extend((0..half).map(|i| angle(i).cos() as f32));
                }
            }
        }
    }
    Tensor::from_vec(out, (n, dim), device)
}

// ---------------------------------------------------------------------------------------------
// Ops: zoetrope's fused kernels (forward and backward) for f32 on the CPU; elsewhere candle's
// forward-only kernels for inference and `fused`'s differentiable compositions for training
// ---------------------------------------------------------------------------------------------

/// LayerNorm over the last dim without affine parameters, computed in f32.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    if !fused::supports(&x) && !x.track_op() && x.is_contiguous() {
        let d = x.dim(D::Minus1)?;
        let ones = Tensor::ones(d, DType::F32, x.device())?;
        let zeros = Tensor::zeros(d, DType::F32, x.device())?;
        return candle_nn::ops::layer_norm(&x, &ones, &zeros, eps as f32)?.to_dtype(dtype);
    }
    fused::layer_norm(&x, eps)?.to_dtype(dtype)
}

/// LayerNorm with affine parameters `(weight, bias)`.
#[derive(Debug, Clone)]
pub(crate) struct AffineNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl AffineNorm {
    pub(crate) fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = fused::broadcast_mul(&layer_norm(x, self.eps)?, &self.weight)?;
        fused::broadcast_add(&y, &self.bias)
    }
}

/// RMSNorm over the last dim with a weight.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let fused_kernel = fused::supports(x) && fused::supports(weight);
    let untracked = !x.track_op() && !weight.track_op();
    if !fused_kernel && untracked && x.is_contiguous() && x.dtype() == DType::F32 {
        return candle_nn::ops::rms_norm(x, weight, eps as f32);
    }
    fused::rms_norm(x, weight, eps)
}

fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused::supports(x) && !x.track_op() {
        candle_nn::ops::softmax_last_dim(x)
    } else {
        fused::softmax_last_dim(x)
    }
}

/// Rotates interleaved pairs of `x [B, H, N, hd]` by the `[N, hd/2]` tables.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let fused_kernel = fused::supports(&x) && fused::supports(cos) && fused::supports(sin);
    let y = if !fused_kernel && !x.track_op() {
        candle_nn::rotary_emb::rope_i(&x, cos, sin)?
    } else {
        fused::rope_i(&x, cos, sin)?
    };
    y.to_dtype(dtype)
}

/// Additive attention bias `[B, 1, 1, L]` from a key mask `[B, L]` (1 = attend, 0 = padding).
pub fn mask_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    (mask.to_dtype(DType::F32)? - 1.0)?
        .affine(-MASKED_SCORE, 0.0)?
        .reshape((b, 1, 1, l))
}

/// `softmax(q·kᵀ/√d + bias)·v` for `q [B, H, Lq, d]`, `k, v [B, H, Lk, d]`, in f32.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dtype = q.dtype();
    let d = q.dim(D::Minus1)?;
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let mut s = (q.matmul(&kt)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(bias) = bias {
        s = s.broadcast_add(bias)?;
    }
    softmax_last_dim(&s)?.matmul(&v)?.to_dtype(dtype)
}

/// How the last projection of a residual branch (attention `to_out`, MLP `fc2`) is initialised.
/// Only matters for fresh training weights; checkpoints load the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResidualInit {
    /// candle's default (Kaiming normal for ReLU, uniform bias): for branches that are gated
    /// (adaLN-Zero) anyway.
    Default,
    /// Zero weight and bias: the branch adds nothing until trained, so the residual stream
    /// starts as its input. For ungated branches: a fresh text encoder then gives each word its
    /// own (normalised) embedding, two words as far apart as two random vectors, where the
    /// default init's random attention mixed every position into the others (relative squared
    /// distance of "red" and "blue" ~0.9 instead of ~2).
    Zero,
}

impl ResidualInit {
    fn linear(self, in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
        match self {
            Self::Default => candle_nn::linear(in_dim, out_dim, vb),
            Self::Zero => linear_zero(in_dim, out_dim, vb),
        }
    }
}

/// A linear layer whose weight and bias start at zero (adaLN-Zero).
fn linear_zero(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// `x·(1 + scale) + shift`, with `scale, shift [B, 1, D]`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    fused::broadcast_add(&fused::broadcast_mul(x, &(scale + 1.0)?)?, shift)
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// Multi-head attention with RMSNorm on each head's queries and keys (for stable training at
/// high learning rates, as SD3). Self-attention when `kv_dim` is `None`. With `zero_out` the
/// output projection starts at zero (see [`ResidualInit`]).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    /// Self-attention: `to_qkv`; cross-attention: `to_q` and `to_kv`.
    to_qkv: Option<Linear>,
    to_q: Option<Linear>,
    to_kv: Option<Linear>,
    to_out: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: usize,
    eps: f64,
}

impl Attention {
    pub(crate) fn new(
        dim: usize,
        kv_dim: Option<usize>,
        heads: usize,
        eps: f64,
        out_init: ResidualInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let hd = dim / heads;
        let (to_qkv, to_q, to_kv) = match kv_dim {
            None => (
                Some(candle_nn::linear(dim, 3 * dim, vb.pp("to_qkv"))?),
                None,
                None,
            ),
            Some(kv) => (
                None,
                Some(candle_nn::linear(dim, dim, vb.pp("to_q"))?),
                Some(candle_nn::linear(kv, 2 * dim, vb.pp("to_kv"))?),
            ),
        };
        Ok(Self {
            to_qkv,
            to_q,
            to_kv,
            to_out: out_init.linear(dim, dim, vb.pp("to_out"))?,
            norm_q: vb.get_with_hints(hd, "norm_q.weight", Init::Const(1.0))?,
            norm_k: vb.get_with_hints(hd, "norm_k.weight", Init::Const(1.0))?,
            heads,
            eps,
        })
    }

    /// `x [B, Lq, dim]` attends to itself, or to `context [B, Lk, kv_dim]` (cross-attention).
    /// `rope`: tables for the queries and keys (self-attention); `bias`: additive key bias
    /// `[B, 1, 1, Lk]` (see [`mask_bias`]).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rope: Option<(&Tensor, &Tensor)>,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, lq, dim) = x.dims3()?;
        let hd = dim / self.heads;
        let heads = |t: Tensor, l: usize| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?.transpose(1, 2)
        };
        let (q, k, v) = match (&self.to_qkv, &self.to_q, &self.to_kv, context) {
            (Some(qkv), _, _, None) => {
                let qkv = fused::linear(x, qkv)?;
                (
                    heads(qkv.narrow(2, 0, dim)?, lq)?,
                    heads(qkv.narrow(2, dim, dim)?, lq)?,
                    heads(qkv.narrow(2, 2 * dim, dim)?, lq)?,
                )
            }
            (None, Some(to_q), Some(to_kv), Some(ctx)) => {
                let lk = ctx.dim(1)?;
                let kv = fused::linear(ctx, to_kv)?;
                (
                    heads(fused::linear(x, to_q)?, lq)?,
                    heads(kv.narrow(2, 0, dim)?, lk)?,
                    heads(kv.narrow(2, dim, dim)?, lk)?,
                )
            }
            _ => return Err(err("attention called with the wrong kind of context")),
        };
        let mut q = rms_norm(&q.contiguous()?, &self.norm_q, self.eps)?;
        let mut k = rms_norm(&k.contiguous()?, &self.norm_k, self.eps)?;
        if let Some((cos, sin)) = rope {
            q = apply_rope(&q, cos, sin)?;
            k = apply_rope(&k, cos, sin)?;
        }
        let o = attention(&q, &k, &v, bias)?
            .transpose(1, 2)?
            .reshape((b, lq, dim))?;
        fused::linear(&o, &self.to_out)
    }
}

/// Two linear layers with GELU (tanh approximation) between.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub(crate) fn new(
        dim: usize,
        hidden: usize,
        out_init: ResidualInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(dim, hidden, vb.pp("fc1"))?,
            fc2: out_init.linear(hidden, dim, vb.pp("fc2"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::linear(&fused::gelu_tanh(&fused::linear(x, &self.fc1)?)?, &self.fc2)
    }
}

#[derive(Debug, Clone)]
struct DitBlock {
    /// `SiLU(c) → [shift, scale, gate] × (attention, MLP)`, zero-initialised.
    modulation: Linear,
    attn: Attention,
    /// LayerNorm and cross-attention to the text; `None` in blocks past `cross_attn_blocks`.
    cross: Option<(AffineNorm, Attention)>,
    mlp: Mlp,
    dim: usize,
    eps: f64,
}

impl DitBlock {
    fn new(cfg: &WorldDitConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let cross = if cfg.has_cross_attn(index) {
            Some((
                AffineNorm::new(d, cfg.eps, vb.pp("norm_cross"))?,
                Attention::new(
                    d,
                    Some(cfg.text_dim),
                    cfg.heads,
                    cfg.eps,
                    ResidualInit::Zero,
                    vb.pp("cross"),
                )?,
            ))
        } else {
            None
        };
        Ok(Self {
            modulation: linear_zero(d, 6 * d, vb.pp("modulation"))?,
            // Self-attention and MLP are gated by the zero-initialised modulation; the
            // cross-attention is not, so its output projection starts at zero.
            attn: Attention::new(
                d,
                None,
                cfg.heads,
                cfg.eps,
                ResidualInit::Default,
                vb.pp("attn"),
            )?,
            cross,
            mlp: Mlp::new(d, cfg.mlp_dim(), ResidualInit::Default, vb.pp("mlp"))?,
            dim: d,
            eps: cfg.eps,
        })
    }

    /// `x [B, N, dim]`, `c [B, dim]` (already through SiLU), `text [B, L, text_dim]`,
    /// `text_bias [B, 1, 1, L]`.
    fn forward(
        &self,
        x: &Tensor,
        c: &Tensor,
        text: &Tensor,
        text_bias: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let m = fused::linear(c, &self.modulation)?.unsqueeze(1)?;
        let part = |i: usize| m.narrow(2, i * self.dim, self.dim);
        let (shift_a, scale_a, gate_a) = (part(0)?, part(1)?, part(2)?);
        let (shift_m, scale_m, gate_m) = (part(3)?, part(4)?, part(5)?);

        let h = modulate(&layer_norm(x, self.eps)?, &shift_a, &scale_a)?;
        let a = self.attn.forward(&h, None, Some(rope), None)?;
        let x = (x + fused::broadcast_mul(&a, &gate_a)?)?;

        let x = match &self.cross {
            Some((norm, cross)) => {
                let h = norm.forward(&x)?;
                (&x + cross.forward(&h, Some(text), None, Some(text_bias))?)?
            }
            None => x,
        };

        let h = modulate(&layer_norm(&x, self.eps)?, &shift_m, &scale_m)?;
        let f = self.mlp.forward(&h)?;
        x + fused::broadcast_mul(&f, &gate_m)?
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// zoetrope's world diffusion transformer: predicts the flow velocity `ε − x0` of latents.
#[derive(Debug, Clone)]
pub struct WorldDit {
    cfg: WorldDitConfig,
    patch_embed: Linear,
    time_in: Linear,
    time_out: Linear,
    text_pool: Option<Linear>,
    blocks: Vec<DitBlock>,
    final_modulation: Linear,
    proj_out: Linear,
    device: Device,
    dtype: DType,
}

impl WorldDit {
    /// Builds the model from `vb` (a `VarMap`-backed builder for training: fresh weights follow
    /// adaLN-Zero; a checkpoint-backed one for inference). Keys: `patch_embed`,
    /// `time_embed.linear_{1,2}`, `text_pool`, `blocks.{i}.{modulation, attn, norm_cross, cross,
    /// mlp}` (no `norm_cross`/`cross` past `cross_attn_blocks`), `final_modulation`, `proj_out`.
    pub fn new(cfg: &WorldDitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.dim;
        let p = cfg.patch_volume();
        let blocks = (0..cfg.depth)
            .map(|i| DitBlock::new(cfg, i, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: candle_nn::linear(cfg.in_channels() * p, d, vb.pp("patch_embed"))?,
            time_in: candle_nn::linear(cfg.freq_dim, d, vb.pp("time_embed.linear_1"))?,
            time_out: candle_nn::linear(d, d, vb.pp("time_embed.linear_2"))?,
            text_pool: if cfg.pooled_text {
                Some(candle_nn::linear(cfg.text_dim, d, vb.pp("text_pool"))?)
            } else {
                None
            },
            blocks,
            final_modulation: linear_zero(d, 2 * d, vb.pp("final_modulation"))?,
            proj_out: linear_zero(d, cfg.latent_channels * p, vb.pp("proj_out"))?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &WorldDitConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Channels of the absolute position embedding per axis: `h = w = 2·⌊dim/6⌋`, time the rest.
    fn abs_pos_split(&self) -> [usize; 3] {
        let d = self.cfg.dim;
        let hw = 2 * (d / 6);
        [d - 2 * hw, hw, hw]
    }

    /// The conditioning vector `c [B, dim]` (before SiLU): timestep MLP plus pooled text.
    fn conditioning(
        &self,
        t: &Tensor,
        b: usize,
        text: &Tensor,
        text_mask: &Tensor,
    ) -> Result<Tensor> {
        let t: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let t = match t.len() {
            n if n == b => t,
            1 => vec![t[0]; b],
            n => return Err(err(format!("{n} timesteps for a batch of {b} latents"))),
        };
        let scaled: Vec<f32> = t
            .iter()
            .map(|&v| (v as f64 * TIMESTEP_SCALE) as f32)
            .collect();
        let freq = crate::wan::transformer::timestep_sinusoid(&scaled, self.cfg.freq_dim);
        let freq =
            Tensor::from_vec(freq, (b, self.cfg.freq_dim), &self.device)?.to_dtype(self.dtype)?;
        let mut c = fused::linear(
            &fused::linear(&freq, &self.time_in)?.silu()?,
            &self.time_out,
        )?;
        if let Some(pool) = &self.text_pool {
            // Masked mean; an all-padding row (never produced by the tokenizer, which always
            // writes <bos>) pools to zero instead of NaN.
            let m = text_mask.to_dtype(self.dtype)?.unsqueeze(2)?;
            let count = m.sum(1)?.clamp(1.0, f64::INFINITY)?;
            let pooled = text.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count)?;
            c = (c + fused::linear(&pooled, pool)?)?;
        }
        Ok(c)
    }

    /// Predicts the velocity `[B, C, T, H, W]` for latents `x_t [B, C, T, H, W]` at flow times
    /// `t [B]` (or one value for the whole batch) in `[0, 1]` (1 = pure noise), given text tokens
    /// `text [B, L, text_dim]` with `text_mask [B, L]` (1 = token, 0 = padding), and optionally
    /// conditioning frames `(given [B, C, T, H, W], frame_mask [B, T])` (1 = this latent frame is
    /// given). Callers should also put the given frames into `x_t` (see [`apply_given_frames`]),
    /// as [`flow_matching_loss`] does in training.
    pub fn forward(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
        cond: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        self.run(x_t, t, text, text_mask, cond, None)
    }

    /// [`forward`](Self::forward) with First-Block Cache ([`crate::step_cache`]), one cache per
    /// batch row (the guidance branches of a batched call): block 0 always runs; for each row,
    /// blocks 1.. run, or their residual from its cache is reused when block 0's output moved
    /// less than the threshold since that row's last computed step. Rows that compute run
    /// together; when all do, the result equals `forward`'s exactly.
    pub fn forward_cached(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
        cond: Option<(&Tensor, &Tensor)>,
        caches: &mut [StepCache],
    ) -> Result<Tensor> {
        self.run(x_t, t, text, text_mask, cond, Some(caches))
    }

    fn run(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
        cond: Option<(&Tensor, &Tensor)>,
        caches: Option<&mut [StepCache]>,
    ) -> Result<Tensor> {
        let [b, c, tf, h, w] = latent_dims(x_t)?;
        if c != self.cfg.latent_channels {
            return Err(err(format!(
                "latents have {c} channels, the world DiT expects {}",
                self.cfg.latent_channels
            )));
        }
        let (tb, tl, td) = text.dims3()?;
        if tb != b || td != self.cfg.text_dim || text_mask.dims() != [b, tl] {
            return Err(err(format!(
                "text {:?} with mask {:?} does not fit a batch of {b} and text_dim {}",
                text.dims(),
                text_mask.dims(),
                self.cfg.text_dim
            )));
        }
        let grid = patch_grid([tf, h, w], self.cfg.patch)?;
        let x_t = x_t.to_dtype(self.dtype)?;
        let text = text.to_dtype(self.dtype)?;

        // Frame conditioning channels: given latents × mask, then the mask itself.
        let (given, mask) = match cond {
            Some((given, frame_mask)) => {
                if given.dims() != x_t.dims() || frame_mask.dims() != [b, tf] {
                    return Err(err(format!(
                        "conditioning latents {:?} / frame mask {:?} do not fit latents {:?} \
                         (expected the same shape and [B, T])",
                        given.dims(),
                        frame_mask.dims(),
                        x_t.dims()
                    )));
                }
                let m = frame_mask
                    .to_dtype(self.dtype)?
                    .reshape((b, 1, tf, 1, 1))?
                    .broadcast_as((b, 1, tf, h, w))?;
                (
                    given.to_dtype(self.dtype)?.broadcast_mul(&m)?,
                    m.contiguous()?,
                )
            }
            None => (
                Tensor::zeros((b, c, tf, h, w), self.dtype, &self.device)?,
                Tensor::zeros((b, 1, tf, h, w), self.dtype, &self.device)?,
            ),
        };
        let input = Tensor::cat(&[&x_t, &given, &mask], 1)?;
        let (tokens, _) = patchify(&input, self.cfg.patch)?;
        let mut x = fused::linear(&tokens, &self.patch_embed)?;
        if self.cfg.abs_pos {
            let pos = sincos_3d(
                grid,
                self.abs_pos_split(),
                self.cfg.rope_theta,
                &self.device,
            )?;
            x = x.broadcast_add(&pos.to_dtype(self.dtype)?.unsqueeze(0)?)?;
        }

        let cvec = self.conditioning(t, b, &text, text_mask)?.silu()?;
        let bias = mask_bias(text_mask)?;
        let (cos, sin) = rope_3d(
            grid,
            self.cfg.rope_split(),
            self.cfg.rope_theta,
            &self.device,
        )?;
        match (caches, self.blocks.split_first()) {
            (Some(caches), Some((first, rest))) => {
                let x1 = first.forward(&x, &cvec, &text, &bias, (&cos, &sin))?;
                x = forward_rows(caches, &x, x1, |x1, rows| {
                    // The rows that compute, when not the whole batch.
                    let pick = |t: &Tensor| match rows {
                        Some(i) => t.index_select(i, 0),
                        None => Ok(t.clone()),
                    };
                    let (cvec, text, bias) = (pick(&cvec)?, pick(&text)?, pick(&bias)?);
                    rest.iter().try_fold(x1.clone(), |x, block| {
                        block.forward(&x, &cvec, &text, &bias, (&cos, &sin))
                    })
                })?;
            }
            _ => {
                for block in &self.blocks {
                    x = block.forward(&x, &cvec, &text, &bias, (&cos, &sin))?;
                }
            }
        }

        let m = fused::linear(&cvec, &self.final_modulation)?.unsqueeze(1)?;
        let d = self.cfg.dim;
        let (shift, scale) = (m.narrow(2, 0, d)?, m.narrow(2, d, d)?);
        let out = fused::linear(
            &modulate(&layer_norm(&x, self.cfg.eps)?, &shift, &scale)?,
            &self.proj_out,
        )?;
        unpatchify(&out, grid, self.cfg.patch)
    }
}

// ---------------------------------------------------------------------------------------------
// Training: flow matching, timesteps, conditioning masks, caption dropout
// ---------------------------------------------------------------------------------------------

/// SD3's timestep shift `t' = s·t / (1 + (s − 1)·t)`: `s > 1` moves training and sampling time
/// towards the noisy end, where larger latents need more of it.
pub fn shift_timestep(t: f64, shift: f64) -> f64 {
    zoetrope_sampling::schedule::shift_sigma(shift, t)
}

/// How training draws flow times `t ∈ (0, 1)` before the [`shift_timestep`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimestepSampler {
    Uniform,
    /// `t = sigmoid(n)`, `n ~ N(mean, std²)` (SD3's default, mean 0, std 1).
    LogitNormal {
        mean: f64,
        std: f64,
    },
}

impl Default for TimestepSampler {
    fn default() -> Self {
        Self::LogitNormal {
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl TimestepSampler {
    /// One flow time, shifted by `shift`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, shift: f64) -> f64 {
        let t = match *self {
            Self::Uniform => rng.random::<f64>(),
            Self::LogitNormal { mean, std } => {
                let n: f64 = StandardNormal.sample(rng);
                1.0 / (1.0 + (-(mean + std * n)).exp())
            }
        };
        shift_timestep(t, shift)
    }
}

/// `x_t` with the given latent frames put in: `x_t·(1 − m) + given·m` for `frame_mask [B, T]`.
/// Training sees given frames clean (time 0) in `x_t`, so samplers must do the same before every
/// model call.
pub fn apply_given_frames(x_t: &Tensor, given: &Tensor, frame_mask: &Tensor) -> Result<Tensor> {
    let (b, _, tf, _, _) = x_t.dims5()?;
    let m = frame_mask
        .to_dtype(x_t.dtype())?
        .reshape((b, 1, tf, 1, 1))?;
    let keep = m.affine(-1.0, 1.0)?;
    x_t.broadcast_mul(&keep)?
        .add(&given.to_dtype(x_t.dtype())?.broadcast_mul(&m)?)
}

/// Draws standard normal noise shaped like `like` from `rng` (reproducible, unlike candle's CPU
/// generator).
pub fn randn_like<R: Rng + ?Sized>(like: &Tensor, rng: &mut R) -> Result<Tensor> {
    let n = like.elem_count();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, like.shape(), like.device())?.to_dtype(like.dtype())
}

/// One batch for the flow-matching loss: clean latents `x0 [B, C, T, H, W]`, their encoded
/// captions, and optionally a conditioning `frame_mask [B, T]` (given frames) and per-cell loss
/// weights `cell_weight [B, 1, T, H, W]` (shared by the channels).
#[derive(Debug, Clone, Copy)]
pub struct FlowBatch<'a> {
    pub x0: &'a Tensor,
    pub text: &'a Tensor,
    pub text_mask: &'a Tensor,
    pub frame_mask: Option<&'a Tensor>,
    pub cell_weight: Option<&'a Tensor>,
}

impl<'a> FlowBatch<'a> {
    /// Latents and their text, no conditioning, every cell weighing 1.
    pub fn new(x0: &'a Tensor, text: &'a Tensor, text_mask: &'a Tensor) -> Self {
        Self {
            x0,
            text,
            text_mask,
            frame_mask: None,
            cell_weight: None,
        }
    }

    /// The same batch with these latent frames given (`None`: none).
    pub fn with_frame_mask(self, frame_mask: Option<&'a Tensor>) -> Self {
        Self { frame_mask, ..self }
    }

    /// The same batch with these per-cell loss weights (`None`: weight 1 everywhere).
    pub fn with_cell_weight(self, cell_weight: Option<&'a Tensor>) -> Self {
        Self {
            cell_weight,
            ..self
        }
    }
}

/// The flow-matching loss at given noise and times: `x_t = (1 − t)·x0 + t·ε`, target
/// `v = ε − x0`, squared error averaged with the batch's cell weights, `Σ w·e² / Σ w` (the plain
/// mean without them). With a frame mask the given frames are clean in `x_t`, passed as
/// conditioning, and left out of the mean (only generated frames count).
pub fn flow_matching_loss_at(
    model: &WorldDit,
    batch: &FlowBatch,
    noise: &Tensor,
    t: &[f32],
) -> Result<Tensor> {
    let FlowBatch {
        x0,
        text,
        text_mask,
        frame_mask,
        cell_weight,
    } = *batch;
    let (b, c, tf, h, w) = x0.dims5()?;
    if t.len() != b || noise.dims() != x0.dims() {
        return Err(err(format!(
            "flow-matching loss: {} times and noise {:?} for latents {:?}",
            t.len(),
            noise.dims(),
            x0.dims()
        )));
    }
    if let Some(weight) = cell_weight {
        if weight.dims() != [b, 1, tf, h, w] {
            return Err(err(format!(
                "flow-matching loss: cell weights {:?} for latents {:?}",
                weight.dims(),
                x0.dims()
            )));
        }
    }
    let tt = Tensor::from_slice(t, (b, 1, 1, 1, 1), x0.device())?.to_dtype(x0.dtype())?;
    let mut x_t = x0
        .broadcast_mul(&tt.affine(-1.0, 1.0)?)?
        .add(&noise.broadcast_mul(&tt)?)?;
    if let Some(m) = frame_mask {
        x_t = apply_given_frames(&x_t, x0, m)?;
    }
    let target = (noise - x0)?;
    let t_tensor = Tensor::from_slice(t, b, x0.device())?;
    let v = model.forward(
        &x_t,
        &t_tensor,
        text,
        text_mask,
        frame_mask.map(|m| (x0, m)),
    )?;
    let sq = (v - target)?.sqr()?;
    // Generated frames only (given frames weigh 0), times the cell weights.
    let generated = frame_mask
        .map(|m| {
            m.to_dtype(sq.dtype())?
                .affine(-1.0, 1.0)?
                .reshape((b, 1, tf, 1, 1))
        })
        .transpose()?;
    let weight = match (cell_weight, generated) {
        (None, None) => return sq.mean_all(),
        (Some(cw), None) => cw.to_dtype(sq.dtype())?,
        (None, Some(g)) => g.broadcast_as((b, 1, tf, h, w))?.contiguous()?,
        (Some(cw), Some(g)) => cw.to_dtype(sq.dtype())?.broadcast_mul(&g)?,
    };
    let total: f32 = weight.to_dtype(DType::F32)?.sum_all()?.to_scalar()?;
    let count = (total as f64 * c as f64).max(1e-6);
    sq.broadcast_mul(&weight)?
        .sum_all()?
        .affine(1.0 / count, 0.0)
}

/// The flow-matching training loss with noise and times drawn from `rng`: times from
/// `t_sampler`, shifted by `shift` (see [`flow_matching_loss_at`]).
pub fn flow_matching_loss<R: Rng + ?Sized>(
    model: &WorldDit,
    batch: &FlowBatch,
    t_sampler: TimestepSampler,
    shift: f64,
    rng: &mut R,
) -> Result<Tensor> {
    let b = batch.x0.dim(0)?;
    let t: Vec<f32> = (0..b)
        .map(|_| t_sampler.sample(rng, shift) as f32)
        .collect();
    let noise = randn_like(batch.x0, rng)?;
    flow_matching_loss_at(model, batch, &noise, &t)
}

/// Which latent frames a conditioning mask gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "k", rename_all = "snake_case")]
pub enum FrameMaskKind {
    /// Nothing given: text→video.
    None,
    /// The first frame: image→video.
    FirstFrame,
    /// The first k frames: extension forward.
    FirstK(usize),
    /// The last k frames: extension backward.
    LastK(usize),
    /// First and last frame: loops (the same frame twice) and connecting clips.
    FirstAndLast,
    /// A random subset of frames (in-betweening).
    Random,
}

impl FrameMaskKind {
    /// The mask (1 = given) over `frames` latent frames; `rng` draws the subset of
    /// [`Random`](Self::Random), which always leaves at least one frame to generate.
    pub fn mask<R: Rng + ?Sized>(&self, frames: usize, rng: &mut R) -> Vec<f32> {
        let mut m = vec![0f32; frames];
        if frames == 0 {
            return m;
        }
        match *self {
            Self::None => {}
            Self::FirstFrame => m[0] = 1.0,
            Self::FirstK(k) => m.iter_mut().take(k).for_each(|v| *v = 1.0),
            Self::LastK(k) => m.iter_mut().rev().take(k).for_each(|v| *v = 1.0),
            Self::FirstAndLast => {
                m[0] = 1.0;
                m[frames - 1] = 1.0;
            }
            Self::Random => {
                if frames > 1 {
                    loop {
                        m.iter_mut()
                            .for_each(|v| *v = if rng.random::<bool>() { 1.0 } else { 0.0 });
                        if m.contains(&0.0) {
                            break;
                        }
                    }
                }
            }
        }
        m
    }
}

/// Relative weights of the conditioning masks drawn in training. Kinds that would give every
/// frame of a clip (any kind on a 1-frame latent, first+last on 2 frames) fall back to
/// [`FrameMaskKind::None`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameMaskConfig {
    pub none: f64,
    pub first_frame: f64,
    pub first_k: f64,
    pub last_k: f64,
    pub first_and_last: f64,
    pub random: f64,
}

impl Default for FrameMaskConfig {
    /// Half the clips unconditioned (text→video is the main use), the rest spread over the
    /// conditioning modes.
    fn default() -> Self {
        Self {
            none: 0.5,
            first_frame: 0.15,
            first_k: 0.1,
            last_k: 0.1,
            first_and_last: 0.1,
            random: 0.05,
        }
    }
}

impl FrameMaskConfig {
    /// Only text→video (no conditioning ever).
    pub fn text_only() -> Self {
        Self {
            none: 1.0,
            first_frame: 0.0,
            first_k: 0.0,
            last_k: 0.0,
            first_and_last: 0.0,
            random: 0.0,
        }
    }

    /// Draws a mask kind for a clip of `frames` latent frames; `k` of first/last k is uniform in
    /// `1..frames`.
    pub fn sample_kind<R: Rng + ?Sized>(&self, frames: usize, rng: &mut R) -> FrameMaskKind {
        let weights = [
            self.none,
            self.first_frame,
            self.first_k,
            self.last_k,
            self.first_and_last,
            self.random,
        ];
        let total: f64 = weights.iter().map(|w| w.max(0.0)).sum();
        if frames < 2 || total <= 0.0 {
            return FrameMaskKind::None;
        }
        let mut u = rng.random::<f64>() * total;
        let mut pick = 0;
        for (i, w) in weights.iter().enumerate() {
            let w = w.max(0.0);
            if u < w {
                pick = i;
                break;
            }
            u -= w;
            pick = i;
        }
        match pick {
            0 => FrameMaskKind::None,
            1 => FrameMaskKind::FirstFrame,
            2 => FrameMaskKind::FirstK(rng.random_range(1..frames)),
            3 => FrameMaskKind::LastK(rng.random_range(1..frames)),
            4 if frames > 2 => FrameMaskKind::FirstAndLast,
            5 => FrameMaskKind::Random,
            _ => FrameMaskKind::None,
        }
    }

    /// Frame masks `[batch, frames]` (f32, 1 = given) for a training batch, and the kinds drawn.
    pub fn sample<R: Rng + ?Sized>(
        &self,
        batch: usize,
        frames: usize,
        rng: &mut R,
        device: &Device,
    ) -> Result<(Tensor, Vec<FrameMaskKind>)> {
        let mut data = Vec::with_capacity(batch * frames);
        let mut kinds = Vec::with_capacity(batch);
        for _ in 0..batch {
            let kind = self.sample_kind(frames, rng);
            data.extend(kind.mask(frames, rng));
            kinds.push(kind);
        }
        Ok((Tensor::from_vec(data, (batch, frames), device)?, kinds))
    }
}

/// Classifier-free guidance dropout: each caption is replaced by [`EMPTY_CAPTION`] with
/// probability `p`. Returns the captions to encode and which were dropped.
pub fn caption_dropout<S: AsRef<str>, R: Rng + ?Sized>(
    captions: &[S],
    p: f64,
    rng: &mut R,
) -> (Vec<String>, Vec<bool>) {
    captions
        .iter()
        .map(|c| {
            if rng.random::<f64>() < p {
                (EMPTY_CAPTION.to_string(), true)
            } else {
                (c.as_ref().to_string(), false)
            }
        })
        .unzip()
}

/// Number of scalar parameters in a `VarMap` (to check a model against the size budget).
pub fn varmap_param_count(varmap: &candle_nn::VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// The rank-5 shape check of a `[B, C, T, H, W]` tensor with a readable error, for callers that
/// validate inputs before building batches.
pub fn latent_dims(x: &Tensor) -> Result<[usize; 5]> {
    let (b, c, t, h, w) = x.dims5().map_err(|_| {
        err(format!(
            "latents must be [B, C, T, H, W], got {:?}",
            x.dims()
        ))
    })?;
    Ok([b, c, t, h, w])
}
