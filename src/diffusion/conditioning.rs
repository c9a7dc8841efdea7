//! What turns prompts into the token states the U-Net cross-attends to.
//!
//! [`Conditioner`] is an enum with one arm per kind of text encoder, so a checkpoint can name
//! its kind and be rebuilt. Today: a small transformer over characters or words, trained
//! jointly with the U-Net. The CLIP text encoder (`models::clip`) fits as another arm: it
//! only has to give `[B, S, D]` states with a `[B, S]` padding mask (and may stay frozen).
//! The unCLIP path (`unclip.rs`) is the second arm: CLIP image embeddings as a few tokens.

use crate::data::PromptTokenizer;
use crate::models::text_encoder::{PromptEncoder, PromptEncoderConfig};
use crate::nn::{prefixed, Module};
use crate::{Device, Error, Result, Tensor};

/// Token states of a batch of prompts.
pub struct TextStates {
    /// `[B, S, D]`.
    pub states: Tensor,
    /// `[B, S]` u8, 1 = padding (ignored by the cross-attention).
    pub padding: Tensor,
}

/// The jointly trained encoder with its tokenizer.
pub struct PromptConditioner {
    pub tokenizer: PromptTokenizer,
    pub encoder: PromptEncoder,
}

pub enum Conditioner {
    Prompt(PromptConditioner),
    /// unCLIP: a frozen CLIP image embedding (from a prior at sampling time) as the condition.
    /// Boxed: CLIP and the prior make it several times the size of the other arm.
    ClipImage(Box<super::unclip::ClipImageConditioner>),
}

impl Conditioner {
    /// A fresh jointly trained conditioner for `tokenizer`'s vocabulary.
    pub fn new_prompt(
        tokenizer: PromptTokenizer,
        max_len: usize,
        dim: usize,
        num_heads: usize,
        num_layers: usize,
        device: Device,
    ) -> Result<Self> {
        let encoder = PromptEncoder::new(
            PromptEncoderConfig {
                vocab_size: tokenizer.vocab_size(),
                max_len,
                dim,
                num_heads,
                num_layers,
            },
            device,
        )?;
        Ok(Conditioner::Prompt(PromptConditioner {
            tokenizer,
            encoder,
        }))
    }

    /// `"char"` or `"word"`: the tokens of the jointly trained encoder.
    pub fn kind(&self) -> &'static str {
        match self {
            Conditioner::Prompt(c) => c.tokenizer.kind(),
            Conditioner::ClipImage(_) => "clip-image",
        }
    }

    /// Width `D` of the states.
    pub fn context_dim(&self) -> usize {
        match self {
            Conditioner::Prompt(c) => c.encoder.config.dim,
            Conditioner::ClipImage(c) => c.context_dim,
        }
    }

    /// The states of `prompts` (with a graph when the encoder trains).
    pub fn encode(&self, prompts: &[&str], device: Device) -> Result<TextStates> {
        if prompts.is_empty() {
            return Err(Error::msg("Conditioner::encode: no prompts"));
        }
        match self {
            Conditioner::Prompt(c) => {
                let ids = c.encoder.encode_ids(&c.tokenizer, prompts, device)?;
                let (states, padding) = c.encoder.forward(&ids)?;
                Ok(TextStates { states, padding })
            }
            Conditioner::ClipImage(c) => c.encode(prompts, device),
        }
    }

    /// The config and tokenizer as JSON (for checkpoint metadata).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Conditioner::Prompt(c) => serde_json::json!({
                "kind": "prompt",
                "encoder": c.encoder.config.to_json(),
                "tokenizer": c.tokenizer.to_json(),
            }),
            Conditioner::ClipImage(c) => c.to_json(),
        }
    }

    /// Rebuilds (fresh weights) what [`to_json`](Self::to_json) described.
    pub fn from_json(v: &serde_json::Value, device: Device) -> Result<Self> {
        match v.get("kind").and_then(|k| k.as_str()) {
            // "char": checkpoints written before word tokens existed.
            Some("prompt") | Some("char") => {
                let enc = v
                    .get("encoder")
                    .ok_or_else(|| Error::msg("conditioner JSON: missing encoder"))?;
                let tok = v
                    .get("tokenizer")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| Error::msg("conditioner JSON: missing tokenizer"))?;
                Ok(Conditioner::Prompt(PromptConditioner {
                    tokenizer: PromptTokenizer::from_json(tok)?,
                    encoder: PromptEncoder::new(PromptEncoderConfig::from_json(enc)?, device)?,
                }))
            }
            Some("clip-image") => Ok(Conditioner::ClipImage(Box::new(
                super::unclip::ClipImageConditioner::from_json(v, device)?,
            ))),
            other => Err(Error::msg(format!(
                "conditioner JSON: unknown kind {other:?} (expected \"prompt\" or \"clip-image\")"
            ))),
        }
    }
}

impl Module for Conditioner {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Conditioner::Prompt(c) => prefixed("prompt_encoder", c.encoder.named_parameters()),
            Conditioner::ClipImage(c) => prefixed("clip_image", c.named_parameters()),
        }
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        match self {
            Conditioner::Prompt(_) => Vec::new(),
            Conditioner::ClipImage(c) => prefixed("clip_image", c.named_buffers()),
        }
    }
}
