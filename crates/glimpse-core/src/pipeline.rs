//! Label embeddings for zero-shot models: prompts from templates, embedded once and cached per
//! (model, prompt), so a repeated label set, a subset, a reorder or an overlapping set costs
//! text-encoder time only for its new prompts. The scoring walk itself is
//! [`crate::model::ServedModel::classify`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::ZeroShotModel;
use crate::labels::prompts_for;
use crate::scoring::ensemble;
use crate::Result;

/// How large one model's [`PromptCache`] may grow: at most `entries` prompts and at most `bytes`
/// of them by [`PromptCache::entry_bytes`]'s estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptCacheBounds {
    pub entries: usize,
    pub bytes: usize,
}

impl Default for PromptCacheBounds {
    /// 8192 prompts (64 labels × a few templates × many label sets) and 64 MiB: 8192 CLIP-L
    /// prompts (768 floats, about 3 KiB each) take about 25 MiB, so the entry bound is the one
    /// that binds for the shipped models and the byte bound only caps wider text towers.
    fn default() -> Self {
        PromptCacheBounds {
            entries: 8192,
            bytes: 64 << 20,
        }
    }
}

/// What a [`PromptCache`] holds now and how many prompts it has had the text tower embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptCacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub misses: u64,
}

struct Entry {
    embedding: Arc<Vec<f32>>,
    /// Its key in [`Lru::order`]: larger is more recently used.
    tick: u64,
}

/// A map plus a recency order (tick → key), so the least recently used entry is the first of
/// `order`; every operation is O(log n).
#[derive(Default)]
struct Lru {
    map: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    next_tick: u64,
    bytes: usize,
}

impl Lru {
    fn touch(&mut self, key: &str) -> Option<Arc<Vec<f32>>> {
        let tick = self.next_tick;
        let entry = self.map.get_mut(key)?;
        let key = self
            .order
            .remove(&entry.tick)
            .expect("every entry is in the order");
        entry.tick = tick;
        let embedding = entry.embedding.clone();
        self.order.insert(tick, key);
        self.next_tick += 1;
        Some(embedding)
    }

    fn insert(&mut self, key: String, embedding: Arc<Vec<f32>>, bounds: PromptCacheBounds) {
        let size = PromptCache::entry_bytes(&key, &embedding);
        if bounds.entries == 0 || size > bounds.bytes || self.touch(&key).is_some() {
            return;
        }
        while self.map.len() + 1 > bounds.entries || self.bytes + size > bounds.bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= PromptCache::entry_bytes(&oldest, &e.embedding);
            }
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, key.clone());
        self.map.insert(key, Entry { embedding, tick });
        self.bytes += size;
    }
}

/// Bounded cache of normalised prompt embeddings, keyed by prompt text. One per model. When
/// full it evicts the least recently used prompts (a hit counts as a use).
pub struct PromptCache {
    lru: Mutex<Lru>,
    bounds: PromptCacheBounds,
    misses: AtomicU64,
}

impl PromptCache {
    pub fn new(bounds: PromptCacheBounds) -> Self {
        PromptCache {
            lru: Mutex::new(Lru::default()),
            bounds,
            misses: AtomicU64::new(0),
        }
    }

    pub fn bounds(&self) -> PromptCacheBounds {
        self.bounds
    }

    /// The estimated size of one entry: its floats (4 bytes each) plus its key's bytes. Map and
    /// allocation overhead (some 100 bytes an entry) is left out.
    pub fn entry_bytes(prompt: &str, embedding: &[f32]) -> usize {
        std::mem::size_of_val(embedding) + prompt.len()
    }

    pub fn len(&self) -> usize {
        self.stats().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> PromptCacheStats {
        let misses = self.misses.load(Ordering::Relaxed);
        match self.lru.lock() {
            Ok(lru) => PromptCacheStats {
                entries: lru.map.len(),
                bytes: lru.bytes,
                misses,
            },
            Err(_) => PromptCacheStats {
                misses,
                ..PromptCacheStats::default()
            },
        }
    }

    /// Embeddings for `prompts`, computing only the ones not cached (in one text-encoder batch).
    pub fn embed(
        &self,
        model: &dyn ZeroShotModel,
        prompts: &[String],
    ) -> Result<Vec<Arc<Vec<f32>>>> {
        // Hits are taken (and touched) under the first lock, so an eviction between the two
        // locks cannot lose them.
        let mut found: HashMap<&str, Arc<Vec<f32>>> = HashMap::new();
        let missing: Vec<String> = {
            let mut lru = self.lru.lock().expect("prompt cache poisoned");
            let mut m: Vec<String> = Vec::new();
            for p in prompts {
                if found.contains_key(p.as_str()) {
                    continue;
                }
                match lru.touch(p) {
                    Some(e) => {
                        found.insert(p, e);
                    }
                    None => m.push(p.clone()),
                }
            }
            m.sort();
            m.dedup();
            m
        };
        let mut fresh: Vec<(String, Arc<Vec<f32>>)> = Vec::new();
        if !missing.is_empty() {
            let embs = model.embed_texts(&missing)?;
            self.misses
                .fetch_add(missing.len() as u64, Ordering::Relaxed);
            for (p, e) in missing.into_iter().zip(embs) {
                fresh.push((p, Arc::new(e)));
            }
        }
        for (p, e) in &fresh {
            found.insert(p.as_str(), e.clone());
        }
        let out = prompts
            .iter()
            .map(|p| {
                found
                    .get(p.as_str())
                    .cloned()
                    .expect("every prompt is cached or fresh")
            })
            .collect();
        drop(found);
        let mut lru = self.lru.lock().expect("prompt cache poisoned");
        for (p, e) in fresh {
            lru.insert(p, e, self.bounds);
        }
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
