//! `tessera demo`: text to image, end to end on the built-in shapes. By default ResNet-18
//! learns the shapes (the judge) and act 2 runs; `--retrieval` runs act 1 first.
//!
//! 1. Retrieval (`train::t2f_pipeline`): ResNet-18 learns the shapes and is frozen, a
//!    captioner learns to caption its features, a text-to-feature model starts from the
//!    captioner and learns to predict a prompt's picture features, and a prompt is answered
//!    by the nearest gallery picture. Prints retrieval top-1 (held-out caption templates, a
//!    gallery with every shape x colour) and caption accuracy; writes `retrieval_grid.png`.
//! 2. Generation (`train::diffusion_demo`): a text-conditional diffusion model learns to draw
//!    the shapes, draws a grid for a handful of prompts (`text_to_image_grid.png`, one row per
//!    prompt) and is judged by the ResNet-18 on the 150 held-out prompts: the prompt
//!    adherence (shape and colour right).
//!
//! Checkpoints are cached in the output folder, so a second run only evaluates.

use super::{resolve_device, DeviceArg};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera::data::shapes::{original_example, ShapeLabel};
use tessera::io::font::{draw_text, text_width, GLYPH_H};
use tessera::io::{grid, Image};
use tessera::models::retrieval::{nearest, Metric};
use tessera::train::diffusion_demo::{prepare_diffusion_demo, DiffusionDemoConfig, GridRow};
use tessera::train::shapes_resnet::extract_features;
use tessera::train::t2f_pipeline::{
    resnet_stage, run_pipeline, Pipeline, PipelineConfig, StageReport,
};

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
    /// Also run act 1, retrieval: a captioner and a text-to-feature model on the ResNet-18's
    /// features, answering prompts with the nearest gallery picture (about 30 s more).
    #[arg(long)]
    pub retrieval: bool,
    /// Training steps of the text-to-image model (the demo's budget; fewer draw worse shapes).
    #[arg(long, default_value_t = DiffusionDemoConfig::default().steps)]
    pub diffusion_steps: u64,
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

/// The text-to-image grid: per row the prompt, then its pictures (enlarged), each over a bar
/// that is green when the ResNet-18 sees the prompt's shape and colour in it, red when not.
fn write_generated_grid(rows: &[GridRow], path: &Path) -> tessera::Result<()> {
    let text_w = rows
        .iter()
        .map(|r| text_width(&r.prompt, 2))
        .max()
        .unwrap_or(0)
        + 8;
    let mut lines = Vec::with_capacity(rows.len());
    for r in rows {
        let n = r.images.dims()[0];
        let pics = (0..n)
            .map(|i| Ok(Image::from_tensor(&r.images.narrow(0, i, 1)?.squeeze(0)?)?.upscale(2)))
            .collect::<tessera::Result<Vec<_>>>()?;
        let (pw, ph) = (pics[0].width, pics[0].height);
        let h = (ph + 6).max(GLYPH_H * 2 + 8);
        let mut line = Image::filled(text_w + n * (pw + 4), h, &[255, 255, 255]);
        draw_text(
            &mut line,
            4,
            (h - GLYPH_H * 2) / 2,
            &r.prompt,
            &[0, 0, 0],
            2,
        );
        for (i, (pic, &ok)) in pics.iter().zip(&r.correct).enumerate() {
            let x = text_w + i * (pw + 4);
            line.paste(pic, x, 0);
            let bar: [u8; 3] = if ok { [0, 150, 0] } else { [210, 0, 0] };
            line.paste(&Image::filled(pw, 3, &bar), x, ph + 2);
        }
        lines.push(line);
    }
    grid(&lines, 1, 4, 255).write_png(path)
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

/// Act 1's results: the pipeline, the original example's score and the grid's path.
struct RetrievalAct {
    p: Pipeline,
    orig_hits: usize,
    orig_total: usize,
    grid: PathBuf,
}

fn retrieval_act(
    a: &DemoArgs,
    cfg: &PipelineConfig,
    device: tessera::Device,
) -> anyhow::Result<RetrievalAct> {
    if !a.json {
        eprintln!("demo, act 1: text -> ResNet-18 features -> nearest picture");
    }
    let p = run_pipeline(&a.out, cfg, device)?;
    let (orig_hits, orig_total, orig_prompts) = original_example_top1(&p, cfg.metric)?;
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
            .zip(nearest(&gallery_pred, &p.gallery_features, cfg.metric)?)
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
    let grid = a.out.join("retrieval_grid.png");
    write_grid(&p, &rows, &grid)?;
    Ok(RetrievalAct {
        p,
        orig_hits,
        orig_total,
        grid,
    })
}

fn stage_json(s: &StageReport) -> serde_json::Value {
    serde_json::json!({"stage": s.name, "trained": s.trained, "seconds": s.seconds,
        "steps_per_second": s.steps_per_second})
}

fn stage_line(s: &StageReport) -> String {
    let what = match (s.trained, s.steps_per_second) {
        (true, Some(r)) => format!("trained, {r:.1} steps/s"),
        (true, None) => "trained".to_string(),
        (false, _) if s.checkpoint.as_os_str().is_empty() => "computed".to_string(),
        (false, _) => format!("reused {}", s.checkpoint.display()),
    };
    format!("  {:<16} {:>6.1} s  {what}", s.name, s.seconds)
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let device = resolve_device(a.device, a.json)?;
    let cfg = PipelineConfig {
        metric: a.metric.parse()?,
        seed: a.seed,
        progress: !a.json,
        ..Default::default()
    };
    if !a.json {
        eprintln!(
            "demo on the built-in shapes, checkpoints in {}",
            a.out.display()
        );
    }
    // Act 1 (with --retrieval), or only its ResNet-18: act 2's judge.
    let retrieval = if a.retrieval {
        Some(retrieval_act(&a, &cfg, device)?)
    } else {
        None
    };
    let dcfg = DiffusionDemoConfig {
        steps: a.diffusion_steps,
        seed: a.seed,
        progress: !a.json,
        ..Default::default()
    };
    let mut stages: Vec<StageReport> = Vec::new();
    let judge_alone;
    let (judge, resnet_accuracy, trained) = match &retrieval {
        Some(r) => {
            stages.extend(r.p.stages.iter().cloned());
            if !a.json {
                eprintln!(
                    "demo, act 2: text -> diffusion U-Net -> new pictures ({} training steps)",
                    dcfg.steps
                );
            }
            let trained = prepare_diffusion_demo(&a.out, &dcfg, device)?.train()?;
            (&r.p.resnet, r.p.resnet_accuracy, trained)
        }
        None => {
            if !a.json {
                eprintln!("demo: ResNet-18, the judge of the generated pictures");
            }
            let (m, acc, stage) = resnet_stage(&a.out, &cfg, device)?;
            stages.push(stage);
            judge_alone = m;
            if !a.json {
                eprintln!(
                    "demo: text -> diffusion U-Net -> new pictures ({} training steps)",
                    dcfg.steps
                );
            }
            let trained = prepare_diffusion_demo(&a.out, &dcfg, device)?.train()?;
            (&judge_alone, acc, trained)
        }
    };
    let d = trained.judge(&dcfg, judge, cfg.image_size, device)?;
    let generated_path = a.out.join("text_to_image_grid.png");
    write_generated_grid(&d.rows, &generated_path)?;
    let seconds = t0.elapsed().as_secs_f64();
    stages.push(StageReport {
        name: "diffusion",
        checkpoint: d.checkpoint.clone(),
        trained: d.trained,
        seconds: d.train_seconds,
        steps_per_second: d
            .training
            .as_ref()
            .map(|r| (r.steps - r.start_step) as f64 / r.seconds.max(1e-9)),
    });
    stages.push(StageReport {
        name: "diffusion-eval",
        checkpoint: PathBuf::new(),
        trained: false,
        seconds: d.eval_seconds,
        steps_per_second: None,
    });
    let adh = &d.adherence;

    if a.json {
        let r = retrieval.as_ref();
        println!(
            "{}",
            serde_json::json!({
                "prompt_adherence": adh.both_right,
                "shape_right": adh.shape_right,
                "colour_right": adh.colour_right,
                "adherence_images": adh.images,
                "frechet": adh.frechet,
                "frechet_real_vs_real": adh.frechet_real,
                "diffusion_steps": dcfg.steps,
                "diffusion_parameters": d.parameters,
                "resnet_accuracy": resnet_accuracy,
                "retrieval_top1": r.map(|r| r.p.retrieval_top1),
                "caption_accuracy": r.map(|r| r.p.caption_accuracy),
                "retrieval_prompts": r.map(|r| r.p.retrieval.len()),
                "gallery": r.map(|r| r.p.gallery.len()),
                "caption_images": r.map(|r| r.p.captions.len()),
                "original_example_top1": r.map(|r| r.orig_hits as f64 / r.orig_total as f64),
                "seconds": seconds,
                "stages": stages.iter().map(stage_json).collect::<Vec<_>>(),
                "grid": r.map(|r| r.grid.display().to_string()),
                "text_to_image_grid": generated_path.display().to_string(),
            })
        );
        return Ok(());
    }
    for s in &stages {
        println!("{}", stage_line(s));
    }
    if let Some(acc) = resnet_accuracy {
        println!(
            "ResNet-18 shape+colour accuracy on fresh pictures: {:.1}%",
            100.0 * acc
        );
    }
    if let Some(r) = &retrieval {
        let p = &r.p;
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
        println!(
            "original example (7 prompts, 3 pictures): {}/{} right",
            r.orig_hits, r.orig_total
        );
        for (c, want) in p.captions.iter().take(4) {
            println!("  caption: \"{c}\"  (picture: {want})");
        }
        for m in p.retrieval.iter().filter(|m| !m.correct).take(12) {
            let got = p.gallery.labels[m.matched];
            println!(
                "  miss: \"{}\" -> {} {}",
                m.prompt,
                got.colour_name(),
                got.shape_name()
            );
        }
        println!(
            "grid of prompts and retrieved pictures: {}",
            r.grid.display()
        );
    }
    println!(
        "text to image ({} steps, {} parameters): prompt adherence {:.1}% on {} held-out prompts (shape {:.1}%, colour {:.1}%), Frechet distance {:.1} (real vs real {:.1})",
        dcfg.steps,
        d.parameters,
        100.0 * adh.both_right,
        adh.images,
        100.0 * adh.shape_right,
        100.0 * adh.colour_right,
        adh.frechet,
        adh.frechet_real
    );
    println!(
        "grid of prompts and generated pictures: {}",
        generated_path.display()
    );
    println!("done in {seconds:.1} s");
    Ok(())
}
