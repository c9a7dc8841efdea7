//! Atomic file writes: write `<name>.tmp` beside the destination, fsync it, rename it over the
//! destination, then fsync the folder. A crash at any point leaves either the old file or the
//! new one, never a torn mix. Every writer in `io` (safetensors, checkpoints, PNG) goes
//! through here.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `<path>.tmp`, the staging name used while a file is written.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Moves a fully written and synced `tmp` over `path` and persists the rename. On failure the
/// temporary file is removed (a partial file is of no use to anyone) and the error returned.
pub(crate) fn commit_tmp(tmp: &Path, path: &Path, written: Result<()>) -> Result<()> {
    let result = written.and_then(|()| std::fs::rename(tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
        return result;
    }
    // Persist the directory entry too; not every platform can open a folder, hence best effort.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes a file atomically with `write`, which receives a buffered writer on the temporary file.
pub fn write_atomically(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    if path.file_name().is_none() {
        return Err(Error::file(path, "not a file path"));
    }
    let tmp = tmp_path(path);
    let written = (|| {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))
    })();
    commit_tmp(&tmp, path, written)
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref().to_path_buf();
    write_atomically(&path, |w| {
        w.write_all(bytes).map_err(|e| Error::io(&path, e))
    })
}
