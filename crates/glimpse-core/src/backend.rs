//! The traits a model implementation provides. They are synchronous and batch-shaped: the server
//! runs them on a blocking thread, and the batcher hands them several images at once.

use crate::preprocess::PreprocessConfig;
use crate::Result;

/// A batch of preprocessed images: `data` is `[batch, 3, height, width]` in row-major order.
#[derive(Debug, Clone)]
pub struct PixelBatch {
    pub data: Vec<f32>,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
}

impl PixelBatch {
    /// One image (`[3, h, w]`) as a batch of one, without copying it.
    pub fn single(data: Vec<f32>, height: usize, width: usize) -> Self {
        debug_assert_eq!(data.len(), 3 * height * width);
        PixelBatch {
            data,
            batch: 1,
            height,
            width,
        }
    }

    /// Stack single images (each `[3, h, w]`) into one batch.
    pub fn stack(images: &[Vec<f32>], height: usize, width: usize) -> Self {
        let mut data = Vec::with_capacity(images.len() * 3 * height * width);
        for im in images {
            debug_assert_eq!(im.len(), 3 * height * width);
            data.extend_from_slice(im);
        }
        PixelBatch {
            data,
            batch: images.len(),
            height,
            width,
        }
    }
}

/// CLIP-style zero-shot model: image and text towers projected into one embedding space.
pub trait ZeroShotModel: Send + Sync {
    /// How this model wants its images prepared.
    fn preprocess_config(&self) -> &PreprocessConfig;
    /// L2-normalised image embeddings, one per image in the batch.
    fn embed_images(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>>;
    /// L2-normalised text embeddings, one per text.
    fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
    /// `logit_scale.exp()`, the temperature applied to cosine similarities.
    fn logit_scale(&self) -> f32;
    /// How many tokens the text tower reads of each text: after truncation to the model's
    /// context, special tokens included, padding not (the `usage` of the embeddings API).
    fn count_tokens(&self, texts: &[String]) -> Result<Vec<usize>> {
        let _ = texts;
        Err(crate::CoreError::model(
            "this model cannot count its tokens",
        ))
    }

    /// How `logit_scale · cosine` becomes scores: a softmax over the labels unless the model
    /// says otherwise.
    fn scoring(&self) -> Scoring {
        Scoring::Softmax
    }
}

/// How a zero-shot model turns its logits (`logit_scale · cosine`) into scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// A softmax over the call's labels (CLIP): the scores sum to 1.
    Softmax,
    /// An independent `sigmoid(logit + bias)` per label (SigLIP's `logit_bias`): each score is
    /// between 0 and 1 on its own, and they do not sum to 1.
    Sigmoid { bias: f32 },
}

/// ImageNet-style classifier (ViT): one probability per class.
pub trait ImageClassifier: Send + Sync {
    fn preprocess_config(&self) -> &PreprocessConfig;
    /// Softmax probabilities over the model's classes, one vector per image.
    fn classify(&self, pixels: &PixelBatch) -> Result<Vec<Vec<f32>>>;
    /// Class names by index (`id2label` of the model's `config.json`).
    fn id2label(&self) -> &[String];
}
