//! The error table: each bad request gets the contract's status AND code in the `{message, code}`
//! shape, and none of them costs a credit.

mod api_support;

use std::sync::atomic::Ordering;

use api_support::*;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder};

const CLIP: &str = "/api/image-classification/clip";
const VIT: &str = "/api/image-classification/vit";

fn image_form(bytes: Vec<u8>) -> Form {
    Form::new().part("image", Part::bytes(bytes).file_name("image.jpg"))
}

async fn send(
    req: RequestBuilder,
) -> (
    reqwest::StatusCode,
    reqwest::header::HeaderMap,
    serde_json::Value,
) {
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_table() {
    let s = start(5, |_| {}).await;
    let jpg = image_bytes("motorcycle.jpg");
    let (host, _) = image_host(b"<html>not an image</html>".to_vec()).await;
    let labels65: Vec<String> = (0..65).map(|i| format!("l{i}")).collect();
    let long_label = "a".repeat(101);
    let revoked = s.store.create_key("revoked", 5).await.unwrap();
    s.store.revoke(&revoked.id).await.unwrap();
    let unknown = glimpse_store::generate_key();

    let key = s.key.clone();
    let post = |path: &str| s.http.post(s.url(path)).header("X-API-Key", &key);
    let get = |path: &str| s.http.get(s.url(path)).header("X-API-Key", &key);
    let too_big = vec![0u8; s.config.limits.max_upload_bytes + 1];

    // (case, request, status, code, key known → X-Credits-Remaining expected)
    let cases: Vec<(&str, RequestBuilder, u16, &str, bool)> = vec![
        ("no image", post(CLIP), 400, "VALIDATION_ERROR", true),
        (
            "no image (GET, no url)",
            get(VIT),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "empty file",
            post(CLIP).multipart(image_form(vec![])),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "non-image bytes",
            post(CLIP).multipart(image_form(b"definitely not an image".to_vec())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "url not a URL",
            get(CLIP).query(&[("url", "not a url")]),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "ftp url",
            get(CLIP).query(&[("url", "ftp://example.com/a.jpg")]),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "url that is not an image",
            get(CLIP).query(&[("url", format!("{host}/page.html"))]),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "labels empty",
            post(CLIP)
                .query(&[("labels", " , ,")])
                .multipart(image_form(jpg.clone())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "65 labels",
            post(CLIP)
                .query(&[("labels", labels65.join(","))])
                .multipart(image_form(jpg.clone())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "101-char label",
            post(CLIP)
                .query(&[("labels", long_label.as_str())])
                .multipart(image_form(jpg.clone())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "unknown clipModel",
            post(CLIP)
                .query(&[("clipModel", "openai/clip-vit-large-patch14")])
                .multipart(image_form(jpg.clone())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "unknown vitModel (form field)",
            post(VIT).multipart(image_form(jpg.clone()).text("vitModel", "nope")),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "missing key",
            s.http.post(s.url(CLIP)).multipart(image_form(jpg.clone())),
            401,
            "UNAUTHORIZED",
            false,
        ),
        (
            "malformed key",
            s.http
                .post(s.url(CLIP))
                .header("X-API-Key", "abc")
                .multipart(image_form(jpg.clone())),
            401,
            "UNAUTHORIZED",
            false,
        ),
        (
            "unknown key",
            s.http
                .post(s.url(CLIP))
                .header("X-API-Key", &unknown)
                .multipart(image_form(jpg.clone())),
            401,
            "UNAUTHORIZED",
            false,
        ),
        (
            "revoked key",
            s.http
                .post(s.url(CLIP))
                .header("X-API-Key", &revoked.key)
                .multipart(image_form(jpg.clone())),
            401,
            "UNAUTHORIZED",
            false,
        ),
        (
            "two file fields",
            post(CLIP).multipart(
                image_form(jpg.clone()).part("image", Part::bytes(jpg.clone()).file_name("b.jpg")),
            ),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "file in another field",
            post(CLIP)
                .multipart(Form::new().part("file", Part::bytes(jpg.clone()).file_name("a.jpg"))),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "malformed multipart",
            post(CLIP)
                .header("content-type", "multipart/form-data; boundary=xyz")
                .body("this is not multipart"),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "bad Idempotency-Key",
            post(CLIP)
                .header("Idempotency-Key", "x".repeat(300))
                .multipart(image_form(jpg.clone())),
            400,
            "VALIDATION_ERROR",
            true,
        ),
        (
            "wrong method",
            s.http.request(Method::DELETE, s.url(CLIP)),
            405,
            "METHOD_NOT_ALLOWED",
            false,
        ),
        (
            "HEAD does not classify",
            s.http
                .request(Method::HEAD, s.url(CLIP))
                .header("X-API-Key", &key)
                .query(&[("url", format!("{host}/m.jpg"))]),
            405,
            "",
            true,
        ),
        ("unknown route", get("/api/nope"), 404, "NOT_FOUND", false),
        (
            "admin off",
            s.http.get(s.url("/admin/keys")),
            404,
            "NOT_FOUND",
            false,
        ),
        (
            "upload over the limit",
            post(CLIP).multipart(image_form(too_big)),
            413,
            "PAYLOAD_TOO_LARGE",
            true,
        ),
    ];

    for (name, req, status, code, key_known) in cases {
        if code.is_empty() {
            // A HEAD answer has no body to check: status and balance only.
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), status, "{name}");
            assert_eq!(s.balance().await, 5, "{name} cost a credit");
            continue;
        }
        let (got, headers, body) = send(req).await;
        assert_eq!(got.as_u16(), status, "{name}: {body}");
        assert_error(got, &body, status, code);
        let msg = body["message"].as_str().unwrap();
        assert!(
            !msg.contains("/work/") && !msg.contains(".rs"),
            "{name} leaks: {msg}"
        );
        if key_known {
            assert_eq!(
                headers
                    .get("x-credits-remaining")
                    .map(|v| v.to_str().unwrap()),
                Some("5"),
                "{name}: X-Credits-Remaining"
            );
        }
        assert_eq!(s.balance().await, 5, "{name} cost a credit");
    }

    // The unknown model's message names the allowed ids.
    let (_, _, body) = send(
        s.http
            .post(s.url(CLIP))
            .header("X-API-Key", &s.key)
            .query(&[("clipModel", "nope")])
            .multipart(image_form(jpg.clone())),
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("clip-tiny"),
        "{body}"
    );

    let totals = s.store.ledger_totals(&s.key_id).await.unwrap();
    assert_eq!(totals.debits, 0, "no debit for any bad request");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_credits_is_402_before_any_fetch() {
    let s = start(0, |_| {}).await;
    let (host, hits) = image_host(image_bytes("motorcycle.jpg")).await;
    let (status, headers, body) = send(s.get_by_url(CLIP, &format!("{host}/m.jpg"))).await;
    assert_error(status, &body, 402, "INSUFFICIENT_CREDITS");
    assert_eq!(headers["x-credits-remaining"], "0");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the URL was fetched for a key with no credits"
    );
    // An upload is refused the same way, and nothing is debited.
    let (status, _, body) = send(
        s.http
            .post(s.url(VIT))
            .header("X-API-Key", &s.key)
            .multipart(image_form(image_bytes("motorcycle.jpg"))),
    )
    .await;
    assert_error(status, &body, 402, "INSUFFICIENT_CREDITS");
    assert_eq!(s.balance().await, 0);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_urls_are_refused_unless_allowed() {
    let s = start(3, |c| c.fetch.allow_private_urls = false).await;
    let (host, hits) = image_host(image_bytes("motorcycle.jpg")).await;
    let (status, _, body) = send(s.get_by_url(CLIP, &format!("{host}/m.jpg"))).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(s.balance().await, 3);
    s.stop().await.unwrap();
}

/// A server may serve one family only: with `GLIMPSE_VIT_MODEL` empty it starts, CLIP answers,
/// and the ViT endpoint says it is turned off (404), free; before, the server refused to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_family_can_be_turned_off() {
    let s = start(5, |c| c.models.vit_model = String::new()).await;
    let form = || {
        reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(image_bytes("astronaut.png")).file_name("a.png"),
        )
    };
    let res = s
        .http
        .post(format!("{}/api/image-classification/vit", s.base))
        .header("X-API-Key", &s.key)
        .multipart(form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("GLIMPSE_VIT_MODEL"),
        "{body}"
    );
    let res = s
        .http
        .post(format!("{}/api/image-classification/clip", s.base))
        .header("X-API-Key", &s.key)
        .multipart(form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(s.balance().await, 4);
    let ready = s
        .http
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    s.stop().await.unwrap();
}
