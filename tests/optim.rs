//! Optimizers against hand-written f64 references of the PyTorch update rules (several steps:
//! bias correction, weight decay, momentum, Nesterov), frozen parameters, state round trips,
//! gradient clipping, schedules, EMA, and small problems that must be learned.

use tessera::optim::{
    assign, clip_grad_norm, Adam, AdamConfig, AdamW, AdamWConfig, ConstantLr, Ema, LrSchedule,
    Optimizer, Sgd, SgdConfig, WarmupCosine,
};
use tessera::{DType, Device, Result, Tensor};

const CPU: Device = Device::Cpu;

fn param(vals: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(vals.to_vec(), shape.to_vec(), CPU)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .requires_grad_()
        .unwrap()
}

fn consts(vals: &[f64], dtype: DType) -> Tensor {
    Tensor::from_vec(vals.to_vec(), vals.len(), CPU)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Coefficients of the test loss at step `k`: loss = sum(c * p^2 + d * p), so grad = 2 c p + d.
fn coeffs(k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let c = (0..n).map(|i| 0.3 + 0.1 * ((i + k) % 3) as f64).collect();
    let d = (0..n)
        .map(|i| ((i * 7 + k * 3) % 5) as f64 - 2.0 + 0.25 * k as f64)
        .collect();
    (c, d)
}

/// Runs backward on the test loss of step `k` (fills `p.grad()`).
fn backward(p: &Tensor, k: usize) {
    let (c, d) = coeffs(k, p.elem_count());
    let flat = p.flatten_all().unwrap();
    let loss = flat
        .sqr()
        .unwrap()
        .mul(&consts(&c, p.dtype()))
        .unwrap()
        .add(&flat.mul(&consts(&d, p.dtype())).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    loss.backward().unwrap();
}

fn ref_grad(p: &[f64], k: usize) -> Vec<f64> {
    let (c, d) = coeffs(k, p.len());
    (0..p.len()).map(|i| 2.0 * c[i] * p[i] + d[i]).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// PyTorch's Adam/AdamW for one step, written out in f64.
#[allow(clippy::too_many_arguments)]
fn ref_adam_step(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    t: i32,
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
    wd: f64,
    decoupled: bool,
) {
    for i in 0..p.len() {
        let mut gi = g[i];
        if decoupled {
            p[i] *= 1.0 - lr * wd;
        } else {
            gi += wd * p[i];
        }
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        let m_hat = m[i] / (1.0 - b1.powi(t));
        let v_hat = v[i] / (1.0 - b2.powi(t));
        // torch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)  ==  lr * m_hat / (sqrt(v_hat) + eps)
        p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
    }
}

fn run_adam(decoupled: bool, dtype: DType, tol: f64) {
    let init = [0.5, -1.25, 2.0, 0.0, -0.75, 1.5];
    let (lr, b1, b2, eps, wd) = (0.05, 0.8, 0.95, 1e-6, 0.1);
    let p = param(&init, &[2, 3], dtype);
    let mut opt: Box<dyn Optimizer> = if decoupled {
        Box::new(
            AdamW::new(
                vec![("w".into(), p.clone())],
                AdamWConfig {
                    lr,
                    beta1: b1,
                    beta2: b2,
                    eps,
                    weight_decay: wd,
                },
            )
            .unwrap(),
        )
    } else {
        Box::new(
            Adam::new(
                vec![("w".into(), p.clone())],
                AdamConfig {
                    lr,
                    beta1: b1,
                    beta2: b2,
                    eps,
                    weight_decay: wd,
                },
            )
            .unwrap(),
        )
    };
    let (mut rp, mut m, mut v) = (init.to_vec(), vec![0.0; 6], vec![0.0; 6]);
    for k in 0..6 {
        opt.zero_grad();
        backward(&p, k);
        let g = ref_grad(&rp, k);
        opt.step().unwrap();
        ref_adam_step(
            &mut rp,
            &mut m,
            &mut v,
            &g,
            k as i32 + 1,
            lr,
            (b1, b2),
            eps,
            wd,
            decoupled,
        );
        assert_close(&p.to_vec_f64().unwrap(), &rp, tol, &format!("step {k}"));
    }
    // The state holds the same moments and the per-parameter step count.
    let state = opt.state();
    let get = |n: &str| {
        state
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .to_vec_f64()
            .unwrap()
    };
    assert_close(&get("w.exp_avg"), &m, tol, "exp_avg");
    assert_close(&get("w.exp_avg_sq"), &v, tol, "exp_avg_sq");
    assert_eq!(get("w.step"), vec![6.0]);
    assert_eq!(get("step"), vec![6.0]);
}

#[test]
fn adam_matches_reference_f64() {
    run_adam(false, DType::F64, 1e-12);
}
#[test]
fn adamw_matches_reference_f64() {
    run_adam(true, DType::F64, 1e-12);
}
#[test]
fn adam_and_adamw_match_reference_f32() {
    run_adam(false, DType::F32, 2e-5);
    run_adam(true, DType::F32, 2e-5);
}

#[test]
fn adamw_defaults_are_pytorchs() {
    let c = AdamWConfig::default();
    assert_eq!(
        (c.lr, c.beta1, c.beta2, c.eps, c.weight_decay),
        (1e-3, 0.9, 0.999, 1e-8, 1e-2)
    );
    let c = AdamConfig::default();
    assert_eq!(
        (c.lr, c.beta1, c.beta2, c.eps, c.weight_decay),
        (1e-3, 0.9, 0.999, 1e-8, 0.0)
    );
}

#[test]
fn adam_rejects_bad_hyperparameters() {
    let p = param(&[1.0], &[1], DType::F32);
    for c in [
        AdamWConfig {
            lr: -1.0,
            ..Default::default()
        },
        AdamWConfig {
            beta1: 1.0,
            ..Default::default()
        },
        AdamWConfig {
            beta2: f64::NAN,
            ..Default::default()
        },
        AdamWConfig {
            eps: -1e-8,
            ..Default::default()
        },
    ] {
        assert!(
            AdamW::new(vec![("p".into(), p.clone())], c).is_err(),
            "{c:?}"
        );
    }
    // The same tensor twice, or one name twice, is an error.
    assert!(AdamW::new(
        vec![("a".into(), p.clone()), ("b".into(), p.clone())],
        Default::default()
    )
    .is_err());
    let q = param(&[1.0], &[1], DType::F32);
    assert!(AdamW::new(vec![("a".into(), p), ("a".into(), q)], Default::default()).is_err());
}

/// PyTorch's SGD for one step, written out in f64.
fn ref_sgd_step(p: &mut [f64], buf: &mut Option<Vec<f64>>, g: &[f64], c: &SgdConfig) {
    let d: Vec<f64> = (0..p.len()).map(|i| g[i] + c.weight_decay * p[i]).collect();
    let step = if c.momentum != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => (0..p.len())
                .map(|i| c.momentum * b[i] + (1.0 - c.dampening) * d[i])
                .collect(),
        };
        let s = if c.nesterov {
            (0..p.len()).map(|i| d[i] + c.momentum * b[i]).collect()
        } else {
            b.clone()
        };
        *buf = Some(b);
        s
    } else {
        d
    };
    for i in 0..p.len() {
        p[i] -= c.lr * step[i];
    }
}

#[test]
fn sgd_variants_match_reference() {
    let configs = [
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
        SgdConfig {
            lr: 0.1,
            weight_decay: 0.05,
            ..Default::default()
        },
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
        SgdConfig {
            lr: 0.05,
            momentum: 0.8,
            dampening: 0.3,
            weight_decay: 0.01,
            ..Default::default()
        },
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.02,
            nesterov: true,
            ..Default::default()
        },
    ];
    let init = [1.0, -2.0, 0.5, 3.0, -0.25];
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for c in &configs {
            let p = param(&init, &[5], dtype);
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], *c).unwrap();
            let (mut rp, mut buf) = (init.to_vec(), None);
            for k in 0..5 {
                opt.zero_grad();
                backward(&p, k);
                let g = ref_grad(&rp, k);
                opt.step().unwrap();
                ref_sgd_step(&mut rp, &mut buf, &g, c);
                assert_close(
                    &p.to_vec_f64().unwrap(),
                    &rp,
                    tol,
                    &format!("{c:?} step {k}"),
                );
            }
        }
    }
}

#[test]
fn sgd_rejects_nesterov_without_momentum() {
    let p = param(&[1.0], &[1], DType::F32);
    let c = SgdConfig {
        nesterov: true,
        ..Default::default()
    };
    assert!(Sgd::new(vec![("p".into(), p)], c).is_err());
}

#[test]
fn strided_parameter_view_is_updated_through_its_storage() {
    // A leaf that is a transposed view: the update must land in the shared buffer.
    let base = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), CPU).unwrap();
    let p = base.t().unwrap().detach().requires_grad_().unwrap();
    assert!(!p.is_contiguous());
    let init = p.to_vec_f64().unwrap();
    let mut opt = AdamW::new(
        vec![("p".into(), p.clone())],
        AdamWConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let (mut rp, mut m, mut v) = (init.clone(), vec![0.0; 6], vec![0.0; 6]);
    for k in 0..3 {
        opt.zero_grad();
        backward(&p, k);
        let g = ref_grad(&rp, k);
        opt.step().unwrap();
        ref_adam_step(
            &mut rp,
            &mut m,
            &mut v,
            &g,
            k as i32 + 1,
            0.1,
            (0.9, 0.999),
            1e-8,
            1e-2,
            true,
        );
    }
    assert_close(&p.to_vec_f64().unwrap(), &rp, 1e-12, "view");
    assert_close(&base.t().unwrap().to_vec_f64().unwrap(), &rp, 1e-12, "base");
}

#[test]
fn frozen_and_gradless_params_are_untouched() -> Result<()> {
    let a = param(&[1.0, 2.0], &[2], DType::F32);
    let frozen = param(&[3.0, 4.0], &[2], DType::F32);
    let unused = param(&[5.0, 6.0], &[2], DType::F32);
    let named = vec![
        ("a".to_string(), a.clone()),
        ("frozen".to_string(), frozen.clone()),
        ("unused".to_string(), unused.clone()),
    ];
    let opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(
            named.clone(),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.1,
                ..Default::default()
            },
        )?),
        Box::new(Adam::new(
            named.clone(),
            AdamConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )?),
        Box::new(AdamW::new(
            named.clone(),
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )?),
    ];
    for mut opt in opts {
        for t in [&a, &frozen, &unused] {
            t.zero_grad();
            t.set_requires_grad(true)?;
        }
        // `frozen` gets a gradient, then is frozen: a stale gradient must not move it.
        a.add(&frozen)?.sum_all()?.backward()?;
        frozen.set_requires_grad(false)?;
        assert!(frozen.grad().is_some() && unused.grad().is_none());
        let a0 = a.to_vec_f64()?;
        opt.step()?;
        assert_ne!(a.to_vec_f64()?, a0, "the trained parameter moves");
        assert_eq!(frozen.to_vec_f64()?, vec![3.0, 4.0]);
        assert_eq!(unused.to_vec_f64()?, vec![5.0, 6.0]);
        let names: Vec<String> = opt.state().into_iter().map(|(n, _)| n).collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("frozen") && !n.starts_with("unused")),
            "{names:?}"
        );
        opt.zero_grad();
        assert!(a.grad().is_none());
    }
    Ok(())
}

/// Two optimizers, one resumed from the other's state after two steps, stay in lockstep.
fn state_round_trip(make: impl Fn(Vec<(String, Tensor)>) -> Box<dyn Optimizer>) {
    let init = [0.5, -1.0, 2.0, 1.5];
    let p = param(&init, &[4], DType::F64);
    let mut opt = make(vec![("layer.weight".into(), p.clone())]);
    for k in 0..2 {
        opt.zero_grad();
        backward(&p, k);
        opt.step().unwrap();
    }
    opt.set_lr(0.03);
    let state = opt.state();
    let q = param(&p.to_vec_f64().unwrap(), &[4], DType::F64);
    let mut resumed = make(vec![("layer.weight".into(), q.clone())]);
    resumed.load_state(&state).unwrap();
    assert_eq!(resumed.lr(), 0.03, "the learning rate is part of the state");
    for k in 2..5 {
        for (o, t) in [(&mut opt, &p), (&mut resumed, &q)] {
            o.zero_grad();
            backward(t, k);
            o.step().unwrap();
        }
        assert_eq!(p.to_vec_f64().unwrap(), q.to_vec_f64().unwrap(), "step {k}");
    }
    // Bad state: an unknown entry, or a buffer of the wrong shape, is refused.
    let mut bad = state.clone();
    bad.push((
        "nope.exp_avg".into(),
        Tensor::zeros(4, DType::F64, CPU).unwrap(),
    ));
    assert!(resumed.load_state(&bad).is_err());
    let wrong: Vec<(String, Tensor)> = state
        .iter()
        .map(|(n, t)| {
            let t = if t.elem_count() == 4 {
                Tensor::zeros(5, DType::F64, CPU).unwrap()
            } else {
                t.clone()
            };
            (n.clone(), t)
        })
        .collect();
    let err = resumed.load_state(&wrong).unwrap_err().to_string();
    assert!(err.contains("[5]") && err.contains("[4]"), "{err}");
}

#[test]
fn optimizer_state_round_trips() {
    state_round_trip(|p| {
        Box::new(
            AdamW::new(
                p,
                AdamWConfig {
                    lr: 0.05,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    state_round_trip(|p| {
        Box::new(
            Adam::new(
                p,
                AdamConfig {
                    lr: 0.05,
                    weight_decay: 0.01,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    state_round_trip(|p| {
        Box::new(
            Sgd::new(
                p,
                SgdConfig {
                    lr: 0.05,
                    momentum: 0.9,
                    nesterov: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
}

fn set_grad(p: &Tensor, g: &[f64]) {
    // d/dp sum(p * g) = g
    p.mul(&consts(g, p.dtype()))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
}

#[test]
fn clip_grad_norm_scales_in_place_like_torch() -> Result<()> {
    let a = param(&[0.0, 0.0], &[2], DType::F32);
    let b = param(&[0.0], &[1], DType::F64);
    let frozen = param(&[0.0], &[1], DType::F32);
    set_grad(&a, &[3.0, 4.0]);
    set_grad(&b, &[12.0]);
    set_grad(&frozen, &[100.0]);
    frozen.set_requires_grad(false)?;
    let named = vec![
        ("a".to_string(), a.clone()),
        ("b".to_string(), b.clone()),
        ("f".to_string(), frozen.clone()),
    ];
    let held = a.grad().unwrap();

    // Below the limit: nothing changes.
    assert!((clip_grad_norm(&named, 20.0)? - 13.0).abs() < 1e-6);
    assert_eq!(a.grad().unwrap().to_vec_f64()?, vec![3.0, 4.0]);

    let norm = clip_grad_norm(&named, 6.5)?;
    assert!((norm - 13.0).abs() < 1e-6, "{norm}");
    let coef = 6.5 / (13.0 + 1e-6);
    assert_close(
        &a.grad().unwrap().to_vec_f64()?,
        &[3.0 * coef, 4.0 * coef],
        1e-6,
        "a",
    );
    assert_close(&b.grad().unwrap().to_vec_f64()?, &[12.0 * coef], 1e-12, "b");
    assert_close(
        &held.to_vec_f64()?,
        &[3.0 * coef, 4.0 * coef],
        1e-6,
        "in place",
    );
    assert_eq!(
        frozen.grad().unwrap().to_vec_f64()?,
        vec![100.0],
        "frozen grads are not counted or scaled"
    );
    let after = clip_grad_norm(&named, 1e9)?;
    assert!((after - 6.5).abs() < 1e-5, "{after}");
    assert!(clip_grad_norm(&named, -1.0).is_err());
    Ok(())
}

#[test]
fn warmup_cosine_at_key_steps() {
    let s = WarmupCosine::new(1.0, 0.1, 10, 110).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(s.lr_at(0), 0.1));
    assert!(close(s.lr_at(4), 0.5));
    assert!(close(s.lr_at(9), 1.0), "warm-up ends at the peak");
    assert!(close(s.lr_at(10), 1.0), "decay starts at the peak");
    let quarter = 0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert!(close(s.lr_at(35), quarter));
    assert!(close(s.lr_at(60), 0.55), "midpoint");
    assert!(
        close(s.lr_at(110), 0.1) && close(s.lr_at(10_000), 0.1),
        "floor"
    );
    assert!(
        (11..110).all(|t| s.lr_at(t) < s.lr_at(t - 1)),
        "monotone decay"
    );
    assert!(WarmupCosine::new(1.0, 2.0, 0, 10).is_err());
    assert!(WarmupCosine::new(1.0, 0.0, 20, 10).is_err());
    // No warm-up at all: the first step is at the peak.
    assert!(close(
        WarmupCosine::new(2.0, 0.0, 0, 4).unwrap().lr_at(0),
        2.0
    ));

    assert_eq!(ConstantLr(0.3).lr_at(12345), 0.3);
    let p = param(&[1.0], &[1], DType::F32);
    let mut opt = AdamW::new(vec![("p".into(), p)], Default::default()).unwrap();
    assert!(close(s.apply(&mut opt, 60), 0.55));
    assert!(close(opt.lr(), 0.55));
}

#[test]
fn ema_update_copy_swap_and_state() -> Result<()> {
    let p = param(&[1.0, 2.0], &[2], DType::F32);
    let named = vec![("w".to_string(), p.clone())];
    let mut ema = Ema::new(&named, 0.9)?;
    assign(&p, &Tensor::from_vec(vec![3.0f32, 4.0], 2, CPU)?)?;
    ema.update(&named)?;
    assert_close(
        &ema.get("w").unwrap().to_vec_f64()?,
        &[1.2, 2.2],
        1e-6,
        "ema",
    );
    ema.update(&named)?;
    let want = [0.9 * 1.2 + 0.3, 0.9 * 2.2 + 0.4];
    assert_close(&ema.get("w").unwrap().to_vec_f64()?, &want, 1e-6, "ema 2");
    assert_eq!(ema.num_updates(), 2);

    ema.swap(&named)?;
    assert_close(&p.to_vec_f64()?, &want, 1e-6, "swapped in");
    assert_eq!(ema.get("w").unwrap().to_vec_f64()?, vec![3.0, 4.0]);
    ema.swap(&named)?;
    assert_eq!(p.to_vec_f64()?, vec![3.0, 4.0]);

    let state = ema.state();
    let mut other = Ema::new(&named, 0.9)?;
    other.load_state(&state)?;
    assert_eq!(other.num_updates(), 2);
    // The loaded shadow is a copy: later updates of one EMA do not move the other.
    ema.update(&named)?;
    other.copy_to(&named)?;
    assert_close(&p.to_vec_f64()?, &want, 1e-6, "copy_to");

    let stranger = vec![("x".to_string(), param(&[0.0], &[1], DType::F32))];
    assert!(ema.update(&stranger).is_err());
    assert!(Ema::new(&named, 1.5).is_err());
    Ok(())
}

#[test]
fn ema_warmup_ramps_the_decay_as_min_decay_and_1_plus_n_over_10_plus_n() -> Result<()> {
    let p = param(&[0.0], &[1], DType::F64);
    let named = vec![("w".to_string(), p.clone())];
    let mut ema = Ema::new(&named, 0.95)?.with_warmup();
    let mut want = 0.0f64;
    for n in 0..200u64 {
        let d = (0.95f64).min((1.0 + n as f64) / (10.0 + n as f64));
        assert!((ema.current_decay() - d).abs() < 1e-15, "update {n}");
        let v = (n + 1) as f64;
        assign(&p, &Tensor::from_vec(vec![v], 1, CPU)?)?;
        ema.update(&named)?;
        want = d * want + (1.0 - d) * v;
        assert_close(&ema.get("w").unwrap().to_vec_f64()?, &[want], 1e-12, "ema");
    }
    // Past the ramp (n >= 161 for 0.95), the set decay; the ramp follows num_updates through
    // save and load.
    assert_eq!(ema.current_decay(), 0.95);
    let mut other = Ema::new(&named, 0.95)?.with_warmup();
    assert!(other.current_decay() < 0.2);
    other.load_state(&ema.state())?;
    assert_eq!(other.current_decay(), 0.95);
    Ok(())
}

/// The fused in-place update (one pass, `backend::optim::ema_step`) gives the same bits as
/// the decomposed `d * s + (1 - d) * p`, on a transposed (strided) parameter and on one large
/// enough to be split across threads, in f32 and f64.
#[test]
fn ema_fused_update_equals_the_decomposed_formula() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let big = Tensor::randn_with_seed(40_000, dtype, CPU, 5, 0)?;
        let strided = Tensor::randn_with_seed((3, 5), dtype, CPU, 6, 0)?.t()?;
        let named = vec![
            ("big".to_string(), big.clone()),
            ("t".into(), strided.clone()),
        ];
        let mut ema = Ema::new(&named, 0.93)?;
        let before: Vec<Tensor> = ema
            .shadow()
            .iter()
            .map(|(_, s)| s.contiguous_copy())
            .collect::<Result<_>>()?;
        // Move the parameters so that the average and the parameter differ.
        assign(&big, &big.affine(-1.5, 0.25)?)?;
        assign(&strided, &strided.affine(2.0, -1.0)?)?;
        ema.update(&named)?;
        for ((name, p), s0) in named.iter().zip(&before) {
            let want = s0.affine(0.93, 0.0)?.add(&p.affine(1.0 - 0.93, 0.0)?)?;
            let got = ema.get(name).unwrap();
            assert_eq!(got.to_vec_f64()?, want.to_vec_f64()?, "{name} {dtype:?}");
        }
    }
    Ok(())
}

/// Fits y = X w* by least squares; returns the final loss and the distance to w*.
fn least_squares(
    make: impl Fn(Vec<(String, Tensor)>) -> Box<dyn Optimizer>,
    steps: usize,
) -> (f64, f64) {
    let x = Tensor::randn_with_seed((64, 4), DType::F32, CPU, 11, 0).unwrap();
    let w_true = Tensor::from_vec(vec![1.5f32, -2.0, 0.5, 3.0], (4, 1), CPU).unwrap();
    let y = x.matmul(&w_true).unwrap();
    let w = Tensor::zeros((4, 1), DType::F32, CPU)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let mut opt = make(vec![("w".into(), w.clone())]);
    let mut loss = f64::INFINITY;
    for _ in 0..steps {
        opt.zero_grad();
        let l = x
            .matmul(&w)
            .unwrap()
            .sub(&y)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        loss = l.item().unwrap();
        l.backward().unwrap();
        opt.step().unwrap();
    }
    let err = w
        .sub(&w_true)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .item()
        .unwrap()
        .sqrt();
    (loss, err)
}

type MakeOpt = dyn Fn(Vec<(String, Tensor)>) -> Box<dyn Optimizer>;

#[test]
fn least_squares_converges_with_each_optimizer() {
    let runs: Vec<(&str, Box<MakeOpt>)> = vec![
        (
            "sgd",
            Box::new(|p| {
                Box::new(
                    Sgd::new(
                        p,
                        SgdConfig {
                            lr: 0.1,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "sgd-momentum",
            Box::new(|p| {
                Box::new(
                    Sgd::new(
                        p,
                        SgdConfig {
                            lr: 0.05,
                            momentum: 0.9,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "sgd-nesterov",
            Box::new(|p| {
                Box::new(
                    Sgd::new(
                        p,
                        SgdConfig {
                            lr: 0.05,
                            momentum: 0.9,
                            nesterov: true,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "adam",
            Box::new(|p| {
                Box::new(
                    Adam::new(
                        p,
                        AdamConfig {
                            lr: 0.05,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "adamw",
            Box::new(|p| {
                Box::new(
                    AdamW::new(
                        p,
                        AdamWConfig {
                            lr: 0.05,
                            weight_decay: 1e-4,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            }),
        ),
    ];
    for (name, make) in runs {
        let (loss, err) = least_squares(make, 400);
        assert!(
            loss < 1e-4 && err < 1e-2,
            "{name}: loss {loss}, distance to w* {err}"
        );
    }
}

#[test]
fn logistic_regression_separates_two_classes() {
    // Labels from a known hyperplane; loss = mean(log(1 + exp(-y * x.w))).
    let x = Tensor::randn_with_seed((128, 3), DType::F64, CPU, 5, 0).unwrap();
    let w_true = Tensor::from_vec(vec![2.0f64, -1.0, 0.5], (3, 1), CPU).unwrap();
    let score = x.matmul(&w_true).unwrap().to_vec_f64().unwrap();
    let labels: Vec<f64> = score
        .iter()
        .map(|&s| if s > 0.0 { 1.0 } else { -1.0 })
        .collect();
    let y = Tensor::from_vec(labels.clone(), (128, 1), CPU).unwrap();
    let w = Tensor::zeros((3, 1), DType::F64, CPU)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let mut opt = AdamW::new(
        vec![("w".into(), w.clone())],
        AdamWConfig {
            lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..300 {
        opt.zero_grad();
        let margin = x.matmul(&w).unwrap().mul(&y).unwrap();
        let loss = margin
            .neg()
            .unwrap()
            .exp()
            .unwrap()
            .add_scalar(1.0)
            .unwrap()
            .log()
            .unwrap()
            .mean_all()
            .unwrap();
        last = loss.item().unwrap();
        first.get_or_insert(last);
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    let pred = x.matmul(&w).unwrap().to_vec_f64().unwrap();
    let correct = pred
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p.signum() == **l)
        .count();
    assert!((first.unwrap() - 2f64.ln()).abs() < 1e-12);
    assert!(last < 0.1, "loss {last}");
    assert!(correct >= 126, "{correct}/128 classified correctly");
}

#[test]
fn weight_decay_can_skip_named_params() -> Result<()> {
    // Zero gradients: the only change is AdamW's decay p *= 1 - lr * wd, or SGD's lr * wd * p.
    for sgd in [false, true] {
        let w = param(&[2.0, -4.0], &[2], DType::F64);
        let b = param(&[2.0, -4.0], &[2], DType::F64);
        let named = vec![
            ("fc.weight".to_string(), w.clone()),
            ("fc.bias".to_string(), b.clone()),
        ];
        let mut opt: Box<dyn Optimizer> = if sgd {
            let c = SgdConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            };
            Box::new(Sgd::new(named, c)?.without_weight_decay(|n| n.ends_with(".bias")))
        } else {
            let c = AdamWConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            };
            Box::new(AdamW::new(named, c)?.without_weight_decay(|n| n.ends_with(".bias")))
        };
        set_grad(&w, &[0.0, 0.0]);
        set_grad(&b, &[0.0, 0.0]);
        opt.step()?;
        assert_close(
            &w.to_vec_f64()?,
            &[2.0 * 0.95, -4.0 * 0.95],
            1e-12,
            "decayed",
        );
        assert_eq!(b.to_vec_f64()?, vec![2.0, -4.0], "exempt");
    }
    Ok(())
}

#[test]
fn f16_parameters_are_refused_not_panicked_on() {
    let p = Tensor::zeros(2, DType::F16, CPU).unwrap();
    assert!(AdamW::new(vec![("h".into(), p.clone())], Default::default()).is_err());
    assert!(Ema::new(&[("h".into(), p)], 0.9).is_err());
}
