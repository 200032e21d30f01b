//! Drawing scenes: plain background, flat-coloured shapes with anti-aliased edges.

use zoetrope_video::{Frame, Video};

use crate::physics::ObjectState;
use crate::scene::Scene;
use crate::spec::{Colour, ObjectSpec, Shape};
use crate::WorldError;

/// Smallest and largest frame side, in pixels.
pub const MIN_SIDE: u32 = 16;
pub const MAX_SIDE: u32 = 4096;

/// Frame size, clip length and frame rate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RenderOptions {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
}

impl RenderOptions {
    /// Checks the ranges; the message says what is allowed.
    pub fn validate(&self) -> Result<(), WorldError> {
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(WorldError::InvalidOptions(format!(
                    "{name} is {v} pixels; it must be from {MIN_SIDE} to {MAX_SIDE}"
                )));
            }
        }
        if self.frames == 0 {
            return Err(WorldError::InvalidOptions(
                "a clip needs at least 1 frame".to_string(),
            ));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(WorldError::InvalidOptions(format!(
                "the frame rate is {}; it must be a positive number of frames per second",
                self.fps
            )));
        }
        Ok(())
    }

    /// Width over height: how many frame heights wide the world is.
    pub fn aspect(&self) -> f64 {
        self.width as f64 / self.height as f64
    }

    /// The time of each frame in seconds: frame `i` shows time `i / fps`.
    pub fn times(&self) -> Vec<f64> {
        (0..self.frames).map(|i| i as f64 / self.fps).collect()
    }
}

/// Renders the scene as a clip.
pub fn render(scene: &Scene, opts: &RenderOptions) -> Result<Video, WorldError> {
    Ok(render_with_states(scene, opts)?.0)
}

/// Renders the scene and also returns the ground-truth state of every object in every frame
/// (`[frame][object]`, in frame heights; multiply by `opts.height` for pixels).
pub fn render_with_states(
    scene: &Scene,
    opts: &RenderOptions,
) -> Result<(Video, Vec<Vec<ObjectState>>), WorldError> {
    opts.validate()?;
    scene.validate()?;
    let states = scene.simulate(opts.aspect(), &opts.times());
    let frames = states
        .iter()
        .map(|s| render_frame(scene, s, opts.width, opts.height))
        .collect();
    Ok((Video::new(frames, opts.fps)?, states))
}

/// Draws one frame of the scene with its objects at the given states (one per object, in frame
/// heights). Objects are drawn in order, so later ones cover earlier ones.
pub fn render_frame(scene: &Scene, states: &[ObjectState], width: u32, height: u32) -> Frame {
    let mut frame = Frame::filled(width, height, scene.spec.background.rgb());
    for (o, s) in scene.spec.objects.iter().zip(states) {
        draw_object(&mut frame, o, s);
    }
    frame
}

/// Fraction of the pixel centred at (x, y) (relative to the shape's box centre, in pixels) that a
/// shape of radius `r` covers: a one-pixel anti-aliasing ramp across the edge. The evaluator
/// fits this same coverage to what it sees.
pub(crate) fn coverage(shape: Shape, x: f64, y: f64, r: f64) -> f64 {
    (0.5 - signed_distance(shape, x, y, r)).clamp(0.0, 1.0)
}

/// Signed distance in pixels from (x, y) to the shape's edge, negative inside. The triangle's
/// is exact inside and near its edges, which is all anti-aliasing needs.
fn signed_distance(shape: Shape, x: f64, y: f64, r: f64) -> f64 {
    match shape {
        Shape::Circle => (x * x + y * y).sqrt() - r,
        Shape::Square => x.abs().max(y.abs()) - r,
        Shape::Triangle => {
            // Apex at (0, -r), base from (-r, r) to (r, r): it fills the same bounding box as
            // the other shapes, so every shape's box is 2r square around its position.
            let k = 1.0 / 5f64.sqrt();
            let base = y - r;
            let sides = (2.0 * x.abs() - (y + r)) * k;
            base.max(sides)
        }
    }
}

fn draw_object(frame: &mut Frame, o: &ObjectSpec, s: &ObjectState) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let scale = h as f64;
    let (cx, cy, r) = (s.x * scale, s.y * scale, o.size.radius() * scale);
    // Only pixels within a pixel of the bounding box can be touched.
    let x0 = ((cx - r - 1.0).floor().max(0.0) as usize).min(w);
    let x1 = ((cx + r + 1.0).ceil().max(0.0) as usize).min(w);
    let y0 = ((cy - r - 1.0).floor().max(0.0) as usize).min(h);
    let y1 = ((cy + r + 1.0).ceil().max(0.0) as usize).min(h);
    let rgb = o.colour.rgb().map(f64::from);
    let data = frame.data_mut();
    for py in y0..y1 {
        let dy = py as f64 + 0.5 - cy;
        let row = &mut data[py * w * 3..(py + 1) * w * 3];
        for px in x0..x1 {
            let dx = px as f64 + 0.5 - cx;
            // A one-pixel ramp across the edge approximates the pixel's area coverage.
            let cover = coverage(o.shape, dx, dy, r);
            if cover <= 0.0 {
                continue;
            }
            let p = &mut row[px * 3..px * 3 + 3];
            for c in 0..3 {
                let v = p[c] as f64 + (rgb[c] - p[c] as f64) * cover;
                p[c] = v.round() as u8;
            }
        }
    }
}

/// The colour a pixel of `frame` is nearest to among `palette` (squared RGB distance): a helper
/// for tests and measurements that segment frames by colour.
pub fn nearest_colour(rgb: [u8; 3], palette: &[Colour]) -> Option<Colour> {
    palette.iter().copied().min_by_key(|c| {
        c.rgb()
            .iter()
            .zip(rgb)
            .map(|(&a, b)| (a as i32 - b as i32).pow(2))
            .sum::<i32>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Placement;
    use crate::spec::{Motion, SceneSpec, Size};

    fn opts(width: u32, height: u32, frames: usize) -> RenderOptions {
        RenderOptions {
            width,
            height,
            frames,
            fps: 8.0,
        }
    }

    fn single(shape: Shape) -> Scene {
        Scene {
            spec: SceneSpec {
                background: Colour::Black,
                objects: vec![ObjectSpec {
                    colour: Colour::Red,
                    shape,
                    size: Size::Large,
                    motion: Motion::Still,
                }],
            },
            objects: vec![Placement {
                x: 0.5,
                y: 0.5,
                speed: 0.0,
            }],
        }
    }

    fn count(frame: &Frame, colour: Colour) -> usize {
        let rgb = colour.rgb();
        (0..frame.height())
            .flat_map(|y| (0..frame.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| frame.pixel(x, y) == rgb)
            .count()
    }

    #[test]
    fn options_are_checked() {
        assert!(opts(64, 64, 1).validate().is_ok());
        let e = opts(8, 64, 1).validate().unwrap_err().to_string();
        assert!(
            e.contains("width") && e.contains("16") && e.contains("4096"),
            "{e}"
        );
        assert!(opts(64, 5000, 1).validate().is_err());
        assert!(opts(64, 64, 0).validate().is_err());
        let mut o = opts(64, 64, 1);
        o.fps = 0.0;
        assert!(o.validate().unwrap_err().to_string().contains("positive"));
    }

    #[test]
    fn shapes_have_the_expected_areas() {
        let (w, h) = (200u32, 200u32);
        let r = Size::Large.radius() * h as f64;
        for (shape, area) in [
            (Shape::Circle, std::f64::consts::PI * r * r),
            (Shape::Square, 4.0 * r * r),
            (Shape::Triangle, 2.0 * r * r),
        ] {
            let video = render(&single(shape), &opts(w, h, 1)).unwrap();
            let f = &video.frames()[0];
            // Fully covered pixels plus half the anti-aliased fringe.
            let solid = count(f, Colour::Red) as f64;
            let bg = count(f, Colour::Black) as f64;
            let fringe = (w * h) as f64 - solid - bg;
            let measured = solid + fringe / 2.0;
            assert!(
                (measured - area).abs() / area < 0.03,
                "{shape:?} {measured} {area}"
            );
            assert_eq!(f.pixel(100, 100), Colour::Red.rgb(), "{shape:?} centre");
            assert_eq!(f.pixel(0, 0), Colour::Black.rgb());
        }
    }

    #[test]
    fn circles_stay_round_on_wide_frames() {
        let video = render(&single(Shape::Circle), &opts(320, 100, 1)).unwrap();
        let f = &video.frames()[0];
        let red = |x, y| nearest_colour(f.pixel(x, y), &[Colour::Red, Colour::Black]);
        let across = (0..320)
            .filter(|&x| red(x, 50) == Some(Colour::Red))
            .count();
        let down = (0..100)
            .filter(|&y| red(160, y) == Some(Colour::Red))
            .count();
        assert!((across as i64 - down as i64).abs() <= 1, "{across} {down}");
        assert_eq!((across as f64 / 30.0).round(), 1.0);
    }

    #[test]
    fn edges_are_anti_aliased() {
        let video = render(&single(Shape::Circle), &opts(64, 64, 1)).unwrap();
        let f = &video.frames()[0];
        let mixed = (0..64)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = f.pixel(x, y);
                p != Colour::Red.rgb() && p != Colour::Black.rgb()
            })
            .count();
        assert!(mixed > 20, "{mixed}");
    }

    #[test]
    fn frames_follow_the_simulation() {
        let scene = Scene::sample(11);
        let o = opts(96, 64, 9);
        let (video, states) = render_with_states(&scene, &o).unwrap();
        assert_eq!(video.len(), 9);
        assert_eq!((video.width(), video.height()), (96, 64));
        assert_eq!(states, scene.simulate(1.5, &o.times()));
        // Each object's colour appears near its simulated centre in the last frame (unless a
        // later object covers it).
        let last = video.frames().last().unwrap();
        let s = states.last().unwrap();
        let top = scene.spec.objects.len() - 1;
        let o = &scene.spec.objects[top];
        let (x, y) = ((s[top].x * 64.0) as u32, (s[top].y * 64.0) as u32);
        let y = match o.shape {
            // The triangle is narrow at its centre's height; look lower, where it is wide.
            Shape::Triangle => y + (o.size.radius() * 32.0) as u32,
            _ => y,
        };
        assert_eq!(last.pixel(x, y), o.colour.rgb());
    }

    #[test]
    fn rendering_is_fast() {
        let scene = Scene::sample(5);
        let start = std::time::Instant::now();
        render(&scene, &opts(256, 256, 33)).unwrap();
        eprintln!("256x256x33 rendered in {:?}", start.elapsed());
        // Generous: debug builds of this crate are unoptimised.
        assert!(start.elapsed().as_secs_f64() < 5.0);
    }
}
