//! The text-to-image-features pipeline: ResNet-18's torchvision names, the captioner and the
//! text-to-feature model learning on small configurations, retrieval, and checkpoints that
//! load back to identical outputs.

use std::collections::BTreeMap;
use tessera::data::shapes::{caption_alphabet, ShapeLabel, COLOURS, SHAPES};
use tessera::data::{tokenizer, CharTokenizer};
use tessera::models::captioner::{Captioner, CaptionerConfig};
use tessera::models::resnet::{ResNet18, ResNetConfig};
use tessera::models::retrieval::{nearest, Metric};
use tessera::models::text_to_feature::TextToFeature;
use tessera::nn::Module;
use tessera::random::Rng;
use tessera::train::captioner::{
    caption_accuracy, load_captioner, names_shape_and_colour, train_captioner, SeqTrainConfig,
};
use tessera::train::t2f_pipeline::{run_pipeline, PipelineConfig};
use tessera::train::text_to_feature::{
    drop_a_filler_word, held_out_prompts, load_text_to_feature, retrieval_accuracy,
    train_text_to_feature,
};
use tessera::{DType, Device, Tensor};

/// torchvision's `resnet18().state_dict()`, written from the architecture (torchvision is not
/// installed here): (name, shape) for every entry. PyTorch's own facts it must agree with:
/// 122 entries and 11,689,512 parameters.
fn torchvision_resnet18_state_dict() -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let bn = |m: &mut BTreeMap<String, Vec<usize>>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            m.insert(format!("{p}.{s}"), vec![c]);
        }
        m.insert(format!("{p}.num_batches_tracked"), vec![]);
    };
    m.insert("conv1.weight".into(), vec![64, 3, 7, 7]);
    bn(&mut m, "bn1", 64);
    let widths = [64, 128, 256, 512];
    for (l, &c) in widths.iter().enumerate() {
        let cin = if l == 0 { 64 } else { widths[l - 1] };
        for b in 0..2 {
            let p = format!("layer{}.{b}", l + 1);
            let bin = if b == 0 { cin } else { c };
            m.insert(format!("{p}.conv1.weight"), vec![c, bin, 3, 3]);
            bn(&mut m, &format!("{p}.bn1"), c);
            m.insert(format!("{p}.conv2.weight"), vec![c, c, 3, 3]);
            bn(&mut m, &format!("{p}.bn2"), c);
            if b == 0 && l > 0 {
                m.insert(format!("{p}.downsample.0.weight"), vec![c, cin, 1, 1]);
                bn(&mut m, &format!("{p}.downsample.1"), c);
            }
        }
    }
    m.insert("fc.weight".into(), vec![1000, 512]);
    m.insert("fc.bias".into(), vec![1000]);
    m
}

#[test]
fn resnet18_state_dict_matches_torchvision() {
    let model = ResNet18::new(
        ResNetConfig {
            num_classes: 1000,
            small_input: false,
            in_channels: 3,
        },
        Device::Cpu,
    )
    .unwrap();
    let ours: BTreeMap<String, Vec<usize>> = model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let want = torchvision_resnet18_state_dict();
    assert_eq!(want.len(), 122);
    assert_eq!(ours, want);
    assert_eq!(model.num_parameters(), 11_689_512);
    // Features are 512-d; logits 1000-d.
    let x = Tensor::rand((2, 3, 32, 32), DType::F32, Device::Cpu).unwrap();
    model.eval();
    assert_eq!(model.features(&x).unwrap().dims(), &[2, 512]);
    assert_eq!(model.forward(&x).unwrap().dims(), &[2, 1000]);
    // The small-input stem changes only conv1's kernel.
    let small = ResNet18::new(
        ResNetConfig {
            num_classes: 1000,
            small_input: true,
            in_channels: 3,
        },
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(small.conv1.weight.dims(), &[64, 3, 3, 3]);
    assert_eq!(small.state_dict().len(), 122);
    let err = model.features(&Tensor::rand((2, 1, 8, 8), DType::F32, Device::Cpu).unwrap());
    assert!(format!("{}", err.err().unwrap()).contains("ResNet18"));
}

/// Stand-in ResNet features: a fixed random vector per shape x colour class plus noise, so
/// the sequence models can be tested in seconds without training a ResNet.
fn synthetic_features(labels: &[ShapeLabel], noise: f64, seed: u64) -> Tensor {
    let dim = 512;
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..SHAPES.len() * COLOURS.len() * dim)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut v = Vec::with_capacity(labels.len() * dim);
    for l in labels {
        let c = l.class();
        for j in 0..dim {
            v.push(centres[c * dim + j] + (noise * rng.normal()) as f32);
        }
    }
    Tensor::from_vec(v, (labels.len(), dim), Device::Cpu).unwrap()
}

fn labels(n: usize, seed: u64) -> Vec<ShapeLabel> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| tessera::data::shapes::random_label(&mut rng))
        .collect()
}

fn tiny_captioner(tok: &CharTokenizer) -> Captioner {
    Captioner::new(
        CaptionerConfig {
            dim: 48,
            num_heads: 4,
            num_layers: 2,
            ..CaptionerConfig::small(tok.vocab_size(), 512)
        },
        Device::Cpu,
    )
    .unwrap()
}

#[test]
fn captioner_and_text_to_feature_learn_and_round_trip_through_checkpoints() {
    tessera::random::manual_seed(11);
    let dir = std::env::temp_dir().join(format!("tessera_t2f_test_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = CharTokenizer::from_text(&caption_alphabet());
    let train_labels = labels(300, 1);
    let feats = synthetic_features(&train_labels, 0.1, 5);
    let cfg = |steps, file: &str| SeqTrainConfig {
        steps,
        batch_size: 32,
        lr: 3e-3,
        seed: 0,
        checkpoint: Some(dir.join(file)),
        progress: false,
    };

    // The captioner learns to name shape and colour from the features.
    let cap = tiny_captioner(&tok);
    let r = train_captioner(
        &cap,
        &tok,
        &feats,
        &train_labels,
        &cfg(400, "cap.safetensors"),
    )
    .unwrap();
    assert!(r.final_loss < 0.6 * r.first_loss, "{r:?}");
    let eval_labels = labels(40, 2);
    let eval_feats = synthetic_features(&eval_labels, 0.1, 5);
    let (acc, caps) = caption_accuracy(&cap, &tok, &eval_feats, &eval_labels).unwrap();
    assert!(acc >= 0.5, "caption accuracy {acc}: {caps:?}");

    // The text-to-feature model, from the captioner, learns held-out phrasings.
    let t2f = TextToFeature::from_captioner(&cap, Device::Cpu).unwrap();
    assert_eq!(
        t2f.tok_emb.weight.to_vec::<f32>().unwrap(),
        cap.tok_emb.weight.to_vec::<f32>().unwrap()
    );
    assert!(!t2f.tok_emb.weight.same_storage(&cap.tok_emb.weight));
    let r = train_text_to_feature(
        &t2f,
        &tok,
        &feats,
        &train_labels,
        &cfg(300, "t2f.safetensors"),
    )
    .unwrap();
    assert!(r.final_loss < 0.5 * r.first_loss, "{r:?}");
    let gallery_labels: Vec<ShapeLabel> = (0..SHAPES.len() * COLOURS.len())
        .map(|c| ShapeLabel {
            shape: c / COLOURS.len(),
            colour: c % COLOURS.len(),
            size: 1,
            place: 4,
        })
        .collect();
    let gallery = synthetic_features(&gallery_labels, 0.1, 5);
    let prompts = held_out_prompts(&gallery_labels, 3);
    let (top1, _) = retrieval_accuracy(
        &t2f,
        &tok,
        &prompts,
        &gallery,
        &gallery_labels,
        Metric::Euclidean,
    )
    .unwrap();
    // Chance is 1/30.
    assert!(top1 >= 0.5, "retrieval top-1 {top1}");

    // Checkpoints load back to identical outputs.
    let (cap2, tok2) = load_captioner(&dir.join("cap.safetensors"), Device::Cpu).unwrap();
    assert_eq!(tok2, tok);
    let ids = Tensor::from_vec(vec![1i64, 8, 9, 10], (1, 4), Device::Cpu).unwrap();
    let f = eval_feats.narrow(0, 0, 1).unwrap();
    let a = tessera::no_grad(|| cap.forward(&f, &ids))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let b = tessera::no_grad(|| cap2.forward(&f, &ids))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let (t2f2, _) = load_text_to_feature(&dir.join("t2f.safetensors"), Device::Cpu).unwrap();
    let p = ["a blue square shape", "the green one is a cross"];
    assert_eq!(
        t2f.predict(&tok, &p).unwrap().to_vec::<f32>().unwrap(),
        t2f2.predict(&tok, &p).unwrap().to_vec::<f32>().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn padding_does_not_change_a_prompts_features_and_unknowns_are_unk() {
    let tok = CharTokenizer::from_text(&caption_alphabet());
    let t2f = TextToFeature::from_captioner(&tiny_captioner(&tok), Device::Cpu).unwrap();
    let alone = t2f.predict(&tok, &["a red cross"]).unwrap();
    let padded = t2f
        .predict(
            &tok,
            &["a red cross", "show a medium triangle, coloured purple"],
        )
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap();
    let (a, b) = (
        alone.to_vec::<f32>().unwrap(),
        padded.to_vec::<f32>().unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    let ids = t2f.encode(&tok, &["a red cross§"], Device::Cpu).unwrap();
    let ids = ids.to_vec::<i64>().unwrap();
    assert_eq!(ids[0], tokenizer::SOS as i64);
    assert_eq!(*ids.last().unwrap(), tokenizer::UNK as i64);
}

#[test]
fn the_default_context_holds_the_longest_caption() {
    let mut max = 0;
    for t in tessera::data::shapes::TRAIN_TEMPLATES
        .iter()
        .chain(tessera::data::shapes::HELD_OUT_TEMPLATES.iter())
    {
        for shape in 0..SHAPES.len() {
            for colour in 0..COLOURS.len() {
                for size in 0..3 {
                    for place in 0..5 {
                        let l = ShapeLabel {
                            shape,
                            colour,
                            size,
                            place,
                        };
                        max = max.max(tessera::data::shapes::fill(t, &l).chars().count());
                    }
                }
            }
        }
    }
    // <SOS> + caption must fit, and <EOS> is predicted at the last position.
    assert!(
        CaptionerConfig::small(40, 512).max_len > max,
        "longest caption {max}"
    );
}

#[test]
fn retrieval_finds_the_nearest_row_by_either_metric() {
    let g = Tensor::from_vec(vec![1f32, 0., 0., 1., 10., 10.], (3, 2), Device::Cpu).unwrap();
    let q = Tensor::from_vec(vec![0.9f32, 0.1, 8., 8.5], (2, 2), Device::Cpu).unwrap();
    let e: Vec<usize> = nearest(&q, &g, Metric::Euclidean)
        .unwrap()
        .iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(e, [0, 2]);
    let c: Vec<usize> = nearest(&q, &g, Metric::Cosine)
        .unwrap()
        .iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(c, [0, 2]);
    // (1.3, 1.2) is nearest to (1, 0) but points along (10, 10).
    let q2 = Tensor::from_vec(vec![1.3f32, 1.2], (1, 2), Device::Cpu).unwrap();
    assert_eq!(nearest(&q2, &g, Metric::Euclidean).unwrap()[0].0, 0);
    assert_eq!(nearest(&q2, &g, Metric::Cosine).unwrap()[0].0, 2);
    assert!(nearest(&q, &g.narrow(1, 0, 1).unwrap(), Metric::Euclidean).is_err());
    assert!(names_shape_and_colour(
        "a small red square on the left",
        &ShapeLabel {
            shape: 0,
            colour: 0,
            size: 0,
            place: 0
        }
    ));
    assert!(!names_shape_and_colour(
        "a red square and a blue square",
        &ShapeLabel {
            shape: 0,
            colour: 0,
            size: 0,
            place: 0
        }
    ));
}

/// The whole pipeline on a tiny configuration: it runs, writes its checkpoints, and a second
/// run reuses them (training nothing) with identical figures.
#[test]
fn tiny_pipeline_runs_and_reuses_its_checkpoints() {
    let dir = std::env::temp_dir().join(format!("tessera_t2f_pipe_{}", std::process::id()));
    let cfg = PipelineConfig {
        resnet_steps: 6,
        resnet_batch: 8,
        pool_size: 60,
        caption_steps: 8,
        t2f_steps: 8,
        seq_batch: 8,
        dim: 32,
        heads: 2,
        layers: 1,
        caption_eval_images: 4,
        gallery_repeats: 1,
        progress: false,
        ..Default::default()
    };
    let first = run_pipeline(&dir, &cfg, Device::Cpu).unwrap();
    assert!(first.stages.iter().filter(|s| s.trained).count() == 3);
    assert_eq!(first.retrieval.len(), 30 * 5);
    let second = run_pipeline(&dir, &cfg, Device::Cpu).unwrap();
    assert!(second.stages.iter().all(|s| !s.trained));
    assert_eq!(first.retrieval_top1, second.retrieval_top1);
    assert_eq!(first.caption_accuracy, second.caption_accuracy);
    assert_eq!(
        first.gallery_features.to_vec::<f32>().unwrap(),
        second.gallery_features.to_vec::<f32>().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn word_dropout_keeps_shape_and_colour_and_never_makes_a_held_out_prompt() {
    use tessera::data::shapes::{fill, held_out_captions, TRAIN_TEMPLATES};
    let mut rng = Rng::new(11);
    let mut held = std::collections::HashSet::new();
    let mut dropped_some = false;
    for (shape, shape_name) in SHAPES.iter().enumerate() {
        for (colour, colour_name) in COLOURS.iter().enumerate() {
            for size in 0..3 {
                for place in 0..5 {
                    let l = ShapeLabel {
                        shape,
                        colour,
                        size,
                        place,
                    };
                    held.extend(held_out_captions(&l));
                    for t in TRAIN_TEMPLATES {
                        let full = fill(t, &l);
                        for _ in 0..4 {
                            let d = drop_a_filler_word(&full, &mut rng);
                            dropped_some |= d != full;
                            assert!(!held.contains(&d), "{full:?} -> held-out {d:?}");
                            let words: Vec<&str> = d
                                .split(' ')
                                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                                .collect();
                            assert!(words.contains(shape_name), "{full:?} -> {d:?}");
                            assert!(words.contains(colour_name), "{full:?} -> {d:?}");
                            assert!(d.split(' ').count() + 1 >= full.split(' ').count());
                        }
                    }
                }
            }
        }
    }
    assert!(dropped_some);
}
