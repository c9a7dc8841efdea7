//! A Vision Transformer image encoder (Dosovitskiy et al., "An Image is Worth 16x16 Words",
//! ICLR 2021), as the image tower of CLIP ("Learning Transferable Visual Models From Natural
//! Language Supervision", Radford et al. 2021) in the small CLIP-from-scratch article the
//! project follows.
//!
//! ```text
//! images [B, C, H, W] --patch_embed (Conv2d, kernel = stride = P)--> [B, W, H/P, W/P]
//!   --> flatten + transpose                                      [B, N, W]   N = HW / P^2
//!   --> cat(class token, patches)                                 [B, N+1, W]
//!   --> + positions [N+1, W]                  (sinusoidal as the article, or learned)
//!   --> blocks.0 .. blocks.{L-1}  (pre-LN self-attention + GELU MLP, ratio 4)
//!   --> class token's state [B, W] @ proj [W, E] (no bias) --> L2-normalized [B, E]
//! ```
//! The class token and the projection start N(0, 1) as the article's `torch.randn`; the other
//! weights use PyTorch's layer defaults.

use super::char_transformer::Positional;
use crate::nn::transformer::TransformerBlockConfig;
use crate::nn::{
    children_parameters, init, list_parameters, param, sinusoidal_positions, Conv2d,
    LearnedPositionalEmbedding, Module, TransformerBlock,
};
use crate::ops::{AttentionOpts, Conv2dParams};
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    /// Transformer width.
    pub width: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Width of the joint image-text embedding.
    pub embed_dim: usize,
    pub positional: Positional,
}

impl VitConfig {
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

pub struct VisionTransformer {
    pub config: VitConfig,
    pub patch_embed: Conv2d,
    /// `[1, 1, W]`.
    pub cls_token: Tensor,
    pub pos_emb: Option<LearnedPositionalEmbedding>,
    sinusoidal: Option<Tensor>,
    pub blocks: Vec<TransformerBlock>,
    /// `[W, E]`, applied as `x @ proj`.
    pub proj: Tensor,
}

impl VisionTransformer {
    pub fn new(config: VitConfig, device: Device) -> Result<Self> {
        let c = &config;
        if c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
            return Err(Error::msg(format!(
                "VisionTransformer: image size {} is not a multiple of the patch size {}",
                c.image_size, c.patch_size
            )));
        }
        let tokens = c.num_patches() + 1;
        let block = TransformerBlockConfig::new(c.width, c.num_heads);
        let patch = Conv2dParams {
            stride: (c.patch_size, c.patch_size),
            ..Default::default()
        };
        Ok(VisionTransformer {
            patch_embed: Conv2d::new(c.channels, c.width, c.patch_size, patch, true, device)?,
            cls_token: param(init::normal(0.0, 1.0, (1, 1, c.width), device)?)?,
            pos_emb: match c.positional {
                Positional::Learned => {
                    Some(LearnedPositionalEmbedding::new(tokens, c.width, device)?)
                }
                Positional::Sinusoidal => None,
            },
            sinusoidal: match c.positional {
                Positional::Sinusoidal => Some(sinusoidal_positions(tokens, c.width, device)?),
                Positional::Learned => None,
            },
            blocks: (0..c.num_layers)
                .map(|_| TransformerBlock::new(&block, device))
                .collect::<Result<_>>()?,
            proj: param(init::normal(0.0, 1.0, (c.width, c.embed_dim), device)?)?,
            config,
        })
    }

    /// `images` `[B, C, H, W]` -> L2-normalized embeddings `[B, E]`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let d = images.dims();
        if images.rank() != 4 || d[1] != c.channels || d[2] != c.image_size || d[3] != c.image_size
        {
            return Err(Error::shape(
                "VisionTransformer",
                format!(
                    "expected images [B, {}, {}, {}]",
                    c.channels, c.image_size, c.image_size
                ),
                &[images.shape()],
            ));
        }
        let b = d[0];
        let n = c.num_patches();
        let patches = self
            .patch_embed
            .forward(images)? // [B, W, H/P, W/P]
            .reshape((b, c.width, n))?
            .transpose(1, 2)?; // [B, N, W]
        let cls = self.cls_token.broadcast_as((b, 1, c.width))?;
        let mut x = Tensor::cat(&[cls, patches], 1)?; // [B, N+1, W]
        x = match (&self.pos_emb, &self.sinusoidal) {
            (Some(p), _) => x.add(&p.forward(n + 1)?)?,
            (None, Some(table)) => x.add(table)?,
            (None, None) => unreachable!("one positional encoding is always built"),
        };
        let opts = AttentionOpts::default();
        for block in &self.blocks {
            x = block.forward(&x, &opts, None)?;
        }
        let cls_state = x.narrow(1, 0, 1)?.reshape((b, c.width))?; // [B, W]
        cls_state.matmul(&self.proj)?.l2_normalize(1, 1e-12)
    }
}

impl Module for VisionTransformer {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("patch_embed", &self.patch_embed)]);
        v.push(("cls_token".to_string(), self.cls_token.clone()));
        if let Some(p) = &self.pos_emb {
            v.extend(children_parameters(&[("pos_emb", p)]));
        }
        v.extend(list_parameters("blocks", &self.blocks));
        v.push(("proj".to_string(), self.proj.clone()));
        v
    }
}
