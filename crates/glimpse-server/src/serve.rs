//! Start-up and shutdown: open the store, load and warm the models, serve until told to stop,
//! finish the calls in flight.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use glimpse_candle::LoadOptions;
use glimpse_core::backend::PixelBatch;
use glimpse_core::{CoreError, ModelFamily, ServedModel, Task};
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::hub::{model_id_for, resolve_model, HubOptions};
use crate::routes::app;
use crate::state::{AppState, Models};

/// The reaper runs every quarter of `reap_after`, and at least once a minute; it refunds stale
/// reservations and prunes expired `Idempotency-Key` answers.
const REAP_EVERY_MAX: Duration = Duration::from_secs(60);

/// Run the server on `listener` until `shutdown` resolves, then stop accepting, let the calls in
/// flight finish, and close the store.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let store = glimpse_store::connect_with(&config.store.database_url, config.store_options())
        .await
        .map_err(|e| {
            anyhow!("cannot open the key store (GLIMPSE_DATABASE_URL / --database-url): {e}")
        })?;
    let models = load_models(&config).await?;
    let state = AppState::new(&config, store, models)?;
    serve_state(state, listener, shutdown).await
}

/// `serve` for a ready state (tests build one from a store and models they hold too).
pub async fn serve_state(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reaper = {
        let store = Arc::clone(&state.store);
        let reap_after = state.settings.reap_after;
        let idempotency_ttl = state.settings.idempotency_ttl;
        let metrics = Arc::clone(&state.metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((reap_after / 4).min(REAP_EVERY_MAX));
            loop {
                tick.tick().await;
                match store.reap_stale(reap_after).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.reservations_reaped(n);
                        tracing::warn!(refunded = n, "refunded stale reservations");
                    }
                    Err(e) => tracing::warn!(error = %e, "reaping stale reservations failed"),
                }
                match store.prune_idempotency(idempotency_ttl).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "pruned expired idempotency answers"),
                    Err(e) => tracing::warn!(error = %e, "pruning idempotency answers failed"),
                }
            }
        })
    };
    if let Ok(addr) = listener.local_addr() {
        // What a person opens first: the playground and the API docs, at addresses they can paste
        // (a wildcard bind is reached through loopback on this machine).
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => format!("127.0.0.1:{}", addr.port()),
            ip if ip.is_unspecified() => format!("[::1]:{}", addr.port()),
            _ => addr.to_string(),
        };
        tracing::info!(
            %addr,
            playground = %format!("http://{host}/"),
            docs = %format!("http://{host}/docs"),
            "listening: playground http://{host}/ , API docs http://{host}/docs"
        );
    }
    let st = state.clone();
    let limits = state.settings.conn.clone();
    let result = crate::listen::run(listener, app(state.clone()), limits, async move {
        shutdown.await;
        tracing::info!("shutting down: finishing calls in flight");
        st.set_ready(false);
    })
    .await;
    reaper.abort();
    state.store.close().await;
    result.context("HTTP server failed")
}

/// Every model of the allow-lists, resolved (local folder, cache or Hub), loaded and warmed up
/// with one forward pass so the first call is not the slow one.
pub async fn load_models(config: &ServerConfig) -> anyhow::Result<Models> {
    let hub = HubOptions::from_env(config.models.model_cache.clone());
    let templates = config.models.prompt_templates.clone();
    let opts = LoadOptions {
        precision: config.models.precision,
        threads: None,
    };
    let precision = opts.precision;
    match glimpse_candle::kernel_for(precision) {
        (kernel, true) => tracing::info!(precision = precision.as_str(), %kernel, "matmul kernel"),
        (kernel, false) => tracing::warn!(
            precision = precision.as_str(),
            %kernel,
            "GLIMPSE_PRECISION has no fast kernel on this CPU"
        ),
    }
    let mut models: Vec<ServedModel> = Vec::new();
    for task in Task::ALL {
        let specs = match task {
            Task::ZeroShot => config.clip_specs(),
            Task::Classify => config.vit_specs(),
        };
        for spec in specs {
            let id = unique_id(
                &spec,
                models.iter().filter(|m| m.task() == task).map(|m| m.id()),
                task.extra_models_var(),
            )?;
            let (hub, templates, opts) = (hub.clone(), templates.clone(), opts.clone());
            let model = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let dir = resolve(&spec, &hub, task.model_var())?;
                // Models load one at a time, so what the resident set gained over the load and
                // the warm-up is this model's (weights, caches, first-pass buffers).
                let before = crate::metrics::resident_bytes();
                let model = load_served(&dir, id, task, &opts)
                    .map_err(|e| anyhow!("cannot load {} model '{spec}': {e}", task.title()))?;
                warm_up(&model, &templates)
                    .with_context(|| format!("warm-up of '{spec}' failed"))?;
                // The load's f32 copies are freed by now; give their pages back.
                crate::metrics::trim_heap();
                Ok(match (before, crate::metrics::resident_bytes()) {
                    (Some(b), Some(a)) => model.with_resident_bytes(a.saturating_sub(b)),
                    _ => model,
                })
            })
            .await??;
            let mib = |b: u64| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
            tracing::info!(
                model = %model.id(),
                family = %model.family(),
                precision = precision.as_str(),
                resident_mib = model.resident_bytes().map(mib),
                process_resident_mib = crate::metrics::resident_bytes().map(mib),
                "{} model ready",
                task.title()
            );
            models.push(model);
        }
    }
    Ok(Models(models))
}

/// The model in `dir` as `task` serves it, or an error naming the folder when its family serves
/// another task.
pub fn load_served(
    dir: &Path,
    id: String,
    task: Task,
    opts: &LoadOptions,
) -> Result<ServedModel, CoreError> {
    let (family, network) = glimpse_candle::load_model(dir, opts)?;
    if family.task() != task {
        let supported: Vec<String> = ModelFamily::ALL
            .into_iter()
            .filter(|f| f.task() == task)
            .map(|f| format!("'{}'", f.model_type()))
            .collect();
        return Err(CoreError::model(format!(
            "{}: config.json's model_type '{family}' is a {} model (the {} endpoint serves it), \
             not one for the {} endpoint; {} takes model_type {}",
            dir.display(),
            family.task().title(),
            family.task().title(),
            task.title(),
            task.model_var(),
            supported.join(" or ")
        )));
    }
    ServedModel::new(id, family, network)
}

fn resolve(spec: &str, hub: &HubOptions, var: &str) -> anyhow::Result<std::path::PathBuf> {
    resolve_model(spec, hub).map_err(|e| anyhow!("{var}: {e}"))
}

/// Two specs may not answer to the same id (two folders both named `clip`, say).
fn unique_id<'a>(
    spec: &str,
    mut taken: impl Iterator<Item = &'a str>,
    var: &str,
) -> anyhow::Result<String> {
    let id = model_id_for(spec);
    if taken.any(|t| t == id) {
        return Err(anyhow!(
            "{var}: two models share the id '{id}'; rename one folder"
        ));
    }
    if Path::new(spec).is_dir() {
        tracing::debug!(%spec, %id, "local model folder");
    }
    Ok(id)
}

/// One forward pass on a grey image (against the default labels for zero-shot models), through
/// the same scoring path requests take, so the first call is not the slow one.
pub fn warm_up(model: &ServedModel, templates: &[String]) -> Result<(), CoreError> {
    let cfg = model.preprocess_config();
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let (h, w) = cfg.output_size();
    let px = PixelBatch::single(cfg.preprocess(&img), h, w);
    let labels = model.task().labels(None)?;
    // Through a copy with its own prompt cache: a prompt's embedding depends (in the last
    // float bits) on the other prompts of its text-encoder batch, so the served model's cache
    // must start empty for its answers not to depend on the warm-up's label set.
    let scratch = ServedModel::new(model.id(), model.family(), model.network().clone())?;
    scratch.classify_all(&px, &labels, templates)?;
    Ok(())
}

/// Logging to stderr, `text` or `json` (`GLIMPSE_LOG_FORMAT`), filtered by `RUST_LOG` (default
/// `info`). Calling it twice is harmless.
pub fn init_tracing(config: &ServerConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.logging.log_format == crate::config::LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
