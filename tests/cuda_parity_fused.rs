//! GPU parity of the heavy ops (matmul, softmax / log_softmax, layer/group/batch norm,
//! cross-entropy, attention, conv2d, pooling): each graph runs once on the CPU backend (the
//! reference) and once on the GPU from the same inputs, and the outputs and every input
//! gradient (through autograd, from the same random weighting of the output) must agree.
//!
//! Inputs are fresh random values (never zeros) at odd sizes that are not multiples of any
//! kernel tile (GEMM 64/128, attention 16x32, norm/softmax warps of 32), through transposed,
//! permuted and broadcast views, with every mask kind. Sizes are also chosen so that each
//! launch variant runs: warp- and block-per-row softmax and cross-entropy, the column softmax,
//! both f32 GEMM tiles and split-K, every attention head-dim instantiation (32, 64, 128, 256),
//! the split-K convolution weight gradient.
//!
//! Tolerances, relative (|gpu - cpu| <= tol·(1 + |cpu|)): f32 2e-4 (sums of up to a few
//! thousand products in a different order, and the f32 exp/log of two libraries), f64 1e-10.
//!
//! Without a CUDA device every test prints `skipped: no CUDA device` and passes; with
//! `TESSERA_REQUIRE_GPU=1` a missing GPU fails them.

use std::sync::{Mutex, MutexGuard};
use tessera::backend::cuda::test_device;
use tessera::ops::{
    cross_entropy, scaled_dot_product_attention, scaled_dot_product_attention_packed,
    AttentionOpts, Conv2dParams, CrossEntropyOpts,
};
use tessera::{DType, Device, Result, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// The GPU, and a lock held for the whole test so GPU tests run one at a time (failures and
/// memory use then belong to one test).
fn gpu() -> Option<(Device, MutexGuard<'static, ()>)> {
    static GPU_LOCK: Mutex<()> = Mutex::new(());
    let dev = test_device()?;
    Some((dev, GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner())))
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-4,
        _ => 1e-10,
    }
}

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), dtype, Device::Cpu, seed, 0).unwrap()
}

fn u8_tensor(data: Vec<u8>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape.to_vec(), Device::Cpu).unwrap()
}

fn assert_close(gpu: &Tensor, cpu: &Tensor, tol: f64, what: &str) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shapes differ");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtypes differ");
    let (g, c) = (gpu.to_vec_f64().unwrap(), cpu.to_vec_f64().unwrap());
    let mut worst = (0.0f64, 0usize);
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let same_special = (a.is_nan() && b.is_nan()) || (a.is_infinite() && a == b);
        let err = if same_special {
            0.0
        } else {
            (a - b).abs() / (1.0 + b.abs())
        };
        // A NaN error (a NaN on one side only) counts as the worst.
        if (err.is_nan() && !worst.0.is_nan()) || err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: element {} differs: gpu {} vs cpu {} (relative error {:e}, tolerance {tol:e})",
        worst.1,
        g[worst.1],
        c[worst.1],
        worst.0
    );
}

/// A fresh leaf on `device` holding `t`'s values; float tensors require grad.
fn leaf(t: &Tensor, device: Device) -> Tensor {
    let x = t.detach().contiguous_copy().unwrap().to(device).unwrap();
    if t.dtype().is_float() {
        x.requires_grad_().unwrap()
    } else {
        x
    }
}

/// Runs `f` on CPU and GPU leaves made from `inputs`, back-propagates the same random weighting
/// of the output through both, and compares the output and each float input's gradient.
fn parity(
    gpu: Device,
    inputs: &[Tensor],
    tol: f64,
    what: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let cpu_in: Vec<Tensor> = inputs.iter().map(|t| leaf(t, Device::Cpu)).collect();
    let gpu_in: Vec<Tensor> = inputs.iter().map(|t| leaf(t, gpu)).collect();
    let y_cpu = f(&cpu_in).unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
    let y_gpu = f(&gpu_in).unwrap_or_else(|e| panic!("{what} on the GPU: {e}"));
    assert_eq!(y_gpu.device(), gpu, "{what}: the output left the GPU");
    assert_close(&y_gpu, &y_cpu, tol, &format!("{what}: forward"));
    let w =
        Tensor::randn_with_seed(y_cpu.shape().clone(), y_cpu.dtype(), Device::Cpu, 777, 0).unwrap();
    y_cpu
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    y_gpu
        .mul(&w.to(gpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_or_else(|e| panic!("{what} backward on the GPU: {e}"));
    for (i, (c, g)) in cpu_in.iter().zip(&gpu_in).enumerate() {
        if !c.dtype().is_float() {
            continue;
        }
        let (gc, gg) = (c.grad(), g.grad());
        match (gc, gg) {
            (Some(gc), Some(gg)) => {
                assert_close(&gg, &gc, tol, &format!("{what}: gradient of input {i}"))
            }
            (None, None) => {}
            (c, _) => panic!(
                "{what}: input {i} has a gradient on {} only",
                if c.is_some() { "the CPU" } else { "the GPU" }
            ),
        }
    }
}

// ---- matmul ----------------------------------------------------------------------------

#[test]
fn matmul_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        // Odd sizes, batched; 64 and 128 tiles both partial.
        let (a, b) = (randn(&[3, 67, 45], dt, 1), randn(&[3, 45, 131], dt, 2));
        parity(gpu, &[a, b], t, "matmul batched", |x| x[0].matmul(&x[1]));
        // Transposed operands (read through their strides) and a broadcast rhs.
        let (a, b) = (randn(&[2, 45, 70], dt, 3), randn(&[33, 45], dt, 4));
        parity(gpu, &[a, b], t, "matmul transposed", |x| {
            x[0].transpose(1, 2)?.matmul(&x[1].t()?)
        });
        // Large enough for the 128 x 128 f32 tile to fill the GPU.
        let (a, b) = (randn(&[4, 300, 97], dt, 5), randn(&[97, 290], dt, 6));
        parity(gpu, &[a, b], t, "matmul large", |x| x[0].matmul(&x[1]));
        // Few output tiles and a long reduction: split-K.
        let (a, b) = (randn(&[9, 3000], dt, 7), randn(&[3000, 11], dt, 8));
        parity(gpu, &[a, b], t, "matmul split-K", |x| x[0].matmul(&x[1]));
        // Degenerate: a single element.
        let (a, b) = (randn(&[1, 1], dt, 9), randn(&[1, 1], dt, 10));
        parity(gpu, &[a, b], t, "matmul 1x1", |x| x[0].matmul(&x[1]));
        // linear: x @ W^T + b, the bias added after the GEMM on the GPU.
        let (x, w, bias) = (
            randn(&[2, 37, 45], dt, 11),
            randn(&[29, 45], dt, 12),
            randn(&[29], dt, 13),
        );
        parity(gpu, &[x, w, bias], t, "linear", |x| {
            x[0].linear(&x[1], Some(&x[2]))
        });
    }
}

// ---- softmax ---------------------------------------------------------------------------

#[test]
fn softmax_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        for (shape, dim, what) in [
            (vec![7, 37], 1, "short rows (warp per row)"),
            (vec![3, 1500], 1, "long rows (block per row)"),
            (vec![3, 17, 5], 1, "a middle dim (column kernel)"),
            (vec![4, 2, 9], 0, "the first dim"),
        ] {
            let x = randn(&shape, dt, 11).mul_scalar(3.0).unwrap();
            parity(
                gpu,
                std::slice::from_ref(&x),
                t,
                &format!("softmax {what}"),
                |x| x[0].softmax(dim),
            );
            parity(gpu, &[x], t, &format!("log_softmax {what}"), |x| {
                x[0].log_softmax(dim)
            });
        }
        // A strided (transposed) input.
        let x = randn(&[37, 6], dt, 12);
        parity(gpu, &[x], t, "softmax of a transposed view", |x| {
            x[0].t()?.softmax(1)
        });
    }
}

// ---- normalization -----------------------------------------------------------------------

#[test]
fn layer_and_group_norm_match_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        let eps = 1e-5;
        let (x, w, b) = (
            randn(&[5, 7, 33], dt, 20).add_scalar(2.0).unwrap(),
            randn(&[33], dt, 21),
            randn(&[33], dt, 22),
        );
        parity(gpu, &[x.clone(), w.clone(), b], t, "layer_norm", |x| {
            x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps)
        });
        parity(
            gpu,
            std::slice::from_ref(&x),
            t,
            "layer_norm without affine",
            |x| x[0].layer_norm(None, None, eps),
        );
        let xt = randn(&[33, 9], dt, 23);
        parity(gpu, &[xt, w], t, "layer_norm of a transposed view", |x| {
            x[0].t()?.layer_norm(Some(&x[1]), None, eps)
        });
        let (x, w, b) = (
            randn(&[3, 6, 5, 7], dt, 24),
            randn(&[6], dt, 25),
            randn(&[6], dt, 26),
        );
        for groups in [1, 2, 3, 6] {
            parity(
                gpu,
                &[x.clone(), w.clone(), b.clone()],
                t,
                &format!("group_norm, {groups} groups"),
                |x| x[0].group_norm(groups, Some(&x[1]), Some(&x[2]), eps),
            );
        }
        // Wide rows: more elements per statistic row than one block of threads.
        let xl = randn(&[2, 4, 40, 41], dt, 27);
        parity(gpu, &[xl], t, "group_norm wide rows", |x| {
            x[0].group_norm(2, None, None, eps)
        });
    }
}

#[test]
fn batch_norm_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        let eps = 1e-5;
        for shape in [vec![6, 5, 7, 3], vec![37, 9]] {
            let c = shape[1];
            let (x, w, b) = (
                randn(&shape, dt, 30).mul_scalar(2.0).unwrap(),
                randn(&[c], dt, 31),
                randn(&[c], dt, 32),
            );
            // Training: batch statistics, and the running-stat update on both devices.
            let rm0 = randn(&[c], dt, 33);
            let rv0 = randn(&[c], dt, 34).abs().unwrap().add_scalar(0.5).unwrap();
            let (rm_c, rv_c) = (
                rm0.contiguous_copy().unwrap(),
                rv0.contiguous_copy().unwrap(),
            );
            let (rm_g, rv_g) = (rm0.to(gpu).unwrap(), rv0.to(gpu).unwrap());
            let what = format!("batch_norm train {shape:?}");
            parity(gpu, &[x.clone(), w.clone(), b.clone()], t, &what, |x| {
                let (rm, rv) = if x[0].device() == Device::Cpu {
                    (&rm_c, &rv_c)
                } else {
                    (&rm_g, &rv_g)
                };
                x[0].batch_norm(Some(rm), Some(rv), Some(&x[1]), Some(&x[2]), true, 0.1, eps)
            });
            assert_close(&rm_g, &rm_c, t, &format!("{what}: running mean"));
            assert_close(&rv_g, &rv_c, t, &format!("{what}: running var"));
            // Eval: the running statistics are constants.
            let (rm, rv) = (rm0, rv0);
            let what = format!("batch_norm eval {shape:?}");
            parity(gpu, &[x.clone(), w, b, rm, rv], t, &what, |x| {
                x[0].batch_norm(
                    Some(&x[3].detach()),
                    Some(&x[4].detach()),
                    Some(&x[1]),
                    Some(&x[2]),
                    false,
                    0.1,
                    eps,
                )
            });
            // No affine parameters, no running statistics.
            parity(gpu, &[x], t, &format!("batch_norm plain {shape:?}"), |x| {
                x[0].batch_norm(None, None, None, None, true, 0.1, eps)
            });
        }
    }
}

// ---- cross-entropy -----------------------------------------------------------------------

#[test]
fn cross_entropy_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        for (n, c) in [(19, 37), (6, 1500)] {
            let x = randn(&[n, c], dt, 40).mul_scalar(4.0).unwrap();
            // Valid targets, then the same with rows 1 and n-1 set to the ignore index.
            let valid: Vec<i64> = (0..n).map(|i| ((i * 7 + 3) % c) as i64).collect();
            let mut ignored = valid.clone();
            ignored[1] = -100;
            ignored[n - 1] = -100;
            let valid = Tensor::from_vec(valid, vec![n], Device::Cpu).unwrap();
            let ignored = Tensor::from_vec(ignored, vec![n], Device::Cpu).unwrap();
            for (targets, ignore_index, label_smoothing) in [
                (&valid, None, 0.0),
                (&valid, None, 0.1),
                (&ignored, Some(-100), 0.0),
                (&ignored, Some(-100), 0.15),
            ] {
                let opts = CrossEntropyOpts {
                    ignore_index,
                    label_smoothing,
                };
                let what = format!(
                    "cross_entropy {n}x{c} ignore {ignore_index:?} smoothing {label_smoothing}"
                );
                parity(gpu, &[x.clone(), targets.clone()], t, &what, |x| {
                    cross_entropy(&x[0], &x[1], opts)
                });
            }
            // A strided (transposed) logits view.
            let xt = randn(&[c, n], dt, 41);
            let tv =
                Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), vec![n], Device::Cpu).unwrap();
            parity(
                gpu,
                &[xt, tv],
                t,
                &format!("cross_entropy {n}x{c} transposed"),
                |x| cross_entropy(&x[0].t()?, &x[1], CrossEntropyOpts::default()),
            );
        }
    }
}

#[test]
fn cross_entropy_bad_target_is_an_error_on_gpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    let x = randn(&[4, 5], DType::F32, 42).to(gpu).unwrap();
    let t = Tensor::from_vec(vec![0i64, 7, 1, 2], vec![4], gpu).unwrap();
    assert!(cross_entropy(&x, &t, CrossEntropyOpts::default()).is_err());
}

// ---- attention ---------------------------------------------------------------------------

/// q `[B, H, Tq, D]` read through a permuted `[B, Tq, H, D]` buffer, k contiguous, v transposed
/// in its last two dims, with the given masks.
#[allow(clippy::too_many_arguments)]
fn attention_case(
    gpu: Device,
    dt: DType,
    (b, h, tq, tk, d, dv): (usize, usize, usize, usize, usize, usize),
    causal: bool,
    attn_mask: bool,
    key_padding: bool,
    seed: u64,
) {
    let q = randn(&[b, tq, h, d], dt, seed);
    let k = randn(&[b, h, tk, d], dt, seed + 1);
    let v = randn(&[b, h, dv, tk], dt, seed + 2);
    let mut inputs = vec![q, k, v];
    // attn_mask `[Tq, Tk]` (1 = attend), with one query row fully hidden; key padding
    // `[B, Tk]` (1 = padding), never hiding every key of a batch.
    let am: Vec<u8> = (0..tq * tk)
        .map(|i| (i / tk != 2 && (i * 7) % 5 != 0) as u8)
        .collect();
    let kp: Vec<u8> = (0..b * tk).map(|i| ((i * 3) % 4 == 1) as u8).collect();
    inputs.push(u8_tensor(am, &[tq, tk]));
    inputs.push(u8_tensor(kp, &[b, tk]));
    let what = format!(
        "attention {dt:?} B{b} H{h} Tq{tq} Tk{tk} D{d} Dv{dv} causal {causal} attn_mask {attn_mask} key_padding {key_padding}"
    );
    parity(gpu, &inputs, tol(dt), &what, |x| {
        let opts = AttentionOpts {
            causal,
            attn_mask: attn_mask.then(|| x[3].clone()),
            key_padding_mask: key_padding.then(|| x[4].clone()),
            scale: None,
        };
        let q = x[0].permute(&[0, 2, 1, 3])?;
        let v = x[2].transpose(2, 3)?;
        scaled_dot_product_attention(&q, &x[1], &v, &opts)
    });
}

#[test]
fn attention_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        // Every head-dim instantiation (<= 32, 64, 128, 256), Tq != Tk, sizes off the tiles.
        attention_case(gpu, dt, (2, 3, 37, 45, 16, 16), false, false, false, 50);
        attention_case(gpu, dt, (1, 2, 50, 50, 40, 24), true, false, false, 53);
        attention_case(gpu, dt, (2, 2, 19, 70, 80, 72), false, true, true, 56);
        attention_case(gpu, dt, (1, 1, 33, 21, 8, 130), true, true, true, 59);
        attention_case(gpu, dt, (1, 2, 20, 40, 200, 33), false, true, false, 62);
        attention_case(gpu, dt, (2, 1, 17, 17, 64, 64), false, false, true, 65);
        attention_case(gpu, dt, (1, 1, 70, 17, 256, 256), true, true, false, 68);
    }
}

#[test]
fn packed_attention_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        // A fused qkv projection's output [B, T, 3*H*D] viewed as [3, B, H, T, D], causal.
        let (b, t, h, d) = (2, 37, 3, 16);
        let x = randn(&[b, t, 3 * h * d], dt, 80);
        let what = format!("packed attention {dt:?} B{b} T{t} H{h} D{d}");
        parity(gpu, &[x], tol(dt), &what, |x| {
            let qkv = x[0]
                .reshape(vec![b, t, 3, h, d])?
                .permute(&[2, 0, 3, 1, 4])?;
            let opts = AttentionOpts {
                causal: true,
                ..Default::default()
            };
            scaled_dot_product_attention_packed(&qkv, &opts)
        });
    }
}

#[test]
fn attention_head_dim_limit_is_an_error_on_gpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    let q = randn(&[1, 1, 3, 300], DType::F32, 70).to(gpu).unwrap();
    let r = scaled_dot_product_attention(&q, &q, &q, &AttentionOpts::default());
    assert!(
        r.is_err(),
        "head dim 300 should be refused, not mis-computed"
    );
}

// ---- conv2d ------------------------------------------------------------------------------

#[test]
fn conv2d_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        // (N, C_in, H, W, C_out, KH, KW, stride, padding, dilation, groups)
        let cases = [
            (2, 3, 9, 7, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 6, 11, 10, 4, 3, 2, (2, 3), (1, 0), (2, 1), 2),
            (3, 4, 8, 9, 6, 2, 3, (2, 1), (0, 2), (1, 2), 2),
            (1, 70, 5, 5, 66, 1, 1, (1, 1), (0, 0), (1, 1), 1),
            (2, 4, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 4),
            // Many output pixels, few filters: the split-K weight gradient.
            (4, 3, 40, 37, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        ];
        for (i, &(n, ci, h, w, co, kh, kw, stride, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let params = Conv2dParams {
                stride,
                padding,
                dilation,
                groups,
            };
            // The input through a permuted NHWC buffer.
            let x = randn(&[n, h, w, ci], dt, 80 + i as u64);
            let wt = randn(&[co, ci / groups, kh, kw], dt, 90 + i as u64);
            let b = randn(&[co], dt, 100 + i as u64);
            parity(
                gpu,
                &[x, wt, b],
                t,
                &format!("conv2d case {i} {params:?}"),
                |x| {
                    x[0].permute(&[0, 3, 1, 2])?
                        .conv2d(&x[1], Some(&x[2]), params)
                },
            );
        }
    }
}

// ---- pooling -----------------------------------------------------------------------------

#[test]
fn pooling_matches_cpu() {
    let Some((gpu, _lock)) = gpu() else {
        return;
    };
    for dt in DTYPES {
        let t = tol(dt);
        let x = randn(&[2, 3, 11, 9], dt, 110);
        parity(
            gpu,
            std::slice::from_ref(&x),
            t,
            "max_pool2d overlapping",
            |x| x[0].max_pool2d((3, 3), (2, 2), (1, 1)),
        );
        parity(
            gpu,
            std::slice::from_ref(&x),
            t,
            "max_pool2d of a transposed view",
            |x| x[0].transpose(2, 3)?.max_pool2d((2, 3), (2, 1), (1, 0)),
        );
        parity(gpu, std::slice::from_ref(&x), t, "avg_pool2d padded", |x| {
            x[0].avg_pool2d((3, 2), (2, 2), (1, 1))
        });
        parity(
            gpu,
            std::slice::from_ref(&x),
            t,
            "adaptive_avg_pool2d",
            |x| x[0].adaptive_avg_pool2d((4, 5)),
        );
        parity(
            gpu,
            std::slice::from_ref(&x),
            t,
            "upsample_nearest2d",
            |x| x[0].upsample_nearest2d((23, 20)),
        );
        parity(gpu, &[x], t, "adaptive_avg_pool2d to 1x1", |x| {
            x[0].adaptive_avg_pool2d((1, 1))
        });
    }
}
