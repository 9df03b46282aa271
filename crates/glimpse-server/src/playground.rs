//! `GET /`: the playground, a single page (plain HTML, CSS and JS compiled into the binary, no
//! CDN) to paste a key, pick an image and see the answer, its scores and the credits left.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../assets/playground/index.html");
const JS: &str = include_str!("../assets/playground/playground.js");
const CSS: &str = include_str!("../assets/playground/playground.css");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}
