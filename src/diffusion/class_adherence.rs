//! Prompt adherence and the Frechet distance for datasets captioned by class (Fashion-MNIST:
//! "An image of a sneaker"), the counterpart of the shapes' `adherence.rs`, sharing its
//! drawing, judging and distances.
//!
//! The prompts are the class captions themselves. Unlike the shapes, whose five held-out
//! templates never appear in training, Fashion-MNIST has one caption per class and the model
//! trains on exactly those ten, so there is no held-out phrasing to test: this measures
//! whether the pictures show the class, not whether the model generalises over wording.
//!
//! Each prompt gets `per_prompt` pictures, read by a ResNet-18 trained on the real pictures
//! (`train::classifier`: padded 28 -> 32 as the diffusion data is); the adherence is the
//! fraction read as the prompted class, beside a confusion matrix (what each class was taken
//! for). The Frechet distance compares the judge's features of the generated pictures with
//! those of real *test* pictures of the same classes (one per generated picture) from one half
//! of the test set (every other picture of each class); the floor beside it is the same number
//! of pictures from the other half against the first.

use super::adherence::{check_judge, draw_and_judge, frechet_beside_real, spread, PictureSource};
use super::text_to_image::SampleOpts;
use crate::data::mnist::CaptionedImages;
use crate::models::resnet::ResNet18;
use crate::random::Rng;
use crate::train::classifier::predict_classes;
use crate::train::diffusion_data::padded_images;
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Debug)]
pub struct ClassAdherenceReport {
    pub prompts: usize,
    pub images: usize,
    /// Fraction of the pictures the judge reads as the prompted class.
    pub adherence: f64,
    /// The caption of each class (the prompt that asks for it).
    pub captions: Vec<String>,
    /// `confusion[w][s]`: pictures prompted with class `w` that the judge read as class `s`.
    pub confusion: Vec<Vec<usize>>,
    /// Generated vs real held-out features.
    pub frechet: f64,
    /// Real vs real: the two halves of the test set, as many pictures of each class.
    pub frechet_real: f64,
}

impl ClassAdherenceReport {
    /// Pictures prompted with class `c`.
    pub fn class_images(&self, c: usize) -> usize {
        self.confusion[c].iter().sum()
    }
    /// The adherence of the pictures prompted with class `c` (None when none was).
    pub fn class_adherence(&self, c: usize) -> Option<f64> {
        let n = self.class_images(c);
        (n > 0).then(|| self.confusion[c][c] as f64 / n as f64)
    }
    /// The class most often read instead of `c`, with its share of `c`'s pictures (None when
    /// every picture of `c` was read right, or none was drawn).
    pub fn most_confused_with(&self, c: usize) -> Option<(usize, f64)> {
        let n = self.class_images(c);
        let (s, &k) = self.confusion[c]
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != c)
            .max_by_key(|&(s, &k)| (k, std::cmp::Reverse(s)))?;
        (k > 0).then(|| (s, k as f64 / n as f64))
    }
}

/// Generates `per_prompt` pictures for each class caption of `held_out` (`max_prompts` of
/// them, evenly spread, when given; `prompts_per_batch` at a time), reads them with `judge`
/// (trained on `judge_size`-pixel pictures of the same dataset) and compares their features
/// with real pictures of `held_out` (the test split). `on_batch(done, total)` reports progress
/// in prompts.
#[allow(clippy::too_many_arguments)]
pub fn class_prompt_adherence(
    source: &(impl PictureSource + ?Sized),
    judge: &ResNet18,
    judge_size: usize,
    held_out: &CaptionedImages,
    per_prompt: usize,
    prompts_per_batch: usize,
    max_prompts: Option<usize>,
    opts: &SampleOpts,
    seed: u64,
    on_batch: impl FnMut(usize, usize),
) -> Result<ClassAdherenceReport> {
    let what = held_out.dataset.as_str();
    check_judge("prompt adherence", source, judge, judge_size)?;
    let classes = held_out.num_classes();
    if judge.config.num_classes != classes {
        return Err(Error::msg(format!(
            "prompt adherence: the classifier has {} classes, {what} has {classes}",
            judge.config.num_classes
        )));
    }
    if max_prompts == Some(0) {
        return Err(Error::msg("prompt adherence: max_prompts must be positive"));
    }
    let prompts: Vec<(String, usize)> = spread(
        held_out.class_captions.iter().cloned().zip(0..).collect(),
        max_prompts.unwrap_or(usize::MAX),
    );
    let judged = draw_and_judge(
        source,
        judge,
        &prompts,
        per_prompt,
        prompts_per_batch,
        opts,
        predict_classes,
        on_batch,
    )?;
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (&w, &s) in judged.wanted.iter().zip(&judged.seen) {
        confusion[w][s] += 1;
    }
    let n = judged.wanted.len();
    let right: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let device = judge.fc.weight.device();
    let real_a = real_pictures(
        held_out,
        &judged.wanted,
        0,
        seed ^ 0xA5A5,
        judge_size,
        device,
    )?;
    let real_b = real_pictures(
        held_out,
        &judged.wanted,
        1,
        seed ^ 0x5A5A,
        judge_size,
        device,
    )?;
    let (frechet, frechet_real) =
        frechet_beside_real(judge, &judged.features, n, &real_a, &real_b)?;
    Ok(ClassAdherenceReport {
        prompts: prompts.len(),
        images: n,
        adherence: right as f64 / n as f64,
        captions: held_out.class_captions.clone(),
        confusion,
        frechet,
        frechet_real,
    })
}

/// One real picture of `data` per entry of `classes`, of that class, padded to `size`: drawn
/// without repeats from `half` of the set (0 or 1: every other picture of each class, so the
/// two halves never share a picture) in an order set by `seed`.
pub fn real_pictures(
    data: &CaptionedImages,
    classes: &[usize],
    half: usize,
    seed: u64,
    size: usize,
    device: Device,
) -> Result<Tensor> {
    // Each class's pictures in file order, every other one to each half: the halves are
    // balanced per class whatever the order of the file.
    let mut seen = vec![0usize; data.num_classes()];
    let mut pools = vec![Vec::new(); data.num_classes()];
    for (i, &label) in data.labels.iter().enumerate() {
        if seen[label] % 2 == half {
            pools[label].push(i);
        }
        seen[label] += 1;
    }
    let mut rng = Rng::new(seed);
    for pool in &mut pools {
        rng.shuffle(pool);
    }
    let mut taken = vec![0usize; pools.len()];
    let mut picked = Vec::with_capacity(classes.len());
    for &c in classes {
        let Some(&i) = pools.get(c).and_then(|p| p.get(taken[c])) else {
            let asked = classes.iter().filter(|&&k| k == c).count();
            let has = pools.get(c).map_or(0, Vec::len);
            return Err(Error::msg(format!(
                "prompt adherence: {asked} real {} pictures of class {c} asked for, half {half} of the held-out set has {has}; ask for fewer pictures per prompt",
                data.dataset.as_str()
            )));
        };
        taken[c] += 1;
        picked.push(i);
    }
    padded_images(data, &picked, size, device)
}
