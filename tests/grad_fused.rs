//! Fused ops (layer_norm, group_norm, batch_norm, scaled_dot_product_attention,
//! cross_entropy, mse_loss): f64 gradient checks on awkward shapes (odd sizes, 1-element
//! groups, strided inputs), and decomposition checks comparing each fused op, forward and
//! input gradients, with the same math written with primitive tensor ops.

use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::ops::{
    cross_entropy, mse_loss, scaled_dot_product_attention, scaled_dot_product_attention_packed,
    AttentionOpts, CrossEntropyOpts,
};
use tessera::{CmpOp, DType, Device, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with_seed(shape.to_vec(), DType::F64, Device::Cpu, seed, 0).unwrap()
}
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    check_gradients(f, inputs, GradCheck::default()).unwrap();
}
fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (va, vb) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for (i, (x, y)) in va.iter().zip(&vb).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}
fn leaf(t: &Tensor) -> Tensor {
    t.detach()
        .contiguous_copy()
        .unwrap()
        .requires_grad_()
        .unwrap()
}
/// Runs `fused` and `reference` on fresh leaf copies of `inputs`, back-propagates the same
/// random weighting of the outputs through both, and compares outputs and every input gradient.
fn compare_with_reference(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) {
    let (la, lb): (Vec<Tensor>, Vec<Tensor>) = inputs.iter().map(|t| (leaf(t), leaf(t))).unzip();
    let (ya, yb) = (fused(&la).unwrap(), reference(&lb).unwrap());
    assert_close(&ya, &yb, 1e-10, &format!("{what} forward"));
    let w = Tensor::randn_with_seed(ya.shape().clone(), DType::F64, Device::Cpu, 99, 0).unwrap();
    ya.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    yb.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, (a, b)) in la.iter().zip(&lb).enumerate() {
        assert_close(
            &a.grad().unwrap(),
            &b.grad().unwrap(),
            1e-9,
            &format!("{what} gradient of input {i}"),
        );
    }
}

// ---- reference decompositions --------------------------------------------------------

/// Normalizes `x` over `dims` (biased variance), primitives only.
fn normalize_ref(x: &Tensor, dims: &[usize], eps: f64) -> Result<Tensor> {
    let mean = x.mean_dims(dims, true)?;
    let var = x.var_dims(dims, 0, true)?;
    x.sub(&mean)?.div(&var.add_scalar(eps)?.sqrt()?)
}
/// `[C]` parameter reshaped to broadcast over `[N, C, *]` of rank `rank`.
fn chan(p: &Tensor, rank: usize) -> Result<Tensor> {
    let mut shape = vec![1; rank];
    shape[1] = p.dims()[0];
    p.reshape(shape)
}
fn layer_norm_ref(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    normalize_ref(x, &[x.rank() - 1], eps)?.mul(w)?.add(b)
}
fn group_norm_ref(x: &Tensor, g: usize, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dims()[0];
    let grouped = x.reshape(vec![n, g, x.elem_count() / (n * g)])?;
    let y = normalize_ref(&grouped, &[2], eps)?.reshape(x.shape().clone())?;
    y.mul(&chan(w, x.rank())?)?.add(&chan(b, x.rank())?)
}
fn batch_norm_ref(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    normalize_ref(x, &dims, eps)?
        .mul(&chan(w, x.rank())?)?
        .add(&chan(b, x.rank())?)
}
/// log-softmax over the last dim from exp/sub/max_keepdim/sum_keepdim/log.
fn log_softmax_ref(x: &Tensor) -> Result<Tensor> {
    let shifted = x.sub(&x.max_keepdim(-1)?)?;
    shifted.sub(&shifted.exp()?.sum_keepdim(-1)?.log()?)
}

// ---- layer_norm --------------------------------------------------------------------

#[test]
fn layer_norm_gradients() {
    let eps = 1e-5;
    let (w, b) = (randn(&[5], 2), randn(&[5], 3));
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        &[randn(&[3, 5], 1), w.clone(), b.clone()],
    );
    // Rank 3, no affine parameters, odd sizes.
    check(
        |x| x[0].layer_norm(None, None, eps),
        &[randn(&[2, 3, 7], 4)],
    );
    // A transposed (non-contiguous) input, weight only.
    check(
        |x| x[0].t()?.layer_norm(Some(&x[1]), None, eps),
        &[randn(&[5, 3], 5), w],
    );
    // A single-element row: y = b, dx = 0.
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        &[randn(&[4, 1], 6), randn(&[1], 7), randn(&[1], 8)],
    );
}

#[test]
fn layer_norm_matches_decomposition() {
    let eps = 1e-5;
    compare_with_reference(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        |x| layer_norm_ref(&x[0], &x[1], &x[2], eps),
        &[randn(&[4, 3, 9], 10), randn(&[9], 11), randn(&[9], 12)],
        "layer_norm",
    );
    compare_with_reference(
        |x| {
            x[0].permute(&[1, 0])?
                .layer_norm(Some(&x[1]), Some(&x[2]), eps)
        },
        |x| layer_norm_ref(&x[0].permute(&[1, 0])?, &x[1], &x[2], eps),
        &[randn(&[6, 5], 13), randn(&[6], 14), randn(&[6], 15)],
        "layer_norm (strided)",
    );
    // Rows of 600 (nine blocks of 64 lanes and a tail of 24 for the row sums; two pieces of
    // 256 and a tail of 88 for the backward's first pass) and 70 of them (past the 64 rows of
    // one backward task): every phase of the row sums and of the weight partials.
    compare_with_reference(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        |x| layer_norm_ref(&x[0], &x[1], &x[2], eps),
        &[randn(&[70, 600], 16), randn(&[600], 17), randn(&[600], 18)],
        "layer_norm (rows of 600)",
    );
}

#[test]
fn layer_norm_errors() {
    let x = randn(&[2, 4], 1);
    assert!(x.layer_norm(Some(&randn(&[3], 2)), None, 1e-5).is_err());
    assert!(x
        .layer_norm(
            None,
            Some(&randn(&[4], 2).to_dtype(DType::F32).unwrap()),
            1e-5
        )
        .is_err());
}

// ---- group_norm --------------------------------------------------------------------

#[test]
fn group_norm_gradients() {
    let eps = 1e-5;
    let (w, b) = (randn(&[6], 21), randn(&[6], 22));
    for groups in [1, 3, 6] {
        check(
            |x| x[0].group_norm(groups, Some(&x[1]), Some(&x[2]), eps),
            &[randn(&[2, 6, 3], 20), w.clone(), b.clone()],
        );
    }
    // Rank 4, non-contiguous input (spatial dims swapped).
    check(
        |x| x[0].transpose(2, 3)?.group_norm(2, Some(&x[1]), None, eps),
        &[randn(&[2, 4, 3, 2], 23), randn(&[4], 24)],
    );
    // 1-element groups: one channel, no spatial dims.
    check(
        |x| x[0].group_norm(4, Some(&x[1]), Some(&x[2]), eps),
        &[randn(&[3, 4], 25), randn(&[4], 26), randn(&[4], 27)],
    );
}

#[test]
fn group_norm_matches_decomposition() {
    let eps = 1e-5;
    for groups in [1, 2, 6] {
        compare_with_reference(
            |x| x[0].group_norm(groups, Some(&x[1]), Some(&x[2]), eps),
            |x| group_norm_ref(&x[0], groups, &x[1], &x[2], eps),
            &[randn(&[3, 6, 2, 5], 30), randn(&[6], 31), randn(&[6], 32)],
            "group_norm",
        );
    }
    // 45 samples in 3 groups: 135 statistic rows, three backward tasks of up to 64 rows, whose
    // weight and bias partials are added in task order.
    compare_with_reference(
        |x| x[0].group_norm(3, Some(&x[1]), Some(&x[2]), eps),
        |x| group_norm_ref(&x[0], 3, &x[1], &x[2], eps),
        &[randn(&[45, 6, 2, 3], 33), randn(&[6], 34), randn(&[6], 35)],
        "group_norm (three backward tasks)",
    );
}

#[test]
fn group_norm_errors() {
    let x = randn(&[2, 6, 3], 1);
    assert!(x.group_norm(4, None, None, 1e-5).is_err());
    assert!(x.group_norm(0, None, None, 1e-5).is_err());
    assert!(randn(&[6], 1).group_norm(2, None, None, 1e-5).is_err());
}

// ---- batch_norm --------------------------------------------------------------------

#[test]
fn batch_norm_gradients() {
    let eps = 1e-5;
    let (w, b) = (randn(&[3], 41), randn(&[3], 42));
    // Training with running statistics (fresh buffers per call: gradcheck calls f many times).
    let train = |x: &[Tensor]| {
        let rm = Tensor::zeros(3, DType::F64, Device::Cpu)?;
        let rv = Tensor::ones(3, DType::F64, Device::Cpu)?;
        x[0].batch_norm(
            Some(&rm),
            Some(&rv),
            Some(&x[1]),
            Some(&x[2]),
            true,
            0.1,
            eps,
        )
    };
    check(train, &[randn(&[4, 3, 5], 40), w.clone(), b.clone()]);
    // Training, rank 2 (no spatial dims), odd batch, no running stats, non-contiguous.
    check(
        |x| {
            x[0].t()?
                .batch_norm(None, None, Some(&x[1]), None, true, 0.1, eps)
        },
        &[randn(&[3, 5], 43), w.clone()],
    );
    // Eval: still differentiable w.r.t. input, weight and bias.
    let rm = randn(&[3], 44);
    let rv = randn(&[3], 45).sqr().unwrap().add_scalar(0.5).unwrap();
    check(
        |x| {
            x[0].batch_norm(
                Some(&rm),
                Some(&rv),
                Some(&x[1]),
                Some(&x[2]),
                false,
                0.1,
                eps,
            )
        },
        &[randn(&[2, 3, 4], 46), w, b],
    );
}

#[test]
fn batch_norm_matches_decomposition() {
    let eps = 1e-5;
    compare_with_reference(
        |x| x[0].batch_norm(None, None, Some(&x[1]), Some(&x[2]), true, 0.1, eps),
        |x| batch_norm_ref(&x[0], &x[1], &x[2], eps),
        &[randn(&[5, 4, 3, 2], 50), randn(&[4], 51), randn(&[4], 52)],
        "batch_norm (train)",
    );
    let rm = randn(&[4], 53);
    let rv = randn(&[4], 54).sqr().unwrap().add_scalar(0.5).unwrap();
    compare_with_reference(
        |x| {
            x[0].batch_norm(
                Some(&rm),
                Some(&rv),
                Some(&x[1]),
                Some(&x[2]),
                false,
                0.1,
                eps,
            )
        },
        |x| {
            let y = x[0]
                .sub(&chan(&rm, 3)?)?
                .div(&chan(&rv.add_scalar(eps)?.sqrt()?, 3)?)?;
            y.mul(&chan(&x[1], 3)?)?.add(&chan(&x[2], 3)?)
        },
        &[randn(&[3, 4, 5], 55), randn(&[4], 56), randn(&[4], 57)],
        "batch_norm (eval)",
    );
}

#[test]
fn batch_norm_running_statistics() {
    let eps = 1e-5;
    let x = randn(&[6, 3, 4], 60)
        .mul_scalar(2.0)
        .unwrap()
        .add_scalar(1.0)
        .unwrap();
    let w = randn(&[3], 61).requires_grad_().unwrap();
    let rm = Tensor::full(0.5, 3, DType::F64, Device::Cpu).unwrap();
    let rv = Tensor::full(2.0, 3, DType::F64, Device::Cpu).unwrap();
    let y = x
        .batch_norm(Some(&rm), Some(&rv), Some(&w), None, true, 0.1, eps)
        .unwrap();
    // The update is not part of the graph, and backward through the output still works.
    y.sum_all().unwrap().backward().unwrap();
    assert!(rm.grad_fn_is_none_for_test());
    let batch_mean = x.mean_dims(&[0, 2], false).unwrap();
    let batch_var = x.var_dims(&[0, 2], 1, false).unwrap();
    let want_m = batch_mean
        .mul_scalar(0.1)
        .unwrap()
        .add_scalar(0.45)
        .unwrap();
    let want_v = batch_var.mul_scalar(0.1).unwrap().add_scalar(1.8).unwrap();
    assert_close(&rm, &want_m, 1e-12, "running_mean");
    assert_close(&rv, &want_v, 1e-12, "running_var");
    // Eval uses the updated running statistics.
    let ye = x
        .batch_norm(Some(&rm), Some(&rv), Some(&w), None, false, 0.1, eps)
        .unwrap();
    let want = x
        .sub(&chan(&rm, 3).unwrap())
        .unwrap()
        .div(&chan(&rv.add_scalar(eps).unwrap().sqrt().unwrap(), 3).unwrap())
        .unwrap()
        .mul(&chan(&w.detach(), 3).unwrap())
        .unwrap();
    assert_close(&ye, &want, 1e-12, "eval output");
    // Eval leaves the running statistics alone.
    assert_close(&rm, &want_m, 1e-12, "running_mean after eval");
    // Errors: eval without statistics, a single value per channel in training.
    assert!(x
        .batch_norm(None, None, None, None, false, 0.1, eps)
        .is_err());
    assert!(randn(&[1, 3], 1)
        .batch_norm(None, None, None, None, true, 0.1, eps)
        .is_err());
}

trait GradFnProbe {
    fn grad_fn_is_none_for_test(&self) -> bool;
}
impl GradFnProbe for Tensor {
    fn grad_fn_is_none_for_test(&self) -> bool {
        self.is_leaf() && !self.requires_grad()
    }
}

// ---- attention ---------------------------------------------------------------------

fn u8_tensor(v: Vec<u8>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape.to_vec(), Device::Cpu).unwrap()
}

struct MaskCase {
    opts: AttentionOpts,
    /// The combined `[B, H, Tq, Tk]` "may attend" mask, built independently on the host.
    allowed: Vec<u8>,
}

/// Masks for `[b, h, tq, tk]`: causal, key padding (per batch, the last `b_idx + 1` keys
/// padded) and an attn_mask broadcast from `[B, 1, Tq, Tk]`, each optional.
fn mask_case(
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    causal: bool,
    pad: bool,
    am: bool,
) -> MaskCase {
    let padded = |bi: usize, j: usize| pad && j + bi + 1 >= tk;
    let am_at = |bi: usize, i: usize, j: usize| !(i * 7 + j * 3 + bi).is_multiple_of(4);
    let mut allowed = Vec::new();
    for bi in 0..b {
        for _ in 0..h {
            for i in 0..tq {
                for j in 0..tk {
                    let ok = !(padded(bi, j) || (causal && j > i) || (am && !am_at(bi, i, j)));
                    allowed.push(ok as u8);
                }
            }
        }
    }
    let kpm = pad.then(|| {
        let v = (0..b)
            .flat_map(|bi| (0..tk).map(move |j| padded(bi, j) as u8))
            .collect();
        u8_tensor(v, &[b, tk])
    });
    let attn = am.then(|| {
        let v = (0..b)
            .flat_map(|bi| (0..tq).flat_map(move |i| (0..tk).map(move |j| am_at(bi, i, j) as u8)))
            .collect();
        u8_tensor(v, &[b, 1, tq, tk])
    });
    MaskCase {
        opts: AttentionOpts {
            causal,
            attn_mask: attn,
            key_padding_mask: kpm,
            scale: None,
        },
        allowed,
    }
}

/// softmax(q k^T scale, masked) v from matmul/exp/max_keepdim/sum_keepdim/where_cond.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, allowed: &Tensor) -> Result<Tensor> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let s = q.matmul(&k.t()?)?.mul_scalar(scale)?;
    let hidden = allowed.cmp_scalar(0.0, CmpOp::Eq)?;
    let s = s.masked_fill(&hidden, -1e30)?;
    let e = s.sub(&s.max_keepdim(-1)?)?.exp()?;
    let p = e.div(&e.sum_keepdim(-1)?)?;
    p.matmul(v)
}

#[test]
fn attention_gradients() {
    let (b, h, tq, tk, d, dv) = (2, 2, 5, 7, 3, 4);
    for (causal, pad, am) in [
        (false, false, false),
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, true, true),
    ] {
        let case = mask_case(b, h, tq, tk, causal, pad, am);
        let opts = case.opts.clone();
        check(
            move |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts),
            &[
                randn(&[b, h, tq, d], 70),
                randn(&[b, h, tk, d], 71),
                randn(&[b, h, tk, dv], 72),
            ],
        );
    }
    // A rank-2 `[Tq, Tk]` attn_mask broadcast over batch and heads, against the decomposition.
    let m2: Vec<u8> = (0..tq * tk).map(|i| (i % 3 != 1) as u8).collect();
    let mut allowed = Vec::new();
    for _ in 0..b * h {
        allowed.extend_from_slice(&m2);
    }
    let allowed = u8_tensor(allowed, &[b, h, tq, tk]);
    let opts = AttentionOpts {
        attn_mask: Some(u8_tensor(m2, &[tq, tk])),
        ..Default::default()
    };
    let inputs = [
        randn(&[b, h, tq, d], 76),
        randn(&[b, h, tk, d], 77),
        randn(&[b, h, tk, dv], 78),
    ];
    compare_with_reference(
        |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts),
        |x| attention_ref(&x[0], &x[1], &x[2], &allowed),
        &inputs,
        "attention with a [Tq, Tk] mask",
    );
    // Strided q/k/v: permutes of [B, T, H, D] projections, with an explicit scale.
    let opts = AttentionOpts {
        causal: true,
        scale: Some(0.3),
        ..Default::default()
    };
    check(
        move |x| {
            let p = |t: &Tensor| t.permute(&[0, 2, 1, 3]);
            scaled_dot_product_attention(&p(&x[0])?, &p(&x[1])?, &p(&x[2])?, &opts)
        },
        &[
            randn(&[2, 6, 3, 4], 73),
            randn(&[2, 6, 3, 4], 74),
            randn(&[2, 6, 3, 5], 75),
        ],
    );
}

#[test]
fn attention_matches_decomposition() {
    // Cross-attention shapes (Tq != Tk, Dv != D), long enough to span several key and query
    // blocks; the key counts take each CPU key-tile width (16, 32, 64, and the forward's 128
    // at 150 keys without a causal mask).
    for (tq, tk) in [(5, 7), (20, 24), (37, 150), (70, 70)] {
        let (b, h, d, dv) = (2, 2, 8, 6);
        for (causal, pad, am) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let case = mask_case(b, h, tq, tk, causal, pad, am);
            let allowed = u8_tensor(case.allowed.clone(), &[b, h, tq, tk]);
            // Skip combinations that hide a whole row: the reference is undefined there.
            let rows_ok = case.allowed.chunks(tk).all(|r| r.contains(&1));
            if !rows_ok {
                continue;
            }
            let opts = case.opts.clone();
            compare_with_reference(
                |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts),
                |x| attention_ref(&x[0], &x[1], &x[2], &allowed),
                &[
                    randn(&[b, h, tq, d], 80),
                    randn(&[b, h, tk, d], 81),
                    randn(&[b, h, tk, dv], 82),
                ],
                &format!("attention tq={tq} tk={tk} causal={causal} pad={pad} mask={am}"),
            );
        }
    }
}

/// `[B, T, 3*H*D]` (a fused qkv projection's output) as the packed `[3, B, H, T, D]` view.
fn packed_heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, t, c3) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    x.reshape(vec![b, t, 3, h, c3 / (3 * h)])?
        .permute(&[2, 0, 3, 1, 4])
}

#[test]
fn packed_attention_matches_the_three_views_and_has_gradients() {
    // The packed entry point against the unpacked op on the packed view's three slices:
    // outputs and the gradient of the one packed input, for each mask kind, over several
    // key blocks (T 70), and an f64 gradient check on a small case.
    let (b, h, t, d) = (2, 2, 70, 8);
    for (causal, pad, am) in [
        (false, false, false),
        (true, false, false),
        (true, true, true),
    ] {
        let case = mask_case(b, h, t, t, causal, pad, am);
        if !case.allowed.chunks(t).all(|r| r.contains(&1)) {
            continue;
        }
        let opts = case.opts.clone();
        compare_with_reference(
            |x| scaled_dot_product_attention_packed(&packed_heads(&x[0], h)?, &opts),
            |x| {
                let p = packed_heads(&x[0], h)?;
                let part = |i: usize| p.narrow(0, i, 1)?.squeeze(0);
                scaled_dot_product_attention(&part(0)?, &part(1)?, &part(2)?, &opts)
            },
            &[randn(&[b, t, 3 * h * d], 90)],
            &format!("packed attention causal={causal} pad={pad} mask={am}"),
        );
    }
    let opts = AttentionOpts {
        causal: true,
        ..Default::default()
    };
    check(
        move |x| scaled_dot_product_attention_packed(&packed_heads(&x[0], 2)?, &opts),
        &[randn(&[2, 5, 3 * 2 * 3], 91)],
    );
    // A contiguous [3, B, H, T, D] input works too; anything else is refused.
    let o = AttentionOpts::default();
    let qkv = randn(&[3, 1, 2, 4, 5], 92);
    let y = scaled_dot_product_attention_packed(&qkv, &o).unwrap();
    assert_eq!(y.dims(), &[1, 2, 4, 5]);
    assert!(scaled_dot_product_attention_packed(&randn(&[2, 1, 2, 4, 5], 93), &o).is_err());
    assert!(scaled_dot_product_attention_packed(&randn(&[3, 2, 4, 5], 94), &o).is_err());
}

#[test]
fn attention_skips_key_blocks_a_row_cannot_see() {
    // 300 keys are three key blocks of the CPU forward's wide tile (128, 128, 44) and five
    // of the backward's (64 x 4, 44). Batch 0 hides keys 128..256 (a whole wide block, two
    // whole 64-key blocks), batch 1 everything from key 64 on: rows whose earlier blocks were
    // live then meet a block with no visible key, which must leave their running maximum, sum
    // and output alone (and must not turn its zeros into probabilities).
    let (b, h, tq, tk, d, dv) = (2, 2, 20, 300, 8, 6);
    let hidden = |bi: usize, j: usize| {
        if bi == 0 {
            (128..256).contains(&j)
        } else {
            j >= 64
        }
    };
    let kpm: Vec<u8> = (0..b)
        .flat_map(|bi| (0..tk).map(move |j| hidden(bi, j) as u8))
        .collect();
    let mut allowed = Vec::new();
    for bi in 0..b {
        for _ in 0..h * tq {
            allowed.extend((0..tk).map(|j| !hidden(bi, j) as u8));
        }
    }
    let allowed = u8_tensor(allowed, &[b, h, tq, tk]);
    let opts = AttentionOpts {
        key_padding_mask: Some(u8_tensor(kpm, &[b, tk])),
        ..Default::default()
    };
    compare_with_reference(
        |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts),
        |x| attention_ref(&x[0], &x[1], &x[2], &allowed),
        &[
            randn(&[b, h, tq, d], 83),
            randn(&[b, h, tk, d], 84),
            randn(&[b, h, tk, dv], 85),
        ],
        "attention with whole key blocks hidden",
    );
}

#[test]
fn attention_fully_masked_rows_give_zeros() {
    let (b, h, tq, tk, d) = (2, 1, 3, 4, 2);
    // Batch 1 has every key padded; batch 0's attn_mask hides all keys from query row 1.
    let mut kpm = vec![0u8; b * tk];
    kpm[tk..].iter_mut().for_each(|v| *v = 1);
    let mut am = vec![1u8; b * tq * tk];
    am[tk..2 * tk].iter_mut().for_each(|v| *v = 0);
    let opts = AttentionOpts {
        key_padding_mask: Some(u8_tensor(kpm, &[b, tk])),
        attn_mask: Some(u8_tensor(am, &[b, 1, tq, tk])),
        ..Default::default()
    };
    let q = randn(&[b, h, tq, d], 90).requires_grad_().unwrap();
    let k = randn(&[b, h, tk, d], 91).requires_grad_().unwrap();
    let v = randn(&[b, h, tk, d], 92).requires_grad_().unwrap();
    let o = scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
    let ov = o.to_vec_f64().unwrap();
    assert!(ov.iter().all(|x| x.is_finite()));
    assert!(ov[d..2 * d].iter().all(|&x| x == 0.0), "row 1 of batch 0");
    assert!(ov[tq * d..].iter().all(|&x| x == 0.0), "batch 1");
    o.sum_all().unwrap().backward().unwrap();
    for t in [&q, &k, &v] {
        let g = t.grad().unwrap().to_vec_f64().unwrap();
        assert!(g.iter().all(|x| x.is_finite()));
    }
    let gq = q.grad().unwrap().to_vec_f64().unwrap();
    assert!(gq[d..2 * d].iter().all(|&x| x == 0.0));
    assert!(gq[tq * d..].iter().all(|&x| x == 0.0));
    // The other rows still match the gradient check.
    let opts2 = opts.clone();
    check(
        move |x| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts2),
        &[q.detach(), k.detach(), v.detach()],
    );
}

#[test]
fn attention_errors() {
    let q = randn(&[1, 2, 3, 4], 1);
    let k = randn(&[1, 2, 5, 4], 2);
    let v = randn(&[1, 2, 5, 6], 3);
    let o = AttentionOpts::default();
    assert!(scaled_dot_product_attention(&q, &randn(&[1, 2, 5, 3], 4), &v, &o).is_err());
    assert!(scaled_dot_product_attention(&q, &k, &randn(&[1, 2, 4, 6], 4), &o).is_err());
    assert!(scaled_dot_product_attention(&randn(&[2, 3, 4], 1), &k, &v, &o).is_err());
    let bad_mask = AttentionOpts {
        attn_mask: Some(u8_tensor(vec![1; 4 * 5], &[4, 5])),
        ..Default::default()
    };
    assert!(scaled_dot_product_attention(&q, &k, &v, &bad_mask).is_err());
    let bad_pad = AttentionOpts {
        key_padding_mask: Some(u8_tensor(vec![0; 4], &[1, 4])),
        ..Default::default()
    };
    assert!(scaled_dot_product_attention(&q, &k, &v, &bad_pad).is_err());
    let ok = scaled_dot_product_attention(&q, &k, &v, &o).unwrap();
    assert_eq!(ok.dims(), &[1, 2, 3, 6]);
}

// ---- losses ------------------------------------------------------------------------

fn targets(v: &[i64]) -> Tensor {
    Tensor::from_slice(v, v.len(), Device::Cpu).unwrap()
}

/// Cross-entropy from log-softmax (exp/max/sum/log) and a one-hot built with `cmp`.
fn cross_entropy_ref(x: &Tensor, t: &Tensor, ignore: i64, eps: f64) -> Result<Tensor> {
    let c = x.dims()[1];
    let logp = log_softmax_ref(x)?;
    let classes = Tensor::arange(c, DType::I64, Device::Cpu)?;
    let onehot = t
        .unsqueeze(1)?
        .cmp(&classes, CmpOp::Eq)?
        .to_dtype(DType::F64)?;
    let valid = t
        .cmp_scalar(ignore as f64, CmpOp::Ne)?
        .to_dtype(DType::F64)?;
    let nll = logp.mul(&onehot)?.sum(1)?.neg()?;
    let smooth = logp.mean(1)?.neg()?;
    let per_row = nll.mul_scalar(1.0 - eps)?.add(&smooth.mul_scalar(eps)?)?;
    per_row.mul(&valid)?.sum_all()?.div(&valid.sum_all()?)
}

#[test]
fn cross_entropy_gradients() {
    let t = targets(&[2, -100, 0, 4, 4]);
    for (ignore, eps) in [
        (None, 0.0),
        (Some(-100), 0.0),
        (Some(-100), 0.1),
        (Some(4), 0.25),
    ] {
        // ignore_index = 4 makes -100 an out-of-range class: use in-range targets there.
        let tt = if ignore == Some(-100) {
            t.clone()
        } else {
            targets(&[2, 1, 0, 4, 4])
        };
        let opts = CrossEntropyOpts {
            ignore_index: ignore,
            label_smoothing: eps,
        };
        check(
            move |x| cross_entropy(&x[0], &tt, opts),
            &[randn(&[5, 5], 100).mul_scalar(2.0).unwrap()],
        );
    }
    // Non-contiguous logits.
    let tt = targets(&[0, 2, 1]);
    check(
        move |x| cross_entropy(&x[0].t()?, &tt, CrossEntropyOpts::default()),
        &[randn(&[4, 3], 101)],
    );
}

#[test]
fn cross_entropy_matches_decomposition() {
    let t = targets(&[3, -100, 0, 6, 6, 2, -100]);
    for eps in [0.0, 0.1] {
        let opts = CrossEntropyOpts {
            ignore_index: Some(-100),
            label_smoothing: eps,
        };
        let tt = t.clone();
        compare_with_reference(
            |x| cross_entropy(&x[0], &tt, opts),
            |x| cross_entropy_ref(&x[0], &tt, -100, eps),
            &[randn(&[7, 7], 110).mul_scalar(3.0).unwrap()],
            &format!("cross_entropy eps={eps}"),
        );
    }
}

#[test]
fn cross_entropy_edge_cases() {
    let x = randn(&[3, 4], 120);
    // Out-of-range targets are errors, not panics.
    assert!(cross_entropy(&x, &targets(&[0, 4, 1]), CrossEntropyOpts::default()).is_err());
    assert!(cross_entropy(&x, &targets(&[0, -1, 1]), CrossEntropyOpts::default()).is_err());
    assert!(cross_entropy(&x, &targets(&[0, 1]), CrossEntropyOpts::default()).is_err());
    let f_targets = Tensor::zeros(3, DType::F64, Device::Cpu).unwrap();
    assert!(cross_entropy(&x, &f_targets, CrossEntropyOpts::default()).is_err());
    // All rows ignored: NaN like PyTorch, and a zero (finite) gradient.
    let xl = x.clone().requires_grad_().unwrap();
    let opts = CrossEntropyOpts {
        ignore_index: Some(-100),
        label_smoothing: 0.0,
    };
    let l = cross_entropy(&xl, &targets(&[-100, -100, -100]), opts).unwrap();
    assert!(l.item().unwrap().is_nan());
    l.backward().unwrap();
    assert!(xl
        .grad()
        .unwrap()
        .to_vec_f64()
        .unwrap()
        .iter()
        .all(|&g| g == 0.0));
    // Large logits do not overflow.
    let big = Tensor::from_vec(vec![1000.0f32, 0.0, -1000.0, 999.0], (2, 2), Device::Cpu).unwrap();
    let l = cross_entropy(&big, &targets(&[0, 0]), CrossEntropyOpts::default()).unwrap();
    // Row 0: nll ~ 0; row 1: lse ~ 999, nll ~ 1999.
    assert!((l.item().unwrap() - 999.5).abs() < 1e-3, "{l:?}");
}

#[test]
fn mse_loss_value_and_gradients() {
    let (a, b) = (randn(&[3, 5], 130), randn(&[3, 5], 131));
    check(|x| mse_loss(&x[0], &x[1]), &[a.clone(), b.clone()]);
    let want: f64 = a
        .to_vec_f64()
        .unwrap()
        .iter()
        .zip(b.to_vec_f64().unwrap())
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        / 15.0;
    assert!((mse_loss(&a, &b).unwrap().item().unwrap() - want).abs() < 1e-12);
    assert!(mse_loss(&a, &randn(&[5, 3], 1)).is_err());
}

// ---- f32, empty inputs, memory -----------------------------------------------------

/// The f32 kernels agree with the f64 ones (forward and input gradients) to f32 precision.
#[test]
fn f32_agrees_with_f64() {
    let case = mask_case(2, 2, 9, 11, true, true, false);
    let opts = case.opts.clone();
    type F = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
    let runs: Vec<(&str, F, Vec<Tensor>)> = vec![
        (
            "layer_norm",
            Box::new(|x: &[Tensor]| x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5)),
            vec![randn(&[4, 6], 1), randn(&[6], 2), randn(&[6], 3)],
        ),
        (
            "layer_norm, rows of 200",
            Box::new(|x: &[Tensor]| x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5)),
            vec![randn(&[70, 200], 21), randn(&[200], 22), randn(&[200], 23)],
        ),
        (
            "group_norm",
            Box::new(|x: &[Tensor]| x[0].group_norm(2, Some(&x[1]), Some(&x[2]), 1e-5)),
            vec![randn(&[3, 4, 5], 4), randn(&[4], 5), randn(&[4], 6)],
        ),
        (
            "batch_norm",
            Box::new(|x: &[Tensor]| {
                x[0].batch_norm(None, None, Some(&x[1]), Some(&x[2]), true, 0.1, 1e-5)
            }),
            vec![randn(&[3, 4, 5], 7), randn(&[4], 8), randn(&[4], 9)],
        ),
        (
            "attention",
            Box::new(move |x: &[Tensor]| scaled_dot_product_attention(&x[0], &x[1], &x[2], &opts)),
            vec![
                randn(&[2, 2, 9, 4], 10),
                randn(&[2, 2, 11, 4], 11),
                randn(&[2, 2, 11, 3], 12),
            ],
        ),
        (
            "cross_entropy",
            Box::new(|x: &[Tensor]| {
                let opts = CrossEntropyOpts {
                    ignore_index: Some(-100),
                    label_smoothing: 0.1,
                };
                cross_entropy(&x[0], &targets(&[1, -100, 3, 0]), opts)
            }),
            vec![randn(&[4, 5], 13)],
        ),
    ];
    for (name, f, inputs) in runs {
        let l64: Vec<Tensor> = inputs.iter().map(leaf).collect();
        let l32: Vec<Tensor> = inputs
            .iter()
            .map(|t| leaf(&t.to_dtype(DType::F32).unwrap()))
            .collect();
        let (y64, y32) = (f(&l64).unwrap(), f(&l32).unwrap());
        assert_eq!(y32.dtype(), DType::F32, "{name}");
        assert_close(&y32, &y64, 1e-5, &format!("{name} f32 forward"));
        y64.sum_all().unwrap().backward().unwrap();
        y32.sum_all().unwrap().backward().unwrap();
        for (i, (a, b)) in l32.iter().zip(&l64).enumerate() {
            assert_close(
                &a.grad().unwrap(),
                &b.grad().unwrap(),
                1e-4,
                &format!("{name} f32 gradient {i}"),
            );
        }
    }
}

/// Zero-size dimensions give empty (or well-defined) results, never panics.
#[test]
fn empty_inputs_do_not_panic() {
    let e = |s: &[usize]| Tensor::zeros(s.to_vec(), DType::F64, Device::Cpu).unwrap();
    assert_eq!(
        e(&[0, 5]).layer_norm(None, None, 1e-5).unwrap().dims(),
        &[0, 5]
    );
    assert_eq!(
        e(&[3, 0]).layer_norm(None, None, 1e-5).unwrap().dims(),
        &[3, 0]
    );
    assert_eq!(
        e(&[2, 4, 0])
            .group_norm(2, None, None, 1e-5)
            .unwrap()
            .dims(),
        &[2, 4, 0]
    );
    let o = AttentionOpts::default();
    let out =
        scaled_dot_product_attention(&e(&[1, 2, 3, 4]), &e(&[1, 2, 0, 4]), &e(&[1, 2, 0, 5]), &o)
            .unwrap();
    assert_eq!(out.dims(), &[1, 2, 3, 5]);
    assert!(out.to_vec_f64().unwrap().iter().all(|&v| v == 0.0));
    let out =
        scaled_dot_product_attention(&e(&[1, 2, 0, 4]), &e(&[1, 2, 3, 4]), &e(&[1, 2, 3, 5]), &o)
            .unwrap();
    assert_eq!(out.dims(), &[1, 2, 0, 5]);
}

/// Attention memory is linear in the sequence length: forward and backward at T = 2048 never
/// hold anything near the `T x T` score matrix (16 MiB in f32); measured ~0.65 MiB.
#[test]
fn attention_memory_is_linear() {
    use tessera::backend::cpu::{current_bytes, peak_bytes, reset_peak_bytes};
    let t = 2048;
    let mk = |seed| {
        Tensor::randn_with_seed(vec![1, 1, t, 16], DType::F32, Device::Cpu, seed, 0)
            .unwrap()
            .requires_grad_()
            .unwrap()
    };
    let (q, k, v) = (mk(1), mk(2), mk(3));
    let opts = AttentionOpts {
        causal: true,
        ..Default::default()
    };
    let before = current_bytes();
    reset_peak_bytes();
    let o = scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
    o.sum_all().unwrap().backward().unwrap();
    let used = peak_bytes().saturating_sub(before);
    // Inputs are 128 KiB each; everything the op and its backward allocate is a few of those.
    // (Other tests run concurrently and allocate far less than the 4 MiB margin.)
    assert!(used < 4 << 20, "attention used {used} bytes at T = {t}");
}
