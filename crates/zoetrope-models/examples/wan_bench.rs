//! Times zoetrope's Wan 2.1 transformer forward and VAE decode on the weights and inputs that
//! `tools/parity/bench_wan.py prepare DIR` writes, so the numbers compare directly with
//! diffusers' (`tools/bench/wan_vs_diffusers.sh` runs both, interleaved).
//!
//! ```sh
//! cargo run --profile ci -p zoetrope-models --example wan_bench -- DIR \
//!     --component transformer|vae [--warmup W] [--runs N]
//! ```
//!
//! Prints `max|y-ref|` against diffusers' output (a check that both sides compute the same
//! thing), then one `SAMPLE zoetrope <component> <seconds>` line per timed call.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use zoetrope_models::wan::transformer::WanTransformer3DModel;
use zoetrope_models::wan::vae::AutoencoderKLWan;
use zoetrope_nn::max_abs_diff;
use zoetrope_nn::Checkpoint;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let dir = PathBuf::from(
        args.first()
            .filter(|a| !a.starts_with("--"))
            .expect("usage: wan_bench DIR --component transformer|vae [--warmup W] [--runs N]"),
    );
    let component = opt("--component").expect("--component transformer|vae");
    let warmup: usize = opt("--warmup").map_or(1, |v| v.parse().expect("--warmup W"));
    let runs: usize = opt("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let dev = Device::Cpu;
    let inputs = Checkpoint::open(&[dir.join("inputs.safetensors")])?;
    let load = |name: &str| -> Result<Tensor> { Ok(inputs.load(name, &dev)?) };

    let (call, reference): (Box<dyn Fn() -> Result<Tensor>>, Tensor) = match component.as_str() {
        "transformer" => {
            let model =
                WanTransformer3DModel::load_diffusers(&dir.join("transformer"), DType::F32, &dev)?;
            let (x, ctx, t) = (load("latent")?, load("context")?, load("timestep")?);
            (
                Box::new(move || model.forward(&x, &t, &ctx)),
                load("transformer_out")?,
            )
        }
        "vae" => {
            let vae = AutoencoderKLWan::load_dir(&dir.join("vae"), DType::F32, &dev)?;
            let z = load("vae_latent")?;
            (Box::new(move || vae.decode(&z)), load("vae_video")?)
        }
        other => candle_core::bail!("unknown component {other}"),
    };
    let mut diff = f32::NAN;
    for _ in 0..warmup {
        let y = call()?;
        diff = max_abs_diff(&y, &reference)?;
    }
    println!(
        "zoetrope {component}: threads={} max|y-ref|={diff:.3e}",
        candle_core::utils::get_num_threads()
    );
    for _ in 0..runs {
        let t0 = Instant::now();
        let y = call()?;
        let secs = t0.elapsed().as_secs_f64();
        drop(y);
        println!("SAMPLE zoetrope {component} {secs:.4}");
    }
    Ok(())
}
