//! Whole training steps (forward, backward, AdamW update) of the project's models at the
//! sizes the CPU-speed issue names; the reference is the same model in PyTorch eager
//! (`benches/reference/compare.py`), compared by step time and peak memory.

use super::{measure, sizes, BenchOptions, Case, Measurement, Unit};
use crate::models::char_transformer::{CharTransformer, CharTransformerConfig, Positional};
use crate::nn::Module;
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::random::Rng;
use crate::tensor::Tensor;
use crate::Result;
use serde_json::json;

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    let (layers, dim, heads, t, batch, vocab) = (6, 256, 8, 128, 32, 96);
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
        name: format!("char_transformer_l{layers}_d{dim}_t{t}_b{batch}"),
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
