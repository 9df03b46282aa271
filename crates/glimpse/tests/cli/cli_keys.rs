//! `glimpse keys …` against a temp SQLite store; the `--json` shapes are read by outside scripts.

use std::process::Command;

use serde_json::Value;

use crate::support::{assert_success, keys};

#[test]
fn create_list_topup_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());

    let out = keys(&db, &["create", "--credits", "5", "--name", "ci", "--json"]);
    assert_success(&out);
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(made["key"].as_str().unwrap().starts_with("gk_"));
    assert_eq!(made["name"], "ci");
    assert_eq!(made["credits"], 5);

    let out = keys(&db, &["topup", &id, "7"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("12"));

    let out = keys(&db, &["revoke", &id]);
    assert!(out.status.success());

    let out = keys(&db, &["list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["credits"], 12);
    assert_eq!(row["revoked"], true);
    // The secret is never listed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(made["key"].as_str().unwrap()));

    let out = keys(&db, &["topup", "key_doesnotexist", "1"]);
    assert!(!out.status.success());
    let out = keys(&db, &["create", "--credits", "-3"]);
    assert!(!out.status.success());
}

/// What a new user gets wrong first: the secret instead of the id, a revoked key topped up, a
/// relative database path from another folder. Each gets a sentence that says what to do.
#[test]
fn keys_commands_say_what_they_want_and_where_they_write() {
    let dir = tempfile::tempdir().unwrap();
    // Relative to the current folder, as in the README's `sqlite://glimpse.db`.
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["keys", "create", "--credits", "1", "--json"])
        .env("GLIMPSE_DATABASE_URL", "sqlite://rel.db")
        .env_remove("GLIMPSE_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let abs = dir.path().join("rel.db");
    assert!(
        err.contains(&format!("sqlite://{}", abs.display())),
        "the absolute path: {err}"
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, secret) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    let db = format!("sqlite://{}", abs.display());
    for cmd in [vec!["topup", secret, "1"], vec!["revoke", secret]] {
        let out = keys(&db, &cmd);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("key's id (key_"), "{cmd:?}: {err}");
    }
    assert!(keys(&db, &["revoke", id]).status.success());
    let out = keys(&db, &["topup", id, "5"]);
    assert!(!out.status.success(), "topping up a revoked key must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}

#[test]
fn config_file_fills_unset_variables_and_loses_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = format!("sqlite://{}", dir.path().join("from-file.db").display());
    let cfg = dir.path().join("glimpse.toml");
    std::fs::write(&cfg, format!("database_url = \"{db_file}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["keys", "create", "--credits", "1", "--json", "--config"])
        .arg(&cfg)
        .env_remove("GLIMPSE_DATABASE_URL")
        .output()
        .unwrap();
    assert_success(&out);
    assert!(dir.path().join("from-file.db").exists());

    // A variable beats the file.
    let db_env = format!("sqlite://{}", dir.path().join("from-env.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["keys", "create", "--credits", "1", "--json", "--config"])
        .arg(&cfg)
        .env("GLIMPSE_DATABASE_URL", &db_env)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("from-env.db").exists());
}

/// An unreachable PostgreSQL is reported within seconds with its host, port and cause, and the
/// message names both ways the URL may have been given.
#[test]
fn an_unreachable_postgres_says_where_and_why_quickly() {
    // Port 1 on loopback: nothing listens there, the connect is refused at once.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "keys",
            "list",
            "--database-url",
            "postgres://glimpse@127.0.0.1:1/x",
        ])
        .env_remove("GLIMPSE_CONFIG")
        .env_remove("GLIMPSE_DATABASE_URL")
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(err.contains("--database-url"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "took {took:?}: {err}"
    );
}
