//! The text-to-image diffusion model: a [`Conditioner`] turns prompts into token states, the
//! U-Net predicts the noise (or `v`) of a noised image given those states and the timestep,
//! and a sampler (DDPM, DDIM or PNDM, with classifier-free guidance) turns noise into pictures.
//!
//! Images live in [-1, 1] inside the model (`x = 2 * pixel - 1`) and come out in [0, 1].

use super::conditioning::Conditioner;
use super::ddim::ddim_sample;
use super::ddpm::ddpm_sample;
use super::guidance::{guided, NULL_PROMPT};
use super::pndm::{pndm_network_calls, pndm_sample};
use super::schedule::{BetaSchedule, NoiseSchedule, Prediction};
use super::StepNoise;
use crate::data::PromptTokenizer;
use crate::models::unet::{json_usize, UNet, UNetConfig, CURRENT_CAPTION};
use crate::nn::{prefixed, Module};
use crate::ops::mse_loss;
use crate::{Device, Error, Result, Tensor};

/// Everything needed to rebuild the model (saved as JSON in checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusionConfig {
    pub image_size: usize,
    /// `T`, the number of noise levels in training.
    pub train_steps: usize,
    pub schedule: BetaSchedule,
    pub prediction: Prediction,
    pub unet: UNetConfig,
    pub text_max_len: usize,
    pub text_dim: usize,
    pub text_heads: usize,
    pub text_layers: usize,
}

impl DiffusionConfig {
    /// The CPU-sized model for 32x32 shapes.
    pub fn small() -> Self {
        let text_dim = 64;
        DiffusionConfig {
            image_size: 32,
            train_steps: 1000,
            schedule: BetaSchedule::cosine(),
            prediction: Prediction::V,
            unet: UNetConfig::small(text_dim),
            text_max_len: 48,
            text_dim,
            text_heads: 4,
            text_layers: 2,
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "image_size": self.image_size, "train_steps": self.train_steps,
            "schedule": self.schedule.name(), "prediction": self.prediction.name(),
            "unet": self.unet.to_json(),
            "text_max_len": self.text_max_len, "text_dim": self.text_dim,
            "text_heads": self.text_heads, "text_layers": self.text_layers,
        })
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| Error::msg(format!("diffusion config JSON: {e}")))?;
        let n = |k: &str| json_usize(&v, "diffusion", k);
        let text = |k: &str| -> Result<&str> {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| Error::msg(format!("diffusion config JSON: missing {k}")))
        };
        Ok(DiffusionConfig {
            image_size: n("image_size")?,
            train_steps: n("train_steps")?,
            schedule: BetaSchedule::from_name(text("schedule")?)?,
            prediction: Prediction::from_name(text("prediction")?)?,
            unet: UNetConfig::from_json(
                v.get("unet")
                    .ok_or_else(|| Error::msg("diffusion config JSON: missing unet"))?,
            )?,
            text_max_len: n("text_max_len")?,
            text_dim: n("text_dim")?,
            text_heads: n("text_heads")?,
            text_layers: n("text_layers")?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// Ancestral sampling over all `T` training steps.
    Ddpm,
    /// DDIM over `steps` of them, with `eta` of fresh noise.
    Ddim,
    /// PNDM's pseudo linear multistep over `steps` of them (deterministic).
    Pndm,
}

impl Sampler {
    /// `ddpm`, `ddim` or `pndm`.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Ddpm => "ddpm",
            Sampler::Ddim => "ddim",
            Sampler::Pndm => "pndm",
        }
    }
}

/// How to sample.
#[derive(Clone, Copy, Debug)]
pub struct SampleOpts {
    pub sampler: Sampler,
    /// DDIM and PNDM steps (DDPM always runs all `T`).
    pub steps: usize,
    /// DDIM's eta (0 = deterministic); PNDM is deterministic and takes only 0.
    pub eta: f64,
    /// Classifier-free guidance scale (1 = none, no unconditional pass).
    pub guidance: f64,
    pub seed: u64,
    /// Clamp the predicted `x0` to the data range at every step.
    pub clip_x0: bool,
}

impl SampleOpts {
    /// The denoising steps `sample` takes (its `on_step` calls) with `train_steps` noise
    /// levels.
    pub fn denoising_steps(&self, train_steps: usize) -> usize {
        match self.sampler {
            Sampler::Ddpm => train_steps,
            Sampler::Ddim | Sampler::Pndm => self.steps,
        }
    }
    /// How many times `sample` runs the U-Net (on a doubled batch with guidance).
    pub fn network_calls(&self, train_steps: usize) -> usize {
        match self.sampler {
            Sampler::Ddpm | Sampler::Ddim => self.denoising_steps(train_steps),
            Sampler::Pndm => pndm_network_calls(self.steps),
        }
    }
}

impl Default for SampleOpts {
    fn default() -> Self {
        SampleOpts {
            sampler: Sampler::Ddim,
            steps: 50,
            eta: 0.0,
            guidance: 3.0,
            seed: 0,
            clip_x0: true,
        }
    }
}

pub struct TextToImage {
    pub config: DiffusionConfig,
    pub unet: UNet,
    pub text: Conditioner,
    pub schedule: NoiseSchedule,
}

impl TextToImage {
    /// A fresh model with a jointly trained text encoder over `tokenizer`'s tokens.
    pub fn new(
        config: DiffusionConfig,
        tokenizer: PromptTokenizer,
        device: Device,
    ) -> Result<Self> {
        let text = Conditioner::new_prompt(
            tokenizer,
            config.text_max_len,
            config.text_dim,
            config.text_heads,
            config.text_layers,
            device,
        )?;
        Self::with_conditioner(config, text, device)
    }

    pub fn with_conditioner(
        config: DiffusionConfig,
        text: Conditioner,
        device: Device,
    ) -> Result<Self> {
        if text.context_dim() != config.unet.context_dim {
            return Err(Error::msg(format!(
                "TextToImage: the conditioner gives {}-wide states, the U-Net reads {}",
                text.context_dim(),
                config.unet.context_dim
            )));
        }
        let m = config.unet.size_multiple();
        if config.image_size == 0 || !config.image_size.is_multiple_of(m) {
            return Err(Error::msg(format!(
                "TextToImage: image size {} is not a positive multiple of {m}",
                config.image_size
            )));
        }
        Ok(TextToImage {
            unet: UNet::new(config.unet.clone(), device)?,
            schedule: NoiseSchedule::new(config.schedule, config.train_steps)?,
            text,
            config,
        })
    }

    pub fn device(&self) -> Device {
        self.unet.conv_in.weight.device()
    }

    /// The network's output (eps or v) for `x_t` `[B, 3, S, S]` at timesteps `t`.
    pub fn predict(&self, x_t: &Tensor, t: &[usize], prompts: &[&str]) -> Result<Tensor> {
        let s = self.text.encode(prompts, self.device())?;
        self.unet
            .forward(x_t, t, &s.states, &s.padding, CURRENT_CAPTION)
    }

    /// The training loss: `x0` `[B, 3, S, S]` in [-1, 1] is noised to `x_t` at `t` with
    /// `noise`, and the MSE between the network's output and its target is returned.
    pub fn loss(
        &self,
        x0: &Tensor,
        prompts: &[&str],
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Tensor> {
        let x_t = self.schedule.q_sample(x0, noise, t)?;
        let target = self.schedule.target(self.config.prediction, x0, noise, t)?;
        mse_loss(&self.predict(&x_t, t, prompts)?, &target)
    }

    /// The training loss for a batch: [`loss`](Self::loss) with text conditioners; with the
    /// unCLIP conditioner the condition is the CLIP image embedding of `x0` itself (zero where
    /// the caption was dropped to the null prompt), not the caption.
    pub fn training_loss(
        &self,
        x0: &Tensor,
        captions: &[&str],
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Tensor> {
        let Conditioner::ClipImage(c) = &self.text else {
            return self.loss(x0, captions, t, noise);
        };
        let s = c.training_states(x0, captions)?;
        let x_t = self.schedule.q_sample(x0, noise, t)?;
        let target = self.schedule.target(self.config.prediction, x0, noise, t)?;
        let out = self
            .unet
            .forward(&x_t, t, &s.states, &s.padding, CURRENT_CAPTION)?;
        mse_loss(&out, &target)
    }

    /// `count` pictures per prompt, prompt by prompt: `[P * count, C, S, S]` in [0, 1].
    /// `on_step` is called after each denoising step.
    pub fn sample(
        &self,
        prompts: &[&str],
        count: usize,
        opts: &SampleOpts,
        on_step: impl FnMut(),
    ) -> Result<Tensor> {
        let device = self.device();
        let all: Vec<&str> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(*p, count))
            .collect();
        let b = all.len();
        if b == 0 {
            return Err(Error::msg("sample: no prompts or a count of 0"));
        }
        if opts.sampler == Sampler::Pndm && opts.eta != 0.0 {
            return Err(Error::msg(format!(
                "sample: PNDM is deterministic; eta = {} is DDIM's (use the DDIM sampler, or eta 0)",
                opts.eta
            )));
        }
        let use_cfg = opts.guidance != 1.0;
        crate::no_grad(|| {
            // The text is encoded once; with guidance the batch is [cond; uncond].
            let mut batch = all.clone();
            if use_cfg {
                batch.extend(std::iter::repeat_n(NULL_PROMPT, b));
            }
            let text = self.text.encode(&batch, device)?;
            let s = self.config.image_size;
            let dtype = self.unet.conv_in.weight.dtype();
            let noise = StepNoise::new(opts.seed);
            let c = self.config.unet.in_channels;
            let x_start = noise.initial((b, c, s, s), dtype, device)?;
            let model = |x: &Tensor, t: usize| -> Result<Tensor> {
                let x_in = if use_cfg {
                    Tensor::cat(&[x.clone(), x.clone()], 0)?
                } else {
                    x.clone()
                };
                let ts = vec![t; x_in.dims()[0]];
                let out =
                    self.unet
                        .forward(&x_in, &ts, &text.states, &text.padding, CURRENT_CAPTION)?;
                if use_cfg {
                    guided(&out.narrow(0, 0, b)?, &out.narrow(0, b, b)?, opts.guidance)
                } else {
                    Ok(out)
                }
            };
            let pred = self.config.prediction;
            let x0 = match opts.sampler {
                Sampler::Ddpm => ddpm_sample(
                    &self.schedule,
                    pred,
                    &x_start,
                    &noise,
                    opts.clip_x0,
                    model,
                    on_step,
                )?,
                Sampler::Ddim => ddim_sample(
                    &self.schedule,
                    pred,
                    &x_start,
                    opts.steps,
                    opts.eta,
                    &noise,
                    opts.clip_x0,
                    model,
                    on_step,
                )?,
                Sampler::Pndm => pndm_sample(
                    &self.schedule,
                    pred,
                    &x_start,
                    opts.steps,
                    opts.clip_x0,
                    model,
                    on_step,
                )?,
            };
            x0.affine(0.5, 0.5)?.clamp(0.0, 1.0)
        })
    }
}

impl Module for TextToImage {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("unet", self.unet.named_parameters());
        v.extend(prefixed("text", self.text.named_parameters()));
        v
    }
    /// The unCLIP conditioner's frozen CLIP and prior (nothing for text conditioners).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("text", self.text.named_buffers())
    }
}
