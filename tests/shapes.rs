//! The built-in shapes data: reproducible by seed, every image distinct, labels drawn where
//! they say, and held-out caption templates never used in training.

use tessera::data::shapes::{
    caption_alphabet, fill, held_out_captions, original_example, train_caption, RenderOpts,
    ShapeLabel, ShapesDataset, COLOURS, COLOUR_RGB, HELD_OUT_TEMPLATES, SHAPES, TRAIN_TEMPLATES,
};
use tessera::data::{tokenizer, CharTokenizer};
use tessera::random::Rng;
use tessera::Device;

#[test]
fn same_seed_same_images_other_seed_other_images() {
    let opts = RenderOpts::new(32);
    let a = ShapesDataset::generate(12, &opts, 5, Device::Cpu).unwrap();
    let b = ShapesDataset::generate(12, &opts, 5, Device::Cpu).unwrap();
    let c = ShapesDataset::generate(12, &opts, 6, Device::Cpu).unwrap();
    assert_eq!(a.images.dims(), &[12, 3, 32, 32]);
    assert_eq!(a.labels, b.labels);
    let (va, vb, vc) = (
        a.images.to_vec::<f32>().unwrap(),
        b.images.to_vec::<f32>().unwrap(),
        c.images.to_vec::<f32>().unwrap(),
    );
    assert_eq!(va, vb);
    assert_ne!(va, vc);
    assert!(va.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn no_two_images_are_identical_even_with_the_same_label() {
    let opts = RenderOpts::new(32);
    let d = ShapesDataset::every_combination(2, &opts, 1, Device::Cpu).unwrap();
    assert_eq!(d.len(), 2 * SHAPES.len() * COLOURS.len());
    let v = d.images.to_vec::<f32>().unwrap();
    let per = 3 * 32 * 32;
    let imgs: Vec<&[f32]> = v.chunks(per).collect();
    for i in 0..imgs.len() {
        for j in i + 1..imgs.len() {
            assert_ne!(imgs[i], imgs[j], "images {i} and {j} are identical");
        }
    }
}

#[test]
fn the_shape_has_its_colour_and_white_around_it() {
    // Canonical drawing (no jitter): the centre pixel is the colour, the corner is white.
    let opts = RenderOpts {
        size: 64,
        jitter: false,
        antialias: false,
    };
    for (colour, rgb) in COLOUR_RGB.iter().enumerate() {
        let label = ShapeLabel {
            shape: 1,
            colour,
            size: 2,
            place: 4,
        };
        let d = ShapesDataset::from_labels(&[label], &opts, 0, Device::Cpu).unwrap();
        let v = d.images.to_vec::<f32>().unwrap();
        let px = |c: usize, y: usize, x: usize| v[c * 64 * 64 + y * 64 + x];
        for (c, &value) in rgb.iter().enumerate() {
            assert!((px(c, 32, 32) - value).abs() < 1e-6);
            assert_eq!(px(c, 0, 0), 1.0);
        }
    }
}

#[test]
fn held_out_templates_never_appear_in_training_captions() {
    let mut rng = Rng::new(3);
    let opts = RenderOpts::new(32);
    let d = ShapesDataset::generate(400, &opts, 2, Device::Cpu).unwrap();
    let train: std::collections::HashSet<String> = d
        .labels
        .iter()
        .map(|l| train_caption(l, &mut rng))
        .collect();
    for l in &d.labels {
        for held in held_out_captions(l) {
            assert!(
                !train.contains(&held),
                "held-out caption {held:?} is in training"
            );
        }
    }
    // And no template is in both lists.
    for t in HELD_OUT_TEMPLATES {
        assert!(!TRAIN_TEMPLATES.contains(&t));
    }
}

#[test]
fn the_captioner_learns_only_the_plain_caption_templates() {
    use tessera::data::shapes::{captioner_caption, fill, CAPTION_TEMPLATES};
    let mut rng = Rng::new(5);
    let l = ShapeLabel {
        shape: 1,
        colour: 2,
        size: 0,
        place: 3,
    };
    let plain: Vec<String> = TRAIN_TEMPLATES[..CAPTION_TEMPLATES]
        .iter()
        .map(|t| fill(t, &l))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let c = captioner_caption(&l, &mut rng);
        assert!(plain.contains(&c), "{c:?}");
        seen.insert(c);
    }
    assert_eq!(seen.len(), plain.len());
}

#[test]
fn the_caption_tokenizer_knows_every_prompt_and_marks_unknowns() {
    let tok = CharTokenizer::from_text(&caption_alphabet());
    let example = original_example(Device::Cpu).unwrap();
    for (prompt, _) in &example.prompts {
        assert!(!tok.encode(prompt).contains(&tokenizer::UNK), "{prompt}");
    }
    let ids = tok.encode("a red square!");
    assert_eq!(*ids.last().unwrap(), tokenizer::UNK);
    assert_ne!(*ids.last().unwrap(), tokenizer::PAD);
}

#[test]
fn the_original_example_has_three_64px_images_and_seven_prompts() {
    let e = original_example(Device::Cpu).unwrap();
    assert_eq!(e.images.images.dims(), &[3, 3, 64, 64]);
    assert_eq!(e.prompts.len(), 7);
    let names: Vec<String> = e.images.labels.iter().map(|l| fill("{c} {s}", l)).collect();
    assert_eq!(names, ["red square", "blue square", "green circle"]);
}

/// Whether two templates differ in exactly one word at one position (same length).
fn one_word_swapped(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    a.len() == b.len() && a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1
}

#[test]
fn no_held_out_template_is_a_training_template_with_one_word_swapped() {
    // A held-out phrasing that is a trained one with one word replaced ("the red thing is a
    // square" vs "the red one is a square") would measure memory, not understanding.
    assert!(one_word_swapped(
        "the {c} one is a {s}",
        "the {c} thing is a {s}"
    ));
    for held in HELD_OUT_TEMPLATES {
        for train in TRAIN_TEMPLATES {
            assert!(
                !one_word_swapped(held, train),
                "held-out {held:?} is training {train:?} with one word swapped"
            );
        }
    }
}
