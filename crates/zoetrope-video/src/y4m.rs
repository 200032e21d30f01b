//! YUV4MPEG2 (`.y4m`): raw planar Y'CbCr frames behind a one-line header.
//!
//! Written as `C444` (no chroma subsampling), BT.601 limited range, which is
//! what `ffmpeg`, `x264` and friends assume. Y4M has no RGB mode, and 8-bit
//! Y'CbCr cannot represent every RGB triple, so a round trip through our own
//! writer and reader is not bit-exact: each channel comes back within
//! **2 levels** of the original (usually 0 or 1). Reading accepts `C444`,
//! `C422`, `C420jpeg`/`C420`/`C420mpeg2`/`C420paldv` (chroma siting is
//! ignored) and `Cmono`, 8 bits per sample, plus the `XCOLORRANGE=FULL`
//! extension.

use std::path::Path;

use crate::color::{self, PlaneView};
use crate::{finish_clip, timing, Frame, Video, VideoError, DEFAULT_STILL_FPS};

const MAGIC: &str = "YUV4MPEG2";
/// Longer header or frame lines than this are treated as garbage.
const MAX_LINE: usize = 4096;

pub(crate) fn write(path: &Path, video: &Video) -> Result<(), VideoError> {
    let (w, h) = (video.width() as usize, video.height() as usize);
    let (num, den) = timing::rational(video.fps(), u32::MAX);
    let header = format!("{MAGIC} W{w} H{h} F{num}:{den} Ip A1:1 C444 XCOLORRANGE=LIMITED\n");
    let mut out = Vec::with_capacity(header.len() + video.len() * (6 + w * h * 3));
    out.extend_from_slice(header.as_bytes());
    for frame in video.frames() {
        let planes = color::rgb_to_444(w, h, frame.data());
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&planes.y);
        out.extend_from_slice(&planes.cb);
        out.extend_from_slice(&planes.cr);
    }
    crate::write_file(path, &out)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Chroma {
    /// log2 of horizontal and vertical subsampling.
    Sub(u32, u32),
    Mono,
}

struct Header {
    width: usize,
    height: usize,
    fps: f64,
    chroma: Chroma,
    full_range: bool,
}

fn parse_header(line: &str) -> Result<Header, String> {
    let mut tokens = line.split(' ').filter(|t| !t.is_empty());
    if tokens.next() != Some(MAGIC) {
        return Err(format!("not a Y4M file (it does not start with {MAGIC})"));
    }
    let (mut width, mut height) = (None, None);
    let mut fps = None;
    let mut chroma = Chroma::Sub(1, 1);
    let mut full_range = false;
    for token in tokens {
        // Tags are one ASCII letter; split on a char boundary so odd bytes cannot panic.
        let Some(tag) = token.chars().next() else {
            continue;
        };
        let value = &token[tag.len_utf8()..];
        match tag {
            'W' => width = value.parse::<usize>().ok().filter(|&v| v > 0),
            'H' => height = value.parse::<usize>().ok().filter(|&v| v > 0),
            'F' => {
                let (n, d) = value
                    .split_once(':')
                    .ok_or_else(|| format!("bad frame rate {token:?}"))?;
                let n: u64 = n.parse().map_err(|_| format!("bad frame rate {token:?}"))?;
                let d: u64 = d.parse().map_err(|_| format!("bad frame rate {token:?}"))?;
                // F0:0 means "unknown" in the spec.
                if n > 0 && d > 0 {
                    fps = Some(n as f64 / d as f64);
                }
            }
            'C' => {
                chroma = match value {
                    "444" => Chroma::Sub(0, 0),
                    "422" => Chroma::Sub(1, 0),
                    "420" | "420jpeg" | "420mpeg2" | "420paldv" => Chroma::Sub(1, 1),
                    "mono" => Chroma::Mono,
                    other => {
                        return Err(format!(
                            "colour space C{other} is not supported; convert to 8-bit \
                             C444, C422, C420 or Cmono (e.g. ffmpeg -pix_fmt yuv444p)"
                        ))
                    }
                }
            }
            'X' if value.eq_ignore_ascii_case("COLORRANGE=FULL") => full_range = true,
            // Interlacing, aspect ratio and unknown tags do not change the samples.
            _ => {}
        }
    }
    let width = width.ok_or("the header has no valid W (width)")?;
    let height = height.ok_or("the header has no valid H (height)")?;
    if width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(format!("impossible frame size {width}x{height}"));
    }
    Ok(Header {
        width,
        height,
        fps: fps.unwrap_or(DEFAULT_STILL_FPS),
        chroma,
        full_range,
    })
}

/// Splits off one `\n`-terminated line; `None` if there is no terminator
/// within [`MAX_LINE`] bytes.
fn take_line(data: &[u8]) -> Option<(&str, &[u8])> {
    let end = data.iter().take(MAX_LINE).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&data[..end]).ok()?;
    Some((line, &data[end + 1..]))
}

pub(crate) fn read(path: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    let data = std::fs::read(path).map_err(|e| VideoError::io(path, e))?;
    let bad = |reason: String| VideoError::decode(path, reason);
    let (line, mut rest) = take_line(&data).ok_or_else(|| {
        bad(format!(
            "not a Y4M file (no {MAGIC} header line); write it with zoetrope or ffmpeg -f yuv4mpegpipe"
        ))
    })?;
    let header = parse_header(line).map_err(bad)?;
    let (w, h) = (header.width, header.height);
    let (cw, ch) = match header.chroma {
        Chroma::Sub(sx, sy) => (w.div_ceil(1 << sx), h.div_ceil(1 << sy)),
        Chroma::Mono => (0, 0),
    };
    let frame_len = w
        .checked_mul(h)
        .and_then(|luma| cw.checked_mul(ch)?.checked_mul(2)?.checked_add(luma))
        .ok_or_else(|| bad(format!("impossible frame size {w}x{h}")))?;

    let mut frames = Vec::new();
    let wanted = limit.unwrap_or(usize::MAX);
    while !rest.is_empty() && frames.len() < wanted {
        let index = frames.len();
        let (_, body) = take_line(rest)
            .filter(|(l, _)| l.split(' ').next() == Some("FRAME"))
            .ok_or_else(|| bad(format!("frame {index} does not start with a FRAME line")))?;
        if body.len() < frame_len {
            return Err(bad(format!(
                "frame {index} is truncated: {w}x{h} needs {frame_len} bytes, {} remain; \
                 the file was cut short",
                body.len()
            )));
        }
        let (samples, after) = body.split_at(frame_len);
        rest = after;
        let rgb = match header.chroma {
            Chroma::Mono => color::luma_to_rgb(&samples[..w * h], header.full_range),
            Chroma::Sub(sx, sy) => {
                let (y, c) = samples.split_at(w * h);
                let (cb, cr) = c.split_at(cw * ch);
                color::planes_to_rgb(
                    &PlaneView {
                        width: w,
                        height: h,
                        y,
                        y_stride: w,
                        cb,
                        cr,
                        c_stride: cw,
                        shift_x: sx,
                        shift_y: sy,
                        full_range: header.full_range,
                    },
                    w,
                    h,
                )
                .ok_or_else(|| bad(format!("frame {index}: plane sizes do not match")))?
            }
        };
        frames.push(Frame::from_rgb(w as u32, h as u32, rgb)?);
    }
    finish_clip(
        path,
        frames,
        header.fps,
        "the Y4M header is followed by no FRAME; the file was cut short",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        let h = parse_header("YUV4MPEG2 W64 H48 F24000:1001 It A1:1 C420mpeg2 XYSCSS=420MPEG2")
            .unwrap();
        assert_eq!((h.width, h.height), (64, 48));
        assert!((h.fps - 24000.0 / 1001.0).abs() < 1e-12);
        assert_eq!(h.chroma, Chroma::Sub(1, 1));
        let h = parse_header("YUV4MPEG2 W3 H3 C444 XCOLORRANGE=FULL").unwrap();
        assert_eq!(h.fps, DEFAULT_STILL_FPS);
        assert!(h.full_range);
        assert!(parse_header("YUV4MPEG2 W3 H3 C420p10").is_err());
        assert!(parse_header("YUV4MPEG W3 H3").is_err());
        assert!(parse_header("YUV4MPEG2 W0 H3").is_err());
        assert!(parse_header("YUV4MPEG2 H3").is_err());
    }
}
