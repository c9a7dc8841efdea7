//! Times the CPU fused attention against its decomposition (`softmax(q k^T * scale) v` from
//! matmul and softmax ops) at the small diffusion U-Net's shapes: self-attention over 8x8 and
//! 4x4 maps and cross-attention on about 12 text tokens, head dim 8, and the text encoder's
//! 12-token self-attention. The fastest of 200 calls, forward and forward + backward. The
//! machine is shared, so compare builds back to back.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release --example attention_small_shapes`
use std::time::Instant;
use tessera::ops::AttentionOpts;
use tessera::{DType, Device, Tensor};

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn main() -> tessera::Result<()> {
    tessera::alloc::keep_freed_memory();
    for &(b, h, tq, tk, d) in &[
        (8, 4, 64, 64, 8),
        (8, 4, 64, 12, 8),
        (8, 4, 16, 16, 8),
        (8, 4, 16, 12, 8),
        (8, 4, 12, 12, 16),
    ] {
        let q = Tensor::randn_with_seed((b, h, tq, d), DType::F32, Device::Cpu, 1, 0)?
            .requires_grad_()?;
        let k = Tensor::randn_with_seed((b, h, tk, d), DType::F32, Device::Cpu, 2, 0)?
            .requires_grad_()?;
        let v = Tensor::randn_with_seed((b, h, tk, d), DType::F32, Device::Cpu, 3, 0)?
            .requires_grad_()?;
        let dy = Tensor::randn_with_seed((b, h, tq, d), DType::F32, Device::Cpu, 4, 0)?;
        let opts = AttentionOpts::default();

        let fused_f = time(200, || {
            tessera::ops::scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
        });
        let fused_fb = time(200, || {
            let y = tessera::ops::scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
            y.backward_with(&dy).unwrap();
            q.zero_grad();
            k.zero_grad();
            v.zero_grad();
        });
        let scale = 1.0 / (d as f64).sqrt();
        let dec = |bw: bool| {
            let s = q
                .matmul(&k.transpose(2, 3).unwrap())
                .unwrap()
                .affine(scale, 0.0)
                .unwrap();
            let y = s.softmax(3).unwrap().matmul(&v).unwrap();
            if bw {
                y.backward_with(&dy).unwrap();
                q.zero_grad();
                k.zero_grad();
                v.zero_grad();
            }
        };
        let dec_f = time(200, || dec(false));
        let dec_fb = time(200, || dec(true));
        println!("b{b} h{h} tq{tq} tk{tk} d{d}: fused fwd {fused_f:.3} ms fwd+bwd {fused_fb:.3} | decomposed fwd {dec_f:.3} fwd+bwd {dec_fb:.3}");
    }
    Ok(())
}
