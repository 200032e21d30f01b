//! The world model's sampling pipeline on a tiny random model: shapes for several sizes and
//! aspect ratios, seeding, both samplers, batched guidance, every conditioning mode, request
//! errors, unknown words and the step cache. Small models only (fast in `--profile ci`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use zoetrope_models::step_cache::{
    StepCache, StepCacheConfig, StepCacheLimits, StepCacheReport, StepCacheStats,
};
use zoetrope_models::world::dit::{randn_like, WorldDitConfig};
use zoetrope_models::world::model::{
    SamplingDefaults, WorldModel, WorldModelManifest, FORMAT, MANIFEST_FILE, WEIGHTS_FILE,
};
use zoetrope_models::world::pipeline::{
    fit_frame, Conditioning, GivenFrames, Stage, WorldPipeline, WorldRequest,
};
use zoetrope_models::world::text::{WorldTextConfig, WorldTokenizer};
use zoetrope_models::world::vae::WorldVaeConfig;
use zoetrope_nn::max_abs_diff;
use zoetrope_video::pattern::moving_test_pattern;
use zoetrope_video::{Frame, Video};

const DEV: Device = Device::Cpu;
/// Batched and separate guidance branches agree to this (f32 sums in another order).
const GUIDANCE_TOL: f32 = 1e-5;
/// A model saved and loaded again matches the in-memory one to this.
const LOAD_TOL: f32 = 1e-4;
/// Latent frames that count as "different" differ by more than this somewhere.
const DIFFERENT: f32 = 1e-3;

const WORDS: &[&str] = &[
    "a",
    "the",
    "small",
    "big",
    "red",
    "blue",
    "green",
    "ball",
    "square",
    "triangle",
    "falls",
    "slides",
    "bounces",
    "right",
    "left",
    "on",
    "black",
    "white",
    "background",
    "and",
];

/// The tiny model's manifest: 4× spatial and 4× temporal VAE, 2×2 DiT patch (sizes are
/// multiples of 8), a scaling factor other than 1 so that scaling is exercised.
fn tiny_manifest() -> WorldModelManifest {
    let tokenizer = WorldTokenizer::new(WORDS);
    let vae = WorldVaeConfig {
        scaling_factor: 0.7,
        ..WorldVaeConfig::tiny()
    };
    WorldModelManifest {
        format: FORMAT.to_string(),
        vae,
        dit: WorldDitConfig::tiny(),
        text: WorldTextConfig::tiny(tokenizer.vocab_size()),
        tokenizer: serde_json::from_str(&tokenizer.to_json()).unwrap(),
        defaults: SamplingDefaults {
            width: 32,
            height: 32,
            frames: 9,
            fps: 8.0,
            steps: 3,
            guidance: 3.0,
            shift: 2.0,
            sampler: "unipc".into(),
        },
        training: serde_json::Value::Null,
    }
}

/// Builds the tiny model's variables and gives every one seeded random values: a fresh DiT
/// predicts exactly zero velocity (adaLN-Zero), which would make sampling a no-op.
fn tiny_varmap(manifest: &WorldModelManifest, seed: u64) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    WorldModel::from_var_builder(manifest.clone(), vb).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = if var.rank() == 1 {
            // Norm scales stay near 1, biases near 0.
            let ones = var.to_vec1::<f32>().unwrap().iter().all(|&v| v == 1.0);
            let noise = Normal::new(0.0f32, 0.05).unwrap();
            (0..n)
                .map(|_| noise.sample(&mut rng) + if ones { 1.0 } else { 0.0 })
                .collect()
        } else {
            let fan_in = n / var.dims()[0];
            let noise = Normal::new(0.0f32, 1.0 / (fan_in as f32).sqrt()).unwrap();
            (0..n).map(|_| noise.sample(&mut rng)).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), &DEV).unwrap())
            .unwrap();
    }
    drop(data);
    varmap
}

fn tiny_pipeline() -> WorldPipeline {
    let manifest = tiny_manifest();
    let varmap = tiny_varmap(&manifest, 7);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    WorldPipeline::new(WorldModel::from_var_builder(manifest, vb).unwrap())
}

/// Writes the tiny model as a model directory (`model.json` + `model.safetensors`).
fn save_tiny_model(dir: &Path) {
    let manifest = tiny_manifest();
    tiny_varmap(&manifest, 7)
        .save(dir.join(WEIGHTS_FILE))
        .unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
}

fn request(pipe: &WorldPipeline, prompt: &str) -> WorldRequest {
    pipe.request(prompt).unwrap()
}

fn run(pipe: &WorldPipeline, req: &WorldRequest) -> zoetrope_models::world::pipeline::WorldOutput {
    pipe.generate(req, &mut |_| {}).unwrap()
}

fn error(pipe: &WorldPipeline, req: &WorldRequest) -> String {
    let e = pipe.check(req).expect_err("the request should be refused");
    let generate = pipe
        .generate(req, &mut |_| {})
        .expect_err("generate refuses it too");
    assert_eq!(e.to_string(), generate.to_string());
    e.to_string()
}

/// Latent frames `range` of `[1, C, T, h, w]`.
fn frames(latents: &Tensor, start: usize, len: usize) -> Tensor {
    latents.narrow(2, start, len).unwrap()
}

fn clip(frames: usize, w: u32, h: u32) -> Video {
    moving_test_pattern(w, h, frames, 8.0).unwrap()
}

/// The given latent frames are in the final latent exactly; every other one was generated:
/// it differs from what any given frame holds.
fn assert_given_kept_rest_generated(out: &zoetrope_models::world::pipeline::WorldOutput) {
    let given = out.given.as_ref().expect("conditioned");
    let t = given.given.len();
    assert_eq!(out.latents.dim(2).unwrap(), t);
    for j in 0..t {
        let got = frames(&out.latents, j, 1);
        if given.given[j] {
            let want = frames(&given.latents, j, 1);
            assert_eq!(
                max_abs_diff(&got, &want).unwrap(),
                0.0,
                "given frame {j} changed"
            );
        } else {
            for g in (0..t).filter(|&g| given.given[g]) {
                let d = max_abs_diff(&got, &frames(&given.latents, g, 1)).unwrap();
                assert!(d > DIFFERENT, "frame {j} is a copy of given frame {g}");
            }
        }
    }
}

#[test]
fn output_has_the_requested_size_frames_and_fps_for_several_aspect_ratios() {
    let pipe = tiny_pipeline();
    for (w, h, f) in [(32, 32, 9), (48, 32, 5), (32, 48, 9), (16, 40, 1)] {
        let mut req = request(&pipe, "a red ball falls on black");
        (req.width, req.height, req.frames, req.fps) = (w, h, f, 12.0);
        req.steps = 2;
        let out = run(&pipe, &req);
        let v = &out.video;
        assert_eq!(
            (v.width() as usize, v.height() as usize, v.len()),
            (w, h, f),
            "{w}x{h}x{f}"
        );
        assert_eq!(v.fps(), 12.0);
        assert_eq!(out.latents.dims(), [1, 4, 1 + (f - 1) / 4, h / 4, w / 4]);
        assert!(out.given.is_none());
    }
}

#[test]
fn defaults_come_from_the_manifest() {
    let pipe = tiny_pipeline();
    let req = request(&pipe, "a ball");
    let d = tiny_manifest().defaults;
    assert_eq!(
        (req.width, req.height, req.frames, req.fps, req.steps),
        (d.width, d.height, d.frames, d.fps, d.steps)
    );
    assert_eq!((req.guidance, req.shift), (d.guidance, d.shift));
    assert_eq!(req.sampler.name(), "unipc");
    assert_eq!(req.negative_prompt, "");
}

#[test]
fn same_seed_same_video_other_seed_differs() {
    let pipe = tiny_pipeline();
    let mut req = request(&pipe, "a blue square slides right");
    req.seed = 3;
    let a = run(&pipe, &req);
    let b = run(&pipe, &req);
    assert_eq!(a.video, b.video);
    assert_eq!(max_abs_diff(&a.latents, &b.latents).unwrap(), 0.0);
    req.seed = 4;
    let c = run(&pipe, &req);
    assert!(max_abs_diff(&a.latents, &c.latents).unwrap() > DIFFERENT);
    assert_ne!(a.video, c.video);
}

#[test]
fn euler_and_unipc_both_give_finite_results() {
    let pipe = tiny_pipeline();
    let mut results = vec![];
    for sampler in ["euler", "unipc"] {
        let mut req = request(&pipe, "a green triangle bounces left");
        req.sampler = sampler.parse().unwrap();
        req.steps = 4;
        let out = run(&pipe, &req);
        let values = out.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{sampler}");
        results.push(out.latents);
    }
    assert!(max_abs_diff(&results[0], &results[1]).unwrap() > DIFFERENT);
}

#[test]
fn batched_guidance_equals_the_two_branches_run_separately() {
    let pipe = tiny_pipeline();
    let dit = &pipe.model().dit;
    let (prompt, negative, g) = ("a big red ball falls and bounces on white", "blue", 4.5);
    let x = randn_like(
        &Tensor::zeros((1, 4, 3, 8, 12), DType::F32, &DEV).unwrap(),
        &mut ChaCha8Rng::seed_from_u64(1),
    )
    .unwrap();
    let given = GivenFrames {
        latents: randn_like(&x, &mut ChaCha8Rng::seed_from_u64(2)).unwrap(),
        mask: Tensor::new(&[[1f32, 0., 0.]], &DEV).unwrap(),
        given: vec![true, false, false],
    };
    let t = 0.7;
    let tt = Tensor::new(&[t as f32], &DEV).unwrap();
    for cond in [None, Some(&given)] {
        let text = pipe.encode_text(prompt, negative, g).unwrap();
        assert!(text.guided());
        let batched = pipe.velocity(&x, t, &text, g, cond).unwrap();
        // Each prompt encoded alone (its own padding), each branch its own forward pass.
        let branch = |p: &str| {
            let e = pipe.encode_text(p, "", 1.0).unwrap();
            assert!(!e.guided());
            dit.forward(
                &x,
                &tt,
                &e.tokens,
                &e.mask,
                cond.map(|c| (&c.latents, &c.mask)),
            )
            .unwrap()
        };
        let (v_c, v_u) = (branch(prompt), branch(negative));
        let separate = (&v_u + ((&v_c - &v_u).unwrap() * g).unwrap()).unwrap();
        let d = max_abs_diff(&batched, &separate).unwrap();
        assert!(d <= GUIDANCE_TOL, "batched guidance differs by {d}");
        // Guidance 1 runs only the conditional branch.
        let single = pipe.encode_text(prompt, negative, 1.0).unwrap();
        let v1 = pipe.velocity(&x, t, &single, 1.0, cond).unwrap();
        assert!(max_abs_diff(&v1, &v_c).unwrap() <= GUIDANCE_TOL);
    }
}

#[test]
fn progress_counts_every_step_then_every_latent_frame() {
    let pipe = tiny_pipeline();
    let mut req = request(&pipe, "a ball");
    req.steps = 3;
    let mut stages = vec![];
    pipe.generate(&req, &mut |s| stages.push(s)).unwrap();
    assert_eq!(stages[0], Stage::EncodingText);
    let steps: Vec<usize> = stages
        .iter()
        .filter_map(|s| match s {
            Stage::Denoising { step, steps: 3 } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [0, 1, 2, 3]);
    let decoded = stages
        .iter()
        .filter(|s| matches!(s, Stage::Decoding { frames: 3, .. }))
        .count();
    assert_eq!(decoded, 3);
}

#[test]
fn image_to_video_keeps_the_given_frame_and_generates_the_rest() {
    let pipe = tiny_pipeline();
    let image = clip(1, 32, 32).frames()[0].clone();
    let mut req = request(&pipe, "a red ball slides right");
    req.seed = 5;
    let plain = run(&pipe, &req);
    req.conditioning = Conditioning::Image(image.clone());
    let out = run(&pipe, &req);
    assert_eq!(out.video.len(), 9);
    let given = out.given.as_ref().unwrap();
    assert_eq!(given.given, [true, false, false]);
    let encoded = pipe.encode_frames(&[image]).unwrap();
    assert_eq!(
        max_abs_diff(&frames(&out.latents, 0, 1), &encoded).unwrap(),
        0.0
    );
    assert_given_kept_rest_generated(&out);
    // The conditioning reaches the generated frames: they differ from the unconditioned run.
    let d = max_abs_diff(&frames(&out.latents, 1, 2), &frames(&plain.latents, 1, 2)).unwrap();
    assert!(d > DIFFERENT);
}

#[test]
fn an_image_of_another_size_is_scaled_to_cover_and_centre_cropped() {
    let mut wide = Frame::filled(64, 32, [0, 0, 255]);
    for y in 0..32 {
        for x in 16..48 {
            wide.set_pixel(x, y, [255, 0, 0]);
        }
    }
    let fitted = fit_frame(&wide, 32, 32).unwrap();
    assert_eq!((fitted.width(), fitted.height()), (32, 32));
    // The centre (red) survives, the blue sides are cropped off.
    assert!(fitted.data().chunks(3).all(|p| p[0] > 200 && p[2] < 60));
    let fitted = fit_frame(&wide, 16, 16).unwrap();
    assert_eq!((fitted.width(), fitted.height()), (16, 16));

    // Generation accepts it; the default size for an input keeps allowed sizes and rounds others.
    let pipe = tiny_pipeline();
    assert_eq!(pipe.size_for_input(48, 32), (48, 32));
    assert_eq!(pipe.size_for_input(50, 30), (48, 32));
    assert_eq!(pipe.size_for_input(1000, 500), (48, 24));
    let mut req = request(&pipe, "a red square");
    req.frames = 5;
    req.conditioning = Conditioning::Image(wide);
    assert_eq!(run(&pipe, &req).video.width(), 32);
}

#[test]
fn extending_forward_keeps_the_clip_and_adds_new_frames() {
    let pipe = tiny_pipeline();
    let old = clip(9, 32, 32);
    let mut req = request(&pipe, "a red square slides left");
    req.frames = 9;
    req.conditioning = Conditioning::ExtendForward(old.clone());
    let out = run(&pipe, &req);
    // Two latent frames of context = the clip's last 5 frames; 9 − 5 new frames follow it.
    assert_eq!(out.video.len(), 9 + 4);
    assert_eq!(&out.video.frames()[..9], old.frames());
    assert_eq!(out.given.as_ref().unwrap().given, [true, true, false]);
    let context = pipe.encode_frames(&old.frames()[4..]).unwrap();
    assert_eq!(
        max_abs_diff(&frames(&out.latents, 0, 2), &context).unwrap(),
        0.0
    );
    assert_given_kept_rest_generated(&out);

    // One latent frame of context: only the clip's last frame is given.
    req.context_latents = 1;
    let out = run(&pipe, &req);
    assert_eq!(out.video.len(), 9 + 8);
    assert_eq!(out.given.as_ref().unwrap().given, [true, false, false]);
}

#[test]
fn extending_backward_puts_new_frames_before_the_clip() {
    let pipe = tiny_pipeline();
    let old = clip(9, 32, 32);
    let mut req = request(&pipe, "a red square slides left");
    req.frames = 17;
    req.conditioning = Conditioning::ExtendBackward(old.clone());
    let out = run(&pipe, &req);
    // The last two latent frames are the clip's frames 1..=8; the frame before them stands for
    // the clip's frame 0 and is replaced by it.
    assert_eq!(out.video.len(), (17 - 8 - 1) + 9);
    assert_eq!(&out.video.frames()[8..], old.frames());
    assert_eq!(
        out.given.as_ref().unwrap().given,
        [false, false, false, true, true]
    );
    let closing = pipe
        .encode_frames(old.frames())
        .unwrap()
        .narrow(2, 1, 2)
        .unwrap();
    assert_eq!(
        max_abs_diff(&frames(&out.latents, 3, 2), &closing).unwrap(),
        0.0
    );
    assert_given_kept_rest_generated(&out);

    // A single image works as a (still) clip.
    let image = Video::new(vec![old.frames()[0].clone()], 8.0).unwrap();
    req.frames = 9;
    req.conditioning = Conditioning::ExtendBackward(image);
    let out = run(&pipe, &req);
    assert_eq!(out.video.len(), (9 - 4 - 1) + 1);
    assert_given_kept_rest_generated(&out);
}

#[test]
fn a_loop_starts_and_ends_on_the_same_frame_and_drops_the_repeat() {
    let pipe = tiny_pipeline();
    let image = clip(1, 32, 32).frames()[0].clone();
    let mut req = request(&pipe, "a ball bounces");
    req.frames = 9;
    req.conditioning = Conditioning::Loop {
        first: Some(image.clone()),
    };
    let out = run(&pipe, &req);
    assert_eq!(out.video.len(), 9);
    // One latent frame more than asked for, whose frames (the first frame again) are dropped.
    let given = out.given.as_ref().unwrap();
    assert_eq!(given.given, [true, false, false, true]);
    let still = pipe.encode_frames(&vec![image; 5]).unwrap();
    assert_eq!(
        max_abs_diff(&frames(&out.latents, 0, 1), &frames(&still, 0, 1)).unwrap(),
        0.0
    );
    assert_eq!(
        max_abs_diff(&frames(&out.latents, 3, 1), &frames(&still, 1, 1)).unwrap(),
        0.0
    );
    assert_given_kept_rest_generated(&out);

    // Without an image, the first frame is generated from the prompt first (two passes).
    req.conditioning = Conditioning::Loop { first: None };
    let mut last_step = (0, 0);
    let out = pipe
        .generate(&req, &mut |s| {
            if let Stage::Denoising { step, steps } = s {
                last_step = (step, steps);
            }
        })
        .unwrap();
    assert_eq!(out.video.len(), 9);
    assert_eq!(last_step, (2 * req.steps, 2 * req.steps));
    assert_given_kept_rest_generated(&out);
}

#[test]
fn connecting_two_clips_generates_the_frames_between_them() {
    let pipe = tiny_pipeline();
    let a = clip(9, 32, 32);
    let b = Video::new(clip(13, 32, 32).frames()[4..].to_vec(), 8.0).unwrap();
    let mut req = request(&pipe, "a red square slides left");
    req.frames = 17;
    req.conditioning = Conditioning::Connect {
        first: a.clone(),
        second: b.clone(),
    };
    let out = run(&pipe, &req);
    // A's last 5 frames open the new clip, B's frames 1..=8 close it: 17 − 5 − 8 − 1 new frames.
    assert_eq!(out.video.len(), 9 + 3 + 9);
    assert_eq!(&out.video.frames()[..9], a.frames());
    assert_eq!(&out.video.frames()[12..], b.frames());
    assert_eq!(
        out.given.as_ref().unwrap().given,
        [true, true, false, true, true]
    );
    assert_given_kept_rest_generated(&out);

    // Too few frames for two contexts: each context shrinks to leave one frame to generate.
    req.frames = 9;
    let out = run(&pipe, &req);
    assert_eq!(out.given.as_ref().unwrap().given, [true, false, true]);
    assert_eq!(out.video.len(), 9 + 3 + 9);
}

#[test]
fn editing_starts_from_the_noised_source() {
    let pipe = tiny_pipeline();
    let source = clip(11, 32, 32);
    let mut req = request(&pipe, "a blue ball slides right");
    req.sampler = "euler".parse().unwrap();
    req.frames = 9;
    req.steps = 4;
    let plain = run(&pipe, &req);

    // At strength 1 the source is pure noise: exactly text→video.
    req.conditioning = Conditioning::Edit {
        source: source.clone(),
        strength: 1.0,
    };
    let full = run(&pipe, &req);
    assert_eq!(max_abs_diff(&full.latents, &plain.latents).unwrap(), 0.0);

    // Lower strengths start below 1, take about `steps` steps, and stay nearer the source.
    let x0 = pipe.encode_frames(&source.frames()[..9]).unwrap();
    let mut distance = vec![];
    for strength in [0.6, 0.2] {
        req.conditioning = Conditioning::Edit {
            source: source.clone(),
            strength,
        };
        let mut calls = 0;
        let out = pipe
            .generate(&req, &mut |s| {
                if let Stage::Denoising { steps, .. } = s {
                    calls = steps;
                }
            })
            .unwrap();
        assert_eq!(out.video.len(), 9);
        assert!(
            (req.steps..=req.steps + 1).contains(&calls),
            "{calls} steps"
        );
        distance.push(max_abs_diff(&out.latents, &x0).unwrap());
    }
    assert!(distance[1] < distance[0], "{distance:?}");

    // UniPC with few steps: its schedule is refined until enough levels lie below the strength.
    req.sampler = "unipc".parse().unwrap();
    req.steps = 2;
    req.conditioning = Conditioning::Edit {
        source: source.clone(),
        strength: 0.3,
    };
    assert_eq!(run(&pipe, &req).video.len(), 9);

    // Below the sampler's last noise level there is nothing to start from.
    req.conditioning = Conditioning::Edit {
        source: source.clone(),
        strength: 1e-4,
    };
    assert!(error(&pipe, &req).contains("too small"));

    // The source must cover the requested frames.
    req.frames = 13;
    let e = error(&pipe, &req);
    assert!(e.contains("11 frames") && e.contains("at most 9"), "{e}");
}

#[test]
fn a_single_image_is_a_one_frame_clip() {
    let pipe = tiny_pipeline();
    let mut req = request(&pipe, "a green square on white");
    req.frames = 1;
    let out = run(&pipe, &req);
    assert_eq!(out.video.len(), 1);
    assert_eq!(out.latents.dims(), [1, 4, 1, 8, 8]);
}

#[test]
fn impossible_requests_name_the_allowed_values() {
    let pipe = tiny_pipeline();
    let mut req = request(&pipe, "a ball");
    req.width = 30;
    let e = error(&pipe, &req);
    assert!(
        e.contains("30x32") && e.contains("multiples of 8") && e.contains("32x32"),
        "{e}"
    );
    req.width = 32;
    req.frames = 8;
    let e = error(&pipe, &req);
    assert!(
        e.contains("1 + 4k") && e.contains("1, 5, 9") && e.contains("5 or 9"),
        "{e}"
    );
    req.frames = 0;
    assert!(error(&pipe, &req).contains("try 1"));
    req.frames = 9;
    req.steps = 0;
    assert!(error(&pipe, &req).contains("steps"));
    req.steps = 2;
    for strength in [0.0, 1.5] {
        req.conditioning = Conditioning::Edit {
            source: clip(9, 32, 32),
            strength,
        };
        assert!(error(&pipe, &req).contains("(0, 1]"));
    }
    req.frames = 1;
    req.conditioning = Conditioning::ExtendForward(clip(9, 32, 32));
    let e = error(&pipe, &req);
    assert!(
        e.contains("extending forward needs at least 5 frames"),
        "{e}"
    );
    req.frames = 5;
    req.conditioning = Conditioning::ExtendBackward(clip(9, 32, 32));
    assert!(error(&pipe, &req).contains("at least 9 frames"));
}

#[test]
fn unknown_words_are_reported() {
    let pipe = tiny_pipeline();
    assert_eq!(
        pipe.unknown_words("a red zeppelin hovers"),
        ["zeppelin", "hovers"]
    );
    let mut req = request(&pipe, "a red zeppelin");
    req.negative_prompt = "blurry zeppelin".into();
    req.steps = 1;
    let out = run(&pipe, &req);
    assert_eq!(out.unknown_words, ["zeppelin", "blurry"]);
    assert_eq!(pipe.request_unknown_words(&req), out.unknown_words);
    // Without guidance the negative prompt is not used, so its words do not matter.
    req.guidance = 1.0;
    assert_eq!(pipe.request_unknown_words(&req), ["zeppelin"]);
    assert_eq!(run(&pipe, &req).unknown_words, ["zeppelin"]);
    let warning = pipe
        .model()
        .tokenizer
        .unknown_words_warning(&out.unknown_words)
        .unwrap();
    assert!(
        warning.contains("\"zeppelin\"") && warning.contains("triangle"),
        "{warning}"
    );
    assert!(run(&pipe, &request(&pipe, "a red ball"))
        .unknown_words
        .is_empty());
}

#[test]
fn a_saved_model_directory_loads_and_generates_the_same_video() {
    let dir = tempfile::tempdir().unwrap();
    save_tiny_model(dir.path());
    let loaded = WorldPipeline::new(WorldModel::load_dir(dir.path(), DType::F32, &DEV).unwrap());
    let req = request(&loaded, "a red ball");
    // The in-memory model runs candle's differentiable ops (its weights are training variables),
    // the loaded one the fused kernels: equal up to rounding.
    let (a, b) = (run(&loaded, &req), run(&tiny_pipeline(), &req));
    let d = max_abs_diff(&a.latents, &b.latents).unwrap();
    assert!(d < LOAD_TOL, "loaded model differs by {d}");
    assert_eq!(a.video.len(), b.video.len());
}

#[test]
fn the_builtin_model_loads_or_says_how_to_get_one() {
    match WorldModel::builtin(DType::F32, &DEV) {
        Ok(model) => {
            assert!(zoetrope_models::world::builtin().is_some() && model.manifest.format == FORMAT)
        }
        Err(e) => {
            assert!(zoetrope_models::world::builtin().is_none());
            assert_eq!(
                e.to_string(),
                "this build has no built-in world model: \
                 crates/zoetrope-models/weights/world/model.{json,safetensors} are missing; \
                 pass --model DIR"
            );
        }
    }
}

#[test]
fn step_cache_at_threshold_zero_is_exact_and_a_large_one_skips_within_the_limits() {
    let pipe = tiny_pipeline();
    let mut req = request(&pipe, "a big red ball falls and bounces on white");
    req.steps = 10;
    assert!(req.guidance != 1.0, "the tiny model guides by default");
    let plain = run(&pipe, &req);
    assert!(plain.step_cache.is_none());

    req.cache_steps = Some(0.0);
    let exact = run(&pipe, &req);
    assert_eq!(max_abs_diff(&exact.latents, &plain.latents).unwrap(), 0.0);
    assert_eq!(exact.video, plain.video);
    let all = StepCacheStats {
        calls: 10,
        skipped: 0,
    };
    assert_eq!(
        exact.step_cache,
        Some(StepCacheReport {
            cond: all,
            uncond: Some(all)
        })
    );

    // Every change is below this: only the limits decide. With 2 warm-up steps and at most 3
    // in a row, steps 2-4 and 6-8 are skipped in each branch.
    req.cache_steps = Some(1e9);
    let cached = run(&pipe, &req);
    let six = StepCacheStats {
        calls: 10,
        skipped: 6,
    };
    assert_eq!(
        cached.step_cache,
        Some(StepCacheReport {
            cond: six,
            uncond: Some(six)
        })
    );
    assert!(max_abs_diff(&cached.latents, &plain.latents).unwrap() > DIFFERENT);

    req.cache_limits = StepCacheLimits {
        warmup_steps: 1,
        max_consecutive_skips: 1,
    };
    // Steps 1, 3, 5, 7, 9 of each branch.
    assert_eq!(run(&pipe, &req).step_cache.unwrap().total().skipped, 10);

    // Guidance 1: one branch. A loop without an image samples twice: the passes add up, each
    // with a fresh cache (the first pass samples one latent frame, the second the clip).
    req.guidance = 1.0;
    req.cache_limits = StepCacheLimits::default();
    req.conditioning = Conditioning::Loop { first: None };
    let report = run(&pipe, &req).step_cache.unwrap();
    assert_eq!(
        report,
        StepCacheReport {
            cond: StepCacheStats {
                calls: 20,
                skipped: 12
            },
            uncond: None
        }
    );

    req.cache_steps = Some(-0.1);
    assert!(error(&pipe, &req).contains("threshold"));
}

#[test]
fn step_cache_rows_are_separate_branches() {
    // Branch by branch in one batched call: the conditional branch reuses its cache, the
    // unconditional one (a fresh cache) computes alone; both must still be what the plain
    // path gives at the same input, which fails if the computing row saw the other's text.
    let pipe = tiny_pipeline();
    let g = 3.0;
    let text = pipe
        .encode_text("a big red ball falls", "blue square", g)
        .unwrap();
    let x = randn_like(
        &Tensor::zeros((1, 4, 3, 8, 8), DType::F32, &DEV).unwrap(),
        &mut ChaCha8Rng::seed_from_u64(5),
    )
    .unwrap();
    let config = StepCacheConfig::new(
        1e9,
        StepCacheLimits {
            warmup_steps: 0,
            max_consecutive_skips: 3,
        },
    )
    .unwrap();
    let plain = pipe.velocity(&x, 0.6, &text, g, None).unwrap();
    let mut caches = vec![StepCache::new(config), StepCache::new(config)];
    let first = pipe
        .velocity_cached(&x, 0.6, &text, g, None, &mut caches)
        .unwrap();
    assert_eq!(max_abs_diff(&first, &plain).unwrap(), 0.0);
    caches[1] = StepCache::new(config);
    let mixed = pipe
        .velocity_cached(&x, 0.6, &text, g, None, &mut caches)
        .unwrap();
    assert_eq!(caches[0].stats().skipped, 1);
    assert_eq!(caches[1].stats().skipped, 0);
    let d = max_abs_diff(&mixed, &plain).unwrap();
    assert!(d <= GUIDANCE_TOL, "mixed rows differ by {d}");
    // And the reused branch really is the cache's: at another time it stays put.
    let later = pipe
        .velocity_cached(&x, 0.2, &text, g, None, &mut caches)
        .unwrap();
    assert_eq!(caches[0].stats().skipped + caches[1].stats().skipped, 3);
    assert!(
        max_abs_diff(&later, &pipe.velocity(&x, 0.2, &text, g, None).unwrap()).unwrap() > DIFFERENT
    );
}
