//! `tessera caption --image FILE`: captions a picture with a trained captioner (the frozen
//! ResNet-18's features prefix the caption). Loads checkpoints; never trains.

use super::{resolve_device, DeviceArg};
use clap::Args;
use std::path::PathBuf;
use tessera::io::Image;
use tessera::random::Rng;
use tessera::train::captioner::load_captioner;
use tessera::train::shapes_resnet::{extract_features, load_resnet};
use tessera::train::t2f_pipeline::{CAPTIONER_FILE, RESNET_FILE};

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// A PNG picture (resized to the size the ResNet was trained on).
    #[arg(long)]
    pub image: PathBuf,
    /// Folder holding resnet18.safetensors and captioner.safetensors.
    #[arg(long, default_value = "tessera-demo")]
    pub dir: PathBuf,
    /// Nucleus sampling with this top-p instead of greedy decoding.
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CaptionArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let (resnet, size) = load_resnet(&a.dir.join(RESNET_FILE), device)?;
    let (captioner, tokenizer) = load_captioner(&a.dir.join(CAPTIONER_FILE), device)?;
    let img = Image::read_png(&a.image)?.to_rgb();
    let t = img.to_tensor(device)?.unsqueeze(0)?; // [1, 3, H, W]
    let t = if img.width != size || img.height != size {
        // Average-pool when the picture is an integer multiple of the size, else nearest.
        if img.width == img.height && img.width % size == 0 {
            let f = img.width / size;
            t.avg_pool2d((f, f), (f, f), (0, 0))?
        } else {
            t.upsample_nearest2d((size, size))?
        }
    } else {
        t
    };
    let features = extract_features(&resnet, &t, 1)?;
    let mut rng = Rng::new(a.seed);
    let caption = captioner.caption(&features, &tokenizer, a.top_p, a.temperature, &mut rng)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"image": a.image.display().to_string(), "caption": caption, "decoding": if a.top_p.is_some() {"top_p"} else {"greedy"}})
        );
    } else {
        println!("{caption}");
    }
    Ok(())
}
