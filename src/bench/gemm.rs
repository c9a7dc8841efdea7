//! GEMM cases: C[m, n] = A[m, k] B[k, n], optionally batched or with B read transposed (a
//! strided view, as in a Linear layer's `x W^T`). FLOPs = 2 m n k per matrix.

use super::{ceiling, measure, randn, sizes, BenchOptions, Case, Measurement, Unit};
use crate::Result;
use serde_json::json;

/// (name, batch, m, k, n, b_transposed)
fn cases() -> Vec<(String, usize, usize, usize, usize, bool)> {
    let mut v = Vec::new();
    for n in [256, 512, 1024, 2048] {
        v.push((format!("square_{n}"), 1, n, n, n, false));
    }
    // Transformer MLP: [B*T, C] x [C, 4C] with B*T = 4096 tokens.
    for c in [64, 128, 256, 512] {
        v.push((format!("mlp_4096x{c}x{}", 4 * c), 1, 4096, c, 4 * c, false));
    }
    // Linear layer as it is stored: x [B*T, C] times W^T with W [4C, C] (no copy of W).
    v.push(("linear_nt_4096x256x1024".into(), 1, 4096, 256, 1024, true));
    // Tall-skinny: many rows, few columns; and a long reduction (a weight gradient).
    v.push(("tall_65536x64x64".into(), 1, 65536, 64, 64, false));
    v.push(("long_k_256x65536x256".into(), 1, 256, 65536, 256, false));
    // Batched small matrices (attention-sized heads).
    v.push(("batched_512x32x32x32".into(), 512, 32, 32, 32, false));
    v.push(("batched_128x64x64x64".into(), 128, 64, 64, 64, false));
    v
}

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    // The CPU ceiling; GPU ceilings come with the GPU-speed work (no ceiling reported there).
    let peak = opts.device.is_cpu().then(ceiling::fma_peak_gflops);
    for (i, (name, batch, m, k, n, bt)) in cases().into_iter().enumerate() {
        if !opts.wants(&name) {
            continue;
        }
        let seed = 100 + 2 * i as u64;
        let a_dims = if batch > 1 {
            vec![batch, m, k]
        } else {
            vec![m, k]
        };
        let b_dims = match (batch > 1, bt) {
            (true, _) => vec![batch, k, n],
            (false, false) => vec![k, n],
            (false, true) => vec![n, k],
        };
        let a = randn(&a_dims, seed, opts.device)?;
        let b_stored = randn(&b_dims, seed + 1, opts.device)?;
        let b = if bt { b_stored.t()? } else { b_stored };
        let case = Case {
            name,
            sizes: sizes(&[
                ("batch", json!(batch)),
                ("m", json!(m)),
                ("n", json!(n)),
                ("k", json!(k)),
                ("b_transposed", json!(bt)),
            ]),
            unit: Unit::GflopPerS,
            work: 2.0 * (batch * m * n * k) as f64,
            run: Box::new(move || a.matmul(&b).map(drop)),
        };
        if let Some(r) = measure("gemm", opts, peak, case)? {
            report(&r);
        }
    }
    Ok(())
}
