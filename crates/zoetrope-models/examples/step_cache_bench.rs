//! The step cache (First-Block Cache, `--cache-steps`) on Wan 2.1's real transformer
//! architecture with random weights: denoising time per generation with the cache off and at
//! each setting, the steps it skipped, and how far its final latents are from the uncached
//! run's. Prints a Markdown table.
//!
//! ```sh
//! cargo run --release -p zoetrope-models --example step_cache_bench -- \
//!     [--cache 0.05,0.1,0.2:1] [--rounds 3] [--steps 50] [--dtype f32|bf16] \
//!     [--layers 8] [--heads 6] [--latent 5,20,32] [--guidance 5] [--dir DIR] [--trace]
//! ```
//!
//! The model is a diffusers-format folder written once to `--dir` (default
//! `target/step-cache-wan`): `transformer/` is Wan 2.1's layout at bench size (by default that of
//! `tools/bench/wan_vs_diffusers.sh`: 8 layers of 6 heads × 128, FFN 3,072, text 4,096 wide;
//! latent `[1, 16, 5, 20, 32]`, 800 tokens, a 17-frame 256×160 video) with seeded random weights
//! (uniform, the std of a fan-in init, norm gains around 1, as `wan_memory` makes them); the
//! scheduler (UniPC, flow shift 3, Wan 2.1's) and the VAE (never run here) are the tiny test
//! fixture's. The text embeddings are random, zero-padded to 512 tokens as Wan pads them (a
//! 12-token prompt, a 6-token negative prompt); the initial noise comes from the request's seed.
//!
//! `--trace` first prints the first block's relative change at every step of the uncached run
//! (what the threshold is compared with), to choose thresholds that skip. `--cache` lists the
//! settings besides "off": a threshold (`--cache-steps`), or `THRESHOLD:N` for a threshold with
//! at most N skips in a row (`--cache-max-skips N`; default 3).
//!
//! Each round runs every variant once, the cache off first in odd rounds and last in even ones,
//! so machine noise hits them alike; the table gives the median over rounds. The latents'
//! difference is measured against the uncached run of the same round (identical in every round:
//! the computation is deterministic). With random weights the difference says how far the
//! cache moves the sampler's result, not whether a video looks worse: there is no picture to
//! judge.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use zoetrope_models::step_cache::{
    StepCacheLimits, StepCacheReport, DEFAULT_MAX_CONSECUTIVE_SKIPS,
};
use zoetrope_models::wan::pipeline::{WanPipeline, WanRequest};
use zoetrope_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};

// The `zoetrope` binary's allocator and setting (freed memory stays mapped).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Wan pads every prompt's embeddings to this many tokens.
const TEXT_LEN: usize = 512;
/// Tokens of the random prompt and negative prompt (the rest of the 512 are zeros).
const PROMPT_TOKENS: usize = 12;
const NEGATIVE_TOKENS: usize = 6;
/// Seed of the random weights and text embeddings.
const WEIGHT_SEED: u64 = 0x5eed;

/// The generator's state and the tensors made so far.
type Recorded = Arc<Mutex<(u64, HashMap<String, Tensor>)>>;

/// Makes every requested parameter (uniform noise, fan-in std; norm gains around 1) and keeps
/// it, so the model can be written out.
struct RecordingWeights {
    state: Recorded,
}

impl RecordingWeights {
    fn fill(state: &mut u64, n: usize, mean: f32, std: f32) -> Vec<f32> {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut s = *state | 1;
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

impl SimpleBackend for RecordingWeights {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = s.dims();
        let (mean, std) = if dims.len() >= 2 && name.ends_with("weight") {
            let fan_in: usize = dims[1..].iter().product();
            (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
        } else if name.contains("norm") && name.ends_with("weight") {
            (1.0, 0.05)
        } else if name.contains("scale_shift_table") {
            (0.0, 1.0 / (dims[dims.len() - 1] as f32).sqrt())
        } else {
            (0.0, 0.02) // biases
        };
        let mut state = self.state.lock().expect("weights lock");
        let values = Self::fill(&mut state.0, s.elem_count(), mean, std);
        let t = Tensor::from_vec(values, s, dev)?;
        state.1.insert(name.to_string(), t.clone());
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights: '{name}' requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/tiny")
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Writes the bench folder unless it already holds this configuration.
fn prepare(dir: &Path, cfg: &WanTransformerConfig) -> Result<()> {
    let config_path = dir.join("transformer").join("config.json");
    let weights_path = dir
        .join("transformer")
        .join("diffusion_pytorch_model.safetensors");
    if weights_path.is_file()
        && WanTransformerConfig::from_json_file(&config_path).is_ok_and(|c| &c == cfg)
    {
        return Ok(());
    }
    let io = |e: std::io::Error| candle_core::Error::Msg(format!("{}: {e}", dir.display()));
    eprintln!("writing random weights to {}", dir.display());
    let fixture = fixture_dir();
    std::fs::create_dir_all(dir.join("transformer")).map_err(io)?;
    std::fs::copy(
        fixture.join("model_index.json"),
        dir.join("model_index.json"),
    )
    .map_err(io)?;
    copy_dir(&fixture.join("scheduler"), &dir.join("scheduler")).map_err(io)?;
    copy_dir(&fixture.join("vae"), &dir.join("vae")).map_err(io)?;
    let state: Recorded = Arc::new(Mutex::new((WEIGHT_SEED, HashMap::new())));
    let backend = RecordingWeights {
        state: state.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    drop(WanTransformer3DModel::new(cfg, vb)?);
    let tensors = std::mem::take(&mut state.lock().expect("weights lock").1);
    candle_core::safetensors::save(&tensors, &weights_path)?;
    let json =
        serde_json::to_string_pretty(cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    std::fs::write(&config_path, json).map_err(io)?;
    Ok(())
}

/// `[1, 512, text_dim]`: `tokens` random rows (std 0.2, about umT5's output scale), then zeros.
fn text_embedding(tokens: usize, text_dim: usize, seed: u64, dtype: DType) -> Result<Tensor> {
    let mut state = seed;
    let mut v = RecordingWeights::fill(&mut state, tokens * text_dim, 0.0, 0.2);
    v.resize(TEXT_LEN * text_dim, 0.0);
    Tensor::from_vec(v, (1, TEXT_LEN, text_dim), &Device::Cpu)?.to_dtype(dtype)
}

fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Vec<T> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{what}: cannot parse '{x}'"))
        })
        .collect()
}

fn setting_name(setting: Option<(f64, usize)>) -> String {
    match setting {
        None => "off".into(),
        Some((t, DEFAULT_MAX_CONSECUTIVE_SKIPS)) => format!("threshold {t}"),
        Some((t, n)) => format!("threshold {t}, at most {n} in a row"),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The first block's relative change at each step of the uncached trajectory, per guidance
/// branch: the number the threshold is compared with (at threshold 0 the reference is always the
/// previous step, so this is the step-to-step change; a skipping run compares against its last
/// computed step instead, so its changes add up). The same loop as
/// `WanPipeline::denoise_with_report`, with caches that never skip.
fn trace_changes(
    pipe: &WanPipeline,
    dir: &Path,
    req: &WanRequest,
    cond: &Tensor,
    uncond: &Tensor,
) -> std::result::Result<[Vec<f64>; 2], Box<dyn std::error::Error>> {
    use zoetrope_models::step_cache::{StepCache, StepCacheConfig};
    let config = StepCacheConfig::new(0.0, StepCacheLimits::default())?;
    let mut caches = [StepCache::new(config), StepCache::new(config)];
    let mut scheduler =
        zoetrope_sampling::SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?
            .build()?;
    scheduler.set_timesteps(req.steps)?;
    let mut latents = pipe.initial_latents(req)?;
    let dtype = pipe.transformer().dtype();
    let mut changes = [vec![], vec![]];
    for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
        let x = latents.to_dtype(dtype)?;
        let t = Tensor::new(&[t as f32], &Device::Cpu)?;
        let tr = pipe.transformer();
        let v_cond = tr.forward_cached(&x, &t, cond, &mut caches[0])?;
        let v_uncond = tr.forward_cached(&x, &t, uncond, &mut caches[1])?;
        for (b, c) in caches.iter().enumerate() {
            if let Some(change) = c.last_change() {
                changes[b].push(change);
            }
        }
        let v = (&v_uncond + ((v_cond - &v_uncond)? * req.guidance)?)?;
        latents = scheduler.step(&v, i, &latents)?;
    }
    Ok(changes)
}

/// One variant's samples and its (deterministic) result.
struct Variant {
    /// Threshold and the most consecutive skips; `None` is the cache off.
    setting: Option<(f64, usize)>,
    seconds: Vec<f64>,
    report: Option<StepCacheReport>,
    latents: Option<Tensor>,
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // SAFETY: sets mimalloc's purge-delay default (option 15) before any allocation reads it;
    // the same call as `zoetrope_train::alloc::keep_freed_memory`.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let settings: Vec<(f64, usize)> = opt("--cache")
        .unwrap_or_else(|| "0.05,0.1,0.2".into())
        .split(',')
        .map(|v| match v.split_once(':') {
            Some((t, n)) => (
                t.trim().parse().expect("--cache THRESHOLD[:N]"),
                n.trim().parse().expect("--cache THRESHOLD[:N]"),
            ),
            None => (
                v.trim().parse().expect("--cache THRESHOLD[:N]"),
                DEFAULT_MAX_CONSECUTIVE_SKIPS,
            ),
        })
        .collect();
    let rounds: usize = opt("--rounds").map_or(3, |v| v.parse().expect("--rounds N"));
    let steps: usize = opt("--steps").map_or(50, |v| v.parse().expect("--steps N"));
    let guidance: f64 = opt("--guidance").map_or(5.0, |v| v.parse().expect("--guidance G"));
    let dtype = match opt("--dtype").as_deref() {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some(other) => return Err(format!("--dtype f32|bf16, got {other}").into()),
    };
    let latent: Vec<usize> =
        opt("--latent").map_or(vec![5, 20, 32], |s| parse_list(&s, "--latent"));
    assert_eq!(latent.len(), 3, "--latent F,H,W");
    let cfg = WanTransformerConfig {
        num_attention_heads: opt("--heads").map_or(6, |v| v.parse().expect("--heads N")),
        attention_head_dim: 128,
        ffn_dim: 0,
        num_layers: opt("--layers").map_or(8, |v| v.parse().expect("--layers N")),
        ..WanTransformerConfig::wan21_t2v_1_3b()
    };
    let cfg = WanTransformerConfig {
        ffn_dim: 4 * cfg.inner_dim(),
        ..cfg
    };
    let dir = opt("--dir").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/step-cache-wan"),
        PathBuf::from,
    );
    prepare(&dir, &cfg)?;

    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&dir, dtype, &dev)?;
    let mut req = WanRequest::new("");
    (req.frames, req.height, req.width) = (4 * (latent[0] - 1) + 1, 8 * latent[1], 8 * latent[2]);
    (req.steps, req.guidance, req.seed) = (steps, guidance, 0);
    let cond = text_embedding(PROMPT_TOKENS, cfg.text_dim, WEIGHT_SEED + 1, dtype)?;
    let uncond = text_embedding(NEGATIVE_TOKENS, cfg.text_dim, WEIGHT_SEED + 2, dtype)?;
    let tokens = latent[0] * (latent[1] / 2) * (latent[2] / 2);
    let threads = candle_core::utils::get_num_threads();
    println!(
        "Wan 2.1 layout, random weights: {} layers x {} wide ({} heads x 128, FFN {}), {:?}, \
         latent [1, 16, {}, {}, {}] ({tokens} tokens), text 512 x {}; UniPC, {steps} steps, \
         guidance {guidance} (two model calls a step); {threads} threads; isa={}",
        cfg.num_layers,
        cfg.inner_dim(),
        cfg.num_attention_heads,
        cfg.ffn_dim,
        dtype,
        latent[0],
        latent[1],
        latent[2],
        cfg.text_dim,
        zoetrope_kernels::cpu::describe()
    );

    let mut variants: Vec<Variant> = std::iter::once(None)
        .chain(settings.iter().copied().map(Some))
        .map(|setting| Variant {
            setting,
            seconds: vec![],
            report: None,
            latents: None,
        })
        .collect();
    if args.iter().any(|a| a == "--trace") {
        let changes = trace_changes(&pipe, &dir, &req, &cond, &uncond)?;
        for (name, c) in ["conditional", "unconditional"].iter().zip(&changes) {
            let list: Vec<String> = c.iter().map(|v| format!("{v:.3}")).collect();
            println!(
                "first-block relative change, steps 1..{steps}, {name} branch (uncached): {}",
                list.join(" ")
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let v = &mut variants[i];
            req.cache_steps = v.setting.map(|(t, _)| t);
            req.cache_limits = StepCacheLimits {
                max_consecutive_skips: v.setting.map_or(DEFAULT_MAX_CONSECUTIVE_SKIPS, |(_, n)| n),
                ..StepCacheLimits::default()
            };
            let x = pipe.initial_latents(&req)?;
            let t0 = Instant::now();
            let (latents, report) =
                pipe.denoise_with_report(&req, x, &cond, Some(&uncond), &mut |_| {})?;
            let secs = t0.elapsed().as_secs_f64();
            let name = setting_name(v.setting);
            let skipped = report.map_or(String::new(), |r| format!(", {r}"));
            eprintln!("round {}/{rounds}: {name}: {secs:.2} s{skipped}", round + 1);
            v.seconds.push(secs);
            v.report = report;
            v.latents = Some(latents);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());

    let reference = variants[0].latents.clone().expect("the uncached run ran");
    let ref_norm = reference.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let base = median(&variants[0].seconds);
    println!();
    println!(
        "| cache | steps skipped | denoise s per generation, median (min-max, n={rounds}) | \
         speedup | rel. L2 of final latents vs off | max abs diff |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for v in &variants {
        let lat = v.latents.as_ref().expect("each variant ran");
        let diff = (lat - &reference)?;
        let l2 = diff.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64 / ref_norm;
        let max_abs = diff.abs()?.max_all()?.to_scalar::<f32>()?;
        let (skipped, calls) = v.report.map_or((0, 2 * steps), |r| {
            let t = r.total();
            (t.skipped, t.calls)
        });
        let min = v.seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.seconds.iter().copied().fold(0.0, f64::max);
        let med = median(&v.seconds);
        println!(
            "| {} | {skipped}/{calls} ({:.0}%) | {med:.2} s ({min:.2}-{max:.2}) | {:.2}x | {l2:.2e} | \
             {max_abs:.2e} |",
            setting_name(v.setting),
            100.0 * skipped as f64 / calls as f64,
            base / med,
        );
    }
    Ok(())
}
