//! `tessera train diffusion` and `tessera sample diffusion`: the text-to-image diffusion model
//! on the built-in shapes or Fashion-MNIST (32x32), conditioned on text or (unCLIP) on CLIP
//! image embeddings, and PNG grids of its pictures, one row per prompt.

use super::{resolve_device, DeviceArg};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tessera::data::PromptTokenizer;
use tessera::diffusion::unclip::{ClipImageConditioner, ClipInput};
use tessera::diffusion::Conditioner;
use tessera::diffusion::{
    BetaSchedule, DiffusionConfig, Prediction, SampleOpts, Sampler, TextToImage,
};
use tessera::io::{grid, Image};
use tessera::train::diffusion::{
    load_diffusion_with_dataset, train_diffusion_on, DiffusionTrainConfig, TimestepSampling,
};
use tessera::train::diffusion_data::DiffusionData;
use tessera::train::prior::{train_prior, PriorReport, PriorTrainConfig};

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
    /// Parts each batch is cut into and run side by side, one forward and backward each,
    /// their gradients added (data parallelism inside a step; default 2 on the CPU, where a
    /// small U-Net's ops are too short to split between cores, and 1 on a GPU). The results
    /// depend on this, not on `--threads`.
    #[arg(long)]
    pub micro_batches: Option<usize>,
    /// Continue from the checkpoint in `--out` if it exists.
    #[arg(long)]
    pub resume: bool,
    /// `shapes` (built in, RGB) or `fashion-mnist` (IDX files under `--data`, gray, padded
    /// from 28 to 32 pixels).
    #[arg(long, default_value = "shapes")]
    pub dataset: String,
    /// Folder with the Fashion-MNIST IDX files (or with a `fashion-mnist/` sub-folder).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// What the U-Net is conditioned on: `text` (a jointly trained text encoder) or
    /// `clip-image` (unCLIP: the frozen CLIP image embedding of the picture in training, the
    /// prior's prediction from the prompt at sampling; needs `--clip`).
    #[arg(long, value_enum, default_value_t = ConditioningArg::Text)]
    pub conditioning: ConditioningArg,
    /// The CLIP checkpoint for `--conditioning clip-image`, trained on the same dataset
    /// (`tessera train clip --dataset shapes`); its weights are copied into the checkpoint.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Training steps of the unCLIP prior (before the decoder).
    #[arg(long, default_value_t = 1500)]
    pub prior_steps: u64,
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
pub enum ConditioningArg {
    Text,
    ClipImage,
}

impl ConditioningArg {
    fn name(self) -> &'static str {
        match self {
            ConditioningArg::Text => "text",
            ConditioningArg::ClipImage => "clip-image",
        }
    }
}

/// The conditioning a loaded model has.
fn conditioning_of(model: &TextToImage) -> ConditioningArg {
    match model.text {
        Conditioner::ClipImage(_) => ConditioningArg::ClipImage,
        _ => ConditioningArg::Text,
    }
}

/// An error when `--conditioning` was given and the checkpoint has another.
fn check_conditioning(
    asked: Option<ConditioningArg>,
    model: &TextToImage,
    ckpt: &Path,
) -> anyhow::Result<()> {
    let has = conditioning_of(model);
    match asked {
        Some(a) if a != has => anyhow::bail!(
            "{}: the checkpoint is conditioned on {}, not {} (the conditioning is chosen in training)",
            ckpt.display(),
            has.name(),
            a.name()
        ),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ancestral sampling over every training step (ignores --steps).
    Ddpm,
    /// DDIM in --steps steps, with --eta of fresh noise.
    Ddim,
    /// PNDM's pseudo linear multistep in --steps steps (deterministic; --steps + 1 network calls).
    Pndm,
}

impl SamplerArg {
    pub fn sampler(self) -> Sampler {
        match self {
            SamplerArg::Ddpm => Sampler::Ddpm,
            SamplerArg::Ddim => Sampler::Ddim,
            SamplerArg::Pndm => Sampler::Pndm,
        }
    }
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
    /// DDIM or PNDM steps (DDPM runs every training step).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM's eta (0 = deterministic; PNDM takes only 0).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
    /// Pictures per prompt (the grid's columns).
    #[arg(long, visible_alias = "n", default_value_t = 8)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw trained weights instead of their EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Checks that the checkpoint has this conditioning (it is fixed in training).
    #[arg(long, value_enum)]
    pub conditioning: Option<ConditioningArg>,
    #[arg(long, default_value = "grid.png")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn train(a: &TrainDiffusionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    if a.conditioning == ConditioningArg::Text && a.clip.is_some() {
        anyhow::bail!("--clip is only read with --conditioning clip-image");
    }
    let data = DiffusionData::named(&a.dataset, &a.data)?;
    std::fs::create_dir_all(&a.out).map_err(|e| tessera::Error::io(&a.out, e))?;
    let small = DiffusionConfig::small();
    let config = DiffusionConfig {
        schedule: BetaSchedule::from_name(&a.schedule)?,
        prediction: Prediction::from_name(&a.prediction)?,
        unet: tessera::models::unet::UNetConfig {
            in_channels: data.channels(),
            out_channels: data.channels(),
            base_channels: a.base_channels,
            attention_levels: a.attention_levels.clone(),
            patch_size: a.patch_size,
            ..small.unet.clone()
        },
        ..small
    };
    tessera::random::manual_seed(a.seed);
    let ckpt = a.out.join(CHECKPOINT_FILE);
    let mut prior_report = None;
    let model = match a.conditioning {
        ConditioningArg::Text => {
            let tokenizer = PromptTokenizer::new(&a.tokens, &data.caption_text())?;
            TextToImage::new(config, tokenizer, device)?
        }
        ConditioningArg::ClipImage => {
            let cond = clip_image_conditioner(a, &data, config.text_dim, device)?;
            // A resumed run takes its prior (and CLIP) from the checkpoint.
            if !(a.resume && ckpt.exists()) {
                let cfg = PriorTrainConfig {
                    steps: a.prior_steps,
                    seed: a.seed,
                    progress: !a.json,
                    ..Default::default()
                };
                let r = train_prior(&cond, &data, config.image_size, &cfg)?;
                if !a.json {
                    print_prior(&r);
                }
                prior_report = Some(r);
            }
            TextToImage::with_conditioner(config, Conditioner::ClipImage(Box::new(cond)), device)?
        }
    };
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
        micro_batches: a.micro_batches,
    };
    let r = train_diffusion_on(&model, &data, &cfg)?;
    let samples = if a.no_samples {
        None
    } else {
        let prompts = data.sample_prompts();
        let prompts: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let path = a.out.join("samples.png");
        let opts = SampleOpts::default();
        write_samples(&ckpt, &prompts, 6, &opts, true, device, &path, a.json, None)?;
        Some(path)
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "diffusion", "dataset": data.name(),
                "conditioning": a.conditioning.name(),
                "prior": prior_report.as_ref().map(prior_json),
                "steps": r.steps, "start_step": r.start_step,
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
        sampler: a.sampler.sampler(),
        steps: a.steps,
        eta: a.eta,
        guidance: a.guidance,
        seed: a.seed,
        clip_x0: true,
    };
    let prompts: Vec<&str> = a.prompt.iter().map(|s| s.as_str()).collect();
    let t0 = std::time::Instant::now();
    let train_steps = write_samples(
        &a.ckpt,
        &prompts,
        a.count,
        &opts,
        !a.no_ema,
        device,
        &a.out,
        a.json,
        a.conditioning,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "diffusion", "prompts": a.prompt, "count": a.count,
                "sampler": opts.sampler.name(), "steps": a.steps,
                "network_calls": opts.network_calls(train_steps),
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
/// one row per prompt (each picture upscaled 2x). Returns the model's training steps.
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
    conditioning: Option<ConditioningArg>,
) -> anyhow::Result<usize> {
    if count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let (model, _, _) = load_diffusion_with_dataset(ckpt, device, use_ema)?;
    check_conditioning(conditioning, &model, ckpt)?;
    let steps = opts.denoising_steps(model.config.train_steps);
    let pb = tessera::train::progress::bar(steps as u64, "sampling", !quiet);
    let images = model.sample(prompts, count, opts, || pb.inc(1))?;
    pb.finish_and_clear();
    let cells = (0..images.dims()[0])
        .map(|i| Ok(Image::from_tensor(&images.narrow(0, i, 1)?.squeeze(0)?)?.upscale(2)))
        .collect::<tessera::Result<Vec<_>>>()?;
    grid(&cells, count, 2, 255).write_png(out)?;
    Ok(model.config.train_steps)
}

#[derive(Args, Debug, Clone)]
pub struct EvalDiffusionArgs {
    #[arg(long, default_value = "runs/diffusion/diffusion.safetensors")]
    pub ckpt: PathBuf,
    /// The judge, a ResNet-18 trained on real pictures of the checkpoint's dataset at the
    /// model's image size: `tessera train resnet --dir DIR [--dataset fashion-mnist --data
    /// DIR]` writes DIR/resnet18.safetensors.
    #[arg(long)]
    pub classifier: PathBuf,
    /// Pictures per prompt (default 2 for the shapes' 150 held-out prompts, 5 templates x 5
    /// shapes x 6 colours; 50 for the 10 Fashion-MNIST class captions).
    #[arg(long)]
    pub per_prompt: Option<usize>,
    /// Judge only this many of the prompts, evenly spread (default: all).
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Folder with the Fashion-MNIST IDX files, for a Fashion-MNIST checkpoint: its test split
    /// gives the real pictures of the Frechet distance.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim)]
    pub sampler: SamplerArg,
    /// DDIM or PNDM steps (DDPM runs every training step).
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// DDIM's eta (0 = deterministic, 1 = as much fresh noise per step as DDPM; PNDM takes only 0).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checks that the checkpoint has this conditioning (it is fixed in training).
    #[arg(long, value_enum)]
    pub conditioning: Option<ConditioningArg>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: &EvalDiffusionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (model, step, dataset) = load_diffusion_with_dataset(&a.ckpt, device, true)?;
    check_conditioning(a.conditioning, &model, &a.ckpt)?;
    let opts = SampleOpts {
        sampler: a.sampler.sampler(),
        steps: a.steps,
        eta: a.eta,
        guidance: a.guidance,
        seed: a.seed,
        clip_x0: true,
    };
    let common = serde_json::json!({
        "model": "diffusion", "dataset": dataset,
        "conditioning": conditioning_of(&model).name(), "checkpoint_step": step,
        "sampler": opts.sampler.name(), "steps": a.steps,
        "network_calls": opts.network_calls(model.config.train_steps),
        "eta": a.eta, "guidance": a.guidance,
    });
    match dataset.as_str() {
        "shapes" => eval_shapes(a, &model, step, &opts, common, device),
        "fashion-mnist" => eval_classes(a, &model, step, &dataset, &opts, common, device),
        other => anyhow::bail!(
            "{}: trained on {other}; prompt adherence is defined for shapes and fashion-mnist",
            a.ckpt.display()
        ),
    }
}

/// A progress bar over prompts, sized by the first report.
fn prompt_bar(json: bool) -> (indicatif::ProgressBar, impl Fn(usize, usize)) {
    let pb = tessera::train::progress::bar(0, "prompts", !json);
    let handle = pb.clone();
    (pb, move |done: usize, total: usize| {
        handle.set_length(total as u64);
        handle.set_position(done as u64);
    })
}

/// The shapes: 150 held-out prompts, shape and colour read by the shapes ResNet-18.
fn eval_shapes(
    a: &EvalDiffusionArgs,
    model: &TextToImage,
    step: u64,
    opts: &SampleOpts,
    mut common: serde_json::Value,
    device: tessera::Device,
) -> anyhow::Result<()> {
    let (classifier, classifier_size) =
        tessera::train::shapes_resnet::load_resnet(&a.classifier, device)?;
    let (pb, on_batch) = prompt_bar(a.json);
    let t0 = std::time::Instant::now();
    let r = tessera::diffusion::adherence::prompt_adherence(
        model,
        &classifier,
        classifier_size,
        a.per_prompt.unwrap_or(2),
        10,
        a.prompts,
        opts,
        a.seed,
        on_batch,
    )?;
    pb.finish_and_clear();
    if a.json {
        let figures = serde_json::json!({
            "prompts": r.prompts, "held_out_captions": true,
            "images": r.images, "prompt_adherence": r.both_right,
            "shape_right": r.shape_right, "colour_right": r.colour_right,
            "frechet": r.frechet, "frechet_real_vs_real": r.frechet_real,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        merge(&mut common, figures);
        println!("{common}");
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

/// A class-captioned dataset (Fashion-MNIST): one prompt per class caption, read by a
/// ResNet-18 trained on the real pictures; real pictures from the test split.
fn eval_classes(
    a: &EvalDiffusionArgs,
    model: &TextToImage,
    step: u64,
    dataset: &str,
    opts: &SampleOpts,
    mut common: serde_json::Value,
    device: tessera::Device,
) -> anyhow::Result<()> {
    use tessera::data::mnist::{load_dataset, DatasetName, Split};
    let (classifier, info) =
        tessera::train::classifier::load_judge(&a.classifier, dataset, device)?;
    let held_out = load_dataset(DatasetName::parse(dataset)?, &a.data, Split::Test)?;
    let per_prompt = a.per_prompt.unwrap_or(50);
    let (pb, on_batch) = prompt_bar(a.json);
    let t0 = std::time::Instant::now();
    let r = tessera::diffusion::class_adherence::class_prompt_adherence(
        model,
        &classifier,
        info.image_size,
        &held_out,
        per_prompt,
        (100 / per_prompt).max(1),
        a.prompts,
        opts,
        a.seed,
        on_batch,
    )?;
    pb.finish_and_clear();
    let judged: Vec<usize> = (0..r.captions.len())
        .filter(|&c| r.class_images(c) > 0)
        .collect();
    if a.json {
        let per_class: serde_json::Map<String, serde_json::Value> = judged
            .iter()
            .map(|&c| {
                let confused = r.most_confused_with(c);
                (
                    r.captions[c].clone(),
                    serde_json::json!({
                        "images": r.class_images(c), "adherence": r.class_adherence(c),
                        "most_confused_with": confused.map(|(s, _)| r.captions[s].clone()),
                        "confused_share": confused.map(|(_, f)| f),
                    }),
                )
            })
            .collect();
        let figures = serde_json::json!({
            "prompts": r.prompts, "held_out_captions": false,
            "images": r.images, "prompt_adherence": r.adherence,
            "per_class": per_class, "confusion": r.confusion,
            "frechet": r.frechet, "frechet_real_vs_real": r.frechet_real,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        merge(&mut common, figures);
        println!("{common}");
    } else {
        for &c in &judged {
            let confused = r
                .most_confused_with(c)
                .map(|(s, f)| {
                    format!(
                        " (most often taken for {:?}: {:.0}%)",
                        r.captions[s],
                        100.0 * f
                    )
                })
                .unwrap_or_default();
            println!(
                "{:<28} {:5.1}% of {}{confused}",
                r.captions[c],
                100.0 * r.class_adherence(c).unwrap_or(0.0),
                r.class_images(c)
            );
        }
        println!(
            "prompt adherence {:.1}% over {} pictures of {} class captions (the training captions: {dataset} has no held-out phrasing) | Frechet distance {:.2} (real vs real {:.2}) | checkpoint step {}",
            100.0 * r.adherence,
            r.images,
            r.prompts,
            r.frechet,
            r.frechet_real,
            step
        );
    }
    Ok(())
}

/// Adds the fields of `more` (an object) to `into` (an object).
fn merge(into: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(more)) = (into.as_object_mut(), more) {
        into.extend(more);
    }
}

/// The unCLIP conditioner of `tessera train diffusion --conditioning clip-image`: the CLIP
/// checkpoint of `--clip` (checked against the dataset) with a fresh prior and projection.
fn clip_image_conditioner(
    a: &TrainDiffusionArgs,
    data: &DiffusionData,
    context_dim: usize,
    device: tessera::Device,
) -> anyhow::Result<ClipImageConditioner> {
    let Some(path) = &a.clip else {
        anyhow::bail!(
            "--conditioning clip-image needs --clip FILE: a CLIP checkpoint trained on the same data (`tessera train clip --dataset {} --ckpt FILE`)",
            data.name()
        );
    };
    let (clip, extra) = tessera::train::clip::load_clip(path, device)?;
    let trained_on = extra
        .get("dataset")
        .map(|s| s.as_str())
        .unwrap_or("fashion-mnist");
    if trained_on != data.name() {
        return Err(tessera::Error::file(
            path,
            format!(
                "CLIP was trained on {trained_on}, the decoder trains on {}; train CLIP with --dataset {}",
                data.name(),
                data.name()
            ),
        )
        .into());
    }
    if clip.config.vit.channels != data.channels() {
        return Err(tessera::Error::file(
            path,
            format!(
                "CLIP reads {}-channel pictures, {} has {}",
                clip.config.vit.channels,
                data.name(),
                data.channels()
            ),
        )
        .into());
    }
    let input = match data {
        DiffusionData::Shapes => ClipInput::Resize,
        DiffusionData::FashionMnist { .. } => ClipInput::CenterCrop,
    };
    let tokenizer = PromptTokenizer::new("word", &data.caption_text())?;
    Ok(ClipImageConditioner::new(
        clip,
        tokenizer,
        context_dim,
        input,
        device,
    )?)
}

fn prior_json(r: &PriorReport) -> serde_json::Value {
    serde_json::json!({
        "steps": r.steps, "first_loss": r.first_loss, "final_loss": r.final_loss,
        "seconds": r.seconds, "parameters": r.parameters,
        "held_out_cosine": r.held_out.cosine, "held_out_retrieval": r.held_out.retrieval,
        "clip_text_cosine": r.clip_text_baseline.cosine,
        "clip_text_retrieval": r.clip_text_baseline.retrieval,
    })
}

fn print_prior(r: &PriorReport) {
    println!(
        "prior: {} steps, mse {:.5} -> {:.5}, {:.1} s | held-out cosine {:.3}, retrieval {:.1}% (CLIP text embedding alone: cosine {:.3}, retrieval {:.1}%)",
        r.steps,
        r.first_loss,
        r.final_loss,
        r.seconds,
        r.held_out.cosine,
        100.0 * r.held_out.retrieval,
        r.clip_text_baseline.cosine,
        100.0 * r.clip_text_baseline.retrieval
    );
}
