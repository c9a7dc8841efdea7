//! The caching host allocator (`tessera::alloc`) installed as this test binary's global
//! allocator, under a real workload.
//!
//! Fresh pages from the system are zero, so a kernel that reads an output buffer it never
//! wrote (or assumes `Vec::with_capacity` memory is zero) gets lucky under the system
//! allocator. Under the cache it gets whatever the last owner left. This test fills the cache
//! with NaN bytes, runs the forward and backward of the ops whose buffers pass the cache's
//! threshold, and requires bit-identical results to a run on fresh memory.

use std::alloc::{GlobalAlloc, Layout};
use tessera::alloc::{size_class, CachingAllocator, THRESHOLD};
use tessera::ops::{scaled_dot_product_attention, AttentionOpts, Conv2dParams};
use tessera::{DType, Device, Tensor};

#[global_allocator]
static ALLOC: CachingAllocator = CachingAllocator::new();

/// The tests empty and poison the one cache; they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bits of a tensor's values.
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F32, Device::Cpu, seed, 0).unwrap()
}

/// Forward and backward of matmul, softmax, GELU, LayerNorm, conv2d and attention on
/// tensors of 1-8 MiB; returns the loss and every gradient, as bits.
fn workload() -> Vec<Vec<u32>> {
    let x = randn(&[512, 1024], 1).requires_grad_().unwrap(); // 2 MiB
    let w = randn(&[1024, 512], 2).requires_grad_().unwrap();
    let g = randn(&[512], 3).requires_grad_().unwrap();
    let h = x.matmul(&w).unwrap(); // [512, 512]
    let h = h.layer_norm(Some(&g), None, 1e-5).unwrap().gelu().unwrap();
    let p = h.softmax(-1).unwrap();

    let img = randn(&[8, 32, 32, 32], 4).requires_grad_().unwrap(); // 1 MiB
    let k = randn(&[64, 32, 3, 3], 5).requires_grad_().unwrap();
    let params = Conv2dParams {
        padding: (1, 1),
        ..Default::default()
    };
    let c = img.conv2d(&k, None, params).unwrap(); // [8, 64, 32, 32]: 2 MiB

    let q = randn(&[4, 4, 256, 64], 6).requires_grad_().unwrap(); // 1 MiB
    let kv = randn(&[4, 4, 256, 64], 7).requires_grad_().unwrap();
    let a = scaled_dot_product_attention(&q, &kv, &kv, &AttentionOpts::default()).unwrap();

    let loss = p
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&c.sqr().unwrap().mean_all().unwrap())
        .unwrap()
        .add(&a.sqr().unwrap().mean_all().unwrap())
        .unwrap();
    loss.backward().unwrap();
    let mut out = vec![bits(&loss)];
    for t in [&x, &w, &g, &img, &k, &q, &kv] {
        let grad = t.grad().expect("every input gets a gradient");
        out.push(bits(&grad));
    }
    out
}

/// Fills cached blocks of every size class from 1 to 32 MiB with NaN bytes: eight of each
/// class up to 4 MiB (the workload allocates several tensors of one class, and an op's
/// output, the buffer a kernel must write in full, comes after its inputs), one above.
fn poison_the_cache() {
    let mut sizes = Vec::new();
    let mut size = THRESHOLD;
    while size <= 32 << 20 {
        let copies = if size <= 4 << 20 { 8 } else { 1 };
        sizes.extend(std::iter::repeat_n(size, copies));
        size = size_class(size + 1);
    }
    let layouts: Vec<Layout> = sizes
        .iter()
        .map(|&s| Layout::from_size_align(s, 64).unwrap())
        .collect();
    // SAFETY: each block is allocated, written within its size, and freed with its layout.
    unsafe {
        let blocks: Vec<*mut u8> = layouts.iter().map(|&l| ALLOC.alloc(l)).collect();
        for (&p, l) in blocks.iter().zip(&layouts) {
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xFF, l.size());
        }
        for (&p, &l) in blocks.iter().zip(&layouts) {
            ALLOC.dealloc(p, l);
        }
    }
}

/// Attention alone on 1 MiB tensors (a size class the poisoning covers eight deep): the
/// forward's output, whose tasks zero their own rows rather than the whole buffer up front,
/// and the key blocks' transposes land on poisoned blocks.
fn attention_workload() -> Vec<Vec<u32>> {
    let q = randn(&[4, 4, 256, 64], 8).requires_grad_().unwrap();
    let k = randn(&[4, 4, 256, 64], 9).requires_grad_().unwrap();
    let v = randn(&[4, 4, 256, 64], 10).requires_grad_().unwrap();
    let o = scaled_dot_product_attention(&q, &k, &v, &AttentionOpts::default()).unwrap();
    o.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![bits(&o)];
    for t in [&q, &k, &v] {
        out.push(bits(&t.grad().expect("every input gets a gradient")));
    }
    out
}

#[test]
fn attention_on_reused_memory_equals_attention_on_fresh_memory() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.release_cached();
    let fresh = attention_workload();
    ALLOC.release_cached();
    poison_the_cache();
    let reused = attention_workload();
    for (i, (a, b)) in fresh.iter().zip(&reused).enumerate() {
        let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing,
            0,
            "output {i}: {differing} of {} differ",
            a.len()
        );
    }
}

#[test]
fn results_on_reused_memory_equal_results_on_fresh_memory() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.release_cached();
    let fresh = workload();
    assert!(fresh
        .iter()
        .flatten()
        .all(|&b| f32::from_bits(b).is_finite()));

    ALLOC.release_cached();
    poison_the_cache();
    let before = ALLOC.stats();
    let reused = workload();
    let after = ALLOC.stats();
    assert!(
        after.hits > before.hits,
        "the workload must run on cached blocks: {before:?} -> {after:?}"
    );
    for (i, (a, b)) in fresh.iter().zip(&reused).enumerate() {
        assert_eq!(a.len(), b.len());
        let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing,
            0,
            "output {i}: {differing} of {} values differ",
            a.len()
        );
    }
}
