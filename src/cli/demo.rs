//! `tessera demo`: the largest pipeline that exists so far, on built-in data. Today: train the
//! char-level transformer on the built-in corpus, compare its loss with the unigram entropy,
//! and sample from the saved checkpoint.

use super::train::{print_report, report_json, train_char, CharArgs};
use super::DeviceArg;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let ckpt = a.out.join("char_lm.safetensors");
    let args = CharArgs {
        text: None,
        steps: a.steps,
        batch: 32,
        lr: 3e-3,
        dim: 96,
        layers: 3,
        heads: 4,
        block: 64,
        dropout: 0.0,
        seed: 0,
        ckpt: ckpt.clone(),
        checkpoint_every: 200,
        resume: false,
        device: a.device,
        json: a.json,
    };
    if !a.json {
        eprintln!(
            "demo: training a char-level transformer on the built-in corpus ({} steps)",
            a.steps
        );
    }
    let report = train_char(&args)?;
    let sample = super::sample::sample_text(&ckpt, "Alice ", 160, 0.9, 0.8, 0)?;
    let caption = super::sample::sample_text(&ckpt, "a small ", 40, 0.0, 1.0, 0)?;
    if a.json {
        let mut j = report_json(&report, &ckpt);
        j["sample"] = serde_json::Value::String(sample);
        j["greedy_caption"] = serde_json::Value::String(caption);
        println!("{j}");
    } else {
        print_report(&report, &ckpt, false);
        println!("\nsample (top-p 0.9, temperature 0.8):\n{sample}\n\ngreedy: {caption}");
    }
    Ok(())
}
