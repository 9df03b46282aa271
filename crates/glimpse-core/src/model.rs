//! What a served model is, and the one scoring path every caller uses (the server's batcher, the
//! server's warm-up, `glimpse classify` and its bulk mode).
//!
//! A model belongs to a [`ModelFamily`] (its architecture and weight format, read from
//! `config.json`) and serves one [`Task`] (which endpoint answers with it). Adding a family is a
//! variant here, its loader in `glimpse-candle`, and nothing in the server: routes, allow-lists,
//! batchers and metrics are all by task and model id.

use std::sync::Arc;

use crate::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use crate::categories::is_imagenet_1k;
use crate::pipeline::{label_embeddings, PromptCache, PromptCacheBounds, PromptCacheStats};
use crate::preprocess::PreprocessConfig;
use crate::response::ClassificationResponse;
use crate::scoring::{
    clip_predictions, own_label_predictions, top_k_imagenet, vit_category_predictions,
    zero_shot_scores,
};
use crate::{CoreError, Result};

/// What a model answers, and so which endpoint serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Scores an image against labels given with the call (`/api/image-classification/clip`).
    ZeroShot,
    /// Scores an image against the model's own classes (`/api/image-classification/vit`).
    Classify,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::ZeroShot, Task::Classify];

    /// The route's last segment, the answer's `model` field and the metrics' `endpoint` label.
    pub fn endpoint(self) -> &'static str {
        match self {
            Task::ZeroShot => "clip",
            Task::Classify => "vit",
        }
    }

    /// The request parameter that names a model of this task.
    pub fn model_param(self) -> &'static str {
        match self {
            Task::ZeroShot => "clipModel",
            Task::Classify => "vitModel",
        }
    }

    /// The environment variable of this task's default model.
    pub fn model_var(self) -> &'static str {
        match self {
            Task::ZeroShot => "GLIMPSE_CLIP_MODEL",
            Task::Classify => "GLIMPSE_VIT_MODEL",
        }
    }

    /// The environment variable of this task's further models (the allow-list beyond the default).
    pub fn extra_models_var(self) -> &'static str {
        match self {
            Task::ZeroShot => "GLIMPSE_CLIP_MODELS",
            Task::Classify => "GLIMPSE_VIT_MODELS",
        }
    }

    /// How people name the endpoint in prose.
    pub fn title(self) -> &'static str {
        match self {
            Task::ZeroShot => "CLIP",
            Task::Classify => "ViT",
        }
    }

    /// The labels a call of this task scores against: zero-shot parses `raw` (none: the default
    /// labels); a classifier ignores it (the seed: `labels` is ignored on the ViT endpoint, so a
    /// bad one there is no error either) and answers an empty list.
    pub fn labels(self, raw: Option<&str>) -> Result<Vec<String>> {
        match self {
            Task::ZeroShot => crate::labels::parse_labels(raw),
            Task::Classify => Ok(Vec::new()),
        }
    }

    /// From [`Task::endpoint`]'s name (`clip`, `vit`).
    pub fn from_endpoint(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.endpoint() == name)
    }
}

/// A model architecture Glimpse can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// OpenAI CLIP (`CLIPModel`).
    Clip,
    /// ViT image classifiers (`ViTForImageClassification`).
    Vit,
    /// DeiT image classifiers (`DeiTForImageClassification`, and the distilled
    /// `DeiTForImageClassificationWithTeacher`: class and distillation tokens, two heads averaged).
    Deit,
    /// Google's SigLIP and the fixed-resolution SigLIP 2 checkpoints (`SiglipModel`): zero-shot
    /// with independent sigmoid scores.
    Siglip,
}

impl ModelFamily {
    pub const ALL: [ModelFamily; 4] = [
        ModelFamily::Clip,
        ModelFamily::Vit,
        ModelFamily::Deit,
        ModelFamily::Siglip,
    ];

    pub fn task(self) -> Task {
        match self {
            ModelFamily::Clip => Task::ZeroShot,
            ModelFamily::Vit | ModelFamily::Deit => Task::Classify,
            ModelFamily::Siglip => Task::ZeroShot,
        }
    }

    /// `config.json`'s `model_type` of this family.
    pub fn model_type(self) -> &'static str {
        match self {
            ModelFamily::Clip => "clip",
            ModelFamily::Vit => "vit",
            ModelFamily::Deit => "deit",
            ModelFamily::Siglip => "siglip",
        }
    }

    /// The `architectures` entry of this family's checkpoints in `config.json`.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelFamily::Clip => "CLIPModel",
            ModelFamily::Vit => "ViTForImageClassification",
            ModelFamily::Deit => "DeiTForImageClassificationWithTeacher",
            ModelFamily::Siglip => "SiglipModel",
        }
    }

    /// Whether the family's scores are independent per label (sigmoid, as SigLIP's), so that a
    /// threshold over them decides each label on its own (`multiLabel`). CLIP's and ViT's are a
    /// softmax: the labels compete for one unit of probability.
    pub fn independent_scores(self) -> bool {
        match self {
            ModelFamily::Clip | ModelFamily::Vit | ModelFamily::Deit => false,
            ModelFamily::Siglip => true,
        }
    }

    /// Every family's `model_type`, for messages: `'clip' and 'vit'`.
    pub fn supported() -> String {
        let names: Vec<String> = ModelFamily::ALL
            .iter()
            .map(|f| format!("'{}'", f.model_type()))
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }

    /// The family whose `model_type` is `name`.
    pub fn from_model_type(name: &str) -> Option<ModelFamily> {
        ModelFamily::ALL
            .into_iter()
            .find(|f| f.model_type() == name)
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// A loaded network, by the interface its task needs.
#[derive(Clone)]
pub enum Network {
    ZeroShot(Arc<dyn ZeroShotModel>),
    Classifier(Arc<dyn ImageClassifier>),
}

/// What one image of a batch asks of its model (see [`ServedModel::answer`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Scores: for zero-shot models against these label names (prompted through the model's
    /// templates and prompt cache); classifiers ignore the labels.
    Classify(Vec<String>),
    /// The image's L2-normalised embedding (zero-shot models only).
    Embed,
}

static CLASSIFY_NO_LABELS: Ask = Ask::Classify(Vec::new());

/// What one image of a batch gets back: the [`Ask`]'s answer.
#[derive(Debug, Clone)]
pub enum Answer {
    Classified(ClassificationResponse),
    Embedding(Vec<f32>),
}

impl Answer {
    /// The scores of an [`Ask::Classify`].
    pub fn into_classified(self) -> Result<ClassificationResponse> {
        match self {
            Answer::Classified(r) => Ok(r),
            Answer::Embedding(_) => Err(CoreError::internal("expected scores, got an embedding")),
        }
    }

    /// The vector of an [`Ask::Embed`].
    pub fn into_embedding(self) -> Result<Vec<f32>> {
        match self {
            Answer::Embedding(v) => Ok(v),
            Answer::Classified(_) => Err(CoreError::internal("expected an embedding, got scores")),
        }
    }
}

/// A model as it is served: its id (what requests name it by), family, network and, for zero-shot
/// models, its cache of prompt embeddings.
pub struct ServedModel {
    id: String,
    family: ModelFamily,
    network: Network,
    prompts: PromptCache,
    /// What loading it added to the process's resident memory, where measured.
    resident_bytes: Option<u64>,
    /// A classifier whose labels are not ImageNet-1k: answered with its own labels instead of
    /// the ImageNet → category table (see [`ServedModel::answers_own_labels`]).
    own_labels: bool,
}

impl ServedModel {
    /// `network` must be of the kind `family`'s task needs.
    pub fn new(id: impl Into<String>, family: ModelFamily, network: Network) -> Result<Self> {
        let fits = matches!(
            (family.task(), &network),
            (Task::ZeroShot, Network::ZeroShot(_)) | (Task::Classify, Network::Classifier(_))
        );
        if !fits {
            return Err(CoreError::internal(format!(
                "a {family} model must be a {} network",
                family.task().title()
            )));
        }
        let own_labels = match &network {
            Network::Classifier(m) => !is_imagenet_1k(m.id2label()),
            Network::ZeroShot(_) => false,
        };
        Ok(ServedModel {
            id: id.into(),
            family,
            network,
            prompts: PromptCache::new(PromptCacheBounds::default()),
            resident_bytes: None,
            own_labels,
        })
    }

    /// A zero-shot model: of the CLIP family, or SigLIP's when its scores are sigmoids.
    pub fn zero_shot(id: impl Into<String>, model: Arc<dyn ZeroShotModel>) -> Self {
        let family = match model.scoring() {
            crate::backend::Scoring::Softmax => ModelFamily::Clip,
            crate::backend::Scoring::Sigmoid { .. } => ModelFamily::Siglip,
        };
        Self::new(id, family, Network::ZeroShot(model))
            .expect("a zero-shot network fits a zero-shot family")
    }

    /// A ViT-family classifier.
    pub fn classifier(id: impl Into<String>, model: Arc<dyn ImageClassifier>) -> Self {
        Self::new(id, ModelFamily::Vit, Network::Classifier(model))
            .expect("a classifier network fits the ViT family")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn family(&self) -> ModelFamily {
        self.family
    }

    pub fn task(&self) -> Task {
        self.family.task()
    }

    /// True for a classifier whose `id2label` is not the ImageNet-1k set
    /// ([`is_imagenet_1k`]), e.g. a fine-tune: its answers' `predictions` are its own labels
    /// (`result` the top one) and carry no `imagenet` block. False for ImageNet-1k classifiers
    /// (answered in the six categories) and zero-shot models.
    pub fn answers_own_labels(&self) -> bool {
        self.own_labels
    }

    /// See [`ModelFamily::independent_scores`].
    pub fn independent_scores(&self) -> bool {
        self.family.independent_scores()
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Prompt embeddings cached so far (zero-shot models; 0 for classifiers).
    pub fn cached_prompts(&self) -> usize {
        self.prompts.len()
    }

    /// The same model with an empty prompt cache bounded by `bounds` (instead of
    /// [`PromptCacheBounds::default`]).
    pub fn with_prompt_cache(mut self, bounds: PromptCacheBounds) -> Self {
        self.prompts = PromptCache::new(bounds);
        self
    }

    /// The same model noting what loading it added to the process's resident memory.
    pub fn with_resident_bytes(mut self, bytes: u64) -> Self {
        self.resident_bytes = Some(bytes);
        self
    }

    /// What loading it added to the process's resident memory (`None` where not measured).
    pub fn resident_bytes(&self) -> Option<u64> {
        self.resident_bytes
    }

    /// What the prompt cache holds now (entries, estimated bytes) and how many prompts the text
    /// tower has embedded for it. All zero for classifiers.
    pub fn prompt_cache_stats(&self) -> PromptCacheStats {
        self.prompts.stats()
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        match &self.network {
            Network::ZeroShot(m) => m.preprocess_config(),
            Network::Classifier(m) => m.preprocess_config(),
        }
    }

    /// Answers for a batch of preprocessed images, in order. `labels[i]` is image `i`'s label set
    /// (zero-shot models; classifiers ignore it, and it may be empty for them). A failure of the
    /// forward pass fails the whole batch (`Err`); a label set that cannot be embedded fails only
    /// its own image.
    pub fn classify(
        &self,
        pixels: &PixelBatch,
        labels: &[&[String]],
        templates: &[String],
    ) -> Result<Vec<Result<ClassificationResponse>>> {
        let asks: Vec<Ask> = labels.iter().map(|l| Ask::Classify(l.to_vec())).collect();
        let asks: Vec<&Ask> = if labels.is_empty() && self.task() == Task::Classify {
            // Classifiers may be given no label sets at all.
            vec![&CLASSIFY_NO_LABELS; pixels.batch]
        } else {
            asks.iter().collect()
        };
        Ok(self
            .answer(pixels, &asks, templates)?
            .into_iter()
            .map(|a| a.and_then(Answer::into_classified))
            .collect())
    }

    /// The one forward pass for a batch of preprocessed images: image `i` gets `asks[i]` answered
    /// (scores or its embedding). The image tower runs once for the whole batch whatever the
    /// asks are. A failure of the pass fails the whole batch (`Err`); an ask that cannot be
    /// answered (a label set that cannot be embedded, an embedding asked of a classifier) fails
    /// only its own image.
    pub fn answer(
        &self,
        pixels: &PixelBatch,
        asks: &[&Ask],
        templates: &[String],
    ) -> Result<Vec<Result<Answer>>> {
        if asks.len() != pixels.batch {
            return Err(CoreError::internal(format!(
                "{} asks for {} images",
                asks.len(),
                pixels.batch
            )));
        }
        let endpoint = self.task().endpoint();
        let out: Vec<Result<Answer>> = match &self.network {
            Network::ZeroShot(model) => {
                let images = model.embed_images(pixels)?;
                let scale = model.logit_scale();
                images
                    .into_iter()
                    .zip(asks)
                    .map(|(img, ask)| match ask {
                        Ask::Classify(labels) => {
                            let text =
                                label_embeddings(model.as_ref(), &self.prompts, labels, templates)?;
                            let probs = zero_shot_scores(&img, &text, scale, model.scoring());
                            Ok(Answer::Classified(ClassificationResponse::new(
                                endpoint,
                                &self.id,
                                clip_predictions(labels, &probs),
                            )))
                        }
                        Ask::Embed => Ok(Answer::Embedding(img)),
                    })
                    .collect()
            }
            Network::Classifier(model) => {
                let probs = model.classify(pixels)?;
                probs
                    .iter()
                    .zip(asks)
                    .map(|(p, ask)| match ask {
                        Ask::Classify(_) if self.own_labels => {
                            Ok(Answer::Classified(ClassificationResponse::new(
                                endpoint,
                                &self.id,
                                own_label_predictions(p, model.id2label()),
                            )))
                        }
                        Ask::Classify(_) => {
                            let mut r = ClassificationResponse::new(
                                endpoint,
                                &self.id,
                                vit_category_predictions(p),
                            );
                            r.imagenet = Some(top_k_imagenet(p, model.id2label(), 5));
                            Ok(Answer::Classified(r))
                        }
                        Ask::Embed => Err(self.no_embeddings()),
                    })
                    .collect()
            }
        };
        if out.len() != pixels.batch {
            return Err(CoreError::internal(format!(
                "the model answered {} of {} images",
                out.len(),
                pixels.batch
            )));
        }
        Ok(out)
    }

    /// L2-normalised image embeddings in the model's joint image-text space, one per image
    /// (zero-shot models; a classifier has no such space and answers a validation error).
    pub fn embed_images(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
        match &self.network {
            Network::ZeroShot(model) => model.embed_images(pixels),
            Network::Classifier(_) => Err(self.no_embeddings()),
        }
    }

    /// L2-normalised text embeddings of `texts` as written (no prompt template, no cache), in
    /// the same space as [`ServedModel::embed_images`].
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        match &self.network {
            Network::ZeroShot(model) => model.embed_texts(texts),
            Network::Classifier(_) => Err(self.no_embeddings()),
        }
    }

    /// Tokens the text tower reads of each text (see [`ZeroShotModel::count_tokens`]).
    pub fn count_tokens(&self, texts: &[String]) -> Result<Vec<usize>> {
        match &self.network {
            Network::ZeroShot(model) => model.count_tokens(texts),
            Network::Classifier(_) => Err(self.no_embeddings()),
        }
    }

    fn no_embeddings(&self) -> CoreError {
        CoreError::Validation(format!(
            "model '{}' is an image classifier ({}): it has no image-text embedding space; \
             use a zero-shot model",
            self.id, self.family
        ))
    }

    /// [`ServedModel::classify`] with one label set for every image, failing on the first error.
    pub fn classify_all(
        &self,
        pixels: &PixelBatch,
        labels: &[String],
        templates: &[String],
    ) -> Result<Vec<ClassificationResponse>> {
        let sets = vec![labels; pixels.batch];
        self.classify(pixels, &sets, templates)?
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_names_its_task_and_model_type() {
        for f in ModelFamily::ALL {
            assert_eq!(ModelFamily::from_model_type(f.model_type()), Some(f));
        }
        for t in Task::ALL {
            assert_eq!(Task::from_endpoint(t.endpoint()), Some(t));
        }
        assert_eq!(ModelFamily::Clip.task(), Task::ZeroShot);
        assert_eq!(ModelFamily::Vit.task(), Task::Classify);
        assert_eq!(ModelFamily::from_model_type("bert"), None);
        assert_eq!(ModelFamily::Deit.task(), Task::Classify);
        assert_eq!(
            ModelFamily::supported(),
            "'clip', 'vit', 'deit' and 'siglip'"
        );
        assert_eq!(ModelFamily::Siglip.task(), Task::ZeroShot);
        assert!(ModelFamily::Siglip.independent_scores());
        // CLIP, ViT and DeiT score with a softmax: no multiLabel.
        assert!(!ModelFamily::Clip.independent_scores());
        assert!(!ModelFamily::Vit.independent_scores());
    }
}

/// The scoring path with a fake network: answers and the prompt cache.
#[cfg(test)]
mod scoring_tests {
    use super::*;
    use crate::backend::PixelBatch;
    use crate::preprocess::PreprocessConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A fake model whose text embedding is a one-hot by the prompt's length, counting encoder calls.
    struct Fake {
        cfg: PreprocessConfig,
        text_calls: AtomicUsize,
        texts_embedded: AtomicUsize,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                cfg: PreprocessConfig::plain(2),
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

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn one_pixel() -> PixelBatch {
        PixelBatch {
            data: vec![0.0; 12],
            batch: 1,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn subsets_and_reorders_embed_nothing_overlaps_only_new_prompts() {
        let fake = Arc::new(Fake::new());
        let model = ServedModel::zero_shot("m", fake.clone());
        let templates = vec!["a {label}.".to_string(), "the {label}".to_string()];
        let px = one_pixel();
        model
            .classify_all(&px, &labels(&["car", "dog", "cat"]), &templates)
            .unwrap();
        assert_eq!(fake.text_calls.load(Ordering::SeqCst), 1);
        assert_eq!(fake.texts_embedded.load(Ordering::SeqCst), 6);
        model
            .classify_all(&px, &labels(&["cat", "car"]), &templates)
            .unwrap();
        model
            .classify_all(&px, &labels(&["dog", "cat", "car"]), &templates)
            .unwrap();
        assert_eq!(
            fake.text_calls.load(Ordering::SeqCst),
            1,
            "subset or reorder embedded"
        );
        model
            .classify_all(&px, &labels(&["cat", "bus", "car"]), &templates)
            .unwrap();
        assert_eq!(fake.text_calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            fake.texts_embedded.load(Ordering::SeqCst),
            8,
            "only bus's two prompts"
        );
        let stats = model.prompt_cache_stats();
        assert_eq!((stats.entries, stats.misses), (8, 8));
    }

    /// Embeds `names` one call each through `cache`, so each is its own use.
    fn embed_each(cache: &PromptCache, fake: &Fake, names: &[&str]) {
        for n in names {
            cache.embed(fake, &[n.to_string()]).unwrap();
        }
    }

    #[test]
    fn byte_bound_evicts_the_least_recently_used() {
        let fake = Fake::new();
        // Every entry is 2 floats + a 1-byte key = 9 bytes: room for three.
        let cache = PromptCache::new(PromptCacheBounds {
            entries: 100,
            bytes: 27,
        });
        embed_each(&cache, &fake, &["a", "b", "c"]);
        assert_eq!(cache.stats().bytes, 27);
        embed_each(&cache, &fake, &["a"]); // a hit: now b is the oldest
        assert_eq!(fake.texts_embedded.load(Ordering::SeqCst), 3);
        embed_each(&cache, &fake, &["d"]);
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes, stats.misses), (3, 27, 4));
        embed_each(&cache, &fake, &["a", "c", "d"]);
        assert_eq!(
            fake.texts_embedded.load(Ordering::SeqCst),
            4,
            "a, c, d stayed"
        );
        embed_each(&cache, &fake, &["b"]);
        assert_eq!(
            fake.texts_embedded.load(Ordering::SeqCst),
            5,
            "b was evicted"
        );
        // An entry larger than the whole bound is not kept.
        embed_each(&cache, &fake, &["a long prompt over 27 bytes"]);
        assert_eq!(cache.stats().entries, 3);
    }

    #[test]
    fn entry_bound_evicts_the_least_recently_used() {
        let fake = Fake::new();
        let cache = PromptCache::new(PromptCacheBounds {
            entries: 2,
            bytes: 1 << 20,
        });
        embed_each(&cache, &fake, &["a", "b", "a", "c"]);
        assert_eq!(cache.len(), 2);
        assert_eq!(fake.texts_embedded.load(Ordering::SeqCst), 3);
        embed_each(&cache, &fake, &["a", "c"]);
        assert_eq!(
            fake.texts_embedded.load(Ordering::SeqCst),
            3,
            "a and c stayed"
        );
        embed_each(&cache, &fake, &["b"]);
        assert_eq!(
            fake.texts_embedded.load(Ordering::SeqCst),
            4,
            "b was evicted"
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn with_prompt_cache_takes_the_bounds() {
        let bounds = PromptCacheBounds {
            entries: 5,
            bytes: 100,
        };
        let model = ServedModel::zero_shot("m", Arc::new(Fake::new())).with_prompt_cache(bounds);
        assert_eq!(model.prompts.bounds(), bounds);
    }

    /// A fake with SigLIP's scoring: sigmoid scores, and the SigLIP family.
    struct SigmoidFake(Fake);

    impl ZeroShotModel for SigmoidFake {
        fn preprocess_config(&self) -> &PreprocessConfig {
            self.0.preprocess_config()
        }
        fn embed_images(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
            self.0.embed_images(pixels)
        }
        fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.0.embed_texts(texts)
        }
        fn logit_scale(&self) -> f32 {
            10.0
        }
        fn scoring(&self) -> crate::backend::Scoring {
            crate::backend::Scoring::Sigmoid { bias: -5.0 }
        }
    }

    #[test]
    fn sigmoid_models_answer_independent_scores() {
        let model = ServedModel::zero_shot("s", Arc::new(SigmoidFake(Fake::new())));
        assert_eq!(model.family(), ModelFamily::Siglip);
        assert!(model.independent_scores());
        let r = model
            .classify_all(
                &one_pixel(),
                &labels(&["car", "dog"]),
                &["{label}".to_string()],
            )
            .unwrap();
        // car: cos 1 → sigmoid(10 − 5); dog: cos 0 → sigmoid(−5).
        let score = |l: &str| {
            r[0].predictions
                .iter()
                .find(|p| p.label == l)
                .unwrap()
                .score
        };
        assert!((score("car") - 1.0 / (1.0 + (-5f32).exp())).abs() < 1e-6);
        assert!((score("dog") - 1.0 / (1.0 + 5f32.exp())).abs() < 1e-6);
        assert_eq!(r[0].result, "car");
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

/// Classifiers: ImageNet-1k labels answer in categories, any other label set in its own labels.
#[cfg(test)]
mod own_label_tests {
    use super::*;
    use crate::backend::PixelBatch;
    use crate::decision::{Decision, RawDecision};
    use crate::preprocess::PreprocessConfig;

    struct FakeClassifier {
        cfg: PreprocessConfig,
        labels: Vec<String>,
        probs: Vec<f32>,
    }

    impl ImageClassifier for FakeClassifier {
        fn preprocess_config(&self) -> &PreprocessConfig {
            &self.cfg
        }
        fn classify(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>> {
            Ok(vec![self.probs.clone(); pixels.batch])
        }
        fn id2label(&self) -> &[String] {
            &self.labels
        }
    }

    fn served(labels: Vec<String>, probs: Vec<f32>) -> ServedModel {
        let fake = FakeClassifier {
            cfg: PreprocessConfig::plain(2),
            labels,
            probs,
        };
        ServedModel::classifier("m", Arc::new(fake))
    }

    fn answer(model: &ServedModel) -> ClassificationResponse {
        let px = PixelBatch {
            data: vec![0.0; 24],
            batch: 2,
            height: 2,
            width: 2,
        };
        let mut r = model.classify(&px, &[], &[]).unwrap();
        assert_eq!(r.len(), 2);
        r.remove(0).unwrap()
    }

    #[test]
    fn a_fine_tune_answers_its_own_labels() {
        let labels: Vec<String> = ["cat", "dog", "bird"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let model = served(labels, vec![0.25, 0.6, 0.15]);
        assert!(model.answers_own_labels());
        let r = answer(&model);
        assert_eq!(r.result, "dog");
        assert_eq!(r.confidence, 0.6);
        let names: Vec<&str> = r.predictions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["dog", "cat", "bird"]);
        assert_eq!(r.imagenet, None);
        assert_eq!(r.model, "vit");

        // Decision controls work on the own labels as on categories.
        let d = Decision::parse(RawDecision {
            min_confidence: Some("0.7"),
            top_k: Some("2"),
            ..Default::default()
        })
        .unwrap();
        let mut r = answer(&model);
        d.apply(&mut r);
        assert_eq!(r.result, "other");
        assert!(r.abstained);
        assert_eq!(r.predictions.len(), 2);
        assert_eq!(r.predictions[0].label, "dog");
    }

    #[test]
    fn imagenet_1k_answers_categories() {
        let labels: Vec<String> = include_str!("imagenet_1k_labels.txt")
            .lines()
            .map(str::to_string)
            .collect();
        let mut probs = vec![0.0; 1000];
        probs[817] = 0.9; // sports car
        probs[0] = 0.1;
        let model = served(labels, probs);
        assert!(!model.answers_own_labels());
        let r = answer(&model);
        assert_eq!(r.result, "car");
        assert_eq!(r.predictions.len(), 6);
        let top = &r.imagenet.expect("imagenet block")[0];
        assert_eq!(top.label, "sports car, sport car");
    }
}
