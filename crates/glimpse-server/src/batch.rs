//! The async side of a submit to a model's batcher (see `glimpse_core::batcher`): the worker
//! thread's reply lands on a tokio oneshot.

use glimpse_core::batcher::{BatchError, Batcher, Incoming};

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
