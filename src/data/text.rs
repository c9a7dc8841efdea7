//! Built-in text for the char-level language model, so the demo and tests need no download:
//! the opening chapter of *Alice's Adventures in Wonderland* (Lewis Carroll, 1865, public
//! domain) followed by captions of simple coloured shapes, the vocabulary the text-to-image
//! models of this project are trained on.

use crate::random::Rng;

/// Chapter I of *Alice's Adventures in Wonderland* (abridged to its first scenes).
pub const ALICE_CHAPTER_1: &str = include_str!("corpus/alice_ch1.txt");

pub const SHAPES: [&str; 5] = ["square", "circle", "triangle", "cross", "diamond"];
pub const COLOURS: [&str; 6] = ["red", "green", "blue", "yellow", "purple", "orange"];
pub const SIZES: [&str; 3] = ["small", "medium", "large"];
pub const PLACES: [&str; 5] = [
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the middle",
];

/// `count` shape captions from a handful of templates, one per line, seeded.
pub fn shape_captions(count: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    for _ in 0..count {
        let s = SHAPES[rng.below(SHAPES.len())];
        let c = COLOURS[rng.below(COLOURS.len())];
        let z = SIZES[rng.below(SIZES.len())];
        let p = PLACES[rng.below(PLACES.len())];
        let line = match rng.below(6) {
            0 => format!("a {c} {s}"),
            1 => format!("the {s} is {c}"),
            2 => format!("a {z} {c} {s} {p}"),
            3 => format!("{c} shape, {s}"),
            4 => format!("make a {s} that is {c}"),
            _ => format!("show a {z} {s}, coloured {c}, {p}"),
        };
        out.push_str(&line);
        out.push_str(".\n");
    }
    out
}

/// The demo's training text: the Alice chapter and 400 shape captions.
pub fn builtin_corpus() -> String {
    format!("{ALICE_CHAPTER_1}\n{}", shape_captions(400, 7))
}

/// Entropy (nats per character) of the text's unigram character distribution: the loss of
/// the best model that ignores context, the bar a language model must get well below.
pub fn unigram_entropy(text: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in text.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
        n += 1;
    }
    counts
        .values()
        .map(|&k| k as f64 / n as f64)
        .map(|p| -p * p.ln())
        .sum()
}
