//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzip-compressed.
//!
//! All integers are big-endian u32: a magic number (`0x00000803` for rank-3 u8 data such as
//! images, `0x00000801` for rank-1 u8 data such as labels), one size per dimension, then the
//! u8 payload in row-major order. A file whose name ends in `.gz` is decompressed first.
//! Every failure (missing file, bad gzip stream, wrong magic, too few bytes) is an error that
//! names the file.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Magic of an unsigned-byte array of rank 3 (`[count, rows, cols]`).
pub const MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic of an unsigned-byte array of rank 1 (`[count]`).
pub const MAGIC_LABELS: u32 = 0x0000_0801;

/// `count` grey images of `rows x cols` pixels, row-major, 0 = background, 255 = full ink.
#[derive(Clone, Debug)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// The file's bytes, gunzipped when its name ends in `.gz`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 2);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("not a valid gzip stream ({e})")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The big-endian u32 at word `i` of the header.
fn header_word(bytes: &[u8], i: usize, path: &Path) -> Result<usize> {
    let b = bytes.get(4 * i..4 * i + 4).ok_or_else(|| {
        Error::file(
            path,
            format!(
                "truncated IDX header: {} bytes, need at least {}",
                bytes.len(),
                4 * i + 4
            ),
        )
    })?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Checks the magic and that the payload holds exactly `expected` bytes after a header of
/// `header` bytes; returns the payload.
fn payload<'a>(
    bytes: &'a [u8],
    magic: u32,
    header: usize,
    expected: usize,
    path: &Path,
) -> Result<&'a [u8]> {
    let found = header_word(bytes, 0, path)? as u32;
    if found != magic {
        return Err(Error::file(
            path,
            format!("wrong IDX magic 0x{found:08x}, expected 0x{magic:08x}"),
        ));
    }
    let have = bytes.len().saturating_sub(header);
    if have < expected {
        return Err(Error::file(
            path,
            format!("truncated IDX data: {have} payload bytes, the header promises {expected}"),
        ));
    }
    Ok(&bytes[header..header + expected])
}

/// Reads an images file (`idx3-ubyte`, optionally `.gz`).
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    // Check the magic before reading the sizes, so a labels file passed here says so.
    payload(&bytes, MAGIC_IMAGES, 0, 0, path)?;
    let (count, rows, cols) = (
        header_word(&bytes, 1, path)?,
        header_word(&bytes, 2, path)?,
        header_word(&bytes, 3, path)?,
    );
    let n = count * rows * cols;
    let pixels = payload(&bytes, MAGIC_IMAGES, 16, n, path)?.to_vec();
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Reads a labels file (`idx1-ubyte`, optionally `.gz`).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    payload(&bytes, MAGIC_LABELS, 0, 0, path)?;
    let count = header_word(&bytes, 1, path)?;
    Ok(payload(&bytes, MAGIC_LABELS, 8, count, path)?.to_vec())
}
