//! `tessera train clip`, `tessera eval clip` and `tessera query clip`: contrastive training on
//! Fashion-MNIST / MNIST (IDX files from `--data`), zero-shot evaluation with a confusion
//! matrix, and text-to-image retrieval.

use super::{resolve_device, DeviceArg};
use clap::Args;
use std::path::{Path, PathBuf};
use tessera::data::mnist::{load_dataset, CaptionedImages, DatasetName, Split};
use tessera::models::clip::{Clip, ClipConfig, ContrastiveTargets};
use tessera::nn::Module;
use tessera::train::clip::{
    confusion_image, load_clip, matches_grid, retrieve, train_clip, zero_shot, ClipTrainConfig,
    ZeroShot,
};

#[derive(Args, Debug, Clone)]
pub struct TrainClipArgs {
    /// fashion-mnist, mnist or shapes.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Folder with the IDX files (or with a sub-folder named after the dataset).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// `seed` (the article's 65k-parameter model) or `default` (a stronger image tower).
    #[arg(long, default_value = "default")]
    pub config: String,
    /// Overrides of the configuration's image tower: patch side in pixels.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Overrides of the configuration's image tower: width.
    #[arg(long)]
    pub vit_width: Option<usize>,
    /// Overrides of the configuration's image tower: encoder blocks.
    #[arg(long)]
    pub vit_layers: Option<usize>,
    /// Overrides of the configuration's image tower: attention heads.
    #[arg(long)]
    pub vit_heads: Option<usize>,
    /// Epochs (default: 12 for seed, 10 for default). The default configuration decays the
    /// learning rate along a cosine; seed keeps it constant, as the article.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many steps (timing runs); the checkpoint can be resumed.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Use only the first N training images per class (quick runs).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Encode every image's caption as the article does (for like-for-like timing), instead
    /// of each distinct caption of a batch once (same loss and gradients, less work).
    #[arg(long)]
    pub encode_each_caption: bool,
    /// Shift each training image by up to this many pixels (random, zero-filled). 0, the
    /// article's way, is the default: 2 did not help a 10-epoch run (docs/PERF.md).
    #[arg(long, default_value_t = 0)]
    pub max_shift: usize,
    /// Which pairs the contrastive loss counts as matches: `diagonal` (the article's: image i
    /// with caption i only) or `same-caption` (every image with its caption's text; UniCL).
    /// Default: diagonal (same-caption scored 0.8774 against diagonal's 0.8821 in a 9-epoch
    /// run of the default configuration; docs/PERF.md).
    #[arg(long, value_enum)]
    pub targets: Option<TargetsArg>,
    /// Checkpoint, written atomically after every epoch.
    #[arg(long, default_value = "runs/clip.safetensors")]
    pub ckpt: PathBuf,
    /// Continue from `--ckpt` if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Zero-shot accuracy only at the end, not after every epoch.
    #[arg(long)]
    pub no_epoch_eval: bool,
    /// Where the test set's confusion matrix is written.
    #[arg(long, default_value = "runs/clip_confusion.png")]
    pub confusion: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print one final JSON line with the figures (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct EvalClipArgs {
    #[arg(long, default_value = "runs/clip.safetensors")]
    pub ckpt: PathBuf,
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// The dataset (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long, default_value = "runs/clip_confusion.png")]
    pub confusion: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct QueryClipArgs {
    #[arg(long, default_value = "runs/clip.safetensors")]
    pub ckpt: PathBuf,
    /// The text to search for, e.g. "An image of a sneaker".
    #[arg(long)]
    pub prompt: String,
    /// The images searched: `test` or `train` split of the checkpoint's dataset.
    #[arg(long, default_value = "test")]
    pub gallery: String,
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// How many images to return.
    #[arg(long, default_value_t = 16)]
    pub top: usize,
    /// The best matches as a PNG grid.
    #[arg(long, default_value = "runs/clip_query.png")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| tessera::Error::io(dir, e))?;
    }
    Ok(())
}

pub fn train(a: &TrainClipArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let name = DatasetName::parse(&a.dataset)?;
    let mut train_set = load_dataset(name, &a.data, Split::Train)?;
    if let Some(k) = a.per_class {
        train_set = train_set.per_class_subset(k);
    }
    let test_set = load_dataset(name, &a.data, Split::Test)?;
    let mut config = ClipConfig::named(&a.config)?.for_images(train_set.channels, train_set.height);
    let v = &mut config.vit;
    v.patch_size = a.patch_size.unwrap_or(v.patch_size);
    v.width = a.vit_width.unwrap_or(v.width);
    v.num_layers = a.vit_layers.unwrap_or(v.num_layers);
    v.num_heads = a.vit_heads.unwrap_or(v.num_heads);
    let epochs = a.epochs.unwrap_or(if a.config == "seed" { 12 } else { 10 });
    tessera::random::manual_seed(a.seed);
    let model = Clip::new(config, device)?;
    create_parent(&a.ckpt)?;
    let mut extra = std::collections::HashMap::new();
    extra.insert("dataset".to_string(), name.as_str().to_string());
    extra.insert("config_name".to_string(), a.config.clone());
    let steps_per_epoch = train_set.len().div_ceil(a.batch.max(1)) as u64;
    let targets = match a.targets {
        Some(TargetsArg::Diagonal) => ContrastiveTargets::Diagonal,
        Some(TargetsArg::SameCaption) => ContrastiveTargets::SameCaption,
        None => ContrastiveTargets::Diagonal,
    };
    extra.insert("targets".to_string(), format!("{targets:?}"));
    let cfg = ClipTrainConfig {
        epochs,
        batch_size: a.batch,
        lr: a.lr,
        cosine_decay: a.config != "seed",
        seed: a.seed,
        checkpoint: Some(a.ckpt.clone()),
        checkpoint_every: None,
        resume: a.resume,
        stop_at_step: a.steps,
        eval_every_epoch: !a.no_epoch_eval,
        encode_each_caption: a.encode_each_caption,
        max_shift: a.max_shift,
        targets,
        progress: !a.json,
        extra,
    };
    let r = train_clip(&model, &train_set, &test_set, &cfg)?;
    write_confusion(&r.zero_shot, &test_set, &a.confusion)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "clip",
                "dataset": name.as_str(),
                "config": a.config,
                "zero_shot_accuracy": r.zero_shot.accuracy,
                "per_class_accuracy": r.zero_shot.per_class,
                "epochs": r.epochs,
                "steps": r.steps,
                "start_step": r.start_step,
                "steps_per_epoch": steps_per_epoch,
                "seconds": r.seconds,
                "ms_per_step": r.ms_per_step,
                "images_per_second": r.images_per_second,
                "epoch_losses": r.per_epoch.iter().map(|e| e.mean_loss).collect::<Vec<_>>(),
                "epoch_accuracy": r.per_epoch.iter().map(|e| e.zero_shot_accuracy).collect::<Vec<_>>(),
                "parameters": r.parameters,
                "checkpoint": a.ckpt.display().to_string(),
                "confusion_png": a.confusion.display().to_string(),
            })
        );
    } else {
        print_zero_shot(&r.zero_shot, &test_set);
        println!(
            "{} epochs ({} steps) | {:.1} s training, {:.1} ms/step, {:.0} images/s | {} parameters | checkpoint {} | confusion matrix {}",
            r.epochs,
            r.steps,
            r.seconds,
            r.ms_per_step,
            r.images_per_second,
            r.parameters,
            a.ckpt.display(),
            a.confusion.display()
        );
    }
    Ok(())
}

fn checkpoint_dataset(
    extra: &std::collections::HashMap<String, String>,
    asked: Option<&str>,
) -> anyhow::Result<DatasetName> {
    let name = asked
        .or(extra.get("dataset").map(|s| s.as_str()))
        .unwrap_or("fashion-mnist");
    Ok(DatasetName::parse(name)?)
}

pub fn eval(a: &EvalClipArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (model, extra) = load_clip(&a.ckpt, device)?;
    let name = checkpoint_dataset(&extra, a.dataset.as_deref())?;
    let test_set = load_dataset(name, &a.data, Split::Test)?;
    let t0 = std::time::Instant::now();
    let zs = zero_shot(&model, &test_set)?;
    let seconds = t0.elapsed().as_secs_f64();
    write_confusion(&zs, &test_set, &a.confusion)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": "clip",
                "dataset": name.as_str(),
                "zero_shot_accuracy": zs.accuracy,
                "per_class_accuracy": zs.per_class,
                "confusion": zs.confusion,
                "images": test_set.len(),
                "seconds": seconds,
                "parameters": model.num_parameters(),
                "confusion_png": a.confusion.display().to_string(),
            })
        );
    } else {
        print_zero_shot(&zs, &test_set);
        println!(
            "{} test images in {seconds:.2} s | confusion matrix {}",
            test_set.len(),
            a.confusion.display()
        );
    }
    Ok(())
}

pub(super) fn query(a: &QueryClipArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (model, extra) = load_clip(&a.ckpt, device)?;
    let name = checkpoint_dataset(&extra, None)?;
    let split = match a.gallery.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => anyhow::bail!("--gallery {other:?}: expected test or train"),
    };
    let gallery = load_dataset(name, &a.data, split)?;
    let t0 = std::time::Instant::now();
    let best = retrieve(&model, &gallery, &a.prompt, a.top)?;
    let seconds = t0.elapsed().as_secs_f64();
    write_grid(&gallery, &best, &a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prompt": a.prompt,
                "gallery": format!("{}/{}", name.as_str(), a.gallery),
                "matches": best.iter().map(|&(i, s)| serde_json::json!({
                    "index": i, "score": s, "label": gallery.labels[i],
                    "caption": gallery.class_captions[gallery.labels[i]],
                })).collect::<Vec<_>>(),
                "seconds": seconds,
                "png": a.out.display().to_string(),
            })
        );
    } else {
        for (rank, &(i, s)) in best.iter().enumerate() {
            println!(
                "{:>3}. image {i:>5}  score {s:.3}  ({})",
                rank + 1,
                gallery.class_captions[gallery.labels[i]]
            );
        }
        println!("grid written to {}", a.out.display());
    }
    Ok(())
}

fn print_zero_shot(zs: &ZeroShot, data: &CaptionedImages) {
    println!("zero-shot accuracy {:.4}", zs.accuracy);
    for (c, acc) in zs.per_class.iter().enumerate() {
        println!("  {:<30} {acc:.3}", data.class_captions[c]);
    }
}

fn write_confusion(zs: &ZeroShot, data: &CaptionedImages, path: &Path) -> anyhow::Result<()> {
    create_parent(path)?;
    confusion_image(zs, data)?.write_png(path)?;
    Ok(())
}

fn write_grid(gallery: &CaptionedImages, best: &[(usize, f64)], path: &Path) -> anyhow::Result<()> {
    create_parent(path)?;
    matches_grid(gallery, best)?.write_png(path)?;
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Zero-shot classification of a CLIP checkpoint on the test split.
    Clip(EvalClipArgs),
    /// Prompt adherence and a Frechet distance of a text-to-image diffusion checkpoint.
    Diffusion(super::diffusion::EvalDiffusionArgs),
}

pub fn run_eval(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Clip(a) => eval(&a),
        EvalCommand::Diffusion(a) => super::diffusion::eval(&a),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TargetsArg {
    Diagonal,
    SameCaption,
}
