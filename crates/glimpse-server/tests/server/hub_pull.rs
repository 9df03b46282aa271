//! `hub::pull` against a local stand-in for the Hugging Face Hub reached through `HF_ENDPOINT`
//! semantics (the endpoint option). The stand-in speaks the part of the Hub protocol the client
//! uses: `GET /{repo}/resolve/{rev}/{file}` with `Range`, answering `ETag`, `X-Repo-Commit` and
//! `Content-Range`. Only loopback is contacted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use glimpse_server::hub::{cached, pull, resolve_model, HubOptions};

struct StandIn {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serve `files` (name → bytes) for repo `repo` on 127.0.0.1:0.
fn stand_in(repo: &str, files: HashMap<String, Vec<u8>>) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let prefix = format!("/{repo}/resolve/main/");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let files = files.clone();
            let log = log.clone();
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut range: Option<(usize, Option<usize>)> = None;
                    let mut content_length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(r) = lower.strip_prefix("range: bytes=") {
                            let (a, b) = r.split_once('-').unwrap_or((r, ""));
                            range = a.trim().parse().ok().map(|a| (a, b.trim().parse().ok()));
                        }
                        if let Some(n) = lower.strip_prefix("content-length: ") {
                            content_length = n.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; content_length];
                    reader.read_exact(&mut body).ok();
                    log.lock().unwrap().push(path.clone());
                    let file = path.strip_prefix(&prefix).and_then(|f| files.get(f));
                    let resp = match file {
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-Error-Code: EntryNotFound\r\n\r\n".to_vec(),
                        Some(data) => {
                            let (start, last) = range.unwrap_or((0, None));
                            let start = start.min(data.len());
                            let end = last.map(|l| l + 1).unwrap_or(data.len()).min(data.len());
                            let chunk = &data[start..end];
                            let etag = format!("{:x}", data.len() * 31 + data.first().copied().unwrap_or(0) as usize);
                            let mut r = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nETag: \"{}\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n\r\n",
                                chunk.len(), start, end.saturating_sub(1), data.len(), etag
                            ).into_bytes();
                            r.extend_from_slice(chunk);
                            r
                        }
                    };
                    if out.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    StandIn { endpoint, requests }
}

fn model_files() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    files.insert(
        "config.json".to_string(),
        br#"{"model_type":"vit"}"#.to_vec(),
    );
    files.insert(
        "preprocessor_config.json".to_string(),
        br#"{"size":224}"#.to_vec(),
    );
    files.insert(
        "model.safetensors".to_string(),
        (0..5000u32).map(|i| (i % 251) as u8).collect(),
    );
    files
}

#[test]
fn pull_downloads_every_file_into_the_cache_then_works_offline() {
    let files = model_files();
    let hub = stand_in("acme/tiny-vit", files.clone());
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(hub.endpoint.clone()),
        offline: false,
        progress: false,
    };
    let folder = pull("acme/tiny-vit", &opts).expect("pull from the stand-in");
    for (name, data) in &files {
        let got = std::fs::read(folder.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, data, "{name} differs after download");
    }
    let asked = hub.requests.lock().unwrap().clone();
    assert!(
        asked.iter().any(|p| p.ends_with("/model.safetensors")),
        "{asked:?}"
    );
    // An image classifier needs no tokenizer: none of its files is asked for.
    assert!(
        !asked
            .iter()
            .any(|p| p.contains("token") || p.contains("spiece")),
        "{asked:?}"
    );

    // The cache now answers without the network.
    let offline = HubOptions {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..opts
    };
    assert_eq!(cached("acme/tiny-vit", &offline), Some(folder.clone()));
    assert_eq!(resolve_model("acme/tiny-vit", &offline).unwrap(), folder);
}

#[test]
fn missing_weights_are_named_in_the_error() {
    let mut files = model_files();
    files.remove("model.safetensors");
    let hub = stand_in("acme/no-weights", files);
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(hub.endpoint),
        offline: false,
        progress: false,
    };
    let err = pull("acme/no-weights", &opts).unwrap_err().to_string();
    assert!(err.contains("acme/no-weights"), "{err}");
    assert!(
        err.contains("model.safetensors or pytorch_model.bin"),
        "{err}"
    );
    assert!(
        err.contains("local folder") || err.contains("point GLIMPSE_"),
        "{err}"
    );
}

#[test]
fn unreachable_hub_says_which_model_and_how_to_use_a_folder() {
    // A loopback port with nothing listening: refused at once, never leaves the machine.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        offline: false,
        progress: false,
    };
    let err = resolve_model("openai/clip-vit-base-patch32", &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("openai/clip-vit-base-patch32"), "{err}");
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("GLIMPSE_CLIP_MODEL"), "{err}");
}

/// `files` with these extra names, holding their own name as bytes.
fn with_files(model_type: &str, names: &[&str]) -> HashMap<String, Vec<u8>> {
    let mut files = model_files();
    files.insert(
        "config.json".to_string(),
        format!(r#"{{"model_type":"{model_type}"}}"#).into_bytes(),
    );
    for n in names {
        files.insert(n.to_string(), format!("contents of {n}").into_bytes());
    }
    files
}

/// Pull `repo` from a stand-in serving `files`; every file must arrive intact. Returns the
/// snapshot folder (inside the returned cache) and the paths the client asked for.
fn pull_all(
    repo: &str,
    files: &HashMap<String, Vec<u8>>,
) -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let hub = stand_in(repo, files.clone());
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(hub.endpoint.clone()),
        offline: false,
        progress: false,
    };
    let folder = pull(repo, &opts).expect("pull from the stand-in");
    for (name, data) in files {
        let got = std::fs::read(folder.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, data, "{name} differs after download");
    }
    let asked = hub.requests.lock().unwrap().clone();
    (cache, folder, asked)
}

#[test]
fn siglip_v1_repository_is_pulled_with_its_sentencepiece_tokenizer() {
    // Exactly the files google/siglip-base-patch16-224 holds (no tokenizer.json).
    let files = with_files(
        "siglip",
        &[
            "special_tokens_map.json",
            "spiece.model",
            "tokenizer_config.json",
        ],
    );
    let (_cache, folder, asked) = pull_all("google/siglip-base-patch16-224", &files);
    let mut got: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "special_tokens_map.json",
            "spiece.model",
            "tokenizer_config.json"
        ]
    );
    // tokenizer.json was looked for (404, not an error).
    assert!(
        asked.iter().any(|p| p.ends_with("/tokenizer.json")),
        "{asked:?}"
    );
}

#[test]
fn siglip2_repository_is_pulled_with_its_tokenizer_json() {
    // google/siglip2-base-patch16-224: a Gemma tokenizer.json plus its settings and
    // SentencePiece model.
    let files = with_files(
        "siglip",
        &[
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
        ],
    );
    let (_cache, folder, _) = pull_all("google/siglip2-base-patch16-224", &files);
    assert!(folder.join("tokenizer.model").is_file());
    assert!(!folder.join("spiece.model").exists());
}
