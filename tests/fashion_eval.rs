//! The Fashion-MNIST judge and measures: a ResNet-18 classifier trained on padded gray
//! pictures (`train::classifier`), its checkpoint refusing another dataset, and the class
//! prompt adherence (`diffusion::class_adherence`) checked on stand-in generators whose
//! pictures are known: real pictures of the prompted class (adherence = the judge's accuracy
//! on them), of the wrong class (adherence ~ 0), or blank (a Frechet distance far above the
//! real-vs-real floor).
//!
//! The classifier tests use a tiny synthetic set (four drawn classes standing in for
//! Fashion-MNIST), so they always run; one test learns a subset of the real files and is
//! skipped without them (set TESSERA_DATA).

mod common;

use std::path::PathBuf;
use tessera::data::mnist::{load_dataset, CaptionedImages, DatasetName, Split, FASHION_CAPTIONS};
use tessera::data::PromptTokenizer;
use tessera::diffusion::adherence::PictureSource;
use tessera::diffusion::class_adherence::{class_prompt_adherence, real_pictures};
use tessera::diffusion::{BetaSchedule, DiffusionConfig, Prediction, SampleOpts, TextToImage};
use tessera::models::resnet::ResNet18;
use tessera::models::unet::UNetConfig;
use tessera::nn::Module;
use tessera::random::Rng;
use tessera::train::classifier::{
    class_accuracy, classifier_for, load_classifier, load_judge, predict_classes, save_classifier,
    train_image_classifier, ClassifierTrainConfig, JudgeInfo,
};
use tessera::train::diffusion_data::padded_images;
use tessera::{Device, Result, Tensor};

const CPU: Device = Device::Cpu;
const CLASSES: usize = 4;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera_fashion_eval_{tag}_{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `count` 28x28 gray pictures of four classes (label `i % 4`): a horizontal bar, a vertical
/// bar, a filled square, a square frame; each shifted by up to 3 pixels, on a noisy
/// background, captioned with the first four Fashion-MNIST captions.
fn synthetic(count: usize, seed: u64) -> CaptionedImages {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(count * 28 * 28);
    let mut labels = Vec::with_capacity(count);
    for i in 0..count {
        let c = i % CLASSES;
        let (dx, dy) = (rng.below(7) as i32 - 3, rng.below(7) as i32 - 3);
        for y in 0..28i32 {
            for x in 0..28i32 {
                let (u, v) = (x - 14 - dx, y - 14 - dy);
                let on = match c {
                    0 => v.abs() <= 2 && u.abs() <= 9,
                    1 => u.abs() <= 2 && v.abs() <= 9,
                    2 => u.abs() <= 6 && v.abs() <= 6,
                    _ => (7..=9).contains(&u.abs().max(v.abs())),
                };
                let noise = rng.below(60) as u8;
                pixels.push(if on { 190 + noise } else { noise });
            }
        }
        labels.push(c);
    }
    let captions = FASHION_CAPTIONS[..CLASSES]
        .iter()
        .map(|s| s.to_string())
        .collect();
    CaptionedImages::new(
        DatasetName::FashionMnist,
        (1, 28, 28),
        pixels,
        labels,
        captions,
    )
    .unwrap()
}

/// A ResNet-18 trained on the synthetic set (saved to `ckpt` when given), its test set and
/// its test accuracy.
fn trained_judge(ckpt: Option<PathBuf>) -> (ResNet18, CaptionedImages, f64, f64, f64) {
    let train = synthetic(400, 1);
    let test = synthetic(200, 2);
    let model = common::seeded(0, || classifier_for(&train, CPU).unwrap());
    assert_eq!(model.config.in_channels, 1);
    assert_eq!(model.config.num_classes, CLASSES);
    let cfg = ClassifierTrainConfig {
        steps: 60,
        batch_size: 16,
        lr: 2e-3,
        checkpoint: ckpt,
        progress: false,
        ..Default::default()
    };
    let r = train_image_classifier(&model, &train, &test, &cfg).unwrap();
    assert_eq!(r.test_images, 200);
    (model, test, r.test_accuracy, r.first_loss, r.final_loss)
}

#[test]
fn classifier_learns_the_synthetic_set_and_its_checkpoint_refuses_other_datasets() {
    let dir = temp_dir("clf");
    let path = dir.join("resnet18.safetensors");
    let (model, test, accuracy, first, last) = trained_judge(Some(path.clone()));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(accuracy >= 0.9, "test accuracy {accuracy}");
    // The accuracy is what predict_classes says on the padded pictures, recomputed here.
    let idx: Vec<usize> = (0..test.len()).collect();
    let seen = predict_classes(&model, &padded_images(&test, &idx, 32, CPU).unwrap()).unwrap();
    let right = seen
        .iter()
        .zip(&test.labels)
        .filter(|(s, l)| s == l)
        .count();
    assert_eq!(accuracy, right as f64 / test.len() as f64);
    // The checkpoint says what it judges and gives the same readings.
    let (loaded, info) = load_classifier(&path, CPU).unwrap();
    assert_eq!(
        info,
        JudgeInfo {
            dataset: "fashion-mnist".into(),
            image_size: 32,
            channels: 1
        }
    );
    assert_eq!(
        class_accuracy(&loaded, &test, &idx, 32, 64).unwrap(),
        accuracy
    );
    assert!(load_judge(&path, "fashion-mnist", CPU).is_ok());
    // Asked to judge another dataset: the file and both datasets are named.
    for err in [
        load_judge(&path, "shapes", CPU).err().unwrap().to_string(),
        tessera::train::shapes_resnet::load_resnet(&path, CPU)
            .err()
            .unwrap()
            .to_string(),
    ] {
        assert!(
            err.contains("resnet18.safetensors")
                && err.contains("trained on fashion-mnist")
                && err.contains("cannot judge shapes"),
            "{err}"
        );
    }
    // A 3-channel picture is refused by name and shapes.
    let rgb = Tensor::zeros((2, 3, 32, 32), tessera::DType::F32, CPU).unwrap();
    let err = loaded.forward(&rgb).err().unwrap().to_string();
    assert!(
        err.contains("ResNet18") && err.contains("[N, 1, H, W]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A stand-in generator: for each prompt (a class caption of `data`), real pictures of the
/// class `shift` places further on (0: the prompted class), the first `count` of that class
/// in `data`; or black pictures.
struct RealPictures<'a> {
    data: &'a CaptionedImages,
    shift: usize,
    blank: bool,
}

impl RealPictures<'_> {
    fn indices_of(&self, class: usize, count: usize) -> Vec<usize> {
        let k = (class + self.shift) % self.data.num_classes();
        (0..self.data.len())
            .filter(|&i| self.data.labels[i] == k)
            .take(count)
            .collect()
    }
}

impl PictureSource for RealPictures<'_> {
    fn image_size(&self) -> usize {
        32
    }
    fn channels(&self) -> usize {
        1
    }
    fn draw(&self, prompts: &[&str], count: usize, _opts: &SampleOpts) -> Result<Tensor> {
        let mut idx = Vec::new();
        for p in prompts {
            let c = self
                .data
                .class_captions
                .iter()
                .position(|cap| cap == p)
                .ok_or_else(|| tessera::Error::msg(format!("stub: unknown prompt {p:?}")))?;
            idx.extend(self.indices_of(c, count));
        }
        let images = padded_images(self.data, &idx, 32, CPU)?;
        if self.blank {
            images.zeros_like()
        } else {
            Ok(images)
        }
    }
}

#[test]
fn adherence_is_the_judges_reading_of_known_pictures() {
    let (judge, test, accuracy, _, _) = trained_judge(None);
    let per_prompt = 10;
    let opts = SampleOpts::default();
    let run = |stub: &RealPictures, per_batch: usize| {
        class_prompt_adherence(
            stub,
            &judge,
            32,
            &test,
            per_prompt,
            per_batch,
            None,
            &opts,
            0,
            |_, _| {},
        )
        .unwrap()
    };
    // What the judge says of the stub's pictures, counted here without the measure.
    let expected = |stub: &RealPictures| -> f64 {
        let mut right = 0;
        for c in 0..CLASSES {
            let idx = stub.indices_of(c, per_prompt);
            let seen =
                predict_classes(&judge, &padded_images(&test, &idx, 32, CPU).unwrap()).unwrap();
            right += seen.iter().filter(|&&s| s == c).count();
        }
        right as f64 / (CLASSES * per_prompt) as f64
    };
    let right = RealPictures {
        data: &test,
        shift: 0,
        blank: false,
    };
    let r = run(&right, 3);
    assert_eq!((r.prompts, r.images), (CLASSES, CLASSES * per_prompt));
    assert_eq!(r.adherence, expected(&right));
    assert!(
        r.adherence >= 0.85 && (r.adherence - accuracy).abs() <= 0.15,
        "adherence {} vs accuracy {accuracy}",
        r.adherence
    );
    for c in 0..CLASSES {
        assert_eq!(r.class_images(c), per_prompt);
    }
    // Batching changes nothing for a generator that ignores the seed.
    let one_by_one = run(&right, 1);
    assert_eq!(one_by_one.confusion, r.confusion);
    assert_eq!(one_by_one.frechet, r.frechet);
    // Pictures of the next class: adherence near 0, each class taken for the next one.
    let wrong = RealPictures {
        data: &test,
        shift: 1,
        blank: false,
    };
    let w = run(&wrong, 3);
    assert_eq!(w.adherence, expected(&wrong));
    assert!(w.adherence <= 0.1, "adherence {}", w.adherence);
    for c in 0..CLASSES {
        assert_eq!(
            w.most_confused_with(c).map(|(s, _)| s),
            Some((c + 1) % CLASSES)
        );
    }
    // The Frechet distance is blind to the prompt: real pictures of any class sit near the
    // real-vs-real floor; black pictures far above it.
    let blank = RealPictures {
        data: &test,
        shift: 0,
        blank: true,
    };
    let b = run(&blank, 3);
    let floor = r.frechet_real;
    assert!(
        floor > 0.0 && r.frechet < 3.0 * floor && w.frechet < 3.0 * floor,
        "right {} wrong {} floor {floor}",
        r.frechet,
        w.frechet
    );
    assert!(
        b.frechet > 10.0 * floor,
        "blank {} floor {floor}",
        b.frechet
    );
    // Only some prompts: the classes are spread and counted alone.
    let some = class_prompt_adherence(
        &right,
        &judge,
        32,
        &test,
        per_prompt,
        2,
        Some(2),
        &opts,
        0,
        |_, _| {},
    )
    .unwrap();
    assert_eq!((some.prompts, some.images), (2, 2 * per_prompt));
    assert_eq!(
        (some.class_images(0), some.class_images(2)),
        (per_prompt, per_prompt)
    );
}

#[test]
fn real_pictures_come_from_disjoint_halves_and_run_out_with_a_clear_error() {
    let data = synthetic(40, 3); // 10 per class, 5 in each half
    let a = real_pictures(&data, &[0, 0, 1], 0, 7, 32, CPU).unwrap();
    assert_eq!(a.dims(), &[3, 1, 32, 32]);
    let all = |half| -> Vec<Vec<f64>> {
        let t = real_pictures(&data, &[2; 5], half, 7, 32, CPU).unwrap();
        t.to_vec_f64()
            .unwrap()
            .chunks(32 * 32)
            .map(|c| c.to_vec())
            .collect()
    };
    let (even, odd) = (all(0), all(1));
    assert!(
        even.iter().all(|p| !odd.contains(p)),
        "the halves share a picture"
    );
    let err = real_pictures(&data, &[1; 6], 0, 7, 32, CPU)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("6 real") && err.contains("has 5") && err.contains("fewer"),
        "{err}"
    );
}

fn tiny_model(channels: usize) -> TextToImage {
    let config = DiffusionConfig {
        image_size: 32,
        train_steps: 50,
        schedule: BetaSchedule::cosine(),
        prediction: Prediction::V,
        unet: UNetConfig {
            in_channels: channels,
            out_channels: channels,
            patch_size: 4,
            base_channels: 8,
            channel_mult: vec![1],
            res_blocks_per_level: 1,
            attention_levels: vec![],
            groups: 4,
            num_heads: 2,
            context_dim: 16,
            num_condition_types: 1,
        },
        text_max_len: 16,
        text_dim: 16,
        text_heads: 2,
        text_layers: 1,
    };
    let tokenizer = PromptTokenizer::new("word", &FASHION_CAPTIONS.join("\n")).unwrap();
    common::seeded(5, || TextToImage::new(config, tokenizer, CPU).unwrap())
}

/// The diffusion model itself through the measure (untrained: only the plumbing is checked),
/// and one of the wrong channel count refused.
#[test]
fn a_diffusion_model_is_judged_and_a_mismatched_one_refused() {
    let test = synthetic(80, 4);
    let judge = common::seeded(1, || classifier_for(&test, CPU).unwrap());
    judge.eval();
    let opts = SampleOpts {
        steps: 2,
        ..Default::default()
    };
    let model = tiny_model(1);
    let r =
        class_prompt_adherence(&model, &judge, 32, &test, 3, 2, None, &opts, 0, |_, _| {}).unwrap();
    assert_eq!((r.prompts, r.images), (CLASSES, 3 * CLASSES));
    assert!((0.0..=1.0).contains(&r.adherence) && r.frechet.is_finite());
    let rgb = tiny_model(3);
    let err = class_prompt_adherence(&rgb, &judge, 32, &test, 3, 2, None, &opts, 0, |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("1-channel") && err.contains("3-channel"),
        "{err}"
    );
    let err = class_prompt_adherence(&model, &judge, 28, &test, 3, 2, None, &opts, 0, |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("28x28") && err.contains("32x32"), "{err}");
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `eval diffusion` on a Fashion-MNIST checkpoint refuses the shapes judge, naming it;
/// `train resnet --dataset fashion-mnist` names the missing IDX file.
#[test]
fn cli_refuses_a_judge_of_another_dataset_and_names_missing_files() {
    use tessera::optim::{AdamW, AdamWConfig};
    let dir = temp_dir("cli");
    let model = tiny_model(1);
    let ckpt = dir.join("fashion.safetensors");
    let opt = AdamW::new(model.named_parameters(), AdamWConfig::default()).unwrap();
    let ema = tessera::optim::Ema::new(&model.named_parameters(), 0.9).unwrap();
    tessera::train::diffusion::save_diffusion_on(&model, "fashion-mnist", &opt, &ema, 1, &ckpt)
        .unwrap();
    // A shapes judge: 11 logits, RGB (untrained; only its metadata matters here).
    let shapes_judge = common::seeded(2, || {
        ResNet18::new(
            tessera::models::resnet::ResNetConfig {
                num_classes: 11,
                small_input: false,
                in_channels: 3,
            },
            CPU,
        )
        .unwrap()
    });
    let judge_path = dir.join("shapes_resnet18.safetensors");
    let judge_opt = AdamW::new(shapes_judge.named_parameters(), AdamWConfig::default()).unwrap();
    save_classifier(&shapes_judge, &judge_opt, 0, 32, "shapes", &judge_path).unwrap();
    let (ok, err) = run_cli(&[
        "eval",
        "diffusion",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "--classifier",
        judge_path.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && err.contains("shapes_resnet18.safetensors")
            && err.contains("cannot judge fashion-mnist"),
        "{err}"
    );
    let empty = dir.join("no_data");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, err) = run_cli(&[
        "train",
        "resnet",
        "--dataset",
        "fashion-mnist",
        "--data",
        empty.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("train-images-idx3-ubyte"), "{err}");
    let (ok, err) = run_cli(&[
        "train",
        "resnet",
        "--dataset",
        "cifar",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("unknown dataset"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The real files: 120 steps of 32 pictures already classify held-out pictures far above
/// chance (0.1), read exactly as the diffusion data pads them.
#[test]
fn classifier_learns_real_fashion_mnist() {
    let Some(dir) = common::fashion_mnist_dir() else {
        println!("skipped: no Fashion-MNIST under ../shared/data (set TESSERA_DATA)");
        return;
    };
    let train = load_dataset(DatasetName::FashionMnist, &dir, Split::Train).unwrap();
    let test = load_dataset(DatasetName::FashionMnist, &dir, Split::Test)
        .unwrap()
        .per_class_subset(40);
    let model = common::seeded(0, || classifier_for(&train, CPU).unwrap());
    let cfg = ClassifierTrainConfig {
        steps: 120,
        progress: false,
        ..Default::default()
    };
    let r = train_image_classifier(&model, &train, &test, &cfg).unwrap();
    assert_eq!(r.test_images, 400);
    assert!(r.test_accuracy > 0.6, "test accuracy {}", r.test_accuracy);
}
