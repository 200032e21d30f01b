//! What a caption describes: the scene specification, its vocabulary and the colour palette.
//!
//! A [`SceneSpec`] is the part of a scene that words can say (background, and for each object its
//! colour, shape, size and motion). A seed adds what words leave open (positions, speeds), giving
//! a full scene that can be simulated and rendered.

use serde::{Deserialize, Serialize};

/// Named colours. Each has one canonical RGB value used both to render and to segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    Cyan,
    Pink,
    White,
    Gray,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 11] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Orange,
        Colour::Purple,
        Colour::Cyan,
        Colour::Pink,
        Colour::White,
        Colour::Gray,
        Colour::Black,
    ];

    /// The canonical RGB value. The palette is chosen so that every pair is far apart in RGB,
    /// which keeps segmentation by nearest colour robust to H.264 compression.
    pub const fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 190, 50],
            Colour::Blue => [40, 70, 230],
            Colour::Yellow => [245, 225, 40],
            Colour::Orange => [250, 140, 20],
            Colour::Purple => [140, 50, 190],
            Colour::Cyan => [40, 220, 230],
            Colour::Pink => [250, 130, 200],
            Colour::White => [245, 245, 245],
            Colour::Gray => [128, 128, 128],
            Colour::Black => [10, 10, 10],
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::Cyan => "cyan",
            Colour::Pink => "pink",
            Colour::White => "white",
            Colour::Gray => "gray",
            Colour::Black => "black",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub const fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// Object radius (centre to edge, or half the side of a square) as a fraction of frame height.
    pub const fn radius(self) -> f64 {
        match self {
            Size::Small => 0.08,
            Size::Large => 0.15,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// One of eight compass directions in screen terms (up is towards the top of the frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Right,
    UpRight,
    Up,
    UpLeft,
    Left,
    DownLeft,
    Down,
    DownRight,
}

impl Direction {
    pub const ALL: [Direction; 8] = [
        Direction::Right,
        Direction::UpRight,
        Direction::Up,
        Direction::UpLeft,
        Direction::Left,
        Direction::DownLeft,
        Direction::Down,
        Direction::DownRight,
    ];

    /// Unit vector in image coordinates (x right, y down).
    pub fn unit(self) -> (f64, f64) {
        let d = std::f64::consts::FRAC_1_SQRT_2;
        match self {
            Direction::Right => (1.0, 0.0),
            Direction::UpRight => (d, -d),
            Direction::Up => (0.0, -1.0),
            Direction::UpLeft => (-d, -d),
            Direction::Left => (-1.0, 0.0),
            Direction::DownLeft => (-d, d),
            Direction::Down => (0.0, 1.0),
            Direction::DownRight => (d, d),
        }
    }

    /// The canonical phrase, e.g. "up and to the right" is `up-right`.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Right => "right",
            Direction::UpRight => "up-right",
            Direction::Up => "up",
            Direction::UpLeft => "up-left",
            Direction::Left => "left",
            Direction::DownLeft => "down-left",
            Direction::Down => "down",
            Direction::DownRight => "down-right",
        }
    }
}

/// Left or right, for motions that only have a horizontal choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub const fn sign(self) -> f64 {
        match self {
            Side::Left => -1.0,
            Side::Right => 1.0,
        }
    }
}

/// How an object moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "direction", rename_all = "lowercase")]
pub enum Motion {
    /// Stays where it is.
    Still,
    /// Constant velocity in a direction, reflecting off the walls it reaches.
    Slide(Direction),
    /// Dropped from rest near the top: falls under gravity and bounces on the floor.
    Fall,
    /// Thrown sideways: gravity pulls it down, it bounces on the floor while drifting to one side.
    Bounce(Side),
}

/// What words say about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectSpec {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    pub motion: Motion,
}

/// Fewest and most objects in a scene.
pub const MIN_OBJECTS: usize = 1;
pub const MAX_OBJECTS: usize = 3;

/// What words say about a scene: a plain background and 1–3 objects, each of a colour distinct
/// from the background and from each other (so every object can be told apart by colour).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SceneSpec {
    pub background: Colour,
    pub objects: Vec<ObjectSpec>,
}

impl SceneSpec {
    /// Checks the rules above; the message says which rule a spec breaks.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_OBJECTS..=MAX_OBJECTS).contains(&self.objects.len()) {
            return Err(format!(
                "a scene has {MIN_OBJECTS} to {MAX_OBJECTS} objects, this one has {}",
                self.objects.len()
            ));
        }
        for (i, o) in self.objects.iter().enumerate() {
            if o.colour == self.background {
                return Err(format!(
                    "the {} {} would be invisible on a {} background",
                    o.colour.name(),
                    o.shape.name(),
                    self.background.name()
                ));
            }
            if self.objects[..i].iter().any(|p| p.colour == o.colour) {
                return Err(format!(
                    "two objects are {}; each object in a scene needs its own colour",
                    o.colour.name()
                ));
            }
        }
        Ok(())
    }
}
