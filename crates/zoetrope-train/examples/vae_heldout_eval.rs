//! Scores a VAE run's reconstructions of the held-out prompts' scenes with the evaluator: the
//! ceiling a DiT trained on this VAE's latents could reach (`zoetrope eval model --reference
//! reconstructed` measures the same for an exported model). Prints the total and each check.
//!
//! ```sh
//! cargo run --release -p zoetrope-train --example vae_heldout_eval -- VAE_RUN [PROMPTS]
//! ```

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use zoetrope_models::world::dit::WorldDitConfig;
use zoetrope_models::world::model::{SamplingDefaults, WorldModel, WorldModelManifest, FORMAT};
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_models::world::score::score_reconstructed;
use zoetrope_models::world::text::{split_words, WorldTextConfig, WorldTokenizer};
use zoetrope_train::vae::load_vae_run;
use zoetrope_train::RunDir;
use zoetrope_world::RenderOptions;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(run) = args.first() else {
        anyhow::bail!("usage: vae_heldout_eval VAE_RUN [PROMPTS]");
    };
    let limit: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(66);
    let device = Device::Cpu;
    let (state, vae_tensors) = load_vae_run(&RunDir::create(std::path::Path::new(run))?, &device)?;

    // A model around the VAE: the DiT and text encoder are random and unused here.
    let mut words = BTreeSet::new();
    for p in zoetrope_world::heldout::heldout_prompts() {
        words.extend(split_words(&p));
    }
    let tokenizer = WorldTokenizer::new(words);
    let dit = WorldDitConfig {
        latent_channels: state.model.latent_channels,
        ..WorldDitConfig::default()
    };
    let manifest = WorldModelManifest {
        format: FORMAT.to_string(),
        vae: state.model.clone(),
        dit,
        text: WorldTextConfig::new(tokenizer.vocab_size()),
        tokenizer: serde_json::from_str(&tokenizer.to_json())?,
        defaults: SamplingDefaults::default(),
        training: serde_json::Value::Null,
    };
    let varmap = VarMap::new();
    WorldModel::from_var_builder(
        manifest.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| !k.starts_with("vae."))
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    tensors.extend(
        vae_tensors
            .into_iter()
            .map(|(k, v)| (format!("vae.{k}"), v)),
    );
    let model = WorldModel::from_var_builder(
        manifest,
        VarBuilder::from_tensors(tensors, DType::F32, &device),
    )?;
    let pipe = WorldPipeline::new(model);

    let prompts: Vec<String> = zoetrope_world::heldout::heldout_prompts()
        .into_iter()
        .take(limit)
        .collect();
    let d = SamplingDefaults::default();
    let opts = RenderOptions {
        width: d.width as u32,
        height: d.height as u32,
        frames: d.frames,
        fps: d.fps,
    };
    let scores = score_reconstructed(&pipe, &prompts, 0, &opts, &mut ())?;
    println!(
        "{run} (step {}): reconstructions of {} held-out scenes score {:.1}%",
        state.step,
        prompts.len(),
        100.0 * scores.mean_total()
    );
    for c in &scores.batch.summary.checks {
        println!("  {:<12} {:5.1}%", c.name, 100.0 * c.mean_score);
    }
    Ok(())
}
