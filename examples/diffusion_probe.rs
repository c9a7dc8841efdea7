//! Diffusion probe: how fast can the small U-Net learn the shapes when its conditioning is
//! perfect? An "oracle" conditioner gives one learned token each for the shape, colour, size
//! and place of the picture, so the probe measures the U-Net and the training recipe apart
//! from the text encoder (docs/PERF.md, session 4, has the figures it produced).
//!
//! Trains for a wall-clock budget, prints per-timestep errors, then samples 60 random labels
//! (DDIM 25 steps, raw and EMA weights, guidance 1 and 3), classifies them with a shapes
//! ResNet-18 and writes each grid as PNG. Settings come from the environment:
//! `SECONDS` (120), `BATCH` (16), `LR` (1e-3), `BASE` (16), `MULT` ("1,2,2"), `RES` (1),
//! `ATT` ("2"), `PATCH` (1), `PRED` (epsilon|v), `MINSNR` (gamma of min-SNR weighting, 0 =
//! off), `EMA` (decay, 0 = none), `EVAL_EVERY` (seconds, 0 = only at the end), `GUIDANCE`,
//! `CLASSIFIER` (a `tessera train resnet` checkpoint at 32 px), `OUT` (PNG path prefix).
//!
//! `RAYON_NUM_THREADS=2 SECONDS=150 PRED=v cargo run --release --example diffusion_probe`
use std::time::Instant;
use tessera::data::shapes::{random_label, RenderOpts, ShapeLabel, ShapesDataset};
use tessera::diffusion::schedule::per_sample;
use tessera::diffusion::{ddim_sample, guided, BetaSchedule, NoiseSchedule, Prediction, StepNoise};
use tessera::io::png::{grid, Image};
use tessera::models::unet::{UNet, UNetConfig, CURRENT_CAPTION};
use tessera::nn::{Embedding, Module};
use tessera::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema, Optimizer};
use tessera::random::Rng;
use tessera::{DType, Device, Result, Tensor};

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Oracle {
    tables: Vec<Embedding>,
}
const CARD: [usize; 4] = [5, 6, 3, 5];
impl Oracle {
    fn new(d: usize) -> Result<Self> {
        Ok(Oracle {
            tables: CARD
                .iter()
                .map(|&n| Embedding::with_std(n + 1, d, 1.0, Device::Cpu))
                .collect::<Result<_>>()?,
        })
    }
    /// None = null condition.
    fn encode(&self, labels: &[Option<ShapeLabel>]) -> Result<(Tensor, Tensor)> {
        let mut toks = Vec::new();
        for (f, table) in self.tables.iter().enumerate() {
            let ids: Vec<i64> = labels
                .iter()
                .map(|l| match l {
                    None => CARD[f] as i64,
                    Some(l) => [l.shape, l.colour, l.size, l.place][f] as i64,
                })
                .collect();
            let ids = Tensor::from_vec(ids, (labels.len(), 1), Device::Cpu)?;
            toks.push(table.forward(&ids)?);
        }
        let ctx = Tensor::cat(&toks, 1)?;
        let pad = Tensor::zeros((labels.len(), 4), DType::U8, Device::Cpu)?;
        Ok((ctx, pad))
    }
}
impl Module for Oracle {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        tessera::nn::list_parameters("t", &self.tables)
    }
}

fn main() -> Result<()> {
    tessera::alloc::keep_freed_memory();
    let seconds: f64 = env("SECONDS", 120.0);
    let batch: usize = env("BATCH", 16);
    let lr: f64 = env("LR", 1e-3);
    let base: usize = env("BASE", 16);
    let att: String = env("ATT", "2".to_string());
    let pred = Prediction::from_name(&env("PRED", "epsilon".to_string()))?;
    let min_snr: f64 = env("MINSNR", 0.0);
    let ema_decay: f64 = env("EMA", 0.995);
    let out: String = env("OUT", "/tmp/probe.png".to_string());
    let classifier: String = env(
        "CLASSIFIER",
        "/tmp/final/demo/resnet18.safetensors".to_string(),
    );
    let d = 64;
    tessera::random::manual_seed(1);
    let cfg = UNetConfig {
        base_channels: base,
        patch_size: env("PATCH", 1),
        channel_mult: env("MULT", "1,2,2".to_string())
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect(),
        res_blocks_per_level: env("RES", 1),
        attention_levels: att
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect(),
        ..UNetConfig::small(d)
    };
    let unet = UNet::new(cfg, Device::Cpu)?;
    let oracle = Oracle::new(d)?;
    let mut params = unet.named_parameters();
    params.extend(oracle.named_parameters());
    let nparams: usize = params.iter().map(|(_, p)| p.elem_count()).sum();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut ema = Ema::new(&params, ema_decay.max(0.0))?;
    let sched = NoiseSchedule::new(BetaSchedule::cosine(), 1000)?;
    let t0 = Instant::now();
    let mut step = 0u64;
    let mut smooth = f64::NAN;
    let mut rng = Rng::new(7);
    let eval_every: f64 = env("EVAL_EVERY", 0.0);
    let mut next_eval = eval_every;
    let mut paused = 0.0f64;
    let clf_path = classifier.clone();
    let (clf, _) =
        tessera::train::shapes_resnet::load_resnet(std::path::Path::new(&clf_path), Device::Cpu)?;
    clf.eval();
    while t0.elapsed().as_secs_f64() - paused < seconds {
        if eval_every > 0.0 && t0.elapsed().as_secs_f64() - paused >= next_eval {
            let te = Instant::now();
            unet.eval();
            let tag = format!("t{next_eval:.0}s step {step}");
            evaluate(
                &unet,
                &oracle,
                &sched,
                pred,
                &clf,
                3.0,
                &format!("{out}.mid.png"),
                &tag,
            )?;
            unet.train();
            next_eval += eval_every;
            paused += te.elapsed().as_secs_f64();
        }
        let data = ShapesDataset::generate(batch, &RenderOpts::new(32), 1000 + step, Device::Cpu)?;
        let x0 = data.images.affine(2.0, -1.0)?;
        let labels: Vec<Option<ShapeLabel>> = data
            .labels
            .iter()
            .map(|l| if rng.uniform() < 0.1 { None } else { Some(*l) })
            .collect();
        let t: Vec<usize> = (0..batch).map(|_| rng.below(1000)).collect();
        let noise = Tensor::randn_with_seed(x0.shape().clone(), DType::F32, Device::Cpu, 5, step)?;
        let x_t = sched.q_sample(&x0, &noise, &t)?;
        let target = sched.target(pred, &x0, &noise, &t)?;
        let (ctx, pad) = oracle.encode(&labels)?;
        let out = unet.forward(&x_t, &t, &ctx, &pad, CURRENT_CAPTION)?;
        let se = out.sub(&target)?.sqr()?.mean_dims(&[1, 2, 3], false)?; // [B]
        let loss = if min_snr > 0.0 {
            let w: Vec<f64> = t
                .iter()
                .map(|&t| {
                    let ab = sched.alphas_cumprod[t];
                    let snr = ab / (1.0 - ab);
                    match pred {
                        Prediction::Epsilon => snr.min(min_snr) / snr,
                        Prediction::V => snr.min(min_snr) / (snr + 1.0),
                    }
                })
                .collect();
            let w = per_sample(&w, &se)?.reshape(batch)?;
            se.mul(&w)?.mean_all()?
        } else {
            se.mean_all()?
        };
        let lv = loss.item()?;
        opt.zero_grad();
        loss.backward()?;
        clip_grad_norm(&params, 1.0)?;
        opt.step()?;
        if ema_decay > 0.0 {
            ema.update(&params)?;
        }
        smooth = if smooth.is_nan() {
            lv
        } else {
            0.98 * smooth + 0.02 * lv
        };
        step += 1;
        if step.is_multiple_of(100) {
            eprintln!(
                "step {step} loss {smooth:.4} {:.1} img/s",
                (step as usize * batch) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let train_s = t0.elapsed().as_secs_f64() - paused;
    unet.eval();
    let (classifier, _) =
        tessera::train::shapes_resnet::load_resnet(std::path::Path::new(&classifier), Device::Cpu)?;
    classifier.eval();
    println!(
        "{{\"steps\":{step},\"params\":{nparams},\"train_s\":{train_s:.1},\"img_per_s\":{:.1},\"loss\":{smooth:.4}}}",
        (step as usize * batch) as f64 / train_s
    );
    tessera::no_grad(|| -> Result<()> {
        let data = ShapesDataset::generate(64, &RenderOpts::new(32), 777_777, Device::Cpu)?;
        let x0 = data.images.affine(2.0, -1.0)?;
        let labels: Vec<Option<ShapeLabel>> = data.labels.iter().map(|l| Some(*l)).collect();
        let (ctx, pad) = oracle.encode(&labels)?;
        let noise = Tensor::randn_with_seed(x0.shape().clone(), DType::F32, Device::Cpu, 9, 9)?;
        let mut line = String::from("per-t eps-mse/x0-mse:");
        for t in [5usize, 20, 50, 100, 200, 400, 600, 800, 950] {
            let ts = vec![t; 64];
            let x_t = sched.q_sample(&x0, &noise, &ts)?;
            let o = unet.forward(&x_t, &ts, &ctx, &pad, CURRENT_CAPTION)?;
            let (x0p, epsp) = sched.split_prediction(pred, &x_t, &o, &ts, false)?;
            let e = epsp.sub(&noise)?.sqr()?.mean_all()?.item()?;
            let x = x0p.clamp(-1.0, 1.0)?.sub(&x0)?.sqr()?.mean_all()?.item()?;
            line.push_str(&format!(" t{t}:{e:.4}/{x:.4}"));
        }
        println!("{line}");
        Ok(())
    })?;
    let mut swapped = false;
    for (use_ema, guidance) in [(false, 1.0), (false, 3.0), (true, 1.0), (true, 3.0)] {
        if use_ema && ema_decay <= 0.0 {
            continue;
        }
        if use_ema && !swapped {
            ema.copy_to(&params)?;
            swapped = true;
        }
        let tag = format!("{}_g{}", if use_ema { "ema" } else { "raw" }, guidance);
        evaluate(
            &unet,
            &oracle,
            &sched,
            pred,
            &classifier,
            guidance,
            &format!("{out}.{tag}.png"),
            &tag,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    unet: &UNet,
    oracle: &Oracle,
    sched: &NoiseSchedule,
    pred: Prediction,
    classifier: &tessera::models::resnet::ResNet18,
    guidance: f64,
    out: &str,
    tag: &str,
) -> Result<()> {
    let n = 60;
    let mut erng = Rng::new(99);
    let labels: Vec<ShapeLabel> = (0..n).map(|_| random_label(&mut erng)).collect();
    let t1 = Instant::now();
    let images = tessera::no_grad(|| -> Result<Tensor> {
        let mut cond: Vec<Option<ShapeLabel>> = labels.iter().map(|l| Some(*l)).collect();
        cond.extend(std::iter::repeat_n(None, n));
        let (ctx, pad) = oracle.encode(&cond)?;
        let noise = StepNoise::new(3);
        let xs = noise.initial((n, 3, 32, 32), DType::F32, Device::Cpu)?;
        let x0 = ddim_sample(
            sched,
            pred,
            &xs,
            25,
            0.0,
            &noise,
            true,
            |x, t| {
                let xi = Tensor::cat(&[x.clone(), x.clone()], 0)?;
                let o = unet.forward(&xi, &vec![t; 2 * n], &ctx, &pad, CURRENT_CAPTION)?;
                guided(&o.narrow(0, 0, n)?, &o.narrow(0, n, n)?, guidance)
            },
            || {},
        )?;
        x0.affine(0.5, 0.5)?.clamp(0.0, 1.0)
    })?;
    let sample_s = t1.elapsed().as_secs_f64();
    let logits = tessera::no_grad(|| classifier.forward(&images))?;
    let s = logits.narrow(1, 0, 5)?.argmax(1)?.to_vec::<i64>()?;
    let c = logits.narrow(1, 5, 6)?.argmax(1)?.to_vec::<i64>()?;
    let (mut sok, mut cok, mut both) = (0, 0, 0);
    for i in 0..n {
        let (a, b) = (
            s[i] as usize == labels[i].shape,
            c[i] as usize == labels[i].colour,
        );
        sok += a as usize;
        cok += b as usize;
        both += (a && b) as usize;
    }
    let cells = (0..n)
        .map(|i| Ok(Image::from_tensor(&images.narrow(0, i, 1)?.squeeze(0)?)?.upscale(2)))
        .collect::<Result<Vec<_>>>()?;
    grid(&cells, 10, 2, 255).write_png(out)?;
    println!(
        "{tag}: sample_s {sample_s:.1} shape {:.3} colour {:.3} both {:.3}",
        sok as f64 / n as f64,
        cok as f64 / n as f64,
        both as f64 / n as f64
    );
    Ok(())
}
