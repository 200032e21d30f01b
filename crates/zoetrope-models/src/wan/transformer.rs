//! The Wan 2.1 diffusion transformer (DiT), computed as diffusers 0.42.1's `WanTransformer3DModel`
//! (`models/transformers/transformer_wan.py`) computes it, for text-to-video.
//!
//! Shape of the computation, for latents `[B, C, F, H, W]` and patch `(pt, ph, pw)`:
//!
//! 1. patch embedding (a Conv3d with kernel = stride = patch, done here as reshape + matmul) →
//!    `L = F/pt · H/ph · W/pw` tokens of width `dim = heads · head_dim`;
//! 2. condition embedding: sinusoidal timestep (f32) → `time_embedder` MLP → `temb`;
//!    `time_proj(SiLU(temb))` → six modulation vectors; `text_embedder` (Linear–GELU(tanh)–Linear)
//!    on the text encoder's hidden states;
//! 3. `num_layers` blocks: modulated LayerNorm → self-attention (RMSNorm on q, k over the full
//!    width, 3D RoPE) → gated residual; LayerNorm (affine) → cross-attention to the text →
//!    residual; modulated LayerNorm → GELU(tanh) FFN → gated residual;
//! 4. output LayerNorm modulated by `scale_shift_table + temb`, `proj_out`, unpatchify.
//!
//! Precision follows diffusers' `_keep_in_fp32_modules` (`time_embedder`, `scale_shift_table`,
//! `norm1/2/3`, `rope`): those parameters stay f32 whatever the model dtype, norms and modulation
//! are computed in f32 and cast back, as the reference's `.float()` / `.type_as()` calls do.
//! Attention is computed in f32 (as fused attention kernels accumulate), in chunks of query rows
//! so that the score matrix stays bounded for long videos.
//!
//! Known bf16 difference: torch adds a linear layer's bias inside the matmul and rounds once;
//! candle's `Linear` rounds the product to bf16 and then the sum, so bf16 outputs differ from
//! diffusers' by up to one bf16 ulp per layer (measured on the tiny fixture: 1 ulp at the output,
//! the same size as diffusers' own bf16-vs-f32 difference). f32 is unaffected.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use zoetrope_nn::fast::{self, Linear};
use zoetrope_nn::fused;
use zoetrope_nn::Checkpoint;

use super::keys;
use crate::step_cache::StepCache;

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(msg.to_string())
}

/// `transformer/config.json` of a diffusers Wan checkpoint. Missing fields take diffusers'
/// defaults (those of Wan 2.1 T2V-14B); unknown fields (`_class_name`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanTransformerConfig {
    /// Patch size (frames, height, width); `[1, 2, 2]` for every Wan 2.1 model.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// `None` (JSON null) means "same as `in_channels`", as in diffusers.
    pub out_channels: Option<usize>,
    pub text_dim: usize,
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    pub cross_attn_norm: bool,
    /// Diffusers ignores this value: every `WanAttention` has RMSNorms on q and k over the full
    /// width (`rms_norm_across_heads`), so this implementation does too.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Image-to-video only (CLIP image embedding width); must be null here.
    pub image_dim: Option<usize>,
    /// Image-to-video only (extra key/value projections in cross-attention); must be null here.
    pub added_kv_proj_dim: Option<usize>,
    pub rope_max_seq_len: usize,
    /// First-last-frame-to-video only; must be null here.
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for WanTransformerConfig {
    /// Diffusers' constructor defaults.
    fn default() -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl WanTransformerConfig {
    /// Wan2.1-T2V-1.3B.
    pub fn wan21_t2v_1_3b() -> Self {
        Self {
            num_attention_heads: 12,
            ffn_dim: 8960,
            num_layers: 30,
            ..Self::default()
        }
    }

    /// Wan2.1-T2V-14B.
    pub fn wan21_t2v_14b() -> Self {
        Self::default()
    }

    /// Reads a diffusers `config.json`, then [`validate`](Self::validate)s it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "{}: not a Wan transformer config: {e}",
                path.display()
            ))
        })?;
        cfg.validate()
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Width of the residual stream, `heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels (`out_channels or in_channels`, as diffusers).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The RoPE split of a head `(t, h, w)`: `h = w = 2·(head_dim/6)`, `t = head_dim − h − w`
    /// (44/42/42 for head_dim 128), as `WanRotaryPosEmbed`.
    pub fn rope_split(&self) -> (usize, usize, usize) {
        let hw = 2 * (self.attention_head_dim / 6);
        (self.attention_head_dim - 2 * hw, hw, hw)
    }

    /// Checks the config describes a text-to-video model this implementation can run.
    pub fn validate(&self) -> Result<()> {
        if self.image_dim.is_some()
            || self.added_kv_proj_dim.is_some()
            || self.pos_embed_seq_len.is_some()
        {
            return Err(err(
                "this is an image-to-video Wan transformer (image_dim / added_kv_proj_dim / \
                 pos_embed_seq_len set); only text-to-video is supported so far",
            ));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err(err(
                "num_attention_heads and attention_head_dim must be > 0",
            ));
        }
        // RoPE rotates pairs, so every part of the split must be even.
        if !self.attention_head_dim.is_multiple_of(2) || self.attention_head_dim < 6 {
            return Err(err(format!(
                "attention_head_dim {} must be even and at least 6 for Wan's 3D RoPE",
                self.attention_head_dim
            )));
        }
        if self.patch_size.contains(&0) {
            return Err(err("patch_size entries must be > 0"));
        }
        if self.freq_dim < 2 {
            return Err(err("freq_dim must be at least 2"));
        }
        Ok(())
    }

    /// Infers a config from tensor shapes (diffusers names, see [`keys`]). The number of heads
    /// cannot be read from the weights; it follows Wan's convention `head_dim = 128` (true of
    /// every released Wan model), so other models need an explicit config.
    pub fn infer_from_shapes(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let get = |k: &str, rank: usize| -> Result<&Vec<usize>> {
            let s = shapes.get(k).ok_or_else(|| {
                err(format!(
                    "cannot infer the Wan transformer config: tensor '{k}' is missing"
                ))
            })?;
            if s.len() != rank {
                return Err(err(format!(
                    "cannot infer the Wan transformer config: tensor '{k}' has shape {s:?}, \
                     expected rank {rank}"
                )));
            }
            Ok(s)
        };
        let pe = get("patch_embedding.weight", 5)?;
        let dim = pe[0];
        let patch_size = [pe[2], pe[3], pe[4]];
        if dim % 128 != 0 {
            return Err(err(format!(
                "cannot infer the number of heads: width {dim} is not a multiple of Wan's head \
                 size 128; pass an explicit config"
            )));
        }
        let freq_dim = get("condition_embedder.time_embedder.linear_1.weight", 2)?[1];
        let text_dim = get("condition_embedder.text_embedder.linear_1.weight", 2)?[1];
        let ffn_dim = get("blocks.0.ffn.net.0.proj.weight", 2)?[0];
        let out_flat = get("proj_out.weight", 2)?[0];
        let patch_vol: usize = patch_size.iter().product();
        if patch_vol == 0 || out_flat % patch_vol != 0 {
            return Err(err(format!(
                "cannot infer out_channels: proj_out has {out_flat} outputs for patch {patch_size:?}"
            )));
        }
        let layers: BTreeSet<usize> = shapes
            .keys()
            .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse().ok())
            .collect();
        let num_layers = layers.len();
        if layers.iter().copied().ne(0..num_layers) {
            return Err(err(format!(
                "cannot infer num_layers: block indices are not 0..n ({layers:?})"
            )));
        }
        Ok(Self {
            patch_size,
            num_attention_heads: dim / 128,
            attention_head_dim: 128,
            in_channels: pe[1],
            out_channels: Some(out_flat / patch_vol),
            text_dim,
            freq_dim,
            ffn_dim,
            num_layers,
            cross_attn_norm: shapes.contains_key("blocks.0.norm2.weight"),
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: shapes
                .get("condition_embedder.image_embedder.norm1.weight")
                .map(|s| s[0]),
            added_kv_proj_dim: shapes
                .get("blocks.0.attn2.add_k_proj.weight")
                .and_then(|s| s.get(1).copied()),
            rope_max_seq_len: 1024,
            pos_embed_seq_len: shapes
                .get("condition_embedder.image_embedder.pos_embed")
                .and_then(|s| s.get(1).copied()),
        })
    }
}

/// Tensor names and shapes from a safetensors header (no tensor data is read).
pub fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>> {
    let bad = |reason: String| err(format!("{}: {reason}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!(
            "not a safetensors file (header of {len} bytes)"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let json: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file (header: {e})")))?;
    let mut out = HashMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            continue;
        }
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid shape in the header")))?;
        out.insert(name, shape);
    }
    Ok(out)
}

/// `torch.nn.RMSNorm(dim)` computed in f32: `x · rsqrt(mean(x²) + eps) · weight`.
fn rms_norm_f32(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(weight)
}

/// Sinusoidal timestep embedding, as diffusers' `get_timestep_embedding(t, dim,
/// flip_sin_to_cos=True, downscale_freq_shift=0)`: frequencies `exp(−ln(10⁴)·i/half)` and
/// arguments `t·freq` are rounded to f32 exactly where torch rounds them; the output is
/// `[cos, sin]` (the flip), zero-padded if `dim` is odd. `exp`, `cos`, `sin` are computed in f64 and
/// rounded (torch's f32 kernels are within one ulp of that).
pub fn timestep_sinusoid(timesteps: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    // torch: `-math.log(max_period) * arange(half, f32)` — the Python float is cast to f32.
    let neg_log = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let e = (neg_log * i as f32) / half as f32;
            (e as f64).exp() as f32
        })
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let start = out.len();
        out.extend(freqs.iter().map(|&f| ((t * f) as f64).cos() as f32));
        out.extend(freqs.iter().map(|&f| ((t * f) as f64).sin() as f32));
        out.resize(start + dim, 0.0);
    }
    out
}

/// Precomputed 1D RoPE angles for one axis: `cos/sin(pos · θ^(−2i/d))` in f64, cast to f32, for
/// `pos < max_seq_len` (`get_1d_rotary_pos_embed(..., freqs_dtype=float64)`); stored without the
/// `repeat_interleave(2)` (both elements of a pair use the same angle).
#[derive(Debug, Clone)]
struct RopeAxis {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAxis {
    fn new(dim: usize, max_seq_len: usize) -> Self {
        let half = dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(max_seq_len * half);
        let mut sin = Vec::with_capacity(max_seq_len * half);
        for pos in 0..max_seq_len {
            for &f in &freqs {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }
}

/// Wan's 3D RoPE: head channels split into (t, h, w) parts, each rotated by the token's frame,
/// row and column in the patch grid.
#[derive(Debug, Clone)]
struct Rope3d {
    axes: [RopeAxis; 3],
    max_seq_len: usize,
}

impl Rope3d {
    fn new(cfg: &WanTransformerConfig) -> Self {
        let (t, h, w) = cfg.rope_split();
        let m = cfg.rope_max_seq_len;
        Self {
            axes: [
                RopeAxis::new(t, m),
                RopeAxis::new(h, m),
                RopeAxis::new(w, m),
            ],
            max_seq_len: m,
        }
    }

    /// `(cos, sin)` of shape `[f·h·w, head_dim/2]` (one angle per pair), tokens in f, h, w order.
    fn tables(&self, grid: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        if let Some(n) = grid.iter().find(|&&n| n > self.max_seq_len) {
            return Err(err(format!(
                "patch grid {grid:?} has {n} positions along one axis, more than \
                 rope_max_seq_len {}",
                self.max_seq_len
            )));
        }
        let half: usize = self.axes.iter().map(|a| a.half).sum();
        let n = grid.iter().product::<usize>();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for f in 0..grid[0] {
            for h in 0..grid[1] {
                for w in 0..grid[2] {
                    for (axis, pos) in self.axes.iter().zip([f, h, w]) {
                        let r = pos * axis.half..(pos + 1) * axis.half;
                        cos.extend_from_slice(&axis.cos[r.clone()]);
                        sin.extend_from_slice(&axis.sin[r]);
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }
}

/// Scaled dot-product attention without mask, in f32: `softmax(q·kᵀ/√d)·v` for `q [B, H, Lq, d]`,
/// `k, v [B, H, Lk, d]`, over chunks of query rows so that at most about `max_scores` score
/// elements exist at once.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, max_scores: usize) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.to_dtype(DType::F32)?;
    let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let rows = (max_scores / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(rows));
    let mut start = 0;
    while start < lq {
        let n = rows.min(lq - start);
        let qc = q.narrow(2, start, n)?.contiguous()?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v)?);
        start += n;
    }
    Tensor::cat(&outs, 2)
}

/// `WanAttention` (self- or cross-attention; the text-to-video variant, without image keys).
#[derive(Debug, Clone)]
struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    /// RMSNorm weights over the full width (`rms_norm_across_heads`), as f32.
    norm_q: Tensor,
    norm_k: Tensor,
    heads: usize,
    eps: f64,
}

impl WanAttention {
    fn new(dim: usize, heads: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            to_q: fast::linear(dim, dim, vb.pp("to_q"))?,
            to_k: fast::linear(dim, dim, vb.pp("to_k"))?,
            to_v: fast::linear(dim, dim, vb.pp("to_v"))?,
            to_out: fast::linear(dim, dim, vb.pp("to_out.0"))?,
            // Not in diffusers' f32-kept modules: the weights take the model dtype (a bf16 model
            // rounds them), and the norm itself is then computed in f32.
            norm_q: vb.get(dim, "norm_q.weight")?.to_dtype(DType::F32)?,
            norm_k: vb.get(dim, "norm_k.weight")?.to_dtype(DType::F32)?,
            heads,
            eps,
        })
    }

    /// `x [B, L, dim]` attends to `context [B, Lc, dim]` (`None`: self-attention). `rope`: the
    /// `(cos, sin)` pair tables, applied to q and k (self-attention only).
    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rope: Option<(&Tensor, &Tensor)>,
        max_scores: usize,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let ctx = context.unwrap_or(x);
        if x.device().is_cpu() && fused::enabled() {
            // zoetrope's kernels: the same computation on [B, L, heads·head_dim] tensors, with
            // no head transposes and flash attention (no score matrix at all).
            // Norms and RoPE in f32 on rows of the model dtype, each rounded once to it;
            // attention's f32 output goes straight into `to_out`, which rounds its input to the
            // weight's dtype.
            let q = fast::rms_norm(&x.apply(&self.to_q)?, &self.norm_q, self.eps)?;
            let k = fast::rms_norm(&ctx.apply(&self.to_k)?, &self.norm_k, self.eps)?;
            let v = ctx.apply(&self.to_v)?;
            let (q, k) = match rope {
                Some((cos, sin)) => (
                    fast::rope_interleaved(&q, cos, sin, self.heads)?,
                    fast::rope_interleaved(&k, cos, sin, self.heads)?,
                ),
                None => (q, k),
            };
            return fast::attention(&q, &k, &v, self.heads)?.apply(&self.to_out);
        }
        let (b, lq, dim) = x.dims3()?;
        let lk = ctx.dim(1)?;
        let hd = dim / self.heads;
        // The norms act on the full width before the heads are split (rms_norm_across_heads);
        // computed in f32, then cast back to the model dtype as torch's RMSNorm returns it.
        let q = rms_norm_f32(&x.apply(&self.to_q)?, &self.norm_q, self.eps)?.to_dtype(dtype)?;
        let k = rms_norm_f32(&ctx.apply(&self.to_k)?, &self.norm_k, self.eps)?.to_dtype(dtype)?;
        let v = ctx.apply(&self.to_v)?;
        let split = |t: Tensor, l: usize| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (mut q, mut k, v) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
        if let Some((cos, sin)) = rope {
            // The reference rotates interleaved pairs (x[2i], x[2i+1]) in f32 (its cos/sin are
            // f32) and writes the result back in the input dtype.
            q = candle_nn::rotary_emb::rope_i(&q.to_dtype(DType::F32)?, cos, sin)?
                .to_dtype(dtype)?;
            k = candle_nn::rotary_emb::rope_i(&k.to_dtype(DType::F32)?, cos, sin)?
                .to_dtype(dtype)?;
        }
        let o = attention(&q, &k, &v, max_scores)?
            .to_dtype(dtype)?
            .transpose(1, 2)?
            .reshape((b, lq, dim))?;
        o.apply(&self.to_out)
    }
}

/// `WanTransformerBlock`.
#[derive(Debug, Clone)]
struct WanBlock {
    attn1: WanAttention,
    attn2: WanAttention,
    /// Affine LayerNorm before cross-attention (`cross_attn_norm`), f32 `(weight, bias)`.
    norm2: Option<(Tensor, Tensor)>,
    ffn_in: Linear,
    ffn_out: Linear,
    /// `[1, 6, dim]`, f32.
    scale_shift_table: Tensor,
    eps: f64,
}

impl WanBlock {
    fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        let f32vb = vb.to_dtype(DType::F32);
        let norm2 = if cfg.cross_attn_norm {
            Some((
                f32vb.get(dim, "norm2.weight")?,
                f32vb.get(dim, "norm2.bias")?,
            ))
        } else {
            None
        };
        Ok(Self {
            attn1: WanAttention::new(dim, heads, cfg.eps, vb.pp("attn1"))?,
            attn2: WanAttention::new(dim, heads, cfg.eps, vb.pp("attn2"))?,
            norm2,
            ffn_in: fast::linear(dim, cfg.ffn_dim, vb.pp("ffn.net.0.proj"))?,
            ffn_out: fast::linear(cfg.ffn_dim, dim, vb.pp("ffn.net.2"))?,
            scale_shift_table: f32vb.get((1, 6, dim), "scale_shift_table")?,
            eps: cfg.eps,
        })
    }

    /// `x [B, L, dim]` (model dtype), `context [B, Lc, dim]`, `modulation [B, 6, dim]` (f32).
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        modulation: &Tensor,
        rope: (&Tensor, &Tensor),
        max_scores: usize,
    ) -> Result<Tensor> {
        // `(scale_shift_table + temb.float()).chunk(6, dim=1)`, all f32.
        let m = self.scale_shift_table.broadcast_add(modulation)?;
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift, scale, gate) = (part(0)?, part(1)?, part(2)?);
        let (c_shift, c_scale, c_gate) = (part(3)?, part(4)?, part(5)?);

        // 1. Self-attention: norm and modulation in f32, cast to the model dtype; the gated
        //    residual is summed in f32 (`hidden_states.float() + attn_output * gate_msa`).
        let n = fast::layer_norm_modulate(x, &scale, &shift, self.eps)?;
        let a = self.attn1.forward(&n, None, Some(rope), max_scores)?;
        let x = fast::add_gated(x, &a, &gate)?;

        // 2. Cross-attention: plain residual in the model dtype (no gate), no mask.
        let n = match &self.norm2 {
            Some((w, b)) => fast::layer_norm_affine(&x, w, b, self.eps)?,
            None => x.clone(),
        };
        let x = fast::add(
            &x,
            &self.attn2.forward(&n, Some(context), None, max_scores)?,
        )?;

        // 3. Feed-forward, GELU with tanh approximation (`gelu-approximate`).
        let n = fast::layer_norm_modulate(&x, &c_scale, &c_shift, self.eps)?;
        let h = self.ffn_in.forward_gelu(&n)?;
        fast::add_gated(&x, &h.apply(&self.ffn_out)?, &c_gate)
    }
}

/// Intermediate values of one forward pass, to localise differences against the reference.
#[derive(Debug, Clone)]
pub struct WanTransformerTrace {
    /// `[B, dim]`: `time_embedder(sinusoid(t))`, in the model dtype.
    pub temb: Tensor,
    /// `[B, 6·dim]`: `time_proj(SiLU(temb))`.
    pub timestep_proj: Tensor,
    /// `[B, Lc, dim]`: the text after `text_embedder`.
    pub context: Tensor,
    /// `[B, L, dim]`: tokens after the patch embedding.
    pub patch_tokens: Tensor,
    /// `[B, L, dim]` after each block.
    pub block_outputs: Vec<Tensor>,
}

/// The Wan 2.1 text-to-video transformer. See the module docs.
#[derive(Debug, Clone)]
pub struct WanTransformer3DModel {
    cfg: WanTransformerConfig,
    dtype: DType,
    device: Device,
    /// Conv3d weight flattened to `[dim, C·pt·ph·pw]`, as a linear layer over patches.
    patch_embedding: Linear,
    /// `time_embedder.linear_1/2`, kept f32.
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
    blocks: Vec<WanBlock>,
    proj_out: Linear,
    /// `[1, 2, dim]`, f32.
    scale_shift_table: Tensor,
    rope: Rope3d,
    max_scores: usize,
}

/// Default bound on attention score elements held at once (64 Mi f32 = 256 MiB).
pub const DEFAULT_ATTENTION_CHUNK_ELEMENTS: usize = 1 << 26;

impl WanTransformer3DModel {
    /// Builds the model from diffusers-named weights. `vb`'s dtype is the model dtype (f32, bf16,
    /// f16); the parameters diffusers keeps in f32 are loaded as f32 regardless.
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        let [pt, ph, pw] = cfg.patch_size;
        let patch_in = cfg.in_channels * pt * ph * pw;
        let f32vb = vb.to_dtype(DType::F32);
        let patch_weight = vb
            .get((dim, cfg.in_channels, pt, ph, pw), "patch_embedding.weight")?
            .reshape((dim, patch_in))?;
        let patch_bias = vb.get(dim, "patch_embedding.bias")?;
        let patch_embedding = Linear::new(patch_weight, Some(patch_bias))?;
        let ce = vb.pp("condition_embedder");
        let ce32 = f32vb.pp("condition_embedder");
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            patch_embedding,
            time_linear_1: fast::linear(cfg.freq_dim, dim, ce32.pp("time_embedder.linear_1"))?,
            time_linear_2: fast::linear(dim, dim, ce32.pp("time_embedder.linear_2"))?,
            time_proj: fast::linear(dim, 6 * dim, ce.pp("time_proj"))?,
            text_linear_1: fast::linear(cfg.text_dim, dim, ce.pp("text_embedder.linear_1"))?,
            text_linear_2: fast::linear(dim, dim, ce.pp("text_embedder.linear_2"))?,
            blocks,
            proj_out: fast::linear(dim, cfg.out_channels() * pt * ph * pw, vb.pp("proj_out"))?,
            scale_shift_table: f32vb.get((1, 2, dim), "scale_shift_table")?,
            rope: Rope3d::new(cfg),
            max_scores: DEFAULT_ATTENTION_CHUNK_ELEMENTS,
        })
    }

    /// Loads a diffusers `transformer/` folder: `config.json` plus one `*.safetensors` or shards
    /// listed by a `*.safetensors.index.json`.
    pub fn load_diffusers(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = WanTransformerConfig::from_json_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::new(&cfg, ckpt.var_builder(dtype, device))
    }

    /// Loads a single safetensors file in the original Wan / ComfyUI layout (keys optionally
    /// prefixed `model.diffusion_model.`; renamed through [`keys::original_to_diffusers`]) or in
    /// diffusers' layout. Without `config`, the config is inferred from the tensor shapes
    /// ([`WanTransformerConfig::infer_from_shapes`], which assumes head_dim 128).
    pub fn load_single_file(
        path: &Path,
        config: Option<WanTransformerConfig>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let ckpt = Checkpoint::open(&[path])?;
        let stored = ckpt.keys();
        let original = keys::is_original_layout(stored.iter().map(String::as_str));
        let ckpt = if original {
            ckpt.with_key_map(|k| Some(keys::original_to_diffusers(k)).filter(|n| n != k))
        } else {
            // Diffusers names, possibly with the ComfyUI prefix.
            ckpt.with_key_map(|k| {
                let s = keys::strip_prefix(k);
                (s != k).then(|| s.to_string())
            })
        };
        let cfg = match config {
            Some(c) => c,
            None => {
                let shapes = safetensors_shapes(path)?
                    .into_iter()
                    .map(|(k, s)| {
                        let k = if original {
                            keys::original_to_diffusers(&k)
                        } else {
                            keys::strip_prefix(&k).to_string()
                        };
                        (k, s)
                    })
                    .collect();
                WanTransformerConfig::infer_from_shapes(&shapes)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?
            }
        };
        cfg.validate()?;
        Self::new(&cfg, ckpt.var_builder(dtype, device))
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    /// The model dtype (that of the weights outside the f32-kept modules, and of the output).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bounds the attention score matrix to about `elements` values at a time (default
    /// [`DEFAULT_ATTENTION_CHUNK_ELEMENTS`]); queries are processed in row chunks to fit.
    pub fn set_attention_chunk_elements(&mut self, elements: usize) {
        self.max_scores = elements.max(1);
    }

    /// `(temb [B, dim], timestep_proj [B, 6·dim])` for timesteps `[B]` (any numeric dtype; UniPC
    /// gives integers, FlowMatchEuler floats; the reference converts them to f32).
    ///
    /// As diffusers: the sinusoid and `time_embedder` run in f32, then `temb` is cast to the model
    /// dtype (`.type_as(encoder_hidden_states)`) before `time_proj(SiLU(temb))`.
    pub fn time_embedding(&self, timestep: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = match timestep.rank() {
            0 => timestep.reshape(1)?,
            1 => timestep.clone(),
            r => {
                return Err(err(format!(
                    "timestep must have shape [batch], got rank {r} ({:?}); per-token \
                     timesteps (Wan 2.2 TI2V) are not supported",
                    timestep.dims()
                )))
            }
        };
        let t: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
        let n = t.len();
        let sin = timestep_sinusoid(&t, self.cfg.freq_dim);
        let sin = Tensor::from_vec(sin, (n, self.cfg.freq_dim), &self.device)?;
        let temb = sin
            .apply(&self.time_linear_1)?
            .silu()?
            .apply(&self.time_linear_2)?
            .to_dtype(self.dtype)?;
        let proj = temb.silu()?.apply(&self.time_proj)?;
        Ok((temb, proj))
    }

    /// `text_embedder(encoder_hidden_states)`: `[B, Lc, text_dim]` → `[B, Lc, dim]`.
    pub fn embed_text(&self, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        // Linear, GELU(approximate="tanh"), Linear.
        self.text_linear_1
            .forward_gelu(&encoder_hidden_states.to_dtype(self.dtype)?)?
            .apply(&self.text_linear_2)
    }

    /// Patch grid `(F/pt, H/ph, W/pw)` of latents `[B, C, F, H, W]`; errors if a size is not a
    /// multiple of the patch (the reference's strided Conv3d would silently drop the remainder).
    pub fn patch_grid(&self, dims: &[usize]) -> Result<[usize; 3]> {
        let [pt, ph, pw] = self.cfg.patch_size;
        let &[_, c, f, h, w] = dims else {
            return Err(err(format!(
                "latents must be [B, C, F, H, W], got {dims:?}"
            )));
        };
        if c != self.cfg.in_channels {
            return Err(err(format!(
                "latents have {c} channels, the transformer expects {}",
                self.cfg.in_channels
            )));
        }
        if f % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(err(format!(
                "latent size {f}x{h}x{w} (frames x height x width) is not a multiple of the \
                 patch size {:?}",
                self.cfg.patch_size
            )));
        }
        Ok([f / pt, h / ph, w / pw])
    }

    /// Patch embedding: `[B, C, F, H, W]` → `[B, L, dim]`, tokens in frame, row, column order.
    /// The reference's Conv3d has kernel = stride = patch, so it is one matmul over patches.
    pub fn patch_embed(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let [gf, gh, gw] = self.patch_grid(hidden_states.dims())?;
        let [pt, ph, pw] = self.cfg.patch_size;
        let b = hidden_states.dim(0)?;
        let c = self.cfg.in_channels;
        hidden_states
            .to_dtype(self.dtype)?
            .reshape(vec![b, c, gf, pt, gh, ph, gw, pw])?
            .permute([0, 2, 4, 6, 1, 3, 5, 7])?
            .contiguous()?
            .reshape((b, gf * gh * gw, c * pt * ph * pw))?
            .apply(&self.patch_embedding)
    }

    /// RoPE tables for a patch grid as the reference builds them (`WanRotaryPosEmbed`): `(cos,
    /// sin)`, each `[f·h·w, head_dim]` f32, every angle repeated for both elements of its pair.
    pub fn rope_tables(&self, grid: [usize; 3]) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.rope.tables(grid, &self.device)?;
        let rep = |t: Tensor| -> Result<Tensor> {
            let (n, half) = t.dims2()?;
            t.unsqueeze(2)?.repeat((1, 1, 2))?.reshape((n, 2 * half))
        };
        Ok((rep(cos)?, rep(sin)?))
    }

    /// Predicts the flow (velocity) for latents `hidden_states [B, C, F, H, W]` at `timestep [B]`
    /// (a single value is broadcast over the batch) given text `encoder_hidden_states
    /// [B, Lc, text_dim]` (umT5 output, zero-padded to its full length: the padding takes part
    /// in the unmasked cross-attention, as in the reference). Returns `[B, C_out, F, H, W]` in the
    /// model dtype.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.run(hidden_states, timestep, encoder_hidden_states, None, None)
    }

    /// [`forward`](Self::forward) with First-Block Cache ([`crate::step_cache`]): block 0 always
    /// runs; blocks 1.. run, or their residual from `cache` is reused when block 0's output moved
    /// less than the cache's threshold since the last computed step. Use one cache per guidance
    /// branch and sampling pass. With threshold 0 the result equals `forward`'s exactly.
    pub fn forward_cached(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        cache: &mut StepCache,
    ) -> Result<Tensor> {
        self.run(
            hidden_states,
            timestep,
            encoder_hidden_states,
            None,
            Some(cache),
        )
    }

    /// [`forward`](Self::forward), also returning the intermediate values.
    pub fn forward_traced(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, WanTransformerTrace)> {
        let mut trace = None;
        let out = self.run(
            hidden_states,
            timestep,
            encoder_hidden_states,
            Some(&mut trace),
            None,
        )?;
        Ok((out, trace.expect("run fills the trace")))
    }

    fn run(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        trace: Option<&mut Option<WanTransformerTrace>>,
        cache: Option<&mut StepCache>,
    ) -> Result<Tensor> {
        let dims = hidden_states.dims().to_vec();
        let grid = self.patch_grid(&dims)?;
        let b = dims[0];
        let dim = self.cfg.inner_dim();
        let (eb, _, text_dim) = encoder_hidden_states.dims3()?;
        if eb != b || text_dim != self.cfg.text_dim {
            return Err(err(format!(
                "encoder_hidden_states {:?} do not fit latents of batch {b} and text_dim {}",
                encoder_hidden_states.dims(),
                self.cfg.text_dim
            )));
        }

        let (cos, sin) = self.rope.tables(grid, &self.device)?;
        let tokens = self.patch_embed(hidden_states)?;

        let (mut temb, mut tproj) = self.time_embedding(timestep)?;
        match temb.dim(0)? {
            n if n == b => {}
            1 => {
                temb = temb.broadcast_as((b, dim))?.contiguous()?;
                tproj = tproj.broadcast_as((b, 6 * dim))?.contiguous()?;
            }
            n => return Err(err(format!("{n} timesteps for a batch of {b} latents"))),
        }
        let context = self.embed_text(encoder_hidden_states)?;
        // `timestep_proj.unflatten(1, (6, -1))`, added to each block's f32 table as `.float()`.
        let modulation = tproj.reshape((b, 6, dim))?.to_dtype(DType::F32)?;

        let mut block_outputs = Vec::new();
        let mut x = tokens.clone();
        let run_block = |block: &WanBlock, x: &Tensor| {
            block.forward(x, &context, &modulation, (&cos, &sin), self.max_scores)
        };
        match (cache, self.blocks.split_first()) {
            (Some(cache), Some((first, rest))) => {
                let x1 = run_block(first, &x)?;
                x = cache.forward(&x, x1, |x1| {
                    rest.iter()
                        .try_fold(x1.clone(), |x, block| run_block(block, &x))
                })?;
            }
            _ => {
                for block in &self.blocks {
                    x = run_block(block, &x)?;
                    if trace.is_some() {
                        block_outputs.push(x.clone());
                    }
                }
            }
        }

        // Output: `(scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)` → shift, scale (f32).
        let ss = self
            .scale_shift_table
            .broadcast_add(&temb.to_dtype(DType::F32)?.unsqueeze(1)?)?;
        let (shift, scale) = (ss.narrow(1, 0, 1)?, ss.narrow(1, 1, 1)?);
        let x =
            fast::layer_norm_modulate(&x, &scale, &shift, self.cfg.eps)?.apply(&self.proj_out)?;

        // Unpatchify: [B, L, pt·ph·pw·C] → [B, C, F, H, W]; the channel is the fastest axis of
        // proj_out's output (reshape to (..., pt, ph, pw, C) then permute 0,7,1,4,2,5,3,6).
        let [pt, ph, pw] = self.cfg.patch_size;
        let [gf, gh, gw] = grid;
        let c = self.cfg.out_channels();
        let out = x
            .reshape(vec![b, gf, gh, gw, pt, ph, pw, c])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .contiguous()?
            .reshape((b, c, gf * pt, gh * ph, gw * pw))?;

        if let Some(slot) = trace {
            *slot = Some(WanTransformerTrace {
                temb,
                timestep_proj: tproj,
                context,
                patch_tokens: tokens,
                block_outputs,
            });
        }
        Ok(out)
    }
}
