//! The Glimpse HTTP API.

pub mod fetch;
pub mod hub;
