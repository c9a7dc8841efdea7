//! Trains ResNet-18 on the built-in shapes to name each picture's shape and colour, then
//! freezes it: the project's default image feature extractor (when no converted torchvision
//! weights are given).
//!
//! `fc` has 11 outputs: logits 0..5 for the shape, 5..11 for the colour; the loss is the sum
//! of the two cross-entropies. Every step draws a fresh batch of jittered pictures (seeded by
//! `(seed, step)`), so the network never sees the same image twice and cannot overfit.
//! The features it learns cluster by shape x colour, which retrieval relies on.

use crate::data::shapes::{RenderOpts, ShapeLabel, ShapesDataset, COLOURS, SHAPES};
use crate::models::resnet::ResNet18;
use crate::nn::Module;
use crate::ops::{cross_entropy, CrossEntropyOpts};
use crate::optim::{AdamW, AdamWConfig, LrSchedule, Optimizer, WarmupCosine};
use crate::{Device, Error, Result, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Logits of `fc`: the shape's, then the colour's.
pub const NUM_OUTPUTS: usize = SHAPES.len() + COLOURS.len();

#[derive(Clone, Debug)]
pub struct ResNetTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Image side in pixels.
    pub image_size: usize,
    pub small_input: bool,
    pub checkpoint: Option<PathBuf>,
    pub progress: bool,
}

impl Default for ResNetTrainConfig {
    fn default() -> Self {
        ResNetTrainConfig {
            steps: 300,
            batch_size: 16,
            lr: 1.5e-3,
            seed: 0,
            image_size: 32,
            small_input: false,
            checkpoint: None,
            progress: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ResNetReport {
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    /// Shape and colour both right, on fresh pictures, in eval mode.
    pub accuracy: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The shape and colour targets of a batch, `[N]` each.
fn targets(labels: &[ShapeLabel], device: Device) -> Result<(Tensor, Tensor)> {
    let n = labels.len();
    Ok((
        Tensor::from_vec(
            labels.iter().map(|l| l.shape as i64).collect::<Vec<_>>(),
            n,
            device,
        )?,
        Tensor::from_vec(
            labels.iter().map(|l| l.colour as i64).collect::<Vec<_>>(),
            n,
            device,
        )?,
    ))
}

/// Sum of the shape and colour cross-entropies of `logits` `[N, 11]`.
pub fn shape_colour_loss(logits: &Tensor, labels: &[ShapeLabel]) -> Result<Tensor> {
    let (shape, colour) = targets(labels, logits.device())?;
    let opts = CrossEntropyOpts::default();
    let ls = cross_entropy(&logits.narrow(1, 0, SHAPES.len())?, &shape, opts)?;
    let lc = cross_entropy(
        &logits.narrow(1, SHAPES.len(), COLOURS.len())?,
        &colour,
        opts,
    )?;
    ls.add(&lc)
}

/// Fraction of `data` whose predicted shape and colour are both right (eval mode, no graph).
pub fn accuracy(model: &ResNet18, data: &ShapesDataset, batch: usize) -> Result<f64> {
    model.eval();
    let mut right = 0;
    for start in (0..data.len()).step_by(batch.max(1)) {
        let n = batch.min(data.len() - start);
        let logits = crate::no_grad(|| model.forward(&data.images.narrow(0, start, n)?))?;
        let s = logits
            .narrow(1, 0, SHAPES.len())?
            .argmax(1)?
            .to_vec::<i64>()?;
        let c = logits
            .narrow(1, SHAPES.len(), COLOURS.len())?
            .argmax(1)?
            .to_vec::<i64>()?;
        for (i, l) in data.labels[start..start + n].iter().enumerate() {
            right += (s[i] as usize == l.shape && c[i] as usize == l.colour) as usize;
        }
    }
    Ok(right as f64 / data.len().max(1) as f64)
}

pub fn train_shapes_resnet(model: &ResNet18, cfg: &ResNetTrainConfig) -> Result<ResNetReport> {
    if model.config.num_classes != NUM_OUTPUTS {
        return Err(Error::msg(format!(
            "train_shapes_resnet: fc has {} outputs, the shapes heads need {NUM_OUTPUTS}",
            model.config.num_classes
        )));
    }
    let device = model.fc.weight.device();
    let params = model.named_parameters();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let schedule = WarmupCosine::new(cfg.lr, cfg.lr / 20.0, (cfg.steps / 10).max(1), cfg.steps)?;
    let opts = RenderOpts::new(cfg.image_size);
    model.train();
    let pb = crate::train::progress::bar(cfg.steps, "resnet-18", cfg.progress);
    let t0 = Instant::now();
    let mut trace = crate::train::loss_trace::LossTrace::new("resnet");
    for step in 0..cfg.steps {
        schedule.apply(&mut opt, step);
        let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(step);
        let batch = ShapesDataset::generate(cfg.batch_size, &opts, seed, device)?;
        let loss = shape_colour_loss(&model.forward(&batch.images)?, &batch.labels)?;
        let lv = loss.item()?;
        trace.record(step, lv)?;
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
        pb.set_message(format!("loss {:.3}", trace.smoothed()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let test = ShapesDataset::generate(120, &opts, cfg.seed ^ 0x7E57, device)?;
    let acc = accuracy(model, &test, 40)?;
    model.freeze()?;
    if let Some(path) = &cfg.checkpoint {
        super::classifier::save_classifier(model, &opt, cfg.steps, cfg.image_size, "shapes", path)?;
    }
    Ok(ResNetReport {
        steps: cfg.steps,
        first_loss: trace.first(),
        final_loss: trace.smoothed(),
        accuracy: acc,
        seconds,
        images_per_second: (cfg.steps as usize * cfg.batch_size) as f64 / seconds.max(1e-9),
    })
}

/// Loads a ResNet-18 saved by [`train_shapes_resnet`], frozen and in eval mode, with the
/// image size it was trained on; a classifier of another dataset is refused
/// ([`super::classifier::load_judge`]).
pub fn load_resnet(path: &Path, device: Device) -> Result<(ResNet18, usize)> {
    let (model, info) = super::classifier::load_judge(path, "shapes", device)?;
    Ok((model, info.image_size))
}

/// The frozen model's 512-d features of `images` `[N, C, H, W]`, in batches, without a graph.
pub fn extract_features(model: &ResNet18, images: &Tensor, batch: usize) -> Result<Tensor> {
    model.eval();
    let n = images.dims()[0];
    let mut parts = Vec::new();
    for start in (0..n).step_by(batch.max(1)) {
        let len = batch.min(n - start);
        parts.push(crate::no_grad(|| {
            model.features(&images.narrow(0, start, len)?)
        })?);
    }
    if parts.is_empty() {
        return Tensor::zeros(
            (0, crate::models::resnet::FEATURE_DIM),
            crate::DType::F32,
            images.device(),
        );
    }
    Tensor::cat(&parts, 0)
}
