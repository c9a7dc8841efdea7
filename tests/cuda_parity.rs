//! The CUDA backend against the CPU backend (the reference), op by op, forward and backward,
//! on fresh random inputs (never zeros), odd shapes, broadcasting and non-contiguous views;
//! plus device round trips, casts, the caching allocator, the random generator and errors.
//!
//! Without a CUDA driver every test prints `skipped: no CUDA device` (once) and passes; with
//! `TESSERA_REQUIRE_GPU=1` a missing GPU fails them instead.
//!
//! Tolerances (|gpu - cpu| <= atol + rtol * |cpu|), per dtype:
//! - f64: rtol 1e-12, atol 1e-12: libm and CUDA's f64 transcendentals differ by an ulp or two,
//!   sums are added in a different order.
//! - f32: rtol 2e-5, atol 1e-6: the CPU's vectorized f32 `exp`/`erf` (src/backend/cpu/float.rs)
//!   and CUDA's differ by a few ulps, FMA contraction on the GPU changes the last bit of
//!   `a*b + c`, and reductions add in a tree instead of in sequence.
//! - casts, copies, index selects and uniform draws: exact (bit-identical).

use std::sync::{Mutex, MutexGuard};
use tessera::backend::cuda;
use tessera::{CmpOp, DType, Device, Error, Tensor};

const CPU: Device = Device::Cpu;

/// The GPU and a lock held for the whole test: GPU tests run one at a time, so the
/// allocator's counters and the global random generator see only the running test.
fn gpu() -> Option<(Device, MutexGuard<'static, ()>)> {
    static GPU_LOCK: Mutex<()> = Mutex::new(());
    let dev = cuda::test_device()?;
    Some((dev, GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner())))
}

fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        _ => (2e-5, 1e-6),
    }
}

/// Random normal values shifted away from zero, on the CPU.
fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, CPU, seed, 0)
        .unwrap()
        .affine(1.0, 0.1)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Strictly positive random values (for log, sqrt, rsqrt, powf, recip).
fn positive(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    randn(shape, DType::F64, seed)
        .abs()
        .unwrap()
        .affine(1.0, 0.25)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn assert_close(what: &str, cpu: &Tensor, gpu: &Tensor) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shape");
    assert_eq!(cpu.dtype(), gpu.dtype(), "{what}: dtype");
    assert!(gpu.device().is_cuda(), "{what}: result left the GPU");
    let (rtol, atol) = tol(cpu.dtype());
    let (c, g) = (cpu.to_vec_f64().unwrap(), gpu.to_vec_f64().unwrap());
    for (i, (a, b)) in c.iter().zip(&g).enumerate() {
        let ok = (a - b).abs() <= atol + rtol * a.abs() || (a.is_nan() && b.is_nan());
        assert!(ok, "{what}: element {i}: cpu {a}, gpu {b}");
    }
}

fn assert_exact(what: &str, cpu: &Tensor, gpu: &Tensor) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shape");
    assert_eq!(cpu.dtype(), gpu.dtype(), "{what}: dtype");
    let (c, g) = (cpu.to_cpu_storage().unwrap(), gpu.to_cpu_storage().unwrap());
    assert_eq!(c.as_bytes(), g.as_bytes(), "{what}: not bit-identical");
}

/// `f` on the CPU and on the GPU copy of `inputs`, forward and (for float outputs) backward
/// through autograd with a random output gradient; compares outputs and every input's grad.
fn check_op(what: &str, dev: Device, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let cpu_in: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            let t = t.detach();
            if t.dtype().is_compute_float() {
                t.requires_grad_().unwrap()
            } else {
                t
            }
        })
        .collect();
    let gpu_in: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            let g = t.detach().to_device(&dev).unwrap();
            if g.dtype().is_compute_float() {
                g.requires_grad_().unwrap()
            } else {
                g
            }
        })
        .collect();
    let (yc, yg) = (f(&cpu_in), f(&gpu_in));
    assert_close(&format!("{what} forward"), &yc, &yg);
    if !yc.dtype().is_compute_float() || !yc.requires_grad() {
        return;
    }
    let dy = randn(yc.dims(), yc.dtype(), 777);
    yc.backward_with(&dy).unwrap();
    yg.backward_with(&dy.to_device(&dev).unwrap()).unwrap();
    for (i, (c, g)) in cpu_in.iter().zip(&gpu_in).enumerate() {
        if let (Some(gc), Some(gg)) = (c.grad(), g.grad()) {
            assert_close(&format!("{what} grad of input {i}"), &gc, &gg);
        }
    }
}

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

#[test]
fn unary_ops_forward_and_backward() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    type Op = fn(&Tensor) -> tessera::Result<Tensor>;
    let ops: [(&str, Op, bool); 17] = [
        ("neg", Tensor::neg, false),
        ("exp", Tensor::exp, false),
        ("log", Tensor::log, true),
        ("sqrt", Tensor::sqrt, true),
        ("rsqrt", Tensor::rsqrt, true),
        ("abs", Tensor::abs, false),
        ("relu", Tensor::relu, false),
        ("gelu", Tensor::gelu, false),
        ("gelu_tanh", Tensor::gelu_tanh, false),
        ("silu", Tensor::silu, false),
        ("sigmoid", Tensor::sigmoid, false),
        ("tanh", Tensor::tanh, false),
        ("sqr", Tensor::sqr, false),
        ("recip", Tensor::recip, true),
        ("powf", |t| t.powf(1.7), true),
        ("clamp", |t| t.clamp(-0.5, 0.8), false),
        ("affine", |t| t.affine(-1.5, 0.25), false),
    ];
    for dtype in FLOATS {
        for (name, op, needs_positive) in ops {
            // Contiguous (the vectorized kernel, odd length for the tail) and transposed.
            let x = if needs_positive {
                positive(&[13, 7], dtype, 1)
            } else {
                randn(&[13, 7], dtype, 1)
            };
            check_op(
                &format!("{name} {dtype:?}"),
                dev,
                std::slice::from_ref(&x),
                |t| op(&t[0]).unwrap(),
            );
            check_op(&format!("{name} {dtype:?} transposed"), dev, &[x], |t| {
                op(&t[0].t().unwrap()).unwrap()
            });
        }
    }
}

#[test]
fn binary_ops_with_broadcasting_and_views() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    type Op = fn(&Tensor, &Tensor) -> tessera::Result<Tensor>;
    let ops: [(&str, Op); 6] = [
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
        ("maximum", Tensor::maximum),
        ("minimum", Tensor::minimum),
    ];
    for dtype in FLOATS {
        for (name, op) in ops {
            let (a, b) = (randn(&[3, 1, 5], dtype, 2), positive(&[4, 1], dtype, 3));
            check_op(&format!("{name} {dtype:?} broadcast"), dev, &[a, b], |t| {
                op(&t[0], &t[1]).unwrap()
            });
            let (a, b) = (randn(&[6, 9], dtype, 4), positive(&[9, 6], dtype, 5));
            check_op(
                &format!("{name} {dtype:?} same shape"),
                dev,
                &[a.clone(), a.clone()],
                |t| op(&t[0], &t[1]).unwrap(),
            );
            check_op(&format!("{name} {dtype:?} strided"), dev, &[a, b], |t| {
                let l = t[0].narrow(1, 1, 7).unwrap();
                let r = t[1].t().unwrap().narrow(1, 2, 7).unwrap();
                op(&l, &r).unwrap()
            });
        }
    }
}

#[test]
fn compare_and_where() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    for dtype in [DType::F32, DType::F64, DType::I64, DType::U32, DType::U8] {
        // Small integers so equality happens often.
        let a = randn(&[5, 7], DType::F64, 6)
            .affine(3.0, 4.0)
            .unwrap()
            .abs()
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let b = randn(&[7], DType::F64, 7)
            .affine(3.0, 4.0)
            .unwrap()
            .abs()
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        for op in [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ] {
            let c = a.cmp(&b, op).unwrap();
            let g = a.to(dev).unwrap().cmp(&b.to(dev).unwrap(), op).unwrap();
            assert_exact(&format!("cmp {op:?} {dtype:?}"), &c, &g);
        }
        let cond = a.lt_t(&b).unwrap();
        let w = cond.where_cond(&a, &b).unwrap();
        let wg = cond
            .to(dev)
            .unwrap()
            .where_cond(&a.to(dev).unwrap(), &b.to(dev).unwrap())
            .unwrap();
        assert_exact(&format!("where {dtype:?}"), &w, &wg);
    }
    // where's gradient flows to both branches.
    for dtype in FLOATS {
        let (a, b) = (randn(&[4, 6], dtype, 8), randn(&[4, 6], dtype, 9));
        check_op(&format!("where backward {dtype:?}"), dev, &[a, b], |t| {
            t[0].gt_t(&t[1]).unwrap().where_cond(&t[0], &t[1]).unwrap()
        });
    }
}

#[test]
fn reductions_over_dims() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    for dtype in FLOATS {
        let x = randn(&[5, 6, 7], dtype, 10);
        for dims in [vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
            check_op(
                &format!("sum {dims:?} {dtype:?}"),
                dev,
                std::slice::from_ref(&x),
                |t| t[0].sum_dims(&dims, false).unwrap(),
            );
            check_op(
                &format!("max {dims:?} {dtype:?}"),
                dev,
                std::slice::from_ref(&x),
                |t| t[0].max_dims(&dims, true).unwrap(),
            );
        }
        check_op(
            &format!("min {dtype:?} transposed"),
            dev,
            std::slice::from_ref(&x),
            |t| t[0].transpose(0, 2).unwrap().min(1).unwrap(),
        );
        check_op(
            &format!("mean {dtype:?}"),
            dev,
            std::slice::from_ref(&x),
            |t| t[0].mean(1).unwrap(),
        );
        for d in 0..3 {
            assert_exact(
                &format!("argmax {d} {dtype:?}"),
                &x.argmax(d).unwrap(),
                &x.to(dev).unwrap().argmax(d).unwrap(),
            );
            assert_exact(
                &format!("argmin {d} {dtype:?}"),
                &x.argmin(d).unwrap(),
                &x.to(dev).unwrap().argmin(d).unwrap(),
            );
        }
        // A long reduction takes the block-per-output kernel.
        let long = randn(&[3, 10_000], dtype, 11);
        check_op(
            &format!("sum long {dtype:?}"),
            dev,
            std::slice::from_ref(&long),
            |t| t[0].sum(1).unwrap(),
        );
        assert_exact(
            &format!("argmax long {dtype:?}"),
            &long.argmax(1).unwrap(),
            &long.to(dev).unwrap().argmax(1).unwrap(),
        );
    }
}

#[test]
fn index_ops_forward_and_backward() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    let ids = Tensor::from_vec(vec![2i64, 0, 4, 2, 1], 5, CPU).unwrap();
    for dtype in FLOATS {
        let x = randn(&[3, 5, 4], dtype, 12);
        check_op(
            &format!("index_select {dtype:?}"),
            dev,
            &[x.clone(), ids.clone()],
            |t| t[0].index_select(&t[1], 1).unwrap(),
        );
        let src = randn(&[3, 5, 4], dtype, 13);
        check_op(
            &format!("index_add {dtype:?}"),
            dev,
            &[x.clone(), ids.clone(), src],
            |t| t[0].index_add(1, &t[1], &t[2]).unwrap(),
        );
        let gids = Tensor::from_vec(vec![1i64, 0, 3, 3, 2, 0], (3, 2, 1), CPU).unwrap();
        check_op(
            &format!("gather {dtype:?}"),
            dev,
            &[x.clone(), gids.clone()],
            |t| t[0].gather(1, &t[1]).unwrap(),
        );
        let ssrc = randn(&[3, 2, 1], dtype, 14);
        check_op(
            &format!("scatter_add {dtype:?}"),
            dev,
            &[x.clone(), gids, ssrc],
            |t| t[0].scatter_add(1, &t[1], &t[2]).unwrap(),
        );
        let table = randn(&[11, 6], dtype, 15);
        let tok = Tensor::from_vec(vec![3u32, 10, 0, 3], (2, 2), CPU).unwrap();
        check_op(&format!("embedding {dtype:?}"), dev, &[table, tok], |t| {
            t[0].embedding(&t[1]).unwrap()
        });
    }
    // Every dtype is selectable, bit for bit.
    let ids2 = Tensor::from_vec(vec![2i64, 0], 2, CPU).unwrap();
    for dtype in [DType::F16, DType::BF16, DType::I64, DType::U32, DType::U8] {
        let x = positive(&[4, 3], DType::F64, 16).to_dtype(dtype).unwrap();
        assert_exact(
            &format!("index_select {dtype:?}"),
            &x.index_select(&ids2, 1).unwrap(),
            &x.to(dev)
                .unwrap()
                .index_select(&ids2.to(dev).unwrap(), 1)
                .unwrap(),
        );
    }
    // An index out of range is the CPU's error, not a device fault.
    let x = randn(&[3, 4], DType::F32, 17).to(dev).unwrap();
    let bad = Tensor::from_vec(vec![0i64, 7, -1], 3, dev).unwrap();
    match x.index_select(&bad, 1) {
        Err(Error::IndexOutOfRange { index, size, .. }) => assert_eq!((index, size), (7, 4)),
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

#[test]
fn device_round_trip_and_casts_are_exact() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    let all = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::U32,
        DType::U8,
    ];
    // Values with fractions, negatives and out-of-range ones, so saturation and truncation count.
    let base = randn(&[7, 9], DType::F64, 18).affine(200.0, 0.0).unwrap();
    for from in all {
        let x = base.to_dtype(from).unwrap();
        let back = x.to(dev).unwrap().to(CPU).unwrap();
        assert_exact(&format!("round trip {from:?}"), &x, &back);
        for to in all {
            // Through a transposed view, so the strided cast kernel runs.
            let c = x.t().unwrap().to_dtype(to).unwrap();
            let g = x.to(dev).unwrap().t().unwrap().to_dtype(to).unwrap();
            assert_exact(&format!("cast {from:?} -> {to:?}"), &c, &g);
        }
    }
    // Strided copies into a view (copy_from writes through the destination's layout).
    let dst = Tensor::zeros((4, 6), DType::F32, dev).unwrap();
    let src = randn(&[6, 2], DType::F32, 19);
    dst.narrow(1, 2, 2)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap()
        .copy_from(&src.narrow(0, 1, 4).unwrap().to(dev).unwrap())
        .unwrap();
    let want = Tensor::zeros((4, 6), DType::F32, CPU).unwrap();
    want.narrow(1, 2, 2)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap()
        .copy_from(&src.narrow(0, 1, 4).unwrap())
        .unwrap();
    assert_exact("copy into a view", &want, &dst);
    // to_device is differentiable: the gradient comes back to the CPU.
    let w = randn(&[3, 3], DType::F64, 20).requires_grad_().unwrap();
    let y = w.to(dev).unwrap().sqr().unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let g = w.grad().unwrap();
    assert_eq!(g.device(), CPU);
    assert_close_cpu(&g, &w.affine(2.0, 0.0).unwrap());
}

fn assert_close_cpu(a: &Tensor, b: &Tensor) {
    for (x, y) in a.to_vec_f64().unwrap().iter().zip(b.to_vec_f64().unwrap()) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
}

#[test]
fn creation_and_random_numbers_match_the_cpu() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let (c, g) = (
            Tensor::rand_with_seed((33, 17), dtype, CPU, 42, 3).unwrap(),
            Tensor::rand_with_seed((33, 17), dtype, dev, 42, 3).unwrap(),
        );
        assert_exact(&format!("rand {dtype:?}"), &c, &g);
        let (c, g) = (
            Tensor::full(-2.75, (5, 3), dtype, CPU).unwrap(),
            Tensor::full(-2.75, (5, 3), dtype, dev).unwrap(),
        );
        assert_exact(&format!("full {dtype:?}"), &c, &g);
    }
    // Normal draws: Box-Muller in f64 on both sides; libm and CUDA may differ by an ulp.
    for dtype in FLOATS {
        let c = Tensor::randn_with_seed(1001, dtype, CPU, 7, 9).unwrap();
        let g = Tensor::randn_with_seed(1001, dtype, dev, 7, 9).unwrap();
        assert_close(&format!("randn {dtype:?}"), &c, &g);
    }
    assert_exact(
        "zeros",
        &Tensor::zeros(37, DType::U8, CPU).unwrap(),
        &Tensor::zeros(37, DType::U8, dev).unwrap(),
    );
    // Dropout draws the same mask on both devices for the same generator state.
    let x = randn(&[9, 11], DType::F32, 21);
    tessera::random::manual_seed(5);
    let c = x.dropout(0.3, true).unwrap();
    tessera::random::manual_seed(5);
    let g = x.to(dev).unwrap().dropout(0.3, true).unwrap();
    assert_close("dropout", &c, &g);
}

#[test]
fn fused_optimizer_steps_match_the_cpu() {
    use tessera::optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    for dtype in FLOATS {
        for kind in 0..3 {
            let init = randn(&[5, 7], dtype, 22);
            let run = |device: Device| -> Tensor {
                // A fresh copy each run: the optimizer updates its parameter in place.
                let p = init
                    .contiguous_copy()
                    .unwrap()
                    .to(device)
                    .unwrap()
                    .requires_grad_()
                    .unwrap();
                let params = vec![("w".to_string(), p.clone())];
                let mut opt: Box<dyn Optimizer> = match kind {
                    0 => Box::new(
                        AdamW::new(
                            params,
                            AdamWConfig {
                                lr: 0.01,
                                weight_decay: 0.1,
                                ..Default::default()
                            },
                        )
                        .unwrap(),
                    ),
                    1 => Box::new(
                        Adam::new(
                            params,
                            AdamConfig {
                                lr: 0.01,
                                weight_decay: 0.05,
                                ..Default::default()
                            },
                        )
                        .unwrap(),
                    ),
                    _ => Box::new(
                        Sgd::new(
                            params,
                            SgdConfig {
                                lr: 0.05,
                                momentum: 0.9,
                                nesterov: true,
                                weight_decay: 0.01,
                                ..Default::default()
                            },
                        )
                        .unwrap(),
                    ),
                };
                for step in 0..4 {
                    opt.zero_grad();
                    let target = randn(&[5, 7], dtype, 100 + step).to(device).unwrap();
                    let loss = p.sub(&target).unwrap().sqr().unwrap().sum_all().unwrap();
                    loss.backward().unwrap();
                    opt.step().unwrap();
                }
                p.detach()
            };
            let (c, g) = (run(CPU), run(dev));
            assert_close(&format!("optimizer {kind} {dtype:?}"), &c, &g);
        }
    }
}

#[test]
fn ema_update_matches_the_cpu() {
    use tessera::optim::{assign, Ema};
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    for dtype in FLOATS {
        let init = randn(&[7, 5], dtype, 31);
        let run = |device: Device| -> Tensor {
            // A transposed view: the kernel reads the parameter through its strides.
            let p = init
                .contiguous_copy()
                .unwrap()
                .to(device)
                .unwrap()
                .t()
                .unwrap();
            let named = vec![("w".to_string(), p.clone())];
            let mut ema = Ema::new(&named, 0.9).unwrap().with_warmup();
            for step in 0..4 {
                let fresh = randn(&[5, 7], dtype, 200 + step).to(device).unwrap();
                assign(&p, &fresh).unwrap();
                ema.update(&named).unwrap();
            }
            ema.get("w").unwrap().contiguous_copy().unwrap()
        };
        let (c, g) = (run(CPU), run(dev));
        assert_close(&format!("ema {dtype:?}"), &c, &g);
    }
}

#[test]
fn allocator_reuses_blocks_and_counts_peak() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    let Device::Cuda(ordinal) = dev else {
        unreachable!()
    };
    let d = cuda::device(ordinal).unwrap();
    let a = Tensor::zeros(1 << 20, DType::F32, dev).unwrap();
    let before = d.memory_stats();
    assert!(before.current_bytes >= 4 << 20);
    drop(a);
    let freed = d.memory_stats();
    assert!(freed.cached_bytes >= 4 << 20, "{freed:?}");
    let b = Tensor::zeros(1 << 20, DType::F32, dev).unwrap();
    let after = d.memory_stats();
    assert!(
        after.reuses > freed.reuses,
        "the freed block is reused: {after:?}"
    );
    assert_eq!(after.driver_allocs, freed.driver_allocs);
    assert!(after.peak_bytes >= after.current_bytes);
    drop(b);
    d.empty_cache().unwrap();
}

#[test]
fn out_of_memory_is_an_error() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    // 2^48 f32 = 1 PiB.
    let err = Tensor::zeros(1usize << 48, DType::F32, dev).unwrap_err();
    assert!(err.to_string().contains("out of memory"), "{err}");
    // The device still works afterwards.
    let x = Tensor::ones(10, DType::F32, dev).unwrap();
    assert_eq!(x.sum_all().unwrap().item().unwrap(), 10.0);
}

#[test]
fn mixing_devices_is_an_error() {
    let Some((dev, _lock)) = gpu() else {
        return;
    };
    let a = Tensor::ones(3, DType::F32, dev).unwrap();
    let b = Tensor::ones(3, DType::F32, CPU).unwrap();
    assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
}

/// Runs everywhere: asking for a GPU without one is an error, never a panic.
#[test]
fn asking_for_a_missing_gpu_is_an_error() {
    match cuda::cuda_available() {
        Ok(()) => assert!(Device::cuda(0).is_ok()),
        Err(why) => {
            assert!(!why.is_empty());
            assert!(Device::cuda(0).is_err());
            assert!(Tensor::zeros(3, DType::F32, Device::Cuda(0)).is_err());
        }
    }
    assert!(Device::cuda(4096).is_err());
}
