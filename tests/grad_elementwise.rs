//! Gradient checks (f64 finite differences) for the elementwise, comparison/where and
//! reduction ops, on awkward shapes: odd sizes, broadcasting, non-contiguous views.

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::{DType, Device, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0).unwrap()
}
/// Values in [lo, hi) (for ops with restricted domains).
fn uniform(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    Tensor::rand_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0)
        .unwrap()
        .affine(hi - lo, lo)
        .unwrap()
}
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    check_gradients(f, inputs, GradCheck::default()).unwrap();
}

#[test]
fn binary_ops_with_broadcasting() {
    let a = randn(&[3, 1, 5], 1);
    let b = randn(&[4, 1], 2);
    check(|x| x[0].add(&x[1]), &[a.clone(), b.clone()]);
    check(|x| x[0].sub(&x[1]), &[a.clone(), b.clone()]);
    check(|x| x[0].mul(&x[1]), &[a.clone(), b.clone()]);
    check(
        |x| x[0].div(&x[1]),
        &[a.clone(), uniform(&[4, 1], 3, 0.5, 2.0)],
    );
    check(|x| x[0].maximum(&x[1]), &[a.clone(), b.clone()]);
    check(|x| x[0].minimum(&x[1]), &[a, b]);
}

#[test]
fn binary_ops_on_non_contiguous_views() {
    let a = randn(&[5, 3], 4);
    let b = randn(&[3, 5], 5);
    check(|x| x[0].t()?.mul(&x[1]), &[a.clone(), b.clone()]);
    check(
        |x| x[0].narrow(0, 1, 3)?.add(&x[1].t()?.narrow(0, 2, 3)?),
        &[a, b],
    );
}

#[test]
fn unary_ops() {
    let x = randn(&[3, 7], 6).mul_scalar(1.5).unwrap();
    let pos = uniform(&[3, 7], 7, 0.3, 3.0);
    type F = fn(&Tensor) -> Result<Tensor>;
    let any: [(&str, F); 11] = [
        ("neg", |t| t.neg()),
        ("exp", |t| t.exp()),
        ("abs", |t| t.abs()),
        ("relu", |t| t.relu()),
        ("gelu", |t| t.gelu()),
        ("gelu_tanh", |t| t.gelu_tanh()),
        ("silu", |t| t.silu()),
        ("sigmoid", |t| t.sigmoid()),
        ("tanh", |t| t.tanh()),
        ("sqr", |t| t.sqr()),
        ("clamp", |t| t.clamp(-0.5, 0.7)),
    ];
    for (name, f) in any {
        check_gradients(
            |x| f(&x[0].t()?),
            std::slice::from_ref(&x),
            GradCheck::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let positive: [(&str, F); 5] = [
        ("log", |t| t.log()),
        ("sqrt", |t| t.sqrt()),
        ("rsqrt", |t| t.rsqrt()),
        ("recip", |t| t.recip()),
        ("powf", |t| t.powf(2.7)),
    ];
    for (name, f) in positive {
        check_gradients(
            |x| f(&x[0]),
            std::slice::from_ref(&pos),
            GradCheck::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn reductions() {
    let x = randn(&[3, 4, 5], 8);
    check(|x| x[0].sum(1), std::slice::from_ref(&x));
    check(|x| x[0].sum_dims(&[0, 2], true), std::slice::from_ref(&x));
    check(|x| x[0].mean(-1), std::slice::from_ref(&x));
    check(|x| x[0].var(1), std::slice::from_ref(&x));
    check(|x| x[0].max(2), std::slice::from_ref(&x));
    check(|x| x[0].min_keepdim(0), std::slice::from_ref(&x));
    check(
        |x| x[0].permute(&[2, 0, 1])?.sum(-1),
        std::slice::from_ref(&x),
    );
    check(|x| x[0].sum_all(), &[x]);
}

#[test]
fn where_and_masked_fill() {
    let a = randn(&[4, 3], 9);
    let b = randn(&[1, 3], 10);
    let mask = randn(&[4, 3], 11)
        .gt_t(&Tensor::zeros((), DType::F64, Device::Cpu).unwrap())
        .unwrap();
    let m = mask.clone();
    check(move |x| m.where_cond(&x[0], &x[1]), &[a.clone(), b]);
    check(move |x| x[0].masked_fill(&mask, -3.0), &[a]);
}

#[test]
fn views() {
    let x = randn(&[2, 3, 4], 12);
    check(|x| x[0].reshape((6, 4)), std::slice::from_ref(&x));
    check(
        |x| x[0].permute(&[1, 2, 0])?.reshape((3, 8)),
        std::slice::from_ref(&x),
    );
    check(|x| x[0].narrow(2, 1, 2), std::slice::from_ref(&x));
    // A window over the whole dim (its backward passes the gradient through), of a view.
    check(
        |x| {
            x[0].permute(&[1, 0, 2])?
                .narrow(0, 0, 3)?
                .mul(&x[0].permute(&[1, 0, 2])?)
        },
        std::slice::from_ref(&x),
    );
    check(
        |x| x[0].unsqueeze(1)?.broadcast_as((2, 5, 3, 4)),
        std::slice::from_ref(&x),
    );
    check(
        |x| Ok(x[0].chunk(2, 2)?[1].clone()),
        std::slice::from_ref(&x),
    );
    check(|x| x[0].narrow(0, 1, 1)?.squeeze(0), &[x]);
}

#[test]
fn gradients_accumulate_and_zero() {
    let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], 3, Device::Cpu)
        .unwrap()
        .requires_grad_()
        .unwrap();
    for _ in 0..2 {
        w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    }
    assert_eq!(
        w.grad().unwrap().to_vec::<f32>().unwrap(),
        vec![4.0, 8.0, 12.0]
    );
    w.zero_grad();
    assert!(w.grad().is_none());
}

#[test]
fn frozen_leaves_and_no_grad_record_nothing() {
    let w = Tensor::ones(3, DType::F32, Device::Cpu)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = tessera::no_grad(|| w.exp().unwrap());
    assert!(!y.requires_grad());
    w.set_requires_grad(false).unwrap();
    assert!(w.exp().unwrap().sum_all().unwrap().backward().is_err());
}

#[test]
fn second_backward_through_freed_graph_is_an_error() {
    let w = Tensor::ones(3, DType::F32, Device::Cpu)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let loss = w.exp().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let err = loss.backward().unwrap_err().to_string();
    assert!(err.contains("already back-propagated"), "{err}");
}

#[test]
fn shape_errors_name_op_and_shapes() {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros((4, 3), DType::F32, Device::Cpu).unwrap();
    let e = a.add(&b).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("[2, 3]") && e.contains("[4, 3]"),
        "{e}"
    );
}

#[test]
fn matmul_batched_broadcast_and_transposed() {
    let a = randn(&[2, 3, 4], 20);
    let b = randn(&[4, 5], 21);
    check(|x| x[0].matmul(&x[1]), &[a.clone(), b.clone()]);
    check(|x| x[0].matmul(&x[1].t()?.t()?), &[a.clone(), b]);
    let c = randn(&[5, 4], 22);
    check(|x| x[0].matmul(&x[1].t()?), &[a.clone(), c]);
    let v = randn(&[4], 23);
    check(|x| x[0].matmul(&x[1]), &[a, v]);
    let p = randn(&[3, 1, 2, 3], 24);
    let q = randn(&[2, 3, 2], 25);
    check(|x| x[0].matmul(&x[1]), &[p, q]);
}
