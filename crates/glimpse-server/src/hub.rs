//! Resolving a model spec (a local folder or a Hugging Face Hub id) to a folder on disk, pulling
//! from the Hub (or `HF_ENDPOINT`) into the cache when needed. STUB: being written.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Where pulled models live (`GLIMPSE_MODEL_CACHE`); `None` = the Hugging Face cache.
    pub cache_dir: Option<PathBuf>,
    /// `HF_ENDPOINT`; `None` = https://huggingface.co.
    pub endpoint: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network.
    pub offline: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Download(String),
}

/// A spec naming an existing folder is used as is; anything else is a Hub id.
pub fn resolve_model(spec: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let _ = opts;
    Err(HubError::NotFound(format!(
        "model '{spec}' is not a local folder and Hub pulls are not implemented yet"
    )))
}
