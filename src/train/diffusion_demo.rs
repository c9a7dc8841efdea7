//! The demo's text-to-image stage: a small text-conditional diffusion model trained on the
//! built-in shapes within the demo's budget (a few minutes on two CPU cores), then judged by
//! the demo's ResNet-18 on the held-out prompts (prompt adherence, `diffusion::adherence`),
//! and a grid of its pictures for a handful of prompts.
//!
//! The recipe differs from the full training command (`tessera train diffusion`) in one way:
//! the U-Net folds 2x2 pixel patches into channels (`patch_size 2`), so it runs at 16x16 and
//! a step costs about a third of the full-resolution one. How many optimizer steps a run
//! gets, more than how wide the network is, decides whether it draws the shapes yet
//! (docs/PERF.md, session 6), so cheaper steps buy the demo its adherence.
//!
//! The checkpoint lives in the demo's folder. A finished one is reused (the stage only
//! evaluates); an interrupted one is resumed where it stopped; one with another
//! configuration is trained again from the start.

use super::diffusion::{
    load_diffusion, train_diffusion, DiffusionReport, DiffusionTrainConfig, TimestepSampling,
};
use crate::data::shapes::caption_lines;
use crate::data::PromptTokenizer;
use crate::diffusion::adherence::{classify, prompt_adherence, AdherenceReport};
use crate::diffusion::{DiffusionConfig, SampleOpts, TextToImage};
use crate::io::Checkpoint;
use crate::models::resnet::ResNet18;
use crate::{Device, Error, Result, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const DIFFUSION_FILE: &str = "diffusion.safetensors";

/// The prompts of the demo's grid (one row each): the original example's three pictures in
/// its own words, then every other shape and colour, some with a size or place.
pub const GRID_PROMPTS: [&str; 8] = [
    "a red square",
    "a blue square shape",
    "a green circle",
    "show me the yellow triangle",
    "a purple diamond on the left",
    "an orange cross",
    "a small blue circle at the top",
    "a large green diamond",
];

#[derive(Clone, Debug)]
pub struct DiffusionDemoConfig {
    /// Optimizer steps: 8000 (session 16). At 5500 the adherence depended on the seed, 0.87,
    /// 0.87 and 0.53 for seeds 0-2; at 8000 it is 0.97, 0.95 and 0.87, in about 210 s on two
    /// cores (docs/PERF.md).
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub patch_size: usize,
    pub base_channels: usize,
    /// U-Net levels with attention (see `UNetConfig::attention_levels`).
    pub attention_levels: Vec<usize>,
    /// Pictures per grid row.
    pub grid_columns: usize,
    /// Pictures per held-out prompt for the adherence.
    pub per_prompt: usize,
    /// How many of the 150 held-out prompts the adherence judges (evenly spread; None = all).
    pub eval_prompts: Option<usize>,
    /// DDIM steps, eta and guidance scale of every picture the stage draws.
    pub sample_steps: usize,
    pub eta: f64,
    pub guidance: f64,
    pub seed: u64,
    pub progress: bool,
}

impl Default for DiffusionDemoConfig {
    fn default() -> Self {
        DiffusionDemoConfig {
            steps: 8000,
            batch_size: 8,
            lr: 2e-3,
            patch_size: 2,
            base_channels: 16,
            attention_levels: vec![1, 2],
            grid_columns: 8,
            per_prompt: 1,
            eval_prompts: None,
            sample_steps: 25,
            eta: 1.0,
            guidance: 3.0,
            seed: 0,
            progress: true,
        }
    }
}

impl DiffusionDemoConfig {
    /// The model this configuration trains: the CPU-sized shapes model with the demo's patch
    /// size and width.
    pub fn model_config(&self) -> DiffusionConfig {
        let small = DiffusionConfig::small();
        DiffusionConfig {
            unet: crate::models::unet::UNetConfig {
                patch_size: self.patch_size,
                base_channels: self.base_channels,
                attention_levels: self.attention_levels.clone(),
                ..small.unet.clone()
            },
            ..small
        }
    }
    fn sample_opts(&self) -> SampleOpts {
        SampleOpts {
            steps: self.sample_steps,
            eta: self.eta,
            guidance: self.guidance,
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// One grid row: the prompt and its pictures `[grid_columns, 3, S, S]` in [0, 1], with
/// whether the judge saw the prompt's shape and colour in each.
pub struct GridRow {
    pub prompt: String,
    pub images: Tensor,
    pub correct: Vec<bool>,
}

pub struct DiffusionDemoReport {
    pub checkpoint: PathBuf,
    /// Whether this run trained (some or all of the steps) or reused a finished checkpoint.
    pub trained: bool,
    /// The training run's figures when it trained.
    pub training: Option<DiffusionReport>,
    pub train_seconds: f64,
    pub adherence: AdherenceReport,
    pub eval_seconds: f64,
    pub rows: Vec<GridRow>,
    pub parameters: usize,
}

/// Trains (or reuses, or resumes) the demo's diffusion model in `dir`, draws the grid and
/// measures prompt adherence with `judge` (a shapes ResNet-18 at the model's image size).
pub fn run_diffusion_demo(
    dir: &Path,
    cfg: &DiffusionDemoConfig,
    judge: &ResNet18,
    judge_size: usize,
    device: Device,
) -> Result<DiffusionDemoReport> {
    prepare_diffusion_demo(dir, cfg, device)?
        .train()?
        .judge(cfg, judge, judge_size, device)
}

/// The stage before it trains: the model (seeded initial weights) and its training run.
pub struct DiffusionDemoRun {
    model: TextToImage,
    train_cfg: DiffusionTrainConfig,
    path: PathBuf,
    parameters: usize,
}

/// The trained stage, before it is judged.
pub struct TrainedDiffusionDemo {
    path: PathBuf,
    training: DiffusionReport,
    trained: bool,
    train_seconds: f64,
    parameters: usize,
}

/// Decides between training from the start, resuming and reusing the checkpoint in `dir`,
/// and builds the model. Training then draws nothing from the global generator (its batches
/// and noise are seeded per step), so [`DiffusionDemoRun::train`] may overlap other work.
pub fn prepare_diffusion_demo(
    dir: &Path,
    cfg: &DiffusionDemoConfig,
    device: Device,
) -> Result<DiffusionDemoRun> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(DIFFUSION_FILE);
    let config = cfg.model_config();
    // Resume (or reuse) only a checkpoint of this model that has not gone past `steps`.
    let resume = match existing(&path)? {
        Some((c, step)) if c == config.to_json() && step <= cfg.steps => true,
        Some(_) => {
            if cfg.progress {
                eprintln!(
                    "{}: another configuration or more steps than {}; training again",
                    path.display(),
                    cfg.steps
                );
            }
            false
        }
        None => false,
    };
    crate::random::manual_seed(cfg.seed);
    let tokenizer = PromptTokenizer::new("word", &caption_lines())?;
    let model = TextToImage::new(config, tokenizer, device)?;
    let parameters = crate::nn::Module::num_parameters(&model);
    let train_cfg = DiffusionTrainConfig {
        steps: cfg.steps,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed: cfg.seed,
        checkpoint: Some(path.clone()),
        resume,
        progress: cfg.progress,
        timesteps: TimestepSampling::Uniform,
        ..Default::default()
    };
    Ok(DiffusionDemoRun {
        model,
        train_cfg,
        path,
        parameters,
    })
}

impl DiffusionDemoRun {
    /// Trains the remaining steps (none when the checkpoint is finished).
    pub fn train(self) -> Result<TrainedDiffusionDemo> {
        let t0 = Instant::now();
        let training = train_diffusion(&self.model, &self.train_cfg)?;
        Ok(TrainedDiffusionDemo {
            trained: training.start_step < self.train_cfg.steps,
            path: self.path,
            training,
            train_seconds: t0.elapsed().as_secs_f64(),
            parameters: self.parameters,
        })
    }
}

impl TrainedDiffusionDemo {
    /// Loads the EMA weights, draws the grid and measures the prompt adherence.
    pub fn judge(
        self,
        cfg: &DiffusionDemoConfig,
        judge: &ResNet18,
        judge_size: usize,
        device: Device,
    ) -> Result<DiffusionDemoReport> {
        let t1 = Instant::now();
        let (model, _) = load_diffusion(&self.path, device, true)?;
        let opts = cfg.sample_opts();
        let rows = grid_rows(&model, judge, cfg, &opts)?;
        let pb = super::progress::bar(
            cfg.eval_prompts.unwrap_or(150) as u64,
            "adherence",
            cfg.progress,
        );
        let adherence = prompt_adherence(
            &model,
            judge,
            judge_size,
            cfg.per_prompt,
            30,
            cfg.eval_prompts,
            &opts,
            cfg.seed,
            |done, _| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        Ok(DiffusionDemoReport {
            checkpoint: self.path,
            trained: self.trained,
            training: self.trained.then_some(self.training),
            train_seconds: self.train_seconds,
            adherence,
            eval_seconds: t1.elapsed().as_secs_f64(),
            rows,
            parameters: self.parameters,
        })
    }
}

/// The model configuration and step stored in a diffusion checkpoint, if the file exists.
fn existing(path: &Path) -> Result<Option<(String, u64)>> {
    if !path.exists() {
        return Ok(None);
    }
    let ck = Checkpoint::load_to(path, Device::Cpu)?;
    Ok(ck.extra.get("config").map(|c| (c.clone(), ck.step)))
}

fn grid_rows(
    model: &TextToImage,
    judge: &ResNet18,
    cfg: &DiffusionDemoConfig,
    opts: &SampleOpts,
) -> Result<Vec<GridRow>> {
    let images = model.sample(&GRID_PROMPTS, cfg.grid_columns, opts, || {})?;
    let predicted = classify(judge, &images)?;
    let wanted = GRID_PROMPTS
        .iter()
        .map(|p| {
            crate::data::shapes::shape_and_colour_named(p)
                .ok_or_else(|| Error::msg(format!("demo prompt {p:?} names no shape and colour")))
        })
        .collect::<Result<Vec<_>>>()?;
    GRID_PROMPTS
        .iter()
        .zip(&wanted)
        .enumerate()
        .map(|(i, (prompt, &(shape, colour)))| {
            let n = cfg.grid_columns;
            Ok(GridRow {
                prompt: prompt.to_string(),
                images: images.narrow(0, i * n, n)?,
                correct: predicted[i * n..(i + 1) * n]
                    .iter()
                    .map(|&(s, c)| s == shape && c == colour)
                    .collect(),
            })
        })
        .collect()
}
