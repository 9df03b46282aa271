//! `glimpse`: the one binary. Each subcommand lives in its own module; this file only parses and
//! dispatches.

// Every `unsafe` block says why it is sound (see docs/DESIGN.md).
#![deny(clippy::undocumented_unsafe_blocks)]

mod bench;
mod bulk;
mod classifiers;
mod classify;
mod cli;
mod config_file;
mod keys;
mod models;
mod session;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A TOML file named by --config / GLIMPSE_CONFIG gives the defaults, so the order is: flags,
    // then variables, then the file, then the built-in defaults.
    let args: Vec<_> = std::env::args_os().collect();
    let cmd = match config_file::command(&args) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("glimpse: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_with(cmd, args);
    let result = match cli.command {
        cli::Command::Serve(args) => cli::run_serve(*args),
        cli::Command::Classify(args) => classify::run(*args),
        cli::Command::Models(cmd) => models::run(cmd),
        cli::Command::Keys(args) => keys::run(args),
        cli::Command::Classifiers(args) => classifiers::run(args),
        cli::Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("glimpse: {e:#}");
            ExitCode::FAILURE
        }
    }
}
