//! PNDM sampling: pseudo numerical methods for diffusion models (Liu, Ren, Lin & Zhao 2022,
//! "Pseudo Numerical Methods for Diffusion Models on Manifolds"), in its linear multistep
//! form (PLMS). Deterministic: it solves the probability-flow ODE and adds no fresh noise.
//!
//! A step from `t` to `t'` has two parts.
//! - The *transfer* `phi(x_t, e, t -> t')` is DDIM's deterministic step with `e` as the noise:
//!   ```text
//!   x0   = (x_t - sqrt(1 - ab_t) e) / sqrt(ab_t)
//!   x_t' = sqrt(ab_t') x0 + sqrt(1 - ab_t') e
//!   ```
//!   In `xbar = x / sqrt(ab)`, `sigma = sqrt((1 - ab) / ab)` it reads
//!   `xbar' = xbar + (sigma' - sigma) e`: exact while the noise stays `e`, so the step keeps
//!   to the data's noise levels where a generic ODE step would not.
//! - The *gradient* `e` given to `phi` is a linear multistep (Adams-Bashforth) combination of
//!   the model's last noise predictions, `e_k` made `k` steps back, with weights uniform in
//!   the step index:
//!   ```text
//!   e = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24
//!   ```
//!   and the lower orders `e_0`, `(3 e_0 - e_1) / 2`, `(23 e_0 - 16 e_1 + 5 e_2) / 12` while
//!   fewer predictions are known. The weights sum to 1, so a model that always names the
//!   same `x0` still lands on it exactly, as with DDIM.
//!
//! **Warm start.** The paper starts with three pseudo Runge-Kutta steps (4 network calls
//! each). Here the start is the lower-order one of diffusers' `skip_prk_steps` and the
//! latent-diffusion PLMS sampler: one pseudo improved Euler (Heun) step, which predicts `e`
//! at `x_t`, transfers to `t'`, predicts `e'` there and transfers again from `x_t` with
//! `(e + e') / 2` (2 calls), then the multistep at orders 2, 3 and 4. Why: 10 steps cost 11
//! calls instead of 19, and a throwaway prototype (Python, the Gaussian problem of
//! tests/pndm.rs on the cosine schedule, its own 512 starting points) measured the
//! Runge-Kutta start no better from 10 steps on: RMS error to the exact end point at 10
//! steps 1.0e-3 with this start (11 calls) against 1.6e-3 (19 calls); at 20 steps 2.8e-4
//! against 2.7e-4.
//!
//! **The first step is DDIM's.** The grid is DDIM's
//! ([`ddim_timesteps`](super::ddim::ddim_timesteps)): it starts at `T - 1`, the noisiest
//! training level. With the cosine schedule that level is singular: its beta is clipped at
//! 0.999, so `alpha_bar` falls a thousandfold in that one step (`sigma` from 641 to 2e4).
//! Along the way down to the next grid point (`sigma` about 6 for 10 steps) the noise is
//! nearly constant in `sigma`, which makes DDIM's step almost exact, but a combination that
//! gives the predictions at both ends comparable weight is off by `sigma` times their
//! difference and blows up (that Gaussian problem, 10 steps: RMS error 4.7, against 0.07 for
//! DDIM at the same 11 calls). So the first step is a plain DDIM step, its prediction stays
//! out of the history, and the warm start begins at the second grid point. On the linear
//! schedule (`sigma` 157 at `T - 1`) the prototype measured the errors with and without this
//! within 10% of each other from 10 steps on.
//!
//! **Cost.** `N` steps call the network `N + 1` times for `N >= 3` (the DDIM step, 2 for the
//! Heun step, then one per step), `N` times for `N <= 2`, where PNDM is DDIM (a Heun step
//! needs a prediction at its end, and the clean image has none). [`pndm_network_calls`] says
//! so; a test counts. With guidance each call is one batch of `[cond; uncond]`, as for DDIM.
//!
//! **Clipping.** With `clip_x0` each prediction's `x0` is clamped to [-1, 1] and its `eps`
//! recomputed ([`NoiseSchedule::split_prediction`]) *before* it enters the combination: the
//! clamp belongs to the vector field the multistep integrates (a model whose `x0` never
//! leaves the data range), exactly as DDIM steps along that field. Clamping the `x0` of the
//! combined `e` instead would project an extrapolation, which is no step of any ODE. The
//! clamped field has kinks where the clamp switches on, so the fourth order holds only
//! away from them, and the combination's own `x0` can leave [-1, 1] by its extrapolation
//! (callers clamp the final image to the pixel range).

use super::ddim::{ddim_step, spread_timesteps};
use super::schedule::{NoiseSchedule, Prediction};
use crate::{Result, Tensor};

/// The timesteps PNDM visits: DDIM's grid, `steps` of them from `T - 1` down to 0.
pub fn pndm_timesteps(train_steps: usize, steps: usize) -> Result<Vec<usize>> {
    spread_timesteps("PNDM", train_steps, steps)
}

/// How many times [`pndm_sample`] calls the network for `steps` steps.
pub fn pndm_network_calls(steps: usize) -> usize {
    if steps >= 3 {
        steps + 1
    } else {
        steps
    }
}

/// Adams-Bashforth weights of orders 1 to 4 (`MULTISTEP_WEIGHTS[k - 1]`), oldest prediction
/// first: order `k` integrates every polynomial of degree below `k` through the last `k`
/// predictions exactly over the next step (a test checks it).
pub const MULTISTEP_WEIGHTS: [&[f64]; 4] = [
    &[1.0],
    &[-1.0 / 2.0, 3.0 / 2.0],
    &[5.0 / 12.0, -16.0 / 12.0, 23.0 / 12.0],
    &[-9.0 / 24.0, 37.0 / 24.0, -59.0 / 24.0, 55.0 / 24.0],
];

/// The noise for the next transfer from the last (up to 4) predictions, oldest first.
fn multistep_eps(history: &[Tensor]) -> Result<Tensor> {
    let weights = MULTISTEP_WEIGHTS[history.len().clamp(1, 4) - 1];
    let recent = &history[history.len() - weights.len()..];
    let mut e = recent[0].affine(weights[0], 0.0)?;
    for (eps, &w) in recent.iter().zip(weights).skip(1) {
        e = e.add(&eps.affine(w, 0.0)?)?;
    }
    Ok(e)
}

/// `phi(x_t, eps, t -> t_prev)`: DDIM's deterministic step (`t_prev = None`: the clean image).
fn transfer(
    schedule: &NoiseSchedule,
    x: &Tensor,
    eps: &Tensor,
    t: usize,
    t_prev: Option<usize>,
) -> Result<Tensor> {
    let b = x.dims().first().copied().unwrap_or(0);
    let x0 = schedule.x0_from_eps(x, eps, &vec![t; b])?;
    ddim_step(schedule, t, t_prev, &x0, eps, 0.0, None)
}

/// Samples in `steps` PNDM steps from `x_T` (see [`ddpm_sample`](super::ddpm_sample) for
/// `model` and `on_step`; `on_step` is called once per step, not per network call).
pub fn pndm_sample(
    schedule: &NoiseSchedule,
    prediction: Prediction,
    x_start: &Tensor,
    steps: usize,
    clip_x0: bool,
    mut model: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    mut on_step: impl FnMut(),
) -> Result<Tensor> {
    let ts = pndm_timesteps(schedule.num_steps(), steps)?;
    let b = x_start.dims().first().copied().unwrap_or(0);
    // The network's output at (x, t) as the pair (x0, eps), clamped when asked.
    let mut predict = |x: &Tensor, t: usize| -> Result<(Tensor, Tensor)> {
        let out = model(x, t)?;
        schedule.split_prediction(prediction, x, &out, &vec![t; b], clip_x0)
    };
    let mut x = x_start.clone();
    // The last predictions, oldest first (at most 4 are read).
    let mut history: Vec<Tensor> = Vec::with_capacity(4);
    for (i, &t) in ts.iter().enumerate() {
        let t_prev = ts.get(i + 1).copied();
        let (x0, eps) = predict(&x, t)?;
        x = match t_prev {
            // The singular noisiest level: a plain DDIM step, kept out of the history.
            _ if i == 0 => ddim_step(schedule, t, t_prev, &x0, &eps, 0.0, None)?,
            // Warm start: pseudo improved Euler, the slope averaged over both ends.
            Some(next) if history.is_empty() => {
                let x_euler = ddim_step(schedule, t, t_prev, &x0, &eps, 0.0, None)?;
                let (_, eps_end) = predict(&x_euler, next)?;
                let mean = eps.add(&eps_end)?.affine(0.5, 0.0)?;
                history.push(eps);
                transfer(schedule, &x, &mean, t, t_prev)?
            }
            _ => {
                if history.len() == 4 {
                    history.remove(0);
                }
                history.push(eps);
                transfer(schedule, &x, &multistep_eps(&history)?, t, t_prev)?
            }
        };
        on_step();
    }
    Ok(x)
}
