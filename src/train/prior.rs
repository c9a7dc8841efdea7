//! Trains the unCLIP prior (`models::prior`) of a clip-image conditioner on (caption, picture)
//! pairs of the training data, and measures it on held-out pairs.
//!
//! The pictures of a pool are embedded once by the frozen CLIP image tower (the targets). Each
//! step draws `batch_size` pictures and one of each picture's captions from a generator seeded
//! by `(seed, step)`, embeds the captions with CLIP's text tower, and takes an AdamW step on
//! the MSE between the prior's prediction and the picture's embedding.
//!
//! Held-out measures (pictures never seen, and for the shapes captions from the held-out
//! templates): the mean cosine similarity between the normalized prediction and the true
//! embedding, and retrieval accuracy: the fraction of captions whose nearest picture (by the
//! prediction) has the caption's class. Both are also given for CLIP's text embedding used
//! directly as the image embedding (no prior), the baseline the prior must beat.

use super::diffusion_data::{DiffusionData, PriorPool};
use crate::data::mnist::Split;
use crate::diffusion::unclip::ClipImageConditioner;
use crate::nn::Module;
use crate::optim::{AdamW, AdamWConfig, LrSchedule, Optimizer, WarmupCosine};
use crate::random::Rng;
use crate::{DType, Error, Result, Tensor};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct PriorTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Training pictures embedded for the pairs.
    pub train_pictures: usize,
    /// Held-out pictures for the measures.
    pub eval_pictures: usize,
    pub progress: bool,
}

impl Default for PriorTrainConfig {
    fn default() -> Self {
        PriorTrainConfig {
            steps: 1500,
            batch_size: 128,
            lr: 1e-3,
            seed: 0,
            train_pictures: 4000,
            eval_pictures: 1000,
            progress: true,
        }
    }
}

/// Cosine and retrieval of a way of predicting image embeddings from captions.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingFit {
    pub cosine: f64,
    pub retrieval: f64,
}

#[derive(Clone, Debug)]
pub struct PriorReport {
    pub steps: u64,
    pub first_loss: f64,
    /// Smoothed (EMA 0.9) loss at the end.
    pub final_loss: f64,
    pub seconds: f64,
    pub parameters: usize,
    /// The prior on held-out pairs.
    pub held_out: EmbeddingFit,
    /// CLIP's text embedding used directly, on the same pairs.
    pub clip_text_baseline: EmbeddingFit,
}

/// CLIP image embeddings `[N, E]` of a pool's pictures, in chunks.
fn embed_pool(cond: &ClipImageConditioner, pool: &PriorPool) -> Result<Tensor> {
    let n = pool.images.dims()[0];
    let parts = (0..n)
        .step_by(500)
        .map(|lo| cond.image_embedding(&pool.images.narrow(0, lo, 500.min(n - lo))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

pub fn train_prior(
    cond: &ClipImageConditioner,
    data: &DiffusionData,
    image_size: usize,
    cfg: &PriorTrainConfig,
) -> Result<PriorReport> {
    if cfg.batch_size == 0 || cfg.train_pictures == 0 || cfg.eval_pictures == 0 {
        return Err(Error::msg(
            "train prior: batch size and picture counts must be positive",
        ));
    }
    let device = cond.proj.weight.device();
    let train = data.prior_pool(Split::Train, cfg.train_pictures, image_size, device)?;
    let targets = embed_pool(cond, &train)?.to_dtype(DType::F32)?;
    let params = cond.prior.named_parameters();
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
        (cfg.steps / 20).clamp(1, 100),
        cfg.steps.max(1),
    )?;
    cond.prior.train();
    let pb = crate::train::progress::bar(cfg.steps, "prior", cfg.progress);
    let t0 = Instant::now();
    let mut trace = crate::train::loss_trace::LossTrace::new("prior");
    let n = targets.dims()[0];
    for step in 0..cfg.steps {
        schedule.apply(&mut opt, step);
        let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step) ^ 0x9_0105);
        let idx: Vec<usize> = (0..cfg.batch_size).map(|_| rng.below(n)).collect();
        let captions: Vec<&str> = idx
            .iter()
            .map(|&i| {
                let c = &train.captions[i];
                c[rng.below(c.len())].as_str()
            })
            .collect();
        let text = cond.text_embedding(&captions, device)?;
        let ids = cond.prior.encode_ids(&cond.tokenizer, &captions, device)?;
        let rows = Tensor::from_vec(
            idx.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            idx.len(),
            device,
        )?;
        let target = targets.index_select(&rows, 0)?;
        let loss = cond.prior.loss(&text, &ids, &target)?;
        let lv = loss.item()?;
        trace.record(step, lv)?;
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
        pb.set_message(format!("mse {:.5}", trace.smoothed()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    cond.prior.eval();
    let seconds = t0.elapsed().as_secs_f64();
    let test = data.prior_pool(Split::Test, cfg.eval_pictures, image_size, device)?;
    let (held_out, clip_text_baseline) = evaluate_prior(cond, &test)?;
    Ok(PriorReport {
        steps: cfg.steps,
        first_loss: trace.first(),
        final_loss: trace.smoothed(),
        seconds,
        parameters: cond.prior.num_parameters(),
        held_out,
        clip_text_baseline,
    })
}

/// The prior's and the plain CLIP text embedding's fit on `pool` (caption `i mod k` of
/// picture `i`, so every held-out template is used): (prior, CLIP text).
pub fn evaluate_prior(
    cond: &ClipImageConditioner,
    pool: &PriorPool,
) -> Result<(EmbeddingFit, EmbeddingFit)> {
    let device = cond.proj.weight.device();
    let truth = embed_pool(cond, pool)?.to_dtype(DType::F64)?; // [N, E]
    let captions: Vec<&str> = pool
        .captions
        .iter()
        .enumerate()
        .map(|(i, c)| c[i % c.len()].as_str())
        .collect();
    let fit = |pred: Tensor| -> Result<EmbeddingFit> {
        let pred = pred.to_dtype(DType::F64)?.l2_normalize(1, 1e-12)?;
        let n = pred.dims()[0];
        let cosine = pred.mul(&truth)?.sum_all()?.item()? / n as f64;
        let nearest = pred.matmul(&truth.t()?)?.argmax(1)?.to_vec::<i64>()?;
        let right = nearest
            .iter()
            .enumerate()
            .filter(|&(i, &j)| pool.classes[j as usize] == pool.classes[i])
            .count();
        Ok(EmbeddingFit {
            cosine,
            retrieval: right as f64 / n.max(1) as f64,
        })
    };
    crate::no_grad(|| {
        let mut prior = Vec::new();
        let mut text = Vec::new();
        for chunk in captions.chunks(256) {
            prior.push(cond.prior_embedding(chunk, device)?);
            text.push(cond.text_embedding(chunk, device)?);
        }
        Ok((fit(Tensor::cat(&prior, 0)?)?, fit(Tensor::cat(&text, 0)?)?))
    })
}
