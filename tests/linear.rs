//! `Tensor::linear` (`x @ W^T + b`, PyTorch's `F.linear`), whose bias the CPU GEMM adds to
//! each output tile as it stores it: forward and every gradient must have exactly the bits
//! of the decomposed `matmul` then `add`, on shapes that take each of the GEMM's paths
//! (fewer than 4 rows, the unpacked narrow path, packed tiles over several K blocks, a
//! split over threads); an f64 gradient check; shape errors.

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::{DType, Device, Error, Tensor};

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), dtype, Device::Cpu, seed, 0).unwrap()
}
fn leaf(t: &Tensor) -> Tensor {
    t.detach()
        .contiguous_copy()
        .unwrap()
        .requires_grad_()
        .unwrap()
}
fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// `(x dims, out features)`: M < 4; narrow (unpacked) with one K block; packed over three
/// K blocks (K = 600 > 2 x 256); a rank-3 input large enough to split over threads; an
/// output width that is not a multiple of any tile width.
const CASES: &[(&[usize], usize)] = &[
    (&[3, 40], 21),
    (&[50, 64], 48),
    (&[37, 600], 70),
    (&[4, 96, 256], 333),
    (&[1, 1], 1),
];

#[test]
fn fused_bias_gives_the_bits_of_matmul_then_add() {
    for dtype in [DType::F32, DType::F64] {
        for (seed, &(xd, out)) in CASES.iter().enumerate() {
            let seed = 10 * seed as u64;
            for weight_transposed in [false, true] {
                let inn = *xd.last().unwrap();
                // A `[out, in]` weight makes `W^T` a strided view (the packed path reads it); a
                // weight that is itself the transpose of an `[in, out]` tensor makes `W^T`
                // row-major, which the M < 4 and unpacked paths need.
                // The weight's leaf, and the weight as `linear` sees it.
                let weight = || {
                    if weight_transposed {
                        let base = leaf(&randn(&[inn, out], dtype, seed + 1));
                        (base.clone(), base.t().unwrap())
                    } else {
                        let base = leaf(&randn(&[out, inn], dtype, seed + 1));
                        (base.clone(), base)
                    }
                };
                let (x, b) = (randn(xd, dtype, seed), randn(&[out], dtype, seed + 2));
                let ((wa_leaf, wa), (wb_leaf, wb)) = (weight(), weight());
                let (xa, ba, xb, bb) = (leaf(&x), leaf(&b), leaf(&x), leaf(&b));
                let ya = xa.linear(&wa, Some(&ba)).unwrap();
                let yb = xb.matmul(&wb.t().unwrap()).unwrap().add(&bb).unwrap();
                let what =
                    format!("{dtype:?} x {xd:?} -> {out}, W^T row-major: {weight_transposed}");
                assert_eq!(ya.dims(), yb.dims(), "{what}");
                assert_eq!(bits(&ya), bits(&yb), "{what}: forward");
                let g = randn(ya.dims(), dtype, seed + 3);
                ya.backward_with(&g).unwrap();
                yb.backward_with(&g).unwrap();
                for (name, a, b) in [
                    ("x", &xa, &xb),
                    ("weight", &wa_leaf, &wb_leaf),
                    ("bias", &ba, &bb),
                ] {
                    assert_eq!(
                        bits(&a.grad().unwrap()),
                        bits(&b.grad().unwrap()),
                        "{what}: gradient of {name}"
                    );
                }
                // Without a bias, linear is the plain product.
                let w = wa.detach();
                let y0 = x.linear(&w, None).unwrap();
                assert_eq!(
                    bits(&y0),
                    bits(&x.matmul(&w.t().unwrap()).unwrap()),
                    "{what}: no bias"
                );
            }
        }
    }
}

#[test]
fn fused_bias_is_the_same_on_any_thread_count() {
    let (x, w, b) = (
        randn(&[300, 300], DType::F32, 1),
        randn(&[130, 300], DType::F32, 2),
        randn(&[130], DType::F32, 3),
    );
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| bits(&x.linear(&w, Some(&b)).unwrap()))
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn linear_gradients_match_finite_differences() {
    check_gradients(
        |t| t[0].linear(&t[1], Some(&t[2])),
        &[
            randn(&[2, 3, 5], DType::F64, 1),
            randn(&[4, 5], DType::F64, 2),
            randn(&[4], DType::F64, 3),
        ],
        GradCheck::default(),
    )
    .unwrap();
}

#[test]
fn a_strided_bias_is_read_through_its_layout() {
    // Every other element of a longer vector.
    let (x, w) = (
        randn(&[9, 17], DType::F32, 4),
        randn(&[6, 17], DType::F32, 5),
    );
    let long = randn(&[12], DType::F32, 6);
    let b = long
        .reshape(vec![6, 2])
        .unwrap()
        .narrow(1, 1, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let want = x.matmul(&w.t().unwrap()).unwrap().add(&b).unwrap();
    assert_eq!(bits(&x.linear(&w, Some(&b)).unwrap()), bits(&want));
}

#[test]
fn wrong_shapes_are_errors_naming_linear() {
    let x = randn(&[4, 5], DType::F32, 1);
    let w = randn(&[3, 5], DType::F32, 2);
    for bad_bias in [randn(&[4], DType::F32, 3), randn(&[1, 3], DType::F32, 3)] {
        let err = x.linear(&w, Some(&bad_bias)).unwrap_err();
        assert!(matches!(err, Error::Shape { op: "linear", .. }), "{err}");
    }
    let err = x
        .linear(&randn(&[3, 5, 1], DType::F32, 4), None)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { op: "linear", .. }), "{err}");
    let err = x.linear(&randn(&[3, 6], DType::F32, 4), None).unwrap_err();
    assert!(err.to_string().contains("matmul"), "{err}");
    let f64_bias = randn(&[3], DType::F64, 5);
    assert!(x.linear(&w, Some(&f64_bias)).is_err());
}
