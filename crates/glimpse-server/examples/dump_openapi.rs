//! Print the OpenAPI document (default model ids) to stdout: `cargo run -p glimpse-server --example dump_openapi`.
fn main() {
    let doc = glimpse_server::openapi::document(
        &[glimpse_server::config::DEFAULT_CLIP_MODEL.to_string()],
        &[glimpse_server::config::DEFAULT_VIT_MODEL.to_string()],
    );
    println!("{}", doc.to_pretty_json().expect("the document serialises"));
}
