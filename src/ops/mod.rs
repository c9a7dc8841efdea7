//! Differentiable ops, one file per family. Each op runs its forward through the backend
//! primitive and records its backward rule right beside it with `Tensor::record`: the
//! closure receives the output gradient and returns one gradient per input, computed with
//! other tensor ops (under no-grad). Closures capture only detached tensors.

pub mod attention;
mod binary;
mod cmp;
pub mod conv;
mod dropout;
mod index;
pub mod loss;
mod matmul;
pub mod norm;
mod pixel_shuffle;
pub mod pool;
mod reduce;
mod similarity;
mod softmax;
mod unary;

pub use attention::{
    scaled_dot_product_attention, scaled_dot_product_attention_packed, AttentionOpts,
};
pub use conv::Conv2dParams;
pub use loss::{cross_entropy, mse_loss, CrossEntropyOpts};
