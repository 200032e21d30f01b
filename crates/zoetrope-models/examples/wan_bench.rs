//! Times zoetrope's Wan 2.1 transformer forward and VAE decode on the weights and inputs that
//! `tools/parity/bench_wan.py prepare DIR` writes, so the numbers compare directly with
//! diffusers' (`tools/bench/wan_vs_diffusers.sh` runs both, interleaved).
//!
//! ```sh
//! cargo run --release -p zoetrope-models --example wan_bench -- DIR \
//!     --component transformer|vae|attention|gemm [--dtype f32|bf16] [--warmup W] [--runs N]
//! ```
//!
//! Prints `max|y-ref|` against diffusers' output (a check that both sides compute the same
//! thing; for bf16 against the f32 reference), then one `SAMPLE zoetrope <component>[-bf16]
//! <seconds>` line per timed call. `attention` is one self-attention at the transformer's shape
//! (800 tokens, 6 heads of 128) and `gemm` one linear layer at the FFN's shape (800 × 768 → 3072),
//! on random inputs; both print their GFLOP/s and the machine's measured FMA peak.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor};
use zoetrope_models::wan::transformer::WanTransformer3DModel;
use zoetrope_models::wan::vae::AutoencoderKLWan;
use zoetrope_nn::max_abs_diff;
use zoetrope_nn::Checkpoint;

// The `zoetrope` binary's allocator and setting (freed memory stays mapped), so the figures are
// what `generate` costs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // SAFETY: sets mimalloc's purge-delay default (option 15) before any allocation reads it;
    // the same call as `zoetrope_train::alloc::keep_freed_memory`.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
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
    let component = opt("--component").expect("--component transformer|vae|attention|gemm");
    let warmup: usize = opt("--warmup").map_or(1, |v| v.parse().expect("--warmup W"));
    let runs: usize = opt("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let dtype = match opt("--dtype").as_deref() {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some(other) => candle_core::bail!("--dtype f32|bf16, got {other}"),
    };
    let label = if dtype == DType::F32 {
        component.clone()
    } else {
        format!("{component}-bf16")
    };
    let dev = Device::Cpu;
    let inputs = Checkpoint::open(&[dir.join("inputs.safetensors")])?;
    let load = |name: &str| -> Result<Tensor> { inputs.load(name, &dev)?.to_dtype(dtype) };
    let mut flops = None;

    let (call, reference): (Box<dyn Fn() -> Result<Tensor>>, Tensor) = match component.as_str() {
        "transformer" => {
            let model =
                WanTransformer3DModel::load_diffusers(&dir.join("transformer"), dtype, &dev)?;
            let (x, ctx, t) = (load("latent")?, load("context")?, load("timestep")?);
            (
                Box::new(move || model.forward(&x, &t, &ctx)),
                inputs.load("transformer_out", &dev)?,
            )
        }
        "vae" => {
            // zoetrope's bf16 VAE keeps f32 weights and activations and runs its convolutions
            // with bf16 products on AMX (as the pipeline does with `--dtype bf16`).
            let mut vae = AutoencoderKLWan::load_dir(&dir.join("vae"), DType::F32, &dev)?;
            if dtype == DType::BF16 {
                zoetrope_nn::fast::Bf16Products::set_bf16_products(&mut vae, true)?;
            }
            let z = load("vae_latent")?.to_dtype(DType::F32)?;
            (
                Box::new(move || vae.decode(&z)),
                inputs.load("vae_video", &dev)?,
            )
        }
        "attention" => {
            let (l, heads, d) = (800, 6, 128);
            let q = Tensor::randn(0f32, 1.0, (1, l, heads * d), &dev)?.to_dtype(dtype)?;
            let k = Tensor::randn(0f32, 1.0, (1, l, heads * d), &dev)?.to_dtype(dtype)?;
            let v = Tensor::randn(0f32, 1.0, (1, l, heads * d), &dev)?.to_dtype(dtype)?;
            flops = Some(4.0 * (l * l * heads * d) as f64);
            let reference = zoetrope_nn::fast::attention(&q, &k, &v, heads)?;
            (
                Box::new(move || zoetrope_nn::fast::attention(&q, &k, &v, heads)),
                reference,
            )
        }
        "gemm" => {
            let (m, k, n) = (800, 768, 3072);
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev)?.to_dtype(dtype)?;
            let w = Tensor::randn(0f32, 0.03, (n, k), &dev)?.to_dtype(dtype)?;
            let b = Tensor::randn(0f32, 0.03, n, &dev)?.to_dtype(dtype)?;
            flops = Some(2.0 * (m * k * n) as f64);
            let layer = zoetrope_nn::fast::Linear::new(w, Some(b))?;
            let reference = layer.forward(&x)?;
            (Box::new(move || layer.forward(&x)), reference)
        }
        other => candle_core::bail!("unknown component {other}"),
    };
    let mut diff = f32::NAN;
    for _ in 0..warmup {
        let y = call()?;
        diff = max_abs_diff(&y.to_dtype(DType::F32)?, &reference.to_dtype(DType::F32)?)?;
    }
    println!(
        "zoetrope {label}: threads={} max|y-ref|={diff:.3e} isa={}",
        candle_core::utils::get_num_threads(),
        zoetrope_kernels::cpu::describe()
    );
    for _ in 0..runs {
        let t0 = Instant::now();
        let y = call()?;
        let secs = t0.elapsed().as_secs_f64();
        drop(y);
        println!("SAMPLE zoetrope {label} {secs:.4}");
        if let Some(f) = flops {
            println!("GFLOPS zoetrope {label} {:.1}", f / secs / 1e9);
        }
    }
    if component == "gemm" {
        // Right after the runs the pool's threads still spin for work and would take the
        // probe's cores (it read half the peak on a 2-core AMD EPYC): let them fall asleep.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let threads = candle_core::utils::get_num_threads();
        if let Some(peak) = zoetrope_kernels::peak::fma_peak_gflops(threads, 500) {
            println!("PEAK f32-fma {threads} {peak:.1}");
        }
    }
    Ok(())
}
