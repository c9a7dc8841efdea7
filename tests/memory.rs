//! Autograd frees each saved activation as soon as the backward pass is done with it.
//! (Its own test binary: the byte counters are process-wide, so no other test may run beside it.)

use tessera::backend::cpu::{current_bytes, peak_bytes, reset_peak_bytes};
use tessera::{DType, Device, Tensor};

#[test]
fn backward_frees_saved_activations_as_it_goes() {
    const MIB: usize = 1 << 20;
    let x = Tensor::randn_with_seed((256, 1024), DType::F32, Device::Cpu, 1, 0)
        .unwrap()
        .requires_grad_()
        .unwrap(); // 1 MiB
    let base = current_bytes();
    // A chain of 24 unary ops: each saves its 1 MiB input for the backward pass.
    let mut y = x.clone();
    for _ in 0..24 {
        y = y.tanh().unwrap().affine(0.9, 0.1).unwrap();
    }
    let loss = y.sum_all().unwrap();
    drop(y);
    let held = current_bytes() - base;
    assert!(
        held >= 24 * MIB,
        "the graph should hold the saved activations, holds {held} bytes"
    );

    reset_peak_bytes();
    let before_backward = current_bytes();
    loss.backward().unwrap();
    let peak_extra = peak_bytes() - before_backward;
    // Freed as it goes: the backward pass never needs more than a few live gradients at once,
    // far less than keeping every saved activation plus every gradient (~2x `held`).
    assert!(
        peak_extra < 6 * MIB,
        "backward peaked {peak_extra} bytes above its start"
    );
    // After backward only the leaf's gradient (1 MiB) remains beyond the start, even though `loss` is alive.
    let after = current_bytes();
    assert!(
        after <= base + 2 * MIB + 4096,
        "after backward {} bytes above base remain",
        after - base
    );
    assert_eq!(x.grad().unwrap().dims(), &[256, 1024]);
}
