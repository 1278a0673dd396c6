//! The `guilocker` binary: parse arguments, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    guilocker::cli::run(guilocker::cli::Cli::parse())
}
