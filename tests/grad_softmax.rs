//! softmax / log_softmax (fused, checked against their decomposition into primitive ops),
//! dropout (mask statistics, reproducibility, gradient) and l2_normalize / cosine_similarity.

use std::sync::Mutex;
use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::random;
use tessera::{DType, Device, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0).unwrap()
}
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    check_gradients(f, inputs, GradCheck::default()).unwrap();
}
fn f64s(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), Device::Cpu).unwrap()
}
fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

/// Tests that draw from the global generator hold this lock, so their draws do not interleave.
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

// ---- softmax / log_softmax -------------------------------------------------------------

#[test]
fn softmax_forward_values() {
    let x = f64s(&[1., 2., 3., 0., 0., 0.], &[2, 3]);
    // e / (e + e^2 + e^3) etc., and a uniform row.
    let third = 1.0 / 3.0;
    assert_close(
        &values(&x.softmax(-1).unwrap()),
        &[
            0.090_030_573_170_380_46,
            0.244_728_471_054_797_64,
            0.665_240_955_774_821_9,
            third,
            third,
            third,
        ],
        1e-14,
        "softmax",
    );
    // log_softmax = x - ln(e + e^2 + e^3) = x - 3.40760596444438
    let lse = 3.407_605_964_444_38;
    let ln3 = 3f64.ln();
    assert_close(
        &values(&x.log_softmax(1).unwrap()),
        &[1. - lse, 2. - lse, 3. - lse, -ln3, -ln3, -ln3],
        1e-13,
        "log_softmax",
    );
    // Along dim 0: columns [1, 0], [2, 0], [3, 0].
    let s0 = values(&x.softmax(0).unwrap());
    let sig = |t: f64| 1.0 / (1.0 + (-t).exp());
    assert_close(
        &s0,
        &[sig(1.), sig(2.), sig(3.), sig(-1.), sig(-2.), sig(-3.)],
        1e-14,
        "softmax dim 0",
    );
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let big = Tensor::from_slice(&[1000f32, 1001., 1002.], 3, Device::Cpu).unwrap();
    let small = Tensor::from_slice(&[0f32, 1., 2.], 3, Device::Cpu).unwrap();
    let (b, s) = (
        big.softmax(0).unwrap().to_vec::<f32>().unwrap(),
        small.softmax(0).unwrap().to_vec::<f32>().unwrap(),
    );
    for (x, y) in b.iter().zip(&s) {
        assert!(x.is_finite() && (x - y).abs() < 1e-6, "{b:?} vs {s:?}");
    }
    let ls = Tensor::from_slice(&[-1000f32, 0.], 2, Device::Cpu)
        .unwrap()
        .log_softmax(0)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(ls, vec![-1000.0, 0.0]);
}

#[test]
fn a_nan_makes_its_whole_row_nan_and_no_other() {
    // Rows of 3 and of 200 (past the 64 wide lanes of the row maximum), the NaN first, in the
    // middle and last; f32 and f64; softmax and log_softmax over the last dim (one row per
    // slab) and over dim 0 (columns).
    for n in [3usize, 200] {
        for at in [0, n / 2, n - 1] {
            let mut v: Vec<f64> = (0..2 * n).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
            v[at] = f64::NAN;
            for dtype in [DType::F32, DType::F64] {
                let x = f64s(&v, &[2, n]).to_dtype(dtype).unwrap();
                // Each result back in x's layout, `[2, n]`, NaN row first.
                let cols = x.t().unwrap().contiguous_copy().unwrap();
                let back = |y: Tensor| y.t().unwrap().contiguous_copy().unwrap();
                for (name, y) in [
                    ("softmax", x.softmax(-1).unwrap()),
                    ("log_softmax", x.log_softmax(-1).unwrap()),
                    ("softmax dim 0", back(cols.softmax(0).unwrap())),
                    ("log_softmax dim 0", back(cols.log_softmax(0).unwrap())),
                ] {
                    let y = values(&y);
                    assert!(
                        y[..n].iter().all(|v| v.is_nan()),
                        "{name} {dtype:?} n {n} at {at}"
                    );
                    assert!(
                        y[n..].iter().all(|v| v.is_finite()),
                        "{name} {dtype:?}: other row"
                    );
                }
            }
        }
    }
}

fn softmax_decomposed(x: &Tensor, dim: isize) -> Result<Tensor> {
    let shifted = x.sub(&x.max_keepdim(dim)?)?;
    let e = shifted.exp()?;
    e.div(&e.sum_keepdim(dim)?)
}
fn log_softmax_decomposed(x: &Tensor, dim: isize) -> Result<Tensor> {
    let shifted = x.sub(&x.max_keepdim(dim)?)?;
    shifted.sub(&shifted.exp()?.sum_keepdim(dim)?.log()?)
}

/// Value and input gradient of `sum(w * f(view(x)))`.
fn value_and_grad(
    x: &Tensor,
    w: &Tensor,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> (Vec<f64>, Vec<f64>) {
    let leaf = x.detach().requires_grad_().unwrap();
    let y = f(&leaf).unwrap();
    y.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
    (values(&y), values(&leaf.grad().unwrap()))
}

#[test]
fn fused_softmax_matches_decomposition_on_rows_wider_than_the_wide_lanes() {
    // 200 = three blocks of 64 lanes and a tail of 8: the row sums take both lane phases.
    let x = randn(&[3, 200], 21).mul_scalar(3.0).unwrap();
    let w = randn(&[3, 200], 22);
    let (yf, gf) = value_and_grad(&x, &w, |t| t.softmax(-1));
    let (yd, gd) = value_and_grad(&x, &w, |t| softmax_decomposed(t, -1));
    assert_close(&yf, &yd, 1e-12, "softmax, rows of 200");
    assert_close(&gf, &gd, 1e-12, "softmax grad, rows of 200");
    let (yf, gf) = value_and_grad(&x, &w, |t| t.log_softmax(-1));
    let (yd, gd) = value_and_grad(&x, &w, |t| log_softmax_decomposed(t, -1));
    assert_close(&yf, &yd, 1e-12, "log_softmax, rows of 200");
    assert_close(&gf, &gd, 1e-12, "log_softmax grad, rows of 200");
}

#[test]
fn fused_softmax_matches_decomposition_forward_and_backward() {
    let x = randn(&[4, 5, 6], 1).mul_scalar(3.0).unwrap();
    type View = fn(&Tensor) -> Result<Tensor>;
    let views: [(&str, View); 3] = [
        ("contiguous", |t| Ok(t.clone())),
        ("permuted", |t| t.permute(&[2, 0, 1])),
        ("narrowed", |t| t.narrow(1, 1, 3)),
    ];
    for (name, view) in views {
        let shape = view(&x).unwrap().dims().to_vec();
        let w = randn(&shape, 2);
        for dim in [0isize, 1, 2, -1] {
            let (yf, gf) = value_and_grad(&x, &w, |t| view(t)?.softmax(dim));
            let (yd, gd) = value_and_grad(&x, &w, |t| softmax_decomposed(&view(t)?, dim));
            assert_close(&yf, &yd, 1e-12, &format!("softmax {name} dim {dim}"));
            assert_close(&gf, &gd, 1e-12, &format!("softmax grad {name} dim {dim}"));
            let (yf, gf) = value_and_grad(&x, &w, |t| view(t)?.log_softmax(dim));
            let (yd, gd) = value_and_grad(&x, &w, |t| log_softmax_decomposed(&view(t)?, dim));
            assert_close(&yf, &yd, 1e-12, &format!("log_softmax {name} dim {dim}"));
            assert_close(
                &gf,
                &gd,
                1e-12,
                &format!("log_softmax grad {name} dim {dim}"),
            );
        }
    }
}

#[test]
fn softmax_gradients() {
    let x = randn(&[3, 7], 3);
    check(|x| x[0].softmax(-1), std::slice::from_ref(&x));
    check(|x| x[0].softmax(0), std::slice::from_ref(&x));
    check(|x| x[0].t()?.softmax(1), std::slice::from_ref(&x));
    let y = randn(&[2, 3, 5], 4);
    check(|x| x[0].softmax(1), std::slice::from_ref(&y));
    check(
        |x| x[0].permute(&[1, 2, 0])?.softmax(-2),
        std::slice::from_ref(&y),
    );
    // A size-1 softmax dim: the output is constant 1, the gradient exactly 0.
    check(|x| x[0].narrow(1, 2, 1)?.softmax(1), &[y]);
}

#[test]
fn log_softmax_gradients() {
    let x = randn(&[3, 7], 5);
    check(|x| x[0].log_softmax(-1), std::slice::from_ref(&x));
    check(|x| x[0].t()?.log_softmax(-1), std::slice::from_ref(&x));
    let y = randn(&[2, 3, 5], 6);
    check(|x| x[0].log_softmax(0), std::slice::from_ref(&y));
    check(|x| x[0].permute(&[2, 0, 1])?.log_softmax(1), &[y]);
}

#[test]
fn softmax_rows_sum_to_one_in_f32() {
    let x = Tensor::randn_with_seed((64, 33, 17), DType::F32, Device::Cpu, 7, 0)
        .unwrap()
        .mul_scalar(5.0)
        .unwrap();
    for dim in [0isize, 1, 2] {
        let sums = values(&x.softmax(dim).unwrap().sum(dim).unwrap());
        assert!(
            sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
            "dim {dim}: {:?}",
            &sums[..4]
        );
        let lse = values(&x.log_softmax(dim).unwrap().exp().unwrap().sum(dim).unwrap());
        assert!(lse.iter().all(|s| (s - 1.0).abs() < 1e-5), "dim {dim}");
    }
}

#[test]
fn softmax_errors() {
    let x = randn(&[2, 3], 8);
    assert!(x.softmax(2).is_err());
    assert!(x.log_softmax(-3).is_err());
    let ids = Tensor::zeros(3, DType::I64, Device::Cpu).unwrap();
    assert!(ids.softmax(0).is_err());
}

// ---- dropout -----------------------------------------------------------------------------

/// The mask dropout must use for a draw at (seed, offset): kept iff u >= p.
fn expected_mask(n: usize, p: f64, seed: u64, offset: u64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if random::uniform_at(seed, offset, i as u64) >= p {
                1.0 / (1.0 - p)
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn dropout_keep_rate_and_scale() {
    let _lock = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let x = Tensor::ones((200, 500), DType::F32, Device::Cpu).unwrap();
    for p in [0.1, 0.3, 0.75] {
        let y = x.dropout(p, true).unwrap().to_vec::<f32>().unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        // 100k Bernoulli draws: the standard error is below 0.0014, so 0.01 is > 7 sigma.
        assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        let scale = (1.0 / (1.0 - p)) as f32;
        assert!(y.iter().all(|&v| v == 0.0 || v == scale), "p {p}");
    }
}

#[test]
fn dropout_mask_is_the_documented_philox_draw_and_reproducible() {
    let _lock = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let x = randn(&[7, 13], 9);
    let state = random::rng_state();
    let y1 = values(&x.dropout(0.4, true).unwrap());
    let expected: Vec<f64> = values(&x)
        .iter()
        .zip(expected_mask(91, 0.4, state.seed, state.offset))
        .map(|(v, m)| v * m)
        .collect();
    assert_eq!(y1, expected);
    // The next call draws a fresh mask; restoring the state reproduces the first.
    let y2 = values(&x.dropout(0.4, true).unwrap());
    assert_ne!(y1, y2);
    random::set_rng_state(state);
    assert_eq!(values(&x.dropout(0.4, true).unwrap()), y1);
}

#[test]
fn dropout_eval_and_zero_p_are_identity() {
    let _lock = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let x = randn(&[5, 6], 10);
    let state = random::rng_state();
    assert_eq!(values(&x.dropout(0.5, false).unwrap()), values(&x));
    assert_eq!(values(&x.dropout(0.0, true).unwrap()), values(&x));
    // The identity paths draw nothing from the generator.
    assert_eq!(random::rng_state(), state);
    for p in [-0.1, 1.0, 1.5, f64::NAN] {
        assert!(x.dropout(p, true).is_err(), "p {p}");
    }
}

#[test]
fn dropout_gradient_is_the_mask() {
    let _lock = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    // A transposed (non-contiguous) input: the mask follows the logical row-major order.
    let x = randn(&[6, 9], 11).requires_grad_().unwrap();
    let g = randn(&[9, 6], 12);
    let state = random::rng_state();
    let y = x.t().unwrap().dropout(0.3, true).unwrap();
    y.backward_with(&g).unwrap();
    let mask = expected_mask(54, 0.3, state.seed, state.offset);
    let expected_y: Vec<f64> = values(&x.t().unwrap())
        .iter()
        .zip(&mask)
        .map(|(v, m)| v * m)
        .collect();
    assert_close(&values(&y), &expected_y, 0.0, "dropout forward");
    let expected_grad_t: Vec<f64> = values(&g).iter().zip(&mask).map(|(v, m)| v * m).collect();
    let grad_t = values(&x.grad().unwrap().t().unwrap());
    assert_close(&grad_t, &expected_grad_t, 1e-15, "dropout gradient");
    assert!(mask.contains(&0.0) && mask.iter().any(|&m| m != 0.0));
}

// ---- l2_normalize / cosine_similarity -----------------------------------------------------

#[test]
fn l2_normalize_values() {
    let x = f64s(&[3., 4., 0., 0., 1e-3, 0.], &[3, 2]);
    let y = values(&x.l2_normalize(-1, 1e-2).unwrap());
    // [3, 4] -> unit; zero row stays zero; a row shorter than eps is divided by eps.
    assert_close(&y, &[0.6, 0.8, 0., 0., 0.1, 0.], 1e-15, "l2_normalize rows");
    let cols = values(
        &f64s(&[3., 1., 4., 0.], &[2, 2])
            .l2_normalize(0, 1e-12)
            .unwrap(),
    );
    assert_close(&cols, &[0.6, 1.0, 0.8, 0.0], 1e-15, "l2_normalize cols");
    // No overflow or underflow of the squares in f32.
    for scale in [1e25f32, 1e-30] {
        let v = Tensor::from_slice(&[3.0 * scale, 4.0 * scale], 2, Device::Cpu).unwrap();
        let n = v.l2_normalize(0, 1e-45).unwrap().to_vec::<f32>().unwrap();
        assert!(
            (n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6,
            "{scale}: {n:?}"
        );
    }
}

#[test]
fn l2_normalize_gradients() {
    let x = randn(&[4, 5], 13);
    check(|x| x[0].l2_normalize(-1, 1e-12), std::slice::from_ref(&x));
    check(|x| x[0].l2_normalize(0, 1e-12), std::slice::from_ref(&x));
    check(
        |x| x[0].t()?.l2_normalize(1, 1e-12),
        std::slice::from_ref(&x),
    );
    // Rows shorter than eps (divided by eps, a linear map).
    check(|x| x[0].mul_scalar(1e-3)?.l2_normalize(1, 1.0), &[x]);
}

#[test]
fn l2_normalize_zero_row_has_finite_gradient() {
    let x = f64s(&[0., 0., 0., 1., 2., 3.], &[2, 3])
        .requires_grad_()
        .unwrap();
    let w = randn(&[2, 3], 14);
    x.l2_normalize(1, 1e-6)
        .unwrap()
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = values(&x.grad().unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    // The zero row is divided by eps: its gradient is w / eps.
    assert_close(
        &g[..3],
        &values(&w.narrow(0, 0, 1).unwrap().div_scalar(1e-6).unwrap()),
        1e-12,
        "zero-row gradient",
    );
}

#[test]
fn cosine_similarity_values() {
    let pairs = [
        (f64s(&[1., 0.], &[2]), f64s(&[0., 1.], &[2]), 0.0),
        (f64s(&[1., 2., 3.], &[3]), f64s(&[2., 4., 6.], &[3]), 1.0),
        (f64s(&[1., 0.], &[2]), f64s(&[-3., 0.], &[2]), -1.0),
        (f64s(&[1., 1.], &[2]), f64s(&[1., 0.], &[2]), 0.5f64.sqrt()),
    ];
    for (x, y, c) in pairs {
        let got = x.cosine_similarity(&y, 0, 1e-8).unwrap().item().unwrap();
        assert!((got - c).abs() < 1e-15, "{got} vs {c}");
    }
    // Broadcasting [3, 1, 4] with [5, 4] along the last dim gives [3, 5], each entry
    // dot / (|a| |b|).
    let x = randn(&[3, 1, 4], 15);
    let y = randn(&[5, 4], 16);
    let c = x.cosine_similarity(&y, -1, 1e-8).unwrap();
    assert_eq!(c.dims(), &[3, 5]);
    let (xv, yv, cv) = (values(&x), values(&y), values(&c));
    for i in 0..3 {
        for j in 0..5 {
            let (a, b) = (&xv[4 * i..4 * i + 4], &yv[4 * j..4 * j + 4]);
            let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let na = a.iter().map(|p| p * p).sum::<f64>().sqrt();
            let nb = b.iter().map(|p| p * p).sum::<f64>().sqrt();
            assert!((cv[5 * i + j] - dot / (na * nb)).abs() < 1e-14);
        }
    }
    // Huge and tiny f32 vectors whose squares would overflow / underflow.
    let big = Tensor::from_slice(&[1e30f32, 1e30], 2, Device::Cpu).unwrap();
    let tiny = Tensor::from_slice(&[1e-30f32, 0.0], 2, Device::Cpu).unwrap();
    let c = big
        .cosine_similarity(&tiny, 0, 1e-45)
        .unwrap()
        .item()
        .unwrap();
    assert!((c - 0.5f64.sqrt()).abs() < 1e-6, "{c}");
}

#[test]
fn cosine_similarity_gradients() {
    let a = randn(&[3, 1, 4], 17);
    let b = randn(&[5, 4], 18);
    check(|x| x[0].cosine_similarity(&x[1], -1, 1e-8), &[a, b]);
    let c = randn(&[4, 6], 19);
    let d = randn(&[6, 4], 20);
    check(|x| x[0].cosine_similarity(&x[1].t()?, 0, 1e-8), &[c, d]);
    // Mismatched shapes are an error.
    assert!(randn(&[3], 21)
        .cosine_similarity(&randn(&[4], 22), 0, 1e-8)
        .is_err());
}
