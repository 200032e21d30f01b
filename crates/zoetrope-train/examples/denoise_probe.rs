//! Probes a world model on training-distribution clips: VAE reconstruction, and the DiT's
//! one-step clean estimate `x̂0 = x_t − t·v` at several flow times, conditional and
//! unconditional. Prints latent errors per time (relative to the latent's variance) and writes
//! the decoded clips (ground truth, reconstruction, then `x̂0` per time) under `OUT_DIR` for
//! `zoetrope strip`.
//!
//! ```sh
//! cargo run --release -p zoetrope-train --example denoise_probe -- MODEL_DIR OUT_DIR [SEEDS]
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::randn_like;
use zoetrope_models::world::model::WorldModel;
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_train::data::{render_clip, ClipShape, TRAIN_FPS};
use zoetrope_video::{write_video, Video};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, out) = match args.as_slice() {
        [m, o, ..] => (PathBuf::from(m), PathBuf::from(o)),
        _ => anyhow::bail!("usage: denoise_probe MODEL_DIR OUT_DIR [SEEDS]"),
    };
    let seeds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    std::fs::create_dir_all(&out)?;
    let device = Device::Cpu;
    let pipe = WorldPipeline::new(WorldModel::load_dir(&model_dir, DType::F32, &device)?);
    let shape = ClipShape {
        width: 64,
        height: 64,
        frames: 17,
    };
    let times = [0.2f64, 0.5, 0.8, 1.0];
    {
        // How much the prompt moves the text tokens and the velocity at pure noise.
        let a = pipe.encode_text("a red ball on a black background", "", 1.0)?;
        let b = pipe.encode_text("a big blue square on a white background", "", 1.0)?;
        let ta = a.tokens.narrow(1, 0, 3)?;
        let tb = b.tokens.narrow(1, 0, 3)?;
        let dt: f32 = (&ta - &tb)?.sqr()?.mean_all()?.to_scalar()?;
        let nt: f32 = ta.sqr()?.mean_all()?.to_scalar()?;
        let like = Tensor::zeros((1, 8, 5, 16, 16), DType::F32, &device)?;
        let x = randn_like(&like, &mut ChaCha8Rng::seed_from_u64(9))?;
        let va = pipe.velocity(&x, 1.0, &a, 1.0, None)?;
        let vb = pipe.velocity(&x, 1.0, &b, 1.0, None)?;
        let dv: f32 = (&va - &vb)?.sqr()?.mean_all()?.to_scalar()?;
        let m = pipe.model();
        for w in ["red", "big", "square"] {
            let (ids, _) = m.tokenizer.encode(w);
            let t = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
            let (x, _) = m.text.forward(&t)?;
            let (ids2, _) = m.tokenizer.encode("blue");
            let t2 = Tensor::new(ids2.as_slice(), &device)?.unsqueeze(0)?;
            let (x2, _) = m.text.forward(&t2)?;
            let d: Vec<f32> = (&x - &x2)?.sqr()?.mean(2)?.flatten_all()?.to_vec1()?;
            println!("{w} {ids:?} vs blue {ids2:?}: per-position E|diff|² {d:?}");
        }
        println!(
            "text tokens (first 3): E|a|² {nt:.3}, E|a−b|² {dt:.3}; velocity at t=1: E|va−vb|² {dv:.5}; unknown {:?}",
            a.unknown_words
        );
    }
    for seed in 0..seeds {
        let (scene, caption) = zoetrope_world::dataset::sample_training_clip(seed);
        println!("seed {seed}: {caption}");
        let video = render_clip(&scene, shape)?;
        write_video(&out.join(format!("s{seed}_0_truth.mp4")), &video)?;
        let x0 = pipe.encode_frames(video.frames())?;
        let var: f32 = x0.sqr()?.mean_all()?.to_scalar()?;
        let save = |name: &str, z: &Tensor| -> anyhow::Result<()> {
            let frames = pipe.decode(z, &mut |_| {})?;
            write_video(
                &out.join(format!("s{seed}_{name}.mp4")),
                &Video::new(frames, TRAIN_FPS)?,
            )?;
            Ok(())
        };
        save("1_recon", &x0)?;
        let text = pipe.encode_text(&caption, "", 1.0)?;
        let empty = pipe.encode_text("", "", 1.0)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let noise = randn_like(&x0, &mut rng)?;
        for (k, &t) in times.iter().enumerate() {
            let x_t = ((&x0 * (1.0 - t))? + (&noise * t)?)?;
            let target = (&noise - &x0)?;
            let mut line = format!("  t={t:.1} E|x0|²={var:.3}");
            for (label, emb) in [("cond", &text), ("uncond", &empty)] {
                let v = pipe.velocity(&x_t, t, emb, 1.0, None)?;
                let loss: f32 = (&v - &target)?.sqr()?.mean_all()?.to_scalar()?;
                let x0_hat = (&x_t - (&v * t)?)?;
                let err: f32 = (&x0_hat - &x0)?.sqr()?.mean_all()?.to_scalar()?;
                line += &format!("  {label}: loss {loss:.3} x0-err {err:.3}");
                if label == "cond" {
                    save(&format!("{}_t{:02}", k + 2, (t * 10.0) as u32), &x0_hat)?;
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}
