//! Index family: cat, stack, index_select, index_add, gather, scatter_add, embedding.
//! Forward values against hand-computed results, gradient checks (f64 finite differences) on
//! odd shapes, negative dims, non-contiguous views and repeated indices, and error cases.

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::random::Rng;
use tessera::{DType, Device, Error, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0).unwrap()
}
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    check_gradients(f, inputs, GradCheck::default()).unwrap();
}
fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), Device::Cpu).unwrap()
}
fn u32s(v: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), Device::Cpu).unwrap()
}
fn f64s(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), Device::Cpu).unwrap()
}
/// Random i64 indices in `0..size` (with repeats), of the given shape.
fn random_ids(shape: &[usize], size: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<i64> = (0..n).map(|_| rng.below(size) as i64).collect();
    i64s(&v, shape)
}
fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

#[test]
fn cat_forward_values() {
    let a = f64s(&[1., 2., 3., 4.], &[2, 2]);
    let b = f64s(&[5., 6.], &[1, 2]);
    let c = f64s(&[7., 8.], &[2, 1]);
    let rows = Tensor::cat(&[a.clone(), b], 0).unwrap();
    assert_eq!(rows.dims(), &[3, 2]);
    assert_eq!(values(&rows), [1., 2., 3., 4., 5., 6.]);
    let cols = Tensor::cat(&[a.clone(), c], -1).unwrap();
    assert_eq!(cols.dims(), &[2, 3]);
    assert_eq!(values(&cols), [1., 2., 7., 3., 4., 8.]);
    // A transposed input is read through its strides: a^T = [[1, 3], [2, 4]].
    let t = Tensor::cat(&[a.t().unwrap(), a.clone()], 1).unwrap();
    assert_eq!(values(&t), [1., 3., 1., 2., 2., 4., 3., 4.]);
    // Integer tensors concatenate too.
    let ids = Tensor::cat(&[i64s(&[1, 2], &[2]), i64s(&[3], &[1])], 0).unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), vec![1, 2, 3]);
}

#[test]
fn cat_gradients() {
    let x0 = randn(&[2, 3, 5], 1);
    let x1 = randn(&[2, 1, 5], 2);
    let x2 = randn(&[5, 2, 4], 3);
    // Middle dim, negative index, one input permuted (non-contiguous), one narrowed.
    check(
        |x| {
            Tensor::cat(
                &[
                    x[0].clone(),
                    x[1].clone(),
                    x[2].permute(&[1, 2, 0])?,
                    x[0].narrow(1, 1, 2)?,
                ],
                -2,
            )
        },
        &[x0.clone(), x1, x2],
    );
    // The same tensor twice: both windows' gradients accumulate.
    check(|x| Tensor::cat(&[x[0].clone(), x[0].clone()], 2), &[x0]);
}

#[test]
fn cat_passes_no_gradient_to_constants() {
    let w = randn(&[2, 3], 4).requires_grad_().unwrap();
    let c = randn(&[1, 3], 5);
    let y = Tensor::cat(&[c, w.clone()], 0).unwrap();
    let weights = randn(&[3, 3], 6);
    y.mul(&weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        values(&w.grad().unwrap()),
        values(&weights.narrow(0, 1, 2).unwrap())
    );
}

#[test]
fn stack_forward_and_gradients() {
    let a = f64s(&[1., 2., 3.], &[3]);
    let b = f64s(&[4., 5., 6.], &[3]);
    let s0 = Tensor::stack(&[a.clone(), b.clone()], 0).unwrap();
    assert_eq!(s0.dims(), &[2, 3]);
    assert_eq!(values(&s0), [1., 2., 3., 4., 5., 6.]);
    let s1 = Tensor::stack(&[a, b], -1).unwrap();
    assert_eq!(s1.dims(), &[3, 2]);
    assert_eq!(values(&s1), [1., 4., 2., 5., 3., 6.]);

    let x = randn(&[3, 5], 7);
    let y = randn(&[5, 3], 8);
    check(
        |x| Tensor::stack(&[x[0].clone(), x[1].t()?], 1),
        &[x.clone(), y.clone()],
    );
    check(
        |x| Tensor::stack(&[x[1].t()?, x[0].clone(), x[0].clone()], -1),
        &[x, y],
    );
}

#[test]
fn index_select_forward_values() {
    let x = Tensor::arange(12, DType::F64, Device::Cpu)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let rows = x.index_select(&i64s(&[2, 0, 2], &[3]), 0).unwrap();
    assert_eq!(rows.dims(), &[3, 4]);
    assert_eq!(
        values(&rows),
        [8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11.]
    );
    let cols = x.index_select(&u32s(&[3, 3, 1], &[3]), -1).unwrap();
    assert_eq!(values(&cols), [3., 3., 1., 7., 7., 5., 11., 11., 9.]);
    // Through a transposed view: x^T rows 1 and 0 are x's columns 1 and 0.
    let tcols = x
        .t()
        .unwrap()
        .index_select(&i64s(&[1, 0], &[2]), 0)
        .unwrap();
    assert_eq!(values(&tcols), [1., 5., 9., 0., 4., 8.]);
    // f32 works the same way.
    let xf = x.to_dtype(DType::F32).unwrap();
    let sel = xf.index_select(&i64s(&[1], &[1]), 0).unwrap();
    assert_eq!(sel.to_vec::<f32>().unwrap(), vec![4., 5., 6., 7.]);
}

#[test]
fn index_select_gradients_with_repeated_indices() {
    let x = randn(&[4, 5, 3], 9);
    let ids = i64s(&[3, 0, 3, 3, 1], &[5]);
    let i = ids.clone();
    check(move |x| x[0].index_select(&i, 0), std::slice::from_ref(&x));
    let i = ids.clone();
    check(move |x| x[0].index_select(&i, 1), std::slice::from_ref(&x));
    let u = u32s(&[2, 2, 0, 1, 2, 1, 0], &[7]);
    check(move |x| x[0].index_select(&u, -1), std::slice::from_ref(&x));
    // Non-contiguous input: permuted so the selected dim is strided.
    let i = ids.clone();
    check(move |x| x[0].permute(&[2, 0, 1])?.index_select(&i, 1), &[x]);
}

#[test]
fn index_add_forward_and_gradients() {
    let base = f64s(&[1., 1., 1., 1., 1., 1.], &[3, 2]);
    let src = f64s(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    // Rows 0 and 2 of src both land on row 2.
    let out = base.index_add(0, &i64s(&[2, 1, 2], &[3]), &src).unwrap();
    assert_eq!(values(&out), [1., 1., 4., 5., 7., 9.]);

    let x = randn(&[3, 4, 2], 10);
    let s = randn(&[3, 6, 2], 11);
    let ids = random_ids(&[6], 4, 12);
    check(move |x| x[0].index_add(1, &ids, &x[1]), &[x, s]);
}

#[test]
fn gather_forward_values() {
    // torch.gather's documentation example.
    let t = f64s(&[1., 2., 3., 4.], &[2, 2]);
    let g = t.gather(1, &i64s(&[0, 0, 1, 0], &[2, 2])).unwrap();
    assert_eq!(values(&g), [1., 1., 4., 3.]);
    // Along dim 0, with an index tensor larger than the input along dim and smaller across it.
    let x = Tensor::arange(6, DType::F64, Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let g = x.gather(0, &i64s(&[1, 0, 0, 1, 1, 1], &[3, 2])).unwrap();
    assert_eq!(g.dims(), &[3, 2]);
    assert_eq!(values(&g), [3., 1., 0., 4., 3., 4.]);
    // Through a transposed view: x^T = [[0, 3], [1, 4], [2, 5]].
    let g = x
        .t()
        .unwrap()
        .gather(-1, &i64s(&[1, 1, 0], &[3, 1]))
        .unwrap();
    assert_eq!(values(&g), [3., 4., 2.]);
}

#[test]
fn gather_gradients() {
    let x = randn(&[3, 4, 5], 13);
    let ids = random_ids(&[3, 7, 5], 4, 14);
    check(move |x| x[0].gather(1, &ids), std::slice::from_ref(&x));
    // Index smaller than the input in the other dims; last dim; permuted input.
    let ids = random_ids(&[2, 3, 6], 3, 15);
    check(move |x| x[0].permute(&[0, 2, 1])?.gather(-1, &ids), &[x]);
}

#[test]
fn scatter_add_forward_values() {
    // torch.scatter_add's documentation example.
    let zeros = Tensor::zeros((3, 5), DType::F64, Device::Cpu).unwrap();
    let ones = Tensor::ones((2, 5), DType::F64, Device::Cpu).unwrap();
    let ids = i64s(&[0, 1, 2, 0, 0, 2, 0, 0, 1, 2], &[2, 5]);
    let out = zeros.scatter_add(0, &ids, &ones).unwrap();
    assert_eq!(
        values(&out),
        [1., 1., 1., 1., 1., 0., 1., 0., 1., 0., 1., 0., 1., 0., 1.]
    );
    // Repeated destinations accumulate, onto a non-zero base.
    let base = f64s(&[10., 20.], &[1, 2]);
    let src = f64s(&[1., 2., 3.], &[1, 3]);
    let out = base
        .scatter_add(1, &u32s(&[1, 1, 0], &[1, 3]), &src)
        .unwrap();
    assert_eq!(values(&out), [13., 23.]);
}

#[test]
fn scatter_add_gradients() {
    let x = randn(&[4, 3], 16);
    let src = randn(&[6, 3], 17);
    let ids = random_ids(&[6, 3], 4, 18);
    check(move |x| x[0].scatter_add(0, &ids, &x[1]), &[x.clone(), src]);
    // src larger than the index (only the indexed part gets gradient) and transposed.
    let big = randn(&[5, 4], 19);
    let ids = random_ids(&[3, 2], 3, 20);
    check(move |x| x[0].scatter_add(-1, &ids, &x[1].t()?), &[x, big]);
}

#[test]
fn embedding_forward_and_repeated_ids_accumulate() {
    let table = Tensor::arange(15, DType::F64, Device::Cpu)
        .unwrap()
        .reshape((5, 3))
        .unwrap();
    let ids = i64s(&[1, 4, 1, 0], &[2, 2]);
    let e = table.embedding(&ids).unwrap();
    assert_eq!(e.dims(), &[2, 2, 3]);
    assert_eq!(
        values(&e),
        [3., 4., 5., 12., 13., 14., 3., 4., 5., 0., 1., 2.]
    );

    // d/dtable sum(emb) counts how often each row was looked up.
    let w = table.requires_grad_().unwrap();
    let ids = u32s(&[1, 4, 1, 0, 1, 4], &[6]);
    w.embedding(&ids)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let counts = [1., 3., 0., 0., 2.];
    let expected: Vec<f64> = counts.iter().flat_map(|&c| [c; 3]).collect();
    assert_eq!(values(&w.grad().unwrap()), expected);
}

#[test]
fn embedding_gradients() {
    let table = randn(&[7, 4], 21);
    let ids = random_ids(&[3, 5], 7, 22);
    check(move |x| x[0].embedding(&ids), std::slice::from_ref(&table));
    let ids = u32s(&[6, 6, 6, 2], &[4]);
    check(move |x| x[0].embedding(&ids), std::slice::from_ref(&table));
    // A transposed table (non-contiguous rows).
    let tt = randn(&[4, 7], 23);
    let ids = random_ids(&[2, 3], 7, 24);
    check(move |x| x[0].t()?.embedding(&ids), &[tt]);
}

fn assert_index_error(e: Error, op: &str, index: i64, size: usize) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::IndexOutOfRange { op: o, index: i, size: s } if o == op && i == index && s == size),
        "{msg}"
    );
    assert!(
        msg.contains(op) && msg.contains(&index.to_string()) && msg.contains(&size.to_string()),
        "{msg}"
    );
}

#[test]
fn out_of_range_indices_are_errors() {
    let x = randn(&[3, 4], 25);
    assert_index_error(
        x.index_select(&i64s(&[0, 7], &[2]), 0).unwrap_err(),
        "index_select",
        7,
        3,
    );
    assert_index_error(
        x.index_select(&i64s(&[-1], &[1]), 1).unwrap_err(),
        "index_select",
        -1,
        4,
    );
    assert_index_error(
        x.embedding(&u32s(&[1, 3], &[2])).unwrap_err(),
        "embedding",
        3,
        3,
    );
    assert_index_error(
        x.gather(1, &i64s(&[0, 4], &[1, 2])).unwrap_err(),
        "gather",
        4,
        4,
    );
    let src = randn(&[1, 2], 26);
    assert_index_error(
        x.scatter_add(0, &i64s(&[5, 0], &[1, 2]), &src).unwrap_err(),
        "scatter_add",
        5,
        3,
    );
    let rows = randn(&[2, 4], 27);
    assert_index_error(
        x.index_add(0, &i64s(&[0, 9], &[2]), &rows).unwrap_err(),
        "index_add",
        9,
        3,
    );
}

#[test]
fn shape_and_dtype_errors() {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros((4, 5), DType::F32, Device::Cpu).unwrap();
    let e = Tensor::cat(&[a.clone(), b.clone()], 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cat") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let e = Tensor::stack(&[a.clone(), b], 0).unwrap_err().to_string();
    assert!(
        e.contains("stack") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::stack(&[], 0).is_err());
    assert!(Tensor::cat(std::slice::from_ref(&a), 2).is_err());
    let a64 = a.to_dtype(DType::F64).unwrap();
    assert!(matches!(
        Tensor::cat(&[a.clone(), a64], 0),
        Err(Error::DTypeMismatch { op: "cat", .. })
    ));
    // Float indices, rank-2 indices for index_select, rank mismatch for gather.
    let float_ids = Tensor::zeros(2, DType::F32, Device::Cpu).unwrap();
    assert!(matches!(
        a.index_select(&float_ids, 0),
        Err(Error::UnsupportedDType {
            op: "index_select",
            ..
        })
    ));
    let e = a
        .index_select(&i64s(&[0, 1], &[1, 2]), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("index_select") && e.contains("[1, 2]"), "{e}");
    assert!(a.gather(0, &i64s(&[0, 1], &[2])).is_err());
    // An index larger than the input across the gather dim.
    let e = a
        .gather(1, &i64s(&[0; 9], &[3, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gather") && e.contains("[3, 3]"), "{e}");
    // Embedding needs a rank-2 table.
    assert!(randn(&[5], 28).embedding(&i64s(&[0], &[1])).is_err());
    // index_add source of the wrong shape.
    let e = a
        .index_add(
            0,
            &i64s(&[0], &[1]),
            &Tensor::zeros((2, 3), DType::F32, Device::Cpu).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("index_add") && e.contains("[2, 3]"), "{e}");
}

#[test]
fn large_inputs_match_naive_loops() {
    // Big enough that the kernels split the work over many Rayon tasks.
    let (vocab, width, n) = (1000, 3, 20_000);
    let table = randn(&[vocab, width], 29).requires_grad_().unwrap();
    let ids = random_ids(&[n], vocab, 30);
    let g = randn(&[n, width], 31);
    let rows = table.embedding(&ids).unwrap();
    rows.backward_with(&g).unwrap();

    let (tv, iv, gv) = (values(&table), ids.to_vec::<i64>().unwrap(), values(&g));
    let expected_rows: Vec<f64> = iv
        .iter()
        .flat_map(|&i| tv[i as usize * width..(i as usize + 1) * width].to_vec())
        .collect();
    assert_eq!(values(&rows), expected_rows);
    let mut expected_grad = vec![0.0; vocab * width];
    for (k, &i) in iv.iter().enumerate() {
        for c in 0..width {
            expected_grad[i as usize * width + c] += gv[k * width + c];
        }
    }
    // Each destination sums its sources in ascending order, exactly as the loop above.
    assert_eq!(values(&table.grad().unwrap()), expected_grad);
}
