//! `zoetrope train vae`, `train dit`, `train export` end to end on tiny models, then `generate`
//! with the exported directory.

use std::path::Path;
use std::process::{Command, Output};

fn zoetrope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoetrope"))
        .args(args)
        .output()
        .expect("the zoetrope binary runs")
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "command failed: {err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// `train export` of a VAE (run or model folder) and a DiT run, with `extra` arguments; returns
/// the manifest.
fn export(vae: &Path, dit: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "train",
        "export",
        "--vae",
        p(vae),
        "--dit",
        p(dit),
        "-o",
        p(out),
    ];
    args.extend(extra);
    ok(&zoetrope(&args));
    serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap()
}

#[test]
fn train_resume_export_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let vae_cfg = tmp.path().join("vae.json");
    std::fs::write(
        &vae_cfg,
        r#"{"in_channels":3,"latent_channels":4,"patch_size":1,"channels":[8,16,16],
            "spatial_down":[true,true],"temporal_down":[true,true],"encoder_blocks":1,
            "decoder_blocks":1}"#,
    )
    .unwrap();
    let dit_cfg = tmp.path().join("dit.json");
    std::fs::write(
        &dit_cfg,
        r#"{"latent_channels":4,"patch":[1,2,2],"dim":48,"depth":2,"heads":2,"text_dim":128,
            "mlp_ratio":2.0,"freq_dim":32}"#,
    )
    .unwrap();
    let vae = tmp.path().join("vae");
    let dit = tmp.path().join("dit");
    let model = tmp.path().join("model");
    let (vae_s, vae_cfg_s) = (p(&vae), p(&vae_cfg));
    let vae_args = |steps: &'static str| -> Vec<&str> {
        vec![
            "train", "vae", "--out", vae_s, "--steps", steps, "--batch", "2", "--crop", "16",
            "--config", vae_cfg_s,
        ]
    };
    let mut first = vae_args("3");
    first.extend(["--stop-at", "2"]);
    let msg = ok(&zoetrope(&first));
    assert!(msg.contains("VAE: 2 steps"), "{msg}");
    // Starting again over a run is refused; --resume continues it.
    let again = zoetrope(&vae_args("3"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let mut resume = vae_args("3");
    resume.push("--resume");
    let msg = ok(&zoetrope(&resume));
    assert!(msg.contains("VAE: 3 steps"), "{msg}");
    let log = std::fs::read_to_string(vae.join("log.jsonl")).unwrap();
    assert!(log.contains("eval_psnr_db"), "{log}");

    ok(&zoetrope(&[
        "train",
        "dit",
        "--vae",
        p(&vae),
        "--out",
        p(&dit),
        "--steps",
        "2",
        "--batch",
        "2",
        "--max-chunks",
        "1",
        "--config",
        p(&dit_cfg),
    ]));
    let msg = ok(&zoetrope(&[
        "train",
        "dit",
        "--out",
        p(&dit),
        "--resume",
        "--steps",
        "3",
    ]));
    assert!(msg.contains("DiT: 3 steps"), "{msg}");
    let manifest = export(&vae, &dit, &model, &[]);
    assert_eq!(manifest["training"]["dit"]["steps"], 3, "{manifest}");
    assert_eq!(manifest["defaults"]["guidance"], 4.0, "{manifest}");

    let clip = tmp.path().join("clip.gif");
    ok(&zoetrope(&[
        "generate",
        "a red circle falls on a black background",
        "--model",
        p(&model),
        "--size",
        "32x32",
        "--frames",
        "5",
        "--steps",
        "2",
        "-o",
        p(&clip),
    ]));
    let video = zoetrope_video::read_video(&clip).unwrap();
    assert_eq!((video.width(), video.height(), video.len()), (32, 32, 5));

    // Fine-tuning needs only the exported folder: its VAE, its DiT and text encoder.
    let tuned = tmp.path().join("tuned");
    let tuned_model = tmp.path().join("tuned-model");
    ok(&zoetrope(&[
        "train",
        "dit",
        "--vae",
        p(&model),
        "--init-from",
        p(&model),
        "--out",
        p(&tuned),
        "--steps",
        "1",
        "--batch",
        "2",
        "--max-chunks",
        "1",
        "--config",
        p(&dit_cfg),
        "--timesteps",
        "uniform",
        "--timestep-shift",
        "1",
    ]));
    let state = std::fs::read_to_string(tuned.join("state.json")).unwrap();
    assert!(state.contains("\"uniform\""), "{state}");
    let manifest = export(&model, &tuned, &tuned_model, &["--guidance", "2.5"]);
    assert!(
        manifest["training"]["dit"]["init_from"].is_object(),
        "{manifest}"
    );
    assert_eq!(manifest["defaults"]["guidance"], 2.5, "{manifest}");
    let bad = zoetrope(&[
        "train",
        "export",
        "--vae",
        p(&model),
        "--dit",
        p(&tuned),
        "-o",
        p(&tmp.path().join("bad")),
        "--guidance",
        "0",
    ]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("positive number"), "{msg}");
}
