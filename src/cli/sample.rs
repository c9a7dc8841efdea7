//! `tessera sample char`: continues a prompt with a trained char-level transformer.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use tessera::nn::Module;
use tessera::random::Rng;
use tessera::train::char_lm::load_char_lm;

#[derive(Subcommand, Debug)]
pub enum SampleCommand {
    /// The char-level transformer language model.
    Char(SampleCharArgs),
    /// Pictures from the text-to-image diffusion model, as a PNG grid (one row per prompt).
    Diffusion(super::diffusion::SampleDiffusionArgs),
}

#[derive(Args, Debug)]
pub struct SampleCharArgs {
    #[arg(long, default_value = "runs/char_lm.safetensors")]
    pub ckpt: PathBuf,
    #[arg(long, default_value = "Alice ")]
    pub prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 200)]
    pub len: usize,
    /// Nucleus sampling threshold; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: SampleCommand) -> anyhow::Result<()> {
    let a = match cmd {
        SampleCommand::Char(a) => a,
        SampleCommand::Diffusion(a) => return super::diffusion::sample(&a),
    };
    println!(
        "{}",
        sample_text(&a.ckpt, &a.prompt, a.len, a.top_p, a.temperature, a.seed)?
    );
    Ok(())
}

pub fn sample_text(
    ckpt: &std::path::Path,
    prompt: &str,
    len: usize,
    top_p: f64,
    temperature: f64,
    seed: u64,
) -> anyhow::Result<String> {
    let (model, tokenizer) = load_char_lm(ckpt, tessera::Device::Cpu)?;
    model.eval();
    let top_p = (top_p > 0.0).then_some(top_p);
    let ids = model.generate(
        &tokenizer.encode(prompt),
        len,
        temperature,
        top_p,
        &mut Rng::new(seed),
    )?;
    Ok(tokenizer.decode(&ids))
}
