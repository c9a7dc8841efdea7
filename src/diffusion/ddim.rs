//! DDIM sampling (Song, Meng & Ermon 2021), on any subsequence of the training timesteps:
//! ```text
//! sigma   = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)
//! x_prev  = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
//! ```
//! `eta = 0` is deterministic given `x_T`; `eta = 1` over every timestep is the DDPM
//! posterior (a test checks both).

use super::schedule::{NoiseSchedule, Prediction};
use super::StepNoise;
use crate::{Error, Result, Tensor};

/// `steps` timesteps spread evenly over `0..T`, from the noisiest down to 0.
pub fn ddim_timesteps(train_steps: usize, steps: usize) -> Result<Vec<usize>> {
    spread_timesteps("DDIM", train_steps, steps)
}

/// The timesteps of [`ddim_timesteps`], with errors naming `sampler` (PNDM walks the same
/// grid).
pub(crate) fn spread_timesteps(
    sampler: &str,
    train_steps: usize,
    steps: usize,
) -> Result<Vec<usize>> {
    if steps == 0 || steps > train_steps {
        return Err(Error::msg(format!(
            "{sampler}: {steps} sampling steps (expected 1..={train_steps}, the training steps)"
        )));
    }
    let mut ts: Vec<usize> = if steps == 1 {
        vec![train_steps - 1]
    } else {
        (0..steps)
            .map(|i| (i as f64 * (train_steps - 1) as f64 / (steps - 1) as f64).round() as usize)
            .collect()
    };
    ts.dedup();
    ts.reverse();
    Ok(ts)
}

/// One step from `t` to `t_prev` (`None` = the clean image) given the predicted pair. `z`, the
/// fresh noise, is read only when `eta > 0` (and is then required).
pub fn ddim_step(
    schedule: &NoiseSchedule,
    t: usize,
    t_prev: Option<usize>,
    x0: &Tensor,
    eps: &Tensor,
    eta: f64,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    let ab = schedule.alpha_bar(Some(t));
    let ab_prev = schedule.alpha_bar(t_prev);
    let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    let x = x0
        .affine(ab_prev.sqrt(), 0.0)?
        .add(&eps.affine(dir, 0.0)?)?;
    if sigma > 0.0 {
        let z = z.ok_or_else(|| {
            Error::msg(format!(
                "DDIM: eta = {eta} adds noise, and no noise was given"
            ))
        })?;
        x.add(&z.affine(sigma, 0.0)?)
    } else {
        Ok(x)
    }
}

/// Samples in `steps` DDIM steps from `x_T` (see [`ddpm_sample`](super::ddpm_sample) for
/// `model` and `on_step`).
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample(
    schedule: &NoiseSchedule,
    prediction: Prediction,
    x_start: &Tensor,
    steps: usize,
    eta: f64,
    noise: &StepNoise,
    clip_x0: bool,
    mut model: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    mut on_step: impl FnMut(),
) -> Result<Tensor> {
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(Error::msg(format!("DDIM: eta = {eta} must be >= 0")));
    }
    let ts = ddim_timesteps(schedule.num_steps(), steps)?;
    let b = x_start.dims().first().copied().unwrap_or(0);
    let mut x = x_start.clone();
    for (i, &t) in ts.iter().enumerate() {
        let t_prev = ts.get(i + 1).copied();
        let out = model(&x, t)?;
        let (x0, eps) = schedule.split_prediction(prediction, &x, &out, &vec![t; b], clip_x0)?;
        let z = if eta > 0.0 {
            Some(noise.at(t, &x)?)
        } else {
            None
        };
        x = ddim_step(schedule, t, t_prev, &x0, &eps, eta, z.as_ref())?;
        on_step();
    }
    Ok(x)
}
