//! A throwaway server on the tiny fixture models, for trying the API by hand or pointing
//! schemathesis at it: `cargo run -p glimpse-server --example dev_server -- 127.0.0.1:8099`.
//! Prints `KEY=<api key>` (1,000,000 credits) and `ADMIN=<token>`, then serves until Ctrl-C.
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
    let dir = tempfile::tempdir()?;
    let mut config = glimpse_server::ServerConfig::default();
    config.listen.bind = bind.parse()?;
    config.store.database_url = format!("sqlite://{}", dir.path().join("dev.db").display());
    config.models.clip_model = fixtures.join("clip-tiny").display().to_string();
    config.models.vit_model = fixtures.join("vit-tiny").display().to_string();
    config.store.admin_token = Some("dev-admin-token-0123456789".into());
    glimpse_server::init_tracing(&config);
    let store = glimpse_store::connect(&config.store.database_url).await?;
    let key = store.create_key("dev", 1_000_000).await?;
    println!("KEY={}\nADMIN=dev-admin-token-0123456789", key.key);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    glimpse_server::serve(config, listener, glimpse_server::shutdown_signal()).await
}
