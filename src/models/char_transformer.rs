//! A character-level GPT, the first model of the project's lineage (in the spirit of
//! nanoGPT's `model.py` and Karpathy's "Let's build GPT"): characters in, next-character
//! logits out.
//!
//! ```text
//! ids [B, T] --tok_emb--> [B, T, C] + positions [T, C]      (learned or sinusoidal)
//!   --> blocks.0 .. blocks.{L-1}  (pre-LN, causal self-attention + GELU MLP)  [B, T, C]
//!   --> ln_f --> head (Linear C -> V, no bias)                                [B, T, V]
//! ```
//! The loss is the mean cross-entropy of each position's logits against the next character.
//! Weights follow GPT-2's init: N(0, 0.02) for linear and embedding weights, zero biases.

use crate::data::tokenizer;
use crate::nn::transformer::TransformerBlockConfig;
use crate::nn::{
    children_parameters, init, list_parameters, Embedding, LayerNorm, LearnedPositionalEmbedding,
    Linear, Module, TransformerBlock,
};
use crate::ops::{cross_entropy, AttentionOpts, CrossEntropyOpts};
use crate::random::Rng;
use crate::{DType, Device, Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positional {
    Learned,
    Sinusoidal,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CharTransformerConfig {
    pub vocab_size: usize,
    /// Longest context, in characters.
    pub block_size: usize,
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub dropout: f64,
    pub positional: Positional,
}

impl CharTransformerConfig {
    /// A model small enough to train in a minute on two CPU cores.
    pub fn small(vocab_size: usize) -> Self {
        CharTransformerConfig {
            vocab_size,
            block_size: 64,
            dim: 96,
            num_heads: 4,
            num_layers: 3,
            dropout: 0.0,
            positional: Positional::Learned,
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "vocab_size": self.vocab_size, "block_size": self.block_size, "dim": self.dim,
            "num_heads": self.num_heads, "num_layers": self.num_layers, "dropout": self.dropout,
            "positional": match self.positional { Positional::Learned => "learned", Positional::Sinusoidal => "sinusoidal" },
        })
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| Error::msg(format!("model config JSON: {e}")))?;
        let u = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::msg(format!("model config JSON: missing {k}")))
        };
        Ok(CharTransformerConfig {
            vocab_size: u("vocab_size")?,
            block_size: u("block_size")?,
            dim: u("dim")?,
            num_heads: u("num_heads")?,
            num_layers: u("num_layers")?,
            dropout: v.get("dropout").and_then(|x| x.as_f64()).unwrap_or(0.0),
            positional: if v.get("positional").and_then(|x| x.as_str()) == Some("sinusoidal") {
                Positional::Sinusoidal
            } else {
                Positional::Learned
            },
        })
    }
}

pub struct CharTransformer {
    pub config: CharTransformerConfig,
    pub tok_emb: Embedding,
    pub pos_emb: Option<LearnedPositionalEmbedding>,
    sinusoidal: Option<Tensor>,
    pub blocks: Vec<TransformerBlock>,
    pub ln_f: LayerNorm,
    pub head: Linear,
}

impl CharTransformer {
    pub fn new(config: CharTransformerConfig, device: Device) -> Result<Self> {
        let c = &config;
        let mut block_cfg = TransformerBlockConfig::new(c.dim, c.num_heads);
        block_cfg.dropout = c.dropout;
        let model = CharTransformer {
            tok_emb: Embedding::with_std(c.vocab_size, c.dim, 0.02, device)?,
            pos_emb: match c.positional {
                Positional::Learned => Some(LearnedPositionalEmbedding::new(
                    c.block_size,
                    c.dim,
                    device,
                )?),
                Positional::Sinusoidal => None,
            },
            sinusoidal: match c.positional {
                Positional::Sinusoidal => Some(crate::nn::sinusoidal_positions(
                    c.block_size,
                    c.dim,
                    device,
                )?),
                Positional::Learned => None,
            },
            blocks: (0..c.num_layers)
                .map(|_| TransformerBlock::new(&block_cfg, device))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(c.dim, 1e-5, device)?,
            head: Linear::new(c.dim, c.vocab_size, false, device)?,
            config,
        };
        model.init_gpt2(device)?;
        Ok(model)
    }

    /// As [`new`](Self::new), with every parameter (and the sinusoidal table) in `dtype`
    /// instead of f32: e.g. f64 to compare a training run with a reference implementation.
    /// The weights are drawn in f32 as by `new` (same random stream) and then converted.
    pub fn new_with_dtype(
        config: CharTransformerConfig,
        dtype: DType,
        device: Device,
    ) -> Result<Self> {
        CharTransformer::new(config, device)?.into_dtype(dtype)
    }

    /// The same model with its parameters converted to `dtype` (fresh leaves; optimizers
    /// built on the old parameters do not see the new ones).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        if !dtype.is_compute_float() {
            return Err(Error::UnsupportedDType {
                op: "CharTransformer::into_dtype",
                dtype,
                expected: "f32 or f64",
            });
        }
        Ok(CharTransformer {
            tok_emb: self.tok_emb.into_dtype(dtype)?,
            pos_emb: self.pos_emb.map(|p| p.into_dtype(dtype)).transpose()?,
            sinusoidal: self
                .sinusoidal
                .map(|t| crate::no_grad(|| t.to_dtype(dtype)?.contiguous_copy()))
                .transpose()?,
            blocks: self
                .blocks
                .into_iter()
                .map(|b| b.into_dtype(dtype))
                .collect::<Result<_>>()?,
            ln_f: self.ln_f.into_dtype(dtype)?,
            head: self.head.into_dtype(dtype)?,
            config: self.config,
        })
    }

    /// GPT-2 init: N(0, 0.02) for matrices, zeros for biases (norm weights stay at 1).
    fn init_gpt2(&self, device: Device) -> Result<()> {
        for (name, p) in self.named_parameters() {
            if p.rank() == 2 {
                p.copy_from(&init::normal(0.0, 0.02, p.shape().clone(), device)?)?;
            } else if name.ends_with(".bias") {
                p.copy_from(&p.zeros_like()?)?;
            }
        }
        Ok(())
    }

    /// `ids` `[B, T]` (i64, T <= block_size) -> logits `[B, T, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 || ids.dims()[1] > self.config.block_size {
            return Err(Error::shape(
                "CharTransformer",
                format!("expected ids [B, T] with T <= {}", self.config.block_size),
                &[ids.shape()],
            ));
        }
        let t = ids.dims()[1];
        let tok = self.tok_emb.forward(ids)?; // [B, T, C]
        let pos = match (&self.pos_emb, &self.sinusoidal) {
            (Some(p), _) => p.forward(t)?,
            (None, Some(table)) => table.narrow(0, 0, t)?,
            (None, None) => unreachable!("one positional encoding is always built"),
        };
        let mut x = tok.add(&pos)?;
        let causal = AttentionOpts {
            causal: true,
            ..Default::default()
        };
        for block in &self.blocks {
            x = block.forward(&x, &causal, None)?;
        }
        self.head.forward(&self.ln_f.forward(&x)?)
    }

    /// Mean next-character cross-entropy: `targets[b, t]` is the character after `ids[b, t]`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        let (b, t, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
        cross_entropy(
            &logits.reshape((b * t, v))?,
            &targets.reshape(b * t)?,
            CrossEntropyOpts {
                ignore_index: Some(tokenizer::PAD as i64),
                label_smoothing: 0.0,
            },
        )
    }

    /// Continues `prompt` by `max_new` characters. `top_p = None` is greedy decoding;
    /// `Some(p)` samples from the smallest set of characters whose probability reaches `p`
    /// (nucleus sampling) at the given temperature.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        temperature: f64,
        top_p: Option<f64>,
        rng: &mut Rng,
    ) -> Result<Vec<u32>> {
        let device = self.tok_emb.weight.device();
        let mut ids: Vec<u32> = prompt.to_vec();
        if ids.is_empty() {
            ids.push(tokenizer::SOS);
        }
        crate::no_grad(|| {
            for _ in 0..max_new {
                let start = ids.len().saturating_sub(self.config.block_size);
                let ctx: Vec<i64> = ids[start..].iter().map(|&i| i as i64).collect();
                let n = ctx.len();
                let logits = self.forward(&Tensor::from_vec(ctx, (1, n), device)?)?;
                let last = logits
                    .narrow(1, n - 1, 1)?
                    .flatten_all()?
                    .to_dtype(DType::F64)?
                    .to_vec::<f64>()?;
                ids.push(sample_next(&last, temperature, top_p, rng));
            }
            Ok(ids)
        })
    }
}

/// Picks the next id from logits: argmax, or nucleus sampling with temperature.
pub fn sample_next(logits: &[f64], temperature: f64, top_p: Option<f64>, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b }) as u32
    };
    let Some(p) = top_p else { return argmax() };
    if temperature <= 0.0 {
        return argmax();
    }
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .map(|&l| ((l - m) / temperature).exp())
        .enumerate()
        .collect();
    let z: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, &(_, q)) in probs.iter().enumerate() {
        kept += q;
        if kept >= p {
            cut = i + 1;
            break;
        }
    }
    let mut u = rng.uniform() * kept;
    for &(i, q) in &probs[..cut] {
        if u < q {
            return i as u32;
        }
        u -= q;
    }
    probs[cut - 1].0 as u32
}

impl Module for CharTransformer {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("tok_emb", &self.tok_emb)]);
        if let Some(p) = &self.pos_emb {
            v.extend(children_parameters(&[("pos_emb", p)]));
        }
        v.extend(list_parameters("blocks", &self.blocks));
        v.extend(children_parameters(&[
            ("ln_f", &self.ln_f),
            ("head", &self.head),
        ]));
        v
    }
    fn set_training(&self, training: bool) {
        self.blocks.iter().for_each(|b| b.set_training(training))
    }
}
