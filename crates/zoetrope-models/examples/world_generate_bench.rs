//! Times `WorldPipeline::generate` end to end on CPU: the model's default clip (manifest
//! defaults: 64×64, 17 frames, the default steps, classifier-free guidance on), then 96×64 and
//! 64×96, each `--runs` times after one warm-up. Prints the median, min and max seconds of the
//! whole call, the median split into text encoding, denoising and decoding, and the process's
//! peak resident memory (VmHWM).
//!
//! ```sh
//! nice -n 19 cargo run --release -p zoetrope-models --example world_generate_bench -- \
//!     [MODEL_DIR] [--runs N] [--steps S] [--threads T]
//! ```
//!
//! The model: `MODEL_DIR` (model.json + model.safetensors), else the built-in model when this
//! build has one, else a random model of the default configs (the cost does not depend on the
//! weights' values). `--threads` sets `RAYON_NUM_THREADS` for candle (default: all cores).

use std::collections::BTreeSet;
use std::time::Instant;

use candle_core::{DType, Device, Result};
use candle_nn::{VarBuilder, VarMap};
use zoetrope_models::world::dit::WorldDitConfig;
use zoetrope_models::world::model::{SamplingDefaults, WorldModel, WorldModelManifest, FORMAT};
use zoetrope_models::world::pipeline::{Stage, WorldPipeline};
use zoetrope_models::world::score::median;
use zoetrope_models::world::text::{split_words, WorldTextConfig, WorldTokenizer};
use zoetrope_models::world::vae::WorldVaeConfig;

// The `zoetrope` binary's allocator, so the figures are what `generate` costs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Training captions whose words make the random model's vocabulary (about the real one).
const VOCAB_CAPTIONS: u64 = 2_000;
/// Extra sizes timed besides the default: the two other aspect ratios training uses.
const EXTRA_SIZES: [(usize, usize); 2] = [(96, 64), (64, 96)];

/// A model of the default configs with random weights, as plain tensors (inference path).
fn random_model(device: &Device) -> Result<WorldModel> {
    let mut words = BTreeSet::new();
    for seed in 0..VOCAB_CAPTIONS {
        words.extend(split_words(
            &zoetrope_world::dataset::sample_training_clip(seed).1,
        ));
    }
    let tokenizer = WorldTokenizer::new(words);
    let manifest = WorldModelManifest {
        format: FORMAT.to_string(),
        vae: WorldVaeConfig::default(),
        dit: WorldDitConfig::default(),
        text: WorldTextConfig::new(tokenizer.vocab_size()),
        tokenizer: serde_json::from_str(&tokenizer.to_json()).expect("tokenizer JSON"),
        defaults: SamplingDefaults::default(),
        training: serde_json::Value::Null,
    };
    let varmap = VarMap::new();
    WorldModel::from_var_builder(
        manifest.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let tensors = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    WorldModel::from_var_builder(
        manifest,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )
}

/// Peak resident set size of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Seconds of one generate call: (total, text, denoise, decode).
fn time_once(
    pipe: &WorldPipeline,
    prompt: &str,
    w: usize,
    h: usize,
    steps: usize,
) -> Result<[f64; 4]> {
    let mut req = pipe.request(prompt).map_err(candle_core::Error::wrap)?;
    (req.width, req.height) = (w, h);
    req.steps = steps;
    let start = Instant::now();
    let mut denoise_at = None;
    let mut decode_at = None;
    let out = pipe
        .generate(&req, &mut |stage| match stage {
            Stage::Denoising { .. } if denoise_at.is_none() => denoise_at = Some(Instant::now()),
            Stage::Decoding { .. } if decode_at.is_none() => decode_at = Some(Instant::now()),
            _ => {}
        })
        .map_err(candle_core::Error::wrap)?;
    let end = Instant::now();
    assert_eq!(out.video.len(), req.frames);
    let (dn, dc) = (denoise_at.expect("denoised"), decode_at.expect("decoded"));
    let s = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    Ok([s(start, end), s(start, dn), s(dn, dc), s(dc, end)])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |flag: &str| -> Option<usize> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
    };
    if let Some(t) = opt("--threads") {
        // Read by candle's thread pool when it starts, so set before any tensor work.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let runs = opt("--runs").unwrap_or(5).max(1);
    // The one argument that is neither a flag nor a flag's value (every flag takes one).
    let model_dir = args
        .iter()
        .enumerate()
        .find(|&(i, a)| !a.starts_with("--") && (i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a.clone());
    let device = Device::Cpu;

    let load = Instant::now();
    let (model, source) = match &model_dir {
        Some(dir) => (
            WorldModel::load_dir(std::path::Path::new(dir), DType::F32, &device)?,
            dir.clone(),
        ),
        None if zoetrope_models::world::builtin().is_some() => (
            WorldModel::builtin(DType::F32, &device)?,
            "built-in".to_string(),
        ),
        None => (
            random_model(&device)?,
            "random weights, default configs".to_string(),
        ),
    };
    let load_s = load.elapsed().as_secs_f64();
    let d = model.manifest.defaults.clone();
    let steps = opt("--steps").unwrap_or(d.steps);
    let pipe = WorldPipeline::new(model);
    let prompt = zoetrope_world::read_prompt_list(zoetrope_world::HELDOUT_PROMPT_FILE)
        .into_iter()
        .next()
        .expect("held-out prompts");

    println!("model: {source} (loaded in {load_s:.2} s)");
    println!(
        "defaults: {}x{}, {} frames at {} fps, {} steps ({steps} timed), guidance {} ({}), \
         sampler {}; {runs} runs after 1 warm-up; threads: {}",
        d.width,
        d.height,
        d.frames,
        d.fps,
        d.steps,
        d.guidance,
        if d.guidance != 1.0 {
            "CFG on, batch 2"
        } else {
            "CFG off"
        },
        d.sampler,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into()),
    );
    println!("prompt: {prompt}");
    println!();
    println!(
        "| size | frames | median s | min s | max s | text s | denoise s | decode s | s/step | peak RSS so far, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let sizes = std::iter::once((d.width, d.height)).chain(EXTRA_SIZES);
    for (w, h) in sizes {
        time_once(&pipe, &prompt, w, h, steps)?;
        let samples: Vec<[f64; 4]> = (0..runs)
            .map(|_| time_once(&pipe, &prompt, w, h, steps))
            .collect::<Result<_>>()?;
        let col = |k: usize| samples.iter().map(|s| s[k]).collect::<Vec<_>>();
        let total = col(0);
        let med = |k: usize| median(&col(k)).expect("runs");
        let min = total.iter().copied().fold(f64::INFINITY, f64::min);
        let max = total.iter().copied().fold(0.0, f64::max);
        println!(
            "| {w}x{h} | {} | {:.3} | {min:.3} | {max:.3} | {:.3} | {:.3} | {:.3} | {:.4} | {} |",
            d.frames,
            med(0),
            med(1),
            med(2),
            med(3),
            med(2) / steps as f64,
            peak_rss_mib().map_or("?".into(), |m| format!("{m:.0}")),
        );
    }
    Ok(())
}
