//! Times the fused kernels of `zoetrope_nn::fused` against candle's composite expressions (and
//! candle-nn's forward-only kernels) at the shapes of one world-DiT training step: batch 16 of
//! 144 tokens, width 256, 4 heads of 64, MLP width 1024.
//!
//! Prints the median of `--reps` runs (default 15) of the forward alone and of forward +
//! backward (`Σ f(x)·r` through `Var`s). `RAYON_NUM_THREADS=1` shows the single-thread times.
//!
//! ```sh
//! nice -n 19 cargo run --profile ci -p zoetrope-nn --example fused_ops -- [--reps N]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use zoetrope_nn::fused::{self, composite};

fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

type Op<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// Forward and forward + backward medians of `op` on a fresh `x` of `dims`.
fn time(reps: usize, dims: &[usize], op: Op) -> Result<(f64, f64)> {
    let x = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?;
    let r = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?;
    let fwd = median_ms(reps, || op(&x).map(drop))?;
    let v = Var::from_tensor(&x)?;
    let both = median_ms(reps, || {
        let g = (op(v.as_tensor())? * &r)?.sum_all()?.backward()?;
        g.get(v.as_tensor())
            .map(drop)
            .ok_or_else(|| candle_core::Error::Msg("no grad".into()))
    })?;
    Ok((fwd, both))
}

fn row(
    name: &str,
    dims: &[usize],
    reps: usize,
    ops: [(&str, Op); 2],
    nn: Option<Op>,
) -> Result<()> {
    let (ff, fb) = time(reps, dims, ops[0].1)?;
    let (cf, cb) = time(reps, dims, ops[1].1)?;
    let nn = match nn {
        Some(op) => {
            let x = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?;
            format!("{:8.2}", median_ms(reps, || op(&x).map(drop))?)
        }
        None => format!("{:>8}", "-"),
    };
    println!(
        "{name:<11} {:<18} {ff:8.2} {cf:8.2} {nn}   {fb:8.2} {cb:8.2}   {:5.1}x {:5.1}x",
        format!("{dims:?}"),
        cf / ff,
        cb / fb
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .map_or(15, |v| v.parse().expect("--reps takes a number"));
    let dev = Device::Cpu;
    let (b, n, d, h, hd, mlp) = (16, 144, 256, 4, 64, 1024);
    println!(
        "threads {}; medians of {reps} runs in ms\n{:<11} {:<18} {:>8} {:>8} {:>8}   {:>8} {:>8}   speed-up (fwd, fwd+bwd)",
        candle_core::utils::get_num_threads(),
        "op",
        "shape",
        "fused",
        "compos.",
        "cand-nn",
        "fused",
        "compos."
    );
    let ones = Tensor::ones(d, DType::F32, &dev)?;
    let zeros = Tensor::zeros(d, DType::F32, &dev)?;
    let w = (Tensor::randn(0f32, 0.1, hd, &dev)? + 1.0)?;
    let angles = Tensor::randn(0f32, 3.0, (n, hd / 2), &dev)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    row(
        "gelu",
        &[b, n, mlp],
        reps,
        [
            ("fused", &fused::gelu_tanh),
            ("composite", &composite::gelu_tanh),
        ],
        None,
    )?;
    row(
        "layer_norm",
        &[b, n, d],
        reps,
        [
            ("fused", &|x| fused::layer_norm(x, 1e-6)),
            ("composite", &|x| composite::layer_norm(x, 1e-6)),
        ],
        Some(&|x| candle_nn::ops::layer_norm(x, &ones, &zeros, 1e-6)),
    )?;
    row(
        "softmax",
        &[b, h, n, n],
        reps,
        [
            ("fused", &fused::softmax_last_dim),
            ("composite", &composite::softmax_last_dim),
        ],
        Some(&candle_nn::ops::softmax_last_dim),
    )?;
    row(
        "rms_norm",
        &[b, h, n, hd],
        reps,
        [
            ("fused", &|x| fused::rms_norm(x, &w, 1e-6)),
            ("composite", &|x| composite::rms_norm(x, &w, 1e-6)),
        ],
        Some(&|x| candle_nn::ops::rms_norm(x, &w, 1e-6)),
    )?;
    row(
        "rope_i",
        &[b, h, n, hd],
        reps,
        [
            ("fused", &|x| fused::rope_i(x, &cos, &sin)),
            ("composite", &|x| composite::rope_i(x, &cos, &sin)),
        ],
        Some(&|x| candle_nn::rotary_emb::rope_i(x, &cos, &sin)),
    )?;
    Ok(())
}
