//! Peak memory and wall time of Wan2.1-T2V-1.3B's real architecture on the CPU, with random
//! weights of the real shapes (no checkpoint needed).
//!
//! Each mode runs in its own process, so `VmHWM` (peak RSS) is per mode:
//!
//! ```sh
//! cargo run --profile ci -p zoetrope-models --example wan_memory -- step f32
//! cargo run --profile ci -p zoetrope-models --example wan_memory -- step bf16
//! cargo run --profile ci -p zoetrope-models --example wan_memory -- decode f32
//! # options: --latent F,H,W (default 9,30,52 = 33x240x416 video), --layers N (default 30),
//! #          --frames N (decode only the first N latent frames),
//! #          --weights-only (step: build the transformer, report its RSS, stop)
//! ```
//!
//! `step` = one transformer forward (one denoising step without CFG) on a latent
//! `[1, 16, F, H, W]` with text context `[1, 512, 4096]`; `decode` = the VAE decode of a
//! `[1, 16, F, H, W]` latent to `1 + 4(F-1)` frames of `8H x 8W`. The weights come from a
//! `SimpleBackend` that makes each tensor on request (uniform noise with the std of a
//! fan-in init, norm gains around 1), so nothing is allocated twice.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use zoetrope_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use zoetrope_models::wan::vae::{AutoencoderKLWan, WanVaeConfig};

/// Makes every requested parameter on the fly: small random values of the requested shape.
struct RandomWeights {
    seed: std::sync::atomic::AtomicU64,
}

impl RandomWeights {
    fn new(seed: u64) -> Self {
        Self {
            seed: std::sync::atomic::AtomicU64::new(seed),
        }
    }

    /// `n` values uniform in `mean ± std·√3` (a cheap xorshift, so building 1.3 B parameters
    /// takes seconds).
    fn fill(&self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        let mut s = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
            | 1;
        let half_width = std * 3f32.sqrt();
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                mean + (2.0 * u - 1.0) * half_width
            })
            .collect()
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = s.dims();
        let n = s.elem_count();
        let (mean, std) = if dims.len() >= 2 && name.ends_with("weight") {
            // Linear / conv weight: std 1/sqrt(fan_in).
            let fan_in: usize = dims[1..].iter().product();
            (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
        } else if name.contains("norm") || name.ends_with("gamma") {
            (1.0, 0.05)
        } else if name.contains("scale_shift_table") {
            (0.0, 1.0 / (dims[dims.len() - 1] as f32).sqrt())
        } else {
            (0.0, 0.02) // biases
        };
        Tensor::from_vec(self.fill(n, mean, std), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights: '{name}' requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// `(VmRSS, VmHWM)` of this process in MiB, from /proc/self/status.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn parse_triplet(s: &str) -> [usize; 3] {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse().expect("--latent F,H,W"))
        .collect();
    assert_eq!(v.len(), 3, "--latent F,H,W");
    [v[0], v[1], v[2]]
}

/// The real Wan 2.1 VAE config (diffusers' `AutoencoderKLWan` defaults, as shipped with
/// Wan2.1-T2V-1.3B-Diffusers).
fn wan21_vae_config() -> WanVaeConfig {
    let json = r#"{
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attn_scales": [], "temperal_downsample": [false, true, true], "dropout": 0.0,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
    }"#;
    serde_json::from_str(json).expect("valid VAE config")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("step");
    let dtype = match args.get(1).map(String::as_str).unwrap_or("f32") {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => candle_core::bail!("dtype must be f32, bf16 or f16, got {other}"),
    };
    let opt = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let [f, h, w] = opt("--latent").map_or([9, 30, 52], |s| parse_triplet(&s));
    let dev = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    let vb = VarBuilder::from_backend(Box::new(RandomWeights::new(0x5eed)), dtype, dev.clone());
    let (rss0, _) = rss_mib();
    println!(
        "mode={mode} dtype={dtype:?} latent=[1,16,{f},{h},{w}] threads={threads} rss_start={rss0:.0} MiB"
    );

    match mode {
        "step" => {
            let mut cfg = WanTransformerConfig::wan21_t2v_1_3b();
            if let Some(n) = opt("--layers") {
                cfg.num_layers = n.parse().expect("--layers N");
            }
            let t0 = Instant::now();
            let model = WanTransformer3DModel::new(&cfg, vb)?;
            let (rss_w, _) = rss_mib();
            println!(
                "layers={} tokens={} build={:.1}s rss_after_weights={rss_w:.0} MiB",
                cfg.num_layers,
                f * (h / 2) * (w / 2),
                t0.elapsed().as_secs_f64()
            );
            if args.iter().any(|a| a == "--weights-only") {
                let (_, hwm) = rss_mib();
                println!(
                    "RESULT mode=weights dtype={dtype:?} layers={} rss_weights_mib={rss_w:.0} \
                     peak_rss_mib={hwm:.0}",
                    cfg.num_layers
                );
                return Ok(());
            }
            let x = Tensor::randn(0f32, 1.0, (1, 16, f, h, w), &dev)?.to_dtype(dtype)?;
            let ctx = Tensor::randn(0f32, 1.0, (1, 512, cfg.text_dim), &dev)?.to_dtype(dtype)?;
            let t = Tensor::new(&[500f32], &dev)?;
            let (rss_in, _) = rss_mib();
            let t0 = Instant::now();
            let out = model.forward(&x, &t, &ctx)?;
            let secs = t0.elapsed().as_secs_f64();
            let mean_abs = out
                .to_dtype(DType::F32)?
                .abs()?
                .mean_all()?
                .to_scalar::<f32>()?;
            let (rss_end, hwm) = rss_mib();
            println!("out={:?} mean|out|={mean_abs:.4}", out.dims());
            println!(
                "RESULT mode=step dtype={dtype:?} latent=[1,16,{f},{h},{w}] layers={} \
                 forward_s={secs:.1} rss_weights_mib={rss_w:.0} rss_inputs_mib={rss_in:.0} \
                 rss_end_mib={rss_end:.0} peak_rss_mib={hwm:.0} activations_peak_mib={:.0}",
                cfg.num_layers,
                hwm - rss_in
            );
        }
        "decode" => {
            let t0 = Instant::now();
            let vae = AutoencoderKLWan::new(wan21_vae_config(), vb)?;
            let (rss_w, _) = rss_mib();
            println!(
                "build={:.1}s rss_after_weights={rss_w:.0} MiB (encoder + decoder)",
                t0.elapsed().as_secs_f64()
            );
            let frames = opt("--frames").map_or(f, |n| n.parse().expect("--frames N"));
            let z = Tensor::randn(0f32, 1.0, (1, 16, frames, h, w), &dev)?.to_dtype(dtype)?;
            let (rss_in, _) = rss_mib();
            let t0 = Instant::now();
            let mut chunk_s = Vec::new();
            let mut last = Instant::now();
            let mut n_frames = 0;
            let mut outs = Vec::new();
            vae.decode_with(&z, |x| {
                n_frames += x.dim(2)?;
                chunk_s.push(last.elapsed().as_secs_f64());
                last = Instant::now();
                outs.push(x);
                Ok(())
            })?;
            let video = Tensor::cat(&outs, 2)?;
            let secs = t0.elapsed().as_secs_f64();
            let (rss_end, hwm) = rss_mib();
            let chunks: Vec<String> = chunk_s.iter().map(|s| format!("{s:.1}")).collect();
            println!(
                "video={:?} ({n_frames} frames) per-latent-frame seconds: [{}]",
                video.dims(),
                chunks.join(", ")
            );
            println!(
                "RESULT mode=decode dtype={dtype:?} latent=[1,16,{frames},{h},{w}] \
                 decode_s={secs:.1} rss_weights_mib={rss_w:.0} rss_inputs_mib={rss_in:.0} \
                 rss_end_mib={rss_end:.0} peak_rss_mib={hwm:.0} activations_peak_mib={:.0}",
                hwm - rss_in
            );
        }
        other => candle_core::bail!("mode must be step or decode, got {other}"),
    }
    Ok(())
}
