//! Opt-in step caching for the diffusion transformers (First-Block Cache, as ParaAttention's
//! `apply_cache_on_pipe`; the idea of TeaCache, Liu et al., "Timestep Embedding Tells: It's Time
//! to Cache for Video Diffusion Model", 2024): neighbouring sampling steps change the hidden
//! states little, so the work of most blocks can be reused.
//!
//! At every model call the first block runs as usual. Its residual `r = block₀(x) − x` is
//! compared with the residual at the last fully computed call, `r_ref`, by the relative L1
//! change `mean|r − r_ref| / mean|r_ref|`. Below the threshold the call reuses that call's
//! residual of the remaining blocks, `Δ = x_N − x₁` (final hidden state minus the first block's
//! output), and the remaining blocks do not run: `x_N ≈ x₁ + Δ`. Otherwise they run and `r_ref`
//! and `Δ` are refreshed.
//!
//! The reference is the last *computed* call's residual, not the previous call's (ParaAttention
//! does the same): `Δ` belongs to that call, so the change is measured against what would be
//! reused, and a slow drift over several skipped steps adds up until it forces a refresh instead
//! of passing unnoticed step by step.
//!
//! Safeguards ([`StepCacheLimits`]): the first [`DEFAULT_WARMUP_STEPS`] calls always compute
//! (the high-noise steps lay out the whole scene, and the first one has nothing cached), and at
//! most [`DEFAULT_MAX_CONSECUTIVE_SKIPS`] calls in a row reuse the cache, so at least one step in
//! four is exact whatever the threshold.
//!
//! One [`StepCache`] serves one stream of calls: the conditional and unconditional branches of
//! classifier-free guidance see different text and need one each (a batch of both, as the world
//! model runs them, uses [`forward_rows`] with one cache per row).

use candle_core::{DType, Result, Tensor};
use serde::Serialize;

/// Calls at the start of a pass that always run every block. The first call has nothing to
/// reuse; the second is the first step after pure noise, where the prediction still changes most
/// (measured on the world model: its first-block change there is several times the later
/// steps').
pub const DEFAULT_WARMUP_STEPS: usize = 2;

/// The most calls in a row that may reuse the cache. Three keeps at least every fourth step
/// exact, which bounds how stale the reused residual can get at any threshold (FBCache and
/// TeaCache leave this unbounded; at 20 steps an unbounded run could reuse one residual for
/// most of the schedule).
pub const DEFAULT_MAX_CONSECUTIVE_SKIPS: usize = 3;

/// Where skipping is allowed, whatever the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepCacheLimits {
    /// Calls at the start that always compute every block.
    pub warmup_steps: usize,
    /// The most consecutive calls that may reuse the cache; 0 never reuses it.
    pub max_consecutive_skips: usize,
}

impl Default for StepCacheLimits {
    fn default() -> Self {
        Self {
            warmup_steps: DEFAULT_WARMUP_STEPS,
            max_consecutive_skips: DEFAULT_MAX_CONSECUTIVE_SKIPS,
        }
    }
}

/// A cache's settings: the threshold on the first block's relative change, and the limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepCacheConfig {
    /// A call reuses the cache when the relative L1 change of the first block's residual is
    /// below this; 0 never reuses it (the result is then exactly the uncached one).
    pub threshold: f64,
    pub limits: StepCacheLimits,
}

impl StepCacheConfig {
    /// Checks the threshold: a finite number ≥ 0.
    pub fn new(threshold: f64, limits: StepCacheLimits) -> std::result::Result<Self, String> {
        check_threshold(threshold)?;
        Ok(Self { threshold, limits })
    }
}

/// The message for a threshold that is not a finite number ≥ 0.
pub fn check_threshold(threshold: f64) -> std::result::Result<(), String> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "the step-cache threshold must be a number ≥ 0 (e.g. 0.05; 0 caches nothing), got \
             {threshold}"
        ))
    }
}

/// Calls made through one cache, and how many of them reused it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepCacheStats {
    /// Model calls (one per sampling step).
    pub calls: usize,
    /// Calls whose blocks after the first were replaced by the cached residual.
    pub skipped: usize,
}

impl std::ops::AddAssign for StepCacheStats {
    fn add_assign(&mut self, other: Self) {
        self.calls += other.calls;
        self.skipped += other.skipped;
    }
}

/// What a pipeline reports about a cached generation: the calls of each guidance branch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepCacheReport {
    /// The prompt's branch.
    pub cond: StepCacheStats,
    /// The negative prompt's branch, when guiding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncond: Option<StepCacheStats>,
}

impl StepCacheReport {
    /// A report of the caches of a run's branches, in the order (cond, uncond).
    pub fn from_caches(caches: &[StepCache]) -> Self {
        Self {
            cond: caches.first().map(StepCache::stats).unwrap_or_default(),
            uncond: caches.get(1).map(StepCache::stats),
        }
    }

    /// Calls and skips of both branches together.
    pub fn total(&self) -> StepCacheStats {
        let mut t = self.cond;
        if let Some(u) = self.uncond {
            t += u;
        }
        t
    }
}

impl std::ops::AddAssign for StepCacheReport {
    /// Adds another pass's calls (a loop without an image samples twice).
    fn add_assign(&mut self, other: Self) {
        self.cond += other.cond;
        self.uncond = match (self.uncond, other.uncond) {
            (Some(mut a), Some(b)) => {
                a += b;
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }
}

impl std::fmt::Display for StepCacheReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.cond;
        write!(f, "skipped {} of {} steps", c.skipped, c.calls)?;
        if let Some(u) = self.uncond {
            write!(
                f,
                " (conditional branch), {} of {} (unconditional branch)",
                u.skipped, u.calls
            )?;
        }
        Ok(())
    }
}

/// What one call decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Compute,
    Reuse,
}

/// The cache of one stream of model calls (one guidance branch). See the module docs.
#[derive(Clone, Debug)]
pub struct StepCache {
    config: StepCacheConfig,
    /// The first block's residual at the last computed call.
    reference: Option<Tensor>,
    /// `x_N − x₁` at that call.
    rest: Option<Tensor>,
    stats: StepCacheStats,
    /// Calls in a row that reused the cache, up to now.
    run: usize,
    last_change: Option<f64>,
}

impl StepCache {
    pub fn new(config: StepCacheConfig) -> Self {
        Self {
            config,
            reference: None,
            rest: None,
            stats: StepCacheStats::default(),
            run: 0,
            last_change: None,
        }
    }

    pub fn config(&self) -> &StepCacheConfig {
        &self.config
    }

    pub fn stats(&self) -> StepCacheStats {
        self.stats
    }

    /// The relative change measured at the last call (`None` before there was a reference).
    pub fn last_change(&self) -> Option<f64> {
        self.last_change
    }

    /// Counts a call with first-block residual `residual` and decides whether it may reuse the
    /// cache.
    fn decide(&mut self, residual: &Tensor) -> Result<Decision> {
        let index = self.stats.calls;
        self.stats.calls += 1;
        self.last_change = None;
        let (Some(reference), Some(_)) = (&self.reference, &self.rest) else {
            return Ok(Decision::Compute);
        };
        if reference.dims() != residual.dims() {
            return Ok(Decision::Compute);
        }
        let change = relative_l1(residual, reference)?;
        self.last_change = Some(change);
        let limits = self.config.limits;
        // NaN (a zero reference) never passes the comparison.
        let reuse = index >= limits.warmup_steps
            && self.run < limits.max_consecutive_skips
            && change < self.config.threshold;
        Ok(if reuse {
            self.stats.skipped += 1;
            self.run += 1;
            Decision::Reuse
        } else {
            Decision::Compute
        })
    }

    fn store(&mut self, residual: Tensor, rest: Tensor) {
        self.reference = Some(residual);
        self.rest = Some(rest);
        self.run = 0;
    }

    fn cached_rest(&self) -> Result<&Tensor> {
        self.rest
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("step cache: no cached residual".into()))
    }

    /// One model call's blocks: `first_in` is the first block's input and `first_out` its
    /// output; `rest` runs the remaining blocks on a first-block output. Returns the last
    /// block's output, computed by `rest` or (when the cache may be reused) `first_out` plus the
    /// cached residual. A computed result is exactly `rest(first_out)`.
    pub fn forward(
        &mut self,
        first_in: &Tensor,
        first_out: Tensor,
        rest: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let residual = (&first_out - first_in)?;
        match self.decide(&residual)? {
            Decision::Reuse => first_out.broadcast_add(self.cached_rest()?),
            Decision::Compute => {
                let out = rest(&first_out)?;
                self.store(residual, (&out - &first_out)?);
                Ok(out)
            }
        }
    }
}

/// [`StepCache::forward`] for a batch whose rows are separate streams (the two guidance branches
/// in one batch): `caches[i]` serves row `i`, and each row decides on its own. `rest` runs the
/// remaining blocks on the rows that compute, given as the first-block outputs of those rows and,
/// when they are not the whole batch, their indices (u32, for selecting the rows of the other
/// per-row inputs). When every row computes, the result is exactly `rest(first_out, None)`.
pub fn forward_rows(
    caches: &mut [StepCache],
    first_in: &Tensor,
    first_out: Tensor,
    rest: impl FnOnce(&Tensor, Option<&Tensor>) -> Result<Tensor>,
) -> Result<Tensor> {
    let b = first_out.dim(0)?;
    if caches.len() != b {
        return Err(candle_core::Error::Msg(format!(
            "step cache: {} caches for a batch of {b}",
            caches.len()
        )));
    }
    let residual = (&first_out - first_in)?;
    let mut decisions = Vec::with_capacity(b);
    for (i, cache) in caches.iter_mut().enumerate() {
        decisions.push(cache.decide(&residual.narrow(0, i, 1)?)?);
    }
    let computing: Vec<u32> = (0..b as u32)
        .filter(|&i| decisions[i as usize] == Decision::Compute)
        .collect();
    let computed = if computing.len() == b {
        Some(rest(&first_out, None)?)
    } else if computing.is_empty() {
        None
    } else {
        let idx = Tensor::new(computing.as_slice(), first_out.device())?;
        Some(rest(&first_out.index_select(&idx, 0)?, Some(&idx))?)
    };
    let mut rows = Vec::with_capacity(b);
    let mut next = 0;
    for (i, cache) in caches.iter_mut().enumerate() {
        let out_i = first_out.narrow(0, i, 1)?;
        match decisions[i] {
            Decision::Reuse => rows.push(out_i.broadcast_add(cache.cached_rest()?)?),
            Decision::Compute => {
                let row = computed
                    .as_ref()
                    .expect("a computing row has a result")
                    .narrow(0, next, 1)?;
                next += 1;
                cache.store(residual.narrow(0, i, 1)?, (&row - &out_i)?);
                rows.push(row);
            }
        }
    }
    if computing.len() == b {
        return Ok(computed.expect("every row computed"));
    }
    Tensor::cat(&rows, 0)
}

/// `mean|a − b| / mean|b|`, in f32.
fn relative_l1(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let diff = (&a - &b)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let norm = b.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(diff / norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn config(
        threshold: f64,
        warmup_steps: usize,
        max_consecutive_skips: usize,
    ) -> StepCacheConfig {
        StepCacheConfig::new(
            threshold,
            StepCacheLimits {
                warmup_steps,
                max_consecutive_skips,
            },
        )
        .unwrap()
    }

    /// A stand-in model: the "first block" adds `step`-dependent noise, the "rest" doubles.
    fn call(cache: &mut StepCache, x: &Tensor, wiggle: f32) -> (Tensor, bool) {
        let first_out = (x + (x.ones_like().unwrap() * (1.0 + wiggle as f64)).unwrap()).unwrap();
        let mut ran = false;
        let out = cache
            .forward(x, first_out, |h| {
                ran = true;
                h * 2.0
            })
            .unwrap();
        (out, ran)
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(StepCacheConfig::new(0.0, StepCacheLimits::default()).is_ok());
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let e = StepCacheConfig::new(bad, StepCacheLimits::default()).unwrap_err();
            assert!(e.contains("≥ 0"), "{e}");
        }
    }

    #[test]
    fn relative_change_is_mean_abs_over_mean_abs() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1f32, 2.0, 3.0, 6.0], &dev).unwrap();
        let b = Tensor::new(&[1f32, 1.0, 1.0, 1.0], &dev).unwrap();
        // mean |a − b| = (0 + 1 + 2 + 5) / 4 = 2; mean |b| = 1.
        assert_eq!(relative_l1(&a, &b).unwrap(), 2.0);
    }

    #[test]
    fn zero_threshold_never_skips_and_warmup_and_run_limit_hold() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        let mut exact = StepCache::new(config(0.0, 0, 10));
        for _ in 0..6 {
            assert!(call(&mut exact, &x, 0.0).1);
        }
        assert_eq!(exact.stats().skipped, 0);

        // Identical residuals every call (change 0): only the limits stop skipping.
        let mut cache = StepCache::new(config(0.5, 2, 2));
        let ran: Vec<bool> = (0..9).map(|_| call(&mut cache, &x, 0.0).1).collect();
        assert_eq!(
            ran,
            [true, true, false, false, true, false, false, true, false]
        );
        assert_eq!(
            cache.stats(),
            StepCacheStats {
                calls: 9,
                skipped: 5
            }
        );
        let mut never = StepCache::new(config(0.5, 0, 0));
        assert!((0..4).all(|_| call(&mut never, &x, 0.0).1));
    }

    #[test]
    fn reuse_adds_the_cached_rest_and_a_big_change_recomputes() {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 2, 3), DType::F32, &dev).unwrap();
        let mut cache = StepCache::new(config(0.1, 1, 3));
        let (first, ran) = call(&mut cache, &x, 0.0);
        assert!(ran);
        // first_out = 2, rest = 4: cached residual 2.
        assert_eq!(
            first.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [4.0; 6]
        );
        // A 5% change in the first block's residual: reused, first_out 2.05 + 2.
        let (out, ran) = call(&mut cache, &x, 0.05);
        assert!(!ran);
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&e| (e - 4.05).abs() < 1e-6), "{v:?}");
        assert!((cache.last_change().unwrap() - 0.05).abs() < 1e-6);
        // 50%: recomputed, and the reference moves with it.
        assert!(call(&mut cache, &x, 0.5).1);
        assert!(!call(&mut cache, &x, 0.52).1);
    }

    #[test]
    fn rows_decide_on_their_own() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 2, 3), DType::F32, &dev).unwrap();
        let mut caches = vec![
            StepCache::new(config(0.1, 1, 3)),
            StepCache::new(config(0.1, 1, 3)),
        ];
        let mut step = |wiggle: [f32; 2]| -> (Tensor, Option<Vec<u32>>) {
            let w = Tensor::new(&[[wiggle[0]], [wiggle[1]]], &dev)
                .unwrap()
                .unsqueeze(2)
                .unwrap();
            let first_out = (x.ones_like().unwrap().broadcast_add(&w)).unwrap();
            let mut rows = None;
            let out = forward_rows(&mut caches, &x, first_out, |h, idx| {
                rows = Some(idx.map(|i| i.to_vec1::<u32>().unwrap()));
                h * 3.0
            })
            .unwrap();
            (out, rows.map(|r| r.unwrap_or_else(|| vec![0, 1])))
        };
        let (_, rows) = step([0.0, 0.0]);
        assert_eq!(rows, Some(vec![0, 1]));
        // Row 0 barely changes and reuses; row 1 changes by half and computes alone.
        let (out, rows) = step([0.01, 0.5]);
        assert_eq!(rows, Some(vec![1]));
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[..6].iter().all(|&e| (e - 3.01).abs() < 1e-6), "{v:?}");
        assert!(v[6..].iter().all(|&e| (e - 4.5).abs() < 1e-6), "{v:?}");
        let (_, rows) = step([0.02, 0.51]);
        assert_eq!(rows, None, "both rows reuse");
        assert_eq!(caches[0].stats().skipped, 2);
        assert_eq!(caches[1].stats().skipped, 1);
        let report = StepCacheReport::from_caches(&caches);
        assert_eq!(
            report.to_string(),
            "skipped 2 of 3 steps (conditional branch), 1 of 3 (unconditional branch)"
        );
    }
}
