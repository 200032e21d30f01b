//! Frames, colour and video files for zoetrope. No machine learning lives here.
//!
//! The container format follows the file's extension: see [`Format`].
//!
//! | Format | Write | Read | Fidelity |
//! |---|---|---|---|
//! | `.mp4` | H.264 (OpenH264), fast-start MP4 | H.264 in MP4 | lossy, high quality |
//! | `.gif` | per-frame palette, infinite loop | composed frames | exact for ≤ 256 colours per frame |
//! | `.png` / `.apng` | APNG (a single frame is a plain PNG) | PNG / APNG | exact |
//! | folder | `00000.png`, `00001.png`, … + `fps.txt` | same | exact |
//! | `.y4m` | YUV4MPEG2 `C444`, BT.601 limited range | `C444`, `C422`, `C420*`, `Cmono` | within 2 levels per channel |
//!
//! Stills (`.png`, `.jpg`/`.jpeg`, `.webp`) can be read as one-frame clips at
//! [`DEFAULT_STILL_FPS`].

mod apng;
mod canvas;
mod color;
mod frame;
mod gif_file;
mod mp4_file;
pub mod pattern;
mod png_dir;
mod strip;
mod timing;
mod y4m;

pub use frame::{psnr, Frame, Video};
pub use png_dir::FPS_FILE;
pub use strip::{frame_strip, stack_rows};

use std::path::{Path, PathBuf};

/// Frame rate given to clips read from stills and from files that carry no
/// timing (PNG folders without `fps.txt`, APNGs whose delays are all zero).
pub const DEFAULT_STILL_FPS: f64 = 16.0;

const OUTPUT_HINT: &str =
    "use .mp4, .gif, .png/.apng, .y4m, or a folder path ending in '/' for numbered PNGs";
const INPUT_HINT: &str = "zoetrope reads .mp4 (H.264), .gif, .png/.apng, .y4m, .jpg/.jpeg/.webp stills, or a folder of numbered PNGs";

/// Errors from reading or writing frames and clips.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("a clip needs at least one frame")]
    NoFrames,
    #[error("impossible frame size {width}x{height}: width and height must be at least 1")]
    InvalidSize { width: u32, height: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The extension names no format this crate handles in that direction.
    #[error("{path}: unsupported {direction} extension '.{extension}': {hint}")]
    UnsupportedFormat {
        path: PathBuf,
        extension: String,
        /// `"output"` or `"input"`.
        direction: &'static str,
        hint: &'static str,
    },
    /// The file exists but is not a well-formed file of the expected format.
    #[error("{path}: cannot decode: {reason}")]
    Decode { path: PathBuf, reason: String },
    /// The clip cannot be stored in the requested format.
    #[error("{path}: cannot encode: {reason}")]
    Encode { path: PathBuf, reason: String },
    /// The file decoded cleanly but held no pictures.
    #[error("{path}: no frames found: {hint}")]
    EmptyInput { path: PathBuf, hint: String },
}

impl VideoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        VideoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn decode(path: &Path, reason: impl Into<String>) -> Self {
        VideoError::Decode {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn encode(path: &Path, reason: impl Into<String>) -> Self {
        VideoError::Encode {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn empty(path: &Path, hint: impl Into<String>) -> Self {
        VideoError::EmptyInput {
            path: path.to_path_buf(),
            hint: hint.into(),
        }
    }
}

/// A container format, chosen from a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// H.264 in an MP4 with the index up front, playable in browsers.
    Mp4,
    /// Looping GIF.
    Gif,
    /// Animated PNG; a one-frame clip is written as a plain PNG.
    Apng,
    /// A folder of `00000.png`, `00001.png`, … plus `fps.txt`.
    PngDir,
    /// Raw YUV4MPEG2.
    Y4m,
}

impl Format {
    /// The output format for `path`: by extension (case-insensitive), or a
    /// PNG folder for a path ending in `/`, an existing directory, or a path
    /// without extension.
    pub fn from_path(path: &Path) -> Result<Format, VideoError> {
        classify(path).map_err(|extension| VideoError::UnsupportedFormat {
            path: path.to_path_buf(),
            extension,
            direction: "output",
            hint: OUTPUT_HINT,
        })
    }

    /// Lower-case extensions that select this format (empty for folders).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Mp4 => &["mp4"],
            Format::Gif => &["gif"],
            Format::Apng => &["png", "apng"],
            Format::PngDir => &[],
            Format::Y4m => &["y4m"],
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Mp4 => "MP4 (H.264)",
            Format::Gif => "GIF",
            Format::Apng => "APNG",
            Format::PngDir => "PNG folder",
            Format::Y4m => "Y4M",
        })
    }
}

fn ends_with_separator(path: &Path) -> bool {
    let s = path.as_os_str().to_string_lossy();
    s.ends_with('/') || s.ends_with(std::path::MAIN_SEPARATOR)
}

/// Err carries the offending extension.
fn classify(path: &Path) -> Result<Format, String> {
    if ends_with_separator(path) || path.is_dir() {
        return Ok(Format::PngDir);
    }
    let Some(ext) = path.extension() else {
        return Ok(Format::PngDir);
    };
    let ext = ext.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "mp4" => Ok(Format::Mp4),
        "gif" => Ok(Format::Gif),
        "png" | "apng" => Ok(Format::Apng),
        "y4m" => Ok(Format::Y4m),
        _ => Err(ext),
    }
}

fn still_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "jpg" | "jpeg" | "webp"))
}

/// Writes `video` to `path` in the format its extension selects (see [`Format::from_path`]).
/// Parent folders must exist; an existing file is replaced.
pub fn write_video(path: &Path, video: &Video) -> Result<(), VideoError> {
    match Format::from_path(path)? {
        Format::Mp4 => mp4_file::write(path, video),
        Format::Gif => gif_file::write(path, video),
        Format::Apng => apng::write(path, video),
        Format::PngDir => png_dir::write(path, video),
        Format::Y4m => y4m::write(path, video),
    }
}

/// Reads a clip. Stills (PNG without animation, JPEG, WebP) become one-frame
/// clips at [`DEFAULT_STILL_FPS`].
pub fn read_video(path: &Path) -> Result<Video, VideoError> {
    read_frames(path, None)
}

/// Reads one picture: a still image, or the first frame of a clip.
pub fn read_image(path: &Path) -> Result<Frame, VideoError> {
    let video = read_frames(path, Some(1))?;
    Ok(video.into_frames().swap_remove(0))
}

/// `limit` stops decoding early once that many frames are in hand.
fn read_frames(path: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    std::fs::metadata(path).map_err(|e| VideoError::io(path, e))?;
    if path.is_dir() {
        return png_dir::read(path, limit);
    }
    if still_extension(path) {
        return read_still(path);
    }
    let format = classify(path).map_err(|extension| VideoError::UnsupportedFormat {
        path: path.to_path_buf(),
        extension,
        direction: "input",
        hint: INPUT_HINT,
    })?;
    match format {
        Format::Mp4 => mp4_file::read(path, limit),
        Format::Gif => gif_file::read(path, limit),
        Format::Apng => apng::read(path, limit),
        // An existing path that is not a directory but has no extension.
        Format::PngDir => Err(VideoError::UnsupportedFormat {
            path: path.to_path_buf(),
            extension: String::new(),
            direction: "input",
            hint: INPUT_HINT,
        }),
        Format::Y4m => y4m::read(path, limit),
    }
}

fn read_still(path: &Path) -> Result<Video, VideoError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| VideoError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| VideoError::io(path, e))?;
    let img = reader.decode().map_err(|e| {
        VideoError::decode(
            path,
            format!("{e} (check that the file is a complete PNG, JPEG or WebP image)"),
        )
    })?;
    let frame = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        Frame::from_rgb(w, h, canvas::rgba_over_black(rgba.as_raw()))?
    } else {
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        Frame::from_rgb(w, h, rgb.into_raw())?
    };
    Video::new(vec![frame], DEFAULT_STILL_FPS)
}

/// Replaces `path` with `bytes`.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), VideoError> {
    std::fs::write(path, bytes).map_err(|e| VideoError::io(path, e))
}

/// Wraps a decoder's frames into a clip, turning "nothing decoded" into an error naming the file.
pub(crate) fn finish_clip(
    path: &Path,
    frames: Vec<Frame>,
    fps: f64,
    hint: &str,
) -> Result<Video, VideoError> {
    if frames.is_empty() {
        return Err(VideoError::empty(path, hint));
    }
    Video::new(frames, fps).map_err(|e| VideoError::decode(path, e.to_string()))
}

#[cfg(test)]
mod tests;
