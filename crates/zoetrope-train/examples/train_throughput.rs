//! Training throughput on CPU, as the training loops run it: seeded variables
//! ([`SeededVarMap`]), zoetrope's AdamW and the weight average (EMA).
//!
//! - VAE: `WorldVaeConfig::default()` (latent channels from `--latent-channels`), batch 8 of
//!   32×32 crops of 17-frame clips rendered on the fly (64×64 scenes), loss = MSE + KL.
//! - DiT: `WorldDitConfig::default()` (or the JSON config of `--dit-config`, e.g.
//!   `tools/train/world_dit.json`) with the text encoder trained alongside, batch 16 of latents
//!   `[16, C, 5, 8, 8]` (a 64×64×17 clip; `--dit-grid T,H,W` for another latent grid, e.g.
//!   `9,16,16` for the clips the world model trains on) and training captions cut or padded to
//!   16 tokens, flow-matching loss, no frame conditioning.
//!
//! Each is timed for `--steps` steps after one warm-up step; prints medians of the data time and
//! of the step (forward, backward, AdamW, EMA), clips per second and the peak resident memory of
//! each part (VmHWM, reset between parts where the kernel allows). With `--compare` the DiT steps
//! alternate between `zoetrope_nn::fused`'s kernels and candle's composite ops (what
//! `ZOETROPE_COMPOSITE_OPS=1` selects), so both are timed side by side on a noisy machine.
//! Allocation as in the `zoetrope` binary (mimalloc, freed memory kept mapped:
//! [`zoetrope_train::alloc::keep_freed_memory`]).
//!
//! ```sh
//! nice -n 19 cargo run --profile ci -p zoetrope-train --example train_throughput -- \
//!     [--latent-channels C] [--steps N] [--only vae|dit] [--dit-config FILE] \
//!     [--dit-grid T,H,W] [--compare]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::{
    flow_matching_loss, patch_grid, randn_like, varmap_param_count, FlowBatch, TimestepSampler,
    WorldDit, WorldDitConfig,
};
use zoetrope_models::world::text::{
    pad_ids, WorldTextConfig, WorldTextEncoder, WorldTokenizer, EOS_ID,
};
use zoetrope_models::world::vae::{WorldVae, WorldVaeConfig};
use zoetrope_train::data::{item_seed, random_crop, render_clip, video_tensor, ClipShape};
use zoetrope_train::dit::{training_vocabulary, DitTrainConfig};
use zoetrope_train::init::SeededVarMap;
use zoetrope_train::optim::{AdamW, Ema};
use zoetrope_train::vae::VaeTrainConfig;
use zoetrope_world::dataset::sample_training_clip;
use zoetrope_world::Scene;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VAE_BATCH: usize = 8;
const VAE_CROP: u32 = 32;
const VAE_SCENE: ClipShape = ClipShape::new(64, 64, 17);
const DIT_BATCH: usize = 16;
/// Latent grid `[T, h, w]` of a 64×64×17 clip (8× spatial, 4× temporal VAE); `--dit-grid`.
const DIT_GRID: [usize; 3] = [5, 8, 8];
const TEXT_TOKENS: usize = 16;
const SEED: u64 = 0;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Peak resident set size of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs), so the next part's peak is
/// its own. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn rss_text() -> String {
    peak_rss_mib().map_or("?".into(), |m| format!("{m:.0} MiB"))
}

/// Times `step` (which returns its data seconds) `steps` times after one warm-up: medians of
/// (data s, step s).
fn time_steps(steps: usize, mut step: impl FnMut(usize) -> Result<f64>) -> Result<(f64, f64)> {
    step(0)?;
    let (mut data, mut total) = (vec![], vec![]);
    for i in 1..=steps {
        let start = Instant::now();
        let d = step(i)?;
        let t = start.elapsed().as_secs_f64();
        data.push(d);
        total.push(t - d);
    }
    Ok((median(&data), median(&total)))
}

/// [`time_steps`] for two variants of one step: `step(i, fused)` runs with
/// `zoetrope_nn::fused`'s kernels on or off. The two alternate (in either order, swapped every
/// step) so that both see the same background load. Medians of (data s, step s), fused first.
fn time_compare(
    steps: usize,
    mut step: impl FnMut(usize) -> Result<f64>,
) -> Result<[(f64, f64); 2]> {
    let mut times = [(vec![], vec![]), (vec![], vec![])];
    for i in 0..=steps {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for v in order {
            zoetrope_nn::fused::set_enabled(v == 0);
            let start = Instant::now();
            let d = step(i)?;
            let t = start.elapsed().as_secs_f64();
            // Step 0 warms both variants up.
            if i > 0 {
                times[v].0.push(d);
                times[v].1.push(t - d);
            }
        }
    }
    zoetrope_nn::fused::set_enabled(true);
    Ok(times.map(|(d, t)| (median(&d), median(&t))))
}

fn report(what: &str, batch: usize, (data, step): (f64, f64)) {
    println!(
        "{what}: step {step:.3} s (forward, backward, AdamW, EMA) + data {data:.3} s, median \
         → {:.2} clips/s ({:.2} without data); peak RSS {}",
        batch as f64 / (step + data),
        batch as f64 / step,
        rss_text()
    );
}

fn vae(latent_channels: usize, steps: usize, device: &Device) -> Result<()> {
    let cfg = WorldVaeConfig {
        latent_channels,
        ..WorldVaeConfig::default()
    };
    let train = VaeTrainConfig::default();
    let varmap = VarMap::new();
    let model = WorldVae::new(
        cfg.clone(),
        SeededVarMap::var_builder(&varmap, SEED, device),
    )?;
    let mut opt = AdamW::new(&varmap, train.optim.clone())?;
    let mut ema = Ema::new(&varmap, train.ema_decay)?;
    println!(
        "VAE: default config, {latent_channels} latent channels, {} parameters; batch \
         {VAE_BATCH} of {VAE_CROP}x{VAE_CROP} crops of {VAE_SCENE} clips",
        varmap_param_count(&varmap)
    );
    let times = time_steps(steps, |step| {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(item_seed(SEED, step, usize::MAX >> 1));
        let clips = (0..VAE_BATCH)
            .map(|i| {
                let video = render_clip(&Scene::sample(item_seed(SEED, step, i)), VAE_SCENE)?;
                let crop = random_crop(&mut rng, VAE_SCENE.width, VAE_SCENE.height, VAE_CROP);
                video_tensor(&video, Some(crop), device)
            })
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::stack(&clips, 0)?;
        let data = start.elapsed().as_secs_f64();
        let loss = model.loss(&x, train.kl_weight, &mut rng)?;
        opt.backward_step(&loss.total)?;
        ema.update()?;
        Ok(data)
    })?;
    report("VAE", VAE_BATCH, times);
    Ok(())
}

/// What the DiT part runs: its config (and where it came from), latent grid, and whether fused
/// and composite ops are timed side by side.
struct DitBench {
    cfg: WorldDitConfig,
    source: String,
    grid: [usize; 3],
    compare: bool,
}

fn dit(bench: &DitBench, steps: usize, device: &Device) -> Result<()> {
    let train = DitTrainConfig::default();
    let tokenizer = WorldTokenizer::new(training_vocabulary());
    let dcfg = bench.cfg.clone();
    let latent_channels = dcfg.latent_channels;
    let grid = bench.grid;
    let tcfg = WorldTextConfig::new(tokenizer.vocab_size());
    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, SEED, device);
    let text = WorldTextEncoder::new(&tcfg, vb.pp("text"))?;
    let model = WorldDit::new(&dcfg, vb.pp("dit"))?;
    let mut opt = AdamW::new(&varmap, train.optim.clone())?;
    let mut ema = Ema::new(&varmap, train.ema_decay)?;
    let tokens: usize = patch_grid(grid, dcfg.patch)?.iter().product();
    println!(
        "DiT: {} config (dim {}, depth {}, heads {}, patch {:?}), {latent_channels} latent \
         channels, {} parameters with the text encoder (vocabulary {}); batch {DIT_BATCH} at \
         latent [{DIT_BATCH}, {latent_channels}, {}, {}, {}] ({tokens} tokens a clip), \
         {TEXT_TOKENS}-token captions",
        bench.source,
        dcfg.dim,
        dcfg.depth,
        dcfg.heads,
        dcfg.patch,
        varmap_param_count(&varmap),
        tokenizer.vocab_size(),
        grid[0],
        grid[1],
        grid[2]
    );
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let shape = (DIT_BATCH, latent_channels, grid[0], grid[1], grid[2]);
    let x0 = randn_like(&Tensor::zeros(shape, DType::F32, device)?, &mut rng)?;
    let mut step = |step| {
        let start = Instant::now();
        let seqs: Vec<Vec<u32>> = (0..DIT_BATCH)
            .map(|i| {
                let caption = sample_training_clip(item_seed(SEED, step, i)).1;
                let mut ids = tokenizer.encode(&caption).0;
                // Cut as the tokenizer cuts long prompts: keep <eos> last.
                if ids.len() > TEXT_TOKENS {
                    ids.truncate(TEXT_TOKENS - 1);
                    ids.push(EOS_ID);
                }
                ids
            })
            .collect();
        let ids = pad_ids(&seqs, TEXT_TOKENS, device)?;
        let data = start.elapsed().as_secs_f64();
        let (tokens, mask) = text.forward(&ids)?;
        let loss = flow_matching_loss(
            &model,
            &FlowBatch::new(&x0, &tokens, &mask),
            TimestepSampler::default(),
            train.shift,
            &mut rng,
        )?;
        opt.backward_step(&loss)?;
        ema.update()?;
        Ok(data)
    };
    if bench.compare {
        let [fused, composite] = time_compare(steps, step)?;
        report("DiT, fused ops", DIT_BATCH, fused);
        report("DiT, composite ops", DIT_BATCH, composite);
        println!(
            "DiT step: composite / fused = {:.2} ({} steps of each)",
            composite.1 / fused.1,
            steps
        );
    } else {
        let times = time_steps(steps, &mut step)?;
        let what = if zoetrope_nn::fused::enabled() {
            "DiT"
        } else {
            "DiT (composite ops)"
        };
        report(what, DIT_BATCH, times);
    }
    Ok(())
}

fn main() -> Result<()> {
    zoetrope_train::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let latent_channels: usize = opt("--latent-channels")
        .map_or(WorldVaeConfig::default().latent_channels, |v| {
            v.parse().expect("--latent-channels takes a number")
        });
    let steps: usize = opt("--steps").map_or(3, |v| v.parse().expect("--steps takes a number"));
    let only = opt("--only");
    // A config file's latent channels stand unless --latent-channels is given.
    let (cfg, source) = match opt("--dit-config") {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("--dit-config {path}: {e}"));
            let cfg = WorldDitConfig::from_json(&text)?;
            let channels =
                opt("--latent-channels").map_or(cfg.latent_channels, |_| latent_channels);
            let cfg = WorldDitConfig {
                latent_channels: channels,
                ..cfg
            };
            (cfg, path.to_string())
        }
        None => {
            let cfg = WorldDitConfig {
                latent_channels,
                ..WorldDitConfig::default()
            };
            (cfg, "default".to_string())
        }
    };
    let grid = opt("--dit-grid").map_or(DIT_GRID, |v| {
        let g: Vec<usize> = v
            .split(',')
            .map(|n| n.trim().parse().expect("--dit-grid takes T,H,W"))
            .collect();
        g.try_into().expect("--dit-grid takes three numbers T,H,W")
    });
    let bench = DitBench {
        cfg,
        source,
        grid,
        compare: args.iter().any(|a| a == "--compare"),
    };
    let device = Device::Cpu;
    println!(
        "{steps} timed steps after 1 warm-up; threads: {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
    );
    if only != Some("dit") {
        vae(latent_channels, steps.max(1), &device)?;
    }
    if only != Some("vae") {
        if !reset_peak_rss() {
            println!("(peak RSS could not be reset: the DiT's figure includes the VAE part)");
        }
        dit(&bench, steps.max(1), &device)?;
    }
    Ok(())
}
