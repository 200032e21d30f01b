//! Held-out combinations: object combinations the training sampler never draws, and the prompts
//! that ask for them.
//!
//! The benchmark asks whether a model composes what it learnt (a colour, a shape, a motion) into
//! scenes it never saw. So some (colour, shape, motion) combinations are kept out of training:
//! [`crate::Scene::sample_training`] and [`crate::dataset::sample_training_clip`] never draw them,
//! and [`heldout_prompts`] asks for them, in wordings no training caption uses.
//!
//! # The rule
//!
//! Number the 11 colours, 3 shapes and 12 motion kinds in declaration order ([`Colour::ALL`],
//! [`Shape::ALL`], [`MOTION_KINDS`]: still; slide right, up-right, up, up-left, left, down-left,
//! down, down-right; fall; bounce left, bounce right). An object is held out when
//!
//! > colour + 3 · shape + motion ≡ 0 (mod 8)
//!
//! That holds out 50 of the 396 combinations (12.6%), carrying 12.6% of the objects that
//! [`crate::scene::sample_spec`] draws. Being one residue of a sum, the rule never takes a whole
//! row of any two attributes: for a colour and a shape at most 2 of the 12 motions are held out,
//! for a colour and a motion at most 1 of the 3 shapes (0, 3 and 6 differ mod 8), for a shape
//! and a motion at most 2 of the 11 colours. So every colour, shape and motion, and every pair of
//! them, is still trained with other partners; only the triple is new.
//!
//! Size is not part of a combination: a held-out combination is held out at both sizes. The
//! renderer draws both sizes of every shape alike, so a split by size would hold out scenes that
//! differ from training ones only in scale, a far weaker test; and a prompt that leaves the size
//! open (as a quarter of the training captions do) is held out or not regardless of the size a
//! seed picks.
//!
//! # The prompt file
//!
//! [`heldout_prompts`] writes one or two objects per prompt, at least one of them held out, over
//! varied backgrounds, sizes, shapes and motions. Each prompt uses a phrase the caption generator
//! ([`crate::describe`]) never writes ("moves toward the upper left", "hops in place", "against a
//! gray background", a full stop between two objects), built only from words that training
//! captions do use, so a word-level text encoder knows every word. The committed file
//! `crates/zoetrope-world/data/heldout_prompts.txt` is [`heldout_prompt_file`]'s output (a test
//! keeps them equal); `zoetrope world heldout -o FILE` writes it.

use crate::spec::{Colour, Direction, Motion, ObjectSpec, SceneSpec, Shape, Side, Size};

/// Every motion kind, in the order the rule numbers them.
pub const MOTION_KINDS: [Motion; 12] = [
    Motion::Still,
    Motion::Slide(Direction::Right),
    Motion::Slide(Direction::UpRight),
    Motion::Slide(Direction::Up),
    Motion::Slide(Direction::UpLeft),
    Motion::Slide(Direction::Left),
    Motion::Slide(Direction::DownLeft),
    Motion::Slide(Direction::Down),
    Motion::Slide(Direction::DownRight),
    Motion::Fall,
    Motion::Bounce(Side::Left),
    Motion::Bounce(Side::Right),
];

/// The rule's modulus: about one combination in this many is held out.
pub const HELD_OUT_MODULUS: usize = 8;
/// The shape's weight in the rule's sum. 3 keeps the three shapes' terms (0, 3, 6) distinct mod
/// [`HELD_OUT_MODULUS`], so no colour and motion lose more than one shape.
const SHAPE_WEIGHT: usize = 3;

fn colour_index(c: Colour) -> usize {
    Colour::ALL
        .iter()
        .position(|&x| x == c)
        .expect("every colour is in Colour::ALL")
}

fn shape_index(s: Shape) -> usize {
    Shape::ALL
        .iter()
        .position(|&x| x == s)
        .expect("every shape is in Shape::ALL")
}

/// The motion's number in [`MOTION_KINDS`].
pub fn motion_index(m: Motion) -> usize {
    MOTION_KINDS
        .iter()
        .position(|&x| x == m)
        .expect("every motion is in MOTION_KINDS")
}

/// Whether this colour, shape and motion are held out of training (see the module docs).
pub fn is_combination_held_out(colour: Colour, shape: Shape, motion: Motion) -> bool {
    (colour_index(colour) + SHAPE_WEIGHT * shape_index(shape) + motion_index(motion))
        .is_multiple_of(HELD_OUT_MODULUS)
}

/// Whether the object's combination of colour, shape and motion is held out; its size does not
/// matter.
pub fn is_held_out(o: &ObjectSpec) -> bool {
    is_combination_held_out(o.colour, o.shape, o.motion)
}

/// Whether any object of the scene is held out.
pub fn spec_is_held_out(spec: &SceneSpec) -> bool {
    spec.objects.iter().any(is_held_out)
}

/// Every held-out combination, colours outermost, then shapes, then motions.
pub fn held_out_combinations() -> Vec<(Colour, Shape, Motion)> {
    let mut out = vec![];
    for c in Colour::ALL {
        for s in Shape::ALL {
            for m in MOTION_KINDS {
                if is_combination_held_out(c, s, m) {
                    out.push((c, s, m));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The prompts

/// How many prompts pair two held-out objects (the others pair one with a trained combination,
/// or name it alone).
const HELD_OUT_PAIRS: usize = 16;

/// One object as a prompt names it.
#[derive(Clone, Copy)]
struct Mention {
    spec: ObjectSpec,
    say_size: bool,
}

/// Round-robin counters, one per kind of choice, so that each kind cycles through its variants
/// evenly across the file.
#[derive(Default)]
struct Rotor {
    counters: std::collections::HashMap<&'static str, usize>,
}

impl Rotor {
    fn next(&mut self, kind: &'static str, variants: usize) -> usize {
        let n = self.counters.entry(kind).or_default();
        let k = *n % variants;
        *n += 1;
        k
    }
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn noun_phrase(m: &Mention, rotor: &mut Rotor) -> String {
    let mut words = vec![];
    if m.say_size {
        words.push(match m.spec.size {
            Size::Small => ["small", "little", "tiny"][rotor.next("small", 3)],
            Size::Large => ["large", "big"][rotor.next("large", 2)],
        });
    }
    words.push(m.spec.colour.name());
    words.push(match m.spec.shape {
        Shape::Circle => ["ball", "circle", "disc", "dot"][rotor.next("circle", 4)],
        Shape::Square => ["box", "square", "block", "cube"][rotor.next("square", 4)],
        Shape::Triangle => "triangle",
    });
    let text = words.join(" ");
    match rotor.next("article", 6) {
        5 => format!("the {text}"),
        _ => format!("{} {text}", article(&text)),
    }
}

/// A singular verb phrase for the motion, and whether the caption generator never writes it.
/// Only circles roll up or down (the generator's "rolls" is sideways only, and for any shape).
fn motion_phrase(motion: Motion, shape: Shape, rotor: &mut Rotor) -> (String, bool) {
    let rolls = shape == Shape::Circle;
    let novel = |s: String| (s, true);
    match motion {
        Motion::Still => novel(
            [
                "is sitting still",
                "is resting",
                "rests in place",
                "is staying put",
            ][rotor.next("still", 4)]
            .to_string(),
        ),
        Motion::Fall => novel(
            [
                "drops down",
                "hops in place",
                "falls and bounces in place",
                "hops up and down",
                "drops and bounces up and down",
            ][rotor.next("fall", 5)]
            .to_string(),
        ),
        Motion::Bounce(side) => {
            let h = side_word(side);
            novel(match rotor.next("bounce", 3) {
                0 => format!("drops and bounces to the {h}"),
                1 => format!("drops and bounces {h}wards"),
                _ => format!("drops and bounces towards the {h}"),
            })
        }
        Motion::Slide(d) => {
            let (ux, uy) = d.unit();
            let h = if ux > 0.0 { "right" } else { "left" };
            let (v, upper, top) = if uy < 0.0 {
                ("up", "upper", "top")
            } else {
                ("down", "lower", "bottom")
            };
            if ux != 0.0 && uy != 0.0 {
                novel(match rotor.next("diagonal", 7) {
                    0 => format!("moves toward the {upper} {h}"),
                    1 => format!("slides towards the {upper} {h}"),
                    2 => format!("glides to the {top} {h}"),
                    3 if rolls => format!("rolls {v} and to the {h}"),
                    3 => format!("slides {v}wards and to the {h}"),
                    4 => format!("drifts {v}wards and to the {h}"),
                    5 => format!("travels {h} and {v}"),
                    _ => format!("heads towards the {top} {h} corner"),
                })
            } else if uy != 0.0 {
                // "rolls" with a vertical direction: the generator rolls only sideways.
                match rotor.next("vertical", 4) {
                    0 if rolls => novel(format!("rolls {v}ward")),
                    0 => (format!("moves {v}ward"), false),
                    1 => (format!("slides towards the {top}"), false),
                    2 if rolls => novel(format!("rolls {v}wards")),
                    2 => (format!("drifts {v}wards"), false),
                    _ => (format!("glides {v}"), false),
                }
            } else {
                let phrase = match rotor.next("horizontal", 4) {
                    0 => format!("slides to the {h}"),
                    1 => format!("moves {h}wards"),
                    2 => format!("drifts towards the {h}"),
                    _ => format!("glides {h}"),
                };
                (phrase, false)
            }
        }
    }
}

fn side_word(side: Side) -> &'static str {
    match side {
        Side::Left => "left",
        Side::Right => "right",
    }
}

/// Where the background goes and how it is said.
enum Background {
    /// Before the objects, as its own clause or sentence.
    Lead(String),
    /// After the objects.
    Trail(String),
}

/// Background phrasings, and whether the caption generator never writes them.
const BACKGROUND_VARIANTS: [bool; 9] = [true, false, true, true, false, true, true, true, false];

fn background_phrase(b: Colour, variant: usize) -> Background {
    let c = b.name();
    let a = article(c);
    match variant {
        0 => Background::Trail(format!(" against {a} {c} background")),
        1 => Background::Trail(format!(" on {a} {c} background")),
        2 => Background::Lead(format!("The background is {c}. ")),
        3 => Background::Trail(format!(" over {a} {c} backdrop")),
        4 => Background::Trail(format!(" on {c}")),
        5 => Background::Trail(format!(" with {a} {c} backdrop")),
        6 => Background::Lead(format!("{} backdrop: ", capitalised(c))),
        7 => Background::Trail(format!(" against {c}")),
        _ => Background::Lead(format!("On {a} {c} background, ")),
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Words between two objects' clauses, and whether the caption generator never writes them.
const JOINS: [(&str, bool); 4] = [
    (" while ", false),
    (". ", true),
    (", while ", true),
    (" and ", false),
];

/// One prompt for the objects on the background.
fn compose(objects: &[Mention], background: Colour, rotor: &mut Rotor) -> String {
    let mut novel = false;
    let mut clauses = vec![];
    for m in objects {
        let (verb, new) = motion_phrase(m.spec.motion, m.spec.shape, rotor);
        novel |= new;
        clauses.push(format!("{} {verb}", noun_phrase(m, rotor)));
    }
    let mut body = clauses[0].clone();
    for c in &clauses[1..] {
        let (join, new) = JOINS[rotor.next("join", JOINS.len())];
        novel |= new;
        body.push_str(join);
        body.push_str(&if join.ends_with(". ") {
            capitalised(c)
        } else {
            c.clone()
        });
    }
    // Every prompt gets at least one phrase the generator never writes: when nothing else is
    // new, the background is said in a new way.
    let mut variant = rotor.next("background", BACKGROUND_VARIANTS.len());
    while !novel && !BACKGROUND_VARIANTS[variant] {
        variant = (variant + 1) % BACKGROUND_VARIANTS.len();
    }
    let mut text = match background_phrase(background, variant) {
        Background::Lead(lead) if lead.ends_with(". ") => lead + &capitalised(&body),
        Background::Lead(lead) => lead + &body,
        Background::Trail(trail) => body + &trail,
    };
    match rotor.next("ending", 3) {
        0 => text = capitalised(&text),
        1 => text = capitalised(&text) + ".",
        _ => {}
    }
    text
}

/// An object for a prompt, as the enumeration picks it.
fn mention(colour: Colour, shape: Shape, motion: Motion, size: Size, say_size: bool) -> Mention {
    Mention {
        spec: ObjectSpec {
            colour,
            shape,
            size,
            motion,
        },
        say_size,
    }
}

/// A background colour that no object has, picked by `k`.
fn background_for(objects: &[Mention], k: usize) -> Colour {
    (0..Colour::ALL.len())
        .map(|j| Colour::ALL[(k + j) % Colour::ALL.len()])
        .find(|c| objects.iter().all(|m| m.spec.colour != *c))
        .expect("11 colours outnumber 2 objects")
}

/// A trained (not held-out) partner for the held-out object `i` of the enumeration, of another
/// colour, shape and size.
fn partner(held: &Mention, i: usize) -> Mention {
    let n = Colour::ALL.len();
    let c = colour_index(held.spec.colour);
    let colour = (4 + i..)
        .map(|k| Colour::ALL[(c + k) % n])
        .find(|&x| x != held.spec.colour)
        .expect("another colour");
    let shape = Shape::ALL[(shape_index(held.spec.shape) + 1 + i) % Shape::ALL.len()];
    let m = motion_index(held.spec.motion);
    let motion = (3 + 5 * (i / 3)..)
        .map(|k| MOTION_KINDS[(m + k) % MOTION_KINDS.len()])
        .find(|&x| !is_combination_held_out(colour, shape, x))
        .expect("at most 2 of 12 motions are held out for a colour and shape");
    let size = match held.spec.size {
        Size::Small => Size::Large,
        Size::Large => Size::Small,
    };
    mention(colour, shape, motion, size, i % 4 != 2)
}

/// The held-out prompts: one per held-out combination (alone, or every third with a trained
/// partner), then 16 prompts with two held-out objects. Deterministic: the same
/// list on every machine, with no random numbers involved.
pub fn heldout_prompts() -> Vec<String> {
    let held = held_out_combinations();
    let mut rotor = Rotor::default();
    let mut out = vec![];
    for (i, &(colour, shape, motion)) in held.iter().enumerate() {
        let first = mention(colour, shape, motion, Size::ALL[i % 2], i % 5 != 3);
        let mut objects = vec![first];
        if i % 3 == 1 {
            let p = partner(&first, i);
            // Held-out object first or second, alternately.
            if i % 2 == 0 {
                objects.push(p);
            } else {
                objects.insert(0, p);
            }
        }
        let background = background_for(&objects, 5 * i + 2);
        out.push(compose(&objects, background, &mut rotor));
    }
    for k in 0..HELD_OUT_PAIRS {
        let (c1, s1, m1) = held[(3 * k + 1) % held.len()];
        let (c2, s2, m2) = (0..held.len())
            .map(|j| held[(3 * k + 26 + j) % held.len()])
            .find(|h| h.0 != c1)
            .expect("held-out combinations of other colours");
        let objects = [
            mention(c1, s1, m1, Size::ALL[k % 2], k % 4 != 3),
            mention(c2, s2, m2, Size::ALL[(k / 2) % 2], true),
        ];
        let background = background_for(&objects, 3 * k + 8);
        out.push(compose(&objects, background, &mut rotor));
    }
    out
}

/// The text of the prompt file: a header of `#` comments, then [`heldout_prompts`], one a line.
pub fn heldout_prompt_file() -> String {
    let prompts = heldout_prompts();
    let mut text = format!(
        "# zoetrope's held-out prompts ({} prompts, one a line) for `zoetrope eval world`.\n\
         #\n\
         # Each prompt asks for at least one combination of colour, shape and motion that the\n\
         # training sampler (Scene::sample_training) never draws, so no training clip shows it and\n\
         # no training caption names it. The rule (crates/zoetrope-world/src/heldout.rs): number\n\
         # colours, shapes and motion kinds in declaration order; (colour, shape, motion) is held\n\
         # out when colour + 3*shape + motion is a multiple of 8, at any size.\n\
         # Each wording also uses a phrase the caption generator never writes, made only of words\n\
         # that training captions use.\n\
         #\n\
         # Generated by `zoetrope world heldout -o crates/zoetrope-world/data/heldout_prompts.txt`\n\
         # (zoetrope_world::heldout::heldout_prompts); a test keeps this file equal to its output.\n",
        prompts.len()
    );
    for p in prompts {
        text.push_str(&p);
        text.push('\n');
    }
    text
}

/// The committed prompt file `crates/zoetrope-world/data/heldout_prompts.txt`, built into the
/// crate so that `zoetrope eval model` scores the held-out prompts from any directory (a test
/// keeps it equal to [`heldout_prompt_file`]).
pub const HELDOUT_PROMPT_FILE: &str = include_str!("../data/heldout_prompts.txt");

/// The prompts of a prompt file: one a line, blank lines and lines starting with `#` skipped,
/// surrounding spaces trimmed.
pub fn read_prompt_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::caption::{describe, parse};
    use crate::dataset::sample_training_clip;
    use crate::eval::{evaluate_prompt, summarize};
    use crate::render::{render, RenderOptions};
    use crate::scene::{sample_spec, sample_training_spec, Scene};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Training seeds the tests sweep.
    const TRAINING_SEEDS: u64 = 20_000;

    /// The committed prompt file.
    const PROMPT_FILE: &str = HELDOUT_PROMPT_FILE;

    /// Lower-case words and sentence punctuation, split as the caption parser splits text.
    fn tokens(text: &str) -> Vec<String> {
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
                out.push(std::mem::take(&mut word));
            }
            if matches!(ch, ',' | ';' | ':' | '.' | '!' | '?') {
                out.push(ch.to_string());
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    /// The words alone, space-separated: two texts that differ only in case, punctuation or
    /// spacing normalise alike.
    fn normalised(text: &str) -> String {
        tokens(text)
            .into_iter()
            .filter(|t| t.chars().all(char::is_alphanumeric))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Token sequences the caption generator never writes (`*` matches any one token); every
    /// prompt holds one. They follow from `describe`'s phrase lists: "rolls" only goes sideways,
    /// "drops"/"hops" take no "down"/"in place" after them, bounces start "bounces"/"hops"/"falls
    /// and bounces", the background is never "against a … background", "over/with/on a …
    /// backdrop", "against <colour>" or "<colour> backdrop:", and a full stop only ends a caption.
    fn novel_phrases() -> Vec<Vec<String>> {
        let mut out: Vec<String> = [
            "is sitting",
            "is resting",
            "rests in place",
            "is staying",
            "drops down",
            "hops in place",
            "falls and bounces in place",
            "hops up and down",
            "drops and bounces up",
            "drops and bounces to",
            "drops and bounces leftwards",
            "drops and bounces rightwards",
            "drops and bounces towards",
            "toward the upper",
            "toward the lower",
            "towards the upper",
            "towards the lower",
            "to the top left",
            "to the top right",
            "to the bottom left",
            "to the bottom right",
            "rolls up",
            "rolls upward",
            "rolls upwards",
            "rolls down",
            "rolls downward",
            "rolls downwards",
            "upwards and to",
            "downwards and to",
            "left and up",
            "left and down",
            "right and up",
            "right and down",
            "towards the * * corner",
            "against a * background",
            "against an * background",
            "over a * backdrop",
            "over an * backdrop",
            "with a * backdrop",
            "with an * backdrop",
            "background is",
            "backdrop :",
            ". *",
            ", while",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        out.extend(Colour::ALL.iter().map(|c| format!("against {}", c.name())));
        out.iter()
            .map(|p| p.split(' ').map(str::to_string).collect())
            .collect()
    }

    fn contains(haystack: &[String], needle: &[String]) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w.iter().zip(needle).all(|(a, b)| b == "*" || a == b))
    }

    fn object(colour: Colour, shape: Shape, motion: Motion) -> ObjectSpec {
        ObjectSpec {
            colour,
            shape,
            size: Size::Small,
            motion,
        }
    }

    #[test]
    fn the_rule_holds_out_one_in_eight_and_keeps_every_pair_trained() {
        let held = held_out_combinations();
        let all = Colour::ALL.len() * Shape::ALL.len() * MOTION_KINDS.len();
        let share = held.len() as f64 / all as f64;
        assert!((0.10..=0.15).contains(&share), "{} of {all}", held.len());
        assert_eq!(held.len(), 50);
        let trained = |c: Option<Colour>, s: Option<Shape>, m: Option<Motion>| {
            let mut n = 0;
            for cc in Colour::ALL {
                for ss in Shape::ALL {
                    for mm in MOTION_KINDS {
                        let fits = c.is_none_or(|x| x == cc)
                            && s.is_none_or(|x| x == ss)
                            && m.is_none_or(|x| x == mm);
                        n += usize::from(fits && !is_combination_held_out(cc, ss, mm));
                    }
                }
            }
            n
        };
        // Every colour, shape and motion alone, and every pair of them, keeps trained partners.
        for c in Colour::ALL {
            assert!(trained(Some(c), None, None) >= 30, "{c:?}");
            for s in Shape::ALL {
                assert!(trained(Some(c), Some(s), None) >= 10, "{c:?} {s:?}");
            }
            for m in MOTION_KINDS {
                assert!(trained(Some(c), None, Some(m)) >= 2, "{c:?} {m:?}");
            }
        }
        for s in Shape::ALL {
            assert!(trained(None, Some(s), None) >= 100, "{s:?}");
            for m in MOTION_KINDS {
                assert!(trained(None, Some(s), Some(m)) >= 9, "{s:?} {m:?}");
            }
        }
        for m in MOTION_KINDS {
            assert!(trained(None, None, Some(m)) >= 28, "{m:?}");
        }
        // Every motion kind is held out somewhere, so the prompts can test each.
        for m in MOTION_KINDS {
            assert!(held.iter().any(|h| h.2 == m), "{m:?}");
        }
        // Size does not matter; a scene is held out when any object is.
        let (c, s, m) = held[0];
        let mut o = object(c, s, m);
        assert!(is_held_out(&o));
        o.size = Size::Large;
        assert!(is_held_out(&o));
        let free = object(Colour::Red, Shape::Circle, Motion::Fall);
        assert!(!is_held_out(&free));
        let mut spec = SceneSpec {
            background: Colour::Black,
            objects: vec![free],
        };
        assert!(!spec_is_held_out(&spec));
        spec.objects.push(o);
        assert!(spec_is_held_out(&spec));
        // The rule as documented, on two examples: red (0) circle (0) still (0) is held out,
        // blue (2) triangle (2) slide left (5) too: 2 + 6 + 5 = 13, not a multiple of 8.
        assert!(is_combination_held_out(
            Colour::Red,
            Shape::Circle,
            Motion::Still
        ));
        assert!(!is_combination_held_out(
            Colour::Blue,
            Shape::Triangle,
            Motion::Slide(Direction::Left)
        ));
    }

    #[test]
    fn training_never_shows_a_held_out_combination_but_shows_every_other() {
        let mut seen = HashSet::new();
        let mut differs = 0;
        for seed in 0..TRAINING_SEEDS {
            let (scene, caption) = sample_training_clip(seed);
            assert!(!spec_is_held_out(&scene.spec), "seed {seed}: {caption}");
            scene.validate().unwrap();
            assert_eq!(Scene::from_spec(&scene.spec, seed).unwrap(), scene);
            assert_eq!(scene, Scene::sample_training(seed));
            // Where the unfiltered sample has nothing held out, the two samplers agree.
            let plain = Scene::sample(seed);
            if spec_is_held_out(&plain.spec) {
                differs += 1;
            } else {
                assert_eq!(plain, scene, "seed {seed}");
            }
            for o in &scene.spec.objects {
                seen.insert((o.colour, o.shape, o.motion));
            }
        }
        // About 1 − (7/8)^n of scenes with n objects hold something out.
        let share = differs as f64 / TRAINING_SEEDS as f64;
        assert!((0.15..0.30).contains(&share), "{share}");
        let allowed = Colour::ALL.len() * Shape::ALL.len() * MOTION_KINDS.len()
            - held_out_combinations().len();
        assert_eq!(seen.len(), allowed);
    }

    #[test]
    fn training_keeps_the_sampling_mix() {
        // Object counts [1, 2, 3] and motion kinds [still, slide, fall, bounce] in plain and
        // training samples: rejection redraws single objects, never scenes, and holds out about
        // the same share of every motion, so both mixes stay as they were.
        let mix = |sample: fn(&mut ChaCha8Rng) -> SceneSpec| {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let (mut counts, mut kinds) = ([0.0f64; 3], [0.0f64; 4]);
            for _ in 0..TRAINING_SEEDS {
                let spec = sample(&mut rng);
                spec.validate().unwrap();
                counts[spec.objects.len() - 1] += 1.0;
                for o in &spec.objects {
                    kinds[match o.motion {
                        Motion::Still => 0,
                        Motion::Slide(_) => 1,
                        Motion::Fall => 2,
                        Motion::Bounce(_) => 3,
                    }] += 1.0;
                }
            }
            (counts, kinds)
        };
        let (plain_counts, plain_kinds) = mix(sample_spec);
        let (counts, kinds) = mix(sample_training_spec);
        for (p, t) in plain_counts.iter().zip(&counts) {
            assert!((p - t).abs() < 0.05 * p, "{plain_counts:?} {counts:?}");
        }
        for (p, t) in plain_kinds.iter().zip(&kinds) {
            assert!((p - t).abs() < 0.08 * p, "{plain_kinds:?} {kinds:?}");
        }
    }

    #[test]
    fn the_prompt_file_is_the_generated_list() {
        assert_eq!(
            PROMPT_FILE,
            heldout_prompt_file(),
            "regenerate it: cargo run -p zoetrope-cli -- world heldout -o \
             crates/zoetrope-world/data/heldout_prompts.txt"
        );
        let prompts = read_prompt_list(PROMPT_FILE);
        assert_eq!(prompts, heldout_prompts());
        assert!(prompts.len() >= 60, "{}", prompts.len());
        assert_eq!(heldout_prompts(), prompts, "deterministic");
    }

    #[test]
    fn prompts_parse_resolve_and_are_held_out() {
        let prompts = heldout_prompts();
        let mut counts = [0usize; 3];
        let mut motions = HashSet::new();
        let mut backgrounds = HashSet::new();
        let mut shapes = HashSet::new();
        for (i, p) in prompts.iter().enumerate() {
            let q = parse(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert!(q.background.is_some(), "{p:?}");
            assert!(q.objects.iter().all(|o| o.motion.is_some()), "{p:?}");
            counts[q.objects.len()] += 1;
            for seed in [i as u64, 1000 + i as u64] {
                let spec = q.resolve(seed).unwrap();
                assert!(q.matches(&spec), "{p:?}");
                assert!(spec_is_held_out(&spec), "{p:?} resolves to {spec:?}");
                Scene::from_spec(&spec, seed).unwrap();
                for o in &spec.objects {
                    motions.insert(o.motion);
                    shapes.insert((o.shape, o.size));
                }
                backgrounds.insert(spec.background);
            }
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1] >= 20 && counts[2] >= 20, "{counts:?}");
        assert_eq!(motions.len(), MOTION_KINDS.len());
        assert_eq!(backgrounds.len(), Colour::ALL.len());
        assert_eq!(shapes.len(), 6);
        // Every held-out combination is asked for.
        let asked: HashSet<(Colour, Shape, Motion)> = prompts
            .iter()
            .flat_map(|p| parse(p).unwrap().objects)
            .map(|o| (o.colour, o.shape, o.motion.unwrap()))
            .collect();
        assert!(held_out_combinations().iter().all(|h| asked.contains(h)));
        // Most prompts say every size too (a quarter of the training captions' objects have
        // none).
        let complete = prompts
            .iter()
            .filter(|p| parse(p).unwrap().is_complete())
            .count();
        assert!(complete * 3 >= prompts.len() * 2, "{complete}");
        let distinct: HashSet<String> = prompts.iter().map(|p| normalised(p)).collect();
        assert_eq!(distinct.len(), prompts.len());
    }

    #[test]
    fn prompts_are_no_training_caption_and_use_only_training_words() {
        let prompts = heldout_prompts();
        let novel = novel_phrases();
        let mut captions = HashSet::new();
        let mut words = HashSet::new();
        for seed in 0..TRAINING_SEEDS {
            let caption = sample_training_clip(seed).1;
            let t = tokens(&caption);
            for n in &novel {
                assert!(!contains(&t, n), "{caption:?} contains {n:?}");
            }
            words.extend(t);
            captions.insert(normalised(&caption));
        }
        // Nor does describe write them for any spec, held out or not.
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        for _ in 0..TRAINING_SEEDS {
            let spec = sample_spec(&mut rng);
            let t = tokens(&describe(&spec, &mut rng));
            for n in &novel {
                assert!(!contains(&t, n), "{t:?} contains {n:?}");
            }
        }
        for p in &prompts {
            assert!(!captions.contains(&normalised(p)), "{p:?}");
            let t = tokens(p);
            assert!(novel.iter().any(|n| contains(&t, n)), "{p:?}");
            let unknown: Vec<&String> = t.iter().filter(|w| !words.contains(*w)).collect();
            assert!(unknown.is_empty(), "{p:?}: {unknown:?}");
        }
    }

    #[test]
    fn ground_truth_of_each_prompt_scores_high() {
        let opts = RenderOptions {
            width: 64,
            height: 64,
            frames: 17,
            fps: 8.0,
        };
        let mut reports = vec![];
        for (i, p) in heldout_prompts().iter().enumerate() {
            let seed = i as u64;
            let spec = parse(p).unwrap().resolve(seed).unwrap();
            let video = render(&Scene::from_spec(&spec, seed).unwrap(), &opts).unwrap();
            let report = evaluate_prompt(&video, p).unwrap();
            if report.total < 0.9 {
                eprintln!("{spec:?}\n{}", report.table());
            }
            reports.push(report);
        }
        let summary = summarize(&reports);
        eprintln!("{}", summary.table());
        assert!(summary.mean_total >= 0.9, "{}", summary.table());
    }
}
