//! Whole training steps (forward, backward, optimizer update) of the project's models at the
//! sizes the CPU-speed issue names; the reference is the same model in PyTorch eager
//! (`benches/reference/compare.py`), compared by step time and peak memory.
//!
//! | case | model | optimizer | reference |
//! |---|---|---|---|
//! | `char_transformer_l6_d256_t128_b32` | 6 layers, d 256, T 128, batch 32 | AdamW | the same model |
//! | `clip_seed_b128_each_caption` | CLIP `seed`, batch 128, every caption encoded | Adam 1e-3 | the article's code (like for like) |
//! | `clip_seed_b128_distinct_captions` | the same, each distinct caption encoded once (tessera's default) | Adam 1e-3 | the article's code, which encodes every caption |
//!
//! The CLIP cases step exactly as `tessera train clip --config seed` does ([`train_step`] on a
//! [`ClipBatch`]), on random 28x28 images with the Fashion-MNIST captions, so no dataset is
//! needed; both encodings give the same loss and gradients.

use super::{measure, sizes, BenchOptions, Case, Measurement, Unit};
use crate::models::char_transformer::{CharTransformer, CharTransformerConfig, Positional};
use crate::models::clip::{Clip, ClipConfig, ContrastiveTargets};
use crate::nn::Module;
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::random::Rng;
use crate::tensor::Tensor;
use crate::train::clip::{clip_optimizer, synthetic_fashion, train_step, ClipBatch};
use crate::{Error, Result};
use serde_json::json;

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    char_transformer(opts, report)?;
    for each_caption in [true, false] {
        clip_seed(opts, each_caption, report)?;
    }
    Ok(())
}

fn char_transformer(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    let (layers, dim, heads, t, batch, vocab) = (6, 256, 8, 128, 32, 96);
    let name = format!("char_transformer_l{layers}_d{dim}_t{t}_b{batch}");
    if !opts.wants(&name) {
        return Ok(());
    }
    let config = CharTransformerConfig {
        vocab_size: vocab,
        block_size: t,
        dim,
        num_heads: heads,
        num_layers: layers,
        dropout: 0.0,
        positional: Positional::Learned,
    };
    crate::random::manual_seed(0);
    let model = CharTransformer::new(config, opts.device)?;
    let params = model.num_parameters();
    let mut opt = AdamW::new(model.named_parameters(), AdamWConfig::default())?;
    let mut rng = Rng::new(7);
    let ids: Vec<i64> = (0..batch * (t + 1))
        .map(|_| 1 + rng.below(vocab - 1) as i64)
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for b in 0..batch {
        let row = &ids[b * (t + 1)..(b + 1) * (t + 1)];
        x.extend_from_slice(&row[..t]);
        y.extend_from_slice(&row[1..]);
    }
    let x = Tensor::from_vec(x, (batch, t), opts.device)?;
    let y = Tensor::from_vec(y, (batch, t), opts.device)?;
    let case = Case {
        name,
        sizes: sizes(&[
            ("model", json!("char_transformer")),
            ("layers", json!(layers)),
            ("dim", json!(dim)),
            ("heads", json!(heads)),
            ("t", json!(t)),
            ("batch", json!(batch)),
            ("vocab", json!(vocab)),
            ("params", json!(params)),
        ]),
        unit: Unit::StepsPerS,
        work: 1.0,
        run: Box::new(move || {
            opt.zero_grad();
            model.loss(&x, &y)?.backward()?;
            opt.step()
        }),
    };
    if let Some(r) = measure("train", opts, None, case)? {
        report(&r);
    }
    Ok(())
}

/// One step of CLIP's `seed` configuration at batch 128, captions encoded per image
/// (`each_caption`, the article's way) or once per distinct caption (the default).
fn clip_seed(
    opts: &BenchOptions,
    each_caption: bool,
    report: &mut dyn FnMut(&Measurement),
) -> Result<()> {
    let (batch, lr) = (128, 1e-3);
    let name = format!(
        "clip_seed_b{batch}_{}",
        if each_caption {
            "each_caption"
        } else {
            "distinct_captions"
        }
    );
    if !opts.wants(&name) {
        return Ok(());
    }
    let config = ClipConfig::seed();
    crate::random::manual_seed(0);
    let model = Clip::new(config.clone(), opts.device)?;
    model.train();
    let params = model.num_parameters();
    let mut opt = clip_optimizer(&model, lr)?;
    let data = synthetic_fashion(batch, 7)?;
    let idx: Vec<usize> = (0..batch).collect();
    let images = data.images(&idx, opts.device)?;
    let clip_batch = ClipBatch::captioned(images, &data, &idx, config.text_len, each_caption)?;
    let encoded = clip_batch.text.len();
    let v = &config.vit;
    let case = Case {
        name,
        sizes: sizes(&[
            ("model", json!("clip")),
            ("config", json!("seed")),
            ("batch", json!(batch)),
            ("params", json!(params)),
            ("captions_deduplicated", json!(!each_caption)),
            ("captions_encoded", json!(encoded)),
            ("image_size", json!(v.image_size)),
            ("patch_size", json!(v.patch_size)),
            ("vit_width", json!(v.width)),
            ("vit_layers", json!(v.num_layers)),
            ("vit_heads", json!(v.num_heads)),
            ("text_width", json!(config.text_width)),
            ("text_len", json!(config.text_len)),
            ("text_layers", json!(config.text_layers)),
            ("text_heads", json!(config.text_heads)),
            ("embed_dim", json!(config.embed_dim)),
            ("lr", json!(lr)),
        ]),
        unit: Unit::StepsPerS,
        work: 1.0,
        run: Box::new(move || {
            train_step(&model, &mut opt, &clip_batch, ContrastiveTargets::Diagonal)?
                .map(|_| ())
                .ok_or_else(|| Error::msg("bench clip: the loss is not finite"))
        }),
    };
    if let Some(r) = measure("train", opts, None, case)? {
        report(&r);
    }
    Ok(())
}
