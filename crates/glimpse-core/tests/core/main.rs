//! glimpse-core's integration tests, one binary (each binary would link the crate again):
//! `cargo test -p glimpse-core --test core <module>::`.

mod batcher;
mod categories_id2label;
mod preprocess_parity;
mod resize_parity;
mod resize_random;
