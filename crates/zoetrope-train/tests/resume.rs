//! Training is reproducible from a seed and a stopped run resumes exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use zoetrope_models::world::dit::WorldDitConfig;
use zoetrope_models::world::model::{
    read_model_dir, SamplingDefaults, WorldModel, WorldModelManifest,
};
use zoetrope_models::world::pipeline::WorldPipeline;
use zoetrope_models::world::text::WorldTextConfig;
use zoetrope_models::world::vae::WorldVaeConfig;
use zoetrope_nn::metrics::max_abs_diff;
use zoetrope_train::data::ClipShape;
use zoetrope_train::dit::{train_dit, DitResumeChanges, DitRunState, DitTrainConfig, NewDitRun};
use zoetrope_train::export::export_model;
use zoetrope_train::vae::{train_vae, VaeRunState, VaeTrainConfig};
use zoetrope_train::RunDir;

fn vae_config(steps: usize) -> VaeTrainConfig {
    VaeTrainConfig {
        seed: 3,
        steps,
        batch: 2,
        crop: 16,
        shapes: vec![ClipShape::new(32, 32, 5), ClipShape::new(48, 32, 9)],
        log_every: 1,
        eval_every: 1000,
        checkpoint_every: 1000,
        eval_clips: 1,
        ..VaeTrainConfig::default()
    }
}

fn params(run: &RunDir) -> HashMap<String, Tensor> {
    run.load_tensors(&Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b).unwrap()
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    assert_eq!(a.len(), b.len());
    for (k, va) in a {
        let d = max_diff(va, &b[k]);
        assert_eq!(d, 0.0, "{k} differs by {d}");
    }
}

/// A DiT run small enough for a test: one chunk of 32×32×5 clips, batch 2.
fn tiny_dit_config(steps: usize) -> DitTrainConfig {
    DitTrainConfig {
        seed: 5,
        steps,
        batch: 2,
        shapes: vec![ClipShape::new(32, 32, 5)],
        initial_chunks: 1,
        max_chunks: 1,
        log_every: 1,
        eval_every: 1000,
        checkpoint_every: 1000,
        ..DitTrainConfig::default()
    }
}

fn train_vae_run(dir: &Path, steps: usize, resume: bool) -> RunDir {
    let run = RunDir::create(dir).unwrap();
    train_vae(
        &run,
        vae_config(steps),
        WorldVaeConfig::tiny(),
        resume,
        Some(steps),
        None,
        &mut |_| {},
    )
    .unwrap();
    run
}

/// A new VAE run in `dir` with `config` and `model`, trained to its end.
fn new_vae_run(
    dir: &Path,
    config: VaeTrainConfig,
    model: WorldVaeConfig,
) -> candle_core::Result<(RunDir, VaeRunState)> {
    let run = RunDir::create(dir)?;
    let state = train_vae(&run, config, model, false, None, None, &mut |_| {})?;
    Ok((run, state))
}

/// A new DiT run in `dir` on the latents of `vae` (a VAE run or a model folder), from random
/// weights or warm-started from `init`, trained to its end.
fn new_dit_run(
    dir: &Path,
    config: DitTrainConfig,
    dit: WorldDitConfig,
    vae: &Path,
    init: Option<&Path>,
) -> candle_core::Result<(RunDir, DitRunState)> {
    let run = RunDir::create(dir)?;
    let state = train_dit(
        &run,
        Some(NewDitRun {
            config,
            dit,
            text: WorldTextConfig::tiny(1),
            vae,
            init_from: init,
        }),
        DitResumeChanges::default(),
        None,
        None,
        &mut |_| {},
    )?;
    Ok((run, state))
}

/// Exports the VAE at `vae` and the DiT run `dit` to `out` with default sampling settings.
fn export(vae: &Path, dit: &RunDir, out: &Path, dtype: DType) -> WorldModelManifest {
    export_model(
        vae,
        dit,
        out,
        dtype,
        SamplingDefaults::default(),
        serde_json::json!({}),
    )
    .unwrap()
}

#[test]
fn vae_training_is_seeded_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = train_vae_run(&tmp.path().join("a"), 4, false);
    let again = train_vae_run(&tmp.path().join("b"), 4, false);
    assert_same(&params(&straight), &params(&again));
    train_vae_run(&tmp.path().join("c"), 2, false);
    let resumed = train_vae_run(&tmp.path().join("c"), 4, true);
    assert_same(&params(&straight), &params(&resumed));
    // A second run over the same directory without --resume is refused.
    let err = train_vae(
        &resumed,
        vae_config(4),
        WorldVaeConfig::tiny(),
        false,
        None,
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn dit_training_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = train_vae_run(&tmp.path().join("vae"), 1, false);
    let run_dit = |dir: &str, steps: usize, resume: bool, foreground_weight: f64| {
        let run = RunDir::create(&tmp.path().join(dir)).unwrap();
        let new = (!resume).then(|| NewDitRun {
            config: DitTrainConfig {
                foreground_weight,
                ..tiny_dit_config(steps)
            },
            dit: WorldDitConfig::tiny(),
            text: WorldTextConfig::tiny(1),
            vae: vae.path(),
            init_from: None,
        });
        let state = train_dit(
            &run,
            new,
            DitResumeChanges {
                steps: Some(steps),
                shift: None,
            },
            None,
            None,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(state.step, steps);
        run
    };
    let straight = run_dit("a", 3, false, 1.0);
    run_dit("b", 1, false, 1.0);
    let resumed = run_dit("b", 3, true, 1.0);
    assert_same(&params(&straight), &params(&resumed));
    // Weighting the objects' cells (clips re-rendered from their seeds every step) changes
    // what is learnt, and still resumes exactly.
    let weighted = run_dit("c", 3, false, 3.0);
    run_dit("d", 1, false, 3.0);
    assert_same(&params(&weighted), &params(&run_dit("d", 3, true, 3.0)));
    let (a, w) = (params(&straight), params(&weighted));
    let moved = a
        .iter()
        .filter(|(k, _)| k.starts_with("param."))
        .map(|(k, v)| max_diff(v, &w[k]))
        .fold(0f32, f32::max);
    assert!(moved > 0.0, "the foreground weight changed nothing");
}

#[test]
fn dit_warm_start_copies_averaged_weights_and_refines_the_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = train_vae_run(&tmp.path().join("vae"), 1, false);
    let train = |dir: &str, config: DitTrainConfig, dit: WorldDitConfig, init: Option<&RunDir>| {
        new_dit_run(
            &tmp.path().join(dir),
            config,
            dit,
            vae.path(),
            init.map(RunDir::path),
        )
        .map(|(run, _)| run)
    };
    let source = train("source", tiny_dit_config(2), WorldDitConfig::tiny(), None).unwrap();
    // One step at learning rate 0: the new run's weights are the warm start's.
    let mut frozen = tiny_dit_config(1);
    frozen.optim.lr = 0.0;
    let finer = WorldDitConfig {
        patch: [1, 1, 1],
        ..WorldDitConfig::tiny()
    };
    let warm = train("warm", frozen.clone(), finer.clone(), Some(&source)).unwrap();
    let src = params(&source);
    let got = params(&warm);
    let state: DitRunState = warm.load_state().unwrap();
    assert_eq!(
        state.init_from.as_deref(),
        Some(source.path().to_str().unwrap())
    );
    let mut copied = 0;
    for (k, v) in &got {
        let Some(name) = k.strip_prefix("param.") else {
            continue;
        };
        let avg = &src[&format!("ema.{name}")];
        let want = match name {
            "dit.patch_embed.weight" => {
                zoetrope_train::dit::shrink_patch_in(avg, finer.in_channels(), [1, 2, 2], [1, 1, 1])
                    .unwrap()
            }
            "dit.proj_out.weight" | "dit.proj_out.bias" => zoetrope_train::dit::shrink_patch_out(
                avg,
                finer.latent_channels,
                [1, 2, 2],
                [1, 1, 1],
            )
            .unwrap(),
            _ => avg.clone(),
        };
        assert_eq!(v.dims(), want.dims(), "{name}");
        assert!(max_diff(v, &want) < 1e-6, "{name} is not the warm start's");
        copied += 1;
    }
    assert!(copied > 20, "{copied}");
    // A DiT that differs in more than the patch is refused, naming the source.
    let wider = WorldDitConfig {
        dim: 64,
        ..WorldDitConfig::tiny()
    };
    let err = train("wide", frozen.clone(), wider, Some(&source)).unwrap_err();
    assert!(err.to_string().contains("--init-from"), "{err}");
    // So is a coarser patch.
    let coarser = WorldDitConfig {
        patch: [1, 4, 4],
        ..WorldDitConfig::tiny()
    };
    let err = train("coarse", frozen.clone(), coarser, Some(&source)).unwrap_err();
    assert!(err.to_string().contains("must divide"), "{err}");
    // A deeper DiT keeps the source's blocks and appends new ones that start as the identity,
    // so it computes the source's velocities; a shallower one is refused.
    let deeper = WorldDitConfig {
        depth: WorldDitConfig::tiny().depth + 2,
        ..WorldDitConfig::tiny()
    };
    let grown = train("deep", frozen.clone(), deeper, Some(&source)).unwrap();
    let velocity = |run: &RunDir, name: &str| {
        let dir = tmp.path().join(name);
        export(vae.path(), run, &dir, DType::F32);
        let model = WorldModel::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let pipe = WorldPipeline::new(model);
        let text = pipe
            .encode_text("a red ball on a black background", "", 4.0)
            .unwrap();
        // Fixed latents [1, 4, 2, 4, 4] (the tiny VAE's channels; 2 latent frames).
        let x = (Tensor::arange(0f32, 128.0, &Device::Cpu).unwrap() * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((1, 4, 2, 4, 4))
            .unwrap();
        pipe.velocity(&x, 0.6, &text, 4.0, None).unwrap()
    };
    let v_src = velocity(&source, "source-model");
    let v_deep = velocity(&grown, "deep-model");
    assert!(
        max_diff(&v_src, &v_deep) < 1e-5,
        "{}",
        max_diff(&v_src, &v_deep)
    );
    // So does one whose added blocks have no cross-attention (they have no such weights); one
    // that would drop a source block's cross-attention is refused.
    let tiny = WorldDitConfig::tiny();
    let self_only = WorldDitConfig {
        depth: tiny.depth + 1,
        cross_attn_blocks: Some(tiny.depth),
        ..tiny.clone()
    };
    let grown_self = train("deep-self", frozen.clone(), self_only, Some(&source)).unwrap();
    let v_self = velocity(&grown_self, "deep-self-model");
    assert!(
        max_diff(&v_src, &v_self) < 1e-5,
        "{}",
        max_diff(&v_src, &v_self)
    );
    let names = params(&grown_self);
    let last = format!("param.dit.blocks.{}.", tiny.depth);
    assert!(names.keys().any(|k| k.starts_with(&last)), "no added block");
    assert!(
        !names
            .keys()
            .any(|k| k.starts_with(&last) && k.contains("cross")),
        "the added block has cross-attention weights"
    );
    let dropped = WorldDitConfig {
        depth: tiny.depth + 1,
        cross_attn_blocks: Some(tiny.depth - 1),
        ..tiny.clone()
    };
    let err = train("dropped", frozen.clone(), dropped, Some(&source)).unwrap_err();
    assert!(err.to_string().contains("--init-from"), "{err}");
    let shallower = WorldDitConfig {
        depth: 1,
        ..WorldDitConfig::tiny()
    };
    let err = train("shallow", frozen, shallower, Some(&source)).unwrap_err();
    assert!(err.to_string().contains("--init-from"), "{err}");
}

#[test]
fn freezing_the_encoder_keeps_its_averaged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train_vae_run(&tmp.path().join("a"), 3, false);
    let before = params(&run);
    let frozen = VaeTrainConfig {
        freeze_encoder: true,
        ..vae_config(5)
    };
    train_vae(
        &run,
        frozen,
        WorldVaeConfig::tiny(),
        true,
        Some(5),
        None,
        &mut |_| {},
    )
    .unwrap();
    let after = params(&run);
    let mut decoder_moved = false;
    for (k, v) in &after {
        let Some(name) = k.strip_prefix("param.") else {
            continue;
        };
        if name.starts_with("encoder.") {
            // Live encoder = its average from before freezing, and its average no longer moves.
            let ema_before = &before[&format!("ema.{name}")];
            assert_eq!(max_diff(v, ema_before), 0.0, "{name}");
            assert_eq!(
                max_diff(&after[&format!("ema.{name}")], ema_before),
                0.0,
                "{name}"
            );
        } else if max_diff(v, &before[k]) > 0.0 {
            decoder_moved = true;
        }
    }
    assert!(decoder_moved);
}

/// A decoder can be polished from an exported model folder alone (the run that made its VAE
/// gone): the new run starts from the folder's VAE with the encoder frozen at exactly its
/// weights, so the latents a DiT was trained on do not change, and only the decoder moves.
#[test]
fn decoder_polishes_from_an_exported_model() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = train_vae_run(&tmp.path().join("vae"), 1, false);
    let (dit, _) = new_dit_run(
        &tmp.path().join("dit"),
        tiny_dit_config(1),
        WorldDitConfig::tiny(),
        vae.path(),
        None,
    )
    .unwrap();
    let folder = tmp.path().join("model");
    export(vae.path(), &dit, &folder, DType::F16);
    let (_, shipped) = read_model_dir(&folder, DType::F32, &Device::Cpu).unwrap();
    let polish = VaeTrainConfig {
        freeze_encoder: true,
        init_from: Some(folder.display().to_string()),
        ..vae_config(2)
    };
    // The shape comes from the folder: a mismatching one passed here is ignored.
    let other = WorldVaeConfig {
        latent_channels: WorldVaeConfig::tiny().latent_channels + 4,
        ..WorldVaeConfig::tiny()
    };
    let (run, state) = new_vae_run(&tmp.path().join("polish"), polish, other).unwrap();
    assert_eq!(
        state.model,
        read_model_dir(&folder, DType::F32, &Device::Cpu)
            .unwrap()
            .0
            .vae
    );
    let got = params(&run);
    let mut decoder_moved = false;
    for (name, v) in shipped
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("vae.")?, v)))
    {
        let live = &got[&format!("param.{name}")];
        if name.starts_with("encoder.") {
            assert_eq!(max_diff(live, v), 0.0, "{name}");
            assert_eq!(max_diff(&got[&format!("ema.{name}")], v), 0.0, "{name}");
        } else if max_diff(live, v) > 0.0 {
            decoder_moved = true;
        }
    }
    assert!(decoder_moved);
    // The polished decoder exports beside the same DiT, the encoder unchanged.
    let again = tmp.path().join("again");
    export(run.path(), &dit, &again, DType::F16);
    let (manifest, out) = read_model_dir(&again, DType::F32, &Device::Cpu).unwrap();
    for (k, v) in shipped
        .iter()
        .filter(|(k, _)| k.starts_with("vae.encoder."))
    {
        assert_eq!(max_diff(v, &out[k]), 0.0, "{k}");
    }
    // Its provenance names the folder it started from.
    let from = &manifest.training["vae"]["init_from"]["from"];
    assert_eq!(from.as_str(), Some(folder.display().to_string().as_str()));
    // Freezing needs weights to freeze; a missing source is named.
    let bare = VaeTrainConfig {
        freeze_encoder: true,
        ..vae_config(1)
    };
    let err = new_vae_run(&tmp.path().join("bare"), bare, WorldVaeConfig::tiny()).unwrap_err();
    assert!(err.to_string().contains("--init-from"), "{err}");
    let missing = tmp.path().join("no-such-model");
    let missing_source = VaeTrainConfig {
        init_from: Some(missing.display().to_string()),
        ..vae_config(1)
    };
    let err = new_vae_run(
        &tmp.path().join("missing"),
        missing_source,
        WorldVaeConfig::tiny(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no-such-model"), "{err}");
}

/// A run can start from an exported model folder alone (its VAE makes the latents, its DiT and
/// text encoder are the starting weights, its latent scale is kept), as when the runs that made
/// the shipped model are gone; and that run exports again with the folder as its VAE.
#[test]
fn dit_fine_tunes_from_an_exported_model() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = train_vae_run(&tmp.path().join("vae"), 1, false);
    let train = |dir: &str, config: DitTrainConfig, vae: &Path, init| {
        new_dit_run(
            &tmp.path().join(dir),
            config,
            WorldDitConfig::tiny(),
            vae,
            init,
        )
    };
    let (source, _) = train("source", tiny_dit_config(2), vae.path(), None).unwrap();
    let folder = tmp.path().join("model");
    let exported = export_model(
        vae.path(),
        &source,
        &folder,
        DType::F32,
        SamplingDefaults::default(),
        serde_json::json!({"note": "test"}),
    )
    .unwrap();
    let mut frozen = tiny_dit_config(1);
    frozen.optim.lr = 0.0;
    let (tuned, state) = train("tuned", frozen, &folder, Some(&folder)).unwrap();
    assert_eq!(state.vae.scaling_factor, exported.vae.scaling_factor);
    assert_eq!(state.init_provenance["model"], folder.display().to_string());
    let (_, weights) = read_model_dir(&folder, DType::F32, &Device::Cpu).unwrap();
    let got = params(&tuned);
    let mut copied = 0;
    for (k, v) in &got {
        if let Some(name) = k.strip_prefix("param.") {
            assert_eq!(max_diff(v, &weights[name]), 0.0, "{name}");
            copied += 1;
        }
    }
    assert!(copied > 20, "{copied}");
    // Exporting the fine-tuned run with the folder as its VAE keeps the folder's VAE weights.
    let again = tmp.path().join("again");
    let manifest = export(&folder, &tuned, &again, DType::F32);
    assert_eq!(manifest.vae, exported.vae);
    let (_, out) = read_model_dir(&again, DType::F32, &Device::Cpu).unwrap();
    for (k, v) in weights.iter().filter(|(k, _)| k.starts_with("vae.")) {
        assert_eq!(max_diff(v, &out[k]), 0.0, "{k}");
    }
    // A folder without a model and a run are told apart by name.
    let err = train("bad", tiny_dit_config(1), &tmp.path().join("nothing"), None).unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");
}
