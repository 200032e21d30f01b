//! Reconstructions of the held-out VAE evaluation clips by a VAE run's averaged weights, as a
//! contact sheet (original row above reconstruction row) and per-clip PSNR.
//!
//! `cargo run --release -p zoetrope-train --example vae_recon -- RUN_DIR OUT.png [CLIPS]`

use candle_core::{Device, Tensor};
use zoetrope_models::world::vae::psnr;
use zoetrope_train::vae::{load_vae_run, vae_eval_clips, vae_from_tensors};
use zoetrope_train::RunDir;
use zoetrope_video::{Frame, Video};

fn to_video(x: &Tensor) -> Video {
    // [1, 3, T, H, W] in [-1, 1] -> frames.
    let x = ((x.squeeze(0).unwrap().clamp(-1f32, 1f32).unwrap() + 1.0).unwrap() * 127.5).unwrap();
    let (_, t, h, w) = x.dims4().unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let frames = (0..t)
        .map(|ti| {
            let mut data = vec![0u8; h * w * 3];
            for y in 0..h {
                for xx in 0..w {
                    for c in 0..3 {
                        data[(y * w + xx) * 3 + c] =
                            v[((c * t + ti) * h + y) * w + xx].round() as u8;
                    }
                }
            }
            Frame::from_rgb(w as u32, h as u32, data).unwrap()
        })
        .collect();
    Video::new(frames, 8.0).unwrap()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = RunDir::create(std::path::Path::new(&args[0]))?;
    let out = std::path::PathBuf::from(&args[1]);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let dev = Device::Cpu;
    let (state, tensors) = load_vae_run(&run, &dev)?;
    let vae = vae_from_tensors(&state.model, tensors, &dev)?;
    let clips = vae_eval_clips(n, &dev)?;
    let mut rows = vec![];
    for clip in clips.iter().take(n) {
        let (mean, _) = vae.encode(clip)?;
        let recon = vae.decode(&mean)?.clamp(-1f32, 1f32)?;
        println!("psnr {:.2} dB", psnr(&recon, clip)?);
        rows.push(zoetrope_video::frame_strip(
            &to_video(clip),
            9,
            [255, 255, 255],
        )?);
        rows.push(zoetrope_video::frame_strip(
            &to_video(&recon),
            9,
            [255, 255, 255],
        )?);
    }
    let sheet = zoetrope_video::stack_rows(&rows, [255, 255, 255])?;
    zoetrope_video::write_video(&out, &Video::new(vec![sheet], 1.0)?)?;
    println!("step {}: wrote {}", state.step, out.display());
    Ok(())
}
