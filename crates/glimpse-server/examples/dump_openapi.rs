//! Print the OpenAPI document (default model ids) to stdout: `cargo run -p glimpse-server --example dump_openapi`.
fn main() {
    let doc = glimpse_server::openapi::document(
        &["openai/clip-vit-base-patch32".to_string()],
        &["google/vit-base-patch16-224".to_string()],
    );
    println!("{}", doc.to_pretty_json().expect("the document serialises"));
}
