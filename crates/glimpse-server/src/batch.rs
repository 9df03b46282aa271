//! One batcher per loaded model (see `glimpse_core::batcher`), built from the config when the
//! state is, and the async side of a submit: the worker thread's reply lands on a tokio oneshot.

use std::sync::Arc;
use std::time::Duration;

use glimpse_core::batcher::{
    clip_batcher, vit_batcher, BatchError, BatchOptions, Batcher, ClipBatcher, Incoming, PassGate,
    PassReport, VitBatcher,
};

use crate::config::ServerConfig;
use crate::state::Models;

/// The batchers, indexed like `Models::clip` / `Models::vit`.
pub struct Batchers {
    pub clip: Vec<ClipBatcher>,
    pub vit: Vec<VitBatcher>,
}

impl Batchers {
    pub fn new(config: &ServerConfig, models: &Models) -> std::io::Result<Self> {
        let options = BatchOptions {
            max_batch: config.batching.batch_size,
            window: Duration::from_millis(config.batching.batch_window_ms),
            // `max_in_flight` already sheds the excess; the queue bound is the last guard when
            // several models share it.
            queue_capacity: config.limits.max_in_flight,
            // Calls announce themselves on arrival: a lone call never waits the window.
            wait_for_announced: true,
            // Closed-loop clients split into alternating groups; keep the groups equal.
            balance: true,
            // ... unless one pass of both groups is timed faster than two; then regroup them.
            regroup: true,
        };
        // `GLIMPSE_INFERENCE_WORKERS` passes at once over all models (each uses every core).
        let gate = Some(Arc::new(PassGate::new(config.batching.inference_workers)));
        let clip = models
            .clip
            .iter()
            .map(|e| {
                clip_batcher(
                    Arc::clone(&e.model),
                    e.id.clone(),
                    Arc::clone(&e.prompts),
                    config.models.prompt_templates.clone(),
                    options,
                    gate.clone(),
                )
            })
            .collect::<std::io::Result<_>>()?;
        let vit = models
            .vit
            .iter()
            .map(|e| vit_batcher(Arc::clone(&e.model), e.id.clone(), options, gate.clone()))
            .collect::<std::io::Result<_>>()?;
        Ok(Batchers { clip, vit })
    }

    /// Jobs waiting over all models (for `/metrics`).
    pub fn queue_depth(&self) -> usize {
        self.clip.iter().map(|b| b.queue_depth()).sum::<usize>()
            + self.vit.iter().map(|b| b.queue_depth()).sum::<usize>()
    }

    /// Call `hook(endpoint, model_id, pass)` after every forward pass any model runs (for
    /// `/metrics`).
    pub fn on_batch(
        &self,
        models: &Models,
        hook: impl Fn(&str, &str, &PassReport) + Send + Sync + 'static,
    ) {
        let hook = Arc::new(hook);
        for (b, e) in self.clip.iter().zip(&models.clip) {
            let (h, id) = (Arc::clone(&hook), e.id.clone());
            b.on_batch(move |p| h("clip", &id, p));
        }
        for (b, e) in self.vit.iter().zip(&models.vit) {
            let (h, id) = (Arc::clone(&hook), e.id.clone());
            b.on_batch(move |p| h("vit", &id, p));
        }
    }
}

/// Queue `job` and wait for its answer without holding a runtime thread. `incoming` (the call's
/// announcement, see [`Batcher::announce`]) is dropped once the job is queued.
pub async fn submit<R: Send + 'static, S: Send + 'static>(
    batcher: &Batcher<R, S>,
    job: R,
    incoming: Incoming,
) -> Result<S, BatchError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    batcher.submit(job, move |r| {
        let _ = tx.send(r);
    });
    drop(incoming);
    rx.await.unwrap_or(Err(BatchError::Closed))
}
