//! Text-to-image diffusion: schedules against their closed forms, the forward process's
//! statistics, exact conversions between predictions, the samplers against each other
//! (DDPM = DDIM with eta = 1), the U-Net's gradients against finite differences in f64,
//! and training: resume = uninterrupted, checkpoints that load back.

mod common;

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::data::shapes::{caption_alphabet, caption_lines};
use tessera::data::{CharTokenizer, PromptTokenizer};
use tessera::diffusion::guidance::drop_captions;
use tessera::diffusion::schedule::cosine_alpha_bar;
use tessera::diffusion::{
    ddim_sample, ddim_timesteps, ddpm_sample, guided, BetaSchedule, DiffusionConfig, NoiseSchedule,
    Prediction, SampleOpts, Sampler, StepNoise, TextToImage,
};
use tessera::models::text_encoder::{PromptEncoder, PromptEncoderConfig};
use tessera::models::unet::{UNet, UNetConfig};
use tessera::nn::Module;
use tessera::optim::assign;
use tessera::random::{manual_seed, Rng};
use tessera::train::diffusion::{load_diffusion, train_diffusion, DiffusionTrainConfig};
use tessera::{DType, Device, Result, Tensor};

const CPU: Device = Device::Cpu;

fn randn(shape: impl Into<tessera::Shape>, seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape, DType::F64, CPU, seed, 0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn cosine_alphas_cumprod_follow_the_closed_form() {
    let t_max = 1000;
    let s = NoiseSchedule::new(BetaSchedule::cosine(), t_max).unwrap();
    let mut checked = 0;
    for t in 0..t_max {
        if s.betas[t] >= 0.999 {
            break; // clipped from here on, by design
        }
        let closed = cosine_alpha_bar((t + 1) as f64 / t_max as f64, 0.008);
        let rel = (s.alphas_cumprod[t] - closed).abs() / closed;
        assert!(
            rel < 1e-9,
            "t = {t}: {} vs closed form {closed}",
            s.alphas_cumprod[t]
        );
        checked += 1;
    }
    assert!(checked > 990, "only {checked} steps unclipped");
    // Monotone, from nearly 1 to nearly 0.
    assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    assert!(s.alphas_cumprod[0] > 0.999 && s.alphas_cumprod[t_max - 1] < 1e-4);
}

#[test]
fn linear_and_scaled_linear_betas_hit_their_ends() {
    let l = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    assert!((l.betas[0] - 1e-4).abs() < 1e-15 && (l.betas[999] - 0.02).abs() < 1e-15);
    assert!((l.betas[1] - l.betas[0] - (0.02 - 1e-4) / 999.0).abs() < 1e-15);
    let sl = NoiseSchedule::new(BetaSchedule::scaled_linear(), 1000).unwrap();
    assert!((sl.betas[0] - 0.00085).abs() < 1e-15 && (sl.betas[999] - 0.012).abs() < 1e-15);
    // Square roots evenly spaced: the midpoint of the square roots, squared.
    let mid = ((0.00085f64.sqrt() + 0.012f64.sqrt()) / 2.0).powi(2);
    let at = sl.betas[499] + (sl.betas[500] - sl.betas[499]) / 2.0;
    assert!((at - mid).abs() < 1e-6);
    let cumprod: f64 = l.alphas[..10].iter().product();
    assert!((l.alphas_cumprod[9] - cumprod).abs() < 1e-15);
    assert!(NoiseSchedule::new(
        BetaSchedule::Linear {
            start: 0.0,
            end: 0.02
        },
        10
    )
    .is_err());
    assert!(NoiseSchedule::new(BetaSchedule::cosine(), 0).is_err());
}

#[test]
fn q_sample_has_the_forward_process_mean_and_variance() {
    let s = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    let n = 40_000;
    for &t in &[0usize, 250, 999] {
        let x0 = Tensor::full(0.7, (1, n), DType::F64, CPU).unwrap();
        let eps = randn((1, n), 3 + t as u64);
        let x_t = s.q_sample(&x0, &eps, &[t]).unwrap().to_vec_f64().unwrap();
        let mean = x_t.iter().sum::<f64>() / n as f64;
        let var = x_t.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let ab = s.alphas_cumprod[t];
        assert!((mean - ab.sqrt() * 0.7).abs() < 0.02, "t {t}: mean {mean}");
        assert!(
            (var - (1.0 - ab)).abs() < 0.03 * (1.0 - ab) + 1e-6,
            "t {t}: var {var}"
        );
    }
    // One timestep per sample; a wrong count or step is an error.
    let x0 = randn((2, 3), 1);
    assert!(s.q_sample(&x0, &x0, &[1]).is_err());
    assert!(s.q_sample(&x0, &x0, &[1, 1000]).is_err());
}

#[test]
fn a_perfect_epsilon_recovers_x0_and_v_round_trips() {
    let s = NoiseSchedule::new(BetaSchedule::cosine(), 1000).unwrap();
    let x0 = randn((3, 3, 4, 4), 1).clamp(-1.0, 1.0).unwrap();
    let eps = randn((3, 3, 4, 4), 2);
    let t = [0, 500, 990];
    let x_t = s.q_sample(&x0, &eps, &t).unwrap();
    assert!(max_abs_diff(&s.x0_from_eps(&x_t, &eps, &t).unwrap(), &x0) < 1e-9);
    assert!(max_abs_diff(&s.eps_from_x0(&x_t, &x0, &t).unwrap(), &eps) < 1e-9);
    let v = s.v_from_x0_eps(&x0, &eps, &t).unwrap();
    let (x0_v, eps_v) = s.x0_eps_from_v(&x_t, &v, &t).unwrap();
    assert!(max_abs_diff(&x0_v, &x0) < 1e-12);
    assert!(max_abs_diff(&eps_v, &eps) < 1e-12);
    // Both prediction targets read back to the same pair.
    for pred in [Prediction::Epsilon, Prediction::V] {
        let target = s.target(pred, &x0, &eps, &t).unwrap();
        let (a, b) = s.split_prediction(pred, &x_t, &target, &t, false).unwrap();
        assert!(max_abs_diff(&a, &x0) < 1e-9 && max_abs_diff(&b, &eps) < 1e-9);
    }
    // v is a different target from eps.
    assert!(max_abs_diff(&v, &eps) > 0.1);
}

#[test]
fn ddim_timesteps_span_the_schedule() {
    let ts = ddim_timesteps(1000, 50).unwrap();
    assert_eq!(ts.len(), 50);
    assert_eq!((ts[0], ts[49]), (999, 0));
    assert!(ts.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(
        ddim_timesteps(10, 10).unwrap(),
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(ddim_timesteps(10, 1).unwrap(), vec![9]);
    assert!(ddim_timesteps(10, 0).is_err() && ddim_timesteps(10, 11).is_err());
}

/// Some fixed, non-trivial "network" output.
fn toy_model(x: &Tensor, t: usize) -> Result<Tensor> {
    x.affine(0.3, 0.05 * (t as f64 / 50.0))?.tanh()
}

#[test]
fn ddpm_equals_ddim_with_eta_one_over_every_step() {
    let s = NoiseSchedule::new(BetaSchedule::cosine(), 50).unwrap();
    let x_t = randn((2, 3, 4, 4), 9);
    let noise = StepNoise::new(4);
    for pred in [Prediction::Epsilon, Prediction::V] {
        let a = ddpm_sample(&s, pred, &x_t, &noise, false, toy_model, || {}).unwrap();
        let b = ddim_sample(&s, pred, &x_t, 50, 1.0, &noise, false, toy_model, || {}).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-9, "{pred:?}: DDPM and DDIM(eta=1) differ by {d}");
        // And the check can fail: other noise gives another sample.
        let c = ddim_sample(
            &s,
            pred,
            &x_t,
            50,
            1.0,
            &StepNoise::new(5),
            false,
            toy_model,
            || {},
        )
        .unwrap();
        assert!(max_abs_diff(&a, &c) > 1e-3);
    }
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_an_oracle_lands_on_x0() {
    let s = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    let x_t = randn((2, 3, 4, 4), 1);
    let run = |eta: f64, seed: u64| {
        ddim_sample(
            &s,
            Prediction::Epsilon,
            &x_t,
            20,
            eta,
            &StepNoise::new(seed),
            true,
            toy_model,
            || {},
        )
        .unwrap()
    };
    assert_eq!(max_abs_diff(&run(0.0, 1), &run(0.0, 2)), 0.0);
    assert!(max_abs_diff(&run(0.5, 1), &run(0.5, 2)) > 1e-3);
    // A network that always names the true noise of a fixed x0 leads DDIM to exactly x0.
    let x0 = randn((2, 3, 4, 4), 7).clamp(-1.0, 1.0).unwrap();
    let oracle = |x: &Tensor, t: usize| s.eps_from_x0(x, &x0, &[t, t]);
    let out = ddim_sample(
        &s,
        Prediction::Epsilon,
        &x_t,
        10,
        0.0,
        &StepNoise::new(0),
        false,
        oracle,
        || {},
    )
    .unwrap();
    assert!(max_abs_diff(&out, &x0) < 1e-9);
    let mut steps = 0;
    ddim_sample(
        &s,
        Prediction::Epsilon,
        &x_t,
        7,
        0.0,
        &StepNoise::new(0),
        false,
        toy_model,
        || steps += 1,
    )
    .unwrap();
    assert_eq!(steps, 7);
}

#[test]
fn guidance_combines_and_drops_about_ten_percent() {
    let (c, u) = (randn(6, 1), randn(6, 2));
    assert_eq!(max_abs_diff(&guided(&c, &u, 1.0).unwrap(), &c), 0.0);
    assert!(max_abs_diff(&guided(&c, &u, 0.0).unwrap(), &u) < 1e-15);
    let want = c
        .affine(3.0, 0.0)
        .unwrap()
        .sub(&u.affine(2.0, 0.0).unwrap())
        .unwrap();
    assert!(max_abs_diff(&guided(&c, &u, 3.0).unwrap(), &want) < 1e-12);
    let mut caps = vec!["a red circle".to_string(); 20_000];
    let dropped = drop_captions(&mut caps, 0.1, &mut Rng::new(3));
    assert!((1800..2200).contains(&dropped), "{dropped}");
    assert_eq!(caps.iter().filter(|c| c.is_empty()).count(), dropped);
}

fn tiny_unet_config() -> UNetConfig {
    UNetConfig {
        context_dim: 6,
        ..common::tiny_diffusion_config().unet
    }
}

fn context(dtype: DType) -> (Tensor, Tensor) {
    let ctx = randn((2, 5, 6), 11).to_dtype(dtype).unwrap();
    let pad = Tensor::from_vec(vec![0u8, 0, 0, 1, 1, 0, 0, 0, 0, 0], (2, 5), CPU).unwrap();
    (ctx, pad)
}

#[test]
fn unet_output_shape_names_and_every_parameter_learns() {
    manual_seed(1);
    let unet = UNet::new(tiny_unet_config(), CPU).unwrap();
    let names: Vec<String> = unet
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in [
        "time_mlp.fc1.weight",
        "cond_type_emb.weight",
        "down.0.res.0.conv1.weight",
        "down.0.downsample.weight",
        "down.1.attn.0.block.cross_attn.kv.weight",
        "mid.attn.block.attn.qkv.weight",
        "up.1.res.1.skip.weight",
        "up.1.upsample.weight",
        "conv_out.bias",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no parameter {want} in {names:?}"
        );
    }
    let x = randn((2, 3, 8, 8), 2).to_dtype(DType::F32).unwrap();
    let (ctx, pad) = context(DType::F32);
    let out = unet.forward(&x, &[3, 40], &ctx, &pad, 0).unwrap();
    assert_eq!(out.dims(), &[2, 3, 8, 8]);
    out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    for (name, p) in unet.named_parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
        let norm: f64 = g.to_vec_f64().unwrap().iter().map(|v| v * v).sum();
        assert!(norm > 0.0, "{name} got a zero gradient");
    }
    // Wrong shapes are errors naming the model.
    let bad = unet.forward(
        &randn((2, 3, 7, 8), 1).to_dtype(DType::F32).unwrap(),
        &[1, 1],
        &ctx,
        &pad,
        0,
    );
    assert!(bad.unwrap_err().to_string().contains("UNet"));
    assert!(unet.forward(&x, &[1], &ctx, &pad, 0).is_err());
    assert!(unet.forward(&x, &[1, 1], &ctx, &pad, 1).is_err());
}

#[test]
fn unet_gradients_match_finite_differences_in_f64() {
    manual_seed(2);
    let unet = UNet::new(tiny_unet_config(), CPU)
        .unwrap()
        .into_dtype(DType::F64)
        .unwrap();
    let (ctx, pad) = context(DType::F64);
    let x = randn((2, 3, 8, 8), 5);
    let t = [7, 300];
    // With respect to the input image (every element).
    let opts = GradCheck {
        eps: 1e-5,
        atol: 1e-6,
        rtol: 1e-4,
        seed: 17,
    };
    check_gradients(
        |xs| unet.forward(&xs[0], &t, &ctx, &pad, 0),
        std::slice::from_ref(&x),
        opts,
    )
    .unwrap();
    // The patchified network (2x2 pixels folded into channels) too.
    let patched = UNet::new(
        UNetConfig {
            patch_size: 2,
            ..tiny_unet_config()
        },
        CPU,
    )
    .unwrap()
    .into_dtype(DType::F64)
    .unwrap();
    assert_eq!(patched.config.size_multiple(), 4);
    check_gradients(
        |xs| patched.forward(&xs[0], &t, &ctx, &pad, 0),
        std::slice::from_ref(&x),
        opts,
    )
    .unwrap();
    // With respect to a few elements of some parameters, by hand.
    let w = randn((2, 3, 8, 8), 6);
    let loss = |u: &UNet| {
        u.forward(&x, &t, &ctx, &pad, 0)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let params = unet.named_parameters();
    params.iter().for_each(|(_, p)| p.zero_grad()); // the check above left its gradients
    loss(&unet).backward().unwrap();
    for name in [
        "down.1.attn.0.block.cross_attn.kv.weight",
        "mid.res1.time_proj.weight",
        "cond_type_emb.weight",
        "up.0.res.0.norm1.weight",
        "time_mlp.fc1.bias",
        "text_pool_proj.weight",
    ] {
        let p = &params.iter().find(|(n, _)| n == name).unwrap().1;
        let g = p.grad().unwrap().to_vec_f64().unwrap();
        let base = p.to_vec_f64().unwrap();
        for j in [0, base.len() / 2, base.len() - 1] {
            let at = |d: f64| {
                let mut v = base.clone();
                v[j] += d;
                tessera::no_grad(|| {
                    assign(p, &Tensor::from_vec(v, p.shape().clone(), CPU)?)?;
                    loss(&unet).item()
                })
                .unwrap()
            };
            let eps = 1e-5;
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assign(
                p,
                &Tensor::from_vec(base.clone(), p.shape().clone(), CPU).unwrap(),
            )
            .unwrap();
            assert!(
                (g[j] - numeric).abs() <= 1e-6 + 1e-4 * numeric.abs(),
                "{name}[{j}]: analytic {} vs numeric {numeric}",
                g[j]
            );
        }
    }
}

#[test]
fn text_states_ignore_padding() {
    manual_seed(3);
    let tok = PromptTokenizer::Char(CharTokenizer::from_text(&caption_alphabet()));
    let cfg = PromptEncoderConfig {
        vocab_size: tok.vocab_size(),
        max_len: 48,
        dim: 16,
        num_heads: 2,
        num_layers: 2,
    };
    let enc = PromptEncoder::new(cfg, CPU).unwrap();
    let alone = enc.encode_ids(&tok, &["a red circle"], CPU).unwrap();
    let padded = enc
        .encode_ids(
            &tok,
            &["a red circle", "a very much longer caption here"],
            CPU,
        )
        .unwrap();
    let (sa, pa) = enc.forward(&alone).unwrap();
    let (sb, pb) = enc.forward(&padded).unwrap();
    let n = alone.dims()[1];
    assert_eq!(pa.to_vec::<u8>().unwrap(), vec![0u8; n]);
    assert_eq!(
        pb.narrow(0, 0, 1)
            .unwrap()
            .narrow(1, n, 1)
            .unwrap()
            .to_vec::<u8>()
            .unwrap(),
        vec![1u8]
    );
    let real = sb.narrow(0, 0, 1).unwrap().narrow(1, 0, n).unwrap();
    assert!(max_abs_diff(&sa, &real) < 1e-5);
    // The empty (null) prompt is one real token.
    let (s0, p0) = enc
        .forward(&enc.encode_ids(&tok, &[""], CPU).unwrap())
        .unwrap();
    assert_eq!((s0.dims()[1], p0.to_vec::<u8>().unwrap()), (1, vec![0u8]));
}

fn tiny_config() -> DiffusionConfig {
    DiffusionConfig {
        prediction: Prediction::Epsilon,
        ..common::tiny_diffusion_config()
    }
}

fn tiny_model(seed: u64) -> TextToImage {
    manual_seed(seed);
    TextToImage::new(
        tiny_config(),
        PromptTokenizer::Char(CharTokenizer::from_text(&caption_alphabet())),
        CPU,
    )
    .unwrap()
}

/// The same with one token per word.
fn tiny_word_model(seed: u64) -> TextToImage {
    manual_seed(seed);
    let tokens = PromptTokenizer::new("word", &caption_lines()).unwrap();
    TextToImage::new(tiny_config(), tokens, CPU).unwrap()
}

fn values(m: &TextToImage) -> Vec<(String, Vec<f64>)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec_f64().unwrap()))
        .collect()
}

#[test]
fn resume_gives_the_same_model_as_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("tessera_diffusion_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |stop_at: u64, name: &str| DiffusionTrainConfig {
        steps: 6,
        stop_at: Some(stop_at),
        batch_size: 4,
        lr: 2e-3,
        seed: 3,
        ema_decay: 0.9,
        checkpoint: Some(dir.join(name)),
        checkpoint_every: 0,
        resume: true,
        progress: false,
        ..Default::default()
    };
    let whole = tiny_word_model(1);
    // The same start (tests run in parallel and share the global generator, so copy it).
    let part = tiny_word_model(1);
    tessera::io::load_named(&part.named_parameters(), &whole.named_parameters(), true).unwrap();
    let rw = train_diffusion(&whole, &cfg(6, "whole.safetensors")).unwrap();
    assert_eq!(rw.start_step, 0);
    train_diffusion(&part, &cfg(3, "part.safetensors")).unwrap();
    let resumed = tiny_word_model(99); // other init: everything must come from the checkpoint
    let rr = train_diffusion(&resumed, &cfg(6, "part.safetensors")).unwrap();
    assert_eq!(rr.start_step, 3);
    assert_eq!(values(&whole), values(&resumed));
    // The EMA weights too (what sampling loads).
    let (a, step) = load_diffusion(&dir.join("whole.safetensors"), CPU, true).unwrap();
    let (b, _) = load_diffusion(&dir.join("part.safetensors"), CPU, true).unwrap();
    assert_eq!(step, 6);
    assert_eq!(values(&a), values(&b));
    // The word tokenizer came back from the checkpoint's metadata.
    assert_eq!(a.text.kind(), "word");
    assert_eq!(tiny_model(1).text.kind(), "char");
    // EMA weights differ from the raw ones (decay 0.9 over 6 steps).
    let (raw, _) = load_diffusion(&dir.join("whole.safetensors"), CPU, false).unwrap();
    assert_eq!(values(&raw), values(&whole));
    assert_ne!(values(&raw), values(&a));
    // Sampling from the loaded model: shapes, range, both samplers, with guidance.
    for sampler in [Sampler::Ddpm, Sampler::Ddim] {
        let opts = SampleOpts {
            sampler,
            steps: 5,
            guidance: 2.0,
            ..Default::default()
        };
        let img = a
            .sample(&["a red circle", "the square is blue"], 2, &opts, || {})
            .unwrap();
        assert_eq!(img.dims(), &[4, 3, 8, 8]);
        assert!(img
            .to_vec_f64()
            .unwrap()
            .iter()
            .all(|v| (0.0..=1.0).contains(v)));
    }
    // A file that is not a diffusion checkpoint is an error naming it.
    let err = load_diffusion(&dir.join("missing.safetensors"), CPU, true)
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing.safetensors"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn training_lowers_the_denoising_loss() {
    let model = tiny_model(5);
    let cfg = DiffusionTrainConfig {
        steps: 150,
        batch_size: 16,
        lr: 3e-3,
        seed: 1,
        checkpoint: None,
        progress: false,
        ..Default::default()
    };
    let r = train_diffusion(&model, &cfg).unwrap();
    assert!(r.first_loss > 0.5, "first loss {}", r.first_loss);
    assert!(
        r.final_loss < 0.6 * r.first_loss,
        "loss {} -> {}",
        r.first_loss,
        r.final_loss
    );
}

#[test]
fn frechet_distance_matches_closed_forms() {
    use tessera::diffusion::frechet::{frechet_distance, sqrtm_psd, symmetric_eigen};
    // Same rows: 0. Shifted rows: the squared shift (equal covariances).
    let d = 6;
    let n = 40;
    let a = randn(n * d, 1).to_vec_f64().unwrap();
    assert!(frechet_distance(&a, n, &a, n, d).unwrap() < 1e-8);
    let shifted: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i % d == 2 { 3.0 } else { 0.0 })
        .collect();
    assert!((frechet_distance(&a, n, &shifted, n, d).unwrap() - 9.0).abs() < 1e-6);
    // One dimension: (m1 - m2)^2 + (s1 - s2)^2.
    let x: Vec<f64> = (0..50).map(|i| i as f64).collect();
    let y: Vec<f64> = x.iter().map(|v| 2.0 * v + 1.0).collect();
    let (m1, m2) = (24.5, 50.0);
    let s1 = (x.iter().map(|v| (v - m1) * (v - m1)).sum::<f64>() / 49.0).sqrt();
    let want = (m1 - m2) * (m1 - m2) + s1 * s1;
    assert!((frechet_distance(&x, 50, &y, 50, 1).unwrap() - want).abs() < 1e-6 * want);
    // The eigendecomposition reconstructs its matrix; the square root squares back.
    let m = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
    let (l, v) = symmetric_eigen(&m, 3);
    for i in 0..3 {
        for j in 0..3 {
            let r: f64 = (0..3).map(|k| v[i * 3 + k] * l[k] * v[j * 3 + k]).sum();
            assert!((r - m[i * 3 + j]).abs() < 1e-10);
        }
    }
    let r = sqrtm_psd(&m, 3);
    for i in 0..3 {
        for j in 0..3 {
            let sq: f64 = (0..3).map(|k| r[i * 3 + k] * r[k * 3 + j]).sum();
            assert!((sq - m[i * 3 + j]).abs() < 1e-10);
        }
    }
}

/// The Frechet distance through the pictures' Gram matrix (fewer pictures than features) is
/// the one through the covariances, on correlated random features with different means and
/// spreads, for unequal set sizes, and when there are more pictures than features too.
#[test]
fn frechet_by_samples_equals_frechet_by_covariance() {
    use tessera::diffusion::frechet::{
        frechet_distance_by_covariance, frechet_distance_by_samples,
    };
    let features = |n: usize, d: usize, seed: u64, scale: f64, shift: f64| -> Vec<f64> {
        let z = randn(n * d, seed).to_vec_f64().unwrap();
        // Mix neighbouring dimensions so the covariance is not diagonal.
        (0..n * d)
            .map(|i| {
                let j = if i % d + 1 < d { i + 1 } else { i };
                scale * (z[i] + 0.5 * z[j]) + shift * (i % d) as f64 / d as f64
            })
            .collect()
    };
    for &(n_a, n_b, d) in &[(7, 9, 20), (12, 5, 16), (30, 40, 8)] {
        let a = features(n_a, d, 3, 1.0, 0.0);
        let b = features(n_b, d, 4, 1.7, 2.0);
        let by_cov = frechet_distance_by_covariance(&a, n_a, &b, n_b, d).unwrap();
        let by_samples = frechet_distance_by_samples(&a, n_a, &b, n_b, d).unwrap();
        // Both paths take square roots of eigenvalues that are zero in exact arithmetic
        // (centring costs a rank; with n > d the Gram matrix has rank d), where rounding of
        // order 1e-16 * |G| becomes 1e-8 * sqrt|G| per eigenvalue: hence 1e-6, not 1e-12.
        assert!(
            (by_cov - by_samples).abs() < 1e-6 * by_cov.max(1.0),
            "n_a {n_a}, n_b {n_b}, d {d}: covariances {by_cov}, samples {by_samples}"
        );
        assert!(
            by_cov > 1.0,
            "the sets differ, the distance {by_cov} should show it"
        );
    }
}

/// The demo's text-to-image stage on a tiny budget: it trains, writes its checkpoint, draws
/// the grid (every prompt's row, judged) and scores 10 held-out prompts; a second run
/// reuses the checkpoint (training nothing) with identical figures; a longer budget resumes
/// the checkpoint instead of starting over, and a shorter one trains again.
#[test]
fn demo_stage_trains_reuses_and_resumes_its_checkpoint() {
    use tessera::models::resnet::{ResNet18, ResNetConfig};
    use tessera::train::diffusion_demo::{run_diffusion_demo, DiffusionDemoConfig, GRID_PROMPTS};
    let dir = std::env::temp_dir().join(format!("tessera_diffusion_demo_{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let judge = ResNet18::new(
        ResNetConfig {
            num_classes: 11,
            small_input: true,
            in_channels: 3,
        },
        Device::Cpu,
    )
    .unwrap();
    let cfg = DiffusionDemoConfig {
        steps: 3,
        batch_size: 4,
        grid_columns: 2,
        sample_steps: 2,
        eval_prompts: Some(10),
        progress: false,
        ..Default::default()
    };
    let first = run_diffusion_demo(&dir, &cfg, &judge, 32, Device::Cpu).unwrap();
    assert!(first.trained);
    assert_eq!(first.training.as_ref().unwrap().start_step, 0);
    assert_eq!(first.rows.len(), GRID_PROMPTS.len());
    for row in &first.rows {
        assert_eq!(row.images.dims(), &[2, 3, 32, 32]);
        assert_eq!(row.correct.len(), 2);
    }
    assert_eq!(first.adherence.images, 10);
    let second = run_diffusion_demo(&dir, &cfg, &judge, 32, Device::Cpu).unwrap();
    assert!(!second.trained && second.training.is_none());
    assert_eq!(first.adherence.both_right, second.adherence.both_right);
    assert_eq!(first.adherence.frechet, second.adherence.frechet);
    let longer = DiffusionDemoConfig {
        steps: 5,
        ..cfg.clone()
    };
    let third = run_diffusion_demo(&dir, &longer, &judge, 32, Device::Cpu).unwrap();
    assert_eq!(third.training.as_ref().unwrap().start_step, 3);
    let shorter = DiffusionDemoConfig { steps: 2, ..cfg };
    let fourth = run_diffusion_demo(&dir, &shorter, &judge, 32, Device::Cpu).unwrap();
    assert_eq!(fourth.training.as_ref().unwrap().start_step, 0);
    std::fs::remove_dir_all(&dir).ok();
}
