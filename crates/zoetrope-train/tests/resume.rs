//! Training is reproducible from a seed and a stopped run resumes exactly.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use zoetrope_models::world::dit::WorldDitConfig;
use zoetrope_models::world::text::WorldTextConfig;
use zoetrope_models::world::vae::WorldVaeConfig;
use zoetrope_nn::metrics::max_abs_diff;
use zoetrope_train::data::ClipShape;
use zoetrope_train::dit::{train_dit, DitResumeChanges, DitTrainConfig, NewDitRun};
use zoetrope_train::vae::{train_vae, VaeTrainConfig};
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

fn train_vae_run(dir: &std::path::Path, steps: usize, resume: bool) -> RunDir {
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
    let run_dit = |dir: &str, steps: usize, resume: bool| {
        let run = RunDir::create(&tmp.path().join(dir)).unwrap();
        let new = (!resume).then(|| NewDitRun {
            config: tiny_dit_config(steps),
            dit: WorldDitConfig::tiny(),
            text: WorldTextConfig::tiny(1),
            vae_run: &vae,
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
    let straight = run_dit("a", 3, false);
    run_dit("b", 1, false);
    let resumed = run_dit("b", 3, true);
    assert_same(&params(&straight), &params(&resumed));
}

#[test]
fn dit_warm_start_copies_averaged_weights_and_refines_the_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = train_vae_run(&tmp.path().join("vae"), 1, false);
    let train = |dir: &str, config: DitTrainConfig, dit: WorldDitConfig, init: Option<&RunDir>| {
        let run = RunDir::create(&tmp.path().join(dir)).unwrap();
        train_dit(
            &run,
            Some(NewDitRun {
                config,
                dit,
                text: WorldTextConfig::tiny(1),
                vae_run: &vae,
                init_from: init,
            }),
            DitResumeChanges::default(),
            None,
            None,
            &mut |_| {},
        )
        .map(|_| run)
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
    let state: zoetrope_train::dit::DitRunState = warm.load_state().unwrap();
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
    let err = train("coarse", frozen, coarser, Some(&source)).unwrap_err();
    assert!(err.to_string().contains("must divide"), "{err}");
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
