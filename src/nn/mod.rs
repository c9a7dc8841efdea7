//! Neural-network layers on top of the tensor ops.
//!
//! A layer is a plain struct holding its parameter tensors (leaves that require grad) and a
//! `forward` method. The [`Module`] trait adds what every layer shares: hierarchical parameter
//! names in PyTorch's `state_dict` style (`blocks.0.attn.qkv.weight`), buffers (batch-norm
//! running statistics), train/eval mode, and freezing. Names are built at query time from the
//! field names each layer lists, so a layer never needs to know where it sits in a model.

pub mod attention;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod init;
pub mod linear;
pub mod norm;
pub mod positional;
pub mod transformer;

pub use attention::MultiHeadAttention;
pub use conv::Conv2d;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::{BatchNorm2d, GroupNorm, LayerNorm};
pub use positional::{sinusoidal_positions, LearnedPositionalEmbedding};
pub use transformer::{Activation, Mlp, TransformerBlock};

use crate::{DType, Result, Tensor};

pub trait Module {
    /// Trainable (or frozen) parameters with their full dotted names.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
    /// Non-trainable state saved with the model (running statistics).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Switches dropout and batch norm between training and evaluation behaviour.
    fn set_training(&self, _training: bool) {}

    fn train(&self) {
        self.set_training(true)
    }
    fn eval(&self) {
        self.set_training(false)
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
    /// Parameters and buffers, as PyTorch's `state_dict()`.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v = self.named_parameters();
        v.extend(self.named_buffers());
        v
    }
    /// Stops gradients to every parameter (e.g. a frozen feature extractor).
    fn freeze(&self) -> Result<()> {
        self.named_parameters()
            .iter()
            .try_for_each(|(_, p)| p.set_requires_grad(false))
    }
    fn unfreeze(&self) -> Result<()> {
        self.named_parameters()
            .iter()
            .try_for_each(|(_, p)| p.set_requires_grad(true))
    }
    fn num_parameters(&self) -> usize {
        self.named_parameters()
            .iter()
            .map(|(_, p)| p.elem_count())
            .sum()
    }
}

/// Joins child names under `prefix` (`"attn"` + `"qkv.weight"` = `"attn.qkv.weight"`).
pub fn prefixed(prefix: &str, named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(n, t)| {
            if prefix.is_empty() {
                (n, t)
            } else {
                (format!("{prefix}.{n}"), t)
            }
        })
        .collect()
}

/// Parameters of named children, e.g. `children(&[("norm1", &self.norm1), ("attn", &self.attn)])`.
pub fn children_parameters(children: &[(&str, &dyn Module)]) -> Vec<(String, Tensor)> {
    children
        .iter()
        .flat_map(|(name, m)| prefixed(name, m.named_parameters()))
        .collect()
}
pub fn children_buffers(children: &[(&str, &dyn Module)]) -> Vec<(String, Tensor)> {
    children
        .iter()
        .flat_map(|(name, m)| prefixed(name, m.named_buffers()))
        .collect()
}
/// Parameters of a list of layers named `prefix.0`, `prefix.1`, … (PyTorch's `ModuleList`).
pub fn list_parameters<M: Module>(prefix: &str, items: &[M]) -> Vec<(String, Tensor)> {
    items
        .iter()
        .enumerate()
        .flat_map(|(i, m)| prefixed(&format!("{prefix}.{i}"), m.named_parameters()))
        .collect()
}
pub fn list_buffers<M: Module>(prefix: &str, items: &[M]) -> Vec<(String, Tensor)> {
    items
        .iter()
        .enumerate()
        .flat_map(|(i, m)| prefixed(&format!("{prefix}.{i}"), m.named_buffers()))
        .collect()
}

/// A leaf that requires grad: how every layer creates its parameters.
pub(crate) fn param(t: Tensor) -> Result<Tensor> {
    t.requires_grad_()
}

/// A fresh leaf holding `t`'s values in `dtype` (always a copy, never shared storage), with
/// `t`'s requires-grad flag: how the layers' `into_dtype` convert their parameters.
pub(crate) fn cast_param(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let copy = crate::no_grad(|| t.detach().to_dtype(dtype)?.contiguous_copy())?.detach();
    copy.set_requires_grad(t.requires_grad())?;
    Ok(copy)
}
fn cast_opt(t: &Option<Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| cast_param(t, dtype)).transpose()
}
