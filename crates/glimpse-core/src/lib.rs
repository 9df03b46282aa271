//! Glimpse's domain: labels, predictions, the ImageNet → category table, image decoding with limits,
//! preprocessing that reproduces the Hugging Face image processors, and the `Backend` traits that the
//! model crates implement. Nothing here knows about HTTP, SQL or candle.

// Every `unsafe` block says why it is sound (see docs/DESIGN.md).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod batcher;
pub mod categories;
pub mod decision;
pub mod error;
pub mod image;
pub mod labels;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod prototypes;
pub mod registry;
pub mod response;
pub mod scoring;

pub use backend::{ImageClassifier, ZeroShotModel};
pub use error::{CoreError, Result};
pub use model::{Answer, Ask, ModelFamily, Network, ServedModel, Task};
pub use pipeline::{PromptCacheBounds, PromptCacheStats};
pub use registry::Registry;
