//! The world VAE: shapes, causality, streaming decode, a tiny overfit, save/load, size errors.
//!
//! `cargo test --profile ci -p zoetrope-models --test world_vae`

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::vae::{self, WorldVae, WorldVaeConfig};

fn build(cfg: WorldVaeConfig) -> (VarMap, WorldVae) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let vae = WorldVae::new(cfg, vb).unwrap();
    (varmap, vae)
}

/// Deterministic values in [-1, 1].
fn noise(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `x` with frame `k` (along dim 2) replaced by other values.
fn replace_frame(x: &Tensor, k: usize, seed: u64) -> Tensor {
    let mut dims = x.dims().to_vec();
    dims[2] = 1;
    let t = x.dim(2).unwrap();
    let mut parts = vec![];
    if k > 0 {
        parts.push(x.narrow(2, 0, k).unwrap());
    }
    parts.push(noise(&dims, seed));
    if k + 1 < t {
        parts.push(x.narrow(2, k + 1, t - k - 1).unwrap());
    }
    Tensor::cat(&parts, 2).unwrap()
}

/// A small patch-size-2 config, so patchify/unpatchify are covered too.
fn tiny_patched() -> WorldVaeConfig {
    WorldVaeConfig {
        patch_size: 2,
        spatial_down: vec![true, false],
        ..WorldVaeConfig::tiny()
    }
}

#[test]
fn shapes_at_several_sizes_and_durations() {
    let (_, tiny) = build(WorldVaeConfig::tiny());
    assert_eq!(tiny.config().spatial_factor(), 4);
    assert_eq!(tiny.config().temporal_factor(), 4);
    for (h, w) in [(64, 64), (96, 64), (64, 96)] {
        for t in [1, 5, 17] {
            let x = noise(&[1, 3, t, h, w], (h * w + t) as u64);
            let (mean, logvar) = tiny.encode(&x).unwrap();
            let lt = 1 + (t - 1) / 4;
            assert_eq!(mean.dims(), [1, 4, lt, h / 4, w / 4], "{t}x{h}x{w}");
            assert_eq!(logvar.dims(), mean.dims());
            let y = tiny.decode(&mean).unwrap();
            assert_eq!(y.dims(), [1, 3, t, h, w], "{t}x{h}x{w}");
        }
    }
    // The default config: 8× spatial (patch 2 and two 2× stages), 4× temporal.
    let (_, vae) = build(WorldVaeConfig::default());
    assert_eq!(vae.config().spatial_factor(), 8);
    for (t, h, w) in [(17, 64, 64), (5, 96, 64), (1, 64, 96)] {
        let x = noise(&[1, 3, t, h, w], 7);
        let (mean, _) = vae.encode(&x).unwrap();
        assert_eq!(mean.dims(), [1, 8, 1 + (t - 1) / 4, h / 8, w / 8]);
        assert_eq!(vae.decode(&mean).unwrap().dims(), [1, 3, t, h, w]);
    }
}

#[test]
fn encoder_is_causal_per_group() {
    for cfg in [WorldVaeConfig::tiny(), tiny_patched()] {
        let (_, vae) = build(cfg);
        let x = noise(&[1, 3, 9, 16, 16], 1);
        let (m, lv) = vae.encode(&x).unwrap();
        for k in 0..9 {
            let (m2, lv2) = vae.encode(&replace_frame(&x, k, 100 + k as u64)).unwrap();
            // Frame 0 is group 0; frames 1..=4 group 1; 5..=8 group 2.
            let g = k.div_ceil(4);
            if g > 0 {
                let before = |t: &Tensor| t.narrow(2, 0, g).unwrap();
                assert!(
                    max_diff(&before(&m), &before(&m2)) <= 1e-6,
                    "frame {k} changed latent frames before group {g}"
                );
                assert!(max_diff(&before(&lv), &before(&lv2)) <= 1e-6);
            }
            let at = |t: &Tensor| t.narrow(2, g, 1).unwrap();
            assert!(
                max_diff(&at(&m), &at(&m2)) > 1e-5,
                "frame {k} does not reach latent frame {g}"
            );
        }
    }
}

#[test]
fn decoder_is_causal_and_streams() {
    for cfg in [WorldVaeConfig::tiny(), tiny_patched()] {
        let (_, vae) = build(cfg);
        let z = noise(&[2, 4, 3, 4, 4], 2);
        let y = vae.decode(&z).unwrap();
        assert_eq!(y.dim(2).unwrap(), 9);
        for j in 0..3 {
            let y2 = vae.decode(&replace_frame(&z, j, 200 + j as u64)).unwrap();
            // Latent frame j decodes to frame 0 (j = 0) or frames 4j-3..=4j.
            let first = if j == 0 { 0 } else { 4 * j - 3 };
            if first > 0 {
                assert!(
                    max_diff(
                        &y.narrow(2, 0, first).unwrap(),
                        &y2.narrow(2, 0, first).unwrap()
                    ) <= 1e-6,
                    "latent frame {j} changed frames before {first}"
                );
            }
            assert!(
                max_diff(
                    &y.narrow(2, first, 1).unwrap(),
                    &y2.narrow(2, first, 1).unwrap()
                ) > 1e-5
            );
        }
        // One latent frame at a time, and in uneven chunks, equals one pass.
        let streamed = vae.decode_streaming(&z).unwrap();
        assert!(max_diff(&y, &streamed) < 1e-5);
        let mut stream = vae.decode_stream();
        let a = stream.push(&z.narrow(2, 0, 2).unwrap()).unwrap();
        let b = stream.push(&z.narrow(2, 2, 1).unwrap()).unwrap();
        assert_eq!((a.dim(2).unwrap(), b.dim(2).unwrap()), (5, 4));
        assert!(max_diff(&y, &Tensor::cat(&[a, b], 2).unwrap()) < 1e-5);
    }
}

/// A few clips of flat-colour discs and squares moving at constant velocity on plain
/// backgrounds, `[n, 3, frames, size, size]` in [-1, 1] (a stand-in for `zoetrope-world`).
fn world_clips(n: usize, frames: usize, size: usize) -> Tensor {
    let palette = [
        [0.9f32, 0.2, 0.2],
        [0.2, 0.8, 0.3],
        [0.2, 0.3, 0.9],
        [0.95, 0.85, 0.2],
        [0.1, 0.1, 0.1],
        [0.95, 0.95, 0.95],
    ];
    let mut data = vec![0f32; n * 3 * frames * size * size];
    for i in 0..n {
        let bg = palette[(i + 5) % palette.len()];
        let shapes = [
            // (colour, x0, y0, vx, vy, radius, is_disc)
            (palette[i % 5], 8.0 + i as f32, 10.0, 2.0, 1.0, 5.0, true),
            (
                palette[(i + 2) % 5],
                22.0,
                20.0 - i as f32,
                -1.5,
                0.5,
                4.0,
                false,
            ),
        ];
        for f in 0..frames {
            for y in 0..size {
                for x in 0..size {
                    let mut c = bg;
                    for &(col, x0, y0, vx, vy, r, disc) in &shapes {
                        let (cx, cy) = (x0 + vx * f as f32, y0 + vy * f as f32);
                        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                        let inside = if disc {
                            dx * dx + dy * dy <= r * r
                        } else {
                            dx.abs() <= r && dy.abs() <= r
                        };
                        if inside {
                            c = col;
                        }
                    }
                    for (ch, v) in c.iter().enumerate() {
                        let idx = (((i * 3 + ch) * frames + f) * size + y) * size + x;
                        data[idx] = v * 2.0 - 1.0;
                    }
                }
            }
        }
    }
    Tensor::from_vec(data, (n, 3, frames, size, size), &Device::Cpu).unwrap()
}

#[test]
fn overfits_a_small_batch_of_world_clips() {
    const STEPS: usize = 60;
    // Patch size 2 keeps every conv at ≤ 16×16, which keeps this test fast: candle's conv2d
    // backward (a direct conv_transpose2d on CPU) costs several forwards.
    let (varmap, vae) = build(tiny_patched());
    let video = world_clips(2, 5, 32);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let vars = varmap.all_vars();
    // Every parameter gets a gradient.
    let loss = vae.loss(&video, 1e-4, &mut rng).unwrap();
    let grads = loss.total.backward().unwrap();
    for v in &vars {
        assert!(
            grads.get(v.as_tensor()).is_some(),
            "a variable has no gradient"
        );
    }
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 5e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut recon = vec![];
    for _ in 0..STEPS {
        let loss = vae.loss(&video, 1e-4, &mut rng).unwrap();
        opt.backward_step(&loss.total).unwrap();
        recon.push(loss.recon.to_scalar::<f32>().unwrap());
    }
    let first = recon[0];
    let last = recon[recon.len() - 5..].iter().sum::<f32>() / 5.0;
    eprintln!("recon loss {first:.4} -> {last:.4}");
    assert!(
        last < first / 2.5,
        "reconstruction loss fell only from {first} to {last}"
    );
    let (mean, _) = vae.encode(&video).unwrap();
    let psnr = vae::psnr(&vae.decode(&mean).unwrap(), &video).unwrap();
    eprintln!("psnr after {STEPS} steps: {psnr:.1} dB");
}

#[test]
fn save_and_load_round_trip() {
    let (varmap, vae) = build(tiny_patched());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    vae::save(&varmap, vae.config(), &path, DType::F32).unwrap();
    assert!(vae::config_path(&path).exists());
    let loaded = WorldVae::load(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), vae.config());
    let x = noise(&[1, 3, 5, 16, 24], 3);
    let (m, lv) = vae.encode(&x).unwrap();
    let (m2, lv2) = loaded.encode(&x).unwrap();
    // The trainable model's convs run as im2col + matmul, the loaded one's as conv2d: the same
    // sums in another order, so equal to rounding.
    assert!(max_diff(&m, &m2) < 1e-5);
    assert!(max_diff(&lv, &lv2) < 1e-5);
    assert!(max_diff(&vae.decode(&m).unwrap(), &loaded.decode(&m).unwrap()) < 1e-5);

    // f16 storage, computed in f32: close to the f32 model.
    let path16 = dir.path().join("vae16.safetensors");
    vae::save(&varmap, vae.config(), &path16, DType::F16).unwrap();
    let ckpt = zoetrope_nn::Checkpoint::open(&[&path16]).unwrap();
    assert_eq!(ckpt.dtype("decoder.conv_in.weight").unwrap(), DType::F16);
    let half = WorldVae::load(&path16, DType::F32, &Device::Cpu).unwrap();
    let (mh, _) = half.encode(&x).unwrap();
    assert!(
        max_diff(&m, &mh) < 2e-2,
        "f16 weights: {}",
        max_diff(&m, &mh)
    );
    assert!(std::fs::metadata(&path16).unwrap().len() < std::fs::metadata(&path).unwrap().len());
}

#[test]
fn bad_sizes_give_clear_errors() {
    let (_, vae) = build(WorldVaeConfig::tiny());
    let err = |x: Tensor| vae.encode(&x).unwrap_err().to_string();
    let e = err(noise(&[1, 3, 4, 16, 16], 0));
    assert!(e.contains("4 frames") && e.contains("use 1 or 5"), "{e}");
    let e = err(noise(&[1, 3, 6, 16, 16], 0));
    assert!(e.contains("use 5 or 9"), "{e}");
    let e = err(noise(&[1, 3, 5, 18, 16], 0));
    assert!(e.contains("height 18") && e.contains("use 16 or 20"), "{e}");
    let e = err(noise(&[1, 3, 5, 16, 2], 0));
    assert!(e.contains("width 2") && e.contains("use 4"), "{e}");
    let e = err(noise(&[1, 4, 5, 16, 16], 0));
    assert!(e.contains("4 channels"), "{e}");
    let e = err(noise(&[3, 5, 16, 16], 0));
    assert!(
        e.contains("[batch, channels, frames, height, width]"),
        "{e}"
    );
    let e = vae
        .decode(&noise(&[1, 3, 2, 4, 4], 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 channels"), "{e}");
    let bad = WorldVaeConfig {
        spatial_down: vec![true],
        ..WorldVaeConfig::tiny()
    };
    let varmap = VarMap::new();
    let e = WorldVae::new(
        bad,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("2 entries"), "{e}");
}

#[test]
fn config_json_round_trip() {
    let cfg = WorldVaeConfig::default();
    let text = serde_json::to_string(&cfg).unwrap();
    let back: WorldVaeConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(cfg.latent_frames(17).unwrap(), 5);
    assert_eq!(cfg.video_frames(5), 17);
}
