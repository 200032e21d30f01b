//! Times the world DiT (`WorldDitConfig::default()`) and text encoder on CPU, with random weights:
//! one forward at latent `[B, C, 5, 8, 8]` (a 64×64×17 clip) with 16 text tokens, for B = 1 and
//! B = 2 (classifier-free guidance batched), and what a clip would cost at the default steps.
//!
//! ```sh
//! cargo run --profile ci -p zoetrope-models --example world_dit_speed -- [--runs N] [--steps S] \
//!     [--train-batch B]
//! ```
//!
//! `--train-batch B` also times one training step (flow-matching loss, backward, AdamW) at batch B.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::{
    flow_matching_loss, randn_like, varmap_param_count, FlowBatch, TimestepSampler, WorldDit,
    WorldDitConfig,
};
use zoetrope_models::world::text::{WorldTextConfig, WorldTextEncoder};

/// A vocabulary about the size of the world's caption vocabulary.
const VOCAB: usize = 200;
const TEXT_TOKENS: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(runs: usize, mut f: F) -> Result<f64> {
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok(median(samples))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |flag: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let runs = opt("--runs", 20);
    let steps = opt("--steps", 25);
    let train_batch = opt("--train-batch", 0);
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(0);

    let cfg = WorldDitConfig::default();
    let tcfg = WorldTextConfig::new(VOCAB);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let text = WorldTextEncoder::new(&tcfg, vb.pp("text"))?;
    let dit = WorldDit::new(&cfg, vb.pp("dit"))?;
    // Random values in the zero-initialised layers (the cost does not depend on values, but the
    // outputs then look like a trained model's).
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("modulation") || name.contains("proj_out") {
            var.set(&(randn_like(var.as_tensor(), &mut rng)? * 0.02)?)?;
        }
    }
    let (dit_params, text_params) = (cfg.param_count(), tcfg.param_count());
    assert_eq!(varmap_param_count(&varmap), dit_params + text_params);
    println!(
        "params: DiT {dit_params} ({:.2} MB f16), text encoder {text_params} ({:.2} MB f16, \
         vocab {VOCAB}), together {:.2} MB f16",
        dit_params as f64 * 2e-6,
        text_params as f64 * 2e-6,
        (dit_params + text_params) as f64 * 2e-6
    );
    println!("config: {}", serde_json::to_string(&cfg).unwrap());

    // Inference: weights as plain tensors (not Vars), so the fused kernels run.
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let text_inf = WorldTextEncoder::new(&tcfg, vb.pp("text"))?;
    let dit_inf = WorldDit::new(&cfg, vb.pp("dit"))?;

    let c = cfg.latent_channels;
    let ids = Tensor::from_vec(
        (0..2 * TEXT_TOKENS as u32)
            .map(|i| 4 + i % (VOCAB as u32 - 4))
            .collect::<Vec<_>>(),
        (2, TEXT_TOKENS),
        &dev,
    )?;
    let t_text = time(runs, || text_inf.forward(&ids.narrow(0, 0, 1)?).map(|_| ()))?;
    let (tokens, mask) = text_inf.forward(&ids)?;
    println!(
        "text encoder forward [1, {TEXT_TOKENS}]: {:.2} ms",
        t_text * 1e3
    );
    for b in [1usize, 2] {
        let like = Tensor::zeros((b, c, 5, 8, 8), DType::F32, &dev)?;
        let x = randn_like(&like, &mut rng)?;
        let t = Tensor::new(&[0.7f32], &dev)?;
        let (tok, m) = (tokens.narrow(0, 0, b)?, mask.narrow(0, 0, b)?);
        let secs = time(runs, || dit_inf.forward(&x, &t, &tok, &m, None).map(|_| ()))?;
        let per_clip = if b == 1 { 2.0 } else { 1.0 } * steps as f64 * secs;
        println!(
            "DiT forward [{b}, {c}, 5, 8, 8] (80 tokens each), {TEXT_TOKENS} text tokens: {:.2} ms \
             → {steps} steps with CFG ({}): {:.2} s",
            secs * 1e3,
            if b == 1 { "2 forwards of B=1" } else { "1 forward of B=2" },
            per_clip
        );
    }
    let x = randn_like(&Tensor::zeros((1, c, 5, 8, 8), DType::F32, &dev)?, &mut rng)?;
    let t = Tensor::new(&[0.7f32], &dev)?;
    let (tok, m) = (tokens.narrow(0, 0, 1)?.detach(), mask.narrow(0, 0, 1)?);
    let secs = time(runs.min(5), || {
        dit.forward(&x, &t, &tok, &m, None).map(|_| ())
    })?;
    println!(
        "DiT forward [1, {c}, 5, 8, 8] on the differentiable (training) path: {:.2} ms",
        secs * 1e3
    );

    if train_batch > 0 {
        let b = train_batch;
        let x0 = randn_like(&Tensor::zeros((b, c, 5, 8, 8), DType::F32, &dev)?, &mut rng)?;
        let ids = Tensor::from_vec(
            (0..(b * TEXT_TOKENS) as u32)
                .map(|i| 4 + i % (VOCAB as u32 - 4))
                .collect::<Vec<_>>(),
            (b, TEXT_TOKENS),
            &dev,
        )?;
        let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
        let secs = time(runs.min(3), || {
            let (tok, m) = text.forward(&ids)?;
            let loss = flow_matching_loss(
                &dit,
                &FlowBatch::new(&x0, &tok, &m),
                TimestepSampler::default(),
                1.0,
                &mut rng,
            )?;
            opt.backward_step(&loss)
        })?;
        println!(
            "training step (text + DiT, loss, backward, AdamW) at batch {b}: {:.3} s",
            secs
        );
    }
    Ok(())
}
