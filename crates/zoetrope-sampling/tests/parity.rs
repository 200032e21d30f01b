//! Parity with diffusers 0.42.1: schedules and trajectories from
//! `tests/fixtures/wan/scheduler_ref.safetensors` and `pipeline_ref.safetensors`, made by
//! `tools/parity/make_wan_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use zoetrope_sampling::{SamplerKind, Scheduler, SchedulerConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fixture prefix → config folder under `schedulers/`.
fn config_dir(prefix: &str) -> &'static str {
    match prefix {
        "unipc" => "unipc",
        "flow_match_euler" => "flow_match_euler",
        other => panic!("no config for {other}"),
    }
}

fn scheduler(prefix: &str) -> Box<dyn Scheduler> {
    let path = fixtures()
        .join("schedulers")
        .join(config_dir(prefix))
        .join("scheduler_config.json");
    SchedulerConfig::from_file(&path).unwrap().build().unwrap()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ: {a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

/// Compares a scheduler's schedule with stored `timesteps`/`sigmas` tensors; returns the max
/// relative errors.
fn check_schedule(s: &dyn Scheduler, tensors: &HashMap<String, Tensor>, key: &str) -> (f64, f64) {
    let ts_ref = &tensors[&format!("{key}_timesteps")];
    let sig_ref = vec_f64(&tensors[&format!("{key}_sigmas")]);
    if ts_ref.dtype() == DType::I64 {
        // UniPC: integer timesteps must be equal exactly.
        let want = ts_ref.to_vec1::<i64>().unwrap();
        let got: Vec<i64> = s.timesteps().iter().map(|&t| t as i64).collect();
        assert!(s.timesteps().iter().all(|t| t.fract() == 0.0));
        assert_eq!(got, want, "{key} timesteps");
    }
    let ts_err = max_rel(s.timesteps(), &vec_f64(ts_ref));
    let got_sig: Vec<f64> = s.sigmas().iter().map(|&x| x as f64).collect();
    let sig_err = max_rel(&got_sig, &sig_ref);
    assert!(ts_err <= 1e-6, "{key} timesteps: rel err {ts_err}");
    assert!(sig_err <= 1e-6, "{key} sigmas: rel err {sig_err}");
    (ts_err, sig_err)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check_trajectory(prefix: &str, n: usize) {
    let t = load("scheduler_ref.safetensors");
    let key = format!("{prefix}_n{n}");
    let mut s = scheduler(prefix);
    s.set_timesteps(n).unwrap();
    let (ts_err, sig_err) = check_schedule(s.as_ref(), &t, &key);
    let mut sample = t[&format!("{key}_sample_init")].clone();
    let mut worst: f64 = 0.0;
    for i in 0..n {
        let model_out = &t[&format!("{key}_model_out_{i}")];
        sample = s.step(model_out, i, &sample).unwrap();
        assert_eq!(sample.dtype(), DType::F32);
        let want = &t[&format!("{key}_sample_{i}")];
        let err = max_abs(&sample, want);
        worst = worst.max(err);
        assert!(err <= 1e-5, "{key} step {i}: max abs err {err}");
    }
    eprintln!(
        "{key}: timesteps rel err {ts_err:.3e}, sigmas rel err {sig_err:.3e}, trajectory max abs err {worst:.3e}"
    );
}

#[test]
fn unipc_n4_trajectory() {
    check_trajectory("unipc", 4);
}

#[test]
fn unipc_n10_trajectory() {
    check_trajectory("unipc", 10);
}

#[test]
fn euler_n4_trajectory() {
    check_trajectory("flow_match_euler", 4);
}

#[test]
fn euler_n10_trajectory() {
    check_trajectory("flow_match_euler", 10);
}

#[test]
fn n50_schedules() {
    let t = load("scheduler_ref.safetensors");
    for prefix in ["unipc", "flow_match_euler"] {
        let mut s = scheduler(prefix);
        s.set_timesteps(50).unwrap();
        let (a, b) = check_schedule(s.as_ref(), &t, &format!("{prefix}_n50"));
        eprintln!("{prefix}_n50: timesteps rel err {a:.3e}, sigmas rel err {b:.3e}");
    }
}

#[test]
fn pipeline_schedules() {
    let t = load("pipeline_ref.safetensors");
    let steps = 4;
    for prefix in ["unipc", "flow_match_euler"] {
        for cfg in ["nocfg", "cfg"] {
            let mut s = scheduler(prefix);
            s.set_timesteps(steps).unwrap();
            let (a, b) = check_schedule(s.as_ref(), &t, &format!("{prefix}_{cfg}"));
            eprintln!("pipeline {prefix}_{cfg}: timesteps rel err {a:.3e}, sigmas rel err {b:.3e}");
        }
    }
}

#[test]
fn euler_low_end_is_shifted_twice() {
    // README: shift 3, 4 steps → [1000, 857.69, 602.15, 8.93].
    let mut s = scheduler("flow_match_euler");
    s.set_timesteps(4).unwrap();
    let want = [1000.0, 857.69, 602.15, 8.93];
    for (got, want) in s.timesteps().iter().zip(want) {
        assert!((got - want).abs() < 0.01, "{:?}", s.timesteps());
    }
}

#[test]
fn unipc_last_step_is_the_data_prediction() {
    // With σ_next = 0 and order 1 the last step returns x0 = x_corrected − σ·v. With a single
    // step there is no corrector, so x0 = x − σ_0·v.
    let mut s = scheduler("unipc");
    s.set_timesteps(1).unwrap();
    assert_eq!(s.timesteps(), &[999.0]);
    let x = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
    let v = Tensor::ones(12, DType::F32, &Device::Cpu).unwrap();
    let out = s.step(&v, 0, &x).unwrap();
    let sigma = s.sigmas()[0] as f64;
    let want = x.affine(1.0, -sigma).unwrap();
    assert!(max_abs(&out, &want) < 1e-6);
    assert!(out.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn unipc_rejects_out_of_order_steps() {
    let mut s = scheduler("unipc");
    s.set_timesteps(4).unwrap();
    let x = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    s.step(&x, 0, &x).unwrap();
    let err = s.step(&x, 2, &x).unwrap_err().to_string();
    assert!(err.contains("expects step 1"), "{err}");
    // set_timesteps starts over.
    s.set_timesteps(4).unwrap();
    s.step(&x, 0, &x).unwrap();
}

#[test]
fn step_before_set_timesteps_is_an_error() {
    for prefix in ["unipc", "flow_match_euler"] {
        let mut s = scheduler(prefix);
        let x = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let err = s.step(&x, 0, &x).unwrap_err().to_string();
        assert!(err.contains("set_timesteps"), "{err}");
        assert!(s.set_timesteps(0).is_err());
    }
}

#[test]
fn add_noise_is_the_flow_interpolation() {
    for prefix in ["unipc", "flow_match_euler"] {
        let mut s = scheduler(prefix);
        s.set_timesteps(4).unwrap();
        let x0 = Tensor::new(&[1f32, -2., 3.], &Device::Cpu).unwrap();
        let noise = Tensor::new(&[0.5f32, 0.25, -1.], &Device::Cpu).unwrap();
        for i in 0..=4 {
            let sigma = s.sigmas()[i] as f64;
            let got = s.add_noise(&x0, &noise, i).unwrap();
            let want = ((x0.affine(1.0 - sigma, 0.0).unwrap()) + noise.affine(sigma, 0.0).unwrap())
                .unwrap();
            assert!(max_abs(&got, &want) < 1e-6);
        }
        // σ at the end of the schedule is 0: the clean sample.
        let clean = s.add_noise(&x0, &noise, 4).unwrap();
        assert!(max_abs(&clean, &x0) == 0.0);
        assert!(s.add_noise(&x0, &noise, 5).is_err());
    }
}

#[test]
fn kinds_and_timestep_lookup() {
    let mut u = scheduler("unipc");
    let mut e = scheduler("flow_match_euler");
    assert_eq!(u.kind(), SamplerKind::UniPc);
    assert_eq!(e.kind(), SamplerKind::Euler);
    u.set_timesteps(4).unwrap();
    e.set_timesteps(4).unwrap();
    assert_eq!(u.index_for_timestep(750.0), Some(2));
    assert_eq!(u.index_for_timestep(751.0), None);
    assert_eq!(e.index_for_timestep(e.timesteps()[3]), Some(3));
}
