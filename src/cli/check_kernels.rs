//! `tessera check-kernels [--json]`: compiles every embedded kernel file for `sm_90` to a
//! CUBIN with NVRTC (only `libnvrtc` is needed: no GPU, no driver) and prints ptxas's resource
//! report per kernel: registers, shared memory, stack frame, spill stores and loads.
//!
//! Fails (exit status 1) on any compile error, or when a kernel spills registers to local
//! memory and is not on [`SPILL_ALLOWED`]. Compiling for a real architecture (`sm_90`, not
//! `compute_90`) makes ptxas run, so invalid inline PTX is caught here too.

use clap::Args;
use tessera::backend::cuda::compile;

#[derive(Args, Debug)]
pub struct CheckKernelsArgs {
    /// One JSON line per kernel, then a summary line.
    #[arg(long)]
    pub json: bool,
    /// Target architecture.
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Read the .cu/.cuh files from this folder instead of those embedded in the binary
    /// (for editing kernels without rebuilding tessera).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// `(name, source)` of every kernel file and header: from `dir`, else the embedded ones.
fn sources(dir: Option<&std::path::Path>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(dir) = dir else {
        return Ok(tessera::kernel_sources::KERNEL_SOURCES
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect());
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let p = e?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(".cu") || name.ends_with(".cuh") {
            let src =
                std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            out.push((name, src));
        }
    }
    out.sort();
    Ok(out)
}

/// Kernels allowed to spill, each with the reason. Empty: nothing spills today.
pub const SPILL_ALLOWED: &[(&str, &str)] = &[];

/// ptxas's figures for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u64,
    pub stack_bytes: u64,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
}

impl KernelResources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// The number right before `unit` in `line` (`"... 16 bytes stack frame"` -> 16).
fn number_before(line: &str, unit: &str) -> Option<u64> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Parses the `--ptxas-options=-v` report in an NVRTC log into one entry per kernel, in the
/// order ptxas reports them. Lines look like
/// ```text
/// ptxas info    : Compiling entry function 'cast_f32_f64' for 'sm_90'
/// ptxas info    : Function properties for cast_f32_f64
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 14 registers, used 1 barriers, 256 bytes smem, 528 bytes cmem[0]
/// ```
/// (device functions that are not inlined get "Function properties" too; only entry functions
/// are reported).
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    // The entry a "Function properties" block or a "Used" line belongs to.
    let mut current: Option<usize> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                kernel: name,
                ..Default::default()
            });
            current = Some(out.len() - 1);
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            let name = rest.trim();
            current = out.iter().position(|k| k.kernel == name);
        } else if line.contains("bytes stack frame") {
            if let Some(k) = current.map(|i| &mut out[i]) {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(k) = current.map(|i| &mut out[i]) {
                k.registers = number_before(line, "registers").unwrap_or(0) as u32;
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

pub fn run(a: CheckKernelsArgs) -> anyhow::Result<()> {
    let nvrtc = compile::nvrtc_info()?;
    let include = compile::cuda_include_dir();
    let include_note = match &include {
        Some((dir, from)) => format!("{} (from {from})", dir.display()),
        None => "none found (set TESSERA_CUDA_INCLUDE)".to_string(),
    };
    let mut options = compile::base_options(&a.arch)?;
    options.push("--ptxas-options=-v".to_string());
    if !a.json {
        println!(
            "NVRTC {}.{} ({}), target {}, CUDA headers: {include_note}",
            nvrtc.major, nvrtc.minor, nvrtc.library, a.arch
        );
        println!(
            "{:<16} {:<28} {:>5} {:>9} {:>7} {:>11} {:>11}",
            "file", "kernel", "regs", "smem (B)", "stack", "spill st", "spill ld"
        );
    }
    let all = sources(a.dir.as_deref())?;
    let headers: Vec<(&str, &str)> = all
        .iter()
        .filter(|(n, _)| n.ends_with(".cuh"))
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let files: Vec<&(String, String)> = all.iter().filter(|(n, _)| n.ends_with(".cu")).collect();
    let (mut errors, mut bad_spills, mut count) = (Vec::new(), Vec::new(), 0usize);
    for (file, src) in &files {
        let compiled = match compile::compile_source(file, src, &headers, &options) {
            Ok(c) => c,
            Err(e) => {
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "error": e.to_string()})
                    );
                } else {
                    eprintln!("{e}");
                }
                errors.push(file.to_string());
                continue;
            }
        };
        let mut kernels = parse_ptxas_report(&compiled.log);
        kernels.sort_by(|x, y| x.kernel.cmp(&y.kernel));
        if kernels.is_empty() {
            // A file that defines no kernel compiles to nothing worth reporting; say so.
            if !a.json {
                println!("{file:<16} (no kernels)");
            }
        }
        for k in &kernels {
            count += 1;
            let allowed = SPILL_ALLOWED.iter().any(|(name, _)| *name == k.kernel);
            if k.spills() && !allowed {
                bad_spills.push(format!("{file}:{}", k.kernel));
            }
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": file, "kernel": k.kernel, "registers": k.registers,
                        "shared_bytes": k.shared_bytes, "stack_bytes": k.stack_bytes,
                        "spill_store_bytes": k.spill_store_bytes,
                        "spill_load_bytes": k.spill_load_bytes, "spill_allowed": allowed,
                    })
                );
            } else {
                let flag = match (k.spills(), allowed) {
                    (true, false) => "  SPILLS",
                    (true, true) => "  spills (allowed)",
                    _ => "",
                };
                println!(
                    "{:<16} {:<28} {:>5} {:>9} {:>7} {:>11} {:>11}{flag}",
                    file,
                    k.kernel,
                    k.registers,
                    k.shared_bytes,
                    k.stack_bytes,
                    k.spill_store_bytes,
                    k.spill_load_bytes
                );
            }
        }
    }
    let ok = errors.is_empty() && bad_spills.is_empty();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "summary": true, "ok": ok, "arch": a.arch, "files": files.len(), "kernels": count,
                "compile_errors": errors, "unexpected_spills": bad_spills,
                "nvrtc": format!("{}.{}", nvrtc.major, nvrtc.minor), "nvrtc_library": nvrtc.library,
                "cuda_include": include.map(|(d, from)| serde_json::json!({"path": d.display().to_string(), "from": from})),
            })
        );
    } else {
        println!(
            "{} files, {count} kernels for {}: {} compile error(s), {} unexpected spill(s)",
            files.len(),
            a.arch,
            errors.len(),
            bad_spills.len()
        );
    }
    if !ok {
        anyhow::bail!(
            "check-kernels failed: compile errors in {errors:?}, unexpected spills in {bad_spills:?}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'reduce_block_f32' for 'sm_90'
ptxas info    : Function properties for reduce_block_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 26 registers, used 1 barriers, 128 bytes smem, 688 bytes cmem[0]
ptxas info    : Function properties for helper_not_inlined
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'big_tile' for 'sm_90'
ptxas info    : Function properties for big_tile
    24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 49152 bytes smem, 400 bytes cmem[0]
";

    #[test]
    fn parses_a_ptxas_report() {
        let k = parse_ptxas_report(SAMPLE);
        assert_eq!(k.len(), 2, "{k:?}");
        assert_eq!(
            k[0],
            KernelResources {
                kernel: "reduce_block_f32".into(),
                registers: 26,
                shared_bytes: 128,
                stack_bytes: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
            }
        );
        assert_eq!(
            (k[1].registers, k[1].shared_bytes, k[1].stack_bytes),
            (255, 49152, 24)
        );
        assert_eq!((k[1].spill_store_bytes, k[1].spill_load_bytes), (16, 12));
        assert!(k[1].spills() && !k[0].spills());
    }

    #[test]
    fn allow_list_entries_have_reasons() {
        for (name, reason) in SPILL_ALLOWED {
            assert!(
                !name.is_empty() && reason.len() > 10,
                "{name}: give a reason"
            );
        }
    }
}
