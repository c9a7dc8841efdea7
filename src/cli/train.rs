//! `tessera train char`: trains the char-level transformer on a text file (or the built-in corpus).

use super::{resolve_device, DeviceArg};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tessera::data::{text, CharTokenizer};
use tessera::models::char_transformer::{CharTransformer, CharTransformerConfig};
use tessera::train::char_lm::{train_char_lm, CharLmReport, CharLmTrainConfig};

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// The char-level transformer language model.
    Char(CharArgs),
    /// CLIP (ViT + text transformer) on Fashion-MNIST / MNIST, evaluated zero-shot.
    Clip(super::clip::TrainClipArgs),
    /// ResNet-18 on the built-in shapes (shape + colour), frozen afterwards: the feature
    /// extractor; or (`--dataset fashion-mnist`) a classifier of real Fashion-MNIST pictures,
    /// the judge of `tessera eval diffusion` on that dataset.
    Resnet(super::t2f_train::StageArgs),
    /// The captioner (image features prefix a char transformer) on frozen ResNet features.
    Caption(super::t2f_train::StageArgs),
    /// The text-to-feature model, initialized from the captioner.
    T2f(super::t2f_train::StageArgs),
    /// The text-to-image diffusion model (U-Net + text encoder) on the shapes or Fashion-MNIST.
    Diffusion(super::diffusion::TrainDiffusionArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CharArgs {
    /// UTF-8 training text (default: the built-in corpus).
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 96)]
    pub dim: usize,
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Context length in characters.
    #[arg(long, default_value_t = 64)]
    pub block: usize,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint file, written atomically every `--checkpoint-every` steps and at the end.
    #[arg(long, default_value = "runs/char_lm.safetensors")]
    pub ckpt: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue from `--ckpt` if it exists.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print one final JSON line with the figures (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Char(a) => {
            let report = train_char(&a)?;
            print_report(&report, &a.ckpt, a.json);
            Ok(())
        }
        TrainCommand::Clip(a) => super::clip::train(&a),
        TrainCommand::Resnet(a) => super::t2f_train::resnet(&a),
        TrainCommand::Caption(a) => super::t2f_train::caption(&a),
        TrainCommand::T2f(a) => super::t2f_train::t2f(&a),
        TrainCommand::Diffusion(a) => super::diffusion::train(&a),
    }
}

pub fn train_char(a: &CharArgs) -> anyhow::Result<CharLmReport> {
    let device = resolve_device(a.device, a.json)?;
    let corpus = match &a.text {
        Some(p) => std::fs::read_to_string(p).map_err(|e| tessera::Error::io(p, e))?,
        None => text::builtin_corpus(),
    };
    tessera::random::manual_seed(a.seed);
    let tokenizer = CharTokenizer::from_text(&corpus);
    let config = CharTransformerConfig {
        vocab_size: tokenizer.vocab_size(),
        block_size: a.block,
        dim: a.dim,
        num_heads: a.heads,
        num_layers: a.layers,
        dropout: a.dropout,
        positional: tessera::models::char_transformer::Positional::Learned,
    };
    let model = CharTransformer::new(config, device)?;
    if let Some(dir) = a.ckpt.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| tessera::Error::io(dir, e))?;
    }
    let cfg = CharLmTrainConfig {
        steps: a.steps,
        batch_size: a.batch,
        lr: a.lr,
        min_lr: a.lr / 10.0,
        warmup_steps: (a.steps / 20).max(1),
        seed: a.seed,
        checkpoint: Some(a.ckpt.clone()),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        progress: !a.json,
        ..Default::default()
    };
    Ok(train_char_lm(&model, &tokenizer, &corpus, &cfg)?)
}

pub fn print_report(r: &CharLmReport, ckpt: &std::path::Path, json: bool) {
    if json {
        println!("{}", report_json(r, ckpt));
        return;
    }
    println!(
        "steps {} | loss {:.3} -> {:.3} (val {:.3}) | unigram entropy {:.3} nats/char | {:.1} s, {:.0} tokens/s | {} parameters | peak {:.1} MiB | checkpoint {}",
        r.steps,
        r.first_loss,
        r.final_train_loss,
        r.val_loss,
        r.unigram_entropy,
        r.seconds,
        r.tokens_per_second,
        r.parameters,
        r.peak_bytes as f64 / (1 << 20) as f64,
        ckpt.display()
    );
}

pub fn report_json(r: &CharLmReport, ckpt: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "model": "char_transformer",
        "steps": r.steps,
        "start_step": r.start_step,
        "first_loss": r.first_loss,
        "final_train_loss": r.final_train_loss,
        "val_loss": r.val_loss,
        "unigram_entropy": r.unigram_entropy,
        "seconds": r.seconds,
        "tokens_per_second": r.tokens_per_second,
        "parameters": r.parameters,
        "peak_bytes": r.peak_bytes,
        "checkpoint": ckpt.display().to_string(),
    })
}
