//! `/openapi.json` and the Swagger UI at `/docs`, served from files vendored into the binary
//! (`assets/swagger`, see its README), so the docs work with no internet access.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use glimpse_core::Task;

use crate::state::AppState;

const CSS: &[u8] = include_bytes!("../../assets/swagger/swagger-ui.css");
const BUNDLE: &[u8] = include_bytes!("../../assets/swagger/swagger-ui-bundle.js");
const PRESET: &[u8] = include_bytes!("../../assets/swagger/swagger-ui-standalone-preset.js");
const LICENSE: &[u8] = include_bytes!("../../assets/swagger/LICENSE");

/// `validatorUrl: null` keeps Swagger UI from calling the public validator service.
const INDEX: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Glimpse API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"##;

const INIT: &str = r##"window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
};
"##;

pub async fn openapi(State(state): State<AppState>) -> Response {
    let clip = state.models.ids(Task::ZeroShot);
    let vit = state.models.ids(Task::Classify);
    Json(super::openapi::document(&clip, &vit)).into_response()
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX.as_bytes())
}
pub async fn init_js() -> Response {
    asset("text/javascript; charset=utf-8", INIT.as_bytes())
}
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}
pub async fn bundle() -> Response {
    asset("text/javascript; charset=utf-8", BUNDLE)
}
pub async fn preset() -> Response {
    asset("text/javascript; charset=utf-8", PRESET)
}
pub async fn license() -> Response {
    asset("text/plain; charset=utf-8", LICENSE)
}
