//! CLIP: the IDX reader's errors, the seed model's size, the contrastive loss (value and
//! gradient), caption de-duplication being exact, exact resume, and learning on real
//! Fashion-MNIST (skipped, with a printed line, when the data is absent).

mod common;

use std::io::Write;
use std::path::PathBuf;
use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::data::idx;
use tessera::data::mnist::{load_dataset, CaptionedImages, DatasetName, Split};
use tessera::models::clip::{
    caption_contrastive_loss, contrastive_loss, tokenize, Clip, ClipConfig, ContrastiveTargets,
    TextBatch,
};
use tessera::nn::Module;
use tessera::random::Rng;
use tessera::train::clip::{caption_batch, shifted_images, train_clip, zero_shot, ClipTrainConfig};
use tessera::{DType, Device, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera_clip_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [idx::MAGIC_IMAGES, count, rows, cols] {
        b.extend(w.to_be_bytes());
    }
    b.extend_from_slice(pixels);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_reads_plain_and_gzip_and_names_the_file_on_errors() {
    let dir = temp_dir("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let raw = idx_images(2, 3, 4, &pixels);
    let plain = dir.join("imgs-idx3-ubyte");
    let gz = dir.join("imgs-idx3-ubyte.gz");
    std::fs::write(&plain, &raw).unwrap();
    std::fs::write(&gz, gzip(&raw)).unwrap();
    for p in [&plain, &gz] {
        let im = idx::read_images(p).unwrap();
        assert_eq!((im.count, im.rows, im.cols), (2, 3, 4));
        assert_eq!(im.pixels, pixels);
    }
    let mut labels = Vec::new();
    labels.extend(idx::MAGIC_LABELS.to_be_bytes());
    labels.extend(3u32.to_be_bytes());
    labels.extend([7u8, 0, 9]);
    let lp = dir.join("labels-idx1-ubyte.gz");
    std::fs::write(&lp, gzip(&labels)).unwrap();
    assert_eq!(idx::read_labels(&lp).unwrap(), vec![7, 0, 9]);

    let check = |err: tessera::Error, path: &PathBuf, what: &str| {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(what),
            "error {msg:?} should name {} and say {what:?}",
            path.display()
        );
    };
    // Missing.
    let missing = dir.join("nope-idx3-ubyte.gz");
    check(idx::read_images(&missing).unwrap_err(), &missing, "");
    // Truncated payload (gzip intact) and truncated header.
    let short = dir.join("short-idx3-ubyte.gz");
    std::fs::write(&short, gzip(&raw[..raw.len() - 5])).unwrap();
    check(idx::read_images(&short).unwrap_err(), &short, "truncated");
    let stub = dir.join("stub-idx3-ubyte");
    std::fs::write(&stub, &raw[..6]).unwrap();
    check(idx::read_images(&stub).unwrap_err(), &stub, "truncated");
    // A truncated gzip stream.
    let cut = dir.join("cut-idx3-ubyte.gz");
    let z = gzip(&raw);
    std::fs::write(&cut, &z[..z.len() / 2]).unwrap();
    check(idx::read_images(&cut).unwrap_err(), &cut, "gzip");
    // Wrong magic: a labels file read as images, and the other way round.
    check(idx::read_images(&lp).unwrap_err(), &lp, "magic");
    check(idx::read_labels(&gz).unwrap_err(), &gz, "magic");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn seed_config_has_the_reference_parameter_count() {
    let model = Clip::new(ClipConfig::seed(), Device::Cpu).unwrap();
    let image = model.image_encoder.num_parameters();
    let text = model.text_encoder.num_parameters();
    assert_eq!((image, text), (5_337, 60_032));
    assert_eq!(model.num_parameters(), 65_370);
    let t = model.temperature.item().unwrap();
    assert!((t - (1.0f64 / 0.07).ln()).abs() < 1e-6);
}

#[test]
fn tokenizer_matches_the_article() {
    let t = tokenize("An image of 0", 32).unwrap();
    let mut want = vec![2u8];
    want.extend(b"An image of 0");
    want.push(3);
    want.resize(32, 0);
    assert_eq!(t, want);
    assert!(tokenize(&"x".repeat(31), 32).is_err());
    let b = TextBatch::new(&["ab", "abcd"], 8, Device::Cpu).unwrap();
    assert_eq!(b.eos.to_vec::<i64>().unwrap(), vec![3, 8 + 5]);
    assert_eq!(
        b.padding.to_vec::<u8>().unwrap(),
        vec![0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    );
}

/// The loss against a plain f64 computation of the two cross-entropies.
#[test]
fn contrastive_loss_value() {
    let b = 4;
    let vals: Vec<f64> = (0..b * b)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.4)
        .collect();
    let logits = Tensor::from_vec(vals.clone(), (b, b), Device::Cpu).unwrap();
    let got = contrastive_loss(&logits).unwrap().item().unwrap();
    let at = |i: usize, j: usize| vals[i * b + j];
    let ce = |f: &dyn Fn(usize, usize) -> f64| {
        (0..b)
            .map(|i| {
                let lse = (0..b).map(|j| f(i, j).exp()).sum::<f64>().ln();
                lse - f(i, i)
            })
            .sum::<f64>()
            / b as f64
    };
    let want = 0.5 * (ce(&|i, j| at(i, j)) + ce(&|i, j| at(j, i)));
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

/// The whole head in f64: normalize both embeddings, scale by exp(t), symmetric CE.
#[test]
fn contrastive_head_gradcheck() {
    let img = Tensor::randn_with_seed((5, 3), DType::F64, Device::Cpu, 3, 0).unwrap();
    let txt = Tensor::randn_with_seed((5, 3), DType::F64, Device::Cpu, 4, 0).unwrap();
    let t = Tensor::full(0.7, (), DType::F64, Device::Cpu).unwrap();
    check_gradients(
        |x| {
            let (i, tx) = (x[0].l2_normalize(1, 1e-12)?, x[1].l2_normalize(1, 1e-12)?);
            contrastive_loss(&i.matmul(&tx.t()?)?.mul(&x[2].exp()?)?)
        },
        &[img, txt, t],
        GradCheck::default(),
    )
    .unwrap();
}

/// Same-caption targets against a plain f64 computation: image -> text over the distinct
/// captions, text -> image with the target spread over the caption's images.
#[test]
fn caption_contrastive_loss_value() {
    let (b, n) = (5, 2);
    let pairing = [0i64, 1, 0, 0, 1];
    let vals: Vec<f64> = (0..b * n)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
        .collect();
    let logits = Tensor::from_vec(vals.clone(), (b, n), Device::Cpu).unwrap();
    let p = Tensor::from_vec(pairing.to_vec(), b, Device::Cpu).unwrap();
    let got = caption_contrastive_loss(&logits, &p)
        .unwrap()
        .item()
        .unwrap();
    let at = |i: usize, j: usize| vals[i * n + j];
    let i2t = (0..b)
        .map(|i| (0..n).map(|c| at(i, c).exp()).sum::<f64>().ln() - at(i, pairing[i] as usize))
        .sum::<f64>()
        / b as f64;
    let t2i = (0..n)
        .map(|c| {
            let lse = (0..b).map(|j| at(j, c).exp()).sum::<f64>().ln();
            (0..b)
                .filter(|&j| pairing[j] as usize == c)
                .map(|j| lse - at(j, c))
                .sum::<f64>()
        })
        .sum::<f64>()
        / b as f64;
    let want = 0.5 * (i2t + t2i);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // A pairing outside the caption rows is an error, not a panic.
    let bad = Tensor::from_vec(vec![0i64, 1, 2, 0, 1], b, Device::Cpu).unwrap();
    assert!(caption_contrastive_loss(&logits, &bad).is_err());
}

/// With no caption repeated, same-caption targets are the article's diagonal loss.
#[test]
fn caption_targets_reduce_to_diagonal_without_repeats() {
    let logits = Tensor::randn_with_seed((4, 4), DType::F64, Device::Cpu, 9, 0).unwrap();
    let p = Tensor::from_vec(vec![0i64, 1, 2, 3], 4, Device::Cpu).unwrap();
    let a = caption_contrastive_loss(&logits, &p)
        .unwrap()
        .item()
        .unwrap();
    let d = contrastive_loss(&logits).unwrap().item().unwrap();
    assert!((a - d).abs() < 1e-12, "{a} vs {d}");
}

#[test]
fn caption_contrastive_gradcheck() {
    let img = Tensor::randn_with_seed((6, 3), DType::F64, Device::Cpu, 5, 0).unwrap();
    let txt = Tensor::randn_with_seed((3, 3), DType::F64, Device::Cpu, 6, 0).unwrap();
    let p = Tensor::from_vec(vec![2i64, 0, 2, 1, 0, 2], 6, Device::Cpu).unwrap();
    check_gradients(
        |x| {
            let (i, tx) = (x[0].l2_normalize(1, 1e-12)?, x[1].l2_normalize(1, 1e-12)?);
            caption_contrastive_loss(&i.matmul(&tx.t()?)?.mul_scalar(3.0)?, &p)
        },
        &[img, txt],
        GradCheck::default(),
    )
    .unwrap();
}

fn tiny_config() -> ClipConfig {
    let mut c = ClipConfig::seed().for_images(1, 8);
    c.vit.patch_size = 4;
    c.vit.num_layers = 1;
    c.text_layers = 1;
    c.text_len = 16;
    c.embed_dim = 8;
    c.vit.embed_dim = 8;
    c.text_width = 16;
    c.text_heads = 4;
    c
}

/// Random 8x8 images of three classes, each class brighter in its own third of the rows.
fn synthetic(n: usize, seed: u64) -> CaptionedImages {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 3;
        labels.push(c);
        for y in 0..8 {
            for _ in 0..8 {
                let base = if y * 3 / 8 == c { 180.0 } else { 30.0 };
                pixels.push((base + 60.0 * rng.uniform()) as u8);
            }
        }
    }
    let captions = ["a top row", "a middle row", "a bottom row"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    CaptionedImages::new(DatasetName::Mnist, (1, 8, 8), pixels, labels, captions).unwrap()
}

/// Encoding each distinct caption once and gathering gives the loss and gradients of
/// encoding every image's caption.
#[test]
fn distinct_captions_give_the_same_loss_and_gradients() {
    let data = synthetic(12, 1);
    let model = Clip::new(tiny_config(), Device::Cpu).unwrap();
    let idx: Vec<usize> = (0..12).collect();
    let images = data.images(&idx, Device::Cpu).unwrap();
    let mut results = Vec::new();
    for each in [false, true] {
        let (text, pairing) = caption_batch(&data, &idx, 16, each, Device::Cpu).unwrap();
        assert_eq!(text.len(), if each { 12 } else { 3 });
        model
            .named_parameters()
            .iter()
            .for_each(|(_, p)| p.zero_grad());
        let loss = model
            .loss(&images, &text, Some(&pairing), ContrastiveTargets::Diagonal)
            .unwrap();
        loss.backward().unwrap();
        let grads: Vec<Vec<f32>> = model
            .parameters()
            .iter()
            .map(|p| p.grad().unwrap().to_vec::<f32>().unwrap())
            .collect();
        results.push((loss.item().unwrap(), grads));
    }
    assert!((results[0].0 - results[1].0).abs() < 1e-6);
    for (a, b) in results[0].1.iter().zip(&results[1].1) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 + 1e-4 * y.abs(), "{x} vs {y}");
        }
    }
}

fn tiny_run(
    model: &Clip,
    data: &CaptionedImages,
    ckpt: &std::path::Path,
    stop: Option<u64>,
    resume: bool,
    max_shift: usize,
) -> tessera::train::clip::ClipReport {
    let cfg = ClipTrainConfig {
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        seed: 5,
        checkpoint: Some(ckpt.to_path_buf()),
        resume,
        stop_at_step: stop,
        max_shift,
        progress: false,
        ..Default::default()
    };
    train_clip(model, data, data, &cfg).unwrap()
}

/// A run stopped mid-epoch and resumed from its checkpoint ends with exactly the weights of
/// an uninterrupted run, with and without the shift augmentation.
#[test]
fn resumed_run_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_with(0);
    resumed_run_equals_uninterrupted_run_with(2);
}

fn resumed_run_equals_uninterrupted_run_with(max_shift: usize) {
    let dir = temp_dir(&format!("resume{max_shift}"));
    let data = synthetic(40, 2); // 3 steps per epoch, the last one short
    let fresh = || Clip::new(tiny_config(), Device::Cpu).unwrap();
    let a = fresh();
    let init: Vec<(String, Tensor)> = a
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous_copy().unwrap()))
        .collect();
    let whole = tiny_run(
        &a,
        &data,
        &dir.join("a.safetensors"),
        None,
        false,
        max_shift,
    );
    assert_eq!(whole.steps, 9);

    let b = fresh();
    tessera::io::load_named(&b.state_dict(), &init, true).unwrap();
    let ck = dir.join("b.safetensors");
    let first = tiny_run(&b, &data, &ck, Some(4), false, max_shift);
    assert_eq!(first.steps, 4);
    drop(b);
    let c = fresh(); // a new process would start from other weights; the checkpoint decides
    let second = tiny_run(&c, &data, &ck, None, true, max_shift);
    assert_eq!((second.start_step, second.steps), (4, 9));
    for ((n, x), (_, y)) in a.state_dict().iter().zip(c.state_dict().iter()) {
        assert_eq!(
            x.to_vec::<f32>().unwrap(),
            y.to_vec::<f32>().unwrap(),
            "{n} differs after resume"
        );
    }
    assert_eq!(whole.zero_shot.accuracy, second.zero_shot.accuracy);
    std::fs::remove_dir_all(&dir).ok();
}

/// The shift augmentation: shift 0 is exactly `images`; otherwise every image is its
/// original translated by one `(dy, dx)` within the bound, zero-filled, and the shifts vary.
#[test]
fn shifted_images_translate_within_the_bound() {
    let data = synthetic(30, 3);
    let idx: Vec<usize> = (0..30).collect();
    let plain = data
        .images(&idx, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let same = shifted_images(&data, &idx, 0, &mut Rng::new(1), Device::Cpu).unwrap();
    assert_eq!(same.dims(), &[30, 1, 8, 8]);
    assert_eq!(same.to_vec::<f32>().unwrap(), plain);

    let shifted = shifted_images(&data, &idx, 2, &mut Rng::new(1), Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 0..30 {
        let (src, dst) = (&plain[i * 64..(i + 1) * 64], &shifted[i * 64..(i + 1) * 64]);
        let found = (-2isize..=2)
            .flat_map(|dy| (-2isize..=2).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..8isize).all(|y| {
                    (0..8isize).all(|x| {
                        let (sy, sx) = (y - dy, x - dx);
                        let want = if (0..8).contains(&sy) && (0..8).contains(&sx) {
                            src[(sy * 8 + sx) as usize]
                        } else {
                            0.0
                        };
                        dst[(y * 8 + x) as usize] == want
                    })
                })
            });
        seen.insert(found.unwrap_or_else(|| panic!("image {i} is no shift of its original")));
    }
    assert!(seen.len() > 5, "shifts barely vary: {seen:?}");
}

/// The seed model learns Fashion-MNIST from 100 images per class: the loss drops and
/// zero-shot accuracy on 1,000 test images is far above chance (0.1).
#[test]
fn seed_model_learns_fashion_mnist_subset() {
    let Some(dir) = common::fashion_mnist_dir() else {
        println!("skipped: no Fashion-MNIST under ../shared/data (set TESSERA_DATA)");
        return;
    };
    let train = load_dataset(DatasetName::FashionMnist, &dir, Split::Train)
        .unwrap()
        .per_class_subset(100);
    let test = load_dataset(DatasetName::FashionMnist, &dir, Split::Test)
        .unwrap()
        .per_class_subset(100);
    tessera::random::manual_seed(0);
    let model = Clip::new(ClipConfig::seed(), Device::Cpu).unwrap();
    let before = zero_shot(&model, &test).unwrap().accuracy;
    let cfg = ClipTrainConfig {
        epochs: 4,
        batch_size: 50,
        eval_every_epoch: false,
        progress: false,
        ..Default::default()
    };
    let r = train_clip(&model, &train, &test, &cfg).unwrap();
    let losses: Vec<f64> = r.per_epoch.iter().map(|e| e.mean_loss).collect();
    println!(
        "losses {losses:?}, zero-shot {before:.3} -> {:.3}",
        r.zero_shot.accuracy
    );
    assert!(losses[3] < losses[0] - 0.2, "loss did not drop: {losses:?}");
    assert!(
        r.zero_shot.accuracy > 0.35,
        "zero-shot {}",
        r.zero_shot.accuracy
    );
    assert_eq!(r.zero_shot.per_class.len(), 10);
    let total: usize = r.zero_shot.confusion.iter().flatten().sum();
    assert_eq!(total, 1000);
}

#[test]
fn shapes_is_a_built_in_clip_dataset() {
    // No files needed: the folder is not read for the built-in shapes.
    let test = load_dataset(
        DatasetName::Shapes,
        std::path::Path::new("/nonexistent"),
        Split::Test,
    )
    .unwrap();
    assert_eq!((test.channels, test.height, test.width), (3, 28, 28));
    assert_eq!(test.class_captions.len(), 30);
    assert_eq!(test.class_captions[0], "An image of a red square");
    assert_eq!(test.labels.len(), tessera::data::mnist::SHAPES_TEST_COUNT);
    // Every class occurs, and the pictures are not blank.
    let mut seen = [false; 30];
    test.labels.iter().for_each(|&l| seen[l] = true);
    assert!(
        seen.iter().all(|&s| s),
        "a shape x colour class never occurs"
    );
    let batch = test.images(&[0, 1], tessera::Device::Cpu).unwrap();
    let v = batch.to_vec::<f32>().unwrap();
    assert!(v.iter().any(|&x| x < 0.5) && v.iter().any(|&x| x > 0.9));
}
