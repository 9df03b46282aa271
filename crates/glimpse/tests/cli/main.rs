//! The `glimpse` binary's tests, in one test binary: each runs the built `glimpse` (the CLI, or
//! `glimpse serve` child processes) and looks from outside. Each module keeps the name its file
//! had as a binary of its own, so `cargo test -p glimpse --test cli hostile::` runs what
//! `--test hostile` ran.
//!
//! The tests set nothing process-wide: every variable a `glimpse` process should see is given
//! to that child's `Command`.

mod support;

mod cli_bulk;
mod cli_classifiers;
mod cli_classify;
mod cli_keys;
mod hostile;
mod replicas;
mod startup_errors;
