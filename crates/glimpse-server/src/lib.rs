//! The Glimpse HTTP API: the seed's routes on axum, with API keys and credits from
//! `glimpse_store`, models from `glimpse_candle`, an SSRF-safe URL fetcher, an OpenAPI document
//! and an offline Swagger UI.
//!
//! Entry points: [`serve`] (what `glimpse serve` runs), and for tests [`AppState::new`] +
//! [`serve_state`] or [`app`], which take models and a store that are already open.

// Every `unsafe` block says why it is sound (see docs/DESIGN.md).
#![deny(clippy::undocumented_unsafe_blocks)]

mod auth;
pub mod batch;
pub mod config;
pub mod decode;
mod drain;
pub mod error;
pub mod fetch;
pub mod hub;
mod limits;
pub mod listen;
pub mod metrics;
mod playground;
pub mod request_id;
pub mod routes;
mod serve;
pub mod state;

pub use auth::{ApiKey, API_KEY_HEADER, CREDITS_HEADER};
pub use config::ServerConfig;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use routes::{app, openapi};
pub use serve::{
    init_tracing, load_models, load_served, serve, serve_state, shutdown_signal, warm_up,
};
pub use state::{AppState, ImageSource, Models};
