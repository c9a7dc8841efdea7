//! The unCLIP prior (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
//! CLIP Latents", the DALL-E 2 paper): from a prompt to the CLIP *image* embedding of a
//! picture that fits it. The decoder (`diffusion::unclip`) then draws a picture from that
//! embedding.
//!
//! DALL-E 2's prior is a transformer over the caption's tokens, the CLIP text embedding and
//! the (noised) image embedding. This one is the regression version (the paper also tried a
//! direct regression before settling on diffusion) and reads the same two inputs:
//!
//! ```text
//! CLIP text embedding [B, E] --clip_in (Linear E->C)-->              token 0    [B, 1, C]
//! prompt --word tokens--> <SOS> w1 .. wn (right-padded)   ids [B, T] --tok_emb-> [B, T, C]
//! x = cat(token 0, words) + pos_emb[0..T+1]                                      [B, T+1, C]
//!   --> blocks (pre-LN, bidirectional, padding keys masked) --> ln_f             [B, T+1, C]
//!   --> state of token 0 --head (Linear C->E)-->              predicted embedding [B, E]
//! ```
//! Trained with the MSE to the (L2-normalized) CLIP image embedding of the captioned picture,
//! as the text-to-feature model (`text_to_feature.rs`) is trained to its ResNet features; the
//! prediction is normalized where it is used.
//!
//! Why the words as well as the CLIP text embedding: CLIP's text tower on the shapes data saw
//! one caption per class ("An image of a red circle"), so it reads a new phrasing ("show me
//! the red circle") poorly: used directly as the image embedding, it retrieves a picture of
//! the right class for 44% of held-out captions (cosine 0.54 to the true embedding), the
//! prior for 100% (cosine 0.96; docs/PERF.md, session 5). The words give the prior what
//! CLIP's text tower cannot; the CLIP token still carries whatever the text tower does know,
//! and is all there is for a dataset whose captions CLIP saw.

use crate::data::{tokenizer, PromptTokenizer};
use crate::models::captioner::{init_gpt2, text_blocks};
use crate::models::unet::json_usize;
use crate::nn::{
    children_parameters, list_parameters, Embedding, LayerNorm, LearnedPositionalEmbedding, Linear,
    Module, TransformerBlock,
};
use crate::ops::{mse_loss, AttentionOpts};
use crate::{DType, Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct PriorConfig {
    /// Width `E` of the CLIP embeddings (text in, image out).
    pub embed_dim: usize,
    pub vocab_size: usize,
    /// Longest prompt in word tokens (`<SOS>` included); longer prompts are cut.
    pub max_len: usize,
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
}

impl PriorConfig {
    /// The CPU-sized prior: width 64, 2 blocks of 4 heads.
    pub fn small(embed_dim: usize, vocab_size: usize) -> Self {
        PriorConfig {
            embed_dim,
            vocab_size,
            max_len: 24,
            dim: 64,
            num_heads: 4,
            num_layers: 2,
        }
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "embed_dim": self.embed_dim, "vocab_size": self.vocab_size, "max_len": self.max_len,
            "dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
        })
    }
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let n = |k: &str| json_usize(v, "prior", k);
        Ok(PriorConfig {
            embed_dim: n("embed_dim")?,
            vocab_size: n("vocab_size")?,
            max_len: n("max_len")?,
            dim: n("dim")?,
            num_heads: n("num_heads")?,
            num_layers: n("num_layers")?,
        })
    }
}

pub struct Prior {
    pub config: PriorConfig,
    pub clip_in: Linear,
    pub tok_emb: Embedding,
    /// `max_len + 1` rows: position 0 is the CLIP token.
    pub pos_emb: LearnedPositionalEmbedding,
    pub blocks: Vec<TransformerBlock>,
    pub ln_f: LayerNorm,
    pub head: Linear,
}

impl Prior {
    /// A freshly initialized prior (GPT-2 init).
    pub fn new(config: PriorConfig, device: Device) -> Result<Self> {
        let c = &config;
        if c.embed_dim == 0 || c.max_len == 0 || c.vocab_size == 0 {
            return Err(Error::msg(format!("Prior: empty config {c:?}")));
        }
        let model = Prior {
            clip_in: Linear::new(c.embed_dim, c.dim, true, device)?,
            tok_emb: Embedding::with_std(c.vocab_size, c.dim, 0.02, device)?,
            pos_emb: LearnedPositionalEmbedding::new(c.max_len + 1, c.dim, device)?,
            blocks: text_blocks(c.dim, c.num_heads, c.num_layers, device)?,
            ln_f: LayerNorm::new(c.dim, 1e-5, device)?,
            head: Linear::new(c.dim, c.embed_dim, true, device)?,
            config,
        };
        init_gpt2(&model.named_parameters(), device)?;
        Ok(model)
    }

    /// The same prior with its parameters converted to `dtype` (fresh leaves; gradient
    /// checks run in f64).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(Prior {
            clip_in: self.clip_in.into_dtype(dtype)?,
            tok_emb: self.tok_emb.into_dtype(dtype)?,
            pos_emb: self.pos_emb.into_dtype(dtype)?,
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

    /// Ids `[B, T]`: `<SOS>` then the word tokens, cut at `max_len`, right-padded.
    pub fn encode_ids(
        &self,
        tokenizer: &PromptTokenizer,
        prompts: &[&str],
        device: Device,
    ) -> Result<Tensor> {
        crate::models::text_encoder::prompt_ids(
            |p| tokenizer.encode(p),
            prompts,
            self.config.max_len,
            device,
        )
    }

    /// `text_emb` `[B, E]` (CLIP's text embedding of each prompt) and the prompts' `ids`
    /// `[B, T]` -> the predicted image embedding `[B, E]` (not normalized).
    pub fn forward(&self, text_emb: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if text_emb.rank() != 2
            || text_emb.dims()[1] != c.embed_dim
            || ids.rank() != 2
            || ids.dims()[0] != text_emb.dims()[0]
            || ids.dims()[1] == 0
            || ids.dims()[1] > c.max_len
        {
            return Err(Error::shape(
                "Prior",
                format!(
                    "expected text_emb [B, {}] and ids [B, T] with 0 < T <= {}",
                    c.embed_dim, c.max_len
                ),
                &[text_emb.shape(), ids.shape()],
            ));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        // Padding mask over [CLIP token, words]: the CLIP token is never padding.
        let mut mask = Vec::with_capacity(b * (t + 1));
        for row in ids.to_vec::<i64>()?.chunks(t) {
            mask.push(0u8);
            mask.extend(row.iter().map(|&id| (id == tokenizer::PAD as i64) as u8));
        }
        let padding = Tensor::from_vec(mask, (b, t + 1), ids.device())?;
        let clip_token = self.clip_in.forward(text_emb)?.unsqueeze(1)?; // [B, 1, C]
        let words = self.tok_emb.forward(ids)?; // [B, T, C]
        let mut x = Tensor::cat(&[clip_token, words], 1)?.add(&self.pos_emb.forward(t + 1)?)?;
        let opts = AttentionOpts {
            key_padding_mask: Some(padding),
            ..Default::default()
        };
        for block in &self.blocks {
            x = block.forward(&x, &opts, None)?;
        }
        let first = self.ln_f.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?; // [B, C]
        self.head.forward(&first)
    }

    /// The MSE between the prediction and the true image embedding `target` `[B, E]`.
    pub fn loss(&self, text_emb: &Tensor, ids: &Tensor, target: &Tensor) -> Result<Tensor> {
        mse_loss(&self.forward(text_emb, ids)?, target)
    }
}

impl Module for Prior {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[
            ("clip_in", &self.clip_in),
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
