//! The SSRF-safe URL fetcher. STUB: being written.
