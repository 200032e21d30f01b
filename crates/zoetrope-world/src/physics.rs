//! Motion over time, in closed form so that positions at a time do not depend on the frame rate:
//! the same scene rendered at 8 fps or 30 fps shows the same motion.
//!
//! Units: frame heights and seconds; x grows to the right, y grows downwards; the world is 1 tall
//! and `aspect` wide. Objects do not collide with each other (they may overlap; later objects
//! are drawn on top); they bounce off the walls, accounting for their radius.

use serde::{Deserialize, Serialize};

use crate::scene::{along, Scene};
use crate::spec::Motion;

/// Downward acceleration, frame heights per second². Chosen so that a drop from the top reaches
/// the floor in well under a second and a few bounces fit in a short clip.
pub const GRAVITY: f64 = 2.0;
/// Fraction of its speed an object keeps when it bounces on the floor. High enough that bounces
/// stay visible for several seconds.
pub const RESTITUTION: f64 = 0.85;
/// Below this speed (frame heights per second) after a bounce, an object settles on the floor:
/// otherwise it would bounce infinitely often in finite time.
pub const REST_SPEED: f64 = 0.05;

/// Where an object is and how it moves at one moment, in frame heights (per second).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Centre of the object's bounding box, from the left edge.
    pub x: f64,
    /// Centre of the object's bounding box, from the top edge.
    pub y: f64,
    pub vx: f64,
    pub vy: f64,
}

impl Scene {
    /// Every object's state at each of `times` (seconds from the start; negative times count as
    /// 0), in a world of the given aspect ratio (width / height). Indexed `[time][object]`.
    ///
    /// # Panics
    /// If `aspect` is not a positive finite number.
    pub fn simulate(&self, aspect: f64, times: &[f64]) -> Vec<Vec<ObjectState>> {
        times.iter().map(|&t| self.states_at(aspect, t)).collect()
    }

    /// Every object's state at time `t` seconds; see [`Scene::simulate`].
    pub fn states_at(&self, aspect: f64, t: f64) -> Vec<ObjectState> {
        assert!(
            aspect.is_finite() && aspect > 0.0,
            "aspect ratio must be a positive number, got {aspect}"
        );
        let t = t.max(0.0);
        self.spec
            .objects
            .iter()
            .zip(&self.objects)
            .map(|(o, p)| {
                let r = o.size.radius();
                let (x0, y0) = (along(p.x, r, aspect), along(p.y, r, 1.0));
                let (lo_x, hi_x) = (r, aspect - r);
                let (lo_y, hi_y) = (r, 1.0 - r);
                match o.motion {
                    Motion::Still => ObjectState {
                        x: x0,
                        y: y0,
                        vx: 0.0,
                        vy: 0.0,
                    },
                    Motion::Slide(d) => {
                        let (ux, uy) = d.unit();
                        let (x, vx) = reflect(x0, p.speed * ux, lo_x, hi_x, t);
                        let (y, vy) = reflect(y0, p.speed * uy, lo_y, hi_y, t);
                        ObjectState { x, y, vx, vy }
                    }
                    Motion::Fall => {
                        let (y, vy) = fall_and_bounce(y0, 0.0, hi_y.max(y0), t);
                        ObjectState {
                            x: x0,
                            y,
                            vx: 0.0,
                            vy,
                        }
                    }
                    Motion::Bounce(side) => {
                        let (x, vx) = reflect(x0, p.speed * side.sign(), lo_x, hi_x, t);
                        let (y, vy) = fall_and_bounce(y0, 0.0, hi_y.max(y0), t);
                        ObjectState { x, y, vx, vy }
                    }
                }
            })
            .collect()
    }
}

/// Position and velocity at time `t` of a point moving at `v` from `p0` between walls at `lo` and
/// `hi` that reflect it elastically: unfolding the reflections makes this a sawtooth.
fn reflect(p0: f64, v: f64, lo: f64, hi: f64, t: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= 0.0 {
        return ((lo + hi) / 2.0, 0.0);
    }
    let s = (p0.clamp(lo, hi) - lo + v * t).rem_euclid(2.0 * span);
    if s <= span {
        (lo + s, v)
    } else {
        (lo + 2.0 * span - s, -v)
    }
}

/// Height and vertical velocity at time `t` of an object that starts at `y0` with velocity `v0`
/// (downwards positive), accelerates under [`GRAVITY`] and bounces on a floor at `floor` with
/// [`RESTITUTION`], flight by flight.
fn fall_and_bounce(y0: f64, v0: f64, floor: f64, t: f64) -> (f64, f64) {
    let (mut y, mut v, mut t) = (y0.min(floor), v0, t);
    loop {
        // Time until the floor: the positive root of y + v·s + g·s²/2 = floor.
        let impact = (v * v + 2.0 * GRAVITY * (floor - y)).sqrt();
        let flight = (impact - v) / GRAVITY;
        if t < flight {
            return (y + v * t + 0.5 * GRAVITY * t * t, v + GRAVITY * t);
        }
        t -= flight;
        let rebound = RESTITUTION * impact;
        // Each flight is shorter by RESTITUTION, so this loop ends after a few dozen bounces.
        if rebound < REST_SPEED {
            return (floor, 0.0);
        }
        y = floor;
        v = -rebound;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Placement;
    use crate::spec::{Colour, Direction, ObjectSpec, SceneSpec, Shape, Side, Size};

    fn one(motion: Motion, x: f64, y: f64, speed: f64) -> Scene {
        Scene {
            spec: SceneSpec {
                background: Colour::Black,
                objects: vec![ObjectSpec {
                    colour: Colour::Red,
                    shape: Shape::Circle,
                    size: Size::Small,
                    motion,
                }],
            },
            objects: vec![Placement { x, y, speed }],
        }
    }

    #[test]
    fn still_objects_stay() {
        let s = one(Motion::Still, 0.3, 0.6, 0.0);
        let states = s.simulate(1.5, &[0.0, 1.0, 10.0]);
        assert!(states.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn slides_move_at_their_speed_and_reflect_off_walls() {
        let r = Size::Small.radius();
        let s = one(Motion::Slide(Direction::Right), 0.0, 0.5, 0.4);
        let st = s.states_at(1.0, 0.5)[0];
        assert!((st.x - (r + 0.2)).abs() < 1e-12 && st.vx > 0.0);
        // Free range is 1 - 2r = 0.84: after 0.84 / 0.4 s it reaches the right wall.
        let st = s.states_at(1.0, 0.84 / 0.4 + 0.25)[0];
        assert!((st.x - (1.0 - r - 0.1)).abs() < 1e-9, "{st:?}");
        assert!(st.vx < 0.0);
        // Diagonal: both components at speed / sqrt 2.
        let s = one(Motion::Slide(Direction::UpLeft), 1.0, 1.0, 0.4);
        let st = s.states_at(2.0, 0.0)[0];
        assert!(st.vx < 0.0 && st.vy < 0.0);
        assert!(((st.vx * st.vx + st.vy * st.vy).sqrt() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn objects_stay_inside_the_frame() {
        let times: Vec<f64> = (0..400).map(|i| i as f64 * 0.05).collect();
        for seed in 0..200 {
            let scene = Scene::sample(seed);
            for aspect in [0.5, 1.0, 16.0 / 9.0] {
                for states in scene.simulate(aspect, &times) {
                    for (o, st) in scene.spec.objects.iter().zip(states) {
                        let r = o.size.radius();
                        let fits = aspect >= 2.0 * r;
                        assert!(!fits || (st.x >= r - 1e-9 && st.x <= aspect - r + 1e-9));
                        assert!(st.y >= r - 1e-9 && st.y <= 1.0 - r + 1e-9, "{st:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn falls_accelerate_bounce_lower_and_settle() {
        let r = Size::Small.radius();
        let floor = 1.0 - r;
        let s = one(Motion::Fall, 0.5, 0.0, 0.0);
        let st = s.states_at(1.0, 0.3)[0];
        assert!((st.y - (r + 0.5 * GRAVITY * 0.09)).abs() < 1e-12);
        assert!((st.vy - GRAVITY * 0.3).abs() < 1e-12);
        // Track the peaks between bounces: each lower than the last by RESTITUTION².
        let times: Vec<f64> = (0..20000).map(|i| i as f64 * 0.001).collect();
        let ys: Vec<f64> = s.simulate(1.0, &times).iter().map(|v| v[0].y).collect();
        let mut peaks = vec![];
        for w in ys.windows(3) {
            if w[1] < w[0] && w[1] <= w[2] && w[1] < floor - 1e-3 {
                peaks.push(floor - w[1]);
            }
        }
        assert!(peaks.len() >= 4, "{peaks:?}");
        for p in peaks.windows(2) {
            let ratio = p[1] / p[0];
            assert!(
                (ratio - RESTITUTION * RESTITUTION).abs() < 0.02,
                "{peaks:?}"
            );
        }
        assert_eq!(s.states_at(1.0, 60.0)[0].y, floor);
    }

    #[test]
    fn bounces_drift_sideways_while_bouncing() {
        let s = one(Motion::Bounce(Side::Left), 1.0, 0.0, 0.2);
        let a = s.states_at(2.0, 0.0)[0];
        let b = s.states_at(2.0, 1.0)[0];
        assert!((a.x - b.x - 0.2).abs() < 1e-12);
        assert!(b.y > a.y);
    }

    #[test]
    fn motion_does_not_depend_on_frame_rate() {
        let scene = Scene::sample(3);
        let at_8: Vec<f64> = (0..9).map(|i| i as f64 / 8.0).collect();
        let at_32: Vec<f64> = (0..33).map(|i| i as f64 / 32.0).collect();
        let a = scene.simulate(1.0, &at_8);
        let b = scene.simulate(1.0, &at_32);
        for (i, s) in a.iter().enumerate() {
            assert_eq!(s, &b[i * 4]);
        }
    }
}
