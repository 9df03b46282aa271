//! `glimpse classifiers …` (issue 24) against a temp SQLite store: a classifier taught from a
//! folder (sub-folders are labels, `prompts.txt` their prompts), listed, shown, served by
//! `glimpse serve` through `clip?classifier=NAME`, and deleted; bad input fails with a sentence.

use std::process::Output;

use serde_json::Value;

use crate::support::{assert_success, create_key, fixtures, glimpse, start_server, upload};

fn classifiers(database_url: &str, args: &[&str]) -> Output {
    glimpse()
        .arg("classifiers")
        .args(args)
        .env("GLIMPSE_DATABASE_URL", database_url)
        .output()
        .unwrap()
}

fn image(name: &str) -> std::path::PathBuf {
    fixtures().join("images").join(name)
}

#[test]
fn create_from_dir_list_show_serve_delete() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let (key_id, key) = create_key(&db, 5);
    let teach = dir.path().join("teach");
    std::fs::create_dir_all(teach.join("doc")).unwrap();
    std::fs::create_dir_all(teach.join("photo")).unwrap();
    std::fs::copy(image("page.jpg"), teach.join("doc/page.jpg")).unwrap();
    std::fs::write(
        teach.join("doc/prompts.txt"),
        "a scanned {label}\n\na page of text\n",
    )
    .unwrap();
    std::fs::copy(image("coffee.jpg"), teach.join("photo/coffee.jpg")).unwrap();
    let model = fixtures().join("models/clip-tiny");
    let model = model.to_str().unwrap();

    let out = classifiers(
        &db,
        &[
            "create",
            "desk",
            "--key-id",
            &key_id,
            "--from-dir",
            teach.to_str().unwrap(),
            "--model",
            model,
        ],
    );
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("doc (1 examples)"));

    let out = classifiers(&db, &["list", "--key-id", &key_id, "--json"]);
    assert_success(&out);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "desk");
    assert_eq!(list[0]["model"], "clip-tiny");
    let out = classifiers(&db, &["show", "desk", "--key-id", &key_id]);
    assert_success(&out);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["labels"][0]["name"], "doc");
    assert_eq!(
        shown["labels"][0]["prompts"],
        serde_json::json!(["a scanned {label}", "a page of text"])
    );
    assert_eq!(shown["labels"][0]["examples"], 1);
    assert_eq!(shown["labels"][1]["name"], "photo");
    assert_eq!(shown["labels"][1]["examples"], 1);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("embedding"));

    // `glimpse classify --classifier` uses it locally.
    let out = glimpse()
        .args([
            "classify", "clip", "--json", "--model", model, "--key-id", &key_id,
        ])
        .args(["--classifier", "desk"])
        .arg(image("page.jpg"))
        .env("GLIMPSE_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert_success(&out);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["result"], "doc", "{line}");
    assert_eq!(line["predictions"].as_array().unwrap().len(), 2, "{line}");
    let out = glimpse()
        .args(["classify", "clip", "--model", model, "--key-id", &key_id])
        .args(["--classifier", "nope"])
        .arg(image("page.jpg"))
        .env("GLIMPSE_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no classifier named 'nope'"));

    // The server serves what the CLI stored, for the owning key.
    let server = start_server(&db, &[]);
    let page = std::fs::read(image("page.jpg")).unwrap();
    let r = upload(
        server.addr,
        "/api/image-classification/clip?classifier=desk",
        &key,
        &page,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["result"], "doc");
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 2);
    drop(server);

    // Another key id sees none of it.
    let (other, _) = create_key(&db, 0);
    let out = classifiers(&db, &["show", "desk", "--key-id", &other]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no classifier named 'desk'"));

    let out = classifiers(&db, &["delete", "desk", "--key-id", &key_id]);
    assert_success(&out);
    let out = classifiers(&db, &["show", "desk", "--key-id", &key_id]);
    assert!(!out.status.success());

    // Bad input: a bad name, a folder without sub-folders; nothing stored.
    let out = classifiers(
        &db,
        &[
            "create",
            "Bad Name",
            "--key-id",
            &key_id,
            "--from-dir",
            teach.to_str().unwrap(),
            "--model",
            model,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a-z, 0-9"));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = classifiers(
        &db,
        &[
            "create",
            "x",
            "--key-id",
            &key_id,
            "--from-dir",
            empty.to_str().unwrap(),
            "--model",
            model,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sub-folders"));
    let out = classifiers(&db, &["list", "--key-id", &key_id, "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}
