//! Wan's text encoder: Google's umT5 encoder (umT5-XXL in the real model), its tokenizer, and
//! the prompt handling of diffusers' `WanPipeline._get_t5_prompt_embeds`.
//!
//! - [`Umt5Config`], [`Umt5Encoder`]: transformers' `UMT5EncoderModel` (`last_hidden_state`).
//! - [`WanTokenizer`]: [`prompt_clean`] (without `ftfy`, see [`clean`]) then umT5's tokenizer,
//!   padded and truncated to a fixed length with the final `</s>` always kept.
//! - [`encode_prompts`]: the encoder output cut to each prompt's real length and padded back
//!   with zeros, as the pipeline does.
//! - [`TextEncoder`]: both, loaded from a diffusers pipeline folder.
//!
//! Checked against `tests/fixtures/wan/text_encoder_ref.*` (made by
//! `tools/parity/make_wan_fixtures.py`) in `tests/wan_text.rs`.

pub mod clean;
mod html_entities;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use zoetrope_nn::{Checkpoint, CheckpointError};

pub use clean::{html_unescape, prompt_clean};

/// The pipeline's `max_sequence_length` for Wan 2.1 (`WanPipeline.__call__` default): every
/// prompt is padded or truncated to this many tokens, and the transformer sees this many rows.
pub const WAN_MAX_SEQUENCE_LENGTH: usize = 512;

/// What can go wrong loading or running the text encoder.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file of the model folder is missing, unreadable, or not what it should be.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A tensor operation failed, or a weight could not be loaded (the message names the
    /// checkpoint file and the tensor).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenize(String),
}

fn file_err(path: &Path, reason: impl Into<String>) -> TextError {
    TextError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TextError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "no such file".to_string()
        } else {
            e.to_string()
        };
        file_err(path, reason)
    })?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("invalid JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The fields of transformers' `UMT5Config` (`text_encoder/config.json`) that the encoder uses.
/// Defaults are `UMT5Config`'s. umT5-XXL (Wan): vocab 256384, d_model 4096, d_kv 64, d_ff 10240,
/// 24 layers, 64 heads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Umt5Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    /// Size of one attention head; `num_heads * d_kv` need not equal `d_model`.
    #[serde(default = "defaults::d_kv")]
    pub d_kv: usize,
    #[serde(default = "defaults::d_ff")]
    pub d_ff: usize,
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    /// `"gated-gelu"` (umT5), or `"{act}"` / `"gated-{act}"` with act in relu, gelu, gelu_new,
    /// silu. The JSON's `dense_act_fn` is ignored, as `UMT5Config.__post_init__` recomputes it
    /// from this.
    #[serde(default = "defaults::feed_forward_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        250112
    }
    pub fn d_model() -> usize {
        512
    }
    pub fn d_kv() -> usize {
        64
    }
    pub fn d_ff() -> usize {
        1024
    }
    pub fn num_layers() -> usize {
        8
    }
    pub fn num_heads() -> usize {
        6
    }
    pub fn num_buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
    }
    pub fn feed_forward_proj() -> String {
        "gated-gelu".into()
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-6
    }
}

/// The feed-forward activation (transformers' `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Umt5Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation. umT5's `"gated-gelu"` means this.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Umt5Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluTanh => x.gelu(),
            Self::GeluErf => x.gelu_erf(),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

impl Umt5Config {
    /// Reads `config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        let cfg: Self = read_json(path)?;
        cfg.feed_forward()
            .map_err(|reason| file_err(path, reason))?;
        Ok(cfg)
    }

    /// The activation and whether the feed-forward is gated, as `UMT5Config.__post_init__`
    /// derives them from `feed_forward_proj` (`"gated-gelu"` → gated `gelu_new`).
    pub fn feed_forward(&self) -> Result<(Umt5Activation, bool), String> {
        let proj = self.feed_forward_proj.as_str();
        let (gated, act) = match proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            None => (false, proj),
            Some(_) => {
                return Err(format!(
                    "feed_forward_proj '{proj}' is not 'gated-ACT' or 'ACT'"
                ))
            }
        };
        let act = match act {
            // The special case in UMT5Config: "gated-gelu" is the tanh approximation.
            "gelu" if gated => Umt5Activation::GeluTanh,
            "gelu" => Umt5Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Umt5Activation::GeluTanh,
            "relu" => Umt5Activation::Relu,
            "silu" | "swish" => Umt5Activation::Silu,
            other => {
                return Err(format!(
                    "feed_forward_proj activation '{other}' is not supported"
                ))
            }
        };
        Ok((act, gated))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// umT5's relative-position bucket for an encoder (bidirectional) attention, exactly as
/// transformers' `UMT5Attention._relative_position_bucket` computes it: `relative_position` is
/// key position − query position; half the buckets are for positive offsets; within each half,
/// small distances get their own bucket and larger ones share logarithmic bins up to
/// `max_distance`.
///
/// The log is taken in f32 as torch does, so the bin edges are the reference's exactly (for 32
/// buckets / 128: distances 8, 12, 16, 23, 32, 46, 64, 91 start new bins).
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let half = num_buckets / 2;
    let base = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    // torch: log(n.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact),
    // an f32 tensor divided by a Python float (cast to f32), then `.to(long)` (truncation).
    let log_ratio = (n as f32 / max_exact as f32).ln()
        / ((max_distance as f64 / max_exact as f64).ln() as f32)
        * (half - max_exact) as f32;
    base + (max_exact + log_ratio as usize).min(half - 1)
}

/// T5's layer norm: RMS only (no mean subtraction, no bias). Kept in f32 whatever the weights'
/// dtype; the reference also accumulates in f32 for half-precision inputs.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.to_dtype(DType::F32).get(size, "weight")?;
        Ok(Self { weight, eps })
    }

    /// `x` is f32; the result is in `dtype`.
    fn forward(&self, x: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_mul(&(variance + self.eps)?.sqrt()?.recip()?)?;
        x.broadcast_mul(&self.weight)?.to_dtype(dtype)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// [num_buckets, num_heads], f32. umT5 has one in every layer (T5 only in layer 0).
    relative_attention_bias: Tensor,
    num_heads: usize,
    d_kv: usize,
}

impl SelfAttention {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        Ok(Self {
            q: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: candle_nn::linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_attention_bias: vb.pp("relative_attention_bias").to_dtype(DType::F32).get(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "weight",
            )?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// `x`: normed input in the compute dtype, [B, L, d_model]. `buckets`: [L*L] u32.
    /// `mask`: additive f32 [B, 1, 1, L]. Returns f32 [B, L, d_model].
    fn forward(&self, x: &Tensor, buckets: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(x)?)?;
        let k = heads(self.k.forward(x)?)?;
        let v = heads(self.v.forward(x)?)?;
        // No 1/sqrt(d_kv) scaling: UMT5Attention.scaling = 1.0 (the Mesh-TF initialisation folds
        // it into q's weights).
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        // Position bias [1, H, L, L], recomputed in every layer from that layer's own table.
        let bias = self
            .relative_attention_bias
            .embedding(buckets)?
            .reshape((l, l, self.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        // The reference's order: scores + position_bias, then + mask.
        let scores = scores.broadcast_add(&bias)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.d_kv))?;
        self.o.forward(&out)?.to_dtype(DType::F32)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    wi_0: Linear,
    /// Present only for gated activations.
    wi_1: Option<Linear>,
    wo: Linear,
    act: Umt5Activation,
}

impl FeedForward {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (act, gated) = cfg.feed_forward().map_err(candle_core::Error::Msg)?;
        // transformers keeps `wo` in f32 when the model is loaded as f16
        // (`_keep_in_fp32_modules = ["wo"]`; not for bf16), because umT5's FFN output overflows
        // f16.
        let wo_vb = if vb.dtype() == DType::F16 {
            vb.pp("wo").to_dtype(DType::F32)
        } else {
            vb.pp("wo")
        };
        let (wi_0, wi_1) = if gated {
            (
                candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
                Some(candle_nn::linear_no_bias(
                    cfg.d_model,
                    cfg.d_ff,
                    vb.pp("wi_1"),
                )?),
            )
        } else {
            (
                candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi"))?,
                None,
            )
        };
        Ok(Self {
            wi_0,
            wi_1,
            wo: candle_nn::linear_no_bias(cfg.d_ff, cfg.d_model, wo_vb)?,
            act,
        })
    }

    /// `x`: normed input in the compute dtype. Returns f32.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.act.apply(&self.wi_0.forward(x)?)?;
        if let Some(wi_1) = &self.wi_1 {
            h = (h * wi_1.forward(x)?)?;
        }
        let h = h.to_dtype(self.wo.weight().dtype())?;
        self.wo.forward(&h)?.to_dtype(DType::F32)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// transformers' `UMT5EncoderModel`: token embedding, `num_layers` pre-norm blocks (self-attention
/// with a per-layer relative position bias, then a gated-GELU feed-forward), final RMS norm.
///
/// Weights may be f32, bf16 or f16 (the [`VarBuilder`]'s dtype). Layer norms, the position bias,
/// the attention softmax and the residual stream are computed in f32; matrix products run in the
/// weights' dtype. (The reference keeps the residual stream in the weights' dtype for bf16, so a
/// bf16 run here is slightly *more* precise than transformers' bf16 run.)
#[derive(Debug, Clone)]
pub struct Umt5Encoder {
    cfg: Umt5Config,
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    dtype: DType,
    device: Device,
}

impl Umt5Encoder {
    /// Builds the encoder from transformers' `UMT5EncoderModel` weight names. The embedding is
    /// `shared.weight`, or `encoder.embed_tokens.weight` when only that is stored (the two are
    /// tied; checkpoints keep one or the other).
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let embed_key = if vb.contains_tensor("shared.weight")
            || !vb.contains_tensor("encoder.embed_tokens.weight")
        {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embed = vb
            .get((cfg.vocab_size, cfg.d_model), embed_key)
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "{e} (the token embedding is read from 'shared.weight' or \
                     'encoder.embed_tokens.weight')"
                ))
            })?;
        let enc = vb.pp("encoder");
        let eps = cfg.layer_norm_epsilon;
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let layer = enc.pp("block").pp(i).pp("layer");
                Ok(Block {
                    attn_norm: RmsNorm::new(cfg.d_model, eps, layer.pp(0).pp("layer_norm"))?,
                    attn: SelfAttention::new(cfg, layer.pp(0).pp("SelfAttention"))?,
                    ff_norm: RmsNorm::new(cfg.d_model, eps, layer.pp(1).pp("layer_norm"))?,
                    ff: FeedForward::new(cfg, layer.pp(1).pp("DenseReluDense"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            embed: Embedding::new(embed, cfg.d_model),
            blocks,
            final_norm: RmsNorm::new(cfg.d_model, eps, enc.pp("final_layer_norm"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Loads `config.json` and the safetensors weights (single file or sharded) of a
    /// `text_encoder/` folder, converting the weights to `dtype`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, TextError> {
        let cfg = Umt5Config::from_file(&dir.join("config.json"))?;
        let vb = Checkpoint::open_dir(dir)?.var_builder(dtype, device);
        Ok(Self::new(&cfg, vb)?)
    }

    pub fn config(&self) -> &Umt5Config {
        &self.cfg
    }

    /// The dtype of the weights and of [`Self::forward`]'s output.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `last_hidden_state` [B, L, d_model] in [`Self::dtype`] for `input_ids` [B, L] (any integer
    /// dtype). `attention_mask` [B, L] (1 = real token, 0 = padding) masks padded *keys* with the
    /// dtype's most negative value, as transformers does; padded *queries* are still computed, so
    /// their rows are not zero (see [`encode_prompts`]). `None` attends to everything.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?;
        let mut h = self.embed.forward(&ids)?.to_dtype(DType::F32)?;

        let mask = match attention_mask {
            Some(m) => {
                let keep = m.to_device(&self.device)?.to_dtype(DType::F32)?.ne(0f64)?;
                let zeros = Tensor::zeros((b, l), DType::F32, &self.device)?;
                let min = Tensor::full(f32::MIN, (b, l), &self.device)?;
                keep.where_cond(&zeros, &min)?
            }
            None => Tensor::zeros((b, l), DType::F32, &self.device)?,
        }
        .reshape((b, 1, 1, l))?;

        let buckets: Vec<u32> = (0..l as i64)
            .flat_map(|q| {
                (0..l as i64).map(move |k| {
                    relative_position_bucket(
                        k - q,
                        self.cfg.relative_attention_num_buckets,
                        self.cfg.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, l * l, &self.device)?;

        for block in &self.blocks {
            let x = block.attn_norm.forward(&h, self.dtype)?;
            h = (h + block.attn.forward(&x, &buckets, &mask)?)?;
            let x = block.ff_norm.forward(&h, self.dtype)?;
            h = (h + block.ff.forward(&x)?)?;
        }
        self.final_norm.forward(&h, self.dtype)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// Token ids and masks for a batch of prompts, each exactly `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompts {
    /// Per prompt: the tokens, `</s>`, then `<pad>` up to `max_length`.
    pub input_ids: Vec<Vec<u32>>,
    /// Per prompt: 1 for the tokens and `</s>`, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Per prompt: the number of 1s in the mask (tokens + `</s>`).
    pub seq_lens: Vec<usize>,
}

impl TokenizedPrompts {
    /// `(input_ids, attention_mask)` as u32 tensors [B, max_length].
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let b = self.input_ids.len();
        let l = self.input_ids.first().map_or(0, Vec::len);
        let ids = Tensor::from_vec(self.input_ids.concat(), (b, l), device)?;
        let mask = Tensor::from_vec(self.attention_mask.concat(), (b, l), device)?;
        Ok((ids, mask))
    }
}

/// umT5's tokenizer (a `tokenizer.json`) as Wan's pipeline calls it: `prompt_clean`, then
/// `tokenizer(prompt, padding="max_length", max_length, truncation=True, add_special_tokens=True)`.
#[derive(Debug, Clone)]
pub struct WanTokenizer {
    tokenizer: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
    eos_id: u32,
}

impl WanTokenizer {
    /// Loads a `tokenizer.json` with `<pad>` and `</s>` as the padding and end tokens.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, TextError> {
        Self::load(path, max_length, "<pad>", "</s>")
    }

    /// Loads `tokenizer.json` from a `tokenizer/` folder, taking the pad and end token names from
    /// its `tokenizer_config.json` when there is one.
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self, TextError> {
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(file_err(
                &json,
                "no such file (a tokenizer.json is needed; converting spiece.model is not supported)",
            ));
        }
        let config_path = dir.join("tokenizer_config.json");
        let (mut pad, mut eos) = ("<pad>".to_string(), "</s>".to_string());
        if config_path.is_file() {
            let cfg: serde_json::Value = read_json(&config_path)?;
            // Special tokens are either plain strings or {"content": ...} objects.
            let name = |key: &str| {
                let v = cfg.get(key)?;
                v.as_str()
                    .or_else(|| v.get("content").and_then(|c| c.as_str()))
                    .map(str::to_string)
            };
            pad = name("pad_token").unwrap_or(pad);
            eos = name("eos_token").unwrap_or(eos);
        }
        Self::load(&json, max_length, &pad, &eos)
    }

    fn load(path: &Path, max_length: usize, pad: &str, eos: &str) -> Result<Self, TextError> {
        if max_length == 0 {
            return Err(TextError::Tokenize(
                "max_length must be at least 1 (room for </s>)".into(),
            ));
        }
        if !path.is_file() {
            return Err(file_err(path, "no such file"));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| file_err(path, format!("not a usable tokenizer.json: {e}")))?;
        // Padding, truncation and the `</s>` are done in `encode_cleaned`, so that a tokenizer.json
        // carrying its own padding/truncation settings cannot change them.
        tokenizer
            .with_truncation(None)
            .map_err(|e| TextError::Tokenize(e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |name: &str| {
            tokenizer
                .token_to_id(name)
                .ok_or_else(|| file_err(path, format!("the vocabulary has no '{name}' token")))
        };
        let (pad_id, eos_id) = (id(pad)?, id(eos)?);
        Ok(Self {
            tokenizer,
            max_length,
            pad_id,
            eos_id,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Cleans each prompt with [`prompt_clean`] and tokenizes it.
    pub fn encode(&self, prompts: &[&str]) -> Result<TokenizedPrompts, TextError> {
        let cleaned: Vec<String> = prompts.iter().map(|p| prompt_clean(p)).collect();
        let cleaned: Vec<&str> = cleaned.iter().map(String::as_str).collect();
        self.encode_cleaned(&cleaned)
    }

    /// Tokenizes already-cleaned prompts: the tokens (cut to `max_length - 1`), `</s>`, then
    /// `<pad>` up to `max_length`. This is what transformers' `T5Tokenizer` does: it always sets
    /// the post-processor `$A </s>`, and truncation leaves room for that `</s>`.
    pub fn encode_cleaned(&self, prompts: &[&str]) -> Result<TokenizedPrompts, TextError> {
        let mut out = TokenizedPrompts {
            input_ids: Vec::with_capacity(prompts.len()),
            attention_mask: Vec::with_capacity(prompts.len()),
            seq_lens: Vec::with_capacity(prompts.len()),
        };
        for prompt in prompts {
            let enc = self
                .tokenizer
                .encode(*prompt, false)
                .map_err(|e| TextError::Tokenize(format!("{prompt:?}: {e}")))?;
            let mut ids: Vec<u32> = enc.get_ids().to_vec();
            ids.truncate(self.max_length - 1);
            ids.push(self.eos_id);
            let len = ids.len();
            ids.resize(self.max_length, self.pad_id);
            let mut mask = vec![1u32; len];
            mask.resize(self.max_length, 0);
            out.input_ids.push(ids);
            out.attention_mask.push(mask);
            out.seq_lens.push(len);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline prompt embedding
// ---------------------------------------------------------------------------------------------

/// `WanPipeline._get_t5_prompt_embeds` after tokenizing: runs the encoder with the mask, then
/// keeps each prompt's first `seq_len` rows (`seq_len` = the number of non-zero mask entries) and
/// sets the rest to exactly zero: the reference cuts `u[:seq_len]` and pads back with
/// `new_zeros`. The padded rows would otherwise hold the encoder's output for `<pad>` queries.
///
/// Returns [B, L, d_model] in the encoder's dtype (the pipeline then casts to the
/// transformer's dtype).
pub fn encode_prompts(
    encoder: &Umt5Encoder,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, l) = input_ids.dims2()?;
    let device = encoder.device();
    let mask = attention_mask.to_device(device)?;
    let hidden = encoder.forward(&input_ids.to_device(device)?, Some(&mask))?;
    let seq_lens = mask
        .to_dtype(DType::F32)?
        .ne(0f64)?
        .to_dtype(DType::U32)?
        .sum_keepdim(1)?; // [B, 1]
    let positions = Tensor::arange(0u32, l as u32, device)?.reshape((1, l))?;
    let keep = positions
        .broadcast_lt(&seq_lens)? // [B, L]
        .unsqueeze(2)?
        .broadcast_as((b, l, encoder.config().d_model))?;
    keep.where_cond(&hidden, &hidden.zeros_like()?)
}

/// Wan's text side: tokenizer and umT5 encoder, from a diffusers pipeline folder.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tokenizer: WanTokenizer,
    encoder: Umt5Encoder,
}

impl TextEncoder {
    /// Loads from a diffusers pipeline folder: `model_index.json` must list `tokenizer` and
    /// `text_encoder`, read from the folder's `tokenizer/` and `text_encoder/` subfolders.
    /// `max_length` is the pipeline's `max_sequence_length` ([`WAN_MAX_SEQUENCE_LENGTH`] for Wan).
    pub fn from_pipeline_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
        max_length: usize,
    ) -> Result<Self, TextError> {
        let index_path = dir.join("model_index.json");
        if !index_path.is_file() {
            return Err(file_err(
                &index_path,
                "no such file (is this a diffusers pipeline folder?)",
            ));
        }
        let index: serde_json::Value = read_json(&index_path)?;
        for (component, expected) in [
            (
                "tokenizer",
                &["T5Tokenizer", "T5TokenizerFast", "AutoTokenizer"][..],
            ),
            ("text_encoder", &["UMT5EncoderModel"][..]),
        ] {
            let entry = index.get(component).and_then(|v| v.as_array());
            let class = entry.and_then(|a| a.get(1)).and_then(|c| c.as_str());
            let Some(class) = class else {
                return Err(file_err(
                    &index_path,
                    format!(
                        "no '{component}' component; Wan needs a umT5 tokenizer and text encoder"
                    ),
                ));
            };
            if !expected.contains(&class) {
                tracing::warn!(
                    "{}: {component} is a {class}, not {}; loading it as umT5 anyway",
                    index_path.display(),
                    expected[0]
                );
            }
        }
        Self::from_dirs(
            &dir.join("tokenizer"),
            &dir.join("text_encoder"),
            dtype,
            device,
            max_length,
        )
    }

    /// Loads from a `tokenizer/` folder (with `tokenizer.json`) and a `text_encoder/` folder
    /// (with `config.json` and safetensors weights).
    pub fn from_dirs(
        tokenizer_dir: &Path,
        text_encoder_dir: &Path,
        dtype: DType,
        device: &Device,
        max_length: usize,
    ) -> Result<Self, TextError> {
        let tokenizer = WanTokenizer::from_dir(tokenizer_dir, max_length)?;
        let encoder = Umt5Encoder::from_dir(text_encoder_dir, dtype, device)?;
        tracing::debug!(
            layers = encoder.config().num_layers,
            d_model = encoder.config().d_model,
            ?dtype,
            "loaded umT5 text encoder"
        );
        Ok(Self { tokenizer, encoder })
    }

    pub fn tokenizer(&self) -> &WanTokenizer {
        &self.tokenizer
    }

    pub fn encoder(&self) -> &Umt5Encoder {
        &self.encoder
    }

    /// `prompt_embeds` [B, max_length, d_model] for raw prompts: [`prompt_clean`], tokenize,
    /// [`encode_prompts`]. One row per prompt (repeat it for several videos per prompt).
    pub fn encode(&self, prompts: &[&str]) -> Result<Tensor, TextError> {
        let tokens = self.tokenizer.encode(prompts)?;
        let (ids, mask) = tokens.to_tensors(self.encoder.device())?;
        Ok(encode_prompts(&self.encoder, &ids, &mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bucket edges printed by transformers' `_relative_position_bucket` (32 buckets, max
    /// distance 128, encoder) for relative positions −1100..=1100: (first position, bucket).
    #[test]
    fn buckets_match_torch() {
        let edges: [(i64, usize); 31] = [
            (-1100, 15),
            (-90, 14),
            (-63, 13),
            (-45, 12),
            (-31, 11),
            (-22, 10),
            (-15, 9),
            (-11, 8),
            (-7, 7),
            (-6, 6),
            (-5, 5),
            (-4, 4),
            (-3, 3),
            (-2, 2),
            (-1, 1),
            (0, 0),
            (1, 17),
            (2, 18),
            (3, 19),
            (4, 20),
            (5, 21),
            (6, 22),
            (7, 23),
            (8, 24),
            (12, 25),
            (16, 26),
            (23, 27),
            (32, 28),
            (46, 29),
            (64, 30),
            (91, 31),
        ];
        let mut want = Vec::new();
        for (i, &(start, bucket)) in edges.iter().enumerate() {
            let end = edges.get(i + 1).map_or(1101, |e| e.0);
            want.extend((start..end).map(|r| (r, bucket)));
        }
        for (r, bucket) in want {
            assert_eq!(relative_position_bucket(r, 32, 128), bucket, "position {r}");
        }
    }

    #[test]
    fn feed_forward_names() {
        let mut cfg: Umt5Config = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.feed_forward(), Ok((Umt5Activation::GeluTanh, true)));
        cfg.feed_forward_proj = "gelu".into();
        assert_eq!(cfg.feed_forward(), Ok((Umt5Activation::GeluErf, false)));
        cfg.feed_forward_proj = "gated-silu".into();
        assert_eq!(cfg.feed_forward(), Ok((Umt5Activation::Silu, true)));
        cfg.feed_forward_proj = "dense-relu".into();
        assert!(cfg.feed_forward().is_err());
    }
}
