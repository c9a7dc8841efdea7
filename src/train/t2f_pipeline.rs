//! The first text-to-image pipeline, end to end on the built-in shapes:
//!
//! 1. ResNet-18 learns shape and colour, then is frozen: the feature extractor.
//! 2. Features of a pool of jittered pictures are computed once.
//! 3. The captioner learns to caption them (causal LM loss on the image-prefixed captions).
//! 4. The text-to-feature model starts from the captioner's text stack and learns to predict
//!    a caption's picture features (MSE).
//! 5. Evaluation: held-out caption templates -> predicted features -> nearest picture of a
//!    gallery holding every shape x colour (retrieval top-1), and greedy captions of fresh
//!    pictures (shape and colour named right).
//!
//! Each stage's checkpoint lives in the output folder and is reused when present, so a second
//! run only evaluates; when a stage trains, every later stage trains again (its inputs
//! changed).

use super::captioner::{caption_accuracy, load_captioner, train_captioner, SeqTrainConfig};
use super::shapes_resnet::{
    extract_features, load_resnet, train_shapes_resnet, ResNetTrainConfig, NUM_OUTPUTS,
};
use super::text_to_feature::{
    held_out_prompts, load_text_to_feature, retrieval_accuracy, train_text_to_feature,
    RetrievalResult,
};
use crate::data::shapes::{caption_alphabet, RenderOpts, ShapesDataset};
use crate::data::CharTokenizer;
use crate::models::captioner::{Captioner, CaptionerConfig};
use crate::models::resnet::{ResNet18, ResNetConfig, FEATURE_DIM};
use crate::models::retrieval::Metric;
use crate::models::text_to_feature::TextToFeature;
use crate::nn::Module;
use crate::{Device, Error, Result, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub image_size: usize,
    pub resnet_steps: u64,
    pub resnet_batch: usize,
    /// Pictures whose features train the captioner and the text-to-feature model.
    pub pool_size: usize,
    pub caption_steps: u64,
    pub t2f_steps: u64,
    pub seq_batch: usize,
    pub lr: f64,
    pub dim: usize,
    pub heads: usize,
    pub layers: usize,
    /// Fresh pictures captioned for the caption accuracy.
    pub caption_eval_images: usize,
    /// The gallery holds every shape x colour this many times.
    pub gallery_repeats: usize,
    pub metric: Metric,
    pub seed: u64,
    pub progress: bool,
}

impl Default for PipelineConfig {
    /// The demo's sizes: budgeted for the 3-minute limit on two CPU cores (about 170 s of user
    /// CPU over both, measured on a busy machine).
    fn default() -> Self {
        PipelineConfig {
            image_size: 32,
            resnet_steps: 350,
            resnet_batch: 16,
            pool_size: 600,
            caption_steps: 500,
            t2f_steps: 700,
            seq_batch: 32,
            lr: 3e-3,
            dim: 64,
            heads: 4,
            layers: 2,
            caption_eval_images: 60,
            gallery_repeats: 1,
            metric: Metric::Euclidean,
            seed: 0,
            progress: true,
        }
    }
}

/// What one stage did: trained (with its seconds) or reused a checkpoint.
#[derive(Clone, Debug)]
pub struct StageReport {
    pub name: &'static str,
    pub checkpoint: PathBuf,
    pub trained: bool,
    pub seconds: f64,
    /// Training throughput (steps per second), when it trained.
    pub steps_per_second: Option<f64>,
}

pub struct Pipeline {
    pub resnet: ResNet18,
    pub captioner: Captioner,
    pub t2f: TextToFeature,
    pub tokenizer: CharTokenizer,
    pub gallery: ShapesDataset,
    pub gallery_features: Tensor,
    pub resnet_accuracy: Option<f64>,
    pub retrieval_top1: f64,
    pub retrieval: Vec<RetrievalResult>,
    pub caption_accuracy: f64,
    /// (caption, wanted shape and colour) for the evaluation pictures.
    pub captions: Vec<(String, String)>,
    pub stages: Vec<StageReport>,
}

pub const RESNET_FILE: &str = "resnet18.safetensors";
pub const CAPTIONER_FILE: &str = "captioner.safetensors";
pub const T2F_FILE: &str = "t2f.safetensors";

/// Runs (or resumes) the pipeline in `dir`.
pub fn run_pipeline(dir: &Path, cfg: &PipelineConfig, device: Device) -> Result<Pipeline> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let opts = RenderOpts::new(cfg.image_size);
    let mut stages = Vec::new();

    // 1. The feature extractor.
    let (resnet, resnet_accuracy, stage) = resnet_stage(dir, cfg, device)?;
    let mut retrain = stage.trained;
    stages.push(stage);

    // 2. Features of the training pool, the gallery and the caption-evaluation pictures.
    let t0 = Instant::now();
    let pool = ShapesDataset::generate(cfg.pool_size, &opts, cfg.seed ^ 0x9001, device)?;
    let pool_features = extract_features(&resnet, &pool.images, 50)?;
    let gallery =
        ShapesDataset::every_combination(cfg.gallery_repeats, &opts, cfg.seed ^ 0x6A11, device)?;
    let gallery_features = extract_features(&resnet, &gallery.images, 50)?;
    let eval = ShapesDataset::generate(cfg.caption_eval_images, &opts, cfg.seed ^ 0xE7A1, device)?;
    let eval_features = extract_features(&resnet, &eval.images, 50)?;
    stages.push(StageReport {
        name: "features",
        checkpoint: PathBuf::new(),
        trained: false,
        seconds: t0.elapsed().as_secs_f64(),
        steps_per_second: None,
    });

    // 3. The captioner.
    let path = dir.join(CAPTIONER_FILE);
    let t0 = Instant::now();
    let (captioner, tokenizer, sps) = if path.exists() && !retrain {
        let (m, t) = load_captioner(&path, device)?;
        (m, t, None)
    } else {
        retrain = true;
        crate::random::manual_seed(cfg.seed.wrapping_add(1));
        let tokenizer = CharTokenizer::from_text(&caption_alphabet());
        let m = Captioner::new(
            CaptionerConfig {
                dim: cfg.dim,
                num_heads: cfg.heads,
                num_layers: cfg.layers,
                ..CaptionerConfig::small(tokenizer.vocab_size(), FEATURE_DIM)
            },
            device,
        )?;
        let r = train_captioner(
            &m,
            &tokenizer,
            &pool_features,
            &pool.labels,
            &seq_cfg(cfg, cfg.caption_steps, path.clone()),
        )?;
        (m, tokenizer, Some(r.steps_per_second))
    };
    stages.push(StageReport {
        name: "captioner",
        checkpoint: path,
        trained: sps.is_some(),
        seconds: t0.elapsed().as_secs_f64(),
        steps_per_second: sps,
    });

    // 4. The text-to-feature model, from the captioner's text stack.
    let path = dir.join(T2F_FILE);
    let t0 = Instant::now();
    let (t2f, sps) = if path.exists() && !retrain {
        (load_text_to_feature(&path, device)?.0, None)
    } else {
        let m = TextToFeature::from_captioner(&captioner, device)?;
        let r = train_text_to_feature(
            &m,
            &tokenizer,
            &pool_features,
            &pool.labels,
            &seq_cfg(cfg, cfg.t2f_steps, path.clone()),
        )?;
        (m, Some(r.steps_per_second))
    };
    stages.push(StageReport {
        name: "text_to_feature",
        checkpoint: path,
        trained: sps.is_some(),
        seconds: t0.elapsed().as_secs_f64(),
        steps_per_second: sps,
    });

    // 5. Evaluation.
    let t0 = Instant::now();
    let classes: Vec<_> = gallery.labels[..gallery.len() / cfg.gallery_repeats.max(1)].to_vec();
    let prompts = held_out_prompts(&classes, cfg.seed ^ 0x51);
    let (retrieval_top1, retrieval) = retrieval_accuracy(
        &t2f,
        &tokenizer,
        &prompts,
        &gallery_features,
        &gallery.labels,
        cfg.metric,
    )?;
    let (caption_acc, caps) =
        caption_accuracy(&captioner, &tokenizer, &eval_features, &eval.labels)?;
    let captions = caps
        .into_iter()
        .zip(&eval.labels)
        .map(|(c, l)| (c, format!("{} {}", l.colour_name(), l.shape_name())))
        .collect();
    stages.push(StageReport {
        name: "evaluation",
        checkpoint: PathBuf::new(),
        trained: false,
        seconds: t0.elapsed().as_secs_f64(),
        steps_per_second: None,
    });
    Ok(Pipeline {
        resnet,
        captioner,
        t2f,
        tokenizer,
        gallery,
        gallery_features,
        resnet_accuracy,
        retrieval_top1,
        retrieval,
        caption_accuracy: caption_acc,
        captions,
        stages,
    })
}

fn seq_cfg(cfg: &PipelineConfig, steps: u64, checkpoint: PathBuf) -> SeqTrainConfig {
    SeqTrainConfig {
        steps,
        batch_size: cfg.seq_batch,
        lr: cfg.lr,
        seed: cfg.seed,
        checkpoint: Some(checkpoint),
        progress: cfg.progress,
    }
}

/// Stage 1 alone: trains the shapes ResNet-18 in `dir` (or loads it when its checkpoint is
/// there), in eval mode; with its accuracy on fresh pictures when it trained. The demo's
/// text-to-image act uses it as its judge.
pub fn resnet_stage(
    dir: &Path,
    cfg: &PipelineConfig,
    device: Device,
) -> Result<(ResNet18, Option<f64>, StageReport)> {
    prepare_resnet_stage(dir, cfg, device)?.run(cfg)
}

/// Stage 1 before it trains: the loaded model, or a freshly initialised one (seeded, so its
/// weights do not depend on what else runs while it trains).
pub struct ResNetStage {
    model: ResNet18,
    path: PathBuf,
    needs_training: bool,
    load_seconds: f64,
}

/// Loads stage 1's checkpoint from `dir`, or initialises the model to train. Training draws
/// nothing from the global generator, so [`ResNetStage::run`] may overlap other work.
pub fn prepare_resnet_stage(
    dir: &Path,
    cfg: &PipelineConfig,
    device: Device,
) -> Result<ResNetStage> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(RESNET_FILE);
    let t0 = Instant::now();
    if path.exists() {
        let (model, size) = load_resnet(&path, device)?;
        if size != cfg.image_size {
            return Err(Error::file(
                &path,
                format!(
                    "trained on {size}-pixel pictures, the pipeline uses {}",
                    cfg.image_size
                ),
            ));
        }
        return Ok(ResNetStage {
            model,
            path,
            needs_training: false,
            load_seconds: t0.elapsed().as_secs_f64(),
        });
    }
    crate::random::manual_seed(cfg.seed);
    let model = ResNet18::new(
        ResNetConfig {
            num_classes: NUM_OUTPUTS,
            small_input: false,
            in_channels: 3,
        },
        device,
    )?;
    Ok(ResNetStage {
        model,
        path,
        needs_training: true,
        load_seconds: 0.0,
    })
}

impl ResNetStage {
    /// Trains the model when it was not loaded; returns it in eval mode, with its accuracy
    /// when it trained and the stage's report.
    pub fn run(self, cfg: &PipelineConfig) -> Result<(ResNet18, Option<f64>, StageReport)> {
        let t0 = Instant::now();
        let (accuracy, sps) = if self.needs_training {
            let r = train_shapes_resnet(
                &self.model,
                &ResNetTrainConfig {
                    steps: cfg.resnet_steps,
                    batch_size: cfg.resnet_batch,
                    seed: cfg.seed,
                    image_size: cfg.image_size,
                    checkpoint: Some(self.path.clone()),
                    progress: cfg.progress,
                    ..Default::default()
                },
            )?;
            (Some(r.accuracy), Some(r.steps as f64 / r.seconds.max(1e-9)))
        } else {
            (None, None)
        };
        self.model.eval();
        let stage = StageReport {
            name: "resnet18",
            checkpoint: self.path,
            trained: self.needs_training,
            seconds: self.load_seconds + t0.elapsed().as_secs_f64(),
            steps_per_second: sps,
        };
        Ok((self.model, accuracy, stage))
    }
}
