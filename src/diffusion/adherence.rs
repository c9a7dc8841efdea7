//! Does a picture show what its prompt asked for? Prompts come from the *held-out* caption
//! templates (never seen in training) for every shape x colour; the generated pictures are
//! classified by the shapes ResNet-18 (trained on real pictures, `train::shapes_resnet`), and
//! the fraction with both the shape and the colour right is the prompt adherence.
//!
//! Beside it, the Frechet distance between the classifier's features of the generated
//! pictures and of real pictures with the same labels, and the same distance between two
//! independent real sets (the floor that finite samples give).

use super::frechet::frechet_distance;
use super::text_to_image::{SampleOpts, TextToImage};
use crate::data::shapes::{
    fill, random_label, RenderOpts, ShapeLabel, ShapesDataset, COLOURS, HELD_OUT_TEMPLATES, SHAPES,
};
use crate::models::resnet::ResNet18;
use crate::nn::Module;
use crate::random::Rng;
use crate::train::shapes_resnet::extract_features;
use crate::{Error, Result, Tensor};

#[derive(Clone, Debug)]
pub struct AdherenceReport {
    pub prompts: usize,
    pub images: usize,
    pub shape_right: f64,
    pub colour_right: f64,
    /// Shape and colour both right: the prompt adherence.
    pub both_right: f64,
    /// Generated vs real features.
    pub frechet: f64,
    /// Real vs real (two independently drawn sets with the same labels).
    pub frechet_real: f64,
}

/// Every held-out template x shape x colour, with size and place drawn by `rng`.
pub fn held_out_prompts(rng: &mut Rng) -> Vec<(String, ShapeLabel)> {
    let mut out = Vec::new();
    for t in HELD_OUT_TEMPLATES {
        for shape in 0..SHAPES.len() {
            for colour in 0..COLOURS.len() {
                let label = ShapeLabel {
                    shape,
                    colour,
                    ..random_label(rng)
                };
                out.push((fill(t, &label), label));
            }
        }
    }
    out
}

/// Predicted (shape, colour) of each picture `[N, 3, S, S]` in [0, 1].
pub(crate) fn classify(classifier: &ResNet18, images: &Tensor) -> Result<Vec<(usize, usize)>> {
    let logits = crate::no_grad(|| classifier.forward(images))?;
    let s = logits
        .narrow(1, 0, SHAPES.len())?
        .argmax(1)?
        .to_vec::<i64>()?;
    let c = logits
        .narrow(1, SHAPES.len(), COLOURS.len())?
        .argmax(1)?
        .to_vec::<i64>()?;
    Ok(s.into_iter()
        .zip(c)
        .map(|(s, c)| (s as usize, c as usize))
        .collect())
}

/// `n` of `prompts`, evenly spread (all of them when `n` is at least their number), so a
/// subset still covers every template, shape and colour in turn.
fn spread<T: Clone>(prompts: Vec<T>, n: usize) -> Vec<T> {
    let len = prompts.len();
    if n >= len {
        return prompts;
    }
    (0..n).map(|i| prompts[i * len / n].clone()).collect()
}

/// Generates `per_prompt` pictures for each held-out prompt (`prompts_per_batch` prompts at a
/// time; `max_prompts` of the 150, evenly spread, when given) and scores them.
/// `classifier_size` is the image side the classifier was trained on. `on_batch(done, total)`
/// reports progress in prompts.
#[allow(clippy::too_many_arguments)]
pub fn prompt_adherence(
    model: &TextToImage,
    classifier: &ResNet18,
    classifier_size: usize,
    per_prompt: usize,
    prompts_per_batch: usize,
    max_prompts: Option<usize>,
    opts: &SampleOpts,
    seed: u64,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<AdherenceReport> {
    let size = model.config.image_size;
    if classifier_size != size {
        return Err(Error::msg(format!(
            "prompt adherence: the classifier reads {classifier_size}x{classifier_size} pictures, the model makes {size}x{size}"
        )));
    }
    if per_prompt == 0 || prompts_per_batch == 0 {
        return Err(Error::msg("prompt adherence: counts must be positive"));
    }
    classifier.eval();
    if max_prompts == Some(0) {
        return Err(Error::msg("prompt adherence: max_prompts must be positive"));
    }
    let prompts = spread(
        held_out_prompts(&mut Rng::new(seed)),
        max_prompts.unwrap_or(usize::MAX),
    );
    let (mut shape_ok, mut colour_ok, mut both_ok) = (0usize, 0usize, 0usize);
    let mut gen_features = Vec::new();
    let mut labels = Vec::new();
    for (b, chunk) in prompts.chunks(prompts_per_batch).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let batch_opts = SampleOpts {
            seed: opts.seed.wrapping_add(b as u64),
            ..*opts
        };
        let images = model.sample(&texts, per_prompt, &batch_opts, || {})?;
        let predicted = classify(classifier, &images)?;
        for (i, (s, c)) in predicted.into_iter().enumerate() {
            let want = chunk[i / per_prompt].1;
            shape_ok += (s == want.shape) as usize;
            colour_ok += (c == want.colour) as usize;
            both_ok += (s == want.shape && c == want.colour) as usize;
            labels.push(want);
        }
        gen_features.extend(extract_features(classifier, &images, 64)?.to_vec_f64()?);
        on_batch(
            (b * prompts_per_batch + chunk.len()).min(prompts.len()),
            prompts.len(),
        );
    }
    let n = labels.len();
    let real = |s: u64| -> Result<Vec<f64>> {
        let data = ShapesDataset::from_labels(&labels, &RenderOpts::new(size), s, model.device())?;
        extract_features(classifier, &data.images, 64)?.to_vec_f64()
    };
    let (real_a, real_b) = (real(seed ^ 0xA5A5)?, real(seed ^ 0x5A5A)?);
    let d = crate::models::resnet::FEATURE_DIM;
    Ok(AdherenceReport {
        prompts: prompts.len(),
        images: n,
        shape_right: shape_ok as f64 / n as f64,
        colour_right: colour_ok as f64 / n as f64,
        both_right: both_ok as f64 / n as f64,
        frechet: frechet_distance(&gen_features, n, &real_a, n, d)?,
        frechet_real: frechet_distance(&real_b, n, &real_a, n, d)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_subset_is_evenly_spaced_and_covers_every_shape_and_colour() {
        let all: Vec<usize> = (0..150).collect();
        assert_eq!(
            spread(all.clone(), 10),
            (0..10).map(|i| i * 15).collect::<Vec<_>>()
        );
        assert_eq!(spread(all.clone(), 150), all);
        assert_eq!(spread(all.clone(), 1000), all);
        // 30 of the held-out prompts: every shape and every colour at least once.
        let some = spread(held_out_prompts(&mut Rng::new(0)), 30);
        for s in 0..SHAPES.len() {
            assert!(some.iter().any(|(_, l)| l.shape == s), "shape {s} missing");
        }
        for c in 0..COLOURS.len() {
            assert!(
                some.iter().any(|(_, l)| l.colour == c),
                "colour {c} missing"
            );
        }
    }
}
