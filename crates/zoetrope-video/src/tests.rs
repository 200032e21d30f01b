//! Round trips through every container, plus error handling on bad input.

use std::path::{Path, PathBuf};

use crate::pattern::moving_test_pattern;
use crate::*;

/// Odd, non-square and ordinary sizes.
const SIZES: [(u32, u32); 3] = [(65, 47), (96, 64), (64, 48)];
const FRAMES: usize = 12;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn clip(w: u32, h: u32, fps: f64) -> Video {
    moving_test_pattern(w, h, FRAMES, fps).unwrap()
}

fn round_trip(path: &Path, video: &Video) -> Video {
    write_video(path, video).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    read_video(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_same_frames(a: &Video, b: &Video, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: frame count");
    for (i, (x, y)) in a.frames().iter().zip(b.frames()).enumerate() {
        assert_eq!(
            (x.width(), x.height()),
            (y.width(), y.height()),
            "{what}: frame {i} size"
        );
        assert!(x == y, "{what}: frame {i} differs");
    }
}

fn max_abs_diff(a: &Frame, b: &Frame) -> u8 {
    a.data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| x.abs_diff(y))
        .max()
        .unwrap_or(0)
}

#[test]
fn test_pattern_fits_a_palette_and_moves() {
    for (w, h) in SIZES {
        let v = clip(w, h, 16.0);
        for f in v.frames() {
            let colours: std::collections::HashSet<&[u8]> = f.data().chunks_exact(3).collect();
            assert!(colours.len() <= 256, "{w}x{h}: {} colours", colours.len());
        }
        assert!(v.frames()[0] != v.frames()[1]);
    }
}

// --- format selection ------------------------------------------------------

#[test]
fn format_follows_extension_case_insensitively() {
    let f = |p: &str| Format::from_path(Path::new(p)).unwrap();
    assert_eq!(f("a.mp4"), Format::Mp4);
    assert_eq!(f("a.MP4"), Format::Mp4);
    assert_eq!(f("dir/a.Gif"), Format::Gif);
    assert_eq!(f("a.png"), Format::Apng);
    assert_eq!(f("a.APNG"), Format::Apng);
    assert_eq!(f("a.y4m"), Format::Y4m);
    assert_eq!(f("frames/"), Format::PngDir);
    assert_eq!(f("frames.v1/"), Format::PngDir);
    assert_eq!(f("frames"), Format::PngDir);
    let dir = tmp();
    let existing = dir.path().join("out.d");
    std::fs::create_dir(&existing).unwrap();
    assert_eq!(Format::from_path(&existing).unwrap(), Format::PngDir);
}

#[test]
fn unknown_extension_lists_supported_formats() {
    let err = Format::from_path(Path::new("clip.avi")).unwrap_err();
    assert!(matches!(err, VideoError::UnsupportedFormat { .. }));
    let msg = err.to_string();
    for needle in [
        "clip.avi", "'.avi'", ".mp4", ".gif", ".png", ".apng", ".y4m", "'/'",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // Writing goes through the same check and creates nothing.
    let dir = tmp();
    let path = dir.path().join("clip.AVI");
    let err = write_video(&path, &clip(8, 8, 16.0)).unwrap_err();
    assert!(err.to_string().contains("'.avi'"), "{err}");
    assert!(!path.exists());
    // Reading names the input formats, stills included.
    std::fs::write(&path, b"RIFF").unwrap();
    let msg = read_video(&path).unwrap_err().to_string();
    assert!(msg.contains(".jpg") && msg.contains(".mp4"), "{msg}");
}

#[test]
fn zero_frames_is_a_clear_error() {
    let err = Video::new(Vec::new(), 16.0).unwrap_err();
    assert!(matches!(err, VideoError::NoFrames));
    assert!(err.to_string().contains("at least one frame"));
}

// --- MP4 ---------------------------------------------------------------------

#[test]
fn mp4_round_trip_keeps_size_fps_and_quality() {
    let dir = tmp();
    for (w, h) in SIZES {
        let video = clip(w, h, 16.0);
        let path = dir.path().join(format!("p{w}x{h}.mp4"));
        let back = round_trip(&path, &video);
        assert_eq!((back.width(), back.height()), (w, h), "{w}x{h}: size");
        assert_eq!(back.len(), video.len(), "{w}x{h}: frame count");
        assert_eq!(back.fps(), 16.0, "{w}x{h}: fps");
        let scores: Vec<f64> = video
            .frames()
            .iter()
            .zip(back.frames())
            .map(|(a, b)| psnr(a, b))
            .collect();
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        eprintln!(
            "MP4 {w}x{h}: PSNR min {min:.2} dB, mean {mean:.2} dB, {} bytes",
            std::fs::metadata(&path).unwrap().len()
        );
        assert!(min >= 30.0, "{w}x{h}: PSNR per frame {scores:?}");
    }
}

#[test]
fn mp4_keeps_fractional_frame_rates() {
    let dir = tmp();
    let ntsc = 24000.0 / 1001.0;
    let back = round_trip(&dir.path().join("ntsc.mp4"), &clip(32, 32, ntsc));
    assert_eq!(back.fps(), ntsc);
    let back = round_trip(&dir.path().join("decimal.mp4"), &clip(32, 32, 23.976));
    assert!((back.fps() - 23.976).abs() < 1e-3, "{}", back.fps());
    let back = round_trip(&dir.path().join("odd.mp4"), &clip(32, 32, 7.3));
    assert!((back.fps() - 7.3).abs() < 1e-3, "{}", back.fps());
}

#[test]
fn mp4_single_frame_has_a_full_frame_duration() {
    let dir = tmp();
    let still = moving_test_pattern(33, 17, 1, 8.0).unwrap();
    let back = round_trip(&dir.path().join("one.mp4"), &still);
    assert_eq!(back.len(), 1);
    assert_eq!((back.width(), back.height()), (33, 17));
    assert_eq!(back.fps(), 8.0);
    assert!(psnr(&still.frames()[0], &back.frames()[0]) >= 30.0);
}

#[test]
fn mp4_is_fast_start() {
    let dir = tmp();
    let path = dir.path().join("fast.mp4");
    write_video(&path, &clip(65, 47, 16.0)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let boxes = crate::mp4_file::top_level_boxes(&bytes);
    let pos = |n: &[u8; 4]| boxes.iter().position(|b| b == n);
    let (moov, mdat) = (pos(b"moov"), pos(b"mdat"));
    assert!(moov.is_some() && mdat.is_some(), "boxes: {boxes:?}");
    assert!(moov < mdat, "moov must precede mdat: {boxes:?}");
    assert_eq!(boxes.first(), Some(b"ftyp"));
}

#[test]
fn mp4_first_frame_as_image() {
    let dir = tmp();
    let path = dir.path().join("first.mp4");
    let video = clip(65, 47, 16.0);
    write_video(&path, &video).unwrap();
    let first = read_image(&path).unwrap();
    assert_eq!((first.width(), first.height()), (65, 47));
    assert!(psnr(&first, &video.frames()[0]) >= 30.0);
}

// --- lossless formats ----------------------------------------------------------

#[test]
fn gif_round_trip_is_exact_for_flat_colours() {
    let dir = tmp();
    for (w, h) in SIZES {
        let video = clip(w, h, 16.0);
        let back = round_trip(&dir.path().join(format!("p{w}x{h}.gif")), &video);
        assert_same_frames(&video, &back, "GIF");
        assert_eq!(back.fps(), 16.0);
    }
    // Centisecond delays cannot tell 23.976 from 24 fps over a short clip;
    // the rate comes back within 0.1%.
    let ntsc = 24000.0 / 1001.0;
    let back = round_trip(&dir.path().join("ntsc.gif"), &clip(16, 16, ntsc));
    assert!((back.fps() - ntsc).abs() / ntsc < 1e-3, "{}", back.fps());
}

#[test]
fn gif_quantises_rich_frames_reasonably() {
    let (w, h) = (64u32, 64u32);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]);
        }
    }
    let frame = Frame::from_rgb(w, h, data).unwrap();
    let video = Video::new(vec![frame.clone(), frame], 10.0).unwrap();
    let dir = tmp();
    let back = round_trip(&dir.path().join("rich.gif"), &video);
    let score = psnr(&video.frames()[0], &back.frames()[0]);
    eprintln!("GIF NeuQuant on a 4096-colour gradient: {score:.2} dB");
    assert!(score > 25.0, "{score}");
    assert_eq!(back.fps(), 10.0);
}

#[test]
fn apng_round_trip_is_exact() {
    let dir = tmp();
    for (w, h) in SIZES {
        let video = clip(w, h, 16.0);
        let back = round_trip(&dir.path().join(format!("p{w}x{h}.png")), &video);
        assert_same_frames(&video, &back, "APNG");
        assert_eq!(back.fps(), 16.0);
    }
    let ntsc = 24000.0 / 1001.0;
    let back = round_trip(&dir.path().join("ntsc.apng"), &clip(16, 16, ntsc));
    assert_eq!(back.fps(), ntsc);
}

#[test]
fn one_frame_png_is_a_plain_still() {
    let dir = tmp();
    let path = dir.path().join("still.png");
    let video = moving_test_pattern(65, 47, 1, 16.0).unwrap();
    let back = round_trip(&path, &video);
    assert_same_frames(&video, &back, "still PNG");
    assert_eq!(back.fps(), DEFAULT_STILL_FPS);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes.windows(4).any(|w| w == b"acTL"),
        "a still must not be animated"
    );
    // Other decoders agree it is an ordinary PNG.
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.as_raw(), video.frames()[0].data());
}

/// A hand-built APNG whose second frame is a sub-rectangle blended over the
/// first, then disposed to background, exercising the compositor.
#[test]
fn apng_sub_rectangles_are_composed() {
    let dir = tmp();
    let path = dir.path().join("sub.png");
    let red: Vec<u8> = [255, 0, 0, 255].repeat(16);
    let green: Vec<u8> = [0, 255, 0, 128].repeat(4);
    let blue: Vec<u8> = [0, 0, 255, 255].to_vec();
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 4, 4);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_animated(3, 0).unwrap();
        enc.set_frame_delay(1, 10).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&red).unwrap();
        w.set_frame_dimension(2, 2).unwrap();
        w.set_frame_position(1, 1).unwrap();
        w.set_blend_op(png::BlendOp::Over).unwrap();
        w.set_dispose_op(png::DisposeOp::Background).unwrap();
        w.write_image_data(&green).unwrap();
        w.set_frame_dimension(1, 1).unwrap();
        w.set_frame_position(0, 0).unwrap();
        w.set_blend_op(png::BlendOp::Source).unwrap();
        w.set_dispose_op(png::DisposeOp::None).unwrap();
        w.write_image_data(&blue).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(&path, &bytes).unwrap();
    let v = read_video(&path).unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!(v.fps(), 10.0);
    let f1 = &v.frames()[1];
    assert_eq!(f1.pixel(0, 0), [255, 0, 0]);
    assert_eq!(f1.pixel(1, 1), [127, 128, 0]);
    assert_eq!(f1.pixel(3, 3), [255, 0, 0]);
    let f2 = &v.frames()[2];
    assert_eq!(f2.pixel(0, 0), [0, 0, 255]);
    // Frame 1's rectangle was cleared to transparent, shown as black.
    assert_eq!(f2.pixel(1, 1), [0, 0, 0]);
    assert_eq!(f2.pixel(3, 3), [255, 0, 0]);
}

#[test]
fn png_folder_round_trip_is_exact_and_replaces_older_clips() {
    let dir = tmp();
    let folder: PathBuf = dir.path().join("frames/");
    for (w, h) in SIZES {
        let video = clip(w, h, 16.0);
        let back = round_trip(&folder, &video);
        assert_same_frames(&video, &back, "PNG folder");
        assert_eq!(back.fps(), 16.0);
    }
    assert!(folder.join("00000.png").is_file());
    assert!(folder.join(FPS_FILE).is_file());
    let short = moving_test_pattern(10, 10, 3, 24000.0 / 1001.0).unwrap();
    let back = round_trip(&folder, &short);
    assert_same_frames(&short, &back, "shorter clip in the same folder");
    assert_eq!(back.fps(), 24000.0 / 1001.0);
    assert_eq!(
        std::fs::read_to_string(folder.join(FPS_FILE))
            .unwrap()
            .trim(),
        "24000/1001"
    );
    // An unrelated file survives.
    std::fs::write(folder.join("notes.txt"), "keep").unwrap();
    round_trip(&folder, &short);
    assert!(folder.join("notes.txt").exists());
}

#[test]
fn y4m_round_trip_is_within_two_levels() {
    let dir = tmp();
    for (w, h) in SIZES {
        let video = clip(w, h, 16.0);
        let back = round_trip(&dir.path().join(format!("p{w}x{h}.y4m")), &video);
        assert_eq!(back.len(), video.len());
        assert_eq!(back.fps(), 16.0);
        let worst = video
            .frames()
            .iter()
            .zip(back.frames())
            .map(|(a, b)| max_abs_diff(a, b))
            .max()
            .unwrap();
        eprintln!("Y4M {w}x{h}: max abs error {worst}");
        assert!(worst <= 2, "{w}x{h}: max error {worst}");
    }
    let ntsc = 24000.0 / 1001.0;
    let back = round_trip(&dir.path().join("ntsc.y4m"), &clip(8, 8, ntsc));
    assert_eq!(back.fps(), ntsc);
}

#[test]
fn y4m_reads_420_from_other_tools() {
    // A 4x2 C420jpeg clip: mid-grey luma, neutral chroma, as ffmpeg writes it.
    let dir = tmp();
    let path = dir.path().join("grey.y4m");
    let mut bytes = b"YUV4MPEG2 W4 H2 F25:1 Ip A0:0 C420jpeg XYSCSS=420JPEG\n".to_vec();
    for _ in 0..2 {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend_from_slice(&[126; 8]);
        bytes.extend_from_slice(&[128; 4]);
    }
    std::fs::write(&path, &bytes).unwrap();
    let v = read_video(&path).unwrap();
    assert_eq!((v.len(), v.width(), v.height(), v.fps()), (2, 4, 2, 25.0));
    assert_eq!(v.frames()[0].pixel(3, 1), [128, 128, 128]);
}

// --- stills --------------------------------------------------------------------

#[test]
fn stills_read_as_one_frame_clips() {
    let dir = tmp();
    let frame = clip(65, 47, 16.0).frames()[3].clone();
    let img = image::RgbImage::from_raw(65, 47, frame.data().to_vec()).unwrap();

    let png_path = dir.path().join("still.png");
    img.save(&png_path).unwrap();
    let v = read_video(&png_path).unwrap();
    assert_eq!((v.len(), v.fps()), (1, DEFAULT_STILL_FPS));
    assert!(v.frames()[0] == frame);
    assert!(read_image(&png_path).unwrap() == frame);

    let jpg_path = dir.path().join("still.JPG");
    img.save_with_format(&jpg_path, image::ImageFormat::Jpeg)
        .unwrap();
    let v = read_video(&jpg_path).unwrap();
    assert_eq!((v.len(), v.width(), v.height()), (1, 65, 47));
    let score = psnr(&v.frames()[0], &frame);
    eprintln!("JPEG still: {score:.2} dB");
    assert!(score > 25.0, "{score}");
    assert_eq!(read_image(&jpg_path).unwrap(), v.frames()[0]);

    // RGBA stills are composited onto black.
    let rgba = image::RgbaImage::from_raw(1, 1, vec![200, 100, 50, 0]).unwrap();
    let rgba_path = dir.path().join("clear.png");
    rgba.save(&rgba_path).unwrap();
    assert_eq!(read_image(&rgba_path).unwrap().pixel(0, 0), [0, 0, 0]);
}

#[test]
fn read_image_takes_the_first_frame_of_animations() {
    let dir = tmp();
    let video = clip(20, 10, 16.0);
    for name in ["a.gif", "a.png", "a.y4m", "f/"] {
        let path = dir.path().join(name);
        write_video(&path, &video).unwrap();
        let first = read_image(&path).unwrap();
        assert!(max_abs_diff(&first, &video.frames()[0]) <= 2, "{name}");
    }
}

// --- malformed input -----------------------------------------------------------

/// Every truncation point of a real file and some garbage must produce an
/// error that names the file, never a panic or a bogus success.
#[test]
fn damaged_files_give_errors_not_panics() {
    let dir = tmp();
    let video = clip(24, 16, 16.0);
    for name in ["v.mp4", "v.gif", "v.png", "v.y4m"] {
        let good = dir.path().join(name);
        write_video(&good, &video).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let bad = dir.path().join(format!("bad-{name}"));
        let cuts = [
            0,
            1,
            7,
            8,
            16,
            40,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() - 1,
        ];
        for cut in cuts {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            match read_video(&bad) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("bad-"), "{name} cut at {cut}: {msg}");
                }
                // Losing the tail of an MP4 may still leave every frame
                // readable only if nothing was cut; anything shorter must fail
                // or at least not claim more frames than exist.
                Ok(v) => assert!(v.len() <= video.len(), "{name} cut at {cut}"),
            }
        }
        let mut garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&bad, &garbage).unwrap();
        let err = read_video(&bad).unwrap_err();
        assert!(err.to_string().contains("bad-"), "{name}: {err}");
        // Right magic, wrong body.
        garbage.splice(0..0, bytes[..16.min(bytes.len())].iter().copied());
        std::fs::write(&bad, &garbage).unwrap();
        assert!(
            read_video(&bad).is_err(),
            "{name} with valid magic and garbage body"
        );
    }
}

#[test]
fn truncated_mp4_is_an_error() {
    let dir = tmp();
    let path = dir.path().join("cut.mp4");
    write_video(&path, &clip(24, 16, 16.0)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = read_video(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VideoError::Decode { .. }), "{msg}");
    assert!(
        msg.contains("cut.mp4") && msg.contains("re-encode"),
        "{msg}"
    );
}

#[test]
fn empty_inputs_say_so() {
    let dir = tmp();
    let empty = dir.path().join("empty/");
    std::fs::create_dir(&empty).unwrap();
    let err = read_video(&empty).unwrap_err();
    assert!(matches!(err, VideoError::EmptyInput { .. }), "{err}");
    assert!(err.to_string().contains("00000.png"), "{err}");

    let y4m = dir.path().join("header-only.y4m");
    std::fs::write(&y4m, b"YUV4MPEG2 W4 H4 F16:1 C444\n").unwrap();
    let err = read_video(&y4m).unwrap_err();
    assert!(matches!(err, VideoError::EmptyInput { .. }), "{err}");
    assert!(err.to_string().contains("header-only.y4m"), "{err}");

    let missing = dir.path().join("missing.mp4");
    let err = read_video(&missing).unwrap_err();
    assert!(matches!(err, VideoError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.mp4"), "{err}");
}

#[test]
fn bad_fps_file_names_itself() {
    let dir = tmp();
    let folder = dir.path().join("f");
    write_video(&folder, &clip(8, 8, 16.0)).unwrap();
    std::fs::write(folder.join(FPS_FILE), "fast").unwrap();
    let msg = read_video(&folder).unwrap_err().to_string();
    assert!(
        msg.contains(FPS_FILE) && msg.contains("24000/1001"),
        "{msg}"
    );
}

#[test]
fn oversized_gif_is_refused_with_advice() {
    let dir = tmp();
    let frame = Frame::filled(70_000, 1, [1, 2, 3]);
    let video = Video::new(vec![frame], 16.0).unwrap();
    let err = write_video(&dir.path().join("wide.gif"), &video).unwrap_err();
    assert!(err.to_string().contains("65535"), "{err}");
}
