//! In-memory frames and clips: 8-bit RGB, row-major, no padding.

use crate::VideoError;

/// One RGB frame, 3 bytes per pixel, rows top to bottom.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

impl Frame {
    /// A frame filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Wraps packed RGB bytes; the length must be `width * height * 3`.
    pub fn from_rgb(width: u32, height: u32, data: Vec<u8>) -> Result<Self, VideoError> {
        let expected = width as usize * height as usize * 3;
        if width == 0 || height == 0 {
            return Err(VideoError::InvalidSize { width, height });
        }
        if data.len() != expected {
            return Err(VideoError::Invalid(format!(
                "a {width}x{height} RGB frame needs {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Packed RGB bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    pub fn set_pixel(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// A clip: frames of one size at a fixed frame rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Video {
    frames: Vec<Frame>,
    fps: f64,
}

impl Video {
    /// Checks that there is at least one frame, all frames share a size, and fps is positive.
    pub fn new(frames: Vec<Frame>, fps: f64) -> Result<Self, VideoError> {
        let Some(first) = frames.first() else {
            return Err(VideoError::NoFrames);
        };
        if !(fps.is_finite() && fps > 0.0) {
            return Err(VideoError::Invalid(format!(
                "frame rate must be a positive number, got {fps}"
            )));
        }
        let (w, h) = (first.width(), first.height());
        if let Some((i, f)) = frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.width() != w || f.height() != h)
        {
            return Err(VideoError::Invalid(format!(
                "frame {i} is {}x{} but frame 0 is {w}x{h}; all frames of a clip must share one size",
                f.width(),
                f.height()
            )));
        }
        Ok(Self { frames, fps })
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn into_frames(self) -> Vec<Frame> {
        self.frames
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    pub fn width(&self) -> u32 {
        self.frames[0].width()
    }

    pub fn height(&self) -> u32 {
        self.frames[0].height()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: a `Video` holds at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.frames.len() as f64 / self.fps
    }
}

/// Peak signal-to-noise ratio in dB between two same-sized frames (infinite when identical).
pub fn psnr(a: &Frame, b: &Frame) -> f64 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    let mse = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum::<f64>()
        / a.data().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}
