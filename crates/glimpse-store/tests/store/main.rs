//! The store's integration tests, one binary: the shared story, the conservation race and the
//! burst run against SQLite always and PostgreSQL when `GLIMPSE_TEST_POSTGRES_URL` is set.

mod burst;
mod classifiers;
mod common;
mod conservation;
mod errors;
mod story;
