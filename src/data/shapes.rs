//! The built-in image data: procedural, seeded pictures of one coloured shape on white, with
//! captions. No download; every image is a pure function of (seed, index), so a dataset is
//! reproducible and cheap to regenerate at any size (32, 64 or 224 pixels).
//!
//! Each picture has four factors: a shape (square, circle, triangle, cross, diamond), a colour
//! (red, green, blue, yellow, purple, orange), a size (small, medium, large) and a place (left,
//! right, top, bottom, middle). Small random jitter of position, size, rotation and colour
//! makes every image distinct. Edges are anti-aliased by 4x4 supersampling unless turned off.
//!
//! Captions come from templates in many word orders. [`TRAIN_TEMPLATES`] are used for
//! training; [`HELD_OUT_TEMPLATES`] never appear in training text and measure whether a model
//! understands the words rather than the sentences it saw.

use crate::random::Rng;
use crate::{Device, Result, Tensor};

pub use super::text::{COLOURS, PLACES, SHAPES, SIZES};

/// RGB of each colour in [`COLOURS`] order, in [0, 1].
pub const COLOUR_RGB: [[f32; 3]; 6] = [
    [0.86, 0.10, 0.10], // red
    [0.10, 0.68, 0.16], // green
    [0.12, 0.24, 0.90], // blue
    [0.95, 0.85, 0.08], // yellow
    [0.55, 0.16, 0.70], // purple
    [0.98, 0.52, 0.05], // orange
];

/// Radius (half-width) of each size in [`SIZES`] order, as a fraction of the image side.
const SIZE_RADIUS: [f64; 3] = [0.19, 0.25, 0.31];
/// Centre of each place in [`PLACES`] order, as fractions of the image side.
const PLACE_CENTRE: [(f64, f64); 5] = [
    (0.36, 0.5),
    (0.64, 0.5),
    (0.5, 0.36),
    (0.5, 0.64),
    (0.5, 0.5),
];

/// What one picture shows: indices into [`SHAPES`], [`COLOURS`], [`SIZES`], [`PLACES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeLabel {
    pub shape: usize,
    pub colour: usize,
    pub size: usize,
    pub place: usize,
}

impl ShapeLabel {
    /// The joint shape x colour class, `shape * 6 + colour` (30 classes).
    pub fn class(&self) -> usize {
        self.shape * COLOURS.len() + self.colour
    }
    pub fn shape_name(&self) -> &'static str {
        SHAPES[self.shape]
    }
    pub fn colour_name(&self) -> &'static str {
        COLOURS[self.colour]
    }
}

/// How to draw: image side in pixels, jitter on or off, anti-aliasing on or off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderOpts {
    pub size: usize,
    /// Random offsets of position (±4% of the side), radius (±10%), rotation (±12°) and
    /// colour (±0.05 per channel). Off draws the canonical picture of a label.
    pub jitter: bool,
    pub antialias: bool,
}

impl RenderOpts {
    pub fn new(size: usize) -> Self {
        RenderOpts {
            size,
            jitter: true,
            antialias: true,
        }
    }
}

/// Whether the point `(dx, dy)` (relative to the centre, already rotated, in units of the
/// radius) lies inside the shape.
fn inside(shape: usize, dx: f64, dy: f64) -> bool {
    match SHAPES[shape] {
        "square" => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        "circle" => dx * dx + dy * dy <= 1.0,
        "triangle" => {
            // Apex up at (0, -1), base at y = 0.75 from x = -1 to 1.
            dy <= 0.75 && dy >= -1.0 + 1.75 * dx.abs()
        }
        "cross" => {
            let arm = 0.33;
            (dx.abs() <= arm && dy.abs() <= 1.0) || (dy.abs() <= arm && dx.abs() <= 1.0)
        }
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        other => unreachable!("no geometry for shape {other}"),
    }
}

/// Draws one picture as `[3, H, W]` floats in [0, 1] (channel-major). `rng` supplies the
/// jitter when `opts.jitter` is on.
pub fn render(label: &ShapeLabel, opts: &RenderOpts, rng: &mut Rng) -> Vec<f32> {
    let n = opts.size;
    let mut j = |scale: f64| {
        if opts.jitter {
            (rng.uniform() * 2.0 - 1.0) * scale
        } else {
            0.0
        }
    };
    let (px, py) = PLACE_CENTRE[label.place];
    let (cx, cy) = (px + j(0.04), py + j(0.04));
    let radius = SIZE_RADIUS[label.size] * (1.0 + j(0.10));
    let angle = j(12f64.to_radians());
    let mut rgb = COLOUR_RGB[label.colour];
    for c in rgb.iter_mut() {
        *c = (*c + j(0.05) as f32).clamp(0.0, 1.0);
    }
    let (sin, cos) = angle.sin_cos();
    let sub = if opts.antialias { 4 } else { 1 };
    let mut out = vec![1f32; 3 * n * n];
    for y in 0..n {
        for x in 0..n {
            let mut hits = 0;
            for sy in 0..sub {
                for sx in 0..sub {
                    let u = (x as f64 + (sx as f64 + 0.5) / sub as f64) / n as f64 - cx;
                    let v = (y as f64 + (sy as f64 + 0.5) / sub as f64) / n as f64 - cy;
                    let (dx, dy) = ((cos * u + sin * v) / radius, (-sin * u + cos * v) / radius);
                    hits += inside(label.shape, dx, dy) as usize;
                }
            }
            let cover = hits as f32 / (sub * sub) as f32;
            for (c, &value) in rgb.iter().enumerate() {
                out[c * n * n + y * n + x] = 1.0 - cover + cover * value;
            }
        }
    }
    out
}

/// `count` pictures with labels, images `[N, 3, S, S]` in [0, 1].
pub struct ShapesDataset {
    pub images: Tensor,
    pub labels: Vec<ShapeLabel>,
    pub image_size: usize,
}

impl ShapesDataset {
    /// Random labels (uniform over all factors) and jittered pictures, a pure function of
    /// `seed`: the same seed gives the same images, bit for bit.
    pub fn generate(count: usize, opts: &RenderOpts, seed: u64, device: Device) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let labels: Vec<ShapeLabel> = (0..count).map(|_| random_label(&mut rng)).collect();
        Self::from_labels(&labels, opts, seed, device)
    }

    /// Every shape x colour combination `repeats` times (sizes and places drawn at random): a
    /// balanced gallery for retrieval.
    pub fn every_combination(
        repeats: usize,
        opts: &RenderOpts,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed ^ 0xA11C0);
        let mut labels = Vec::new();
        for _ in 0..repeats {
            for shape in 0..SHAPES.len() {
                for colour in 0..COLOURS.len() {
                    labels.push(ShapeLabel {
                        shape,
                        colour,
                        size: rng.below(SIZES.len()),
                        place: rng.below(PLACES.len()),
                    });
                }
            }
        }
        Self::from_labels(&labels, opts, seed, device)
    }

    /// Draws the given labels; image `i`'s jitter comes from its own generator `(seed, i)`.
    pub fn from_labels(
        labels: &[ShapeLabel],
        opts: &RenderOpts,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        let s = opts.size;
        let mut data = Vec::with_capacity(labels.len() * 3 * s * s);
        for (i, label) in labels.iter().enumerate() {
            let mut rng = Rng::new(image_seed(seed, i));
            data.extend(render(label, opts, &mut rng));
        }
        Ok(ShapesDataset {
            images: Tensor::from_vec(data, (labels.len(), 3, s, s), device)?,
            labels: labels.to_vec(),
            image_size: s,
        })
    }

    /// Picture `i` as `[3, S, S]`.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        let s = self.image_size;
        self.images.narrow(0, i, 1)?.reshape((3, s, s))
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

fn image_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i as u64)
        .rotate_left(17)
}

pub fn random_label(rng: &mut Rng) -> ShapeLabel {
    ShapeLabel {
        shape: rng.below(SHAPES.len()),
        colour: rng.below(COLOURS.len()),
        size: rng.below(SIZES.len()),
        place: rng.below(PLACES.len()),
    }
}

/// A caption template: `{s}` shape, `{c}` colour, `{z}` size, `{p}` place, `{a}` the article
/// ("a"/"an") for the word that follows it.
pub type Template = &'static str;

/// Templates seen in training.
///
/// Many word orders, filler words and head nouns ("shape", "one", "picture", "thing") so that
/// a new sentence made of known words is not a new kind of sentence. None of them is a
/// held-out template (a test checks it).
pub const TRAIN_TEMPLATES: [Template; 27] = [
    "{a} {c} {s}",
    "the {s} is {c}",
    "{a} {z} {c} {s} {p}",
    "{c} shape, {s}",
    "make a {s} that is {c}",
    "show a {z} {s}, coloured {c}, {p}",
    "draw {a} {c} {s}",
    "a picture of {a} {c} {s}",
    "{c} {s}",
    "there is {a} {c} {s} {p}",
    "a {z} {s} in {c}",
    "one {c} {s} on white",
    "{s} in {c}",
    "{a} {c} coloured {s}",
    "the shape is a {s} and it is {c}",
    "it is {c}, a {s}",
    // Prompt-only phrasings from here on (see [`CAPTION_TEMPLATES`]).
    "please draw the {c} {s}",
    "get me {a} {c} {s}",
    "the {s} one is {c}",
    "i need the {z} {c} {s}",
    "you draw {a} {c} {s} {p}",
    "{c}, {s}",
    "{s} that is {c}",
    "we want the {c} {s}",
    "{a} {z} one, {c} {s}",
    "it is the {c} {s} shape {p}",
    "make me {a} {s} in {c}",
];

/// How many of [`TRAIN_TEMPLATES`] (the first ones) the captioner learns to write: plain
/// descriptions. The rest are prompt phrasings that only the text-to-feature model reads;
/// teaching the captioner all of them spreads its greedy choice over too many sentence
/// starts and costs caption accuracy.
pub const CAPTION_TEMPLATES: usize = 16;

/// Templates kept out of training, for evaluation only.
pub const HELD_OUT_TEMPLATES: [Template; 5] = [
    "{a} {c} {s} shape",
    "show me the {c} {s}",
    "i want {a} {z} {c} {s}",
    "{s}, {c}",
    "the {c} one is a {s}",
];

/// Fills a template with a label's words, choosing "a" or "an" by the next word.
pub fn fill(template: &str, label: &ShapeLabel) -> String {
    let words = template
        .replace("{s}", SHAPES[label.shape])
        .replace("{c}", COLOURS[label.colour])
        .replace("{z}", SIZES[label.size])
        .replace("{p}", PLACES[label.place]);
    let mut out = String::with_capacity(words.len());
    let mut rest = words.as_str();
    while let Some(at) = rest.find("{a}") {
        out.push_str(&rest[..at]);
        rest = &rest[at + 3..];
        let next = rest.trim_start().chars().next().unwrap_or(' ');
        out.push_str(if "aeiou".contains(next) { "an" } else { "a" });
    }
    out.push_str(rest);
    out
}

/// A training caption for `label`, from a template chosen by `rng`.
pub fn train_caption(label: &ShapeLabel, rng: &mut Rng) -> String {
    fill(TRAIN_TEMPLATES[rng.below(TRAIN_TEMPLATES.len())], label)
}

/// A caption for the captioner to learn, from the first [`CAPTION_TEMPLATES`] templates.
pub fn captioner_caption(label: &ShapeLabel, rng: &mut Rng) -> String {
    fill(TRAIN_TEMPLATES[rng.below(CAPTION_TEMPLATES)], label)
}

/// Every caption the held-out templates make for `label`.
pub fn held_out_captions(label: &ShapeLabel) -> Vec<String> {
    HELD_OUT_TEMPLATES.iter().map(|t| fill(t, label)).collect()
}

/// Every caption any template can produce, one per line: the text a word tokenizer's
/// vocabulary is built from (training and held-out templates, as for [`caption_alphabet`]).
pub fn caption_lines() -> String {
    let mut text = String::new();
    for t in TRAIN_TEMPLATES.iter().chain(HELD_OUT_TEMPLATES.iter()) {
        for shape in 0..SHAPES.len() {
            for colour in 0..COLOURS.len() {
                for size in 0..SIZES.len() {
                    for place in 0..PLACES.len() {
                        let label = ShapeLabel {
                            shape,
                            colour,
                            size,
                            place,
                        };
                        text.push_str(&fill(t, &label));
                        text.push('\n');
                    }
                }
            }
        }
    }
    text
}

/// All characters any template can produce: the vocabulary of the caption tokenizer. Built
/// from training *and* held-out templates over every factor, so evaluation prompts tokenize
/// without `<UNK>` (their words are known; only their sentences are new).
pub fn caption_alphabet() -> String {
    caption_lines().replace('\n', "")
}

/// The (shape, colour) a text names, when it names exactly one shape and one colour (whole
/// words): how captions and prompts are checked against a picture's label.
pub fn shape_and_colour_named(text: &str) -> Option<(usize, usize)> {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let named = |vocab: &[&str]| -> Option<usize> {
        let mut hits = (0..vocab.len()).filter(|&i| words.contains(&vocab[i]));
        match (hits.next(), hits.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
    };
    Some((named(&SHAPES)?, named(&COLOURS)?))
}

/// The project's original example: three 64x64 pictures on white (a red square, a blue
/// square, a green circle) and seven prompts, each naming which picture it means.
pub struct OriginalExample {
    pub images: ShapesDataset,
    pub prompts: Vec<(&'static str, usize)>,
}

pub fn original_example(device: Device) -> Result<OriginalExample> {
    let medium_middle = |shape: &str, colour: &str| ShapeLabel {
        shape: SHAPES.iter().position(|s| *s == shape).unwrap_or(0),
        colour: COLOURS.iter().position(|c| *c == colour).unwrap_or(0),
        size: 2,
        place: 4,
    };
    let labels = [
        medium_middle("square", "red"),
        medium_middle("square", "blue"),
        medium_middle("circle", "green"),
    ];
    let opts = RenderOpts {
        size: 64,
        jitter: false,
        antialias: true,
    };
    Ok(OriginalExample {
        images: ShapesDataset::from_labels(&labels, &opts, 0, device)?,
        prompts: vec![
            ("a red square", 0),
            ("a blue square shape", 1),
            ("a green circle", 2),
            ("the square is red", 0),
            ("show me the blue square", 1),
            ("green circle on white", 2),
            ("a red shape, square", 0),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn articles_follow_the_next_word() {
        let l = ShapeLabel {
            shape: 0,
            colour: 5,
            size: 0,
            place: 0,
        };
        assert_eq!(fill("{a} {c} {s}", &l), "an orange square");
        let l = ShapeLabel { colour: 0, ..l };
        assert_eq!(fill("{a} {c} {s}", &l), "a red square");
    }
}
