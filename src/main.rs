//! The `tessera` command line. See `tessera --help` and the README.

use clap::Parser;

fn main() {
    let cli = tessera::cli::Cli::parse();
    if let Err(e) = tessera::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
