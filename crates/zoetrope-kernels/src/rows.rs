//! Row-wise kernels: vector exp and the online-softmax step of attention, LayerNorm fused with
//! adaLN modulation, gated residual adds. AVX-512 where the CPU has it, portable Rust otherwise;
//! both compute the same function to within an ulp or two.

use crate::cpu;

/// `e^x` (scalar; `f32::exp`).
#[inline]
pub fn exp(x: f32) -> f32 {
    x.exp()
}

/// One online-softmax step on a row of raw scores: with `m = max(m_old, max(row)·scale)` it
/// replaces `row[j]` by `e^(row[j]·scale − m)` and returns `(m, Σ row)`.
pub fn exp_shifted(row: &mut [f32], scale: f32, m_old: f32) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512f {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::exp_shifted(row, scale, m_old) };
    }
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
    let m = m_old.max(mx);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x * scale - m).exp();
        sum += *x;
    }
    (m, sum)
}

/// One online-softmax step down the columns of a `[n][w]` block of raw scores (a key per row, a
/// query per column, `w` a multiple of 16): with `m'[c] = max(m[c], scale·max_r block[r][c])`
/// every score becomes `e^(scale·x − m'[c])`, `alpha[c] = e^(m[c] − m'[c])` and
/// `l[c] = l[c]·alpha[c] + Σ_r block[r][c]`; `m` is updated to `m'`.
pub fn softmax_columns(
    block: &mut [f32],
    w: usize,
    scale: f32,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    assert!(
        w.is_multiple_of(16) && block.len().is_multiple_of(w),
        "softmax_columns: width {w}, {} values",
        block.len()
    );
    assert!(m.len() >= w && l.len() >= w && alpha.len() >= w);
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512f {
        // SAFETY: AVX-512F is available; the lengths are checked above.
        return unsafe { avx512::softmax_columns(block, w, scale, m, l, alpha) };
    }
    for c in 0..w {
        let mx = block
            .chunks_exact(w)
            .fold(f32::NEG_INFINITY, |a, r| a.max(r[c]))
            * scale;
        let m_new = m[c].max(mx);
        let mut s = 0.0;
        for r in block.chunks_exact_mut(w) {
            r[c] = (r[c] * scale - m_new).exp();
            s += r[c];
        }
        alpha[c] = (m[c] - m_new).exp();
        l[c] = l[c] * alpha[c] + s;
        m[c] = m_new;
    }
}

/// `dst[i] = bf16(src[i])` as bits, rounded to nearest even (AVX512-BF16 where the CPU has it).
pub fn narrow_bf16_bits(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "narrow_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512bf16 {
        // SAFETY: AVX512-BF16 is available; the lengths match.
        return unsafe { avx512::narrow_bf16(src, dst) };
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = half::bf16::from_f32(s).to_bits());
}

/// `dst[i] = f32(src[i])` for bf16 bits (exact).
pub fn widen_bf16_bits(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512f {
        // SAFETY: AVX-512F is available; the lengths match.
        return unsafe { avx512::widen_bf16(src, dst) };
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = f32::from_bits((s as u32) << 16));
}

/// `row *= alpha`.
pub fn scale(row: &mut [f32], alpha: f32) {
    row.iter_mut().for_each(|x| *x *= alpha);
}

/// `e^x` for every element, in place.
pub fn exp_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512f {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::exp_in_place(row) };
    }
    row.iter_mut().for_each(|x| *x = x.exp());
}

/// `x·σ(x) = x / (1 + e^(−x))` for every element, in place (SiLU).
pub fn silu_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if cpu::features().avx512f {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::silu_in_place(row) };
    }
    row.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp());
}

/// LayerNorm of one row without affine parameters, then adaLN modulation:
/// `out = (x − mean)/√(var + eps) · (1 + scale) + shift`, mean and variance two-pass in f32 (as
/// torch's `layer_norm`). `scale`/`shift` have the row's length.
pub fn layer_norm_modulate(x: &[f32], eps: f32, scale: &[f32], shift: &[f32], out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &s), &b) in out.iter_mut().zip(x).zip(scale).zip(shift) {
        *o = (v - mean) * rstd * (1.0 + s) + b;
    }
}

/// LayerNorm of one row with affine weight and bias: `out = (x − mean)/√(var + eps) · w + b`.
pub fn layer_norm_affine(x: &[f32], eps: f32, weight: &[f32], bias: &[f32], out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * rstd * w + b;
    }
}

/// RMSNorm of one row with a weight: `out = x / √(mean(x²) + eps) · w`.
pub fn rms_norm(x: &[f32], eps: f32, weight: &[f32], out: &mut [f32]) {
    let ms = x.iter().map(|&v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * r * w;
    }
}

/// `x += y · gate` (a gated residual).
pub fn add_gated(x: &mut [f32], y: &[f32], gate: &[f32]) {
    for ((a, &b), &g) in x.iter_mut().zip(y).zip(gate) {
        *a += b * g;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` on 16 lanes: `x = n·ln2 + r`, `|r| ≤ ln2/2`, a degree-7 Taylor polynomial for
    /// `e^r` (truncation error below 3e-9, under half an f32 ulp), then `·2^n` by `scalef`, which
    /// also gives 0 for very negative inputs.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.72283));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub unsafe fn narrow_bf16(src: &[f32], dst: &mut [u16]) {
        let n = src.len();
        let mut i = 0;
        while i < n {
            let len = (n - i).min(16);
            let mask: __mmask16 = ((1u32 << len) - 1) as u16;
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i) as *mut i16, mask, h);
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn widen_bf16(src: &[u16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i < n {
            let len = (n - i).min(16);
            let mask: __mmask16 = ((1u32 << len) - 1) as u16;
            let h = _mm256_maskz_loadu_epi16(mask, src.as_ptr().add(i) as *const i16);
            let v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask, v);
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_columns(
        block: &mut [f32],
        w: usize,
        scale: f32,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
    ) {
        let n = block.len() / w;
        let ptr = block.as_mut_ptr();
        let vs = _mm512_set1_ps(scale);
        for g in (0..w).step_by(16) {
            let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            for r in 0..n {
                vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(ptr.add(r * w + g)));
            }
            let m_old = _mm512_loadu_ps(m.as_ptr().add(g));
            let m_new = _mm512_max_ps(m_old, _mm512_mul_ps(vmax, vs));
            let mut vsum = _mm512_setzero_ps();
            for r in 0..n {
                let p = ptr.add(r * w + g);
                let e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(p), vs, m_new));
                _mm512_storeu_ps(p, e);
                vsum = _mm512_add_ps(vsum, e);
            }
            let a = exp16(_mm512_sub_ps(m_old, m_new));
            _mm512_storeu_ps(alpha.as_mut_ptr().add(g), a);
            let lv = _mm512_loadu_ps(l.as_ptr().add(g));
            _mm512_storeu_ps(l.as_mut_ptr().add(g), _mm512_fmadd_ps(lv, a, vsum));
            _mm512_storeu_ps(m.as_mut_ptr().add(g), m_new);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_in_place(row: &mut [f32]) {
        let n = row.len();
        let mut i = 0;
        while i + 16 <= n {
            let p = row.as_mut_ptr().add(i);
            _mm512_storeu_ps(p, exp16(_mm512_loadu_ps(p)));
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let p = row.as_mut_ptr().add(i);
            let v = _mm512_maskz_loadu_ps(mask, p);
            _mm512_mask_storeu_ps(p, mask, exp16(v));
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_in_place(row: &mut [f32]) {
        let n = row.len();
        let one = _mm512_set1_ps(1.0);
        let silu = |v: __m512| {
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
            _mm512_div_ps(v, _mm512_add_ps(one, e))
        };
        let mut i = 0;
        while i + 16 <= n {
            let p = row.as_mut_ptr().add(i);
            _mm512_storeu_ps(p, silu(_mm512_loadu_ps(p)));
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let p = row.as_mut_ptr().add(i);
            _mm512_mask_storeu_ps(p, mask, silu(_mm512_maskz_loadu_ps(mask, p)));
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted(row: &mut [f32], scale: f32, m_old: f32) -> (f32, f32) {
        let n = row.len();
        let tail = n % 16;
        let tail_mask: __mmask16 = ((1u32 << tail) - 1) as u16;
        let ptr = row.as_mut_ptr();
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 16 <= n {
            vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(ptr.add(i)));
            i += 16;
        }
        if tail > 0 {
            let v = _mm512_mask_loadu_ps(vmax, tail_mask, ptr.add(i));
            vmax = _mm512_max_ps(vmax, v);
        }
        // scale > 0 (1/√d), so max(x)·scale = max(x·scale).
        let m = m_old.max(_mm512_reduce_max_ps(vmax) * scale);
        let vs = _mm512_set1_ps(scale);
        let vm = _mm512_set1_ps(m);
        let mut vsum = _mm512_setzero_ps();
        i = 0;
        while i + 16 <= n {
            let e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(ptr.add(i)), vs, vm));
            _mm512_storeu_ps(ptr.add(i), e);
            vsum = _mm512_add_ps(vsum, e);
            i += 16;
        }
        if tail > 0 {
            let v = _mm512_maskz_loadu_ps(tail_mask, ptr.add(i));
            let e = exp16(_mm512_fmsub_ps(v, vs, vm));
            let e = _mm512_maskz_mov_ps(tail_mask, e);
            _mm512_mask_storeu_ps(ptr.add(i), tail_mask, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        (m, _mm512_reduce_add_ps(vsum))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::exp16;
