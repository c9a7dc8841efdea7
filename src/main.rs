//! The `tessera` command line. See `tessera --help` and the README.

use clap::Parser;

/// Large freed blocks are reused instead of being unmapped and faulted in again (see
/// `tessera::alloc`); `TESSERA_HOST_CACHE_MB` sets how much is kept (0: off).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

fn main() {
    ALLOC.limit_from_env();
    let cli = tessera::cli::Cli::parse();
    if let Err(e) = tessera::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
