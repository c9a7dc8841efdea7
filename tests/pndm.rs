//! PNDM against the probability-flow ODE on data whose denoiser is known in closed form
//! (a Gaussian, whose ODE end point is closed form too, and a mixture of two Gaussians,
//! whose end point an independent Runge-Kutta solve gives), against DDIM at the same number
//! of network calls; the call count its doc promises; v = eps prediction; clipping; and the
//! sampler through `TextToImage::sample` and the CLI.

mod common;

use std::cell::Cell;
use tessera::data::shapes::caption_alphabet;
use tessera::data::{CharTokenizer, PromptTokenizer};
use tessera::diffusion::pndm::MULTISTEP_WEIGHTS;
use tessera::diffusion::{
    ddim_sample, pndm_network_calls, pndm_sample, pndm_timesteps, BetaSchedule, NoiseSchedule,
    Prediction, SampleOpts, Sampler, StepNoise, TextToImage,
};
use tessera::random::manual_seed;
use tessera::train::diffusion::{train_diffusion, DiffusionTrainConfig};
use tessera::{DType, Device, Result, Tensor};

const CPU: Device = Device::Cpu;

/// Data whose coordinates are independent draws from a mixture of 1-D Gaussians.
struct Mixture {
    weights: Vec<f64>,
    means: Vec<f64>,
    stds: Vec<f64>,
}

impl Mixture {
    fn gaussian(mean: f64, std: f64) -> Self {
        Mixture {
            weights: vec![1.0],
            means: vec![mean],
            stds: vec![std],
        }
    }
    fn two() -> Self {
        Mixture {
            weights: vec![0.3, 0.7],
            means: vec![-0.5, 0.4],
            stds: vec![0.3, 0.25],
        }
    }

    /// `E[x0 | x_t = x]` at noise level `ab`: each component's posterior mean, weighted by
    /// its responsibility (`x_t | k ~ N(sqrt(ab) m_k, ab s_k^2 + 1 - ab)`).
    fn denoise(&self, x: f64, ab: f64) -> f64 {
        let comps: Vec<(f64, f64)> = (0..self.weights.len())
            .map(|k| {
                let (m, s2) = (self.means[k], self.stds[k] * self.stds[k]);
                let var = ab * s2 + 1.0 - ab;
                let d = x - ab.sqrt() * m;
                let log_p = self.weights[k].ln() - 0.5 * d * d / var - 0.5 * var.ln();
                (log_p, m + ab.sqrt() * s2 / var * d)
            })
            .collect();
        let top = comps.iter().map(|c| c.0).fold(f64::MIN, f64::max);
        let (num, den) = comps.iter().fold((0.0, 0.0), |(n, d), &(lp, mean)| {
            let r = (lp - top).exp();
            (n + r * mean, d + r)
        });
        num / den
    }

    /// The exact noise prediction `E[eps | x_t = x]`.
    fn eps(&self, x: f64, ab: f64) -> f64 {
        (x - ab.sqrt() * self.denoise(x, ab)) / (1.0 - ab).sqrt()
    }

    /// A "network" that outputs the exact eps (or v) at timestep `t`, counting its calls.
    fn oracle<'a>(
        &'a self,
        schedule: &'a NoiseSchedule,
        prediction: Prediction,
        calls: &'a Cell<usize>,
    ) -> impl FnMut(&Tensor, usize) -> Result<Tensor> + 'a {
        move |x: &Tensor, t: usize| {
            calls.set(calls.get() + 1);
            let ab = schedule.alpha_bar(Some(t));
            let out: Vec<f64> = x
                .to_vec_f64()?
                .into_iter()
                .map(|x| {
                    let eps = self.eps(x, ab);
                    match prediction {
                        Prediction::Epsilon => eps,
                        Prediction::V => ab.sqrt() * eps - (1.0 - ab).sqrt() * self.denoise(x, ab),
                    }
                })
                .collect();
            Tensor::from_vec(out, x.dims().to_vec(), x.device())
        }
    }

    /// The end point of the probability-flow ODE from `x_T` at `ab_T`, solved independently
    /// of the samplers: in `xbar = x / sqrt(ab)`, `sigma = sqrt((1 - ab) / ab)` the ODE is
    /// `d xbar / d sigma = eps`; classic Runge-Kutta 4 in `log sigma` (2000 steps down to
    /// `sigma = 1e-5`), then one Euler step to 0.
    fn ode_end_point(&self, ab_t: f64, x_t: &[f64]) -> Vec<f64> {
        let steps = 2000;
        let (u_start, u_end) = (((1.0 - ab_t) / ab_t).sqrt().ln(), 1e-5f64.ln());
        let h = (u_end - u_start) / steps as f64;
        let ab_of = |sigma: f64| 1.0 / (1.0 + sigma * sigma);
        // d xbar / du = sigma eps(x = xbar sqrt(ab), ab).
        let slope = |u: f64, xbar: f64| {
            let sigma = u.exp();
            let ab = ab_of(sigma);
            sigma * self.eps(xbar * ab.sqrt(), ab)
        };
        x_t.iter()
            .map(|&x| {
                let mut xbar = x / ab_t.sqrt();
                for i in 0..steps {
                    let u = u_start + i as f64 * h;
                    let k1 = slope(u, xbar);
                    let k2 = slope(u + h / 2.0, xbar + h / 2.0 * k1);
                    let k3 = slope(u + h / 2.0, xbar + h / 2.0 * k2);
                    let k4 = slope(u + h, xbar + h * k3);
                    xbar += h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
                }
                let sigma = u_end.exp();
                let ab = ab_of(sigma);
                xbar - sigma * self.eps(xbar * ab.sqrt(), ab)
            })
            .collect()
    }
}

fn rms(a: &Tensor, b: &[f64]) -> f64 {
    let a = a.to_vec_f64().unwrap();
    assert_eq!(a.len(), b.len());
    (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

fn x_start() -> Tensor {
    Tensor::randn_with_seed((8, 64), DType::F64, CPU, 3, 0).unwrap()
}

/// RMS errors of DDIM and PNDM at `steps` against the exact end point `reference`.
struct Errors {
    ddim: f64,
    pndm: f64,
}

fn errors(
    data: &Mixture,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    reference: &[f64],
    ddim_steps: usize,
    pndm_steps: usize,
) -> Errors {
    let calls = Cell::new(0);
    let noise = StepNoise::new(0);
    let pred = Prediction::Epsilon;
    let oracle = || data.oracle(schedule, pred, &calls);
    let ddim = ddim_sample(
        schedule,
        pred,
        x_t,
        ddim_steps,
        0.0,
        &noise,
        false,
        oracle(),
        || {},
    )
    .unwrap();
    let pndm = pndm_sample(schedule, pred, x_t, pndm_steps, false, oracle(), || {}).unwrap();
    Errors {
        ddim: rms(&ddim, reference),
        pndm: rms(&pndm, reference),
    }
}

/// The figures the module doc and the report quote: for each (schedule, data), PNDM and DDIM
/// at 1000 steps land on the ODE's end point, and at 10 and 20 steps PNDM's error is a
/// fraction of DDIM's at the same number of network calls (DDIM with one step more).
#[test]
fn pndm_follows_the_probability_flow_ode_better_than_ddim_at_equal_network_calls() {
    let gaussian = Mixture::gaussian(0.3, 0.5);
    let two = Mixture::two();
    // (schedule, data, the least DDIM/PNDM error ratio required at 10 and at 20 steps).
    let cases = [
        ("cosine", BetaSchedule::cosine(), &gaussian, [20.0, 40.0]),
        ("cosine", BetaSchedule::cosine(), &two, [2.0, 10.0]),
        ("linear", BetaSchedule::linear(), &gaussian, [5.0, 15.0]),
        ("linear", BetaSchedule::linear(), &two, [1.5, 2.5]),
    ];
    let x_t = x_start();
    for (name, kind, data, min_ratio) in cases {
        let s = NoiseSchedule::new(kind, 1000).unwrap();
        let ab_t = s.alpha_bar(Some(999));
        let reference = data.ode_end_point(ab_t, &x_t.to_vec_f64().unwrap());
        let label = format!("{name}, {} components", data.weights.len());
        if data.weights.len() == 1 {
            // The Gaussian's flow keeps each point's standard score: the end point is closed
            // form, and the Runge-Kutta reference must agree with it.
            let (m, sd) = (data.means[0], data.stds[0]);
            let closed: Vec<f64> = x_t
                .to_vec_f64()
                .unwrap()
                .iter()
                .map(|x| m + sd * (x - ab_t.sqrt() * m) / (ab_t * sd * sd + 1.0 - ab_t).sqrt())
                .collect();
            let d = reference
                .iter()
                .zip(&closed)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-7, "{label}: Runge-Kutta vs closed form {d}");
        }
        let fine = errors(data, &s, &x_t, &reference, 1000, 1000);
        eprintln!(
            "{label}: 1000 steps: DDIM {:.1e}, PNDM {:.1e}",
            fine.ddim, fine.pndm
        );
        assert!(fine.ddim < 3e-3, "{label}: DDIM(1000) error {}", fine.ddim);
        assert!(fine.pndm < 3e-4, "{label}: PNDM(1000) error {}", fine.pndm);
        for (steps, min_ratio) in [10, 20].into_iter().zip(min_ratio) {
            let calls = pndm_network_calls(steps);
            let e = errors(data, &s, &x_t, &reference, calls, steps);
            let ratio = e.ddim / e.pndm;
            eprintln!(
                "{label}: {steps} PNDM steps ({calls} calls) {:.1e}, DDIM {calls} steps {:.1e}: ratio {ratio:.1}",
                e.pndm, e.ddim
            );
            assert!(
                ratio > min_ratio,
                "{label}, {steps} steps: DDIM {} / PNDM {} = {ratio} (want > {min_ratio})",
                e.ddim,
                e.pndm
            );
        }
    }
}

/// Adams-Bashforth of order `k`: the weights on the predictions made 0, 1, .., k - 1 steps
/// back integrate `s^d` over the next step, `int_0^1 s^d ds = 1 / (d + 1)`, for `d < k`.
#[test]
fn multistep_weights_are_adams_bashforth() {
    for (k, weights) in MULTISTEP_WEIGHTS
        .iter()
        .enumerate()
        .map(|(i, w)| (i + 1, *w))
    {
        assert_eq!(weights.len(), k);
        for d in 0..k as i32 {
            // Oldest first: weights[i] is for the prediction k - 1 - i steps back.
            let quadrature: f64 = weights
                .iter()
                .enumerate()
                .map(|(i, w)| w * (-((k - 1 - i) as f64)).powi(d))
                .sum();
            let exact = 1.0 / (d + 1) as f64;
            assert!(
                (quadrature - exact).abs() < 1e-12,
                "order {k}, degree {d}: {quadrature} vs {exact}"
            );
        }
    }
    // PLMS's fourth order as the paper writes it: (55 e_t - 59 e_t-1 + 37 e_t-2 - 9 e_t-3) / 24.
    assert!((MULTISTEP_WEIGHTS[3][3] * 24.0 - 55.0).abs() < 1e-12);
}

#[test]
fn network_calls_and_steps_are_what_the_doc_says() {
    let s = NoiseSchedule::new(BetaSchedule::cosine(), 50).unwrap();
    let data = Mixture::two();
    let x_t = x_start();
    for steps in [1, 2, 3, 4, 5, 10, 50] {
        let calls = Cell::new(0);
        let mut on_step = 0;
        let model = data.oracle(&s, Prediction::Epsilon, &calls);
        pndm_sample(&s, Prediction::Epsilon, &x_t, steps, false, model, || {
            on_step += 1
        })
        .unwrap();
        assert_eq!(calls.get(), pndm_network_calls(steps), "{steps} steps");
        assert_eq!(on_step, steps);
    }
    assert_eq!(
        (1..=5).map(pndm_network_calls).collect::<Vec<_>>(),
        vec![1, 2, 4, 5, 6]
    );
    // Up to 2 steps PNDM is DDIM.
    for steps in [1, 2] {
        let calls = Cell::new(0);
        let model = || data.oracle(&s, Prediction::Epsilon, &calls);
        let p = pndm_sample(&s, Prediction::Epsilon, &x_t, steps, false, model(), || {}).unwrap();
        let d = ddim_sample(
            &s,
            Prediction::Epsilon,
            &x_t,
            steps,
            0.0,
            &StepNoise::new(0),
            false,
            model(),
            || {},
        )
        .unwrap();
        assert!(rms(&p, &d.to_vec_f64().unwrap()) < 1e-12);
    }
    // The grid is DDIM's; the errors name PNDM.
    assert_eq!(pndm_timesteps(50, 5).unwrap(), vec![49, 37, 25, 12, 0]);
    for bad in [0, 51] {
        let calls = Cell::new(0);
        let model = data.oracle(&s, Prediction::Epsilon, &calls);
        let err = pndm_sample(&s, Prediction::Epsilon, &x_t, bad, false, model, || {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("PNDM") && err.contains(&format!("{bad} sampling steps")),
            "{err}"
        );
        assert_eq!(calls.get(), 0);
    }
}

#[test]
fn v_prediction_gives_the_eps_prediction_sample() {
    let s = NoiseSchedule::new(BetaSchedule::cosine(), 1000).unwrap();
    let data = Mixture::two();
    let x_t = x_start();
    let calls = Cell::new(0);
    let run = |pred: Prediction| {
        let model = data.oracle(&s, pred, &calls);
        pndm_sample(&s, pred, &x_t, 15, false, model, || {}).unwrap()
    };
    let (eps, v) = (run(Prediction::Epsilon), run(Prediction::V));
    let d = rms(&eps, &v.to_vec_f64().unwrap());
    assert!(d < 1e-9, "eps and v samples differ by {d}");
    // Deterministic: the same start gives the same picture.
    assert_eq!(
        run(Prediction::V).to_vec_f64().unwrap(),
        v.to_vec_f64().unwrap()
    );
}

#[test]
fn a_model_that_names_one_x0_leads_pndm_to_it_and_clipping_clamps_each_prediction() {
    let s = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    let x_t = x_start();
    // The multistep weights sum to 1: predictions that all name x0 combine to that x0.
    let x0 = Tensor::randn_with_seed((8, 64), DType::F64, CPU, 8, 0)
        .unwrap()
        .clamp(-1.0, 1.0)
        .unwrap();
    let oracle = |x: &Tensor, t: usize| s.eps_from_x0(x, &x0, &[t; 8]);
    for clip in [false, true] {
        let out = pndm_sample(&s, Prediction::Epsilon, &x_t, 12, clip, oracle, || {}).unwrap();
        let d = rms(&out, &x0.to_vec_f64().unwrap());
        assert!(d < 1e-9, "clip {clip}: {d} from x0");
    }
    // An x0 outside [-1, 1]: with clip_x0 each prediction is clamped before the combination,
    // so every one names the clamped x0 and the sample lands on it; without, on x0 itself.
    let far = x0.affine(3.0, 0.0).unwrap();
    let oracle = |x: &Tensor, t: usize| s.eps_from_x0(x, &far, &[t; 8]);
    let clipped = pndm_sample(&s, Prediction::Epsilon, &x_t, 12, true, oracle, || {}).unwrap();
    let want = far.clamp(-1.0, 1.0).unwrap().to_vec_f64().unwrap();
    assert!(rms(&clipped, &want) < 1e-9);
    let free = pndm_sample(&s, Prediction::Epsilon, &x_t, 12, false, oracle, || {}).unwrap();
    assert!(rms(&free, &far.to_vec_f64().unwrap()) < 1e-9);
}

fn tiny_model(seed: u64) -> TextToImage {
    manual_seed(seed);
    let tokens = PromptTokenizer::Char(CharTokenizer::from_text(&caption_alphabet()));
    TextToImage::new(common::tiny_diffusion_config(), tokens, CPU).unwrap()
}

#[test]
fn text_to_image_samples_with_pndm_and_guidance() {
    let model = tiny_model(2);
    let opts = SampleOpts {
        sampler: Sampler::Pndm,
        steps: 6,
        guidance: 2.0,
        seed: 5,
        ..Default::default()
    };
    let prompts = ["a red circle", "the square is blue"];
    let mut steps = 0;
    let a = model.sample(&prompts, 2, &opts, || steps += 1).unwrap();
    assert_eq!(a.dims(), &[4, 3, 8, 8]);
    assert_eq!(steps, 6);
    assert_eq!(opts.network_calls(50), 7);
    let a = a.to_vec_f64().unwrap();
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    let b = model.sample(&prompts, 2, &opts, || {}).unwrap();
    assert_eq!(a, b.to_vec_f64().unwrap(), "PNDM is deterministic");
    // Another sampler, or no guidance, gives other pictures.
    for other in [
        SampleOpts {
            sampler: Sampler::Ddim,
            ..opts
        },
        SampleOpts {
            guidance: 1.0,
            ..opts
        },
    ] {
        let c = model.sample(&prompts, 2, &other, || {}).unwrap();
        assert_ne!(a, c.to_vec_f64().unwrap());
    }
    // Errors, not panics.
    for (bad, words) in [
        (SampleOpts { eta: 1.0, ..opts }, "PNDM is deterministic"),
        (SampleOpts { steps: 0, ..opts }, "PNDM: 0 sampling steps"),
        (SampleOpts { steps: 51, ..opts }, "PNDM: 51 sampling steps"),
    ] {
        let err = model.sample(&prompts, 1, &bad, || {}).err().unwrap();
        assert!(err.to_string().contains(words), "{err}");
    }
}

#[test]
fn the_cli_parses_and_runs_sampler_pndm() {
    use clap::Parser;
    use tessera::cli::Cli;
    let parse = |args: &[&str]| format!("{:?}", Cli::try_parse_from(args).unwrap().command);
    let sample = parse(&[
        "tessera",
        "sample",
        "diffusion",
        "--prompt",
        "a red circle",
        "--sampler",
        "pndm",
        "--steps",
        "20",
    ]);
    assert!(
        sample.contains("sampler: Pndm") && sample.contains("steps: 20"),
        "{sample}"
    );
    let eval = parse(&[
        "tessera",
        "eval",
        "diffusion",
        "--classifier",
        "c.safetensors",
        "--sampler",
        "pndm",
    ]);
    assert!(eval.contains("sampler: Pndm"), "{eval}");
    assert!(Cli::try_parse_from([
        "tessera",
        "sample",
        "diffusion",
        "--prompt",
        "x",
        "--sampler",
        "plms"
    ])
    .is_err());

    // End to end on a one-step checkpoint of the tiny model.
    let dir = std::env::temp_dir().join(format!("tessera_pndm_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("tiny.safetensors");
    let cfg = DiffusionTrainConfig {
        steps: 1,
        batch_size: 2,
        checkpoint: Some(ckpt.clone()),
        progress: false,
        ..Default::default()
    };
    train_diffusion(&tiny_model(3), &cfg).unwrap();
    let png = dir.join("grid.png");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--threads",
            "1",
            "sample",
            "diffusion",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--prompt",
            "a red circle",
            "--count",
            "2",
            "--device",
            "cpu",
            "--out",
            png.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            .output()
            .unwrap()
    };
    let out = run(&["--sampler", "pndm", "--steps", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(line["sampler"], "pndm");
    assert_eq!(
        (line["steps"].as_u64(), line["network_calls"].as_u64()),
        (Some(4), Some(5))
    );
    assert!(png.exists());
    let out = run(&["--sampler", "pndm", "--steps", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PNDM: 0 sampling steps"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
