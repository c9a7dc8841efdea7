//! The char-level language-model training loop: random windows of the text, AdamW with
//! linear warm-up and cosine decay, gradient clipping, periodic evaluation on held-out text,
//! and atomic checkpoints that resume exactly.
//!
//! Reproducibility: the batch of step `s` is drawn from a generator seeded by `(seed, s)`,
//! and the global generator (dropout) is saved in the checkpoint, so a run killed and resumed
//! from its last checkpoint produces the same losses as one that never stopped.

use crate::data::{text::unigram_entropy, CharTokenizer};
use crate::io::Checkpoint;
use crate::models::char_transformer::CharTransformer;
use crate::nn::Module;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, Optimizer, WarmupCosine};
use crate::random::Rng;
use crate::{Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct CharLmTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
    /// Evaluate on held-out text every this many steps (and at the end).
    pub eval_every: u64,
    pub checkpoint: Option<PathBuf>,
    pub checkpoint_every: u64,
    /// Continue from `checkpoint` when it exists.
    pub resume: bool,
    /// Stop (after checkpointing) once this step is reached, keeping the schedule of the full
    /// run: a time-boxed slice of a longer run, continued later with `resume`.
    pub stop_at: Option<u64>,
    pub progress: bool,
}

impl Default for CharLmTrainConfig {
    fn default() -> Self {
        CharLmTrainConfig {
            steps: 300,
            batch_size: 32,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 20,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed: 0,
            eval_every: 100,
            checkpoint: None,
            checkpoint_every: 100,
            resume: false,
            stop_at: None,
            progress: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CharLmReport {
    pub steps: u64,
    pub start_step: u64,
    pub first_loss: f64,
    /// Mean training loss over the last 10% of steps.
    pub final_train_loss: f64,
    pub val_loss: f64,
    /// The context-free baseline (nats per character).
    pub unigram_entropy: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub parameters: usize,
    pub peak_bytes: usize,
}

/// A batch of `b` windows of `t + 1` ids: inputs `[b, t]` and next-character targets `[b, t]`.
fn batch(
    ids: &[u32],
    b: usize,
    t: usize,
    rng: &mut Rng,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    if ids.len() <= t + 1 {
        return Err(Error::msg(format!(
            "the text has {} characters, fewer than one window of {}",
            ids.len(),
            t + 1
        )));
    }
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for _ in 0..b {
        let s = rng.below(ids.len() - t - 1);
        x.extend(ids[s..s + t].iter().map(|&i| i as i64));
        y.extend(ids[s + 1..s + t + 1].iter().map(|&i| i as i64));
    }
    Ok((
        Tensor::from_vec(x, (b, t), device)?,
        Tensor::from_vec(y, (b, t), device)?,
    ))
}

/// Holds out every `every`-th block of `block` ids, so the held-out text samples the whole
/// corpus (prose and captions alike) rather than only its end.
pub fn split_held_out(ids: &[u32], block: usize, every: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, chunk) in ids.chunks(block).enumerate() {
        if i % every == every - 1 {
            val.extend_from_slice(chunk);
        } else {
            train.extend_from_slice(chunk);
        }
    }
    (train, val)
}

fn step_rng(seed: u64, step: u64) -> Rng {
    Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step))
}

/// Mean loss over a fixed set of held-out windows, in eval mode, without a graph.
pub fn evaluate(
    model: &CharTransformer,
    ids: &[u32],
    batches: usize,
    batch_size: usize,
) -> Result<f64> {
    model.eval();
    let t = model
        .config
        .block_size
        .min(ids.len().saturating_sub(2))
        .max(1);
    let mut rng = Rng::new(0xE7A1);
    let mut total = 0.0;
    for _ in 0..batches {
        let (x, y) = batch(ids, batch_size, t, &mut rng, model.tok_emb.weight.device())?;
        total += crate::no_grad(|| model.loss(&x, &y))?.item()?;
    }
    model.train();
    Ok(total / batches as f64)
}

pub fn train_char_lm(
    model: &CharTransformer,
    tokenizer: &CharTokenizer,
    text: &str,
    cfg: &CharLmTrainConfig,
) -> Result<CharLmReport> {
    let device = model.tok_emb.weight.device();
    let t = model.config.block_size;
    let ids = tokenizer.encode(text);
    // About 40 blocks, each at least one window long; every tenth is held out.
    let (train_ids, val_ids) = split_held_out(&ids, (ids.len() / 40).max(t + 2), 10);
    if val_ids.len() < t + 2 {
        return Err(Error::msg(format!(
            "the text has {} characters; training with a context of {t} needs at least {}",
            ids.len(),
            10 * (t + 2)
        )));
    }
    let (train_ids, val_ids) = (&train_ids[..], &val_ids[..]);
    let params = model.named_parameters();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let schedule = WarmupCosine::new(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps)?;
    let mut extra = HashMap::new();
    extra.insert("model".to_string(), "char_transformer".to_string());
    extra.insert("config".to_string(), model.config.to_json());
    extra.insert("tokenizer".to_string(), tokenizer.to_json());

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

    crate::backend::cpu::reset_peak_bytes();
    model.train();
    let pb = crate::train::progress::bar(cfg.steps, "train", cfg.progress);
    pb.set_position(start);
    let (t0, mut first_loss, mut tail) = (Instant::now(), f64::NAN, Vec::new());
    let mut val_loss = f64::NAN;
    let tail_from = cfg.steps - (cfg.steps / 10).max(1);
    let end = cfg.stop_at.unwrap_or(cfg.steps).min(cfg.steps);
    for step in start..end {
        schedule.apply(&mut opt, step);
        let (x, y) = batch(
            train_ids,
            cfg.batch_size,
            t,
            &mut step_rng(cfg.seed, step),
            device,
        )?;
        let loss = model.loss(&x, &y)?;
        let lv = loss.item()?;
        if !lv.is_finite() {
            return Err(Error::msg(format!(
                "training diverged at step {step}: loss {lv}"
            )));
        }
        opt.zero_grad();
        loss.backward()?;
        drop(loss);
        if cfg.grad_clip > 0.0 {
            clip_grad_norm(&params, cfg.grad_clip)?;
        }
        opt.step()?;
        if step == start {
            first_loss = lv;
        }
        if step >= tail_from {
            tail.push(lv);
        }
        let done = step + 1;
        if done % cfg.eval_every == 0 || done == end {
            val_loss = evaluate(model, val_ids, 4, cfg.batch_size)?;
        }
        if let Some(path) = &cfg.checkpoint {
            if done % cfg.checkpoint_every == 0 || done == end {
                Checkpoint::capture(&model.state_dict(), &opt, done, extra.clone()).save(path)?;
            }
        }
        pb.set_message(format!("loss {lv:.3} val {val_loss:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let steps_run = end.saturating_sub(start);
    Ok(CharLmReport {
        steps: end,
        start_step: start,
        first_loss,
        final_train_loss: if tail.is_empty() {
            f64::NAN
        } else {
            tail.iter().sum::<f64>() / tail.len() as f64
        },
        val_loss,
        unigram_entropy: unigram_entropy(text),
        seconds,
        tokens_per_second: (steps_run as usize * cfg.batch_size * t) as f64 / seconds.max(1e-9),
        parameters: model.num_parameters(),
        peak_bytes: crate::backend::cpu::peak_bytes(),
    })
}

/// Loads a char-LM checkpoint written by [`train_char_lm`]: the model and its tokenizer.
pub fn load_char_lm(
    path: &std::path::Path,
    device: Device,
) -> Result<(CharTransformer, CharTokenizer)> {
    let ck = Checkpoint::load_to(path, device)?;
    let get = |k: &str| ck.meta(path, "char_transformer", k);
    let config = crate::models::char_transformer::CharTransformerConfig::from_json(get("config")?)?;
    let tokenizer = CharTokenizer::from_json(get("tokenizer")?)?;
    let model = CharTransformer::new(config, device)?;
    crate::io::load_named(&model.state_dict(), &ck.model, true)?;
    Ok((model, tokenizer))
}
