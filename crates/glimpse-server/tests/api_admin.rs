//! The admin API: bearer-token guard, key lifecycle over HTTP, and `/readyz`.

mod api_support;

use api_support::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-for-tests-0123456789";

async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_over_http() {
    let s = start(0, |c| c.store.admin_token = Some(TOKEN.into())).await;
    let admin = |path: &str| s.http.post(s.url(path)).bearer_auth(TOKEN);

    // Guard: no token, wrong token (same length and not) → 401.
    for auth in [None, Some("x"), Some("admin-token-for-tests-0123456780")] {
        let mut req = s.http.get(s.url("/admin/keys"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let (st, body) = call(req).await;
        assert_error(
            reqwest::StatusCode::from_u16(st).unwrap(),
            &body,
            401,
            "UNAUTHORIZED",
        );
    }

    let (st, created) = call(admin("/admin/keys").json(&json!({"name": "ci", "credits": 2}))).await;
    assert_eq!(st, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("gk_"));
    assert_eq!(
        (created["name"].as_str(), created["credits"].as_i64()),
        (Some("ci"), Some(2))
    );
    let mut fields: Vec<&String> = created.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["credits", "id", "key", "name"]);

    // The new key works and is charged.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(image_bytes("page.jpg")).file_name("p.jpg"),
    );
    let res = s
        .http
        .post(s.url("/api/image-classification/clip"))
        .header("X-API-Key", &key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-credits-remaining"], "1");

    let (st, list) = call(s.http.get(s.url("/admin/keys")).bearer_auth(TOKEN)).await;
    assert_eq!(st, 200);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["credits"], 1);
    assert!(
        row.get("key").is_none(),
        "the secret is never listed: {row}"
    );

    let (st, b) =
        call(admin(&format!("/admin/keys/{id}/topup")).json(&json!({"credits": 5}))).await;
    assert_eq!((st, b["credits"].as_i64()), (200, Some(6)), "{b}");

    // Bad bodies and values are 400; unknown ids 404.
    for bad in [
        json!({"credits": -1}),
        json!({"credits": "many"}),
        json!({"nope": 1}),
    ] {
        let (st, body) = call(admin("/admin/keys").json(&bad)).await;
        assert_error(
            reqwest::StatusCode::from_u16(st).unwrap(),
            &body,
            400,
            "VALIDATION_ERROR",
        );
    }
    let (st, body) = call(
        admin("/admin/keys")
            .body("{not json")
            .header("content-type", "application/json"),
    )
    .await;
    assert_error(
        reqwest::StatusCode::from_u16(st).unwrap(),
        &body,
        400,
        "VALIDATION_ERROR",
    );
    let (st, body) = call(admin("/admin/keys/nope/topup").json(&json!({"credits": 1}))).await;
    assert_error(
        reqwest::StatusCode::from_u16(st).unwrap(),
        &body,
        404,
        "NOT_FOUND",
    );

    let (st, b) = call(admin(&format!("/admin/keys/{id}/revoke"))).await;
    assert_eq!((st, b["revoked"].as_bool()), (200, Some(true)), "{b}");
    let (st, body) = call(s.http.get(s.url("/api/account")).header("X-API-Key", &key)).await;
    assert_error(
        reqwest::StatusCode::from_u16(st).unwrap(),
        &body,
        401,
        "UNAUTHORIZED",
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let s = start(0, |_| {}).await;
    let (st, body) = call(s.http.get(s.url("/healthz"))).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ok")));
    let (st, body) = call(s.http.get(s.url("/readyz"))).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ready")));
    // With the store closed, readiness fails (503) while liveness holds.
    s.store.close().await;
    let (st, body) = call(s.http.get(s.url("/readyz"))).await;
    assert_error(
        reqwest::StatusCode::from_u16(st).unwrap(),
        &body,
        503,
        "NOT_READY",
    );
    let (st, _) = call(s.http.get(s.url("/healthz"))).await;
    assert_eq!(st, 200);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(0, |c| c.listen.header_timeout_secs = 1).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must drop the connection soon after 1 s.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "connection still open after 5 s of half-sent headers"
    );
    // A normal request on a fresh connection still works.
    let (st, _) = call(s.http.get(s.url("/healthz"))).await;
    assert_eq!(st, 200);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_float_credits_are_integers() {
    let s = start(0, |c| c.store.admin_token = Some(TOKEN.into())).await;
    let post = |v: Value| {
        s.http
            .post(s.url("/admin/keys"))
            .bearer_auth(TOKEN)
            .json(&v)
    };
    let (st, body) = call(post(json!({"name": "f", "credits": 3.0}))).await;
    assert_eq!((st, body["credits"].as_i64()), (201, Some(3)), "{body}");
    let (st, body) = call(post(json!({"name": "f", "credits": 2.5}))).await;
    assert_error(
        reqwest::StatusCode::from_u16(st).unwrap(),
        &body,
        400,
        "VALIDATION_ERROR",
    );
    s.stop().await.unwrap();
}
