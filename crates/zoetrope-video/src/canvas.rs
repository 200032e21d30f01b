//! The animation model GIF and APNG share: sub-rectangles drawn onto a
//! persistent RGBA canvas, then cleared or restored before the next frame.

/// What happens to a frame's rectangle after it has been shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dispose {
    Keep,
    /// Clear to transparent black (what browsers do for GIF "background" too).
    Clear,
    /// Restore what was there before the frame was drawn.
    Previous,
}

/// How a frame's pixels combine with the canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blend {
    Replace,
    Over,
}

/// A placed sub-image; `rgba` is `w * h * 4` bytes.
pub(crate) struct Patch<'a> {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub rgba: &'a [u8],
    pub blend: Blend,
    pub dispose: Dispose,
}

pub(crate) struct Canvas {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
    /// Pending disposal of the previously drawn frame.
    pending: Option<(Dispose, [u32; 4], Option<Vec<u8>>)>,
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgba: vec![0; width as usize * height as usize * 4],
            pending: None,
        }
    }

    /// Draws `patch` (after disposing the previous one) and returns the
    /// visible RGB picture. Parts of the patch outside the canvas are dropped,
    /// as browsers do; a buffer shorter than the patch is an error.
    pub fn draw(&mut self, patch: &Patch<'_>) -> Result<Vec<u8>, String> {
        let pw = patch.w as usize;
        if patch.rgba.len() < pw * patch.h as usize * 4 {
            return Err("frame data is shorter than its declared size".into());
        }
        if let Some((dispose, rect, saved)) = self.pending.take() {
            match dispose {
                Dispose::Keep => {}
                Dispose::Clear => self.fill_rect(rect, None),
                Dispose::Previous => self.fill_rect(rect, saved.as_deref()),
            }
        }
        let x = patch.x.min(self.width);
        let y = patch.y.min(self.height);
        let w = patch.w.min(self.width - x);
        let h = patch.h.min(self.height - y);
        let rect = [x, y, w, h];
        let saved = (patch.dispose == Dispose::Previous).then(|| self.copy_rect(rect));
        let cw = self.width as usize;
        for row in 0..h as usize {
            for col in 0..w as usize {
                let src = &patch.rgba[(row * pw + col) * 4..][..4];
                let di = ((y as usize + row) * cw + x as usize + col) * 4;
                let dst = &mut self.rgba[di..di + 4];
                match patch.blend {
                    Blend::Replace => dst.copy_from_slice(src),
                    Blend::Over => over(dst, src),
                }
            }
        }
        self.pending = Some((patch.dispose, rect, saved));
        Ok(rgba_over_black(&self.rgba))
    }

    fn copy_rect(&self, [x, y, w, h]: [u32; 4]) -> Vec<u8> {
        let mut out = Vec::with_capacity(w as usize * h as usize * 4);
        for row in y..y + h {
            let start = (row as usize * self.width as usize + x as usize) * 4;
            out.extend_from_slice(&self.rgba[start..start + w as usize * 4]);
        }
        out
    }

    /// `None` clears to transparent black.
    fn fill_rect(&mut self, [x, y, w, h]: [u32; 4], data: Option<&[u8]>) {
        let rowlen = w as usize * 4;
        for (i, row) in (y..y + h).enumerate() {
            let start = (row as usize * self.width as usize + x as usize) * 4;
            let dst = &mut self.rgba[start..start + rowlen];
            match data {
                Some(d) => dst.copy_from_slice(&d[i * rowlen..(i + 1) * rowlen]),
                None => dst.fill(0),
            }
        }
    }
}

/// Porter-Duff "over" for non-premultiplied 8-bit RGBA.
fn over(dst: &mut [u8], src: &[u8]) {
    let sa = src[3] as u32;
    if sa == 255 {
        dst.copy_from_slice(src);
        return;
    }
    if sa == 0 {
        return;
    }
    let da = dst[3] as u32;
    // Output alpha scaled by 255: sa + da * (1 - sa).
    let oa = sa * 255 + da * (255 - sa);
    if oa == 0 {
        dst.fill(0);
        return;
    }
    for c in 0..3 {
        let num = src[c] as u32 * sa * 255 + dst[c] as u32 * da * (255 - sa);
        dst[c] = ((num + oa / 2) / oa) as u8;
    }
    dst[3] = ((oa + 127) / 255) as u8;
}

/// Drops alpha by compositing onto black, so fully transparent areas come out
/// black rather than as whatever colour happens to be stored under them.
pub(crate) fn rgba_over_black(rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = px[3] as u32;
        if a == 255 {
            out.extend_from_slice(&px[..3]);
        } else {
            for &c in &px[..3] {
                out.push(((c as u32 * a + 127) / 255) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, c: [u8; 4]) -> Vec<u8> {
        c.iter()
            .copied()
            .cycle()
            .take((w * h * 4) as usize)
            .collect()
    }

    #[test]
    fn dispose_previous_restores_and_clear_clears() {
        let mut canvas = Canvas::new(2, 1);
        let red = solid(2, 1, [255, 0, 0, 255]);
        let green = solid(1, 1, [0, 255, 0, 255]);
        let blue = solid(1, 1, [0, 0, 255, 255]);
        let f0 = canvas
            .draw(&Patch {
                x: 0,
                y: 0,
                w: 2,
                h: 1,
                rgba: &red,
                blend: Blend::Replace,
                dispose: Dispose::Keep,
            })
            .unwrap();
        assert_eq!(f0, vec![255, 0, 0, 255, 0, 0]);
        let f1 = canvas
            .draw(&Patch {
                x: 1,
                y: 0,
                w: 1,
                h: 1,
                rgba: &green,
                blend: Blend::Over,
                dispose: Dispose::Previous,
            })
            .unwrap();
        assert_eq!(f1, vec![255, 0, 0, 0, 255, 0]);
        let f2 = canvas
            .draw(&Patch {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
                rgba: &blue,
                blend: Blend::Replace,
                dispose: Dispose::Clear,
            })
            .unwrap();
        assert_eq!(f2, vec![0, 0, 255, 255, 0, 0]);
        let none = solid(1, 1, [9, 9, 9, 0]);
        let f3 = canvas
            .draw(&Patch {
                x: 1,
                y: 0,
                w: 1,
                h: 1,
                rgba: &none,
                blend: Blend::Over,
                dispose: Dispose::Keep,
            })
            .unwrap();
        assert_eq!(f3, vec![0, 0, 0, 255, 0, 0]);
        // Off-canvas parts are clipped; a short buffer is an error.
        let f4 = canvas
            .draw(&Patch {
                x: 1,
                y: 0,
                w: 2,
                h: 1,
                rgba: &solid(2, 1, [1, 2, 3, 255]),
                blend: Blend::Replace,
                dispose: Dispose::Keep,
            })
            .unwrap();
        assert_eq!(f4, vec![0, 0, 0, 1, 2, 3]);
        assert!(canvas
            .draw(&Patch {
                x: 0,
                y: 0,
                w: 2,
                h: 2,
                rgba: &none,
                blend: Blend::Over,
                dispose: Dispose::Keep,
            })
            .is_err());
    }
}
