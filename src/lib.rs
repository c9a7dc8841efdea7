//! # tessera
//!
//! A deep-learning engine written from scratch: n-dimensional tensors with run-time shapes
//! and strided views, reverse-mode autograd on a dynamic graph, a CPU backend (Rayon, SIMD)
//! and a CUDA backend (kernels compiled at run time by NVRTC), neural-network layers,
//! optimizers, safetensors I/O, and text-to-image models built on top.
//!
//! ```
//! use tessera::{Device, DType, Tensor};
//! # fn main() -> tessera::Result<()> {
//! let w = Tensor::randn((3, 2), DType::F32, Device::Cpu)?.requires_grad_()?;
//! let x = Tensor::ones((4, 3), DType::F32, Device::Cpu)?;
//! let loss = x.matmul(&w)?.relu()?.sum_all()?;
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().dims(), &[3, 2]);
//! # Ok(()) }
//! ```
//! See `docs/ARCHITECTURE.md` for how an op travels from this API through autograd to a
//! backend routine.

// The CLI (src/cli/) is written like user code, against `tessera::...` paths.
extern crate self as tessera;

pub mod alloc;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod error;
pub mod io;
/// CUDA kernel sources embedded by `build.rs` (see `kernels/README.md`).
pub mod kernel_sources {
    include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
}
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod random;
pub mod tensor;
pub mod train;

pub use autograd::{no_grad, Gradients};
pub use backend::elementwise::{BinaryOp, CmpOp, UnaryOp};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Dim, Layout, Shape, Tensor, TensorId, WithDType};
