//! The CPU GEMM against a naive triple loop: odd sizes (1, 7, 33, 65, 129) that cross every
//! register-tile and cache-block edge, transposed and strided operands, batch broadcasting,
//! f32 and f64. `gemm_throughput` (ignored; run with `--release -- --ignored --nocapture`)
//! prints GFLOP/s.

use tessera::{DType, Device, Tensor};

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), dtype, Device::Cpu, seed, 0).unwrap()
}

/// `[.., M, K] @ [.., K, N]` with batch dims already equal, in f64.
fn naive(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (ad, bd) = (a.dims(), b.dims());
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let batch: usize = ad[..ad.len() - 2].iter().product();
    let (av, bv) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let mut out = vec![0.0; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += av[(bi * m + i) * k + p] * bv[(bi * k + p) * n + j];
                }
                out[(bi * m + i) * n + j] = s;
            }
        }
    }
    out
}

fn assert_close(got: &Tensor, want: &[f64], tol: f64, what: &str) {
    let g = got.to_vec_f64().unwrap();
    assert_eq!(g.len(), want.len(), "{what}");
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn odd_sizes_match_naive() {
    let sizes = [1, 7, 33, 65, 129];
    let mut seed = 1;
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
        for &m in &sizes {
            for &k in &sizes {
                for &n in &sizes {
                    seed += 1;
                    let a = randn(&[m, k], seed, dtype);
                    let b = randn(&[k, n], seed + 1000, dtype);
                    let c = a.matmul(&b).unwrap();
                    assert_eq!(c.dtype(), dtype);
                    assert_close(&c, &naive(&a, &b), tol, &format!("{dtype:?} {m}x{k}x{n}"));
                }
            }
        }
    }
}

#[test]
fn large_k_crosses_cache_blocks() {
    // K and N beyond one KC / NC block, M beyond one MC block.
    let a = randn(&[150, 700], 5, DType::F64);
    let b = randn(&[700, 300], 6, DType::F64);
    assert_close(&a.matmul(&b).unwrap(), &naive(&a, &b), 1e-12, "150x700x300");
    // The same with A read transposed (packed depth by depth from its rows), in both
    // dtypes: whole and partial panels on both sides, three K blocks.
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-3 };
        let a = randn(&[700, 150], 7, dtype).t().unwrap();
        let b = randn(&[700, 300], 8, dtype);
        let want = naive(&a.contiguous().unwrap(), &b);
        assert_close(
            &a.matmul(&b).unwrap(),
            &want,
            tol,
            "transposed A 150x700x300",
        );
    }
    // M over several MC blocks against a single NC block, three K blocks: the loop order
    // with B outside (B packed once per depth block, A once per row block), B row-major and
    // transposed (a Linear layer's weight), in both dtypes.
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-3 };
        let a = randn(&[2100, 600], 9, dtype);
        let b = randn(&[600, 40], 10, dtype);
        assert_close(&a.matmul(&b).unwrap(), &naive(&a, &b), tol, "2100x600x40");
        let bt = randn(&[40, 600], 11, dtype).t().unwrap();
        let want = naive(&a, &bt.contiguous().unwrap());
        assert_close(
            &a.matmul(&bt).unwrap(),
            &want,
            tol,
            "2100x600x40, B transposed",
        );
    }
}

#[test]
fn transposed_strided_and_broadcast_operands() {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
        // Transposed operands (column-major reads), both and each.
        let at = randn(&[65, 33], 11, dtype); // a = at^T: [33, 65]
        let bt = randn(&[7, 65], 12, dtype); // b = bt^T: [65, 7]
        let (a, b) = (at.t().unwrap(), bt.t().unwrap());
        let want = naive(&a.contiguous().unwrap(), &b.contiguous().unwrap());
        assert_close(&a.matmul(&b).unwrap(), &want, tol, "At Bt");
        assert_close(
            &a.contiguous().unwrap().matmul(&b).unwrap(),
            &want,
            tol,
            "A Bt",
        );
        assert_close(
            &a.matmul(&b.contiguous().unwrap()).unwrap(),
            &want,
            tol,
            "At B",
        );
        // Strided (narrowed) operands with offsets.
        let big = randn(&[40, 70], 13, dtype);
        let a = big.narrow(0, 3, 33).unwrap().narrow(1, 2, 65).unwrap();
        let b = randn(&[65, 80], 14, dtype).narrow(1, 5, 33).unwrap();
        let want = naive(&a.contiguous().unwrap(), &b.contiguous().unwrap());
        assert_close(&a.matmul(&b).unwrap(), &want, tol, "narrowed");
        // Batch broadcasting: [3, 1, 7, 33] @ [2, 33, 65] -> [3, 2, 7, 65].
        let a = randn(&[3, 1, 7, 33], 15, dtype);
        let b = randn(&[2, 33, 65], 16, dtype);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.dims(), &[3, 2, 7, 65]);
        let (ab, bb) = (
            a.broadcast_as((3, 2, 7, 33)).unwrap().contiguous().unwrap(),
            b.broadcast_as((3, 2, 33, 65))
                .unwrap()
                .contiguous()
                .unwrap(),
        );
        assert_close(&c, &naive(&ab, &bb), tol, "broadcast");
        // A batch-transposed view: [2, 33, 7] viewed as [2, 7, 33].
        let a = randn(&[2, 33, 7], 17, dtype).transpose(1, 2).unwrap();
        let b = randn(&[2, 33, 129], 18, dtype);
        let want = naive(&a.contiguous().unwrap(), &b);
        assert_close(&a.matmul(&b).unwrap(), &want, tol, "batched transposed");
    }
}

#[test]
fn empty_inner_dimension_gives_zeros() {
    let a = Tensor::zeros((3, 0), DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros((0, 4), DType::F32, Device::Cpu).unwrap();
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.dims(), &[3, 4]);
    assert!(c.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
}
