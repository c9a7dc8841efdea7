//! `tessera info`: the build, the devices and the CPU features the kernels can use, and for
//! CUDA: the driver and NVRTC versions (and which libraries were loaded), each GPU's name, SM
//! count and memory, and the kernel cache folder. Without a driver it says why.

use clap::Args;
use tessera::backend::cuda;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[arg(long)]
    pub json: bool,
}

/// One GPU as `info` reports it.
struct GpuInfo {
    ordinal: usize,
    name: String,
    capability: (i32, i32),
    sm_count: usize,
    memory_bytes: usize,
}

fn gpus(count: usize) -> Vec<Result<GpuInfo, String>> {
    (0..count)
        .map(|i| {
            let d = cuda::device(i).map_err(|e| e.to_string())?;
            Ok(GpuInfo {
                ordinal: i,
                name: d.name().map_err(|e| e.to_string())?,
                capability: d.compute_capability(),
                sm_count: d.sm_count().map_err(|e| e.to_string())?,
                memory_bytes: d.total_memory().map_err(|e| e.to_string())?,
            })
        })
        .collect()
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            (
                "avx512bf16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
        ] {
            if on {
                features.push(name);
            }
        }
    }
    let threads = rayon::current_num_threads();
    let kernels = tessera::kernel_sources::KERNEL_SOURCES.len();
    let driver = cuda::driver_info();
    let nvrtc = cuda::compile::nvrtc_info();
    let cache = cuda::compile::cache_dir();
    let include = cuda::compile::cuda_include_dir();
    let gpus = match &driver {
        Ok(d) => gpus(d.device_count),
        Err(_) => Vec::new(),
    };
    let mut devices = vec!["cpu".to_string()];
    devices.extend(
        gpus.iter()
            .filter_map(|g| g.as_ref().ok())
            .map(|g| format!("cuda:{}", g.ordinal)),
    );
    if a.json {
        let gpu_json: Vec<_> = gpus
            .iter()
            .map(|g| match g {
                Ok(g) => serde_json::json!({
                    "device": format!("cuda:{}", g.ordinal), "name": g.name,
                    "compute_capability": format!("{}.{}", g.capability.0, g.capability.1),
                    "sm_count": g.sm_count, "memory_bytes": g.memory_bytes,
                }),
                Err(e) => serde_json::json!({ "error": e }),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"), "devices": devices,
                "cuda": driver.is_ok(),
                "cuda_driver": match &driver {
                    Ok(d) => serde_json::json!({"version": cuda::version_string(d.version), "library": d.library}),
                    Err(e) => serde_json::json!({"error": e}),
                },
                "nvrtc": match &nvrtc {
                    Ok(n) => serde_json::json!({"version": format!("{}.{}", n.major, n.minor), "library": n.library}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                },
                "gpus": gpu_json,
                "cuda_include": include.as_ref().map(|(d, from)| serde_json::json!({"path": d.display().to_string(), "from": from})),
                "kernel_cache": cache.display().to_string(),
                "threads": threads, "cpu_features": features, "embedded_kernel_files": kernels,
            })
        );
        return Ok(());
    }
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    println!("devices: {}", devices.join(", "));
    println!("cpu threads: {threads}; features: {}", features.join(" "));
    match &driver {
        Ok(d) => println!(
            "CUDA driver: {} ({}), {} GPU(s)",
            cuda::version_string(d.version),
            d.library,
            d.device_count
        ),
        Err(e) => println!("CUDA driver: none ({e}); running on the CPU"),
    }
    for g in &gpus {
        match g {
            Ok(g) => println!(
                "  cuda:{}: {}, sm_{}{}, {} SMs, {:.1} GiB",
                g.ordinal,
                g.name,
                g.capability.0,
                g.capability.1,
                g.sm_count,
                g.memory_bytes as f64 / (1u64 << 30) as f64
            ),
            Err(e) => println!("  unusable: {e}"),
        }
    }
    match &nvrtc {
        Ok(n) => println!("NVRTC: {}.{} ({})", n.major, n.minor, n.library),
        Err(e) => println!("NVRTC: none ({e})"),
    }
    match &include {
        Some((d, from)) => println!("CUDA headers: {} (from {from})", d.display()),
        None => println!("CUDA headers: not found (set TESSERA_CUDA_INCLUDE)"),
    }
    println!("kernel cache: {}", cache.display());
    println!("embedded CUDA kernel files: {kernels}");
    Ok(())
}
