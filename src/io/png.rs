//! 8-bit images and PNG files: what models read (`tessera caption --image`) and what people
//! look at (samples, retrieval matches, grids, confusion matrices).
//!
//! An [`Image`] is row-major, interleaved, 1 (grey) or 3 (RGB) bytes per pixel. Tensors in
//! models are `[C, H, W]` floats in [0, 1]; [`Image::from_tensor`] and [`Image::to_tensor`]
//! convert, clamping and rounding. Writes are atomic (see `io::atomic`).

use super::atomic::write_atomically;
use crate::tensor::{DType, Device, Tensor};
use crate::{Error, Result};
use std::path::Path;

/// An 8-bit image, `channels` = 1 (grey) or 3 (RGB), pixels row by row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    /// A `width` x `height` image filled with `colour` (1 or 3 values, one per channel).
    pub fn filled(width: usize, height: usize, colour: &[u8]) -> Image {
        let channels = colour.len();
        assert!(
            channels == 1 || channels == 3,
            "Image::filled: 1 or 3 channels"
        );
        Image {
            width,
            height,
            channels,
            data: colour.repeat(width * height),
        }
    }

    /// Wraps pixel bytes, checking that their count matches the size.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Image> {
        if channels != 1 && channels != 3 {
            return Err(Error::msg(format!(
                "Image::new: {channels} channels (expected 1 or 3)"
            )));
        }
        if data.len() != width * height * channels {
            return Err(Error::msg(format!(
                "Image::new: {} bytes for a {width}x{height}x{channels} image ({} expected)",
                data.len(),
                width * height * channels
            )));
        }
        Ok(Image {
            width,
            height,
            channels,
            data,
        })
    }

    /// From a `[C, H, W]` (C = 1 or 3) tensor of values in [0, 1], any float dtype or device.
    pub fn from_tensor(t: &Tensor) -> Result<Image> {
        let dims = t.dims();
        if dims.len() != 3 || !(dims[0] == 1 || dims[0] == 3) {
            return Err(Error::shape(
                "Image::from_tensor",
                "expected [C, H, W] with C = 1 or 3",
                &[t.shape()],
            ));
        }
        let (c, h, w) = (dims[0], dims[1], dims[2]);
        let v = t.to_vec_f64()?;
        let mut data = vec![0u8; c * h * w];
        for ch in 0..c {
            for i in 0..h * w {
                data[i * c + ch] = (v[ch * h * w + i].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        Image::new(w, h, c, data)
    }

    /// A `[C, H, W]` f32 tensor with values in [0, 1].
    pub fn to_tensor(&self, device: Device) -> Result<Tensor> {
        let (c, hw) = (self.channels, self.width * self.height);
        let mut v = vec![0f32; c * hw];
        for i in 0..hw {
            for ch in 0..c {
                v[ch * hw + i] = self.data[i * c + ch] as f32 / 255.0;
            }
        }
        Tensor::from_vec(v, (c, self.height, self.width), device)?.to_dtype(DType::F32)
    }

    /// The same picture with 3 channels (grey is replicated).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        Image {
            width: self.width,
            height: self.height,
            channels: 3,
            data: self.data.iter().flat_map(|&g| [g, g, g]).collect(),
        }
    }

    /// Nearest-neighbour scaling by an integer factor (for small images in grids).
    pub fn upscale(&self, factor: usize) -> Image {
        let (w, h, c) = (self.width * factor, self.height * factor, self.channels);
        let mut data = Vec::with_capacity(w * h * c);
        for y in 0..h {
            for x in 0..w {
                let src = ((y / factor) * self.width + x / factor) * c;
                data.extend_from_slice(&self.data[src..src + c]);
            }
        }
        Image {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    /// Copies `src` with its top-left corner at (x, y), clipped to this image; channels are
    /// converted (grey into RGB) as needed.
    pub fn paste(&mut self, src: &Image, x: usize, y: usize) {
        let src = if src.channels == self.channels {
            src.clone()
        } else {
            src.to_rgb()
        };
        if src.channels != self.channels {
            // An RGB source cannot go into a grey canvas without choosing a conversion.
            return;
        }
        let c = self.channels;
        for sy in 0..src.height.min(self.height.saturating_sub(y)) {
            let n = src.width.min(self.width.saturating_sub(x)) * c;
            let d = ((y + sy) * self.width + x) * c;
            let s = sy * src.width * c;
            self.data[d..d + n].copy_from_slice(&src.data[s..s + n]);
        }
    }

    /// Sets one pixel, ignoring coordinates outside the image.
    pub fn put(&mut self, x: usize, y: usize, colour: &[u8]) {
        if x < self.width && y < self.height && colour.len() == self.channels {
            let i = (y * self.width + x) * self.channels;
            self.data[i..i + self.channels].copy_from_slice(colour);
        }
    }

    /// Writes the image as a PNG file, atomically.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let colour = match self.channels {
            1 => png::ColorType::Grayscale,
            _ => png::ColorType::Rgb,
        };
        write_atomically(path, |w| {
            let mut enc = png::Encoder::new(w, self.width as u32, self.height as u32);
            enc.set_color(colour);
            enc.set_depth(png::BitDepth::Eight);
            let err = |e: png::EncodingError| Error::file(path, format!("cannot write PNG: {e}"));
            let mut writer = enc.write_header().map_err(err)?;
            writer.write_image_data(&self.data).map_err(err)?;
            writer.finish().map_err(err)
        })
    }

    /// Reads a PNG file as 8-bit grey or RGB (palette, 16-bit and alpha are converted; alpha
    /// is composited over white).
    pub fn read_png(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(file));
        dec.set_transformations(png::Transformations::normalize_to_color8());
        let err = |e: png::DecodingError| Error::file(path, format!("not a readable PNG: {e}"));
        let mut reader = dec.read_info().map_err(err)?;
        let mut buf = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).map_err(err)?;
        buf.truncate(info.buffer_size());
        let (w, h) = (info.width as usize, info.height as usize);
        let over_white =
            |v: u8, a: u8| ((v as u32 * a as u32 + 255 * (255 - a as u32)) / 255) as u8;
        let (channels, data) = match info.color_type {
            png::ColorType::Grayscale => (1, buf),
            png::ColorType::Rgb => (3, buf),
            png::ColorType::GrayscaleAlpha => (
                1,
                buf.chunks_exact(2)
                    .map(|p| over_white(p[0], p[1]))
                    .collect(),
            ),
            png::ColorType::Rgba => (
                3,
                buf.chunks_exact(4)
                    .flat_map(|p| {
                        [
                            over_white(p[0], p[3]),
                            over_white(p[1], p[3]),
                            over_white(p[2], p[3]),
                        ]
                    })
                    .collect(),
            ),
            png::ColorType::Indexed => {
                return Err(Error::file(path, "palette PNG was not expanded"));
            }
        };
        Image::new(w, h, channels, data).map_err(|e| Error::file(path, e.to_string()))
    }
}

/// Tiles images into a grid of `cols` columns with `pad` pixels of `background` between and
/// around them. Cells are as large as the largest image; the result is RGB unless every
/// image is grey.
pub fn grid(images: &[Image], cols: usize, pad: usize, background: u8) -> Image {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let cw = images.iter().map(|i| i.width).max().unwrap_or(0);
    let ch = images.iter().map(|i| i.height).max().unwrap_or(0);
    let channels = if images.iter().all(|i| i.channels == 1) {
        1
    } else {
        3
    };
    let mut out = Image::filled(
        cols * cw + (cols + 1) * pad,
        rows * ch + (rows + 1) * pad,
        &vec![background; channels],
    );
    for (k, img) in images.iter().enumerate() {
        let (r, c) = (k / cols, k % cols);
        out.paste(img, pad + c * (cw + pad), pad + r * (ch + pad));
    }
    out
}
