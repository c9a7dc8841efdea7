//! Trains the text-to-image diffusion model on the built-in shapes (or on Fashion-MNIST:
//! `diffusion_data.rs`).
//!
//! Every step draws a fresh batch (seeded by `(seed, step)`, as `shapes_resnet` does):
//! jittered pictures, a caption for each from the *training* templates (10% replaced by the
//! null prompt for classifier-free guidance), a timestep per picture ([`TimestepSampling`]) and
//! the Gaussian noise. So a run never repeats a batch, and resuming at step `k` sees exactly
//! the batches an uninterrupted run sees. AdamW with warmup + cosine decay, gradient clipping
//! at 1.0, an EMA of the weights (what sampling uses). Checkpoints (weights, optimizer, EMA,
//! config and tokenizer in the metadata) are written atomically every `checkpoint_every`
//! steps and at the end.

use crate::data::shapes::{train_caption, RenderOpts, ShapesDataset};
use crate::diffusion::guidance::{drop_captions, CFG_DROPOUT};
use crate::diffusion::{Conditioner, DiffusionConfig, TextToImage};
use crate::io::Checkpoint;
use crate::nn::Module;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema, LrSchedule, Optimizer, WarmupCosine};
use crate::random::Rng;
use crate::train::data_parallel;
use crate::train::diffusion_data::DiffusionData;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a checkpoint's `extra.model` says.
pub const MODEL_KIND: &str = "text-to-image-diffusion";

#[derive(Clone, Debug)]
pub struct DiffusionTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// EMA decay of the sampling weights.
    pub ema_decay: f64,
    pub checkpoint: Option<PathBuf>,
    /// Also write the checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Continue from `checkpoint` when it exists.
    pub resume: bool,
    /// End this session after this step (checkpoint written), as an interruption would; the
    /// schedule still spans `steps`.
    pub stop_at: Option<u64>,
    pub progress: bool,
    /// How each picture's timestep is drawn.
    pub timesteps: TimestepSampling,
    /// Parts each batch is cut into, run side by side as data-parallel workers
    /// ([`crate::train::data_parallel`]); `None`: 2 on the CPU, 1 on a GPU. The results
    /// depend on this, never on the thread count.
    pub micro_batches: Option<usize>,
}

/// How training draws each picture's timestep `t` in `0..T`. The density is a weighting of
/// the loss over noise levels: it changes where the network's capacity and the optimizer's
/// steps go, not what the optimum is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimestepSampling {
    /// Uniform over `0..T`, as in DDPM.
    Uniform,
    /// `t = floor(T * sigmoid(n))` with `n ~ N(mean, std)` (Esser et al. 2024, the SD3 paper):
    /// more of each batch at the middle noise levels, where the picture's layout is decided,
    /// and less at the nearly clean and nearly pure-noise ends.
    LogitNormal { mean: f64, std: f64 },
}

impl TimestepSampling {
    /// `uniform` or `logit-normal` (with the given mean and std).
    pub fn from_name(name: &str, mean: f64, std: f64) -> Result<Self> {
        match name {
            "uniform" => Ok(TimestepSampling::Uniform),
            "logit-normal" if std > 0.0 && mean.is_finite() => {
                Ok(TimestepSampling::LogitNormal { mean, std })
            }
            "logit-normal" => Err(Error::msg(format!(
                "timestep sampling: logit-normal needs a finite mean and a positive std, got mean {mean}, std {std}"
            ))),
            other => Err(Error::msg(format!(
                "unknown timestep sampling {other:?}: expected uniform or logit-normal"
            ))),
        }
    }

    /// One timestep in `0..train_steps`.
    pub fn draw(&self, rng: &mut Rng, train_steps: usize) -> usize {
        match *self {
            TimestepSampling::Uniform => rng.below(train_steps),
            TimestepSampling::LogitNormal { mean, std } => {
                let u = 1.0 / (1.0 + (-(mean + std * rng.normal())).exp());
                ((u * train_steps as f64) as usize).min(train_steps - 1)
            }
        }
    }
}

impl Default for DiffusionTrainConfig {
    fn default() -> Self {
        DiffusionTrainConfig {
            steps: 6000,
            batch_size: 16,
            lr: 1e-3,
            seed: 0,
            ema_decay: 0.995,
            checkpoint: None,
            checkpoint_every: 250,
            resume: false,
            stop_at: None,
            progress: true,
            timesteps: TimestepSampling::Uniform,
            micro_batches: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DiffusionReport {
    /// The step the run started from (0, or the resumed checkpoint's).
    pub start_step: u64,
    pub steps: u64,
    pub first_loss: f64,
    /// Smoothed (EMA 0.9) loss at the end.
    pub final_loss: f64,
    pub seconds: f64,
    pub images_per_second: f64,
    pub parameters: usize,
}

/// One training batch: `x0` `[B, 3, S, S]` in [-1, 1], captions (some null), timesteps, noise.
pub struct DiffusionBatch {
    pub x0: Tensor,
    pub captions: Vec<String>,
    pub t: Vec<usize>,
    pub noise: Tensor,
}

/// The batch of `step`: a pure function of `(seed, step)` and the sizes.
pub fn diffusion_batch(
    seed: u64,
    step: u64,
    batch_size: usize,
    image_size: usize,
    train_steps: usize,
    timesteps: TimestepSampling,
    device: Device,
) -> Result<DiffusionBatch> {
    let seed = seed.wrapping_mul(1_000_003).wrapping_add(step);
    let data = ShapesDataset::generate(batch_size, &RenderOpts::new(image_size), seed, device)?;
    let mut rng = Rng::new(seed ^ 0xCA97_10E5);
    let captions: Vec<String> = data
        .labels
        .iter()
        .map(|l| train_caption(l, &mut rng))
        .collect();
    assemble_batch(
        seed,
        &mut rng,
        data.images,
        captions,
        train_steps,
        timesteps,
        device,
    )
}

/// What every dataset's batch shares, drawn after its pictures and captions: the null
/// captions for guidance (10%), a timestep per picture and the noise, from the batch's
/// `seed` and `rng`. `images` `[B, C, S, S]` in [0, 1] become `x0` in [-1, 1].
pub(crate) fn assemble_batch(
    seed: u64,
    rng: &mut Rng,
    images: Tensor,
    mut captions: Vec<String>,
    train_steps: usize,
    timesteps: TimestepSampling,
    device: Device,
) -> Result<DiffusionBatch> {
    drop_captions(&mut captions, CFG_DROPOUT, rng);
    let t = (0..captions.len())
        .map(|_| timesteps.draw(rng, train_steps))
        .collect();
    let noise = Tensor::randn_with_seed(images.dims(), DType::F32, device, seed ^ 0x0015_E000, 0)?;
    Ok(DiffusionBatch {
        x0: images.affine(2.0, -1.0)?,
        captions,
        t,
        noise,
    })
}

pub fn train_diffusion(model: &TextToImage, cfg: &DiffusionTrainConfig) -> Result<DiffusionReport> {
    train_diffusion_on(model, &DiffusionData::Shapes, cfg)
}

/// [`train_diffusion`] on `data` (the shapes or Fashion-MNIST); the model's channels must
/// follow the data's.
pub fn train_diffusion_on(
    model: &TextToImage,
    data: &DiffusionData,
    cfg: &DiffusionTrainConfig,
) -> Result<DiffusionReport> {
    if model.config.unet.in_channels != data.channels() {
        return Err(Error::msg(format!(
            "train diffusion: {} pictures have {} channel(s), the U-Net reads {}",
            data.name(),
            data.channels(),
            model.config.unet.in_channels
        )));
    }
    if cfg.batch_size == 0 {
        return Err(Error::msg("train diffusion: batch size must be positive"));
    }
    let device = model.device();
    let params = model.named_parameters();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let schedule = WarmupCosine::new(
        cfg.lr,
        cfg.lr / 10.0,
        (cfg.steps / 20).clamp(1, 200),
        cfg.steps.max(1),
    )?;
    let mut ema = Ema::new(&params, cfg.ema_decay)?.with_warmup();
    let mut start = 0;
    if let (true, Some(path)) = (cfg.resume, &cfg.checkpoint) {
        if path.exists() {
            let ck = crate::io::resume(path, &model.state_dict(), &mut opt, true)?;
            ck.restore_ema(&mut ema)
                .map_err(|e| Error::file(path, e.to_string()))?;
            start = ck.step;
        }
    }
    model.train();
    let c = &model.config;
    let pb = crate::train::progress::bar(cfg.steps, "diffusion", cfg.progress);
    pb.set_position(start.min(cfg.steps));
    let t0 = Instant::now();
    let mut trace = crate::train::loss_trace::LossTrace::new("diffusion");
    let end = cfg.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    let parts = cfg
        .micro_batches
        .unwrap_or(if device == Device::Cpu { 2 } else { 1 });
    for step in start..end {
        schedule.apply(&mut opt, step);
        let batch = data.batch(cfg, step, c.image_size, c.train_steps, device)?;
        let prompts: Vec<&str> = batch.captions.iter().map(|s| s.as_str()).collect();
        opt.zero_grad();
        let lv = data_parallel::step(&params, cfg.batch_size, parts, |r| {
            let len = r.len();
            model.training_loss(
                &batch.x0.narrow(0, r.start, len)?,
                &prompts[r.clone()],
                &batch.t[r.clone()],
                &batch.noise.narrow(0, r.start, len)?,
            )
        })?;
        trace.record(step, lv)?;
        clip_grad_norm(&params, 1.0)?;
        opt.step()?;
        ema.update(&params)?;
        pb.set_message(format!("loss {:.4}", trace.smoothed()));
        pb.inc(1);
        let done = step + 1;
        if let Some(path) = &cfg.checkpoint {
            let periodic = cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0;
            if periodic || done == end {
                save_diffusion_on(model, data.name(), &opt, &ema, done, path)?;
            }
        }
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let done = end.saturating_sub(start);
    Ok(DiffusionReport {
        start_step: start,
        steps: cfg.steps,
        first_loss: trace.first(),
        final_loss: trace.smoothed(),
        seconds,
        images_per_second: (done as usize * cfg.batch_size) as f64 / seconds.max(1e-9),
        parameters: model.num_parameters(),
    })
}

/// Writes weights, optimizer, EMA, the config and the conditioner (with its tokenizer) to
/// `path`, atomically.
pub fn save_diffusion(
    model: &TextToImage,
    opt: &dyn Optimizer,
    ema: &Ema,
    step: u64,
    path: &Path,
) -> Result<()> {
    save_diffusion_on(model, "shapes", opt, ema, step, path)
}

/// [`save_diffusion`] naming the dataset the model was trained on (what `eval diffusion`
/// checks). The frozen parts of an unCLIP conditioner (CLIP, the prior) are saved as buffers,
/// so the checkpoint alone samples.
pub fn save_diffusion_on(
    model: &TextToImage,
    dataset: &str,
    opt: &dyn Optimizer,
    ema: &Ema,
    step: u64,
    path: &Path,
) -> Result<()> {
    let mut extra = HashMap::new();
    extra.insert("model".to_string(), MODEL_KIND.to_string());
    extra.insert("config".to_string(), model.config.to_json());
    extra.insert("conditioner".to_string(), model.text.to_json().to_string());
    extra.insert("dataset".to_string(), dataset.to_string());
    Checkpoint::capture(&model.state_dict(), opt, step, extra)
        .with_ema(ema)
        .save(path)
}

/// Loads a model saved by [`train_diffusion`], in eval mode, with the EMA weights when
/// `use_ema` (and the checkpoint has them); returns it with the checkpoint's step.
pub fn load_diffusion(path: &Path, device: Device, use_ema: bool) -> Result<(TextToImage, u64)> {
    load_diffusion_with_dataset(path, device, use_ema).map(|(m, step, _)| (m, step))
}

/// [`load_diffusion`], also returning the dataset the model was trained on (`shapes` for
/// checkpoints written before the dataset was recorded).
pub fn load_diffusion_with_dataset(
    path: &Path,
    device: Device,
    use_ema: bool,
) -> Result<(TextToImage, u64, String)> {
    let ck = Checkpoint::load_to(path, device)?;
    let get = |k: &str| ck.meta(path, MODEL_KIND, k);
    if get("model")? != MODEL_KIND {
        return Err(Error::file(
            path,
            format!("holds a {:?} model, not {MODEL_KIND}", get("model")?),
        ));
    }
    let wrap = |e: Error| Error::file(path, e.to_string());
    let config = DiffusionConfig::from_json(get("config")?).map_err(wrap)?;
    let cond: serde_json::Value = serde_json::from_str(get("conditioner")?)
        .map_err(|e| Error::file(path, format!("conditioner metadata: {e}")))?;
    let text = Conditioner::from_json(&cond, device).map_err(wrap)?;
    let model = TextToImage::with_conditioner(config, text, device).map_err(wrap)?;
    let params = model.named_parameters();
    crate::io::load_named(&model.state_dict(), &ck.model, true).map_err(wrap)?;
    if use_ema && !ck.ema.is_empty() {
        let shadow: Vec<(String, Tensor)> = ck
            .ema
            .iter()
            .filter(|(n, _)| n != "num_updates")
            .cloned()
            .collect();
        crate::io::load_named(&params, &shadow, true).map_err(wrap)?;
    }
    model.eval();
    let dataset = ck
        .extra
        .get("dataset")
        .cloned()
        .unwrap_or_else(|| "shapes".to_string());
    Ok((model, ck.step, dataset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fraction of `n` draws that land in the middle half `[T/4, 3T/4)`.
    fn middle_half(s: TimestepSampling, n: usize) -> f64 {
        let mut rng = Rng::new(7);
        let hits = (0..n)
            .map(|_| s.draw(&mut rng, 1000))
            .inspect(|&t| assert!(t < 1000, "timestep {t} out of range"))
            .filter(|&t| (250..750).contains(&t))
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn timestep_densities_match_their_formulas() {
        // Uniform: exactly half the range. Logit-normal(0, 1): P(|n| < logit(3/4) = ln 3)
        // = erf(ln 3 / sqrt 2) = 0.7274. Standard error at 40k draws: about 0.0025.
        let u = middle_half(TimestepSampling::Uniform, 40_000);
        assert!((u - 0.5).abs() < 0.012, "uniform: {u}");
        let ln = TimestepSampling::from_name("logit-normal", 0.0, 1.0).unwrap();
        let l = middle_half(ln, 40_000);
        assert!((l - 0.7274).abs() < 0.012, "logit-normal: {l}");
        // A shifted mean moves the mass to the noisy end.
        let noisy = TimestepSampling::from_name("logit-normal", 1.0, 1.0).unwrap();
        let mut rng = Rng::new(3);
        let high = (0..10_000)
            .filter(|_| noisy.draw(&mut rng, 1000) >= 500)
            .count();
        assert!(
            high > 8_000,
            "mean 1: {high} of 10000 above T/2 (expected about 8413)"
        );
    }

    #[test]
    fn timestep_sampling_names_are_checked() {
        assert!(TimestepSampling::from_name("cosine", 0.0, 1.0).is_err());
        assert!(TimestepSampling::from_name("logit-normal", 0.0, 0.0).is_err());
        assert_eq!(
            TimestepSampling::from_name("uniform", 5.0, -1.0).unwrap(),
            TimestepSampling::Uniform
        );
    }
}
