//! `/openapi.json` lists every route with its parameters, bodies and error answers, and live
//! answers fit its schemas; `/docs` is a Swagger UI served entirely from the binary.

use std::collections::BTreeSet;

use crate::support::*;
use serde_json::Value;

const TOKEN: &str = "admin-token-for-tests-0123456789";

/// Every route of the API: (method, path as documented).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/image-classification/clip"),
    ("post", "/api/image-classification/clip"),
    ("get", "/api/image-classification/vit"),
    ("post", "/api/image-classification/vit"),
    ("post", "/api/image-classification/clip/batch"),
    ("post", "/api/image-classification/vit/batch"),
    ("post", "/v1/embeddings"),
    ("post", "/api/embeddings"),
    ("get", "/api/account"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys"),
    ("post", "/admin/keys/{id}/topup"),
    ("post", "/admin/keys/{id}/revoke"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/classifiers"),
    ("post", "/api/classifiers"),
    ("get", "/api/classifiers/{name}"),
    ("put", "/api/classifiers/{name}"),
    ("delete", "/api/classifiers/{name}"),
];

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => v,
    }
}

/// Check `value` against a (small subset of) JSON Schema: types, required, known properties.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
        assert!(
            one_of
                .iter()
                .any(|s| { std::panic::catch_unwind(|| check(doc, s, value, at)).is_ok() }),
            "{at}: {value} fits no oneOf branch"
        );
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
    assert!(ok, "{at}: {value} is not {types:?}");
    if let Some(obj) = value.as_object() {
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            assert!(
                obj.contains_key(req),
                "{at}: missing required '{req}' in {value}"
            );
        }
        for (k, v) in obj {
            let p = props
                .get(k)
                .unwrap_or_else(|| panic!("{at}: '{k}' is not in the schema"));
            check(doc, p, v, &format!("{at}.{k}"));
        }
    }
    if let Some(items) = value.as_array() {
        for (i, v) in items.iter().enumerate() {
            check(doc, &schema["items"], v, &format!("{at}[{i}]"));
        }
    }
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let r = &doc["paths"][path][method]["responses"][status];
    assert!(!r.is_null(), "{method} {path} does not document {status}");
    &r["content"]["application/json"]["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_matches_live_answers() {
    let s = TestServer::builder()
        .credits(10)
        .admin_token(TOKEN)
        .start()
        .await;
    let doc: Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    // Every documented route exists on the live server (no 404/405).
    for (method, path) in ROUTES {
        let url = s.url(
            &path
                .replace("{id}", "no-such-key")
                .replace("{name}", "no-such"),
        );
        let req = match *method {
            "get" => s.http.get(url),
            "put" => s.http.put(url),
            "delete" => s.http.delete(url),
            _ => s.http.post(url),
        };
        let res = req
            .bearer_auth(TOKEN)
            .header("X-API-Key", &s.key)
            .send()
            .await
            .unwrap();
        let st = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert!(
            st != 405 && !(st == 404 && body["message"] == "no such route"),
            "{method} {path}: {st} {body}"
        );
    }

    // Classification operations: key security, every error status, the model enum.
    for (method, path) in &ROUTES[..4] {
        let op = &doc["paths"][path][method];
        assert_eq!(
            op["security"][0]["api_key"],
            serde_json::json!([]),
            "{path}"
        );
        for status in [
            "200", "400", "401", "402", "409", "413", "422", "429", "500", "503",
        ] {
            response_schema(&doc, path, method, status);
        }
        let params = op["parameters"].as_array().unwrap();
        let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(
            names.contains(&"url") && names.contains(&"Idempotency-Key"),
            "{names:?}"
        );
        // The decision controls, with their ranges.
        for field in ["minConfidence", "fallback", "topK", "multiLabel"] {
            assert!(names.contains(&field), "{path} lacks {field}: {names:?}");
        }
        let range = |name: &str| {
            let p = params.iter().find(|p| p["name"] == name).unwrap();
            (
                p["schema"]["minimum"].as_f64(),
                p["schema"]["maximum"].as_f64(),
            )
        };
        assert_eq!(range("minConfidence"), (Some(0.0), Some(1.0)), "{path}");
        assert_eq!(range("topK"), (Some(1.0), Some(64.0)), "{path}");
        if *method == "post" {
            let form = &op["requestBody"]["content"]["multipart/form-data"]["schema"];
            let form = resolve(&doc, form);
            for field in ["minConfidence", "fallback", "topK", "multiLabel"] {
                assert!(
                    form["properties"].get(field).is_some(),
                    "{path} form lacks {field}: {form}"
                );
            }
        }
        let model = if path.ends_with("clip") {
            "clipModel"
        } else {
            "vitModel"
        };
        let p = params.iter().find(|p| p["name"] == model).unwrap();
        let want = if model == "clipModel" {
            "clip-tiny"
        } else {
            "vit-tiny"
        };
        assert_eq!(p["schema"]["enum"], serde_json::json!([want]), "{path}");
    }
    let form = &doc["paths"]["/api/image-classification/clip"]["post"]["requestBody"]["content"]
        ["multipart/form-data"]["schema"];
    let form = resolve(&doc, form);
    assert_eq!(form["properties"]["image"]["format"], "binary", "{form}");
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(
        (
            scheme["type"].as_str(),
            scheme["in"].as_str(),
            scheme["name"].as_str()
        ),
        (Some("apiKey"), Some("header"), Some("X-API-Key"))
    );

    // Live answers fit their documented schemas.
    let clip = "/api/image-classification/clip";
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(image_bytes("coffee.jpg")).file_name("c.jpg"),
    );
    let ok: Value = s
        .http
        .post(s.url(clip))
        .header("X-API-Key", &s.key)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(
        &doc,
        response_schema(&doc, clip, "post", "200"),
        &ok,
        "clip 200",
    );
    // An abstaining answer fits too (`abstained`).
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image_bytes("coffee.jpg")).file_name("c.jpg"),
        )
        .text("minConfidence", "1")
        .text("topK", "1");
    let abstained: Value = s
        .http
        .post(s.url(clip))
        .header("X-API-Key", &s.key)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(abstained["abstained"], true, "{abstained}");
    check(
        &doc,
        response_schema(&doc, clip, "post", "200"),
        &abstained,
        "clip abstained 200",
    );
    let vit = "/api/image-classification/vit";
    let (host, _) = image_host(image_bytes("coffee.jpg")).await;
    let ok: Value = s
        .http
        .get(s.url(vit))
        .query(&[("url", format!("{host}/c.jpg"))])
        .header("X-API-Key", &s.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(
        &doc,
        response_schema(&doc, vit, "get", "200"),
        &ok,
        "vit 200",
    );
    // A batch with an answered and a failed item, and both embeddings encodings.
    let batch = "/api/image-classification/clip/batch";
    let uri = |name: &str| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(image_bytes(name));
        format!("data:image/jpeg;base64,{b64}")
    };
    let many: Value = s
        .http
        .post(s.url(batch))
        .header("X-API-Key", &s.key)
        .json(&serde_json::json!({"urls": [uri("coffee.jpg"), "data:image/png;base64,AAAA"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(many["results"][1]["error"].is_object(), "{many}");
    check(
        &doc,
        response_schema(&doc, batch, "post", "200"),
        &many,
        "batch 200",
    );
    for format in ["float", "base64"] {
        let emb: Value = s
            .http
            .post(s.url("/v1/embeddings"))
            .bearer_auth(&s.key)
            .json(&serde_json::json!({"input": ["a cat"], "encoding_format": format}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        check(
            &doc,
            response_schema(&doc, "/v1/embeddings", "post", "200"),
            &emb,
            format,
        );
    }
    let err: Value = s
        .http
        .get(s.url(clip))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(
        &doc,
        response_schema(&doc, clip, "get", "401"),
        &err,
        "clip 401",
    );
    let acct: Value = s
        .http
        .get(s.url("/api/account"))
        .header("X-API-Key", &s.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(
        &doc,
        response_schema(&doc, "/api/account", "get", "200"),
        &acct,
        "account",
    );
    let keys: Value = s
        .http
        .get(s.url("/admin/keys"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(
        &doc,
        response_schema(&doc, "/admin/keys", "get", "200"),
        &keys,
        "keys",
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_is_served_from_the_binary() {
    let s = TestServer::builder().credits(1).start().await;
    let res = s.http.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    // Every script and stylesheet is a local path that the server answers.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap().to_string());
        }
    }
    assert!(refs.len() >= 4, "{refs:?}");
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/swagger");
    for r in &refs {
        assert!(r.starts_with('/'), "not a local path: {r}");
        let res = s.http.get(s.url(r)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{r}");
        let bytes = res.bytes().await.unwrap();
        let name = r.rsplit('/').next().unwrap();
        let vendored = assets.join(name);
        if vendored.exists() {
            assert_eq!(bytes.as_ref(), std::fs::read(&vendored).unwrap(), "{r}");
        } else {
            // The small init script: points at our own document, no validator service.
            let js = String::from_utf8(bytes.to_vec()).unwrap();
            assert!(
                js.contains("\"/openapi.json\"") && js.contains("validatorUrl: null"),
                "{js}"
            );
            assert!(!js.contains("http"), "{js}");
        }
    }
    let index = s.get_text("/").await;
    assert!(index.contains("href=\"/docs\""), "{index}");
    s.stop().await.unwrap();
}

use std::path::PathBuf;

/// What Swagger UI's "Try it out" sends with its own defaults: every form text field pre-filled
/// from its `example`, else its enum's first value, else Swagger's sample for its type (the
/// literal "string", 0, true). With an image chosen, Execute answers 200 on both routes. Each error
/// status documents its own code, and the API key is the first scheme in the Authorize dialog
/// (schemes are listed alphabetically). Before: clipModel was sent as "string" (400 unknown
/// clipModel), every error example said VALIDATION_ERROR, the admin token came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_try_it_out_with_its_defaults_succeeds() {
    let s = TestServer::builder().credits(10).start().await;
    let doc: Value = s
        .http
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/api/image-classification/clip",
        "/api/image-classification/vit",
    ] {
        let op = &doc["paths"][path]["post"];
        let form = resolve(
            &doc,
            &op["requestBody"]["content"]["multipart/form-data"]["schema"],
        );
        let mut mp = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(image_bytes("astronaut.png")).file_name("a.png"),
        );
        let mut sent = Vec::new();
        for (name, prop) in form["properties"].as_object().unwrap() {
            let prop = resolve(&doc, prop);
            if prop["format"] == "binary" {
                continue;
            }
            // Swagger's own sample where there is no example or enum: 0 for numbers, true for
            // booleans, "string" for strings.
            let sample = match prop.get("example").or_else(|| prop["enum"].get(0)) {
                Some(Value::String(v)) => v.clone(),
                Some(v) => v.to_string(),
                None => match prop["type"].as_str() {
                    Some("integer" | "number") => "0".to_string(),
                    Some("boolean") => "true".to_string(),
                    _ => "string".to_string(),
                },
            };
            sent.push(format!("{name}={sample}"));
            mp = mp.text(name.clone(), sample);
        }
        let res = s
            .http
            .post(format!("{}{path}", s.base))
            .header("X-API-Key", &s.key)
            .multipart(mp)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "{path} with {sent:?}: {body}");
        for (status, code) in [
            ("400", "VALIDATION_ERROR"),
            ("401", "UNAUTHORIZED"),
            ("402", "INSUFFICIENT_CREDITS"),
            ("409", "IDEMPOTENCY_IN_PROGRESS"),
            ("413", "PAYLOAD_TOO_LARGE"),
            ("422", "IDEMPOTENCY_MISMATCH"),
            ("429", "RATE_LIMITED"),
            ("500", "INTERNAL_ERROR"),
            ("503", "OVERLOADED"),
        ] {
            let ex = &op["responses"][status]["content"]["application/json"]["example"];
            assert_eq!(ex["code"], code, "{path} {status}: {ex}");
        }
    }
    let schemes: Vec<&String> = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        schemes.first().map(|s| s.as_str()),
        Some("api_key"),
        "{schemes:?}"
    );
    s.stop().await.unwrap();
}
