//! `tessera data shapes`: writes the built-in shapes pictures as PNG files with a captions
//! file, so a user can see what the models learn from.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use tessera::data::shapes::{train_caption, RenderOpts, ShapesDataset};
use tessera::io::Image;
use tessera::random::Rng;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Pictures of coloured shapes with captions (PNG + captions.tsv).
    Shapes(ShapesArgs),
}

#[derive(Args, Debug)]
pub struct ShapesArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub count: usize,
    /// Image side in pixels (32, 64, 224, ...).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Hard edges (no anti-aliasing).
    #[arg(long)]
    pub no_antialias: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Shapes(a) => shapes(a),
    }
}

fn shapes(a: ShapesArgs) -> anyhow::Result<()> {
    if a.size < 8 {
        anyhow::bail!("--size {} is too small (at least 8 pixels)", a.size);
    }
    std::fs::create_dir_all(&a.out).map_err(|e| tessera::Error::io(&a.out, e))?;
    let opts = RenderOpts {
        antialias: !a.no_antialias,
        ..RenderOpts::new(a.size)
    };
    let data = ShapesDataset::generate(a.count, &opts, a.seed, tessera::Device::Cpu)?;
    let mut rng = Rng::new(a.seed ^ 0xCA97);
    let mut lines = String::from("file\tcaption\tshape\tcolour\tsize\tplace\n");
    let pb = tessera::train::progress::bar(a.count as u64, "png", !a.json);
    for (i, label) in data.labels.iter().enumerate() {
        let name = format!("shape_{i:05}.png");
        Image::from_tensor(&data.image(i)?)?.write_png(a.out.join(&name))?;
        let caption = train_caption(label, &mut rng);
        lines.push_str(&format!(
            "{name}\t{caption}\t{}\t{}\t{}\t{}\n",
            label.shape_name(),
            label.colour_name(),
            tessera::data::shapes::SIZES[label.size],
            tessera::data::shapes::PLACES[label.place]
        ));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let path = a.out.join("captions.tsv");
    tessera::io::write_bytes_atomically(&path, lines.as_bytes())?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"count": a.count, "size": a.size, "out": a.out.display().to_string(), "captions": path.display().to_string()})
        );
    } else {
        println!(
            "wrote {} pictures of {}x{} pixels and {} to {}",
            a.count,
            a.size,
            a.size,
            path.display(),
            a.out.display()
        );
    }
    Ok(())
}
