//! Export of a trained VAE run and DiT run as a world-model directory (`model.safetensors` +
//! `model.json`, see `zoetrope_models::world::model`), in f16 for shipping.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use zoetrope_models::world::model::{
    SamplingDefaults, WorldModelManifest, FORMAT, MANIFEST_FILE, WEIGHTS_FILE,
};

use crate::dit::load_dit_run;
use crate::run::RunDir;
use crate::vae::load_vae_source;

/// Writes the VAE at `vae` (a VAE run's averaged weights, or an exported model's VAE; see
/// [`load_vae_source`]) and the averaged weights of `dit_run` to `out` as `dtype`, with
/// `defaults` and provenance (`training`, plus each part's steps and training time) in the
/// manifest. Returns the manifest.
pub fn export_model(
    vae: &Path,
    dit_run: &RunDir,
    out: &Path,
    dtype: DType,
    defaults: SamplingDefaults,
    mut training: serde_json::Value,
) -> Result<WorldModelManifest> {
    let device = Device::Cpu;
    let vae_source = load_vae_source(vae, &device)?;
    let (dit_state, dit) = load_dit_run(dit_run, &device)?;
    if dit_state.vae.latent_channels != vae_source.config.latent_channels {
        candle_core::bail!(
            "the DiT run was trained on a VAE with {} latent channels, {} has {}",
            dit_state.vae.latent_channels,
            vae.display(),
            vae_source.config.latent_channels
        );
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in vae_source.tensors {
        tensors.insert(format!("vae.{k}"), v.to_dtype(dtype)?);
    }
    for (k, v) in dit {
        // DiT-run names already start with `dit.` or `text.`.
        tensors.insert(k, v.to_dtype(dtype)?);
    }
    if let serde_json::Value::Object(m) = &mut training {
        m.insert("vae".into(), vae_source.provenance);
        m.insert(
            "dit".into(),
            serde_json::json!({"steps": dit_state.step, "train_seconds": dit_state.elapsed_s,
                "val_loss": dit_state.val_loss, "config": dit_state.config,
                "init_from": dit_state.init_provenance}),
        );
    }
    let manifest = WorldModelManifest {
        format: FORMAT.into(),
        // The DiT run's copy carries the latent scaling factor.
        vae: dit_state.vae.clone(),
        dit: dit_state.dit.clone(),
        text: dit_state.text.clone(),
        tokenizer: dit_state.tokenizer.clone(),
        defaults,
        training,
    };
    std::fs::create_dir_all(out)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", out.display())))?;
    candle_core::safetensors::save(&tensors, out.join(WEIGHTS_FILE))?;
    std::fs::write(out.join(MANIFEST_FILE), manifest.to_json() + "\n")
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", out.display())))?;
    Ok(manifest)
}
