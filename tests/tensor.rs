//! Tensor basics: creation, casts between storage dtypes, the counter-based RNG, views that
//! share storage, and clear errors.

use half::{bf16, f16};
use tessera::{DType, Device, Error, Tensor};

#[test]
fn creation_and_readback() {
    let t = Tensor::arange(6, DType::F32, Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]
    );
    assert_eq!(
        Tensor::full(2.5, (2, 2), DType::F64, Device::Cpu)
            .unwrap()
            .to_vec::<f64>()
            .unwrap(),
        vec![2.5; 4]
    );
    assert_eq!(
        Tensor::arange_step(1.0, 2.0, 0.25, DType::F32, Device::Cpu)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0, 1.25, 1.5, 1.75]
    );
    assert!(Tensor::from_vec(vec![1f32, 2.0, 3.0], (2, 2), Device::Cpu).is_err());
    assert!(Tensor::arange_step(0.0, 1.0, -0.1, DType::F32, Device::Cpu).is_err());
    assert!(
        t.to_vec::<f64>().is_err(),
        "reading f32 data as f64 must be a dtype error"
    );
}

#[test]
fn casts_between_storage_dtypes() {
    let x = Tensor::randn_with_seed((3, 5), DType::F32, Device::Cpu, 3, 0).unwrap();
    let v = x.to_vec::<f32>().unwrap();
    let h = x.to_dtype(DType::F16).unwrap();
    let b = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(h.to_vec::<f16>().unwrap()[0], f16::from_f32(v[0]));
    assert_eq!(b.to_vec::<bf16>().unwrap()[0], bf16::from_f32(v[0]));
    for (back, tol) in [
        (h.to_dtype(DType::F32).unwrap(), 1e-3),
        (b.to_dtype(DType::F32).unwrap(), 8e-3),
    ] {
        for (a, o) in back.to_vec::<f32>().unwrap().iter().zip(&v) {
            assert!((a - o).abs() <= tol * o.abs().max(1.0), "{a} vs {o}");
        }
    }
    let ids = Tensor::from_vec(vec![3i64, -1, 7], 3, Device::Cpu).unwrap();
    assert_eq!(
        ids.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(),
        vec![3.0, -1.0, 7.0]
    );
    // Compute runs in f32/f64: an f16 tensor must be cast first, and says so.
    let e = h.exp().unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedDType {
                op: "exp",
                dtype: DType::F16,
                ..
            }
        ),
        "{e}"
    );
    // Gradients flow back through a float cast.
    let w = x.clone().requires_grad_().unwrap();
    w.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = w.grad().unwrap().to_vec::<f32>().unwrap();
    assert!((g[0] - 2.0 * v[0]).abs() < 1e-5);
}

#[test]
fn seeded_random_draws_are_reproducible_and_distinct() {
    let a = Tensor::rand_with_seed(1000, DType::F32, Device::Cpu, 42, 0)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let b = Tensor::rand_with_seed(1000, DType::F32, Device::Cpu, 42, 0)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let c = Tensor::rand_with_seed(1000, DType::F32, Device::Cpu, 42, 1)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
    // f32 and f64 draws of the same (seed, offset) agree.
    let d = Tensor::rand_with_seed(1000, DType::F64, Device::Cpu, 42, 0)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert!(a.iter().zip(&d).all(|(&x, &y)| x as f64 == y));
    // The global generator advances per draw and restarts with the seed.
    tessera::random::manual_seed(9);
    let (r1, r2) = (
        Tensor::randn(8, DType::F32, Device::Cpu).unwrap(),
        Tensor::randn(8, DType::F32, Device::Cpu).unwrap(),
    );
    tessera::random::manual_seed(9);
    let r3 = Tensor::randn(8, DType::F32, Device::Cpu).unwrap();
    assert_ne!(r1.to_vec::<f32>().unwrap(), r2.to_vec::<f32>().unwrap());
    assert_eq!(r1.to_vec::<f32>().unwrap(), r3.to_vec::<f32>().unwrap());
}

#[test]
fn views_share_storage_and_copy_only_when_needed() {
    let x = Tensor::arange(24, DType::F32, Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    let t = x.transpose(0, 2).unwrap();
    assert!(t.same_storage(&x) && !t.is_contiguous());
    assert_eq!(t.dims(), &[4, 3, 2]);
    assert!(x.narrow(1, 1, 2).unwrap().same_storage(&x));
    assert!(x
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((5, 2, 3, 4))
        .unwrap()
        .same_storage(&x));
    // A reshape the strides cannot express copies; one they can express does not.
    assert!(!t.reshape(24).unwrap().same_storage(&x));
    assert!(x.reshape((6, 4)).unwrap().same_storage(&x));
    assert_eq!(
        t.reshape(24).unwrap().to_vec::<f32>().unwrap()[..4],
        [0.0, 12.0, 4.0, 16.0]
    );
    let c = t.contiguous().unwrap();
    assert!(c.is_contiguous() && !c.same_storage(&x));
    // copy_from writes through every view of the storage.
    let y = Tensor::zeros((2, 2), DType::F32, Device::Cpu).unwrap();
    let row = y.narrow(0, 1, 1).unwrap();
    row.copy_from(&Tensor::ones((1, 2), DType::F32, Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn errors_name_the_op_and_shapes() {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap();
    let e = a
        .matmul(&Tensor::zeros((4, 5), DType::F32, Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let e = a.reshape((4, 2)).unwrap_err().to_string();
    assert!(
        e.contains("reshape") && e.contains("[2, 3]") && e.contains("[4, 2]"),
        "{e}"
    );
    let e = a.transpose(0, 5).unwrap_err().to_string();
    assert!(e.contains("transpose") && e.contains("5"), "{e}");
    let e = a
        .add(&Tensor::zeros((2, 3), DType::F64, Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("add") && e.contains("F32") && e.contains("F64"),
        "{e}"
    );
}
