//! A folder of numbered PNG frames (`00000.png`, `00001.png`, …) plus
//! `fps.txt`, the form most image tools and `ffmpeg -i %05d.png` understand.

use std::path::{Path, PathBuf};

use crate::{apng, finish_clip, Video, VideoError, DEFAULT_STILL_FPS};

/// Name of the file that carries the frame rate, e.g. `16` or `24000/1001`.
pub const FPS_FILE: &str = "fps.txt";

/// Frame `index`'s file name.
fn frame_name(index: usize) -> String {
    format!("{index:05}.png")
}

/// The frame number of a file we would read as a frame: digits, then `.png`.
fn frame_number(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".png")
        .or_else(|| name.strip_suffix(".PNG"))?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn numbered_frames(dir: &Path) -> Result<Vec<(u64, PathBuf)>, VideoError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VideoError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| VideoError::io(dir, e))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(frame_number) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes every frame, then removes numbered PNGs left over from a longer
/// clip written to the same folder earlier, so reading back gives this clip.
pub(crate) fn write(dir: &Path, video: &Video) -> Result<(), VideoError> {
    std::fs::create_dir_all(dir).map_err(|e| VideoError::io(dir, e))?;
    for (i, frame) in video.frames().iter().enumerate() {
        let path = dir.join(frame_name(i));
        let bytes =
            apng::encode_still(frame).map_err(|e| VideoError::encode(&path, e.to_string()))?;
        crate::write_file(&path, &bytes)?;
    }
    for (n, path) in numbered_frames(dir)? {
        if n >= video.len() as u64 {
            std::fs::remove_file(&path).map_err(|e| VideoError::io(&path, e))?;
        }
    }
    let fps_path = dir.join(FPS_FILE);
    crate::write_file(&fps_path, format!("{}\n", fps_text(video.fps())).as_bytes())
}

pub(crate) fn read(dir: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    let fps_path = dir.join(FPS_FILE);
    let fps = match std::fs::read_to_string(&fps_path) {
        Ok(text) => parse_fps(&text).ok_or_else(|| {
            VideoError::decode(
                &fps_path,
                format!(
                    "expected a positive frame rate such as `16` or `24000/1001`, found {:?}",
                    text.trim()
                ),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT_STILL_FPS,
        Err(e) => return Err(VideoError::io(&fps_path, e)),
    };
    let mut frames = Vec::new();
    for (_, path) in numbered_frames(dir)?
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
    {
        let still = apng::read(&path, Some(1))?;
        frames.push(still.into_frames().swap_remove(0));
    }
    finish_clip(
        dir,
        frames,
        fps,
        "expected numbered PNG frames (00000.png, 00001.png, …) in this folder",
    )
}

/// `24000/1001` rather than `23.976023976023978` when a fraction is exact.
fn fps_text(fps: f64) -> String {
    let (n, d) = crate::timing::rational(fps, 1 << 20);
    if d > 1 && n as f64 / d as f64 == fps {
        format!("{n}/{d}")
    } else {
        format!("{fps}")
    }
}

fn parse_fps(text: &str) -> Option<f64> {
    let text = text.trim();
    let fps = match text.split_once('/') {
        Some((n, d)) => n.trim().parse::<f64>().ok()? / d.trim().parse::<f64>().ok()?,
        None => text.parse::<f64>().ok()?,
    };
    (fps.is_finite() && fps > 0.0).then_some(fps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rates() {
        assert_eq!(frame_name(7), "00007.png");
        assert_eq!(frame_number("00012.png"), Some(12));
        assert_eq!(frame_number("123456.PNG"), Some(123456));
        assert_eq!(frame_number("frame1.png"), None);
        assert_eq!(frame_number(".png"), None);
        assert_eq!(parse_fps("16\n"), Some(16.0));
        assert_eq!(parse_fps("24000/1001"), Some(24000.0 / 1001.0));
        assert_eq!(parse_fps("0"), None);
        assert_eq!(parse_fps("x"), None);
        assert_eq!(fps_text(16.0), "16");
        assert_eq!(fps_text(24000.0 / 1001.0), "24000/1001");
        assert_eq!(fps_text(12.5), "25/2");
    }
}
