//! `tessera demo`: the largest pipeline that exists, end to end on built-in data. Today: the
//! text-to-image-features pipeline (see `train::t2f_pipeline`): ResNet-18 learns the shapes
//! and is frozen, a captioner learns to caption its features, a text-to-feature model starts
//! from the captioner and learns to predict a prompt's picture features, and a prompt is
//! answered by the nearest gallery picture. Checkpoints are cached in the output folder, so
//! a second run only evaluates. Prints retrieval top-1 (held-out caption templates, a gallery
//! with every shape x colour) and caption accuracy, and writes a PNG grid of prompts beside
//! the pictures they retrieved.

use super::{resolve_device, DeviceArg};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera::data::shapes::{original_example, ShapeLabel};
use tessera::io::font::{draw_text, text_width, GLYPH_H};
use tessera::io::{grid, Image};
use tessera::models::retrieval::{nearest, Metric};
use tessera::train::shapes_resnet::extract_features;
use tessera::train::t2f_pipeline::{run_pipeline, Pipeline, PipelineConfig};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder: checkpoints (reused when present) and the retrieval grid.
    #[arg(long, default_value = "tessera-demo")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Retrieval metric: euclidean or cosine.
    #[arg(long, default_value = "euclidean")]
    pub metric: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// A grid row: the prompt as text, then the retrieved picture (enlarged); the text is green
/// when the picture has the prompt's shape and colour, red when not.
fn row(prompt: &str, picture: &Image, correct: bool, text_w: usize) -> Image {
    let pic = picture.upscale((64 / picture.width).max(1));
    let h = pic.height.max(GLYPH_H * 2 + 8);
    let mut img = Image::filled(text_w + 8 + pic.width, h, &[255, 255, 255]);
    let colour: [u8; 3] = if correct { [0, 110, 0] } else { [200, 0, 0] };
    draw_text(&mut img, 4, (h - GLYPH_H * 2) / 2, prompt, &colour, 2);
    img.paste(&pic, text_w + 8, (h - pic.height) / 2);
    img
}

fn write_grid(p: &Pipeline, rows: &[(String, usize, bool)], path: &Path) -> tessera::Result<()> {
    let text_w = rows
        .iter()
        .map(|(t, _, _)| text_width(t, 2))
        .max()
        .unwrap_or(0)
        + 8;
    let images: Vec<Image> = rows
        .iter()
        .map(|(prompt, i, ok)| {
            Ok(row(
                prompt,
                &Image::from_tensor(&p.gallery.image(*i)?)?,
                *ok,
                text_w,
            ))
        })
        .collect::<tessera::Result<_>>()?;
    grid(&images, 1, 4, 230).write_png(path)
}

/// The original example's seven prompts against its own three 64x64 pictures (pooled to the
/// ResNet's input size): how many retrieve the picture they name.
/// (hits, prompts, each prompt with the label of the picture it names).
type ExampleTop1 = (usize, usize, Vec<(String, ShapeLabel)>);

fn original_example_top1(p: &Pipeline, metric: Metric) -> tessera::Result<ExampleTop1> {
    let device = p.gallery.images.device();
    let ex = original_example(device)?;
    let f = 64 / p.gallery.image_size.max(1);
    let pooled = if f > 1 {
        ex.images.images.avg_pool2d((f, f), (f, f), (0, 0))?
    } else {
        ex.images.images.clone()
    };
    let feats = extract_features(&p.resnet, &pooled, 8)?;
    let prompts: Vec<&str> = ex.prompts.iter().map(|(s, _)| *s).collect();
    let pred = p.t2f.predict(&p.tokenizer, &prompts)?;
    let hits = nearest(&pred, &feats, metric)?
        .iter()
        .zip(&ex.prompts)
        .filter(|((m, _), (_, want))| m == want)
        .count();
    let named = ex
        .prompts
        .iter()
        .map(|(s, i)| (s.to_string(), ex.images.labels[*i]))
        .collect();
    Ok((hits, ex.prompts.len(), named))
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let device = resolve_device(a.device, a.json)?;
    let metric: Metric = a.metric.parse()?;
    let cfg = PipelineConfig {
        metric,
        seed: a.seed,
        progress: !a.json,
        ..Default::default()
    };
    if !a.json {
        eprintln!(
            "demo: text -> ResNet-18 features -> nearest picture, on built-in shapes (checkpoints in {})",
            a.out.display()
        );
    }
    let p = run_pipeline(&a.out, &cfg, device)?;
    let (orig_hits, orig_total, orig_prompts) = original_example_top1(&p, metric)?;

    // The grid: the original example's prompts answered from the full gallery, then one
    // held-out prompt per template for a spread of shapes and colours.
    let mut rows: Vec<(String, usize, bool)> = Vec::new();
    let gallery_pred = p.t2f.predict(
        &p.tokenizer,
        &orig_prompts
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
    )?;
    for ((prompt, want), (m, _)) in
        orig_prompts
            .iter()
            .zip(nearest(&gallery_pred, &p.gallery_features, metric)?)
    {
        let got = p.gallery.labels[m];
        rows.push((
            prompt.clone(),
            m,
            got.shape == want.shape && got.colour == want.colour,
        ));
    }
    for r in p.retrieval.iter().step_by(13).take(10) {
        rows.push((r.prompt.clone(), r.matched, r.correct));
    }
    let grid_path = a.out.join("retrieval_grid.png");
    write_grid(&p, &rows, &grid_path)?;
    let seconds = t0.elapsed().as_secs_f64();

    let stages: Vec<serde_json::Value> = p
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({"stage": s.name, "trained": s.trained, "seconds": s.seconds,
                "steps_per_second": s.steps_per_second})
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "retrieval_top1": p.retrieval_top1,
                "caption_accuracy": p.caption_accuracy,
                "seconds": seconds,
                "retrieval_prompts": p.retrieval.len(),
                "gallery": p.gallery.len(),
                "caption_images": p.captions.len(),
                "resnet_accuracy": p.resnet_accuracy,
                "original_example_top1": orig_hits as f64 / orig_total as f64,
                "stages": stages,
                "grid": grid_path.display().to_string(),
            })
        );
        return Ok(());
    }
    for s in &p.stages {
        let what = match (s.trained, s.steps_per_second) {
            (true, Some(r)) => format!("trained, {r:.1} steps/s"),
            (true, None) => "trained".to_string(),
            (false, _) if s.checkpoint.as_os_str().is_empty() => "computed".to_string(),
            (false, _) => format!("reused {}", s.checkpoint.display()),
        };
        println!("  {:<16} {:>6.1} s  {what}", s.name, s.seconds);
    }
    if let Some(acc) = p.resnet_accuracy {
        println!(
            "ResNet-18 shape+colour accuracy on fresh pictures: {:.1}%",
            100.0 * acc
        );
    }
    println!(
        "retrieval top-1 (held-out templates, {} prompts, gallery of {} pictures): {:.1}%",
        p.retrieval.len(),
        p.gallery.len(),
        100.0 * p.retrieval_top1
    );
    println!(
        "captions naming the right shape and colour ({} fresh pictures): {:.1}%",
        p.captions.len(),
        100.0 * p.caption_accuracy
    );
    println!("original example (7 prompts, 3 pictures): {orig_hits}/{orig_total} right");
    for (c, want) in p.captions.iter().take(4) {
        println!("  caption: \"{c}\"  (picture: {want})");
    }
    for r in p.retrieval.iter().filter(|r| !r.correct).take(12) {
        let got = p.gallery.labels[r.matched];
        println!(
            "  miss: \"{}\" -> {} {}",
            r.prompt,
            got.colour_name(),
            got.shape_name()
        );
    }
    println!(
        "grid of prompts and retrieved pictures: {}",
        grid_path.display()
    );
    println!("done in {seconds:.1} s");
    Ok(())
}
