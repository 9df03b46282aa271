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
        // A relative `sqlite://glimpse.db` is relative to the current folder: say which file,
        // so a key made from another folder is not a mystery later.
        eprintln!("glimpse: key store {}", describe_database(&args.database_url));
        let store = connect(&args.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the key store (GLIMPSE_DATABASE_URL / --database-url): {e}"))?;
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
                check_key_id(&key_id)?;
                if let Some(k) = store.list_keys().await?.into_iter().find(|k| k.id == key_id) {
                    anyhow::ensure!(
                        !k.revoked,
                        "{key_id} is revoked: credits on it could never be spent"
                    );
                }
                let balance = store.topup(&key_id, credits).await?;
                println!("{key_id}: {balance} credits");
            }
            KeysCommand::Revoke { key_id } => {
                check_key_id(&key_id)?;
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

/// `topup` and `revoke` take the key's id (`key_…`), not the secret (`gk_…`).
fn check_key_id(key_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !key_id.starts_with("gk_"),
        "that is the secret API key; this command takes the key's id (key_…), which \
         `glimpse keys list` shows"
    );
    Ok(())
}

/// The database a URL names, for people: a SQLite file as an absolute path (and whether it
/// exists yet), PostgreSQL without its password.
fn describe_database(url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return glimpse_server::config::redact_url(url);
    };
    let path = std::path::Path::new(rest.split('?').next().unwrap_or(rest));
    let abs = std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let state = if abs.exists() { "" } else { " (new file)" };
    format!("sqlite://{}{state}", abs.display())
}
