//! The runtime-dispatched loops (`backend::cpu::simd`) give the same bits whatever instruction
//! set runs them: every op that uses them is run forced to the baseline and again on the
//! widest set this CPU has, on random inputs, forward and backward, and compared exactly.
//! (Its own test binary: forcing the instruction set is process-wide.)

use tessera::backend::cpu::simd::{force_isa, isa, Isa};
use tessera::ops::{scaled_dot_product_attention, AttentionOpts};
use tessera::optim::{Adam, AdamConfig, AdamW, AdamWConfig, Ema, Optimizer, Sgd, SgdConfig};
use tessera::{DType, Device, Result, Tensor};

/// Outputs and input gradients of the ops that run through `vectorized`, for one input draw.
fn run_all(dtype: DType) -> Result<Vec<(String, Vec<f64>)>> {
    let dev = Device::Cpu;
    let x = Tensor::randn_with_seed((37, 67), dtype, dev, 1, 0)?.mul_scalar(2.5)?;
    let y = Tensor::randn_with_seed((37, 67), dtype, dev, 2, 0)?;
    let bias = Tensor::randn_with_seed(67, dtype, dev, 3, 0)?;
    let mut out = Vec::new();
    let mut push = |name: &str, t: &Tensor| -> Result<()> {
        out.push((name.to_string(), t.to_vec_f64()?));
        Ok(())
    };
    // Unary forward and backward (GELU has the f32 erf of fused Horner steps, SiLU and exp the
    // branch-free exp).
    for (name, f) in [
        ("gelu", Tensor::gelu as fn(&Tensor) -> Result<Tensor>),
        ("silu", Tensor::silu),
        ("exp", Tensor::exp),
        ("tanh", Tensor::tanh),
    ] {
        let xg = x.detach();
        xg.set_requires_grad(true)?;
        let z = f(&xg)?;
        z.backward_with(&y)?;
        push(name, &z)?;
        push(&format!("{name} grad"), &xg.grad().expect("grad"))?;
    }
    // Binary, contiguous and broadcast along rows.
    push("add", &x.add(&y)?)?;
    push("mul broadcast", &x.mul(&bias)?)?;
    push("div strided", &x.t()?.div(&y.t()?)?)?;
    // Softmax and log-softmax over the last dim and over a leading one, with gradients.
    for dim in [1usize, 0] {
        let xg = x.detach();
        xg.set_requires_grad(true)?;
        let s = xg.softmax(dim)?;
        s.backward_with(&y)?;
        push(&format!("softmax dim {dim}"), &s)?;
        push(
            &format!("softmax grad dim {dim}"),
            &xg.grad().expect("grad"),
        )?;
        let xg = x.detach();
        xg.set_requires_grad(true)?;
        let s = xg.log_softmax(dim)?;
        s.backward_with(&y)?;
        push(&format!("log_softmax dim {dim}"), &s)?;
        push(
            &format!("log_softmax grad dim {dim}"),
            &xg.grad().expect("grad"),
        )?;
    }
    // Layer norm (67 channels: 8 lanes and a tail of 3) and group norm (the same values as one
    // sample of 37 channels of 67, in one group), with weight and bias gradients.
    for (name, channels) in [("layer_norm", 67usize), ("group_norm", 37)] {
        let xg = if channels == 67 {
            x.detach()
        } else {
            x.reshape((1, 37, 67))?
        };
        let wg = Tensor::randn_with_seed(channels, dtype, dev, 4, 0)?;
        let bg = Tensor::randn_with_seed(channels, dtype, dev, 5, 0)?;
        for t in [&xg, &wg, &bg] {
            t.set_requires_grad(true)?;
        }
        let z = if channels == 67 {
            xg.layer_norm(Some(&wg), Some(&bg), 1e-5)?
        } else {
            xg.group_norm(1, Some(&wg), Some(&bg), 1e-5)?
        };
        z.backward_with(&y.reshape(z.dims().to_vec())?)?;
        push(name, &z)?;
        push(&format!("{name} dx"), &xg.grad().expect("grad"))?;
        push(&format!("{name} dweight"), &wg.grad().expect("grad"))?;
        push(&format!("{name} dbias"), &bg.grad().expect("grad"))?;
    }
    // Reductions: the row loop (lane accumulators) and the column loop (row adds).
    push("sum dim 1", &x.sum(1)?)?;
    push("sum dim 0", &x.sum(0)?)?;
    push("max dim 0", &x.max(0)?)?;
    // Optimizer updates and the weight EMA, three steps each on a 37x67 parameter.
    let fresh = |seed: u64| -> Result<Vec<(String, Tensor)>> {
        let p = Tensor::randn_with_seed((37, 67), dtype, dev, seed, 0)?;
        p.set_requires_grad(true)?;
        Ok(vec![("p".to_string(), p)])
    };
    let adamw_params = fresh(20)?;
    let adam_params = fresh(21)?;
    let sgd_params = fresh(22)?;
    let mut adamw = AdamW::new(
        adamw_params.clone(),
        AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
    )?;
    let mut adam = Adam::new(
        adam_params.clone(),
        AdamConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
    )?;
    let mut sgd = Sgd::new(
        sgd_params.clone(),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
            ..Default::default()
        },
    )?;
    let mut ema = Ema::new(&adamw_params, 0.9)?;
    for step in 0..3u64 {
        for params in [&adamw_params, &adam_params, &sgd_params] {
            let g = Tensor::randn_with_seed((37, 67), dtype, dev, 30 + step, 0)?;
            params[0].1.zero_grad();
            params[0].1.mul(&g)?.sum_all()?.backward()?; // the gradient is g
        }
        adamw.step()?;
        adam.step()?;
        sgd.step()?;
        ema.update(&adamw_params)?;
    }
    push("adamw", &adamw_params[0].1)?;
    push("adam l2", &adam_params[0].1)?;
    push("sgd nesterov", &sgd_params[0].1)?;
    push("ema", &ema.shadow()[0].1)?;
    // Attention: short sequences (single-pass backward) and longer ones (blocked backward),
    // causal and not; head dims that the f32 AVX-512 register tiles cover whole (16, 48 =
    // 32 + 16, 128 = 2 x 64) and with a tail left to the portable loops (72 = 64 + 8, a
    // value dim of 40 = 32 + 8, 20 = 16 + 4).
    for (t, causal, d, dv) in [
        (17usize, false, 16usize, 16usize),
        (17, true, 16, 16),
        (150, false, 16, 16),
        (150, true, 16, 16),
        (70, false, 72, 40),
        (45, true, 48, 20),
        (33, false, 128, 128),
    ] {
        let q = Tensor::randn_with_seed((2, 3, t, d), dtype, dev, 10 + t as u64, 0)?;
        let k = Tensor::randn_with_seed((2, 3, t, d), dtype, dev, 11 + t as u64, 0)?;
        let v = Tensor::randn_with_seed((2, 3, t, dv), dtype, dev, 12 + t as u64, 0)?;
        let g = Tensor::randn_with_seed((2, 3, t, dv), dtype, dev, 13 + t as u64, 0)?;
        for p in [&q, &k, &v] {
            p.set_requires_grad(true)?;
        }
        let opts = AttentionOpts {
            causal,
            ..Default::default()
        };
        let o = scaled_dot_product_attention(&q, &k, &v, &opts)?;
        o.backward_with(&g)?;
        push(&format!("attention T{t} d{d} causal {causal}"), &o)?;
        for (n, p) in [("q", &q), ("k", &k), ("v", &v)] {
            push(
                &format!("attention T{t} d{d} causal {causal} d{n}"),
                &p.grad().expect("grad"),
            )?;
        }
    }
    Ok(out)
}

#[test]
fn every_instruction_set_gives_the_same_bits() {
    let widest = isa();
    println!("widest instruction set here: {widest:?}");
    for dtype in [DType::F32, DType::F64] {
        assert!(force_isa(Isa::Baseline));
        let base = run_all(dtype).unwrap();
        let mut others = vec![Isa::Avx2, Isa::Avx512];
        others.retain(|&i| force_isa(i));
        if others.is_empty() {
            println!("skipped: this CPU has neither AVX2 nor AVX-512, only the baseline runs");
        }
        for other in others {
            assert!(force_isa(other));
            let wide = run_all(dtype).unwrap();
            for ((name, a), (_, b)) in base.iter().zip(&wide) {
                assert_eq!(a.len(), b.len(), "{name}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{dtype:?} {name}[{i}]: baseline {x} vs {other:?} {y}"
                    );
                }
            }
        }
    }
    force_isa(widest);
}
