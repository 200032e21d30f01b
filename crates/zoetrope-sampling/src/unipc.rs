//! UniPC multistep sampler (predictor UniP + corrector UniC, B(h) variants) in flow-prediction
//! mode, equal to diffusers' `UniPCMultistepScheduler` with `prediction_type = "flow_prediction"`
//! and `use_flow_sigmas = true`, the configuration Wan 2.1's diffusers repositories ship.
//!
//! In flow mode `α_t = 1 − σ_t`, and the solver works in `λ = ln α − ln σ`. The model output `v`
//! is turned into a data prediction `x0 = x − σ·v` (`predict_x0`).

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::{Result, SchedulerError};
use crate::schedule::{check_shift, linspace, shift_sigma};
use crate::{flow_add_noise, SamplerKind, Scheduler};

/// diffusers' class name of this scheduler.
pub const CLASS_NAME: &str = "UniPCMultistepScheduler";

/// The B(h) function of UniPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SolverType {
    /// `B(h) = h`.
    #[serde(rename = "bh1")]
    Bh1,
    /// `B(h) = e^h − 1`.
    #[serde(rename = "bh2")]
    Bh2,
}

/// What the last sigma of the schedule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum FinalSigmas {
    /// σ = 0: the last step lands on the model's clean-data prediction.
    #[serde(rename = "zero")]
    Zero,
    /// σ = the last sigma of the schedule (the last step is a no-op in σ).
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// The fields of a diffusers `UniPCMultistepScheduler` `scheduler_config.json` that matter in flow
/// mode.
///
/// Missing fields take diffusers' defaults (which are *not* flow mode: a config has to ask for
/// `flow_prediction` and `use_flow_sigmas`, as Wan's does). Fields only used by the VP (beta)
/// schedules are ignored. [`UniPcConfig::validate`] rejects settings that are not implemented.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct UniPcConfig {
    pub num_train_timesteps: usize,
    pub solver_order: usize,
    pub prediction_type: String,
    pub thresholding: bool,
    pub predict_x0: bool,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    /// Step indices whose following corrector is skipped (diffusers skips UniC at step `i` when
    /// `i − 1` is listed).
    pub disable_corrector: Vec<usize>,
    pub solver_p: Option<serde_json::Value>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub final_sigmas_type: FinalSigmas,
    pub use_dynamic_shifting: bool,
    pub shift_terminal: Option<f64>,
}

impl Default for UniPcConfig {
    /// diffusers' constructor defaults (epsilon prediction, VP sigmas; not usable here as is).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            solver_order: 2,
            prediction_type: "epsilon".into(),
            thresholding: false,
            predict_x0: true,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmas::Zero,
            use_dynamic_shifting: false,
            shift_terminal: None,
        }
    }
}

impl UniPcConfig {
    /// The flow-mode settings of Wan 2.1's diffusers `scheduler_config.json`, with the given shift
    /// (Wan ships 3.0 for 480p; 5.0 is recommended for 720p).
    pub fn flow(flow_shift: f64) -> Self {
        Self {
            prediction_type: "flow_prediction".into(),
            use_flow_sigmas: true,
            flow_shift,
            ..Self::default()
        }
    }

    /// Rejects settings this implementation does not cover; `origin` names the config in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let unsupported = |reason: String| SchedulerError::Unsupported {
            origin: origin.to_string(),
            class: CLASS_NAME,
            reason,
        };
        if self.num_train_timesteps == 0 {
            return Err(unsupported("num_train_timesteps must be at least 1".into()));
        }
        if self.prediction_type != "flow_prediction" {
            return Err(unsupported(format!(
                "prediction_type `{}`: only \"flow_prediction\" is implemented",
                self.prediction_type
            )));
        }
        if !self.use_flow_sigmas {
            return Err(unsupported(
                "use_flow_sigmas = false: only flow sigmas are implemented".into(),
            ));
        }
        if !self.predict_x0 {
            // diffusers raises for flow_prediction without predict_x0 as well.
            return Err(unsupported(
                "predict_x0 = false cannot be combined with flow_prediction".into(),
            ));
        }
        if self.solver_order == 0 {
            return Err(unsupported("solver_order must be at least 1".into()));
        }
        check_shift(self.flow_shift).map_err(unsupported)?;
        let flags = [
            (self.thresholding, "thresholding"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
        ];
        for (on, name) in flags {
            if on {
                return Err(unsupported(format!("{name} = true is not implemented")));
            }
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("solver_p is not implemented".into()));
        }
        // diffusers treats 0.0 like null here (`if self.config.shift_terminal:`).
        if self.shift_terminal.is_some_and(|t| t != 0.0) {
            return Err(unsupported("shift_terminal is not implemented".into()));
        }
        Ok(())
    }
}

/// UniPC in flow-prediction mode (diffusers' `UniPCMultistepScheduler`).
///
/// Multistep: it keeps the last `solver_order` data predictions and the sample before the last
/// predictor, so steps must be taken in order. The first `step` call fixes the starting index
/// (like diffusers' `set_begin_index`, for starting part-way into the schedule); every later call
/// must pass the next index.
///
/// Reference behaviour reproduced here:
/// - step `i > 0` first *corrects* the incoming sample with UniC, using the model output that was
///   just computed *from the uncorrected sample*, then runs the predictor UniP from the corrected
///   sample; the corrector's order is the previous predictor's order;
/// - the order warms up (1, 2, …) and, with `lower_order_final`, falls back towards 1 at the end;
/// - an order-2 predictor uses `ρ = 0.5` (diffusers' simplification, not the linear solve); an
///   order-1 corrector uses `ρ = 0.5` too.
#[derive(Clone, Debug)]
pub struct UniPcMultistep {
    config: UniPcConfig,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    sigmas: Vec<f32>,
    /// Data predictions of the last steps, oldest first (at most `solver_order`).
    model_outputs: Vec<Tensor>,
    /// The sample the last predictor started from (after that step's correction).
    last_sample: Option<Tensor>,
    /// Order of the last predictor, reused by the next corrector.
    this_order: usize,
    lower_order_nums: usize,
    step_index: Option<usize>,
}

impl UniPcMultistep {
    /// Builds the scheduler; call [`Scheduler::set_timesteps`] before stepping.
    pub fn new(config: UniPcConfig) -> Result<Self> {
        config.validate("UniPcMultistep config")?;
        Ok(Self {
            config,
            timesteps: Vec::new(),
            timesteps_f64: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: Vec::new(),
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
            step_index: None,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &UniPcConfig {
        &self.config
    }

    /// The integer timesteps diffusers passes to the model (torch int64).
    pub fn timesteps_i64(&self) -> &[i64] {
        &self.timesteps
    }

    /// The index the next `step` call must pass, once stepping has started.
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    /// Coefficients shared by UniP and UniC for a move from σ_s0 to σ_t (both in (0, 1)), using
    /// the earlier sigmas `prev` (σ of the history entries, newest first) for the higher orders.
    fn coefficients(&self, sigma_s0: f64, sigma_t: f64, prev: &[f64], order: usize) -> Coeffs {
        let lambda_s0 = lambda(sigma_s0);
        let h = lambda(sigma_t) - lambda_s0;
        let rks: Vec<f64> = prev
            .iter()
            .map(|&s| (lambda(s) - lambda_s0) / h)
            .chain(std::iter::once(1.0))
            .collect();
        // predict_x0 integrates in −h.
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.config.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        // R[i][k] = rks[k]^i
        let r: Vec<Vec<f64>> = (0..order)
            .map(|i| rks.iter().map(|rk| rk.powi(i as i32)).collect())
            .collect();
        Coeffs {
            alpha_t: 1.0 - sigma_t,
            ratio: sigma_t / sigma_s0,
            h_phi_1,
            b_h,
            rks,
            r,
            b,
        }
    }

    /// UniP: predicts the sample at `sigmas[i + 1]` from `x` at `sigmas[i]`.
    fn predict(&self, x: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let m0 = self
            .model_outputs
            .last()
            .expect("history holds the current output");
        let sigma_s0 = self.sigmas[i] as f64;
        let sigma_t = self.sigmas[i + 1] as f64;
        if sigma_t == 0.0 {
            // Reference quirk: torch reaches this via λ_t = +inf, h = +inf, expm1(−inf) = −1, so
            // the order-1 update `σ_t/σ_s0·x − α_t·(e^{−h} − 1)·m0` is exactly the data
            // prediction m0. Higher-order terms would divide by r_k = 0 (inf/NaN in torch); with
            // `lower_order_final` diffusers never uses them here, and we always take the finite
            // order-1 limit.
            return Ok(m0.clone());
        }
        if sigma_t == sigma_s0 {
            // A step of zero length (`final_sigmas_type = "sigma_min"` repeats the last sigma):
            // torch computes h = 0 and 0/0 = NaN; the update's limit is the sample itself.
            return Ok(x.clone());
        }
        let prev: Vec<f64> = (1..order).map(|k| self.sigmas[i - k] as f64).collect();
        let c = self.coefficients(sigma_s0, sigma_t, &prev, order);
        let mut x_t = (x.affine(c.ratio, 0.0)? - m0.affine(c.alpha_t * c.h_phi_1, 0.0)?)?;
        if order >= 2 {
            let rhos: Vec<f64> = if order == 2 {
                // diffusers' simplification for order 2 (instead of solving R ρ = b).
                vec![0.5]
            } else {
                let r: Vec<Vec<f64>> = c.r[..order - 1]
                    .iter()
                    .map(|row| row[..order - 1].to_vec())
                    .collect();
                solve(r, c.b[..order - 1].to_vec())
            };
            for (k, rho) in rhos.iter().enumerate() {
                // D1_k = (m_{k+1} − m0) / r_k, history newest first.
                let mk = &self.model_outputs[self.model_outputs.len() - 2 - k];
                let scale = c.alpha_t * c.b_h * rho / c.rks[k];
                x_t = (x_t - (mk - m0)?.affine(scale, 0.0)?)?;
            }
        }
        Ok(x_t)
    }

    /// UniC: corrects `this_sample` (at `sigmas[i]`) using `last_sample` (at `sigmas[i − 1]`),
    /// the history (whose newest entry is the prediction at `i − 1`) and `model_t`, the data
    /// prediction at `this_sample`.
    fn correct(
        &self,
        model_t: &Tensor,
        last_sample: &Tensor,
        i: usize,
        order: usize,
    ) -> Result<Tensor> {
        let m0 = self
            .model_outputs
            .last()
            .expect("corrector runs after a step");
        let sigma_s0 = self.sigmas[i - 1] as f64;
        let sigma_t = self.sigmas[i] as f64;
        let prev: Vec<f64> = (1..order).map(|k| self.sigmas[i - 1 - k] as f64).collect();
        let c = self.coefficients(sigma_s0, sigma_t, &prev, order);
        let rhos = if order == 1 {
            // diffusers' simplification for order 1.
            vec![0.5]
        } else {
            solve(c.r.clone(), c.b.clone())
        };
        let mut x_t =
            (last_sample.affine(c.ratio, 0.0)? - m0.affine(c.alpha_t * c.h_phi_1, 0.0)?)?;
        let k_last = rhos.len() - 1;
        for (k, rho) in rhos[..k_last].iter().enumerate() {
            let mk = &self.model_outputs[self.model_outputs.len() - 2 - k];
            let scale = c.alpha_t * c.b_h * rho / c.rks[k];
            x_t = (x_t - (mk - m0)?.affine(scale, 0.0)?)?;
        }
        let scale = c.alpha_t * c.b_h * rhos[k_last];
        x_t = (x_t - (model_t - m0)?.affine(scale, 0.0)?)?;
        Ok(x_t)
    }
}

/// Scalars of one UniP/UniC update (see diffusers' `multistep_uni_p_bh_update`).
struct Coeffs {
    alpha_t: f64,
    /// σ_t / σ_s0.
    ratio: f64,
    h_phi_1: f64,
    b_h: f64,
    rks: Vec<f64>,
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
}

/// Half log-SNR in flow mode: `ln(1 − σ) − ln σ`.
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting
/// (diffusers uses `torch.linalg.solve` in f32; this runs in f64).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in below.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

impl Scheduler for UniPcMultistep {
    /// Builds the flow schedule like diffusers' `set_timesteps` and resets the multistep state.
    ///
    /// `σ = linspace(1, 1/N, n + 1)[:-1]` in f64, shifted by `flow_shift`; reference quirk: a
    /// first σ of exactly 1 becomes `1 − 1e-6` (diffusers avoids `ln(1 − σ) = −inf`), so the
    /// first timestep is 999. Timesteps are `int64(σ·N)`, truncated toward zero, computed from
    /// the f64 sigmas; the sigmas are then stored as f32 with the final σ appended.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            return Err(SchedulerError::InvalidArgument(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        let n_train = self.config.num_train_timesteps as f64;
        let mut sigmas: Vec<f64> = linspace(1.0, 1.0 / n_train, num_inference_steps + 1)
            [..num_inference_steps]
            .iter()
            .map(|&s| shift_sigma(self.config.flow_shift, s))
            .collect();
        const EPS: f64 = 1e-6;
        if (sigmas[0] - 1.0).abs() < EPS {
            sigmas[0] -= EPS;
        }
        self.timesteps = sigmas.iter().map(|&s| (s * n_train) as i64).collect();
        self.timesteps_f64 = self.timesteps.iter().map(|&t| t as f64).collect();
        let last = match self.config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => sigmas[num_inference_steps - 1],
        };
        sigmas.push(last);
        self.sigmas = sigmas.iter().map(|&s| s as f32).collect();
        self.model_outputs.clear();
        self.last_sample = None;
        self.this_order = 0;
        self.lower_order_nums = 0;
        self.step_index = None;
        Ok(())
    }

    /// Integer-valued (diffusers passes int64 timesteps to the model).
    fn timesteps(&self) -> &[f64] {
        &self.timesteps_f64
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// One UniPC step: correct the incoming sample (UniC, for steps after the first), then
    /// predict the next one (UniP). Computes in f32 and returns f32.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        crate::schedule::check_step_index(n, step_index)?;
        match self.step_index {
            None => self.step_index = Some(step_index),
            Some(expected) if expected != step_index => {
                return Err(SchedulerError::OutOfOrder {
                    expected,
                    got: step_index,
                })
            }
            Some(_) => {}
        }
        let i = step_index;
        let order = self.config.solver_order;
        let sample = sample.to_dtype(DType::F32)?;
        let model_output = model_output.to_dtype(DType::F32)?;

        // Flow prediction → data prediction: x0 = x − σ·v.
        let x0 = (&sample - model_output.affine(self.sigmas[i] as f64, 0.0)?)?;

        let use_corrector = i > 0
            && !self.config.disable_corrector.contains(&(i - 1))
            && self.last_sample.is_some();
        let sample = if use_corrector {
            let last = self.last_sample.as_ref().expect("checked above");
            self.correct(&x0, last, i, self.this_order)?
        } else {
            sample
        };

        if self.model_outputs.len() == order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);

        let mut this_order = if self.config.lower_order_final {
            order.min(n - i)
        } else {
            order
        };
        this_order = this_order.min(self.lower_order_nums + 1);
        self.this_order = this_order;

        let prev_sample = self.predict(&sample, i, this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev_sample)
    }

    /// `α·sample + σ·noise` with `α = 1 − σ`, σ = `sigmas()[step_index]`.
    fn add_noise(&self, sample: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = *self.sigmas.get(step_index).ok_or_else(|| {
            SchedulerError::InvalidArgument(format!(
                "step index {step_index} is outside the schedule (call set_timesteps first?)"
            ))
        })?;
        flow_add_noise(sample, noise, sigma)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::UniPc
    }
}

#[cfg(test)]
mod tests {
    use super::solve;

    #[test]
    fn solve_small_system() {
        let x = solve(
            vec![
                vec![0.0, 2.0, 1.0],
                vec![1.0, 1.0, 0.0],
                vec![3.0, 0.0, 1.0],
            ],
            vec![5.0, 3.0, 6.0],
        );
        let want = [1.4, 1.6, 1.8];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{x:?}");
        }
    }
}
