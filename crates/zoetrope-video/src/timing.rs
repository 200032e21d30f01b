//! Frame-rate bookkeeping shared by the containers, which all store time as
//! integer ticks of some unit.

/// Best rational `num / den` for `x` with both terms at most `max`, by
/// continued fractions. Exact for values such as 16, 23.976 (2997/125) and
/// 24000/1001 when the bound allows.
pub(crate) fn rational(x: f64, max: u32) -> (u32, u32) {
    if !(x.is_finite() && x > 0.0) {
        return (0, 1);
    }
    let max = max as u64;
    // Convergents h/k of the continued fraction of x.
    let (mut h0, mut h1) = (0u64, 1u64);
    let (mut k0, mut k1) = (1u64, 0u64);
    let mut rest = x;
    let mut best = (x.round().clamp(1.0, max as f64) as u64, 1u64);
    for _ in 0..64 {
        let a = rest.floor();
        if a > max as f64 {
            break;
        }
        let a = a as u64;
        let h2 = a * h1 + h0;
        let k2 = a * k1 + k0;
        if h2 > max || k2 > max {
            // A semiconvergent can still beat the last convergent.
            let t_h = (max - h0).checked_div(h1).unwrap_or(u64::MAX);
            let t_k = (max - k0).checked_div(k1).unwrap_or(u64::MAX);
            let t = t_h.min(t_k);
            if t > 0 {
                let (hs, ks) = (t * h1 + h0, t * k1 + k0);
                let err_semi = (hs as f64 / ks as f64 - x).abs();
                let err_conv = (best.0 as f64 / best.1 as f64 - x).abs();
                if ks > 0 && err_semi < err_conv {
                    best = (hs, ks);
                }
            }
            break;
        }
        (h0, h1, k0, k1) = (h1, h2, k1, k2);
        if k2 > 0 {
            best = (h2, k2);
        }
        let frac = rest - a as f64;
        if frac.abs() < 1e-12 || (h2 as f64 / k2 as f64 - x).abs() < x * 1e-15 {
            break;
        }
        rest = 1.0 / frac;
    }
    (best.0.max(1) as u32, best.1.max(1) as u32)
}

/// Containers round each frame's duration to a tick, so a rate measured back
/// is slightly off (16 fps in centisecond GIF delays reads as 16.07). If a
/// whole or NTSC-style (N·1000/1001) rate explains the stored total exactly,
/// prefer it; `explains(fps)` decides.
pub(crate) fn snap_fps(measured: f64, explains: impl Fn(f64) -> bool) -> f64 {
    if !(measured.is_finite() && measured > 0.0) {
        return measured;
    }
    let whole = measured.round();
    let ntsc = (measured * 1.001).round() * 1000.0 / 1001.0;
    for cand in [whole, ntsc] {
        if cand > 0.0 && (cand - measured).abs() <= measured * 0.02 && explains(cand) {
            return cand;
        }
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals_for_common_rates() {
        assert_eq!(rational(16.0, 65535), (16, 1));
        assert_eq!(rational(1.0 / 16.0, 65535), (1, 16));
        assert_eq!(rational(23.976, 65535), (2997, 125));
        assert_eq!(rational(24000.0 / 1001.0, 65535), (24000, 1001));
        assert_eq!(rational(1001.0 / 24000.0, 65535), (1001, 24000));
        let (n, d) = rational(std::f64::consts::PI, 1000);
        assert_eq!((n, d), (355, 113));
    }

    #[test]
    fn snapping_prefers_round_rates_only_when_consistent() {
        // 9 frames of 16 fps in centiseconds: total round(900/16) = 56.
        let measured = 900.0 / 56.0;
        assert_eq!(
            snap_fps(measured, |f| (900.0 / f).round() as i64 == 56),
            16.0
        );
        assert_eq!(snap_fps(15.5, |_| false), 15.5);
    }
}
