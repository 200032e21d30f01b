//! Parameter counts and encode/decode times of the world VAE on CPU.
//!
//! `cargo run --profile ci -p zoetrope-models --example world_vae_speed [config.json] [frames] [size]`
//! (default config, 17 frames, 64×64). Weights are random: speed does not depend on them.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::SeedableRng;
use zoetrope_models::world::vae::{param_count, WorldVae, WorldVaeConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut() -> candle_core::Result<Tensor>>(runs: usize, mut f: F) -> f64 {
    f().unwrap();
    median(
        (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                f().unwrap();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args.first().map(String::as_str) {
        Some(p) if p != "default" => {
            WorldVaeConfig::from_file(std::path::Path::new(p)).or_else(|_| {
                serde_json::from_str(p).map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?
        }
        _ => WorldVaeConfig::default(),
    };
    let frames: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(17);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vae = WorldVae::new(
        cfg.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let enc = param_count(&varmap, "encoder.");
    let dec = param_count(&varmap, "decoder.");
    println!("config: {}", serde_json::to_string(&cfg).unwrap());
    println!(
        "params: encoder {enc}, decoder {dec}, total {} ({:.2} MB f16)",
        enc + dec,
        (enc + dec) as f64 * 2.0 / 1e6
    );
    let x = Tensor::rand(-1f32, 1f32, (1, 3, frames, size, size), &dev)?;
    let (mean, _) = vae.encode(&x)?;
    println!(
        "video {:?} -> latent {:?} ({} threads)",
        x.dims(),
        mean.dims(),
        candle_core::utils::get_num_threads()
    );
    let runs = 5;
    let enc_ms = time(runs, || vae.encode(&x).map(|(m, _)| m));
    let dec_ms = time(runs, || vae.decode(&mean));
    let dec_stream_ms = time(runs, || vae.decode_streaming(&mean));
    println!(
        "median of {runs}: encode {enc_ms:.1} ms, decode {dec_ms:.1} ms, streaming decode {dec_stream_ms:.1} ms"
    );
    if let Some(batch) = args.get(3).and_then(|s| s.parse::<usize>().ok()) {
        // One training step (forward, backward, AdamW) at this batch size.
        let x = Tensor::rand(-1f32, 1f32, (batch, 3, frames, size, size), &dev)?;
        let mut opt = candle_nn::AdamW::new(varmap.all_vars(), Default::default())?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut fwd = vec![];
        let mut step = vec![];
        for _ in 0..3 {
            let t0 = Instant::now();
            let loss = vae.loss(&x, 1e-4, &mut rng)?;
            fwd.push(t0.elapsed().as_secs_f64() * 1e3);
            opt.backward_step(&loss.total)?;
            step.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "train step at batch {batch}: forward {:.1} ms, forward+backward+AdamW {:.1} ms",
            median(fwd),
            median(step)
        );
    }
    Ok(())
}
