//! `tessera query t2f --prompt "a blue square shape"`: predicts the prompt's picture features
//! with a trained text-to-feature model and answers with the nearest picture of the built-in
//! gallery (every shape x colour), written as PNG. Loads checkpoints; never trains.

use super::{resolve_device, DeviceArg};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tessera::data::shapes::{RenderOpts, ShapesDataset};
use tessera::io::Image;
use tessera::models::retrieval::{nearest, Metric};
use tessera::train::shapes_resnet::{extract_features, load_resnet};
use tessera::train::t2f_pipeline::{RESNET_FILE, T2F_FILE};
use tessera::train::text_to_feature::load_text_to_feature;

#[derive(Subcommand, Debug)]
pub enum QueryCommand {
    /// Text to image features, answered by nearest-neighbour retrieval.
    T2f(QueryArgs),
    /// Text-to-image retrieval with a CLIP checkpoint.
    Clip(super::clip::QueryClipArgs),
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[arg(long)]
    pub prompt: String,
    /// Folder holding resnet18.safetensors and t2f.safetensors (the demo's output folder).
    #[arg(long, default_value = "tessera-demo")]
    pub dir: PathBuf,
    /// Where to write the matched picture.
    #[arg(long, default_value = "match.png")]
    pub out: PathBuf,
    /// euclidean or cosine.
    #[arg(long, default_value = "euclidean")]
    pub metric: String,
    /// The gallery holds every shape x colour this many times.
    #[arg(long, default_value_t = 1)]
    pub gallery_repeats: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: QueryCommand) -> anyhow::Result<()> {
    let a = match cmd {
        QueryCommand::T2f(a) => a,
        QueryCommand::Clip(a) => return super::clip::query(&a),
    };
    let device = resolve_device(a.device, a.json)?;
    let metric: Metric = a.metric.parse()?;
    let (resnet, size) = load_resnet(&a.dir.join(RESNET_FILE), device)?;
    let (t2f, tokenizer) = load_text_to_feature(&a.dir.join(T2F_FILE), device)?;
    let opts = RenderOpts::new(size);
    let gallery =
        ShapesDataset::every_combination(a.gallery_repeats, &opts, a.seed ^ 0x6A11, device)?;
    let features = extract_features(&resnet, &gallery.images, 50)?;
    let pred = t2f.predict(&tokenizer, &[a.prompt.as_str()])?;
    let (index, score) = nearest(&pred, &features, metric)?[0];
    let label = gallery.labels[index];
    Image::from_tensor(&gallery.image(index)?)?.write_png(&a.out)?;
    let unknown = tokenizer
        .encode(&a.prompt)
        .iter()
        .filter(|&&id| id == tessera::data::tokenizer::UNK)
        .count();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prompt": a.prompt, "match": index, "shape": label.shape_name(),
                "colour": label.colour_name(), "score": score, "metric": a.metric,
                "unknown_chars": unknown, "out": a.out.display().to_string(),
            })
        );
    } else {
        if unknown > 0 {
            eprintln!("note: {unknown} character(s) of the prompt are not in the vocabulary (read as <UNK>)");
        }
        println!(
            "\"{}\" -> gallery picture {index}: a {} {} ({} score {score:.3}); written to {}",
            a.prompt,
            label.colour_name(),
            label.shape_name(),
            a.metric,
            a.out.display()
        );
    }
    Ok(())
}
