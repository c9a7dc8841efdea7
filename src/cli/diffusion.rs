//! `tessera train diffusion` and `tessera sample diffusion`: the text-to-image diffusion model
//! on the built-in shapes (32x32), and PNG grids of its pictures, one row per prompt.

use super::{resolve_device, DeviceArg};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tessera::data::shapes::caption_lines;
use tessera::data::PromptTokenizer;
use tessera::diffusion::{
    BetaSchedule, DiffusionConfig, Prediction, SampleOpts, Sampler, TextToImage,
};
use tessera::io::{grid, Image};
use tessera::train::diffusion::{
    load_diffusion, train_diffusion, DiffusionTrainConfig, TimestepSampling,
};

/// The checkpoint's name inside `--out`.
pub const CHECKPOINT_FILE: &str = "diffusion.safetensors";

#[derive(Args, Debug, Clone)]
pub struct TrainDiffusionArgs {
    /// Optimizer steps. The defaults are the full training command: 6000 steps of 16 pictures
    /// reached 94% prompt adherence on the held-out prompts (docs/PERF.md, session 4).
    #[arg(long, default_value_t = 6000)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for the checkpoint (`diffusion.safetensors`) and a grid of samples (`samples.png`).
    #[arg(long, default_value = "runs/diffusion")]
    pub out: PathBuf,
    /// linear, scaled-linear or cosine.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// v or epsilon. v (Salimans & Ho 2022) is the default: with epsilon the small U-Net leaves
    /// visible noise in flat regions after thousands of steps (docs/PERF.md).
    #[arg(long, default_value = "v")]
    pub prediction: String,
    #[arg(long, default_value_t = 0.995)]
    pub ema_decay: f64,
    /// U-Net width of the first level (later levels: 2x, 2x).
    #[arg(long, default_value_t = 16)]
    pub base_channels: usize,
    /// U-Net levels with attention blocks (0 = full size, 1 = half, 2 = quarter),
    /// comma-separated; the middle always has one.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize])]
    pub attention_levels: Vec<usize>,
    /// Fold p x p pixel patches into channels before the U-Net (1 = off, 2 = the network runs
    /// at half the side: a quarter of the compute per level).
    #[arg(long, default_value_t = 1)]
    pub patch_size: usize,
    /// What the jointly trained text encoder reads: `word` (one token per word) or `char`.
    #[arg(long, default_value = "word")]
    pub tokens: String,
    /// How each picture's training timestep is drawn: `uniform` (DDPM) or `logit-normal`
    /// (`t = T * sigmoid(n)`, `n ~ N(--timestep-mean, --timestep-std)`: more mid-noise steps).
    #[arg(long, default_value = "uniform")]
    pub timesteps: String,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub timestep_mean: f64,
    #[arg(long, default_value_t = 1.0)]
    pub timestep_std: f64,
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Continue from the checkpoint in `--out` if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Skip the grid of samples written after training.
    #[arg(long)]
    pub no_samples: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print one final JSON line with the figures (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    Ddpm,
    Ddim,
}

#[derive(Args, Debug, Clone)]
pub struct SampleDiffusionArgs {
    #[arg(long, default_value = "runs/diffusion/diffusion.safetensors")]
    pub ckpt: PathBuf,
    /// A prompt (repeat for more rows).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim)]
    pub sampler: SamplerArg,
    /// DDIM steps (DDPM runs every training step).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
    /// Pictures per prompt (the grid's columns).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw trained weights instead of their EMA.
    #[arg(long)]
    pub no_ema: bool,
    #[arg(long, default_value = "grid.png")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn train(a: &TrainDiffusionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    std::fs::create_dir_all(&a.out).map_err(|e| tessera::Error::io(&a.out, e))?;
    let small = DiffusionConfig::small();
    let config = DiffusionConfig {
        schedule: BetaSchedule::from_name(&a.schedule)?,
        prediction: Prediction::from_name(&a.prediction)?,
        unet: tessera::models::unet::UNetConfig {
            base_channels: a.base_channels,
            attention_levels: a.attention_levels.clone(),
            patch_size: a.patch_size,
            ..small.unet.clone()
        },
        ..small
    };
    tessera::random::manual_seed(a.seed);
    let tokenizer = PromptTokenizer::new(&a.tokens, &caption_lines())?;
    let model = TextToImage::new(config, tokenizer, device)?;
    let ckpt = a.out.join(CHECKPOINT_FILE);
    let cfg = DiffusionTrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        ema_decay: a.ema_decay,
        checkpoint: Some(ckpt.clone()),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        stop_at: None,
        progress: !a.json,
        timesteps: TimestepSampling::from_name(&a.timesteps, a.timestep_mean, a.timestep_std)?,
    };
    let r = train_diffusion(&model, &cfg)?;
    let samples = if a.no_samples {
        None
    } else {
        let prompts = [
            "a red circle",
            "a blue square",
            "a green triangle",
            "a yellow cross",
            "a purple diamond",
            "an orange circle",
        ];
        let path = a.out.join("samples.png");
        let opts = SampleOpts::default();
        write_samples(&ckpt, &prompts, 6, &opts, true, device, &path, a.json)?;
        Some(path)
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "diffusion", "steps": r.steps, "start_step": r.start_step,
                "batch_size": a.batch_size, "first_loss": r.first_loss,
                "final_loss": r.final_loss, "seconds": r.seconds,
                "images_per_second": r.images_per_second, "parameters": r.parameters,
                "checkpoint": ckpt.display().to_string(),
                "samples": samples.map(|p| p.display().to_string()),
            })
        );
    } else {
        println!(
            "steps {} (from {}) | loss {:.4} -> {:.4} | {:.1} s, {:.1} images/s | {} parameters | checkpoint {}{}",
            r.steps,
            r.start_step,
            r.first_loss,
            r.final_loss,
            r.seconds,
            r.images_per_second,
            r.parameters,
            ckpt.display(),
            samples.map(|p| format!(" | samples {}", p.display())).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn sample(a: &SampleDiffusionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let opts = SampleOpts {
        sampler: match a.sampler {
            SamplerArg::Ddpm => Sampler::Ddpm,
            SamplerArg::Ddim => Sampler::Ddim,
        },
        steps: a.steps,
        eta: a.eta,
        guidance: a.guidance,
        seed: a.seed,
        clip_x0: true,
    };
    let prompts: Vec<&str> = a.prompt.iter().map(|s| s.as_str()).collect();
    let t0 = std::time::Instant::now();
    write_samples(
        &a.ckpt, &prompts, a.count, &opts, !a.no_ema, device, &a.out, a.json,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "diffusion", "prompts": a.prompt, "count": a.count,
                "sampler": format!("{:?}", a.sampler).to_lowercase(), "steps": a.steps,
                "eta": a.eta, "guidance": a.guidance, "seed": a.seed,
                "seconds": t0.elapsed().as_secs_f64(), "out": a.out.display().to_string(),
            })
        );
    } else {
        println!(
            "wrote {} ({} prompts x {})",
            a.out.display(),
            prompts.len(),
            a.count
        );
    }
    Ok(())
}

/// Samples `count` pictures per prompt from the checkpoint and writes them as a PNG grid,
/// one row per prompt (each picture upscaled 2x).
#[allow(clippy::too_many_arguments)]
fn write_samples(
    ckpt: &Path,
    prompts: &[&str],
    count: usize,
    opts: &SampleOpts,
    use_ema: bool,
    device: tessera::Device,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    if count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let (model, _) = load_diffusion(ckpt, device, use_ema)?;
    let steps = match opts.sampler {
        Sampler::Ddpm => model.config.train_steps,
        Sampler::Ddim => opts.steps,
    };
    let pb = tessera::train::progress::bar(steps as u64, "sampling", !quiet);
    let images = model.sample(prompts, count, opts, || pb.inc(1))?;
    pb.finish_and_clear();
    let cells = (0..images.dims()[0])
        .map(|i| Ok(Image::from_tensor(&images.narrow(0, i, 1)?.squeeze(0)?)?.upscale(2)))
        .collect::<tessera::Result<Vec<_>>>()?;
    grid(&cells, count, 2, 255).write_png(out)?;
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct EvalDiffusionArgs {
    #[arg(long, default_value = "runs/diffusion/diffusion.safetensors")]
    pub ckpt: PathBuf,
    /// The shapes ResNet-18 (`tessera train resnet --dir DIR` writes DIR/resnet18.safetensors),
    /// trained at the model's image size.
    #[arg(long)]
    pub classifier: PathBuf,
    /// Pictures per held-out prompt (5 templates x 5 shapes x 6 colours = 150 prompts).
    #[arg(long, default_value_t = 2)]
    pub per_prompt: usize,
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim)]
    pub sampler: SamplerArg,
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: &EvalDiffusionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (model, step) = load_diffusion(&a.ckpt, device, true)?;
    let (classifier, classifier_size) =
        tessera::train::shapes_resnet::load_resnet(&a.classifier, device)?;
    let opts = SampleOpts {
        sampler: match a.sampler {
            SamplerArg::Ddpm => Sampler::Ddpm,
            SamplerArg::Ddim => Sampler::Ddim,
        },
        steps: a.steps,
        eta: 0.0,
        guidance: a.guidance,
        seed: a.seed,
        clip_x0: true,
    };
    let pb = tessera::train::progress::bar(150, "prompts", !a.json);
    let t0 = std::time::Instant::now();
    let r = tessera::diffusion::adherence::prompt_adherence(
        &model,
        &classifier,
        classifier_size,
        a.per_prompt,
        10,
        &opts,
        a.seed,
        |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )?;
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "diffusion", "checkpoint_step": step, "prompts": r.prompts,
                "images": r.images, "prompt_adherence": r.both_right,
                "shape_right": r.shape_right, "colour_right": r.colour_right,
                "frechet": r.frechet, "frechet_real_vs_real": r.frechet_real,
                "sampler": format!("{:?}", a.sampler).to_lowercase(), "steps": a.steps,
                "guidance": a.guidance, "seconds": t0.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "prompt adherence {:.1}% (shape {:.1}%, colour {:.1}%) over {} pictures of {} held-out prompts | Frechet distance {:.2} (real vs real {:.2}) | checkpoint step {}",
            100.0 * r.both_right,
            100.0 * r.shape_right,
            100.0 * r.colour_right,
            r.images,
            r.prompts,
            r.frechet,
            r.frechet_real,
            step
        );
    }
    Ok(())
}
