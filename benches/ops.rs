//! Criterion benchmarks of the core CPU ops at model-sized shapes (GEMM, softmax, LayerNorm,
//! GELU, fused attention, conv2d), reporting GFLOP/s or GB/s through criterion's throughput. GEMM
//! runs beside the Rust `gemm` crate in the same process; `tessera bench` with
//! `benches/reference/compare.py` puts numpy (OpenBLAS) and PyTorch beside every case.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tessera::{DType, Device, Tensor};

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F32, Device::Cpu, seed, 0).unwrap()
}

/// `C = A B` (row-major f32) with the Rust `gemm` crate on all Rayon threads: the in-process
/// reference the GEMM issue asks for (a dev-dependency only, never used by the library).
fn gemm_crate(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: the slices hold m*k, k*n and m*n elements, laid out row-major as the strides say.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    // Square, then the transformer MLP shape [B*T, C] x [C, 4C].
    let shapes = [
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 256, 1024),
    ];
    for (m, k, n) in shapes {
        let (a, b) = (randn(&[m, k], 1), randn(&[k, n], 2));
        let (ha, hb) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let mut hc = vec![0f32; m * n];
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("tessera", &id), &id, |bch, _| {
            bch.iter(|| black_box(a.matmul(&b).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("gemm_crate", &id), &id, |bch, _| {
            bch.iter(|| gemm_crate(m, k, n, &ha, &hb, black_box(&mut hc)))
        });
    }
    g.finish();
}

fn rowwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("rowwise");
    let x = randn(&[4096, 512], 5);
    let (w, b) = (randn(&[512], 6), randn(&[512], 7));
    g.throughput(Throughput::Bytes((2 * 4096 * 512 * 4) as u64));
    g.bench_function("softmax_4096x512", |bch| {
        bch.iter(|| black_box(x.softmax(-1).unwrap()))
    });
    g.bench_function("layer_norm_4096x512", |bch| {
        bch.iter(|| black_box(x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap()))
    });
    g.bench_function("gelu_4096x512", |bch| {
        bch.iter(|| black_box(x.gelu().unwrap()))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    let (q, k, v) = (
        randn(&[4, 4, 256, 64], 8),
        randn(&[4, 4, 256, 64], 9),
        randn(&[4, 4, 256, 64], 10),
    );
    let opts = tessera::ops::AttentionOpts {
        causal: true,
        ..Default::default()
    };
    g.throughput(Throughput::Elements(4 * 4 * 256 * 256 * 64 * 2)); // causal: half of 4*B*H*T^2*D
    g.bench_function("sdpa_causal_b4h4t256d64", |bch| {
        bch.iter(|| {
            black_box(tessera::ops::scaled_dot_product_attention(&q, &k, &v, &opts).unwrap())
        })
    });
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    // A ResNet-18 layer1 conv at 56x56, a U-Net conv at 32x32, and the small diffusion
    // U-Net's convs (few channels, so packing costs as much as the GEMM): 32x32 and 16x16 at
    // stride 1, and the stride-2 downsample.
    let cases: [(usize, usize, usize, usize, usize); 6] = [
        (8, 64, 64, 56, 1),
        (8, 128, 128, 32, 1),
        (32, 16, 16, 32, 1),
        (32, 32, 32, 16, 1),
        (32, 16, 16, 32, 2),
        (32, 3, 16, 32, 1),
    ];
    for &(n, ci, co, hw, s) in &cases {
        let x = randn(&[n, ci, hw, hw], 11).requires_grad_().unwrap();
        let w = randn(&[co, ci, 3, 3], 12).requires_grad_().unwrap();
        let p = tessera::ops::Conv2dParams {
            padding: (1, 1),
            stride: (s, s),
            ..Default::default()
        };
        let ohw = hw.div_ceil(s);
        let flops = 2 * n * co * ohw * ohw * ci * 9;
        let name = |pass: &str| match (s, ci == co) {
            (1, true) => format!("{pass}_n{n}_c{ci}_{hw}x{hw}"),
            (1, false) => format!("{pass}_n{n}_c{ci}to{co}_{hw}x{hw}"),
            _ => format!("{pass}_n{n}_c{ci}_{hw}x{hw}_s{s}"),
        };
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(name("forward"), |bch| {
            bch.iter(|| black_box(tessera::no_grad(|| x.conv2d(&w, None, p).unwrap())))
        });
        g.throughput(Throughput::Elements(3 * flops as u64));
        g.bench_function(name("forward_backward"), |bch| {
            bch.iter(|| {
                x.conv2d(&w, None, p)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                x.zero_grad();
                w.zero_grad();
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = gemm, rowwise, attention, conv
}
criterion_main!(benches);
