//! RGB <-> Y'CbCr (BT.601, limited "studio" range), the convention H.264 and
//! Y4M consumers assume when a stream carries no other colour description.

/// Planar 8-bit Y'CbCr; chroma planes are full size (4:4:4) or halved in both
/// directions (4:2:0) depending on the producer.
pub(crate) struct Planes {
    pub y: Vec<u8>,
    pub cb: Vec<u8>,
    pub cr: Vec<u8>,
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    16.0 + 0.256_788_24 * r + 0.504_129_4 * g + 0.097_905_88 * b
}

fn cb(r: f32, g: f32, b: f32) -> f32 {
    128.0 - 0.148_222_9 * r - 0.290_992_9 * g + 0.439_215_7 * b
}

fn cr(r: f32, g: f32, b: f32) -> f32 {
    128.0 + 0.439_215_7 * r - 0.367_788_3 * g - 0.071_427_45 * b
}

fn clamp_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Inverse of the forward transform; out-of-gamut triples are clamped.
pub(crate) fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (r, g, b) = ycbcr_to_rgb_f(y, cb, cr);
    [clamp_u8(r), clamp_u8(g), clamp_u8(b)]
}

fn full_ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = y as f32;
    let cb = cb as f32 - 128.0;
    let cr = cr as f32 - 128.0;
    [
        clamp_u8(y + 1.402 * cr),
        clamp_u8(y - 0.344_136 * cb - 0.714_136 * cr),
        clamp_u8(y + 1.772 * cb),
    ]
}

fn ycbcr_to_rgb_f(y: u8, cb: u8, cr: u8) -> (f32, f32, f32) {
    let y = 1.164_383_6 * (y as f32 - 16.0);
    let cb = cb as f32 - 128.0;
    let cr = cr as f32 - 128.0;
    (
        y + 1.596_026_8 * cr,
        y - 0.391_762_3 * cb - 0.812_967_6 * cr,
        y + 2.017_232_1 * cb,
    )
}

/// Full-resolution Y'CbCr for lossless-ish storage (Y4M `C444`).
///
/// The direct rounding of the forward transform is not the triple that
/// decodes closest to the input, so the 27 neighbours of the rounded triple
/// are tried and the one with the smallest reconstruction error wins. This
/// keeps the 8-bit round trip within 2 levels per channel instead of 3.
pub(crate) fn rgb_to_444(width: usize, height: usize, rgb: &[u8]) -> Planes {
    let n = width * height;
    debug_assert_eq!(rgb.len(), width * height * 3);
    let mut planes = Planes {
        y: Vec::with_capacity(n),
        cb: Vec::with_capacity(n),
        cr: Vec::with_capacity(n),
    };
    for px in rgb.chunks_exact(3) {
        let [y, u, v] = best_444_triple([px[0], px[1], px[2]]);
        planes.y.push(y);
        planes.cb.push(u);
        planes.cr.push(v);
    }
    planes
}

fn best_444_triple(px: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
    let base = [
        clamp_u8(luma(r, g, b)),
        clamp_u8(cb(r, g, b)),
        clamp_u8(cr(r, g, b)),
    ];
    let score = |cand: [u8; 3]| {
        let out = ycbcr_to_rgb(cand[0], cand[1], cand[2]);
        let diffs = [
            (out[0] as i32 - px[0] as i32).abs(),
            (out[1] as i32 - px[1] as i32).abs(),
            (out[2] as i32 - px[2] as i32).abs(),
        ];
        // Minimise the worst channel first, then the total, so the
        // documented per-channel bound is what gets optimised.
        let max = diffs.iter().copied().max().unwrap_or(0);
        max * 1024 + diffs.iter().sum::<i32>()
    };
    // Ties keep the plain rounding, so greys stay neutral.
    let mut best = base;
    let mut best_err = score(base);
    for dy in -1i32..=1 {
        for du in -1i32..=1 {
            for dv in -1i32..=1 {
                let cand = [
                    (base[0] as i32 + dy).clamp(0, 255) as u8,
                    (base[1] as i32 + du).clamp(0, 255) as u8,
                    (base[2] as i32 + dv).clamp(0, 255) as u8,
                ];
                let err = score(cand);
                if err < best_err {
                    best_err = err;
                    best = cand;
                }
            }
        }
    }
    best
}

/// 4:2:0 with each chroma sample the mean of its 2x2 block. Width and height
/// must be even (callers pad first).
///
/// Luma is then re-fitted per pixel against the block's shared chroma (the
/// least-squares Y' for that pixel's RGB), which cancels much of the colour
/// bleed at sharp chroma edges for any standard decoder.
pub(crate) fn rgb_to_420(width: usize, height: usize, rgb: &[u8]) -> Planes {
    debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2));
    debug_assert_eq!(rgb.len(), width * height * 3);
    let (cw, chh) = (width / 2, height / 2);
    let mut y = vec![0u8; width * height];
    let mut cbp = vec![0u8; cw * chh];
    let mut crp = vec![0u8; cw * chh];
    for crow in 0..chh {
        for ccol in 0..cw {
            let block = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .map(|(dy, dx)| ((crow * 2 + dy) * width + ccol * 2 + dx) * 3);
            let (mut sr, mut sg, mut sb) = (0.0f32, 0.0f32, 0.0f32);
            for &i in &block {
                sr += rgb[i] as f32;
                sg += rgb[i + 1] as f32;
                sb += rgb[i + 2] as f32;
            }
            let (r, g, b) = (sr / 4.0, sg / 4.0, sb / 4.0);
            let (u, v) = (clamp_u8(cb(r, g, b)), clamp_u8(cr(r, g, b)));
            cbp[crow * cw + ccol] = u;
            crp[crow * cw + ccol] = v;
            // Chroma's contribution to each channel once decoded.
            let off = chroma_offsets(u, v);
            for &i in &block {
                let resid = (rgb[i] as f32 - off[0])
                    + (rgb[i + 1] as f32 - off[1])
                    + (rgb[i + 2] as f32 - off[2]);
                y[i / 3] = clamp_u8(16.0 + resid / (3.0 * Y_SCALE));
            }
        }
    }
    Planes {
        y,
        cb: cbp,
        cr: crp,
    }
}

const Y_SCALE: f32 = 1.164_383_6;

/// Per-channel offsets chroma adds to `Y_SCALE * (Y' - 16)` when decoding.
fn chroma_offsets(cb: u8, cr: u8) -> [f32; 3] {
    let cb = cb as f32 - 128.0;
    let cr = cr as f32 - 128.0;
    [
        1.596_026_8 * cr,
        -0.391_762_3 * cb - 0.812_967_6 * cr,
        2.017_232_1 * cb,
    ]
}

/// Borrowed planes with strides, as decoders hand them out.
pub(crate) struct PlaneView<'a> {
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub y_stride: usize,
    pub cb: &'a [u8],
    pub cr: &'a [u8],
    pub c_stride: usize,
    /// log2 of the horizontal / vertical chroma subsampling (0 or 1).
    pub shift_x: u32,
    pub shift_y: u32,
    /// JPEG-style 0..=255 levels instead of the usual 16..=235.
    pub full_range: bool,
}

/// Converts to packed RGB of `out_w x out_h` (at most the plane size; the
/// rest is cropped away). Chroma is upsampled by replication, matching the
/// box filter used when encoding. Returns `None` if a plane is too short.
pub(crate) fn planes_to_rgb(p: &PlaneView<'_>, out_w: usize, out_h: usize) -> Option<Vec<u8>> {
    if out_w > p.width || out_h > p.height || out_w == 0 || out_h == 0 {
        return None;
    }
    let last_y = (out_h - 1) * p.y_stride + out_w;
    let last_c = ((out_h - 1) >> p.shift_y) * p.c_stride + ((out_w - 1) >> p.shift_x) + 1;
    if p.y.len() < last_y || p.cb.len() < last_c || p.cr.len() < last_c {
        return None;
    }
    let mut out = Vec::with_capacity(out_w * out_h * 3);
    for row in 0..out_h {
        let yrow = &p.y[row * p.y_stride..][..out_w];
        let crow = (row >> p.shift_y) * p.c_stride;
        for (col, &luma) in yrow.iter().enumerate() {
            let ci = crow + (col >> p.shift_x);
            let px = if p.full_range {
                full_ycbcr_to_rgb(luma, p.cb[ci], p.cr[ci])
            } else {
                ycbcr_to_rgb(luma, p.cb[ci], p.cr[ci])
            };
            out.extend_from_slice(&px);
        }
    }
    Some(out)
}

/// Grey ramp from a luma-only (`Cmono`) plane.
pub(crate) fn luma_to_rgb(y: &[u8], full_range: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(y.len() * 3);
    for &v in y {
        let g = if full_range {
            v
        } else {
            ycbcr_to_rgb(v, 128, 128)[1]
        };
        out.extend_from_slice(&[g, g, g]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What 4:2:0 alone costs on the test pattern, before any codec.
    #[test]
    fn chroma_subsampling_ceiling() {
        for (w, h) in [(66usize, 48usize), (96, 64)] {
            let video = crate::pattern::moving_test_pattern(w as u32, h as u32, 4, 16.0).unwrap();
            for f in video.frames() {
                let p = rgb_to_420(w, h, f.data());
                let view = PlaneView {
                    width: w,
                    height: h,
                    y: &p.y,
                    y_stride: w,
                    cb: &p.cb,
                    cr: &p.cr,
                    c_stride: w / 2,
                    shift_x: 1,
                    shift_y: 1,
                    full_range: false,
                };
                let back = planes_to_rgb(&view, w, h).unwrap();
                let back = crate::Frame::from_rgb(w as u32, h as u32, back).unwrap();
                let score = crate::psnr(f, &back);
                assert!(score > 45.0, "4:2:0 alone costs too much: {score:.2} dB");
            }
        }
    }

    #[test]
    fn bt601_primaries_map_to_textbook_values() {
        let white = best_444_triple([255, 255, 255]);
        assert_eq!(white, [235, 128, 128]);
        let black = best_444_triple([0, 0, 0]);
        assert_eq!(black, [16, 128, 128]);
        assert_eq!(ycbcr_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(ycbcr_to_rgb(16, 128, 128), [0, 0, 0]);
    }

    /// The bound documented for Y4M: a sampled sweep over the RGB cube.
    #[test]
    fn c444_round_trip_error_is_at_most_two_levels() {
        let mut worst = 0;
        for r in (0..=255u32).step_by(5) {
            for g in (0..=255u32).step_by(3) {
                for b in (0..=255u32).step_by(7) {
                    let px = [r as u8, g as u8, b as u8];
                    let [y, u, v] = best_444_triple(px);
                    let out = ycbcr_to_rgb(y, u, v);
                    for c in 0..3 {
                        worst = worst.max((out[c] as i32 - px[c] as i32).abs());
                    }
                }
            }
        }
        assert!(worst <= 2, "worst round-trip error {worst}");
    }
}
