//! Label embeddings for zero-shot models: prompts from templates, embedded once and cached per
//! (model, prompt), so a repeated label set costs no text-encoder time. The scoring walk itself is
//! [`crate::model::ServedModel::classify`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::ZeroShotModel;
use crate::labels::prompts_for;
use crate::scoring::ensemble;
use crate::Result;

/// Bounded cache of normalised prompt embeddings, keyed by prompt text. One per model.
pub struct PromptCache {
    map: Mutex<HashMap<String, Arc<Vec<f32>>>>,
    capacity: usize,
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        PromptCache {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Embeddings for `prompts`, computing only the ones not cached (in one text-encoder batch).
    pub fn embed(
        &self,
        model: &dyn ZeroShotModel,
        prompts: &[String],
    ) -> Result<Vec<Arc<Vec<f32>>>> {
        let missing: Vec<String> = {
            let map = self.map.lock().expect("prompt cache poisoned");
            let mut m: Vec<String> = prompts
                .iter()
                .filter(|p| !map.contains_key(*p))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        let mut fresh: HashMap<String, Arc<Vec<f32>>> = HashMap::new();
        if !missing.is_empty() {
            let embs = model.embed_texts(&missing)?;
            for (p, e) in missing.into_iter().zip(embs) {
                fresh.insert(p, Arc::new(e));
            }
        }
        let mut map = self.map.lock().expect("prompt cache poisoned");
        let out = prompts
            .iter()
            .map(|p| {
                fresh
                    .get(p)
                    .or_else(|| map.get(p))
                    .cloned()
                    .expect("every prompt is cached or fresh")
            })
            .collect();
        if map.len() + fresh.len() > self.capacity {
            map.clear();
        }
        map.extend(fresh);
        Ok(out)
    }
}

/// One label embedding per label: the ensemble of its prompts over `templates`.
pub fn label_embeddings(
    model: &dyn ZeroShotModel,
    cache: &PromptCache,
    labels: &[String],
    templates: &[String],
) -> Result<Vec<Vec<f32>>> {
    let prompts: Vec<String> = labels
        .iter()
        .flat_map(|l| prompts_for(l, templates))
        .collect();
    let embs = cache.embed(model, &prompts)?;
    Ok(embs
        .chunks(templates.len().max(1))
        .map(|chunk| {
            let owned: Vec<Vec<f32>> = chunk.iter().map(|e| e.as_ref().clone()).collect();
            ensemble(&owned)
        })
        .collect())
}
