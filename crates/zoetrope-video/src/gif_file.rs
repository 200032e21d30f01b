//! Looping GIFs via the `gif` crate.
//!
//! Each frame gets its own palette: the exact colours when a frame has at
//! most 256 (then the GIF is lossless), otherwise a NeuQuant palette.
//!
//! GIF delays are whole centiseconds. Frame `i` is shown until
//! `round(100 * (i + 1) / fps)` cs, so individual delays differ by one
//! (16 fps gives 6, 7, 6, 6, …) but the clip keeps its true length, and
//! reading it back recovers the rate exactly for whole and NTSC-style rates.
//! Delays are at least 2 cs because browsers slow shorter delays down to
//! 10 cs, so clips above 50 fps play slower than written.

use std::io::Cursor;
use std::path::Path;

use crate::canvas::{Blend, Canvas, Dispose, Patch};
use crate::{finish_clip, timing, Frame, Video, VideoError, DEFAULT_STILL_FPS};

/// NeuQuant speed (1 best .. 30 fastest) for frames with more than 256 colours.
const QUANTIZER_SPEED: i32 = 10;
const MIN_DELAY_CS: u16 = 2;

fn delay_schedule(frames: usize, fps: f64) -> Vec<u16> {
    let end = |i: usize| (100.0 * i as f64 / fps).round();
    (0..frames)
        .map(|i| {
            let d = end(i + 1) - end(i);
            (d.clamp(MIN_DELAY_CS as f64, u16::MAX as f64)) as u16
        })
        .collect()
}

pub(crate) fn write(path: &Path, video: &Video) -> Result<(), VideoError> {
    let (w, h) = (video.width(), video.height());
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(VideoError::encode(
            path,
            format!("GIF frames are at most 65535x65535, this clip is {w}x{h}; use .mp4 or .png"),
        ));
    };
    let fail = |e: gif::EncodingError| VideoError::encode(path, e.to_string());
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, w16, h16, &[]).map_err(fail)?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(fail)?;
        for (frame, delay) in video
            .frames()
            .iter()
            .zip(delay_schedule(video.len(), video.fps()))
        {
            let mut gf = gif::Frame::from_rgb_speed(w16, h16, frame.data(), QUANTIZER_SPEED);
            gf.delay = delay;
            gf.dispose = gif::DisposalMethod::Keep;
            enc.write_frame(&gf).map_err(fail)?;
        }
        enc.into_inner().map_err(fail)?;
    }
    crate::write_file(path, &out)
}

pub(crate) fn read(path: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    let bytes = std::fs::read(path).map_err(|e| VideoError::io(path, e))?;
    let bad = |reason: String| {
        VideoError::decode(
            path,
            format!("{reason} (the GIF is damaged or incomplete; re-export it)"),
        )
    };
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts
        .read_info(Cursor::new(&bytes))
        .map_err(|e| bad(e.to_string()))?;
    let (w, h) = (dec.width() as u32, dec.height() as u32);
    if w == 0 || h == 0 {
        return Err(bad(format!("the GIF declares a {w}x{h} screen")));
    }
    let mut canvas = Canvas::new(w, h);
    let mut frames = Vec::new();
    let mut delays = Vec::new();
    let wanted = limit.unwrap_or(usize::MAX);
    while frames.len() < wanted {
        let index = frames.len();
        let Some(gf) = dec
            .read_next_frame()
            .map_err(|e| bad(format!("frame {index}: {e}")))?
        else {
            break;
        };
        let dispose = match gf.dispose {
            gif::DisposalMethod::Any | gif::DisposalMethod::Keep => Dispose::Keep,
            gif::DisposalMethod::Background => Dispose::Clear,
            gif::DisposalMethod::Previous => Dispose::Previous,
        };
        let rgb = canvas
            .draw(&Patch {
                x: gf.left as u32,
                y: gf.top as u32,
                w: gf.width as u32,
                h: gf.height as u32,
                rgba: &gf.buffer,
                // Transparent pixels decode with alpha 0 and leave the canvas as is.
                blend: Blend::Over,
                dispose,
            })
            .map_err(|e| bad(format!("frame {index}: {e}")))?;
        delays.push(gf.delay);
        frames.push(Frame::from_rgb(w, h, rgb)?);
    }
    let fps = fps_from_delays(&delays);
    finish_clip(path, frames, fps, "the GIF holds no images; re-export it")
}

fn fps_from_delays(delays: &[u16]) -> f64 {
    let total: u64 = delays.iter().map(|&d| d as u64).sum();
    if total == 0 {
        return DEFAULT_STILL_FPS;
    }
    let measured = 100.0 * delays.len() as f64 / total as f64;
    // Only snap when our own writer would have produced these exact delays.
    timing::snap_fps(measured, |fps| delay_schedule(delays.len(), fps) == delays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_keep_the_clip_length_and_read_back_exactly() {
        let d = delay_schedule(9, 16.0);
        assert_eq!(d.iter().map(|&x| x as u32).sum::<u32>(), 56);
        assert_eq!(fps_from_delays(&d), 16.0);
        // Too short to tell 23.976 from 24; a long clip can.
        let ntsc = 24000.0 / 1001.0;
        assert_eq!(fps_from_delays(&delay_schedule(30, ntsc)), 24.0);
        assert_eq!(fps_from_delays(&delay_schedule(2000, ntsc)), ntsc);
        assert_eq!(fps_from_delays(&delay_schedule(5, 10.0)), 10.0);
        assert_eq!(
            fps_from_delays(&[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]),
            100.0 / 3.0
        );
        assert_eq!(fps_from_delays(&[0, 0]), DEFAULT_STILL_FPS);
    }
}
