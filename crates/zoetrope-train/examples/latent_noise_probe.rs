//! How robust a world model's VAE decoder is to errors in its latents: encodes training clips,
//! adds Gaussian noise of several standard deviations (in the DiT's scaled latent units, where
//! latents have unit variance), decodes, and scores each clip against its caption with the
//! world's evaluator. A DiT's samples are never exact latents; a decoder that turns small latent
//! errors into jagged shapes caps what any DiT on it can score.
//!
//! ```sh
//! cargo run --release -p zoetrope-train --example latent_noise_probe -- MODEL_DIR [CLIPS] [OUT_DIR]
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::randn_like;
use zoetrope_models::world::model::WorldModel;
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_train::data::{render_clip, ClipShape, TRAIN_FPS};
use zoetrope_video::{write_video, Video};

/// Standard deviations of the added noise.
const SIGMAS: [f64; 5] = [0.0, 0.05, 0.1, 0.2, 0.3];
/// Seeds of the probed scenes (away from the training cache's hashed seeds).
const FIRST_SEED: u64 = 8_000_000_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_dir) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: latent_noise_probe MODEL_DIR [CLIPS] [OUT_DIR]");
    };
    let clips: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let out = args.get(2).map(PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
    }
    let device = Device::Cpu;
    let pipe = WorldPipeline::new(WorldModel::load_dir(&model_dir, DType::F32, &device)?);
    let shape = ClipShape::new(64, 64, 17);
    let mut totals = vec![vec![]; SIGMAS.len()];
    let mut shapes = vec![vec![]; SIGMAS.len()];
    for i in 0..clips {
        let (scene, caption) = zoetrope_world::dataset::sample_training_clip(FIRST_SEED + i);
        let x0 = pipe.encode_frames(render_clip(&scene, shape)?.frames())?;
        let noise = randn_like(&x0, &mut ChaCha8Rng::seed_from_u64(i))?;
        for (k, &sigma) in SIGMAS.iter().enumerate() {
            let z = (&x0 + (&noise * sigma)?)?;
            let video = Video::new(pipe.decode(&z, &mut |_| {})?, TRAIN_FPS)?;
            let report = zoetrope_world::eval::evaluate_prompt(&video, &caption)?;
            totals[k].push(report.total);
            shapes[k].extend(
                report
                    .checks
                    .iter()
                    .filter(|c| c.name == "shape")
                    .map(|c| c.score),
            );
            if let Some(dir) = &out {
                write_video(&dir.join(format!("c{i:02}_s{k}.mp4")), &video)?;
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!("noise std  total  shape   ({clips} clips, 64x64x17)");
    for (k, sigma) in SIGMAS.iter().enumerate() {
        println!(
            "{sigma:9.2}  {:5.1}%  {:5.1}%",
            100.0 * mean(&totals[k]),
            100.0 * mean(&shapes[k])
        );
    }
    Ok(())
}
