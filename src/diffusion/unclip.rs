//! The unCLIP conditioner (DALL-E 2, Ramesh et al. 2022): the decoder U-Net is conditioned on
//! a frozen CLIP *image* embedding instead of text states.
//!
//! ```text
//! training:  x0 [B, C, S, S] --to CLIP's input (resize or crop)--> CLIP image tower (frozen)
//!            --> e [B, E] (L2-normalized); e = 0 for the 10% null captions
//! sampling:  prompt --CLIP text tower (frozen)--> t [B, E] --prior (+ the prompt's words)-->
//!            e [B, E], L2-normalized; e = 0 for the null prompt
//! both:      e --proj (Linear E -> K*D)--> K context tokens [B, K, D] (no padding)
//! ```
//! The K tokens enter the U-Net where text states would: its cross-attention reads them, and
//! the U-Net's pooled-context path adds their mean (through `text_pool_proj`) to the timestep
//! embedding. DALL-E 2's decoder does both, four extra context tokens and an addition to the
//! timestep embedding: the first lets each attention layer pick what it needs, the second
//! reaches every ResBlock, including the full-resolution ones without attention. Reusing the
//! U-Net's two paths means the U-Net does not change at all.
//!
//! The null condition is the zero embedding, as in DALL-E 2 (CLIP embeddings have norm 1, so
//! zero is never a real one); classifier-free guidance then works unchanged.
//!
//! CLIP and the prior are buffers of the model (saved in its checkpoint, never optimized by the
//! decoder's training); `proj` is the only trained part.

use super::conditioning::TextStates;
use super::guidance::NULL_PROMPT;
use crate::data::PromptTokenizer;
use crate::models::clip::{Clip, ClipConfig, TextBatch};
use crate::models::prior::{Prior, PriorConfig};
use crate::models::unet::json_usize;
use crate::nn::{prefixed, Linear, Module};
use crate::{DType, Device, Error, Result, Tensor};

/// How a decoder-sized picture becomes CLIP's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipInput {
    /// Nearest-neighbour resampling to CLIP's side (the shapes: drawn at 32 px, CLIP at 28).
    Resize,
    /// The centre crop (Fashion-MNIST: padded from 28 to 32 px, so the crop is the original).
    CenterCrop,
}

impl ClipInput {
    pub fn name(self) -> &'static str {
        match self {
            ClipInput::Resize => "resize",
            ClipInput::CenterCrop => "center-crop",
        }
    }
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "resize" => Ok(ClipInput::Resize),
            "center-crop" => Ok(ClipInput::CenterCrop),
            other => Err(Error::msg(format!(
                "unknown CLIP input {other:?} (expected resize or center-crop)"
            ))),
        }
    }
}

/// CLIP context tokens per embedding (DALL-E 2's decoder uses four).
pub const CLIP_TOKENS: usize = 4;

pub struct ClipImageConditioner {
    /// Frozen.
    pub clip: Clip,
    /// Trained before the decoder (`train::prior`), frozen while it trains.
    pub prior: Prior,
    /// The prior's word tokens.
    pub tokenizer: PromptTokenizer,
    /// `E -> K * D`.
    pub proj: Linear,
    pub tokens: usize,
    pub context_dim: usize,
    pub input: ClipInput,
}

/// `caption` cut (at a character boundary) to what CLIP's byte tower takes: `len - 2` bytes
/// (start and end tokens); control bytes are dropped. The prior still reads every word.
pub fn fit_clip_caption(caption: &str, len: usize) -> String {
    let mut out = String::new();
    for ch in caption
        .chars()
        .filter(|&c| !matches!(c, '\0' | '\u{2}' | '\u{3}'))
    {
        if out.len() + ch.len_utf8() + 2 > len {
            break;
        }
        out.push(ch);
    }
    out
}

impl ClipImageConditioner {
    /// A conditioner over a trained (frozen here) CLIP, with a fresh prior and projection.
    pub fn new(
        clip: Clip,
        tokenizer: PromptTokenizer,
        context_dim: usize,
        input: ClipInput,
        device: Device,
    ) -> Result<Self> {
        let e = clip.config.embed_dim;
        let prior = Prior::new(PriorConfig::small(e, tokenizer.vocab_size()), device)?;
        Self::from_parts(
            clip,
            prior,
            tokenizer,
            CLIP_TOKENS,
            context_dim,
            input,
            device,
        )
    }

    fn from_parts(
        clip: Clip,
        prior: Prior,
        tokenizer: PromptTokenizer,
        tokens: usize,
        context_dim: usize,
        input: ClipInput,
        device: Device,
    ) -> Result<Self> {
        let e = clip.config.embed_dim;
        if prior.config.embed_dim != e || tokens == 0 {
            return Err(Error::msg(format!(
                "clip-image conditioner: CLIP embeds in {e} dimensions, the prior in {}, {tokens} context tokens",
                prior.config.embed_dim
            )));
        }
        clip.freeze()?;
        clip.eval();
        Ok(ClipImageConditioner {
            proj: Linear::new(e, tokens * context_dim, true, device)?,
            clip,
            prior,
            tokenizer,
            tokens,
            context_dim,
            input,
        })
    }

    pub fn embed_dim(&self) -> usize {
        self.clip.config.embed_dim
    }

    /// The frozen CLIP image embedding `[B, E]` of pictures `x` `[B, C, S, S]` in [-1, 1] (the
    /// decoder's data range), without a graph.
    pub fn image_embedding(&self, x: &Tensor) -> Result<Tensor> {
        let v = &self.clip.config.vit;
        if x.rank() != 4 || x.dims()[1] != v.channels {
            return Err(Error::shape(
                "clip-image conditioner",
                format!(
                    "CLIP reads {} channel(s); expected pictures [B, {}, S, S]",
                    v.channels, v.channels
                ),
                &[x.shape()],
            ));
        }
        let (h, w, side) = (x.dims()[2], x.dims()[3], v.image_size);
        crate::no_grad(|| {
            let x = x.affine(0.5, 0.5)?; // CLIP reads [0, 1]
            let x = match self.input {
                _ if h == side && w == side => x,
                ClipInput::CenterCrop if h >= side && w >= side => x
                    .narrow(2, (h - side) / 2, side)?
                    .narrow(3, (w - side) / 2, side)?,
                ClipInput::CenterCrop => {
                    return Err(Error::msg(format!(
                    "clip-image conditioner: cannot crop {h}x{w} pictures to CLIP's {side}x{side}"
                )))
                }
                ClipInput::Resize => {
                    let rows = nearest_indices(h, side, x.device())?;
                    let cols = nearest_indices(w, side, x.device())?;
                    x.index_select(&rows, 2)?.index_select(&cols, 3)?
                }
            };
            self.clip
                .image_encoder
                .forward(&x.to_dtype(self.clip.temperature.dtype())?)
        })
    }

    /// CLIP's text embedding `[B, E]` of each prompt (cut to fit its byte tower), no graph.
    pub fn text_embedding(&self, prompts: &[&str], device: Device) -> Result<Tensor> {
        let len = self.clip.config.text_len;
        let cut: Vec<String> = prompts.iter().map(|p| fit_clip_caption(p, len)).collect();
        let refs: Vec<&str> = cut.iter().map(|s| s.as_str()).collect();
        let text = TextBatch::new(&refs, len, device)?;
        crate::no_grad(|| self.clip.text_encoder.forward(&text))
    }

    /// The prior's image embedding `[B, E]` for each prompt, L2-normalized (as CLIP's are).
    pub fn prior_embedding(&self, prompts: &[&str], device: Device) -> Result<Tensor> {
        let text = self.text_embedding(prompts, device)?;
        let ids = self.prior.encode_ids(&self.tokenizer, prompts, device)?;
        self.prior.forward(&text, &ids)?.l2_normalize(1, 1e-12)
    }

    /// Embeddings `[B, E]` -> `K` context tokens `[B, K, D]` with an all-zero padding mask.
    pub fn states(&self, embedding: &Tensor) -> Result<TextStates> {
        let b = embedding.dims()[0];
        let states = self
            .proj
            .forward(embedding)?
            .reshape((b, self.tokens, self.context_dim))?;
        let padding = Tensor::zeros((b, self.tokens), DType::U8, embedding.device())?;
        Ok(TextStates { states, padding })
    }

    /// Sampling: prompt -> CLIP text embedding -> prior -> image embedding -> tokens; the null
    /// prompt gets the zero embedding.
    pub fn encode(&self, prompts: &[&str], device: Device) -> Result<TextStates> {
        let e = crate::no_grad(|| self.prior_embedding(prompts, device))?;
        self.states(&zero_null_rows(&e, prompts)?)
    }

    /// Training: the CLIP image embedding of each training picture `x0` (in [-1, 1]); rows
    /// whose caption was dropped to the null prompt get the zero embedding.
    pub fn training_states(&self, x0: &Tensor, captions: &[&str]) -> Result<TextStates> {
        let e = self.image_embedding(x0)?;
        let e = e.to_dtype(self.proj.weight.dtype())?;
        self.states(&zero_null_rows(&e, captions)?)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "clip-image",
            "clip": self.clip.config.to_json(),
            "prior": self.prior.config.to_json(),
            "tokenizer": self.tokenizer.to_json(),
            "tokens": self.tokens,
            "context_dim": self.context_dim,
            "clip_input": self.input.name(),
        })
    }

    /// Rebuilds (fresh weights; the checkpoint fills them) what [`to_json`](Self::to_json)
    /// described.
    pub fn from_json(v: &serde_json::Value, device: Device) -> Result<Self> {
        let text = |k: &str| -> Result<&str> {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| Error::msg(format!("clip-image conditioner JSON: missing {k}")))
        };
        let clip = Clip::new(ClipConfig::from_json(text("clip")?)?, device)?;
        let prior = Prior::new(
            PriorConfig::from_json(
                v.get("prior")
                    .ok_or_else(|| Error::msg("clip-image conditioner JSON: missing prior"))?,
            )?,
            device,
        )?;
        let tokenizer = PromptTokenizer::from_json(text("tokenizer")?)?;
        let n = |k: &str| json_usize(v, "clip-image conditioner", k);
        Self::from_parts(
            clip,
            prior,
            tokenizer,
            n("tokens")?,
            n("context_dim")?,
            ClipInput::from_name(text("clip_input")?)?,
            device,
        )
    }
}

/// `side_in` source positions sampled at `side_out` evenly spaced centres: `[side_out]` i64.
fn nearest_indices(side_in: usize, side_out: usize, device: Device) -> Result<Tensor> {
    let idx: Vec<i64> = (0..side_out)
        .map(|i| (((2 * i + 1) * side_in) / (2 * side_out)).min(side_in - 1) as i64)
        .collect();
    Tensor::from_vec(idx, side_out, device)
}

/// `e` `[B, E]` with the rows of null prompts set to zero.
fn zero_null_rows(e: &Tensor, prompts: &[&str]) -> Result<Tensor> {
    if prompts.len() != e.dims()[0] {
        return Err(Error::msg(format!(
            "clip-image conditioner: {} prompts for {} embeddings",
            prompts.len(),
            e.dims()[0]
        )));
    }
    if prompts.iter().all(|p| *p != NULL_PROMPT) {
        return Ok(e.clone());
    }
    let keep: Vec<f32> = prompts
        .iter()
        .map(|p| (*p != NULL_PROMPT) as u8 as f32)
        .collect();
    let keep = Tensor::from_vec(keep, (prompts.len(), 1), e.device())?.to_dtype(e.dtype())?;
    e.mul(&keep)
}

impl Module for ClipImageConditioner {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        prefixed("proj", self.proj.named_parameters())
    }
    /// CLIP and the prior: saved with the model, not trained with it.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("clip", self.clip.state_dict());
        v.extend(prefixed("prior", self.prior.state_dict()));
        v
    }
}
