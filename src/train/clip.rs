//! CLIP training and evaluation: shuffled epochs of image-caption batches, Adam, a checkpoint
//! after every epoch that resumes exactly, zero-shot classification (accuracy, per-class
//! accuracy, confusion matrix) and text-to-image retrieval.
//!
//! Reproducibility: epoch `e` visits the training set in a permutation drawn from a generator
//! seeded by `(seed, e)`, and a checkpoint records the global step, the weights, Adam's
//! moments and the global generator; so a run killed and resumed from its last checkpoint
//! goes through the same batches and reaches the same weights as one that never stopped.
//!
//! Captions: each image is captioned by its class. By default a batch's distinct captions go
//! through the text encoder once and are gathered per image (`index_select`), which gives the
//! same loss and gradients as encoding every image's caption (the article's way, kept behind
//! `encode_each_caption` for like-for-like timing) at a fraction of the text tower's cost.

use crate::data::mnist::{CaptionedImages, DatasetName, FASHION_CAPTIONS};
use crate::io::png::{grid, Image};
use crate::io::Checkpoint;
use crate::models::clip::{Clip, ClipConfig, ContrastiveTargets, TextBatch};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig, Optimizer};
use crate::random::Rng;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ClipTrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Cosine decay of the learning rate from `lr` to `lr / 20` over the run (the article
    /// keeps it constant).
    pub cosine_decay: bool,
    pub seed: u64,
    pub checkpoint: Option<PathBuf>,
    /// Also checkpoint every this many steps (besides each epoch's end).
    pub checkpoint_every: Option<u64>,
    /// Continue from `checkpoint` when it exists.
    pub resume: bool,
    /// Stop (after checkpointing) once this global step is reached: a slice of a longer run.
    pub stop_at_step: Option<u64>,
    /// Zero-shot accuracy on the evaluation set after every epoch (else only at the end).
    pub eval_every_epoch: bool,
    /// Encode every image's caption, as the article does, instead of each distinct caption once.
    pub encode_each_caption: bool,
    /// Shift each training image by up to this many pixels in each direction (uniformly drawn,
    /// zero-filled): a cheap augmentation that lets a longer run keep improving instead of
    /// memorizing. 0 (the article's way) leaves the images untouched.
    pub max_shift: usize,
    /// Which image-caption pairs of a batch the loss counts as matches (the article:
    /// [`ContrastiveTargets::Diagonal`]).
    pub targets: ContrastiveTargets,
    pub progress: bool,
    /// Free-form strings stored in the checkpoint (dataset name, ...).
    pub extra: HashMap<String, String>,
}

impl Default for ClipTrainConfig {
    fn default() -> Self {
        ClipTrainConfig {
            epochs: 12,
            batch_size: 128,
            lr: 1e-3,
            cosine_decay: false,
            seed: 0,
            checkpoint: None,
            checkpoint_every: None,
            resume: false,
            stop_at_step: None,
            eval_every_epoch: true,
            encode_each_caption: false,
            max_shift: 0,
            targets: ContrastiveTargets::Diagonal,
            progress: true,
            extra: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    pub seconds: f64,
    /// Zero-shot accuracy on the evaluation set after this epoch (when evaluated).
    pub zero_shot_accuracy: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct ClipReport {
    /// Epochs completed (counting those before a resume).
    pub epochs: usize,
    pub start_step: u64,
    pub steps: u64,
    pub per_epoch: Vec<EpochReport>,
    pub zero_shot: ZeroShot,
    /// Training time of this run (evaluation excluded).
    pub seconds: f64,
    pub ms_per_step: f64,
    pub images_per_second: f64,
    pub parameters: usize,
}

/// Zero-shot classification results: `confusion[true][predicted]` counts.
#[derive(Clone, Debug)]
pub struct ZeroShot {
    pub accuracy: f64,
    pub per_class: Vec<f64>,
    pub confusion: Vec<Vec<usize>>,
}

fn epoch_rng(seed: u64, epoch: usize) -> Rng {
    Rng::new(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xC11F_0000 + epoch as u64),
    )
}

/// `lr` decayed along a half cosine to `lr / 20` at `total` steps.
pub fn cosine_lr(lr: f64, step: u64, total: u64) -> f64 {
    let min = lr / 20.0;
    let t = step as f64 / total.max(1) as f64;
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The generator of step `step`'s augmentation: a function of the seed and the global step
/// only, so a resumed run draws the same shifts as one that never stopped.
fn shift_rng(seed: u64, step: u64) -> Rng {
    Rng::new(
        seed.wrapping_mul(0xD1B5_4A32_D192_ED03)
            .wrapping_add(0x5A1F_7000_0000 + step),
    )
}

/// The images at `indices`, each translated by `(dy, dx)` drawn uniformly from
/// `[-max_shift, max_shift]^2`; pixels moved in from outside are 0 (the background).
/// `[B, C, H, W]` f32 in [0, 1] as [`CaptionedImages::images`].
pub fn shifted_images(
    data: &CaptionedImages,
    indices: &[usize],
    max_shift: usize,
    rng: &mut Rng,
    device: Device,
) -> Result<Tensor> {
    let (c, h, w) = (data.channels, data.height, data.width);
    let n = c * h * w;
    let span = 2 * max_shift + 1;
    let mut out = vec![0f32; indices.len() * n];
    for (dst, &i) in out.chunks_mut(n).zip(indices) {
        let dy = rng.below(span) as isize - max_shift as isize;
        let dx = rng.below(span) as isize - max_shift as isize;
        let src = &data.pixels[i * n..(i + 1) * n];
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for x in 0..w {
                    let sx = x as isize - dx;
                    if sx >= 0 && sx < w as isize {
                        dst[(ch * h + y) * w + x] =
                            src[(ch * h + sy as usize) * w + sx as usize] as f32 * (1.0 / 255.0);
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (indices.len(), c, h, w), device)
}

/// The order in which epoch `epoch` visits `n` items.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    epoch_rng(seed, epoch).shuffle(&mut order);
    order
}

/// Captions for the images at `indices`: the text batch and, per image, its row in it.
pub fn caption_batch(
    data: &CaptionedImages,
    indices: &[usize],
    text_len: usize,
    each: bool,
    device: Device,
) -> Result<(TextBatch, Tensor)> {
    let labels: Vec<usize> = indices.iter().map(|&i| data.labels[i]).collect();
    let (rows, pairing): (Vec<usize>, Vec<i64>) = if each {
        (labels.clone(), (0..labels.len() as i64).collect())
    } else {
        let mut distinct = labels.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let pairing = labels
            .iter()
            .map(|l| distinct.binary_search(l).unwrap_or(0) as i64)
            .collect();
        (distinct, pairing)
    };
    let captions: Vec<&str> = rows
        .iter()
        .map(|&c| data.class_captions[c].as_str())
        .collect();
    let text = TextBatch::new(&captions, text_len, device)?;
    let n = pairing.len();
    Ok((text, Tensor::from_vec(pairing, n, device)?))
}

/// One training batch: images `[B, C, H, W]`, the captions that go through the text encoder,
/// and per image its row among them (see [`caption_batch`]).
pub struct ClipBatch {
    pub images: Tensor,
    pub text: TextBatch,
    pub pairing: Tensor,
}

impl ClipBatch {
    /// `images` (already drawn, possibly shifted) with the captions of `data`'s images at
    /// `indices`: every image's caption when `each`, else each distinct one once.
    pub fn captioned(
        images: Tensor,
        data: &CaptionedImages,
        indices: &[usize],
        text_len: usize,
        each: bool,
    ) -> Result<ClipBatch> {
        let (text, pairing) = caption_batch(data, indices, text_len, each, images.device())?;
        Ok(ClipBatch {
            images,
            text,
            pairing,
        })
    }
}

/// The optimizer [`train_clip`] uses: Adam at `lr` (the article's) over all of `model`.
pub fn clip_optimizer(model: &Clip, lr: f64) -> Result<Adam> {
    Adam::new(
        model.named_parameters(),
        AdamConfig {
            lr,
            ..Default::default()
        },
    )
}

/// One training step: the batch's contrastive loss, its gradients, the optimizer's update.
/// Returns the loss, or `None` (and no update) when it is not finite.
pub fn train_step(
    model: &Clip,
    opt: &mut Adam,
    batch: &ClipBatch,
    targets: ContrastiveTargets,
) -> Result<Option<f64>> {
    let loss = model.loss(&batch.images, &batch.text, Some(&batch.pairing), targets)?;
    let lv = loss.item()?;
    if !lv.is_finite() {
        return Ok(None);
    }
    opt.zero_grad();
    loss.backward()?;
    drop(loss);
    opt.step()?;
    Ok(Some(lv))
}

/// `n` random images the shape of Fashion-MNIST's (1x28x28, uniform bytes) with random labels
/// and the article's captions: a stand-in for the dataset where only the step's cost matters
/// (`tessera bench --suite train`).
pub fn synthetic_fashion(n: usize, seed: u64) -> Result<CaptionedImages> {
    let mut rng = Rng::new(seed);
    let pixels = (0..n * 28 * 28).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(FASHION_CAPTIONS.len())).collect();
    let captions = FASHION_CAPTIONS.iter().map(|s| s.to_string()).collect();
    CaptionedImages::new(
        DatasetName::FashionMnist,
        (1, 28, 28),
        pixels,
        labels,
        captions,
    )
}

fn device_of(model: &Clip) -> Device {
    model.temperature.device()
}

/// Embeds `data`'s images in batches without a graph: `[N, E]`.
pub fn embed_images(model: &Clip, data: &CaptionedImages, batch: usize) -> Result<Tensor> {
    let device = device_of(model);
    crate::no_grad(|| {
        let idx: Vec<usize> = (0..data.len()).collect();
        let parts = idx
            .chunks(batch.max(1))
            .map(|c| model.image_encoder.forward(&data.images(c, device)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    })
}

/// Embeds captions without a graph: `[N, E]`.
pub fn embed_texts(model: &Clip, captions: &[&str]) -> Result<Tensor> {
    let text = TextBatch::new(captions, model.config.text_len, device_of(model))?;
    crate::no_grad(|| model.text_encoder.forward(&text))
}

/// Zero-shot classification of `data`: each image gets the class whose caption it matches best.
pub fn zero_shot(model: &Clip, data: &CaptionedImages) -> Result<ZeroShot> {
    let k = data.num_classes();
    let captions: Vec<&str> = data.class_captions.iter().map(|s| s.as_str()).collect();
    let text = embed_texts(model, &captions)?; // [K, E]
    let images = embed_images(model, data, 1000)?; // [N, E]
    let predicted: Vec<i64> = crate::no_grad(|| images.matmul(&text.t()?)?.argmax(1))?.to_vec()?;
    let mut confusion = vec![vec![0usize; k]; k];
    for (&truth, &p) in data.labels.iter().zip(&predicted) {
        confusion[truth][p as usize] += 1;
    }
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| row[c] as f64 / row.iter().sum::<usize>().max(1) as f64)
        .collect();
    Ok(ZeroShot {
        accuracy: correct as f64 / data.len().max(1) as f64,
        per_class,
        confusion,
    })
}

/// The `k` images of `gallery` that best match `prompt`: (index, cosine similarity), best first.
pub fn retrieve(
    model: &Clip,
    gallery: &CaptionedImages,
    prompt: &str,
    k: usize,
) -> Result<Vec<(usize, f64)>> {
    let text = embed_texts(model, &[prompt])?; // [1, E]
    let images = embed_images(model, gallery, 1000)?; // [N, E]
    let scores: Vec<f64> =
        crate::no_grad(|| images.matmul(&text.t()?)?.to_dtype(DType::F64))?.to_vec()?;
    let mut ranked: Vec<(usize, f64)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    Ok(ranked)
}

/// Trains `model` on `train`, evaluating zero-shot accuracy on `eval`.
pub fn train_clip(
    model: &Clip,
    train: &CaptionedImages,
    eval: &CaptionedImages,
    cfg: &ClipTrainConfig,
) -> Result<ClipReport> {
    let device = device_of(model);
    if train.is_empty() || cfg.batch_size == 0 {
        return Err(Error::msg("train_clip: no training images or batch size 0"));
    }
    if cfg.encode_each_caption && cfg.targets == ContrastiveTargets::SameCaption {
        return Err(Error::msg(
            "train_clip: encoding each image's caption applies to the article's diagonal targets; same-caption targets encode each distinct caption once",
        ));
    }
    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let mut opt = clip_optimizer(model, cfg.lr)?;
    let mut extra = cfg.extra.clone();
    extra.insert("model".to_string(), "clip".to_string());
    extra.insert("config".to_string(), model.config.to_json());
    extra.insert("batch_size".to_string(), cfg.batch_size.to_string());
    extra.insert("seed".to_string(), cfg.seed.to_string());

    let mut start = 0;
    if let (true, Some(path)) = (cfg.resume, &cfg.checkpoint) {
        if path.exists() {
            let ck = crate::io::checkpoint::resume(path, &model.state_dict(), &mut opt, true)?;
            start = ck.step;
            if cfg.progress {
                eprintln!("resumed from {} at step {start}", path.display());
            }
        }
    }
    let end = cfg.stop_at_step.unwrap_or(total_steps).min(total_steps);
    let save = |opt: &Adam, step: u64| -> Result<()> {
        if let Some(path) = &cfg.checkpoint {
            Checkpoint::capture(&model.state_dict(), opt, step, extra.clone()).save(path)?;
        }
        Ok(())
    };

    model.train();
    let mut per_epoch = Vec::new();
    let mut train_seconds = 0.0;
    let mut step = start;
    while step < end {
        let epoch = (step / steps_per_epoch) as usize;
        let order = epoch_order(cfg.seed, epoch, n);
        let first = step - epoch as u64 * steps_per_epoch;
        let last = steps_per_epoch.min(end - epoch as u64 * steps_per_epoch);
        let pb = crate::train::progress::bar(
            steps_per_epoch,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
            cfg.progress,
        );
        pb.set_position(first);
        let (t0, mut loss_sum, mut images_seen) = (Instant::now(), 0.0, 0usize);
        for s in first..last {
            if cfg.cosine_decay {
                opt.set_lr(cosine_lr(cfg.lr, step, total_steps));
            }
            let lo = s as usize * cfg.batch_size;
            let idx = &order[lo..(lo + cfg.batch_size).min(n)];
            let images = if cfg.max_shift > 0 {
                let mut rng = shift_rng(cfg.seed, step);
                shifted_images(train, idx, cfg.max_shift, &mut rng, device)?
            } else {
                train.images(idx, device)?
            };
            let batch = ClipBatch::captioned(
                images,
                train,
                idx,
                model.config.text_len,
                cfg.encode_each_caption,
            )?;
            let lv = train_step(model, &mut opt, &batch, cfg.targets)?.ok_or_else(|| {
                Error::msg(format!("training diverged at step {step}: loss not finite"))
            })?;
            step += 1;
            loss_sum += lv;
            images_seen += idx.len();
            if let Some(every) = cfg.checkpoint_every {
                if step % every == 0 && step < end {
                    save(&opt, step)?;
                }
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "loss {:.4} | {:.0} images/s",
                loss_sum / (s + 1 - first) as f64,
                images_seen as f64 / secs
            ));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        train_seconds += seconds;
        save(&opt, step)?;
        let epoch_done = step.is_multiple_of(steps_per_epoch);
        let accuracy = if epoch_done && cfg.eval_every_epoch && step < end {
            Some(zero_shot(model, eval)?.accuracy)
        } else {
            None
        };
        let report = EpochReport {
            epoch: epoch + 1,
            mean_loss: loss_sum / (last - first).max(1) as f64,
            seconds,
            zero_shot_accuracy: accuracy,
        };
        if cfg.progress {
            eprintln!(
                "epoch {} | loss {:.4} | {:.1} s ({:.1} ms/step){}",
                report.epoch,
                report.mean_loss,
                seconds,
                1e3 * seconds / (last - first).max(1) as f64,
                accuracy.map_or(String::new(), |a| format!(" | zero-shot {a:.4}"))
            );
        }
        per_epoch.push(report);
    }
    let zs = zero_shot(model, eval)?;
    if let Some(last) = per_epoch.last_mut() {
        last.zero_shot_accuracy = Some(zs.accuracy);
    }
    let steps_run = end.saturating_sub(start);
    let images_run = (start..end)
        .map(|s| {
            let lo = (s % steps_per_epoch) as usize * cfg.batch_size;
            (lo + cfg.batch_size).min(n) - lo
        })
        .sum::<usize>();
    Ok(ClipReport {
        epochs: (end / steps_per_epoch) as usize,
        start_step: start,
        steps: end,
        per_epoch,
        zero_shot: zs,
        seconds: train_seconds,
        ms_per_step: 1e3 * train_seconds / steps_run.max(1) as f64,
        images_per_second: images_run as f64 / train_seconds.max(1e-9),
        parameters: model.num_parameters(),
    })
}

/// Loads a CLIP checkpoint written by [`train_clip`]: the model and the checkpoint's strings.
pub fn load_clip(path: &Path, device: Device) -> Result<(Clip, HashMap<String, String>)> {
    let ck = Checkpoint::load_to(path, device)?;
    if ck.extra.get("model").map(|s| s.as_str()) != Some("clip") {
        return Err(Error::file(
            path,
            "not a CLIP checkpoint (metadata model != clip)",
        ));
    }
    let config = ClipConfig::from_json(
        ck.extra
            .get("config")
            .ok_or_else(|| Error::file(path, "CLIP checkpoint without its model config"))?,
    )?;
    let model = Clip::new(config, device)?;
    crate::io::load_named(&model.state_dict(), &ck.model, true)?;
    Ok((model, ck.extra))
}

/// Image `i` of `data` as an 8-bit picture.
pub fn picture(data: &CaptionedImages, i: usize) -> Result<Image> {
    let n = data.channels * data.height * data.width;
    let chw = &data.pixels[i * n..(i + 1) * n];
    // Planar [C, H, W] bytes -> interleaved pixels.
    let hw = data.height * data.width;
    let bytes = (0..hw)
        .flat_map(|p| (0..data.channels).map(move |c| chw[c * hw + p]))
        .collect();
    Image::new(data.width, data.height, data.channels, bytes)
}

/// The confusion matrix as a picture: row `t`, column `p` is shaded by the fraction of class
/// `t`'s images predicted as `p` (white = none, dark blue = all); an example image of each
/// class heads its row (left) and its column (top).
pub fn confusion_image(zs: &ZeroShot, data: &CaptionedImages) -> Result<Image> {
    let k = zs.confusion.len();
    let cell = data.height.max(data.width).max(8);
    let pad = 2;
    let side = (k + 1) * (cell + pad) + pad;
    let mut img = Image::filled(side, side, &[255, 255, 255]);
    let at = |j: usize| pad + (j + 1) * (cell + pad);
    for c in 0..k {
        if let Some(i) = data.labels.iter().position(|&l| l == c) {
            let example = picture(data, i)?;
            img.paste(&example, pad, at(c));
            img.paste(&example, at(c), pad);
        }
    }
    for (t, row) in zs.confusion.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        for (p, &count) in row.iter().enumerate() {
            let v = count as f64 / total;
            let colour = [
                (255.0 * (1.0 - 0.9 * v)) as u8,
                (255.0 * (1.0 - 0.7 * v)) as u8,
                (255.0 * (1.0 - 0.3 * v)) as u8,
            ];
            img.paste(&Image::filled(cell, cell, &colour), at(p), at(t));
        }
    }
    Ok(img)
}

/// The matched images of a retrieval, best first, as a grid (scaled up for viewing).
pub fn matches_grid(gallery: &CaptionedImages, matches: &[(usize, f64)]) -> Result<Image> {
    let pictures = matches
        .iter()
        .map(|&(i, _)| Ok(picture(gallery, i)?.upscale(2)))
        .collect::<Result<Vec<_>>>()?;
    let cols = (pictures.len() as f64).sqrt().ceil() as usize;
    Ok(grid(&pictures, cols, 2, 255))
}
