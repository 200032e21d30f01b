//! A synthetic moving test clip, for round-trip tests, codec checks and
//! smoke tests of players.
//!
//! Every frame uses fewer than 80 distinct colours (a banded gradient, a few
//! flat shapes and hard edges), so palette formats can store it exactly while
//! a video codec still has motion and edges to work on.

use crate::{Frame, Video, VideoError};

/// A `width x height` clip of `frames` frames at `fps`: an 8x8-band colour
/// gradient, a red square moving diagonally, a white bar sweeping right to
/// left, a colour-cycling patch and a two-pixel black border.
pub fn moving_test_pattern(
    width: u32,
    height: u32,
    frames: usize,
    fps: f64,
) -> Result<Video, VideoError> {
    if width == 0 || height == 0 {
        return Err(VideoError::InvalidSize { width, height });
    }
    let out = (0..frames)
        .map(|t| pattern_frame(width, height, t))
        .collect();
    Video::new(out, fps)
}

fn pattern_frame(w: u32, h: u32, t: usize) -> Frame {
    let mut f = Frame::filled(w, h, [0, 0, 0]);
    // Colour boundaries sit on even coordinates: 4:2:0 codecs share one
    // chroma sample per 2x2 block, and a saturated colour edge through the
    // middle of a block is lost to any H.264 encoder (about 25 dB), which
    // would measure the format rather than our use of it.
    for y in 0..h {
        for x in 0..w {
            let bx = ((x & !1) as u64 * 8 / w as u64) as u8;
            let by = ((y & !1) as u64 * 8 / h as u64) as u8;
            f.set_pixel(x, y, [bx * 32 + 16, by * 32 + 16, 128]);
        }
    }
    let t = t as u32;
    let fill = |f: &mut Frame, x0: u32, y0: u32, sw: u32, sh: u32, rgb: [u8; 3]| {
        for y in y0..(y0 + sh).min(h) {
            for x in x0..(x0 + sw).min(w) {
                f.set_pixel(x, y, rgb);
            }
        }
    };
    let even = |v: u32| v & !1;
    let side = even(w.min(h) / 4).max(2);
    let span_x = w.saturating_sub(side).max(1);
    let span_y = h.saturating_sub(side).max(1);
    fill(
        &mut f,
        even((t * 3) % span_x),
        even((t * 2) % span_y),
        side,
        side,
        [230, 40, 40],
    );
    let bar_x = even(w.saturating_sub(2) - (t * 2) % w.saturating_sub(1).max(1));
    fill(&mut f, bar_x, 0, 2, h, [250, 250, 250]);
    let cycle = [(t * 37 % 256) as u8, 200, (t.wrapping_mul(91) % 256) as u8];
    let patch = even(side / 2).max(2);
    fill(
        &mut f,
        even(w * 3 / 4),
        even(h * 3 / 4),
        patch,
        patch,
        cycle,
    );
    let (right, bottom) = (even(w.saturating_sub(2)), even(h.saturating_sub(2)));
    for y in 0..h {
        for x in 0..w {
            if x < 2 || y < 2 || x >= right || y >= bottom {
                f.set_pixel(x, y, [0, 0, 0]);
            }
        }
    }
    f
}
