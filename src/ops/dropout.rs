//! Dropout with a seeded counter-based mask.
//!
//! In training, `y_i = x_i * mask_i` with `mask_i = 1/(1-p)` when element `i` is kept and 0
//! otherwise, so `E[y] = x`. Element `i` (row-major over the shape) is kept iff
//! `u_i >= p`, where `u_i = random::uniform_at(seed, offset, i)` and `(seed, offset)` is one
//! fresh draw from the global Philox generator. The mask is a pure function of
//! `(seed, offset, i)`, so a CUDA kernel reproduces it bit for bit and restoring the generator
//! state reproduces it too. The mask is a constant of the graph, so the backward of the `mul`
//! multiplies the gradient by the same `mask` (kept entries scaled by `1/(1-p)`).

use crate::random;
use crate::tensor::{DType, Device, Tensor, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;

/// `scale` where `uniform_at(seed, offset, i) >= p`, else 0, for `i` in `0..n`.
fn mask_values<T: WithDType>(n: usize, p: f64, seed: u64, offset: u64) -> Vec<T> {
    let (kept, dropped) = (T::from_f64(1.0 / (1.0 - p)), T::from_f64(0.0));
    (0..n)
        .into_par_iter()
        .map(|i| {
            if random::uniform_at(seed, offset, i as u64) >= p {
                kept
            } else {
                dropped
            }
        })
        .collect()
}

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)` when `train`;
    /// the identity otherwise. The mask comes from the global Philox generator.
    pub fn dropout(&self, p: f64, train: bool) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!(
                "dropout: probability {p} is outside [0, 1)"
            )));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        // Check the dtype before drawing, so a failed call leaves the generator untouched.
        self.check_float("dropout")?;
        let (seed, offset) = random::next_draw();
        let n = self.elem_count();
        if let Device::Cuda(ordinal) = self.device() {
            // The same mask, drawn on the device (no upload).
            let mask = crate::backend::cuda::random::dropout_mask(
                n,
                self.dtype(),
                p,
                (seed, offset),
                ordinal,
            )?;
            return self.mul(&Tensor::from_storage(
                crate::backend::Storage::Cuda(mask),
                self.shape().clone(),
            ));
        }
        let mask = match self.dtype() {
            DType::F32 => Tensor::from_vec(
                mask_values::<f32>(n, p, seed, offset),
                self.shape().clone(),
                self.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                mask_values::<f64>(n, p, seed, offset),
                self.shape().clone(),
                self.device(),
            )?,
            dtype => {
                return Err(Error::UnsupportedDType {
                    op: "dropout",
                    dtype,
                    expected: "f32 or f64",
                })
            }
        };
        self.mul(&mask)
    }
}
