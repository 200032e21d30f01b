//! A finished video's files: `video.mp4`, `thumbnail.webp` (its middle frame) and
//! `spritesheet.jpg` (eight frames in a row), as the API's `variant`s. Each is written to a
//! temporary file in the same folder and renamed into place, so a file that exists is whole;
//! the job is marked completed only after all three are in place.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::ImageEncoder;
use zoetrope_video::{Frame, Video};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Video,
    Thumbnail,
    Spritesheet,
}

impl Variant {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "video" => Some(Variant::Video),
            "thumbnail" => Some(Variant::Thumbnail),
            "spritesheet" => Some(Variant::Spritesheet),
            _ => None,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Variant::Video => "video.mp4",
            Variant::Thumbnail => "thumbnail.webp",
            Variant::Spritesheet => "spritesheet.jpg",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Variant::Video => "video/mp4",
            Variant::Thumbnail => "image/webp",
            Variant::Spritesheet => "image/jpeg",
        }
    }
}

pub fn path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(variant.file_name())
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

fn webp(frame: &Frame) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(
            frame.data(),
            frame.width(),
            frame.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    Ok(out)
}

fn jpeg(frame: &Frame) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            frame.data(),
            frame.width(),
            frame.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("cannot encode the spritesheet: {e}"))?;
    Ok(out)
}

/// Writes all three variants of `video` into `dir`.
pub fn write_all(dir: &Path, video: &Video) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The MP4 writer takes a path: encode to a temporary name, then rename.
    let tmp = tempfile::Builder::new()
        .prefix(".video-")
        .suffix(".mp4")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    zoetrope_video::write_video(tmp.path(), video)
        .map_err(|e| format!("cannot encode the MP4: {e}"))?;
    tmp.persist(path(dir, Variant::Video))
        .map_err(|e| format!("cannot store the MP4: {}", e.error))?;
    let frames = video.frames();
    let thumb = &frames[frames.len() / 2];
    write_atomic(dir, Variant::Thumbnail.file_name(), &webp(thumb)?)
        .map_err(|e| format!("cannot store the thumbnail: {e}"))?;
    let sheet = zoetrope_video::frame_strip(video, 8.min(frames.len()), [0, 0, 0])
        .map_err(|e| format!("cannot make the spritesheet: {e}"))?;
    write_atomic(dir, Variant::Spritesheet.file_name(), &jpeg(&sheet)?)
        .map_err(|e| format!("cannot store the spritesheet: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_written_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let frames = (0..9)
            .map(|i| Frame::filled(32, 16, [i * 20, 100, 200]))
            .collect();
        let video = Video::new(frames, 8.0).unwrap();
        write_all(dir.path(), &video).unwrap();
        let back = zoetrope_video::read_video(&path(dir.path(), Variant::Video)).unwrap();
        assert_eq!((back.len(), back.width(), back.height()), (9, 32, 16));
        let thumb = image::open(path(dir.path(), Variant::Thumbnail)).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (32, 16));
        let sheet = image::open(path(dir.path(), Variant::Spritesheet)).unwrap();
        assert_eq!(sheet.height(), 16);
        assert!(sheet.width() >= 8 * 32);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "temporary files left behind: {names:?}");
    }
}
