//! `glimpse keys …`: key management against the configured store. `--json` forms are read by
//! outside scripts: their field names are stable.

use std::process::ExitCode;

use glimpse_store::connect;

use crate::cli::{KeysArgs, KeysCommand};

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = connect(&args.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the store (GLIMPSE_DATABASE_URL): {e}"))?;
        match args.command {
            KeysCommand::Create { credits, name, json } => {
                let key = store.create_key(&name, credits).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": key.id, "key": key.key, "name": key.name, "credits": key.credits})
                    );
                } else {
                    println!("created {} ({}) with {} credits", key.id, display_name(&key.name), key.credits);
                    println!("API key (shown once, store it now): {}", key.key);
                }
            }
            KeysCommand::List { json } => {
                let keys = store.list_keys().await?;
                if json {
                    println!("{}", serde_json::to_string(&keys)?);
                } else {
                    println!("{:<28} {:<20} {:>10}  {:<8} created", "id", "name", "credits", "state");
                    for k in keys {
                        let state = if k.revoked { "revoked" } else { "active" };
                        println!(
                            "{:<28} {:<20} {:>10}  {:<8} {}",
                            k.id,
                            display_name(&k.name),
                            k.credits,
                            state,
                            k.created_at
                        );
                    }
                }
            }
            KeysCommand::Topup { key_id, credits } => {
                let balance = store.topup(&key_id, credits).await?;
                println!("{key_id}: {balance} credits");
            }
            KeysCommand::Revoke { key_id } => {
                store.revoke(&key_id).await?;
                println!("{key_id}: revoked");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "-"
    } else {
        name
    }
}
