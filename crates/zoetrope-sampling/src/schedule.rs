//! Scalar schedule helpers that reproduce numpy's arithmetic, so schedules match diffusers bit for
//! bit (or to the last f32 ulp).

/// `numpy.linspace(start, stop, num)` in f64, computed the way numpy does it: `i * step + start`
/// with `step = (stop - start) / (num - 1)`, and the last element set to `stop` exactly.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// The flow-matching time shift `s·σ / (1 + (s − 1)·σ)` in f64 (diffusers evaluates it with numpy
/// in `set_timesteps`, in this operation order).
pub fn shift_sigma(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// The same time shift in f32, as torch evaluates it on the f32 training sigmas in the
/// FlowMatchEuler constructor.
pub fn shift_sigma_f32(shift: f64, sigma: f32) -> f32 {
    let s = shift as f32;
    let s1 = (shift - 1.0) as f32;
    s * sigma / (1.0 + s1 * sigma)
}

/// Checks a shift value from a config or the command line.
pub(crate) fn check_shift(shift: f64) -> Result<(), String> {
    if shift.is_finite() && shift > 0.0 {
        Ok(())
    } else {
        Err(format!("shift must be a finite number > 0, got {shift}"))
    }
}

/// Checks that a schedule of `len` steps exists and `step_index` lies inside it.
pub(crate) fn check_step_index(len: usize, step_index: usize) -> crate::Result<()> {
    if len == 0 {
        return Err(crate::SchedulerError::NotInitialized);
    }
    if step_index >= len {
        return Err(crate::SchedulerError::InvalidArgument(format!(
            "step index {step_index} is past the end of a {len}-step schedule"
        )));
    }
    Ok(())
}
