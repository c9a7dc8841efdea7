//! What the diffusion model trains on (`tessera train diffusion --dataset`):
//!
//! - `shapes`: the built-in pictures, RGB, drawn at the model's size, captions from the
//!   training templates ([`super::diffusion::diffusion_batch`]).
//! - `fashion-mnist`: the IDX files, gray (1 channel), each 28x28 picture *padded* with its
//!   black background to the model's side (32: 2 pixels a side). Padding rather than resizing
//!   keeps every pixel as it was (no resampling blur) and lets the unCLIP path crop exactly
//!   the picture CLIP was trained on. Captions: the class captions CLIP uses
//!   ("An image of a sneaker").
//!
//! Batches are pure functions of `(seed, step)`, as for the shapes, so resume is exact.
//! [`PriorPool`] gives the (caption, picture) pairs the unCLIP prior learns from.

use super::diffusion::{assemble_batch, diffusion_batch, DiffusionBatch, DiffusionTrainConfig};
use crate::data::mnist::{load_dataset, CaptionedImages, DatasetName, Split, FASHION_CAPTIONS};
use crate::data::shapes::{
    caption_lines, fill, RenderOpts, ShapesDataset, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES,
};
use crate::random::Rng;
use crate::{Device, Error, Result, Tensor};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone)]
pub enum DiffusionData {
    Shapes,
    FashionMnist {
        train: Arc<CaptionedImages>,
        test: Arc<CaptionedImages>,
    },
}

/// Pictures with the captions that may describe each: what the prior trains and is measured on.
pub struct PriorPool {
    /// `[N, C, S, S]` in [-1, 1], at the decoder's size.
    pub images: Tensor,
    /// The class of each picture (shape x colour for the shapes): retrieval counts a match
    /// when the nearest picture has the caption's class.
    pub classes: Vec<usize>,
    /// Every caption of picture `i` (one is drawn per use).
    pub captions: Vec<Vec<String>>,
}

impl DiffusionData {
    /// `shapes` or `fashion-mnist` (IDX files under `data_dir`, see `data::mnist`).
    pub fn named(name: &str, data_dir: &Path) -> Result<Self> {
        match name {
            "shapes" => Ok(DiffusionData::Shapes),
            "fashion-mnist" => Ok(DiffusionData::FashionMnist {
                train: Arc::new(load_dataset(
                    DatasetName::FashionMnist,
                    data_dir,
                    Split::Train,
                )?),
                test: Arc::new(load_dataset(
                    DatasetName::FashionMnist,
                    data_dir,
                    Split::Test,
                )?),
            }),
            other => Err(Error::msg(format!(
                "unknown diffusion dataset {other:?} (expected shapes or fashion-mnist)"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DiffusionData::Shapes => "shapes",
            DiffusionData::FashionMnist { .. } => "fashion-mnist",
        }
    }

    /// Channels of the pictures (the U-Net's in and out channels).
    pub fn channels(&self) -> usize {
        match self {
            DiffusionData::Shapes => 3,
            DiffusionData::FashionMnist { .. } => 1,
        }
    }

    /// The text a word tokenizer's vocabulary is built from.
    pub fn caption_text(&self) -> String {
        match self {
            DiffusionData::Shapes => caption_lines(),
            DiffusionData::FashionMnist { .. } => FASHION_CAPTIONS.join("\n"),
        }
    }

    /// Prompts for the grid written after training.
    pub fn sample_prompts(&self) -> Vec<String> {
        match self {
            DiffusionData::Shapes => [
                "a red circle",
                "a blue square",
                "a green triangle",
                "a yellow cross",
                "a purple diamond",
                "an orange circle",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            DiffusionData::FashionMnist { .. } => {
                FASHION_CAPTIONS.iter().map(|s| s.to_string()).collect()
            }
        }
    }

    /// The training batch of `step` under `cfg` (seed, batch size, timestep density) for a
    /// model of side `image_size` and `train_steps` noise levels (see [`diffusion_batch`]).
    pub fn batch(
        &self,
        cfg: &DiffusionTrainConfig,
        step: u64,
        image_size: usize,
        train_steps: usize,
        device: Device,
    ) -> Result<DiffusionBatch> {
        let (seed, batch_size, timesteps) = (cfg.seed, cfg.batch_size, cfg.timesteps);
        match self {
            DiffusionData::Shapes => diffusion_batch(
                seed,
                step,
                batch_size,
                image_size,
                train_steps,
                timesteps,
                device,
            ),
            DiffusionData::FashionMnist { train, .. } => {
                let seed = seed.wrapping_mul(1_000_003).wrapping_add(step);
                let mut rng = Rng::new(seed ^ 0xFA5_0001);
                let idx: Vec<usize> = (0..batch_size).map(|_| rng.below(train.len())).collect();
                let captions: Vec<String> = idx
                    .iter()
                    .map(|&i| train.class_captions[train.labels[i]].clone())
                    .collect();
                let images = padded_images(train, &idx, image_size, device)?;
                assemble_batch(
                    seed,
                    &mut rng,
                    images,
                    captions,
                    train_steps,
                    timesteps,
                    device,
                )
            }
        }
    }

    /// `count` (caption, picture) pairs for the prior at the decoder's `image_size`: from the
    /// training data with the training captions, or (`Split::Test`) from held-out pictures
    /// with the held-out caption templates (shapes) or the class captions (Fashion-MNIST,
    /// whose ten captions are all there is).
    pub fn prior_pool(
        &self,
        split: Split,
        count: usize,
        image_size: usize,
        device: Device,
    ) -> Result<PriorPool> {
        match self {
            DiffusionData::Shapes => {
                let (seed, templates): (u64, &[&str]) = match split {
                    Split::Train => (0x0901_0001, &TRAIN_TEMPLATES),
                    Split::Test => (0x0901_0002, &HELD_OUT_TEMPLATES),
                };
                let data =
                    ShapesDataset::generate(count, &RenderOpts::new(image_size), seed, device)?;
                Ok(PriorPool {
                    images: data.images.affine(2.0, -1.0)?,
                    classes: data.labels.iter().map(|l| l.class()).collect(),
                    captions: data
                        .labels
                        .iter()
                        .map(|l| templates.iter().map(|t| fill(t, l)).collect())
                        .collect(),
                })
            }
            DiffusionData::FashionMnist { train, test } => {
                let data = match split {
                    Split::Train => train,
                    Split::Test => test,
                };
                // Evenly spread over the split (the files are not sorted by class).
                let n = count.min(data.len());
                let idx: Vec<usize> = (0..n).map(|i| i * data.len() / n.max(1)).collect();
                Ok(PriorPool {
                    images: padded_images(data, &idx, image_size, device)?.affine(2.0, -1.0)?,
                    classes: idx.iter().map(|&i| data.labels[i]).collect(),
                    captions: idx
                        .iter()
                        .map(|&i| vec![data.class_captions[data.labels[i]].clone()])
                        .collect(),
                })
            }
        }
    }
}

/// The pictures at `indices` in [0, 1], centred on a `size x size` black canvas:
/// `[B, C, size, size]`.
pub fn padded_images(
    data: &CaptionedImages,
    indices: &[usize],
    size: usize,
    device: Device,
) -> Result<Tensor> {
    let (c, h, w) = (data.channels, data.height, data.width);
    if size < h || size < w {
        return Err(Error::msg(format!(
            "{}: {h}x{w} pictures do not fit a {size}x{size} model (pictures are padded, not cut)",
            data.dataset.as_str()
        )));
    }
    let (top, left) = ((size - h) / 2, (size - w) / 2);
    let per = c * h * w;
    let mut out = vec![0f32; indices.len() * c * size * size];
    for (b, &i) in indices.iter().enumerate() {
        let src = &data.pixels[i * per..(i + 1) * per];
        for ch in 0..c {
            for y in 0..h {
                let dst = ((b * c + ch) * size + top + y) * size + left;
                let row = &src[(ch * h + y) * w..(ch * h + y + 1) * w];
                for (d, &p) in out[dst..dst + w].iter_mut().zip(row) {
                    *d = p as f32 * (1.0 / 255.0);
                }
            }
        }
    }
    Tensor::from_vec(out, (indices.len(), c, size, size), device)
}
