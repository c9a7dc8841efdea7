//! safetensors and checkpoint I/O: round trips of every dtype and of metadata, damaged and
//! missing files (errors that name the path, never a panic), `load_into` checks, checkpoints
//! that restore the random generator, and atomic replacement.

use half::{bf16, f16};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tessera::io::{load_into, load_safetensors, resume, save_safetensors, Checkpoint};
use tessera::optim::{AdamW, AdamWConfig, Ema, Optimizer};
use tessera::random::{manual_seed, rng_state};
use tessera::{DType, Device, Error, Result, Tensor};

const CPU: Device = Device::Cpu;

/// A fresh, empty folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-io-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn every_dtype() -> Result<Vec<(String, Tensor)>> {
    Ok(vec![
        (
            "f32".into(),
            Tensor::from_vec(vec![1.5f32, -2.0, 3.25, 0.0, 1e-3, -7.0], (2, 3), CPU)?,
        ),
        (
            "f64".into(),
            Tensor::from_vec(vec![std::f64::consts::PI, -1e300, 2.0, 0.1], 4, CPU)?,
        ),
        (
            "f16".into(),
            Tensor::from_vec(
                vec![
                    f16::from_f32(0.5),
                    f16::from_f32(-3.0),
                    f16::from_f32(65504.0),
                ],
                3,
                CPU,
            )?,
        ),
        (
            "bf16".into(),
            Tensor::from_vec(
                vec![
                    bf16::from_f32(1.0),
                    bf16::from_f32(-0.125),
                    bf16::from_f32(3.0e38),
                    bf16::from_f32(2.0),
                ],
                (2, 2),
                CPU,
            )?,
        ),
        (
            "i64".into(),
            Tensor::from_vec(vec![i64::MIN, -1, i64::MAX], 3, CPU)?,
        ),
        (
            "u32".into(),
            Tensor::from_vec(vec![0u32, u32::MAX], 2, CPU)?,
        ),
        (
            "u8".into(),
            Tensor::from_vec(vec![0u8, 1, 127, 128, 255], (5, 1), CPU)?,
        ),
        ("scalar".into(), Tensor::scalar(42.0f32, CPU)?),
        ("empty".into(), Tensor::zeros((0, 3), DType::F32, CPU)?),
        // A non-contiguous view is written in logical (row-major) order.
        (
            "view".into(),
            Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), CPU)?.t()?,
        ),
    ])
}

#[test]
fn round_trip_every_dtype() -> Result<()> {
    let dir = scratch("dtypes");
    let path = dir.join("all.safetensors");
    let tensors = every_dtype()?;
    save_safetensors(&path, &tensors, None)?;
    let file = load_safetensors(&path, CPU)?;
    assert_eq!(file.len(), tensors.len());
    assert!(file.metadata.is_empty());
    for (name, want) in &tensors {
        let got = file.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(got.dtype(), want.dtype(), "{name}");
        assert_eq!(got.to_vec_f64()?, want.to_vec_f64()?, "{name}");
    }
    // Bit-exact for the integer extremes (f64 could not tell i64::MAX from i64::MAX - 1).
    assert_eq!(
        file.get("i64").unwrap().to_vec::<i64>()?,
        vec![i64::MIN, -1, i64::MAX]
    );
    assert_eq!(
        file.get("view").unwrap().to_vec::<f32>()?,
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
    assert!(!dir.join("all.safetensors.tmp").exists());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn metadata_round_trips() -> Result<()> {
    let dir = scratch("metadata");
    let path = dir.join("m.safetensors");
    let meta: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        (
            "config".to_string(),
            r#"{"dim": 64, "name": "tiny \"model\""}"#.to_string(),
        ),
        ("unicode".to_string(), "héllo ✓".to_string()),
    ]
    .into();
    let t = vec![("x".to_string(), Tensor::ones(3, DType::F32, CPU)?)];
    save_safetensors(&path, &t, Some(meta.clone()))?;
    assert_eq!(load_safetensors(&path, CPU)?.metadata, meta);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn duplicate_names_are_refused() -> Result<()> {
    let dir = scratch("dup");
    let t = Tensor::ones(2, DType::F32, CPU)?;
    let err = save_safetensors(
        dir.join("d.safetensors"),
        &[("a".into(), t.clone()), ("a".into(), t)],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("`a`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Loading `path` fails with an error that names it (and, when given, says `what`).
fn assert_load_fails(path: &Path, what: &str) {
    let err = load_safetensors(path, CPU).expect_err("a damaged file must not load");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "no path in: {msg}"
    );
    assert!(msg.contains(what), "expected {what:?} in: {msg}");
}

/// A safetensors file with a hand-written header and `data_len` zero bytes of data.
fn handmade(path: &Path, header: &str, data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0u8);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_files_are_errors_naming_the_path() -> Result<()> {
    let dir = scratch("damaged");
    let good = dir.join("good.safetensors");
    save_safetensors(&good, &every_dtype()?, None)?;
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
    assert_load_fails(&truncated, "truncated");
    let header_cut = dir.join("header_cut.safetensors");
    std::fs::write(&header_cut, &bytes[..40]).unwrap();
    assert_load_fails(&header_cut, "truncated");
    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, &bytes[..5]).unwrap();
    assert_load_fails(&tiny, "too short");
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert_load_fails(&empty, "0 bytes");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"this is not a safetensors file at all, just some text",
    )
    .unwrap();
    assert_load_fails(&garbage, "");

    let bad_json = dir.join("bad_json.safetensors");
    handmade(
        &bad_json,
        r#"{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]"#,
        8,
    );
    assert_load_fails(&bad_json, "header");
    let bad_dtype = dir.join("bad_dtype.safetensors");
    handmade(
        &bad_dtype,
        r#"{"x":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_load_fails(&bad_dtype, "header");
    let bad_offsets = dir.join("bad_offsets.safetensors");
    handmade(
        &bad_offsets,
        r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    );
    assert_load_fails(&bad_offsets, "`x`");
    let bad_size = dir.join("bad_size.safetensors");
    handmade(
        &bad_size,
        r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_load_fails(&bad_size, "shape");
    let unsupported = dir.join("unsupported.safetensors");
    handmade(
        &unsupported,
        r#"{"x":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}"#,
        4,
    );
    assert_load_fails(&unsupported, "I16");

    // The well-formed handmade file loads (so the failures above are about the damage).
    let fine = dir.join("fine.safetensors");
    handmade(
        &fine,
        r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_eq!(
        load_safetensors(&fine, CPU)?
            .get("x")
            .unwrap()
            .to_vec::<f32>()?,
        vec![0.0, 0.0]
    );

    // A folder where a file is expected.
    assert!(load_safetensors(&dir, CPU).is_err());

    let missing = dir.join("missing.safetensors");
    let err = load_safetensors(&missing, CPU).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn load_into_checks_names_shapes_and_casts() -> Result<()> {
    let dir = scratch("load_into");
    let path = dir.join("w.safetensors");
    let saved = vec![
        (
            "layer.weight".to_string(),
            Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), CPU)?,
        ),
        (
            "layer.bias".to_string(),
            Tensor::from_vec(vec![0.5f64, -0.5], 2, CPU)?,
        ),
    ];
    save_safetensors(&path, &saved, None)?;
    let file = load_safetensors(&path, CPU)?;

    // f64 in the file, f32 in the model: converted, written in place (holders see it).
    let w = Tensor::zeros((2, 3), DType::F32, CPU)?.requires_grad_()?;
    let b = Tensor::zeros(2, DType::F32, CPU)?;
    let holder = w.clone();
    let params = vec![
        ("layer.weight".to_string(), w.clone()),
        ("layer.bias".to_string(), b.clone()),
    ];
    let report = load_into(&params, &file, true)?;
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(holder.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(b.to_vec::<f32>()?, vec![0.5, -0.5]);
    assert!(w.requires_grad(), "still a parameter");

    // Wrong shape: the error names the tensor and both shapes, and nothing is written.
    let wt = Tensor::zeros((3, 2), DType::F32, CPU)?;
    let b2 = Tensor::zeros(2, DType::F32, CPU)?;
    let bad = vec![
        ("layer.weight".to_string(), wt.clone()),
        ("layer.bias".to_string(), b2.clone()),
    ];
    let msg = load_into(&bad, &file, true).unwrap_err().to_string();
    assert!(
        msg.contains("layer.weight") && msg.contains("[2, 3]") && msg.contains("[3, 2]"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(
        b2.to_vec::<f32>()?,
        vec![0.0, 0.0],
        "checks come before any copy"
    );

    // Missing and unexpected names: errors when strict, reported otherwise.
    let extra = Tensor::zeros(4, DType::F32, CPU)?;
    let partial = vec![
        ("layer.weight".to_string(), w.clone()),
        ("head.weight".to_string(), extra.clone()),
    ];
    let msg = load_into(&partial, &file, true).unwrap_err().to_string();
    assert!(
        msg.contains("missing tensors: head.weight")
            && msg.contains("unexpected tensors: layer.bias"),
        "{msg}"
    );
    let report = load_into(&partial, &file, false)?;
    assert_eq!(report.missing, vec!["head.weight".to_string()]);
    assert_eq!(report.unexpected, vec!["layer.bias".to_string()]);
    assert_eq!(extra.to_vec::<f32>()?, vec![0.0; 4]);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A model of two parameters and an AdamW that has taken two steps.
fn trained(seed: u64) -> Result<(Vec<(String, Tensor)>, AdamW)> {
    let w = Tensor::randn_with_seed((3, 2), DType::F32, CPU, seed, 0)?.requires_grad_()?;
    let b = Tensor::zeros(2, DType::F32, CPU)?.requires_grad_()?;
    let params = vec![
        ("blocks.0.weight".to_string(), w.clone()),
        ("blocks.0.bias".to_string(), b.clone()),
    ];
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: 0.01,
            ..Default::default()
        },
    )?;
    let x = Tensor::randn_with_seed((4, 3), DType::F32, CPU, seed + 1, 0)?;
    for _ in 0..2 {
        opt.zero_grad();
        x.matmul(&w)?.add(&b)?.sqr()?.mean_all()?.backward()?;
        opt.step()?;
    }
    Ok((params, opt))
}

#[test]
fn checkpoint_round_trip_restores_weights_optimizer_and_rng() -> Result<()> {
    // The only test in this file that uses the global generator.
    let dir = scratch("checkpoint");
    let path = dir.join("ckpt.safetensors");
    let (params, opt) = trained(3)?;
    manual_seed(1234);
    let _ = Tensor::rand(7, DType::F32, CPU)?;
    let extra: HashMap<String, String> =
        [("config".to_string(), r#"{"dim":2}"#.to_string())].into();
    let mut ema = Ema::new(&params, 0.5)?;
    let shifted: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, p)| Ok((n.clone(), p.add_scalar(1.0)?.detach())))
        .collect::<Result<_>>()?;
    ema.update(&shifted)?;
    let ck = Checkpoint::capture(&params, &opt, 2, extra.clone()).with_ema(&ema);
    ck.save(&path)?;
    let after_save = Tensor::rand(5, DType::F32, CPU)?.to_vec::<f32>()?;

    // Elsewhere: different weights, a fresh optimizer, a reseeded generator.
    manual_seed(999);
    let _ = Tensor::rand(3, DType::F32, CPU)?;
    let (params2, _) = trained(50)?;
    let mut opt2 = AdamW::new(
        params2.clone(),
        AdamWConfig {
            lr: 0.5,
            ..Default::default()
        },
    )?;
    let loaded = resume(&path, &params2, &mut opt2, true)?;
    assert_eq!(loaded.step, 2);
    assert_eq!(loaded.extra, extra);
    assert_eq!(
        Tensor::rand(5, DType::F32, CPU)?.to_vec::<f32>()?,
        after_save,
        "the same draws after a resume"
    );
    assert_eq!(loaded.rng.seed, 1234);
    for ((n1, a), (n2, b)) in params.iter().zip(&params2) {
        assert_eq!(n1, n2);
        assert_eq!(a.to_vec::<f32>()?, b.to_vec::<f32>()?, "{n1}");
    }
    assert_eq!(opt2.lr(), 0.01);
    let (s1, s2) = (opt.state(), opt2.state());
    assert_eq!(s1.len(), s2.len());
    for ((n1, a), (n2, b)) in s1.iter().zip(&s2) {
        assert_eq!(n1, n2);
        assert_eq!(a.to_vec_f64()?, b.to_vec_f64()?, "{n1}");
    }
    assert!(rng_state().offset > 0);
    let mut ema2 = Ema::new(&params2, 0.5)?;
    loaded.restore_ema(&mut ema2)?;
    assert_eq!(ema2.num_updates(), 1);
    for ((n, a), (_, b)) in ema.shadow().iter().zip(ema2.shadow()) {
        assert_eq!(a.to_vec::<f32>()?, b.to_vec::<f32>()?, "ema {n}");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn checkpoint_save_is_atomic() -> Result<()> {
    let dir = scratch("atomic");
    let path = dir.join("ckpt.safetensors");
    let tmp = dir.join("ckpt.safetensors.tmp");
    let (params, opt) = trained(7)?;
    Checkpoint::capture(&params, &opt, 1, HashMap::new()).save(&path)?;
    assert!(!tmp.exists(), "the temporary file is renamed away");

    // A stale temporary file from a crashed run does not get in the way; the old
    // checkpoint is replaced.
    std::fs::write(&tmp, b"half-written garbage").unwrap();
    Checkpoint::capture(&params, &opt, 2, HashMap::new()).save(&path)?;
    assert!(!tmp.exists());
    assert_eq!(Checkpoint::load(&path)?.step, 2);

    // A write that fails part-way leaves the previous checkpoint intact.
    std::fs::create_dir(&tmp).unwrap();
    let err = Checkpoint::capture(&params, &opt, 3, HashMap::new())
        .save(&path)
        .unwrap_err();
    assert!(err.to_string().contains("ckpt.safetensors.tmp"), "{err}");
    assert_eq!(Checkpoint::load(&path)?.step, 2);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn plain_safetensors_is_not_a_checkpoint() -> Result<()> {
    let dir = scratch("not_ckpt");
    let path = dir.join("weights.safetensors");
    save_safetensors(
        &path,
        &[("model.x".into(), Tensor::ones(2, DType::F32, CPU)?)],
        None,
    )?;
    let msg = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("not a tessera checkpoint") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

// ---- PNG ----------------------------------------------------------------------------------

#[test]
fn png_round_trips_rgb_and_grey_bit_exactly() {
    use tessera::io::Image;
    let dir = scratch("png");
    let rgb_data: Vec<u8> = (0..7 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
    let rgb = Image::new(7, 5, 3, rgb_data).unwrap();
    rgb.write_png(dir.join("rgb.png")).unwrap();
    assert_eq!(Image::read_png(dir.join("rgb.png")).unwrap(), rgb);
    let grey = Image::new(4, 6, 1, (0..24).map(|i| (i * 11) as u8).collect()).unwrap();
    grey.write_png(dir.join("grey.png")).unwrap();
    assert_eq!(Image::read_png(dir.join("grey.png")).unwrap(), grey);
    assert!(!dir.join("rgb.png.tmp").exists(), "temporary file left behind");
}

#[test]
fn image_tensor_conversion_is_channel_major_and_clamped() {
    use tessera::io::Image;
    // [C=3, H=1, W=2]: channel-major in the tensor, interleaved in the image.
    let t = Tensor::from_vec(vec![0.0f32, 1.0, 0.5, -2.0, 1.0, 3.0], (3, 1, 2), CPU).unwrap();
    let img = Image::from_tensor(&t).unwrap();
    assert_eq!(img.data, vec![0, 128, 255, 255, 0, 255]);
    let back = img.to_tensor(CPU).unwrap().to_vec::<f32>().unwrap();
    let want = [0.0, 1.0, 128.0 / 255.0, 0.0, 1.0, 1.0];
    for (a, b) in back.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{back:?}");
    }
    let bad = Tensor::zeros((2, 4, 4), DType::F32, CPU).unwrap();
    assert!(Image::from_tensor(&bad).is_err());
}

#[test]
fn grid_places_each_image_in_its_cell() {
    use tessera::io::{grid, Image};
    let red = Image::filled(2, 2, &[255, 0, 0]);
    let grey = Image::filled(2, 1, &[9]);
    let g = grid(&[red, grey.clone(), grey], 2, 1, 255);
    assert_eq!((g.width, g.height, g.channels), (2 * 2 + 3, 2 * 2 + 3, 3));
    let px = |x: usize, y: usize| &g.data[(y * g.width + x) * 3..(y * g.width + x) * 3 + 3];
    assert_eq!(px(0, 0), [255, 255, 255]); // padding
    assert_eq!(px(1, 1), [255, 0, 0]); // first cell
    assert_eq!(px(4, 1), [9, 9, 9]); // second cell, grey made RGB
    assert_eq!(px(4, 2), [255, 255, 255]); // below the shorter image
    assert_eq!(px(1, 4), [9, 9, 9]); // second row
}

#[test]
fn png_errors_name_the_file() {
    use tessera::io::Image;
    let dir = scratch("png-errors");
    let missing = dir.join("missing.png");
    let e = Image::read_png(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.png"), "{e}");
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png at all").unwrap();
    let e = Image::read_png(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.png") && e.contains("PNG"), "{e}");
}
