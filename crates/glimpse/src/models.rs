//! `glimpse models pull|list`.

use std::process::ExitCode;

use glimpse_server::hub::{pull, HubOptions};

use crate::cli::ModelsCommand;

pub fn run(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCommand::Pull {
            ids,
            model_cache,
            configured,
        } => {
            let ids = if ids.is_empty() {
                configured
                    .by_family()
                    .into_iter()
                    .flat_map(|(_, specs)| specs)
                    .collect()
            } else {
                ids
            };
            let mut opts = HubOptions::from_env(model_cache);
            opts.progress = true;
            if opts.offline {
                anyhow::bail!("HF_HUB_OFFLINE is set: unset it to pull models");
            }
            let mut failed = 0;
            for id in ids {
                if std::path::Path::new(&id).is_dir() {
                    println!("{id}: a local folder, nothing to pull");
                    continue;
                }
                eprintln!("pulling {id} …");
                match pull(&id, &opts) {
                    Ok(dir) => println!("{id}: {}", dir.display()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("glimpse: {e}");
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ModelsCommand::List {
            model_cache,
            json,
            configured,
        } => {
            let opts = HubOptions::from_env(model_cache);
            let rows = list(&opts, configured.by_family());
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &rows {
                    let configured = if r["configured"] == true {
                        "configured"
                    } else {
                        "cached"
                    };
                    println!(
                        "{:<40} {:<8} {:<10} {}",
                        r["id"].as_str().unwrap_or(""),
                        r["family"].as_str().unwrap_or("?"),
                        configured,
                        r["source"].as_str().unwrap_or("")
                    );
                }
                println!("(cache: {})", opts.cache_path().display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Configured specs first (default, then extras), each with its family (read from its
/// `config.json` when the files are here, else the variable it came from) and source; then the
/// cache's other models.
fn list(opts: &HubOptions, families: [(&'static str, Vec<String>); 2]) -> Vec<serde_json::Value> {
    let cached = glimpse_server::hub::list_cached(opts);
    let family_of = |dir: &std::path::Path| match glimpse_candle::detect_kind(dir) {
        Ok(family) => family.model_type().to_string(),
        Err(_) => "unknown".to_string(),
    };
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for (slot, specs) in families {
        for spec in specs {
            if seen.contains(&spec) {
                continue;
            }
            seen.push(spec.clone());
            let local = std::path::Path::new(&spec);
            let (source, path) = if local.is_dir() {
                ("local folder".to_string(), Some(local.to_path_buf()))
            } else if let Some((_, dir)) = cached.iter().find(|(id, _)| *id == spec) {
                ("Hub, pulled into the cache".to_string(), Some(dir.clone()))
            } else {
                ("Hub, not pulled yet: glimpse models pull".to_string(), None)
            };
            rows.push(serde_json::json!({
                "id": glimpse_server::hub::model_id_for(&spec),
                "family": path.as_deref().map_or(slot.to_string(), family_of),
                "source": source,
                "path": path,
                "configured": true,
            }));
        }
    }
    for (id, dir) in cached {
        if !seen.contains(&id) {
            rows.push(serde_json::json!({
                "id": id,
                "family": family_of(&dir),
                "source": "Hub, pulled into the cache",
                "path": dir,
                "configured": false,
            }));
        }
    }
    rows
}
