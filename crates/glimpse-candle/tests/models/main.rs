//! The crate's integration tests as one binary (one link of candle instead of eight): a module per
//! area, each with the doc comment that says what it checks.

mod common;

mod clip_parity;
mod errors;
mod pipeline;
mod precision;
mod random;
mod siglip_parity;
mod tokenizer;
mod vit_parity;
mod weights;
