//! Reading diffusers scheduler configs: the fixtures' configs, overrides, and errors.

use std::path::PathBuf;

use zoetrope_sampling::{SamplerKind, SchedulerConfig, SchedulerError};

fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/wan/schedulers")
        .join(name)
        .join("scheduler_config.json")
}

#[test]
fn reads_fixture_configs() {
    let u = SchedulerConfig::from_file(config_path("unipc")).unwrap();
    assert_eq!(u.kind(), SamplerKind::UniPc);
    assert_eq!(u.shift(), 3.0);
    let SchedulerConfig::UniPc(c) = &u else {
        panic!("{u:?}")
    };
    assert_eq!(c.solver_order, 2);
    assert!(c.lower_order_final && c.use_flow_sigmas && c.predict_x0);

    let e = SchedulerConfig::from_file(config_path("flow_match_euler")).unwrap();
    assert_eq!(e.kind(), SamplerKind::Euler);
    assert_eq!(e.shift(), 3.0);
}

#[test]
fn the_tiny_pipeline_ships_unipc() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/wan/tiny/scheduler/scheduler_config.json");
    let c = SchedulerConfig::from_file(path).unwrap();
    assert_eq!(c.kind(), SamplerKind::UniPc);
}

#[test]
fn overrides_switch_kind_and_shift() {
    let u = SchedulerConfig::from_file(config_path("unipc")).unwrap();
    let e = SchedulerConfig::from_file(config_path("flow_match_euler")).unwrap();

    // Switching kind keeps the shift; the result equals the other fixture config.
    assert_eq!(u.clone().with_kind(SamplerKind::Euler), e);
    let SchedulerConfig::UniPc(back) = e.clone().with_kind(SamplerKind::UniPc) else {
        panic!()
    };
    let SchedulerConfig::UniPc(orig) = &u else {
        panic!()
    };
    assert_eq!(&back, orig);

    let o = u
        .clone()
        .with_overrides(Some(SamplerKind::Euler), Some(5.0));
    assert_eq!(o.kind(), SamplerKind::Euler);
    assert_eq!(o.shift(), 5.0);
    assert_eq!(u.clone().with_overrides(None, None), u);

    let mut s = o.build().unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps()[0], 1000.0);

    // A bad shift is rejected when building.
    let err = u.with_shift(0.0).build().unwrap_err().to_string();
    assert!(err.contains("shift"), "{err}");
}

#[test]
fn sampler_kind_parses_cli_names() {
    assert_eq!("euler".parse::<SamplerKind>().unwrap(), SamplerKind::Euler);
    assert_eq!("UniPC".parse::<SamplerKind>().unwrap(), SamplerKind::UniPc);
    assert_eq!(SamplerKind::UniPc.to_string(), "unipc");
    let err = "ddim".parse::<SamplerKind>().unwrap_err();
    assert!(err.contains("euler, unipc"), "{err}");
}

#[test]
fn unknown_class_names_the_file_and_the_supported_classes() {
    let dir = tempdir();
    let path = dir.join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 1000}"#,
    )
    .unwrap();
    let err = SchedulerConfig::from_file(&path).unwrap_err();
    assert!(
        matches!(err, SchedulerError::UnknownClass { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("DDIMScheduler"), "{msg}");
    assert!(msg.contains("UniPCMultistepScheduler"), "{msg}");
    assert!(msg.contains("FlowMatchEulerDiscreteScheduler"), "{msg}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_class_is_an_error() {
    let err = SchedulerConfig::from_json_str(r#"{"shift": 3.0}"#, "x.json").unwrap_err();
    assert!(
        matches!(err, SchedulerError::MissingClass { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("x.json"));
}

#[test]
fn malformed_json_names_the_file() {
    let dir = tempdir();
    let path = dir.join("scheduler_config.json");
    std::fs::write(&path, r#"{"_class_name": "UniPCMultistepScheduler", "#).unwrap();
    let err = SchedulerConfig::from_file(&path).unwrap_err();
    assert!(matches!(err, SchedulerError::Json { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("malformed"), "{msg}");

    // A field of the wrong type is malformed too.
    let err = SchedulerConfig::from_json_str(
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": "three"}"#,
        "y.json",
    )
    .unwrap_err();
    assert!(matches!(err, SchedulerError::Json { .. }), "{err:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_file_is_an_io_error() {
    let err = SchedulerConfig::from_file("/nonexistent/scheduler_config.json").unwrap_err();
    assert!(matches!(err, SchedulerError::Io { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("/nonexistent/scheduler_config.json"));
}

#[test]
fn unsupported_settings_are_rejected() {
    // diffusers' UniPC default is epsilon prediction, which this crate does not implement.
    let err =
        SchedulerConfig::from_json_str(r#"{"_class_name": "UniPCMultistepScheduler"}"#, "z.json")
            .unwrap_err();
    assert!(matches!(err, SchedulerError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("prediction_type"), "{err}");

    let err = SchedulerConfig::from_json_str(
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true}"#,
        "z.json",
    )
    .unwrap_err();
    assert!(err.to_string().contains("use_dynamic_shifting"), "{err}");

    let err = SchedulerConfig::from_json_str(
        r#"{"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
            "use_flow_sigmas": true, "solver_type": "midpoint"}"#,
        "z.json",
    )
    .unwrap_err();
    assert!(matches!(err, SchedulerError::Json { .. }), "{err:?}");
}

/// A fresh directory under the target's temp folder (no extra dev-dependency).
fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "zoetrope-sampling-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
