//! A small text encoder for conditioning: the token states of a prompt, read by the U-Net's
//! cross-attention (trained jointly with it). Tokens are characters or words
//! ([`PromptTokenizer`]).
//!
//! ```text
//! prompt --PromptTokenizer--> <SOS> t1 .. tn, right-padded to T      ids [B, T]
//!   --tok_emb + pos_emb--> [B, T, C] --blocks (pre-LN, bidirectional, padding masked)-->
//!   --ln_f--> states [B, T, C]      and the padding mask [B, T] (u8, 1 = <PAD>)
//! ```
//! Every prompt starts with `<SOS>`, so even the empty (null) prompt has one real token and
//! no attention row is fully masked.

use crate::data::tokenizer;
use crate::data::PromptTokenizer;
use crate::models::captioner::{init_gpt2, pad_batch, text_blocks};
use crate::models::unet::json_usize;
use crate::nn::{
    children_parameters, list_parameters, Embedding, LayerNorm, LearnedPositionalEmbedding, Module,
    TransformerBlock,
};
use crate::ops::AttentionOpts;
use crate::{DType, Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    pub vocab_size: usize,
    /// Longest prompt in tokens (`<SOS>` included); longer prompts are cut.
    pub max_len: usize,
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
}

impl PromptEncoderConfig {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "vocab_size": self.vocab_size, "max_len": self.max_len, "dim": self.dim,
            "num_heads": self.num_heads, "num_layers": self.num_layers,
        })
    }
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let n = |k: &str| json_usize(v, "text encoder", k);
        Ok(PromptEncoderConfig {
            vocab_size: n("vocab_size")?,
            max_len: n("max_len")?,
            dim: n("dim")?,
            num_heads: n("num_heads")?,
            num_layers: n("num_layers")?,
        })
    }
}

pub struct PromptEncoder {
    pub config: PromptEncoderConfig,
    pub tok_emb: Embedding,
    pub pos_emb: LearnedPositionalEmbedding,
    pub blocks: Vec<TransformerBlock>,
    pub ln_f: LayerNorm,
}

impl PromptEncoder {
    /// A freshly initialized encoder (GPT-2 init).
    pub fn new(config: PromptEncoderConfig, device: Device) -> Result<Self> {
        let c = &config;
        let model = PromptEncoder {
            tok_emb: Embedding::with_std(c.vocab_size, c.dim, 0.02, device)?,
            pos_emb: LearnedPositionalEmbedding::new(c.max_len, c.dim, device)?,
            blocks: text_blocks(c.dim, c.num_heads, c.num_layers, device)?,
            ln_f: LayerNorm::new(c.dim, 1e-5, device)?,
            config,
        };
        init_gpt2(&model.named_parameters(), device)?;
        // Token embeddings N(0, 1), not GPT-2's 0.02: trained from scratch as a conditioner,
        // tiny embeddings leave every prompt's states nearly alike, the U-Net learns to ignore
        // them and they get no signal back (seen in a 1500-step run: shuffled captions gave
        // the same loss to 5 digits).
        let w = &model.tok_emb.weight;
        w.copy_from(&crate::nn::init::normal(
            0.0,
            1.0,
            w.shape().clone(),
            device,
        )?)?;
        Ok(model)
    }

    /// The same encoder with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(PromptEncoder {
            tok_emb: self.tok_emb.into_dtype(dtype)?,
            pos_emb: self.pos_emb.into_dtype(dtype)?,
            blocks: self
                .blocks
                .into_iter()
                .map(|b| b.into_dtype(dtype))
                .collect::<Result<_>>()?,
            ln_f: self.ln_f.into_dtype(dtype)?,
            config: self.config,
        })
    }

    /// Ids `[B, T]` for prompts: `<SOS>` then the tokens (unknown ones as `<UNK>`), cut at
    /// `max_len`, right-padded with `<PAD>`.
    pub fn encode_ids(
        &self,
        tokenizer: &PromptTokenizer,
        prompts: &[&str],
        device: Device,
    ) -> Result<Tensor> {
        prompt_ids(
            |p| tokenizer.encode(p),
            prompts,
            self.config.max_len,
            device,
        )
    }

    /// `ids` `[B, T]` -> (states `[B, T, C]`, padding mask `[B, T]` u8 with 1 = `<PAD>`).
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        if ids.rank() != 2 || ids.dims()[1] == 0 || ids.dims()[1] > c.max_len {
            return Err(Error::shape(
                "PromptEncoder",
                format!("expected ids [B, T] with 0 < T <= {}", c.max_len),
                &[ids.shape()],
            ));
        }
        let t = ids.dims()[1];
        let padding = ids.to_vec::<i64>()?;
        let padding: Vec<u8> = padding
            .iter()
            .map(|&id| (id == tokenizer::PAD as i64) as u8)
            .collect();
        let padding = Tensor::from_vec(padding, ids.shape().clone(), ids.device())?;
        let opts = AttentionOpts {
            key_padding_mask: Some(padding.clone()),
            ..Default::default()
        };
        let mut x = self.tok_emb.forward(ids)?.add(&self.pos_emb.forward(t)?)?;
        for block in &self.blocks {
            x = block.forward(&x, &opts, None)?;
        }
        Ok((self.ln_f.forward(&x)?, padding))
    }
}

impl Module for PromptEncoder {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("tok_emb", &self.tok_emb), ("pos_emb", &self.pos_emb)]);
        v.extend(list_parameters("blocks", &self.blocks));
        v.extend(children_parameters(&[("ln_f", &self.ln_f)]));
        v
    }
}

/// Ids `[B, T]` for prompts: `<SOS>` then each prompt's tokens from `encode` (unknown ones
/// as `<UNK>`), cut at `max_len`, right-padded with `<PAD>`. Shared by every model that reads
/// prompts as tokens, whatever its tokenizer.
pub fn prompt_ids(
    encode: impl Fn(&str) -> Vec<u32>,
    prompts: &[&str],
    max_len: usize,
    device: Device,
) -> Result<Tensor> {
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut v = vec![tokenizer::SOS];
            v.extend(encode(p));
            v.truncate(max_len);
            v
        })
        .collect();
    pad_batch(&rows, device)
}
