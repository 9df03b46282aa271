//! Saved classifiers (issue 24) in the store: create, list, get, replace, delete and count per
//! key, names unique per key, the per-key cap, embeddings stored bit for bit, one replica's
//! write seen by the other; on SQLite and PostgreSQL.

use std::sync::Arc;

use glimpse_store::{ClassifierLabel, ClassifierSpec, Store, StoreError, StoreOptions};

use crate::common;

fn spec(name: &str, labels: &[(&str, u32)]) -> ClassifierSpec {
    ClassifierSpec {
        name: name.to_string(),
        model: "clip-tiny".to_string(),
        labels: labels
            .iter()
            .enumerate()
            .map(|(i, (l, examples))| ClassifierLabel {
                name: l.to_string(),
                prompts: vec![format!("a photo of a {{label}} {i}")],
                examples: *examples,
                // Values whose f32 bits a lossy round trip would change.
                embedding: vec![0.1 + i as f32, -1.0 / 3.0, f32::MIN_POSITIVE, 1e-7],
            })
            .collect(),
        min_confidence: Some(0.35),
        fallback: Some("unknown".to_string()),
        multi_label: true,
    }
}

async fn classifiers(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let k1 = a.create_key("one", 0).await.unwrap();
    let k2 = a.create_key("two", 0).await.unwrap();
    let pets = spec("pets", &[("cat", 2), ("dog", 0)]);

    let made = a.create_classifier(&k1.id, &pets, 3).await.unwrap();
    assert_eq!(made.key_id, k1.id);
    assert_eq!(made.spec, pets, "stored exactly, embeddings bit for bit");
    assert!(made.created_at.ends_with('Z'), "{}", made.created_at);
    assert_eq!(made.created_at, made.updated_at);

    // The other replica reads it; the other key does not see it.
    let got = b.get_classifier(&k1.id, "pets").await.unwrap().unwrap();
    assert_eq!(got, made);
    assert!(b.get_classifier(&k2.id, "pets").await.unwrap().is_none());
    assert!(b.list_classifiers(&k2.id).await.unwrap().is_empty());
    assert_eq!(b.count_classifiers(&k1.id).await.unwrap(), 1);
    assert_eq!(b.count_classifiers(&k2.id).await.unwrap(), 0);

    // A name is unique per key, not across keys.
    let dup = a.create_classifier(&k1.id, &pets, 3).await.unwrap_err();
    assert!(
        matches!(dup, StoreError::Invalid(ref m) if m.contains("already exists")),
        "{dup}"
    );
    let theirs = b
        .create_classifier(&k2.id, &spec("pets", &[("car", 1)]), 3)
        .await
        .unwrap();
    assert_eq!(theirs.key_id, k2.id);
    assert_eq!(
        a.get_classifier(&k1.id, "pets")
            .await
            .unwrap()
            .unwrap()
            .spec,
        pets,
        "the other key's create changed nothing of this one"
    );

    // The cap per key.
    a.create_classifier(&k1.id, &spec("b", &[("x", 0)]), 3)
        .await
        .unwrap();
    a.create_classifier(&k1.id, &spec("a", &[("x", 0)]), 3)
        .await
        .unwrap();
    let full = a
        .create_classifier(&k1.id, &spec("c", &[("x", 0)]), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(full, StoreError::Invalid(ref m) if m.contains('3')),
        "{full}"
    );
    let names: Vec<String> = b
        .list_classifiers(&k1.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.spec.name)
        .collect();
    assert_eq!(names, ["a", "b", "pets"], "listed by name");

    // Replace keeps the creation time and moves the update time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut newer = spec("pets", &[("hamster", 4)]);
    newer.min_confidence = None;
    newer.fallback = None;
    newer.multi_label = false;
    let replaced = b.replace_classifier(&k1.id, &newer).await.unwrap();
    assert_eq!(replaced.spec, newer);
    assert_eq!(replaced.created_at, made.created_at);
    assert!(replaced.updated_at > made.updated_at, "{replaced:?}");
    let missing = a
        .replace_classifier(&k1.id, &spec("nope", &[("x", 0)]))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    // Replacing another key's name is not found for this key.
    let not_mine = a
        .replace_classifier(&k2.id, &spec("a", &[("x", 0)]))
        .await
        .unwrap_err();
    assert!(matches!(not_mine, StoreError::NotFound(_)), "{not_mine}");

    // Delete: only the owner's, once.
    assert!(!a.delete_classifier(&k2.id, "a").await.unwrap());
    assert!(a.delete_classifier(&k1.id, "pets").await.unwrap());
    assert!(!b.delete_classifier(&k1.id, "pets").await.unwrap());
    assert!(b.get_classifier(&k1.id, "pets").await.unwrap().is_none());
    assert_eq!(a.count_classifiers(&k1.id).await.unwrap(), 2);
    assert!(b.get_classifier(&k2.id, "pets").await.unwrap().is_some());

    // An unknown key cannot own one.
    let e = a
        .create_classifier("key_nope", &spec("x", &[("x", 0)]), 3)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_sqlite() {
    let (_dir, a, b) = common::sqlite_replicas(&StoreOptions::default()).await;
    classifiers(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_postgres() {
    common::with_postgres_replicas(&StoreOptions::default(), classifiers).await;
}
