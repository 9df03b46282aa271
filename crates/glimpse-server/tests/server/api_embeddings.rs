//! Embeddings (issue 25): `/v1/embeddings` in OpenAI's shape (with `Authorization: Bearer`),
//! `/api/embeddings` multipart, both equal to `transformers`' normalised
//! `get_text_features`/`get_image_features` on the tiny CLIP fixture; the official `openai`
//! Python client unchanged; errors that are free; credits per item.

use std::process::Command;

use base64::Engine as _;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::support::*;

const V1: &str = "/v1/embeddings";
const MULTIPART: &str = "/api/embeddings";

fn expected() -> Value {
    let path = fixtures().join("expected/clip-tiny.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a vector: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Cosine distance within 1e-5 and unit length (the bound).
fn assert_same_direction(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let dot: f64 = got.iter().zip(want).map(|(a, b)| a * b).sum();
    let ng = got.iter().map(|a| a * a).sum::<f64>().sqrt();
    let nw = want.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!((ng - 1.0).abs() < 1e-5, "{what}: norm {ng}");
    let cos = dot / (ng * nw);
    assert!(1.0 - cos < 1e-5, "{what}: cosine {cos}");
}

fn data_uri(name: &str) -> String {
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image_bytes(name))
    )
}

fn model_id(s: &TestServer) -> String {
    s.state
        .models()
        .default_for(glimpse_core::Task::ZeroShot)
        .unwrap()
        .model
        .id()
        .to_string()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_texts_and_images_equal_the_reference_features() {
    let s = TestServer::builder().credits(20).start().await;
    let exp = expected();
    let prompts: Vec<String> = exp["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let model = model_id(&s);
    // Bearer auth, the OpenAI clients' way.
    let req = s
        .http
        .post(s.url(V1))
        .bearer_auth(&s.key)
        .json(&json!({"model": model, "input": prompts}));
    let (status, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], model.as_str());
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), prompts.len());
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let want = floats(&exp["text_embeds"][i]);
        assert_same_direction(&floats(&d["embedding"]), &want, &prompts[i]);
    }
    // Tokens: each prompt's real ids (special tokens included, no padding).
    let tokens: usize = exp["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ids| {
            ids.as_array()
                .unwrap()
                .iter()
                .filter(|t| t.as_u64() != Some(0))
                .count()
        })
        .sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens, "{body}");
    assert_eq!(body["usage"]["total_tokens"], tokens, "{body}");
    assert_eq!(s.balance().await, 20 - 6 * s.credits_per_call());

    // A text longer than the context is truncated as transformers does: 77 tokens counted, and
    // the vector is the one of its first 75 words (+ start and end tokens).
    let long = "photo ".repeat(200);
    let cut = "photo ".repeat(75);
    let req = s
        .http
        .post(s.url(V1))
        .bearer_auth(&s.key)
        .json(&json!({"model": model, "input": [long, cut]}));
    let (status, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 77 * 2, "{body}");
    let (a, b) = (
        floats(&body["data"][0]["embedding"]),
        floats(&body["data"][1]["embedding"]),
    );
    assert_same_direction(&a, &b, "truncated text");
    assert_eq!(s.balance().await, 20 - 8 * s.credits_per_call());

    // Images, by data: URI and by URL, base64-encoded answers.
    let (host, _) = image_host(image_bytes("chelsea.jpg")).await;
    let req = s
        .http
        .post(s.url(V1))
        .header("X-API-Key", &s.key)
        .json(&json!({
            "model": model,
            "input": [data_uri("motorcycle.jpg"), format!("{host}/c.jpg")],
            "modality": "image",
            "encoding_format": "base64",
        }));
    let (status, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 0);
    for (i, name) in ["motorcycle.jpg", "chelsea.jpg"].iter().enumerate() {
        let b64 = body["data"][i]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let got: Vec<f64> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect();
        let want = floats(&exp["images"][*name]["image_embeds"]);
        assert_same_direction(&got, &want, name);
    }
    assert_eq!(s.balance().await, 20 - 10 * s.credits_per_call());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_keeps_the_order_of_images_and_texts() {
    let s = TestServer::builder().credits(10).start().await;
    let exp = expected();
    let form = Form::new()
        .text("text", "a photo of a car.")
        .part(
            "image",
            Part::bytes(image_bytes("page.jpg")).file_name("page.jpg"),
        )
        .text("text", "a photo of a document.");
    let req = s
        .http
        .post(s.url(MULTIPART))
        .header("X-API-Key", &s.key)
        .multipart(form);
    let (status, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_same_direction(
        &floats(&data[0]["embedding"]),
        &floats(&exp["text_embeds"][0]),
        "car",
    );
    assert_same_direction(
        &floats(&data[1]["embedding"]),
        &floats(&exp["images"]["page.jpg"]["image_embeds"]),
        "page.jpg",
    );
    assert_same_direction(
        &floats(&data[2]["embedding"]),
        &floats(&exp["text_embeds"][1]),
        "document",
    );
    assert_eq!(s.balance().await, 10 - 3 * s.credits_per_call());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_clear_and_free() {
    let s = TestServer::builder().credits(5).start().await;
    let model = model_id(&s);
    let vit = s
        .state
        .models()
        .default_for(glimpse_core::Task::Classify)
        .unwrap()
        .model
        .id()
        .to_string();
    let long = "word ".repeat(10_000);
    let cases = [
        (
            json!({"model": model, "input": [[49406, 320, 49407]]}),
            "token ids",
        ),
        (json!({"model": model, "input": []}), "empty"),
        (json!({"model": model, "input": [""]}), "empty"),
        (json!({"model": model, "input": 5}), "string"),
        (
            json!({"model": model, "input": "x", "dimensions": 8}),
            "dimensions",
        ),
        (
            json!({"model": model, "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": model, "input": "x", "modality": "audio"}),
            "modality",
        ),
        (json!({"model": vit, "input": "x"}), "image classifier"),
        (json!({"model": "nope", "input": "x"}), "nope"),
        (
            json!({"model": model, "input": ["x"], "modality": "image"}),
            "URL",
        ),
        (
            json!({"model": model, "input": [data_uri("motorcycle.jpg").replace("image/jpeg", "text/plain")], "modality": "image"}),
            "data:",
        ),
        (json!({"model": model, "input": long}), "longer"),
        (json!({"input": "x", "modal": "image"}), ""),
    ];
    for (body, needle) in cases {
        let req = s.http.post(s.url(V1)).bearer_auth(&s.key).json(&body);
        let (status, got) = send(req).await;
        let label = body.to_string();
        let label = &label[..label.len().min(120)];
        if needle.is_empty() {
            // Unknown fields are ignored (OpenAI clients send extras): a plain text embedding.
            assert_eq!(status, 200, "{label}: {got}");
            continue;
        }
        assert_error(
            reqwest::StatusCode::from_u16(status).unwrap(),
            &got,
            400,
            "VALIDATION_ERROR",
        );
        let msg = got["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{label}: {msg}");
    }
    // A bad image among good ones fails the whole request, uncharged.
    let before = s.balance().await;
    let req = s.http.post(s.url(V1)).bearer_auth(&s.key).json(&json!({
        "model": model,
        "input": [data_uri("motorcycle.jpg"), "data:image/png;base64,aGVsbG8="],
        "modality": "image",
    }));
    let (status, got) = send(req).await;
    assert_eq!(status, 400, "{got}");
    assert!(
        got["message"].as_str().unwrap().starts_with("input 1:"),
        "{got}"
    );
    assert_eq!(s.balance().await, before);
    // No key, a wrong bearer token, another scheme: 401.
    for auth in ["Bearer gk_wrong", "Basic eDp5", ""] {
        let mut req = s.http.post(s.url(V1)).json(&json!({"input": "x"}));
        if !auth.is_empty() {
            req = req.header("Authorization", auth);
        }
        let (status, got) = send(req).await;
        assert_eq!(status, 401, "{auth}: {got}");
    }
    // Not enough credits for every input: 402 before any work.
    let (host, hits) = image_host(image_bytes("motorcycle.jpg")).await;
    let urls: Vec<String> = (0..3).map(|i| format!("{host}/{i}.jpg")).collect();
    let three = json!({"model": model, "input": urls, "modality": "image"});
    let poor = TestServer::builder().credits(2).start().await;
    let req = poor
        .http
        .post(poor.url(V1))
        .bearer_auth(&poor.key)
        .json(&three);
    let (status, got) = send(req).await;
    assert_eq!(status, 402, "{got}");
    assert_eq!(poor.balance().await, 2);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "fetched before the 402"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works_unchanged() {
    let s = TestServer::builder().credits(20).start().await;
    let exp = expected();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/openai_embeddings.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("GLIMPSE_BASE", &s.base)
        .env("GLIMPSE_API_KEY", &s.key)
        .env("GLIMPSE_MODEL", model_id(&s))
        .env("GLIMPSE_IMAGE", image("motorcycle.jpg"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python3 is required");
    assert!(
        out.status.success(),
        "the openai client failed (CI installs it: pip install openai): {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["model"], model_id(&s).as_str());
    for i in 0..2 {
        assert_same_direction(
            &floats(&got["texts"][i]),
            &floats(&exp["text_embeds"][i]),
            "text",
        );
    }
    assert_same_direction(
        &floats(&got["float"]),
        &floats(&exp["text_embeds"][0]),
        "float",
    );
    assert_same_direction(
        &floats(&got["images"][0]),
        &floats(&exp["images"]["motorcycle.jpg"]["image_embeds"]),
        "image",
    );
    assert_eq!(got["text_usage"], 16, "two 8-token prompts");
    assert_eq!(s.balance().await, 20 - 4 * s.credits_per_call());
}

/// Every zero-shot family: a SigLIP model's vectors equal its transformers features too (texts
/// padded to the model's fixed 64 tokens, as SigLIP requires; `usage` counts the real ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siglip_embeddings_equal_the_reference_features() {
    for name in ["siglip-tiny", "siglip2-tiny"] {
        let dir = fixtures().join("models").join(name);
        let s = TestServer::builder()
            .credits(10)
            .clip_model(&dir)
            .start()
            .await;
        let path = fixtures().join(format!("expected/{name}.json"));
        let exp: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let prompts = exp["prompts"].as_array().unwrap()[..2].to_vec();
        let req = s
            .http
            .post(s.url(V1))
            .bearer_auth(&s.key)
            .json(&json!({"model": model_id(&s), "input": prompts}));
        let (status, body) = send(req).await;
        assert_eq!(status, 200, "{name}: {body}");
        for i in 0..2 {
            assert_same_direction(
                &floats(&body["data"][i]["embedding"]),
                &floats(&exp["text_embeds"][i]),
                name,
            );
        }
        let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(tokens > 2 && tokens < 128, "{name}: {body}");
        let image = exp["images"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        let req = s.http.post(s.url(V1)).bearer_auth(&s.key).json(&json!({
            "input": [data_uri(&image)],
            "modality": "image",
        }));
        let (status, body) = send(req).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_same_direction(
            &floats(&body["data"][0]["embedding"]),
            &floats(&exp["images"][&image]["image_embeds"]),
            &image,
        );
        assert_eq!(s.balance().await, 10 - 3 * s.credits_per_call());
    }
}
