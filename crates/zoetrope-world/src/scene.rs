//! Full scene instances: a [`SceneSpec`] plus what words leave open (where each object starts and
//! how fast it goes), chosen deterministically from a seed.
//!
//! Positions are stored as fractions of the range an object's centre can take, not as
//! coordinates, so one scene fits any aspect ratio: the world is 1 unit tall and `aspect` units
//! wide, and objects keep their size relative to the height (circles stay round).

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::heldout::is_held_out;
use crate::spec::{
    Colour, Direction, Motion, ObjectSpec, SceneSpec, Shape, Side, Size, MAX_OBJECTS, MIN_OBJECTS,
};
use crate::WorldError;

/// Slowest and fastest sliding speed, in frame heights per second along the direction of travel.
pub const SLIDE_SPEED_MIN: f64 = 0.25;
pub const SLIDE_SPEED_MAX: f64 = 0.45;
/// Slowest and fastest sideways speed of a bouncing object, in frame heights per second.
pub const BOUNCE_SPEED_MIN: f64 = 0.15;
pub const BOUNCE_SPEED_MAX: f64 = 0.3;
/// Smallest empty space between objects at the start, in frame heights.
pub const START_GAP: f64 = 0.02;
/// Starting layouts are checked for overlap at these aspect ratios; because horizontal distances
/// change linearly with the aspect ratio, a layout clear at both is clear at every ratio between.
pub const LAYOUT_ASPECTS: [f64; 2] = [1.0, 2.5];

/// Relative odds of each motion kind when sampling: Still, Slide, Fall, Bounce.
const MOTION_WEIGHTS: [u32; 4] = [1, 4, 2, 2];
/// Relative odds of a scene having 1, 2 or 3 objects.
const COUNT_WEIGHTS: [u32; 3] = [8, 7, 5];
/// Tries at a preferred start before allowing any start, and then before accepting an overlap.
const LAYOUT_TRIES: usize = 200;

/// Where one object starts and how fast it goes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Horizontal start as a fraction of the range the centre can take: 0 touches the left wall,
    /// 1 touches the right wall.
    pub x: f64,
    /// Vertical start, likewise: 0 touches the top, 1 rests on the floor.
    pub y: f64,
    /// Frame heights per second: along the direction for [`Motion::Slide`], sideways for
    /// [`Motion::Bounce`]; unused (0) for [`Motion::Still`] and [`Motion::Fall`].
    pub speed: f64,
}

/// A scene that can be simulated and rendered: the spec and one placement per object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub spec: SceneSpec,
    /// One per object of `spec.objects`, in the same order.
    pub objects: Vec<Placement>,
}

impl Scene {
    /// A random valid scene: 1–3 objects of distinct colours, none the background's, with a mix
    /// of motions, laid out as [`Scene::from_spec`] would lay it out with the same seed.
    pub fn sample(seed: u64) -> Scene {
        let spec = sample_spec(&mut ChaCha8Rng::seed_from_u64(seed));
        Scene {
            objects: layout(&spec, seed),
            spec,
        }
    }

    /// A random scene for training: as [`Scene::sample`], but no object is a held-out
    /// combination ([`crate::heldout`]). Where `Scene::sample(seed)` has none, the two agree.
    pub fn sample_training(seed: u64) -> Scene {
        let spec = sample_training_spec(&mut ChaCha8Rng::seed_from_u64(seed));
        Scene {
            objects: layout(&spec, seed),
            spec,
        }
    }

    /// Lays out a given spec (after validating it) deterministically from the seed.
    pub fn from_spec(spec: &SceneSpec, seed: u64) -> Result<Scene, WorldError> {
        spec.validate().map_err(WorldError::InvalidScene)?;
        Ok(Scene {
            spec: spec.clone(),
            objects: layout(spec, seed),
        })
    }

    /// Checks the spec and that placements fit it (useful after deserialising).
    pub fn validate(&self) -> Result<(), WorldError> {
        self.spec.validate().map_err(WorldError::InvalidScene)?;
        if self.objects.len() != self.spec.objects.len() {
            return Err(WorldError::InvalidScene(format!(
                "the scene has {} objects but {} placements; it needs one placement per object",
                self.spec.objects.len(),
                self.objects.len()
            )));
        }
        for (i, p) in self.objects.iter().enumerate() {
            let ok = (0.0..=1.0).contains(&p.x)
                && (0.0..=1.0).contains(&p.y)
                && p.speed.is_finite()
                && p.speed >= 0.0;
            if !ok {
                return Err(WorldError::InvalidScene(format!(
                    "placement {i} is {p:?}; x and y must be fractions in 0..=1 and speed a \
                     non-negative number"
                )));
            }
        }
        Ok(())
    }

    /// Where object `i` starts in a world of the given aspect ratio (width / height), in frame
    /// heights from the top-left corner.
    pub fn start_position(&self, i: usize, aspect: f64) -> (f64, f64) {
        let r = self.spec.objects[i].size.radius();
        let p = &self.objects[i];
        (along(p.x, r, aspect), along(p.y, r, 1.0))
    }
}

/// The coordinate a fraction `f` of the free range stands for, on an axis `length` long, for an
/// object of radius `r`. When the object cannot fit, it sits in the middle.
pub(crate) fn along(f: f64, r: f64, length: f64) -> f64 {
    let free = length - 2.0 * r;
    if free <= 0.0 {
        length / 2.0
    } else {
        r + f * free
    }
}

fn weighted<R: Rng + ?Sized>(rng: &mut R, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut pick = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if pick < w {
            return i;
        }
        pick -= w;
    }
    unreachable!("pick is below the total weight")
}

/// A random motion with the sampling mix used for datasets.
pub fn sample_motion<R: Rng + ?Sized>(rng: &mut R) -> Motion {
    match weighted(rng, &MOTION_WEIGHTS) {
        0 => Motion::Still,
        1 => Motion::Slide(*Direction::ALL.choose(rng).expect("directions")),
        2 => Motion::Fall,
        _ => Motion::Bounce(if rng.random_bool(0.5) {
            Side::Left
        } else {
            Side::Right
        }),
    }
}

/// A random valid spec: background, 1–3 objects with distinct colours that differ from it.
pub fn sample_spec<R: Rng + ?Sized>(rng: &mut R) -> SceneSpec {
    sample_spec_where(rng, |_| true)
}

/// A random valid spec for training: drawn as [`sample_spec`] draws, except that an object whose
/// combination is held out ([`is_held_out`]) is drawn again, so no training scene shows one.
pub fn sample_training_spec<R: Rng + ?Sized>(rng: &mut R) -> SceneSpec {
    sample_spec_where(rng, |o| !is_held_out(o))
}

/// [`sample_spec`]'s draws, redrawing each object (colour, shape, size and motion together, from
/// the same rng) until `accept` takes it: each object then follows the unfiltered distribution
/// conditioned on being accepted. With `accept` always true this consumes the rng exactly as
/// sampling always has, so `Scene::sample(seed)` is unchanged. Every colour has accepted
/// combinations (see [`crate::heldout`]), so the loop ends.
fn sample_spec_where<R: Rng + ?Sized>(
    rng: &mut R,
    accept: impl Fn(&ObjectSpec) -> bool,
) -> SceneSpec {
    let background = *Colour::ALL.choose(rng).expect("colours");
    let count = MIN_OBJECTS + weighted(rng, &COUNT_WEIGHTS);
    debug_assert!(count <= MAX_OBJECTS);
    let mut free: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|&c| c != background)
        .collect();
    let objects = (0..count)
        .map(|_| loop {
            let k = rng.random_range(0..free.len());
            let object = ObjectSpec {
                colour: free[k],
                shape: *Shape::ALL.choose(rng).expect("shapes"),
                size: *Size::ALL.choose(rng).expect("sizes"),
                motion: sample_motion(rng),
            };
            if accept(&object) {
                free.swap_remove(k);
                break object;
            }
        })
        .collect();
    SceneSpec {
        background,
        objects,
    }
}

/// Fraction ranges (x, y) where an object with this motion preferably starts, so that its
/// motion stays visible for a while before a wall.
fn preferred_start(motion: Motion) -> ((f64, f64), (f64, f64)) {
    // Start at the far side on each axis the object moves along.
    fn axis(component: f64) -> (f64, f64) {
        if component > 0.0 {
            (0.0, 0.2)
        } else if component < 0.0 {
            (0.8, 1.0)
        } else {
            (0.1, 0.9)
        }
    }
    match motion {
        Motion::Still => ((0.05, 0.95), (0.1, 1.0)),
        Motion::Slide(d) => {
            let (ux, uy) = d.unit();
            (axis(ux), axis(uy))
        }
        Motion::Fall => ((0.1, 0.9), (0.0, 0.1)),
        Motion::Bounce(Side::Right) => ((0.0, 0.2), (0.0, 0.15)),
        Motion::Bounce(Side::Left) => ((0.8, 1.0), (0.0, 0.15)),
    }
}

fn speed_for<R: Rng + ?Sized>(motion: Motion, rng: &mut R) -> f64 {
    match motion {
        Motion::Slide(_) => rng.random_range(SLIDE_SPEED_MIN..=SLIDE_SPEED_MAX),
        Motion::Bounce(_) => rng.random_range(BOUNCE_SPEED_MIN..=BOUNCE_SPEED_MAX),
        Motion::Still | Motion::Fall => 0.0,
    }
}

/// Whether two objects' bounding boxes stay `START_GAP` apart at every aspect ratio in
/// `LAYOUT_ASPECTS`' range.
fn clear_of(a: (&ObjectSpec, &Placement), b: (&ObjectSpec, &Placement)) -> bool {
    let (ra, rb) = (a.0.size.radius(), b.0.size.radius());
    let need = ra + rb + START_GAP;
    let dy = along(a.1.y, ra, 1.0) - along(b.1.y, rb, 1.0);
    if dy.abs() >= need {
        return true;
    }
    let dx = LAYOUT_ASPECTS.map(|aspect| along(a.1.x, ra, aspect) - along(b.1.x, rb, aspect));
    dx.iter().all(|&d| d >= need) || dx.iter().all(|&d| d <= -need)
}

fn layout(spec: &SceneSpec, seed: u64) -> Vec<Placement> {
    // A separate stream from the one `sample` draws the spec from, so that `from_spec` with the
    // same seed reproduces a sampled scene's layout.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut placed: Vec<Placement> = Vec::with_capacity(spec.objects.len());
    for (i, o) in spec.objects.iter().enumerate() {
        let speed = speed_for(o.motion, &mut rng);
        let preferred = preferred_start(o.motion);
        let anywhere = ((0.0, 1.0), (0.0, 1.0));
        let mut candidate = Placement {
            x: 0.5,
            y: 0.5,
            speed,
        };
        'search: for ((x0, x1), (y0, y1)) in [preferred, anywhere] {
            for _ in 0..LAYOUT_TRIES {
                candidate.x = rng.random_range(x0..=x1);
                candidate.y = rng.random_range(y0..=y1);
                // Fall and Bounce start at rest: any height in range is fine, but the
                // object must start clear of the others.
                if placed
                    .iter()
                    .zip(&spec.objects)
                    .all(|(p, s)| clear_of((o, &candidate), (s, p)))
                {
                    break 'search;
                }
            }
        }
        debug_assert_eq!(placed.len(), i);
        placed.push(candidate);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_and_valid() {
        for seed in 0..500 {
            let a = Scene::sample(seed);
            assert_eq!(a, Scene::sample(seed));
            a.validate().unwrap();
            // The layout depends only on the spec and the seed.
            assert_eq!(Scene::from_spec(&a.spec, seed).unwrap(), a);
        }
        assert_ne!(Scene::sample(1), Scene::sample(2));
    }

    #[test]
    fn sampling_covers_counts_and_motions() {
        let mut counts = [0; 4];
        let mut kinds = [0; 4];
        for seed in 0..1000 {
            let s = Scene::sample(seed);
            counts[s.spec.objects.len()] += 1;
            for o in &s.spec.objects {
                kinds[match o.motion {
                    Motion::Still => 0,
                    Motion::Slide(_) => 1,
                    Motion::Fall => 2,
                    Motion::Bounce(_) => 3,
                }] += 1;
            }
        }
        assert!(counts[1..].iter().all(|&c| c > 100), "{counts:?}");
        assert!(kinds.iter().all(|&k| k > 100), "{kinds:?}");
    }

    #[test]
    fn starts_inside_and_mostly_apart() {
        let mut overlapping = 0;
        for seed in 0..1000 {
            let s = Scene::sample(seed);
            for aspect in [1.0, 16.0 / 9.0, 2.5] {
                for (i, o) in s.spec.objects.iter().enumerate() {
                    let r = o.size.radius();
                    let (x, y) = s.start_position(i, aspect);
                    assert!(x >= r - 1e-9 && x <= aspect - r + 1e-9);
                    assert!(y >= r - 1e-9 && y <= 1.0 - r + 1e-9);
                }
            }
            let n = s.objects.len();
            for i in 0..n {
                for j in 0..i {
                    let a = (&s.spec.objects[i], &s.objects[i]);
                    let b = (&s.spec.objects[j], &s.objects[j]);
                    if !clear_of(a, b) {
                        overlapping += 1;
                    }
                }
            }
        }
        assert!(overlapping < 10, "{overlapping} overlapping starts");
    }

    #[test]
    fn slides_start_on_the_far_side() {
        let spec = SceneSpec {
            background: Colour::Black,
            objects: vec![ObjectSpec {
                colour: Colour::Red,
                shape: Shape::Circle,
                size: Size::Small,
                motion: Motion::Slide(Direction::UpLeft),
            }],
        };
        for seed in 0..50 {
            let s = Scene::from_spec(&spec, seed).unwrap();
            assert!(s.objects[0].x >= 0.8 && s.objects[0].y >= 0.8);
            assert!((SLIDE_SPEED_MIN..=SLIDE_SPEED_MAX).contains(&s.objects[0].speed));
        }
    }

    #[test]
    fn from_spec_rejects_invalid_specs() {
        let spec = SceneSpec {
            background: Colour::Red,
            objects: vec![ObjectSpec {
                colour: Colour::Red,
                shape: Shape::Circle,
                size: Size::Small,
                motion: Motion::Still,
            }],
        };
        let err = Scene::from_spec(&spec, 0).unwrap_err().to_string();
        assert!(err.contains("invisible"), "{err}");
    }

    #[test]
    fn scenes_round_trip_through_json() {
        for seed in 0..2000 {
            let s = Scene::sample(seed);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Scene>(&json).unwrap(), s);
        }
    }
}
