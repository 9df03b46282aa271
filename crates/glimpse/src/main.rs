//! `glimpse`: the one binary. Each subcommand lives in its own module; this file only parses and
//! dispatches.

mod bench;
mod bulk;
mod classify;
mod cli;
mod config_file;
mod keys;
mod models;
mod session;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A TOML file named by --config / GLIMPSE_CONFIG fills in variables that are not set, so the
    // order is: flags, then variables, then the file, then the built-in defaults.
    if let Err(e) = config_file::apply_from_args(std::env::args_os()) {
        eprintln!("glimpse: {e}");
        return ExitCode::from(2);
    }
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => cli::run_serve(*args),
        cli::Command::Classify(args) => classify::run(args),
        cli::Command::Models(cmd) => models::run(cmd),
        cli::Command::Keys(args) => keys::run(args),
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
