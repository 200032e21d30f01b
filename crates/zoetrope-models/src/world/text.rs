//! The world model's text side: a word-level tokenizer over the caption vocabulary of the
//! procedural world, and a small transformer encoder trained with the DiT.
//!
//! The vocabulary is closed: captions come from `zoetrope_world::caption`, so every word the
//! model can understand is known up front. A prompt with other words still encodes (they become
//! `<unk>`), and [`WorldTokenizer::encode`] names them so the caller can warn, listing the known
//! vocabulary ([`WorldTokenizer::unknown_words_warning`]).
//!
//! Words are split as the world's caption parser splits them: lower-cased, apostrophes dropped
//! ("doesn't" is "doesnt"), sentence punctuation `, ; : . ! ?` kept as tokens (it joins objects),
//! everything else (spaces, hyphens, quotes, brackets) separates words.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use serde::{Deserialize, Serialize};
use zoetrope_nn::fused;

use super::dit::{err, mask_bias, rope_3d, AffineNorm, Attention, Mlp, ResidualInit};

/// Padding (id 0): masked out of every attention over text.
pub const PAD: &str = "<pad>";
/// A word the tokenizer does not know (id 1).
pub const UNK: &str = "<unk>";
/// Start of every encoded prompt (id 2); an empty prompt is `<bos> <eos>`.
pub const BOS: &str = "<bos>";
/// End of every encoded prompt (id 3).
pub const EOS: &str = "<eos>";
pub const PAD_ID: u32 = 0;
pub const UNK_ID: u32 = 1;
pub const BOS_ID: u32 = 2;
pub const EOS_ID: u32 = 3;
/// The special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 4] = [PAD, UNK, BOS, EOS];
/// Punctuation kept as tokens (always in the vocabulary, after the special tokens).
pub const PUNCTUATION: [char; 6] = [',', ';', ':', '.', '!', '?'];

/// `kind` field of the tokenizer's JSON file.
const FILE_KIND: &str = "zoetrope-world-tokenizer";
const FILE_VERSION: u32 = 1;

/// Splits text into lower-cased words and punctuation tokens (see the module docs).
pub fn split_words(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut word = String::new();
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            word.push(ch);
            continue;
        }
        if matches!(ch, '\'' | '’') {
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if PUNCTUATION.contains(&ch) {
            out.push(ch.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Word-level tokenizer over a closed vocabulary, shipped as JSON next to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldTokenizer {
    /// Every token in id order: special tokens, punctuation, then words.
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

#[derive(Serialize, Deserialize)]
struct TokenizerFile {
    kind: String,
    version: u32,
    tokens: Vec<String>,
}

impl WorldTokenizer {
    /// Builds the tokenizer from a vocabulary of words or phrases (each split as captions are,
    /// so "fall and bounce" adds "fall", "and", "bounce"); duplicates are ignored, word ids follow
    /// first appearance.
    pub fn new<I, S>(vocabulary: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        tokens.extend(PUNCTUATION.iter().map(|c| c.to_string()));
        for entry in vocabulary {
            tokens.extend(split_words(entry.as_ref()));
        }
        Self::from_tokens(tokens)
    }

    fn from_tokens(all: Vec<String>) -> Self {
        let mut tokens = Vec::with_capacity(all.len());
        let mut index = HashMap::with_capacity(all.len());
        for t in all {
            if !index.contains_key(&t) {
                index.insert(t.clone(), tokens.len() as u32);
                tokens.push(t);
            }
        }
        Self { tokens, index }
    }

    /// Number of token ids (the text encoder's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token of an id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token (a lower-case word, a punctuation mark or a special token).
    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    /// The known words (no special tokens or punctuation), sorted.
    pub fn known_words(&self) -> Vec<&str> {
        let skip = SPECIAL_TOKENS.len() + PUNCTUATION.len();
        let set: BTreeSet<&str> = self.tokens[skip..].iter().map(String::as_str).collect();
        set.into_iter().collect()
    }

    /// Encodes a prompt as `<bos> tokens… <eos>`, and lists the words the vocabulary lacks
    /// (each once, in order of appearance); they are encoded as `<unk>`.
    pub fn encode(&self, prompt: &str) -> (Vec<u32>, Vec<String>) {
        let mut ids = vec![BOS_ID];
        let mut unknown: Vec<String> = vec![];
        for w in split_words(prompt) {
            match self.index.get(&w) {
                Some(&id) => ids.push(id),
                None => {
                    ids.push(UNK_ID);
                    if !unknown.contains(&w) {
                        unknown.push(w);
                    }
                }
            }
        }
        ids.push(EOS_ID);
        (ids, unknown)
    }

    /// Text of ids: words joined by spaces, punctuation attached to the word before it; padding,
    /// `<bos>` and `<eos>` left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        for &id in ids {
            if matches!(id, PAD_ID | BOS_ID | EOS_ID) {
                continue;
            }
            let tok = self.token(id).unwrap_or(UNK);
            let is_punct = tok.len() == 1 && tok.chars().all(|c| PUNCTUATION.contains(&c));
            if !out.is_empty() && !is_punct {
                out.push(' ');
            }
            out.push_str(tok);
        }
        out
    }

    /// A warning for words the model never saw, naming them and listing the known vocabulary;
    /// `None` when there are none.
    pub fn unknown_words_warning(&self, unknown: &[String]) -> Option<String> {
        if unknown.is_empty() {
            return None;
        }
        let named: Vec<String> = unknown.iter().map(|w| format!("\"{w}\"")).collect();
        Some(format!(
            "the world model never saw the word{} {} and will ignore {}; it knows these words: {}",
            if unknown.len() == 1 { "" } else { "s" },
            named.join(", "),
            if unknown.len() == 1 { "it" } else { "them" },
            self.known_words().join(", ")
        ))
    }

    /// Encodes prompts into ids `[B, L]` (u32), padded with `<pad>` to the longest; prompts longer
    /// than `max_len` are cut (keeping `<bos>` and `<eos>`) with a warning. Also returns each
    /// prompt's unknown words.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        max_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Vec<Vec<String>>)> {
        if max_len < 2 {
            return Err(err(format!(
                "max_len {max_len} leaves no room for <bos> and <eos>"
            )));
        }
        let mut seqs = Vec::with_capacity(prompts.len());
        let mut unknown = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (mut ids, unk) = self.encode(p.as_ref());
            if ids.len() > max_len {
                tracing::warn!(
                    "prompt \"{}\" has {} tokens; the text encoder reads {max_len}, the rest is cut",
                    p.as_ref(),
                    ids.len()
                );
                ids.truncate(max_len - 1);
                ids.push(EOS_ID);
            }
            seqs.push(ids);
            unknown.push(unk);
        }
        let len = seqs.iter().map(Vec::len).max().unwrap_or(2);
        Ok((pad_ids(&seqs, len, device)?, unknown))
    }

    /// The tokenizer as JSON (the file shipped with the model).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&TokenizerFile {
            kind: FILE_KIND.to_string(),
            version: FILE_VERSION,
            tokens: self.tokens.clone(),
        })
        .expect("a list of strings serialises")
    }

    /// Reads a tokenizer written by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Self> {
        let file: TokenizerFile = serde_json::from_str(text)
            .map_err(|e| err(format!("not a world tokenizer file: {e}")))?;
        if file.kind != FILE_KIND || file.version != FILE_VERSION {
            return Err(err(format!(
                "not a world tokenizer file: kind \"{}\" version {}, expected \"{FILE_KIND}\" \
                 version {FILE_VERSION}",
                file.kind, file.version
            )));
        }
        if file.tokens.len() < SPECIAL_TOKENS.len()
            || file.tokens[..SPECIAL_TOKENS.len()] != SPECIAL_TOKENS
        {
            return Err(err(format!(
                "world tokenizer file: the first tokens must be {SPECIAL_TOKENS:?}"
            )));
        }
        let n = file.tokens.len();
        let tok = Self::from_tokens(file.tokens);
        if tok.tokens.len() != n {
            return Err(err("world tokenizer file: duplicate tokens"));
        }
        Ok(tok)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json())
            .map_err(|e| err(format!("{}: cannot write: {e}", path.display())))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| err(format!("{}: {e}", path.display())))
    }
}

/// Pads (or cuts) id sequences to `len` with `<pad>`: `[B, len]` u32.
pub fn pad_ids(seqs: &[Vec<u32>], len: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        data.extend(s.iter().copied().take(len));
        data.extend(std::iter::repeat_n(PAD_ID, len.saturating_sub(s.len())));
    }
    Tensor::from_vec(data, (seqs.len(), len), device)
}

/// Configuration of [`WorldTextEncoder`], shipped as JSON next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldTextConfig {
    /// Rows of the token embedding: the tokenizer's [`vocab_size`](WorldTokenizer::vocab_size).
    pub vocab_size: usize,
    /// Width of the tokens (the DiT's `text_dim`).
    pub dim: usize,
    /// Transformer layers.
    pub depth: usize,
    pub heads: usize,
    /// Hidden width of the MLP as a multiple of `dim`.
    pub mlp_ratio: f64,
    /// Longest prompt in tokens (with `<bos>` and `<eos>`): rows of the learned positions.
    pub max_len: usize,
    pub eps: f64,
    /// Base of rotary positions in the self-attention (`None`: learned absolute positions
    /// only). Without them the encoder was a bag of words: its learned positions start 50×
    /// smaller than the word embeddings, and "a red ball on a black background" and "a black
    /// ball on a red background" came out the same. A config without the field (the first
    /// runs) has none.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl Default for WorldTextConfig {
    /// The shipping size, without a vocabulary (set `vocab_size`, or use
    /// [`new`](Self::new)).
    fn default() -> Self {
        Self {
            vocab_size: 0,
            dim: 128,
            depth: 3,
            heads: 4,
            mlp_ratio: 4.0,
            max_len: 64,
            eps: 1e-6,
            rope_theta: Some(10_000.0),
        }
    }
}

impl WorldTextConfig {
    /// The shipping size for a vocabulary of `vocab_size` tokens.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            ..Self::default()
        }
    }

    /// A very small encoder for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            dim: 32,
            depth: 1,
            heads: 2,
            mlp_ratio: 2.0,
            max_len: 32,
            ..Self::default()
        }
    }

    pub fn mlp_dim(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio).round() as usize
    }

    pub fn validate(&self) -> Result<()> {
        if self.vocab_size <= SPECIAL_TOKENS.len() {
            return Err(err(format!(
                "world text config: vocab_size {} must cover the tokenizer (its vocab_size())",
                self.vocab_size
            )));
        }
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(err(format!(
                "world text config: dim {} must be a positive multiple of heads {}",
                self.dim, self.heads
            )));
        }
        if self.max_len < 2 {
            return Err(err("world text config: max_len must be at least 2"));
        }
        if let Some(theta) = self.rope_theta {
            if !((self.dim / self.heads).is_multiple_of(2) && theta.is_finite() && theta > 1.0) {
                return Err(err(format!(
                    "world text config: rotary positions need an even head width (dim {} / heads \
                     {}) and rope_theta > 1 (got {theta})",
                    self.dim, self.heads
                )));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(err(format!(
                "world text config: mlp_ratio {} must be > 0",
                self.mlp_ratio
            )));
        }
        Ok(())
    }

    /// Number of parameters [`WorldTextEncoder::new`] creates.
    pub fn param_count(&self) -> usize {
        let lin = |i: usize, o: usize| i * o + o;
        let (d, m) = (self.dim, self.mlp_dim());
        let hd = d / self.heads;
        let layer = 2 * d + lin(d, 3 * d) + lin(d, d) + 2 * hd + 2 * d + lin(d, m) + lin(m, d);
        self.vocab_size * d + self.max_len * d + self.depth * layer + 2 * d
    }
}

#[derive(Debug, Clone)]
struct TextLayer {
    norm1: AffineNorm,
    attn: Attention,
    norm2: AffineNorm,
    mlp: Mlp,
}

/// The world model's text encoder: token embedding + learned positions + pre-norm transformer
/// layers (padding masked out of attention) + a final LayerNorm; trained with the DiT.
#[derive(Debug, Clone)]
pub struct WorldTextEncoder {
    cfg: WorldTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<TextLayer>,
    final_norm: AffineNorm,
}

impl WorldTextEncoder {
    /// Keys: `token_embedding`, `position_embedding`, `layers.{i}.{norm1, attn, norm2, mlp}`,
    /// `final_norm`.
    pub fn new(cfg: &WorldTextConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.dim;
        let token_embedding = Embedding::new(
            vb.get_with_hints(
                (cfg.vocab_size, d),
                "token_embedding.weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            d,
        );
        let position_embedding = vb.get_with_hints(
            (cfg.max_len, d),
            "position_embedding",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let layers = (0..cfg.depth)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(TextLayer {
                    norm1: AffineNorm::new(d, cfg.eps, vb.pp("norm1"))?,
                    attn: Attention::new(
                        d,
                        None,
                        cfg.heads,
                        cfg.eps,
                        ResidualInit::Zero,
                        vb.pp("attn"),
                    )?,
                    norm2: AffineNorm::new(d, cfg.eps, vb.pp("norm2"))?,
                    mlp: Mlp::new(d, cfg.mlp_dim(), ResidualInit::Zero, vb.pp("mlp"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            final_norm: AffineNorm::new(d, cfg.eps, vb.pp("final_norm"))?,
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
        })
    }

    pub fn config(&self) -> &WorldTextConfig {
        &self.cfg
    }

    /// Encodes ids `[B, L]` (u32, `<pad>`-padded) into tokens `[B, L, dim]` and the padding mask
    /// `[B, L]` (f32, 1 = token, 0 = padding). Padding takes no part in attention and its outputs
    /// are zero, so the tokens of a prompt do not depend on how far it is padded.
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l) = ids.dims2()?;
        if l > self.cfg.max_len {
            return Err(err(format!(
                "{l} text tokens, more than the text encoder's max_len {}",
                self.cfg.max_len
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let max_id: u32 = ids.max_all()?.to_scalar()?;
        if max_id as usize >= self.cfg.vocab_size {
            return Err(err(format!(
                "token id {max_id} is outside the text encoder's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let dtype = self.position_embedding.dtype();
        let mask = ids.ne(PAD_ID)?.to_dtype(dtype)?;
        let bias = mask_bias(&mask)?;
        let mut x = fused::broadcast_add(
            &ids.apply(&self.token_embedding)?,
            &self.position_embedding.narrow(0, 0, l)?.unsqueeze(0)?,
        )?;
        let rope = match self.cfg.rope_theta {
            Some(theta) => {
                let hd = self.cfg.dim / self.cfg.heads;
                Some(rope_3d([1, 1, l], [0, 0, hd], theta, ids.device())?)
            }
            None => None,
        };
        let rope = rope.as_ref().map(|(c, s)| (c, s));
        for layer in &self.layers {
            let h = layer.norm1.forward(&x)?;
            x = (&x + layer.attn.forward(&h, None, rope, Some(&bias))?)?;
            let h = layer.norm2.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        let x = self.final_norm.forward(&x)?;
        let x = x.broadcast_mul(&mask.reshape((b, l, 1))?)?;
        Ok((x, mask))
    }

    /// Tokenizes and encodes prompts: `(tokens [B, L, dim], mask [B, L], unknown words of each
    /// prompt)`.
    pub fn encode_prompts<S: AsRef<str>>(
        &self,
        tokenizer: &WorldTokenizer,
        prompts: &[S],
    ) -> Result<(Tensor, Tensor, Vec<Vec<String>>)> {
        let device = self.position_embedding.device();
        let (ids, unknown) = tokenizer.encode_batch(prompts, self.cfg.max_len, device)?;
        let (x, mask) = self.forward(&ids)?;
        Ok((x, mask, unknown))
    }
}
