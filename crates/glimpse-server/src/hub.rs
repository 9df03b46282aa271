//! Resolving a model spec — a local folder or a Hugging Face Hub id — to a folder on disk, pulling
//! from the Hub (or the `HF_ENDPOINT` stand-in) into the Hugging Face cache layout when needed.
//!
//! The cache is the one the Python tools use (`models--org--name/snapshots/<commit>/…`), so a model
//! pulled by `huggingface-cli download` is found here and the other way round.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// The files a model folder needs; the first weight file found wins.
const CONFIG_FILES: [&str; 2] = ["config.json", "preprocessor_config.json"];
/// A zero-shot model's tokenizer, in whichever form its repository has it: `tokenizer.json`
/// (CLIP, SigLIP 2's Gemma tokenizer), or SentencePiece `spiece.model` (Google's SigLIP v1
/// repositories, which have no `tokenizer.json`) / `tokenizer.model`, with the settings files
/// (`tokenizer_config.json`: lowercasing, padding side; `special_tokens_map.json`). Each is
/// fetched when the repository has it; the loader names what it needs and is missing. Image
/// classifiers (ViT, DeiT) need none of them.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.model",
];
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Where pulled models live (`GLIMPSE_MODEL_CACHE`); `None` = the Hugging Face cache
    /// (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// `HF_ENDPOINT`; `None` = https://huggingface.co.
    pub endpoint: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network, use the cache only.
    pub offline: bool,
    /// Show a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HUB_CACHE`/`HF_HOME`, overridden by `cache_dir` if given.
    pub fn from_env(cache_dir: Option<PathBuf>) -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        HubOptions {
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            offline,
            progress: false,
        }
    }

    /// The cache folder in use.
    pub fn cache_path(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        if let Ok(dir) = std::env::var("HF_HUB_CACHE") {
            return PathBuf::from(dir);
        }
        Cache::from_env().path().clone()
    }

    fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| "https://huggingface.co".to_string())
            .trim_end_matches('/')
            .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Download(String),
}

/// True when `spec` looks like a Hub id (`name` or `org/name`) rather than a path.
pub fn is_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    !spec.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The id a model answers with (`modelId`): a Hub id is itself, a folder its last path component.
pub fn model_id_for(spec: &str) -> String {
    let p = Path::new(spec);
    if p.is_dir() {
        let trimmed = spec.trim_end_matches('/');
        return Path::new(trimmed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trimmed.to_string());
    }
    spec.to_string()
}

/// A spec naming an existing folder is used as is; anything else is a Hub id, looked up in the
/// cache and pulled unless offline.
pub fn resolve_model(spec: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if !is_hub_id(spec) {
        return Err(HubError::NotFound(format!(
            "model '{spec}' is neither a local folder nor a Hugging Face Hub id (org/name)"
        )));
    }
    if let Some(dir) = cached(spec, opts) {
        return Ok(dir);
    }
    if opts.offline {
        return Err(HubError::NotFound(format!(
            "model '{spec}' is not in the cache {} and HF_HUB_OFFLINE is set; pull it with \
             `glimpse models pull {spec}` where the Hub is reachable, or point the setting at a \
             local folder holding config.json, model.safetensors, preprocessor_config.json \
             (and tokenizer.json for CLIP)",
            opts.cache_path().display()
        )));
    }
    pull(spec, opts)
}

/// The cached snapshot folder of `id`, if it holds the config files and a weight file.
pub fn cached(id: &str, opts: &HubOptions) -> Option<PathBuf> {
    let cache = Cache::new(opts.cache_path());
    let repo = cache.repo(Repo::new(id.to_string(), RepoType::Model));
    let config = repo.get("config.json")?;
    repo.get("preprocessor_config.json")?;
    WEIGHT_FILES.iter().find_map(|w| repo.get(w))?;
    config.parent().map(Path::to_path_buf)
}

/// Every complete model in the cache, as `(id, snapshot folder)`, sorted by id.
pub fn list_cached(opts: &HubOptions) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(opts.cache_path()) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("models--")?.replacen("--", "/", 1);
            cached(&id, opts).map(|dir| (id, dir))
        })
        .collect();
    out.sort();
    out
}

/// Download `id` into the cache and return its snapshot folder.
pub fn pull(id: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    let endpoint = opts.endpoint();
    let api = ApiBuilder::new()
        .with_cache_dir(opts.cache_path())
        .with_endpoint(endpoint.clone())
        .with_progress(opts.progress)
        .build()
        .map_err(|e| HubError::Download(format!("cannot set up the Hub client: {e}")))?;
    let repo = api.repo(Repo::new(id.to_string(), RepoType::Model));
    let fail = |file: &str, e: &dyn std::fmt::Display| {
        HubError::Download(format!(
            "could not get model '{id}' ({file}) from {endpoint}: {e}. Without Hub access, copy the \
             model folder (config.json, model.safetensors, preprocessor_config.json, tokenizer.json \
             for CLIP) to this machine and point GLIMPSE_CLIP_MODEL / GLIMPSE_VIT_MODEL at it \
             (`serve --clip-model / --vit-model`, `classify --model`)"
        ))
    };
    let mut folder = None;
    for file in CONFIG_FILES {
        let path = repo.get(file).map_err(|e| fail(file, &e))?;
        folder = path.parent().map(Path::to_path_buf);
    }
    for file in optional_files(folder.as_deref()) {
        // A missing optional file is not an error here; the loader names it if the model
        // needs it.
        let _ = repo.get(file);
    }
    let mut last_err = None;
    let mut got_weights = false;
    for file in WEIGHT_FILES {
        match repo.get(file) {
            Ok(_) => {
                got_weights = true;
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if !got_weights {
        let e = last_err.map(|e| e.to_string()).unwrap_or_default();
        return Err(fail("model.safetensors or pytorch_model.bin", &e));
    }
    folder.ok_or_else(|| HubError::Download(format!("model '{id}': empty download")))
}

/// The files beyond config, processor and weights that the family of the model in `folder`
/// (by its downloaded `config.json`'s `model_type`) needs: none for image classifiers, the
/// tokenizer files for the rest (zero-shot families, and a `model_type` this build does not know,
/// whose loader will say so).
fn optional_files(folder: Option<&Path>) -> &'static [&'static str] {
    let model_type = folder
        .and_then(|f| std::fs::read_to_string(f.join("config.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
    match model_type
        .as_deref()
        .and_then(glimpse_core::ModelFamily::from_model_type)
    {
        Some(f) if f.task() == glimpse_core::Task::Classify => &[],
        _ => &TOKENIZER_FILES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(is_hub_id("openai/clip-vit-base-patch32"));
        assert!(is_hub_id("gpt2"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("../x"));
        assert!(!is_hub_id(""));
    }

    #[test]
    fn model_id_of_a_folder_is_its_name() {
        let dir = std::env::temp_dir().join("glimpse-model-id-test/clip-tiny");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(model_id_for(&format!("{}/", dir.display())), "clip-tiny");
        assert_eq!(
            model_id_for("openai/clip-vit-base-patch32"),
            "openai/clip-vit-base-patch32"
        );
    }

    #[test]
    fn offline_miss_names_the_model_and_the_fix() {
        let opts = HubOptions {
            cache_dir: Some(std::env::temp_dir().join("glimpse-empty-cache")),
            endpoint: None,
            offline: true,
            progress: false,
        };
        let err = resolve_model("openai/clip-vit-base-patch32", &opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("openai/clip-vit-base-patch32"), "{msg}");
        assert!(msg.contains("local folder"), "{msg}");
    }
}
