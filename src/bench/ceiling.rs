//! Hardware ceilings measured in the same run as the cases they judge.
//!
//! - Arithmetic: every worker thread runs 12 independent chains of 16-lane f32 FMAs (AVX-512;
//!   8-lane AVX2 + FMA otherwise; scalar as a last resort), enough to cover the FMA latency on
//!   two pipes. FLOPs = threads x iterations x chains x lanes x 2.
//! - Memory: a parallel copy of a buffer much larger than the last-level cache; bytes = read +
//!   written (the convention of the performance anchors; write-allocate traffic is not counted).

use rayon::prelude::*;
use std::time::Instant;

const CHAINS: usize = 12;

/// Peak f32 GFLOP/s of FMAs on all worker threads: the best of 30 runs of ~2 ms, so that one
/// quiet moment suffices on a busy machine.
pub fn fma_peak_gflops() -> f64 {
    let iters = 1_000_000usize;
    let mut best = 0f64;
    for _ in 0..30 {
        let t0 = Instant::now();
        let (flops_per_thread, sink): (Vec<usize>, Vec<f32>) =
            rayon::broadcast(|_| fma_chains(iters)).into_iter().unzip();
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(flops_per_thread.iter().sum::<usize>() as f64 / secs / 1e9);
    }
    best
}

/// Runs the FMA chains on this thread; returns (FLOPs done, a value that depends on them).
fn fma_chains(iters: usize) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return (iters * CHAINS * 16 * 2, unsafe { fma_avx512(iters) });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return (iters * CHAINS * 8 * 2, unsafe { fma_avx2(iters) });
        }
    }
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    (iters * CHAINS * 2, std::hint::black_box(acc.iter().sum()))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

/// Copy bandwidth in GB/s (bytes read + written) over `mib` MiB, best of 5 parallel copies.
pub fn copy_bandwidth_gbps(mib: usize) -> f64 {
    let n = mib * (1 << 20) / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(1 << 14);
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        let secs = t0.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * 4) as f64 / secs / 1e9);
    }
    std::hint::black_box(&dst);
    best
}
