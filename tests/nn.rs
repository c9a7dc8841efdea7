//! nn layers: PyTorch state_dict names, freezing, train/eval behaviour, buffers, and the
//! attention layer against its math written out with primitive ops.

use tessera::nn::transformer::TransformerBlockConfig;
use tessera::nn::{BatchNorm2d, Dropout, Linear, Module, MultiHeadAttention, TransformerBlock};
use tessera::ops::AttentionOpts;
use tessera::{DType, Device, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F32, Device::Cpu, seed, 0).unwrap()
}
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.to_vec::<f32>()
        .unwrap()
        .iter()
        .zip(b.to_vec::<f32>().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn transformer_block_names_follow_pytorch_state_dict_style() {
    let mut cfg = TransformerBlockConfig::new(8, 2);
    cfg.cross_attention_dim = Some(6);
    let block = TransformerBlock::new(&cfg, Device::Cpu).unwrap();
    let names: Vec<String> = block
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let expected = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm_cross.weight",
        "norm_cross.bias",
        "cross_attn.q.weight",
        "cross_attn.q.bias",
        "cross_attn.kv.weight",
        "cross_attn.kv.bias",
        "cross_attn.proj.weight",
        "cross_attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ];
    assert_eq!(names, expected);
    let shapes: Vec<Vec<usize>> = block
        .named_parameters()
        .iter()
        .map(|(_, t)| t.dims().to_vec())
        .collect();
    assert_eq!(shapes[2], vec![24, 8]); // qkv
    assert_eq!(shapes[10], vec![16, 6]); // kv from the 6-wide context
    assert_eq!(shapes[16], vec![32, 8]); // fc1, ratio 4
}

#[test]
fn frozen_layers_get_no_gradient_and_unfreeze_restores_it() {
    let (a, b) = (
        Linear::new(4, 3, true, Device::Cpu).unwrap(),
        Linear::new(3, 2, true, Device::Cpu).unwrap(),
    );
    a.freeze().unwrap();
    let x = randn(&[5, 4], 1);
    b.forward(&a.forward(&x).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(a.weight.grad().is_none() && a.bias.as_ref().unwrap().grad().is_none());
    assert!(b.weight.grad().is_some());
    a.unfreeze().unwrap();
    b.forward(&a.forward(&x).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(a.weight.grad().is_some());
}

#[test]
fn batch_norm_tracks_statistics_in_training_and_uses_them_in_eval() {
    let bn = BatchNorm2d::new(3, Device::Cpu).unwrap();
    let x = randn(&[4, 3, 5, 5], 2).affine(2.0, 1.0).unwrap();
    let y_train = bn.forward(&x).unwrap();
    // Training output is normalized per channel.
    let m = y_train
        .mean_dims(&[0, 2, 3], false)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(m.iter().all(|v| v.abs() < 1e-5), "{m:?}");
    // Running mean moved 10% of the way toward the batch mean (~1).
    let rm = bn.running_mean.to_vec::<f32>().unwrap();
    assert!(rm.iter().all(|&v| v > 0.05 && v < 0.15), "{rm:?}");
    assert_eq!(bn.num_batches_tracked.to_vec::<i64>().unwrap(), vec![1]);
    let names: Vec<String> = bn.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked"
        ]
    );
    bn.eval();
    let y_eval = bn.forward(&x).unwrap();
    assert_eq!(bn.num_batches_tracked.to_vec::<i64>().unwrap(), vec![1]);
    assert!(
        max_diff(&y_eval, &y_train) > 0.1,
        "eval must use running statistics, not the batch's"
    );
}

#[test]
fn dropout_layer_is_identity_in_eval() {
    let d = Dropout::new(0.5);
    let x = randn(&[64, 64], 3);
    assert!(max_diff(&d.forward(&x).unwrap(), &x) > 0.1);
    d.eval();
    assert_eq!(max_diff(&d.forward(&x).unwrap(), &x), 0.0);
}

/// softmax(q k^T / sqrt(d)) v written with primitive ops, heads split by hand.
fn reference_attention(
    x: &Tensor,
    ctx: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    wv: &Tensor,
    heads: usize,
    causal: bool,
) -> Tensor {
    let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    let s = ctx.dims()[1];
    let d = c / heads;
    let split = |y: Tensor, len: usize| {
        y.reshape(vec![b, len, heads, d])
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
    };
    let q = split(x.matmul(&wq.t().unwrap()).unwrap(), t);
    let k = split(ctx.matmul(&wk.t().unwrap()).unwrap(), s);
    let v = split(ctx.matmul(&wv.t().unwrap()).unwrap(), s);
    let mut scores = q
        .matmul(&k.t().unwrap())
        .unwrap()
        .mul_scalar(1.0 / (d as f64).sqrt())
        .unwrap();
    if causal {
        let mask: Vec<u8> = (0..t * s).map(|i| ((i % s) > (i / s)) as u8).collect();
        scores = scores
            .masked_fill(
                &Tensor::from_vec(mask, (t, s), Device::Cpu).unwrap(),
                f64::NEG_INFINITY,
            )
            .unwrap();
    }
    let p = scores.softmax(-1).unwrap();
    p.matmul(&v)
        .unwrap()
        .permute(&[0, 2, 1, 3])
        .unwrap()
        .reshape(vec![b, t, c])
        .unwrap()
}

#[test]
fn self_and_cross_attention_layers_match_their_math() {
    let x = randn(&[2, 5, 8], 4);
    let mha = MultiHeadAttention::new_self(8, 2, false, Device::Cpu).unwrap();
    let named = mha.named_parameters();
    let qkv = &named[0].1;
    let (wq, wk, wv) = (
        qkv.narrow(0, 0, 8).unwrap(),
        qkv.narrow(0, 8, 8).unwrap(),
        qkv.narrow(0, 16, 8).unwrap(),
    );
    let proj = &named[1].1;
    let causal = AttentionOpts {
        causal: true,
        ..Default::default()
    };
    let got = mha.forward(&x, None, &causal).unwrap();
    let want = reference_attention(&x, &x, &wq, &wk, &wv, 2, true)
        .matmul(&proj.t().unwrap())
        .unwrap();
    assert!(
        max_diff(&got, &want) < 1e-5,
        "self-attention differs by {}",
        max_diff(&got, &want)
    );

    let ctx = randn(&[2, 7, 6], 5);
    let cross = MultiHeadAttention::new_cross(8, 6, 2, false, Device::Cpu).unwrap();
    let named = cross.named_parameters();
    let (wq, kv, proj) = (&named[0].1, &named[1].1, &named[2].1);
    let got = cross
        .forward(&x, Some(&ctx), &AttentionOpts::default())
        .unwrap();
    let want = reference_attention(
        &x,
        &ctx,
        wq,
        &kv.narrow(0, 0, 8).unwrap(),
        &kv.narrow(0, 8, 8).unwrap(),
        2,
        false,
    )
    .matmul(&proj.t().unwrap())
    .unwrap();
    assert!(
        max_diff(&got, &want) < 1e-5,
        "cross-attention differs by {}",
        max_diff(&got, &want)
    );
    assert!(
        cross.forward(&x, None, &AttentionOpts::default()).is_err(),
        "cross-attention without a context must be an error"
    );
}
