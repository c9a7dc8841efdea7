//! The multimodal char transformer: a character-level GPT whose first position is the
//! picture. The image's (frozen) ResNet features, projected to the model width, prefix the
//! caption's characters; causal self-attention lets every character see the picture and the
//! characters before it. Trained with the causal language-model loss, it captions images.
//! (The prefix idea is that of ClipCap, Mokady et al. 2021, with a one-token prefix.)
//!
//! ```text
//! features [B, 512] --img_proj--> [B, 1, C]                       position 0
//! ids [B, T] = <SOS> c1 .. c_{T-1} --tok_emb--> [B, T, C]        positions 1..T
//! cat --> + pos_emb[0..T+1] --> blocks (pre-LN, causal) --> ln_f --> head   [B, T+1, V]
//! logits of positions 1..T predict c1 .. c_{T-1} <EOS>           [B, T, V]
//! ```
//! The text part (`tok_emb`, `pos_emb`, `blocks`, `ln_f`) has the same names and shapes as
//! the text-to-feature model's, which starts from it.

use crate::data::tokenizer::{self, CharTokenizer};
use crate::models::char_transformer::sample_next;
use crate::nn::transformer::TransformerBlockConfig;
use crate::nn::{
    children_parameters, init, list_parameters, Embedding, LayerNorm, LearnedPositionalEmbedding,
    Linear, Module, TransformerBlock,
};
use crate::ops::{cross_entropy, AttentionOpts, CrossEntropyOpts};
use crate::random::Rng;
use crate::{DType, Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct CaptionerConfig {
    pub vocab_size: usize,
    /// Longest caption in tokens (`<SOS>` included); the position table has one more row.
    pub max_len: usize,
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Width of the image features (512 for ResNet-18).
    pub feature_dim: usize,
}

impl CaptionerConfig {
    /// Small enough to train in well under a minute on two CPU cores.
    pub fn small(vocab_size: usize, feature_dim: usize) -> Self {
        CaptionerConfig {
            vocab_size,
            max_len: 64,
            dim: 64,
            num_heads: 4,
            num_layers: 2,
            feature_dim,
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "vocab_size": self.vocab_size, "max_len": self.max_len, "dim": self.dim,
            "num_heads": self.num_heads, "num_layers": self.num_layers,
            "feature_dim": self.feature_dim,
        })
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| Error::msg(format!("captioner config JSON: {e}")))?;
        let u = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::msg(format!("captioner config JSON: missing {k}")))
        };
        Ok(CaptionerConfig {
            vocab_size: u("vocab_size")?,
            max_len: u("max_len")?,
            dim: u("dim")?,
            num_heads: u("num_heads")?,
            num_layers: u("num_layers")?,
            feature_dim: u("feature_dim")?,
        })
    }
}

pub struct Captioner {
    pub config: CaptionerConfig,
    pub img_proj: Linear,
    pub tok_emb: Embedding,
    pub pos_emb: LearnedPositionalEmbedding,
    pub blocks: Vec<TransformerBlock>,
    pub ln_f: LayerNorm,
    pub head: Linear,
}

/// The pieces of a captioner's text stack, shared with the text-to-feature model.
pub fn text_blocks(
    dim: usize,
    heads: usize,
    layers: usize,
    device: Device,
) -> Result<Vec<TransformerBlock>> {
    let cfg = TransformerBlockConfig::new(dim, heads);
    (0..layers)
        .map(|_| TransformerBlock::new(&cfg, device))
        .collect()
}

/// GPT-2 init for every matrix in `params`: N(0, 0.02), zero biases.
pub fn init_gpt2(params: &[(String, Tensor)], device: Device) -> Result<()> {
    for (name, p) in params {
        if p.rank() == 2 {
            p.copy_from(&init::normal(0.0, 0.02, p.shape().clone(), device)?)?;
        } else if name.ends_with(".bias") {
            p.copy_from(&p.zeros_like()?)?;
        }
    }
    Ok(())
}

/// Right-padded id batch `[B, T]` (i64) from token lists, `T` = the longest.
pub fn pad_batch(rows: &[Vec<u32>], device: Device) -> Result<Tensor> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut v = vec![tokenizer::PAD as i64; rows.len() * t];
    for (b, r) in rows.iter().enumerate() {
        for (i, &id) in r.iter().enumerate() {
            v[b * t + i] = id as i64;
        }
    }
    Tensor::from_vec(v, (rows.len(), t), device)
}

impl Captioner {
    pub fn new(config: CaptionerConfig, device: Device) -> Result<Self> {
        let c = &config;
        let model = Captioner {
            img_proj: Linear::new(c.feature_dim, c.dim, true, device)?,
            tok_emb: Embedding::with_std(c.vocab_size, c.dim, 0.02, device)?,
            pos_emb: LearnedPositionalEmbedding::new(c.max_len + 1, c.dim, device)?,
            blocks: text_blocks(c.dim, c.num_heads, c.num_layers, device)?,
            ln_f: LayerNorm::new(c.dim, 1e-5, device)?,
            head: Linear::new(c.dim, c.vocab_size, false, device)?,
            config,
        };
        init_gpt2(&model.named_parameters(), device)?;
        Ok(model)
    }

    /// `features` `[B, F]`, `ids` `[B, T]` (starting with `<SOS>`) -> logits `[B, T, V]`,
    /// position `t` predicting token `t + 1` (the last one `<EOS>`).
    pub fn forward(&self, features: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if ids.rank() != 2
            || ids.dims()[1] > c.max_len
            || features.rank() != 2
            || features.dims() != [ids.dims()[0], c.feature_dim]
        {
            return Err(Error::shape(
                "Captioner",
                format!(
                    "expected features [B, {}] and ids [B, T] with T <= {}",
                    c.feature_dim, c.max_len
                ),
                &[features.shape(), ids.shape()],
            ));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let prefix = self.img_proj.forward(features)?.reshape((b, 1, c.dim))?;
        let tok = self.tok_emb.forward(ids)?; // [B, T, C]
        let mut x = Tensor::cat(&[prefix, tok], 1)?.add(&self.pos_emb.forward(t + 1)?)?;
        let causal = AttentionOpts {
            causal: true,
            ..Default::default()
        };
        for block in &self.blocks {
            x = block.forward(&x, &causal, None)?;
        }
        let logits = self.head.forward(&self.ln_f.forward(&x)?)?; // [B, T+1, V]
        logits.narrow(1, 1, t)
    }

    /// Mean next-character cross-entropy of captions `rows` (token lists without specials)
    /// given their images' `features`; padding is ignored.
    pub fn loss(&self, features: &Tensor, rows: &[Vec<u32>]) -> Result<Tensor> {
        let device = features.device();
        let max = self.config.max_len;
        let inputs: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut v = vec![tokenizer::SOS];
                v.extend(r.iter().take(max - 1));
                v
            })
            .collect();
        let targets: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut v: Vec<u32> = r.iter().take(max - 1).copied().collect();
                v.push(tokenizer::EOS);
                v
            })
            .collect();
        let (x, y) = (pad_batch(&inputs, device)?, pad_batch(&targets, device)?);
        let logits = self.forward(features, &x)?;
        let (b, t, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
        cross_entropy(
            &logits.reshape((b * t, v))?,
            &y.reshape(b * t)?,
            CrossEntropyOpts {
                ignore_index: Some(tokenizer::PAD as i64),
                label_smoothing: 0.0,
            },
        )
    }

    /// Captions one image (`features` `[F]` or `[1, F]`): greedy when `top_p` is `None`,
    /// else nucleus sampling at `temperature`. Stops at `<EOS>` or `max_len`.
    pub fn caption(
        &self,
        features: &Tensor,
        tokenizer: &CharTokenizer,
        top_p: Option<f64>,
        temperature: f64,
        rng: &mut Rng,
    ) -> Result<String> {
        let f = features.reshape((1, self.config.feature_dim))?;
        let device = f.device();
        let mut ids = vec![tokenizer::SOS];
        crate::no_grad(|| {
            while ids.len() < self.config.max_len {
                let ctx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let n = ctx.len();
                let logits = self.forward(&f, &Tensor::from_vec(ctx, (1, n), device)?)?;
                let last = logits
                    .narrow(1, n - 1, 1)?
                    .flatten_all()?
                    .to_dtype(DType::F64)?
                    .to_vec::<f64>()?;
                let next = sample_next(&last, temperature, top_p, rng);
                if next == tokenizer::EOS {
                    break;
                }
                ids.push(next);
            }
            Ok(tokenizer.decode(&ids))
        })
    }
}

impl Module for Captioner {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[
            ("img_proj", &self.img_proj),
            ("tok_emb", &self.tok_emb),
            ("pos_emb", &self.pos_emb),
        ]);
        v.extend(list_parameters("blocks", &self.blocks));
        v.extend(children_parameters(&[
            ("ln_f", &self.ln_f),
            ("head", &self.head),
        ]));
        v
    }
}
