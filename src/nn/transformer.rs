//! A pre-LN transformer block (GPT-2 / ViT style):
//!
//! ```text
//! x = x + dropout(attn(norm1(x)))                  self-attention
//! x = x + dropout(cross_attn(norm_cross(x), ctx))  optional cross-attention
//! x = x + dropout(mlp(norm2(x)))                   mlp = fc2(act(fc1(.))), hidden = ratio * C
//! ```
//! Parameter names follow timm: `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`
//! (plus `norm_cross`, `cross_attn.q`, `cross_attn.kv`, `cross_attn.proj`).

use super::{children_parameters, Dropout, LayerNorm, Linear, Module, MultiHeadAttention};
use crate::ops::AttentionOpts;
use crate::{DType, Device, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu(),
            Activation::GeluTanh => x.gelu_tanh(),
            Activation::Relu => x.relu(),
        }
    }
}

pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: Activation,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, activation: Activation, device: Device) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(dim, hidden, true, device)?,
            fc2: Linear::new(hidden, dim, true, device)?,
            activation,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&self.activation.apply(&self.fc1.forward(x)?)?)
    }
    /// The same MLP with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(Mlp {
            fc1: self.fc1.into_dtype(dtype)?,
            fc2: self.fc2.into_dtype(dtype)?,
            activation: self.activation,
        })
    }
}

impl Module for Mlp {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        children_parameters(&[("fc1", &self.fc1), ("fc2", &self.fc2)])
    }
}

#[derive(Clone, Debug)]
pub struct TransformerBlockConfig {
    pub dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub activation: Activation,
    pub dropout: f64,
    pub bias: bool,
    /// Width of the context for an added cross-attention layer.
    pub cross_attention_dim: Option<usize>,
    pub norm_eps: f64,
}

impl TransformerBlockConfig {
    pub fn new(dim: usize, num_heads: usize) -> Self {
        TransformerBlockConfig {
            dim,
            num_heads,
            mlp_ratio: 4.0,
            activation: Activation::Gelu,
            dropout: 0.0,
            bias: true,
            cross_attention_dim: None,
            norm_eps: 1e-5,
        }
    }
}

pub struct TransformerBlock {
    pub norm1: LayerNorm,
    pub attn: MultiHeadAttention,
    pub cross: Option<(LayerNorm, MultiHeadAttention)>,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub dropout: Dropout,
}

impl TransformerBlock {
    pub fn new(cfg: &TransformerBlockConfig, device: Device) -> Result<Self> {
        let hidden = (cfg.dim as f64 * cfg.mlp_ratio).round() as usize;
        let cross = match cfg.cross_attention_dim {
            Some(cd) => Some((
                LayerNorm::new(cfg.dim, cfg.norm_eps, device)?,
                MultiHeadAttention::new_cross(cfg.dim, cd, cfg.num_heads, cfg.bias, device)?,
            )),
            None => None,
        };
        Ok(TransformerBlock {
            norm1: LayerNorm::new(cfg.dim, cfg.norm_eps, device)?,
            attn: MultiHeadAttention::new_self(cfg.dim, cfg.num_heads, cfg.bias, device)?,
            cross,
            norm2: LayerNorm::new(cfg.dim, cfg.norm_eps, device)?,
            mlp: Mlp::new(cfg.dim, hidden, cfg.activation, device)?,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    /// The same block with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        let cross = match self.cross {
            Some((norm, attn)) => Some((norm.into_dtype(dtype)?, attn.into_dtype(dtype)?)),
            None => None,
        };
        Ok(TransformerBlock {
            norm1: self.norm1.into_dtype(dtype)?,
            attn: self.attn.into_dtype(dtype)?,
            cross,
            norm2: self.norm2.into_dtype(dtype)?,
            mlp: self.mlp.into_dtype(dtype)?,
            dropout: self.dropout,
        })
    }

    /// `x` `[B, T, C]`; `self_opts` carries the causal / padding masks of the self-attention;
    /// `context` `[B, S, C_ctx]` with `context_opts` feeds the cross-attention when present.
    pub fn forward(
        &self,
        x: &Tensor,
        self_opts: &AttentionOpts,
        context: Option<(&Tensor, &AttentionOpts)>,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.norm1.forward(x)?, None, self_opts)?;
        let mut x = x.add(&self.dropout.forward(&h)?)?;
        if let (Some((norm, attn)), Some((ctx, opts))) = (&self.cross, context) {
            let h = attn.forward(&norm.forward(&x)?, Some(ctx), opts)?;
            x = x.add(&self.dropout.forward(&h)?)?;
        }
        let h = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x.add(&self.dropout.forward(&h)?)
    }
}

impl Module for TransformerBlock {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("norm1", &self.norm1), ("attn", &self.attn)]);
        if let Some((norm, attn)) = &self.cross {
            v.extend(children_parameters(&[
                ("norm_cross", norm),
                ("cross_attn", attn),
            ]));
        }
        v.extend(children_parameters(&[
            ("norm2", &self.norm2),
            ("mlp", &self.mlp),
        ]));
        v
    }
    fn set_training(&self, training: bool) {
        self.dropout.set_training(training)
    }
}
