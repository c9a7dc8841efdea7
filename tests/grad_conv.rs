//! conv2d, pooling and upsampling: forward against naive loops written here, gradients by
//! f64 finite differences (small shapes) and against naive backward loops (shapes large
//! enough to cross the kernels' tile and channel-block boundaries), and error messages.

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::ops::Conv2dParams;
use tessera::{DType, Device, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0).unwrap()
}
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    check_gradients(f, inputs, GradCheck::default()).unwrap();
}
fn params(s: usize, p: usize, d: usize, g: usize) -> Conv2dParams {
    Conv2dParams {
        stride: (s, s),
        padding: (p, p),
        dilation: (d, d),
        groups: g,
    }
}
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

/// Geometry for the naive loops.
struct G {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    p: Conv2dParams,
    oh: usize,
    ow: usize,
}
impl G {
    fn new(x: &[usize], wt: &[usize], p: Conv2dParams) -> G {
        let o = |i: usize, k: usize, s: usize, pd: usize, d: usize| {
            (i + 2 * pd - d * (k - 1) - 1) / s + 1
        };
        G {
            n: x[0],
            ci: x[1],
            h: x[2],
            w: x[3],
            co: wt[0],
            kh: wt[2],
            kw: wt[3],
            p,
            oh: o(x[2], wt[2], p.stride.0, p.padding.0, p.dilation.0),
            ow: o(x[3], wt[3], p.stride.1, p.padding.1, p.dilation.1),
        }
    }
    /// Calls `f(x_index, w_index, out_index)` for every multiply of the convolution.
    fn taps(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (cig, cog) = (self.ci / self.p.groups, self.co / self.p.groups);
        for n in 0..self.n {
            for co in 0..self.co {
                let g = co / cog;
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let oi = ((n * self.co + co) * self.oh + oy) * self.ow + ox;
                        for c in 0..cig {
                            let ci = g * cig + c;
                            for ky in 0..self.kh {
                                for kx in 0..self.kw {
                                    let iy = (oy * self.p.stride.0 + ky * self.p.dilation.0)
                                        as isize
                                        - self.p.padding.0 as isize;
                                    let ix = (ox * self.p.stride.1 + kx * self.p.dilation.1)
                                        as isize
                                        - self.p.padding.1 as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= self.h as isize
                                        || ix >= self.w as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((n * self.ci + ci) * self.h + iy as usize) * self.w
                                        + ix as usize;
                                    let wi = ((co * cig + c) * self.kh + ky) * self.kw + kx;
                                    f(xi, wi, oi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Direct convolution: out = sum over taps of x * w (+ bias).
fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Vec<f64> {
    let g = G::new(x.dims(), w.dims(), p);
    let (xv, wv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
    let mut out = vec![0.0; g.n * g.co * g.oh * g.ow];
    g.taps(|xi, wi, oi| out[oi] += xv[xi] * wv[wi]);
    if let Some(b) = b {
        let bv = b.to_vec_f64().unwrap();
        for (i, o) in out.iter_mut().enumerate() {
            *o += bv[(i / (g.oh * g.ow)) % g.co];
        }
    }
    out
}

/// Naive gradients of `sum(dy * conv(x, w))`: (dx, dw).
fn naive_conv_grads(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv2dParams) -> (Vec<f64>, Vec<f64>) {
    let g = G::new(x.dims(), w.dims(), p);
    let (xv, wv, gv) = (
        x.to_vec_f64().unwrap(),
        w.to_vec_f64().unwrap(),
        dy.to_vec_f64().unwrap(),
    );
    let (mut dx, mut dw) = (vec![0.0; xv.len()], vec![0.0; wv.len()]);
    g.taps(|xi, wi, oi| {
        dx[xi] += gv[oi] * wv[wi];
        dw[wi] += gv[oi] * xv[xi];
    });
    (dx, dw)
}

/// (input shape, weight shape, params, with bias)
fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams, bool)> {
    vec![
        ([2, 3, 7, 6], [4, 3, 3, 3], params(1, 0, 1, 1), true),
        ([1, 3, 9, 7], [2, 3, 3, 2], params(2, 1, 1, 1), false),
        ([2, 2, 9, 9], [3, 2, 3, 3], params(1, 2, 2, 1), true),
        ([1, 4, 7, 5], [6, 2, 3, 3], params(1, 1, 1, 2), true),
        ([2, 3, 5, 7], [3, 1, 3, 3], params(1, 1, 1, 3), false), // depthwise
        ([1, 4, 8, 7], [4, 2, 2, 3], params(2, 1, 2, 2), true),
        ([1, 1, 1, 1], [1, 1, 1, 1], params(1, 0, 1, 1), true),
    ]
}

#[test]
fn conv2d_forward_matches_naive_loop() {
    for (i, (xs, ws, p, bias)) in conv_cases().into_iter().enumerate() {
        let x = randn(&xs, 100 + i as u64);
        let w = randn(&ws, 200 + i as u64);
        let b = randn(&[ws[0]], 300 + i as u64);
        let b = bias.then_some(&b);
        let want = naive_conv(&x, &w, b, p);
        let got = x.conv2d(&w, b, p).unwrap();
        let g = G::new(&xs, &ws, p);
        assert_eq!(got.dims(), &[xs[0], ws[0], g.oh, g.ow], "case {i}");
        assert_close(
            &got.to_vec_f64().unwrap(),
            &want,
            1e-12,
            &format!("f64 case {i}"),
        );
        // The f32 path of the same kernel.
        let (x32, w32) = (
            x.to_dtype(DType::F32).unwrap(),
            w.to_dtype(DType::F32).unwrap(),
        );
        let b32 = b.map(|b| b.to_dtype(DType::F32).unwrap());
        let got32 = x32.conv2d(&w32, b32.as_ref(), p).unwrap();
        assert_eq!(got32.dtype(), DType::F32);
        assert_close(
            &got32.to_vec_f64().unwrap(),
            &want,
            1e-5,
            &format!("f32 case {i}"),
        );
    }
}

#[test]
fn conv2d_gradients() {
    for (i, (xs, ws, p, bias)) in conv_cases().into_iter().enumerate() {
        let x = randn(&xs, 400 + i as u64);
        let w = randn(&ws, 500 + i as u64);
        let b = randn(&[ws[0]], 600 + i as u64);
        let r = if bias {
            check_gradients(
                |t| t[0].conv2d(&t[1], Some(&t[2]), p),
                &[x, w, b],
                GradCheck::default(),
            )
        } else {
            check_gradients(
                |t| t[0].conv2d(&t[1], None, p),
                &[x, w],
                GradCheck::default(),
            )
        };
        r.unwrap_or_else(|e| panic!("case {i} {xs:?} {ws:?} {p:?}: {e}"));
    }
}

#[test]
fn conv2d_non_contiguous_input() {
    // A [1, 3, 6, 5] view made by permuting [1, 6, 5, 3] (channels-last) data.
    let base = randn(&[1, 6, 5, 3], 700);
    let w = randn(&[2, 3, 3, 3], 701);
    let p = params(1, 1, 1, 1);
    let view = base.permute(&[0, 3, 1, 2]).unwrap();
    assert!(!view.is_contiguous());
    let want = naive_conv(&view.contiguous().unwrap(), &w, None, p);
    assert_close(
        &view.conv2d(&w, None, p).unwrap().to_vec_f64().unwrap(),
        &want,
        1e-12,
        "permuted",
    );
    check(
        |t| {
            t[0].permute(&[0, 3, 1, 2])?
                .conv2d(&t[1].t()?.t()?, None, p)
        },
        &[base, w.clone()],
    );
    // A narrowed (offset, strided) input.
    let wide = randn(&[2, 5, 7, 8], 702);
    check(
        |t| {
            t[0].narrow(1, 1, 3)?
                .narrow(3, 2, 5)?
                .conv2d(&t[1], None, params(2, 1, 1, 1))
        },
        &[wide, w],
    );
}

#[test]
fn conv2d_large_shapes_match_naive_forward_and_backward() {
    // More than one 128-pixel tile, more than one 32-channel output block, several 8-channel
    // input blocks, groups, stride and padding.
    let cases = [
        ([2, 20, 13, 14], [40, 10, 3, 3], params(1, 1, 1, 2)),
        ([1, 9, 17, 15], [35, 9, 5, 3], params(2, 2, 1, 1)),
        ([3, 16, 12, 12], [16, 1, 3, 3], params(1, 2, 2, 16)),
        // Small maps over many images (whole images share a column tile): 2x2 and 1x1 outputs.
        ([37, 12, 3, 3], [70, 6, 3, 3], params(2, 1, 1, 2)),
        ([19, 8, 1, 1], [16, 8, 3, 3], params(1, 1, 1, 1)),
    ];
    for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
        let x = randn(&xs, 800 + i as u64).requires_grad_().unwrap();
        let w = randn(&ws, 900 + i as u64).requires_grad_().unwrap();
        let y = x.conv2d(&w, None, p).unwrap();
        assert_close(
            &y.to_vec_f64().unwrap(),
            &naive_conv(&x, &w, None, p),
            1e-12,
            &format!("forward {i}"),
        );
        let dy = randn(y.dims(), 1000 + i as u64);
        y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let (dx, dw) = naive_conv_grads(&x, &w, &dy, p);
        assert_close(
            &x.grad().unwrap().to_vec_f64().unwrap(),
            &dx,
            1e-12,
            &format!("dx {i}"),
        );
        assert_close(
            &w.grad().unwrap().to_vec_f64().unwrap(),
            &dw,
            1e-12,
            &format!("dw {i}"),
        );
    }
}

#[test]
fn conv2d_errors_name_shapes() {
    let x = randn(&[1, 4, 5, 5], 1);
    let e = x
        .conv2d(&randn(&[3, 2, 3, 3], 2), None, params(1, 0, 1, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d")
            && e.contains("[1, 4, 5, 5]")
            && e.contains("[3, 2, 3, 3]")
            && e.contains("divisible"),
        "{e}"
    );
    let e = x
        .conv2d(&randn(&[3, 3, 3, 3], 2), None, params(1, 0, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[1, 4, 5, 5]") && e.contains("[3, 3, 3, 3]") && e.contains("C_in = 4"),
        "{e}"
    );
    let e = x
        .conv2d(&randn(&[2, 4, 4, 4], 3), None, params(1, 0, 2, 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("7x7") && e.contains("5x5") && e.contains("[2, 4, 4, 4]"),
        "{e}"
    );
    let e = x
        .conv2d(
            &randn(&[2, 4, 3, 3], 4),
            Some(&randn(&[3], 5)),
            params(1, 0, 1, 1),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias") && e.contains("[3]"), "{e}");
    assert!(x
        .conv2d(&randn(&[2, 4, 3, 3], 4), None, params(1, 0, 1, 0))
        .is_err());
    assert!(x
        .conv2d(&randn(&[2, 4, 3], 4), None, params(1, 0, 1, 1))
        .is_err());
    let x32 = x.to_dtype(DType::F32).unwrap();
    assert!(x32
        .conv2d(&randn(&[2, 4, 3, 3], 4), None, params(1, 0, 1, 1))
        .is_err());
}

/// Naive pooling reference: each output is `reduce` over the in-image part of its window.
fn naive_pool(
    x: &Tensor,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    reduce: impl Fn(&[f64]) -> f64,
) -> Vec<f64> {
    let d = x.dims();
    let (h, w) = (d[2], d[3]);
    let (oh, ow) = ((h + 2 * p.0 - k.0) / s.0 + 1, (w + 2 * p.1 - k.1) / s.1 + 1);
    let xv = x.to_vec_f64().unwrap();
    let mut out = vec![];
    for plane in xv.chunks(h * w) {
        for i in 0..oh {
            for j in 0..ow {
                let mut vals = vec![];
                for a in 0..k.0 {
                    for b in 0..k.1 {
                        let (y, xx) = (
                            (i * s.0 + a) as isize - p.0 as isize,
                            (j * s.1 + b) as isize - p.1 as isize,
                        );
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            vals.push(plane[y as usize * w + xx as usize]);
                        }
                    }
                }
                out.push(reduce(&vals));
            }
        }
    }
    out
}

#[test]
fn pooling_forward_matches_naive() {
    let x = randn(&[2, 3, 9, 7], 30);
    for (k, s, p) in [
        ((3, 3), (2, 2), (1, 1)),
        ((2, 3), (1, 2), (0, 1)),
        ((3, 2), (3, 1), (1, 0)),
    ] {
        let kk = (k.0 * k.1) as f64;
        let want_max = naive_pool(&x, k, s, p, |v| {
            v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        });
        let want_avg = naive_pool(&x, k, s, p, |v| v.iter().sum::<f64>() / kk);
        assert_close(
            &x.max_pool2d(k, s, p).unwrap().to_vec_f64().unwrap(),
            &want_max,
            1e-14,
            "max",
        );
        assert_close(
            &x.avg_pool2d(k, s, p).unwrap().to_vec_f64().unwrap(),
            &want_avg,
            1e-14,
            "avg",
        );
    }
    // Hand-computed values: a 1x1x3x4 ramp.
    let r = Tensor::from_vec(
        (0..12).map(|v| v as f64).collect::<Vec<_>>(),
        (1, 1, 3, 4),
        Device::Cpu,
    )
    .unwrap();
    // count_include_pad: corner window (padding 1, kernel 2) holds only x[0,0] = 0... and
    // the window at (1, 1) holds 0, 1, 4, 5 -> 2.5; at (0, 0) holds 0 -> 0/4.
    let a = r.avg_pool2d((2, 2), (1, 1), (1, 1)).unwrap();
    assert_eq!(a.dims(), &[1, 1, 4, 5]);
    let av = a.to_vec::<f64>().unwrap();
    assert_eq!((av[0], av[1], av[6]), (0.0, 0.25, 2.5));
    // Adaptive bins of 3 rows -> 2: [0, 2), [1, 3); 4 cols -> 3: [0, 2), [1, 3), [2, 4).
    let ad = r
        .adaptive_avg_pool2d((2, 3))
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert_eq!(ad, vec![2.5, 3.5, 4.5, 6.5, 7.5, 8.5]);
    // Nearest 3x4 -> 5x3: rows floor(i*3/5) = 0,0,1,1,2; cols floor(j*4/3) = 0,1,2.
    let up = r
        .upsample_nearest2d((5, 3))
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert_eq!(
        up,
        vec![0., 1., 2., 0., 1., 2., 4., 5., 6., 4., 5., 6., 8., 9., 10.]
    );
    let mp = r
        .max_pool2d((2, 2), (2, 2), (1, 1))
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert_eq!(mp, vec![0., 2., 3., 8., 10., 11.]);
}

#[test]
fn pooling_gradients() {
    let x = randn(&[2, 2, 7, 5], 40);
    check(
        |t| t[0].max_pool2d((3, 3), (2, 2), (1, 1)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].max_pool2d((2, 3), (1, 2), (0, 1)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].avg_pool2d((3, 3), (2, 2), (1, 1)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].avg_pool2d((3, 2), (2, 1), (1, 0)),
        std::slice::from_ref(&x),
    );
    // Non-divisible adaptive bins (7 -> 3, 5 -> 2; overlapping) and upsampling both ways.
    check(
        |t| t[0].adaptive_avg_pool2d((3, 2)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].adaptive_avg_pool2d((4, 7)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].upsample_nearest2d((11, 8)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].upsample_nearest2d((3, 2)),
        std::slice::from_ref(&x),
    );
    // Non-contiguous input.
    check(
        |t| t[0].transpose(2, 3)?.max_pool2d((2, 2), (2, 2), (0, 0)),
        std::slice::from_ref(&x),
    );
    check(
        |t| t[0].transpose(2, 3)?.avg_pool2d((3, 3), (1, 1), (1, 1)),
        &[x],
    );
}

#[test]
fn max_pool_gradient_goes_to_argmax() {
    let x = Tensor::from_vec(vec![1.0f64, 5.0, 2.0, 3.0], (1, 1, 2, 2), Device::Cpu)
        .unwrap()
        .requires_grad_()
        .unwrap();
    x.max_pool2d((2, 2), (1, 1), (0, 0))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        x.grad().unwrap().to_vec::<f64>().unwrap(),
        vec![0.0, 1.0, 0.0, 0.0]
    );
}

#[test]
fn pooling_errors_name_shapes() {
    let x = randn(&[1, 2, 4, 4], 50);
    let e = x
        .max_pool2d((5, 5), (1, 1), (0, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_pool2d") && e.contains("[1, 2, 4, 4]"),
        "{e}"
    );
    let e = x
        .avg_pool2d((2, 2), (1, 1), (2, 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("avg_pool2d") && e.contains("padding"), "{e}");
    assert!(x.max_pool2d((2, 2), (0, 1), (0, 0)).is_err());
    assert!(x.adaptive_avg_pool2d((0, 2)).is_err());
    let e = randn(&[2, 4, 4], 51)
        .upsample_nearest2d((8, 8))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upsample_nearest2d") && e.contains("[2, 4, 4]"),
        "{e}"
    );
}

#[test]
fn absurd_parameters_are_errors_not_panics() {
    let x = randn(&[1, 2, 5, 5], 60);
    let w = randn(&[2, 2, 3, 3], 61);
    assert!(x.conv2d(&w, None, params(1, usize::MAX, 1, 1)).is_err());
    assert!(x.conv2d(&w, None, params(1, 0, usize::MAX, 1)).is_err());
    assert!(x.conv2d(&w, None, params(0, 0, 1, 1)).is_err());
    assert!(x.conv2d(&w, None, params(1, 0, 0, 1)).is_err());
    assert!(x.max_pool2d((3, 3), (1, 1), (usize::MAX, 0)).is_err());
    assert!(x.avg_pool2d((0, 3), (1, 1), (0, 0)).is_err());
    // Stride larger than the input is fine: one output per axis.
    let y = x.conv2d(&w, None, params(usize::MAX, 0, 1, 1)).unwrap();
    assert_eq!(y.dims(), &[1, 2, 1, 1]);
    assert_close(
        &y.to_vec_f64().unwrap(),
        &naive_conv(&x, &w, None, params(7, 0, 1, 1)),
        1e-12,
        "huge stride",
    );
}

#[test]
fn pixel_unshuffle_moves_each_block_into_channels_and_shuffle_undoes_it() {
    let (b, c, h, w, r) = (2, 3, 3, 2, 2);
    let x = randn(&[b, c, h * r, w * r], 41);
    let xv = x.to_vec::<f64>().unwrap();
    let u = x.pixel_unshuffle(r).unwrap();
    assert_eq!(u.dims(), &[b, c * r * r, h, w]);
    let uv = u.to_vec::<f64>().unwrap();
    // out[b, c*r*r + i*r + j, y, x] = in[b, c, y*r + i, x*r + j], written out as loops.
    for bi in 0..b {
        for ci in 0..c {
            for i in 0..r {
                for j in 0..r {
                    for y in 0..h {
                        for xx in 0..w {
                            let o = ((bi * c * r * r + ci * r * r + i * r + j) * h + y) * w + xx;
                            let s = ((bi * c + ci) * h * r + y * r + i) * w * r + xx * r + j;
                            assert_eq!(uv[o], xv[s], "b {bi} c {ci} i {i} j {j} y {y} x {xx}");
                        }
                    }
                }
            }
        }
    }
    assert_eq!(u.pixel_shuffle(r).unwrap().to_vec::<f64>().unwrap(), xv);
    check(|t| t[0].pixel_unshuffle(2), std::slice::from_ref(&x));
    check(|t| t[0].pixel_shuffle(2), std::slice::from_ref(&u));
    // Non-contiguous input, and the errors name the op and the shape.
    check(
        |t| t[0].transpose(2, 3)?.pixel_unshuffle(2),
        std::slice::from_ref(&x),
    );
    let e = randn(&[1, 3, 5, 4], 42)
        .pixel_unshuffle(2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pixel_unshuffle") && e.contains("5, 4"), "{e}");
    let e = randn(&[1, 3, 2, 2], 43)
        .pixel_shuffle(2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pixel_shuffle") && e.contains("3, 2, 2"), "{e}");
}
