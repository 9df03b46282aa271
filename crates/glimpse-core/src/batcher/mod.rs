//! Dynamic batching: one worker thread per model owns its forward passes. Callers submit single
//! jobs into a bounded queue; the worker takes the first waiting job, collects more for up to a
//! short window (or until the batch is full), runs ONE call on the whole batch and answers every
//! job on its own reply callback.
//!
//! The queue is std threads and channels, and replies are plain callbacks, so core stays free of
//! any async runtime: the server wraps a callback around a tokio oneshot, a CLI can block on
//! [`Batcher::submit_wait`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use crate::pipeline::{label_embeddings, PromptCache};
use crate::response::ClassificationResponse;
use crate::scoring::{
    clip_predictions, clip_probabilities, top_k_imagenet, vit_category_predictions,
};
use crate::CoreError;

/// Why a submitted job got no answer. `Clone`, because one failed forward pass fails every job of
/// its batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The queue is full: shed the call (the server answers 503 with `Retry-After`).
    #[error("the inference queue is full")]
    Overloaded,
    /// The worker is gone (shut down, or it died).
    #[error("the inference worker has stopped")]
    Closed,
    /// The model failed on this job's batch, or on this job alone.
    #[error("{0}")]
    Model(String),
}

/// Sizes of the batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most jobs in one forward pass (1 turns batching off).
    pub max_batch: usize,
    /// How long the worker waits for more jobs after the first one arrives.
    pub window: Duration,
    /// Jobs that may wait in the queue; one more is [`BatchError::Overloaded`].
    pub queue_capacity: usize,
    /// Wait (up to `window`) only while some job is announced ([`Batcher::announce`]) and not
    /// yet queued: a lone call then runs at once instead of paying the window, and a burst waits
    /// for the calls still being decoded for it. Off: always wait the window.
    pub wait_for_announced: bool,
    /// Balance back-to-back passes: when callers were already waiting as the last pass ended
    /// and more are queued than it held, take only the mean of the two sizes (rounded up), so
    /// two alternating groups of callers settle at equal halves (5 + 3 becomes 4 + 4) instead
    /// of keeping a small, less efficient pass forever. Off: take everything queued, up to
    /// `max_batch`.
    pub balance: bool,
    /// Regroup split callers: when callers were already waiting as the last pass ended, fewer
    /// than a full batch of them, and that pass's callers fit next to them, hold the next pass
    /// for the callers just answered to come back — but only where one pass of both groups has
    /// been timed to beat two passes (each pass has a fixed cost), and never longer than what
    /// merging saves ([`PassTimes::regroup_wait`]). Off: the pass takes what is queued.
    pub regroup: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 8,
            window: Duration::from_millis(2),
            queue_capacity: 64,
            wait_for_announced: false,
            balance: false,
            regroup: false,
        }
    }
}

/// Counters of what the worker did, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub batches: usize,
    /// Jobs answered (successfully or not) by those passes.
    pub jobs: usize,
    /// The largest batch so far.
    pub max_batch_seen: usize,
}

/// A counting semaphore shared by several batchers: at most `permits` of their forward passes run
/// at once (each pass already uses every core, so two models at once only fight over them).
pub struct PassGate {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl PassGate {
    pub fn new(permits: usize) -> Self {
        PassGate {
            free: Mutex::new(permits.max(1)),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) -> PassPermit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        PassPermit(self)
    }
}

/// Gives its permit back when dropped, also when the model panics.
struct PassPermit<'a>(&'a PassGate);

impl Drop for PassPermit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

type Reply<S> = Box<dyn FnOnce(Result<S, BatchError>) + Send>;
/// A queued job, its reply and when it was submitted.
type Queued<R, S> = (R, Reply<S>, Instant);
type Hook = Arc<dyn Fn(&PassReport) + Send + Sync>;

/// One forward pass, as the [`Batcher::on_batch`] hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs in the pass.
    pub size: usize,
    /// Each job's wait from its submit to the pass starting (the window, the pass before it, a
    /// busy [`PassGate`]), in the pass's order.
    pub waits: Vec<Duration>,
    /// The pass itself, from start to the model's answer.
    pub ran: Duration,
}

struct Shared {
    depth: AtomicUsize,
    /// Announced jobs not yet queued.
    incoming: AtomicUsize,
    stats: Mutex<BatchStats>,
    on_batch: Mutex<Option<Hook>>,
}

/// A queue in front of one worker thread running `run` on batches of `R`, answering `S` each.
/// Dropping it closes the queue; the worker answers what is still queued and then exits.
pub struct Batcher<R, S> {
    tx: SyncSender<Queued<R, S>>,
    shared: Arc<Shared>,
    options: BatchOptions,
}

impl<R: Send + 'static, S: Send + 'static> Batcher<R, S> {
    /// Start the worker thread. `run` gets the jobs of one batch and must return one result per
    /// job, in order; an `Err` from it (or a panic) reaches every job of the batch.
    pub fn new<F>(name: &str, options: BatchOptions, run: F) -> std::io::Result<Self>
    where
        F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError> + Send + 'static,
    {
        Self::gated(name, options, None, run)
    }

    /// As `new`, each forward pass holding a permit of `gate` while it runs.
    pub fn gated<F>(
        name: &str,
        options: BatchOptions,
        gate: Option<Arc<PassGate>>,
        run: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError> + Send + 'static,
    {
        let options = BatchOptions {
            max_batch: options.max_batch.max(1),
            queue_capacity: options.queue_capacity.max(1),
            ..options
        };
        let (tx, rx) = mpsc::sync_channel::<Queued<R, S>>(options.queue_capacity);
        let shared = Arc::new(Shared {
            depth: AtomicUsize::new(0),
            incoming: AtomicUsize::new(0),
            stats: Mutex::new(BatchStats::default()),
            on_batch: Mutex::new(None),
        });
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || worker(rx, worker_shared, options, gate, run))?;
        Ok(Batcher {
            tx,
            shared,
            options,
        })
    }

    /// Queue `job`; `reply` is called exactly once, on the worker thread (or here, with
    /// `Overloaded`/`Closed`, when the job could not be queued).
    pub fn submit(&self, job: R, reply: impl FnOnce(Result<S, BatchError>) + Send + 'static) {
        // Counted before sending so the worker's decrement can never run first and underflow.
        self.shared.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send((job, Box::new(reply), Instant::now())) {
            Ok(()) => {}
            Err(TrySendError::Full((_, reply, _))) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                reply(Err(BatchError::Overloaded));
            }
            Err(TrySendError::Disconnected((_, reply, _))) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                reply(Err(BatchError::Closed));
            }
        }
    }

    /// Say a job is on its way (its image is being decoded). Drop the guard once the job is
    /// submitted (or abandoned); see [`BatchOptions::wait_for_announced`].
    pub fn announce(&self) -> Incoming {
        self.shared.incoming.fetch_add(1, Ordering::SeqCst);
        Incoming {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Queue `job` and block this thread until it is answered.
    pub fn submit_wait(&self, job: R) -> Result<S, BatchError> {
        let (tx, rx) = mpsc::channel();
        self.submit(job, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(BatchError::Closed))
    }

    /// Jobs queued and not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> BatchStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> BatchOptions {
        self.options
    }

    /// Called on the worker thread after every forward pass, before its jobs are answered (for
    /// metrics).
    pub fn on_batch(&self, hook: impl Fn(&PassReport) + Send + Sync + 'static) {
        *self
            .shared
            .on_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }
}

/// An announced job: counted as on its way to the batcher until dropped.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared.incoming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How often a worker waiting for announced jobs re-checks that some are still on their way.
const ANNOUNCE_POLL: Duration = Duration::from_micros(500);

fn worker<R, S, F>(
    rx: mpsc::Receiver<Queued<R, S>>,
    shared: Arc<Shared>,
    options: BatchOptions,
    gate: Option<Arc<PassGate>>,
    mut run: F,
) where
    F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError>,
{
    // The size of the last pass, when callers were already queued as it ended.
    let mut back_to_back: Option<usize> = None;
    let mut times = PassTimes::new(options.max_batch);
    // `recv` fails only once every sender is dropped and the queue is empty.
    while let Ok(first) = rx.recv() {
        // Queued now, `first` included (the depth drops once the batch is taken).
        let queued = shared.depth.load(Ordering::SeqCst);
        let regroup = match back_to_back {
            Some(last) if options.regroup => times.regroup_wait(queued, last, options.window),
            _ => None,
        };
        let (limit, wait, for_announced) = match (back_to_back, regroup) {
            // Wait for the callers just answered even before they are announced: they are
            // still reading their answer.
            (Some(last), Some(wait)) => (queued + last, wait, false),
            (Some(last), None) if options.balance && queued > last => (
                (queued + last).div_ceil(2),
                options.window,
                options.wait_for_announced,
            ),
            _ => (
                options.max_batch,
                options.window,
                options.wait_for_announced,
            ),
        };
        let limit = limit.min(options.max_batch);
        let mut batch = vec![first];
        let deadline = Instant::now() + wait;
        while batch.len() < limit {
            if let Ok(job) = rx.try_recv() {
                batch.push(job);
                continue;
            }
            if for_announced && shared.incoming.load(Ordering::SeqCst) == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let slice = if for_announced {
                left.min(ANNOUNCE_POLL)
            } else {
                left
            };
            match rx.recv_timeout(slice) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        shared.depth.fetch_sub(batch.len(), Ordering::SeqCst);
        let n = batch.len();
        {
            let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.batches += 1;
            s.jobs += n;
            s.max_batch_seen = s.max_batch_seen.max(n);
        }
        let mut jobs = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        let mut submitted = Vec::with_capacity(n);
        for (job, reply, at) in batch {
            jobs.push(job);
            replies.push(reply);
            submitted.push(at);
        }
        let permit = gate.as_deref().map(PassGate::acquire);
        let started = Instant::now();
        // A panicking model must not take the worker (and every later caller) down with it.
        let outcome = match catch_unwind(AssertUnwindSafe(|| run(&jobs))) {
            Ok(Ok(results)) if results.len() == n => Ok(results),
            Ok(Ok(results)) => Err(BatchError::Model(format!(
                "the model answered {} of {n} jobs",
                results.len()
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BatchError::Model("the model panicked".into())),
        };
        drop(permit);
        let ran = started.elapsed();
        if outcome.is_ok() {
            times.record(n, ran);
        }
        let hook = shared
            .on_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h(&PassReport {
                size: n,
                waits: submitted
                    .iter()
                    .map(|at| started.saturating_duration_since(*at))
                    .collect(),
                ran,
            });
        }
        match outcome {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    reply(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    reply(Err(e.clone()));
                }
            }
        }
        back_to_back = (shared.depth.load(Ordering::SeqCst) > 0).then_some(n);
    }
}

/// Recent forward-pass times by batch size (an exponential average of each size's passes), to tell
/// whether one pass of two groups of callers beats a pass for each.
#[derive(Debug, Clone)]
pub struct PassTimes {
    /// Seconds, indexed by batch size.
    by_size: Vec<Option<f64>>,
    /// The pass count when a regroup into each size was last tried without its time known.
    tried: Vec<Option<u64>>,
    passes: u64,
}

impl PassTimes {
    /// Weight of the newest pass in a size's average.
    const NEW: f64 = 0.25;
    /// Passes between two tries of a regroup into a size never timed (the try may idle up to the
    /// window if the callers do not come back).
    const RETRY_AFTER: u64 = 64;

    pub fn new(max_batch: usize) -> Self {
        PassTimes {
            by_size: vec![None; max_batch + 1],
            tried: vec![None; max_batch + 1],
            passes: 0,
        }
    }

    /// A pass of `size` jobs took `ran`.
    pub fn record(&mut self, size: usize, ran: Duration) {
        self.passes += 1;
        if let Some(t) = self.by_size.get_mut(size) {
            let s = ran.as_secs_f64();
            *t = Some(t.map_or(s, |old| old + Self::NEW * (s - old)));
        }
    }

    /// How long to hold the next pass for the `last` callers of the pass that just ended to come
    /// back next to the `queued` ones, or `None` to run the queued ones now.
    ///
    /// Merging saves `t(queued) + t(last) − t(queued + last)` (a pass's fixed cost: weights read,
    /// per-pass set-up, threads woken), and the wait is capped at that, so it can lose at most
    /// what it would have won. A merged size never timed is tried (up to `window`) once every
    /// [`Self::RETRY_AFTER`] passes. No wait when the two groups do not fit in one pass, or when
    /// one pass of both is timed no faster than two (a CPU whose small passes are as efficient).
    pub fn regroup_wait(
        &mut self,
        queued: usize,
        last: usize,
        window: Duration,
    ) -> Option<Duration> {
        let merged = queued + last;
        if queued == 0 || last == 0 || merged >= self.by_size.len() {
            return None;
        }
        let (a, b) = (self.by_size[queued], self.by_size[last]);
        match (a, b, self.by_size[merged]) {
            (Some(a), Some(b), Some(m)) => {
                let saved = a + b - m;
                (saved > 0.0).then(|| Duration::from_secs_f64(saved))
            }
            _ => {
                let recent =
                    self.tried[merged].is_some_and(|at| self.passes < at + Self::RETRY_AFTER);
                if recent || window.is_zero() {
                    return None;
                }
                self.tried[merged] = Some(self.passes);
                Some(window)
            }
        }
    }
}

fn model_error(e: CoreError) -> BatchError {
    BatchError::Model(e.to_string())
}

/// One CLIP call: a preprocessed image (`[3, h, w]`) and the labels to score it against.
#[derive(Debug, Clone)]
pub struct ClipJob {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub labels: Vec<String>,
}

/// One ViT call: a preprocessed image (`[3, h, w]`).
#[derive(Debug, Clone)]
pub struct VitJob {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

pub type ClipBatcher = Batcher<ClipJob, ClassificationResponse>;
pub type VitBatcher = Batcher<VitJob, ClassificationResponse>;

/// Stack the jobs' images; they must share one size (one model, one preprocessing).
fn stack<'a>(
    images: impl Iterator<Item = (&'a [f32], usize, usize)>,
) -> Result<PixelBatch, BatchError> {
    let mut out: Option<PixelBatch> = None;
    for (px, h, w) in images {
        if px.len() != 3 * h * w {
            return Err(BatchError::Model(format!(
                "an image of {} values is not 3x{h}x{w}",
                px.len()
            )));
        }
        let b = out.get_or_insert_with(|| PixelBatch {
            data: Vec::new(),
            batch: 0,
            height: h,
            width: w,
        });
        if (b.height, b.width) != (h, w) {
            return Err(BatchError::Model(
                "images of different sizes in one batch".into(),
            ));
        }
        b.data.extend_from_slice(px);
        b.batch += 1;
    }
    out.ok_or_else(|| BatchError::Model("empty batch".into()))
}

/// A batcher for a CLIP model: one `embed_images` on the stacked batch, then each job scored
/// against its own labels, whose embeddings come from the model's shared `PromptCache` (a
/// repeated label set costs no text-encoder time). A label error fails only its own job.
pub fn clip_batcher(
    model: Arc<dyn ZeroShotModel>,
    model_id: String,
    prompts: Arc<PromptCache>,
    templates: Vec<String>,
    options: BatchOptions,
    gate: Option<Arc<PassGate>>,
) -> std::io::Result<ClipBatcher> {
    Batcher::gated(
        &model_id.clone(),
        options,
        gate,
        move |jobs: &[ClipJob]| {
            let pixels = stack(
                jobs.iter()
                    .map(|j| (j.pixels.as_slice(), j.height, j.width)),
            )?;
            let images = model.embed_images(&pixels).map_err(model_error)?;
            if images.len() != jobs.len() {
                return Err(BatchError::Model(format!(
                    "the model embedded {} of {} images",
                    images.len(),
                    jobs.len()
                )));
            }
            let scale = model.logit_scale();
            Ok(jobs
                .iter()
                .zip(&images)
                .map(|(job, img)| {
                    let text = label_embeddings(model.as_ref(), &prompts, &job.labels, &templates)
                        .map_err(model_error)?;
                    let probs = clip_probabilities(img, &text, scale);
                    Ok(ClassificationResponse::new(
                        "clip",
                        &model_id,
                        clip_predictions(&job.labels, &probs),
                    ))
                })
                .collect())
        },
    )
}

/// A batcher for a ViT classifier: one `classify` on the stacked batch.
pub fn vit_batcher(
    model: Arc<dyn ImageClassifier>,
    model_id: String,
    options: BatchOptions,
    gate: Option<Arc<PassGate>>,
) -> std::io::Result<VitBatcher> {
    Batcher::gated(
        &model_id.clone(),
        options,
        gate,
        move |jobs: &[VitJob]| {
            let pixels = stack(
                jobs.iter()
                    .map(|j| (j.pixels.as_slice(), j.height, j.width)),
            )?;
            let probs = model.classify(&pixels).map_err(model_error)?;
            Ok(probs
                .iter()
                .map(|p| {
                    let mut r =
                        ClassificationResponse::new("vit", &model_id, vit_category_predictions(p));
                    r.imagenet = Some(top_k_imagenet(p, model.id2label(), 5));
                    Ok(r)
                })
                .collect())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn regroup_waits_at_most_what_one_pass_saves_and_tries_untimed_sizes_sparingly() {
        let mut t = PassTimes::new(8);
        let window = ms(10);
        t.record(4, ms(60));
        // A pass of 8 never timed: tried once, up to the window, then not again for a while.
        assert_eq!(t.regroup_wait(4, 4, window), Some(window));
        assert_eq!(t.regroup_wait(4, 4, window), None);
        for _ in 0..PassTimes::RETRY_AFTER {
            t.record(4, ms(60));
        }
        assert_eq!(t.regroup_wait(4, 4, window), Some(window));
        // Timed: the wait is what one pass of 8 saves over two of 4 (60 + 60 − 80 ms).
        t.record(8, ms(80));
        let w = t.regroup_wait(4, 4, window).unwrap();
        assert!((w.as_secs_f64() - 0.040).abs() < 1e-9, "{w:?}");
        // No fixed cost (a pass of 8 takes as long as two of 4): no wait.
        let mut flat = PassTimes::new(8);
        flat.record(4, ms(60));
        flat.record(8, ms(120));
        assert_eq!(flat.regroup_wait(4, 4, window), None);
        // The two groups do not fit in one pass, or nothing to regroup.
        assert_eq!(t.regroup_wait(5, 4, window), None);
        assert_eq!(t.regroup_wait(0, 4, window), None);
        // The average follows newer passes.
        t.record(8, ms(120));
        let w2 = t.regroup_wait(4, 4, window).unwrap();
        assert!(w2 < w, "{w2:?} after a slower pass of 8, {w:?} before");
    }
}
