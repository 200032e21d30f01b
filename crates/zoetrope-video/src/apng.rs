//! PNG and APNG via the `png` crate: lossless RGB, delays as exact fractions.

use std::io::{BufReader, Cursor};
use std::path::Path;

use crate::canvas::{Blend, Canvas, Dispose, Patch};
use crate::{finish_clip, timing, Frame, Video, VideoError, DEFAULT_STILL_FPS};

/// Encodes one frame as a plain (non-animated) PNG.
pub(crate) fn encode_still(frame: &Frame) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, frame.width(), frame.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(frame.data())?;
    writer.finish()?;
    Ok(out)
}

pub(crate) fn write(path: &Path, video: &Video) -> Result<(), VideoError> {
    let bytes = if video.len() == 1 {
        encode_still(&video.frames()[0])
    } else {
        encode_animation(video)
    }
    .map_err(|e| VideoError::encode(path, e.to_string()))?;
    crate::write_file(path, &bytes)
}

fn encode_animation(video: &Video) -> Result<Vec<u8>, png::EncodingError> {
    // Exact for rates whose period is a fraction of 16-bit terms (16 -> 1/16,
    // 24000/1001 -> 1001/24000); otherwise the closest such fraction.
    let (num, den) = timing::rational(1.0 / video.fps(), u16::MAX as u32);
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, video.width(), video.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let frames = u32::try_from(video.len()).unwrap_or(u32::MAX);
    enc.set_animated(frames, 0)?;
    enc.set_frame_delay(num as u16, den as u16)?;
    enc.set_blend_op(png::BlendOp::Source)?;
    enc.set_dispose_op(png::DisposeOp::None)?;
    let mut writer = enc.write_header()?;
    for frame in video.frames() {
        writer.write_image_data(frame.data())?;
    }
    writer.finish()?;
    Ok(out)
}

pub(crate) fn read(path: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    let bytes = std::fs::read(path).map_err(|e| VideoError::io(path, e))?;
    decode(&bytes, limit)
        .map_err(|reason| {
            VideoError::decode(
                path,
                format!("{reason} (the PNG is damaged or incomplete; re-export it)"),
            )
        })?
        .into_video(path)
}

struct Decoded {
    frames: Vec<Frame>,
    fps: f64,
}

impl Decoded {
    fn into_video(self, path: &Path) -> Result<Video, VideoError> {
        finish_clip(
            path,
            self.frames,
            self.fps,
            "the PNG declares an animation without frames; re-export it",
        )
    }
}

/// Decodes a PNG or APNG into composed RGB frames. Alpha is composited onto black.
fn decode(bytes: &[u8], limit: Option<usize>) -> Result<Decoded, String> {
    let mut decoder = png::Decoder::new(BufReader::new(Cursor::new(bytes)));
    decoder.set_transformations(
        png::Transformations::EXPAND | png::Transformations::STRIP_16 | png::Transformations::ALPHA,
    );
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = (reader.info().width, reader.info().height);
    let animation = reader.info().animation_control;
    let buf_len = reader
        .output_buffer_size()
        .ok_or("the image is too large to decode")?;
    let mut buf = vec![0u8; buf_len];

    let Some(animation) = animation else {
        let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
        let rgba = to_rgba(&buf, &info)?;
        let frame = Frame::from_rgb(width, height, crate::canvas::rgba_over_black(&rgba))
            .map_err(|e| e.to_string())?;
        return Ok(Decoded {
            frames: vec![frame],
            fps: DEFAULT_STILL_FPS,
        });
    };

    // Without an fcTL before IDAT, the IDAT image is a fallback for viewers
    // that do not understand APNG and is not part of the animation.
    if reader.info().frame_control.is_none() {
        reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    }
    let mut canvas = Canvas::new(width, height);
    let mut frames = Vec::new();
    let mut delays = Vec::new();
    let wanted = limit.unwrap_or(usize::MAX);
    for index in 0..animation.num_frames {
        if frames.len() >= wanted {
            break;
        }
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| format!("frame {index}: {e}"))?;
        let fc = reader
            .info()
            .frame_control
            .ok_or_else(|| format!("frame {index} has no frame control (fcTL) chunk"))?;
        let rgba = to_rgba(&buf, &info)?;
        let dispose = match fc.dispose_op {
            png::DisposeOp::None => Dispose::Keep,
            png::DisposeOp::Background => Dispose::Clear,
            png::DisposeOp::Previous => Dispose::Previous,
        };
        let blend = match fc.blend_op {
            png::BlendOp::Source => Blend::Replace,
            png::BlendOp::Over => Blend::Over,
        };
        let rgb = canvas
            .draw(&Patch {
                x: fc.x_offset,
                y: fc.y_offset,
                w: info.width,
                h: info.height,
                rgba: &rgba,
                blend,
                dispose,
            })
            .map_err(|e| format!("frame {index}: {e}"))?;
        frames.push(Frame::from_rgb(width, height, rgb).map_err(|e| e.to_string())?);
        // The APNG spec reads a zero denominator as 1/100 s units.
        let den = if fc.delay_den == 0 { 100 } else { fc.delay_den };
        delays.push((fc.delay_num, den));
    }
    Ok(Decoded {
        fps: fps_from_delays(&delays),
        frames,
    })
}

fn fps_from_delays(delays: &[(u16, u16)]) -> f64 {
    let Some(&first) = delays.first() else {
        return DEFAULT_STILL_FPS;
    };
    if first.0 > 0 && delays.iter().all(|&d| d == first) {
        return first.1 as f64 / first.0 as f64;
    }
    let total: f64 = delays.iter().map(|&(n, d)| n as f64 / d as f64).sum();
    if total > 0.0 {
        delays.len() as f64 / total
    } else {
        DEFAULT_STILL_FPS
    }
}

/// Normalises the decoder's output (RGBA8 or grey+alpha 8 after the
/// transformations requested) to tightly packed RGBA.
fn to_rgba(buf: &[u8], info: &png::OutputInfo) -> Result<Vec<u8>, String> {
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("unexpected decoded bit depth {:?}", info.bit_depth));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let mut out = Vec::with_capacity(w * h * 4);
    for row in 0..h {
        let line = buf
            .get(row * info.line_size..row * info.line_size + info.line_size)
            .ok_or("decoded frame is shorter than its size")?;
        match info.color_type {
            png::ColorType::Rgba => out.extend_from_slice(&line[..w * 4]),
            png::ColorType::GrayscaleAlpha => {
                for px in line[..w * 2].chunks_exact(2) {
                    out.extend_from_slice(&[px[0], px[0], px[0], px[1]]);
                }
            }
            png::ColorType::Rgb => {
                for px in line[..w * 3].chunks_exact(3) {
                    out.extend_from_slice(&[px[0], px[1], px[2], 255]);
                }
            }
            png::ColorType::Grayscale => {
                for &g in &line[..w] {
                    out.extend_from_slice(&[g, g, g, 255]);
                }
            }
            other => return Err(format!("unexpected decoded colour type {other:?}")),
        }
    }
    Ok(out)
}
