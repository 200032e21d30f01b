//! H.264 in MP4: OpenH264 for the codec, muxide to mux (index first, so
//! browsers can start playing before the whole file has arrived), the `mp4`
//! crate to demux.
//!
//! H.264 4:2:0 needs even dimensions, and its cropping rectangle works in
//! 2-pixel steps, so an odd-sized clip is encoded one pixel larger (the last
//! column/row repeated) and the true size is stored in the track header
//! (`tkhd`). Our reader crops back to it; players that ignore `tkhd` show the
//! extra pixel. Colour is BT.601 limited range, signalled in the stream's VUI.

use std::io::{BufReader, Cursor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use openh264::decoder::{DecodeOptions, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp};

use crate::color::{self, PlaneView};
use crate::{finish_clip, timing, Frame, Video, VideoError};

/// Constant quantiser. QP 18 is near-transparent (the round-trip tests see
/// about 39-41 dB on the synthetic pattern) at a few KB per small frame.
const QP: u8 = 18;
/// Only a nominal budget: with the QP pinned the rate controller cannot
/// trade quality for size, but OpenH264 still validates a target.
const BITS_PER_PIXEL: f64 = 8.0;
/// A keyframe every this many seconds, for seeking.
const KEYFRAME_SECONDS: f64 = 2.0;
/// OpenH264's limits (level 5.2).
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;

pub(crate) fn write(path: &Path, video: &Video) -> Result<(), VideoError> {
    let (w, h) = (video.width(), video.height());
    if w.max(h) > MAX_LONG_SIDE || w.min(h) > MAX_SHORT_SIDE {
        return Err(VideoError::encode(
            path,
            format!(
                "H.264 via OpenH264 supports at most {MAX_LONG_SIDE}x{MAX_SHORT_SIDE} \
                 (either orientation), this clip is {w}x{h}; downscale it or write .png frames"
            ),
        ));
    }
    let bytes = encode(video).map_err(|reason| VideoError::encode(path, reason))?;
    crate::write_file(path, &bytes)
}

fn encode(video: &Video) -> Result<Vec<u8>, String> {
    let (w, h) = (video.width(), video.height());
    let (ew, eh) = (w + (w & 1), h + (h & 1));
    let fps = video.fps();
    let bps =
        (ew as f64 * eh as f64 * fps * BITS_PER_PIXEL).clamp(200_000.0, u32::MAX as f64 / 2.0);
    let keyint = (fps * KEYFRAME_SECONDS).round().clamp(1.0, 1000.0) as u32;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(bps as u32))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        // Buffer-based control honours the QP range without dropping frames;
        // the quality/bitrate modes warn on stderr when skipping is off.
        .rate_control_mode(RateControlMode::Bufferbased)
        // A skipped frame would silently shorten the clip.
        .skip_frames(false)
        .qp(QpRange::new(QP, QP))
        // Both let static-looking blocks go stale: moving edges left trails
        // at 27 dB on the test pattern with them on.
        .adaptive_quantization(false)
        .background_detection(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(keyint))
        .usage_type(UsageType::CameraVideoRealTime)
        // One thread keeps the output byte-for-byte reproducible.
        .num_threads(1)
        .vui(VuiConfig::bt601());
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| format!("cannot start the H.264 encoder: {e}"))?;
    let mut muxer = muxide::api::MuxerBuilder::new(Vec::new())
        .video(muxide::api::VideoCodec::H264, ew, eh, fps)
        .with_fast_start(true)
        .build()
        .map_err(|e| format!("cannot start the MP4 muxer: {e}"))?;

    for (i, frame) in video.frames().iter().enumerate() {
        let padded = pad_to_even(frame);
        let planes = color::rgb_to_420(ew as usize, eh as usize, &padded);
        let mut yuv = planes.y;
        yuv.extend_from_slice(&planes.cb);
        yuv.extend_from_slice(&planes.cr);
        let source = YUVBuffer::from_vec(yuv, ew as usize, eh as usize);
        let millis = (i as f64 * 1000.0 / fps).round() as u64;
        let stream = encoder
            .encode_at(&source, Timestamp::from_millis(millis))
            .map_err(|e| format!("H.264 encoder failed on frame {i}: {e}"))?;
        let kind = stream.frame_type();
        let data = stream.to_vec();
        if data.is_empty() || matches!(kind, FrameType::Skip | FrameType::Invalid) {
            return Err(format!("the H.264 encoder dropped frame {i}"));
        }
        muxer
            .write_video(i as f64 / fps, &data, kind == FrameType::IDR)
            .map_err(|e| format!("MP4 muxer rejected frame {i}: {e}"))?;
    }
    muxer
        .finish_in_place()
        .map_err(|e| format!("cannot finish the MP4: {e}"))?;
    let mut bytes = muxer.into_writer();
    let single = (video.len() == 1).then_some(fps);
    patch_header(&mut bytes, w, h, single)?;
    Ok(bytes)
}

/// Copies the frame into an even-sized buffer, repeating the last column and
/// row, so the padding does not introduce an edge for the encoder to spend
/// bits on.
fn pad_to_even(frame: &Frame) -> Vec<u8> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (ew, eh) = (w + (w & 1), h + (h & 1));
    if (ew, eh) == (w, h) {
        return frame.data().to_vec();
    }
    let mut out = Vec::with_capacity(ew * eh * 3);
    for row in 0..eh {
        let src = &frame.data()[row.min(h - 1) * w * 3..][..w * 3];
        out.extend_from_slice(src);
        if ew > w {
            out.extend_from_slice(&src[(w - 1) * 3..]);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// In-place header edits. muxide sizes the track from the coded (even) size
// and gives a lone frame a one-tick duration; both are fixed here without
// changing any box size, so the chunk offsets it wrote stay valid.

/// `(payload_start, end)` of the first child box called `name` in `buf[start..end]`.
fn find_box(buf: &[u8], start: usize, end: usize, name: &[u8; 4]) -> Option<(usize, usize)> {
    let mut pos = start;
    while pos + 8 <= end {
        let size32 = u32::from_be_bytes(buf[pos..pos + 4].try_into().ok()?) as u64;
        let (header, size) = match size32 {
            0 => (8, (end - pos) as u64),
            1 => {
                let large = u64::from_be_bytes(buf.get(pos + 8..pos + 16)?.try_into().ok()?);
                (16, large)
            }
            s => (8, s),
        };
        if size < header as u64 || pos as u64 + size > end as u64 {
            return None;
        }
        let box_end = pos + size as usize;
        if &buf[pos + 4..pos + 8] == name {
            return Some((pos + header, box_end));
        }
        pos = box_end;
    }
    None
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) -> Option<()> {
    buf.get_mut(at..at + 4)?.copy_from_slice(&v.to_be_bytes());
    Some(())
}

fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Writes a version-0 (32-bit) or version-1 (64-bit) duration field.
fn put_duration(buf: &mut [u8], payload: usize, v0_at: usize, v1_at: usize, v: u64) -> Option<()> {
    if *buf.get(payload)? == 1 {
        buf.get_mut(payload + v1_at..payload + v1_at + 8)?
            .copy_from_slice(&v.to_be_bytes());
    } else {
        put_u32(buf, payload + v0_at, u32::try_from(v).ok()?)?;
    }
    Some(())
}

/// Sets the track's display size to `width x height` and, for a one-frame
/// clip, gives that frame a full `1 / fps` duration.
fn patch_header(
    buf: &mut [u8],
    width: u32,
    height: u32,
    single_fps: Option<f64>,
) -> Result<(), String> {
    patch_header_inner(buf, width, height, single_fps)
        .ok_or_else(|| "the MP4 muxer produced an unexpected box layout".to_string())
}

fn patch_header_inner(
    buf: &mut [u8],
    width: u32,
    height: u32,
    single_fps: Option<f64>,
) -> Option<()> {
    let (moov, moov_end) = find_box(buf, 0, buf.len(), b"moov")?;
    let (trak, trak_end) = find_box(buf, moov, moov_end, b"trak")?;
    let (tkhd, _) = find_box(buf, trak, trak_end, b"tkhd")?;
    let size_at = if *buf.get(tkhd)? == 1 { 88 } else { 76 };
    put_u32(buf, tkhd + size_at, width << 16)?;
    put_u32(buf, tkhd + size_at + 4, height << 16)?;

    let Some(fps) = single_fps else {
        return Some(());
    };
    let (mvhd, _) = find_box(buf, moov, moov_end, b"mvhd")?;
    let movie_scale = get_u32(buf, mvhd + if *buf.get(mvhd)? == 1 { 20 } else { 12 })?;
    let movie_ticks = (movie_scale as f64 / fps).round().max(1.0) as u64;
    put_duration(buf, mvhd, 16, 24, movie_ticks)?;
    put_duration(buf, tkhd, 20, 28, movie_ticks)?;

    let (mdia, mdia_end) = find_box(buf, trak, trak_end, b"mdia")?;
    let (mdhd, _) = find_box(buf, mdia, mdia_end, b"mdhd")?;
    let media_scale = get_u32(buf, mdhd + if *buf.get(mdhd)? == 1 { 20 } else { 12 })?;
    let media_ticks = (media_scale as f64 / fps).round().max(1.0) as u64;
    put_duration(buf, mdhd, 16, 24, media_ticks)?;
    let (minf, minf_end) = find_box(buf, mdia, mdia_end, b"minf")?;
    let (stbl, stbl_end) = find_box(buf, minf, minf_end, b"stbl")?;
    let (stts, _) = find_box(buf, stbl, stbl_end, b"stts")?;
    if get_u32(buf, stts + 4)? == 1 && get_u32(buf, stts + 8)? == 1 {
        put_u32(buf, stts + 12, u32::try_from(media_ticks).ok()?)?;
    }
    Some(())
}

/// Top-level box names in file order (for checking the fast-start layout).
#[cfg(test)]
pub(crate) fn top_level_boxes(buf: &[u8]) -> Vec<[u8; 4]> {
    let mut names = Vec::new();
    let mut pos = 0;
    while pos + 8 <= buf.len() {
        let name: [u8; 4] = buf[pos + 4..pos + 8].try_into().unwrap_or(*b"????");
        let Some((_, end)) = find_box(buf, pos, buf.len(), &name) else {
            break;
        };
        names.push(name);
        pos = end;
    }
    names
}

// ---------------------------------------------------------------------------
// Reading.

pub(crate) fn read(path: &Path, limit: Option<usize>) -> Result<Video, VideoError> {
    let bytes = std::fs::read(path).map_err(|e| VideoError::io(path, e))?;
    // The demuxer and decoder are third-party code fed untrusted bytes; a
    // panic in them must surface as a decode error, not take the caller down.
    let outcome = catch_unwind(AssertUnwindSafe(|| decode(&bytes, limit)));
    let decoded = match outcome {
        Ok(result) => result,
        Err(_) => Err("the MP4 demuxer or H.264 decoder crashed on this file".to_string()),
    }
    .map_err(|reason| {
        VideoError::decode(
            path,
            format!("{reason} (zoetrope reads complete MP4 files with an H.264 video track; re-encode it, e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4)"),
        )
    })?;
    finish_clip(
        path,
        decoded.frames,
        decoded.fps,
        "the MP4's video track holds no decodable pictures; re-encode it",
    )
}

struct Decoded {
    frames: Vec<Frame>,
    fps: f64,
}

fn decode(bytes: &[u8], limit: Option<usize>) -> Result<Decoded, String> {
    let size = bytes.len() as u64;
    let mut mp4 = mp4::Mp4Reader::read_header(BufReader::new(Cursor::new(bytes)), size)
        .map_err(|e| format!("not a readable MP4: {e}"))?;
    let track = mp4
        .moov
        .traks
        .iter()
        .find(|t| t.mdia.minf.stbl.stsd.avc1.is_some())
        .ok_or("the MP4 has no H.264 (avc1) video track")?;
    let track_id = track.tkhd.track_id;
    let avc1 = track.mdia.minf.stbl.stsd.avc1.as_ref().ok_or("no avc1")?;
    let nal_len_size = avc1.avcc.length_size_minus_one as usize % 4 + 1;
    let mut parameter_sets = Vec::new();
    for nal in avc1
        .avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avc1.avcc.picture_parameter_sets)
    {
        parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
        parameter_sets.extend_from_slice(&nal.bytes);
    }
    let display = (
        track.tkhd.width.value() as u32,
        track.tkhd.height.value() as u32,
    );
    let timescale = track.mdia.mdhd.timescale;
    if timescale == 0 {
        return Err("the video track's timescale is zero".into());
    }
    let stts: Vec<(u32, u32)> = track
        .mdia
        .minf
        .stbl
        .stts
        .entries
        .iter()
        .map(|e| (e.sample_count, e.sample_delta))
        .collect();
    let stsz = &track.mdia.minf.stbl.stsz;
    let sample_count = stsz.sample_count;
    let oversized = if stsz.sample_size == 0 {
        stsz.sample_sizes.iter().any(|&s| s as u64 > size)
    } else {
        stsz.sample_size as u64 > size
    };
    if oversized {
        return Err("a sample is larger than the whole file; the file is damaged".into());
    }
    if sample_count == 0 {
        return Err("the H.264 track has no samples".into());
    }

    let mut decoder = Decoder::with_api_config(
        OpenH264API::from_source(),
        // Frames come out in presentation order only if the decoder may hold
        // them back for reordering (streams with B-frames).
        DecoderConfig::new().flush_after_decode(Flush::NoFlush),
    )
    .map_err(|e| format!("cannot start the H.264 decoder: {e}"))?;
    let wanted = limit.unwrap_or(usize::MAX);
    let mut frames = Vec::new();
    let mut annexb = Vec::new();
    for sample_id in 1..=sample_count {
        if frames.len() >= wanted {
            break;
        }
        let sample = mp4
            .read_sample(track_id, sample_id)
            .map_err(|e| format!("sample {sample_id}: {e}"))?
            .ok_or_else(|| format!("sample {sample_id} is missing from the index"))?;
        annexb.clear();
        if sample_id == 1 {
            annexb.extend_from_slice(&parameter_sets);
        }
        length_prefixed_to_annexb(&sample.bytes, nal_len_size, &mut annexb)
            .map_err(|e| format!("sample {sample_id}: {e}"))?;
        let picture = decoder
            .decode_with_options(
                &annexb,
                DecodeOptions::new().flush_after_decode(Flush::NoFlush),
            )
            .map_err(|e| format!("H.264 decoding failed at sample {sample_id}: {e}"))?;
        if let Some(yuv) = picture {
            frames.push(to_frame(&yuv, display)?);
        }
    }
    if frames.len() < wanted {
        let rest = decoder
            .flush_remaining()
            .map_err(|e| format!("H.264 decoder failed while flushing: {e}"))?;
        for yuv in rest {
            frames.push(to_frame(&yuv, display)?);
        }
    }
    frames.truncate(wanted);
    let fps = fps_from_stts(&stts, timescale).ok_or("the video track has no timing")?;
    Ok(Decoded { frames, fps })
}

fn length_prefixed_to_annexb(
    sample: &[u8],
    len_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut pos = 0;
    while pos < sample.len() {
        let header = sample
            .get(pos..pos + len_size)
            .ok_or("a NAL unit length is cut off")?;
        let len = header.iter().fold(0usize, |acc, &b| acc << 8 | b as usize);
        pos += len_size;
        let nal = sample
            .get(pos..pos + len)
            .ok_or("a NAL unit runs past the end of its sample")?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        pos += len;
    }
    Ok(())
}

/// Converts a decoded picture, cropping to the track header's size when it
/// is the one-pixel-smaller size our writer pads from.
fn to_frame(yuv: &impl YUVSource, display: (u32, u32)) -> Result<Frame, String> {
    let (dw, dh) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    if su != sv {
        return Err("the decoder returned mismatched chroma strides".into());
    }
    let crop = |decoded: usize, shown: u32| {
        let shown = shown as usize;
        if shown > 0 && shown <= decoded && decoded - shown <= 1 {
            shown
        } else {
            decoded
        }
    };
    let (w, h) = (crop(dw, display.0), crop(dh, display.1));
    let rgb = color::planes_to_rgb(
        &PlaneView {
            width: dw,
            height: dh,
            y: yuv.y(),
            y_stride: sy,
            cb: yuv.u(),
            cr: yuv.v(),
            c_stride: su,
            shift_x: 1,
            shift_y: 1,
            full_range: false,
        },
        w,
        h,
    )
    .ok_or("the decoder returned a picture smaller than its stated size")?;
    Frame::from_rgb(w as u32, h as u32, rgb).map_err(|e| e.to_string())
}

/// Frame rate from the sample durations, snapped to a whole or NTSC-style
/// rate when one reproduces every sample's start time to within a tick.
fn fps_from_stts(stts: &[(u32, u32)], timescale: u32) -> Option<f64> {
    let count: u64 = stts.iter().map(|&(n, _)| n as u64).sum();
    let total: u64 = stts.iter().map(|&(n, d)| n as u64 * d as u64).sum();
    if count == 0 || total == 0 {
        return None;
    }
    let ts = timescale as f64;
    let measured = count as f64 * ts / total as f64;
    Some(timing::snap_fps(measured, |fps| {
        let tick = ts / fps;
        let mut start = 0u64;
        let mut i = 0u64;
        for &(n, d) in stts {
            for _ in 0..n {
                if (start as f64 - (i as f64 * tick)).abs() > 1.0 {
                    return false;
                }
                start += d as u64;
                i += 1;
            }
        }
        (total as f64 - count as f64 * tick).abs() <= 2.0
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_conversion_rejects_truncation() {
        let mut out = Vec::new();
        length_prefixed_to_annexb(&[0, 0, 0, 2, 0x65, 0x88], 4, &mut out).unwrap();
        assert_eq!(out, vec![0, 0, 0, 1, 0x65, 0x88]);
        assert!(length_prefixed_to_annexb(&[0, 0, 0, 9, 0x65], 4, &mut out).is_err());
        assert!(length_prefixed_to_annexb(&[0, 0], 4, &mut out).is_err());
    }

    #[test]
    fn stts_rates() {
        assert_eq!(fps_from_stts(&[(9, 5625)], 90000), Some(16.0));
        // 23.976 at 90 kHz alternates 3754/3753-tick frames.
        let ntsc = 24000.0 / 1001.0;
        let starts: Vec<u64> = (0..=48)
            .map(|i| (i as f64 * 90000.0 / ntsc).round() as u64)
            .collect();
        let stts: Vec<(u32, u32)> = starts
            .windows(2)
            .map(|w| (1, (w[1] - w[0]) as u32))
            .collect();
        assert_eq!(fps_from_stts(&stts, 90000), Some(ntsc));
        assert_eq!(fps_from_stts(&[(1, 3000)], 90000), Some(30.0));
        assert_eq!(fps_from_stts(&[], 90000), None);
    }
}
