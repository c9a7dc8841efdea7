//! ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", 2015), laid out
//! exactly as torchvision's `resnet18` so its `state_dict` names and shapes match one for one
//! and converted torchvision weights load by name (see the README for the conversion):
//!
//! ```text
//! x [N, C, H, W]   (C = in_channels: 3 for RGB, 1 for gray Fashion-MNIST)
//!   --conv1 (7x7, stride 2, pad 3, 64) --bn1 --relu --maxpool (3x3, stride 2, pad 1)  [N, 64, H/4, W/4]
//!   --layer1 (2 BasicBlocks,  64)                                                      [N, 64, H/4, W/4]
//!   --layer2 (2 BasicBlocks, 128, first with stride 2 and a 1x1 `downsample`)          [N, 128, H/8, W/8]
//!   --layer3 (2 BasicBlocks, 256, idem)                                                [N, 256, H/16, W/16]
//!   --layer4 (2 BasicBlocks, 512, idem)                                                [N, 512, H/32, W/32]
//!   --adaptive average pool to 1x1, flatten = features()                               [N, 512]
//!   --fc                                                                               [N, num_classes]
//! BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)), 3x3 convolutions.
//! ```
//! `small_input` swaps the stem for a 3x3 stride-1 convolution without the max-pool (the
//! usual CIFAR variant) so a 32-pixel image keeps 32x32 maps in `layer1`: better features for
//! tiny images, at 16x the compute. Names and every other shape are unchanged, except
//! `conv1.weight`, which becomes `[64, C, 3, 3]` (so torchvision's stem does not load into it).
//! `in_channels` other than 3 likewise changes only `conv1.weight` (`[64, 1, 7, 7]` for gray
//! pictures): a gray picture is judged as it is, not copied into three channels.

use crate::nn::{children_buffers, children_parameters, BatchNorm2d, Conv2d, Linear, Module};
use crate::ops::Conv2dParams;
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Outputs of `fc` (1000 for ImageNet weights).
    pub num_classes: usize,
    /// 3x3 stride-1 stem, no max-pool: for 32-pixel inputs.
    pub small_input: bool,
    /// Channels of the pictures (3 for ImageNet weights and the shapes, 1 for Fashion-MNIST).
    pub in_channels: usize,
}

impl ResNetConfig {
    pub fn to_json(&self) -> String {
        serde_json::json!({"arch": "resnet18", "num_classes": self.num_classes,
            "small_input": self.small_input, "in_channels": self.in_channels})
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| Error::msg(format!("resnet config JSON: {e}")))?;
        Ok(ResNetConfig {
            num_classes: v
                .get("num_classes")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| Error::msg("resnet config JSON: missing num_classes"))?
                as usize,
            small_input: v
                .get("small_input")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            // Checkpoints from before the field read RGB.
            in_channels: v.get("in_channels").and_then(|x| x.as_u64()).unwrap_or(3) as usize,
        })
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: Device) -> Result<Conv2d> {
    let params = Conv2dParams {
        stride: (stride, stride),
        padding: (k / 2, k / 2),
        ..Default::default()
    };
    let c = Conv2d::new(cin, cout, k, params, false, device)?;
    // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    let std = (2.0 / (cout * k * k) as f64).sqrt();
    c.weight.copy_from(&crate::nn::init::normal(
        0.0,
        std,
        c.weight.shape().clone(),
        device,
    )?)?;
    Ok(c)
}

/// Two 3x3 convolutions with a residual connection (torchvision's `BasicBlock`).
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    /// 1x1 strided convolution + batch norm when the shape changes (`downsample.0`, `.1`).
    pub downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: Device) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv(cin, cout, 1, stride, device)?,
                BatchNorm2d::new(cout, device)?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(cin, cout, 3, stride, device)?,
            bn1: BatchNorm2d::new(cout, device)?,
            conv2: conv(cout, cout, 3, 1, device)?,
            bn2: BatchNorm2d::new(cout, device)?,
            downsample,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h)?)?;
        let identity = match &self.downsample {
            Some((c, bn)) => bn.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        h.add(&identity)?.relu()
    }
    fn children(&self) -> Vec<(&str, &dyn Module)> {
        let mut v: Vec<(&str, &dyn Module)> = vec![
            ("conv1", &self.conv1),
            ("bn1", &self.bn1),
            ("conv2", &self.conv2),
            ("bn2", &self.bn2),
        ];
        if let Some((c, bn)) = &self.downsample {
            v.push(("downsample.0", c));
            v.push(("downsample.1", bn));
        }
        v
    }
}

impl Module for BasicBlock {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        children_parameters(&self.children())
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        children_buffers(&self.children())
    }
    fn set_training(&self, training: bool) {
        self.children()
            .iter()
            .for_each(|(_, m)| m.set_training(training))
    }
}

/// A torchvision `layerN`: a list of blocks named `layerN.0`, `layerN.1`.
pub struct Stage(pub Vec<BasicBlock>);

impl Module for Stage {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        crate::nn::list_parameters("", &self.0)
            .into_iter()
            .map(|(n, t)| (n.trim_start_matches('.').to_string(), t))
            .collect()
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        crate::nn::list_buffers("", &self.0)
            .into_iter()
            .map(|(n, t)| (n.trim_start_matches('.').to_string(), t))
            .collect()
    }
    fn set_training(&self, training: bool) {
        self.0.iter().for_each(|b| b.set_training(training))
    }
}

pub struct ResNet18 {
    pub config: ResNetConfig,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub layer1: Stage,
    pub layer2: Stage,
    pub layer3: Stage,
    pub layer4: Stage,
    pub fc: Linear,
}

/// Width of [`ResNet18::features`].
pub const FEATURE_DIM: usize = 512;

impl ResNet18 {
    pub fn new(config: ResNetConfig, device: Device) -> Result<Self> {
        let stage = |cin: usize, cout: usize, stride: usize| -> Result<Stage> {
            Ok(Stage(vec![
                BasicBlock::new(cin, cout, stride, device)?,
                BasicBlock::new(cout, cout, 1, device)?,
            ]))
        };
        if config.in_channels == 0 {
            return Err(Error::msg("ResNet18: in_channels must be positive"));
        }
        let conv1 = if config.small_input {
            conv(config.in_channels, 64, 3, 1, device)?
        } else {
            conv(config.in_channels, 64, 7, 2, device)?
        };
        Ok(ResNet18 {
            conv1,
            bn1: BatchNorm2d::new(64, device)?,
            layer1: stage(64, 64, 1)?,
            layer2: stage(64, 128, 2)?,
            layer3: stage(128, 256, 2)?,
            layer4: stage(256, 512, 2)?,
            fc: Linear::new(FEATURE_DIM, config.num_classes, true, device)?,
            config,
        })
    }

    /// The 512-d global-average-pooled output of `layer4`: `[N, C, H, W]` -> `[N, 512]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.config.in_channels {
            return Err(Error::shape(
                "ResNet18",
                format!("expected images [N, {}, H, W]", self.config.in_channels),
                &[x.shape()],
            ));
        }
        let mut h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        if !self.config.small_input {
            h = h.max_pool2d((3, 3), (2, 2), (1, 1))?;
        }
        for stage in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            for block in &stage.0 {
                h = block.forward(&h)?;
            }
        }
        let n = h.dims()[0];
        h.adaptive_avg_pool2d((1, 1))?.reshape((n, FEATURE_DIM))
    }

    /// Class logits `[N, num_classes]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc.forward(&self.features(x)?)
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        vec![
            ("conv1", &self.conv1),
            ("bn1", &self.bn1),
            ("layer1", &self.layer1),
            ("layer2", &self.layer2),
            ("layer3", &self.layer3),
            ("layer4", &self.layer4),
            ("fc", &self.fc),
        ]
    }
}

impl Module for ResNet18 {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        children_parameters(&self.children())
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        children_buffers(&self.children())
    }
    fn set_training(&self, training: bool) {
        self.children()
            .iter()
            .for_each(|(_, m)| m.set_training(training))
    }
}
