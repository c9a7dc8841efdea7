//! ResNet-18 as a classifier of labelled pictures (Fashion-MNIST, MNIST): the judge that
//! prompt adherence and the Frechet distance need for a dataset other than the shapes
//! (`diffusion::class_adherence`); `tessera train resnet --dataset fashion-mnist`.
//!
//! It sees the pictures exactly as the diffusion model trains on and draws them: each 28x28
//! picture padded with its black background onto the model's square canvas (32x32) by
//! [`padded_images`], gray (1 channel), in [0, 1]. A generated picture and a real one are then
//! judged alike. Batches are a pure function of `(seed, step)`; `fc` has one logit per class
//! and the loss is their cross-entropy.
//!
//! Every ResNet-18 checkpoint (this one and the shapes one of `train::shapes_resnet`) records
//! the dataset, the image side and the channels it was trained on; [`load_judge`] refuses a
//! checkpoint trained on another dataset, naming the file and both datasets.

use super::diffusion_data::padded_images;
use crate::data::mnist::CaptionedImages;
use crate::io::Checkpoint;
use crate::models::resnet::{ResNet18, ResNetConfig};
use crate::nn::Module;
use crate::ops::{cross_entropy, CrossEntropyOpts};
use crate::optim::{AdamW, AdamWConfig, LrSchedule, Optimizer, WarmupCosine};
use crate::random::Rng;
use crate::{Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ClassifierTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Side of the canvas the pictures are padded onto (the diffusion model's).
    pub image_size: usize,
    /// Test pictures the accuracy is measured on, evenly spread over the test set (None: all).
    pub test_count: Option<usize>,
    pub checkpoint: Option<PathBuf>,
    pub progress: bool,
}

/// The defaults are `tessera train resnet --dataset fashion-mnist`'s: 3000 steps of 32
/// (96,000 pictures, 1.6 epochs) reached test accuracy 0.902 on Fashion-MNIST, 1500 steps
/// 0.893 (docs/PERF.md, session 7).
impl Default for ClassifierTrainConfig {
    fn default() -> Self {
        ClassifierTrainConfig {
            steps: 3000,
            batch_size: 32,
            lr: 2e-3,
            seed: 0,
            image_size: 32,
            test_count: None,
            checkpoint: None,
            progress: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClassifierReport {
    pub steps: u64,
    pub first_loss: f64,
    /// Running mean (0.9 / 0.1) of the training loss at the end.
    pub final_loss: f64,
    /// Fraction of the test pictures whose class is the arg-max logit (eval mode).
    pub test_accuracy: f64,
    pub test_images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// What a classifier checkpoint says about the pictures it was trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeInfo {
    /// `shapes`, `fashion-mnist` or `mnist` (`data::mnist::DatasetName::as_str`).
    pub dataset: String,
    pub image_size: usize,
    pub channels: usize,
}

/// A fresh ResNet-18 for `data`: its channels in, one logit per class out, torchvision's stem
/// (a 32-pixel picture is 8x8 after it, which keeps training to minutes on a CPU).
pub fn classifier_for(data: &CaptionedImages, device: Device) -> Result<ResNet18> {
    ResNet18::new(
        ResNetConfig {
            num_classes: data.num_classes(),
            small_input: false,
            in_channels: data.channels,
        },
        device,
    )
}

/// The arg-max class of each picture `[N, C, S, S]` (no graph; the model's mode is kept).
pub fn predict_classes(model: &ResNet18, images: &Tensor) -> Result<Vec<usize>> {
    let logits = crate::no_grad(|| model.forward(images))?;
    Ok(logits
        .argmax(1)?
        .to_vec::<i64>()?
        .into_iter()
        .map(|c| c as usize)
        .collect())
}

/// Fraction of the pictures at `indices` of `data` (padded to `image_size`) whose predicted
/// class is their label, in eval mode, `batch` at a time.
pub fn class_accuracy(
    model: &ResNet18,
    data: &CaptionedImages,
    indices: &[usize],
    image_size: usize,
    batch: usize,
) -> Result<f64> {
    model.eval();
    let device = model.fc.weight.device();
    let mut right = 0usize;
    for chunk in indices.chunks(batch.max(1)) {
        let images = padded_images(data, chunk, image_size, device)?;
        let seen = predict_classes(model, &images)?;
        right += chunk
            .iter()
            .zip(seen)
            .filter(|&(&i, c)| data.labels[i] == c)
            .count();
    }
    Ok(right as f64 / indices.len().max(1) as f64)
}

/// `n` indices evenly spread over `0..len` (all of them when `n` is at least `len`).
fn spread_indices(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

/// Trains `model` on `train` (random pictures with replacement, batches a pure function of
/// `(seed, step)`), measures it on `test`, freezes it and writes the checkpoint if asked.
pub fn train_image_classifier(
    model: &ResNet18,
    train: &CaptionedImages,
    test: &CaptionedImages,
    cfg: &ClassifierTrainConfig,
) -> Result<ClassifierReport> {
    let what = train.dataset.as_str();
    if model.config.num_classes != train.num_classes() {
        return Err(Error::msg(format!(
            "train_image_classifier: fc has {} outputs, {what} has {} classes",
            model.config.num_classes,
            train.num_classes()
        )));
    }
    if model.config.in_channels != train.channels {
        return Err(Error::msg(format!(
            "train_image_classifier: the model reads {}-channel pictures, {what} has {}",
            model.config.in_channels, train.channels
        )));
    }
    if test.dataset != train.dataset || train.is_empty() || test.is_empty() || cfg.batch_size == 0 {
        return Err(Error::msg(format!(
            "train_image_classifier: need non-empty train and test splits of one dataset and a positive batch ({} train pictures of {what}, {} test pictures of {}, batch {})",
            train.len(),
            test.len(),
            test.dataset.as_str(),
            cfg.batch_size
        )));
    }
    let device = model.fc.weight.device();
    let mut opt = AdamW::new(
        model.named_parameters(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let schedule = WarmupCosine::new(cfg.lr, cfg.lr / 20.0, (cfg.steps / 10).max(1), cfg.steps)?;
    let opts = CrossEntropyOpts::default();
    model.train();
    let pb = super::progress::bar(cfg.steps, &format!("resnet-18 {what}"), cfg.progress);
    let t0 = Instant::now();
    let mut trace = crate::train::loss_trace::LossTrace::new(format!("{what} classifier"));
    for step in 0..cfg.steps {
        schedule.apply(&mut opt, step);
        let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step) ^ 0xC1A5);
        let idx: Vec<usize> = (0..cfg.batch_size)
            .map(|_| rng.below(train.len()))
            .collect();
        let images = padded_images(train, &idx, cfg.image_size, device)?;
        let labels: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
        let targets = Tensor::from_vec(labels, idx.len(), device)?;
        let loss = cross_entropy(&model.forward(&images)?, &targets, opts)?;
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
    let test_idx = spread_indices(test.len(), cfg.test_count.unwrap_or(test.len()));
    let test_accuracy = class_accuracy(model, test, &test_idx, cfg.image_size, 100)?;
    model.freeze()?;
    if let Some(path) = &cfg.checkpoint {
        save_classifier(model, &opt, cfg.steps, cfg.image_size, what, path)?;
    }
    Ok(ClassifierReport {
        steps: cfg.steps,
        first_loss: trace.first(),
        final_loss: trace.smoothed(),
        test_accuracy,
        test_images: test_idx.len(),
        seconds,
        images_per_second: (cfg.steps as usize * cfg.batch_size) as f64 / seconds.max(1e-9),
    })
}

/// Writes the model (with its running statistics), its config and what it was trained on
/// (`dataset`, `image_size`; the channels are in the config) to `path`, atomically.
pub fn save_classifier(
    model: &ResNet18,
    opt: &dyn Optimizer,
    step: u64,
    image_size: usize,
    dataset: &str,
    path: &Path,
) -> Result<()> {
    let mut extra = HashMap::new();
    extra.insert("model".to_string(), "resnet18".to_string());
    extra.insert("config".to_string(), model.config.to_json());
    extra.insert("image_size".to_string(), image_size.to_string());
    extra.insert("dataset".to_string(), dataset.to_string());
    Checkpoint::capture(&model.state_dict(), opt, step, extra).save(path)
}

/// Loads a ResNet-18 checkpoint of any dataset, frozen and in eval mode, with what it was
/// trained on. Checkpoints written before the dataset was recorded are the shapes one's.
pub fn load_classifier(path: &Path, device: Device) -> Result<(ResNet18, JudgeInfo)> {
    let ck = Checkpoint::load_to(path, device)?;
    let get = |k: &str| ck.meta(path, "resnet18", k);
    let config =
        ResNetConfig::from_json(get("config")?).map_err(|e| Error::file(path, e.to_string()))?;
    let image_size: usize = get("image_size")?
        .parse()
        .map_err(|_| Error::file(path, "metadata image_size is not a number"))?;
    let info = JudgeInfo {
        dataset: ck
            .extra
            .get("dataset")
            .cloned()
            .unwrap_or_else(|| "shapes".to_string()),
        image_size,
        channels: config.in_channels,
    };
    let model = ResNet18::new(config, device).map_err(|e| Error::file(path, e.to_string()))?;
    crate::io::load_named(&model.state_dict(), &ck.model, true)
        .map_err(|e| Error::file(path, e.to_string()))?;
    model.freeze()?;
    model.eval();
    Ok((model, info))
}

/// [`load_classifier`], refusing (path + reason) a checkpoint trained on another dataset than
/// `dataset`: its classes mean nothing for these pictures.
pub fn load_judge(path: &Path, dataset: &str, device: Device) -> Result<(ResNet18, JudgeInfo)> {
    let (model, info) = load_classifier(path, device)?;
    if info.dataset != dataset {
        return Err(Error::file(
            path,
            format!(
                "this classifier was trained on {} pictures and cannot judge {dataset} ones; train one with `tessera train resnet --dataset {dataset}`",
                info.dataset
            ),
        ));
    }
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::spread_indices;

    #[test]
    fn test_pictures_are_spread_over_the_whole_split() {
        assert_eq!(spread_indices(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread_indices(3, 7), vec![0, 1, 2]);
        assert!(spread_indices(0, 4).is_empty());
    }
}
