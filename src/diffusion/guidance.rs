//! Classifier-free guidance (Ho & Salimans 2022). In training the caption is replaced by the
//! null prompt for [`CFG_DROPOUT`] of the samples, so one network learns both the conditional
//! and the unconditional prediction; at sampling the two are combined as
//! `uncond + scale * (cond - uncond)` (scale 1 = plain conditional, > 1 = stronger adherence).
//! The null condition is the empty prompt, which every text conditioner can encode.

use crate::random::Rng;
use crate::{Error, Result, Tensor};

/// The unconditional "caption".
pub const NULL_PROMPT: &str = "";
/// Fraction of training captions replaced by [`NULL_PROMPT`].
pub const CFG_DROPOUT: f64 = 0.1;

/// `uncond + scale * (cond - uncond)`.
pub fn guided(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    if !scale.is_finite() {
        return Err(Error::msg(format!("guidance scale {scale} is not finite")));
    }
    if scale == 1.0 {
        return Ok(cond.clone());
    }
    uncond.add(&cond.sub(uncond)?.affine(scale, 0.0)?)
}

/// Replaces each caption by [`NULL_PROMPT`] with probability `p`; returns how many were.
pub fn drop_captions(captions: &mut [String], p: f64, rng: &mut Rng) -> usize {
    let mut dropped = 0;
    for c in captions.iter_mut() {
        if rng.uniform() < p {
            *c = NULL_PROMPT.to_string();
            dropped += 1;
        }
    }
    dropped
}
