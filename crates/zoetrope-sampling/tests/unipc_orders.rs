//! UniPC settings beyond Wan's (order 3, bh1, `disable_corrector`, `final_sigmas_type =
//! "sigma_min"`, no `lower_order_final`) against diffusers 0.42.1 trajectories in
//! `tests/data/unipc_orders.json` (made by `tests/data/make_unipc_orders.py`).

use candle_core::{Device, Tensor};
use serde_json::Value;
use zoetrope_sampling::SchedulerConfig;

fn floats(v: &Value) -> Vec<Option<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

fn tensor(v: &[Option<f32>]) -> Tensor {
    let data: Vec<f32> = v.iter().map(|x| x.unwrap()).collect();
    Tensor::from_vec(data, (1, 2, 3), &Device::Cpu).unwrap()
}

#[test]
fn higher_orders_match_diffusers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/unipc_orders.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let init = tensor(&floats(&data["sample_init"]));
    let noise: Vec<Tensor> = data["noise"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| tensor(&floats(n)))
        .collect();
    for (name, case) in data["cases"].as_object().unwrap() {
        let mut config = case["config"].clone();
        config["_class_name"] = "UniPCMultistepScheduler".into();
        let mut s = SchedulerConfig::from_json_str(&config.to_string(), name)
            .unwrap()
            .build()
            .unwrap();
        let n = case["timesteps"].as_array().unwrap().len();
        s.set_timesteps(n).unwrap();
        let want_ts: Vec<f64> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert_eq!(s.timesteps(), want_ts.as_slice(), "{name}");
        let want_sig: Vec<f32> = floats(&case["sigmas"])
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(s.sigmas(), want_sig.as_slice(), "{name}");

        let mut x = init.clone();
        let mut worst: f32 = 0.0;
        for (i, want) in case["samples"].as_array().unwrap().iter().enumerate() {
            let model_out = (x.affine(0.5, 0.0).unwrap() + &noise[i]).unwrap();
            let next = s.step(&model_out, i, &x).unwrap();
            let got = next.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = floats(want);
            if want.iter().any(Option::is_none) {
                // torch's NaN for a zero-length final step; ours is the (finite) limit: the
                // sample does not move in σ, so it is the corrected input sample.
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "{name} step {i}: {got:?}"
                );
            } else {
                for (g, w) in got.iter().zip(&want) {
                    worst = worst.max((g - w.unwrap()).abs());
                }
            }
            x = next;
        }
        eprintln!("{name}: trajectory max abs err {worst:.3e}");
        assert!(worst <= 1e-5, "{name}: max abs err {worst}");
    }
}
