//! Times forward / backward / optimizer step of the small char transformer (profiling aid).
use std::time::Instant;
use tessera::data::{text, CharTokenizer};
use tessera::models::char_transformer::{CharTransformer, CharTransformerConfig, Positional};
use tessera::nn::Module;
use tessera::optim::{AdamW, AdamWConfig, Optimizer};
use tessera::{Device, Tensor};

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

fn main() -> tessera::Result<()> {
    tessera::alloc::keep_freed_memory();
    let corpus = text::builtin_corpus();
    let tok = CharTokenizer::from_text(&corpus);
    let cfg = CharTransformerConfig {
        vocab_size: tok.vocab_size(),
        block_size: 32,
        dim: 64,
        num_heads: 4,
        num_layers: 2,
        dropout: 0.0,
        positional: Positional::Learned,
    };
    let model = CharTransformer::new(cfg, Device::Cpu)?;
    let mut opt = AdamW::new(model.named_parameters(), AdamWConfig::default())?;
    let ids: Vec<i64> = tok
        .encode(&corpus)
        .iter()
        .take(32 * 33)
        .map(|&i| i as i64)
        .collect();
    let x = Tensor::from_vec(ids[..32 * 32].to_vec(), (32, 32), Device::Cpu)?;
    let y = Tensor::from_vec(ids[1..32 * 32 + 1].to_vec(), (32, 32), Device::Cpu)?;
    for i in 0..6 {
        let t0 = Instant::now();
        let loss = model.loss(&x, &y)?;
        let t1 = Instant::now();
        opt.zero_grad();
        loss.backward()?;
        let t2 = Instant::now();
        opt.step()?;
        let t3 = Instant::now();
        if i > 0 {
            println!(
                "fwd {:.1} ms  bwd {:.1} ms  step {:.1} ms  loss {:.3}",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
                loss.item()?
            );
        }
    }
    Ok(())
}
