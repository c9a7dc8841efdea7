//! Data parallelism inside one training step, for models too small to keep two cores busy
//! one op at a time.
//!
//! The demo's U-Net on 8 pictures of 16x16 tokens runs thousands of ops per step, most of
//! them tens of microseconds long: split inside each op, the second core spends its time
//! waking up and waiting (2 threads gave 1.16x one thread's speed on the Ice Lake VM of
//! session 11). Splitting the *batch* instead gives each core a whole forward and backward
//! pass of its own, as two data-parallel workers would (PyTorch's DDP with two ranks):
//!
//! ```text
//! batch [B] -> parts [0, B/P), [B/P, 2B/P), ...     (P = `parts`, fixed by the caller)
//! part i (on the pool, side by side):  loss_i = loss(part i) * len_i / B
//!                                      g_i    = d loss_i / d params   (Tensor::gradients)
//! after all parts:  param.grad += g_0 + g_1 + ... (added in part order)
//!                   loss = loss_0 + loss_1 + ...
//! ```
//! For a loss that is a mean over samples of per-sample terms (no batch statistics: GroupNorm
//! and LayerNorm are per sample, BatchNorm is not), `loss` and the summed gradient equal the
//! whole batch's up to rounding. The sums run in part order and each part's ops are
//! deterministic for a given thread count, so results depend on `parts` but not on when
//! the threads finish. Memory: the parts' graphs are alive at the same time, about what the
//! whole batch's graph held.
//!
//! Random draws from the global stream (dropout) inside the parts would be taken in whatever
//! order the threads reach them; [`step`] refuses such a loss instead of giving results that
//! change from run to run. It counts the draws of the thread that runs each part's closure
//! ([`draws_on_this_thread`]), so other threads drawing at the same time (another training
//! loop, a test beside this one) are not mistaken for the loss's own. Each part runs with
//! the caller's grad mode: the mode is per thread, and a pool worker can take a part while one
//! of its earlier jobs waits inside a `no_grad` (a test beside this one sampling, say), which
//! made the part record no graph.

use crate::autograd::{grad_mode_guard, is_grad_enabled};
use crate::random::draws_on_this_thread;
use crate::{Error, Result, Tensor};
use rayon::prelude::*;
use std::ops::Range;

/// The contiguous sample ranges of `batch` samples cut into `parts` (at most `batch`) near
/// equal parts, the longer ones first.
pub fn split(batch: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, batch.max(1));
    let (base, extra) = (batch / parts, batch % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// One step's forward and backward over `batch` samples in `parts` parts run side by side
/// on the Rayon pool. `loss_of(range)` must return the mean loss of those samples (a
/// one-element tensor); each part's gradient with respect to `params` is added to the
/// parameters' `.grad()` in part order (accumulating onto what is there, like `backward`).
/// Returns the batch's mean loss. With `parts == 1` this is `loss_of(0..batch)` then
/// `backward()`, bit for bit.
pub fn step(
    params: &[(String, Tensor)],
    batch: usize,
    parts: usize,
    loss_of: impl Fn(Range<usize>) -> Result<Tensor> + Sync,
) -> Result<f64> {
    if batch == 0 {
        return Err(Error::msg("data-parallel step: empty batch"));
    }
    let ranges = split(batch, parts);
    if ranges.len() == 1 {
        let loss = loss_of(0..batch)?;
        let value = loss.item()?;
        loss.backward()?;
        return Ok(value);
    }
    let mode = is_grad_enabled();
    let results: Vec<(f64, crate::autograd::Gradients)> = ranges
        .par_iter()
        .map(|r| {
            // The caller's grad mode, whatever the worker was doing when it took this part.
            let _mode = grad_mode_guard(mode);
            let draws = draws_on_this_thread();
            let loss = loss_of(r.clone())?;
            if draws_on_this_thread() != draws {
                return Err(Error::msg(
                    "data-parallel step: the loss drew from the global random stream \
                     (dropout?), whose order across parallel parts is not fixed; use one part \
                     for this model",
                ));
            }
            if loss.elem_count() != 1 {
                return Err(Error::msg(format!(
                    "data-parallel step: the loss of samples {r:?} has shape {}, not one element",
                    loss.shape()
                )));
            }
            let share = r.len() as f64 / batch as f64;
            let loss = loss.mul_scalar(share)?;
            let value = loss.item()?;
            Ok((value, loss.gradients()?))
        })
        .collect::<Result<_>>()?;
    let mut total = 0.0;
    for (value, _) in &results {
        total += value;
    }
    for (_, p) in params {
        let mut sum: Option<Tensor> = None;
        for (_, grads) in &results {
            if let Some(g) = grads.get(p) {
                sum = Some(match sum {
                    Some(s) => s.add(g)?,
                    None => g.clone(),
                });
            }
        }
        if let Some(g) = sum {
            let acc = match p.grad() {
                Some(prev) => prev.add(&g)?,
                None => g,
            };
            p.set_grad(Some(acc));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_batch_in_order() {
        assert_eq!(split(8, 2), vec![0..4, 4..8]);
        assert_eq!(split(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(split(2, 5), vec![0..1, 1..2]);
        assert_eq!(split(5, 1), vec![0..5]);
    }
}
