//! The CLIP tokenizer from a folder's `tokenizer.json`, behaving like
//! `CLIPTokenizerFast(text, truncation=True, max_length=77)`; batches are right-padded with the
//! tokenizer's pad token (openai's CLIP: `<|endoftext|>`, 49407).

use std::path::Path;

use glimpse_core::CoreError;
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::model_err;
use crate::Error;

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Load `<dir>/tokenizer.json`; the pad token comes from `tokenizer_config.json` when it names
    /// one, else `<|endoftext|>`.
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self, Error> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(model_err(format!(
                "model folder {} has no tokenizer.json (CLIP needs it to embed label prompts)",
                dir.display()
            )));
        }
        let refused = |source| Error::Tokenizer {
            context: path.display().to_string(),
            source,
        };
        let mut inner = Tokenizer::from_file(&path).map_err(refused)?;
        // Truncation counts the added <|startoftext|>/<|endoftext|>, as transformers' does; the
        // end token survives truncation because the post-processor adds it afterwards.
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(refused)?;
        inner.with_padding(None);
        let pad_token = pad_token_name(dir)?.unwrap_or_else(|| "<|endoftext|>".to_string());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            model_err(format!(
                "{}: pad token '{pad_token}' is not in the vocabulary",
                path.display()
            ))
        })?;
        Ok(ClipTokenizer { inner, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one text, special tokens included, truncated.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| CoreError::internal(format!("tokenizing {text:?}: {e}")))
    }

    /// Token ids of several texts, right-padded with the pad id to the longest.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, CoreError> {
        let mut ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<_, _>>()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        for row in &mut ids {
            row.resize(longest, self.pad_id);
        }
        Ok(ids)
    }
}

/// `pad_token` of `tokenizer_config.json`: a string, or an added-token object with `content`.
fn pad_token_name(dir: &Path) -> Result<Option<String>, Error> {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        context: path.display().to_string(),
        source,
    })?;
    Ok(match v.get("pad_token") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    })
}
