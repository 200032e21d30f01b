//! A complete world model on disk or in memory: one safetensors file with every weight
//! (`vae.*`, `dit.*`, `text.*`) and one JSON manifest with the three configs, the vocabulary,
//! sampling defaults and how the weights were made.
//!
//! A model directory holds `model.safetensors` and `model.json`; the built-in model is the same
//! two files embedded in the binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::dit::{err, WorldDit, WorldDitConfig};
use super::text::{WorldTextConfig, WorldTextEncoder, WorldTokenizer};
use super::vae::{WorldVae, WorldVaeConfig};

/// File name of the weights in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the manifest in a model directory.
pub const MANIFEST_FILE: &str = "model.json";
/// `format` of a world-model manifest.
pub const FORMAT: &str = "zoetrope-world-model";

/// What `generate` uses when the user does not say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingDefaults {
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub fps: f64,
    pub steps: usize,
    pub guidance: f64,
    pub shift: f64,
    /// "euler" or "unipc".
    pub sampler: String,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self {
            width: 64,
            height: 64,
            frames: 17,
            fps: 8.0,
            steps: 20,
            guidance: 4.0,
            shift: 2.0,
            sampler: "unipc".into(),
        }
    }
}

/// The manifest `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldModelManifest {
    /// Always [`FORMAT`].
    pub format: String,
    pub vae: WorldVaeConfig,
    pub dit: WorldDitConfig,
    pub text: WorldTextConfig,
    /// The tokenizer's words in id order (see [`WorldTokenizer::to_json`]).
    pub tokenizer: serde_json::Value,
    #[serde(default)]
    pub defaults: SamplingDefaults,
    /// Free-form provenance: the commands, steps and machine that made the weights.
    #[serde(default)]
    pub training: serde_json::Value,
}

impl WorldModelManifest {
    /// Parses and checks a manifest.
    pub fn from_json(text: &str) -> Result<Self> {
        let m: Self = serde_json::from_str(text)
            .map_err(|e| err(format!("not a zoetrope world-model manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(err(format!(
                "manifest format is {:?}, expected {FORMAT:?}",
                m.format
            )));
        }
        m.vae.validate()?;
        m.dit.validate()?;
        m.text.validate()?;
        if m.dit.latent_channels != m.vae.latent_channels || m.dit.text_dim != m.text.dim {
            return Err(err(format!(
                "manifest is inconsistent: DiT expects {} latent channels and text width {}, \
                 the VAE makes {} and the text encoder {}",
                m.dit.latent_channels, m.dit.text_dim, m.vae.latent_channels, m.text.dim
            )));
        }
        Ok(m)
    }

    pub fn tokenizer(&self) -> Result<WorldTokenizer> {
        WorldTokenizer::from_json(&self.tokenizer.to_string())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }
}

/// The loaded parts of a world model.
pub struct WorldModel {
    pub manifest: WorldModelManifest,
    pub tokenizer: WorldTokenizer,
    pub text: WorldTextEncoder,
    pub dit: WorldDit,
    pub vae: WorldVae,
}

impl WorldModel {
    /// Builds the parts from a var builder holding `vae.*`, `dit.*` and `text.*`.
    pub fn from_var_builder(manifest: WorldModelManifest, vb: VarBuilder) -> Result<Self> {
        let tokenizer = manifest.tokenizer()?;
        if tokenizer.vocab_size() != manifest.text.vocab_size {
            return Err(err(format!(
                "the tokenizer has {} words but the text encoder was built for {}",
                tokenizer.vocab_size(),
                manifest.text.vocab_size
            )));
        }
        let text = WorldTextEncoder::new(&manifest.text, vb.pp("text"))?;
        let dit = WorldDit::new(&manifest.dit, vb.pp("dit"))?;
        let vae = WorldVae::new(manifest.vae.clone(), vb.pp("vae"))?;
        Ok(Self {
            manifest,
            tokenizer,
            text,
            dit,
            vae,
        })
    }

    /// The same model with its text encoder and DiT rebuilt from `vb` (keys `text.*`, `dit.*`),
    /// keeping the VAE, the vocabulary and the configs: with freshly initialised weights in `vb`,
    /// the untrained baseline a trained model is compared with. (A fresh DiT predicts zero
    /// velocity, adaLN-Zero, so that model decodes its initial noise.)
    pub fn with_text_and_dit_from(mut self, vb: VarBuilder) -> Result<Self> {
        self.text = WorldTextEncoder::new(&self.manifest.text, vb.pp("text"))?;
        self.dit = WorldDit::new(&self.manifest.dit, vb.pp("dit"))?;
        Ok(self)
    }

    /// Loads `model.json` and `model.safetensors` from `dir`.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let weights: PathBuf = dir.join(WEIGHTS_FILE);
        let vb = zoetrope_nn::Checkpoint::open(&[&weights])?.var_builder(dtype, device);
        Self::from_var_builder(manifest, vb)
    }

    /// Loads the model embedded in this build (see [`super::builtin`]), or says how to get one.
    pub fn builtin(dtype: DType, device: &Device) -> Result<Self> {
        let Some((manifest, weights)) = super::builtin() else {
            return Err(err(format!(
                "this build has no built-in world model: {}/model.{{json,safetensors}} are \
                 missing; pass --model DIR",
                super::BUILTIN_DIR
            )));
        };
        Self::from_bytes(manifest, weights, dtype, device)
            .map_err(|e| err(format!("the built-in world model does not load: {e}")))
    }

    /// Loads a model from the bytes of its two files (the built-in model is embedded this way).
    pub fn from_bytes(
        manifest_json: &str,
        safetensors: &[u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let manifest = WorldModelManifest::from_json(manifest_json)?;
        let tensors = candle_core::safetensors::load_buffer(safetensors, device)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Self::from_var_builder(manifest, vb)
    }
}

/// Whether `dir` holds a world model (a `model.json` manifest), as opposed to, say, a training
/// run.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// Reads and checks `dir`'s `model.json`; errors name the file.
pub fn read_manifest(dir: &Path) -> Result<WorldModelManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(format!(
            "{}: cannot read the world-model manifest: {e}",
            path.display()
        ))
    })?;
    WorldModelManifest::from_json(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// The manifest and every weight of the model directory `dir`, converted to `dtype`: for code
/// that starts from an exported model (fine-tuning) rather than runs one.
pub fn read_model_dir(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(WorldModelManifest, HashMap<String, Tensor>)> {
    let manifest = read_manifest(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, device)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok((manifest, tensors))
}
