//! The f32 transcendental unary ops (exp, sigmoid, SiLU, tanh, both GELUs), forward and
//! gradient, against the same ops in f64 on the same inputs: the f32 CPU routines are
//! branch-free approximations of their own (`backend/cpu/float.rs`), the f64 ones call libm.
//!
//! Tolerance, against the f64 result rounded to f32 (so an overflow to inf must match):
//! `|f32 - f64| <= 8 ulp * |f64| + floor`, with `floor`
//! - 1e-35 for the forwards: results under that may be flushed to 0 (`exp_fused`, which
//!   sigmoid and SiLU take, returns +inf from 88.38 on, so `1 / (1 + e^-x)` is 0 from
//!   `x = -88.38`, where the exact value is under 4e-39);
//! - 1e-6 for the gradients (a few operations on rounded intermediates, compared also where
//!   they pass through zero);
//! - plus 1e-7 |x| for both GELUs: `1 + erf(x / sqrt 2)` and `1 + tanh(u)` cancel in f32 for
//!   negative x (the left tail is 0 below about -5.4 and -9), as in PyTorch, so their error
//!   there is absolute.

use tessera::{DType, Device, Result, Tensor};

/// A sweep of [-30, 30], values around 0, and the edges of the exps' ranges.
fn inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (0..=8000)
        .map(|i| -30.0 + 60.0 * i as f32 / 8000.0)
        .collect();
    v.extend([
        0.0, -0.0, 1e-3, -1e-3, 1e-30, -1e-30, 86.9, -86.9, 88.3, -88.3, 88.5, -88.5,
    ]);
    v.extend([100.0, -100.0, 0.625, -0.625, 0.624, -0.624]);
    v
}

fn check(name: &str, op: impl Fn(&Tensor) -> Result<Tensor>, gelu: bool) {
    let xs = inputs();
    let n = xs.len();
    let x32 = Tensor::from_vec(xs.clone(), vec![n], Device::Cpu).unwrap();
    let x64 = x32.to_dtype(DType::F64).unwrap();
    let g64 = Tensor::randn_with_seed(vec![n], DType::F64, Device::Cpu, 7, 0).unwrap();
    let g32 = g64.to_dtype(DType::F32).unwrap();
    let g64 = g32.to_dtype(DType::F64).unwrap();
    let run = |x: &Tensor, g: &Tensor| {
        let x = x.detach().requires_grad_().unwrap();
        let y = op(&x).unwrap();
        let grads = y.backward_with(g).unwrap();
        let dx = grads.get(&x).unwrap().to_vec_f64().unwrap();
        (y.to_vec_f64().unwrap(), dx)
    };
    let (y32, d32) = run(&x32, &g32);
    let (y64, d64) = run(&x64, &g64);
    let eps = f32::EPSILON as f64;
    for i in 0..n {
        let x = xs[i] as f64;
        let floor = if gelu { 1e-7 * x.abs() } else { 0.0 };
        let (a, b) = (y32[i], y64[i] as f32 as f64);
        assert!(
            a == b || (a - b).abs() <= 8.0 * eps * b.abs() + 1e-35 + floor,
            "{name}({x}): f32 {a} vs f64 {b}"
        );
        let (a, b) = (d32[i], d64[i] as f32 as f64);
        assert!(
            a == b || (a - b).abs() <= 8.0 * eps * b.abs() + 1e-6 + floor,
            "{name}'({x}) * g: f32 {a} vs f64 {b}"
        );
    }
}

#[test]
fn exp_f32_matches_f64() {
    check("exp", |x| x.exp(), false);
}

#[test]
fn sigmoid_f32_matches_f64() {
    check("sigmoid", |x| x.sigmoid(), false);
}

#[test]
fn silu_f32_matches_f64() {
    check("silu", |x| x.silu(), false);
}

#[test]
fn tanh_f32_matches_f64() {
    check("tanh", |x| x.tanh(), false);
}

#[test]
fn gelu_f32_matches_f64() {
    check("gelu", |x| x.gelu(), true);
}

#[test]
fn gelu_tanh_f32_matches_f64() {
    check("gelu_tanh", |x| x.gelu_tanh(), true);
}
