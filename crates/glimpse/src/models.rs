//! `glimpse models pull|list`.

use std::process::ExitCode;

use glimpse_server::hub::{pull, HubOptions};

use crate::cli::ModelsCommand;

pub fn run(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCommand::Pull {
            ids,
            model_cache,
            default_clip,
            default_vit,
        } => {
            let ids = if ids.is_empty() {
                vec![default_clip, default_vit]
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
        ModelsCommand::List { model_cache, json } => {
            let opts = HubOptions::from_env(model_cache);
            let models = glimpse_server::hub::list_cached(&opts);
            if json {
                let rows: Vec<_> = models
                    .iter()
                    .map(|(id, dir)| serde_json::json!({"id": id, "path": dir}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else if models.is_empty() {
                println!("no models in the cache {}", opts.cache_path().display());
            } else {
                for (id, dir) in models {
                    println!("{id}\t{}", dir.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
