//! The world DiT and its text encoder compute the same function, and the same gradients, with
//! `zoetrope_nn::fused`'s kernels as with candle's composite ops and forward-only kernels (the
//! paths the first checkpoints were trained and sampled with), so runs resume across the change.
//!
//! A test binary of its own: it flips the process-wide switch, which would change the path of
//! any test running beside it.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::{randn_like, WorldDit, WorldDitConfig};
use zoetrope_models::world::text::{WorldTextConfig, WorldTextEncoder, WorldTokenizer};
use zoetrope_nn::{fused, max_abs, max_abs_diff};

const DEV: Device = Device::Cpu;
const WORDS: &[&str] = &[
    "a", "red", "blue", "ball", "box", "rolls", "falls", "on", "black",
];
const PROMPTS: [&str; 2] = ["a red ball rolls on black", "a blue box falls"];

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let like = Tensor::zeros(shape, DType::F32, &DEV).unwrap();
    randn_like(&like, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap()
}

/// The training output, the gradient of every variable of `Σ dit(x)·r` (text encoder included),
/// and the output of the same weights loaded for inference (untracked: candle's forward-only
/// kernels where the fused ones are off).
fn forward_backward(
    cfg: &WorldDitConfig,
    fused_on: bool,
) -> (Tensor, Vec<(String, Tensor)>, Tensor) {
    fused::set_enabled(fused_on);
    let tok = WorldTokenizer::new(WORDS);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let tcfg = WorldTextConfig {
        dim: cfg.text_dim,
        ..WorldTextConfig::tiny(tok.vocab_size())
    };
    let text = WorldTextEncoder::new(&tcfg, vb.pp("text")).unwrap();
    let dit = WorldDit::new(cfg, vb.pp("dit")).unwrap();
    // candle draws a VarMap's initial values from an unseeded generator: give every weight
    // seeded values instead (the zero-initialised ones too, so every path carries signal), norm
    // gains near 1.
    let mut vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, var)) in vars.iter().enumerate() {
        let noise = randn(var.dims(), 100 + i as u64);
        let value = if name.contains("norm") {
            ((noise * 0.1).unwrap() + 1.0).unwrap()
        } else {
            (noise * 0.2).unwrap()
        };
        var.set(&value).unwrap();
    }
    let (tokens, mask, _) = text.encode_prompts(&tok, &PROMPTS).unwrap();
    let x = randn(&[2, cfg.latent_channels, 3, 4, 6], 1);
    let t = Tensor::new(&[0.3f32, 0.8], &DEV).unwrap();
    let y = dit.forward(&x, &t, &tokens, &mask, None).unwrap();

    let tensors = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &DEV);
    let text_inf = WorldTextEncoder::new(&tcfg, vb.pp("text")).unwrap();
    let dit_inf = WorldDit::new(cfg, vb.pp("dit")).unwrap();
    let (tokens_inf, _, _) = text_inf.encode_prompts(&tok, &PROMPTS).unwrap();
    let y_inf = dit_inf.forward(&x, &t, &tokens_inf, &mask, None).unwrap();

    let r = randn(y.dims(), 2);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars
        .iter()
        .filter_map(|(name, var)| Some((name.clone(), grads.get(var.as_tensor())?.clone())))
        .collect();
    (y, g, y_inf)
}

#[test]
fn fused_kernels_keep_the_models_function_and_gradients() {
    let cfg = WorldDitConfig::tiny();
    let (y_fused, g_fused, inf_fused) = forward_backward(&cfg, true);
    let (y_comp, g_comp, inf_candle) = forward_backward(&cfg, false);
    fused::set_enabled(true);

    let scale = max_abs(&y_comp).unwrap();
    let d = max_abs_diff(&y_fused, &y_comp).unwrap() / scale;
    assert!(d < 1e-5, "training outputs differ by {d} of their scale");
    let d_inf = max_abs_diff(&inf_fused, &inf_candle).unwrap() / scale;
    assert!(
        d_inf < 1e-5,
        "inference outputs differ by {d_inf} of their scale"
    );
    let d_paths = max_abs_diff(&inf_fused, &y_fused).unwrap() / scale;
    assert!(
        d_paths == 0.0,
        "fused training and inference differ by {d_paths}"
    );

    assert_eq!(g_fused.len(), g_comp.len());
    assert!(g_fused.len() > 20, "only {} gradients", g_fused.len());
    let mut worst = (0f32, "");
    for ((name, a), (_, b)) in g_fused.iter().zip(&g_comp) {
        let d = max_abs_diff(a, b).unwrap() / max_abs(b).unwrap().max(1e-12);
        if d > worst.0 {
            worst = (d, name);
        }
    }
    let (d_grad, name) = worst;
    println!(
        "outputs differ by {d:.2e} (training), {d_inf:.2e} (inference); worst gradient \
         {d_grad:.2e} ({name})"
    );
    assert!(d_grad < 1e-4, "gradient of {name} differs by {d_grad}");
}
