//! Where a world model's DiT loses its flow-matching loss: splits the velocity error on
//! training-distribution clips into latent cells that cover part of an object (a pixel off the
//! clip's background colour anywhere in the cell's 4×4 pixels and its frame group) and cells of
//! pure background, at several flow times. Objects cover a few percent of a frame, so a plain
//! mean is mostly background; this shows whether the objects' cells are learnt as well.
//!
//! ```sh
//! cargo run --release -p zoetrope-train --example foreground_probe -- MODEL_DIR [CLIPS]
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::randn_like;
use zoetrope_models::world::model::WorldModel;
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_train::data::{latent_foreground, render_clip, ClipShape};

/// Flow times probed.
const TIMES: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];
/// Seeds of the probed scenes (away from the training cache's hashed seeds).
const FIRST_SEED: u64 = 8_000_000_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_dir) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: foreground_probe MODEL_DIR [CLIPS]");
    };
    let clips: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let device = Device::Cpu;
    let pipe = WorldPipeline::new(WorldModel::load_dir(&model_dir, DType::F32, &device)?);
    let shape = ClipShape::new(64, 64, 17);
    // Sums of squared error and cell counts, per time: [foreground, background].
    let mut sums = vec![[0f64; 2]; TIMES.len()];
    let mut counts = [0f64; 2];
    for i in 0..clips {
        let (scene, caption) = zoetrope_world::dataset::sample_training_clip(FIRST_SEED + i);
        let video = render_clip(&scene, shape)?;
        let x0 = pipe.encode_frames(video.frames())?;
        let (_, c, tf, h, w) = x0.dims5()?;
        let fg = latent_foreground(&video, (tf, h, w), 0.1, &device)?;
        let bg = fg.affine(-1.0, 1.0)?;
        let n_fg = fg.sum_all()?.to_scalar::<f32>()? as f64 * c as f64;
        counts[0] += n_fg;
        counts[1] += (tf * h * w * c) as f64 - n_fg;
        let text = pipe.encode_text(&caption, "", 1.0)?;
        let noise = randn_like(&x0, &mut ChaCha8Rng::seed_from_u64(i))?;
        for (k, &t) in TIMES.iter().enumerate() {
            let x_t = ((&x0 * (1.0 - t))? + (&noise * t)?)?;
            let v = pipe.velocity(&x_t, t, &text, 1.0, None)?;
            let sq = (v - (&noise - &x0)?)?.sqr()?;
            for (j, m) in [&fg, &bg].into_iter().enumerate() {
                sums[k][j] += sq.broadcast_mul(m)?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
    }
    println!(
        "{clips} clips 64x64x17: {:.1}% of latent cells touch an object",
        100.0 * counts[0] / (counts[0] + counts[1])
    );
    println!("   t   loss(object cells)  loss(background)  ratio");
    for (k, t) in TIMES.iter().enumerate() {
        let f = sums[k][0] / counts[0].max(1.0);
        let b = sums[k][1] / counts[1].max(1.0);
        println!("{t:4.1}  {f:18.4}  {b:16.4}  {:5.1}", f / b.max(1e-12));
    }
    Ok(())
}
