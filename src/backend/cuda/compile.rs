//! Run-time compilation of the embedded kernel files with NVRTC, and the on-disk cache.
//!
//! A module is one `kernels/<family>.cu` file. It is compiled on first use for the device's
//! architecture straight to a CUBIN (`--gpu-architecture=sm_XY`, so `ptxas` runs and the driver
//! loads machine code, no JIT). The headers it includes (`common.cuh` and any other embedded
//! `.cuh`) are handed to NVRTC by name from the binary; `cuda_fp16.h` and friends come from the
//! CUDA include folder found by [`cuda_include_dir`].
//!
//! The cache key hashes everything that changes the output: the source, every embedded header,
//! the options, the NVRTC version and the architecture. Files are written atomically
//! (temporary name, then rename), so a crashed run never leaves a torn CUBIN behind.
//!
//! Only `libnvrtc` is needed here (no driver, no GPU): `tessera check-kernels` uses [`compile`]
//! on machines without a GPU.

use crate::kernel_sources::KERNEL_SOURCES;
use crate::{Error, Result};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVRTC library found at start-up.
#[derive(Clone, Debug)]
pub struct NvrtcInfo {
    pub major: i32,
    pub minor: i32,
    /// The path of the shared library the loader mapped (from `/proc/self/maps`).
    pub library: String,
}

/// Loads NVRTC once and reads its version. An error (never a panic) when the library is
/// missing, with the hint that fixes it.
pub fn nvrtc_info() -> Result<NvrtcInfo> {
    static INFO: OnceLock<std::result::Result<NvrtcInfo, String>> = OnceLock::new();
    INFO.get_or_init(load_nvrtc).clone().map_err(Error::Cuda)
}

fn load_nvrtc() -> std::result::Result<NvrtcInfo, String> {
    // cudarc panics on the first NVRTC call when the library is absent: look first.
    if !unsafe { nvrtc_sys::is_culib_present() } {
        return Err(
            "NVRTC (libnvrtc.so) not found on the loader path; install the CUDA \
                    toolkit or the nvidia-cuda-nvrtc wheel and add its lib folder to \
                    LD_LIBRARY_PATH"
                .into(),
        );
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    let library = loaded_library_path("libnvrtc").unwrap_or_else(|| "libnvrtc".into());
    if status != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {status:?}"));
    }
    if major < 12 {
        return Err(format!(
            "NVRTC {major}.{minor} ({library}) is too old: tessera's kernels need NVRTC 12 or 13"
        ));
    }
    Ok(NvrtcInfo {
        major,
        minor,
        library,
    })
}

/// The folder holding `cuda_fp16.h`, `cuda_bf16.h` and `crt/` (NVRTC does not embed them),
/// and where it came from. Looked up in order: `TESSERA_CUDA_INCLUDE`, `CUDA_HOME`,
/// `CUDA_PATH`, `/usr/local/cuda/include`, then the `nvidia/cu13/include` folder of a pip
/// wheel, found beside an `LD_LIBRARY_PATH` entry or in the usual site-packages folders.
pub fn cuda_include_dir() -> Option<(PathBuf, String)> {
    let has_headers = |d: &Path| d.join("cuda_fp16.h").is_file();
    if let Ok(d) = std::env::var("TESSERA_CUDA_INCLUDE") {
        // An explicit setting is used even when it looks wrong, so the error names it.
        return Some((PathBuf::from(d), "TESSERA_CUDA_INCLUDE".into()));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = std::env::var(var) {
            let d = Path::new(&root).join("include");
            if has_headers(&d) {
                return Some((d, var.into()));
            }
        }
    }
    let d = PathBuf::from("/usr/local/cuda/include");
    if has_headers(&d) {
        return Some((d, "/usr/local/cuda".into()));
    }
    let mut wheel_candidates = Vec::new();
    if let Ok(paths) = std::env::var("LD_LIBRARY_PATH") {
        for lib in std::env::split_paths(&paths) {
            wheel_candidates.push(lib.join("../include"));
        }
    }
    for base in ["/usr/local/lib", "/usr/lib"] {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                let p = e.path();
                if p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
                {
                    for site in ["dist-packages", "site-packages"] {
                        wheel_candidates.push(p.join(site).join("nvidia/cu13/include"));
                    }
                }
            }
        }
    }
    wheel_candidates
        .into_iter()
        .find(|d| has_headers(d))
        .map(|d| {
            let d = std::fs::canonicalize(&d).unwrap_or(d);
            (d, "pip wheel (nvidia-cuda-runtime)".into())
        })
}

/// The folder compiled modules are cached in: `TESSERA_KERNEL_CACHE`, else
/// `~/.cache/tessera/kernels` (`$XDG_CACHE_HOME/tessera/kernels` when that is set).
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TESSERA_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Path::new(&d).join("tessera/kernels");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache/tessera/kernels")
}

/// The embedded source of `file` (e.g. `"elementwise.cu"`).
pub fn kernel_source(file: &str) -> Result<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::Cuda(format!("no kernel file named {file} is embedded")))
}

/// Every embedded `.cu` file name, sorted.
pub fn kernel_files() -> Vec<&'static str> {
    KERNEL_SOURCES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| n.ends_with(".cu"))
        .collect()
}

fn headers() -> impl Iterator<Item = (&'static str, &'static str)> {
    KERNEL_SOURCES
        .iter()
        .copied()
        .filter(|(n, _)| n.ends_with(".cuh"))
}

/// The options every compile gets, for `arch` such as `"sm_90"`.
pub fn base_options(arch: &str) -> Result<Vec<String>> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    // A wrong-looking path still goes in: NVRTC's "cannot open cuda_fp16.h" then says more
    // than a guess here would.
    if let Some((dir, _)) = cuda_include_dir() {
        opts.push(format!("--include-path={}", dir.display()));
    }
    Ok(opts)
}

/// What NVRTC produced for one module.
pub struct Compiled {
    /// The CUBIN (machine code for exactly the requested `sm_XY`).
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings, and the ptxas report when `--ptxas-options=-v` was passed).
    pub log: String,
}

/// Compiles embedded kernel file `file` to a CUBIN with `options` (see [`base_options`]).
/// A compile error is an [`Error::Cuda`] naming the file and carrying NVRTC's log.
pub fn compile(file: &str, options: &[String]) -> Result<Compiled> {
    let headers: Vec<(&str, &str)> = headers().collect();
    compile_source(file, kernel_source(file)?, &headers, options)
}

/// Compiles `src` (named `file` in messages) with `headers` given to NVRTC by include name:
/// [`compile`] passes the embedded files; `check-kernels --dir` passes files read from disk.
pub fn compile_source(
    file: &str,
    src: &str,
    headers: &[(&str, &str)],
    options: &[String],
) -> Result<Compiled> {
    nvrtc_info()?;
    let c_src =
        CString::new(src).map_err(|_| Error::Cuda(format!("{file}: NUL byte in source")))?;
    let c_name = CString::new(file).map_err(|_| Error::Cuda(format!("{file}: bad file name")))?;
    let (hdr_names, hdr_srcs): (Vec<CString>, Vec<CString>) = headers
        .iter()
        .map(|&(n, s)| {
            (
                CString::new(n).unwrap_or_default(),
                CString::new(s).unwrap_or_default(),
            )
        })
        .unzip();
    let hdr_name_ptrs: Vec<*const c_char> = hdr_names.iter().map(|c| c.as_ptr()).collect();
    let hdr_src_ptrs: Vec<*const c_char> = hdr_srcs.iter().map(|c| c.as_ptr()).collect();
    let mut prog = std::mem::MaybeUninit::uninit();
    let status = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            c_src.as_ptr(),
            c_name.as_ptr(),
            hdr_srcs.len() as c_int,
            hdr_src_ptrs.as_ptr(),
            hdr_name_ptrs.as_ptr(),
        )
    };
    if status != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Cuda(format!(
            "{file}: nvrtcCreateProgram failed: {status:?}"
        )));
    }
    let prog = unsafe { prog.assume_init() };
    let compiled = unsafe { nvrtc::compile_program(prog, options) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    let result = match compiled {
        Err(e) => Err(Error::Cuda(format!(
            "{file}: NVRTC compile failed ({e:?}) with options {options:?}:\n{}",
            if log.trim().is_empty() {
                "(empty log: a register cap that is too low fails this way; run \
                 `tessera check-kernels` for the ptxas report)"
            } else {
                log.as_str()
            }
        ))),
        Ok(()) => get_cubin(prog)
            .map(|cubin| Compiled {
                cubin,
                log: log.clone(),
            })
            .map_err(|e| Error::Cuda(format!("{file}: nvrtcGetCUBIN failed: {e}"))),
    };
    unsafe { nvrtc::destroy_program(prog) }.ok();
    result
}

fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    let s = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if s != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("{s:?}"));
    }
    let mut buf = vec![0u8; size];
    let s = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if s != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("{s:?}"));
    }
    Ok(buf)
}

/// The full path of a mapped shared library whose file name starts with `prefix` (Linux:
/// `/proc/self/maps`), so `info` can say exactly which NVRTC or driver was loaded.
pub fn loaded_library_path(prefix: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.contains("builtins"))
        })
        .map(str::to_string)
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// 128-bit FNV-1a (two 64-bit lanes with different offsets): stable across Rust versions, so
/// cache file names survive a toolchain update.
fn stable_hash(parts: &[&[u8]]) -> String {
    let mut lanes = [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64];
    for part in parts {
        for lane in &mut lanes {
            for &b in *part {
                *lane ^= b as u64;
                *lane = lane.wrapping_mul(0x0000_0100_0000_01b3);
            }
            // Separate parts, so ("ab", "c") and ("a", "bc") differ.
            *lane ^= 0xff;
            *lane = lane.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:016x}{:016x}", lanes[0], lanes[1])
}

/// The cache key of `file` compiled with `options` by this NVRTC for `arch`.
pub fn cache_key(file: &str, options: &[String], arch: &str) -> Result<String> {
    let info = nvrtc_info()?;
    let src = kernel_source(file)?;
    let version = format!("nvrtc {}.{}", info.major, info.minor);
    let opts = options.join("\u{1f}");
    let mut parts: Vec<&[u8]> = vec![
        file.as_bytes(),
        src.as_bytes(),
        opts.as_bytes(),
        version.as_bytes(),
        arch.as_bytes(),
    ];
    for (n, s) in headers() {
        parts.push(n.as_bytes());
        parts.push(s.as_bytes());
    }
    Ok(stable_hash(&parts))
}

/// The CUBIN of `file` for compute capability `(major, minor)`: from the disk cache when an
/// identical compile happened before, else compiled now and stored.
pub fn module_image(file: &str, capability: (i32, i32)) -> Result<Vec<u8>> {
    let arch = format!("sm_{}{}", capability.0, capability.1);
    let options = base_options(&arch)?;
    let key = cache_key(file, &options, &arch)?;
    let stem = file.trim_end_matches(".cu");
    let dir = cache_dir();
    let path = dir.join(format!("{stem}-{arch}-{key}.cubin"));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let compiled = compile(file, &options)?;
    // A cache that cannot be written only costs a recompile next time.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!(".{stem}-{key}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &compiled.cubin).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            std::fs::remove_file(&tmp).ok();
        }
    }
    Ok(compiled.cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_parts_and_is_stable() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[b"x"]), stable_hash(&[b"x"]));
        assert_eq!(stable_hash(&[b"x"]).len(), 32);
    }
}

#[cfg(test)]
mod nvrtc_tests {
    use super::*;

    /// Runs where NVRTC is on the loader path (CI exports it); elsewhere says so and passes.
    #[test]
    fn every_kernel_file_compiles_for_sm90() {
        if let Err(e) = nvrtc_info() {
            println!("skipped: {e}");
            return;
        }
        let opts = base_options("sm_90").unwrap();
        for f in kernel_files() {
            let c = compile(f, &opts).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.cubin.len() > 64, "{f}: empty CUBIN");
        }
    }
}
