//! GFLOP/s of the attention kernels: `cargo run --release -p zoetrope-kernels --example
//! attention_speed -- TOKENS HEADS HEAD_DIM [runs]` (self-attention, `[1, L, H·d]` layout, f32
//! and bf16 inputs; median of the runs).
use half::bf16;
use std::time::Instant;
use zoetrope_kernels::attention::{self, Heads, Heads16, Shape};

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("TOKENS HEADS HEAD_DIM [runs]"))
        .collect();
    let (l, h, d) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(10);
    let n = l * h * d;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let data16: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
    let s = Shape {
        batch: 1,
        heads: h,
        q_len: l,
        kv_len: l,
        head_dim: d,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let flops = 4.0 * (l * l * h * d) as f64;
    let mut out = vec![0f32; n];
    let mut time = |f: &mut dyn FnMut(&mut [f32])| {
        f(&mut out);
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    f(&mut out);
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let x = Heads::tokens_major(&data, l, h, d);
    let t32 = time(&mut |o| attention::attention(x, x, x, o, s, scale));
    let x16 = Heads16::tokens_major(&data16, l, h, d);
    let t16 = time(&mut |o| attention::attention_bf16(x16, x16, x16, o, s, scale));
    for (name, t) in [("f32", t32), ("bf16", t16)] {
        println!(
            "attention {name} L={l} H={h} d={d}: {:.3} ms, {:.1} GFLOP/s",
            t * 1e3,
            flops / t / 1e9
        );
    }
}
