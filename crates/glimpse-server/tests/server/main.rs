//! The server's integration tests, in one test binary: candle, axum and the server are linked
//! once instead of once per file. Each module keeps the name its file had as a binary of its own,
//! so `cargo test -p glimpse-server --test server api_hostile::` runs what `--test api_hostile`
//! ran.
//!
//! HTTP tests start the real server (fixture models, temp SQLite) with
//! [`support::TestServer::builder`]; the fetcher tests talk to the loopback upstreams in
//! [`support::upstream`].
//!
//! Nothing here changes process-wide state that another test reads: the proxy-variable test
//! sets its variables in a child process (see `fetch_proxy`), and the one test that installs a
//! global `tracing` subscriber (`api_metrics::json_log_lines_carry_the_request_id`) only filters
//! what it reads by its own request id.

mod support;

mod api_admin;
mod api_batch_routes;
mod api_batching;
mod api_classifiers;
mod api_clients;
mod api_credits;
mod api_decision;
mod api_docs;
mod api_embeddings;
mod api_errors;
mod api_hostile;
mod api_metrics;
mod api_siglip;
mod api_vit_models;
mod browser;
mod fetch_addr;
mod fetch_proxy;
mod fetch_refusal;
mod fetch_server;
mod hub_pull;
