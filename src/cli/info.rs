//! `tessera info`: the build, the devices and the CPU features the kernels can use.

use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[arg(long)]
    pub json: bool,
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
    if a.json {
        println!(
            "{}",
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "devices": ["cpu"], "cuda": false, "threads": threads, "cpu_features": features, "embedded_kernel_files": kernels})
        );
    } else {
        println!("tessera {}", env!("CARGO_PKG_VERSION"));
        println!("devices: cpu (no CUDA backend in this build yet)");
        println!("cpu threads: {threads}; features: {}", features.join(" "));
        println!("embedded CUDA kernel files: {kernels}");
    }
    Ok(())
}
