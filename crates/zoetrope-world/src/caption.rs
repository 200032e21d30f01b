//! Captions: describing a [`SceneSpec`] in varied words, and parsing captions (ours or a user's)
//! back into a [`SceneQuery`].
//!
//! A caption names a background and 1–3 objects. Each object is a colour and a shape, with an
//! optional size before them, followed by its motion: a sliding verb and a direction ("moves up
//! and to the left"), a falling or bouncing verb with an optional side ("falls", "bounces to the
//! right"), or a staying-still phrase ("sits still"). Objects are joined by "and", "while", commas
//! or semicolons; objects listed together before one verb share it ("a red ball and a blue box
//! fall"). The background is "on a black background", "on black", "against a black backdrop" or
//! "with a black background", at the start or the end. [`vocabulary`] lists every word.
//!
//! What a caption leaves out stays open: [`describe`] always names the background and every
//! motion but sometimes leaves out sizes, and the parsed [`SceneQuery`] has `None` for whatever
//! the caption did not say. [`SceneQuery::matches`] checks a spec against only what was said.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::scene::sample_motion;
use crate::spec::{
    Colour, Direction, Motion, ObjectSpec, SceneSpec, Shape, Side, Size, MAX_OBJECTS,
};
use crate::WorldError;

/// Words for each colour.
pub const COLOUR_WORDS: &[(Colour, &[&str])] = &[
    (Colour::Red, &["red"]),
    (Colour::Green, &["green"]),
    (Colour::Blue, &["blue"]),
    (Colour::Yellow, &["yellow"]),
    (Colour::Orange, &["orange"]),
    (Colour::Purple, &["purple"]),
    (Colour::Cyan, &["cyan"]),
    (Colour::Pink, &["pink"]),
    (Colour::White, &["white"]),
    (Colour::Gray, &["gray", "grey"]),
    (Colour::Black, &["black"]),
];

/// Words for each shape; [`describe`] uses the singular ones.
pub const SHAPE_WORDS: &[(Shape, &[&str])] = &[
    (
        Shape::Circle,
        &[
            "circle", "ball", "disc", "dot", "disk", "circles", "balls", "discs", "dots", "disks",
        ],
    ),
    (
        Shape::Square,
        &[
            "square", "box", "block", "cube", "squares", "boxes", "blocks", "cubes",
        ],
    ),
    (Shape::Triangle, &["triangle", "triangles"]),
];

/// Words for each size.
pub const SIZE_WORDS: &[(Size, &[&str])] = &[
    (Size::Small, &["small", "little", "tiny"]),
    (Size::Large, &["large", "big", "huge"]),
];

/// Verbs of constant-velocity motion; each needs a direction.
pub const SLIDE_VERBS: &[&str] = &[
    "move",
    "moves",
    "moving",
    "slide",
    "slides",
    "sliding",
    "glide",
    "glides",
    "gliding",
    "drift",
    "drifts",
    "drifting",
    "travel",
    "travels",
    "travelling",
    "traveling",
    "roll",
    "rolls",
    "rolling",
    "head",
    "heads",
    "heading",
    "go",
    "goes",
    "going",
];

/// Verbs of falling under gravity. Alone (or with "down", "in place", "up and down") they mean
/// [`Motion::Fall`]; with a left or right direction they mean [`Motion::Bounce`] to that side.
pub const GRAVITY_VERBS: &[&str] = &[
    "fall",
    "falls",
    "falling",
    "drop",
    "drops",
    "dropping",
    "dropped",
    "bounce",
    "bounces",
    "bouncing",
    "hop",
    "hops",
    "hopping",
    "fall and bounce",
    "falls and bounces",
    "falling and bouncing",
    "drop and bounce",
    "drops and bounces",
    "dropping and bouncing",
];

/// Phrases for [`Motion::Still`]. They also work before the object: "a motionless red ball".
pub const STILL_PHRASES: &[&str] = &[
    "still",
    "sit",
    "sits",
    "sitting",
    "sit still",
    "sits still",
    "sitting still",
    "stay",
    "stays",
    "staying",
    "stay still",
    "stays still",
    "staying still",
    "stay put",
    "stays put",
    "staying put",
    "stay in place",
    "stays in place",
    "staying in place",
    "stand still",
    "stands still",
    "standing still",
    "rest",
    "rests",
    "resting",
    "at rest",
    "motionless",
    "stationary",
    "not moving",
    "does not move",
    "doesnt move",
    "do not move",
    "dont move",
];

/// Words for the four straight directions. Diagonals combine them: see [`DIAGONAL_PATTERNS`].
pub const STRAIGHT_DIRECTION_WORDS: &[(Direction, &[&str])] = &[
    (
        Direction::Right,
        &[
            "right",
            "to the right",
            "rightward",
            "rightwards",
            "towards the right",
            "toward the right",
        ],
    ),
    (
        Direction::Left,
        &[
            "left",
            "to the left",
            "leftward",
            "leftwards",
            "towards the left",
            "toward the left",
        ],
    ),
    (
        Direction::Up,
        &[
            "up",
            "upward",
            "upwards",
            "towards the top",
            "toward the top",
            "to the top",
        ],
    ),
    (
        Direction::Down,
        &[
            "down",
            "downward",
            "downwards",
            "towards the bottom",
            "toward the bottom",
            "to the bottom",
        ],
    ),
];

/// How diagonal directions are written, with V one of up/upward/upwards (down/…), H any
/// left/right phrase above, and CORNER top/upper (bottom/lower) followed by left/right.
pub const DIAGONAL_PATTERNS: &[&str] = &[
    "V and H",
    "V H",
    "H and V",
    "V-H",
    "(towards|toward|to|into) the CORNER",
    "(towards|toward|to|into) the CORNER corner",
    "CORNER",
];

/// Phrases that pin a falling object's bounce in place ("bounces up and down").
pub const IN_PLACE_PHRASES: &[&str] = &["in place", "on the spot", "up and down"];

/// Words that introduce the background colour ("on black", "with a white background").
pub const BACKGROUND_PREPOSITIONS: &[&str] = &["on", "against", "with", "over"];
/// Nouns for the background ("a black background").
pub const BACKGROUND_WORDS: &[&str] = &["background", "backdrop", "backgrounds"];
/// Words (besides commas, semicolons, colons and full stops) that join objects.
pub const JOINING_WORDS: &[&str] = &["and", "while", "whilst", "as", "meanwhile", "plus"];
/// Words that are understood but carry nothing: articles and the like.
pub const IGNORED_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "is",
    "are",
    "it",
    "its",
    "that",
    "which",
    "both",
    "one",
    "another",
    "each",
    "also",
    "there",
    "theres",
    "here",
    "of",
    "diagonally",
    "slowly",
    "quickly",
    "steadily",
    "gently",
    "plain",
    "solid",
    "coloured",
    "colored",
    "video",
    "clip",
    "scene",
    "showing",
    "shows",
];

/// The whole vocabulary by category, for documentation and error messages. Phrases are shown as
/// written; hyphens and punctuation in captions count as spaces (commas also join objects).
pub fn vocabulary() -> Vec<(String, Vec<String>)> {
    let owned = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let mut out = vec![(
        "colours".to_string(),
        COLOUR_WORDS
            .iter()
            .flat_map(|(_, w)| w.iter().map(|w| w.to_string()))
            .collect(),
    )];
    for (shape, words) in SHAPE_WORDS {
        out.push((format!("shape {}", shape.name()), owned(words)));
    }
    for (size, words) in SIZE_WORDS {
        out.push((format!("size {}", size.name()), owned(words)));
    }
    out.push((
        "sliding verbs (need a direction)".to_string(),
        owned(SLIDE_VERBS),
    ));
    out.push((
        "falling verbs (with left/right: bounce to that side)".to_string(),
        owned(GRAVITY_VERBS),
    ));
    out.push(("staying still".to_string(), owned(STILL_PHRASES)));
    for (d, words) in STRAIGHT_DIRECTION_WORDS {
        out.push((format!("direction {}", d.name()), owned(words)));
    }
    out.push(("diagonal directions".to_string(), owned(DIAGONAL_PATTERNS)));
    out.push(("bouncing in place".to_string(), owned(IN_PLACE_PHRASES)));
    out.push((
        "background (before a colour)".to_string(),
        owned(BACKGROUND_PREPOSITIONS),
    ));
    out.push((
        "background (after a colour)".to_string(),
        owned(BACKGROUND_WORDS),
    ));
    out.push(("joining words".to_string(), owned(JOINING_WORDS)));
    out.push(("ignored words".to_string(), owned(IGNORED_WORDS)));
    out
}

/// A few lines naming the main words, for error messages.
pub fn vocabulary_summary() -> String {
    let colours: Vec<&str> = Colour::ALL.iter().map(|c| c.name()).collect();
    format!(
        "Captions use colours ({}), shapes (circle/ball/disc/dot, square/box/block/cube, \
         triangle), sizes (small/little/tiny, large/big), motions (moves/slides/glides/drifts/\
         travels/rolls + a direction such as \"to the left\" or \"up and to the right\"; falls/\
         drops/bounces, optionally + left or right; sits still/stays put/motionless) and a \
         background (\"on a black background\"). See the caption vocabulary in the README.",
        colours.join(", ")
    )
}

/// What a caption says about one object; `None` where it says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectQuery {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Option<Size>,
    pub motion: Option<Motion>,
}

/// What a caption says about a scene; `None` where it says nothing. Objects are in caption order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SceneQuery {
    pub background: Option<Colour>,
    pub objects: Vec<ObjectQuery>,
}

impl ObjectQuery {
    /// Whether the object agrees with everything the query says.
    pub fn matches(&self, o: &ObjectSpec) -> bool {
        self.colour == o.colour
            && self.shape == o.shape
            && self.size.is_none_or(|s| s == o.size)
            && self.motion.is_none_or(|m| m == o.motion)
    }
}

impl From<&ObjectSpec> for ObjectQuery {
    fn from(o: &ObjectSpec) -> Self {
        ObjectQuery {
            colour: o.colour,
            shape: o.shape,
            size: Some(o.size),
            motion: Some(o.motion),
        }
    }
}

impl From<&SceneSpec> for SceneQuery {
    /// A query that says everything about the spec.
    fn from(spec: &SceneSpec) -> Self {
        SceneQuery {
            background: Some(spec.background),
            objects: spec.objects.iter().map(ObjectQuery::from).collect(),
        }
    }
}

impl SceneQuery {
    /// Whether the spec agrees with everything the query says: the same number of objects, each
    /// spec object matched by the one query object of its colour, and the background if given.
    /// Object order does not matter.
    pub fn matches(&self, spec: &SceneSpec) -> bool {
        self.background.is_none_or(|b| b == spec.background)
            && self.objects.len() == spec.objects.len()
            && spec.objects.iter().all(|o| {
                let mut same = self.objects.iter().filter(|q| q.colour == o.colour);
                matches!((same.next(), same.next()), (Some(q), None) if q.matches(o))
            })
    }

    /// Whether every field is given, so the query names exactly one spec.
    pub fn is_complete(&self) -> bool {
        self.background.is_some()
            && self
                .objects
                .iter()
                .all(|o| o.size.is_some() && o.motion.is_some())
    }

    /// A spec that matches the query, with what the query leaves open (background, sizes,
    /// motions) chosen deterministically from the seed.
    pub fn resolve(&self, seed: u64) -> Result<SceneSpec, WorldError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let background = match self.background {
            Some(b) => b,
            None => {
                let free: Vec<Colour> = Colour::ALL
                    .into_iter()
                    .filter(|c| self.objects.iter().all(|o| o.colour != *c))
                    .collect();
                *free.choose(&mut rng).ok_or_else(|| {
                    WorldError::InvalidScene("no colour is left for the background".to_string())
                })?
            }
        };
        let objects = self
            .objects
            .iter()
            .map(|q| ObjectSpec {
                colour: q.colour,
                shape: q.shape,
                size: q
                    .size
                    .unwrap_or_else(|| *Size::ALL.choose(&mut rng).expect("sizes")),
                motion: q.motion.unwrap_or_else(|| sample_motion(&mut rng)),
            })
            .collect();
        let spec = SceneSpec {
            background,
            objects,
        };
        spec.validate().map_err(WorldError::InvalidScene)?;
        Ok(spec)
    }
}

/// One plain wording that [`parse`] reads back to the same query.
impl fmt::Display for SceneQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match o.size {
                Some(s) => write!(f, "a {} ", s.name())?,
                None if o.colour == Colour::Orange => f.write_str("an ")?,
                None => f.write_str("a ")?,
            }
            write!(f, "{} {}", o.colour.name(), o.shape.name())?;
            match o.motion {
                None => {}
                Some(Motion::Still) => f.write_str(" stays still")?,
                Some(Motion::Slide(d)) => write!(f, " moves {}", canonical_direction(d))?,
                Some(Motion::Fall) => f.write_str(" falls")?,
                Some(Motion::Bounce(s)) => write!(f, " bounces {}", side_name(s))?,
            }
        }
        if let Some(b) = self.background {
            let article = if b == Colour::Orange { "an" } else { "a" };
            write!(f, " on {article} {} background", b.name())?;
        }
        Ok(())
    }
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Left => "left",
        Side::Right => "right",
    }
}

fn canonical_direction(d: Direction) -> &'static str {
    match d {
        Direction::Right => "right",
        Direction::UpRight => "up and to the right",
        Direction::Up => "up",
        Direction::UpLeft => "up and to the left",
        Direction::Left => "left",
        Direction::DownLeft => "down and to the left",
        Direction::Down => "down",
        Direction::DownRight => "down and to the right",
    }
}

/// Why a caption could not be understood. Each message says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown word{} {}. {}", plural(.words.len()), quoted(.words), vocabulary_summary())]
    UnknownWords { words: Vec<String> },
    #[error(
        "no object found: describe at least one object by colour and shape, e.g. \"a red circle \
         moves to the right on a black background\""
    )]
    NoObject,
    #[error(
        "\"{}\" is not followed by a shape: write e.g. \"a {0} circle\" (shapes: circle, square, \
         triangle), or \"on a {0} background\" for the background", .colour.name()
    )]
    ColourWithoutShape { colour: Colour },
    #[error(
        "the {shape} has no colour: write e.g. \"a red {shape}\" (colours: {})",
        colour_list()
    )]
    ShapeWithoutColour { shape: String },
    #[error(
        "the {} {} would be invisible on a {0} background: pick a different colour for the \
         object or the background", .colour.name(), .shape.name()
    )]
    SameColourAsBackground { colour: Colour, shape: Shape },
    #[error(
        "two objects are {}: give each object its own colour so they can be told apart",
        .colour.name()
    )]
    DuplicateColour { colour: Colour },
    #[error(
        "the caption describes {count} objects but a scene holds at most {MAX_OBJECTS}: describe \
         at most {MAX_OBJECTS}"
    )]
    TooManyObjects { count: usize },
    #[error(
        "\"{verb}\" needs a direction: write e.g. \"{verb} to the left\" or \"{verb} up and to \
         the right\""
    )]
    MissingDirection { verb: String },
    #[error(
        "the direction \"{direction}\" does not follow a motion verb: write e.g. \"moves \
         {direction}\" right after the object"
    )]
    DirectionWithoutMotion { direction: String },
    #[error(
        "\"{first}\" and \"{second}\" give one motion two directions: keep one (for a diagonal \
         write e.g. \"up and to the left\")"
    )]
    TwoDirections { first: String, second: String },
    #[error(
        "\"{verb}\" does not belong to any object: put each motion right after its object, e.g. \
         \"a red circle {verb}\"; each object has one motion"
    )]
    MotionWithoutObject { verb: String },
    #[error("\"{first}\" and \"{second}\" give one object two sizes: keep one")]
    TwoSizes { first: String, second: String },
    #[error(
        "the caption names two backgrounds, {} and {}: a scene has one", .first.name(),
        .second.name()
    )]
    TwoBackgrounds { first: Colour, second: Colour },
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn colour_list() -> String {
    Colour::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a word or phrase means to the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sem {
    Colour(Colour),
    Shape(Shape),
    Size(Size),
    Slide,
    Gravity,
    Still,
    Dir(Direction),
    InPlace,
    BgPrep,
    BgWord,
    Join,
    Filler,
}

/// Phrases by their first word, longest first so that matching prefers "to the top left" over
/// "to the top".
struct Lexicon {
    by_first: HashMap<String, Vec<(Vec<String>, Sem)>>,
}

fn diagonal_phrases(d: Direction) -> Vec<String> {
    let (v, h, corners): (&str, Direction, [&str; 2]) = match d {
        Direction::UpRight => ("up", Direction::Right, ["top", "upper"]),
        Direction::UpLeft => ("up", Direction::Left, ["top", "upper"]),
        Direction::DownRight => ("down", Direction::Right, ["bottom", "lower"]),
        Direction::DownLeft => ("down", Direction::Left, ["bottom", "lower"]),
        _ => return vec![],
    };
    let side = if h == Direction::Right {
        "right"
    } else {
        "left"
    };
    let hs = STRAIGHT_DIRECTION_WORDS
        .iter()
        .find(|(dir, _)| *dir == h)
        .map(|(_, w)| *w)
        .unwrap_or_default();
    let mut out = vec![];
    for vv in [v.to_string(), format!("{v}ward"), format!("{v}wards")] {
        for hh in hs {
            out.push(format!("{vv} and {hh}"));
            out.push(format!("{vv} {hh}"));
            out.push(format!("{hh} and {vv}"));
        }
    }
    for prep in ["towards the ", "toward the ", "to the ", "into the ", ""] {
        for c in corners {
            out.push(format!("{prep}{c} {side}"));
            out.push(format!("{prep}{c} {side} corner"));
        }
    }
    out
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: OnceLock<Lexicon> = OnceLock::new();
    LEXICON.get_or_init(|| {
        let mut entries: Vec<(String, Sem)> = vec![];
        let mut add = |words: &[&str], sem: Sem| {
            entries.extend(words.iter().map(|w| (w.to_string(), sem)));
        };
        for (c, w) in COLOUR_WORDS {
            add(w, Sem::Colour(*c));
        }
        for (s, w) in SHAPE_WORDS {
            add(w, Sem::Shape(*s));
        }
        for (s, w) in SIZE_WORDS {
            add(w, Sem::Size(*s));
        }
        add(SLIDE_VERBS, Sem::Slide);
        add(GRAVITY_VERBS, Sem::Gravity);
        add(STILL_PHRASES, Sem::Still);
        for (d, w) in STRAIGHT_DIRECTION_WORDS {
            add(w, Sem::Dir(*d));
        }
        add(IN_PLACE_PHRASES, Sem::InPlace);
        add(BACKGROUND_PREPOSITIONS, Sem::BgPrep);
        add(BACKGROUND_WORDS, Sem::BgWord);
        add(JOINING_WORDS, Sem::Join);
        add(IGNORED_WORDS, Sem::Filler);
        for d in Direction::ALL {
            entries.extend(diagonal_phrases(d).into_iter().map(|p| (p, Sem::Dir(d))));
        }
        let mut by_first: HashMap<String, Vec<(Vec<String>, Sem)>> = HashMap::new();
        for (phrase, sem) in entries {
            let words: Vec<String> = tokenize(&phrase)
                .into_iter()
                .filter_map(|t| match t {
                    Token::Word(w) => Some(w),
                    Token::Punct(_) => None,
                })
                .collect();
            by_first
                .entry(words[0].clone())
                .or_default()
                .push((words, sem));
        }
        for list in by_first.values_mut() {
            list.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        }
        Lexicon { by_first }
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Punct(char),
}

/// Lower-cased words; apostrophes vanish ("doesn't" is "doesnt"), sentence punctuation is kept
/// because it joins objects, and everything else (hyphens, quotes, brackets) separates words.
fn tokenize(text: &str) -> Vec<Token> {
    let mut out = vec![];
    let mut word = String::new();
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            word.push(ch);
            continue;
        }
        if matches!(ch, '\'' | '’') {
            continue;
        }
        if !word.is_empty() {
            out.push(Token::Word(std::mem::take(&mut word)));
        }
        if matches!(ch, ',' | ';' | ':' | '.' | '!' | '?') {
            out.push(Token::Punct(ch));
        }
    }
    if !word.is_empty() {
        out.push(Token::Word(word));
    }
    out
}

/// Splits text into known phrases, longest match first, or names the unknown words.
fn lex(text: &str) -> Result<Vec<(Sem, String)>, ParseError> {
    let lexicon = lexicon();
    let tokens = tokenize(text);
    let mut out = vec![];
    let mut unknown: Vec<String> = vec![];
    let mut i = 0;
    while i < tokens.len() {
        let word = match &tokens[i] {
            Token::Punct(c) => {
                out.push((Sem::Join, c.to_string()));
                i += 1;
                continue;
            }
            Token::Word(w) => w,
        };
        let found = lexicon.by_first.get(word).and_then(|candidates| {
            candidates.iter().find(|(phrase, _)| {
                phrase
                    .iter()
                    .enumerate()
                    .all(|(k, p)| matches!(tokens.get(i + k), Some(Token::Word(w)) if w == p))
            })
        });
        match found {
            Some((phrase, sem)) => {
                out.push((*sem, phrase.join(" ")));
                i += phrase.len();
            }
            None => {
                if !unknown.contains(word) {
                    unknown.push(word.clone());
                }
                i += 1;
            }
        }
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(ParseError::UnknownWords { words: unknown })
    }
}

/// A motion verb waiting for its direction.
struct OpenVerb {
    gravity: bool,
    word: String,
    direction: Option<(Option<Direction>, String)>,
}

/// Builds the query phrase by phrase.
#[derive(Default)]
struct Assembler {
    objects: Vec<ObjectQuery>,
    /// Objects named since the last motion: the next motion applies to all of them.
    pending: Vec<usize>,
    size: Option<(Size, String)>,
    colour: Option<Colour>,
    verb: Option<OpenVerb>,
    /// A motion said before its object ("a motionless red ball").
    before: Option<(Motion, String)>,
    background: Option<Colour>,
}

impl Assembler {
    /// A colour must be followed by its shape before anything else happens.
    fn no_dangling_colour(&self) -> Result<(), ParseError> {
        match self.colour {
            Some(colour) => Err(ParseError::ColourWithoutShape { colour }),
            None => Ok(()),
        }
    }

    fn close_verb(&mut self) -> Result<(), ParseError> {
        let Some(v) = self.verb.take() else {
            return Ok(());
        };
        let direction = v.direction.and_then(|(d, _)| d);
        let motion = match (v.gravity, direction) {
            (false, Some(d)) => Motion::Slide(d),
            (false, None) => return Err(ParseError::MissingDirection { verb: v.word }),
            (true, Some(d)) if d.unit().0 > 0.0 => Motion::Bounce(Side::Right),
            (true, Some(d)) if d.unit().0 < 0.0 => Motion::Bounce(Side::Left),
            (true, _) => Motion::Fall,
        };
        self.apply(motion, v.word)
    }

    fn apply(&mut self, motion: Motion, word: String) -> Result<(), ParseError> {
        if self.pending.is_empty() {
            if let Some((_, earlier)) = self.before.take() {
                return Err(ParseError::MotionWithoutObject { verb: earlier });
            }
            self.before = Some((motion, word));
        } else {
            for i in self.pending.drain(..) {
                self.objects[i].motion = Some(motion);
            }
        }
        Ok(())
    }

    fn set_background(&mut self, colour: Colour) -> Result<(), ParseError> {
        match self.background {
            Some(first) if first != colour => Err(ParseError::TwoBackgrounds {
                first,
                second: colour,
            }),
            _ => {
                self.background = Some(colour);
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Result<SceneQuery, ParseError> {
        self.no_dangling_colour()?;
        self.close_verb()?;
        if let Some((_, verb)) = self.before {
            return Err(ParseError::MotionWithoutObject { verb });
        }
        if self.objects.is_empty() {
            return Err(ParseError::NoObject);
        }
        if self.objects.len() > MAX_OBJECTS {
            return Err(ParseError::TooManyObjects {
                count: self.objects.len(),
            });
        }
        for (i, o) in self.objects.iter().enumerate() {
            if self.objects[..i].iter().any(|p| p.colour == o.colour) {
                return Err(ParseError::DuplicateColour { colour: o.colour });
            }
            if self.background == Some(o.colour) {
                return Err(ParseError::SameColourAsBackground {
                    colour: o.colour,
                    shape: o.shape,
                });
            }
        }
        Ok(SceneQuery {
            background: self.background,
            objects: self.objects,
        })
    }
}

/// Reads a caption: case-insensitive, tolerant of punctuation and articles. Understands
/// everything [`describe`] writes and the words listed by [`vocabulary`].
pub fn parse(text: &str) -> Result<SceneQuery, ParseError> {
    let phrases = lex(text)?;
    let meaningful = |i: &usize| phrases[*i].0 != Sem::Filler;
    let mut a = Assembler::default();
    for (i, (sem, word)) in phrases.iter().enumerate() {
        match *sem {
            Sem::Filler | Sem::BgWord => {}
            Sem::Join => a.no_dangling_colour()?,
            Sem::BgPrep => {
                a.no_dangling_colour()?;
                a.close_verb()?;
            }
            Sem::Size(size) => {
                a.close_verb()?;
                match &a.size {
                    Some((s, first)) if *s != size => {
                        return Err(ParseError::TwoSizes {
                            first: first.clone(),
                            second: word.clone(),
                        })
                    }
                    _ => a.size = Some((size, word.clone())),
                }
            }
            Sem::Colour(colour) => {
                let prev = (0..i).rev().find(meaningful).map(|j| phrases[j].0);
                let next = (i + 1..phrases.len())
                    .find(meaningful)
                    .map(|j| phrases[j].0);
                // "black background", or "on black" / "the background is black" not followed
                // by a shape, while "with a blue box" is an object.
                let is_background = next == Some(Sem::BgWord)
                    || (matches!(prev, Some(Sem::BgPrep | Sem::BgWord))
                        && !matches!(next, Some(Sem::Shape(_) | Sem::Size(_))));
                if is_background {
                    a.no_dangling_colour()?;
                    a.set_background(colour)?;
                } else {
                    a.close_verb()?;
                    a.no_dangling_colour()?;
                    a.colour = Some(colour);
                }
            }
            Sem::Shape(shape) => {
                let Some(colour) = a.colour.take() else {
                    return Err(ParseError::ShapeWithoutColour {
                        shape: word.clone(),
                    });
                };
                a.close_verb()?;
                let mut object = ObjectQuery {
                    colour,
                    shape,
                    size: a.size.take().map(|(s, _)| s),
                    motion: None,
                };
                match a.before.take() {
                    Some((motion, _)) => object.motion = Some(motion),
                    None => a.pending.push(a.objects.len()),
                }
                a.objects.push(object);
            }
            Sem::Slide | Sem::Gravity => {
                a.no_dangling_colour()?;
                a.close_verb()?;
                a.verb = Some(OpenVerb {
                    gravity: *sem == Sem::Gravity,
                    word: word.clone(),
                    direction: None,
                });
            }
            Sem::Still => {
                a.no_dangling_colour()?;
                a.close_verb()?;
                a.apply(Motion::Still, word.clone())?;
            }
            Sem::Dir(_) | Sem::InPlace => {
                let d = match *sem {
                    Sem::Dir(d) => Some(d),
                    _ => None,
                };
                match &mut a.verb {
                    Some(OpenVerb {
                        direction: Some((_, first)),
                        ..
                    }) => {
                        return Err(ParseError::TwoDirections {
                            first: first.clone(),
                            second: word.clone(),
                        })
                    }
                    Some(v) => v.direction = Some((d, word.clone())),
                    // "stays in place" and the like need nothing more.
                    None if d.is_none() => {}
                    None => {
                        return Err(ParseError::DirectionWithoutMotion {
                            direction: word.clone(),
                        })
                    }
                }
            }
        }
    }
    a.finish()
}

/// How a verb agrees with its subject.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// "a red ball moves"
    Singular,
    /// "a red ball and a blue box move"
    Plural,
    /// "red ball moving"
    Participle,
}

fn pick<'a, R: Rng + ?Sized>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

fn direction_phrase<R: Rng + ?Sized>(d: Direction, rng: &mut R) -> String {
    if let Some((_, words)) = STRAIGHT_DIRECTION_WORDS.iter().find(|(x, _)| *x == d) {
        return pick(rng, words).to_string();
    }
    let (v, h, corner) = match d {
        Direction::UpRight => ("up", "right", "top"),
        Direction::UpLeft => ("up", "left", "top"),
        Direction::DownRight => ("down", "right", "bottom"),
        _ => ("down", "left", "bottom"),
    };
    let upper = if v == "up" { "upper" } else { "lower" };
    let options = [
        format!("{v} and to the {h}"),
        format!("{v}-{h}"),
        format!("{v} and {h}"),
        format!("diagonally {v} and to the {h}"),
        format!("diagonally {v} and {h}"),
        format!("towards the {corner} {h}"),
        format!("toward the {corner}-{h} corner"),
        format!("to the {upper} {h}"),
        format!("{v}ward and to the {h}"),
    ];
    options.choose(rng).cloned().unwrap_or_default()
}

fn side_phrase<R: Rng + ?Sized>(side: Side, rng: &mut R) -> String {
    let d = match side {
        Side::Left => Direction::Left,
        Side::Right => Direction::Right,
    };
    direction_phrase(d, rng)
}

fn verb_phrase<R: Rng + ?Sized>(motion: Motion, form: Form, rng: &mut R) -> String {
    match motion {
        Motion::Slide(d) => {
            let horizontal = d.unit().1 == 0.0;
            let verbs: &[&str] = match (form, horizontal) {
                (Form::Singular, false) => {
                    &["moves", "slides", "glides", "drifts", "travels", "heads"]
                }
                (Form::Singular, true) => &[
                    "moves", "slides", "glides", "drifts", "travels", "heads", "rolls",
                ],
                (Form::Plural, false) => &["move", "slide", "glide", "drift", "travel", "head"],
                (Form::Plural, true) => &["move", "slide", "glide", "drift", "travel", "roll"],
                (Form::Participle, false) => &[
                    "moving",
                    "sliding",
                    "gliding",
                    "drifting",
                    "travelling",
                    "heading",
                ],
                (Form::Participle, true) => &[
                    "moving",
                    "sliding",
                    "gliding",
                    "drifting",
                    "travelling",
                    "rolling",
                ],
            };
            format!("{} {}", pick(rng, verbs), direction_phrase(d, rng))
        }
        Motion::Fall => {
            let verbs: &[&str] = match form {
                Form::Singular => &[
                    "falls",
                    "drops",
                    "is dropped",
                    "falls and bounces",
                    "falls down",
                    "drops and bounces",
                    "bounces in place",
                    "bounces up and down",
                ],
                Form::Plural => &[
                    "fall",
                    "drop",
                    "are dropped",
                    "fall and bounce",
                    "fall down",
                    "bounce in place",
                    "bounce up and down",
                ],
                Form::Participle => &[
                    "falling",
                    "dropping",
                    "falling and bouncing",
                    "falling down",
                    "bouncing in place",
                    "bouncing up and down",
                ],
            };
            pick(rng, verbs).to_string()
        }
        Motion::Bounce(side) => {
            let verbs: &[&str] = match form {
                Form::Singular => &["bounces", "hops", "falls and bounces"],
                Form::Plural => &["bounce", "hop"],
                Form::Participle => &["bouncing", "hopping", "falling and bouncing"],
            };
            format!("{} {}", pick(rng, verbs), side_phrase(side, rng))
        }
        Motion::Still => {
            let phrases: &[&str] = match form {
                Form::Singular => &[
                    "sits still",
                    "stays put",
                    "is still",
                    "rests",
                    "is motionless",
                    "is stationary",
                    "stays still",
                    "does not move",
                    "stays in place",
                ],
                Form::Plural => &[
                    "sit still",
                    "stay put",
                    "are still",
                    "rest",
                    "are motionless",
                    "are stationary",
                    "do not move",
                ],
                Form::Participle => &[
                    "resting",
                    "sitting still",
                    "staying put",
                    "motionless",
                    "standing still",
                    "not moving",
                ],
            };
            pick(rng, phrases).to_string()
        }
    }
}

/// "a"/"an"/"the" (or nothing) before the words that follow.
fn with_article<R: Rng + ?Sized>(words: String, articles: bool, rng: &mut R) -> String {
    if !articles {
        return words;
    }
    if rng.random_bool(0.2) {
        return format!("the {words}");
    }
    let vowel = words.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {words}", if vowel { "an" } else { "a" })
}

fn noun_phrase<R: Rng + ?Sized>(
    o: &ObjectSpec,
    still_adjective: bool,
    articles: bool,
    rng: &mut R,
) -> String {
    let mut words = vec![];
    if still_adjective {
        words.push(pick(rng, &["motionless", "stationary", "still", "resting"]));
    }
    // Sizes are sometimes left out, as people often do.
    if rng.random_bool(0.75) {
        let sizes: &[&str] = match o.size {
            Size::Small => &["small", "little", "tiny"],
            Size::Large => &["large", "big"],
        };
        words.push(pick(rng, sizes));
    }
    words.push(o.colour.name());
    let shapes: &[&str] = match o.shape {
        Shape::Circle => &["circle", "ball", "disc", "dot"],
        Shape::Square => &["square", "box", "block", "cube"],
        Shape::Triangle => &["triangle"],
    };
    words.push(pick(rng, shapes));
    with_article(words.join(" "), articles, rng)
}

/// Describes the spec in words chosen at random: synonyms, word order, joining words and where
/// the background goes all vary. Always names the background and every object's colour, shape
/// and motion; sometimes leaves out sizes. [`parse`] reads every caption back.
pub fn describe(spec: &SceneSpec, rng: &mut impl Rng) -> String {
    let participles = rng.random_bool(0.35);
    let articles = !participles || rng.random_bool(0.5);
    let objects = &spec.objects;
    let mut clauses = vec![];
    let mut i = 0;
    while i < objects.len() {
        let o = &objects[i];
        if o.motion == Motion::Still && rng.random_bool(0.2) {
            clauses.push(noun_phrase(o, true, articles, rng));
            i += 1;
            continue;
        }
        // Neighbours with the same motion may share one verb.
        let mut j = i + 1;
        while j < objects.len() && objects[j].motion == o.motion && rng.random_bool(0.5) {
            j += 1;
        }
        let subjects: Vec<String> = objects[i..j]
            .iter()
            .map(|o| noun_phrase(o, false, articles, rng))
            .collect();
        let form = match (participles, j - i) {
            (true, _) => Form::Participle,
            (false, 1) => Form::Singular,
            (false, _) => Form::Plural,
        };
        clauses.push(format!(
            "{} {}",
            subjects.join(" and "),
            verb_phrase(o.motion, form, rng)
        ));
        i = j;
    }
    let joins: &[&str] = if participles {
        &[" and ", ", ", "; ", " with "]
    } else {
        &[" and ", ", ", " while ", "; ", ", and ", " as "]
    };
    let mut body = clauses[0].clone();
    for c in &clauses[1..] {
        body.push_str(pick(rng, joins));
        body.push_str(c);
    }
    let bg = spec.background.name();
    let mut text = if rng.random_bool(0.4) {
        let lead = [
            format!("on a {bg} background, "),
            format!("against a {bg} backdrop, "),
            format!("on {bg}, "),
            format!("{bg} background: "),
            format!("on a plain {bg} background, "),
        ];
        format!("{}{body}", lead.choose(rng).expect("leads"))
    } else {
        let trail = [
            format!(" on a {bg} background"),
            format!(" on {bg}"),
            format!(" against a {bg} backdrop"),
            format!(" with a {bg} background"),
            format!(", on a {bg} background"),
            format!(" over a {bg} background"),
        ];
        format!("{body}{}", trail.choose(rng).expect("trails"))
    };
    if rng.random_bool(0.5) {
        if let Some(first) = text.get(..1) {
            text = first.to_uppercase() + &text[1..];
        }
    }
    if rng.random_bool(0.3) {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::sample_spec;

    fn obj(colour: Colour, shape: Shape, size: Option<Size>, motion: Motion) -> ObjectQuery {
        ObjectQuery {
            colour,
            shape,
            size,
            motion: Some(motion),
        }
    }

    #[test]
    fn descriptions_parse_back_to_their_specs() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let mut sizes_left_out = 0;
        for _ in 0..2000 {
            let spec = sample_spec(&mut rng);
            for _ in 0..5 {
                let caption = describe(&spec, &mut rng);
                let q = parse(&caption).unwrap_or_else(|e| panic!("{caption:?}: {e}"));
                // Describe names one object per noun, so it uses singular nouns.
                assert!(
                    !["circles", "balls", "boxes", "squares", "triangles", "dots"]
                        .iter()
                        .any(|p| caption.to_lowercase().split(' ').any(|w| w == *p)),
                    "{caption:?}"
                );
                assert!(q.matches(&spec), "{caption:?} gave {q:?} for {spec:?}");
                assert_eq!(q.background, Some(spec.background), "{caption:?}");
                assert!(q.objects.iter().all(|o| o.motion.is_some()), "{caption:?}");
                // Caption order is spec order.
                for (a, b) in q.objects.iter().zip(&spec.objects) {
                    assert_eq!((a.colour, a.shape), (b.colour, b.shape), "{caption:?}");
                }
                sizes_left_out += q.objects.iter().filter(|o| o.size.is_none()).count();
            }
        }
        assert!(sizes_left_out > 1000);
    }

    #[test]
    fn descriptions_vary() {
        let spec = SceneSpec {
            background: Colour::Black,
            objects: vec![ObjectSpec {
                colour: Colour::Red,
                shape: Shape::Circle,
                size: Size::Small,
                motion: Motion::Slide(Direction::UpLeft),
            }],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let all: std::collections::HashSet<String> =
            (0..200).map(|_| describe(&spec, &mut rng)).collect();
        assert!(all.len() > 100, "{}", all.len());
    }

    #[test]
    fn displayed_queries_parse_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let q = SceneQuery::from(&sample_spec(&mut rng));
            assert_eq!(parse(&q.to_string()).unwrap(), q, "{q}");
        }
    }

    #[test]
    fn example_phrasings() {
        use Colour::*;
        use Direction as D;
        let cases: Vec<(&str, Option<Colour>, Vec<ObjectQuery>)> = vec![
            (
                "a red ball bounces to the right",
                None,
                vec![obj(Red, Shape::Circle, None, Motion::Bounce(Side::Right))],
            ),
            (
                "red circle moving right on black",
                Some(Black),
                vec![obj(Red, Shape::Circle, None, Motion::Slide(D::Right))],
            ),
            (
                "On a black background, a small red circle rolls right.",
                Some(Black),
                vec![obj(
                    Red,
                    Shape::Circle,
                    Some(Size::Small),
                    Motion::Slide(D::Right),
                )],
            ),
            (
                "a large blue square and a small yellow triangle fall on a white background",
                Some(White),
                vec![
                    obj(Blue, Shape::Square, Some(Size::Large), Motion::Fall),
                    obj(Yellow, Shape::Triangle, Some(Size::Small), Motion::Fall),
                ],
            ),
            (
                "a green triangle sits still on gray",
                Some(Gray),
                vec![obj(Green, Shape::Triangle, None, Motion::Still)],
            ),
            (
                "A tiny PINK dot drifts up-left; a big grey box is dropped, against a black \
                 backdrop",
                Some(Black),
                vec![
                    obj(
                        Pink,
                        Shape::Circle,
                        Some(Size::Small),
                        Motion::Slide(D::UpLeft),
                    ),
                    obj(Gray, Shape::Square, Some(Size::Large), Motion::Fall),
                ],
            ),
            (
                "the cyan disc moves towards the top right while an orange block hops left, \
                 with a blue background",
                Some(Blue),
                vec![
                    obj(Cyan, Shape::Circle, None, Motion::Slide(D::UpRight)),
                    obj(Orange, Shape::Square, None, Motion::Bounce(Side::Left)),
                ],
            ),
            (
                "a motionless purple cube and a white ball moving diagonally down and right",
                None,
                vec![
                    obj(Purple, Shape::Square, None, Motion::Still),
                    obj(White, Shape::Circle, None, Motion::Slide(D::DownRight)),
                ],
            ),
            (
                "a red ball bounces up and down and a green box doesn't move",
                None,
                vec![
                    obj(Red, Shape::Circle, None, Motion::Fall),
                    obj(Green, Shape::Square, None, Motion::Still),
                ],
            ),
            (
                "a yellow triangle glides leftwards, a blue ball falls and bounces to the \
                 right; black background",
                Some(Black),
                vec![
                    obj(Yellow, Shape::Triangle, None, Motion::Slide(D::Left)),
                    obj(Blue, Shape::Circle, None, Motion::Bounce(Side::Right)),
                ],
            ),
            (
                "The background is white and a red ball falls",
                Some(White),
                vec![obj(Red, Shape::Circle, None, Motion::Fall)],
            ),
            (
                "a red ball on a blue background, moving left",
                Some(Blue),
                vec![obj(Red, Shape::Circle, None, Motion::Slide(D::Left))],
            ),
            (
                "a red ball slides to the bottom left corner",
                None,
                vec![obj(Red, Shape::Circle, None, Motion::Slide(D::DownLeft))],
            ),
        ];
        for (text, background, objects) in cases {
            let q = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                q,
                SceneQuery {
                    background,
                    objects
                },
                "{text:?}"
            );
        }
        // A caption without motions leaves them open.
        let q = parse("a red ball and a blue box").unwrap();
        assert!(q.objects.iter().all(|o| o.motion.is_none()));
    }

    fn error(text: &str) -> (ParseError, String) {
        let e = parse(text).unwrap_err();
        let message = e.to_string();
        (e, message)
    }

    #[test]
    fn errors_explain_what_to_write() {
        let (e, m) = error("a red ball zooms quikly to the right");
        assert_eq!(
            e,
            ParseError::UnknownWords {
                words: vec!["zooms".into(), "quikly".into()]
            }
        );
        assert!(
            m.contains("\"zooms\", \"quikly\"") && m.contains("circle"),
            "{m}"
        );

        let (e, m) = error("on a black background");
        assert_eq!(e, ParseError::NoObject);
        assert!(m.contains("a red circle"), "{m}");
        assert_eq!(error("").0, ParseError::NoObject);

        let (e, m) = error("a red moves right");
        assert_eq!(
            e,
            ParseError::ColourWithoutShape {
                colour: Colour::Red
            }
        );
        assert!(m.contains("a red circle"), "{m}");

        let (e, m) = error("a ball moves right");
        assert!(matches!(e, ParseError::ShapeWithoutColour { .. }));
        assert!(m.contains("a red ball"), "{m}");

        let (e, m) = error("a black ball falls on black");
        assert!(matches!(e, ParseError::SameColourAsBackground { .. }));
        assert!(
            m.contains("invisible") && m.contains("different colour"),
            "{m}"
        );

        let (e, m) = error("a red ball falls and a red box moves left");
        assert_eq!(
            e,
            ParseError::DuplicateColour {
                colour: Colour::Red
            }
        );
        assert!(m.contains("its own colour"), "{m}");

        let (e, m) = error("a red ball, a blue ball, a green ball and a pink ball fall");
        assert_eq!(e, ParseError::TooManyObjects { count: 4 });
        assert!(m.contains("at most 3"), "{m}");

        let (e, m) = error("a red ball moves on black");
        assert!(matches!(e, ParseError::MissingDirection { .. }));
        assert!(m.contains("moves to the left"), "{m}");

        let (e, _) = error("a red ball to the left");
        assert!(matches!(e, ParseError::DirectionWithoutMotion { .. }));

        let (e, _) = error("a red ball moves left to the right");
        assert!(matches!(e, ParseError::TwoDirections { .. }));

        let (e, m) = error("a red ball moves left and falls");
        assert!(matches!(e, ParseError::MotionWithoutObject { .. }));
        assert!(m.contains("right after its object"), "{m}");

        let (e, _) = error("a small large red ball falls");
        assert!(matches!(e, ParseError::TwoSizes { .. }));

        let (e, m) = error("on black, a red ball falls on white");
        assert!(matches!(e, ParseError::TwoBackgrounds { .. }));
        assert!(m.contains("black and white"), "{m}");
    }

    #[test]
    fn queries_match_only_what_they_say() {
        let spec = SceneSpec {
            background: Colour::Black,
            objects: vec![
                ObjectSpec {
                    colour: Colour::Red,
                    shape: Shape::Circle,
                    size: Size::Small,
                    motion: Motion::Fall,
                },
                ObjectSpec {
                    colour: Colour::Blue,
                    shape: Shape::Square,
                    size: Size::Large,
                    motion: Motion::Still,
                },
            ],
        };
        assert!(SceneQuery::from(&spec).matches(&spec));
        assert!(parse("a blue box and a red ball").unwrap().matches(&spec));
        assert!(
            parse("a big blue box stays put and a red ball falls on black")
                .unwrap()
                .matches(&spec)
        );
        assert!(!parse("a small blue box and a red ball")
            .unwrap()
            .matches(&spec));
        assert!(!parse("a blue box and a red ball on white")
            .unwrap()
            .matches(&spec));
        assert!(!parse("a red ball falls").unwrap().matches(&spec));
        assert!(!parse("a blue box, a red triangle").unwrap().matches(&spec));
    }

    #[test]
    fn resolving_fills_the_gaps_deterministically() {
        let q = parse("a red ball and a blue box falls").unwrap();
        for seed in 0..100 {
            let spec = q.resolve(seed).unwrap();
            assert!(q.matches(&spec));
            assert_eq!(spec, q.resolve(seed).unwrap());
        }
        let full = SceneQuery::from(&sample_spec(&mut ChaCha8Rng::seed_from_u64(9)));
        assert!(full.is_complete());
        assert!(!q.is_complete());
        assert!(full.matches(&full.resolve(0).unwrap()));
    }

    #[test]
    fn the_lexicon_is_unambiguous() {
        let mut seen: HashMap<Vec<String>, Sem> = HashMap::new();
        for list in lexicon().by_first.values() {
            for (words, sem) in list {
                if let Some(other) = seen.insert(words.clone(), *sem) {
                    assert_eq!(other, *sem, "{words:?}");
                }
            }
        }
        assert!(vocabulary().len() > 10);
    }
}
