//! The Glimpse HTTP API.
