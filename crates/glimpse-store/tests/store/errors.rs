//! A database error keeps the driver's error as its cause, and says nothing of the URL's secrets.

use std::error::Error as _;

use glimpse_store::*;

/// The first of `e`'s causes that is an sqlx error.
fn sqlx_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a sqlx::Error> {
    let mut next = e.source();
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<sqlx::Error>() {
            return Some(found);
        }
        next = cause.source();
    }
    None
}

#[tokio::test]
async fn a_database_error_keeps_the_sqlx_error_as_its_source() {
    let store = connect("sqlite::memory:").await.unwrap();
    let key = store.create_key("k", 1).await.unwrap();
    store.close().await;
    let e = store.balance(&key.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    assert!(e.source().is_some(), "no source: {e:?}");
    let cause = sqlx_cause(&e).expect("an sqlx error among the causes");
    // The message still says what the driver said.
    assert!(e.to_string().contains(&cause.to_string()), "{e}");
}

#[tokio::test]
async fn a_failed_postgres_connect_names_where_and_why_but_no_password() {
    // Port 1: nothing listens there, so the connection is refused at once.
    let url = "postgres://glimpse:s3cret-pw@127.0.0.1:1/glimpse";
    let e = match connect(url).await {
        Err(e) => e,
        Ok(_) => panic!("connected to port 1"),
    };
    let text = e.to_string();
    assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(!format!("{e:?}").contains("s3cret-pw"), "{e:?}");
    assert!(sqlx_cause(&e).is_some(), "{e:?}");
}

#[test]
fn a_database_error_made_from_text_has_no_source() {
    let e = StoreError::Database("simulated: database is locked".into());
    assert_eq!(
        e.to_string(),
        "database error: simulated: database is locked"
    );
    assert!(e.source().is_some_and(|d| d.source().is_none()));
}
