//! Does a picture show what its prompt asked for? Prompts come from the *held-out* caption
//! templates (never seen in training) for every shape x colour; the generated pictures are
//! classified by the shapes ResNet-18 (trained on real pictures, `train::shapes_resnet`), and
//! the fraction with both the shape and the colour right is the prompt adherence.
//!
//! Beside it, the Frechet distance between the classifier's features of the generated
//! pictures and of real pictures with the same labels, and the same distance between two
//! independent real sets (the floor that finite samples give).
//!
//! The drawing, judging and distances are shared with the class-captioned datasets
//! (Fashion-MNIST, `class_adherence.rs`) through [`draw_and_judge`] and
//! [`frechet_beside_real`]; what differs is the prompts, how a judge's logits are read and
//! where the real pictures come from. The pictures come from a [`PictureSource`]: the
//! diffusion model, or in tests a stand-in whose pictures are known.

use super::frechet::frechet_distance;
use super::text_to_image::{SampleOpts, TextToImage};
use crate::data::shapes::{
    fill, random_label, RenderOpts, ShapeLabel, ShapesDataset, COLOURS, HELD_OUT_TEMPLATES, SHAPES,
};
use crate::models::resnet::ResNet18;
use crate::models::resnet::FEATURE_DIM;
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

/// Draws pictures for prompts: the diffusion model, or a stand-in whose pictures are known
/// (the tests' real pictures of the prompted class).
pub trait PictureSource {
    /// Side of the square pictures.
    fn image_size(&self) -> usize;
    /// Channels of the pictures (3 for the shapes, 1 for Fashion-MNIST).
    fn channels(&self) -> usize;
    /// `count` pictures per prompt, prompt by prompt: `[P * count, C, S, S]` in [0, 1].
    fn draw(&self, prompts: &[&str], count: usize, opts: &SampleOpts) -> Result<Tensor>;
}

impl PictureSource for TextToImage {
    fn image_size(&self) -> usize {
        self.config.image_size
    }
    fn channels(&self) -> usize {
        self.config.unet.in_channels
    }
    fn draw(&self, prompts: &[&str], count: usize, opts: &SampleOpts) -> Result<Tensor> {
        self.sample(prompts, count, opts, || {})
    }
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
pub(crate) fn spread<T: Clone>(prompts: Vec<T>, n: usize) -> Vec<T> {
    let len = prompts.len();
    if n >= len {
        return prompts;
    }
    (0..n).map(|i| prompts[i * len / n].clone()).collect()
}

/// Every picture drawn for the prompts, as the judge read it.
pub struct Judged<W, S> {
    /// What each picture's prompt asked for, picture by picture (`per_prompt` per prompt).
    pub wanted: Vec<W>,
    /// What the judge saw in each picture.
    pub seen: Vec<S>,
    /// The judge's features of each picture, [`FEATURE_DIM`] per row.
    pub features: Vec<f64>,
}

/// Checks that `judge` (trained on `judge_size`-pixel pictures) can read what `source` draws.
pub(crate) fn check_judge(
    what: &str,
    source: &(impl PictureSource + ?Sized),
    judge: &ResNet18,
    judge_size: usize,
) -> Result<()> {
    let size = source.image_size();
    if judge_size != size {
        return Err(Error::msg(format!(
            "{what}: the classifier reads {judge_size}x{judge_size} pictures, the model makes {size}x{size}"
        )));
    }
    let (judge_c, c) = (judge.config.in_channels, source.channels());
    if judge_c != c {
        return Err(Error::msg(format!(
            "{what}: the classifier reads {judge_c}-channel pictures, the model makes {c}-channel ones"
        )));
    }
    Ok(())
}

/// Draws `per_prompt` pictures for each prompt (`prompts_per_batch` prompts at a time, the
/// sampler seed `opts.seed + batch`), reads each with `read` and keeps the judge's features.
/// `on_batch(done, total)` reports progress in prompts.
#[allow(clippy::too_many_arguments)]
pub fn draw_and_judge<W: Clone, S>(
    source: &(impl PictureSource + ?Sized),
    judge: &ResNet18,
    prompts: &[(String, W)],
    per_prompt: usize,
    prompts_per_batch: usize,
    opts: &SampleOpts,
    read: impl Fn(&ResNet18, &Tensor) -> Result<Vec<S>>,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<Judged<W, S>> {
    if per_prompt == 0 || prompts_per_batch == 0 || prompts.is_empty() {
        return Err(Error::msg(format!(
            "prompt adherence: counts must be positive (per prompt {per_prompt}, prompts per batch {prompts_per_batch}, prompts {})",
            prompts.len()
        )));
    }
    judge.eval();
    let mut judged = Judged {
        wanted: Vec::new(),
        seen: Vec::new(),
        features: Vec::new(),
    };
    for (b, chunk) in prompts.chunks(prompts_per_batch).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let batch_opts = SampleOpts {
            seed: opts.seed.wrapping_add(b as u64),
            ..*opts
        };
        let images = source.draw(&texts, per_prompt, &batch_opts)?;
        let expected = [
            chunk.len() * per_prompt,
            source.channels(),
            source.image_size(),
        ];
        let dims = images.dims();
        if dims.len() != 4 || dims[..3] != expected || dims[3] != expected[2] {
            return Err(Error::shape(
                "prompt adherence",
                format!(
                    "expected {} pictures [N, {}, {s}, {s}] from the model",
                    expected[0],
                    expected[1],
                    s = expected[2]
                ),
                &[images.shape()],
            ));
        }
        judged.seen.extend(read(judge, &images)?);
        for (_, w) in chunk {
            judged
                .wanted
                .extend(std::iter::repeat_n(w.clone(), per_prompt));
        }
        judged
            .features
            .extend(extract_features(judge, &images, 64)?.to_vec_f64()?);
        on_batch(
            (b * prompts_per_batch + chunk.len()).min(prompts.len()),
            prompts.len(),
        );
    }
    Ok(judged)
}

/// The Frechet distances of the generated pictures' `features` (`n` rows) to the judge's
/// features of the real pictures `real_a`, and of `real_b` to `real_a` (the floor that finite
/// sets of real pictures give): `(generated vs real, real vs real)`.
pub fn frechet_beside_real(
    judge: &ResNet18,
    features: &[f64],
    n: usize,
    real_a: &Tensor,
    real_b: &Tensor,
) -> Result<(f64, f64)> {
    let real_a = extract_features(judge, real_a, 64)?.to_vec_f64()?;
    let real_b = extract_features(judge, real_b, 64)?.to_vec_f64()?;
    let (n_a, n_b) = (real_a.len() / FEATURE_DIM, real_b.len() / FEATURE_DIM);
    Ok((
        frechet_distance(features, n, &real_a, n_a, FEATURE_DIM)?,
        frechet_distance(&real_b, n_b, &real_a, n_a, FEATURE_DIM)?,
    ))
}

/// Generates `per_prompt` pictures for each held-out prompt (`prompts_per_batch` prompts at a
/// time; `max_prompts` of the 150, evenly spread, when given) and scores them.
/// `classifier_size` is the image side the classifier was trained on. `on_batch(done, total)`
/// reports progress in prompts.
#[allow(clippy::too_many_arguments)]
pub fn prompt_adherence(
    model: &(impl PictureSource + ?Sized),
    classifier: &ResNet18,
    classifier_size: usize,
    per_prompt: usize,
    prompts_per_batch: usize,
    max_prompts: Option<usize>,
    opts: &SampleOpts,
    seed: u64,
    on_batch: impl FnMut(usize, usize),
) -> Result<AdherenceReport> {
    check_judge("prompt adherence", model, classifier, classifier_size)?;
    if max_prompts == Some(0) {
        return Err(Error::msg("prompt adherence: max_prompts must be positive"));
    }
    let prompts = spread(
        held_out_prompts(&mut Rng::new(seed)),
        max_prompts.unwrap_or(usize::MAX),
    );
    let judged = draw_and_judge(
        model,
        classifier,
        &prompts,
        per_prompt,
        prompts_per_batch,
        opts,
        classify,
        on_batch,
    )?;
    let (mut shape_ok, mut colour_ok, mut both_ok) = (0usize, 0usize, 0usize);
    for (want, &(s, c)) in judged.wanted.iter().zip(&judged.seen) {
        shape_ok += (s == want.shape) as usize;
        colour_ok += (c == want.colour) as usize;
        both_ok += (s == want.shape && c == want.colour) as usize;
    }
    let n = judged.wanted.len();
    let device = classifier.fc.weight.device();
    let real = |s: u64| -> Result<Tensor> {
        let render = RenderOpts::new(classifier_size);
        Ok(ShapesDataset::from_labels(&judged.wanted, &render, s, device)?.images)
    };
    let (frechet, frechet_real) = frechet_beside_real(
        classifier,
        &judged.features,
        n,
        &real(seed ^ 0xA5A5)?,
        &real(seed ^ 0x5A5A)?,
    )?;
    Ok(AdherenceReport {
        prompts: prompts.len(),
        images: n,
        shape_right: shape_ok as f64 / n as f64,
        colour_right: colour_ok as f64 / n as f64,
        both_right: both_ok as f64 / n as f64,
        frechet,
        frechet_real,
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
