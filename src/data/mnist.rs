//! MNIST and Fashion-MNIST as image-caption data for CLIP, and the dataset-neutral
//! [`CaptionedImages`] any other labelled image source (the built-in shapes) adapts into.
//!
//! Each image carries a class label and each class one caption, as in the CLIP-from-scratch
//! article this project follows ("An image of a t-shirt/top", "An image of 0", ...); zero-shot
//! classification then asks which class caption an image matches best.
//!
//! Files: the four IDX files of a dataset (`train-images-idx3-ubyte.gz`, ...; `.gz` or not)
//! either directly in the given folder or in its sub-folder named after the dataset
//! (`fashion-mnist/`, `mnist/`), so `--data ../shared/data` and
//! `--data ../shared/data/fashion-mnist` both work. Where to get them: `data/README.md`.

use super::idx;
use crate::{Device, Error, Result, Tensor};
use std::path::{Path, PathBuf};

/// The datasets `tessera train clip --dataset` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetName {
    FashionMnist,
    Mnist,
    /// The procedural shapes-and-captions images (no download).
    Shapes,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Shapes => "shapes",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fashion-mnist" => Ok(DatasetName::FashionMnist),
            "mnist" => Ok(DatasetName::Mnist),
            "shapes" => Ok(DatasetName::Shapes),
            other => Err(Error::msg(format!(
                "unknown dataset {other:?} (expected fashion-mnist, mnist or shapes)"
            ))),
        }
    }
    /// One caption per class, indexed by label.
    pub fn class_captions(self) -> Vec<String> {
        match self {
            DatasetName::FashionMnist => FASHION_CAPTIONS.iter().map(|s| s.to_string()).collect(),
            DatasetName::Mnist => (0..10).map(|d| format!("An image of {d}")).collect(),
            DatasetName::Shapes => {
                use super::shapes::{COLOURS, SHAPES};
                SHAPES
                    .iter()
                    .flat_map(|s| {
                        COLOURS
                            .iter()
                            .map(move |c| format!("An image of a {c} {s}"))
                    })
                    .collect()
            }
        }
    }
}

/// The captions of the article, by Fashion-MNIST label.
pub const FASHION_CAPTIONS: [&str; 10] = [
    "An image of a t-shirt/top",
    "An image of trousers",
    "An image of a pullover",
    "An image of a dress",
    "An image of a coat",
    "An image of a sandal",
    "An image of a shirt",
    "An image of a sneaker",
    "An image of a bag",
    "An image of an ankle boot",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Labelled images with one caption per class: what CLIP trains and is evaluated on.
/// Pixels are u8 (`[count, channels, height, width]`, row-major) and become f32 in [0, 1]
/// batch by batch, as torchvision's `ToTensor`.
#[derive(Clone, Debug)]
pub struct CaptionedImages {
    pub dataset: DatasetName,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<usize>,
    pub class_captions: Vec<String>,
}

impl CaptionedImages {
    /// Checks that the parts agree (what an adapter from another source must satisfy).
    pub fn new(
        dataset: DatasetName,
        (channels, height, width): (usize, usize, usize),
        pixels: Vec<u8>,
        labels: Vec<usize>,
        class_captions: Vec<String>,
    ) -> Result<Self> {
        let per = channels * height * width;
        if per == 0 || pixels.len() != labels.len() * per {
            return Err(Error::msg(format!(
                "{}: {} pixel bytes for {} images of {channels}x{height}x{width}",
                dataset.as_str(),
                pixels.len(),
                labels.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= class_captions.len()) {
            return Err(Error::msg(format!(
                "{}: label {bad} has no caption ({} classes)",
                dataset.as_str(),
                class_captions.len()
            )));
        }
        Ok(CaptionedImages {
            dataset,
            channels,
            height,
            width,
            pixels,
            labels,
            class_captions,
        })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.class_captions.len()
    }
    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The images at `indices` as f32 `[B, C, H, W]` in [0, 1].
    pub fn images(&self, indices: &[usize], device: Device) -> Result<Tensor> {
        let n = self.image_len();
        let mut out = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            out.extend(
                self.pixels[i * n..(i + 1) * n]
                    .iter()
                    .map(|&p| p as f32 * (1.0 / 255.0)),
            );
        }
        Tensor::from_vec(
            out,
            (indices.len(), self.channels, self.height, self.width),
            device,
        )
    }
    /// The first `n` images per class, at most (a small balanced subset for tests and demos).
    pub fn per_class_subset(&self, n: usize) -> CaptionedImages {
        let mut taken = vec![0; self.num_classes()];
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let c = &mut taken[self.labels[i]];
                *c += 1;
                *c <= n
            })
            .collect();
        self.select(&keep)
    }
    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> CaptionedImages {
        let n = self.image_len();
        CaptionedImages {
            dataset: self.dataset,
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels: indices
                .iter()
                .flat_map(|&i| self.pixels[i * n..(i + 1) * n].iter().copied())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_captions: self.class_captions.clone(),
        }
    }
}

/// `dir/<name>` when it exists, else `dir`.
fn dataset_dir(dir: &Path, name: DatasetName) -> PathBuf {
    let sub = dir.join(name.as_str());
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// `stem.gz` when present, else `stem` when present, else `stem.gz` (whose error names it).
fn idx_file(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

/// Loads one split of MNIST or Fashion-MNIST from `dir` (see the module doc for the layout).
pub fn load_idx_dataset(name: DatasetName, dir: &Path, split: Split) -> Result<CaptionedImages> {
    if name == DatasetName::Shapes {
        return Err(Error::msg(
            "the shapes dataset is built in, not read from IDX files",
        ));
    }
    let d = dataset_dir(dir, name);
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = idx_file(&d, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = idx_file(&d, &format!("{prefix}-labels-idx1-ubyte"));
    let images = idx::read_images(&images_path)?;
    let labels = idx::read_labels(&labels_path)?;
    if images.count != labels.len() {
        return Err(Error::file(
            &labels_path,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.count,
                images_path.display()
            ),
        ));
    }
    let captions = name.class_captions();
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= captions.len()) {
        return Err(Error::file(
            &labels_path,
            format!("label {bad} is outside 0..{}", captions.len()),
        ));
    }
    CaptionedImages::new(
        name,
        (1, images.rows, images.cols),
        images.pixels,
        labels.into_iter().map(|l| l as usize).collect(),
        captions,
    )
}

/// Loads a split of any dataset by name (`dir` is not read for `shapes`, which is generated).
pub fn load_dataset(name: DatasetName, dir: &Path, split: Split) -> Result<CaptionedImages> {
    match name {
        DatasetName::Shapes => shapes_dataset(split),
        _ => load_idx_dataset(name, dir, split),
    }
}

/// Pictures per split of the built-in shapes as a CLIP dataset.
pub const SHAPES_TRAIN_COUNT: usize = 12_000;
pub const SHAPES_TEST_COUNT: usize = 3_000;

/// The built-in shapes as a CLIP dataset: 28 x 28 RGB pictures (the MNIST size, so both named
/// configurations apply), one class per shape x colour (30), captioned "An image of a red
/// square". Train and test are drawn with different seeds, so no picture is in both.
fn shapes_dataset(split: Split) -> Result<CaptionedImages> {
    use super::shapes::{RenderOpts, ShapesDataset, COLOURS};
    let (count, seed) = match split {
        Split::Train => (SHAPES_TRAIN_COUNT, 0x5EED_0001),
        Split::Test => (SHAPES_TEST_COUNT, 0x5EED_0002),
    };
    let size = 28;
    let data = ShapesDataset::generate(count, &RenderOpts::new(size), seed, Device::Cpu)?;
    let pixels: Vec<u8> = data
        .images
        .to_dtype(crate::DType::F32)?
        .to_vec::<f32>()?
        .into_iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let labels = data
        .labels
        .iter()
        .map(|l| l.shape * COLOURS.len() + l.colour)
        .collect();
    let captions = DatasetName::Shapes.class_captions();
    CaptionedImages::new(
        DatasetName::Shapes,
        (3, size, size),
        pixels,
        labels,
        captions,
    )
}
