//! The shipped (embedded) world model: present, within its size budget, consistent, and its VAE
//! reconstructs held-out clips. Thresholds sit below the figures measured when the weights were
//! exported (README), so a regression in the weights or the code that runs them fails here.

use candle_core::{DType, Device, Tensor};
use zoetrope_models::world::model::WorldModel;
use zoetrope_models::world::vae::psnr;
use zoetrope_world::{render, RenderOptions, Scene};

/// The shipped weights and manifest together must stay within the 20 MB.
const SIZE_BUDGET: usize = 20_000_000;
/// Mean PSNR the shipped VAE must reach on the held-out clips below (measured at export: see
/// the README's VAE table).
const MIN_PSNR_DB: f64 = 29.0;
/// First seed of the VAE's held-out evaluation scenes (zoetrope_train::vae::VAE_EVAL_SEED).
const EVAL_SEED: u64 = 9_000_000_000;

fn clip(seed: u64, width: u32, height: u32) -> Tensor {
    let video = render(
        &Scene::sample(seed),
        &RenderOptions {
            width,
            height,
            frames: 17,
            fps: 8.0,
        },
    )
    .unwrap();
    let (w, h, t) = (width as usize, height as usize, video.len());
    let mut data = vec![0f32; 3 * t * h * w];
    for (fi, frame) in video.frames().iter().enumerate() {
        for (i, px) in frame.data().chunks(3).enumerate() {
            for c in 0..3 {
                data[(c * t + fi) * h * w + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_vec(data, (1, 3, t, h, w), &Device::Cpu).unwrap()
}

#[test]
fn builtin_model_is_embedded_within_budget() {
    let (manifest, weights) = zoetrope_models::world::builtin()
        .expect("the built-in world model is embedded (crates/zoetrope-models/weights/world)");
    assert!(
        manifest.len() + weights.len() <= SIZE_BUDGET,
        "{} bytes",
        manifest.len() + weights.len()
    );
    let model = WorldModel::builtin(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.manifest.format, "zoetrope-world-model");
    assert!(
        model.manifest.vae.scaling_factor != 1.0,
        "latent scaling was set in training"
    );
    assert!(
        model.manifest.training.get("dit").is_some(),
        "provenance is recorded"
    );
}

#[test]
fn builtin_vae_reconstructs_held_out_clips() {
    let model = WorldModel::builtin(DType::F32, &Device::Cpu).unwrap();
    let mut total = 0.0;
    let clips = [
        clip(EVAL_SEED, 64, 64),
        clip(EVAL_SEED + 1, 64, 64),
        clip(EVAL_SEED + 1000, 96, 64),
    ];
    for x in &clips {
        let (mean, _) = model.vae.encode(x).unwrap();
        let recon = model.vae.decode(&mean).unwrap().clamp(-1f32, 1f32).unwrap();
        total += psnr(&recon, x).unwrap();
    }
    let mean = total / clips.len() as f64;
    assert!(mean >= MIN_PSNR_DB, "held-out PSNR {mean:.2} dB");
}
