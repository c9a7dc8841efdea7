//! Space-to-depth and back (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution
//! Using an Efficient Sub-Pixel Convolutional Neural Network"), as in PyTorch:
//! ```text
//! pixel_unshuffle(r): [B, C, H*r, W*r] -> [B, C*r*r, H, W]
//!     out[b, c*r*r + i*r + j, y, x] = in[b, c, y*r + i, x*r + j]
//! pixel_shuffle(r):   [B, C*r*r, H, W] -> [B, C, H*r, W*r]   (the inverse)
//! ```
//! Both are a reshape, a permute and a reshape, so autograd records them as views (the last
//! reshape copies once); their backward is the other op.

use crate::{Error, Result, Tensor};

impl Tensor {
    /// `[B, C, H*r, W*r] -> [B, C*r*r, H, W]`: each `r x r` block of pixels becomes `r*r`
    /// channels (a "patchify" that keeps every value).
    pub fn pixel_unshuffle(&self, r: usize) -> Result<Tensor> {
        let op = "pixel_unshuffle";
        let d = self.dims();
        if self.rank() != 4 || r == 0 || !d[2].is_multiple_of(r) || !d[3].is_multiple_of(r) {
            return Err(Error::shape(
                op,
                format!("expected [B, C, H, W] with H and W multiples of the factor {r}"),
                &[self.shape()],
            ));
        }
        let (b, c, h, w) = (d[0], d[1], d[2] / r, d[3] / r);
        self.reshape(vec![b, c, h, r, w, r])?
            .permute(&[0, 1, 3, 5, 2, 4])?
            .reshape((b, c * r * r, h, w))
    }

    /// `[B, C*r*r, H, W] -> [B, C, H*r, W*r]`, the inverse of [`pixel_unshuffle`](Self::pixel_unshuffle).
    pub fn pixel_shuffle(&self, r: usize) -> Result<Tensor> {
        let op = "pixel_shuffle";
        let d = self.dims();
        if self.rank() != 4 || r == 0 || !d[1].is_multiple_of(r * r) {
            return Err(Error::shape(
                op,
                format!("expected [B, C*r*r, H, W] with r = {r}"),
                &[self.shape()],
            ));
        }
        let (b, c, h, w) = (d[0], d[1] / (r * r), d[2], d[3]);
        self.reshape(vec![b, c, r, r, h, w])?
            .permute(&[0, 1, 4, 2, 5, 3])?
            .reshape((b, c, h * r, w * r))
    }
}
