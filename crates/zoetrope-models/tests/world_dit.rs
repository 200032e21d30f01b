//! zoetrope's own world DiT and text encoder: spacetime patches, adaLN-Zero, a tiny overfit run,
//! frame conditioning, the tokenizer and text padding. Small models only (fast in `--profile ci`).

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zoetrope_models::world::dit::{
    apply_given_frames, caption_dropout, flow_matching_loss, flow_matching_loss_at, patch_grid,
    patchify, randn_like, shift_timestep, unpatchify, varmap_param_count, FlowBatch,
    FrameMaskConfig, FrameMaskKind, TimestepSampler, WorldDit, WorldDitConfig,
};
use zoetrope_models::world::text::{
    WorldTextConfig, WorldTextEncoder, WorldTokenizer, BOS_ID, EOS_ID, PAD_ID, UNK_ID,
};

const DEV: Device = Device::Cpu;

/// A stand-in for the world's caption vocabulary (the real one comes from
/// `zoetrope_world::caption::vocabulary()`, passed in by the caller).
const WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "small",
    "big",
    "large",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "ball",
    "box",
    "triangle",
    "rolls",
    "falls",
    "moves",
    "slides",
    "bounces",
    "still",
    "right",
    "left",
    "up",
    "down",
    "to",
    "on",
    "black",
    "white",
    "background",
    "and",
    "while",
    "fall and bounce",
    "doesn't move",
];

const CAPTIONS: [&str; 2] = [
    "a small red circle rolls right on black",
    "a big blue square falls on white",
];

fn tokenizer() -> WorldTokenizer {
    WorldTokenizer::new(WORDS)
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let like = Tensor::zeros(shape, DType::F32, &DEV).unwrap();
    randn_like(&like, &mut rng(seed)).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    zoetrope_nn::max_abs(a).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    zoetrope_nn::max_abs_diff(a, b).unwrap()
}

struct Models {
    varmap: VarMap,
    text: WorldTextEncoder,
    dit: WorldDit,
}

fn models(cfg: &WorldDitConfig) -> Models {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let tcfg = WorldTextConfig {
        dim: cfg.text_dim,
        ..WorldTextConfig::tiny(tokenizer().vocab_size())
    };
    let text = WorldTextEncoder::new(&tcfg, vb.pp("text")).unwrap();
    let dit = WorldDit::new(cfg, vb.pp("dit")).unwrap();
    Models { varmap, text, dit }
}

/// Gives the zero-initialised weights (adaLN-Zero modulation, output projection, and the
/// residual branches' last projections: cross-attention and text-encoder `to_out`, text `fc2`)
/// random values so outputs depend on inputs.
fn randomise_zero_init(varmap: &VarMap) {
    let data = varmap.data().lock().unwrap();
    for (i, (name, var)) in data.iter().enumerate() {
        let residual_out = (name.starts_with("text.") || name.contains("cross."))
            && (name.contains("to_out") || name.contains("fc2"));
        if name.contains("modulation") || name.contains("proj_out") || residual_out {
            let v = (randn(var.dims(), 1000 + i as u64) * 0.1).unwrap();
            var.set(&v).unwrap();
        }
    }
}

#[test]
fn patchify_round_trips_at_many_sizes() {
    let cases: &[([usize; 3], [usize; 3])] = &[
        ([5, 8, 8], [1, 2, 2]),
        ([5, 8, 12], [1, 2, 2]),
        ([5, 12, 8], [1, 2, 2]),
        ([1, 8, 8], [1, 2, 2]),
        ([3, 4, 6], [1, 2, 2]),
        ([4, 6, 8], [2, 2, 2]),
    ];
    for (i, &(size, patch)) in cases.iter().enumerate() {
        let (b, c) = (2, 3);
        let x = randn(&[b, c, size[0], size[1], size[2]], i as u64);
        let (tokens, grid) = patchify(&x, patch).unwrap();
        let vol: usize = patch.iter().product();
        assert_eq!(grid, [0, 1, 2].map(|k| size[k] / patch[k]));
        assert_eq!(tokens.dims(), [b, grid.iter().product(), c * vol]);
        let back = unpatchify(&tokens, grid, patch).unwrap();
        assert_eq!(back.dims(), x.dims());
        assert_eq!(
            max_abs_diff(&back, &x),
            0.0,
            "round trip at {size:?} {patch:?}"
        );

        // Token order: frame, row, column; features: channel, then within-patch t, h, w.
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ts: Vec<f32> = tokens.flatten_all().unwrap().to_vec1().unwrap();
        let [gt, gh, gw] = grid;
        let [pt, ph, pw] = patch;
        let [st, sh, sw] = size;
        for bi in 0..b {
            for ci in 0..c {
                for t in 0..st {
                    for h in 0..sh {
                        for w in 0..sw {
                            let xv = xs[(((bi * c + ci) * st + t) * sh + h) * sw + w];
                            let n = ((t / pt) * gh + h / ph) * gw + w / pw;
                            let f = ((ci * pt + t % pt) * ph + h % ph) * pw + w % pw;
                            let tv = ts[(bi * gt * gh * gw + n) * c * vol + f];
                            assert_eq!(xv, tv);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_grids_error_naming_allowed_sizes() {
    let e = patch_grid([5, 7, 8], [1, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("height 7") && e.contains("6 or 8"), "{e}");
    let e = patch_grid([5, 8, 8], [2, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("frames 5") && e.contains("4 or 6"), "{e}");
    assert!(patch_grid([0, 8, 8], [1, 2, 2]).is_err());
    let x = randn(&[1, 2, 3, 5, 4], 0);
    let e = patchify(&x, [1, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("height 5"), "{e}");
    assert!(patchify(&randn(&[2, 3, 4], 0), [1, 2, 2]).is_err());

    let m = models(&WorldDitConfig::tiny());
    let tok = tokenizer();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS[..1]).unwrap();
    let t = Tensor::new(&[0.5f32], &DEV).unwrap();
    let e = m
        .dit
        .forward(&randn(&[1, 4, 3, 8, 9], 0), &t, &text, &mask, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("width 9") && e.contains("8 or 10"), "{e}");
}

#[test]
fn param_counts_match_the_config_and_the_budget() {
    let partly_cross = WorldDitConfig {
        depth: 3,
        cross_attn_blocks: Some(1),
        ..WorldDitConfig::tiny()
    };
    for cfg in [
        WorldDitConfig::tiny(),
        WorldDitConfig::default(),
        partly_cross,
    ] {
        let m = models(&cfg);
        let text_params = m.text.config().param_count();
        assert_eq!(
            varmap_param_count(&m.varmap),
            cfg.param_count() + text_params,
            "{cfg:?}"
        );
    }
    let dit = WorldDitConfig::default().param_count();
    let text = WorldTextConfig::new(200).param_count();
    // DiT + text in f16 must leave room for the VAE in the 20 MB budget.
    assert!(dit <= 8_000_000, "default DiT has {dit} parameters");
    assert!(
        2 * (dit + text) <= 16_000_000,
        "DiT + text: {} parameters",
        dit + text
    );
    let cfg: WorldDitConfig =
        serde_json::from_str(&serde_json::to_string(&WorldDitConfig::default()).unwrap()).unwrap();
    assert_eq!(cfg, WorldDitConfig::default());
    // Older configs have no `cross_attn_blocks`: every block cross-attends; more than `depth`
    // is refused with the field named.
    assert!(!serde_json::to_string(&cfg)
        .unwrap()
        .contains("cross_attn_blocks"));
    assert!((0..cfg.depth).all(|i| cfg.has_cross_attn(i)));
    let too_many = WorldDitConfig {
        cross_attn_blocks: Some(cfg.depth + 1),
        ..cfg
    };
    let err = too_many.validate().unwrap_err().to_string();
    assert!(err.contains("cross_attn_blocks"), "{err}");
}

#[test]
fn adaln_zero_starts_at_zero_and_moves_after_one_step() {
    let m = models(&WorldDitConfig::tiny());
    let tok = tokenizer();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS).unwrap();
    let x = randn(&[2, 4, 3, 4, 4], 1);
    let t = Tensor::new(&[0.3f32, 0.9], &DEV).unwrap();
    let v = m.dit.forward(&x, &t, &text, &mask, None).unwrap();
    assert_eq!(v.dims(), x.dims());
    assert_eq!(max_abs(&v), 0.0, "a fresh model predicts exactly zero");

    let mut opt = AdamW::new(
        m.varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let loss = flow_matching_loss(
        &m.dit,
        &FlowBatch::new(&x, &text, &mask),
        TimestepSampler::default(),
        1.0,
        &mut rng(2),
    )
    .unwrap();
    opt.backward_step(&loss).unwrap();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS).unwrap();
    let v = m.dit.forward(&x, &t, &text, &mask, None).unwrap();
    assert!(max_abs(&v) > 0.0, "one AdamW step moves the output");
}

#[test]
fn tiny_model_overfits_one_batch() {
    let m = models(&WorldDitConfig::tiny());
    let tok = tokenizer();
    // Two latents, each repeated 8 times in the batch so that every step sees 8 noise draws of
    // each (batch 2 is too noisy to show memorisation within 100 steps). Measured: 2.0 → ~0.18
    // (without the absolute position embedding: → ~0.57).
    const REPEATS: usize = 8;
    let x0 = randn(&[2, 4, 3, 4, 4], 7)
        .repeat((REPEATS, 1, 1, 1, 1))
        .unwrap();
    let caps: Vec<&str> = (0..REPEATS).flat_map(|_| CAPTIONS).collect();
    let eval = |m: &Models| -> f32 {
        let (text, mask, _) = m.text.encode_prompts(&tok, &caps).unwrap();
        let mut r = rng(99);
        let mut total = 0.0;
        for _ in 0..8 {
            let l = flow_matching_loss(
                &m.dit,
                &FlowBatch::new(&x0, &text.detach(), &mask),
                TimestepSampler::default(),
                1.0,
                &mut r,
            )
            .unwrap();
            total += l.to_scalar::<f32>().unwrap();
        }
        total / 8.0
    };
    let before = eval(&m);
    let mut opt = AdamW::new(
        m.varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut r = rng(3);
    for _ in 0..100 {
        let (text, mask, _) = m.text.encode_prompts(&tok, &caps).unwrap();
        let loss = flow_matching_loss(
            &m.dit,
            &FlowBatch::new(&x0, &text, &mask),
            TimestepSampler::default(),
            1.0,
            &mut r,
        )
        .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let after = eval(&m);
    eprintln!("flow-matching loss {before:.4} -> {after:.4}");
    assert!(
        after < before / 4.0,
        "loss fell only from {before} to {after}"
    );
}

#[test]
fn conditioning_channels_change_the_output() {
    let m = models(&WorldDitConfig::tiny());
    randomise_zero_init(&m.varmap);
    let tok = tokenizer();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS).unwrap();
    let x = randn(&[2, 4, 3, 4, 4], 1);
    let given = randn(&[2, 4, 3, 4, 4], 2);
    let t = Tensor::new(&[0.5f32], &DEV).unwrap();
    let none = m.dit.forward(&x, &t, &text, &mask, None).unwrap();
    assert!(max_abs(&none) > 0.0);

    let zeros = Tensor::zeros((2, 3), DType::F32, &DEV).unwrap();
    let zero_mask = m
        .dit
        .forward(&x, &t, &text, &mask, Some((&given, &zeros)))
        .unwrap();
    assert_eq!(
        max_abs_diff(&none, &zero_mask),
        0.0,
        "an all-zero frame mask is no conditioning"
    );

    let first = Tensor::new(&[[1f32, 0., 0.], [1., 0., 0.]], &DEV).unwrap();
    let cond = m
        .dit
        .forward(&x, &t, &text, &mask, Some((&given, &first)))
        .unwrap();
    assert!(
        max_abs_diff(&none, &cond) > 1e-4,
        "the mask channel matters"
    );
    let other_given = randn(&[2, 4, 3, 4, 4], 3);
    let cond2 = m
        .dit
        .forward(&x, &t, &text, &mask, Some((&other_given, &first)))
        .unwrap();
    assert!(
        max_abs_diff(&cond, &cond2) > 1e-4,
        "the given latents matter"
    );

    // Text matters too, and any size the patch divides runs.
    let (text2, mask2, _) = m
        .text
        .encode_prompts(&tok, &["a green triangle bounces left", "a ball"])
        .unwrap();
    let other_text = m.dit.forward(&x, &t, &text2, &mask2, None).unwrap();
    assert!(max_abs_diff(&none, &other_text) > 1e-4);
    for size in [[1, 8, 8], [5, 4, 8], [2, 8, 4], [3, 4, 6]] {
        let x = randn(&[2, 4, size[0], size[1], size[2]], 5);
        let v = m.dit.forward(&x, &t, &text, &mask, None).unwrap();
        assert_eq!(v.dims(), x.dims());
    }
}

#[test]
fn conditioned_loss_counts_only_generated_frames() {
    let m = models(&WorldDitConfig::tiny());
    randomise_zero_init(&m.varmap);
    let tok = tokenizer();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS).unwrap();
    let x0 = randn(&[2, 4, 3, 4, 4], 1);
    let noise = randn(&[2, 4, 3, 4, 4], 2);
    let t = [0.25f32, 0.75];
    let fm = Tensor::new(&[[1f32, 0., 0.], [0., 1., 1.]], &DEV).unwrap();
    let batch = FlowBatch::new(&x0, &text, &mask);
    let loss: f32 = flow_matching_loss_at(&m.dit, &batch.with_frame_mask(Some(&fm)), &noise, &t)
        .unwrap()
        .to_scalar()
        .unwrap();

    // By hand: x_t with the given frames clean, MSE over the 3 generated frames.
    let tt = Tensor::new(&t, &DEV)
        .unwrap()
        .reshape((2, 1, 1, 1, 1))
        .unwrap();
    let x_t = (x0.broadcast_mul(&(1.0 - &tt).unwrap()).unwrap()
        + noise.broadcast_mul(&tt).unwrap())
    .unwrap();
    let x_t = apply_given_frames(&x_t, &x0, &fm).unwrap();
    let given_frame = x_t.narrow(2, 0, 1).unwrap().narrow(0, 0, 1).unwrap();
    assert_eq!(
        max_abs_diff(
            &given_frame,
            &x0.narrow(2, 0, 1).unwrap().narrow(0, 0, 1).unwrap()
        ),
        0.0
    );
    let v = m
        .dit
        .forward(
            &x_t,
            &Tensor::new(&t, &DEV).unwrap(),
            &text,
            &mask,
            Some((&x0, &fm)),
        )
        .unwrap();
    let sq = (v - (&noise - &x0).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .sum_keepdim(3)
        .unwrap()
        .sum_keepdim(4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // sq is [B·T] sums over C·H·W; generated: (0,1), (0,2), (1,0).
    let expect = (sq[1] + sq[2] + sq[3]) / (3.0 * 4.0 * 4.0 * 4.0);
    assert!(
        (loss - expect).abs() < 1e-5 * expect.max(1.0),
        "{loss} vs {expect}"
    );

    // Cell weights: weight 3 on every cell of frame (0, 1), 1 elsewhere, is the mean with that
    // frame counted three times; uniform weights of any size are the plain loss.
    let mut w = vec![1f32; 2 * 3 * 4 * 4];
    w[16..32].iter_mut().for_each(|v| *v = 3.0);
    let w = Tensor::from_vec(w, (2, 1, 3, 4, 4), &DEV).unwrap();
    let weighted = |w: &Tensor| -> f32 {
        flow_matching_loss_at(
            &m.dit,
            &batch.with_frame_mask(Some(&fm)).with_cell_weight(Some(w)),
            &noise,
            &t,
        )
        .unwrap()
        .to_scalar()
        .unwrap()
    };
    let expect = (3.0 * sq[1] + sq[2] + sq[3]) / (5.0 * 4.0 * 4.0 * 4.0);
    let got = weighted(&w);
    assert!(
        (got - expect).abs() < 1e-5 * expect.max(1.0),
        "{got} vs {expect}"
    );
    let uniform = weighted(&Tensor::full(2.5f32, (2, 1, 3, 4, 4), &DEV).unwrap());
    assert!(
        (uniform - loss).abs() < 1e-5 * loss.max(1.0),
        "{uniform} vs {loss}"
    );
    let bad = Tensor::ones((2, 1, 3, 2, 4), DType::F32, &DEV).unwrap();
    let e = flow_matching_loss_at(&m.dit, &batch.with_cell_weight(Some(&bad)), &noise, &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cell weights"), "{e}");
}

#[test]
fn timestep_shift_masks_and_caption_dropout() {
    assert_eq!(shift_timestep(0.5, 1.0), 0.5);
    assert!((shift_timestep(0.5, 3.0) - 0.75).abs() < 1e-12);
    assert_eq!(shift_timestep(0.0, 3.0), 0.0);
    assert_eq!(shift_timestep(1.0, 3.0), 1.0);
    let mut r = rng(0);
    for s in [TimestepSampler::Uniform, TimestepSampler::default()] {
        for _ in 0..100 {
            let t = s.sample(&mut r, 2.0);
            assert!((0.0..=1.0).contains(&t));
        }
    }

    let mut r = rng(1);
    assert_eq!(
        FrameMaskKind::FirstFrame.mask(5, &mut r),
        [1., 0., 0., 0., 0.]
    );
    assert_eq!(
        FrameMaskKind::FirstK(2).mask(5, &mut r),
        [1., 1., 0., 0., 0.]
    );
    assert_eq!(
        FrameMaskKind::LastK(2).mask(5, &mut r),
        [0., 0., 0., 1., 1.]
    );
    assert_eq!(
        FrameMaskKind::FirstAndLast.mask(5, &mut r),
        [1., 0., 0., 0., 1.]
    );
    assert_eq!(FrameMaskKind::None.mask(3, &mut r), [0., 0., 0.]);
    let cfg = FrameMaskConfig::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..400 {
        let kind = cfg.sample_kind(5, &mut r);
        seen.insert(std::mem::discriminant(&kind));
        let m = kind.mask(5, &mut r);
        assert!(m.contains(&0.0), "{kind:?} gives every frame");
        assert_eq!(cfg.sample_kind(1, &mut r), FrameMaskKind::None);
    }
    assert_eq!(seen.len(), 6, "every kind is drawn");
    let (masks, kinds) = cfg.sample(4, 5, &mut r, &DEV).unwrap();
    assert_eq!(masks.dims(), [4, 5]);
    assert_eq!(kinds.len(), 4);

    let (c, dropped) = caption_dropout(&CAPTIONS, 0.0, &mut r);
    assert_eq!(c, CAPTIONS);
    assert_eq!(dropped, [false, false]);
    let (c, dropped) = caption_dropout(&CAPTIONS, 1.0, &mut r);
    assert_eq!(c, ["", ""]);
    assert_eq!(dropped, [true, true]);
}

#[test]
fn tokenizer_round_trips_and_reports_unknown_words() {
    let tok = tokenizer();
    let (ids, unknown) = tok.encode("A small RED circle rolls right, on black.");
    assert!(unknown.is_empty());
    assert_eq!(ids[0], BOS_ID);
    assert_eq!(*ids.last().unwrap(), EOS_ID);
    assert_eq!(
        tok.decode(&ids),
        "a small red circle rolls right, on black."
    );
    // Phrases in the vocabulary add their words; apostrophes vanish as in the caption parser.
    assert!(tok.id("bounce").is_some() && tok.id("doesnt").is_some());
    assert!(tok.encode("it doesn't move").1 == ["it"]);

    let (ids, unknown) = tok.encode("a purple dodecahedron rolls right, purple again");
    assert_eq!(unknown, ["purple", "dodecahedron", "again"]);
    assert_eq!(ids.iter().filter(|&&i| i == UNK_ID).count(), 4);
    let warning = tok.unknown_words_warning(&unknown).unwrap();
    for w in [
        "\"purple\"",
        "\"dodecahedron\"",
        "\"again\"",
        "circle",
        "rolls",
        "background",
    ] {
        assert!(warning.contains(w), "{warning}");
    }
    assert!(tok.unknown_words_warning(&[]).is_none());
    assert_eq!(tok.encode("").0, [BOS_ID, EOS_ID]);

    let json = tok.to_json();
    let back = WorldTokenizer::from_json(&json).unwrap();
    assert_eq!(back, tok);
    assert!(
        WorldTokenizer::from_json("{\"kind\": \"x\", \"version\": 1, \"tokens\": []}").is_err()
    );

    let (ids, unknown) = tok
        .encode_batch(
            &["a red ball", "a big blue square falls on white"],
            64,
            &DEV,
        )
        .unwrap();
    assert_eq!(ids.dims(), [2, 9]);
    assert_eq!(unknown, [Vec::<String>::new(), vec![]]);
    let row: Vec<u32> = ids.get(0).unwrap().to_vec1().unwrap();
    assert_eq!(&row[5..], [PAD_ID; 4]);
    let (ids, _) = tok
        .encode_batch(&["a red ball rolls right on black"], 5, &DEV)
        .unwrap();
    let row: Vec<u32> = ids.get(0).unwrap().to_vec1().unwrap();
    assert_eq!(row.len(), 5);
    assert_eq!(row[4], EOS_ID);
}

#[test]
fn text_padding_does_not_change_the_tokens() {
    let tok = tokenizer();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let enc = WorldTextEncoder::new(&WorldTextConfig::tiny(tok.vocab_size()), vb).unwrap();
    // Attention must mix tokens for the masking to be tested.
    randomise_zero_init(&varmap);
    let short = "a red ball";
    let (alone, mask_alone, _) = enc.encode_prompts(&tok, &[short]).unwrap();
    let (batch, mask_batch, _) = enc
        .encode_prompts(
            &tok,
            &[short, "a big blue square falls to the left on white"],
        )
        .unwrap();
    let n = alone.dim(1).unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        mask_batch.get(0).unwrap().to_vec1::<f32>().unwrap()[..],
        [1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0.]
    );
    assert_eq!(mask_alone.dims(), [1, 5]);
    let first = batch.narrow(0, 0, 1).unwrap();
    let diff = max_abs_diff(&first.narrow(1, 0, n).unwrap(), &alone);
    assert!(diff < 1e-5, "padding changed the tokens by {diff}");
    assert_eq!(max_abs(&first.narrow(1, n, 12 - n).unwrap()), 0.0);

    // Same with the fused (inference) kernels: weights detached from the VarMap.
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &DEV);
    let enc2 = WorldTextEncoder::new(&WorldTextConfig::tiny(tok.vocab_size()), vb).unwrap();
    let (alone2, _, _) = enc2.encode_prompts(&tok, &[short]).unwrap();
    assert!(max_abs_diff(&alone, &alone2) < 1e-5);
}

/// `E|a − b|² / E|a|²`.
fn relative_sq_distance(a: &Tensor, b: &Tensor) -> f32 {
    let mean_sq = |t: Tensor| -> f32 { t.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap() };
    mean_sq((a - b).unwrap()) / mean_sq(a.clone())
}

/// A freshly initialised text encoder (the shipped shape) starts as the identity on each word's
/// embedding (its residual branches are zero-initialised), so two words are as far apart as two
/// random vectors: relative squared distance ~2 (it was ~0.9 with candle's default init, whose
/// random attention mixed the positions).
#[test]
fn fresh_text_encoder_tells_words_apart() {
    let tok = tokenizer();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let enc = WorldTextEncoder::new(&WorldTextConfig::new(tok.vocab_size()), vb).unwrap();
    let word = |w: &str| {
        let (tokens, _, unknown) = enc.encode_prompts(&tok, &[w]).unwrap();
        assert!(unknown[0].is_empty());
        // <bos> word <eos>: the word's own position.
        tokens.narrow(1, 1, 1).unwrap()
    };
    let (red, blue) = (word("red"), word("blue"));
    let rel = relative_sq_distance(&red, &blue);
    assert!(
        rel > 1.5,
        "fresh encoder maps \"red\" and \"blue\" {rel:.3} apart (relative), want > 1.5"
    );
}

#[test]
fn fused_and_differentiable_paths_agree() {
    let m = models(&WorldDitConfig::tiny());
    randomise_zero_init(&m.varmap);
    let tensors = m
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &DEV);
    let dit = WorldDit::new(&WorldDitConfig::tiny(), vb.pp("dit")).unwrap();
    let tok = tokenizer();
    let (text, mask, _) = m.text.encode_prompts(&tok, &CAPTIONS).unwrap();
    let text = text.detach();
    let x = randn(&[2, 4, 3, 4, 6], 1);
    let t = Tensor::new(&[0.2f32, 0.7], &DEV).unwrap();
    let a = m.dit.forward(&x, &t, &text, &mask, None).unwrap();
    let b = dit.forward(&x, &t, &text, &mask, None).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-4 * max_abs(&a).max(1.0), "paths differ by {d}");
}

/// Which word a colour belongs to is only in the word order. With rotary positions in its
/// self-attention the encoder's (trained-like, randomised) layers see the order, and the mean of
/// its tokens (the DiT's pooled text) tells "red ball on black" from "black ball on red"; the
/// first encoder (learned positions alone, started 50× below the word embeddings) was a bag of
/// words, and the trained model drew the same clip for both.
#[test]
fn text_encoder_sees_word_order() {
    let tok = tokenizer();
    let swapped_distance = |rope_theta: Option<f64>| -> f32 {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
        let cfg = WorldTextConfig {
            rope_theta,
            ..WorldTextConfig::new(tok.vocab_size())
        };
        let enc = WorldTextEncoder::new(&cfg, vb.pp("text")).unwrap();
        randomise_zero_init(&varmap);
        let pooled = |prompt: &str| {
            let (tokens, _, unknown) = enc.encode_prompts(&tok, &[prompt]).unwrap();
            assert!(unknown[0].is_empty());
            tokens.mean(1).unwrap()
        };
        let a = pooled("a red ball on a black background");
        let b = pooled("a black ball on a red background");
        relative_sq_distance(&a, &b)
    };
    let with = swapped_distance(Some(10_000.0));
    let without = swapped_distance(None);
    println!("relative squared distance of the swapped prompts: rope {with:.5}, none {without:.5}");
    assert!(
        with > 0.003 && with > 20.0 * without,
        "swapping the colours moves the pooled text by {with:.5} with rotary positions and \
         {without:.5} without"
    );
}
