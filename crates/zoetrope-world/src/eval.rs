//! The benchmark: how well does a video show what a prompt asks?
//!
//! Perception is deliberately simple and tied to the world's own vocabulary, so that the scores
//! mean something: every pixel is matched to the nearest palette colour (or left unknown when it
//! is near none, as anti-aliased edges and noise are), each object the prompt names is found as the
//! largest solid blob of its colour, and from each frame's blob we read its area, centroid, bounding
//! box and a shape descriptor. Positions are in units of frame height and time in seconds (from the
//! clip's frame rate), so the same scene scores the same at any resolution or frame rate.
//!
//! The checks then compare what was seen with what was asked: background, and for each object its
//! colour, shape, size, permanence, motion and physics. Every score lies in [0, 1] and is graded
//! where a grade is natural (a fraction of frames, a ramp around a tolerance); a check passes at 0.5.

use serde::Serialize;
use zoetrope_video::{Frame, Video};

use crate::caption::{parse, ObjectQuery, ParseError, SceneQuery};
use crate::physics::GRAVITY;
use crate::spec::{Colour, Direction, Motion, Shape, Side, Size};

// ---------------------------------------------------------------------------------------------
// Thresholds. Lengths are in units of frame height, times in seconds.

/// A pixel counts as a palette colour only within this RGB distance of it. The closest pair of
/// palette colours (yellow and orange) is 87 apart, so below half of that no pixel can be claimed
/// by two colours; H.264 noise on flat regions stays well inside, while most anti-aliased blends of
/// two colours fall outside and are left unknown.
const ACCEPT_DIST: f64 = 40.0;
/// Label of a pixel that is near no palette colour.
const UNKNOWN: u8 = u8::MAX;

/// A frame's most common colour is its background only if it covers at least this share of the
/// pixels: objects cover at most ~30% of a square frame (three large squares), while in a noise
/// frame no colour reaches a few percent.
const BACKGROUND_MIN_SHARE: f64 = 0.4;

/// A blob counts as an object only if it contains a solid square of its colour this wide (a
/// fraction of frame height, but at least [`CORE_BLOCK_MIN_PX`]). Thin structures — rings of
/// blended edge pixels that happen to land near a third palette colour, isolated noise pixels —
/// contain no such square, while the smallest object (a small triangle, whose inscribed circle is
/// 0.08 of the height across) always does.
const CORE_BLOCK: f64 = 0.03;
const CORE_BLOCK_MIN_PX: usize = 3;

/// Shapes are fitted to the colours within this many pixels of a blob's box: the anti-aliasing
/// ramp reaches one pixel past the mask, 4:2:0 chroma blocks one more, and H.264 ringing about one
/// more.
const FIT_MARGIN_PX: usize = 3;
/// A pixel near a blob that is further than this (RGB, chroma weighted by [`FIT_CHROMA_WEIGHT`])
/// from every blend of the object's colour with a surround colour belongs to something else (the
/// edge of another object against the background) and is left out of the shape fit. Codec noise
/// stays well inside, as for [`ACCEPT_DIST`].
const BLEND_RESIDUAL_MAX: f64 = ACCEPT_DIST;
/// In choosing which blend explains a pixel, chroma counts at this weight against luma: 4:2:0
/// leaves a pixel's chroma up to half a blend off at an edge, its luma is its own.
const FIT_CHROMA_WEIGHT: f64 = 0.5;
/// A pixel goes to the main background's blend unless another surround explains it this much
/// better (RGB distance): the object's own pixels match every blend.
const FIT_SURROUND_TIE: f64 = 10.0;
/// Pattern search of a shape's centre and radius, in pixels: first step, and the step below
/// which it stops (a tenth of a pixel moves the fit far less than codec noise does).
const FIT_STEP_PX: (f64, f64) = (0.5, 0.1);
/// A fit's residual (relative to the energy of the fitted drawing) up to which the blob counts as
/// that shape even when its mask's box is far from square. Whole objects fit to within ~0.01
/// (0.03 after H.264, at the 90th percentile); ellipses and rectangles of aspect 1.5 and more fit
/// no world shape better than 0.1.
const FIT_RESIDUAL_MAX: f64 = 0.05;
/// At most this many moves per fit (from the area and centroid the fit is a few moves away;
/// the bound only stops a drift across a region where nothing constrains it).
const FIT_MAX_MOVES: usize = 60;

/// Plausible object areas, relative to the smallest and largest areas the world draws: below the
/// lower bound a blob is a speck, above the upper one it is a region, not an object.
const PLAUSIBLE_MIN_FACTOR: f64 = 0.35;
const PLAUSIBLE_MAX_FACTOR: f64 = 2.5;

/// Every world shape fills a square box (width / height = 1); well outside that the blob is no
/// world shape. The bounds leave room for pixelation of small shapes.
const ASPECT_MIN: f64 = 0.7;
const ASPECT_MAX: f64 = 1.45;
/// Shapes of blobs with fewer pixels than this are not judged: too few pixels to tell.
const MIN_SHAPE_PIXELS: usize = 12;

/// A frame's blob is "steady" (unoccluded, unclipped) when its area is within these factors of
/// the object's median area; anti-aliasing and compression move the area of a small object by
/// ~10–15% from frame to frame.
const STEADY_LO: f64 = 0.75;
const STEADY_HI: f64 = 1.3;
/// An object touching another and smaller than this share of its median area is partly behind
/// it (its area noise stays within a few percent of the median when it is whole).
const TOUCHING_MIN: f64 = 0.93;
/// A missing object is hidden when another object is within this distance of where it was last
/// seen whole (it may have moved on a little since).
const HIDDEN_MARGIN: f64 = 0.1;
/// For permanence, wider bounds: a partly hidden object still exists.
const PERMANENT_LO: f64 = 0.5;
const PERMANENT_HI: f64 = 1.6;

/// Motion turns (reversals of one coordinate) are only believed when the coordinate comes back
/// by at least this much: centroid jitter from compression is far smaller (< 0.01).
const TURN_DELTA: f64 = 0.025;
/// Fewest steady frames (and fewest as a share of the clip) to judge motion from.
const MIN_TRACK_POINTS: usize = 3;
const MIN_TRACK_SHARE: f64 = 0.5;

/// A still object's centroid may wander this far (compression jitter) for full score, and fails
/// completely beyond the upper bound.
const STILL_TOL: (f64, f64) = (0.03, 0.1);
/// The initial direction of a slide is right within this angle (half the angle between two
/// compass directions) and wrong beyond the upper bound (half-way to the next direction but one).
const ANGLE_TOL_DEG: (f64, f64) = (22.5, 45.0);
/// Speeds (heights per second) below the lower bound are no motion, above the upper one clearly are.
const MIN_SPEED: (f64, f64) = (0.03, 0.1);
/// A fall descends at least this much in its first downward run (ramp).
const MIN_DESCENT: (f64, f64) = (0.03, 0.1);
/// A fall drifts sideways at most this much (ramp, full score below the lower bound).
const FALL_DRIFT: (f64, f64) = (0.06, 0.2);
/// A bounce drifts to its side by at least this much in its first horizontal run (ramp).
const BOUNCE_DRIFT: (f64, f64) = (0.02, 0.08);

/// Downward acceleration (heights/s²) that shows gravity, as fractions of the world's gravity:
/// none below the lower bound, clearly above the upper one. Lenient, so that a model whose
/// gravity is somewhat off still shows "falling", while constant-velocity motion (0) fails.
const GRAVITY_ACC: (f64, f64) = (0.1 * GRAVITY, 0.35 * GRAVITY);
/// Fewest points to fit a parabola to a flight arc.
const MIN_ARC_POINTS: usize = 4;
/// A reversal counts as at a wall (or floor) within this distance, plus the distance the object
/// moves in one frame there (frames sample the motion, the reflection falls between two of them).
const WALL_TOL: f64 = 0.05;
/// A first step shorter than this share of the second shows a reflection between the first two
/// frames (steps of a constant-speed run agree far better than that).
const REFLECT_SHORT: f64 = 0.6;
/// After the object first reaches the floor, a clip this much longer must show it bouncing back.
const BOUNCE_WAIT_S: f64 = 0.25;
/// Between reflections a slide is a straight line in time: residual RMS (heights) for full and
/// zero score.
const LINE_RMS: (f64, f64) = (0.008, 0.03);
/// Relative spread of one coordinate's speed between its runs, for full and zero score.
const SPEED_SPREAD: (f64, f64) = (0.15, 0.5);

/// A check passes at this score.
pub const PASS_SCORE: f64 = 0.5;

// ---------------------------------------------------------------------------------------------
// Report types

/// One judgement about a video.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// `background`, `colour`, `shape`, `size`, `permanence`, `motion` or `physics`.
    pub name: String,
    /// Index of the object in the query, `None` for scene-wide checks.
    pub object: Option<usize>,
    /// In [0, 1].
    pub score: f64,
    pub passed: bool,
    /// What was seen, in words.
    pub detail: String,
}

impl Check {
    fn new(name: &str, object: Option<usize>, score: f64, detail: String) -> Self {
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            name: name.to_string(),
            object,
            score,
            passed: score >= PASS_SCORE,
            detail,
        }
    }
}

/// All checks for one video against one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub prompt: Option<String>,
    pub checks: Vec<Check>,
    /// Mean of the check scores, in [0, 1] (0 when there are no checks).
    pub total: f64,
}

impl EvalReport {
    /// A readable table: one row per check and a total line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.prompt {
            out.push_str(&format!("prompt: {p}\n"));
        }
        out.push_str(&format!(
            "{:<12} {:<6} {:>6}  {}\n",
            "check", "object", "score", "detail"
        ));
        for c in &self.checks {
            let obj = c.object.map_or("-".to_string(), |i| format!("#{i}"));
            let mark = if c.passed { ' ' } else { '!' };
            out.push_str(&format!(
                "{:<12} {:<6} {:>5.1}%{mark} {}\n",
                c.name,
                obj,
                100.0 * c.score,
                c.detail
            ));
        }
        out.push_str(&format!(
            "{:<12} {:<6} {:>5.1}%  {}/{} checks passed\n",
            "total",
            "",
            100.0 * self.total,
            self.checks.iter().filter(|c| c.passed).count(),
            self.checks.len()
        ));
        out
    }
}

/// Mean score and pass rate of one kind of check over many reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckSummary {
    pub name: String,
    pub count: usize,
    pub mean_score: f64,
    pub pass_rate: f64,
}

/// Summary of many reports: per-check means and the mean total.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchSummary {
    pub clips: usize,
    pub mean_total: f64,
    pub min_total: f64,
    pub checks: Vec<CheckSummary>,
}

impl BatchSummary {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>6} {:>7} {:>7}\n",
            "check", "count", "mean", "passed"
        );
        for c in &self.checks {
            out.push_str(&format!(
                "{:<12} {:>6} {:>6.1}% {:>6.1}%\n",
                c.name,
                c.count,
                100.0 * c.mean_score,
                100.0 * c.pass_rate
            ));
        }
        out.push_str(&format!(
            "{:<12} {:>6} {:>6.1}%  (worst clip {:.1}%)\n",
            "total",
            self.clips,
            100.0 * self.mean_total,
            100.0 * self.min_total
        ));
        out
    }
}

/// Reports for many (prompt, video) pairs and their summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchReport {
    pub reports: Vec<EvalReport>,
    pub summary: BatchSummary,
}

/// Per-check-name means over `reports`, names in order of first appearance.
pub fn summarize(reports: &[EvalReport]) -> BatchSummary {
    let mut names: Vec<String> = Vec::new();
    for r in reports {
        for c in &r.checks {
            if !names.contains(&c.name) {
                names.push(c.name.clone());
            }
        }
    }
    let checks = names
        .into_iter()
        .map(|name| {
            let all: Vec<&Check> = reports
                .iter()
                .flat_map(|r| &r.checks)
                .filter(|c| c.name == name)
                .collect();
            let count = all.len();
            let mean_score = all.iter().map(|c| c.score).sum::<f64>() / count as f64;
            let pass_rate = all.iter().filter(|c| c.passed).count() as f64 / count as f64;
            CheckSummary {
                name,
                count,
                mean_score,
                pass_rate,
            }
        })
        .collect();
    let totals: Vec<f64> = reports.iter().map(|r| r.total).collect();
    BatchSummary {
        clips: reports.len(),
        mean_total: mean(&totals).unwrap_or(0.0),
        // 0 for an empty batch, like the mean.
        min_total: totals.iter().copied().reduce(f64::min).unwrap_or(0.0),
        checks,
    }
}

/// Evaluates each (prompt, video) pair; fails on the first prompt that does not parse.
pub fn evaluate_batch<'a, I>(items: I) -> Result<BatchReport, ParseError>
where
    I: IntoIterator<Item = (&'a str, &'a Video)>,
{
    let reports = items
        .into_iter()
        .map(|(prompt, video)| evaluate_prompt(video, prompt))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = summarize(&reports);
    Ok(BatchReport { reports, summary })
}

/// Parses `prompt` and evaluates `video` against it.
pub fn evaluate_prompt(video: &Video, prompt: &str) -> Result<EvalReport, ParseError> {
    let query = parse(prompt)?;
    let mut report = evaluate(video, &query);
    report.prompt = Some(prompt.to_string());
    Ok(report)
}

/// Scores how well `video` shows the scene `query` describes.
pub fn evaluate(video: &Video, query: &SceneQuery) -> EvalReport {
    let seen = perceive(video, query);
    let mut checks = Vec::new();
    if let Some(bg) = query.background {
        checks.push(background_check(&seen, bg));
    }
    for (i, obj) in query.objects.iter().enumerate() {
        let view = ObjectView::new(i, obj, &seen);
        checks.push(view.colour_check(i));
        checks.push(view.shape_check(i));
        if let Some(size) = obj.size {
            checks.push(view.size_check(i, size));
        }
        checks.push(view.permanence_check(i));
        if let Some(motion) = obj.motion {
            checks.push(view.motion_check(i, motion));
            if motion != Motion::Still {
                checks.push(view.physics_check(i, motion));
            }
        }
    }
    let scores: Vec<f64> = checks.iter().map(|c| c.score).collect();
    EvalReport {
        prompt: None,
        checks,
        total: mean(&scores).unwrap_or(0.0),
    }
}

// ---------------------------------------------------------------------------------------------
// Perception

/// One object's blob in one frame. Lengths in frame heights.
#[derive(Clone, Debug)]
struct Blob {
    area: f64,
    pixels: usize,
    cx: f64,
    cy: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    at_border: bool,
    /// Area / bounding-box area.
    fill: f64,
    /// Bounding-box width / height.
    aspect: f64,
    /// The world shape that best explains the blob: fitted to the colours around it (see
    /// [`fit_shape`]), or where that cannot be done, the outline that stretched over its mask's
    /// box matches the mask best.
    shape: Shape,
    /// The shape fitted to the blob's colours and its relative residual, when it could be fitted.
    fit: Option<(Shape, f64)>,
}

/// What the perception stage saw in a clip.
struct Seen {
    fps: f64,
    frames: usize,
    /// Frame height in pixels.
    height: usize,
    /// Frame width in frame heights (where the right wall is).
    width_h: f64,
    /// Per frame: the dominant colour and its share of the pixels.
    dominant: Vec<(Option<Colour>, f64)>,
    /// Per query object, per frame: its blob.
    blobs: Vec<Vec<Option<Blob>>>,
}

fn perceive(video: &Video, query: &SceneQuery) -> Seen {
    let frames = video.frames();
    let (w, h) = (video.width() as usize, video.height() as usize);
    let mut dominant = Vec::with_capacity(frames.len());
    let mut blobs = vec![Vec::with_capacity(frames.len()); query.objects.len()];
    let mut labels = vec![UNKNOWN; w * h];
    for frame in frames {
        let counts = label_frame(frame, &mut labels);
        let (best, n) = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, &n)| n)
            .expect("palette");
        let share = *n as f64 / (w * h) as f64;
        let bg = (share >= BACKGROUND_MIN_SHARE).then_some(Colour::ALL[best]);
        dominant.push((bg, share));
        for (o, obj) in query.objects.iter().enumerate() {
            blobs[o].push(find_blob(frame, &labels, obj.colour, bg));
        }
    }
    Seen {
        fps: video.fps(),
        frames: frames.len(),
        height: h,
        width_h: w as f64 / h as f64,
        dominant,
        blobs,
    }
}

/// Labels every pixel with the index of its palette colour (or [`UNKNOWN`]); returns per-colour
/// pixel counts.
fn label_frame(frame: &Frame, labels: &mut [u8]) -> [usize; Colour::ALL.len()] {
    let palette: Vec<[f64; 3]> = Colour::ALL
        .iter()
        .map(|c| c.rgb().map(|v| v as f64))
        .collect();
    let mut counts = [0usize; Colour::ALL.len()];
    for (px, label) in frame.data().chunks_exact(3).zip(labels.iter_mut()) {
        let mut best = (f64::INFINITY, UNKNOWN);
        for (i, p) in palette.iter().enumerate() {
            let d = (px[0] as f64 - p[0]).powi(2)
                + (px[1] as f64 - p[1]).powi(2)
                + (px[2] as f64 - p[2]).powi(2);
            if d < best.0 {
                best = (d, i as u8);
            }
        }
        *label = if best.0 < ACCEPT_DIST * ACCEPT_DIST {
            best.1
        } else {
            UNKNOWN
        };
        if *label != UNKNOWN {
            counts[*label as usize] += 1;
        }
    }
    counts
}

/// The largest solid, plausibly sized blob of `colour`, if any; `background` is the frame's, if
/// it has one.
fn find_blob(
    frame: &Frame,
    labels: &[u8],
    colour: Colour,
    background: Option<Colour>,
) -> Option<Blob> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let want = Colour::ALL
        .iter()
        .position(|&c| c == colour)
        .expect("palette colour") as u8;
    let mask: Vec<bool> = labels.iter().map(|&l| l == want).collect();
    let k = ((CORE_BLOCK * h as f64).round() as usize).max(CORE_BLOCK_MIN_PX);
    if k > w || k > h {
        return None;
    }
    // Summed-area table, to test "the k×k block starting here is all `colour`" in O(1).
    let mut sat = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        for x in 0..w {
            sat[(y + 1) * (w + 1) + x + 1] =
                mask[y * w + x] as u32 + sat[y * (w + 1) + x + 1] + sat[(y + 1) * (w + 1) + x]
                    - sat[y * (w + 1) + x];
        }
    }
    let block_full = |x: usize, y: usize| {
        if x + k > w || y + k > h {
            return false;
        }
        let s = sat[(y + k) * (w + 1) + x + k] + sat[y * (w + 1) + x]
            - sat[y * (w + 1) + x + k]
            - sat[(y + k) * (w + 1) + x];
        s as usize == k * k
    };

    let min_area = PLAUSIBLE_MIN_FACTOR * smallest_area();
    let max_area = PLAUSIBLE_MAX_FACTOR * largest_area();
    let hf = h as f64;
    // Component id of each pixel (0: not yet visited).
    let mut seen = vec![0u32; w * h];
    let mut id = 0u32;
    let mut stack = Vec::new();
    let mut best: Option<Blob> = None;
    // The winning component's id and box, to judge its shape once it is known to have won.
    let mut best_box = (0u32, (0, 0), (0, 0));
    for start in 0..w * h {
        if !mask[start] || seen[start] != 0 {
            continue;
        }
        // Flood fill one 8-connected component, gathering its moments and box.
        id += 1;
        seen[start] = id;
        stack.push(start);
        let (mut n, mut sx, mut sy) = (0usize, 0f64, 0f64);
        let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
        let mut core = false;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            n += 1;
            sx += x as f64 + 0.5;
            sy += y as f64 + 0.5;
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            core = core || block_full(x, y);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && seen[j] == 0 {
                        seen[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        let area = n as f64 / (hf * hf);
        if !core || area < min_area || area > max_area {
            continue;
        }
        if best.as_ref().is_some_and(|b| b.pixels >= n) {
            continue;
        }
        let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
        best_box = (id, (x0, x1), (y0, y1));
        best = Some(Blob {
            area,
            pixels: n,
            cx: sx / n as f64 / hf,
            cy: sy / n as f64 / hf,
            left: x0 as f64 / hf,
            right: (x1 + 1) as f64 / hf,
            top: y0 as f64 / hf,
            bottom: (y1 + 1) as f64 / hf,
            at_border: x0 == 0 || y0 == 0 || x1 + 1 == w || y1 + 1 == h,
            fill: n as f64 / (bw * bh),
            aspect: bw / bh,
            // Judged below, for the winner only.
            shape: Shape::Circle,
            fit: None,
        });
    }
    let (id, xs, ys) = best_box;
    if let Some(b) = best.as_mut() {
        b.fit = fit_shape(frame, labels, want, background, xs, ys);
        b.shape = b
            .fit
            .map(|(shape, _)| shape)
            .unwrap_or_else(|| best_template(|x, y| seen[y * w + x] == id, xs, ys));
    }
    best
}

/// Area (in frame heights squared) of a shape of a size as the world draws it.
fn expected_area(shape: Shape, size: Size) -> f64 {
    let r = size.radius();
    match shape {
        Shape::Circle => std::f64::consts::PI * r * r,
        Shape::Square => 4.0 * r * r,
        // Upright triangle filling half of its 2r × 2r box (apex top centre, base along the
        // bottom), like every shape's box, as `render` draws it.
        Shape::Triangle => 2.0 * r * r,
    }
}

fn smallest_area() -> f64 {
    Shape::ALL
        .iter()
        .map(|&s| expected_area(s, Size::Small))
        .fold(f64::INFINITY, f64::min)
}

fn largest_area() -> f64 {
    Shape::ALL
        .iter()
        .map(|&s| expected_area(s, Size::Large))
        .fold(0.0, f64::max)
}

/// The world shape whose ideal outline, drawn into the blob's bounding box on the same pixel
/// grid, disagrees with the blob on the fewest pixels. Unlike a threshold on the fill ratio, this
/// compares like with like at any size: a pixelated disc 8 pixels across fills ~0.85 of its box,
/// close to a square's 1.0, yet its empty corners still match the circle outline exactly.
fn best_template(
    inside: impl Fn(usize, usize) -> bool,
    (x0, x1): (usize, usize),
    (y0, y1): (usize, usize),
) -> Shape {
    let (a, b) = ((x1 - x0 + 1) as f64 / 2.0, (y1 - y0 + 1) as f64 / 2.0);
    let mut misses = [0usize; 3];
    for y in y0..=y1 {
        // Pixel centres in [-1, 1] across the box.
        let v = (y as f64 + 0.5 - y0 as f64 - b) / b;
        for x in x0..=x1 {
            let u = (x as f64 + 0.5 - x0 as f64 - a) / a;
            let got = inside(x, y);
            for (m, shape) in misses.iter_mut().zip(Shape::ALL) {
                let want = match shape {
                    Shape::Circle => u * u + v * v <= 1.0,
                    Shape::Square => true,
                    // Apex at the top centre, base along the bottom, as `render` draws it.
                    Shape::Triangle => 2.0 * u.abs() <= v + 1.0,
                };
                *m += (got != want) as usize;
            }
        }
    }
    let best = (0..3).min_by_key(|&i| misses[i]).expect("three shapes");
    Shape::ALL[best]
}

/// How well each world shape's anti-aliased drawing explains the pixels around a blob (residuals
/// in the order of [`Shape::ALL`], lower is better), judged on the colours themselves rather than
/// on a palette mask. A small object (radius 5 pixels at a height of 64) has few pixels, about a
/// third of them blended at its edge, and after H.264 its mask is blocky enough that circle and
/// square templates disagree with it about equally; the blended colours still say how much of
/// each pixel the object covers.
///
/// Each pixel near the blob is read as a blend of the object's colour `c` and a surround colour
/// `s`: the frame's background, or another colour that lies solid around the blob (an object it
/// lies on or that covers part of it). The blend is split as the codec splits it: the grey part
/// of `c - s` (the mean of R, G and B, carried by luma) per pixel, the rest (chroma) as the mean
/// over the pixel's aligned 2×2 block, as 4:2:0 stores it. For each shape the centre and radius
/// that fit best (least squares in RGB, so each part counts by its contrast) are found by a
/// pattern search from the area and centroid of the measured coverage. Videos without chroma
/// subsampling fit every shape slightly worse at chroma edges, which does not change the ranking.
///
/// `None` when there is no surround colour to measure against.
fn fit_shape(
    frame: &Frame,
    labels: &[u8],
    want: u8,
    background: Option<Colour>,
    (x0, x1): (usize, usize),
    (y0, y1): (usize, usize),
) -> Option<(Shape, f64)> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    // A window around the box, on whole chroma blocks (they start at even coordinates).
    let wx0 = x0.saturating_sub(FIT_MARGIN_PX) & !1;
    let wy0 = y0.saturating_sub(FIT_MARGIN_PX) & !1;
    let wx1 = (x1 + 1 + FIT_MARGIN_PX).next_multiple_of(2).min(w);
    let wy1 = (y1 + 1 + FIT_MARGIN_PX).next_multiple_of(2).min(h);
    let (ww, wh) = (wx1 - wx0, wy1 - wy0);

    // Surround colours: the frame's background, and every other colour with a solid block in
    // the window (not a seam of blended edge pixels that happens to match a third colour). The
    // first one is the main background: the frame's if it shows here, else the commonest.
    let k = CORE_BLOCK_MIN_PX;
    let mut counts = [0usize; Colour::ALL.len()];
    let mut solid = [false; Colour::ALL.len()];
    for y in wy0..wy1 {
        for x in wx0..wx1 {
            let l = labels[y * w + x];
            if l == want || l == UNKNOWN {
                continue;
            }
            counts[l as usize] += 1;
            if x + k <= wx1
                && y + k <= wy1
                && (y..y + k).all(|yy| labels[yy * w + x..yy * w + x + k].iter().all(|&m| m == l))
            {
                solid[l as usize] = true;
            }
        }
    }
    let frame_bg = background
        .map(|c| {
            Colour::ALL
                .iter()
                .position(|&p| p == c)
                .expect("palette colour")
        })
        .filter(|&i| i != want as usize && counts[i] > 0);
    let mut surrounds: Vec<usize> = (0..Colour::ALL.len())
        .filter(|&i| solid[i] || Some(i) == frame_bg)
        .collect();
    surrounds.sort_by_key(|&i| (Some(i) != frame_bg, std::cmp::Reverse(counts[i])));
    if surrounds.is_empty() {
        return None;
    }

    let grey = [1.0 / 3f64.sqrt(); 3];
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let c = Colour::ALL[want as usize].rgb().map(f64::from);
    // Per surround: its colour, the contrast's grey length, unit chroma direction and length.
    let pairs: Vec<([f64; 3], f64, [f64; 3], f64)> = surrounds
        .iter()
        .map(|&i| {
            let s = Colour::ALL[i].rgb().map(f64::from);
            let d = [c[0] - s[0], c[1] - s[1], c[2] - s[2]];
            let dl = dot(d, grey);
            let perp = [
                d[0] - dl * grey[0],
                d[1] - dl * grey[1],
                d[2] - dl * grey[2],
            ];
            let dc = dot(perp, perp).sqrt();
            let unit = if dc > 1e-9 {
                perp.map(|v| v / dc)
            } else {
                [0.0; 3]
            };
            (s, dl, unit, dc)
        })
        .collect();

    // Per pixel, the terms of its squared error as a function of the coverage a (luma) and the
    // block's mean coverage m (chroma): a²·A − 2a·B + m²·C − 2m·D (all zero when left out).
    let n = ww * wh;
    let (mut ta, mut tb, mut tc, mut td) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut area, mut mx, mut my, mut qq) = (0.0, 0.0, 0.0, 0.0);
    let data = frame.data();
    let w2 = FIT_CHROMA_WEIGHT * FIT_CHROMA_WEIGHT;
    for y in wy0..wy1 {
        for x in wx0..wx1 {
            let p = &data[(y * w + x) * 3..][..3];
            // The surround whose blend with the object comes nearest (the main background wins
            // near-ties), the coverage there, and the distance.
            let mut best: Option<(usize, f64, f64, f64, f64)> = None;
            for (j, &(s, dl, unit, dc)) in pairs.iter().enumerate() {
                let q = [p[0] as f64 - s[0], p[1] as f64 - s[1], p[2] as f64 - s[2]];
                let ql = dot(q, grey);
                let qc = dot(q, unit);
                // Chroma off the blend line, and the part along it.
                let off = (dot(q, q) - ql * ql - qc * qc).max(0.0);
                let t = ((ql * dl + w2 * qc * dc) / (dl * dl + w2 * dc * dc)).clamp(0.0, 1.0);
                let dist = (ql - t * dl).powi(2) + w2 * ((qc - t * dc).powi(2) + off);
                let margin = if j == 0 {
                    FIT_SURROUND_TIE.powi(2)
                } else {
                    0.0
                };
                if best.is_none_or(|b| dist - margin < b.1) {
                    best = Some((j, dist - margin, t, ql, qc));
                }
            }
            let (j, dist, t, ql, qc) = best.expect("a surround");
            // No blend of the object with any surround: something else (the edge of another
            // object against the background) that says nothing about this outline.
            if dist > BLEND_RESIDUAL_MAX.powi(2) {
                continue;
            }
            let (_, dl, _, dc) = pairs[j];
            let i = (y - wy0) * ww + x - wx0;
            (ta[i], tb[i], tc[i], td[i]) = (dl * dl, ql * dl, dc * dc, qc * dc);
            let s = pairs[j].0;
            qq += (0..3).map(|k| (p[k] as f64 - s[k]).powi(2)).sum::<f64>();
            area += t;
            mx += t * (x as f64 + 0.5);
            my += t * (y as f64 + 0.5);
        }
    }
    if area < 1.0 {
        return None;
    }
    let (mx, my) = (mx / area, my / area);

    let mut cover = vec![0.0; n];
    // Residual (less the constant `qq`) of the drawing of `shape` at box centre (cx, cy),
    // radius r, and the drawing's own energy (its squared contrast with the surround).
    let mut residual = |shape: Shape, [cx, cy, r]: [f64; 3]| {
        for y in 0..wh {
            let dy = (wy0 + y) as f64 + 0.5 - cy;
            for x in 0..ww {
                let dx = (wx0 + x) as f64 + 0.5 - cx;
                cover[y * ww + x] = crate::render::coverage(shape, dx, dy, r);
            }
        }
        // Chroma as 4:2:0 keeps it (block means) and as a full-resolution video keeps it
        // (per pixel); whichever fits better.
        let (mut err, mut energy, mut err_full, mut energy_full) = (0.0, 0.0, 0.0, 0.0);
        for by in (0..wh).step_by(2) {
            for bx in (0..ww).step_by(2) {
                let block = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(y, x)| (by + y < wh && bx + x < ww).then(|| (by + y) * ww + bx + x));
                let (sum, cnt) = block
                    .iter()
                    .flatten()
                    .fold((0.0, 0.0), |(s, n), &i| (s + cover[i], n + 1.0));
                let m = sum / cnt;
                for &i in block.iter().flatten() {
                    let a = cover[i];
                    let luma = a * (a * ta[i] - 2.0 * tb[i]);
                    err += luma + m * (m * tc[i] - 2.0 * td[i]);
                    energy += a * a * ta[i] + m * m * tc[i];
                    err_full += luma + a * (a * tc[i] - 2.0 * td[i]);
                    energy_full += a * a * (ta[i] + tc[i]);
                }
            }
        }
        if err_full < err {
            (err_full, energy_full)
        } else {
            (err, energy)
        }
    };

    // Per shape: residual less `qq`, and the residual relative to the drawing's energy.
    let mut fits = [(0.0, 0.0); 3];
    for (slot, shape) in fits.iter_mut().zip(Shape::ALL) {
        // Start from the radius that gives the measured area, and the centroid; the
        // triangle's centroid lies a third of its radius below its box centre.
        let r0 = (area / shape_area_factor(shape)).sqrt();
        let cy = match shape {
            Shape::Triangle => my - r0 / 3.0,
            _ => my,
        };
        let mut at = [mx, cy, r0];
        let (mut err, mut energy) = residual(shape, at);
        let mut step = FIT_STEP_PX.0;
        let mut moves = 0;
        while step >= FIT_STEP_PX.1 && moves < FIT_MAX_MOVES {
            // Single parameters first; when none helps, pairs and triples (growing the radius
            // while moving the centre keeps one edge in place), then a finer step.
            let base = at;
            let mut moved = false;
            for diagonal in [false, true] {
                for m in 0..27 {
                    let dir = [m % 3, m / 3 % 3, m / 9].map(|k| k as f64 - 1.0);
                    let axes = dir.iter().filter(|&&v| v != 0.0).count();
                    if axes == 0 || (axes > 1) != diagonal {
                        continue;
                    }
                    let next = [0, 1, 2].map(|k| base[k] + dir[k] * step);
                    if next[2] < 0.5 || next[2] > 2.0 * r0 + 2.0 {
                        continue;
                    }
                    let (e, en) = residual(shape, next);
                    if e < err {
                        (err, energy, at, moved) = (e, en, next, true);
                    }
                }
                if moved {
                    break;
                }
            }
            if moved {
                moves += 1;
            } else {
                step /= 2.0;
            }
        }
        *slot = (err, ((qq + err) / energy).max(0.0));
    }
    let best = (0..3)
        .min_by(|&i, &j| fits[i].0.total_cmp(&fits[j].0))
        .expect("three shapes");
    Some((Shape::ALL[best], fits[best].1))
}

/// Area of a shape of radius 1 (times r² for radius r).
fn shape_area_factor(shape: Shape) -> f64 {
    match shape {
        Shape::Circle => std::f64::consts::PI,
        Shape::Square => 4.0,
        Shape::Triangle => 2.0,
    }
}

/// The world shape a blob looks like, or `None` when it is no world shape: its box is far from
/// square and its colours do not fit a world shape closely either. (A partly hidden object's
/// mask can have a lopsided box while what shows of it still fits its shape; after H.264 the
/// mask of a small one loses a row or column at a blurred edge.)
fn classify(blob: &Blob) -> Option<Shape> {
    let square_box = (ASPECT_MIN..=ASPECT_MAX).contains(&blob.aspect);
    let fits = blob.fit.is_some_and(|(_, r)| r <= FIT_RESIDUAL_MAX);
    (square_box || fits).then_some(blob.shape)
}

// ---------------------------------------------------------------------------------------------
// Checks

fn background_check(seen: &Seen, bg: Colour) -> Check {
    let hits = seen.dominant.iter().filter(|(c, _)| *c == Some(bg)).count();
    let mut others: Vec<Colour> = seen.dominant.iter().filter_map(|(c, _)| *c).collect();
    others.sort();
    others.dedup();
    let detail = if hits == seen.frames {
        format!("{} in all {} frames", bg.name(), seen.frames)
    } else {
        let most = mode(seen.dominant.iter().map(|(c, _)| *c));
        let most = most.flatten().map_or("no dominant colour", |c| c.name());
        format!(
            "{} in {hits}/{} frames; mostly {most}",
            bg.name(),
            seen.frames
        )
    };
    Check::new("background", None, hits as f64 / seen.frames as f64, detail)
}

/// One query object and what was seen of it.
struct ObjectView<'a> {
    obj: &'a ObjectQuery,
    blobs: &'a [Option<Blob>],
    seen: &'a Seen,
    median_area: Option<f64>,
    /// Per frame: the object is missing or shrunk while another object covers where it was last
    /// seen whole. Objects do not collide, so one may pass behind another; such frames say
    /// nothing against the object.
    hidden: Vec<bool>,
    /// Frames where the object is seen whole: (time, blob).
    track: Vec<(f64, &'a Blob)>,
}

/// Whether two blobs' boxes, the first grown by `margin`, overlap.
fn boxes_meet(a: &Blob, b: &Blob, margin: f64) -> bool {
    a.left - margin < b.right
        && b.left < a.right + margin
        && a.top - margin < b.bottom
        && b.top < a.bottom + margin
}

impl<'a> ObjectView<'a> {
    fn new(index: usize, obj: &'a ObjectQuery, seen: &'a Seen) -> Self {
        let blobs = &seen.blobs[index];
        let areas: Vec<f64> = blobs.iter().flatten().map(|b| b.area).collect();
        let median_area = median(&areas);
        let others = |f: usize| {
            seen.blobs
                .iter()
                .enumerate()
                .filter(move |(j, _)| *j != index)
                .filter_map(move |(_, bs)| bs[f].as_ref())
        };
        let one_px = 1.0 / seen.height as f64;
        let mut hidden = vec![false; seen.frames];
        let mut track = Vec::new();
        if let Some(m) = median_area {
            let whole: Vec<bool> = blobs
                .iter()
                .enumerate()
                .map(|(f, b)| {
                    b.as_ref().is_some_and(|b| {
                        let steady = (STEADY_LO * m..=STEADY_HI * m).contains(&b.area);
                        // Touching another object and smaller than usual: partly behind it,
                        // which moves its centroid and spoils its outline.
                        let covered = b.area < TOUCHING_MIN * m
                            && others(f).any(|o| boxes_meet(b, o, one_px));
                        steady && !covered
                    })
                })
                .collect();
            for f in 0..seen.frames {
                if whole[f] {
                    track.push((f as f64 / seen.fps, blobs[f].as_ref().expect("whole")));
                    continue;
                }
                let intact = blobs[f]
                    .as_ref()
                    .is_some_and(|b| b.area >= PERMANENT_LO * m);
                // Where it was last (or, at the start, first) seen whole.
                let near = (0..f).rev().chain(f + 1..seen.frames).find(|&g| whole[g]);
                if let (false, Some(g)) = (intact, near) {
                    let last = blobs[g].as_ref().expect("whole");
                    hidden[f] = others(f).any(|o| boxes_meet(last, o, HIDDEN_MARGIN));
                }
            }
        }
        Self {
            obj,
            blobs,
            seen,
            median_area,
            hidden,
            track,
        }
    }

    /// Frames where the object could be seen: all but the hidden ones.
    fn visible_frames(&self) -> usize {
        self.seen.frames - self.hidden.iter().filter(|&&h| h).count()
    }

    fn name(&self) -> String {
        format!("{} {}", self.obj.colour.name(), self.obj.shape.name())
    }

    fn colour_check(&self, i: usize) -> Check {
        let n = self
            .blobs
            .iter()
            .zip(&self.hidden)
            .filter(|(b, h)| b.is_some() && !**h)
            .count();
        let visible = self.visible_frames();
        let detail = match self.median_area {
            Some(a) => format!(
                "{} blob in {n}/{visible} frames{} (median area {a:.4} h²)",
                self.obj.colour.name(),
                self.hidden_note(),
            ),
            None => format!("no {} object in any frame", self.obj.colour.name()),
        };
        Check::new("colour", Some(i), n as f64 / visible.max(1) as f64, detail)
    }

    fn hidden_note(&self) -> String {
        match self.seen.frames - self.visible_frames() {
            0 => String::new(),
            n => format!(" ({n} more behind another object)"),
        }
    }

    fn shape_check(&self, i: usize) -> Check {
        // Judge only frames where the object is seen whole: not touching the frame's edge, not
        // partly hidden, and big enough in pixels.
        let judged: Vec<&Blob> = self
            .track
            .iter()
            .map(|(_, b)| *b)
            .filter(|b| !b.at_border && b.pixels >= MIN_SHAPE_PIXELS)
            .collect();
        if judged.is_empty() {
            return Check::new("shape", Some(i), 0.0, "never seen whole".to_string());
        }
        let shapes: Vec<Option<Shape>> = judged.iter().map(|b| classify(b)).collect();
        let hits = shapes
            .iter()
            .filter(|s| **s == Some(self.obj.shape))
            .count();
        let fills: Vec<f64> = judged.iter().map(|b| b.fill).collect();
        let looks = mode(shapes.iter().copied())
            .flatten()
            .map_or("no shape", |s| s.name());
        let detail = format!(
            "{} in {hits}/{} judged frames; looks like a {looks} (median fill {:.2})",
            self.obj.shape.name(),
            judged.len(),
            median(&fills).unwrap_or(0.0)
        );
        Check::new("shape", Some(i), hits as f64 / judged.len() as f64, detail)
    }

    fn size_check(&self, i: usize, size: Size) -> Check {
        let Some(area) = self.median_area else {
            return Check::new("size", Some(i), 0.0, "not seen".to_string());
        };
        // Decide in log-area between the areas of the small and the large version of the asked
        // shape: x = -1 at the small area, +1 at the large one, 0 at their geometric mean.
        let small = expected_area(self.obj.shape, Size::Small);
        let large = expected_area(self.obj.shape, Size::Large);
        let x = (area / (small * large).sqrt()).ln() / (0.5 * (large / small).ln());
        let score = match size {
            Size::Small => 0.5 - x,
            Size::Large => 0.5 + x,
        };
        let looks = if x >= 0.0 { "large" } else { "small" };
        let detail = format!(
            "median area {area:.4} h² (small {} {small:.4}, large {large:.4}): looks {looks}",
            self.obj.shape.name()
        );
        Check::new("size", Some(i), score, detail)
    }

    fn permanence_check(&self, i: usize) -> Check {
        let Some(m) = self.median_area else {
            return Check::new("permanence", Some(i), 0.0, "never seen".to_string());
        };
        let present = self.blobs.iter().flatten().count();
        // A frame where the object is hidden behind another counts as a frame it persists in.
        let steady = self
            .blobs
            .iter()
            .zip(&self.hidden)
            .filter(|(b, &h)| {
                h || b
                    .as_ref()
                    .is_some_and(|b| (PERMANENT_LO * m..=PERMANENT_HI * m).contains(&b.area))
            })
            .count();
        let detail = format!(
            "present in {present}/{n} frames, steady size in {steady}/{n}{}",
            self.hidden_note(),
            n = self.seen.frames
        );
        Check::new(
            "permanence",
            Some(i),
            steady as f64 / self.seen.frames as f64,
            detail,
        )
    }

    /// Enough steady frames to judge motion from?
    fn tracked(&self) -> bool {
        self.track.len() >= MIN_TRACK_POINTS
            && self.track.len() as f64 >= MIN_TRACK_SHARE * self.visible_frames() as f64
    }

    fn untracked(&self, name: &str, i: usize) -> Check {
        let detail = format!(
            "{} seen whole in only {}/{} frames",
            self.name(),
            self.track.len(),
            self.seen.frames
        );
        Check::new(name, Some(i), 0.0, detail)
    }

    fn series(&self, f: impl Fn(&Blob) -> f64) -> Vec<f64> {
        self.track.iter().map(|(_, b)| f(b)).collect()
    }

    fn times(&self) -> Vec<f64> {
        self.track.iter().map(|(t, _)| *t).collect()
    }

    fn motion_check(&self, i: usize, motion: Motion) -> Check {
        if !self.tracked() {
            return self.untracked("motion", i);
        }
        let ts = self.times();
        let xs = self.series(|b| b.cx);
        let ys = self.series(|b| b.cy);
        let (score, detail) = match motion {
            Motion::Still => {
                let (mx, my) = (median(&xs).unwrap_or(0.0), median(&ys).unwrap_or(0.0));
                let wander = xs
                    .iter()
                    .zip(&ys)
                    .map(|(x, y)| (x - mx).hypot(y - my))
                    .fold(0.0, f64::max);
                let score = ramp_down(wander, STILL_TOL);
                (
                    score,
                    format!("wanders at most {wander:.3} h from its place"),
                )
            }
            Motion::Slide(dir) => self.slide_direction(&ts, &xs, &ys, dir),
            Motion::Fall => {
                let zy = zigzag(&ys, TURN_DELTA);
                let end = zy.turns.first().map_or(ys.len() - 1, |t| t.0);
                let descent = if zy.first == 1 { ys[end] - ys[0] } else { 0.0 };
                let drift = range(&xs);
                let score = ramp_up(descent, MIN_DESCENT) * ramp_down(drift, FALL_DRIFT);
                let first = match zy.first {
                    1 => "down",
                    -1 => "up",
                    _ => "nowhere",
                };
                let detail = format!(
                    "first moves {first} (descends {descent:.3} h), drifts {drift:.3} h sideways"
                );
                (score, detail)
            }
            Motion::Bounce(side) => {
                let (dx, _, _) = first_run(&ts, &xs, &ys);
                let (gap, _) = self.start_gaps(side.sign(), 0.0);
                let dx = unfold_start(dx, side.sign(), gap, &xs);
                let score = ramp_up(side.sign() * dx, BOUNCE_DRIFT);
                let went = if dx >= 0.0 { "right" } else { "left" };
                let want = match side {
                    Side::Left => "left",
                    Side::Right => "right",
                };
                (
                    score,
                    format!("first drifts {:.3} h {went} (asked {want})", dx.abs()),
                )
            }
        };
        Check::new("motion", Some(i), score, detail)
    }

    fn physics_check(&self, i: usize, motion: Motion) -> Check {
        if !self.tracked() {
            return self.untracked("physics", i);
        }
        let ts = self.times();
        let (score, detail) = match motion {
            Motion::Still => (1.0, "nothing to check".to_string()),
            Motion::Slide(_) => self.slide_physics(&ts),
            Motion::Fall | Motion::Bounce(_) => self.gravity_physics(&ts),
        };
        Check::new("physics", Some(i), score, detail)
    }

    /// Gravity: each flight arc between floor contacts is a parabola curving downwards, and an
    /// object that reaches the floor bounces back up from it.
    fn gravity_physics(&self, ts: &[f64]) -> (f64, String) {
        let ys = self.series(|b| b.cy);
        let bottoms = self.series(|b| b.bottom);
        let zy = zigzag(&ys, TURN_DELTA);
        let contacts: Vec<usize> = zy
            .turns
            .iter()
            .filter(|t| t.1 == Turn::Max)
            .map(|t| t.0)
            .collect();
        // Flight arcs: from the start to the first contact, between contacts, to the end.
        let mut bounds = vec![0];
        bounds.extend(&contacts);
        bounds.push(ys.len() - 1);
        // The frames at a contact are left out: the bounce happened somewhere between them and
        // their neighbours, so they may lie on either arc.
        let arc = bounds
            .windows(2)
            .map(|w| {
                let a = if contacts.contains(&w[0]) {
                    w[0] + 1
                } else {
                    w[0]
                };
                let b = if contacts.contains(&w[1]) {
                    w[1] - 1
                } else {
                    w[1]
                };
                (a, b)
            })
            .find(|(a, b)| b + 1 >= a + MIN_ARC_POINTS);
        let acc = arc
            .and_then(|(a, b)| polyfit2(&ts[a..=b], &ys[a..=b]))
            .map(|c| 2.0 * c[2]);
        let acc_score = acc.map_or(0.0, |g| ramp_up(g, GRAVITY_ACC));
        let mut detail = match acc {
            Some(g) => format!("accelerates down at {g:.2} h/s²"),
            None => "no flight arc long enough to fit".to_string(),
        };

        // Bounces: every downward-to-upward reversal must happen at the floor; an object that
        // reaches the floor early enough must have bounced.
        let at_floor = |k: usize| {
            let step = step_near(&ys, k);
            bottoms[k] >= 1.0 - WALL_TOL - step
        };
        let bounce_score = if !contacts.is_empty() {
            let ok = contacts.iter().filter(|&&k| at_floor(k)).count();
            detail.push_str(&format!("; {ok}/{} reversals at the floor", contacts.len()));
            Some(ok as f64 / contacts.len() as f64)
        } else if let Some(k) = (0..ys.len()).find(|&k| at_floor(k)) {
            // Reached the floor and was seen lying there, never coming back up.
            let rests = (k..ys.len()).all(|j| bottoms[j] >= 1.0 - WALL_TOL);
            if rests && ts[ts.len() - 1] - ts[k] >= BOUNCE_WAIT_S {
                detail.push_str("; reaches the floor but never bounces");
                Some(0.0)
            } else {
                None
            }
        } else {
            None
        };
        let score = bounce_score.map_or(acc_score, |b| acc_score.min(b));
        (score, detail)
    }

    /// A slide moves in straight lines at constant speed, reversing a coordinate only at a wall.
    fn slide_physics(&self, ts: &[f64]) -> (f64, String) {
        let xs = self.series(|b| b.cx);
        let ys = self.series(|b| b.cy);
        let lefts = self.series(|b| b.left);
        let rights = self.series(|b| b.right);
        let tops = self.series(|b| b.top);
        let bottoms = self.series(|b| b.bottom);
        let mut residuals = Vec::new();
        let mut spreads = Vec::new();
        let (mut turns, mut at_wall, mut moving) = (0usize, 0usize, 0usize);
        let axes = [
            (&xs, &lefts, &rights, self.seen.width_h),
            (&ys, &tops, &bottoms, 1.0),
        ];
        for (vals, lo_edge, hi_edge, wall) in axes {
            let zz = zigzag(vals, TURN_DELTA);
            if zz.first == 0 {
                continue; // this coordinate does not move
            }
            moving += 1;
            for &(k, kind) in &zz.turns {
                turns += 1;
                let tol = WALL_TOL + step_near(vals, k);
                let ok = match kind {
                    Turn::Max => hi_edge[k] >= wall - tol,
                    Turn::Min => lo_edge[k] <= tol,
                };
                at_wall += ok as usize;
            }
            // Runs between reversals, without the reversal frames themselves (the reflection
            // happened somewhere between them and their neighbours).
            let mut cuts: Vec<usize> = zz.turns.iter().map(|t| t.0).collect();
            cuts.push(vals.len());
            let mut start = 0;
            let mut speeds = Vec::new();
            for &cut in &cuts {
                let a = if start == 0 { 0 } else { start + 1 };
                if cut >= a + 3 {
                    if let Some((slope, res)) = linfit(&ts[a..cut], &vals[a..cut]) {
                        speeds.push(slope.abs());
                        residuals.extend(res);
                    }
                }
                start = cut;
            }
            if speeds.len() >= 2 {
                let hi = speeds.iter().copied().fold(0.0, f64::max);
                let lo = speeds.iter().copied().fold(f64::INFINITY, f64::min);
                spreads.push((hi - lo) / hi.max(1e-9));
            }
        }
        if moving == 0 {
            return (0.0, "does not move".to_string());
        }
        let rms =
            (residuals.iter().map(|r| r * r).sum::<f64>() / residuals.len().max(1) as f64).sqrt();
        let line_score = if residuals.is_empty() {
            0.5
        } else {
            ramp_down(rms, LINE_RMS)
        };
        let spread = spreads.iter().copied().fold(0.0, f64::max);
        let speed_score = ramp_down(spread, SPEED_SPREAD);
        let wall_score = if turns == 0 {
            1.0
        } else {
            at_wall as f64 / turns as f64
        };
        let score = (line_score + speed_score + wall_score) / 3.0;
        let detail = format!(
            "straight-line residual {rms:.4} h, speed spread {:.0}%, {at_wall}/{turns} reversals at walls",
            100.0 * spread
        );
        (score, detail)
    }
}

/// The first run of a moving object (until one coordinate first reverses, at the first
/// reflection): its displacement (dx, dy) and duration.
fn first_run(ts: &[f64], xs: &[f64], ys: &[f64]) -> (f64, f64, f64) {
    let zx = zigzag(xs, TURN_DELTA);
    let zy = zigzag(ys, TURN_DELTA);
    let end = [zx.turns.first(), zy.turns.first()]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .min()
        .unwrap_or(xs.len() - 1);
    (xs[end] - xs[0], ys[end] - ys[0], ts[end] - ts[0])
}

/// One coordinate of a first run, unfolded when the object was already reflected between the
/// first two frames: it started within one frame's travel of the wall on the asked side, and its
/// first step is either towards that wall or visibly shorter than the next (part of it was spent
/// going to the wall and back). Then the run's sign says nothing against the asked direction.
fn unfold_start(d: f64, want: f64, gap: f64, v: &[f64]) -> f64 {
    if want == 0.0 || d * want >= 0.0 || v.len() < 3 {
        return d;
    }
    let (step1, step2) = (v[1] - v[0], v[2] - v[1]);
    let reachable = gap <= step2.abs() + WALL_TOL / 2.0;
    let reflected = step1 * want > 0.0 || step1.abs() < REFLECT_SHORT * step2.abs();
    if reachable && reflected {
        -d
    } else {
        d
    }
}

impl ObjectView<'_> {
    /// Distances at the first tracked frame from the object's edges to the walls it would hit
    /// moving along (ux, uy).
    fn start_gaps(&self, ux: f64, uy: f64) -> (f64, f64) {
        let b = self.track[0].1;
        let gx = if ux < 0.0 {
            b.left
        } else {
            self.seen.width_h - b.right
        };
        let gy = if uy < 0.0 { b.top } else { 1.0 - b.bottom };
        (gx, gy)
    }

    /// The direction of a slide's first run against the asked direction, and its speed.
    fn slide_direction(&self, ts: &[f64], xs: &[f64], ys: &[f64], dir: Direction) -> (f64, String) {
        let (ux, uy) = dir.unit();
        let (dx, dy, dt) = first_run(ts, xs, ys);
        let (gx, gy) = self.start_gaps(ux, uy);
        let (dx, dy) = (unfold_start(dx, ux, gx, xs), unfold_start(dy, uy, gy, ys));
        let speed = dx.hypot(dy) / dt.max(1e-9);
        let angle = if speed > 0.0 {
            ((dx * ux + dy * uy) / dx.hypot(dy))
                .clamp(-1.0, 1.0)
                .acos()
                .to_degrees()
        } else {
            180.0
        };
        let score = ramp_down(angle, ANGLE_TOL_DEG) * ramp_up(speed, MIN_SPEED);
        let detail = format!(
            "first run heads {} ({angle:.0}° off {}), speed {speed:.2} h/s",
            compass(dx, dy),
            dir.name()
        );
        (score, detail)
    }
}

/// Nearest compass direction of an image-space vector.
fn compass(dx: f64, dy: f64) -> &'static str {
    if dx.hypot(dy) < 1e-9 {
        return "nowhere";
    }
    Direction::ALL
        .iter()
        .max_by(|a, b| {
            let (ax, ay) = a.unit();
            let (bx, by) = b.unit();
            (ax * dx + ay * dy).total_cmp(&(bx * dx + by * dy))
        })
        .map_or("nowhere", |d| d.name())
}

// ---------------------------------------------------------------------------------------------
// Small numerics

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The coordinate stopped growing and went back down.
    Max,
    /// The coordinate stopped shrinking and went back up.
    Min,
}

/// Reversals of a noisy series: a point is a turn when the series moved away from it by `delta`
/// after approaching it by `delta` (hysteresis keeps jitter from counting).
struct ZigZag {
    /// +1 if the series first grows, -1 if it first shrinks, 0 if it never moves by `delta`.
    first: i8,
    turns: Vec<(usize, Turn)>,
}

fn zigzag(v: &[f64], delta: f64) -> ZigZag {
    let mut first = 0i8;
    let mut dir = 0i8;
    let (mut lo, mut hi, mut ext) = (0usize, 0usize, 0usize);
    let mut turns = Vec::new();
    for i in 1..v.len() {
        match dir {
            0 => {
                if v[i] < v[lo] {
                    lo = i;
                }
                if v[i] > v[hi] {
                    hi = i;
                }
                if v[i] - v[lo] >= delta {
                    dir = 1;
                    ext = i;
                } else if v[hi] - v[i] >= delta {
                    dir = -1;
                    ext = i;
                }
                first = dir;
            }
            1 => {
                if v[i] > v[ext] {
                    ext = i;
                } else if v[ext] - v[i] >= delta {
                    turns.push((ext, Turn::Max));
                    dir = -1;
                    ext = i;
                }
            }
            _ => {
                if v[i] < v[ext] {
                    ext = i;
                } else if v[i] - v[ext] >= delta {
                    turns.push((ext, Turn::Min));
                    dir = 1;
                    ext = i;
                }
            }
        }
    }
    ZigZag { first, turns }
}

/// Largest one-frame move of the series next to index `k`.
fn step_near(v: &[f64], k: usize) -> f64 {
    let before = if k > 0 { (v[k] - v[k - 1]).abs() } else { 0.0 };
    let after = if k + 1 < v.len() {
        (v[k + 1] - v[k]).abs()
    } else {
        0.0
    };
    before.max(after)
}

/// Least-squares line: slope and residuals.
fn linfit(ts: &[f64], vs: &[f64]) -> Option<(f64, Vec<f64>)> {
    let n = ts.len() as f64;
    let mt = ts.iter().sum::<f64>() / n;
    let mv = vs.iter().sum::<f64>() / n;
    let stt: f64 = ts.iter().map(|t| (t - mt).powi(2)).sum();
    if stt <= 0.0 {
        return None;
    }
    let slope = ts
        .iter()
        .zip(vs)
        .map(|(t, v)| (t - mt) * (v - mv))
        .sum::<f64>()
        / stt;
    let res = ts
        .iter()
        .zip(vs)
        .map(|(t, v)| v - (mv + slope * (t - mt)))
        .collect();
    Some((slope, res))
}

/// Least-squares parabola v = c0 + c1 (t - t̄) + c2 (t - t̄)²; returns [c0, c1, c2].
fn polyfit2(ts: &[f64], vs: &[f64]) -> Option<[f64; 3]> {
    if ts.len() < 3 {
        return None;
    }
    let mt = ts.iter().sum::<f64>() / ts.len() as f64;
    // Normal equations A c = b with A[i][j] = Σ u^(i+j), b[i] = Σ v u^i.
    let mut s = [0.0f64; 5];
    let mut b = [0.0f64; 3];
    for (t, v) in ts.iter().zip(vs) {
        let u = t - mt;
        let mut p = 1.0;
        for (k, sk) in s.iter_mut().enumerate() {
            if k < 3 {
                b[k] += v * p;
            }
            *sk += p;
            p *= u;
        }
    }
    let a = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]];
    solve3(a, b)
}

/// Solves a 3×3 linear system by Cramer's rule.
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    if d.abs() < 1e-12 {
        return None;
    }
    let mut out = [0.0; 3];
    for (col, o) in out.iter_mut().enumerate() {
        let mut m = a;
        for row in 0..3 {
            m[row][col] = b[row];
        }
        *o = det(m) / d;
    }
    Some(out)
}

/// 1 at or below `lo`, 0 at or above `hi`, linear between.
fn ramp_down(x: f64, (lo, hi): (f64, f64)) -> f64 {
    ((hi - x) / (hi - lo)).clamp(0.0, 1.0)
}

/// 0 at or below `lo`, 1 at or above `hi`, linear between.
fn ramp_up(x: f64, (lo, hi): (f64, f64)) -> f64 {
    ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    })
}

fn range(v: &[f64]) -> f64 {
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    if hi >= lo {
        hi - lo
    } else {
        0.0
    }
}

/// Most frequent value (first one on ties).
fn mode<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for it in items {
        match counts.iter_mut().find(|(v, _)| *v == it) {
            Some((_, n)) => *n += 1,
            None => counts.push((it, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, RenderOptions};
    use crate::scene::Scene;
    use crate::spec::{ObjectSpec, SceneSpec};

    /// Frame sizes, lengths and rates the ground-truth test sweeps.
    const SIZES: [(u32, u32); 3] = [(64, 64), (96, 64), (128, 128)];
    const RATES: [f64; 3] = [8.0, 12.0, 16.0];

    fn opts(seed: u64) -> RenderOptions {
        let (width, height) = SIZES[seed as usize % SIZES.len()];
        RenderOptions {
            width,
            height,
            frames: 17 + (seed as usize * 7) % 17,
            fps: RATES[(seed as usize / 3) % RATES.len()],
        }
    }

    fn render_spec(spec: &SceneSpec, seed: u64) -> Video {
        let scene = Scene::from_spec(spec, seed).expect("valid spec");
        render(&scene, &opts(seed)).expect("render")
    }

    fn one(colour: Colour, shape: Shape, size: Size, motion: Motion) -> ObjectSpec {
        ObjectSpec {
            colour,
            shape,
            size,
            motion,
        }
    }

    /// A spread of single-object specs covering every shape, size and kind of motion.
    fn singles() -> Vec<SceneSpec> {
        let motions = [
            Motion::Still,
            Motion::Slide(Direction::Right),
            Motion::Slide(Direction::UpLeft),
            Motion::Slide(Direction::Down),
            Motion::Slide(Direction::DownRight),
            Motion::Fall,
            Motion::Bounce(Side::Left),
            Motion::Bounce(Side::Right),
        ];
        let mut specs = Vec::new();
        for (i, &motion) in motions.iter().enumerate() {
            for (j, &shape) in Shape::ALL.iter().enumerate() {
                let colour = Colour::ALL[(i + 3 * j) % 9];
                let background = if colour == Colour::Black {
                    Colour::Gray
                } else {
                    Colour::Black
                };
                let size = Size::ALL[(i + j) % 2];
                specs.push(SceneSpec {
                    background,
                    objects: vec![one(colour, shape, size, motion)],
                });
            }
        }
        specs
    }

    #[test]
    fn ground_truth_renders_score_high() {
        let mut reports = Vec::new();
        for seed in 0..60 {
            let scene = Scene::sample(seed);
            let video = render(&scene, &opts(seed)).unwrap();
            let report = evaluate(&video, &SceneQuery::from(&scene.spec));
            if report.total < 0.95 {
                eprintln!(
                    "seed {seed} {:?} {:?}\n{}",
                    opts(seed),
                    scene.spec,
                    report.table()
                );
            }
            reports.push(report);
        }
        for (k, spec) in singles().iter().enumerate() {
            let seed = 100 + k as u64;
            let video = render_spec(spec, seed);
            let report = evaluate(&video, &SceneQuery::from(spec));
            if report.total < 0.95 {
                eprintln!("seed {seed} {:?} {spec:?}\n{}", opts(seed), report.table());
            }
            reports.push(report);
        }
        let summary = summarize(&reports);
        eprintln!("{}", summary.table());
        assert!(summary.mean_total >= 0.97, "{}", summary.table());
        assert!(summary.min_total >= 0.95, "{}", summary.table());
    }

    /// Renders `shown` and scores it against the query for `asked`; returns the highest score of
    /// the named checks over all objects, and prints the table when `verbose`.
    fn worst_case(asked: &SceneSpec, video: &Video, names: &[&str]) -> f64 {
        let report = evaluate(video, &SceneQuery::from(asked));
        let worst = report
            .checks
            .iter()
            .filter(|c| names.contains(&c.name.as_str()))
            .map(|c| c.score)
            .fold(0.0, f64::max);
        if worst > 0.1 {
            eprintln!("{asked:?}\n{}", report.table());
        }
        worst
    }

    /// For every single-object spec, a wrong video made by `change`: the named checks must all
    /// fail hard. Returns the highest such score seen.
    fn sweep(names: &[&str], change: impl Fn(&SceneSpec) -> Option<SceneSpec>) -> f64 {
        let mut worst: f64 = 0.0;
        let mut cases = 0;
        for (k, spec) in singles().iter().enumerate() {
            let Some(shown) = change(spec) else { continue };
            for seed in [k as u64, 50 + k as u64] {
                let video = render_spec(&shown, seed);
                worst = worst.max(worst_case(spec, &video, names));
                cases += 1;
            }
        }
        assert!(cases > 0);
        eprintln!(
            "{names:?}: worst score {:.1}% over {cases} videos",
            100.0 * worst
        );
        worst
    }

    fn first(spec: &SceneSpec) -> ObjectSpec {
        spec.objects[0]
    }

    fn with_object(spec: &SceneSpec, o: ObjectSpec) -> SceneSpec {
        SceneSpec {
            background: spec.background,
            objects: vec![o],
        }
    }

    #[test]
    fn blank_video_fails_every_object_check() {
        let checks = ["colour", "shape", "size", "permanence", "motion", "physics"];
        let mut worst: f64 = 0.0;
        for (k, spec) in singles().iter().enumerate() {
            let o = opts(k as u64);
            let frame = Frame::filled(o.width, o.height, spec.background.rgb());
            let video = Video::new(vec![frame; o.frames], o.fps).unwrap();
            worst = worst.max(worst_case(spec, &video, &checks));
            // The background itself is right.
            let report = evaluate(&video, &SceneQuery::from(spec));
            assert_eq!(report.checks[0].score, 1.0);
        }
        eprintln!("blank: worst object check {:.1}%", 100.0 * worst);
        assert!(worst <= 0.1);
    }

    #[test]
    fn noise_fails_everything() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut frames = Vec::new();
        for _ in 0..24 {
            let data = (0..96 * 64 * 3)
                .map(|_| {
                    // xorshift64*: uniform bytes without a dependency.
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
                })
                .collect();
            frames.push(Frame::from_rgb(96, 64, data).unwrap());
        }
        let video = Video::new(frames, 12.0).unwrap();
        let all = [
            "background",
            "colour",
            "shape",
            "size",
            "permanence",
            "motion",
            "physics",
        ];
        let mut worst: f64 = 0.0;
        for spec in singles() {
            worst = worst.max(worst_case(&spec, &video, &all));
        }
        eprintln!("noise: worst check score {:.1}%", 100.0 * worst);
        assert!(worst <= 0.1);
    }

    #[test]
    fn wrong_colour_fails_colour() {
        let worst = sweep(&["colour"], |spec| {
            let o = first(spec);
            let other = Colour::ALL
                .iter()
                .copied()
                .find(|&c| c != o.colour && c != spec.background)?;
            Some(with_object(spec, ObjectSpec { colour: other, ..o }))
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn wrong_shape_fails_shape() {
        for shift in 1..Shape::ALL.len() {
            let worst = sweep(&["shape"], |spec| {
                let o = first(spec);
                let i = Shape::ALL.iter().position(|&s| s == o.shape).unwrap();
                let shape = Shape::ALL[(i + shift) % Shape::ALL.len()];
                Some(with_object(spec, ObjectSpec { shape, ..o }))
            });
            assert!(worst <= 0.1);
        }
    }

    #[test]
    fn wrong_size_fails_size() {
        let worst = sweep(&["size"], |spec| {
            let o = first(spec);
            let size = if o.size == Size::Small {
                Size::Large
            } else {
                Size::Small
            };
            Some(with_object(spec, ObjectSpec { size, ..o }))
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn wrong_background_fails_background() {
        let worst = sweep(&["background"], |spec| {
            let o = first(spec);
            let background = Colour::ALL
                .iter()
                .copied()
                .find(|&c| c != o.colour && c != spec.background)?;
            Some(SceneSpec {
                background,
                objects: spec.objects.clone(),
            })
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn opposite_direction_fails_motion() {
        let worst = sweep(&["motion"], |spec| {
            let o = first(spec);
            let motion = match o.motion {
                Motion::Slide(d) => {
                    let i = Direction::ALL.iter().position(|&x| x == d).unwrap();
                    Motion::Slide(Direction::ALL[(i + 4) % 8])
                }
                Motion::Bounce(Side::Left) => Motion::Bounce(Side::Right),
                Motion::Bounce(Side::Right) => Motion::Bounce(Side::Left),
                _ => return None,
            };
            Some(with_object(spec, ObjectSpec { motion, ..o }))
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn reversed_fall_fails_motion() {
        // Half a second, ending before the floor: forwards the object drops; played backwards it
        // rises first (decelerating upwards), which is no fall.
        let opts = RenderOptions {
            width: 96,
            height: 64,
            frames: 9,
            fps: 16.0,
        };
        let mut cases = 0;
        for (k, spec) in singles().iter().enumerate() {
            if first(spec).motion != Motion::Fall {
                continue;
            }
            let scene = Scene::from_spec(spec, k as u64).unwrap();
            let video = render(&scene, &opts).unwrap();
            let forwards = evaluate(&video, &SceneQuery::from(spec));
            assert!(forwards.total >= 0.95, "{}", forwards.table());
            let mut frames = video.frames().to_vec();
            frames.reverse();
            let backwards = Video::new(frames, video.fps()).unwrap();
            assert!(worst_case(spec, &backwards, &["motion"]) <= 0.1);
            cases += 1;
        }
        assert!(cases > 0);
    }

    #[test]
    fn still_object_fails_asked_motion() {
        let worst = sweep(&["motion", "physics"], |spec| {
            let o = first(spec);
            (o.motion != Motion::Still).then(|| {
                with_object(
                    spec,
                    ObjectSpec {
                        motion: Motion::Still,
                        ..o
                    },
                )
            })
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn moving_object_fails_still() {
        let worst = sweep(&["motion"], |spec| {
            let o = first(spec);
            (o.motion == Motion::Still).then(|| {
                with_object(
                    spec,
                    ObjectSpec {
                        motion: Motion::Slide(Direction::Left),
                        ..o
                    },
                )
            })
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn slide_fails_gravity_physics() {
        // Asked to fall, shown sliding straight down at constant speed: the direction is right
        // but there is no acceleration.
        let worst = sweep(&["physics"], |spec| {
            let o = first(spec);
            (o.motion == Motion::Fall).then(|| {
                with_object(
                    spec,
                    ObjectSpec {
                        motion: Motion::Slide(Direction::Down),
                        ..o
                    },
                )
            })
        });
        assert!(worst <= 0.1);
    }

    #[test]
    fn report_serialises_and_tabulates() {
        let spec = &singles()[4];
        let report = evaluate(&render_spec(spec, 1), &SceneQuery::from(spec));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["checks"].as_array().unwrap().len(),
            report.checks.len()
        );
        let table = report.table();
        assert!(
            table.contains("total") && table.contains("physics"),
            "{table}"
        );
        let summary = summarize(&[report.clone(), report]);
        assert_eq!(summary.clips, 2);
        assert!(summary.table().contains("motion"));
    }

    #[test]
    fn ground_truth_survives_mp4() {
        // H.264 blurs edges, subsamples chroma and adds noise; the scores must hold.
        let dir = tempfile::tempdir().unwrap();
        let mut reports = Vec::new();
        for seed in 0..24 {
            let scene = Scene::sample(seed);
            let video = render(&scene, &opts(seed)).unwrap();
            let path = dir.path().join(format!("{seed}.mp4"));
            zoetrope_video::write_video(&path, &video).unwrap();
            let decoded = zoetrope_video::read_video(&path).unwrap();
            let report = evaluate(&decoded, &SceneQuery::from(&scene.spec));
            if report.total < 0.95 {
                eprintln!(
                    "seed {seed} {:?} {:?}\n{}",
                    opts(seed),
                    scene.spec,
                    report.table()
                );
            }
            reports.push(report);
        }
        let summary = summarize(&reports);
        eprintln!("after MP4:\n{}", summary.table());
        assert!(summary.mean_total >= 0.95, "{}", summary.table());
        assert!(summary.min_total >= 0.95, "{}", summary.table());
    }

    /// `video` written to an MP4 in `dir` and read back.
    fn via_mp4(dir: &std::path::Path, video: &Video) -> Video {
        let path = dir.join("clip.mp4");
        zoetrope_video::write_video(&path, video).unwrap();
        zoetrope_video::read_video(&path).unwrap()
    }

    fn mp4_opts(width: u32, height: u32) -> RenderOptions {
        RenderOptions {
            width,
            height,
            frames: 17,
            fps: 8.0,
        }
    }

    #[test]
    fn ground_truth_shapes_survive_mp4_at_small_sizes() {
        // Small objects (radius 5 pixels at a height of 64) after H.264's blur and 4:2:0 chroma:
        // every clip's shapes must still be seen, at every size the models work at.
        let dir = tempfile::tempdir().unwrap();
        for (width, height) in SIZES {
            let o = mp4_opts(width, height);
            let mut reports = Vec::new();
            let mut worst_shape: f64 = 1.0;
            for seed in 0..30 {
                let scene = Scene::sample(seed);
                let video = via_mp4(dir.path(), &render(&scene, &o).unwrap());
                let report = evaluate(&video, &SceneQuery::from(&scene.spec));
                let shape = report
                    .checks
                    .iter()
                    .filter(|c| c.name == "shape")
                    .map(|c| c.score)
                    .fold(1.0, f64::min);
                if shape < 0.9 || report.total < 0.95 {
                    eprintln!("seed {seed} {o:?} {:?}\n{}", scene.spec, report.table());
                }
                worst_shape = worst_shape.min(shape);
                reports.push(report);
            }
            let summary = summarize(&reports);
            eprintln!("{width}x{height} after MP4:\n{}", summary.table());
            assert!(
                worst_shape >= 0.9,
                "{width}x{height}: worst shape {worst_shape}"
            );
            assert!(summary.mean_total >= 0.97, "{}", summary.table());
        }
    }

    #[test]
    fn wrong_shape_fails_shape_after_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let o = mp4_opts(64, 64);
        let shifted = |spec: &SceneSpec, shift: usize| {
            let mut out = spec.clone();
            for obj in &mut out.objects {
                let i = Shape::ALL.iter().position(|&s| s == obj.shape).unwrap();
                obj.shape = Shape::ALL[(i + shift) % Shape::ALL.len()];
            }
            out
        };
        let mut worst: f64 = 0.0;
        let mut cases = 0;
        for shift in 1..Shape::ALL.len() {
            let sampled = (0..30).map(|seed| (Scene::sample(seed).spec, seed));
            let singles = singles().into_iter().zip(200..);
            for (spec, seed) in sampled.chain(singles) {
                let shown = Scene::from_spec(&shifted(&spec, shift), seed).unwrap();
                let video = via_mp4(dir.path(), &render(&shown, &o).unwrap());
                worst = worst.max(worst_case(&spec, &video, &["shape"]));
                cases += 1;
            }
        }
        eprintln!(
            "wrong shape after MP4: worst shape score {:.1}% over {cases} videos",
            100.0 * worst
        );
        assert!(worst <= 0.1);
    }

    #[test]
    fn stretched_blobs_are_no_world_shape() {
        // Ellipses and rectangles twice as wide as tall (or tall as wide), raw and after MP4.
        let dir = tempfile::tempdir().unwrap();
        for mp4 in [false, true] {
            for (rect, aspect) in [(false, 2.0), (true, 2.0), (false, 0.5), (true, 0.5)] {
                for r in [5.0, 10.0] {
                    let (ax, ay) = (r * f64::sqrt(aspect), r / f64::sqrt(aspect));
                    let mut frame = Frame::filled(64, 64, Colour::Black.rgb());
                    let (red, black) = (Colour::Red.rgb(), Colour::Black.rgb());
                    for y in 0..64 {
                        for x in 0..64 {
                            let (dx, dy) = (x as f64 + 0.5 - 31.3, y as f64 + 0.5 - 30.6);
                            let outside = if rect {
                                (dx.abs() - ax).max(dy.abs() - ay)
                            } else {
                                ((dx / ax).hypot(dy / ay) - 1.0) * ax.min(ay)
                            };
                            let cover = (0.5 - outside).clamp(0.0, 1.0);
                            let mix = |k: usize| {
                                (black[k] as f64 + (red[k] as f64 - black[k] as f64) * cover)
                                    .round() as u8
                            };
                            frame.set_pixel(x, y, [mix(0), mix(1), mix(2)]);
                        }
                    }
                    let mut video = Video::new(vec![frame], 8.0).unwrap();
                    if mp4 {
                        video = via_mp4(dir.path(), &video);
                    }
                    let frame = &video.frames()[0];
                    let mut labels = vec![UNKNOWN; 64 * 64];
                    label_frame(frame, &mut labels);
                    let blob = find_blob(frame, &labels, Colour::Red, Some(Colour::Black))
                        .expect("a red blob");
                    assert_eq!(
                        classify(&blob),
                        None,
                        "rect {rect} aspect {aspect} r {r} mp4 {mp4}: {blob:?}"
                    );
                }
            }
        }
    }
}
