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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PixelBatch;
    use crate::model::ServedModel;
    use crate::preprocess::{PreprocessConfig, ResizeTarget};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake model whose text embedding is a one-hot by the prompt's length, counting encoder calls.
    struct Fake {
        cfg: PreprocessConfig,
        text_calls: AtomicUsize,
        texts_embedded: AtomicUsize,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                cfg: PreprocessConfig {
                    do_resize: true,
                    size: ResizeTarget::Exact(2, 2),
                    resample: 3,
                    do_center_crop: false,
                    crop_size: (2, 2),
                    do_rescale: true,
                    rescale_factor: 1.0 / 255.0,
                    do_normalize: false,
                    image_mean: [0.0; 3],
                    image_std: [1.0; 3],
                },
                text_calls: AtomicUsize::new(0),
                texts_embedded: AtomicUsize::new(0),
            }
        }
    }

    impl ZeroShotModel for Fake {
        fn preprocess_config(&self) -> &PreprocessConfig {
            &self.cfg
        }
        fn embed_images(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
            Ok((0..pixels.batch).map(|_| vec![1.0, 0.0]).collect())
        }
        fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.text_calls.fetch_add(1, Ordering::SeqCst);
            self.texts_embedded.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts
                .iter()
                .map(|t| {
                    if t.contains("car") {
                        vec![1.0, 0.0]
                    } else {
                        vec![0.0, 1.0]
                    }
                })
                .collect())
        }
        fn logit_scale(&self) -> f32 {
            100.0
        }
    }

    #[test]
    fn repeated_label_set_costs_no_text_encoder_time() {
        let fake = Arc::new(Fake::new());
        let model = ServedModel::zero_shot("m", fake.clone());
        let labels: Vec<String> = vec!["car".into(), "person".into()];
        let templates = vec!["a photo of a {label}.".to_string()];
        let px = PixelBatch {
            data: vec![0.0; 12],
            batch: 1,
            height: 2,
            width: 2,
        };
        let r = model.classify_all(&px, &labels, &templates).unwrap();
        assert_eq!(r[0].result, "car");
        assert_eq!(fake.text_calls.load(Ordering::SeqCst), 1);
        let r2 = model.classify_all(&px, &labels, &templates).unwrap();
        assert_eq!(r, r2);
        assert_eq!(
            fake.text_calls.load(Ordering::SeqCst),
            1,
            "second call hit the encoder"
        );
        // A new label only embeds the new prompt.
        let more: Vec<String> = vec!["car".into(), "truck".into()];
        model.classify_all(&px, &more, &templates).unwrap();
        assert_eq!(fake.texts_embedded.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn batch_gives_one_answer_per_image() {
        let model = ServedModel::zero_shot("m", Arc::new(Fake::new()));
        let px = PixelBatch {
            data: vec![0.0; 36],
            batch: 3,
            height: 2,
            width: 2,
        };
        let labels: Vec<String> = vec!["car".into(), "dog".into()];
        let r = model
            .classify_all(&px, &labels, &["{label}".to_string()])
            .unwrap();
        assert_eq!(r.len(), 3);
        let sum: f32 = r[0].predictions.iter().map(|p| p.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
