//! Saved classifiers (issue 24) over HTTP: create (JSON and multipart; examples by upload, URL
//! and `data:` URI), list, get (`?include=embeddings`), replace, delete, owner-only (another key
//! gets 404), every limit and bad field a free 400, the all-or-nothing create, use through
//! `clip?classifier=NAME` with the classifier's decision defaults, a restart that serves it
//! without the text encoder, and examples that matter on the tiny fixture model. The story runs
//! on SQLite and, when `GLIMPSE_TEST_POSTGRES_URL` is set, on PostgreSQL.

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use glimpse_core::backend::PixelBatch;
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::{Result as CoreResult, ZeroShotModel};
use glimpse_server::Models;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::support::*;

const CLIP: &str = "/api/image-classification/clip";
const ROOT: &str = "/api/classifiers";

/// A crop of fixture photo `name` (fractions of its width and height), flipped left-right when
/// `flip`, as PNG bytes.
fn crop(name: &str, x: f32, y: f32, w: f32, h: f32, flip: bool) -> Vec<u8> {
    let img = image::open(image(name)).unwrap();
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    let mut c = img.crop_imm(
        (x * iw) as u32,
        (y * ih) as u32,
        (w * iw) as u32,
        (h * ih) as u32,
    );
    if flip {
        c = c.fliph();
    }
    let mut out = Cursor::new(Vec::new());
    c.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A one-colour PNG: an image related to no fixture photo.
fn flat(rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64(png))
}

/// Sends `req` with `key`, answers (status, JSON body, `X-Credits-Remaining`).
async fn send(req: reqwest::RequestBuilder, key: &str) -> (u16, Value, Option<i64>) {
    let res = req.header("X-API-Key", key).send().await.unwrap();
    let status = res.status().as_u16();
    let credits = res
        .headers()
        .get("x-credits-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, body, credits)
}

/// Asserts a `{message, code}` error with `status`; answers the message.
async fn refused(s: &TestServer, key: &str, req: reqwest::RequestBuilder, status: u16) -> String {
    let (got, body, _) = send(req, key).await;
    let code = match status {
        400 => "VALIDATION_ERROR",
        402 => "INSUFFICIENT_CREDITS",
        404 => "NOT_FOUND",
        413 => "PAYLOAD_TOO_LARGE",
        _ => panic!("no code for {status}"),
    };
    assert_error(
        reqwest::StatusCode::from_u16(got).unwrap(),
        &body,
        status,
        code,
    );
    let _ = s;
    body["message"].as_str().unwrap().to_string()
}

fn post_json(s: &TestServer, body: &Value) -> reqwest::RequestBuilder {
    s.http.post(s.url(ROOT)).json(body)
}

fn classify_upload(
    s: &TestServer,
    query: &[(&str, &str)],
    png: Vec<u8>,
) -> reqwest::RequestBuilder {
    s.http
        .post(s.url(CLIP))
        .query(query)
        .multipart(Form::new().part("image", Part::bytes(png).file_name("x.png")))
}

/// The whole API on one server (its store SQLite or PostgreSQL).
async fn story(s: &TestServer) {
    let key = s.key.clone();
    let start = s.balance().await;
    let cat = crop("chelsea.jpg", 0.1, 0.1, 0.6, 0.6, false);
    let (host, hits) = image_host(crop("chelsea.jpg", 0.3, 0.2, 0.6, 0.7, true)).await;
    let astro = crop("astronaut.jpg", 0.0, 0.0, 0.7, 0.7, false);

    // Create by JSON: one URL and one data: URI for "cat", one data: URI for "astronaut".
    let spec = json!({
        "name": "pets",
        "labels": [
            {"name": "cat", "examples": [format!("{host}/cat.png"), data_uri(&cat)]},
            {"name": "astronaut", "prompts": ["a photo of an {label}", "a spacesuit"],
             "examples": [data_uri(&astro)]}
        ],
        "minConfidence": 0.05,
        "fallback": "unknown"
    });
    let (st, body, credits) = send(post_json(s, &spec), &key).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["name"], "pets");
    assert_eq!(body["model"], "clip-tiny");
    assert_eq!(body["labels"][0]["name"], "cat");
    assert_eq!(body["labels"][0]["examples"], 2);
    assert_eq!(body["labels"][0]["prompts"], json!([]));
    assert_eq!(body["labels"][1]["examples"], 1);
    assert_eq!(
        body["labels"][1]["prompts"],
        json!(["a photo of an {label}", "a spacesuit"])
    );
    assert!(body["labels"][0].get("embedding").is_none(), "{body}");
    assert_eq!(body["minConfidence"].as_f64().unwrap() as f32, 0.05);
    assert_eq!(body["fallback"], "unknown");
    assert_eq!(body["multiLabel"], false);
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(body["createdAt"], body["updatedAt"]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the URL example is fetched once"
    );
    // One credit per example image.
    assert_eq!(credits, Some(start - 3));
    assert_eq!(s.balance().await, start - 3);

    // Read it back: list and get without embeddings, get with them.
    let (st, list, _) = send(s.http.get(s.url(ROOT)), &key).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["classifiers"].as_array().unwrap().len(), 1);
    assert_eq!(list["classifiers"][0]["name"], "pets");
    assert!(!list.to_string().contains("embedding"), "{list}");
    let (st, one, _) = send(s.http.get(s.url(&format!("{ROOT}/pets"))), &key).await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["labels"][1]["examples"], 1);
    assert!(!one.to_string().contains("embedding"), "{one}");
    let (st, full, _) = send(
        s.http
            .get(s.url(&format!("{ROOT}/pets?include=embeddings"))),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{full}");
    for l in full["labels"].as_array().unwrap() {
        let e: Vec<f64> = l["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(!e.is_empty());
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "prototype norm {norm}");
    }
    refused(
        s,
        &key,
        s.http.get(s.url(&format!("{ROOT}/pets?include=bytes"))),
        400,
    )
    .await;

    // Use it: charged like a classification; scores per label; the classifier's fallback.
    let before = s.balance().await;
    let (st, r, _) = send(
        classify_upload(
            s,
            &[("classifier", "pets")],
            crop("chelsea.jpg", 0.2, 0.2, 0.5, 0.5, false),
        ),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], "cat", "{r}");
    assert_eq!(r["model"], "clip");
    assert_eq!(r["modelId"], "clip-tiny");
    assert_eq!(r["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(s.balance().await, before - s.credits_per_call());
    // A request field overrides the stored default: nothing reaches 1, so it abstains with
    // the classifier's own fallback.
    let (st, r, _) = send(
        classify_upload(
            s,
            &[("classifier", "pets"), ("minConfidence", "1")],
            crop("chelsea.jpg", 0.2, 0.2, 0.5, 0.5, false),
        ),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], "unknown", "{r}");
    assert_eq!(r["abstained"], true, "{r}");
    // multiLabel is allowed for saved classifiers (independent scores).
    let (st, r, _) = send(
        classify_upload(
            s,
            &[
                ("classifier", "pets"),
                ("multiLabel", "true"),
                ("minConfidence", "0"),
            ],
            crop("chelsea.jpg", 0.2, 0.2, 0.5, 0.5, false),
        ),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["results"].as_array().unwrap().len(), 2, "{r}");
    // By URL too.
    let (st, r, _) = send(
        s.http
            .get(s.url(CLIP))
            .query(&[("classifier", "pets"), ("url", &format!("{host}/x.png"))]),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], "cat", "{r}");

    // Free refusals when using it.
    let before = s.balance().await;
    let q = |extra: &[(&str, &str)]| {
        let mut q = vec![("classifier", "pets")];
        q.extend_from_slice(extra);
        classify_upload(s, &q, cat.clone())
    };
    let m = refused(s, &key, q(&[("labels", "cat,dog")]), 400).await;
    assert!(m.contains("labels"), "{m}");
    refused(s, &key, q(&[("clipModel", "other-model")]), 400).await;
    refused(
        s,
        &key,
        classify_upload(s, &[("classifier", "nope")], cat.clone()),
        404,
    )
    .await;
    refused(
        s,
        &key,
        s.http
            .post(s.url("/api/image-classification/vit"))
            .query(&[("classifier", "pets")])
            .multipart(Form::new().part("image", Part::bytes(cat.clone()).file_name("x.png"))),
        400,
    )
    .await;
    assert_eq!(s.balance().await, before, "refusals are free");

    // Another key sees nothing of it: 404 everywhere, an empty list, no use.
    let other = s.store.create_key("other", 10).await.unwrap();
    let (st, list, _) = send(s.http.get(s.url(ROOT)), &other.key).await;
    assert_eq!((st, list["classifiers"].clone()), (200, json!([])));
    let one = s.url(&format!("{ROOT}/pets"));
    refused(s, &other.key, s.http.get(&one), 404).await;
    refused(s, &other.key, s.http.delete(&one), 404).await;
    refused(
        s,
        &other.key,
        s.http.put(&one).json(&json!({"labels": [{"name": "x"}]})),
        404,
    )
    .await;
    refused(
        s,
        &other.key,
        classify_upload(s, &[("classifier", "pets")], cat.clone()),
        404,
    )
    .await;
    assert_eq!(s.store.balance(&other.id).await.unwrap(), 10);
    // The other key may use the same name for its own classifier.
    let (st, body, _) = send(
        post_json(s, &json!({"name": "pets", "labels": [{"name": "dog"}]})),
        &other.key,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let (_, mine, _) = send(s.http.get(&one), &key).await;
    assert_eq!(mine["labels"][0]["name"], "cat", "the owner's own stays");

    // Every bad field is a free 400 (and creates nothing).
    let before = s.balance().await;
    let label = |n: &str| json!({"name": n});
    let bad: Vec<(&str, Value)> = vec![
        (
            "duplicate name",
            json!({"name": "pets", "labels": [label("a")]}),
        ),
        (
            "upper-case name",
            json!({"name": "Pets", "labels": [label("a")]}),
        ),
        (
            "long name",
            json!({"name": "a".repeat(65), "labels": [label("a")]}),
        ),
        ("no name", json!({"labels": [label("a")]})),
        ("no labels", json!({"name": "x", "labels": []})),
        (
            "65 labels",
            json!({"name": "x", "labels": (0..65).map(|i| label(&format!("l{i}"))).collect::<Vec<_>>()}),
        ),
        (
            "label twice",
            json!({"name": "x", "labels": [label("a"), label("a")]}),
        ),
        ("empty label", json!({"name": "x", "labels": [label(" ")]})),
        (
            "unknown model",
            json!({"name": "x", "model": "gpt", "labels": [label("a")]}),
        ),
        (
            "minConfidence 2",
            json!({"name": "x", "labels": [label("a")], "minConfidence": 2}),
        ),
        (
            "empty fallback",
            json!({"name": "x", "labels": [label("a")], "fallback": ""}),
        ),
        (
            "unknown field",
            json!({"name": "x", "labels": [label("a")], "topk": 3}),
        ),
        (
            "empty prompt",
            json!({"name": "x", "labels": [{"name": "a", "prompts": [""]}]}),
        ),
        (
            "33 examples",
            json!({"name": "x", "labels": [{"name": "a", "examples": vec![data_uri(&cat); 33]}]}),
        ),
        (
            "not base64",
            json!({"name": "x", "labels": [{"name": "a", "examples": ["data:image/png;base64,@@@"]}]}),
        ),
        (
            "ftp url",
            json!({"name": "x", "labels": [{"name": "a", "examples": ["ftp://example.com/a.png"]}]}),
        ),
    ];
    for (what, body) in bad {
        let m = refused(s, &key, post_json(s, &body), 400).await;
        assert!(!m.is_empty(), "{what}");
    }
    let m = refused(
        s,
        &key,
        s.http
            .post(s.url(ROOT))
            .body("name=x")
            .header("content-type", "text/plain"),
        400,
    )
    .await;
    assert!(m.contains("application/json"), "{m}");
    let m = refused(
        s,
        &key,
        s.http.post(s.url(ROOT)).json(&json!({"name": "x"})),
        400,
    )
    .await;
    assert!(m.contains("labels"), "{m}");
    assert_eq!(s.balance().await, before, "refusals are free");
    let (_, list, _) = send(s.http.get(s.url(ROOT)), &key).await;
    assert_eq!(list["classifiers"].as_array().unwrap().len(), 1, "{list}");

    // All or nothing: one example that is no image → nothing created, nothing charged (the
    // good examples before it included), and the same for one whose URL cannot be fetched.
    for broken in [
        data_uri(b"this is not an image"),
        "http://127.0.0.1:1/refused.png".to_string(),
    ] {
        let body = json!({"name": "half", "labels": [
            {"name": "cat", "examples": [data_uri(&cat), data_uri(&cat)]},
            {"name": "astronaut", "examples": [data_uri(&astro), broken]}
        ]});
        let m = refused(s, &key, post_json(s, &body), 400).await;
        assert!(m.contains("astronaut") && m.contains("example 2"), "{m}");
        assert_eq!(s.balance().await, before, "a failed create is not charged");
        refused(s, &key, s.http.get(s.url(&format!("{ROOT}/half"))), 404).await;
    }
    let totals = s.store.ledger_totals(&s.key_id).await.unwrap();
    assert_eq!(totals.topups - totals.debits + totals.refunds, before);

    // Not enough credits for its examples: 402 before any work.
    let poor = s.store.create_key("poor", 1).await.unwrap();
    let body = json!({"name": "two", "labels": [{"name": "a", "examples": [data_uri(&cat), data_uri(&cat)]}]});
    refused(s, &poor.key, post_json(s, &body), 402).await;
    assert_eq!(s.store.balance(&poor.id).await.unwrap(), 1);
    refused(s, &poor.key, s.http.get(s.url(&format!("{ROOT}/two"))), 404).await;

    // Multipart: the spec as JSON text, examples as uploads named examples[LABEL].
    let form = Form::new()
        .text(
            "classifier",
            json!({"name": "uploaded", "labels": [{"name": "cat"}, {"name": "astronaut", "examples": [data_uri(&astro)]}], "multiLabel": true}).to_string(),
        )
        .part("examples[cat]", Part::bytes(cat.clone()).file_name("a.png"))
        .part("examples[cat]", Part::bytes(crop("chelsea.jpg", 0.0, 0.3, 0.5, 0.5, true)).file_name("b.png"));
    let (st, body, credits) = send(s.http.post(s.url(ROOT)).multipart(form), &key).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["labels"][0]["examples"], 2);
    assert_eq!(body["labels"][1]["examples"], 1);
    assert_eq!(body["multiLabel"], true);
    assert_eq!(credits, Some(before - 3));
    let form = Form::new()
        .text(
            "classifier",
            json!({"name": "x2", "labels": [{"name": "cat"}]}).to_string(),
        )
        .part("examples[dog]", Part::bytes(cat.clone()).file_name("a.png"));
    let m = refused(s, &key, s.http.post(s.url(ROOT)).multipart(form), 400).await;
    assert!(m.contains("examples[dog]"), "{m}");
    let form = Form::new().part("examples[cat]", Part::bytes(cat.clone()).file_name("a.png"));
    refused(s, &key, s.http.post(s.url(ROOT)).multipart(form), 400).await;
    let big = vec![0u8; s.max_upload_bytes() + 1];
    let form = Form::new()
        .text(
            "classifier",
            json!({"name": "x3", "labels": [{"name": "cat"}]}).to_string(),
        )
        .part("examples[cat]", Part::bytes(big).file_name("a.png"));
    refused(s, &key, s.http.post(s.url(ROOT)).multipart(form), 413).await;
    assert_eq!(s.balance().await, before - 3);

    // Replace: new labels, examples charged, the creation time kept.
    let before = s.balance().await;
    let (st, body, _) = send(
        s.http.put(s.url(&format!("{ROOT}/pets"))).json(&json!({
            "labels": [{"name": "astronaut", "examples": [data_uri(&astro)]}, {"name": "page"}],
            "multiLabel": true
        })),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["labels"][1]["name"], "page");
    assert_eq!(body["multiLabel"], true);
    assert!(
        body.get("fallback").is_none(),
        "a replace replaces everything: {body}"
    );
    assert_eq!(body["createdAt"], mine["createdAt"]);
    assert!(body["updatedAt"].as_str() >= mine["updatedAt"].as_str());
    assert_eq!(s.balance().await, before - 1);
    refused(
        s,
        &key,
        s.http
            .put(s.url(&format!("{ROOT}/pets")))
            .json(&json!({"name": "other", "labels": [label("a")]})),
        400,
    )
    .await;
    refused(
        s,
        &key,
        s.http
            .put(s.url(&format!("{ROOT}/nope")))
            .json(&json!({"labels": [label("a")]})),
        404,
    )
    .await;

    // Delete.
    let (st, _, _) = send(s.http.delete(s.url(&format!("{ROOT}/pets"))), &key).await;
    assert_eq!(st, 204);
    refused(s, &key, s.http.get(s.url(&format!("{ROOT}/pets"))), 404).await;
    refused(s, &key, s.http.delete(s.url(&format!("{ROOT}/pets"))), 404).await;
    refused(
        s,
        &key,
        classify_upload(s, &[("classifier", "pets")], cat.clone()),
        404,
    )
    .await;
    // The other key's "pets" is still there.
    let (st, _, _) = send(s.http.get(&one), &other.key).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_story_on_sqlite() {
    let s = TestServer::builder().credits(50).start().await;
    story(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_story_on_postgres() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let s = TestServer::builder()
        .credits(50)
        .database_url(&pg.url)
        .start()
        .await;
    story(&s).await;
    drop(s);
}

/// 100 classifiers per key, then a clear 400; another key is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_at_most_100_classifiers() {
    let s = TestServer::builder().start().await;
    for i in 0..100 {
        let (st, body, _) = send(
            post_json(
                &s,
                &json!({"name": format!("c{i}"), "labels": [{"name": "a"}]}),
            ),
            &s.key,
        )
        .await;
        assert_eq!(st, 201, "{i}: {body}");
    }
    let m = refused(
        &s,
        &s.key,
        post_json(&s, &json!({"name": "c100", "labels": [{"name": "a"}]})),
        400,
    )
    .await;
    assert!(m.contains("100"), "{m}");
    let other = s.store.create_key("other", 0).await.unwrap();
    let (st, body, _) = send(
        post_json(&s, &json!({"name": "c100", "labels": [{"name": "a"}]})),
        &other.key,
    )
    .await;
    assert_eq!(st, 201, "{body}");
}

/// The fixture CLIP, counting the texts its text tower embeds.
struct CountingClip {
    inner: Arc<dyn ZeroShotModel>,
    texts: Arc<AtomicUsize>,
}

impl ZeroShotModel for CountingClip {
    fn preprocess_config(&self) -> &PreprocessConfig {
        self.inner.preprocess_config()
    }
    fn embed_images(&self, pixels: &PixelBatch) -> CoreResult<Vec<Vec<f32>>> {
        self.inner.embed_images(pixels)
    }
    fn embed_texts(&self, texts: &[String]) -> CoreResult<Vec<Vec<f32>>> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed_texts(texts)
    }
    fn logit_scale(&self) -> f32 {
        self.inner.logit_scale()
    }
}

fn counting_models() -> (Models, Arc<AtomicUsize>) {
    let inner = glimpse_candle::load_clip(
        &fixtures().join("models/clip-tiny"),
        &glimpse_candle::LoadOptions::default(),
    )
    .unwrap();
    let texts = Arc::new(AtomicUsize::new(0));
    let clip = CountingClip {
        inner: Arc::new(inner),
        texts: Arc::clone(&texts),
    };
    (
        Models::new(vec![("clip-tiny".to_string(), Arc::new(clip))], vec![]),
        texts,
    )
}

/// Photos the examples-matter classifier learns, by label: crops and flips of each. (The tiny
/// fixture CLIP is random: its image embeddings all lie close together, and crops of some
/// photos, astronaut.jpg vs chelsea.jpg for one, are nearer another photo's than their own.
/// These three it tells apart from crops, measured with the in-process model.)
const PHOTOS: [(&str, &str); 3] = [("a", "coffee.jpg"), ("b", "page.jpg"), ("c", "wide.jpg")];

fn teaching_crops(photo: &str) -> Vec<Vec<u8>> {
    vec![
        crop(photo, 0.0, 0.0, 0.6, 0.6, false),
        crop(photo, 0.4, 0.4, 0.6, 0.6, false),
        crop(photo, 0.0, 0.4, 0.6, 0.6, true),
        crop(photo, 0.4, 0.0, 0.6, 0.6, true),
    ]
}

/// Crops none of the teaching crops is.
fn held_out_crops(photo: &str) -> Vec<Vec<u8>> {
    vec![
        crop(photo, 0.15, 0.15, 0.7, 0.7, false),
        crop(photo, 0.2, 0.1, 0.55, 0.75, true),
    ]
}

/// The result (and whether every label scored the same) of each held-out crop under
/// classifier `name`, with `extra` query fields.
async fn results(
    s: &TestServer,
    key: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (label, photo) in PHOTOS {
        for png in held_out_crops(photo) {
            let mut q = vec![("classifier", name)];
            q.extend_from_slice(extra);
            let (st, r, _) = send(classify_upload(s, &q, png), key).await;
            assert_eq!(st, 200, "{r}");
            out.push((
                label.to_string(),
                r["result"].as_str().unwrap().to_string(),
                r,
            ));
        }
    }
    out
}

/// Prompts that say nothing (the same text for every label) but examples that differ: the
/// classifier gets every held-out crop right, while the same labels without examples score
/// every label the same (so cannot). An unrelated flat image abstains under `minConfidence`.
/// A restart on the same database serves the classifier without calling the text encoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_matter_and_a_restart_serves_without_the_text_encoder() {
    let (models, texts) = counting_models();
    let s = TestServer::builder()
        .credits(100)
        .models(models)
        .start()
        .await;
    let key = s.key.clone();
    let same = vec!["a photo".to_string()];
    let mut form = Form::new().text(
        "classifier",
        json!({
            "name": "taught",
            "labels": PHOTOS.iter().map(|(l, _)| json!({"name": l, "prompts": same})).collect::<Vec<_>>()
        })
        .to_string(),
    );
    for (label, photo) in PHOTOS {
        for (i, png) in teaching_crops(photo).into_iter().enumerate() {
            form = form.part(
                format!("examples[{label}]"),
                Part::bytes(png).file_name(format!("{label}{i}.png")),
            );
        }
    }
    let (st, body, _) = send(s.http.post(s.url(ROOT)).multipart(form), &key).await;
    assert_eq!(st, 201, "{body}");
    let words = json!({
        "name": "words",
        "labels": PHOTOS.iter().map(|(l, _)| json!({"name": l, "prompts": same})).collect::<Vec<_>>()
    });
    let (st, body, _) = send(post_json(&s, &words), &key).await;
    assert_eq!(st, 201, "{body}");
    assert!(
        texts.load(Ordering::SeqCst) > 0,
        "creating embeds the prompts"
    );

    // Words only: every label the same score, so no answer can tell the photos apart.
    for (_, _, r) in results(&s, &key, "words", &[]).await {
        let scores: Vec<f64> = r["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] == w[1]), "{r}");
    }
    // With examples: every held-out crop right.
    let taught = results(&s, &key, "taught", &[]).await;
    let mut lowest_right = f64::MAX;
    for (want, got, r) in &taught {
        assert_eq!(want, got, "{r}");
        lowest_right = lowest_right.min(r["confidence"].as_f64().unwrap());
    }
    // An unrelated image scores below every right answer: with the threshold between, it
    // abstains and the photos still do not.
    let unrelated = flat([0, 200, 0]);
    let (st, r, _) = send(
        classify_upload(&s, &[("classifier", "taught")], unrelated.clone()),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let unrelated_top = r["confidence"].as_f64().unwrap();
    assert!(
        unrelated_top < lowest_right,
        "unrelated {unrelated_top} vs {lowest_right}"
    );
    let threshold = format!("{}", (unrelated_top + lowest_right) / 2.0);
    let (st, r, _) = send(
        classify_upload(
            &s,
            &[("classifier", "taught"), ("minConfidence", &threshold)],
            unrelated.clone(),
        ),
        &key,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["abstained"], true, "{r}");
    assert_eq!(r["result"], "other", "{r}");
    for (want, got, r) in results(&s, &key, "taught", &[("minConfidence", &threshold)]).await {
        assert_eq!(want, got, "{r}");
        assert!(r.get("abstained").is_none(), "{r}");
    }

    // A restart on the same database: the classifier answers the same without the text encoder.
    let url = s.database_url().to_string();
    let before: Vec<Value> = taught.into_iter().map(|(_, _, r)| r).collect();
    let (_, dir) = s.stop_keeping_dir().await;
    let (models, texts) = counting_models();
    let s2 = TestServer::builder()
        .models(models)
        .database_url(&url)
        .start()
        .await;
    let after = results(&s2, &key, "taught", &[]).await;
    for (b, (want, got, a)) in before.iter().zip(&after) {
        assert_eq!(want, got, "{a}");
        assert_eq!(b["predictions"], a["predictions"]);
    }
    assert_eq!(
        texts.load(Ordering::SeqCst),
        0,
        "the text encoder was called"
    );
    drop(s2);
    drop(dir);
}

/// The playground offers the key's saved classifiers and says when an answer abstained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_picks_a_saved_classifier_and_shows_abstentions() {
    let s = TestServer::builder().start().await;
    let index = s.get_text("/").await;
    assert!(index.contains("id=\"classifier\""), "no classifier picker");
    assert!(
        index.contains("id=\"load-classifiers\""),
        "no way to load them"
    );
    let js = s.get_text("/playground.js").await;
    for needle in [
        "fetch(\"/api/classifiers\"",
        "searchParams.set(\"classifier\"",
        "data.abstained",
    ] {
        assert!(js.contains(needle), "playground.js lacks {needle}");
    }
}
