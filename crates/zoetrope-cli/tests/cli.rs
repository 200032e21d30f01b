//! End-to-end tests of the `zoetrope` binary: what a user types, what a user sees.

use std::path::Path;
use std::process::{Command, Output};

fn zoetrope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoetrope"))
        .args(args)
        .output()
        .expect("the zoetrope binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failing command prints exactly one `error:` line mentioning every `needle`, and no panic.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(!err.contains("backtrace"), "backtrace shown: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn world_sample_writes_a_clip_and_prints_a_parsable_caption() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let out = zoetrope(&[
        "world",
        "sample",
        "--seed",
        "7",
        "--size",
        "96x64",
        "--frames",
        "17",
        "-o",
        path_str(&clip),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let caption = stdout(&out).trim().to_string();
    assert!(!caption.is_empty());
    let video = zoetrope_video::read_video(&clip).unwrap();
    assert_eq!((video.width(), video.height(), video.len()), (96, 64, 17));

    // The printed caption describes the clip: the evaluator agrees.
    let out = zoetrope(&["eval", "world", path_str(&clip), "--prompt", &caption]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let total_line = table
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .expect("a total line");
    let pct: f64 = total_line
        .split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|n| n.parse().ok()))
        .expect("a percentage");
    assert!(pct >= 95.0, "ground truth scored {pct}%:\n{table}");
}

#[test]
fn same_seed_same_clip() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.y4m");
    let b = dir.path().join("b.y4m");
    for p in [&a, &b] {
        let out = zoetrope(&[
            "world",
            "sample",
            "--seed",
            "3",
            "--frames",
            "5",
            "-o",
            path_str(p),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn dataset_writes_clips_and_manifest_and_batch_eval_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = zoetrope(&[
        "world",
        "dataset",
        "--count",
        "3",
        "--out",
        path_str(&data),
        "--format",
        "png",
        "--size",
        "64x64",
        "--frames",
        "9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(data.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 3);

    let report = dir.path().join("report.json");
    let out = zoetrope(&[
        "eval",
        "world",
        "--batch",
        path_str(&data.join("manifest.jsonl")),
        "--json",
        path_str(&report),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 3);
    assert!(
        json["summary"]["mean_total"].as_f64().unwrap() >= 0.95,
        "{json}"
    );
}

#[test]
fn unknown_extension_lists_supported_formats() {
    let out = zoetrope(&["world", "sample", "-o", "clip.avi"]);
    assert_clean_error(&out, &[".avi", ".mp4", ".gif"]);
}

#[test]
fn impossible_size_names_the_allowed_range() {
    let out = zoetrope(&[
        "world",
        "sample",
        "--size",
        "4x4",
        "-o",
        "never-written.mp4",
    ]);
    assert_clean_error(&out, &["width", "16 to 4096"]);
    assert!(!Path::new("never-written.mp4").exists());
}

#[test]
fn malformed_size_says_how_to_write_it() {
    let out = zoetrope(&["world", "sample", "--size", "big", "-o", "x.mp4"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("WIDTHxHEIGHT"), "{}", stderr(&out));
}

#[test]
fn zero_frames_is_an_error() {
    let out = zoetrope(&["world", "sample", "--frames", "0", "-o", "never.mp4"]);
    assert_clean_error(&out, &["frame"]);
}

#[test]
fn unreadable_video_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.mp4");
    std::fs::write(&bogus, b"this is not a video").unwrap();
    let out = zoetrope(&[
        "eval",
        "world",
        path_str(&bogus),
        "--prompt",
        "a red ball on black",
    ]);
    assert_clean_error(&out, &["bogus.mp4"]);
    let missing = dir.path().join("missing.mp4");
    let out = zoetrope(&[
        "eval",
        "world",
        path_str(&missing),
        "--prompt",
        "a red ball on black",
    ]);
    assert_clean_error(&out, &["missing.mp4"]);
}

#[test]
fn unparsable_prompt_names_the_unknown_words() {
    let out = zoetrope(&["world", "parse", "a red zeppelin hovers over the moon"]);
    assert_clean_error(&out, &["zeppelin", "hovers"]);
}

/// Without `--model` the built-in world model runs; a build without its weights says what is
/// missing and what to pass instead.
#[test]
fn generate_without_a_model_uses_the_builtin_one_or_says_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let still = dir.path().join("still.png");
    let out = zoetrope(&[
        "generate",
        "a red ball bounces to the right",
        "--frames",
        "1",
        "--steps",
        "1",
        "-o",
        path_str(&still),
    ]);
    if out.status.success() {
        let v = zoetrope_video::read_video(&still).unwrap();
        assert_eq!(v.len(), 1);
    } else {
        assert_clean_error(
            &out,
            &["this build has no built-in world model: \
               crates/zoetrope-models/weights/world/model.{json,safetensors} are missing; \
               pass --model DIR"],
        );
    }
}

fn wan_fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

/// `generate --model` on the tiny random-weight Wan model from the reference's initial latents
/// writes the reference's video (tools/parity made both).
#[test]
fn generate_with_wan_folder_matches_reference_video() {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let refs =
        candle_core::safetensors::load(wan_fixtures().join("pipeline_ref.safetensors"), &dev)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("latents.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), refs["latents_init"].clone())]),
        &latents,
    )
    .unwrap();
    let out = dir.path().join("video.safetensors");
    let model = wan_fixtures().join("tiny");
    let o = zoetrope(&[
        "generate",
        "A cat walks on the grass, realistic style.",
        "--model",
        path_str(&model),
        "--negative-prompt",
        "blurry, low quality, static, distorted",
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "4",
        "--guidance",
        "5",
        "--sampler",
        "unipc",
        "--text-length",
        "32",
        "--latents",
        path_str(&latents),
        "-o",
        path_str(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &dev).unwrap()["video"].clone();
    let want: Tensor = refs["unipc_cfg_video"]
        .squeeze(0)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    let err = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let err = err.to_scalar::<f32>().unwrap();
    assert!(err <= 1e-3, "video differs from the reference by {err}");

    // The same run to MP4 gives a playable clip of the right size.
    let mp4 = dir.path().join("video.mp4");
    let o = zoetrope(&[
        "generate",
        "a cat",
        "--model",
        path_str(&model),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--text-length",
        "32",
        "-o",
        path_str(&mp4),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = zoetrope_video::read_video(&mp4).unwrap();
    assert_eq!((v.width(), v.height(), v.len()), (48, 32, 9));
}

/// `--cache-steps` turns the step cache on and the run says what it skipped; bad values are
/// refused before anything loads.
#[test]
fn generate_with_the_step_cache_reports_the_skipped_steps() {
    let dir = tempfile::tempdir().unwrap();
    let model = wan_fixtures().join("tiny");
    let out = dir.path().join("video.safetensors");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "a cat",
            "--model",
            path_str(&model),
            "--size",
            "48x32",
            "--frames",
            "9",
            "--steps",
            "6",
            "--text-length",
            "32",
            "-o",
            path_str(&out),
        ];
        args.extend_from_slice(extra);
        zoetrope(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("step cache"), "{}", stderr(&o));
    // Every change is below 1e9: the two warm-up steps, then three skipped, then one computed.
    let o = run(&["--cache-steps", "1e9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "step cache: skipped 3 of 6 steps (conditional branch), 3 of 6 (unconditional branch)"
        ),
        "{}",
        stderr(&o)
    );
    let o = run(&["--cache-steps", "1e9", "--cache-max-skips", "1"]);
    assert!(
        stderr(&o).contains("skipped 2 of 6 steps"),
        "{}",
        stderr(&o)
    );

    let o = run(&["--cache-steps=-0.1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("≥ 0"), "{}", stderr(&o));
    let o = run(&["--cache-max-skips", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--cache-steps"), "{}", stderr(&o));
}

#[test]
fn generate_rejects_impossible_wan_sizes_and_bad_latents() {
    let model = wan_fixtures().join("tiny");
    let o = zoetrope(&[
        "generate",
        "a cat",
        "--model",
        path_str(&model),
        "--size",
        "50x32",
        "--frames",
        "9",
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["multiple of 16", "48x32"]);
    let o = zoetrope(&[
        "generate",
        "a cat",
        "--model",
        path_str(&model),
        "--size",
        "48x32",
        "--frames",
        "8",
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["4k+1"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"nope").unwrap();
    let o = zoetrope(&[
        "generate",
        "a cat",
        "--model",
        path_str(&model),
        "--latents",
        path_str(&bad),
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["bad.safetensors"]);
    let o = zoetrope(&[
        "generate",
        "a cat",
        "--model",
        path_str(dir.path()),
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["model_index.json"]);
}

/// A tiny world model folder (random weights; the DiT starts at zero velocity, which is enough to
/// run every path of `generate`): 32x32, 9 frames at 8 fps and 2 steps by default, sizes in
/// multiples of 8.
fn tiny_world_model(dir: &Path) {
    use candle_core::{DType, Device};
    use zoetrope_models::world::dit::WorldDitConfig;
    use zoetrope_models::world::model::{SamplingDefaults, WorldModel, WorldModelManifest, FORMAT};
    use zoetrope_models::world::text::{WorldTextConfig, WorldTokenizer};
    use zoetrope_models::world::vae::WorldVaeConfig;

    let tokenizer =
        WorldTokenizer::new(["a", "red", "blue", "ball", "square", "falls", "on", "black"]);
    let manifest = WorldModelManifest {
        format: FORMAT.to_string(),
        vae: WorldVaeConfig::tiny(),
        dit: WorldDitConfig::tiny(),
        text: WorldTextConfig::tiny(tokenizer.vocab_size()),
        tokenizer: serde_json::from_str(&tokenizer.to_json()).unwrap(),
        defaults: SamplingDefaults {
            width: 32,
            height: 32,
            frames: 9,
            fps: 8.0,
            steps: 2,
            guidance: 3.0,
            shift: 2.0,
            sampler: "unipc".into(),
        },
        training: serde_json::Value::Null,
    };
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    WorldModel::from_var_builder(manifest.clone(), vb).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.json"), manifest.to_json()).unwrap();
}

/// Reads a clip `generate` wrote: (width, height, frames).
fn clip_shape(path: &Path) -> (u32, u32, usize) {
    let v = zoetrope_video::read_video(path).unwrap();
    (v.width(), v.height(), v.len())
}

#[test]
fn generate_with_a_world_model_folder_writes_a_playable_clip() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    tiny_world_model(&model);

    // The model's defaults: 32x32, 9 frames, 8 fps.
    let mp4 = dir.path().join("clip.mp4");
    let o = zoetrope(&[
        "generate",
        "a red ball falls on black",
        "--model",
        path_str(&model),
        "-o",
        path_str(&mp4),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
    assert_eq!(clip_shape(&mp4), (32, 32, 9));
    let v = zoetrope_video::read_video(&mp4).unwrap();
    assert!((v.fps() - 8.0).abs() < 1e-6, "fps {}", v.fps());

    // Flags override the defaults; another aspect ratio, Euler, no guidance, a GIF.
    let gif = dir.path().join("clip.gif");
    let o = zoetrope(&[
        "generate",
        "a blue square",
        "--model",
        path_str(&model),
        "--size",
        "48x32",
        "--frames",
        "5",
        "--fps",
        "10",
        "--sampler",
        "euler",
        "--guidance",
        "1",
        "--seed",
        "3",
        "-o",
        path_str(&gif),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(clip_shape(&gif), (48, 32, 5));

    // One frame with no -o: a still image, out.png.
    let o = Command::new(env!("CARGO_BIN_EXE_zoetrope"))
        .args([
            "generate",
            "a red ball",
            "--model",
            path_str(&model),
            "--frames",
            "1",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(clip_shape(&dir.path().join("out.png")), (32, 32, 1));

    // Unknown words: a warning naming them and the vocabulary, and the clip still comes out.
    let o = zoetrope(&[
        "generate",
        "a red zeppelin",
        "--model",
        path_str(&model),
        "--frames",
        "1",
        "-o",
        path_str(&dir.path().join("z.png")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_default();
    assert!(
        warning.contains("\"zeppelin\"") && warning.contains("ball, black, blue"),
        "{err}"
    );
}

#[test]
fn generate_conditions_the_world_model_on_images_and_clips() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    tiny_world_model(&model);
    let clip = dir.path().join("input.gif");
    let pattern = zoetrope_video::pattern::moving_test_pattern(32, 32, 9, 8.0).unwrap();
    zoetrope_video::write_video(&clip, &pattern).unwrap();
    // A picture of another size: scaled and cropped to an allowed size near its own.
    let image = dir.path().join("input.png");
    let wide = zoetrope_video::pattern::moving_test_pattern(50, 30, 1, 8.0).unwrap();
    zoetrope_video::write_video(&image, &wide).unwrap();

    let run = |name: &str, flags: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["generate", "a red ball", "--model", path_str(&model)];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", path_str(&out)]);
        let o = zoetrope(&args);
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        clip_shape(&out)
    };
    let (c, i) = (path_str(&clip), path_str(&image));
    assert_eq!(run("i2v.gif", &["--image", i]), (48, 32, 9));
    // 9 new frames of which the first 5 are the clip's last 5: 4 added.
    assert_eq!(run("fwd.gif", &["--extend", c]), (32, 32, 9 + 4));
    // Backward: 4 new frames before the clip.
    assert_eq!(
        run("bwd.gif", &["--extend", c, "--backward"]),
        (32, 32, 4 + 9)
    );
    assert_eq!(run("loop.gif", &["--loop"]), (32, 32, 9));
    assert_eq!(
        run("loop_image.gif", &["--loop", "--image", c]),
        (32, 32, 9)
    );
    assert_eq!(
        run("connect.gif", &["--connect", c, c]),
        (32, 32, 9 + 3 + 9)
    );
    assert_eq!(
        run("edit.gif", &["--edit", c, "--strength", "0.5"]),
        (32, 32, 9)
    );
}

#[test]
fn generate_refuses_flags_a_model_family_lacks_and_impossible_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_world_model(dir.path());
    let world = path_str(dir.path());
    let o = zoetrope(&[
        "generate",
        "a ball",
        "--model",
        world,
        "--latents",
        "x.safetensors",
    ]);
    assert_clean_error(&o, &["--latents", "Wan 2.1 folders only"]);
    let o = zoetrope(&[
        "generate",
        "a ball",
        "--model",
        world,
        "-o",
        "raw.safetensors",
    ]);
    assert_clean_error(&o, &[".safetensors", "Wan 2.1 folders only"]);
    let wan = wan_fixtures().join("tiny");
    let o = zoetrope(&["generate", "a ball", "--model", path_str(&wan), "--loop"]);
    assert_clean_error(&o, &["--loop", "world model"]);
    let o = zoetrope(&[
        "generate",
        "a ball",
        "--model",
        world,
        "--size",
        "30x32",
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["multiples of 8", "32x32"]);
    let o = zoetrope(&[
        "generate",
        "a ball",
        "--model",
        world,
        "--frames",
        "8",
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["1 + 4k", "5 or 9"]);
    let o = zoetrope(&[
        "generate",
        "a ball",
        "--model",
        world,
        "--extend",
        "missing.mp4",
        "-o",
        "never.mp4",
    ]);
    assert_clean_error(&o, &["--extend", "missing.mp4"]);
}

/// The percentage on the `total` line of a summary table.
fn total_percent(table: &str) -> f64 {
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap_or_else(|| panic!("a total line in:\n{table}"));
    line.split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("a percentage in {line:?}"))
}

#[test]
fn eval_model_scores_a_world_model_and_saves_its_clips() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    tiny_world_model(&model);
    let saved = dir.path().join("clips");
    let o = zoetrope(&[
        "eval",
        "model",
        "--model",
        path_str(&model),
        "--limit",
        "2",
        "--seed",
        "5",
        "--save-dir",
        path_str(&saved),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    // Settings, then every kind of check the held-out prompts ask for, the total and the time.
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("model: ") && first.contains("2 prompts from held-out"),
        "{table}"
    );
    assert!(
        first.contains("32x32, 9 frames") && first.contains("seeds 5..=6"),
        "{table}"
    );
    for check in ["colour", "shape", "permanence", "motion"] {
        assert!(
            table.lines().any(|l| l.starts_with(check)),
            "no {check} row:\n{table}"
        );
    }
    let total = total_percent(&table);
    assert!((0.0..=100.0).contains(&total), "{table}");
    assert!(table.contains("time generating: median"), "{table}");
    // The tiny model knows few of the prompts' words: one warning says so.
    assert_eq!(stderr(&o).matches("warning:").count(), 1, "{}", stderr(&o));

    // The clips and a list that `eval world --batch` reads, scoring them the same way.
    assert_eq!(clip_shape(&saved.join("000.mp4")), (32, 32, 9));
    assert_eq!(clip_shape(&saved.join("001.mp4")), (32, 32, 9));
    let list = std::fs::read_to_string(saved.join("prompts.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["video"], "001.mp4");
    assert_eq!(lines[1]["seed"], 6);
    let o = zoetrope(&[
        "eval",
        "world",
        "--batch",
        path_str(&saved.join("prompts.jsonl")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    total_percent(&stdout(&o));
}

#[test]
fn eval_model_untrained_reference_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    tiny_world_model(dir.path());
    let run = || {
        zoetrope(&[
            "eval",
            "model",
            "--model",
            path_str(dir.path()),
            "--reference",
            "untrained",
            "--limit",
            "2",
            "--steps",
            "1",
            "--json",
        ])
    };
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    assert_eq!(json["settings"]["reference"], "untrained");
    assert_eq!(json["settings"]["steps"], 1);
    assert_eq!(json["summary"]["clips"], 2);
    let clips = json["clips"].as_array().unwrap();
    assert_eq!(clips.len(), 2);
    assert_eq!(clips[1]["seed"], 1);
    assert!(clips[0]["report"]["checks"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    // Fresh weights from a fixed seed: the same scores every run.
    let again: serde_json::Value = serde_json::from_str(&stdout(&run())).unwrap();
    assert_eq!(json["summary"], again["summary"]);
}

#[test]
fn eval_model_ground_truth_scores_high() {
    // Needs no weights: without --model, the built-in model's defaults (or the stock ones).
    let o = zoetrope(&[
        "eval",
        "model",
        "--reference",
        "ground-truth",
        "--limit",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("ground truth: "), "{table}");
    let total = total_percent(&table);
    assert!(total > 90.0, "ground truth scored {total}%:\n{table}");
}

#[test]
fn eval_model_errors_name_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "# two prompts\na red ball on black\na purple zeppelin\n",
    )
    .unwrap();
    let gt = ["eval", "model", "--reference", "ground-truth"];
    let o = zoetrope(&[&gt[..], &["--prompts", path_str(&prompts)]].concat());
    assert_clean_error(&o, &["prompt 2", "a purple zeppelin", "zeppelin"]);
    let o = zoetrope(&[&gt[..], &["--limit", "0"]].concat());
    assert_clean_error(&o, &["--limit"]);
    let missing = dir.path().join("missing.txt");
    let o = zoetrope(&[&gt[..], &["--prompts", path_str(&missing)]].concat());
    assert_clean_error(&o, &["missing.txt"]);
    tiny_world_model(dir.path());
    let o = zoetrope(&[
        "eval",
        "model",
        "--model",
        path_str(dir.path()),
        "--frames",
        "8",
    ]);
    assert_clean_error(&o, &["1 + 4k", "5 or 9"]);
}

#[test]
fn a_cuda_device_without_the_cuda_build_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("never.mp4");
    let out = zoetrope(&[
        "generate",
        "a red ball",
        "--device",
        "cuda",
        "-o",
        path_str(&out_path),
    ]);
    if cfg!(feature = "cuda") {
        // A CUDA build on a machine without a GPU: the driver cannot open device 0.
        if !out.status.success() {
            assert_clean_error(&out, &["cannot open CUDA device 0"]);
        }
        return;
    }
    assert_clean_error(
        &out,
        &["built without CUDA", "--features cuda", "--device cpu"],
    );
    assert!(!out_path.exists());

    let out = zoetrope(&["generate", "a red ball", "--device", "tpu"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("cpu, cuda or cuda:N"),
        "{err}"
    );
}
