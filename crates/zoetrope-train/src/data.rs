//! Training data from the procedural world: clips rendered on the fly, turned into tensors.

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use zoetrope_video::Video;
use zoetrope_world::{render, RenderOptions, Scene};

/// A clip's size: width, height, frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClipShape {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
}

impl ClipShape {
    pub const fn new(width: u32, height: u32, frames: usize) -> Self {
        Self {
            width,
            height,
            frames,
        }
    }
}

impl std::fmt::Display for ClipShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.width, self.height, self.frames)
    }
}

/// Frame rate every training clip is rendered at (the world's physics is frame-rate independent;
/// the model learns motion per frame at this rate).
pub const TRAIN_FPS: f64 = 8.0;

/// Renders `scene` at `shape` and [`TRAIN_FPS`].
pub fn render_clip(scene: &Scene, shape: ClipShape) -> Result<Video> {
    render(
        scene,
        &RenderOptions {
            width: shape.width,
            height: shape.height,
            frames: shape.frames,
            fps: TRAIN_FPS,
        },
    )
    .map_err(|e| candle_core::Error::Msg(format!("rendering a training clip: {e}")))
}

/// A video as `[3, T, H, W]` f32 in [-1, 1], optionally cropped to `crop = (x, y, w, h)`.
pub fn video_tensor(
    video: &Video,
    crop: Option<(u32, u32, u32, u32)>,
    device: &Device,
) -> Result<Tensor> {
    let (x0, y0, w, h) = crop.unwrap_or((0, 0, video.width(), video.height()));
    let t = video.len();
    let plane = (w * h) as usize;
    let mut data = vec![0f32; 3 * t * plane];
    for (fi, frame) in video.frames().iter().enumerate() {
        let src = frame.data();
        let fw = frame.width() as usize;
        for y in 0..h as usize {
            for x in 0..w as usize {
                let s = ((y + y0 as usize) * fw + x + x0 as usize) * 3;
                let d = fi * plane + y * w as usize + x;
                for c in 0..3 {
                    data[c * t * plane + d] = src[s + c] as f32 / 127.5 - 1.0;
                }
            }
        }
    }
    Tensor::from_vec(data, (3, t, h as usize, w as usize), device)
}

/// Per-pixel loss weights `[1, T, H, W]` for a clip `[3, T, H, W]` in [-1, 1]: `weight` where a
/// pixel differs from the clip's background colour (its per-channel median) by more than
/// `threshold` in some channel, 1 elsewhere. Objects cover a few percent of a world clip, so an
/// unweighted loss spends nearly all its gradient on the flat background they sit on.
pub fn foreground_weight(clip: &Tensor, weight: f32, threshold: f32) -> Result<Tensor> {
    let (c, t, h, w) = clip.dims4()?;
    let n = t * h * w;
    let data: Vec<f32> = clip.flatten_all()?.to_vec1()?;
    let median = |ch: usize| {
        let mut v = data[ch * n..(ch + 1) * n].to_vec();
        let mid = n / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    let background: Vec<f32> = (0..c).map(median).collect();
    let out: Vec<f32> = (0..n)
        .map(|i| {
            let far = (0..c).any(|ch| (data[ch * n + i] - background[ch]).abs() > threshold);
            if far {
                weight
            } else {
                1.0
            }
        })
        .collect();
    Tensor::from_vec(out, (1, t, h, w), clip.device())
}

/// Which cells of a `tf × h × w` latent grid hold part of an object, as `[1, 1, tf, h, w]` of 0/1:
/// a cell is foreground when any pixel of its spatial block, in any frame of its causal frame
/// group (frame 0 alone, then equal groups of the rest), is off the clip's background colour (see
/// [`foreground_weight`], same `threshold`). Lets a latent-space loss weigh objects as the VAE's
/// pixel loss does.
pub fn latent_foreground(
    video: &Video,
    (tf, h, w): (usize, usize, usize),
    threshold: f32,
    device: &Device,
) -> Result<Tensor> {
    let pixels = foreground_weight(&video_tensor(video, None, device)?, 2.0, threshold)?;
    let (t, ph, pw) = (video.len(), video.height() as usize, video.width() as usize);
    let group = if tf > 1 { (t - 1) / (tf - 1) } else { 1 };
    if h == 0 || w == 0 || ph % h != 0 || pw % w != 0 || (tf > 1 && 1 + (tf - 1) * group != t) {
        return Err(candle_core::Error::Msg(format!(
            "latent grid {tf}x{h}x{w} does not divide a {t}-frame {pw}x{ph} clip"
        )));
    }
    let (sy, sx) = (ph / h, pw / w);
    let px: Vec<f32> = pixels.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; tf * h * w];
    for (f, frame) in px.chunks(ph * pw).enumerate() {
        let lf = if f == 0 { 0 } else { (f - 1) / group + 1 };
        for (y, row) in frame.chunks(pw).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                if v > 1.0 {
                    out[(lf * h + y / sy) * w + x / sx] = 1.0;
                }
            }
        }
    }
    Tensor::from_vec(out, (1, 1, tf, h, w), device)
}

/// A random crop window of `size × size` inside `width × height`.
pub fn random_crop<R: Rng + ?Sized>(
    rng: &mut R,
    width: u32,
    height: u32,
    size: u32,
) -> (u32, u32, u32, u32) {
    let x = rng.random_range(0..=width.saturating_sub(size));
    let y = rng.random_range(0..=height.saturating_sub(size));
    (x, y, size.min(width), size.min(height))
}

/// A per-(run, step, item) seed, so any step's data can be regenerated after a resume.
pub fn item_seed(run_seed: u64, step: usize, item: usize) -> u64 {
    // SplitMix64 of the packed inputs.
    let mut z = run_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((step as u64) << 20)
        .wrapping_add(item as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_layout_and_range() {
        let scene = Scene::sample(3);
        let video = render_clip(&scene, ClipShape::new(24, 16, 5)).unwrap();
        let t = video_tensor(&video, None, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [3, 5, 16, 24]);
        let c = video_tensor(&video, Some((4, 2, 8, 8)), &Device::Cpu).unwrap();
        assert_eq!(c.dims(), [3, 5, 8, 8]);
        // The crop equals the same window of the whole tensor.
        let w = t.narrow(2, 2, 8).unwrap().narrow(3, 4, 8).unwrap();
        let d = (w - &c).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let px = video.frames()[1].pixel(5, 3);
        let v = t
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(3)
            .unwrap()
            .get(5)
            .unwrap();
        assert_eq!(v.to_scalar::<f32>().unwrap(), px[0] as f32 / 127.5 - 1.0);
    }

    #[test]
    fn item_seeds_differ() {
        let mut seen = std::collections::HashSet::new();
        for s in 0..50 {
            for i in 0..20 {
                assert!(seen.insert(item_seed(1, s, i)));
            }
        }
    }

    #[test]
    fn foreground_weight_marks_what_is_off_the_background() {
        // 2 frames of 4×4 on a dark blue background; one pixel red in frame 0, one slightly
        // off-blue (within the threshold) in frame 1.
        let (t, h, w) = (2, 4, 4);
        let n = t * h * w;
        let mut data = vec![0f32; 3 * n];
        for i in 0..n {
            data[i] = -1.0;
            data[n + i] = -1.0;
            data[2 * n + i] = 0.2;
        }
        let red = 5; // frame 0, row 1, column 1
        data[red] = 1.0;
        data[2 * n + red] = -1.0;
        let faint = h * w + 10; // frame 1
        data[2 * n + faint] = 0.25;
        let clip = Tensor::from_vec(data, (3, t, h, w), &Device::Cpu).unwrap();
        let weights = foreground_weight(&clip, 6.0, 0.1).unwrap();
        assert_eq!(weights.dims(), [1, t, h, w]);
        let v: Vec<f32> = weights.flatten_all().unwrap().to_vec1().unwrap();
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, if i == red { 6.0 } else { 1.0 }, "pixel {i}");
        }
    }

    #[test]
    fn latent_foreground_pools_objects_over_blocks_and_frame_groups() {
        // 5 frames of 8×8 on black, latent grid 3×2×2 (frame 0 alone, then pairs; 4×4 blocks).
        // A white pixel at (5, 1) in frame 3 (group 2, block row 0, column 1) and one at (2, 6)
        // in frame 0 (group 0, block row 1, column 0); a faint one (under the threshold) in frame 1.
        let mut frames: Vec<zoetrope_video::Frame> = (0..5)
            .map(|_| zoetrope_video::Frame::filled(8, 8, [0, 0, 0]))
            .collect();
        frames[3].set_pixel(5, 1, [255, 255, 255]);
        frames[0].set_pixel(2, 6, [255, 255, 255]);
        frames[1].set_pixel(0, 0, [5, 5, 5]);
        let video = Video::new(frames, 8.0).unwrap();
        let m = latent_foreground(&video, (3, 2, 2), 0.1, &Device::Cpu).unwrap();
        assert_eq!(m.dims(), [1, 1, 3, 2, 2]);
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let mut want = vec![0f32; 12];
        want[2] = 1.0; // group 0, row 1, column 0
        want[2 * 4 + 1] = 1.0; // group 2, row 0, column 1
        assert_eq!(v, want);
        // A grid that does not tile the clip is an error, not a silent misalignment.
        let e = latent_foreground(&video, (4, 2, 2), 0.1, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("does not divide"), "{e}");
    }

    #[test]
    fn weighted_mse_is_a_weighted_mean() {
        use zoetrope_models::world::vae::weighted_mse;
        // Errors 1 on the first pixel, 0 elsewhere, 2 channels, 4 pixels.
        let sq = Tensor::from_vec(
            vec![1f32, 0., 0., 0., 1., 0., 0., 0.],
            (1, 2, 1, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let w = Tensor::from_vec(vec![3f32, 1., 1., 1.], (1, 1, 1, 2, 2), &Device::Cpu).unwrap();
        let (weighted, plain) = weighted_mse(&sq, Some(&w)).unwrap();
        let weighted: f32 = weighted.to_scalar().unwrap();
        let plain: f32 = plain.to_scalar().unwrap();
        assert!((plain - 0.25).abs() < 1e-6);
        // (3·1 + 3·1) / (6 · 2 channels)
        assert!((weighted - 0.5).abs() < 1e-6, "{weighted}");
        let (same, _) = weighted_mse(&sq, None).unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), plain);
    }
}
