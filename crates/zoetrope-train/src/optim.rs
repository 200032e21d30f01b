//! AdamW whose state can be saved and restored, so a stopped run resumes exactly where it was,
//! plus global-norm gradient clipping, a warmup/cosine learning-rate schedule and an exponential
//! moving average of the weights.
//!
//! candle's own `AdamW` keeps its moments private, which rules out resuming.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`AdamW`] and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices and kernels only (not biases, norms or
    /// embeddings of rank 1).
    pub weight_decay: f64,
    /// Steps of linear warmup from 0 to `lr`.
    pub warmup: usize,
    /// When set, cosine decay from `lr` at the end of warmup to `lr·min_lr_ratio` at this step.
    pub decay_until: Option<usize>,
    pub min_lr_ratio: f64,
    /// Gradients are scaled down so their global L2 norm is at most this (0 disables).
    pub clip_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 100,
            decay_until: None,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
        }
    }
}

impl OptimConfig {
    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        match self.decay_until {
            Some(end) if end > self.warmup => {
                let p = ((step - self.warmup) as f64 / (end - self.warmup) as f64).min(1.0);
                let min = self.lr * self.min_lr_ratio;
                min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            _ => self.lr,
        }
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// AdamW over the named variables of a [`VarMap`].
pub struct AdamW {
    config: OptimConfig,
    /// (name, variable, first moment, second moment), sorted by name.
    params: Vec<(String, Var, Tensor, Tensor)>,
    step: usize,
}

impl AdamW {
    /// Starts from zero moments for every variable of `varmap`.
    pub fn new(varmap: &VarMap, config: OptimConfig) -> Result<Self> {
        Self::new_filtered(varmap, config, |_| true)
    }

    /// Optimises only the variables whose name passes `train` (the rest stay frozen).
    pub fn new_filtered(
        varmap: &VarMap,
        config: OptimConfig,
        train: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<_> = data
            .iter()
            .filter(|(name, _)| train(name))
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok((name.clone(), var.clone(), z.clone(), z))
            })
            .collect::<Result<_>>()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            config,
            params,
            step: 0,
        })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    /// Replaces the hyper-parameters (a resumed run may change them).
    pub fn set_config(&mut self, config: OptimConfig) {
        self.config = config;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Backpropagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<StepInfo> {
        let grads = loss.backward()?;
        self.apply(&grads)
    }

    /// Applies one update from `grads`.
    pub fn apply(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let mut sq = 0f64;
        for (_, var, _, _) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            candle_core::bail!(
                "non-finite gradient norm at step {}: lower the learning rate",
                self.step
            );
        }
        let c = &self.config;
        let scale = if c.clip_norm > 0.0 && grad_norm > c.clip_norm {
            c.clip_norm / grad_norm
        } else {
            1.0
        };
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (_, var, m, v) in &mut self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
            let p = var.as_tensor();
            let decayed = if p.rank() >= 2 && c.weight_decay > 0.0 {
                (p * (1.0 - lr * c.weight_decay))?
            } else {
                p.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(StepInfo { lr, grad_norm })
    }

    /// The moments as named tensors (`adam_m.<name>`, `adam_v.<name>`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::with_capacity(2 * self.params.len());
        for (name, _, m, v) in &self.params {
            out.insert(format!("adam_m.{name}"), m.clone());
            out.insert(format!("adam_v.{name}"), v.clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (name, var, m, v) in &mut self.params {
            for (prefix, slot) in [("adam_m", &mut *m), ("adam_v", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("checkpoint has no optimiser state {key}"))
                })?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "optimiser state {key} has shape {:?}, the variable {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// An exponential moving average of a model's variables (`decay` per step, with the usual
/// warm start `min(decay, (1 + n) / (10 + n))` so early averages are not dominated by the init).
pub struct Ema {
    decay: f64,
    /// (name, live variable, average, averaged), sorted by name.
    params: Vec<(String, Var, Tensor, bool)>,
    updates: usize,
}

impl Ema {
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        Self::new_filtered(varmap, decay, |_| true)
    }

    /// Averages only the variables whose name passes `train`; [`Ema::tensors`] gives the others'
    /// live values (frozen variables do not drift through rounding).
    pub fn new_filtered(varmap: &VarMap, decay: f64, train: impl Fn(&str) -> bool) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<_> = data
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    v.clone(),
                    v.as_tensor().detach().copy()?,
                    train(n),
                ))
            })
            .collect::<Result<_>>()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            decay,
            params,
            updates: 0,
        })
    }

    /// Moves the average towards the live variables. The averages are detached from the
    /// variables: a tracked copy made every update a node of one growing autograd graph, which
    /// kept every past average alive (about 100 MB a step for the DiT, out of memory at step 250).
    pub fn update(&mut self) -> Result<()> {
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (_, var, avg, averaged) in &mut self.params {
            *avg = if *averaged {
                ((&*avg * d)? + (var.as_tensor().detach() * (1.0 - d))?)?
            } else {
                var.as_tensor().detach().copy()?
            };
        }
        self.updates += 1;
        Ok(())
    }

    /// The averages by variable name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, _, a, _)| (n.clone(), a.clone()))
            .collect()
    }

    /// Restores saved averages (missing names keep the live values).
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, updates: usize) -> Result<()> {
        for (name, var, avg, _) in &mut self.params {
            if let Some(t) = tensors.get(name) {
                *avg = t.to_dtype(var.dtype())?;
            }
        }
        self.updates = updates;
        Ok(())
    }

    pub fn updates(&self) -> usize {
        self.updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minimises_a_quadratic_and_resumes_exactly() {
        let run = |steps: usize, split: Option<usize>| -> Vec<f32> {
            let varmap = VarMap::new();
            let x = varmap
                .get(
                    (3, 2),
                    "x",
                    candle_nn::Init::Const(1.0),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap();
            let target =
                Tensor::new(&[[0.5f32, -1.0], [2.0, 0.0], [1.5, -0.5]], &Device::Cpu).unwrap();
            let cfg = OptimConfig {
                lr: 0.05,
                warmup: 5,
                ..OptimConfig::default()
            };
            let mut opt = AdamW::new(&varmap, cfg.clone()).unwrap();
            for s in 0..steps {
                if Some(s) == split {
                    // Save, rebuild, restore: as a resumed run would.
                    let state = opt.state_tensors();
                    let step = opt.step_count();
                    opt = AdamW::new(&varmap, cfg.clone()).unwrap();
                    opt.load_state(&state, step).unwrap();
                }
                let loss = (&x - &target).unwrap().sqr().unwrap().sum_all().unwrap();
                opt.backward_step(&loss).unwrap();
            }
            x.flatten_all().unwrap().to_vec1().unwrap()
        };
        let whole = run(300, None);
        assert_eq!(whole, run(300, Some(120)));
        let want = [0.5f32, -1.0, 2.0, 0.0, 1.5, -0.5];
        for (a, b) in whole.iter().zip(want) {
            // Weight decay pulls slightly towards 0.
            assert!((a - b).abs() < 0.05, "{whole:?}");
        }
    }

    #[test]
    fn averages_are_not_part_of_the_autograd_graph() {
        let varmap = VarMap::new();
        varmap
            .get(
                (4, 4),
                "w",
                candle_nn::Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let mut ema = Ema::new(&varmap, 0.9).unwrap();
        for _ in 0..3 {
            ema.update().unwrap();
        }
        for t in ema.tensors().values() {
            assert!(!t.track_op(), "an average tracks its history");
        }
    }

    #[test]
    fn schedule() {
        let c = OptimConfig {
            lr: 1.0,
            warmup: 10,
            decay_until: Some(110),
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-9);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-12);
    }
}
