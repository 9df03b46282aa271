//! A served model behind a [`Batcher`]: the worker stacks the queued images and makes ONE
//! [`ServedModel::answer`] call (the scoring path `glimpse classify` and the warm-up use too), so
//! classifications and embedding requests for one model share its forward passes.

use std::sync::Arc;

use super::{BatchError, BatchOptions, Batcher, PassGate};
use crate::backend::PixelBatch;
use crate::model::{Answer, Ask, ServedModel};
use crate::response::ClassificationResponse;

/// One call: a preprocessed image (`[3, h, w]`) and what it asks of the model.
#[derive(Debug, Clone)]
pub struct ModelJob {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub ask: Ask,
}

impl ModelJob {
    /// Scores for `pixels` (`[3, height, width]`) against `labels` (zero-shot models; empty for
    /// classifiers).
    pub fn classify(pixels: PixelBatch, labels: Vec<String>) -> Self {
        Self::new(pixels, Ask::Classify(labels))
    }

    /// The image embedding of `pixels` (zero-shot models).
    pub fn embed(pixels: PixelBatch) -> Self {
        Self::new(pixels, Ask::Embed)
    }

    fn new(pixels: PixelBatch, ask: Ask) -> Self {
        debug_assert_eq!(pixels.batch, 1);
        ModelJob {
            height: pixels.height,
            width: pixels.width,
            pixels: pixels.data,
            ask,
        }
    }
}

pub type ModelBatcher = Batcher<ModelJob, Answer>;

impl Answer {
    /// [`Answer::into_classified`] as a batcher result.
    pub fn classified(r: Result<Answer, BatchError>) -> Result<ClassificationResponse, BatchError> {
        r?.into_classified().map_err(BatchError::from)
    }

    /// [`Answer::into_embedding`] as a batcher result.
    pub fn embedding(r: Result<Answer, BatchError>) -> Result<Vec<f32>, BatchError> {
        r?.into_embedding().map_err(BatchError::from)
    }
}

/// Stack the jobs' images; they must share one size (one model, one preprocessing).
fn stack(jobs: &[ModelJob]) -> Result<PixelBatch, BatchError> {
    let mut out: Option<PixelBatch> = None;
    for j in jobs {
        let (h, w) = (j.height, j.width);
        if j.pixels.len() != 3 * h * w {
            return Err(BatchError::model(format!(
                "an image of {} values is not 3x{h}x{w}",
                j.pixels.len()
            )));
        }
        let b = out.get_or_insert_with(|| PixelBatch {
            data: Vec::with_capacity(jobs.len() * 3 * h * w),
            batch: 0,
            height: h,
            width: w,
        });
        if (b.height, b.width) != (h, w) {
            return Err(BatchError::model("images of different sizes in one batch"));
        }
        b.data.extend_from_slice(&j.pixels);
        b.batch += 1;
    }
    out.ok_or_else(|| BatchError::model("empty batch"))
}

/// The batcher of one served model: its worker thread is named after the model id. A zero-shot
/// job's labels are embedded through the model's prompt cache (a repeated label set costs no
/// text-encoder time); a label set that fails fails only its own job.
pub fn model_batcher(
    model: Arc<ServedModel>,
    templates: Arc<Vec<String>>,
    options: BatchOptions,
    gate: Option<Arc<PassGate>>,
) -> std::io::Result<ModelBatcher> {
    let name = model.id().to_string();
    Batcher::gated(&name, options, gate, move |jobs: &[ModelJob]| {
        let pixels = stack(jobs)?;
        let asks: Vec<&Ask> = jobs.iter().map(|j| &j.ask).collect();
        let answers = model
            .answer(&pixels, &asks, &templates)
            .map_err(BatchError::from)?;
        Ok(answers
            .into_iter()
            .map(|a| a.map_err(BatchError::from))
            .collect())
    })
}
