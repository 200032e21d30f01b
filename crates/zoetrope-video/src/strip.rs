//! Contact sheets: a few frames of a clip side by side in one image, for READMEs and reports.

use crate::{Frame, Video, VideoError};

/// Gap between frames in a strip, in pixels.
const GAP: u32 = 2;

/// Lays `count` evenly spaced frames of `video` left to right (first and last included), separated
/// by a `GAP`-pixel band of `gap_rgb`.
pub fn frame_strip(video: &Video, count: usize, gap_rgb: [u8; 3]) -> Result<Frame, VideoError> {
    if count == 0 {
        return Err(VideoError::Invalid(
            "a frame strip needs at least one frame: ask for 1 or more".into(),
        ));
    }
    let n = video.len();
    let count = count.min(n);
    let picks: Vec<usize> = if count == 1 {
        vec![0]
    } else {
        (0..count).map(|i| i * (n - 1) / (count - 1)).collect()
    };
    let (w, h) = (video.width(), video.height());
    let sheet_w = w * count as u32 + GAP * (count as u32 - 1);
    let mut sheet = Frame::filled(sheet_w, h, gap_rgb);
    let row_bytes = w as usize * 3;
    for (slot, &fi) in picks.iter().enumerate() {
        let src = video.frames()[fi].data();
        let x0 = slot as u32 * (w + GAP);
        for y in 0..h as usize {
            let dst_off = (y * sheet_w as usize + x0 as usize) * 3;
            sheet.data_mut()[dst_off..dst_off + row_bytes]
                .copy_from_slice(&src[y * row_bytes..(y + 1) * row_bytes]);
        }
    }
    Ok(sheet)
}

/// Stacks images top to bottom with a `GAP`-pixel band between them; narrower rows are padded on
/// the right with `gap_rgb`, so clips of different aspect ratios share one sheet.
pub fn stack_rows(rows: &[Frame], gap_rgb: [u8; 3]) -> Result<Frame, VideoError> {
    if rows.is_empty() {
        return Err(VideoError::NoFrames);
    }
    let w = rows.iter().map(|r| r.width()).max().unwrap_or(1);
    let total_h: u32 = rows.iter().map(|r| r.height()).sum::<u32>() + GAP * (rows.len() as u32 - 1);
    let mut sheet = Frame::filled(w, total_h, gap_rgb);
    let sheet_row = w as usize * 3;
    let mut y0 = 0usize;
    for r in rows {
        let row_bytes = r.width() as usize * 3;
        for y in 0..r.height() as usize {
            let dst = (y0 + y) * sheet_row;
            sheet.data_mut()[dst..dst + row_bytes]
                .copy_from_slice(&r.data()[y * row_bytes..(y + 1) * row_bytes]);
        }
        y0 += (r.height() + GAP) as usize;
    }
    Ok(sheet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize) -> Video {
        let frames = (0..n)
            .map(|i| Frame::filled(4, 3, [i as u8 * 10, 0, 0]))
            .collect();
        Video::new(frames, 8.0).unwrap()
    }

    #[test]
    fn strip_picks_first_and_last_and_places_them() {
        let sheet = frame_strip(&clip(9), 3, [255, 255, 255]).unwrap();
        assert_eq!((sheet.width(), sheet.height()), (4 * 3 + 2 * GAP, 3));
        assert_eq!(sheet.pixel(0, 0), [0, 0, 0]);
        assert_eq!(sheet.pixel(4, 1), [255, 255, 255]); // the gap
        assert_eq!(sheet.pixel(4 + GAP, 2), [40, 0, 0]); // frame 4
        assert_eq!(sheet.pixel(sheet.width() - 1, 0), [80, 0, 0]); // frame 8
    }

    #[test]
    fn strip_of_more_frames_than_the_clip_has_uses_them_all() {
        let sheet = frame_strip(&clip(2), 5, [0, 0, 0]).unwrap();
        assert_eq!(sheet.width(), 4 * 2 + GAP);
        assert!(frame_strip(&clip(2), 0, [0, 0, 0]).is_err());
    }

    #[test]
    fn stacking_keeps_rows_in_order() {
        let rows = [
            Frame::filled(3, 2, [1, 1, 1]),
            Frame::filled(3, 1, [2, 2, 2]),
        ];
        let sheet = stack_rows(&rows, [9, 9, 9]).unwrap();
        assert_eq!(sheet.height(), 3 + GAP);
        assert_eq!(sheet.pixel(0, 1), [1, 1, 1]);
        assert_eq!(sheet.pixel(0, 2), [9, 9, 9]);
        assert_eq!(sheet.pixel(2, 2 + GAP), [2, 2, 2]);
        let ragged = [
            Frame::filled(3, 2, [1, 1, 1]),
            Frame::filled(4, 1, [2, 2, 2]),
        ];
        let sheet = stack_rows(&ragged, [9, 9, 9]).unwrap();
        assert_eq!(sheet.width(), 4);
        assert_eq!(sheet.pixel(3, 0), [9, 9, 9]); // padding right of the narrow row
        assert_eq!(sheet.pixel(3, 2 + GAP), [2, 2, 2]);
        assert!(stack_rows(&[], [0, 0, 0]).is_err());
    }
}
