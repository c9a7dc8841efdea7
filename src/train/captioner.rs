//! Training the captioner on frozen ResNet features of shapes pictures, and measuring how
//! often its greedy captions name the right shape and colour.
//!
//! Each step draws a batch of pictures from a pool of precomputed features and gives each a
//! caption from a random *training* template, so the model sees many sentences per picture.

use crate::data::shapes::{captioner_caption, shape_and_colour_named, ShapeLabel};
use crate::data::CharTokenizer;
use crate::io::Checkpoint;
use crate::models::captioner::{Captioner, CaptionerConfig};
use crate::nn::Module;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, Optimizer, WarmupCosine};
use crate::random::Rng;
use crate::{Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options shared by the captioner and text-to-feature training loops.
#[derive(Clone, Debug)]
pub struct SeqTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub checkpoint: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Clone, Debug)]
pub struct SeqTrainReport {
    pub steps: u64,
    pub first_loss: f64,
    /// Exponential moving average of the loss at the end.
    pub final_loss: f64,
    pub seconds: f64,
    pub steps_per_second: f64,
}

/// Whether `caption` names `label`'s shape and colour and no other shape or colour.
pub fn names_shape_and_colour(caption: &str, label: &ShapeLabel) -> bool {
    shape_and_colour_named(caption) == Some((label.shape, label.colour))
}

pub(crate) fn step_rng(seed: u64, step: u64) -> Rng {
    Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step) ^ 0xC0FFEE)
}

/// AdamW with warm-up and cosine decay, clipping at 1; runs `loss_of(step)` `cfg.steps` times.
pub(crate) fn run_steps(
    what: &str,
    params: Vec<(String, Tensor)>,
    cfg: &SeqTrainConfig,
    mut loss_of: impl FnMut(u64) -> Result<Tensor>,
) -> Result<(AdamW, SeqTrainReport)> {
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let schedule = WarmupCosine::new(cfg.lr, cfg.lr / 10.0, (cfg.steps / 10).max(1), cfg.steps)?;
    let pb = crate::train::progress::bar(cfg.steps, what, cfg.progress);
    let t0 = Instant::now();
    let (mut first, mut ema) = (f64::NAN, f64::NAN);
    for step in 0..cfg.steps {
        schedule.apply(&mut opt, step);
        let loss = loss_of(step)?;
        let lv = loss.item()?;
        if !lv.is_finite() {
            return Err(Error::msg(format!(
                "{what} training diverged at step {step}: loss {lv}"
            )));
        }
        opt.zero_grad();
        loss.backward()?;
        drop(loss);
        clip_grad_norm(&params, 1.0)?;
        opt.step()?;
        if step == 0 {
            first = lv;
        }
        ema = if ema.is_nan() {
            lv
        } else {
            0.95 * ema + 0.05 * lv
        };
        pb.set_message(format!("loss {ema:.4}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    Ok((
        opt,
        SeqTrainReport {
            steps: cfg.steps,
            first_loss: first,
            final_loss: ema,
            seconds,
            steps_per_second: cfg.steps as f64 / seconds.max(1e-9),
        },
    ))
}

/// Trains `model` to caption the pictures whose features are `features` `[N, F]`.
pub fn train_captioner(
    model: &Captioner,
    tokenizer: &CharTokenizer,
    features: &Tensor,
    labels: &[ShapeLabel],
    cfg: &SeqTrainConfig,
) -> Result<SeqTrainReport> {
    if features.dims()[0] != labels.len() || labels.is_empty() {
        return Err(Error::msg(format!(
            "train_captioner: {} feature rows for {} labels",
            features.dims()[0],
            labels.len()
        )));
    }
    let device = features.device();
    let (opt, report) = run_steps("captioner", model.named_parameters(), cfg, |step| {
        let mut rng = step_rng(cfg.seed, step);
        let idx: Vec<i64> = (0..cfg.batch_size)
            .map(|_| rng.below(labels.len()) as i64)
            .collect();
        let rows: Vec<Vec<u32>> = idx
            .iter()
            .map(|&i| tokenizer.encode(&captioner_caption(&labels[i as usize], &mut rng)))
            .collect();
        let f = features.index_select(&Tensor::from_vec(idx, cfg.batch_size, device)?, 0)?;
        model.loss(&f, &rows)
    })?;
    if let Some(path) = &cfg.checkpoint {
        let mut extra = HashMap::new();
        extra.insert("model".to_string(), "captioner".to_string());
        extra.insert("config".to_string(), model.config.to_json());
        extra.insert("tokenizer".to_string(), tokenizer.to_json());
        Checkpoint::capture(&model.state_dict(), &opt, cfg.steps, extra).save(path)?;
    }
    Ok(report)
}

/// Fraction of pictures whose greedy caption names their shape and colour (and no other).
pub fn caption_accuracy(
    model: &Captioner,
    tokenizer: &CharTokenizer,
    features: &Tensor,
    labels: &[ShapeLabel],
) -> Result<(f64, Vec<String>)> {
    let mut rng = Rng::new(0);
    let mut right = 0;
    let mut captions = Vec::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        let c = model.caption(&features.narrow(0, i, 1)?, tokenizer, None, 1.0, &mut rng)?;
        right += names_shape_and_colour(&c, label) as usize;
        captions.push(c);
    }
    Ok((right as f64 / labels.len().max(1) as f64, captions))
}

/// Loads a captioner checkpoint: the model and its tokenizer.
pub fn load_captioner(path: &Path, device: Device) -> Result<(Captioner, CharTokenizer)> {
    let ck = Checkpoint::load_to(path, device)?;
    let get = |k: &str| ck.meta(path, "captioner", k);
    let config = CaptionerConfig::from_json(get("config")?)?;
    let tokenizer = CharTokenizer::from_json(get("tokenizer")?)?;
    let model = Captioner::new(config, device)?;
    crate::io::load_named(&model.state_dict(), &ck.model, true)?;
    Ok((model, tokenizer))
}
