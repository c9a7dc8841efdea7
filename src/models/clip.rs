//! CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
//! Supervision", 2021) at the scale of the CLIP-from-scratch article the project follows:
//! a ViT image encoder ([`super::vit`]), a byte-level transformer text encoder, and the
//! symmetric contrastive loss over a batch's image-text similarity matrix.
//!
//! ```text
//! text bytes: [SOS=2] caption [EOS=3] [PAD=0 ...]              tokens [B, T], T = 32
//!   --tok_emb--> [B, T, Wt] + sinusoidal positions [T, Wt]
//!   --> blocks (pre-LN, padding keys masked out)                [B, T, Wt]
//!   --> the EOS token's state [B, Wt] @ proj [Wt, E] --> L2-normalized [B, E]
//! images --VisionTransformer--> [B, E]
//! logits = img @ txt^T * exp(t)   [B, B], t learnable, starting at log(1/0.07)
//! loss = (CE(logits, arange B) + CE(logits^T, arange B)) / 2
//! ```
//! Zero-shot classification embeds one caption per class and picks, for each image, the
//! caption with the largest cosine similarity.

use super::char_transformer::Positional;
use super::vit::{VisionTransformer, VitConfig};
use crate::nn::transformer::TransformerBlockConfig;
use crate::nn::{
    children_parameters, init, list_parameters, param, sinusoidal_positions, Embedding, Module,
    TransformerBlock,
};
use crate::ops::{cross_entropy, AttentionOpts, CrossEntropyOpts};
use crate::{DType, Device, Error, Result, Tensor};

/// Byte tokens of the article's tokenizer.
pub const PAD: u8 = 0;
pub const SOS: u8 = 2;
pub const EOS: u8 = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub embed_dim: usize,
    pub vit: VitConfig,
    pub vocab_size: usize,
    pub text_width: usize,
    pub text_len: usize,
    pub text_heads: usize,
    pub text_layers: usize,
}

impl ClipConfig {
    /// Exactly the article's model: 65,370 parameters (image 5,337, text 60,032, temperature 1).
    pub fn seed() -> Self {
        ClipConfig {
            embed_dim: 32,
            vit: VitConfig {
                image_size: 28,
                patch_size: 14,
                channels: 1,
                width: 9,
                num_layers: 3,
                num_heads: 3,
                embed_dim: 32,
                positional: Positional::Sinusoidal,
            },
            vocab_size: 256,
            text_width: 32,
            text_len: 32,
            text_heads: 8,
            text_layers: 4,
        }
    }
    /// A stronger image tower for the same data: 7x7 patches (16 tokens instead of 4), width
    /// 64 with 4 heads of 16, 4 layers, learned positions; the same text tower (266,369
    /// parameters). Trained 10 epochs at lr 1e-3 with a cosine decay (`tessera train clip`'s
    /// defaults for it), it passes 88% zero-shot on Fashion-MNIST in under 10 minutes on two
    /// CPU cores (docs/PERF.md); width 32 plateaued at 87%.
    pub fn default_config() -> Self {
        let mut c = Self::seed();
        c.vit = VitConfig {
            image_size: 28,
            patch_size: 7,
            channels: 1,
            width: 64,
            num_layers: 4,
            num_heads: 4,
            embed_dim: c.embed_dim,
            positional: Positional::Learned,
        };
        c
    }
    /// `seed` or `default`.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "seed" => Ok(Self::seed()),
            "default" => Ok(Self::default_config()),
            other => Err(Error::msg(format!(
                "unknown CLIP configuration {other:?} (expected seed or default)"
            ))),
        }
    }
    /// The same towers for images of `channels x size x size` (another dataset).
    pub fn for_images(mut self, channels: usize, size: usize) -> Self {
        self.vit.channels = channels;
        self.vit.image_size = size;
        self
    }

    pub fn to_json(&self) -> String {
        let v = &self.vit;
        serde_json::json!({
            "embed_dim": self.embed_dim, "vocab_size": self.vocab_size,
            "text_width": self.text_width, "text_len": self.text_len,
            "text_heads": self.text_heads, "text_layers": self.text_layers,
            "image_size": v.image_size, "patch_size": v.patch_size, "channels": v.channels,
            "vit_width": v.width, "vit_layers": v.num_layers, "vit_heads": v.num_heads,
            "vit_positional": match v.positional { Positional::Learned => "learned", Positional::Sinusoidal => "sinusoidal" },
        })
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| Error::msg(format!("CLIP config JSON: {e}")))?;
        let u = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::msg(format!("CLIP config JSON: missing {k}")))
        };
        let embed_dim = u("embed_dim")?;
        Ok(ClipConfig {
            embed_dim,
            vit: VitConfig {
                image_size: u("image_size")?,
                patch_size: u("patch_size")?,
                channels: u("channels")?,
                width: u("vit_width")?,
                num_layers: u("vit_layers")?,
                num_heads: u("vit_heads")?,
                embed_dim,
                positional: if v.get("vit_positional").and_then(|x| x.as_str()) == Some("learned") {
                    Positional::Learned
                } else {
                    Positional::Sinusoidal
                },
            },
            vocab_size: u("vocab_size")?,
            text_width: u("text_width")?,
            text_len: u("text_len")?,
            text_heads: u("text_heads")?,
            text_layers: u("text_layers")?,
        })
    }
}

/// Tokenized captions: `tokens` `[N, T]` (i64), `padding` `[N, T]` (u8, 1 = padding, the
/// attention's key padding mask) and `eos` `[N]` (i64 flat row `n * T + position of EOS`).
#[derive(Clone, Debug)]
pub struct TextBatch {
    pub tokens: Tensor,
    pub padding: Tensor,
    pub eos: Tensor,
}

/// `[SOS] bytes [EOS] [PAD ...]`, `len` tokens; an error when the caption does not fit.
pub fn tokenize(caption: &str, len: usize) -> Result<Vec<u8>> {
    let bytes = caption.as_bytes();
    if bytes.len() + 2 > len {
        return Err(Error::msg(format!(
            "caption {caption:?} has {} bytes; with start and end tokens it must fit in {len}",
            bytes.len()
        )));
    }
    if let Some(&b) = bytes.iter().find(|&&b| b == PAD || b == SOS || b == EOS) {
        return Err(Error::msg(format!(
            "caption {caption:?} contains the control byte {b}, reserved for padding/start/end"
        )));
    }
    let mut t = Vec::with_capacity(len);
    t.push(SOS);
    t.extend_from_slice(bytes);
    t.push(EOS);
    t.resize(len, PAD);
    Ok(t)
}

impl TextBatch {
    pub fn new(captions: &[&str], len: usize, device: Device) -> Result<TextBatch> {
        let n = captions.len();
        let (mut tokens, mut padding, mut eos) = (
            Vec::with_capacity(n * len),
            Vec::with_capacity(n * len),
            Vec::with_capacity(n),
        );
        for (i, c) in captions.iter().enumerate() {
            let t = tokenize(c, len)?;
            eos.push((i * len + c.len() + 1) as i64);
            padding.extend(t.iter().map(|&b| u8::from(b == PAD)));
            tokens.extend(t.iter().map(|&b| b as i64));
        }
        Ok(TextBatch {
            tokens: Tensor::from_vec(tokens, (n, len), device)?,
            padding: Tensor::from_vec(padding, (n, len), device)?,
            eos: Tensor::from_vec(eos, n, device)?,
        })
    }
    pub fn len(&self) -> usize {
        self.tokens.dims()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct TextEncoder {
    pub tok_emb: Embedding,
    positions: Tensor,
    pub blocks: Vec<TransformerBlock>,
    /// `[Wt, E]`, applied as `x @ proj`.
    pub proj: Tensor,
    width: usize,
}

impl TextEncoder {
    pub fn new(c: &ClipConfig, device: Device) -> Result<Self> {
        let block = TransformerBlockConfig::new(c.text_width, c.text_heads);
        Ok(TextEncoder {
            tok_emb: Embedding::new(c.vocab_size, c.text_width, device)?,
            positions: sinusoidal_positions(c.text_len, c.text_width, device)?,
            blocks: (0..c.text_layers)
                .map(|_| TransformerBlock::new(&block, device))
                .collect::<Result<_>>()?,
            proj: param(init::normal(0.0, 1.0, (c.text_width, c.embed_dim), device)?)?,
            width: c.text_width,
        })
    }

    /// Tokenized captions -> L2-normalized embeddings `[N, E]`.
    pub fn forward(&self, text: &TextBatch) -> Result<Tensor> {
        let (n, t) = (text.tokens.dims()[0], text.tokens.dims()[1]);
        if t != self.positions.dims()[0] {
            return Err(Error::shape(
                "TextEncoder",
                format!("expected tokens [N, {}]", self.positions.dims()[0]),
                &[text.tokens.shape()],
            ));
        }
        let mut x = self.tok_emb.forward(&text.tokens)?.add(&self.positions)?; // [N, T, Wt]
        let opts = AttentionOpts {
            key_padding_mask: Some(text.padding.clone()),
            ..Default::default()
        };
        for block in &self.blocks {
            x = block.forward(&x, &opts, None)?;
        }
        let eos_state = x.reshape((n * t, self.width))?.index_select(&text.eos, 0)?; // [N, Wt]
        eos_state.matmul(&self.proj)?.l2_normalize(1, 1e-12)
    }
}

impl Module for TextEncoder {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("tok_emb", &self.tok_emb)]);
        v.extend(list_parameters("blocks", &self.blocks));
        v.push(("proj".to_string(), self.proj.clone()));
        v
    }
}

pub struct Clip {
    pub config: ClipConfig,
    pub image_encoder: VisionTransformer,
    pub text_encoder: TextEncoder,
    /// The log of the logits' scale, a scalar starting at log(1/0.07).
    pub temperature: Tensor,
}

impl Clip {
    pub fn new(config: ClipConfig, device: Device) -> Result<Self> {
        if config.vit.embed_dim != config.embed_dim {
            return Err(Error::msg(format!(
                "CLIP: the image tower's embedding width {} differs from embed_dim {}",
                config.vit.embed_dim, config.embed_dim
            )));
        }
        Ok(Clip {
            image_encoder: VisionTransformer::new(config.vit.clone(), device)?,
            text_encoder: TextEncoder::new(&config, device)?,
            temperature: param(Tensor::full((1.0f64 / 0.07).ln(), (), DType::F32, device)?)?,
            config,
        })
    }

    /// `exp(t) * img @ txt^T`: `[B_img, B_txt]` logits from normalized embeddings.
    pub fn logits(&self, image_emb: &Tensor, text_emb: &Tensor) -> Result<Tensor> {
        image_emb
            .matmul(&text_emb.t()?)?
            .mul(&self.temperature.exp()?)
    }

    /// The contrastive loss of a batch of images and their captions. `pairing[i]` is the row
    /// of `text` that captions image `i` (`None`: row `i`). Repeated captions may thus be
    /// tokenized and encoded once: with [`ContrastiveTargets::Diagonal`] the loss and every
    /// gradient are those of the batch with each caption written out per image, since
    /// `index_select`'s backward sums the gradients of repeated rows.
    pub fn loss(
        &self,
        images: &Tensor,
        text: &TextBatch,
        pairing: Option<&Tensor>,
        targets: ContrastiveTargets,
    ) -> Result<Tensor> {
        let img = self.image_encoder.forward(images)?; // [B, E]
        let txt = self.text_encoder.forward(text)?; // [N, E]
        match (targets, pairing) {
            (ContrastiveTargets::Diagonal, None) => contrastive_loss(&self.logits(&img, &txt)?),
            (ContrastiveTargets::Diagonal, Some(p)) => {
                contrastive_loss(&self.logits(&img, &txt.index_select(p, 0)?)?)
            }
            (ContrastiveTargets::SameCaption, Some(p)) => {
                caption_contrastive_loss(&self.logits(&img, &txt)?, p)
            }
            (ContrastiveTargets::SameCaption, None) => Err(Error::msg(
                "CLIP loss: same-caption targets need each image's row among the distinct captions (a pairing)",
            )),
        }
    }
}

/// What the contrastive loss counts as a match when a batch holds the same caption several
/// times (Fashion-MNIST has 10 captions, so a batch of 128 repeats each ~13 times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContrastiveTargets {
    /// The article's (and CLIP's) loss: image `i` matches caption `i` and nothing else, so
    /// each copy of a caption is asked to pick *its* image among images of the same class.
    Diagonal,
    /// Every image whose caption is the same text is a match (UniCL, Yang et al. 2022):
    /// image -> text is a softmax over the batch's distinct captions; text -> image spreads
    /// the target evenly over the caption's images. Equal to `Diagonal` when no caption
    /// repeats.
    SameCaption,
}

/// CLIP's symmetric cross-entropy: row `i` of the `[B, B]` logits should pick column `i`
/// (image -> text) and column `i` should pick row `i` (text -> image); the mean of both.
pub fn contrastive_loss(logits: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || logits.dims()[0] != logits.dims()[1] {
        return Err(Error::shape(
            "contrastive_loss",
            "expected square logits [B, B]",
            &[logits.shape()],
        ));
    }
    let b = logits.dims()[0];
    let targets = Tensor::arange(b, DType::I64, logits.device())?;
    let opts = CrossEntropyOpts::default();
    let image_to_text = cross_entropy(logits, &targets, opts)?;
    let text_to_image = cross_entropy(&logits.t()?.contiguous()?, &targets, opts)?;
    image_to_text.add(&text_to_image)?.mul_scalar(0.5)
}

/// The symmetric cross-entropy with every same-caption pair a match ([`ContrastiveTargets::SameCaption`]).
/// `logits` `[B, N]` compare `B` images with the batch's `N` distinct captions and
/// `pairing[i]` (`[B]`, i64) is image `i`'s caption. With `P_n` the images captioned `n`:
/// ```text
/// image -> text = -1/B sum_i log softmax_n(logits[i, :])[pairing[i]]
/// text -> image = -1/B sum_n sum_{j in P_n} log softmax_j(logits[:, n])[j]
/// ```
/// The second weighs caption `n` by `|P_n|`, as the diagonal loss does when it repeats the
/// caption per image, with the target spread evenly over `P_n` instead of put on one image.
pub fn caption_contrastive_loss(logits: &Tensor, pairing: &Tensor) -> Result<Tensor> {
    let op = "caption_contrastive_loss";
    if logits.rank() != 2 || pairing.rank() != 1 || pairing.dims()[0] != logits.dims()[0] {
        return Err(Error::shape(
            op,
            "expected logits [B, N] and pairing [B]",
            &[logits.shape(), pairing.shape()],
        ));
    }
    let (b, n) = (logits.dims()[0], logits.dims()[1]);
    let rows = pairing.to_vec::<i64>()?;
    let mut matches = vec![0f32; n * b]; // [N, B]: 1 where image j has caption n
    for (j, &r) in rows.iter().enumerate() {
        if r < 0 || r as usize >= n {
            return Err(Error::msg(format!(
                "{op}: pairing[{j}] = {r} is not a caption row (the logits have {n} columns)"
            )));
        }
        matches[r as usize * b + j] = 1.0;
    }
    let matches = Tensor::from_vec(matches, (n, b), logits.device())?.to_dtype(logits.dtype())?;
    let image_to_text = cross_entropy(logits, pairing, CrossEntropyOpts::default())?;
    let text_to_image = logits
        .t()?
        .contiguous()?
        .log_softmax(1)?
        .mul(&matches)?
        .sum_all()?
        .mul_scalar(-1.0 / b as f64)?;
    image_to_text.add(&text_to_image)?.mul_scalar(0.5)
}

impl Module for Clip {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[
            ("image_encoder", &self.image_encoder),
            ("text_encoder", &self.text_encoder),
        ]);
        v.push(("temperature".to_string(), self.temperature.clone()));
        v
    }
}
