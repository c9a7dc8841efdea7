//! `tessera train resnet|caption|t2f`: the stages of the text-to-image-features pipeline, one
//! at a time, in a folder (default `tessera-demo`, the demo's): ResNet-18 on shapes, then the
//! captioner on its frozen features, then the text-to-feature model from the captioner.
//! `tessera train resnet --dataset fashion-mnist --data DIR` trains ResNet-18 instead as the
//! judge of Fashion-MNIST pictures for `tessera eval diffusion` (`train::classifier`).

use super::{resolve_device, DeviceArg};
use clap::Args;
use std::path::PathBuf;
use tessera::data::mnist::{load_dataset, DatasetName, Split};
use tessera::data::shapes::{caption_alphabet, RenderOpts, ShapesDataset};
use tessera::data::CharTokenizer;
use tessera::models::captioner::{Captioner, CaptionerConfig};
use tessera::models::resnet::{ResNet18, ResNetConfig, FEATURE_DIM};
use tessera::models::text_to_feature::TextToFeature;
use tessera::train::captioner::{load_captioner, train_captioner, SeqTrainConfig};
use tessera::train::classifier::{classifier_for, train_image_classifier, ClassifierTrainConfig};
use tessera::train::shapes_resnet::{
    extract_features, load_resnet, train_shapes_resnet, ResNetTrainConfig, NUM_OUTPUTS,
};
use tessera::train::t2f_pipeline::{CAPTIONER_FILE, RESNET_FILE, T2F_FILE};
use tessera::train::text_to_feature::train_text_to_feature;

#[derive(Args, Debug, Clone)]
pub struct StageArgs {
    /// Folder of the pipeline's checkpoints.
    #[arg(long, default_value = "tessera-demo")]
    pub dir: PathBuf,
    /// Optimizer steps (default: 300 for each shapes stage, 3000 for a Fashion-MNIST / MNIST
    /// ResNet-18).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Batch size (default: 16 for the ResNet, 32 for the sequence models).
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels (ResNet stage; later stages use the ResNet's). Fashion-MNIST and
    /// MNIST pictures are padded onto it, as the diffusion data is.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// ResNet stage: `shapes` (shape + colour, the pipeline's feature extractor) or
    /// `fashion-mnist` / `mnist` (one class per picture, read from `--data`: the judge of
    /// `tessera eval diffusion` on that dataset).
    #[arg(long, default_value = "shapes")]
    pub dataset: String,
    /// Folder with the IDX files (or with a `fashion-mnist/` / `mnist/` sub-folder).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Pictures whose features train the captioner / text-to-feature model.
    #[arg(long, default_value_t = 600)]
    pub pool: usize,
    /// Captioner width, heads and layers (the text-to-feature model inherits them).
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

fn pool_features(
    a: &StageArgs,
    device: tessera::Device,
) -> anyhow::Result<(ShapesDataset, tessera::Tensor)> {
    let path = a.dir.join(RESNET_FILE);
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: run `tessera train resnet --dir {}` first",
            path.display(),
            a.dir.display()
        );
    }
    let (resnet, size) = load_resnet(&path, device)?;
    let pool = ShapesDataset::generate(a.pool, &RenderOpts::new(size), a.seed ^ 0x9001, device)?;
    let f = extract_features(&resnet, &pool.images, 50)?;
    Ok((pool, f))
}

fn seq_cfg(a: &StageArgs, default_steps: u64, file: &str) -> SeqTrainConfig {
    SeqTrainConfig {
        steps: a.steps.unwrap_or(default_steps),
        batch_size: a.batch.unwrap_or(32),
        lr: a.lr.unwrap_or(3e-3),
        seed: a.seed,
        checkpoint: Some(a.dir.join(file)),
        progress: !a.json,
    }
}

fn finish(a: &StageArgs, model: &str, j: serde_json::Value) {
    if a.json {
        let mut j = j;
        j["model"] = model.into();
        println!("{j}");
    } else {
        println!("{model}: {j}");
    }
}

pub fn resnet(a: &StageArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let dataset = DatasetName::parse(&a.dataset)?;
    std::fs::create_dir_all(&a.dir).map_err(|e| tessera::Error::io(&a.dir, e))?;
    tessera::random::manual_seed(a.seed);
    if dataset != DatasetName::Shapes {
        return class_resnet(a, dataset, device);
    }
    let m = ResNet18::new(
        ResNetConfig {
            num_classes: NUM_OUTPUTS,
            small_input: false,
            in_channels: 3,
        },
        device,
    )?;
    let path = a.dir.join(RESNET_FILE);
    let r = train_shapes_resnet(
        &m,
        &ResNetTrainConfig {
            steps: a.steps.unwrap_or(300),
            batch_size: a.batch.unwrap_or(16),
            lr: a.lr.unwrap_or(1.5e-3),
            seed: a.seed,
            image_size: a.image_size,
            checkpoint: Some(path.clone()),
            progress: !a.json,
            ..Default::default()
        },
    )?;
    finish(
        a,
        "resnet18",
        serde_json::json!({"dataset": "shapes", "steps": r.steps, "first_loss": r.first_loss, "final_loss": r.final_loss,
            "accuracy": r.accuracy, "seconds": r.seconds, "images_per_second": r.images_per_second,
            "checkpoint": path.display().to_string()}),
    );
    Ok(())
}

/// `tessera train resnet --dataset fashion-mnist|mnist`: a classifier of the real pictures.
fn class_resnet(
    a: &StageArgs,
    dataset: DatasetName,
    device: tessera::Device,
) -> anyhow::Result<()> {
    let train = load_dataset(dataset, &a.data, Split::Train)?;
    let test = load_dataset(dataset, &a.data, Split::Test)?;
    let m = classifier_for(&train, device)?;
    let path = a.dir.join(RESNET_FILE);
    let defaults = ClassifierTrainConfig::default();
    let r = train_image_classifier(
        &m,
        &train,
        &test,
        &ClassifierTrainConfig {
            steps: a.steps.unwrap_or(defaults.steps),
            batch_size: a.batch.unwrap_or(defaults.batch_size),
            lr: a.lr.unwrap_or(defaults.lr),
            seed: a.seed,
            image_size: a.image_size,
            checkpoint: Some(path.clone()),
            progress: !a.json,
            ..defaults
        },
    )?;
    finish(
        a,
        "resnet18",
        serde_json::json!({"dataset": dataset.as_str(), "image_size": a.image_size,
            "channels": train.channels, "steps": r.steps, "batch_size": a.batch.unwrap_or(defaults.batch_size),
            "first_loss": r.first_loss, "final_loss": r.final_loss,
            "test_accuracy": r.test_accuracy, "test_images": r.test_images,
            "seconds": r.seconds, "images_per_second": r.images_per_second,
            "checkpoint": path.display().to_string()}),
    );
    Ok(())
}

pub fn caption(a: &StageArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (pool, f) = pool_features(a, device)?;
    tessera::random::manual_seed(a.seed.wrapping_add(1));
    let tokenizer = CharTokenizer::from_text(&caption_alphabet());
    let m = Captioner::new(
        CaptionerConfig {
            dim: a.dim,
            num_heads: a.heads,
            num_layers: a.layers,
            ..CaptionerConfig::small(tokenizer.vocab_size(), FEATURE_DIM)
        },
        device,
    )?;
    let cfg = seq_cfg(a, 300, CAPTIONER_FILE);
    let r = train_captioner(&m, &tokenizer, &f, &pool.labels, &cfg)?;
    finish(
        a,
        "captioner",
        serde_json::json!({"steps": r.steps, "first_loss": r.first_loss, "final_loss": r.final_loss,
            "seconds": r.seconds, "steps_per_second": r.steps_per_second,
            "checkpoint": a.dir.join(CAPTIONER_FILE).display().to_string()}),
    );
    Ok(())
}

pub fn t2f(a: &StageArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let cap_path = a.dir.join(CAPTIONER_FILE);
    if !cap_path.exists() {
        anyhow::bail!(
            "{} does not exist: run `tessera train caption --dir {}` first",
            cap_path.display(),
            a.dir.display()
        );
    }
    let (captioner, tokenizer) = load_captioner(&cap_path, device)?;
    let (pool, f) = pool_features(a, device)?;
    let m = TextToFeature::from_captioner(&captioner, device)?;
    let cfg = seq_cfg(a, 300, T2F_FILE);
    let r = train_text_to_feature(&m, &tokenizer, &f, &pool.labels, &cfg)?;
    finish(
        a,
        "text_to_feature",
        serde_json::json!({"steps": r.steps, "first_loss": r.first_loss, "final_loss": r.final_loss,
            "seconds": r.seconds, "steps_per_second": r.steps_per_second,
            "checkpoint": a.dir.join(T2F_FILE).display().to_string()}),
    );
    Ok(())
}
