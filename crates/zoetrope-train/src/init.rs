//! Seeded parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded from Rust code, so a model built on a plain
//! `VarMap` starts from different weights on every run. [`SeededVarMap`] is a var-builder backend
//! that creates each new variable from its init hint with values drawn from one ChaCha stream.
//! Models build their variables in a fixed order, so the same seed gives the same weights.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A [`VarMap`] whose new variables are initialised from a seeded generator.
pub struct SeededVarMap {
    varmap: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededVarMap {
    /// Wraps `varmap` (new variables are added to it).
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        Self {
            varmap,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// A var builder creating f32 variables in `varmap` from `seed`.
    pub fn var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Self::new(varmap.clone(), seed)),
            DType::F32,
            device.clone(),
        )
    }

    fn sample(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("init rng");
        let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
        };
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32)
                .collect()
        };
        match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)
                    }
                    NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name} exists with shape {:?}, asked for {:?}",
                    var.dims(),
                    shape.dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.sample(&shape, init);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("variable {name} does not exist yet"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> Vec<f32> {
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, seed, &Device::Cpu);
        let a = candle_nn::linear(4, 3, vb.pp("a")).unwrap();
        let b = vb
            .get_with_hints((2, 5), "b", candle_nn::init::DEFAULT_KAIMING_NORMAL)
            .unwrap();
        let mut v = a.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.extend(b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        v
    }

    #[test]
    fn same_seed_same_weights() {
        assert_eq!(build(7), build(7));
        assert_ne!(build(7), build(8));
    }

    #[test]
    fn kaiming_scale() {
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, 1, &Device::Cpu);
        let w = vb
            .get_with_hints((64, 256), "w", candle_nn::init::DEFAULT_KAIMING_NORMAL)
            .unwrap();
        let std: f32 = w
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        // Kaiming normal with the default (ReLU) gain: sqrt(2 / fan_in).
        let want = (2.0f32 / 256.0).sqrt();
        assert!((std - want).abs() < 0.05 * want, "{std} vs {want}");
    }
}
